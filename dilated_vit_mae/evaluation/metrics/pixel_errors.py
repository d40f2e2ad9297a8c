# Copyright 2026 The dilated-vit-mae authors. Licensed under the Apache License, Version 2.0.
"""The per-image definitions behind every reconstruction figure: (masked-pixel) mean squared error and PSNR.

One implementation for `evaluation.reconstruction.reconstruction_scores` (run_mae's evaluation, `all_results.json`,
the model card) and for the `masked_patch_mse` and `psnr` `evaluate` modules beside it. This file must import only
`torch`: `evaluate.load` copies it, with the metric script that imports it (`from .pixel_errors import ...`), into its
module cache.
"""

import torch


# An identical pair has MSE 0 and infinite PSNR; every image's PSNR is capped here so that one perfect image
# cannot turn a mean into inf (the convention of e.g. scikit-image would return inf).
MAX_PSNR = 100.0


def mean_squared_error(
    predictions: torch.Tensor, references: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """
    Per-image mean squared error `(B,)` of `(B, ...)` predictions and references, in their dtype; with `weights` (1 on
    the values that count, e.g. the masked pixels, 0 elsewhere; of their shape or broadcasting to it, e.g. one
    `(B, 1, H, W)` mask for every channel) the mean over those values only (0 for an image with none).
    """
    squared_error = (predictions - references) ** 2
    if weights is None:
        return squared_error.flatten(1).mean(dim=1)
    # a broadcast weight covers as many values as it is repeated: count them without materialising the repeats
    count = weights.flatten(1).sum(dim=1) * (squared_error[0].numel() // weights[0].numel())
    return (squared_error * weights).flatten(1).sum(dim=1) / count.clamp(min=1)


def psnr_from_mse(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of per-image mean squared errors, `10 * log10(data_range ** 2 / mse)`, each capped at `MAX_PSNR`
    (what an identical pair, mse 0, gets)."""
    return (10 * torch.log10(data_range**2 / mse)).clamp(max=MAX_PSNR)
