# Copyright 2026 The dilated-vit-mae authors. Licensed under the Apache License, Version 2.0.
"""PSNR: peak signal-to-noise ratio of reconstructed images, averaged over images.

An `evaluate` metric module that loads offline: `evaluate.load("path/to/psnr.py")`, or
`dilated_vit_mae.evaluation.metrics.load_metric("psnr")`. This file must import only `evaluate`, `torch` and its
siblings `metric_inputs.py` (the input handling the metrics share) and `pixel_errors.py` (the definition
`reconstruction_scores` uses too): `evaluate.load` copies the three alone into its module cache.
"""

import math
import numbers

import evaluate
import torch

from .metric_inputs import as_lists, checked_pairs, metric_info
from .pixel_errors import MAX_PSNR, mean_squared_error, psnr_from_mse

_CITATION = """\
@article{huynhthu2008scope,
  title={Scope of validity of {PSNR} in image/video quality assessment},
  author={Huynh-Thu, Quan and Ghanbari, Mohammed},
  journal={Electronics Letters},
  volume={44},
  number={13},
  pages={800--801},
  year={2008}
}
"""

_DESCRIPTION = f"""\
Peak signal-to-noise ratio (PSNR), in dB, of each reconstructed image against its original, averaged over
images (the usual "mean PSNR"): for image i with mean squared error mse_i over its values,

    PSNR_i = 10 * log10(data_range ** 2 / mse_i),    result = mean_i PSNR_i.

`data_range` is the span of valid pixel values: 1.0 for images in [0, 1], 255 for 8-bit images. Un-normalise
images (undo any mean/std normalisation) before passing them. Higher is better; each PSNR_i is capped at
{MAX_PSNR:g} dB, which is what an identical pair (mse_i = 0, infinite PSNR) gets. For a masked autoencoder,
compute it on the re-composited image (visible patches from the input, masked ones from the reconstruction), or
on the masked patches alone, and say which.
"""

_KWARGS_DESCRIPTION = f"""
Args:
    predictions (`list` of float sequences, or a float array of shape `(num_images, num_values)`):
        Each reconstructed image, flattened (e.g. `images.reshape(batch_size, -1)`). Images may have
        different sizes. NaN or infinite values raise a `ValueError`.
    references (`list` of float sequences, or a float array of shape `(num_images, num_values)`):
        The original images, flattened in the same order; each must have the same length as its prediction.
    data_range (`float`, *optional*, defaults to 1.0):
        The span of valid pixel values (max - min): 1.0 for [0, 1] images, 255.0 for uint8 images. Must be > 0.

Returns:
    psnr (`float`): the mean over images of each image's PSNR in dB, each capped at {MAX_PSNR:g} dB.

Examples:

    >>> from dilated_vit_mae.evaluation.metrics import load_metric
    >>> psnr = load_metric("psnr", keep_in_memory=True)
    >>> results = psnr.compute(predictions=[[0.1, 0.1, 0.5, 0.9]], references=[[0.0, 0.2, 0.4, 1.0]])
    >>> round(results["psnr"], 4)  # an error of 0.1 everywhere: 10 * log10(1 / 0.01)
    20.0
    >>> psnr.compute(predictions=[[0.0, 1.0]], references=[[0.0, 1.0]])  # identical: capped
    {{'psnr': 100.0}}

    Batch by batch, e.g. in an evaluation loop (float32 arrays of shape `(batch_size, num_values)`):

    >>> import numpy as np
    >>> for _ in range(3):
    ...     target = np.full((4, 48), 128.0, dtype=np.float32)
    ...     psnr.add_batch(predictions=target + 2.55, references=target)
    >>> round(psnr.compute(data_range=255.0)["psnr"], 4)
    40.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Psnr(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(
            "float32",
            numpy_format=True,  # `_compute` gets float32 arrays
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            reference_urls=["https://en.wikipedia.org/wiki/Peak_signal-to-noise_ratio"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Add a batch of predictions and references (lists, arrays or tensors of shape `(batch_size, num_values)`)."""
        super().add_batch(predictions=as_lists(predictions), references=as_lists(references), **kwargs)

    def _compute(self, predictions, references, data_range: float = 1.0) -> dict[str, float]:
        if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real) or not math.isfinite(data_range):
            raise ValueError(
                f"`data_range` must be a positive finite number (1.0 for images in [0, 1], 255.0 for uint8 "
                f"images), got {data_range!r}."
            )
        if data_range <= 0:
            raise ValueError(
                f"`data_range` must be > 0 (1.0 for images in [0, 1], 255.0 for uint8 images), got {data_range!r}."
            )
        if len(predictions) == 0:
            raise ValueError("Got 0 images: pass at least one prediction and reference to compute a mean PSNR.")

        image_mses = []
        same_input = "the same image, flattened the same way,"
        for index, prediction, reference in checked_pairs(predictions, references, same_input, "PSNR"):
            if prediction.size == 0:
                raise ValueError(f"Example {index} is empty: PSNR needs at least one pixel value per image.")
            image_mses.append(mean_squared_error(torch.from_numpy(prediction)[None], torch.from_numpy(reference)[None]))
        return {"psnr": float(psnr_from_mse(torch.cat(image_mses), float(data_range)).mean())}
