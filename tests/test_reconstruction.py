"""Reconstructions: the images and the grid (evaluation/reconstruction.py)."""

import numpy as np
import PIL.ImageFont
import pytest
import torch

from dilated_vit_mae import DilatedViTMAEForPreTraining
from dilated_vit_mae.evaluation.reconstruction import reconstruction_grid, reconstruction_images, reconstruction_scores
from dilated_vit_mae.modeling_dilated_vit_mae import patchify


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruction_images(tiny_config, norm_pix_loss):
    tiny_config.norm_pix_loss = norm_pix_loss
    model = DilatedViTMAEForPreTraining(tiny_config).eval()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    original = torch.rand(2, 3, 32, 32)
    pixel_values = (original - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    outputs = model(pixel_values, noise=torch.rand(2, 64))
    # a perfect prediction (in the model's target space) reconstructs the image exactly
    target = patchify(pixel_values, (4, 4))
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    images = reconstruction_images(model, pixel_values, target, outputs.mask, mean, std)
    torch.testing.assert_close(images["original"], original, atol=1e-5, rtol=0)
    torch.testing.assert_close(images["reconstruction"], original, atol=1e-4, rtol=0)
    # model outputs: visible pixels come from the original, masked ones from the prediction
    images = reconstruction_images(model, pixel_values, outputs.logits, outputs.mask, mean, std)
    visible = images["pixel_mask"] == 0
    assert images["pixel_mask"].mean().item() == pytest.approx(0.75)
    torch.testing.assert_close(images["recomposited"][visible], images["original"][visible])
    torch.testing.assert_close(images["recomposited"][~visible], images["reconstruction"][~visible])
    assert (images["masked"][~visible] == 0).all()
    grid = reconstruction_grid(images, caption="masked-patch MSE 0.01")
    # labelled columns of tiles upscaled to at least 128 px (32 px x 4), 4 px apart, a header and a caption line
    assert grid.size == (4 * 128 + 3 * 4, 24 + 2 * 128 + 4 + 28) and grid.mode == "RGB"
    header = np.asarray(grid)[:24]
    assert (header < 128).any(), "the column labels are drawn"


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruction_scores_loss_is_the_training_loss(tiny_config, norm_pix_loss):
    # the scores' `loss` is computed in the model's own target space (the same per-patch statistics with
    # `norm_pix_loss`): with the same number of masked patches per image, its mean is the model's loss
    tiny_config.norm_pix_loss = norm_pix_loss
    model = DilatedViTMAEForPreTraining(tiny_config).eval()
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        outputs = model(pixel_values, noise=torch.rand(3, 64))
    scores = reconstruction_scores(model, pixel_values, outputs.logits, outputs.mask, [0.5] * 3, [0.2] * 3)
    torch.testing.assert_close(scores["model_loss"].mean(), outputs.loss, rtol=1e-6, atol=0)


def test_the_grid_renders_with_the_one_bitmap_font_of_an_old_pillow(monkeypatch):
    load_default = PIL.ImageFont.load_default

    def old_pillow(size=None):  # Pillow < 10.1: no `size`
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return load_default()

    monkeypatch.setattr(PIL.ImageFont, "load_default", old_pillow)
    images = {"original": torch.rand(1, 3, 32, 32), "masked": torch.zeros(1, 3, 32, 32)}
    grid = reconstruction_grid(images, caption="masked-patch MSE 0.01")
    assert grid.size == (2 * 128 + 4, 24 + 128 + 28) and (np.asarray(grid)[:24] < 128).any()
