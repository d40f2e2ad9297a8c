"""Auto-class registration, and the saved folder as a complete Hub repository that loads without the package."""

import json
import os
import re
import textwrap

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from conftest import run_without_package
from dilated_vit_mae import (
    DilatedViTMAEConfig,
    DilatedViTMAEForImageClassification,
    DilatedViTMAEForPreTraining,
    DilatedViTMAEImageProcessor,
    DilatedViTMAEModel,
)

CODE_FILES = {
    "configuration_dilated_vit_mae.py",
    "modeling_dilated_vit_mae.py",
    "image_processing_dilated_vit_mae.py",
}


@pytest.fixture
def hub_folder(tiny_config, tmp_path):
    """What a user publishes: model and processor saved side by side."""
    folder = tmp_path / "repo"
    model = DilatedViTMAEForPreTraining(tiny_config).eval()
    with torch.no_grad():  # make the dilated branch matter, so that a wrong load shows
        model.vit.embeddings.patch_embeddings.dilated_projections[0].weight.normal_(0, 0.05)
    model.save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder, model


def test_auto_classes_resolve_to_the_package(tiny_config, hub_folder):
    folder, _ = hub_folder
    assert isinstance(AutoConfig.for_model("dilated_vit_mae"), DilatedViTMAEConfig)
    assert type(AutoModel.from_config(tiny_config)) is DilatedViTMAEModel
    assert type(AutoModelForPreTraining.from_config(tiny_config)) is DilatedViTMAEForPreTraining
    assert type(AutoModelForImageClassification.from_config(tiny_config)) is DilatedViTMAEForImageClassification
    # without trust_remote_code, the installed package serves the folder
    assert type(AutoModelForPreTraining.from_pretrained(folder)) is DilatedViTMAEForPreTraining
    assert type(AutoModel.from_pretrained(folder)) is DilatedViTMAEModel
    assert type(AutoImageProcessor.from_pretrained(folder)) is DilatedViTMAEImageProcessor


def test_saved_folder_is_a_complete_hub_repository(hub_folder):
    folder, _ = hub_folder
    assert CODE_FILES | {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(os.listdir(folder))
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_dilated_vit_mae.DilatedViTMAEConfig",
        "AutoModel": "modeling_dilated_vit_mae.DilatedViTMAEModel",
        "AutoModelForPreTraining": "modeling_dilated_vit_mae.DilatedViTMAEForPreTraining",
        "AutoModelForImageClassification": "modeling_dilated_vit_mae.DilatedViTMAEForImageClassification",
    }
    processor_config = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"]["AutoImageProcessor"].endswith("DilatedViTMAEImageProcessor")
    # the shipped code imports nothing of ours but its siblings, and neither einops nor torchvision
    forbidden = re.compile(r"^\s*(import|from)\s+(dilated_vit_mae|einops|torchvision)\b", re.MULTILINE)
    for name in CODE_FILES:
        assert not forbidden.search((folder / name).read_text()), name


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["dilated_vit_mae"] = None  # the package must not be importable here
    try:
        import dilated_vit_mae  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("dilated_vit_mae is importable")

    import numpy as np
    import PIL.Image
    import skimage.data
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining, pipeline

    folder, expected_path = sys.argv[1], sys.argv[2]
    expected = torch.load(expected_path)
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__name__ == "DilatedViTMAEImageProcessor", type(processor)
    image = PIL.Image.open(expected_path.replace("expected.pt", "image.png"))
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values, expected["pixel_values"])
    logits = model(pixel_values, noise=expected["noise"]).logits
    torch.testing.assert_close(logits, expected["logits"])
    tables = [p for name, p in model.named_parameters() if name.endswith(("position_embeddings", "decoder_pos_embed"))]
    assert len(tables) == 2 and not any(p.requires_grad for p in tables), "the sin-cos tables must stay frozen"

    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(encoder).__name__ == "DilatedViTMAEModel"
    classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True, num_labels=3)
    assert classifier(pixel_values).logits.shape == (1, 3)

    extractor = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
    photo = PIL.Image.fromarray(skimage.data.astronaut())
    features = np.asarray(extractor(photo))
    print("features", features.shape)
    assert features.shape == (1, 1 + 16, 32), features.shape
    assert np.isfinite(features).all()
    print("OK")
    """
)


def test_folder_loads_with_trust_remote_code_without_the_package(hub_folder, tmp_path):
    import numpy as np
    import PIL.Image

    folder, model = hub_folder
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8))
    pixel_values = DilatedViTMAEImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"]
    noise = torch.rand(1, 64)
    with torch.no_grad():
        logits = model(pixel_values, noise=noise).logits
    image.save(tmp_path / "image.png")
    torch.save({"pixel_values": pixel_values, "noise": noise, "logits": logits}, tmp_path / "expected.pt")
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)

    result = run_without_package([tmp_path / "remote.py", folder, tmp_path / "expected.pt"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
