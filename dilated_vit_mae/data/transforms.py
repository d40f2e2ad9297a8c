"""
MAE data augmentation without torchvision.

`MAETrainTransform` is the pre-training augmentation of facebookresearch/mae (`main_pretrain.py`):
`RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=bicubic)`, `RandomHorizontalFlip()`, `ToTensor()`,
`Normalize(mean, std)`, written with PIL and torch only. Its random draws are torchvision's, in torchvision's order,
so the same torch seed picks the same crops and flips. `MAEHostTransform` is the device path's
host half (decode and draw on the host, crop and normalise batched on the device: `data/device_augment.py`).
[`eval_view`] is the deterministic evaluation view: the model's image processor itself, one image at a time. All are
plain picklable callables, usable in `DataLoader` workers. The scripts apply them through `data/seeding.py`'s
`IndexedTransform` (seeded for training, without a seed for evaluation) with `datasets.Dataset.set_transform`, and
batch them with [`collate_examples`] (float tensors, or the device path's uint8 images, boxes and flips).

```python
>>> from torch.utils.data import DataLoader
>>> from dilated_vit_mae.data.loading import load_celeba
>>> from dilated_vit_mae.data.seeding import IndexedTransform
>>> from dilated_vit_mae.data.transforms import MAETrainTransform, collate_examples
>>> train = load_celeba("data/celeba_sample")["train"].select_columns(["image"])
>>> train = train.add_column("sample_index", list(range(len(train))))
>>> train.set_transform(IndexedTransform(MAETrainTransform(224), seed=0))
>>> loader = DataLoader(train, batch_size=8, shuffle=True, collate_fn=collate_examples)
>>> next(iter(loader))["pixel_values"].shape
torch.Size([8, 3, 224, 224])
```
"""

import io
import math
import os
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from torch.utils.data import get_worker_info

from ..image_processing_dilated_vit_mae import (
    MAX_IMAGE_PIXELS,
    DilatedViTMAEImageProcessor,
    _check_pixel_count,
    check_setting,
)
from ..modeling_dilated_vit_mae import to_2tuple

try:  # optional: libjpeg-turbo through a thin binding, ~1.5x faster than PIL's decode of a CelebA JPEG
    import simplejpeg
except ImportError:
    simplejpeg = None

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "MAEHostTransform",
    "MAETrainTransform",
    "RandAugment",
    "RandomErasing",
    "as_our_image_processor",
    "collate_examples",
    "decode_uint8",
    "eval_view",
    "random_resized_crop_params",
    "read_image_size",
]

# The normalisation of facebookresearch/mae and of the `facebook/vit-mae-*` preprocessor configs.
IMAGENET_DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

ImageInput = PIL.Image.Image | np.ndarray | str | os.PathLike | dict
Decoder = Literal["auto", "simplejpeg", "pil"]


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """
    Sample the crop box of `RandomResizedCrop`: an area fraction uniform in `scale` and a log-uniform aspect ratio
    (width / height) in `ratio`; up to 10 attempts, then a centre crop clamped to `ratio`.

    Adapted from torchvision's `RandomResizedCrop.get_params`
    (https://github.com/pytorch/vision/blob/v0.20.0/torchvision/transforms/transforms.py#L943), with the same random
    draws in the same order, so a generator in the same state gives the same box.

    Args:
        height (`int`), width (`int`):
            Size of the image to crop.
        scale (`tuple[float, float]`, *optional*, defaults to `(0.2, 1.0)`):
            Range of the crop area as a fraction of the image area.
        ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`):
            Range of the crop aspect ratio (width / height).
        generator (`torch.Generator`, *optional*):
            Source of randomness; the global torch RNG when `None`.

    Returns:
        `tuple[int, int, int, int]`: `(top, left, crop_height, crop_width)`.

    Example:

    ```python
    >>> import torch
    >>> from dilated_vit_mae.data.transforms import random_resized_crop_params
    >>> generator = torch.Generator().manual_seed(0)
    >>> top, left, crop_height, crop_width = random_resized_crop_params(218, 178, generator=generator)
    ```
    """
    area = height * width
    log_ratio = _log_ratio(tuple(ratio))  # torchvision's float32 `torch.log(torch.tensor(ratio))`, computed once
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = torch.randint(0, height - crop_height + 1, size=(1,), generator=generator).item()
            left = torch.randint(0, width - crop_width + 1, size=(1,), generator=generator).item()
            return top, left, crop_height, crop_width

    # fallback to a centre crop with the aspect ratio clamped into `ratio`
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_width = width
        crop_height = int(round(crop_width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_height = height
        crop_width = int(round(crop_height * max(ratio)))
    else:  # whole image
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


class MAETrainTransform:
    r"""
    MAE pre-training augmentation: random resized crop (bicubic), random horizontal flip, rescale to [0, 1],
    normalise. Takes a PIL image (or see [`eval_view`] for the other accepted inputs) and returns a
    `torch.FloatTensor` of shape `(num_channels, height, width)`.

    The crop is resized straight from the source box with `PIL.Image.resize(..., box=...)`, one resampling pass
    instead of crop-then-resize; unlike torchvision's crop-then-resize, the filter may read pixels just outside the
    box, which changes border pixels slightly and nothing else.

    Randomness, in order of precedence: the `generator` passed to `__call__`; the transform's own generator when
    `seed` is set (inside a `DataLoader` worker it is re-seeded once from `seed` and the worker's seed, so workers
    and epochs differ and a seeded `DataLoader` is reproducible); otherwise the global torch RNG, which `DataLoader`
    already seeds per worker and per epoch.

    Args:
        size (`int` or `tuple[int, int]`, *optional*, defaults to 224):
            Output size; an int gives a square, a tuple is `(height, width)`.
        image_mean (`Sequence[float]`, *optional*, defaults to `IMAGENET_DEFAULT_MEAN`):
            Per-channel mean subtracted after rescaling; one value per channel.
        image_std (`Sequence[float]`, *optional*, defaults to `IMAGENET_DEFAULT_STD`):
            Per-channel standard deviation divided by after subtracting the mean.
        num_channels (`int`, *optional*, defaults to 3):
            3 converts inputs to RGB, 1 to greyscale (`L`); transparent pixels are composited over white first.
        scale (`tuple[float, float]`, *optional*, defaults to `(0.2, 1.0)`):
            Range of the crop area as a fraction of the image area (MAE uses 0.2-1.0, not torchvision's 0.08).
        ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`):
            Range of the crop aspect ratio (width / height).
        flip_prob (`float`, *optional*, defaults to 0.5):
            Probability of a horizontal flip.
        resample (`int`, *optional*, defaults to `PIL.Image.Resampling.BICUBIC`):
            PIL resampling filter.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Factor applied to the 0..255 pixel values before normalising.
        seed (`int`, *optional*):
            Seed of the transform's own generator.
        rand_augment (`str`, *optional*):
            A [`RandAugment`] config (MAE fine-tuning: `"rand-m9-mstd0.5-inc1"`), applied to the flipped crop, with
            the normalisation mean as fill colour and `resample`; `None` (pre-training) for none.
        random_erasing (`float`, *optional*, defaults to 0.0):
            Probability of [`RandomErasing`] (per-pixel noise) on the normalised tensor (MAE fine-tuning: 0.25).

    The draws come in this order from one generator: crop, flip, RandAugment, erasing; without the last two, the
    crops and flips are those of pre-training. MAE's fine-tuning transform is
    `MAETrainTransform(size, scale=(0.08, 1.0), rand_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25)`.

    Example:

    ```python
    >>> import PIL.Image
    >>> from dilated_vit_mae.data.transforms import MAETrainTransform
    >>> transform = MAETrainTransform(224, seed=0)
    >>> transform(PIL.Image.new("RGB", (178, 218))).shape
    torch.Size([3, 224, 224])
    ```
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        num_channels: int = 3,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        resample: int = PIL.Image.Resampling.BICUBIC,
        rescale_factor: float = 1 / 255,
        seed: int | None = None,
        rand_augment: str | None = None,
        random_erasing: float = 0.0,
    ) -> None:
        self.size = _check_size(size)
        self.num_channels = _check_num_channels(num_channels)
        # (C, 1, 1) to broadcast over (C, H, W); checked as the image processor checks its own
        self.image_mean, self.image_std = (
            np.asarray(check_setting(name, value, num_channels), dtype=np.float32).reshape(-1, 1, 1)
            for name, value in (("image_mean", image_mean), ("image_std", image_std))
        )
        for name, (low, high) in (("scale", scale), ("ratio", ratio)):
            if not 0 < low <= high:
                raise ValueError(f"`{name}` must be (low, high) with 0 < low <= high, got {(low, high)!r}.")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"`flip_prob` must be in [0, 1], got {flip_prob!r}.")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_prob = float(flip_prob)
        self.resample = resample
        self.rescale_factor = check_setting("rescale_factor", rescale_factor)
        self.seed = seed
        fill = tuple(min(255, round(255 * float(m))) for m in self.image_mean.reshape(-1))  # timm's `img_mean`
        self.rand_augment = RandAugment(rand_augment, fill=fill, resample=resample) if rand_augment else None
        self.random_erasing = RandomErasing(random_erasing) if random_erasing else None
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._worker_key: tuple[int, int] | None = None

    def __call__(self, image: ImageInput, generator: torch.Generator | None = None) -> torch.Tensor:
        """
        Args:
            image (`PIL.Image.Image`, `np.ndarray`, path or `{"bytes", "path"}` dict):
                The image to augment.
            generator (`torch.Generator`, *optional*):
                Source of randomness for this call, overriding the transform's own.

        Returns:
            `torch.FloatTensor` of shape `(num_channels, height, width)`.
        """
        image = _prepare_image(image, self.num_channels)
        generator = generator if generator is not None else self._worker_generator()
        (top, left, crop_height, crop_width), flip = self._draw(image.height, image.width, generator)
        height, width = self.size
        image = image.resize(
            (width, height), self.resample, box=(left, top, left + crop_width, top + crop_height)
        )
        if flip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            image = self.rand_augment(image, generator)
        pixel_values = _to_normalized_tensor(image, self.image_mean, self.image_std, self.rescale_factor)
        if self.random_erasing is not None:
            pixel_values = self.random_erasing(pixel_values, generator)
        return pixel_values

    def host_params(
        self,
        image: ImageInput,
        generator: torch.Generator | None = None,
        decoder: Decoder = "auto",
        draft: bool = False,
    ) -> dict[str, Any]:
        """
        The host half of the augmentation, for [`~dilated_vit_mae.data.device_augment.DeviceAugmentation`]: decode the
        image to uint8 and draw its crop box and flip, with the same draws as `__call__` (so a generator in the same
        state gives the same box and flip), leaving crop, resize, flip and normalisation to the device.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, path or `{"bytes", "path"}` dict):
                The image. Paths and dicts (`datasets.Image(decode=False)`) are decoded here, JPEGs with simplejpeg
                where it is installed; a uint8 `(height, width, num_channels)` array (a decoded-cache row) is used
                as it is.
            generator (`torch.Generator`, *optional*):
                Source of randomness for this call, overriding the transform's own.
            decoder (`"auto"`, `"simplejpeg"` or `"pil"`, *optional*, defaults to `"auto"`):
                JPEG decoder for encoded inputs: `"auto"` uses simplejpeg when it is installed, PIL otherwise.
            draft (`bool`, *optional*, defaults to `False`):
                Decode a JPEG at a reduced DCT scale (1/2, 1/4, 1/8) when the crop still has at least the output's
                size there; the box is then given in the reduced image's pixels. Faster on large photos, but libjpeg's
                DCT scaling is not PIL's antialiasing filter: the device output then differs from `__call__`'s by more
                than 10 levels of 255 on the CelebA sample at 64 px (`tests/test_device_augment.py`), so it is off
                unless asked for. Never happens when upscaling (CelebA's 178x218 crops at 224 px).

        Returns:
            `dict` with `image_uint8` (`torch.ByteTensor` of shape `(num_channels, height, width)`, a view of a
            channels-last array), `crop_box` (`(top, left, height, width)` floats, in `image_uint8`'s pixels) and
            `flip` (`bool`). Along an axis longer than `MAX_UNSLICED_LENGTH`, `image_uint8` is only the crop box and
            the filter's reach around it (the same output): the collator pads a batch to its longest image and the
            device's resampling matrices span that length, so one 1 x 1,000,000 px image would otherwise cost
            gigabytes per batch.

        Example:

        ```python
        >>> import PIL.Image, torch
        >>> from dilated_vit_mae.data.transforms import MAETrainTransform
        >>> params = MAETrainTransform(224).host_params(PIL.Image.new("RGB", (178, 218)), torch.Generator().manual_seed(0))
        >>> params["image_uint8"].shape, len(params["crop_box"]), type(params["flip"])
        (torch.Size([3, 218, 178]), 4, <class 'bool'>)
        ```
        """
        if self.rand_augment is not None or self.random_erasing is not None:
            raise ValueError(
                "RandAugment and random erasing run on the host's float path only; build the transform without "
                "`rand_augment` / `random_erasing` for the device path."
            )
        (height, width), decode = _open_for_decode(image, self.num_channels, _check_decoder(decoder))
        generator = generator if generator is not None else self._worker_generator()
        box, flip = self._draw(height, width, generator)
        pixels = decode(_draft_size(box, (height, width), self.size) if draft else (height, width))
        scale_y, scale_x = pixels.shape[0] / height, pixels.shape[1] / width
        top, left, crop_height, crop_width = box
        crop_box = (top * scale_y, left * scale_x, crop_height * scale_y, crop_width * scale_x)
        pixels, crop_box = _slice_long_axes(pixels, crop_box, self.size)
        # (H, W, C) -> (C, H, W) as a view: the collator copies it into a channels-last batch
        return {"image_uint8": torch.from_numpy(pixels).permute(2, 0, 1), "crop_box": crop_box, "flip": flip}

    def _draw(
        self, height: int, width: int, generator: torch.Generator | None
    ) -> tuple[tuple[int, int, int, int], bool]:
        box = random_resized_crop_params(height, width, self.scale, self.ratio, generator)
        # torchvision's RandomHorizontalFlip: `if torch.rand(1) < self.p`, drawn after the crop
        flip = torch.rand(1, generator=generator).item() < self.flip_prob
        return box, flip

    def _worker_generator(self) -> torch.Generator | None:
        if self._generator is None:
            return None
        worker_info = get_worker_info()
        if worker_info is not None and self._worker_key != (worker_info.id, worker_info.seed):
            # Every worker starts from a pickled copy of the same generator: without re-seeding, all workers (and
            # every epoch without persistent workers) would draw the same crops.
            self._generator.manual_seed((self.seed * 0x9E3779B97F4A7C15 + worker_info.seed) % 2**63)
            self._worker_key = (worker_info.id, worker_info.seed)
        return self._generator

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip_prob={self.flip_prob}, num_channels={self.num_channels}, seed={self.seed}"
            + (f", rand_augment={self.rand_augment.config!r}" if self.rand_augment is not None else "")
            + (f", random_erasing={self.random_erasing.probability}" if self.random_erasing is not None else "")
            + ")"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning augmentation: RandAugment and random erasing (MAE's `main_finetune.py` through timm, without timm)
# ----------------------------------------------------------------------------------------------------------------------

# MAE fine-tunes with timm's `create_transform(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel",
# re_count=1)`; these are the defaults of `run_finetune.py`'s MAE recipe
MAE_FINETUNE_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
MAE_FINETUNE_RANDOM_ERASING = 0.25

_LEVEL_DENOM = 10.0  # a magnitude of 10 is an op's full strength


def _negate_half(value: float, generator: torch.Generator | None) -> float:
    # timm's `_randomly_negate`: `-v if random.random() > 0.5 else v`
    return -value if _uniform(generator) > 0.5 else value


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand(1, generator=generator).item()


def _solarize_add(image: PIL.Image.Image, add: int, threshold: int = 128) -> PIL.Image.Image:
    lut = [min(255, value + add) if value < threshold else value for value in range(256)]
    return image.point(lut * len(image.getbands()))


def _affine(image: PIL.Image.Image, matrix: tuple[float, ...], fill: Any, resample: int) -> PIL.Image.Image:
    return image.transform(image.size, PIL.Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


# op name -> (how the op reads its argument from a magnitude in [0, 10], how it changes the image): timm's
# `LEVEL_TO_ARG` / `NAME_TO_OP`; `None` for ops without an argument. `g` is the generator of the random signs.
_RAND_AUGMENT_LEVELS: dict[str, Callable[[float, torch.Generator | None, float], float] | None] = {
    "AutoContrast": None,
    "Equalize": None,
    "Invert": None,
    "Rotate": lambda m, g, _: _negate_half(m / _LEVEL_DENOM * 30.0, g),  # degrees in [-30, 30]
    "Posterize": lambda m, g, _: int(m / _LEVEL_DENOM * 4),  # bits kept, 0..4 (weaker as m grows)
    "PosterizeIncreasing": lambda m, g, _: 4 - int(m / _LEVEL_DENOM * 4),  # bits kept, 4..0 (stronger as m grows)
    "Solarize": lambda m, g, _: int(m / _LEVEL_DENOM * 256),  # threshold, 0..256 (weaker as m grows)
    "SolarizeIncreasing": lambda m, g, _: 256 - int(m / _LEVEL_DENOM * 256),
    "SolarizeAdd": lambda m, g, _: int(m / _LEVEL_DENOM * 110),  # added below 128, 0..110
    "Color": lambda m, g, _: m / _LEVEL_DENOM * 1.8 + 0.1,  # enhancement factor in [0.1, 1.9]
    "ColorIncreasing": lambda m, g, _: max(0.1, 1.0 + _negate_half(m / _LEVEL_DENOM * 0.9, g)),  # 1 -/+ up to 0.9
    "Contrast": lambda m, g, _: m / _LEVEL_DENOM * 1.8 + 0.1,
    "ContrastIncreasing": lambda m, g, _: max(0.1, 1.0 + _negate_half(m / _LEVEL_DENOM * 0.9, g)),
    "Brightness": lambda m, g, _: m / _LEVEL_DENOM * 1.8 + 0.1,
    "BrightnessIncreasing": lambda m, g, _: max(0.1, 1.0 + _negate_half(m / _LEVEL_DENOM * 0.9, g)),
    "Sharpness": lambda m, g, _: m / _LEVEL_DENOM * 1.8 + 0.1,
    "SharpnessIncreasing": lambda m, g, _: max(0.1, 1.0 + _negate_half(m / _LEVEL_DENOM * 0.9, g)),
    "ShearX": lambda m, g, _: _negate_half(m / _LEVEL_DENOM * 0.3, g),  # shear factor in [-0.3, 0.3]
    "ShearY": lambda m, g, _: _negate_half(m / _LEVEL_DENOM * 0.3, g),
    "TranslateXRel": lambda m, g, pct: _negate_half(m / _LEVEL_DENOM * pct, g),  # fraction of the width
    "TranslateYRel": lambda m, g, pct: _negate_half(m / _LEVEL_DENOM * pct, g),
}


def _apply_op(name: str, image: PIL.Image.Image, value: float, fill: Any, resample: int) -> PIL.Image.Image:
    from PIL import ImageEnhance, ImageOps

    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Invert":
        return ImageOps.invert(image)
    if name == "Rotate":
        return image.rotate(value, resample=resample, fillcolor=fill)
    if name.startswith("Posterize"):
        return image if value >= 8 else ImageOps.posterize(image, int(value))
    if name.startswith("SolarizeAdd"):
        return _solarize_add(image, int(value))
    if name.startswith("Solarize"):
        return ImageOps.solarize(image, int(value))
    for prefix, enhancer in (("Color", ImageEnhance.Color), ("Contrast", ImageEnhance.Contrast),
                             ("Brightness", ImageEnhance.Brightness), ("Sharpness", ImageEnhance.Sharpness)):  # fmt: skip
        if name.startswith(prefix):
            return enhancer(image).enhance(value)
    if name == "ShearX":
        return _affine(image, (1, value, 0, 0, 1, 0), fill, resample)
    if name == "ShearY":
        return _affine(image, (1, 0, 0, value, 1, 0), fill, resample)
    if name == "TranslateXRel":
        return _affine(image, (1, 0, value * image.width, 0, 1, 0), fill, resample)
    if name == "TranslateYRel":
        return _affine(image, (1, 0, 0, 0, 1, value * image.height), fill, resample)
    raise ValueError(f"Unknown RandAugment op {name!r}.")


# timm's `_RAND_TRANSFORMS` and `_RAND_INCREASING_TRANSFORMS` (`inc1`), in timm's order
RAND_AUGMENT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
RAND_AUGMENT_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)  # fmt: skip


class RandAugment:
    """
    RandAugment (Cubuk et al. 2019, arXiv 1909.13719) as timm implements it and MAE fine-tunes with it, on PIL images,
    without timm or torchvision: `num_layers` ops drawn uniformly with replacement from the 15 ops, each applied with
    probability `prob` (0.5) at a magnitude drawn from `N(magnitude, magnitude_std)` clipped to [0, 10].

    Follows timm's `rand_augment_transform` / `RandAugment` / `AugmentOp`
    (https://github.com/huggingface/pytorch-image-models/blob/066e490605ba1d3666861096163246c885603469/timm/data/auto_augment.py;
    MAE pins timm 0.3.2, whose RandAugment differs only in clamping the `*Increasing` enhancement factors at 0.1,
    which no magnitude <= 10 reaches): the same ops, magnitude-to-argument maps, fill (the dataset mean in 0..255)
    and resampling (`create_transform` passes bicubic), and the same config string. What differs is the source of
    randomness: every draw comes from the `generator` passed in (`torch.rand`/`randn`/`randint`) instead of Python's
    and numpy's global generators, so that an image's augmentation is a function of its seed only.

    Args:
        config (`str`, *optional*, defaults to `"rand-m9-mstd0.5-inc1"`):
            timm's config string: `rand` then dash-separated `m<int>` (magnitude, default 10), `n<int>` (ops per image,
            default 2), `mstd<float>` (magnitude noise; > 100 means uniform in [0, m]), `mmax<int>` (upper bound
            instead of 10), `inc<0|1>` (the `*Increasing` ops, whose strength grows with the magnitude).
        fill (`tuple[int, ...]`, *optional*, defaults to `(124, 116, 104)`):
            Colour of the pixels that rotations, shears and translations bring in (timm: the normalisation mean x 255).
        resample (`int`, *optional*, defaults to `PIL.Image.Resampling.BICUBIC`):
            Resampling of the geometric ops.
        translate_pct (`float`, *optional*, defaults to 0.45):
            Largest translation, as a fraction of the image side, at magnitude 10.

    Example:

    ```python
    >>> import PIL.Image, torch
    >>> from dilated_vit_mae.data.transforms import RandAugment
    >>> augment = RandAugment("rand-m9-mstd0.5-inc1")
    >>> augment.magnitude, augment.num_layers, augment.magnitude_std, len(augment.ops)
    (9, 2, 0.5, 15)
    >>> augment(PIL.Image.new("RGB", (64, 64)), torch.Generator().manual_seed(0)).size
    (64, 64)

    ```
    """

    prob = 0.5  # timm's `rand_augment_ops(prob=0.5)`

    def __init__(
        self,
        config: str = MAE_FINETUNE_RAND_AUGMENT,
        fill: Sequence[int] = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN),
        resample: int = PIL.Image.Resampling.BICUBIC,
        translate_pct: float = 0.45,
    ) -> None:
        import re

        self.config = config
        parts = str(config).split("-")
        if parts[0] != "rand":
            raise ValueError(f"A RandAugment config starts with 'rand' (e.g. 'rand-m9-mstd0.5-inc1'), got {config!r}.")
        self.magnitude, self.num_layers, self.magnitude_std, self.magnitude_max = 10, 2, 0.0, _LEVEL_DENOM
        ops = RAND_AUGMENT_OPS
        for part in parts[1:]:
            key, value = (re.split(r"(\d.*)", part) + [""])[:2]
            try:
                if key == "m":
                    self.magnitude = int(value)
                elif key == "n":
                    self.num_layers = int(value)
                elif key == "mstd":
                    self.magnitude_std = math.inf if float(value) > 100 else float(value)
                elif key == "mmax":
                    self.magnitude_max = float(int(value))
                elif key == "inc":
                    ops = RAND_AUGMENT_INCREASING_OPS if int(value) else RAND_AUGMENT_OPS
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"Cannot read {part!r} of the RandAugment config {config!r}; use m<int>, n<int>, mstd<float>, "
                    "mmax<int>, inc<0|1> (weighted choice, timm's w<int>, is not supported)."
                ) from None
        if self.num_layers < 0 or self.magnitude < 0:
            raise ValueError(f"RandAugment needs n >= 0 and m >= 0, got {config!r}.")
        self.ops = ops
        self.fill = tuple(int(value) for value in fill)
        self.resample = resample
        self.translate_pct = float(translate_pct)

    def __call__(self, image: PIL.Image.Image, generator: torch.Generator | None = None) -> PIL.Image.Image:
        fill = self.fill[0] if image.mode == "L" else self.fill
        for _ in range(self.num_layers):
            name = self.ops[int(torch.randint(len(self.ops), (1,), generator=generator))]
            if _uniform(generator) > self.prob:  # timm: `if random.random() > self.prob: return img`
                continue
            magnitude = float(self.magnitude)
            if self.magnitude_std == math.inf:
                magnitude = _uniform(generator, 0.0, magnitude)
            elif self.magnitude_std > 0:
                magnitude += self.magnitude_std * torch.randn(1, generator=generator).item()
            magnitude = max(0.0, min(magnitude, self.magnitude_max))
            level = _RAND_AUGMENT_LEVELS[name]
            value = level(magnitude, generator, self.translate_pct) if level is not None else 0.0
            image = _apply_op(name, image, value, fill, self.resample)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, fill={self.fill})"


class RandomErasing:
    """
    Random erasing (Zhong et al. 2017, arXiv 1708.04896) as timm's `RandomErasing` applies it to a normalised image
    tensor, and MAE fine-tunes with it (`re_prob=0.25, re_mode="pixel", re_count=1`): with probability `probability`,
    a box of area fraction uniform in `[min_area, max_area]` and log-uniform aspect ratio in `[min_aspect,
    1 / min_aspect]` (10 attempts to fit) is replaced by per-pixel standard-normal noise (`"pixel"`), one normal colour
    per channel (`"rand"`) or zeros (`"const"`).

    Follows https://github.com/huggingface/pytorch-image-models/blob/066e490605ba1d3666861096163246c885603469/timm/data/random_erasing.py
    (the same draws in the same order), with every draw from the `generator` passed in instead of Python's global one.

    Example:

    ```python
    >>> import torch
    >>> from dilated_vit_mae.data.transforms import RandomErasing
    >>> erased = RandomErasing(probability=1.0)(torch.zeros(3, 32, 32), torch.Generator().manual_seed(0))
    >>> bool((erased != 0).any())
    True

    ```
    """

    def __init__(
        self,
        probability: float = MAE_FINETUNE_RANDOM_ERASING,
        min_area: float = 0.02,
        max_area: float = 1 / 3,
        min_aspect: float = 0.3,
        mode: Literal["pixel", "rand", "const"] = "pixel",
        count: int = 1,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"Random erasing's `probability` must be in [0, 1], got {probability!r}.")
        if not 0 < min_area <= max_area <= 1 or not 0 < min_aspect <= 1 or count < 1:
            raise ValueError(
                f"Random erasing needs 0 < min_area <= max_area <= 1, 0 < min_aspect <= 1 and count >= 1, got "
                f"{min_area!r}, {max_area!r}, {min_aspect!r}, {count!r}."
            )
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"Random erasing's `mode` must be 'pixel', 'rand' or 'const', got {mode!r}.")
        self.probability, self.min_area, self.max_area = float(probability), float(min_area), float(max_area)
        self.log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
        self.mode, self.count = mode, int(count)

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Erase in place and return `pixel_values` (`(num_channels, height, width)`, normalised)."""
        if _uniform(generator) > self.probability:
            return pixel_values
        channels, height, width = pixel_values.shape
        count = self.count if self.count == 1 else int(torch.randint(1, self.count + 1, (1,), generator=generator))
        for _ in range(count):
            for _attempt in range(10):
                target_area = _uniform(generator, self.min_area, self.max_area) * height * width / count
                aspect_ratio = math.exp(_uniform(generator, *self.log_aspect_ratio))
                box_height = int(round(math.sqrt(target_area * aspect_ratio)))
                box_width = int(round(math.sqrt(target_area / aspect_ratio)))
                if box_width < width and box_height < height:
                    top = int(torch.randint(0, height - box_height + 1, (1,), generator=generator))
                    left = int(torch.randint(0, width - box_width + 1, (1,), generator=generator))
                    shape = (channels, box_height, box_width) if self.mode == "pixel" else (channels, 1, 1)
                    noise = torch.zeros(shape, dtype=pixel_values.dtype)
                    if self.mode != "const":
                        noise.normal_(generator=generator)
                    pixel_values[:, top : top + box_height, left : left + box_width] = noise
                    break
        return pixel_values

    def __repr__(self) -> str:
        return f"{type(self).__name__}(probability={self.probability}, mode={self.mode!r}, count={self.count})"


class MAEHostTransform(MAETrainTransform):
    r"""
    The host half of [`MAETrainTransform`] for training on an accelerator: `__call__(image, generator)` returns
    [`~MAETrainTransform.host_params`] (uint8 image, crop box, flip) instead of a float tensor. Batch its outputs with
    [`collate_examples`] and finish them on the device with
    [`~dilated_vit_mae.data.device_augment.DeviceAugmentation.from_transform`]. The host then only decodes: about a
    fifth of the CPU time per image of the float32 path (`benchmarks/bench_data_pipeline.py`).

    Args:
        *args, **kwargs:
            [`MAETrainTransform`]'s arguments (size, normalisation, crop ranges, flip probability, resampling, seed);
            the device side reads them from this transform.
        decoder (`"auto"`, `"simplejpeg"` or `"pil"`, *optional*, defaults to `"auto"`):
            JPEG decoder; `"simplejpeg"` raises `ImportError` here when the package is missing.
        draft (`bool`, *optional*, defaults to `False`):
            Decode JPEGs at a reduced DCT scale when the crop keeps at least the output size: faster on large photos,
            but no longer the host path's pixels (see `host_params`).

    Example:

    ```python
    >>> import PIL.Image
    >>> from dilated_vit_mae.data.transforms import MAEHostTransform, collate_examples
    >>> transform = MAEHostTransform(224, seed=0)
    >>> batch = collate_examples([transform(PIL.Image.new("RGB", (178, 218))) for _ in range(2)])
    >>> batch["pixel_values_uint8"].shape, batch["crop_boxes"].shape
    (torch.Size([2, 3, 218, 178]), torch.Size([2, 4]))
    ```
    """

    def __init__(self, *args: Any, decoder: Decoder = "auto", draft: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder = _check_decoder(decoder)
        if self.decoder == "simplejpeg" and simplejpeg is None:
            raise ImportError("decoder='simplejpeg' needs the simplejpeg package: `pip install simplejpeg`, or use 'auto'.")
        self.draft = bool(draft)

    def __call__(self, image: ImageInput, generator: torch.Generator | None = None) -> dict[str, Any]:
        return self.host_params(image, generator, self.decoder, self.draft)


def decode_uint8(image: ImageInput, num_channels: int = 3, decoder: Decoder = "auto") -> np.ndarray:
    """
    Decode an image (any input of [`MAETrainTransform`]) at full size to a `(height, width, num_channels)` uint8
    array, JPEGs with simplejpeg where installed (`decoder="auto"`); the decoded cache stores these.
    """
    (height, width), decode = _open_for_decode(image, _check_num_channels(num_channels), _check_decoder(decoder))
    return decode((height, width))


def read_image_size(image: ImageInput, num_channels: int = 3) -> tuple[int, int]:
    """`(height, width)` of an image, from its header where it is encoded (nothing is decoded)."""
    return _open_for_decode(image, _check_num_channels(num_channels), "auto")[0]


def image_processor_for_config(
    config, like: DilatedViTMAEImageProcessor | None = None
) -> DilatedViTMAEImageProcessor:
    """
    A processor sized for `config` (shortest edge resized to the smaller side, centre crop to `image_size`,
    `num_channels`): ImageNet's mean and std, or `like`'s resampling and crop fraction, and its mean and std where its
    channel count matches. What a model folder without a usable processor (or with one for another size) gets.
    """
    height, width = to_2tuple(config.image_size)
    kwargs = {}
    if like is not None:
        if like.num_channels == config.num_channels:
            kwargs.update(image_mean=like.image_mean, image_std=like.image_std)
        kwargs.update(resample=like.resample, crop_pct=like.crop_pct)
    return DilatedViTMAEImageProcessor(
        size={"shortest_edge": min(height, width)},
        crop_size={"height": height, "width": width},
        num_channels=config.num_channels,
        **kwargs,
    )


def as_our_image_processor(image_processor: Any) -> DilatedViTMAEImageProcessor:
    """
    A [`DilatedViTMAEImageProcessor`] doing what `image_processor` does: ours is returned as it is; a transformers
    processor with the same attributes (a PIL one such as `facebook/vit-mae-*`'s `ViTImageProcessorPil`, or CLIP's) is
    read into ours: `size` (`shortest_edge`, or `height`/`width`), `do_center_crop` / `crop_size` (and `crop_pct` when
    it crops), `resample`, `do_rescale` / `rescale_factor`, `do_normalize` / `image_mean` / `image_std`, so that the
    evaluation view and a fine-tuned folder's processor are ours (and its code) whatever the checkpoint came from.

    Example:

    ```python
    >>> from transformers import ViTImageProcessorPil
    >>> from dilated_vit_mae.data.transforms import as_our_image_processor
    >>> as_our_image_processor(ViTImageProcessorPil()).size
    {'height': 224, 'width': 224}
    ```
    """
    if isinstance(image_processor, DilatedViTMAEImageProcessor):
        return image_processor
    size = _as_dict(getattr(image_processor, "size", None))
    if size.get("shortest_edge"):
        size = {"shortest_edge": size["shortest_edge"]}
    elif size.get("height") and size.get("width"):
        size = {"height": size["height"], "width": size["width"]}
    else:
        raise ValueError(f"The image processor's `size` needs `shortest_edge` or `height`/`width`, got {size!r}.")
    crop_size = _as_dict(getattr(image_processor, "crop_size", None))
    do_center_crop = bool(getattr(image_processor, "do_center_crop", bool(crop_size)))
    if not do_center_crop and "height" in size:
        crop_size = size  # what `crop_size` states: the output size (the training crop's, in run_finetune.py)
    mean = list(getattr(image_processor, "image_mean", None) or IMAGENET_DEFAULT_MEAN)
    std = list(getattr(image_processor, "image_std", None) or IMAGENET_DEFAULT_STD)
    resample = getattr(image_processor, "resample", None)
    return DilatedViTMAEImageProcessor(
        do_resize=getattr(image_processor, "do_resize", True),
        size=size,
        resample=PIL.Image.Resampling.BICUBIC if resample is None else int(resample),
        do_center_crop=do_center_crop,
        crop_size=crop_size or None,
        crop_pct=getattr(image_processor, "crop_pct", None) if do_center_crop else None,
        do_rescale=getattr(image_processor, "do_rescale", True),
        rescale_factor=getattr(image_processor, "rescale_factor", 1 / 255),
        do_normalize=getattr(image_processor, "do_normalize", True),
        image_mean=mean,
        image_std=std,
        num_channels=getattr(image_processor, "num_channels", None) or len(mean),
    )


def eval_view(image_processor: Any) -> Callable[[ImageInput], torch.Tensor]:
    r"""
    The evaluation view of an image processor ([`as_our_image_processor`]), one image at a time: what `run_mae.py`'s
    validation, `run_finetune.py`'s evaluation and `linear_probe.py`'s features use. The processor does the work
    (resize by its crop fraction, centre crop, rescale, normalise, bounded); this only opens the image as the training
    transforms do, so that a `{"bytes": ..., "path": ...}` dict (`datasets.Image(decode=False)`) works and an
    unreadable or oversized file (more than `MAX_IMAGE_PIXELS`, refused from its header) is named, and returns the
    `(num_channels, height, width)` float32 tensor. Picklable, for `DataLoader` workers.

    Example:

    ```python
    >>> import PIL.Image
    >>> from dilated_vit_mae import DilatedViTMAEImageProcessor
    >>> from dilated_vit_mae.data.transforms import eval_view
    >>> eval_view(DilatedViTMAEImageProcessor(crop_pct=0.875))(PIL.Image.new("RGB", (178, 218))).shape
    torch.Size([3, 224, 224])
    ```
    """
    image_processor = as_our_image_processor(image_processor)
    exact_resize = image_processor.do_resize and "height" in image_processor.size
    if not (image_processor.do_center_crop or exact_resize):
        raise ValueError(
            "An evaluation view needs one output size for every image (its batches are stacked), got an image "
            "processor that neither centre-crops nor resizes to a fixed size. Set do_center_crop=True or "
            "size={'height': h, 'width': w}."
        )
    return _ImageProcessorView(image_processor)


class _ImageProcessorView:
    """[`eval_view`]'s callable (a class so that it pickles, and so that `vars()` describes the view)."""

    def __init__(self, image_processor: DilatedViTMAEImageProcessor) -> None:
        self.image_processor = image_processor

    def __call__(self, image: ImageInput) -> torch.Tensor:
        image = _prepare_image(image, self.image_processor.num_channels, max_pixels=MAX_IMAGE_PIXELS)
        return torch.from_numpy(self.image_processor(image)["pixel_values"][0])


def collate_examples(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """
    The `collate_fn` of every loader, for both kinds of example that [`~dilated_vit_mae.data.seeding.IndexedTransform`]
    gives:

    - `pixel_values` tensors ([`MAETrainTransform`], [`eval_view`]) are stacked into `pixel_values` (`torch.FloatTensor`
      of shape `(batch_size, num_channels, height, width)`);
    - [`MAEHostTransform`] outputs (a dict with `image_uint8`, `crop_box` and `flip`, under `pixel_values` or at the
      example's top level) are padded into one channels-last uint8 batch (zeros beyond each image; images of one size,
      such as CelebA's, are stacked without padding), their boxes and flips stacked: `pixel_values_uint8`
      (`torch.ByteTensor` of shape `(batch_size, num_channels, max_height, max_width)`, channels-last in memory),
      `image_sizes` (`(batch_size, 2)` int64, height and width), `crop_boxes` (`(batch_size, 4)` float32, `(top, left,
      height, width)`) and `flips` (`(batch_size,)` bool), for
      [`~dilated_vit_mae.data.device_augment.DeviceAugmentation`].

    `sample_index` (int64) is passed through when the examples have it. Inside a `DataLoader` worker the images are
    batched in shared memory, as `default_collate` does, so they reach the main process without another copy; every
    output is a plain tensor, so `pin_memory=True` pins them all.

    Example:

    ```python
    >>> import torch
    >>> from dilated_vit_mae.data.transforms import collate_examples
    >>> example = {"image_uint8": torch.zeros(3, 4, 5, dtype=torch.uint8), "crop_box": (0, 0, 4, 5), "flip": True}
    >>> collate_examples([example])["flips"]
    tensor([True])
    >>> collate_examples([{"pixel_values": torch.zeros(3, 4, 4), "sample_index": 7}])["sample_index"]
    tensor([7])
    ```
    """
    if not examples:
        raise ValueError("Cannot collate an empty list of examples.")
    fields = [_host_fields(example) for example in examples]  # None for a pixel_values tensor
    if all(f is None for f in fields):
        pixel_values = [example["pixel_values"] for example in examples]  # (C, H, W) each
        batch = _new_batch((len(pixel_values), *pixel_values[0].shape), pixel_values[0].dtype)
        output = {"pixel_values": torch.stack(pixel_values, out=batch)}
    elif any(f is None for f in fields):
        raise ValueError(
            "Cannot batch MAEHostTransform outputs with pixel_values tensors: give one loader examples of one kind."
        )
    else:
        output = _collate_host(fields)
    if "sample_index" in examples[0]:
        output["sample_index"] = torch.tensor([int(example["sample_index"]) for example in examples])
    return output


def _collate_host(fields: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """[`collate_examples`] of [`MAEHostTransform`] outputs."""
    images = [f["image_uint8"] for f in fields]  # (C, H, W) views of (H, W, C) arrays
    num_channels = images[0].shape[0]
    if any(image.shape[0] != num_channels for image in images):
        raise ValueError(f"Cannot batch images with different channel counts, got {[i.shape[0] for i in images]}.")
    # plain Python on the sizes: small torch ops cost ~10 us each, and far more when the cores are busy
    sizes = [tuple(image.shape[1:]) for image in images]
    max_height, max_width = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = _new_batch((len(images), max_height, max_width, num_channels), torch.uint8)  # (B, H, W, C)
    if len(set(sizes)) > 1:
        batch.numpy().fill(0)
    for row, image in zip(batch.numpy(), images):
        # numpy: a torch copy_ here splits over intra-op threads, 100x slower when the cores are busy
        row[: image.shape[1], : image.shape[2]] = image.permute(1, 2, 0).numpy()
    return {
        "pixel_values_uint8": batch.permute(0, 3, 1, 2),  # (B, C, H, W), channels-last
        "image_sizes": torch.tensor(sizes, dtype=torch.int64),
        "crop_boxes": torch.tensor([f["crop_box"] for f in fields], dtype=torch.float32),
        "flips": torch.tensor([bool(f["flip"]) for f in fields], dtype=torch.bool),
    }


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"`size` must be a positive int or a (height, width) pair of positive ints, got {size!r}.")
    return int(size[0]), int(size[1])


def _check_num_channels(num_channels: int) -> int:
    if num_channels not in (1, 3):
        raise ValueError(f"`num_channels` must be 1 (greyscale) or 3 (RGB), got {num_channels!r}.")
    return num_channels


def _as_dict(size: Any) -> dict:
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    return {key: value for key, value in dict(size).items() if value is not None}


def _prepare_image(image: ImageInput, num_channels: int, max_pixels: int | None = None) -> PIL.Image.Image:
    """
    Open / check the input and convert it to `RGB` (3 channels) or `L` (1 channel); an encoded image larger than
    `max_pixels` (if given) is refused from its header, before decoding.
    """
    data, name = _read_encoded(image)  # paths and {"bytes", "path"} dicts
    if data is not None:
        image = _open(io.BytesIO(data), name, max_pixels=max_pixels)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(
                "A numpy image must be uint8 of shape (height, width) or (height, width, 1|3|4), got "
                f"{image.dtype} of shape {image.shape}."
            )
        image = PIL.Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(
            "Expected a PIL.Image.Image, a uint8 numpy array, a file path or a {'bytes', 'path'} dict, got "
            f"{type(image).__name__}."
        )
    else:
        try:
            image.load()  # a lazily opened file fails here, not halfway through the pipeline
        except Exception as error:
            name = getattr(image, "filename", None) or "<PIL image>"
            raise ValueError(f"Cannot decode image {name}: {type(error).__name__}: {error}") from error
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Image {name or '(unnamed)'} is empty: {image.width}x{image.height} pixels.")

    target_mode = "RGB" if num_channels == 3 else "L"
    if image.mode == target_mode:
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # composite over white like transformers' `convert_to_rgb` (converting drops alpha, keeping hidden colours)
        rgba = image.convert("RGBA")
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(target_mode)


def _open(source: Any, name: str, load: bool = True, max_pixels: int | None = None) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(source)
        # PIL has read the header only: an image over `max_pixels` is refused below, before it is decoded
        if load and (max_pixels is None or image.width * image.height <= max_pixels):
            image.load()
    except FileNotFoundError:
        raise
    except Exception as error:  # PIL raises many types for a corrupt file
        raise ValueError(f"Cannot decode image {name}: {type(error).__name__}: {error}") from error
    if max_pixels is not None:
        _check_pixel_count(image, f"Image {name}", max_pixels)
    return image


def _to_normalized_tensor(
    image: PIL.Image.Image, mean: np.ndarray, std: np.ndarray, rescale_factor: float
) -> torch.Tensor:
    array = np.asarray(image)  # (H, W) or (H, W, C) uint8
    if array.ndim == 2:
        array = array[:, :, None]
    # (H, W, C) uint8 -> (C, H, W) float32 in one copy, then rescale and normalise in place, in float32 like the image
    # processor. numpy rather than torch: torch would split these small ops over its intra-op threads, which costs
    # 20x when the cores are busy (e.g. a training process next to the data pipeline).
    pixel_values = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    pixel_values *= np.float32(rescale_factor)
    pixel_values -= mean
    pixel_values /= std
    return torch.from_numpy(pixel_values)


@lru_cache(maxsize=8)
def _log_ratio(ratio: tuple[float, float]) -> torch.Tensor:
    return torch.log(torch.tensor(ratio))


def _check_decoder(decoder: str) -> str:
    if decoder not in ("auto", "simplejpeg", "pil"):
        raise ValueError(f"`decoder` must be 'auto', 'simplejpeg' or 'pil', got {decoder!r}.")
    return decoder


def _host_fields(example: dict[str, Any]) -> dict[str, Any] | None:
    """The example's `MAEHostTransform` output (under `pixel_values` or at its top level), `None` for a tensor."""
    fields = example.get("pixel_values") if isinstance(example.get("pixel_values"), dict) else example
    if "image_uint8" in fields:
        return fields
    if isinstance(example.get("pixel_values"), torch.Tensor):
        return None
    raise KeyError(
        f"Expected pixel_values tensors or MAEHostTransform outputs (image_uint8, crop_box, flip), got keys "
        f"{sorted(example)}: give the loader's dataset an IndexedTransform of a per-image transform."
    )


def _new_batch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in shared memory inside a `DataLoader` worker, like `default_collate`'s."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


# longest axis `host_params` sends whole; a longer one is sliced to the crop box and the filter's reach around it
MAX_UNSLICED_LENGTH = 4096


def _slice_long_axes(
    pixels: np.ndarray, crop_box: tuple[float, float, float, float], output_size: tuple[int, int]
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """
    `pixels` cut, along each axis longer than `MAX_UNSLICED_LENGTH`, to the crop box widened by the reach of the
    widest filter (Lanczos, support 3, widened by the downscaling factor as PIL does) plus a pixel of rounding, and
    the box moved by whole pixels into the slice: every filter tap stays inside, so the device output is unchanged.
    """
    top, left, crop_height, crop_width = crop_box
    bounds = []
    for start, length, image_length, output_length in (
        (top, crop_height, pixels.shape[0], output_size[0]),
        (left, crop_width, pixels.shape[1], output_size[1]),
    ):
        if image_length <= MAX_UNSLICED_LENGTH:
            bounds.append((0, image_length))
            continue
        reach = 3.0 * max(1.0, length / output_length) + 1.0
        bounds.append((max(0, math.floor(start - reach)), min(image_length, math.ceil(start + length + reach))))
    (row0, row1), (column0, column1) = bounds
    if (row0, row1, column0, column1) == (0, pixels.shape[0], 0, pixels.shape[1]):
        return pixels, crop_box
    sliced = np.ascontiguousarray(pixels[row0:row1, column0:column1])  # a copy: the full image can be freed
    return sliced, (top - row0, left - column0, crop_height, crop_width)


def _draft_size(box: tuple[int, int, int, int], size: tuple[int, int], output_size: tuple[int, int]) -> tuple[int, int]:
    """
    The decoded `(height, width)` for `box`: the image reduced by the largest of 8, 4, 2 (JPEG DCT scaling, PIL's
    `draft` factors) at which the crop keeps at least `output_size` pixels, or its full size.
    """
    _, _, crop_height, crop_width = box
    factor = next((f for f in (8, 4, 2) if crop_height >= f * output_size[0] and crop_width >= f * output_size[1]), 1)
    return -(-size[0] // factor), -(-size[1] // factor)


def _open_for_decode(
    image: ImageInput, num_channels: int, decoder: str
) -> tuple[tuple[int, int], Callable[[tuple[int, int]], np.ndarray]]:
    """
    `(height, width)` of `image`, read from the header where it is encoded, and a function that decodes it to a
    `(H, W, num_channels)` uint8 array at a size of at least the `(min_height, min_width)` it is given (JPEG DCT
    scaling; other images are decoded at full size).
    """
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == num_channels:
        pixels = image if image.flags.writeable else image.copy()  # torch refuses read-only memory
        return image.shape[:2], lambda min_size: pixels  # already decoded, e.g. a row of a decoded cache
    data, name = _read_encoded(image)
    if data is None:  # a PIL image or another array: decoded already
        pil = _prepare_image(image, num_channels)
        return (pil.height, pil.width), lambda min_size: _pil_to_array(pil)
    # greyscale through PIL: its ITU-R 601 luma (what evaluation sees), not the JPEG's Y plane (up to 8 levels apart)
    if decoder != "pil" and simplejpeg is not None and num_channels == 3 and data[:2] == b"\xff\xd8":
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            colorspace = None  # not a JPEG libjpeg-turbo reads: PIL names the problem below
        if colorspace in ("YCbCr", "Gray", "RGB"):  # CMYK / YCCK: libjpeg-turbo's RGB is 1 level off PIL's
            return (height, width), partial(_decode_simplejpeg, data, num_channels, name)
    pil = _open(io.BytesIO(data), name, load=False)
    return (pil.height, pil.width), partial(_decode_pil, pil, num_channels, name)


def _read_encoded(image: ImageInput) -> tuple[bytes | None, str | None]:
    if isinstance(image, dict):  # datasets.Image(decode=False)
        data, name = image.get("bytes"), image.get("path")
        if data is None and name is None:
            raise ValueError(f"Image dict has neither 'bytes' nor 'path': {image!r}.")
        if data is None:
            with open(name, "rb") as file:
                data = file.read()
        return data, name or "<in-memory bytes>"
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as file:
            return file.read(), os.fspath(image)
    return None, None


def _decode_simplejpeg(data: bytes, num_channels: int, name: str, min_size: tuple[int, int]) -> np.ndarray:
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_size[0], min_width=min_size[1])
    except ValueError:  # a corrupt JPEG: PIL's error names the problem
        return _decode_pil(_open(io.BytesIO(data), name, load=False), num_channels, name, min_size)


def _decode_pil(image: PIL.Image.Image, num_channels: int, name: str, min_size: tuple[int, int]) -> np.ndarray:
    factor = round(image.height / min_size[0])  # _draft_size's 1, 2, 4 or 8
    if image.format == "JPEG" and factor > 1:
        image.draft(None, (image.width // factor, image.height // factor))
    try:
        image.load()
    except Exception as error:  # PIL raises many types for a corrupt file
        raise ValueError(f"Cannot decode image {name}: {type(error).__name__}: {error}") from error
    return _pil_to_array(_prepare_image(image, num_channels))


def _pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    array = np.array(image)  # a writable copy, (H, W) or (H, W, C)
    return array[:, :, None] if array.ndim == 2 else array
