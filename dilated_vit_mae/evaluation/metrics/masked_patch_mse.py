# Copyright 2026 The dilated-vit-mae authors. Licensed under the Apache License, Version 2.0.
"""Masked-patch MSE: the mean squared error of an MAE reconstruction, over the pixels of the masked patches only.

An `evaluate` metric module that loads offline: `evaluate.load("path/to/masked_patch_mse.py")`, or
`dilated_vit_mae.evaluation.metrics.load_metric("masked_patch_mse")`. This file must import only `evaluate`, `torch`
and its siblings `metric_inputs.py` (the input handling the metrics share) and `pixel_errors.py` (the definition
`reconstruction_scores` uses too): `evaluate.load` copies the three alone into its module cache.
"""

import evaluate
import torch

from .metric_inputs import as_lists, checked_pairs, metric_info
from .pixel_errors import mean_squared_error


_CITATION = """\
@inproceedings{he2022masked,
  title={Masked Autoencoders Are Scalable Vision Learners},
  author={He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={16000--16009},
  year={2022}
}
"""

_DESCRIPTION = """\
Masked-patch MSE is the reconstruction error a masked autoencoder (MAE, He et al. 2022) is trained on: the mean
squared difference between reconstructed and original pixels, taken over the masked patches only (visible
patches are not predicted, so they do not count).

Each example is one image's masked-patch pixels, already selected and flattened, prediction and reference in
the same order. Examples may have different lengths (e.g. a different number of masked patches per image): the
result is the mean over all values of all examples, i.e. every pixel value weighs the same, and an image with
more masked patches weighs more. It is *not* the mean of per-image MSEs.

The value depends on the pixel scale: compare numbers only when they were computed on the same scale (e.g.
images in [0, 1], before any mean/std normalisation; with `norm_pix_loss` the model's own loss uses per-patch
normalised targets instead, which is a different number). Accumulation is in float64.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of float sequences, or a float array of shape `(num_examples, num_values)`):
        Reconstructed pixel values of the masked patches of each image, flattened (e.g.
        `model_pixels[mask.bool()].reshape(batch_size, -1)` when every image has the same number of masked
        patches). Non-finite values raise a `ValueError`.
    references (`list` of float sequences, or a float array of shape `(num_examples, num_values)`):
        The original pixel values of the same patches, in the same order; each reference must have the same
        length as its prediction.

Returns:
    masked_patch_mse (`float`): the mean squared error over every value of every example. 0.0 is a perfect
        reconstruction.

Examples:

    >>> from dilated_vit_mae.evaluation.metrics import load_metric
    >>> masked_patch_mse = load_metric("masked_patch_mse", keep_in_memory=True)
    >>> results = masked_patch_mse.compute(
    ...     predictions=[[0.5, 0.5], [0.0, 0.0, 0.0, 0.0]],
    ...     references=[[0.5, 0.7], [0.1, 0.1, 0.1, 0.1]],
    ... )
    >>> round(results["masked_patch_mse"], 6)  # (0.04 + 4 * 0.01) / 6 values, not (0.02 + 0.01) / 2 images
    0.013333

    Batch by batch, e.g. in an evaluation loop (float32 arrays of shape `(batch_size, num_values)`):

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(3):
    ...     target = rng.random((4, 48), dtype=np.float32)
    ...     masked_patch_mse.add_batch(predictions=target + 0.1, references=target)
    >>> round(masked_patch_mse.compute()["masked_patch_mse"], 6)
    0.01
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MaskedPatchMse(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(
            "float32",
            numpy_format=True,  # `_compute` gets float32 arrays
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            reference_urls=["https://arxiv.org/abs/2111.06377"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Add a batch of predictions and references (lists, arrays or tensors of shape `(batch_size, num_values)`)."""
        super().add_batch(predictions=as_lists(predictions), references=as_lists(references), **kwargs)

    def _compute(self, predictions, references) -> dict[str, float]:
        sum_squared_error = 0.0
        num_values = 0
        same_input = "the same masked-patch pixels, in the same order,"
        for _, prediction, reference in checked_pairs(predictions, references, same_input, "the masked-patch MSE"):
            if prediction.size:  # every value weighs the same: each example's MSE weighs its number of values
                mse = mean_squared_error(torch.from_numpy(prediction)[None], torch.from_numpy(reference)[None])
                sum_squared_error += float(mse) * prediction.size
                num_values += prediction.size
        if num_values == 0:
            raise ValueError(
                f"There is nothing to average: got {len(predictions)} examples with 0 values in total; pass "
                f"the masked-patch pixels of at least one image."
            )
        return {"masked_patch_mse": sum_squared_error / num_values}
