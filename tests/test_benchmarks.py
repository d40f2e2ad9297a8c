"""The speed and data-pipeline benchmarks run end to end and report what the README quotes from them (tiny sizes)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest

from conftest import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_benchmark(name: str):
    return load_file(f"benchmarks/{name}.py")


@pytest.mark.slow  # ten models and five fresh interpreters (the peak-memory children): ~60 s
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
    assert set(rows) == {"vit_mae", "ours_no_dilation", "ours_default", "ours_rates_2_3", "ours_mask_token"}
    assert rows["vit_mae"]["train_step_ratio"] == 1.0 and rows["vit_mae"]["encoder_ratio"] == 1.0
    for name, row in rows.items():
        assert row["train_step_ratio"] == row["train_step_s"] / rows["vit_mae"]["train_step_s"], name
        assert row["images_per_s"] == 2 / row["train_step_s"]
        assert row["train_tflops_per_s"] == pytest.approx(row["train_gflop_per_image"] * 2 / row["train_step_s"] / 1e3)
        assert row["mfu"] == pytest.approx(row["train_tflops_per_s"] / 2.0)
        # peak RSS of a clean process (VmHWM), confirmed by /usr/bin/time -v on the same process; well under the
        # parent's own RSS, which is what ru_maxrss of a forked child would have reported
        assert 0 < row["baseline_rss_mb"] < row["peak_memory_mb"] < 2000 and math.isfinite(row["peak_memory_ratio"])
        if row["peak_memory_mb_time_v"] is not None:
            assert row["peak_memory_mb_time_v"] == pytest.approx(row["peak_memory_mb"], rel=0.05)
    assert "ours_rates_2_3" in result.stdout and "ratios to ViTMAE" in result.stdout and "MFU" in result.stdout
    # the mask-token encoder sees every patch: 4x the encoder tokens at 75% masking
    ratios = report["results"]["small"]["mask_token_vs_drop"]
    assert ratios["train_flops_ratio"] == rows["ours_mask_token"]["train_gflop_per_image"] / rows["ours_no_dilation"]["train_gflop_per_image"]
    assert ratios["train_flops_ratio"] > 2 and ratios["encoder_fwd_bwd_ratio"] > 0
    assert "mask_token vs drop encoder: training step" in result.stdout
    # counted FLOPs: no dilation is ViTMAE's arithmetic; each dilated branch adds one patch projection per kept patch,
    # forward and weight gradient (2 FLOPs per multiply-add each): 64 px, patch 8 -> 16 of 64 patches kept, 3x8x8 -> 192
    flops = {name: round(row["train_gflop_per_image"] * 1e9) for name, row in rows.items()}
    per_branch = 2 * 2 * 16 * (3 * 8 * 8) * 192
    assert flops["ours_no_dilation"] == flops["vit_mae"]
    assert flops["ours_default"] - flops["vit_mae"] == per_branch
    assert flops["ours_rates_2_3"] - flops["vit_mae"] == 2 * per_branch


@pytest.mark.slow  # a fresh interpreter that imports transformers: ~10-40 s on two busy cores
def test_speed_benchmark_memory_child_measures_its_own_peak():
    bench = load_benchmark("bench_speed")
    figures = bench.peak_memory_mb("vit_mae", "small", 1, "cpu", "float32")
    assert 0 < figures["baseline_rss_mb"] < figures["peak_memory_mb"] < 2000
    with pytest.raises(RuntimeError, match="No VmNope in /proc/self/status"):
        bench.proc_status_mb("VmNope")


def test_flop_count_of_a_vit_b_mae_step_is_maes():
    # He et al.: ViT-B/16 MAE pre-training is about 59 GFLOP per image (forward + backward, 75% masking)
    bench = load_benchmark("bench_speed")
    assert 57e9 < bench.train_flops_per_image("vit_mae", "base") < 60e9


def test_data_pipeline_benchmark_measures_host_cpu_per_image_of_every_path(tmp_path):
    bench = load_benchmark("bench_data_pipeline")
    output = tmp_path / "pipeline.json"
    args = bench.parse_args(
        ["--image_size", "32", "--num_images", "48", "--batch_size", "8", "--num_workers", "0", "2",
         "--train_batch_size", "2", "--train_steps", "1", "--device_batches", "2", "--output_json", str(output)]
    )  # fmt: skip
    results = bench.main(args)["results"]
    loaders = {(r["path"], r["num_workers"]): r for r in results if r["stage"] == "loader"}
    assert set(loaders) == {(p, w) for p in ("float32_host", "uint8_device", "uint8_cache") for w in (0, 2)}
    for (path, workers), row in loaders.items():
        # the first batch of each worker is not timed: 6 batches of 8, minus one per worker (one in-process)
        assert row["images"] == 40, (path, workers)
        assert row["host_cpu_us_per_image"] == row["main_cpu_us_per_image"] + row["worker_cpu_us_per_image"]
        assert row["host_cpu_us_per_image"] > 0 and (row["worker_cpu_us_per_image"] > 0) == (workers > 0)
        assert row["images_per_s_per_worker"] == row["images_per_s"] / max(1, workers)
    training = next(r for r in results if r["stage"] == "training")
    assert loaders[("uint8_device", 2)]["times_training"] == loaders[("uint8_device", 2)]["images_per_s"] / training["images_per_s"]
    device = next(r for r in results if r["stage"] == "device")
    assert device["images"] == 16 and device["cpu_us_per_image"] > 0
    report = json.loads(output.read_text())
    summary = report["summary"]
    assert summary["host_cpu_us_per_image"] == loaders[("uint8_device", 2)]["host_cpu_us_per_image"]
    assert summary["float32_host_host_cpu_us_per_image"] == loaders[("float32_host", 2)]["host_cpu_us_per_image"]
    assert summary["faster_on_cpu"] in ("host", "device") and summary["target_host_cpu_us_per_image"] == 400
    cached = loaders[("uint8_cache", 2)]["host_cpu_us_per_image"]
    assert summary["uint8_cache_host_cpu_us_per_image"] == cached
    assert summary["uint8_cache_meets_target"] == (cached <= 400)
    assert summary["meets_target"] == summary["uint8_device_meets_target"]
    assert {r["decoder"] for r in results if r["stage"] == "decode"} >= {"pil"}


def test_data_pipeline_benchmark_skips_the_cache_path_for_images_of_several_sizes(tmp_path):
    # the decoded cache is for fixed-size datasets: the other paths are still measured, and the skip says why
    bench = load_benchmark("bench_data_pipeline")
    folder = tmp_path / "mixed"
    bench.make_synthetic_celeba(folder, 40)
    PIL.Image.new("RGB", (100, 120)).save(folder / "img_align_celeba" / "000001.jpg")
    args = bench.parse_args(
        ["--celeba_dir", str(folder), "--image_size", "32", "--num_images", "16", "--batch_size", "8", "--num_workers",
         "0", "--no_training", "--device_batches", "1"]
    )  # fmt: skip
    results = bench.main(args)["results"]
    skipped = [r for r in results if r["stage"] == "skipped"]
    assert [r["path"] for r in skipped] == ["uint8_cache"]
    assert skipped[0]["reason"].startswith("A decoded cache needs images of one size, got 2 sizes")
    assert {r["path"] for r in results if r["stage"] == "loader"} == {"float32_host", "uint8_device"}


def test_synthetic_celeba_loads_in_the_raw_layout(tmp_path):
    bench = load_benchmark("bench_data_pipeline")
    bench.make_synthetic_celeba(tmp_path, 40)
    from dilated_vit_mae.data.loading import load_celeba

    splits = load_celeba(tmp_path)
    assert {split: splits[split].num_rows for split in splits} == {"train": 36, "validation": 2, "test": 2}
    image = splits["train"][0]["image"]
    assert image.size == (178, 218) and image.format == "JPEG"
    assert len({splits["train"][i]["image"].tobytes() for i in range(36)}) == 36  # every image differs


@pytest.mark.slow  # three fresh interpreters that import transformers and start run_mae.py: ~1-3 min on two busy cores
def test_startup_benchmark_times_first_and_repeated_launches_and_evaluation(tmp_path):
    output, scratch = tmp_path / "startup.json", tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_startup.py", "--num_images", "120", "--scratch_dir", str(scratch),
         "--eval_workers", "0", "--output_json", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    first, repeated = report["startup"]
    # the first launch checks every image of the stand-in; the repeated one is served by the record it left
    assert first["images_checked"] == 120 and repeated["images_checked"] == 0
    for launch in (first, repeated):
        assert 0 < launch["load_celeba_s"] < launch["to_first_step_s"]
    (evaluation,) = report["evaluation"]
    assert evaluation["images"] == 12 and evaluation["num_workers"] == 0  # CelebA's validation share of 120
    assert evaluation["images_per_s"] == evaluation["images"] / evaluation["evaluation_s"]
    assert report["summary"]["images_checked"] == [120, 0] and report["data"]["standin_images"] == 120
    assert report["summary"]["evaluation_images_per_s"] == {"0": round(evaluation["images_per_s"], 1)}
    assert list(scratch.iterdir()) == []  # the stand-in is removed at exit
