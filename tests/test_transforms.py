"""Tests for `dilated_vit_mae.data.transforms` (torchvision-free MAE augmentation)."""

import hashlib
import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from dilated_vit_mae.configuration_dilated_vit_mae import DilatedViTMAEConfig
from dilated_vit_mae.data.loading import CELEBA_SAMPLE_DIR
from dilated_vit_mae.data.seeding import IndexedTransform
from dilated_vit_mae.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    MAEHostTransform,
    MAETrainTransform,
    as_our_image_processor,
    collate_examples,
    decode_uint8,
    eval_view,
    image_processor_for_config,
    random_resized_crop_params,
)
from dilated_vit_mae.image_processing_dilated_vit_mae import DilatedViTMAEImageProcessor

REPO_ROOT = Path(__file__).resolve().parent.parent
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).reshape(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).reshape(3, 1, 1)


def face_like_image(width: int = 178, height: int = 218, seed: int = 0) -> PIL.Image.Image:
    """A CelebA-sized RGB image with structure (a gradient) and noise, asymmetric left-right."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    pixels = np.clip(ramp * np.array([1.0, 0.6, 0.3]) + rng.normal(0, 20, (height, width, 3)), 0, 255)
    return PIL.Image.fromarray(pixels.astype(np.uint8))


def square_view(size: int, **kwargs) -> object:
    """The evaluation view that resizes the shortest edge to `size` and keeps the central `size` x `size`."""
    return eval_view(DilatedViTMAEImageProcessor(size={"shortest_edge": size}, crop_size=size, **kwargs))


def test_output_shapes_and_dtype():
    image = face_like_image()
    for transform, shape in [
        (MAETrainTransform(224), (3, 224, 224)),
        (MAETrainTransform((32, 48)), (3, 32, 48)),
        (MAETrainTransform(32, image_mean=[0.5], image_std=[0.5], num_channels=1), (1, 32, 32)),
        (eval_view(DilatedViTMAEImageProcessor()), (3, 224, 224)),
        (eval_view(DilatedViTMAEImageProcessor(size={"shortest_edge": 64}, crop_size=(64, 48))), (3, 64, 48)),
        (square_view(32, image_mean=[0.5], image_std=[0.5], num_channels=1), (1, 32, 32)),
    ]:
        pixel_values = transform(image)
        assert pixel_values.shape == shape and pixel_values.dtype == torch.float32
        assert pixel_values.is_contiguous()


def test_eval_view_is_deterministic_and_matches_hand_computation():
    image = face_like_image()
    transform = eval_view(DilatedViTMAEImageProcessor())
    pixel_values = transform(image)
    assert torch.equal(pixel_values, transform(image))

    # shortest edge 178 -> 224, the other 218 -> int(224 * 218 / 178) = 274; centre crop 224 from the top (274-224)//2
    resized = image.resize((224, 274), PIL.Image.Resampling.BICUBIC)
    expected = np.asarray(resized, dtype=np.float64)[25 : 25 + 224, :, :] / 255.0
    expected = (expected - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(pixel_values, torch.from_numpy(expected).permute(2, 0, 1).float(), atol=1e-5, rtol=0)


def test_eval_view_matches_transformers_pil_image_processor():
    # CLIP's PIL processor does shortest-edge resize (bicubic) + centre crop + rescale + normalise, like ours
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessorPil(
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD)
    )
    for image in (face_like_image(), face_like_image(301, 225, seed=1)):
        expected = processor(image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(eval_view(DilatedViTMAEImageProcessor())(image), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(eval_view(processor)(image), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "processor_kwargs",
    [
        {},
        {"size": {"shortest_edge": 256}, "crop_size": 224},
        {"size": {"height": 40, "width": 32}, "do_center_crop": False},
        {"size": {"shortest_edge": 20}, "crop_size": {"height": 24, "width": 16}},  # crop wider than the image: padded
        {"num_channels": 1, "resample": PIL.Image.Resampling.BILINEAR, "do_normalize": False},
        {"crop_pct": 0.875},  # MAE's view: shortest edge 256, centre 224
        {"size": {"height": 40, "width": 32}, "crop_size": {"height": 32, "width": 24}, "crop_pct": 0.875},
        {"size": {"height": 40, "width": 32}, "do_center_crop": False, "crop_pct": 0.875},  # no crop: no effect
    ],
)
def test_eval_view_is_the_project_image_processor(processor_kwargs):
    processor = DilatedViTMAEImageProcessor(**processor_kwargs)
    transform = eval_view(processor)
    for image in (face_like_image(), face_like_image(301, 225, seed=1)):
        expected = processor(image, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(transform(image), expected)


def test_every_evaluation_path_takes_the_crop_fraction_of_the_models_processor():
    # run_mae.py's validation, run_finetune.py's evaluation and linear_probe.py's features all build their view with
    # `eval_view(<the model's processor>)`: the shipped 224 px config's is MAE's 256 -> 224
    processor = DilatedViTMAEImageProcessor.from_pretrained(REPO_ROOT / "configs" / "dilated-vit-mae-base")
    transform = eval_view(processor)
    assert transform.image_processor is processor and processor.crop_pct == 0.875
    image = face_like_image()
    # 178x218 -> 256x313 (shortest edge 224 / 0.875), centre crop 224 from row (313 - 224) // 2 = 44, column 16
    resized = np.asarray(image.resize((256, 313), PIL.Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    expected = (resized[44 : 44 + 224, 16 : 16 + 224] - IMAGENET_DEFAULT_MEAN) / np.array(IMAGENET_DEFAULT_STD)
    expected = torch.from_numpy(expected).permute(2, 0, 1).float()
    torch.testing.assert_close(transform(image), expected, atol=1e-5, rtol=0)
    assert torch.equal(transform(image), processor(image, return_tensors="pt")["pixel_values"][0])
    # a processor without the field (a folder saved before it existed, or transformers' CLIP) keeps its own view
    assert eval_view(DilatedViTMAEImageProcessor()).image_processor.crop_pct is None
    clip = pytest.importorskip("transformers").CLIPImageProcessorPil()
    assert as_our_image_processor(clip).crop_pct is None


def shipped_view_by_hand(path: str, shortest_edge: int, crop: int, crop_pct: float | None) -> torch.Tensor:
    """The evaluation view as `MAEEvalTransform` (the separate class `eval_view` replaced) computed it, written out:
    bicubic resize of the shortest edge to `shortest_edge / crop_pct` (long edge truncated), centre crop (offsets
    rounded down), then in float32 and in this order: `* (1/255)`, `- mean`, `/ std`."""
    image = PIL.Image.open(path).convert("RGB")
    target = int(shortest_edge / crop_pct) if crop_pct else shortest_edge
    width, height = image.size
    new_size = (target, int(target * height / width)) if width <= height else (int(target * width / height), target)
    top, left = (new_size[1] - crop) // 2, (new_size[0] - crop) // 2
    resized = np.asarray(image.resize(new_size, PIL.Image.Resampling.BICUBIC))[top : top + crop, left : left + crop]
    pixels = np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)
    pixels *= np.float32(1 / 255)
    pixels -= np.asarray(IMAGENET_DEFAULT_MEAN, dtype=np.float32)[:, None, None]
    pixels /= np.asarray(IMAGENET_DEFAULT_STD, dtype=np.float32)[:, None, None]
    return torch.from_numpy(pixels)


@pytest.mark.parametrize(
    "config, crop_pct",
    [("dilated-vit-mae-base", 0.875), ("dilated-vit-mae-tiny-64", 0.875), ("dilated-vit-mae-tiny-64", None)],
)
def test_eval_view_of_the_shipped_configs_is_bit_identical_to_the_view_it_replaced(config, crop_pct):
    settings = json.loads((REPO_ROOT / "configs" / config / "preprocessor_config.json").read_text())
    if crop_pct is None:
        del settings["crop_pct"]  # a folder saved before the field existed: crop fraction 1
    processor = DilatedViTMAEImageProcessor.from_dict(settings)
    view = eval_view(processor)
    paths = sorted((CELEBA_SAMPLE_DIR / "img_align_celeba").glob("*.jpg"))
    assert len(paths) == 56
    size = settings["size"]["shortest_edge"]
    for path in paths:
        assert torch.equal(view(str(path)), shipped_view_by_hand(str(path), size, size, crop_pct)), path.name


def test_eval_view_is_bounded_on_an_extreme_aspect_ratio(tmp_path):
    # a 1 x 1,000,000 PNG (4 KB, 1 MP: passes any image check) asked ~12 GB of a shortest-edge resize to 224 px (224 x
    # 224,000,000) before the crop; run in a process whose address space allows only ~1.5 GB more than its imports
    import subprocess
    import sys

    column = np.zeros((1_000_000, 1, 3), dtype=np.uint8)
    column[:, 0, 0] = 200
    column[333_000:667_000, 0] = (10, 250, 30)  # the middle third, where the centre crop is
    PIL.Image.fromarray(column).save(tmp_path / "column.png")
    script = f"""
import resource, numpy as np, PIL.Image, torch
from dilated_vit_mae.image_processing_dilated_vit_mae import DilatedViTMAEImageProcessor
from dilated_vit_mae.data.transforms import eval_view
transform = eval_view(DilatedViTMAEImageProcessor(do_normalize=False))
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 1536 * 2**20, resource.RLIM_INFINITY))
path = {str(tmp_path / "column.png")!r}
for image in (path, {{"bytes": open(path, "rb").read(), "path": path}}, PIL.Image.open(path)):
    pixels = transform(image) * 255
    assert pixels.shape == (3, 224, 224), pixels.shape
    print(pixels.mean(dim=(1, 2)).round().tolist())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:3] == ["[10.0, 250.0, 30.0]"] * 3


def test_eval_view_refuses_an_encoded_image_over_the_pixel_limit_naming_it(monkeypatch):
    import dilated_vit_mae.data.transforms as transforms

    monkeypatch.setattr(transforms, "MAX_IMAGE_PIXELS", 20 * 30 - 1)  # the processor's 50 MP limit, scaled down
    encoded = {"bytes": png_bytes(face_like_image(20, 30)), "path": "data/huge.png"}
    with pytest.raises(ValueError, match=r"^Image data/huge.png is 20 x 30 = 600 pixels, more than the limit of 599"):
        square_view(16)(encoded)
    monkeypatch.setattr(transforms, "MAX_IMAGE_PIXELS", 20 * 30)
    assert square_view(16)(encoded).shape == (3, 16, 16)


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_train_transform_reproducible_with_seed_and_different_across_seeds():
    image = face_like_image()
    first = MAETrainTransform(64, seed=0)(image)
    assert torch.equal(first, MAETrainTransform(64, seed=0)(image))
    assert not torch.equal(first, MAETrainTransform(64, seed=1)(image))
    # consecutive calls draw new crops
    transform = MAETrainTransform(64, seed=0)
    assert not torch.equal(transform(image), transform(image))
    # a per-call generator overrides the transform's own
    a = MAETrainTransform(64)(image, generator=torch.Generator().manual_seed(5))
    b = MAETrainTransform(64, seed=123)(image, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # without a seed, the global torch RNG decides (what DataLoader seeds per worker)
    torch.manual_seed(7)
    c = MAETrainTransform(64)(image)
    torch.manual_seed(7)
    assert torch.equal(c, MAETrainTransform(64)(image))


def test_transform_pickles_with_generator_state():
    image = face_like_image()
    transform = MAETrainTransform(32, seed=3)
    transform(image)
    copy = pickle.loads(pickle.dumps(transform))
    assert torch.equal(copy(image), transform(image))
    view = square_view(32)
    assert torch.equal(pickle.loads(pickle.dumps(view))(image), view(image))


def test_crop_params_within_bounds():
    generator = torch.Generator().manual_seed(0)
    height, width = 218, 178
    areas, ratios = [], []
    for _ in range(3000):
        top, left, crop_height, crop_width = random_resized_crop_params(
            height, width, (0.2, 1.0), (3 / 4, 4 / 3), generator
        )
        assert 0 <= top and top + crop_height <= height and 0 <= left and left + crop_width <= width
        areas.append(crop_height * crop_width / (height * width))
        ratios.append(crop_width / crop_height)
    areas, ratios = np.array(areas), np.array(ratios)
    # integer rounding of the side lengths moves area and ratio a little past the bounds
    assert areas.min() >= 0.2 - 0.01 and areas.max() <= 1.0
    assert ratios.min() >= 3 / 4 - 0.02 and ratios.max() <= 4 / 3 + 0.02
    assert areas.min() < 0.25 and areas.max() > 0.9  # the whole range is used
    assert 0.5 < np.mean(areas) < 0.65  # uniform on [0.2, 1] minus rejected large crops


def test_crop_params_fallback_is_clamped_centre_crop():
    # no crop of >= 90% of a 10x1000 strip has a ratio in [3/4, 4/3]: 10 attempts fail, then the centre crop
    generator = torch.Generator().manual_seed(0)
    assert random_resized_crop_params(10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), generator) == (0, 493, 10, 13)
    assert random_resized_crop_params(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), generator) == (493, 0, 13, 10)
    # ratio out of reach on a square: the widest allowed ratio, centred
    assert random_resized_crop_params(100, 100, (1.0, 1.0), (2.0, 3.0), generator) == (25, 0, 50, 100)
    # crops larger than the image never fit; the image's own ratio is allowed, so the fallback is the whole image
    assert random_resized_crop_params(100, 80, (1.5, 2.0), (0.5, 2.0), generator) == (0, 0, 100, 80)


def test_flip_happens_about_half_the_time():
    image = face_like_image(64, 64)
    # scale 1 and ratio 1 on a square: the crop is always the whole image, only the flip varies
    common = dict(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    plain = MAETrainTransform(**common, flip_prob=0.0)(image)
    flipped = MAETrainTransform(**common, flip_prob=1.0)(image)
    assert torch.equal(flipped, plain.flip(-1))
    transform = MAETrainTransform(**common, seed=0)
    outcomes = []
    for _ in range(400):
        output = transform(image)
        assert torch.equal(output, plain) or torch.equal(output, flipped)
        outcomes.append(torch.equal(output, flipped))
    assert 0.42 < np.mean(outcomes) < 0.58


class RepeatedImage(Dataset):
    def __init__(self, image: PIL.Image.Image, transform: MAETrainTransform, length: int = 16):
        self.image, self.transform, self.length = image, transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.transform(self.image)}


@pytest.mark.parametrize("seed", [None, 0])
def test_dataloader_with_two_workers(seed):
    dataset = RepeatedImage(face_like_image(48, 48), MAETrainTransform(16, seed=seed))

    def run() -> torch.Tensor:
        loader = DataLoader(
            dataset, batch_size=4, num_workers=2, collate_fn=default_collate, generator=torch.Generator().manual_seed(0)
        )
        return torch.cat([batch["pixel_values"] for batch in loader])

    first = run()
    assert first.shape == (16, 3, 16, 16)
    # workers must not repeat each other's augmentations (each starts from a copy of the transform)
    assert len({tuple(x.flatten().tolist()) for x in first}) == 16
    assert torch.equal(first, run())  # a seeded DataLoader is reproducible


def test_eval_view_reads_undecoded_images_and_names_bad_ones():
    import datasets

    good = io.BytesIO()
    face_like_image().save(good, format="JPEG")
    dataset = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": good.getvalue(), "path": "good.jpg"}, {"bytes": b"\xff\xd8junk", "path": "bad.jpg"}],
            "sample_index": [0, 1],
        },
        features=datasets.Features({"image": datasets.Image(decode=False), "sample_index": datasets.Value("int64")}),
    )
    dataset.set_transform(IndexedTransform(square_view(32)))
    assert dataset[0]["pixel_values"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"Cannot decode image bad\.jpg"):
        dataset[1]


def test_grey_rgba_and_palette_inputs():
    grey = PIL.Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :], (64, 1)), mode="L")
    rgb_from_grey = square_view(32)(grey) * STD + MEAN  # back to [0, 1]
    torch.testing.assert_close(rgb_from_grey[0], rgb_from_grey[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(rgb_from_grey[1], rgb_from_grey[2], atol=1e-5, rtol=0)

    grey_out = MAETrainTransform(32, image_mean=[0.5], image_std=[0.5], num_channels=1, seed=0)(face_like_image())
    assert grey_out.shape == (1, 32, 32)

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # hidden red under fully transparent pixels
    pixel_values = square_view(32)(PIL.Image.fromarray(rgba, mode="RGBA")) * STD + MEAN
    torch.testing.assert_close(pixel_values, torch.ones(3, 32, 32), atol=1e-5, rtol=0)  # composited over white

    palette = face_like_image(64, 64).convert("P")
    assert MAETrainTransform(32, seed=0)(palette).shape == (3, 32, 32)
    assert square_view(32)(np.asarray(face_like_image(40, 40))).shape == (3, 32, 32)  # numpy input


def test_invalid_inputs_and_arguments_raise():
    with pytest.raises(TypeError, match="Expected a PIL.Image.Image.*got list"):
        square_view(32)([1, 2, 3])
    with pytest.raises(ValueError, match="numpy image must be uint8.*float64"):
        square_view(32)(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="Cannot decode image corrupt.jpg"):
        MAETrainTransform(32)({"bytes": b"not a jpeg", "path": "corrupt.jpg"})
    with pytest.raises(FileNotFoundError):
        MAETrainTransform(32)("/nonexistent/000001.jpg")
    with pytest.raises(ValueError, match="`num_channels` must be 1 .* or 3 .*, got 2"):
        MAETrainTransform(32, num_channels=2)
    with pytest.raises(ValueError, match=r"one value per channel \(num_channels=1\)"):
        square_view(32, num_channels=1, image_mean=IMAGENET_DEFAULT_MEAN)
    with pytest.raises(ValueError, match=r"^An evaluation view needs one output size for every image"):
        eval_view(DilatedViTMAEImageProcessor(do_center_crop=False))
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        MAETrainTransform(0)
    with pytest.raises(ValueError, match=r"`scale` must be .*got \(0\.9, 0\.2\)"):
        MAETrainTransform(32, scale=(0.9, 0.2))
    with pytest.raises(ValueError, match="`rescale_factor` must be a positive number"):
        MAETrainTransform(32, rescale_factor=0)


@pytest.mark.parametrize("transform", [MAETrainTransform, MAEHostTransform])
def test_the_training_transforms_check_mean_and_std_as_the_processor_does(transform):
    # one check for the settings both take: a float is one value for every channel (the processor's rule; the
    # transform used to refuse it), a non-finite mean is refused (the transform used to normalise to NaN)
    assert transform(32, image_mean=0.5, image_std=0.25).image_mean.reshape(-1).tolist() == [0.5, 0.5, 0.5]
    for kwargs in ({"image_mean": [0.5, math.nan, 0.5]}, {"image_std": [0.2, 0.0, 0.2]}, {"image_mean": [0.5, 0.5]}):
        name = next(iter(kwargs))
        with pytest.raises(ValueError) as refused:
            transform(32, **kwargs)
        with pytest.raises(ValueError) as processor:
            DilatedViTMAEImageProcessor(**kwargs)
        assert str(refused.value) == str(processor.value) and name in str(refused.value)


def test_crop_scale_reaches_output_as_zoom():
    # a smaller crop area means a stronger zoom: the mean absolute horizontal gradient grows as 1/sqrt(area)
    image = face_like_image(200, 200)
    small = MAETrainTransform(64, scale=(0.2, 0.2), ratio=(1.0, 1.0), flip_prob=0.0, seed=0)(image)
    whole = MAETrainTransform(64, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, seed=0)(image)
    ramp_small = (small[0, :, -1] - small[0, :, 0]).mean()
    ramp_whole = (whole[0, :, -1] - whole[0, :, 0]).mean()
    assert ramp_small / ramp_whole == pytest.approx(math.sqrt(0.2), abs=0.1)


# ---- host half of the device path: MAEHostTransform / host_params; the collator ------------------------------------


def jpeg_bytes(image: PIL.Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize("decoder", ["auto", "pil"])
def test_host_params_draw_the_box_and_flip_of_the_float_transform(decoder):
    image = face_like_image()
    encoded = {"bytes": jpeg_bytes(image), "path": "face.jpg"}
    transform = MAETrainTransform(224)
    for seed in range(20):
        params = transform.host_params(encoded, torch.Generator().manual_seed(seed), decoder=decoder)
        # the same draws, in the same order, as __call__ (the crop, then `torch.rand(1) < flip_prob`)
        generator = torch.Generator().manual_seed(seed)
        box = random_resized_crop_params(218, 178, transform.scale, transform.ratio, generator)
        assert params["crop_box"] == tuple(float(v) for v in box)
        assert params["flip"] == (torch.rand(1, generator=generator).item() < 0.5)
        assert params["image_uint8"].shape == (3, 218, 178) and params["image_uint8"].dtype == torch.uint8
    # the decoded pixels are the JPEG's, whichever decoder (libjpeg-turbo in both; identical here)
    decoded = np.asarray(PIL.Image.open(io.BytesIO(encoded["bytes"])).convert("RGB"))
    assert np.abs(params["image_uint8"].permute(1, 2, 0).numpy().astype(int) - decoded).max() <= 1


def test_simplejpeg_decodes_the_pixels_pil_decodes():
    # the device path and the decoded cache decode with simplejpeg, training's float path and evaluation with PIL:
    # a JPEG must give the same pixels either way, in RGB, greyscale (PIL's ITU-R 601 luma, not the JPEG's Y plane,
    # which differed by up to 8) and CMYK (libjpeg-turbo's conversion to RGB is one level off PIL's)
    from dilated_vit_mae.data import transforms

    assert transforms.simplejpeg is not None, "the test extra installs simplejpeg: without it this test checks nothing"
    image = face_like_image()
    rgb = {"bytes": jpeg_bytes(image), "path": "face.jpg"}
    expected = np.asarray(PIL.Image.open(io.BytesIO(rgb["bytes"])).convert("RGB"))
    np.testing.assert_array_equal(decode_uint8(rgb, decoder="simplejpeg"), expected)
    grey = np.asarray(PIL.Image.open(io.BytesIO(rgb["bytes"])).convert("L"))
    np.testing.assert_array_equal(decode_uint8(rgb, num_channels=1, decoder="simplejpeg")[:, :, 0], grey)
    for mode in ("CMYK", "L"):  # a greyscale JPEG decodes to three equal channels
        encoded = {"bytes": jpeg_bytes(image.convert(mode)), "path": f"{mode}.jpg"}
        expected = np.asarray(PIL.Image.open(io.BytesIO(encoded["bytes"])).convert("RGB"))
        np.testing.assert_array_equal(decode_uint8(encoded, decoder="simplejpeg"), expected)


def test_host_params_accept_every_input_of_the_float_transform():
    image = face_like_image(64, 48)
    generator_state = torch.Generator().manual_seed(3).get_state()
    inputs = [image, np.asarray(image), {"bytes": jpeg_bytes(image), "path": None}, image.convert("P")]
    for item in inputs:
        params = MAEHostTransform(32)(item, generator=torch.Generator().set_state(generator_state))
        assert params["image_uint8"].shape == (3, 48, 64)
    grey = MAEHostTransform(32, image_mean=[0.5], image_std=[0.5], num_channels=1)(
        {"bytes": jpeg_bytes(image), "path": "g.jpg"}, generator=torch.Generator().manual_seed(0)
    )
    assert grey["image_uint8"].shape == (1, 48, 64)
    with pytest.raises(ValueError, match=r"Cannot decode image corrupt\.jpg"):
        MAEHostTransform(32)({"bytes": b"\xff\xd8 not a jpeg", "path": "corrupt.jpg"})
    with pytest.raises(ValueError, match="`decoder` must be 'auto', 'simplejpeg' or 'pil', got 'turbo'"):
        MAEHostTransform(32, decoder="turbo")
    # a seeded host transform draws like a seeded float transform, and pickles with its generator
    host, plain = MAEHostTransform(32, seed=4), MAETrainTransform(32, seed=4)
    assert pickle.loads(pickle.dumps(host))(image)["crop_box"] == host(image)["crop_box"]
    assert MAEHostTransform(32, seed=4)(image)["crop_box"] == plain.host_params(image)["crop_box"]


def test_host_params_draft_decodes_large_jpegs_at_a_reduced_scale():
    large = face_like_image(1600, 1200)
    encoded = {"bytes": jpeg_bytes(large), "path": "large.jpg"}
    for decoder in ("auto", "pil"):
        generator = torch.Generator().manual_seed(0)
        drafted = MAETrainTransform(32).host_params(encoded, generator, decoder=decoder, draft=True)
        full = MAETrainTransform(32).host_params(encoded, torch.Generator().manual_seed(0), decoder=decoder)  # default
        height, width = drafted["image_uint8"].shape[1:]
        assert (height, width) == (150, 200)  # 1/8: the crop (>= 20% of the area) is still > 32 px there
        assert full["image_uint8"].shape[1:] == (1200, 1600)
        top, left, crop_height, crop_width = full["crop_box"]
        assert drafted["crop_box"] == pytest.approx((top / 8, left / 8, crop_height / 8, crop_width / 8))
    # upscaling (CelebA's crops at 224 px): nothing to gain, decoded at full size
    celeba = MAETrainTransform(224).host_params({"bytes": jpeg_bytes(face_like_image()), "path": "f.jpg"}, draft=True)
    assert celeba["image_uint8"].shape[1:] == (218, 178)


def test_collator_stacks_pads_and_keeps_the_index():
    small, large = face_like_image(40, 30), face_like_image(50, 60, seed=1)
    transform = MAEHostTransform(16)
    examples = [
        {"pixel_values": transform(small, torch.Generator().manual_seed(0)), "sample_index": 7},
        {"pixel_values": transform(large, torch.Generator().manual_seed(1)), "sample_index": 9},
    ]
    batch = collate_examples(examples)
    images = batch["pixel_values_uint8"]
    assert images.shape == (2, 3, 60, 50) and images.dtype == torch.uint8
    assert images.permute(0, 2, 3, 1).is_contiguous()  # channels-last: one memcpy per decoded image
    assert torch.equal(images[0, :, :30, :40], torch.from_numpy(np.array(small)).permute(2, 0, 1))
    assert images[0, :, 30:].eq(0).all() and images[0, :, :, 40:].eq(0).all()  # padding
    assert torch.equal(images[1], torch.from_numpy(np.array(large)).permute(2, 0, 1))
    assert batch["image_sizes"].tolist() == [[30, 40], [60, 50]]
    assert batch["crop_boxes"].tolist() == [list(e["pixel_values"]["crop_box"]) for e in examples]
    assert batch["flips"].tolist() == [e["pixel_values"]["flip"] for e in examples]
    assert batch["sample_index"].tolist() == [7, 9]
    # the float kind: pixel_values tensors stacked, the index kept
    floats = [{"pixel_values": torch.full((3, 4, 4), float(i)), "sample_index": i} for i in (3, 5)]
    batch = collate_examples(floats)
    assert sorted(batch) == ["pixel_values", "sample_index"] and batch["sample_index"].tolist() == [3, 5]
    assert torch.equal(batch["pixel_values"], torch.stack([e["pixel_values"] for e in floats]))
    with pytest.raises(ValueError, match="Cannot batch MAEHostTransform outputs with pixel_values tensors"):
        collate_examples([examples[0], floats[0]])
    with pytest.raises(KeyError, match=r"Expected pixel_values tensors or MAEHostTransform outputs .* \['image'\]"):
        collate_examples([{"image": small}])
    with pytest.raises(ValueError, match="Cannot collate an empty list"):
        collate_examples([])
    grey = MAEHostTransform(16, image_mean=[0.5], image_std=[0.5], num_channels=1)(small)
    with pytest.raises(ValueError, match="different channel counts, got \\[3, 1\\]"):
        collate_examples([examples[0], grey])


def _collate_in_shared_memory(examples: list[dict]) -> dict[str, torch.Tensor]:
    """`collate_examples`, and whether it allocated the images in shared memory (read inside the worker)."""
    batch = collate_examples(examples)
    images = batch.get("pixel_values_uint8", batch.get("pixel_values"))
    return {**batch, "allocated_shared": torch.tensor(images.is_shared())}


@pytest.mark.parametrize("kind", ["uint8", "float32"])
def test_collator_in_dataloader_workers_uses_shared_memory(kind):
    if kind == "uint8":
        dataset = [{"image_uint8": torch.full((3, 5, 4), i, dtype=torch.uint8), "crop_box": (0, 0, 5, 4), "flip": False,
                    "sample_index": i} for i in range(8)]  # fmt: skip
    else:
        dataset = [{"pixel_values": torch.full((3, 5, 4), float(i)), "sample_index": i} for i in range(8)]
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=_collate_in_shared_memory)
    batches = list(loader)
    assert [b["sample_index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for batch in batches:
        assert batch["allocated_shared"]  # allocated there, as default_collate does: no copy on the way back
        images = batch["pixel_values_uint8"] if kind == "uint8" else batch["pixel_values"]
        if kind == "uint8":
            assert images.permute(0, 2, 3, 1).is_contiguous()  # the layout survives the trip from the worker
        assert torch.equal(images[:, 0, 0, 0], batch["sample_index"].to(images.dtype))
    # in the main process (num_workers=0) nothing is allocated in shared memory
    assert not _collate_in_shared_memory(dataset[:4])["allocated_shared"]


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning augmentation: RandAugment and random erasing (MAE's recipe through timm)
# ----------------------------------------------------------------------------------------------------------------------


def test_pre_training_augmentation_is_maes_crop_and_flip_only():
    # MAE's main_pretrain.py: RandomResizedCrop(scale=(0.2, 1.0)) + flip; no RandAugment, no erasing
    transform = MAETrainTransform(224)
    assert transform.scale == (0.2, 1.0) and transform.flip_prob == 0.5
    assert transform.rand_augment is None and transform.random_erasing is None
    # switched off, the fine-tuning options draw nothing: the crops and flips are pre-training's
    image = face_like_image()
    off = MAETrainTransform(64, rand_augment=None, random_erasing=0.0)
    assert torch.equal(off(image, torch.Generator().manual_seed(3)), MAETrainTransform(64)(image, torch.Generator().manual_seed(3)))


def test_mae_finetuning_augmentation_constants():
    from dilated_vit_mae.data.transforms import (
        MAE_FINETUNE_RAND_AUGMENT,
        MAE_FINETUNE_RANDOM_ERASING,
        RandAugment,
        RandomErasing,
    )

    assert MAE_FINETUNE_RAND_AUGMENT == "rand-m9-mstd0.5-inc1" and MAE_FINETUNE_RANDOM_ERASING == 0.25
    augment = RandAugment()
    assert (augment.magnitude, augment.num_layers, augment.magnitude_std, augment.magnitude_max) == (9, 2, 0.5, 10.0)
    assert augment.prob == 0.5 and len(augment.ops) == 15 and "PosterizeIncreasing" in augment.ops
    assert augment.fill == (124, 116, 104)  # timm: round(255 x ImageNet mean)
    erasing = RandomErasing()
    assert (erasing.probability, erasing.min_area, erasing.max_area, erasing.mode, erasing.count) == (
        0.25, 0.02, 1 / 3, "pixel", 1,
    )  # fmt: skip
    assert erasing.log_aspect_ratio == pytest.approx((math.log(0.3), math.log(1 / 0.3)))
    transform = MAETrainTransform(64, rand_augment=MAE_FINETUNE_RAND_AUGMENT, random_erasing=0.25)
    assert transform.rand_augment.magnitude == 9 and transform.random_erasing.probability == 0.25


def test_rand_augment_config_strings():
    from dilated_vit_mae.data.transforms import RAND_AUGMENT_OPS, RandAugment

    augment = RandAugment("rand-m7-n3-mstd101")
    assert (augment.magnitude, augment.num_layers, augment.magnitude_std) == (7, 3, math.inf)
    assert augment.ops == RAND_AUGMENT_OPS and "Posterize" in augment.ops  # no inc1: timm's default set
    assert RandAugment("rand-m9-mmax15").magnitude_max == 15
    for bad in ("augmix-m9", "rand-w0", "rand-q3", "rand-mx"):
        with pytest.raises(ValueError, match="RandAugment"):
            RandAugment(bad)


@pytest.mark.parametrize(
    "name, magnitude, expected",
    [
        ("Rotate", 9, 27.0),  # degrees
        ("ShearX", 9, 0.27),
        ("TranslateXRel", 9, 0.405),  # of the side
        ("ColorIncreasing", 9, 0.81),  # 1 +/- this
        ("PosterizeIncreasing", 9, 1),  # bits kept
        ("PosterizeIncreasing", 10, 0),
        ("Posterize", 9, 3),
        ("SolarizeIncreasing", 9, 26),  # threshold
        ("Solarize", 9, 230),
        ("SolarizeAdd", 9, 99),
        ("Contrast", 9, 1.72),
    ],
)
def test_rand_augment_magnitudes_map_to_timms_arguments(name, magnitude, expected):
    from dilated_vit_mae.data.transforms import _RAND_AUGMENT_LEVELS

    values = {_RAND_AUGMENT_LEVELS[name](magnitude, torch.Generator().manual_seed(seed), 0.45) for seed in range(20)}
    if name in ("Rotate", "ShearX", "TranslateXRel"):  # a random sign, both seen in 20 draws
        assert sorted(values) == pytest.approx([-expected, expected])
    elif name == "ColorIncreasing":
        assert sorted(values) == pytest.approx([1 - expected, 1 + expected])
    else:
        assert len(values) == 1 and values.pop() == pytest.approx(expected)


def test_every_rand_augment_op_changes_the_image_and_keeps_its_size():
    from dilated_vit_mae.data.transforms import (
        _RAND_AUGMENT_LEVELS,
        RAND_AUGMENT_INCREASING_OPS,
        RAND_AUGMENT_OPS,
        _apply_op,
    )

    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(40, 250, (48, 64, 3), dtype=np.uint8))  # not full range: autocontrast acts
    fill = (124, 116, 104)
    for name in sorted(set(RAND_AUGMENT_OPS + RAND_AUGMENT_INCREASING_OPS)):
        level = _RAND_AUGMENT_LEVELS[name]
        value = level(9, torch.Generator().manual_seed(1), 0.45) if level is not None else 0.0
        for mode in ("RGB", "L"):
            source = image.convert(mode)
            out = _apply_op(name, source, value, fill if mode == "RGB" else fill[0], PIL.Image.Resampling.BICUBIC)
            assert out.size == source.size and out.mode == mode, name
            if not (name.startswith("Color") and mode == "L"):  # saturation: nothing to change in a grey image
                assert not np.array_equal(np.asarray(out), np.asarray(source)), f"{name} ({mode}) changed nothing"
    # what a translation brings in is the fill colour (the dataset mean)
    shifted = np.asarray(_apply_op("TranslateXRel", image, 0.25, fill, PIL.Image.Resampling.BICUBIC))
    assert (shifted[:, -10:] == np.array(fill, dtype=np.uint8)).all()


def test_rand_augment_draws_from_the_generator_only():
    from dilated_vit_mae.data.transforms import RandAugment

    image = face_like_image(64, 64)
    augment = RandAugment()
    first = [np.asarray(augment(image, torch.Generator().manual_seed(seed))) for seed in range(40)]
    torch.manual_seed(123)  # the global RNG plays no part
    again = [np.asarray(augment(image, torch.Generator().manual_seed(seed))) for seed in range(40)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # each of the 2 ops is skipped with probability 0.5: a quarter of the images come out unchanged
    unchanged = np.mean([np.array_equal(out, np.asarray(image)) for out in first + [
        np.asarray(augment(image, torch.Generator().manual_seed(seed))) for seed in range(40, 400)
    ]])  # fmt: skip
    assert 0.18 < unchanged < 0.32


def test_random_erasing_replaces_one_box_by_noise_a_quarter_of_the_time():
    from dilated_vit_mae.data.transforms import RandomErasing

    erasing = RandomErasing()
    erased_fraction, areas, noise = 0, [], []
    for seed in range(400):
        out = erasing(torch.full((3, 40, 50), 7.0), torch.Generator().manual_seed(seed))
        changed = out != 7.0
        if changed.any():
            erased_fraction += 1
            rows, cols = changed.any(dim=(0, 2)).nonzero(), changed.any(dim=(0, 1)).nonzero()
            box = out[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert (box != 7.0).all()  # one rectangle, every channel, nothing left of the image in it
            areas.append(box[0].numel() / (40 * 50))
            noise.append(box.reshape(-1))
    assert 0.19 < erased_fraction / 400 < 0.31
    assert 0.015 <= min(areas) and max(areas) <= 0.35
    noise = torch.cat(noise)
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05  # per-pixel standard normal
    const = RandomErasing(probability=1.0, mode="const")(torch.ones(1, 20, 20), torch.Generator().manual_seed(0))
    assert (const == 0).any() and set(const.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="probability"):
        RandomErasing(probability=1.5)


def test_finetuning_transform_is_reproducible_and_refuses_the_device_path():
    image = face_like_image()
    transform = MAETrainTransform(64, scale=(0.08, 1.0), rand_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25)
    first = transform(image, torch.Generator().manual_seed(5))
    assert torch.equal(first, transform(image, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, transform(image, torch.Generator().manual_seed(6)))
    assert "rand_augment='rand-m9-mstd0.5-inc1'" in repr(transform)
    with pytest.raises(ValueError, match="host's float path"):
        transform.host_params(image, torch.Generator().manual_seed(0))
    # one channel: the fill is the single mean
    grey = MAETrainTransform(32, image_mean=[0.5], image_std=[0.5], num_channels=1, rand_augment="rand-m9-mstd0.5-inc1")
    assert grey.rand_augment.fill == (128,) and grey(image, torch.Generator().manual_seed(0)).shape == (1, 32, 32)


def test_the_processor_for_a_config_is_sized_for_it(tiny_config_kwargs):
    config = DilatedViTMAEConfig(**{**tiny_config_kwargs, "image_size": (32, 48), "num_channels": 1})
    processor = image_processor_for_config(config)
    assert processor.crop_size == {"height": 32, "width": 48} and processor.size == {"shortest_edge": 32}
    assert processor.num_channels == 1
    inputs = processor(torch.randint(0, 255, (1, 60, 80), dtype=torch.uint8).numpy(), return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 1, 32, 48)


def test_the_processor_for_a_config_keeps_what_fits_of_another(tiny_config_kwargs):
    other = DilatedViTMAEImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=[0.1, 0.2, 0.3],
        image_std=[0.5, 0.5, 0.5], crop_pct=0.9,
    )  # fmt: skip
    three = image_processor_for_config(DilatedViTMAEConfig(**tiny_config_kwargs), like=other)
    assert three.crop_size == {"height": 32, "width": 32} and list(three.image_mean) == [0.1, 0.2, 0.3]
    assert three.crop_pct == 0.9 and three.resample == other.resample
    one = image_processor_for_config(DilatedViTMAEConfig(**tiny_config_kwargs, num_channels=1), like=other)
    assert len(one.image_mean) == 1 and one.crop_pct == 0.9  # a 3-channel mean does not fit 1 channel


# ---- the training and evaluation batches, pinned --------------------------------------------------------------------


def _batch_digest(batch: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each field's dtype, shape and the sha256 of its values (in logical order), to pin a batch bit for bit."""
    return {
        key: f"{value.dtype} {tuple(value.shape)} {hashlib.sha256(value.contiguous().numpy().tobytes()).hexdigest()[:16]}"
        for key, value in sorted(batch.items())
    }


def _pinned_loader_batches(on_device: bool, seed: int | None) -> list[dict[str, str]]:
    """What a run's loader gives for 5 images (one of another size) in 2 epochs: float32 crops and flips (seeded),
    the evaluation view (no seed), or the device path's uint8 images, boxes and flips (seeded)."""
    import datasets

    images = [face_like_image(40, 48, seed=i) for i in range(4)] + [face_like_image(36, 52, seed=4)]
    dataset = datasets.Dataset.from_dict({"image": images, "sample_index": list(range(5))})
    per_image = square_view(16) if seed is None else MAEHostTransform(16) if on_device else MAETrainTransform(16)
    transform = IndexedTransform(per_image, seed=seed)
    dataset.set_transform(transform)
    # one persistent worker: the epoch set between epochs must reach the copy of the transform the worker holds
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_examples, num_workers=1, persistent_workers=True)
    batches = []
    for epoch in (0, 1):
        transform.epoch = epoch
        batches += [_batch_digest(batch) for batch in loader]
    return batches


# recorded from the loaders of commit 68c2366 (SeededAugmentation / IndexedTransform, collate_indexed / MAEHostCollator)
PINNED_FLOAT = [{"pixel_values": "torch.float32 (3, 3, 16, 16) 9f50fab283cfeef8",
  "sample_index": "torch.int64 (3,) ab25350e3e65efeb"},
 {"pixel_values": "torch.float32 (2, 3, 16, 16) 1566d1b09ff572ff",
  "sample_index": "torch.int64 (2,) fd223b85f4dc2018"},
 {"pixel_values": "torch.float32 (3, 3, 16, 16) 818ae528a57a9828",
  "sample_index": "torch.int64 (3,) ab25350e3e65efeb"},
 {"pixel_values": "torch.float32 (2, 3, 16, 16) 04c128b3e53f79d7",
  "sample_index": "torch.int64 (2,) fd223b85f4dc2018"}]
PINNED_EVAL = [{"pixel_values": "torch.float32 (3, 3, 16, 16) 1243de2d5b9cc2cb",
  "sample_index": "torch.int64 (3,) ab25350e3e65efeb"},
 {"pixel_values": "torch.float32 (2, 3, 16, 16) e358f3d16eb79da5",
  "sample_index": "torch.int64 (2,) fd223b85f4dc2018"},
 {"pixel_values": "torch.float32 (3, 3, 16, 16) 1243de2d5b9cc2cb",
  "sample_index": "torch.int64 (3,) ab25350e3e65efeb"},
 {"pixel_values": "torch.float32 (2, 3, 16, 16) e358f3d16eb79da5",
  "sample_index": "torch.int64 (2,) fd223b85f4dc2018"}]
PINNED_DEVICE = [{"crop_boxes": "torch.float32 (3, 4) 81f1fafcb1c4757a",
  "flips": "torch.bool (3,) faee935763044f12",
  "image_sizes": "torch.int64 (3, 2) 89686dd08d91edb2",
  "pixel_values_uint8": "torch.uint8 (3, 3, 48, 40) db969f0d2aaa90cf",
  "sample_index": "torch.int64 (3,) ab25350e3e65efeb"},
 {"crop_boxes": "torch.float32 (2, 4) 999e5fc810e910ca",
  "flips": "torch.bool (2,) 47dc540c94ceb704",
  "image_sizes": "torch.int64 (2, 2) bc289e4d63d41b02",
  "pixel_values_uint8": "torch.uint8 (2, 3, 52, 40) 50748fc778467aa6",
  "sample_index": "torch.int64 (2,) fd223b85f4dc2018"},
 {"crop_boxes": "torch.float32 (3, 4) dc2eeacda39f8bc0",
  "flips": "torch.bool (3,) 75c8fd04ad916aec",
  "image_sizes": "torch.int64 (3, 2) 89686dd08d91edb2",
  "pixel_values_uint8": "torch.uint8 (3, 3, 48, 40) db969f0d2aaa90cf",
  "sample_index": "torch.int64 (3,) ab25350e3e65efeb"},
 {"crop_boxes": "torch.float32 (2, 4) ed1d4f54843b4255",
  "flips": "torch.bool (2,) 9dcf97a184f32623",
  "image_sizes": "torch.int64 (2, 2) bc289e4d63d41b02",
  "pixel_values_uint8": "torch.uint8 (2, 3, 52, 40) 50748fc778467aa6",
  "sample_index": "torch.int64 (2,) fd223b85f4dc2018"}]


@pytest.mark.parametrize(
    "on_device, seed, expected",
    [
        (False, 3, PINNED_FLOAT),
        (False, None, PINNED_EVAL),
        (True, 3, PINNED_DEVICE),
    ],
    ids=["float32-host", "evaluation", "uint8-device"],
)
def test_loader_batches_are_pinned_bit_for_bit(on_device, seed, expected):
    # resume, the exactness tests and every recorded figure depend on these values: changing the batch transform or
    # the collator must not change a bit of them
    assert _pinned_loader_batches(on_device, seed) == expected
