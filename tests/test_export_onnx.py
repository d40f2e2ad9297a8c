"""Tests of `scripts/export_onnx.py` and `dilated_vit_mae/export.py`: a tiny encoder exported to ONNX gives the same
whole-image features in onnxruntime as in PyTorch at batch 1 and 3 (dynamic batch axis), from our pre-training folder
and from a transformers ViTMAE checkpoint; a bad export is refused and removed; bad arguments fail when parsed."""

import json
from pathlib import Path

import pytest
import torch

from conftest import load_file
from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor, DilatedViTMAEModel

onnx = pytest.importorskip("onnx", reason="onnx is in the optional `onnx` extra (and in `test`)")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is in the optional `onnx` extra (and in `test`)")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript (the `onnx` extra)")


@pytest.fixture(scope="module")
def script():
    return load_file("scripts/export_onnx.py")


@pytest.fixture
def our_model_dir(tmp_path, tiny_config_kwargs):
    """A run_mae.py-style folder whose dilated branch is not zero (so that it matters in the comparison)."""
    folder = tmp_path / "ours"
    model = DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**tiny_config_kwargs, dilation_rates=(2,)))
    with torch.no_grad():
        model.vit.embeddings.patch_embeddings.dilated_projections[0].weight.normal_(0, 0.05)
    model.save_pretrained(folder)
    processor = DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return folder


def run_onnx(path, pixel_values: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["last_hidden_state"], {"pixel_values": pixel_values.numpy()})[0])


def test_our_encoder_exports_whole_image_features(script, our_model_dir, tmp_path, capsys):
    output = tmp_path / "onnx" / "encoder.onnx"
    report = script.main(script.parse_args(["--model_name_or_path", str(our_model_dir), "--output", str(output)]))
    assert json.loads(capsys.readouterr().out) == report
    assert set(report["max_abs_difference"]) == {"1", "3"} and max(report["max_abs_difference"].values()) <= 1e-4
    assert report["output_tensor"]["shape"] == ["batch", 65, 32]

    # independently of the export's own check: the PyTorch encoder with nothing masked, at batch sizes 1, 3 and 5
    reference = DilatedViTMAEModel.from_pretrained(our_model_dir, mask_ratio=0.0).eval()
    for batch_size in (1, 3, 5):
        pixel_values = torch.randn(batch_size, 3, 32, 32)
        features = run_onnx(output, pixel_values)
        assert features.shape == (batch_size, 65, 32)  # CLS + all 8 x 8 patches
        with torch.no_grad():
            expected = reference(pixel_values).last_hidden_state
        assert (features - expected).abs().max().item() <= 1e-4
    metadata = {prop.key: prop.value for prop in onnx.load(str(output)).metadata_props}
    assert metadata["source"] == "ours" and metadata["image_mean"] == str([0.485, 0.456, 0.406])
    assert metadata["dilation_rates"] == "[2]" and str(tmp_path) not in json.dumps(metadata)
    graph = onnx.load(str(output)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    assert not any(node.op_type.startswith("Random") for node in graph.node)


def test_vit_mae_checkpoint_exports_in_image_order(script, tmp_path):
    from transformers import ViTImageProcessorPil, ViTMAEConfig, ViTMAEModel

    folder, output = tmp_path / "vit-mae", tmp_path / "vit-mae.onnx"
    config = ViTMAEConfig(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    model = ViTMAEModel(config)
    with torch.no_grad():  # transformers builds ViTMAE with a zero position table: give it one, so order matters
        model.embeddings.position_embeddings.normal_()
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    report = script.main(script.parse_args(["--model_name_or_path", str(folder), "--output", str(output)]))
    assert max(report["max_abs_difference"].values()) <= 1e-4
    pixel_values = torch.randn(3, 3, 32, 32)
    reference = ViTMAEModel.from_pretrained(folder, mask_ratio=0.0).eval()
    with torch.no_grad():  # ViTMAE shuffles its tokens by its noise even with nothing masked: increasing noise = image order
        expected = reference(pixel_values, noise=torch.arange(64.0).expand(3, -1)).last_hidden_state
    assert (run_onnx(output, pixel_values) - expected).abs().max().item() <= 1e-4


def test_an_export_beyond_tolerance_is_refused_and_removed(our_model_dir, tmp_path, monkeypatch):
    from dilated_vit_mae import export

    monkeypatch.setattr(export, "check_onnx_export", lambda *args, **kwargs: {1: 0.0, 3: 0.5})
    output = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match="differs from PyTorch by up to 0.5"):
        export.export_encoder_onnx(our_model_dir, output)
    assert not output.exists()


def test_a_masking_encoder_is_not_exported(tiny_config):
    from dilated_vit_mae.export import EncoderFeatures

    with pytest.raises(ValueError, match="mask_ratio"):
        EncoderFeatures(DilatedViTMAEModel(tiny_config))  # mask_ratio 0.75


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output", "x.onnx"], "--model_name_or_path"),
        (["--model_name_or_path", "m", "--output", "x.onnx", "--check_batch_sizes", "0"], "positive integer"),
        (["--model_name_or_path", "m", "--output", "x.pt"], "must be a .onnx file"),
        (["--model_name_or_path", "m", "--out", "x.onnx"], "required: --output"),  # no abbreviations
    ],
)
def test_bad_arguments(script, argv, message, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(argv)
    assert message in capsys.readouterr().err
