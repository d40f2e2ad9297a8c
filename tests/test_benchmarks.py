"""The speed and data-pipeline benchmarks run end to end and report what the README quotes from them (tiny sizes)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_benchmark(name: str):
    return load_file(f"benchmarks/{name}.py")


@pytest.mark.slow  # eight models and four fresh interpreters (the peak-memory children): ~40 s
def test_speed_benchmark_reports_ratios_to_vit_mae(tmp_path):
    output = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_speed.py", "--presets", "small", "--batch_size", "2", "--repeats", "1",
         "--warmup", "0", "--device", "cpu", "--peak_tflops", "2.0", "--output_json", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    rows = report["results"]["small"]["rows"]
    assert set(rows) == {"vit_mae", "ours_no_dilation", "ours_default", "ours_rates_2_3"}
    assert rows["vit_mae"]["train_step_ratio"] == 1.0 and rows["vit_mae"]["encoder_ratio"] == 1.0
    for name, row in rows.items():
        assert row["train_step_ratio"] == row["train_step_s"] / rows["vit_mae"]["train_step_s"], name
        assert row["images_per_s"] == 2 / row["train_step_s"]
        assert row["peak_memory_mb"] > 0 and math.isfinite(row["peak_memory_ratio"])
        assert row["train_tflops_per_s"] == pytest.approx(row["train_gflop_per_image"] * 2 / row["train_step_s"] / 1e3)
        assert row["mfu"] == pytest.approx(row["train_tflops_per_s"] / 2.0)
    assert "ours_rates_2_3" in result.stdout and "ratios to ViTMAE" in result.stdout and "MFU" in result.stdout
    # counted FLOPs: no dilation is ViTMAE's arithmetic; each dilated branch adds one patch projection per kept patch,
    # forward and weight gradient (2 FLOPs per multiply-add each): 64 px, patch 8 -> 16 of 64 patches kept, 3x8x8 -> 192
    flops = {name: round(row["train_gflop_per_image"] * 1e9) for name, row in rows.items()}
    per_branch = 2 * 2 * 16 * (3 * 8 * 8) * 192
    assert flops["ours_no_dilation"] == flops["vit_mae"]
    assert flops["ours_default"] - flops["vit_mae"] == per_branch
    assert flops["ours_rates_2_3"] - flops["vit_mae"] == 2 * per_branch


def test_flop_count_of_a_vit_b_mae_step_is_maes():
    # He et al.: ViT-B/16 MAE pre-training is about 59 GFLOP per image (forward + backward, 75% masking)
    bench = load_benchmark("bench_speed")
    assert 57e9 < bench.train_flops_per_image("vit_mae", "base") < 60e9


def test_data_pipeline_benchmark_compares_the_loader_with_training(tmp_path):
    bench = load_benchmark("bench_data_pipeline")
    output = tmp_path / "pipeline.json"
    args = bench.parse_args(
        ["--image_size", "32", "--num_images", "48", "--batch_size", "8", "--num_workers", "0",
         "--train_batch_size", "2", "--train_steps", "1", "--output_json", str(output)]
    )  # fmt: skip
    results = {(r["stage"], r["num_workers"]): r for r in bench.main(args)["results"]}
    assert set(results) == {("decode", 0), ("decode+transform", 0), ("dataloader", 0), ("training", 0)}
    assert results[("decode", 0)]["images"] == 48
    assert results[("dataloader", 0)]["images"] == 40  # the first batch is not timed
    assert results[("training", 0)]["images"] == 2
    loader, training = results[("dataloader", 0)], results[("training", 0)]
    assert loader["times_training"] == loader["images_per_s"] / training["images_per_s"]
    assert json.loads(output.read_text())["results"][-1]["stage"] == "training"
