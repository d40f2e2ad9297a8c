"""Evaluation metrics as `evaluate` modules that load offline.

Each metric is an `evaluate` metric script in this folder (`masked_patch_mse.py`, `psnr.py`,
`mean_attribute_accuracy.py`), loaded by file path, so no network access is needed (`evaluate.load("mse")`
would download from the Hub). They ship inside the installed package. `masked_patch_mse` and `psnr` compute through
`pixel_errors.py`, the definitions that `evaluation.reconstruction.reconstruction_scores` (run_mae's evaluation, the
model card's figures) uses too; the three take their inputs through `metric_inputs.py` (features, batches, checks).

```python
>>> from dilated_vit_mae.evaluation.metrics import load_metric
>>> psnr = load_metric("psnr", keep_in_memory=True)
>>> round(psnr.compute(predictions=[[0.1, 0.9]], references=[[0.0, 1.0]])["psnr"], 4)  # error 0.1 everywhere
20.0

```

In a distributed evaluation loop, gather with `accelerator.gather_for_metrics((predictions, references))` and
call `metric.add_batch(...)` / `metric.compute()` on the main process only. (`scripts/run_mae.py` instead gathers
per-image scores from `reconstruction_scores`, which stores no pixels.)
`add_batch` takes lists, numpy arrays or tensors of shape `(batch_size, num_values)`.

Memory: `masked_patch_mse` and `psnr` keep every value they are given (float32, in Arrow) until `compute()`, i.e.
8 bytes per pixel value (prediction + reference), and `compute()` briefly needs ~3x that again (measured: 192 MB
of values, +616 MB peak in `compute()`). All 19,867 CelebA validation images at 224 px would be ~24 GB stored:
evaluate a subset or at a lower resolution.
Speed (2-core CPU): 8 batches of `(64, 4096)` float32 arrays take ~0.4 s in `add_batch` and ~0.05 s in `compute()`.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args


if TYPE_CHECKING:
    import evaluate

__all__ = ["METRICS_DIR", "METRIC_NAMES", "MetricName", "load_metric"]

# The folder holding the metric scripts (one `<name>.py` per metric).
METRICS_DIR: Path = Path(__file__).resolve().parent

MetricName = Literal["masked_patch_mse", "psnr", "mean_attribute_accuracy"]
METRIC_NAMES: tuple[str, ...] = get_args(MetricName)


def load_metric(name: MetricName, **kwargs: Any) -> "evaluate.EvaluationModule":
    """
    Load one of the package's metrics with `evaluate.load`, from the script that ships in this folder.

    Args:
        name (`str`):
            One of `"masked_patch_mse"` (MSE over the masked-patch pixels of an MAE reconstruction), `"psnr"`
            (mean PSNR over images) or `"mean_attribute_accuracy"` (the CelebA mean of per-attribute accuracies,
            with the majority-class floor).
        **kwargs:
            Passed on to `evaluate.load` (e.g. `keep_in_memory=True`, `experiment_id`, `num_process`,
            `process_id`, `cache_dir`).

    Returns:
        `evaluate.EvaluationModule`: the metric, used with `add_batch(predictions=..., references=...)` and
        `compute(**compute_kwargs)`; `metric.inputs_description` documents its inputs and outputs.

    Example:

    ```python
    >>> from dilated_vit_mae.evaluation.metrics import load_metric
    >>> masked_patch_mse = load_metric("masked_patch_mse", keep_in_memory=True)
    >>> result = masked_patch_mse.compute(predictions=[[0.5, 0.0]], references=[[0.5, 0.2]])
    >>> round(result["masked_patch_mse"], 6)  # (0 + 0.2 ** 2) / 2
    0.02

    ```
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}: choose one of {', '.join(repr(n) for n in METRIC_NAMES)}.")
    # imported here so that `import dilated_vit_mae.evaluation.metrics` works without `evaluate` installed
    import evaluate

    return evaluate.load(str(METRICS_DIR / f"{name}.py"), **kwargs)
