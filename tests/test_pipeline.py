"""The `mae-reconstruction` pipeline: outputs, reproducibility, re-composition, and loading it from a published folder
through `custom_pipelines` with remote code only (a clean process where the package cannot be imported)."""

import json
import textwrap

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

from conftest import run_without_package
from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.hub import (
    CUSTOM_PIPELINES,
    RECONSTRUCTION_TASK,
    add_inference_code,
    register_reconstruction_pipeline,
)
from dilated_vit_mae.pipeline_dilated_vit_mae import DilatedViTMAEReconstructionPipeline


PATCH = 4  # tiny_config


def make_model(config: DilatedViTMAEConfig) -> DilatedViTMAEForPreTraining:
    model = DilatedViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # make the dilated branch matter
        model.vit.embeddings.patch_embeddings.dilated_projections[0].weight.normal_(0, 0.05)
    return model


def make_processor() -> DilatedViTMAEImageProcessor:
    return DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture
def reconstruct(tiny_config):
    return DilatedViTMAEReconstructionPipeline(model=make_model(tiny_config), image_processor=make_processor())


@pytest.fixture(scope="module")
def photo() -> PIL.Image.Image:
    return PIL.Image.fromarray(skimage.data.astronaut())


def removed_patches(mask: PIL.Image.Image) -> np.ndarray:
    """(8, 8) bool: which patches of the 32 px image were removed."""
    return np.asarray(mask).reshape(8, PATCH, 8, PATCH).max(axis=(1, 3)) > 0


def test_outputs_are_images_of_the_model_input_size(reconstruct, photo):
    result = reconstruct(photo, mask_ratio=0.75, seed=0)
    assert set(result) == {"original", "masked", "reconstruction", "recomposited", "mask", "mask_ratio", "seed"}
    for key in ("original", "masked", "reconstruction", "recomposited"):
        assert isinstance(result[key], PIL.Image.Image) and result[key].mode == "RGB" and result[key].size == (32, 32)
    assert result["mask"].mode == "L" and result["mask"].size == (32, 32)
    assert result["mask_ratio"] == 0.75 and result["seed"] == 0
    # the mask is whole patches, 48 of 64 removed
    mask = np.asarray(result["mask"])
    assert set(np.unique(mask)) == {0, 255}
    assert removed_patches(result["mask"]).sum() == 48
    assert (
        np.asarray(result["mask"]).reshape(8, PATCH, 8, PATCH).min(axis=(1, 3))
        == mask.reshape(8, PATCH, 8, PATCH).max(axis=(1, 3))
    ).all()
    # "original" is the processor's view of the photo
    expected = make_processor().postprocess(make_processor()(photo, return_tensors="pt")["pixel_values"][0])
    assert np.array_equal(np.asarray(result["original"]), np.asarray(expected))


def test_visible_patches_are_the_input_and_removed_ones_the_prediction(reconstruct, photo):
    result = reconstruct(photo, mask_ratio=0.75, seed=3)
    removed = np.asarray(result["mask"])[..., None] > 0
    original, recomposited = np.asarray(result["original"]), np.asarray(result["recomposited"])
    reconstruction, masked = np.asarray(result["reconstruction"]), np.asarray(result["masked"])
    assert np.array_equal(np.where(removed, 0, recomposited), np.where(removed, 0, original))
    assert np.array_equal(np.where(removed, recomposited, 0), np.where(removed, reconstruction, 0))
    assert np.array_equal(masked, np.where(removed, 0, original))
    assert not np.array_equal(reconstruction, original)  # an untrained model does not copy its input


def test_the_seed_fixes_the_mask_and_the_outputs(reconstruct, photo):
    first, again = reconstruct(photo, mask_ratio=0.6, seed=7), reconstruct(photo, mask_ratio=0.6, seed=7)
    for key in ("masked", "reconstruction", "recomposited", "mask"):
        assert np.array_equal(np.asarray(first[key]), np.asarray(again[key])), key
    other = reconstruct(photo, mask_ratio=0.6, seed=8)
    assert not np.array_equal(np.asarray(first["mask"]), np.asarray(other["mask"]))
    # no seed: one is drawn and returned, and it reproduces the result
    drawn = reconstruct(photo, mask_ratio=0.6)
    assert isinstance(drawn["seed"], int)
    replay = reconstruct(photo, mask_ratio=0.6, seed=drawn["seed"])
    assert np.array_equal(np.asarray(drawn["recomposited"]), np.asarray(replay["recomposited"]))


def test_mask_ratio_zero_and_the_config_default(reconstruct, photo):
    nothing_removed = reconstruct(photo, mask_ratio=0.0, seed=0)
    assert not np.asarray(nothing_removed["mask"]).any()
    assert np.array_equal(np.asarray(nothing_removed["recomposited"]), np.asarray(nothing_removed["original"]))
    assert reconstruct(photo, seed=0)["mask_ratio"] == 0.75  # config.mask_ratio
    assert removed_patches(reconstruct(photo, mask_ratio=0.5, seed=0)["mask"]).sum() == 32


def test_a_list_of_images_gives_a_list_of_results(reconstruct, photo):
    results = reconstruct([photo, PIL.Image.fromarray(skimage.data.chelsea())], mask_ratio=0.75, seed=1)
    assert isinstance(results, list) and len(results) == 2
    assert np.array_equal(np.asarray(results[0]["mask"]), np.asarray(results[1]["mask"]))  # same seed, same mask


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=-0.1), "mask_ratio"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(noise=None), "mask_ratio`, `seed`"),
    ],
)
def test_bad_arguments_name_the_problem(reconstruct, photo, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        reconstruct(photo, **kwargs)


def test_norm_pix_loss_reconstruction_borrows_the_target_statistics(tiny_config_kwargs, photo):
    config = DilatedViTMAEConfig(**tiny_config_kwargs, norm_pix_loss=True)
    model = make_model(config)
    reconstruct = DilatedViTMAEReconstructionPipeline(model=model, image_processor=make_processor())
    result = reconstruct(photo, mask_ratio=0.75, seed=0)
    pixel_values = make_processor()(photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        noise = torch.rand(1, 64, generator=torch.Generator().manual_seed(0))
        logits = model(pixel_values, noise=noise).logits
    expected = make_processor().postprocess(model.logits_to_pixel_values(logits, pixel_values)[0], return_type="np")
    assert np.array_equal(np.asarray(result["reconstruction"]), expected)


def test_registering_the_pipeline_writes_what_add_inference_code_writes(tiny_config, tmp_path):
    """transformers' own mechanism (register + Pipeline.save_pretrained) and ours give the same config entry."""
    register_reconstruction_pipeline()
    pipe = DilatedViTMAEReconstructionPipeline(
        model=make_model(tiny_config), image_processor=make_processor(), task=RECONSTRUCTION_TASK
    )
    pipe.save_pretrained(tmp_path / "saved_by_transformers")
    saved = json.loads((tmp_path / "saved_by_transformers" / "config.json").read_text())
    assert saved["custom_pipelines"] == CUSTOM_PIPELINES
    assert (tmp_path / "saved_by_transformers" / "pipeline_dilated_vit_mae.py").is_file()

    make_model(tiny_config).save_pretrained(tmp_path / "ours")
    add_inference_code(tmp_path / "ours")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours["custom_pipelines"] == CUSTOM_PIPELINES
    assert (tmp_path / "ours" / "pipeline_dilated_vit_mae.py").read_text() == (
        tmp_path / "saved_by_transformers" / "pipeline_dilated_vit_mae.py"
    ).read_text()


def test_pipeline_file_is_self_contained_hub_code():
    import ast

    import dilated_vit_mae.pipeline_dilated_vit_mae as module

    tree = ast.parse(open(module.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 or node.module.endswith("_dilated_vit_mae"), node.module  # siblings only
            if node.level == 0:
                imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "random", "typing", "numpy", "PIL", "torch", "transformers"}, imported


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["dilated_vit_mae"] = None  # the package must not be importable here
    import numpy as np
    import PIL.Image
    import skimage.data
    from transformers import pipeline

    folder, expected_path = sys.argv[1], sys.argv[2]
    reconstruct = pipeline("mae-reconstruction", model=folder, trust_remote_code=True)
    assert type(reconstruct).__module__.startswith("transformers_modules"), type(reconstruct).__module__
    assert type(reconstruct.model).__module__.startswith("transformers_modules"), type(reconstruct.model).__module__
    photo = PIL.Image.fromarray(skimage.data.astronaut())
    result = reconstruct(photo, mask_ratio=0.75, seed=0)
    for key in ("original", "masked", "reconstruction", "recomposited", "mask"):
        assert isinstance(result[key], PIL.Image.Image) and result[key].size == (32, 32), (key, result[key])
    assert result["mask_ratio"] == 0.75 and result["seed"] == 0
    again = reconstruct(photo, mask_ratio=0.75, seed=0)
    for key in ("masked", "reconstruction", "recomposited"):
        assert np.array_equal(np.asarray(result[key]), np.asarray(again[key])), key
    removed = np.asarray(result["mask"])[..., None] > 0
    assert removed.mean() == 0.75
    original, recomposited = np.asarray(result["original"]), np.asarray(result["recomposited"])
    assert np.array_equal(np.where(removed, 0, recomposited), np.where(removed, 0, original))
    expected = np.load(expected_path)
    for key in ("original", "reconstruction", "recomposited"):
        assert np.array_equal(np.asarray(result[key]), expected[key]), key  # the same as the package's pipeline
    print("OK")
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: ~8 s
def test_published_folder_serves_the_pipeline_with_remote_code_only(tiny_config, tmp_path, photo):
    folder = tmp_path / "published"
    model = make_model(tiny_config)
    model.save_pretrained(folder)
    make_processor().save_pretrained(folder)
    add_inference_code(folder)
    local = DilatedViTMAEReconstructionPipeline(model=model, image_processor=make_processor())(
        photo, mask_ratio=0.75, seed=0
    )
    np.savez(
        tmp_path / "expected.npz", **{k: np.asarray(local[k]) for k in ("original", "reconstruction", "recomposited")}
    )
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)

    result = run_without_package([tmp_path / "remote.py", folder, tmp_path / "expected.npz"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
