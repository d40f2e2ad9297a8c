"""Tests of `scripts/export_onnx.py` and `dilated_vit_mae/publish/export.py`: a tiny encoder exported to ONNX gives the same
whole-image features in onnxruntime as in PyTorch at batch 1 and 3 (dynamic batch axis), from our pre-training folder
and from a transformers ViTMAE checkpoint; a bad export is refused and removed; bad arguments fail when parsed."""

import json
import os
import subprocess
import sys
import textwrap
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
    from dilated_vit_mae.publish import export

    monkeypatch.setattr(export, "check_onnx_export", lambda *args, **kwargs: {1: 0.0, 3: 0.5})
    output = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match="differs from PyTorch by up to 0.5"):
        export.export_encoder_onnx(our_model_dir, output)
    assert not output.exists()


def test_an_export_beyond_tolerance_keeps_the_previous_file(our_model_dir, tmp_path, monkeypatch):
    from dilated_vit_mae.publish import export

    monkeypatch.setattr(export, "check_onnx_export", lambda *args, **kwargs: {1: 0.0, 3: 0.5})
    output = tmp_path / "encoder.onnx"
    output.write_bytes(b"an earlier export")
    with pytest.raises(ValueError, match="differs from PyTorch by up to 0.5"):
        export.export_encoder_onnx(our_model_dir, output)
    assert output.read_bytes() == b"an earlier export" and sorted(p.name for p in tmp_path.iterdir()) == [
        "encoder.onnx", "ours"
    ]


FULL_DISK_CHILD = textwrap.dedent(
    """
    import importlib.util, resource, signal, sys

    spec = importlib.util.spec_from_file_location("export_onnx", sys.argv[1])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args(sys.argv[2:])
    import onnx, onnxruntime, onnxscript  # imported before the limit (the export imports them itself)

    # a "disk" with room for 20 kB per file (the graph with its weights is ~150 kB): writes beyond fail as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    script.run_cli(script.main, args)
    """
)


def test_a_full_disk_leaves_no_truncated_file_and_keeps_the_previous_one(our_model_dir, tmp_path):
    output = tmp_path / "onnx" / "encoder.onnx"
    output.parent.mkdir()
    output.write_bytes(b"an earlier export")
    child = tmp_path / "full_disk.py"
    child.write_text(FULL_DISK_CHILD)
    result = subprocess.run(
        [sys.executable, str(child), str(Path(__file__).resolve().parent.parent / "scripts" / "export_onnx.py"),
         "--model_name_or_path", str(our_model_dir), "--output", str(output)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: could not write the ONNX file to {output}: "), line
    assert "File too large" in line and "Free some space, or give an --output on a larger disk" in line
    assert output.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in output.parent.iterdir()) == ["encoder.onnx"]  # nothing partial, nothing staged


def test_a_masking_encoder_is_not_exported(tiny_config):
    from dilated_vit_mae.publish.export import EncoderFeatures

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
