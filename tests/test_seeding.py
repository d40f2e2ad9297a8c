"""Seeded randomness: stable seeds, per-example augmentation and masking noise (data/seeding.py)."""

import numpy as np
import PIL.Image
import pytest
import torch

from dilated_vit_mae.data.seeding import IndexedTransform, masking_noise, stable_seed
from dilated_vit_mae.data.transforms import MAETrainTransform


def test_stable_seed_is_deterministic_and_distinguishes_parts():
    assert stable_seed(0, 1, 2) == stable_seed(0, 1, 2)
    assert len({stable_seed(0, 1, 2), stable_seed(0, 2, 1), stable_seed(1, 1, 2), stable_seed(0, 1, 3)}) == 4
    assert 0 <= stable_seed(123) < 2**63


def test_seeded_augmentation_depends_on_seed_epoch_and_index_only():
    images = [PIL.Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 36, 3), dtype=np.uint8)) for i in range(4)]
    augmentation = IndexedTransform(MAETrainTransform(16), seed=7)
    whole = augmentation({"image": images, "sample_index": [0, 1, 2, 3]})["pixel_values"]
    # the same example in another batch, alone, gets the same augmentation
    alone = augmentation({"image": images[2:3], "sample_index": [2]})["pixel_values"][0]
    torch.testing.assert_close(alone, whole[2], rtol=0, atol=0)
    augmentation.epoch = 1
    next_epoch = augmentation({"image": images[2:3], "sample_index": [2]})["pixel_values"][0]
    assert not torch.equal(next_epoch, whole[2])


def test_indexed_transform_without_a_seed_calls_the_transform_without_a_generator():
    # evaluation: the same view every time, whatever the epoch; the columns are the ones named
    calls = []

    def view(image, **kwargs):
        calls.append(kwargs)
        return torch.tensor(image)

    transform = IndexedTransform(view, "img", "idx")
    transform.epoch = 3
    batch = transform({"img": [1, 2], "idx": [5, 6]})
    assert batch == {"pixel_values": [torch.tensor(1), torch.tensor(2)], "idx": [5, 6]} and calls == [{}, {}]
    with pytest.raises(TypeError):  # the seed is keyword-only: a positional one would be read as a column name
        IndexedTransform(view, "img", "idx", 0)


def test_masking_noise_is_fixed_per_example():
    first = masking_noise(torch.tensor([3, 5]), 16, stream="train_mask", seed=0, epoch=1)
    second = masking_noise(torch.tensor([5, 3]), 16, stream="train_mask", seed=0, epoch=1)
    torch.testing.assert_close(first, second.flip(0), rtol=0, atol=0)
    assert not torch.equal(first, masking_noise(torch.tensor([3, 5]), 16, stream="train_mask", seed=0, epoch=2))
    assert not torch.equal(first, masking_noise(torch.tensor([3, 5]), 16, stream="eval_mask", seed=0, epoch=1))
    assert not torch.equal(first, masking_noise(torch.tensor([3, 5]), 16, stream="train_mask", seed=1, epoch=1))


def test_masking_noise_is_uniform_distinct_and_vectorised():
    noise = masking_noise(torch.arange(2048), 64, stream="train_mask", seed=3, epoch=0)
    assert noise.shape == (2048, 64) and noise.dtype == torch.float64
    assert 0 <= noise.min() and noise.max() < 1
    assert abs(noise.mean().item() - 0.5) < 0.01 and abs(noise.std().item() - (1 / 12) ** 0.5) < 0.01
    # distinct within a row: argsort has no ties to break differently on another device
    assert all(len(set(row.tolist())) == 64 for row in noise)
    # at 75% masking every patch is kept about a quarter of the time (binomial sd 0.0096 at n=2048)
    kept = torch.bincount(noise.argsort(1)[:, :16].flatten(), minlength=64).double() / 2048
    assert kept.min() > 0.2 and kept.max() < 0.3
    with pytest.raises(ValueError, match="Unknown random stream"):
        masking_noise(torch.arange(2), 4, stream="mask", seed=0)


def test_masking_noise_has_a_pinned_value():
    # a fixed function of its inputs: changing it silently would change every run's masks and break exact resume
    noise = masking_noise(torch.tensor([3]), 4, stream="train_mask", seed=2**40, epoch=1)
    torch.testing.assert_close(noise, torch.tensor([[0.3680, 0.5927, 0.0169, 0.1982]], dtype=torch.float64), atol=1e-4, rtol=0)


def _coordinate_image(size: int = 96) -> PIL.Image.Image:
    """Red encodes the column and green the row, so a crop's box and a flip can be read back from its pixels."""
    ramp = np.linspace(0, 255, size).round().astype(np.uint8)
    red, green = np.broadcast_to(ramp, (size, size)), np.broadcast_to(ramp[:, None], (size, size))
    return PIL.Image.fromarray(np.stack([red, green, np.zeros((size, size), np.uint8)], axis=-1))


def test_training_masks_are_independent_of_the_augmentation_of_the_same_example():
    # the user's scenario: run_mae seeds an example's augmentation and its training mask from the same
    # (seed, epoch, index); before the streams had tags the mask scores were the crop and flip draws themselves
    count, num_patches = 400, 16
    augmentation = IndexedTransform(MAETrainTransform(16, image_mean=[0.0] * 3, image_std=[1.0] * 3), seed=0)
    image = _coordinate_image()
    out = augmentation({"image": [image] * count, "sample_index": list(range(count))})["pixel_values"]
    out = torch.stack(out)  # (N, 3, 16, 16) in [0, 1]
    red_left, red_right = out[:, 0, :, 0].mean(1), out[:, 0, :, -1].mean(1)
    flipped = (red_left > red_right).double()
    width = (red_right - red_left).abs()
    height = (out[:, 1, -1, :].mean(1) - out[:, 1, 0, :].mean(1)).abs()
    area = (width * height).double()
    assert 0.3 < flipped.mean() < 0.7 and area.std() > 0.05  # the crops and flips really vary
    noise = masking_noise(torch.arange(count), num_patches, stream="train_mask", seed=0, epoch=0)
    for patch in range(num_patches):
        for drawn in (area, flipped):
            correlation = torch.corrcoef(torch.stack([drawn, noise[:, patch]]))[0, 1].abs().item()
            assert correlation < 0.2, (patch, correlation)  # independent: |r| ~ 0.05 at n=400, tied: ~1
    # the keep decision of patch 0 at 75% masking does not depend on whether the crop covers most of the image
    kept = noise.argsort(1)[:, : num_patches // 4].eq(0).any(1).double()
    large = area > area.median()
    assert abs(kept[large].mean() - kept[~large].mean()) < 0.15
