"""
Reconstruction: masked-patch scores of the model beside its trivial predictors, and the
images and grids that show them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from ..modeling_dilated_vit_mae import DilatedViTMAEForPreTraining, patch_mean_std, patchify, unpatchify
from .metrics.pixel_errors import mean_squared_error, psnr_from_mse



def to_unit_range(normalised: torch.Tensor, image_mean: Sequence[float], image_std: Sequence[float]) -> torch.Tensor:
    """`(B, C, H, W)` images normalised by the image processor -> [0, 1]."""
    mean = torch.tensor(image_mean, device=normalised.device).reshape(1, -1, 1, 1)
    std = torch.tensor(image_std, device=normalised.device).reshape(1, -1, 1, 1)
    return (normalised * std + mean).clamp(0.0, 1.0)


def reconstruction_images(
    model: DilatedViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> dict[str, torch.Tensor]:
    """
    Images in [0, 1] for showing and scoring a reconstruction: `original`, `masked` (masked patches blanked),
    `reconstruction` (every patch predicted) and `recomposited` (visible patches from the original, masked ones
    predicted), each `(B, C, H, W)`, and `pixel_mask` (1 on masked pixels).

    With `norm_pix_loss`, predictions are mapped back with the target patches' statistics
    ([`DilatedViTMAEForPreTraining.logits_to_pixel_values`]).
    """
    original = to_unit_range(pixel_values.float(), image_mean, image_std)
    prediction = model.logits_to_pixel_values(logits.float(), pixel_values.float())
    reconstruction = to_unit_range(prediction, image_mean, image_std)
    pixel_mask = model.mask_to_pixels(mask.float(), tuple(pixel_values.shape[2:])).expand_as(original)
    return {
        "original": original,
        "masked": original * (1 - pixel_mask),
        "reconstruction": reconstruction,
        "recomposited": original * (1 - pixel_mask) + reconstruction * pixel_mask,
        "pixel_mask": pixel_mask,
    }


PREDICTORS = ("model", "baseline_zeros", "baseline_visible_mean")


def _normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    """norm_pix_loss's target: each patch minus its mean, over its standard deviation (the model's statistics)."""
    mean, std = patch_mean_std(patches)
    return (patches - mean) / std


def _visible_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(B, L, ...)` values averaged over each image's visible patches (`mask` 0) -> `(B, 1, ...)`."""
    weights = (1 - mask).reshape(*mask.shape, *([1] * (values.ndim - 2)))
    return (values * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1)


def _patch_predictions(
    model: DilatedViTMAEForPreTraining, patches: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """
    Each predictor's masked patches in the loss's target space, and in the input's normalised pixel space computed
    without any statistic of a masked patch (with `norm_pix_loss` a normalised prediction is mapped back with the
    mean and variance of the image's *visible* patches).
    """
    visible_mean_patch = _visible_mean(patches, mask).expand_as(patches)
    targets = {"model": logits, "baseline_zeros": torch.zeros_like(patches), "baseline_visible_mean": visible_mean_patch}
    if not model.config.norm_pix_loss:
        return targets, dict(targets)
    targets["baseline_visible_mean"] = _normalise_patches(visible_mean_patch)
    mean = _visible_mean(patches.mean(dim=-1, keepdim=True), mask)
    std = (_visible_mean(patches.var(dim=-1, keepdim=True), mask) + 1.0e-6) ** 0.5
    pixels = {name: value * std + mean for name, value in targets.items() if name != "baseline_visible_mean"}
    return targets, {**pixels, "baseline_visible_mean": visible_mean_patch}


def reconstruction_scores(
    model: DilatedViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> dict[str, torch.Tensor]:
    """
    Per-image `(B,)` scores of the model and of two trivial predictors on the same masks, so that every figure has
    a floor beside it: `baseline_zeros` (predict 0 in the loss's target space: the dataset mean colour for a pixel
    loss, each patch's own mean with `norm_pix_loss`) and `baseline_visible_mean` (each masked patch is the mean of
    the image's visible patches).

    Keys are `{predictor}_{metric}` for the predictors in `PREDICTORS` and the metrics `loss` (the training loss:
    MSE on masked patches in the target space), `masked_patch_mse` (MSE on masked pixels in [0, 1]) and `psnr` (of
    the re-composited image in [0, 1]). The last two use no statistic of a masked patch. With `norm_pix_loss`,
    `oracle_masked_patch_mse` / `oracle_psnr` (and the zeros baseline's) map normalised predictions back with each
    masked patch's *true* mean and variance, as MAE's visualisation does: an oracle, only comparable to its baseline.
    """
    patch_size = model.vit.embeddings.patch_embeddings.patch_size
    grid = model.vit.embeddings.patch_embeddings.grid_for(*pixel_values.shape[2:])
    channels = pixel_values.shape[1]
    pixel_values, logits, mask = pixel_values.float(), logits.float(), mask.float()
    patches = patchify(pixel_values, patch_size)  # (B, L, p*p*C)
    target = _normalise_patches(patches) if model.config.norm_pix_loss else patches
    in_target_space, in_pixel_space = _patch_predictions(model, patches, logits, mask)
    def unit_image(patch_values: torch.Tensor) -> torch.Tensor:
        return to_unit_range(unpatchify(patch_values, patch_size, grid, channels), image_mean, image_std)

    original = unit_image(patches)
    pixel_mask = model.mask_to_pixels(mask, tuple(pixel_values.shape[2:]))  # (B, 1, H, W)
    masked_patches = mask.sum(dim=1).clamp(min=1)

    def pixel_scores(patch_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the definitions of the `masked_patch_mse` and `psnr` metric modules (data range 1)
        recomposited = original * (1 - pixel_mask) + unit_image(patch_values) * pixel_mask
        mse = mean_squared_error(recomposited, original, pixel_mask)
        return mse, psnr_from_mse(mean_squared_error(recomposited, original))

    scores = {}
    for name in PREDICTORS:
        error = ((in_target_space[name] - target) ** 2).mean(dim=-1)  # (B, L)
        scores[f"{name}_loss"] = (error * mask).sum(dim=1) / masked_patches
        scores[f"{name}_masked_patch_mse"], scores[f"{name}_psnr"] = pixel_scores(in_pixel_space[name])
    if model.config.norm_pix_loss:
        own_mean, own_std = patch_mean_std(patches)
        for name in ("model", "baseline_zeros"):
            mse, psnr = pixel_scores(in_target_space[name] * own_std + own_mean)
            scores[f"{name}_oracle_masked_patch_mse"], scores[f"{name}_oracle_psnr"] = mse, psnr
    return scores


def visible_mean_images(
    model: DilatedViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    mask: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> torch.Tensor:
    """The `baseline_visible_mean` predictor as `(B, C, H, W)` images in [0, 1]: masked patches filled with the mean
    of the image's visible patches, visible ones as they are."""
    patch_embeddings = model.vit.embeddings.patch_embeddings
    patches = patchify(pixel_values.float(), patch_embeddings.patch_size)
    filled = torch.where(mask.bool().unsqueeze(-1), _visible_mean(patches, mask.float()).expand_as(patches), patches)
    images = unpatchify(filled, patch_embeddings.patch_size, patch_embeddings.grid_for(*pixel_values.shape[2:]), pixel_values.shape[1])
    return to_unit_range(images, image_mean, image_std)


def summary_keys(scores: dict[str, float]) -> dict[str, float]:
    """`model_loss` -> `loss`, `model_oracle_psnr` -> `oracle_psnr`, baselines unchanged (all_results.json keys)."""
    return {name.removeprefix("model_"): value for name, value in scores.items()}


GRID_COLUMNS = {
    "original": "original",
    "masked": "masked (input)",
    "reconstruction": "reconstruction",
    "recomposited": "re-composited",
    "baseline": "visible-patch mean",
}
GRID_GAP = 4  # white pixels between tiles, so that a masked tile stands apart from its neighbours
GRID_HEADER = 24  # the column labels' band


def label_font(size: int) -> PIL.ImageFont.ImageFont:
    """Pillow's default font at `size` pixels (the one bitmap size of Pillow < 10.1)."""
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return PIL.ImageFont.load_default()


def labelled_grid(
    rows: Sequence[Mapping[str, PIL.Image.Image]],
    columns: Sequence[str] | None = None,
    min_cell_size: int = 128,
    caption: str | None = None,
) -> PIL.Image.Image:
    """
    The one renderer of reconstruction pictures (run_mae's evaluation grid, `scripts/visualize.py`, the model card's
    example strips): one row per mapping of `rows`, one column per name of `columns` (default: every entry of
    `GRID_COLUMNS` that the rows hold), labelled from `GRID_COLUMNS` (else the name itself), tiles upscaled (nearest,
    by an integer factor) until their shorter side is at least `min_cell_size` pixels, and `caption` under the grid,
    wrapped to its width. Every image is drawn at the size of the first row's first one.
    """
    names = [name for name in GRID_COLUMNS if name in rows[0]] if columns is None else list(columns)
    first = rows[0][names[0]]
    factor = max(1, -(-min_cell_size // min(first.size)))  # ceil division
    cell_width, cell_height = first.width * factor, first.height * factor
    width = (cell_width + GRID_GAP) * len(names) - GRID_GAP
    body = (cell_height + GRID_GAP) * len(rows) - GRID_GAP
    font = label_font(14)
    if caption:  # wrapped to the grid's width (about 7 px a character at this size)
        caption = "\n".join(textwrap.fill(line, max(20, width // 7)) for line in caption.splitlines())
    footer = 22 * (caption.count("\n") + 1) + 6 if caption else 0
    grid = PIL.Image.new("RGB", (width, GRID_HEADER + body + footer), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for column, name in enumerate(names):
        x = column * (cell_width + GRID_GAP)
        draw.text((x + 4, 4), GRID_COLUMNS.get(name, name), fill=(0, 0, 0), font=font)
        for row, images in enumerate(rows):
            tile = images[name].convert("RGB").resize((cell_width, cell_height), PIL.Image.NEAREST)
            grid.paste(tile, (x, GRID_HEADER + row * (cell_height + GRID_GAP)))
    if caption:
        draw.multiline_text((4, GRID_HEADER + body + 4), caption, fill=(0, 0, 0), font=font, spacing=8)
    return grid


def _to_pil(image: torch.Tensor) -> PIL.Image.Image:
    """A `(C, H, W)` image in [0, 1] -> an RGB (or, with one channel, greyscale) PIL image."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array[..., :3]))


def reconstruction_grid(
    images: dict[str, torch.Tensor], max_images: int = 8, min_cell_size: int = 128, caption: str | None = None
) -> PIL.Image.Image:
    """
    [`labelled_grid`] of a batch: `images` maps names of `GRID_COLUMNS` to `(B, C, H, W)` images in [0, 1] (as
    [`reconstruction_images`] returns them, with the trivial predictor's as `baseline`); one row per image, at most
    `max_images`, and `caption` (e.g. the metrics beside the trivial predictor's) under the grid.
    """
    count = min(max_images, images["original"].shape[0])
    columns = [name for name in GRID_COLUMNS if name in images]
    rows = [{name: _to_pil(images[name][row]) for name in columns} for row in range(count)]
    return labelled_grid(rows, columns, min_cell_size, caption)
