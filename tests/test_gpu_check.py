"""`benchmarks/gpu_check.sh --dry_run`: every step of the GPU check runs on CPU with tiny sizes and reports its figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # two speed benchmarks and a short run_mae.py, each in a fresh interpreter: ~80 s on two cores
def test_gpu_check_dry_run_prints_and_writes_every_figure(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry_run"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["dry_run"] is True
    assert summary["targets"] == {
        "ours_images_per_s": 6700, "ours_mfu": 0.40, "ours_vs_vit_mae_min": 0.90, "data_wait_fraction_max": 0.05,
        "host_cpu_us_per_image_max": 400, "host_cpu_us_per_image_goal": 250,
    }  # fmt: skip
    pipeline = summary["pipeline"]
    assert pipeline["host_cpu_us_per_image"] > 0 and pipeline["float32_host_host_cpu_us_per_image"] > 0
    speed = summary["speed"]
    assert speed["ours_default_images_per_s"] > 0 and speed["vit_mae_images_per_s"] > 0
    assert speed["ours_vs_vit_mae"] == speed["ours_default_images_per_s"] / speed["vit_mae_images_per_s"]
    assert 0 < speed["ours_default_mfu"] < 1 and 0 < speed["vit_mae_mfu"] < 1
    ratios = summary["mask_token_vs_drop"]
    assert ratios["train_step_ratio"] > 0 and ratios["encoder_fwd_bwd_ratio"] > 0 and ratios["train_flops_ratio"] > 2
    run = summary["run_mae"]
    assert run["returncode"] == 0 and run["steps_logged"] >= 3 and run["images_per_s"] > 0
    assert run["data_wait_fraction"] is None or 0 <= run["data_wait_fraction"] <= 1
    assert (tmp_path / "celeba_synthetic" / "list_eval_partition.txt").is_file()
    for line in ("host CPU us per image, uint8 (device) path", "ours img/s (ViT-B/16 MAE step)", "ours / ViTMAE img/s", "mask-token / drop training step",
                 "run_mae.py img/s (end to end)", "run_mae.py data wait fraction", ">= 6,700", "< 5%"):  # fmt: skip
        assert line in result.stdout, line


def test_gpu_check_rejects_unknown_arguments():
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--fast"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown argument --fast (only --dry_run)" in result.stderr
