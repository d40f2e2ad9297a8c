"""The folder's pipelines: `mae-reconstruction` (outputs, reproducibility, re-composition) and
`image-feature-extraction` (whole-image features, the same at every call, pooled), their image policy (16-bit images,
no URLs, bounds), and loading both from a published folder through `custom_pipelines` with remote code only (a clean
process where the package cannot be imported)."""

import json
import textwrap

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

from conftest import run_without_package
from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.publish.hub import (
    CUSTOM_PIPELINES,
    RECONSTRUCTION_TASK,
    add_inference_code,
    register_reconstruction_pipeline,
)
from dilated_vit_mae.pipeline_dilated_vit_mae import (
    DilatedViTMAEImageFeatureExtractionPipeline,
    DilatedViTMAEReconstructionPipeline,
    load_image,
)


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
        (dict(seed=2**70), r"`seed` must be an integer in \[0, 2\*\*64 - 1\], got 1180591620717411303424"),
        (dict(mask_ratio="0.5"), "`mask_ratio` must be a number in \\[0, 1\\), got '0.5'"),
        (dict(mask_ratio=float("nan")), "got nan"),
        (dict(mask_ratio=1.5), "got 1.5"),
        (dict(timeout=3), r"Unexpected arguments \['timeout'\].*`mask_ratio` and `seed`"),
        (dict(noise=None), r"Unexpected arguments \['noise'\]"),
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


# ---------------------------------------------------------------- image policy: the image processor reads every input


def gradient_16_bit() -> PIL.Image.Image:
    """A horizontal 16-bit grey gradient (PIL mode "I;16"); `convert("RGB")` makes it 99% white."""
    return PIL.Image.fromarray(np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1)))


def test_16_bit_images_are_scaled_not_clipped(reconstruct):
    image = gradient_16_bit()
    original = np.asarray(reconstruct(image, mask_ratio=0.5, seed=0)["original"]).astype(int)  # (32, 32, 3)
    expected = np.asarray(image, dtype=np.float64) / 65535 * 255
    # the processor's view (normalised, then back to uint8): within one level of the true gradient
    assert np.abs(original - expected[..., None]).max() <= 1
    assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.95  # what the old `.convert("RGB")` gave


def test_bytes_base64_and_paths_are_read_and_urls_refused(reconstruct, photo, tmp_path):
    import base64
    import io

    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    (tmp_path / "photo.png").write_bytes(buffer.getvalue())
    expected = np.asarray(reconstruct(photo, mask_ratio=0.5, seed=2)["recomposited"])
    for source in (buffer.getvalue(), base64.b64encode(buffer.getvalue()).decode(), str(tmp_path / "photo.png")):
        assert np.array_equal(np.asarray(reconstruct(source, mask_ratio=0.5, seed=2)["recomposited"]), expected)
    with pytest.raises(ValueError, match="does not download"):
        reconstruct("https://example.com/face.png", seed=0)
    with pytest.raises(ValueError, match="more than the limit"):
        reconstruct(PIL.Image.new("L", (8000, 7000)), seed=0)  # 56 MP, refused before any processing


def test_other_channel_counts_give_arrays(tiny_config_kwargs):
    config = DilatedViTMAEConfig(**tiny_config_kwargs, num_channels=4)
    processor = DilatedViTMAEImageProcessor(
        size={"shortest_edge": 32}, crop_size=32, num_channels=4, image_mean=[0.5] * 4, image_std=[0.25] * 4
    )
    reconstruct = DilatedViTMAEReconstructionPipeline(model=make_model(config), image_processor=processor)
    image = np.random.default_rng(0).integers(0, 256, size=(40, 36, 4), dtype=np.uint8)  # e.g. RGB + near-infrared
    result = reconstruct(image, mask_ratio=0.5, seed=0)
    for key in ("original", "masked", "reconstruction", "recomposited"):
        assert isinstance(result[key], np.ndarray) and result[key].shape == (32, 32, 4), key
    removed = np.asarray(result["mask"])[..., None] > 0
    assert np.array_equal(np.where(removed, 0, result["recomposited"]), np.where(removed, 0, result["original"]))


# ---------------------------------------------------------------- image-feature-extraction


@pytest.fixture
def published(tiny_config, tmp_path):
    """A folder as published (model, processor, pipelines, handler) and the model it holds."""
    folder = tmp_path / f"{tmp_path.name}-published"  # remote-code module names come from the folder name
    model = make_model(tiny_config)
    model.save_pretrained(folder)
    make_processor().save_pretrained(folder)
    add_inference_code(folder)
    return folder, model


def test_feature_pipeline_of_a_folder_gives_whole_image_features(published, photo):
    from transformers import pipeline

    folder, model = published
    extract = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
    # the folder's own class replaces transformers' built-in pipeline for the task
    assert type(extract).__name__ == "DilatedViTMAEImageFeatureExtractionPipeline"
    assert type(extract).__module__.startswith("transformers_modules")
    features = extract(photo, return_tensors=True)
    assert features.shape == (1, 1 + 64, 32)  # CLS + every patch of the 8 x 8 grid
    assert torch.equal(features, extract(photo, return_tensors=True))  # the same at every call
    as_lists = extract(photo)
    assert np.asarray(as_lists).shape == (1, 65, 32)
    np.testing.assert_allclose(np.asarray(as_lists), features.numpy(), rtol=1e-6)
    pooled = extract(photo, pool=True, return_tensors=True)
    assert pooled.shape == (1, 32)
    torch.testing.assert_close(pooled, features[:, 1:].mean(dim=1))
    # every patch in image order: the encoder on the patches shuffled, then put back, gives the same tokens
    pixel_values = make_processor()(photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        shuffled = model.vit(pixel_values, noise=torch.rand(1, 64), mask_ratio=0.0)
    restored = torch.gather(shuffled.last_hidden_state[:, 1:], 1, shuffled.ids_restore[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(features[:, 1:], restored, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features[:, 0], shuffled.last_hidden_state[:, 0], rtol=1e-4, atol=1e-5)


def test_feature_pipeline_arguments_and_inputs(published, photo):
    folder, model = published
    extract = DilatedViTMAEImageFeatureExtractionPipeline(model=model, image_processor=make_processor())
    batch = extract([photo, gradient_16_bit()], return_tensors=True)
    assert len(batch) == 2 and batch[0].shape == (1, 65, 32)
    resized = extract(photo, image_processor_kwargs={"crop_size": 32}, return_tensors=True)
    torch.testing.assert_close(resized, batch[0])
    for kwargs, match in [
        (dict(pool="yes"), "`pool` must be True or False"),
        (dict(return_tensors=1), "`return_tensors` must be True or False"),
        (dict(image_processor_kwargs=[1]), "`image_processor_kwargs` must be a dict"),
        (dict(timeout=3), r"Unexpected arguments \['timeout'\]"),
    ]:
        with pytest.raises((TypeError, ValueError), match=match):
            extract(photo, **kwargs)
    with pytest.raises(ValueError, match="does not download"):
        extract("https://example.com/face.png")


def test_registering_the_pipeline_writes_what_add_inference_code_writes(tiny_config, tmp_path, monkeypatch):
    """transformers' own mechanism (register + Pipeline.save_pretrained) and ours give the same config entries."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    register_reconstruction_pipeline()
    pipe = DilatedViTMAEReconstructionPipeline(
        model=make_model(tiny_config), image_processor=make_processor(), task=RECONSTRUCTION_TASK
    )
    pipe.save_pretrained(tmp_path / "saved_by_transformers")
    saved = json.loads((tmp_path / "saved_by_transformers" / "config.json").read_text())
    assert saved["custom_pipelines"] == CUSTOM_PIPELINES
    assert (tmp_path / "saved_by_transformers" / "pipeline_dilated_vit_mae.py").is_file()
    # the feature pipeline, registered only for this test: registering it for good would replace transformers'
    # built-in "image-feature-extraction" for every model in the process
    monkeypatch.setitem(PIPELINE_REGISTRY.supported_tasks, "image-feature-extraction", None)
    monkeypatch.setattr(DilatedViTMAEImageFeatureExtractionPipeline, "_registered_impl", None, raising=False)
    PIPELINE_REGISTRY.register_pipeline(
        "image-feature-extraction", DilatedViTMAEImageFeatureExtractionPipeline, pt_model=AutoModel, type="image"
    )
    encoder = make_model(tiny_config).vit
    DilatedViTMAEImageFeatureExtractionPipeline(model=encoder, image_processor=make_processor()).save_pretrained(
        tmp_path / "features_saved_by_transformers"
    )
    saved_features = json.loads((tmp_path / "features_saved_by_transformers" / "config.json").read_text())

    make_model(tiny_config).save_pretrained(tmp_path / "ours")
    add_inference_code(tmp_path / "ours")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours["custom_pipelines"] == {**saved["custom_pipelines"], **saved_features["custom_pipelines"]}
    assert set(ours["custom_pipelines"]) == {RECONSTRUCTION_TASK, "image-feature-extraction"}
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
    stdlib = {"__future__", "base64", "binascii", "io", "os", "random", "typing"}
    assert imported <= stdlib | {"numpy", "PIL", "torch", "transformers"}, imported


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["dilated_vit_mae"] = None  # the package must not be importable here
    import numpy as np
    import PIL.Image
    import skimage.data
    import torch
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
    # a 16-bit image is scaled, not clipped
    gradient = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    original = np.asarray(reconstruct(PIL.Image.fromarray(gradient), seed=0)["original"]).astype(int)
    assert np.abs(original - gradient[..., None] / 257).max() <= 1, original.mean()

    extract = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
    assert type(extract).__module__.startswith("transformers_modules"), type(extract).__module__
    assert type(extract.model).__module__.startswith("transformers_modules"), type(extract.model).__module__
    features = extract(photo, return_tensors=True)
    assert tuple(features.shape) == (1, 65, 32), features.shape
    assert torch.equal(features, extract(photo, return_tensors=True))
    assert tuple(extract(photo, pool=True, return_tensors=True).shape) == (1, 32)
    np.testing.assert_allclose(features.numpy(), expected["features"], rtol=1e-5, atol=1e-6)
    print("OK")
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: ~8 s
def test_published_folder_serves_both_pipelines_with_remote_code_only(tiny_config, tmp_path, photo):
    folder = tmp_path / "published"
    model = make_model(tiny_config)
    model.save_pretrained(folder)
    make_processor().save_pretrained(folder)
    add_inference_code(folder)
    local = DilatedViTMAEReconstructionPipeline(model=model, image_processor=make_processor())(
        photo, mask_ratio=0.75, seed=0
    )
    features = DilatedViTMAEImageFeatureExtractionPipeline(model=model.vit, image_processor=make_processor())(
        photo, return_tensors=True
    )
    expected = {k: np.asarray(local[k]) for k in ("original", "reconstruction", "recomposited")}
    np.savez(tmp_path / "expected.npz", features=features.numpy(), **expected)
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)

    result = run_without_package([tmp_path / "remote.py", folder, tmp_path / "expected.npz"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


# ---- load_image: what a pipeline or a server receives ------------------------------------------------------------


@pytest.fixture(scope="module")
def chelsea() -> PIL.Image.Image:
    return PIL.Image.fromarray(skimage.data.chelsea())  # 451 x 300 RGB


def _png(image: PIL.Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_load_image_reads_bytes_base64_and_paths_within_bounds(chelsea, tmp_path):
    import base64

    data = _png(chelsea)
    text = base64.b64encode(data).decode()
    (tmp_path / "chelsea.png").write_bytes(data)
    load = load_image
    path = tmp_path / "chelsea.png"
    for source in (data, text, "data:image/png;base64," + text, str(path), path):
        assert np.array_equal(np.asarray(load(source)), np.asarray(chelsea))
    array = np.zeros((4, 4, 3), np.uint8)
    assert load(array) is array and load(chelsea) is chelsea


@pytest.mark.parametrize(
    "source, kwargs, match",
    [
        ("https://example.com/face.jpg", {}, "does not download"),
        ("data:image/png;base64", {}, "without ';base64,' before its data"),
        ("data:image/png,abc", {}, "without ';base64,'"),
        ("not base64!", {}, "neither a path to an existing image file nor base64"),
        ("QUJD" * 1000, {"max_bytes": 100}, r"4,000 characters .* more than the limit"),
        (b"x" * 200, {"max_bytes": 100}, "more than the limit"),
        (b"plain text", {}, "Could not read the image data"),
        (None, {}, "Unsupported image type NoneType"),
        ("png-truncated", {}, "Could not read the image data: image file is truncated"),
        ("png-large", {"max_pixels": 1000}, r"The image data is 451 x 300 = 135,300 pixels, more than the limit"),
        ("pil-large", {"max_pixels": 1000}, r"The image is 451 x 300"),
    ],
)
def test_load_image_refuses_bad_inputs_with_value_errors(source, kwargs, match, chelsea):
    if source == "png-truncated":
        source = _png(chelsea)[:5000]
    elif source == "png-large":
        source = _png(chelsea)
    elif source == "pil-large":
        source = chelsea
    with pytest.raises(ValueError, match=match):
        load_image(source, **kwargs)
