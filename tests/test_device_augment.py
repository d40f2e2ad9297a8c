"""Tests for `dilated_vit_mae.data.device_augment`: the batched crop / resize / flip / normalise of the device path."""

import io

import numpy as np
import PIL.Image
import pytest
import torch

from dilated_vit_mae.data.loading import CELEBA_SAMPLE_DIR
from dilated_vit_mae.data.device_augment import DeviceAugmentation, resample_weights, resolve_augment_on
from dilated_vit_mae.data.transforms import MAEHostTransform, MAETrainTransform, collate_examples

LEVELS = dict(image_mean=[0.0] * 3, image_std=[1.0] * 3, rescale_factor=1.0)  # outputs in 0..255 pixel levels


def coordinate_image(height: int = 40, width: int = 50) -> torch.Tensor:
    """(3, H, W) uint8 whose channel 0 is 5 x row, channel 1 is 5 x column (linear ramps), channel 2 constant."""
    rows = torch.arange(height).reshape(-1, 1).expand(height, width)
    columns = torch.arange(width).reshape(1, -1).expand(height, width)
    return torch.stack([5 * rows, 5 * columns, torch.full_like(rows, 77)]).to(torch.uint8)


def host_batch(images: list[torch.Tensor], boxes: list[tuple], flips: list[bool]) -> dict:
    return collate_examples(
        [{"image_uint8": i, "crop_box": b, "flip": f} for i, b, f in zip(images, boxes, flips)]
    )


def face_jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 178)[None, :, None] * np.ones((218, 1, 3))
    pixels = np.clip(ramp * np.array([1.0, 0.6, 0.3]) + rng.normal(0, 20, (218, 178, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_device_crop_reads_exactly_the_host_box_and_flip_reverses_columns():
    image = coordinate_image()
    top, left, height, width = 7, 11, 20, 24
    # at scale 1 the filter is the identity: the output is the box itself, and a flip reverses its columns
    same = DeviceAugmentation((height, width), **LEVELS)
    batch = host_batch([image, image], [(top, left, height, width)] * 2, [False, True])
    output = same(batch)
    box = image[:, top : top + height, left : left + width].float()
    torch.testing.assert_close(output[0], box, atol=1e-4, rtol=0)
    torch.testing.assert_close(output[1], box.flip(-1), atol=1e-4, rtol=0)
    # zoomed 2x (bicubic reproduces a linear ramp away from the borders): output pixel (i, j) reads the source at
    # the box's coordinates top + (i + 0.5) * height / out_height - 0.5, left + ...; the corners map to the box corners
    out_height, out_width = 40, 48
    output = DeviceAugmentation((out_height, out_width), **LEVELS)(batch)
    rows = top + (torch.arange(out_height) + 0.5) * height / out_height - 0.5
    columns = left + (torch.arange(out_width) + 0.5) * width / out_width - 0.5
    torch.testing.assert_close(output[0, 0], 5 * rows[:, None].expand(-1, out_width), atol=1e-3, rtol=0)
    torch.testing.assert_close(output[0, 1], 5 * columns[None, :].expand(out_height, -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(output[1, 1], 5 * columns.flip(0)[None, :].expand(out_height, -1), atol=1e-3, rtol=0)
    assert output[0, 0, 0, 0].item() == pytest.approx(5 * (top - 0.25), abs=1e-3)  # the box's top-left corner
    assert output[0, 1, -1, -1].item() == pytest.approx(5 * (left + width - 0.75), abs=1e-3)  # its bottom-right
    torch.testing.assert_close(output[:, 2], torch.full_like(output[:, 2], 77.0), atol=1e-3, rtol=0)


def test_device_output_matches_the_host_float_path_on_the_same_boxes():
    jpegs = [{"bytes": face_jpeg(seed), "path": f"{seed}.jpg"} for seed in range(4)]
    std = torch.tensor(MAETrainTransform().image_std).reshape(1, 3, 1, 1)
    for size, draft in [(224, True), (64, False), (64, True)]:  # upscaling; (antialiased) downscaling
        float_transform, host_transform = MAETrainTransform(size), MAEHostTransform(size, draft=draft)
        expected, examples = [], []
        for seed in range(12):
            jpeg = jpegs[seed % 4]
            expected.append(float_transform(jpeg, generator=torch.Generator().manual_seed(seed)))
            examples.append(host_transform(jpeg, generator=torch.Generator().manual_seed(seed)))
        assert any(e["flip"] for e in examples) and not all(e["flip"] for e in examples)
        output = DeviceAugmentation.from_transform(host_transform)(collate_examples(examples))
        assert output.shape == (12, 3, size, size) and output.dtype == torch.float32
        levels = ((output - torch.stack(expected)) * std * 255).abs()  # in 0..255 levels
        if size == 64 and draft:
            # crops >= 128 px decoded at 1/2 scale: libjpeg's DCT scaling instead of PIL's antialiasing filter (on
            # this noisy image, ~2 levels on average)
            assert 10 <= sum(e["image_uint8"].shape[1] == 109 for e in examples) < 12
            assert levels.mean() < 3.0
        else:  # PIL rounds to 8 bits after each pass: ~0.3 levels on average, at most ~1
            assert levels.mean() < 0.5 and levels.max() < 2.0


@pytest.mark.parametrize("decoder", ["auto", "pil"])
def test_device_path_with_its_defaults_equals_the_host_path_on_the_sample_at_64_and_224_px(decoder):
    # what `run_mae.py --augment_on device` builds (MAEHostTransform's defaults), against `--augment_on host`, on
    # the shipped CelebA JPEGs: at 64 px every crop is downscaled, most by 2x or more, where a draft (DCT-scaled)
    # decode would replace PIL's antialiasing filter
    paths = sorted((CELEBA_SAMPLE_DIR / "img_align_celeba").glob("*.jpg"))[:24]
    std = torch.tensor(MAETrainTransform().image_std).reshape(1, 3, 1, 1)

    def levels_off(host_transform: MAEHostTransform) -> torch.Tensor:
        float_transform = MAETrainTransform(host_transform.size)
        examples = [host_transform(str(p), torch.Generator().manual_seed(i)) for i, p in enumerate(paths)]
        expected = [float_transform(str(p), torch.Generator().manual_seed(i)) for i, p in enumerate(paths)]
        output = DeviceAugmentation.from_transform(host_transform)(collate_examples(examples))
        return ((output - torch.stack(expected)) * std * 255).abs()  # in 0..255 levels

    for size in (64, 224):
        levels = levels_off(MAEHostTransform(size, decoder=decoder))
        assert levels.max() < 2.0 and levels.mean() < 0.5, (size, levels.max().item(), levels.mean().item())
    # the draft decode (opt-in, formerly the default) is what differed
    assert levels_off(MAEHostTransform(64, decoder=decoder, draft=True)).max() > 10


def test_one_extreme_image_does_not_pad_its_batch_to_its_length(monkeypatch):
    # the collator pads a batch to its longest image and the device's resampling matrices span that length: a
    # 1 x 200,000 px PNG beside a CelebA face made a (2, 3, 200000, 178) batch and (2, 64, 200000) float matrices
    import dilated_vit_mae.data.transforms as transforms

    rng = np.random.default_rng(0)
    column = np.repeat(np.linspace(0, 255, 200_000)[:, None, None], 3, axis=2) + rng.normal(0, 10, (200_000, 1, 3))
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.clip(column, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    strip = np.clip(column[::20][:6000] + np.zeros((1, 40, 1)), 0, 255).astype(np.uint8)  # 6000 x 40: sliced inside
    images = [{"bytes": buffer.getvalue(), "path": "column.png"}, {"bytes": face_jpeg(), "path": "face.jpg"}, strip]
    std = torch.tensor(MAETrainTransform().image_std).reshape(1, 3, 1, 1)
    for size in (64, 224):
        host_transform, float_transform = MAEHostTransform(size), MAETrainTransform(size)
        examples = [host_transform(image, torch.Generator().manual_seed(i)) for i, image in enumerate(images)]
        batch = collate_examples(examples)
        assert batch["pixel_values_uint8"].shape == (3, 3, 218, 178)  # the face's size: the others are sliced
        output = DeviceAugmentation.from_transform(host_transform)(batch)
        expected = [float_transform(image, torch.Generator().manual_seed(i)) for i, image in enumerate(images)]
        levels = ((output - torch.stack(expected)) * std * 255).abs()
        assert levels.max() < 2.0 and levels.mean() < 0.5, (size, levels.max().item())
        # the same values as from the whole images
        monkeypatch.setattr(transforms, "MAX_UNSLICED_LENGTH", 10**6)
        whole = [host_transform(image, torch.Generator().manual_seed(i)) for i, image in enumerate(images[1:], 1)]
        assert whole[1]["image_uint8"].shape == (3, 6000, 40)
        unsliced = DeviceAugmentation.from_transform(host_transform)(collate_examples(whole))
        torch.testing.assert_close(output[1:], unsliced, atol=1e-4, rtol=0)
        monkeypatch.undo()


def test_padding_of_a_mixed_size_batch_does_not_reach_the_output():
    images = [coordinate_image(40, 50), coordinate_image(25, 30).flip(-1).contiguous()]
    boxes, flips = [(20, 30, 20, 20), (5, 10, 20, 20)], [False, True]  # both touch their image's bottom-right edge
    augment = DeviceAugmentation(32, **LEVELS)
    together = augment(host_batch(images, boxes, flips))
    assert host_batch(images, boxes, flips)["pixel_values_uint8"].shape == (2, 3, 40, 50)
    for i in range(2):
        alone = augment(host_batch([images[i]], [boxes[i]], [flips[i]]))
        torch.testing.assert_close(together[i], alone[0], atol=1e-3, rtol=0)


def test_resample_weights_are_pils():
    # PIL's filter on one row: resize a 1-pixel-high image with a box, against the matrix product
    rng = np.random.default_rng(0)
    row = rng.integers(0, 256, (1, 90), dtype=np.uint8)
    for interpolation, resample in [("bicubic", PIL.Image.BICUBIC), ("bilinear", PIL.Image.BILINEAR),
                                    ("lanczos", PIL.Image.LANCZOS), ("box", PIL.Image.BOX)]:  # fmt: skip
        for left, width, out in [(3.0, 40.0, 64), (0.0, 90.0, 17), (10.0, 70.0, 70)]:
            weights = resample_weights(
                torch.tensor([left]), torch.tensor([width]), torch.tensor([90]), 90, out, interpolation
            )
            torch.testing.assert_close(weights.sum(-1), torch.ones(1, out))
            ours = weights[0].double() @ torch.from_numpy(row[0]).double()
            pil = PIL.Image.fromarray(row).resize((out, 1), resample, box=(left, 0, left + width, 1))
            assert np.abs(ours.clamp(0, 255).numpy() - np.asarray(pil)[0]).max() <= 1.0, (interpolation, out)


def test_grey_images_and_float16_compute():
    grey = coordinate_image()[:1]
    batch = host_batch([grey], [(5, 5, 20, 30)], [False])
    output = DeviceAugmentation(16, image_mean=[0.5], image_std=[0.5])(batch)
    assert output.shape == (1, 1, 16, 16)
    half = DeviceAugmentation(16, image_mean=[0.5], image_std=[0.5], compute_dtype=torch.float16)(batch)
    torch.testing.assert_close(half, output, atol=2e-2, rtol=0)  # ~0.3 of 255 levels, normalised by 0.5


def test_sample_jpegs_through_a_worker_loader_match_the_in_process_result():
    from torch.utils.data import DataLoader

    paths = sorted((CELEBA_SAMPLE_DIR / "img_align_celeba").glob("*.jpg"))[:8]
    transform = MAEHostTransform(32)
    dataset = [{"pixel_values": transform(str(p), torch.Generator().manual_seed(i)), "sample_index": i}
               for i, p in enumerate(paths)]  # fmt: skip
    augment = DeviceAugmentation.from_transform(transform)
    in_process = augment(collate_examples(dataset))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_examples)
    from_workers = torch.cat([augment(batch) for batch in loader])
    torch.testing.assert_close(from_workers, in_process, atol=1e-5, rtol=0)  # workers run one intra-op thread


def test_invalid_arguments_raise_and_auto_picks_by_device():
    with pytest.raises(ValueError, match="`interpolation` must be one of .*got 'nearest'"):
        DeviceAugmentation(32, interpolation="nearest")
    with pytest.raises(ValueError, match="`image_size` must be a positive int"):
        DeviceAugmentation(0)
    with pytest.raises(ValueError, match="uint8 tensor, got torch.float32"):
        DeviceAugmentation(32)({"pixel_values_uint8": torch.zeros(1, 3, 8, 8)})
    with pytest.raises(ValueError, match="Got 1 channels, but image_mean/image_std have 3"):
        DeviceAugmentation(32)(host_batch([coordinate_image()[:1]], [(0, 0, 8, 8)], [False]))
    assert resolve_augment_on("auto", "cpu") == "host" and resolve_augment_on("auto", "cuda") == "device"
    assert resolve_augment_on("device", "cpu") == "device" and resolve_augment_on("host", "cuda:0") == "host"
    with pytest.raises(ValueError, match="`augment_on` must be 'auto', 'host' or 'device', got 'gpu'"):
        resolve_augment_on("gpu", "cpu")
    # a streamed dataset on a GPU: auto falls back to the host path (it refused the run), device is refused by name
    assert resolve_augment_on("auto", "cuda", streaming=True) == "host"
    with pytest.raises(ValueError, match="--augment_on device needs a map-style dataset: drop --streaming"):
        resolve_augment_on("device", "cuda", streaming=True)
    assert DeviceAugmentation.from_transform(MAETrainTransform(64)).interpolation == "bicubic"
