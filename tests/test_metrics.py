"""Tests for `dilated_vit_mae.evaluation.metrics`: the three `evaluate` metric modules, loaded offline, against numpy."""

import ast
import doctest
import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from dilated_vit_mae.evaluation.metrics import METRIC_NAMES, METRICS_DIR, load_metric

evaluate = pytest.importorskip("evaluate", reason="the metrics are `evaluate` modules: pip install '.[test]'")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # loading by file path must not touch the network (`evaluate.load("mse")` would)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- loading ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_every_metric_loads_by_name_and_by_path(name):
    metric = load_metric(name, keep_in_memory=True)
    assert isinstance(metric, evaluate.Metric)
    assert metric.name == name
    assert "Examples:" in metric.inputs_description and metric.citation.startswith("@")
    # the same file loads with plain `evaluate.load`, as a user without our helper would do
    assert evaluate.load(str(METRICS_DIR / f"{name}.py"), keep_in_memory=True).name == name


def test_unknown_metric_lists_the_valid_names():
    valid = r"'masked_patch_mse', 'psnr', 'mean_attribute_accuracy'"
    with pytest.raises(ValueError, match=rf"Unknown metric 'mse': choose one of {valid}"):
        load_metric("mse")


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """The top-level libraries a file imports, and the sibling modules it imports relatively (`from .x import y`)."""
    libraries, siblings = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            libraries |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            libraries.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1 and "." not in node.module, f"{path.name}: only sibling modules can be copied"
            siblings.add(node.module)
    return libraries, siblings


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_metric_scripts_import_only_what_evaluate_can_copy(name):
    # `evaluate.load` copies the script and the siblings it imports relatively (one level, not their imports) into
    # its module cache: no package imports, and a sibling imports only libraries
    libraries, siblings = _imports(METRICS_DIR / f"{name}.py")
    for sibling in siblings:
        sibling_libraries, sibling_siblings = _imports(METRICS_DIR / f"{sibling}.py")
        assert not sibling_siblings, f"{sibling}.py imports siblings, which evaluate.load would not copy"
        libraries |= sibling_libraries
    assert libraries <= {"datasets", "evaluate", "numpy", "torch"} | set(sys.stdlib_module_names)
    # evaluate finds the siblings with its own line parser (`from .x import` at the start of a line), not Python's:
    # an import it cannot see would not be copied, and the script would fail to load from the cache
    found = evaluate.loading.get_imports(str(METRICS_DIR / f"{name}.py"))
    assert {module for kind, module, _, _ in found if kind == "internal"} == siblings


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_evaluate_finds_each_scripts_own_metric_class(name):
    # `evaluate.load` takes the first `EvaluationModule` subclass in the script's namespace: a class imported from a
    # sibling (a shared base class) would be loaded instead of the script's own
    module_path = f"dilated_vit_mae.evaluation.metrics.{name}"
    assert evaluate.loading.import_main_class(module_path).__module__ == module_path


def test_metric_scripts_ship_with_the_package():
    setuptools = pytest.importorskip("setuptools", reason="checks what setup.cfg's `packages = find:` selects")
    root = Path(__file__).resolve().parent.parent
    assert "dilated_vit_mae.evaluation.metrics" in setuptools.find_packages(str(root), include=["dilated_vit_mae*"])
    assert {f"{name}.py" for name in METRIC_NAMES} <= {path.name for path in METRICS_DIR.glob("*.py")}


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"dilated_vit_mae.evaluation.metrics.{name}")
    parser = doctest.DocTestParser()
    test = parser.get_doctest(module._KWARGS_DESCRIPTION, {}, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


# --- masked-patch MSE ---------------------------------------------------------------------------------------


def test_masked_patch_mse_weights_every_value_over_batches(rng):
    metric = load_metric("masked_patch_mse", keep_in_memory=True)
    all_predictions, all_references = [], []
    for batch_size, num_values in [(4, 48), (3, 96), (5, 12)]:  # different lengths across batches
        predictions = rng.random((batch_size, num_values), dtype=np.float32)
        references = rng.random((batch_size, num_values), dtype=np.float32)
        metric.add_batch(predictions=predictions, references=references)
        all_predictions += list(predictions)
        all_references += list(references)
    # examples of different lengths within one batch, as lists
    ragged = [rng.random(n, dtype=np.float32) for n in (7, 300, 1)]
    ragged_references = [rng.random(n, dtype=np.float32) for n in (7, 300, 1)]
    metric.add_batch(predictions=[r.tolist() for r in ragged], references=[r.tolist() for r in ragged_references])
    all_predictions += ragged
    all_references += ragged_references

    result = metric.compute()

    squared_errors = np.concatenate(
        [(p.astype(np.float64) - r.astype(np.float64)) ** 2 for p, r in zip(all_predictions, all_references)]
    )
    per_example_mean = np.mean([np.mean((p - r) ** 2.0) for p, r in zip(all_predictions, all_references)])
    assert set(result) == {"masked_patch_mse"} and isinstance(result["masked_patch_mse"], float)
    assert result["masked_patch_mse"] == pytest.approx(squared_errors.mean(), rel=1e-12)
    assert result["masked_patch_mse"] != pytest.approx(per_example_mean, rel=1e-3)  # not a mean of means


def test_masked_patch_mse_accepts_tensors_and_lists_of_arrays(rng):
    torch = pytest.importorskip("torch", reason="tensor inputs")
    metric = load_metric("masked_patch_mse", keep_in_memory=True)
    predictions = rng.random((3, 10), dtype=np.float32)
    references = rng.random((3, 10), dtype=np.float32)
    metric.add_batch(predictions=torch.from_numpy(predictions), references=torch.from_numpy(references))
    metric.add_batch(predictions=list(predictions), references=list(references))  # a list of 1-D arrays
    expected = np.mean((predictions.astype(np.float64) - references) ** 2)
    assert metric.compute()["masked_patch_mse"] == pytest.approx(expected, rel=1e-12)


def test_masked_patch_mse_known_value():
    metric = load_metric("masked_patch_mse", keep_in_memory=True)
    result = metric.compute(predictions=[[0.0, 0.0, 0.0], [1.0]], references=[[0.5, 0.5, 0.5], [0.5]])
    assert result["masked_patch_mse"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    "predictions, references, match",
    [
        (
            [[0.1, 0.2], [0.1, 0.2, 0.3]],
            [[0.1, 0.2], [0.1, 0.2]],
            r"Example 1: the prediction has 3 values but its reference has 2; pass the same masked-patch pixels, in "
            r"the same order, for both\.$",
        ),
        ([[0.1, float("nan")]], [[0.1, 0.2]], r"Example 0: .*NaN or infinite.*; the masked-patch MSE is undefined"),
        ([[0.1], [0.2]], [[0.1], [float("inf")]], r"Example 1: .*NaN or infinite"),
        ([[0.1, None]], [[0.1, 0.2]], r"Example 0: .*NaN or infinite"),  # a missing value
        ([[], []], [[], []], r"nothing to average: got 2 examples with 0 values"),
    ],
)
def test_masked_patch_mse_errors(predictions, references, match):
    metric = load_metric("masked_patch_mse", keep_in_memory=True)
    with pytest.raises(ValueError, match=match):
        metric.compute(predictions=predictions, references=references)


# --- PSNR ---------------------------------------------------------------------------------------------------


def test_psnr_is_mean_of_per_image_psnr(rng):
    metric = load_metric("psnr", keep_in_memory=True)
    references = rng.random((6, 3 * 8 * 8), dtype=np.float32)
    noise = rng.normal(0, [[0.01], [0.02], [0.05], [0.1], [0.2], [0.3]], size=references.shape)
    predictions = np.clip(references + noise, 0, 1).astype(np.float32)
    metric.add_batch(predictions=predictions[:4], references=references[:4])
    metric.add_batch(predictions=predictions[4:], references=references[4:])

    result = metric.compute(data_range=1.0)

    mse = ((predictions.astype(np.float64) - references) ** 2).mean(axis=1)
    assert result["psnr"] == pytest.approx(np.mean(10 * np.log10(1.0 / mse)), rel=1e-9)
    assert result["psnr"] != pytest.approx(10 * np.log10(1.0 / mse.mean()), rel=1e-3)  # not the PSNR of the mean MSE


@pytest.mark.parametrize("data_range, scale", [(1.0, 1.0), (255.0, 255.0), (2.0, 2.0)])
def test_psnr_uniform_error_of_a_tenth_of_the_range_is_20_db(data_range, scale):
    metric = load_metric("psnr", keep_in_memory=True)
    references = np.full((2, 64), 0.5 * scale)
    predictions = references + np.array([[0.1 * scale], [-0.1 * scale]])
    result = metric.compute(predictions=predictions, references=references, data_range=data_range)
    assert result["psnr"] == pytest.approx(20.0, abs=1e-4)  # float32 storage of 0.1


def test_psnr_identical_images_are_capped():
    psnr_module = importlib.import_module("dilated_vit_mae.evaluation.metrics.psnr")
    metric = load_metric("psnr", keep_in_memory=True)
    image = [0.0, 0.25, 1.0]
    assert metric.compute(predictions=[image], references=[image]) == {"psnr": psnr_module.MAX_PSNR}
    assert psnr_module.MAX_PSNR == 100.0
    # one perfect image among others: finite, the cap enters the mean
    result = metric.compute(predictions=[image, [0.1, 0.1]], references=[image, [0.0, 0.0]])
    assert math.isfinite(result["psnr"]) and result["psnr"] == pytest.approx((100.0 + 20.0) / 2, abs=1e-4)


@pytest.mark.parametrize(
    "predictions, references, kwargs, match",
    [
        (
            [[0.1, 0.2, 0.3]],
            [[0.1, 0.2]],
            {},
            r"Example 0: the prediction has 3 values but its reference has 2; pass the same image, flattened the "
            r"same way, for both\.$",
        ),
        ([[0.1], [float("nan")]], [[0.1], [0.2]], {}, r"Example 1: .*NaN or infinite"),
        ([[0.1]], [[float("nan")]], {}, r"Example 0: .*NaN or infinite.*reference; PSNR is undefined for them \("),
        ([[0.1], []], [[0.1], []], {}, r"Example 1 is empty"),
        ([[0.1]], [[0.2]], {"data_range": 0.0}, r"`data_range` must be > 0 .* got 0.0"),
        ([[0.1]], [[0.2]], {"data_range": -1.0}, r"`data_range` must be > 0 .* got -1.0"),
        ([[0.1]], [[0.2]], {"data_range": float("nan")}, r"`data_range` must be a positive finite number .* got nan"),
        ([[0.1]], [[0.2]], {"data_range": "1"}, r"`data_range` must be a positive finite number .* got '1'"),
    ],
)
def test_psnr_errors(predictions, references, kwargs, match):
    metric = load_metric("psnr", keep_in_memory=True)
    with pytest.raises(ValueError, match=match):
        metric.compute(predictions=predictions, references=references, **kwargs)


# --- mean attribute accuracy --------------------------------------------------------------------------------

# 5 examples x 3 attributes, by hand
PREDICTIONS = [[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 0, 1]]
REFERENCES = [[1, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1], [0, 0, 1]]
# per attribute: correct 4/5, 3/5, 3/5 -> mean 2/3
# positive reference fractions 2/5, 1/5, 3/5 -> majority floor (3/5 + 4/5 + 3/5) / 3 = 2/3


def test_mean_attribute_accuracy_by_hand():
    metric = load_metric("mean_attribute_accuracy", keep_in_memory=True)
    names = ["Smiling", "Male", "Young"]
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES, attribute_names=names)
    assert result["per_attribute_accuracy"] == pytest.approx({"Smiling": 0.8, "Male": 0.6, "Young": 0.6})
    assert result["mean_attribute_accuracy"] == pytest.approx(2 / 3)
    assert result["majority_baseline"] == pytest.approx((0.6 + 0.8 + 0.6) / 3)
    # exact match over all attributes would be 2/5: not what is reported
    assert result["mean_attribute_accuracy"] != pytest.approx(0.4)


def test_mean_attribute_accuracy_keys_default_to_indices():
    metric = load_metric("mean_attribute_accuracy", keep_in_memory=True)
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert list(result["per_attribute_accuracy"]) == [0, 1, 2]


def test_majority_baseline_from_training_fractions():
    metric = load_metric("mean_attribute_accuracy", keep_in_memory=True)
    # train majority: positive, negative, negative (0.5 is a tie: negative)
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES, majority_reference=[0.7, 0.1, 0.5])
    # predicting 1, 0, 0 on the references: 2/5, 4/5, 2/5
    assert result["majority_baseline"] == pytest.approx((0.4 + 0.8 + 0.4) / 3)
    assert result["mean_attribute_accuracy"] == pytest.approx(2 / 3)  # unchanged


def test_mean_attribute_accuracy_against_numpy_over_batches(rng):
    metric = load_metric("mean_attribute_accuracy", keep_in_memory=True)
    positive_rate = rng.uniform(0.02, 0.98, size=40)
    references = (rng.random((300, 40)) < positive_rate).astype(np.int64)
    predictions = np.where(rng.random((300, 40)) < 0.85, references, 1 - references).astype(bool)  # bools too
    train_fraction = rng.random(40)
    for start in range(0, 300, 64):
        metric.add_batch(predictions=predictions[start : start + 64], references=references[start : start + 64])

    result = metric.compute(majority_reference=train_fraction.tolist())

    per_attribute = (predictions == references).mean(axis=0)
    assert result["mean_attribute_accuracy"] == pytest.approx(per_attribute.mean(), rel=1e-12)
    assert list(result["per_attribute_accuracy"].values()) == pytest.approx(per_attribute.tolist())
    expected_floor = (references == (train_fraction > 0.5)).mean(axis=0).mean()
    assert result["majority_baseline"] == pytest.approx(expected_floor, rel=1e-12)


@pytest.mark.parametrize(
    "predictions, references, kwargs, match",
    [
        ([[1, 0], [1, 0, 1]], [[1, 0], [1, 0]], {}, r"Example 1 of `predictions` has 3 attributes but example 0 has"),
        ([[1, 0, 1], [1, 0, 1]], [[1, 0], [1, 0]], {}, r"predictions have 3 attributes per example but the"),
        ([[1, 0], [1, 2]], [[1, 0], [1, 0]], {}, r"must hold 0/1 labels, got 2 in example 1, attribute 1"),
        ([[1, 0]], [[-1, 1]], {}, r"`references` must hold 0/1 labels, got -1 in example 0, attribute 0.*-1/1"),
        ([[], []], [[], []], {}, r"have 0 attributes"),
        ([[1, 0]], [[1, 0]], {"attribute_names": ["a"]}, r"`attribute_names` has 1 names but the examples have 2"),
        ([[1, 0]], [[1, 0]], {"attribute_names": ["a", "a"]}, r"must be unique, got duplicates \['a'\]"),
        ([[1, 0]], [[1, 0]], {"majority_reference": [0.5]}, r"per attribute \(2\), got shape \(1,\)"),
        ([[1, 0]], [[1, 0]], {"majority_reference": [0.5, 1.5]}, r"fractions in \[0, 1\].*got \[0.5, 1.5\]"),
        ([[1, 0]], [[1, 0]], {"majority_reference": [0.5, float("nan")]}, r"fractions in \[0, 1\]"),
    ],
)
def test_mean_attribute_accuracy_errors(predictions, references, kwargs, match):
    metric = load_metric("mean_attribute_accuracy", keep_in_memory=True)
    with pytest.raises(ValueError, match=match):
        metric.compute(predictions=predictions, references=references, **kwargs)


# --- the published figures ----------------------------------------------------------------------------------


def test_reconstruction_scores_are_what_the_metric_modules_compute(tiny_config):
    # run_mae's evaluation (all_results.json, the model card) and the `evaluate` modules share one definition of
    # each figure: the same images give the same numbers
    torch = pytest.importorskip("torch", reason="the model")
    from dilated_vit_mae import DilatedViTMAEForPreTraining
    from dilated_vit_mae.evaluation.reconstruction import reconstruction_scores, to_unit_range, visible_mean_images

    model = DilatedViTMAEForPreTraining(tiny_config).eval()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        outputs = model(pixel_values, noise=torch.rand(3, 64))
    scores = reconstruction_scores(model, pixel_values, outputs.logits, outputs.mask, mean, std)
    # the visible-patch mean predictor's re-composited image, as the scores see it
    recomposited = visible_mean_images(model, pixel_values, outputs.mask, mean, std)
    original = to_unit_range(pixel_values, mean, std)
    masked = model.mask_to_pixels(outputs.mask).expand_as(original).bool()
    masked_patch_mse, psnr = load_metric("masked_patch_mse", keep_in_memory=True), load_metric("psnr", keep_in_memory=True)
    for index in range(3):
        expected = masked_patch_mse.compute(
            predictions=[recomposited[index][masked[index]]], references=[original[index][masked[index]]]
        )["masked_patch_mse"]
        assert scores["baseline_visible_mean_masked_patch_mse"][index].item() == pytest.approx(expected, rel=1e-5)
    expected = psnr.compute(predictions=recomposited.flatten(1), references=original.flatten(1))["psnr"]
    assert scores["baseline_visible_mean_psnr"].mean().item() == pytest.approx(expected, rel=1e-5)
