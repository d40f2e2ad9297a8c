"""
The device half of MAE's training augmentation: crop, resize, flip and normalise a batch of uint8 images on the
accelerator, with the boxes and flips that [`~dilated_vit_mae.data.transforms.MAEHostTransform`] drew on the host.

The host then only decodes JPEGs: 5.7x less host CPU per 224 px CelebA-size image than the float32 path in
`benchmarks/bench_data_pipeline.py` (a simplejpeg decode and ~1x more for the draws, collation and transfer), and the
augmentation stays bit-for-bit reproducible: the random draws are the host transform's, from each example's
generator, in the same order as [`~dilated_vit_mae.data.transforms.MAETrainTransform`].

The resampling is PIL's, written as two matrix products per image: `out = W_y @ image @ W_x^T`, where row `j` of
`W_x` holds the filter taps of output column `j` over the crop (PIL's `precompute_coeffs`: filter support widened by
the downscaling factor, so downscaling is antialiased; taps outside the image dropped and the rest renormalised). A
flip reverses the rows of `W_x`; padding beyond an image's own size gets zero weight. On a GPU this is a few
GFLOP per batch of 256 on the tensor cores (float16, ~0.3 levels of 255 from float32), well under 1% of a ViT-B step.

```python
>>> import PIL.Image
>>> from dilated_vit_mae.data.device_augment import DeviceAugmentation
>>> from dilated_vit_mae.data.transforms import MAEHostTransform, collate_examples
>>> host = MAEHostTransform(224, seed=0)
>>> batch = collate_examples([host(PIL.Image.new("RGB", (178, 218))) for _ in range(4)])
>>> DeviceAugmentation.from_transform(host)(batch).shape  # after `batch` is moved to the device
torch.Size([4, 3, 224, 224])
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch

from .transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["DeviceAugmentation", "resolve_augment_on"]

Interpolation = Literal["bicubic", "bilinear", "lanczos", "box"]


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    # PIL's cubic convolution with a = -0.5 (torch's bicubic uses -0.75)
    a, x = -0.5, x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    return (1.0 - x.abs()).clamp_min(0.0)


def _lanczos(x: torch.Tensor) -> torch.Tensor:
    return torch.where((x >= -3.0) & (x < 3.0), torch.sinc(x) * torch.sinc(x / 3.0), torch.zeros_like(x))


def _box(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x <= 0.5)).to(x.dtype)


# name -> (filter, support), as in PIL's Resample.c
FILTERS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "bicubic": (_bicubic, 2.0),
    "bilinear": (_bilinear, 1.0),
    "lanczos": (_lanczos, 3.0),
    "box": (_box, 0.5),
}
_PIL_RESAMPLE = {
    PIL.Image.Resampling.BICUBIC: "bicubic",
    PIL.Image.Resampling.BILINEAR: "bilinear",
    PIL.Image.Resampling.LANCZOS: "lanczos",
    PIL.Image.Resampling.BOX: "box",
}


def resample_weights(
    start: torch.Tensor, length: torch.Tensor, image_length: torch.Tensor, max_length: int, output_length: int,
    interpolation: Interpolation = "bicubic",
) -> torch.Tensor:  # fmt: skip
    """
    Resampling matrices of PIL's `resize(..., box=...)` along one axis, one per image.

    Args:
        start (`torch.Tensor` of shape `(batch_size,)`): first pixel of each crop (`top` or `left`), may be fractional.
        length (`torch.Tensor` of shape `(batch_size,)`): crop length (`height` or `width`).
        image_length (`torch.Tensor` of shape `(batch_size,)`): each image's own length; taps beyond it are dropped.
        max_length (`int`): the padded batch's length.
        output_length (`int`): output pixels.
        interpolation (`str`): one of `FILTERS`.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, output_length, max_length)`, rows summing to 1.
    """
    kernel, kernel_support = FILTERS[interpolation]
    device = start.device
    scale = (length.to(torch.float32) / output_length)[:, None, None]  # (B, 1, 1) input pixels per output pixel
    filter_scale = scale.clamp_min(1.0)  # widen the filter when downscaling (antialiasing)
    support = kernel_support * filter_scale
    outputs = torch.arange(output_length, device=device, dtype=torch.float32)[None, :, None]  # (1, out, 1)
    center = start.to(torch.float32)[:, None, None] + (outputs + 0.5) * scale  # (B, out, 1)
    # PIL's window: [int(center - support + 0.5), int(center + support + 0.5)), clipped to the image. Its width is
    # at most 2 * ceil(support) + 1 taps, and a crop is never longer than the padded batch: a static band.
    num_taps = 2 * math.ceil(kernel_support * max(1.0, max_length / output_length)) + 1
    first = torch.trunc(center - support + 0.5).clamp_min(0.0)
    stop = torch.minimum(torch.trunc(center + support + 0.5), image_length.to(torch.float32)[:, None, None])
    taps = first + torch.arange(num_taps, device=device, dtype=torch.float32)  # (B, out, K)
    weights = kernel((taps - center + 0.5) / filter_scale) * (taps < stop)
    total = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(total == 0, torch.ones_like(total), total)
    # taps past the end have zero weight; clamped onto the last pixel, they add nothing there
    dense = torch.zeros(start.shape[0], output_length, max_length, device=device, dtype=torch.float32)
    return dense.scatter_add_(2, taps.clamp(max=max_length - 1).long(), weights)


class DeviceAugmentation:
    r"""
    Finish [`~dilated_vit_mae.data.transforms.collate_examples`]'s uint8 batches on their device: crop each image to
    its box, resize it to `image_size` with PIL's filter, flip it where drawn, rescale and normalise.

    The result matches [`~dilated_vit_mae.data.transforms.MAETrainTransform`] on the same box and flip to within PIL's own
    8-bit rounding (PIL rounds and clips between its two passes; this path keeps the intermediate in floating point
    and clips it): a few levels of 255 at the most, ~0.3 on average.

    Args:
        image_size (`int` or `tuple[int, int]`):
            Output size; an int gives a square.
        image_mean (`Sequence[float]`, *optional*, defaults to ImageNet's):
            Per-channel mean subtracted after rescaling.
        image_std (`Sequence[float]`, *optional*, defaults to ImageNet's):
            Per-channel standard deviation.
        interpolation (`str` or PIL resampling filter, *optional*, defaults to `"bicubic"`):
            `"bicubic"`, `"bilinear"`, `"lanczos"` or `"box"` (or the matching `PIL.Image.Resampling`).
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Applied to the 0..255 values before normalising.
        compute_dtype (`torch.dtype`, *optional*):
            Dtype of the two matrix products; defaults to float16 on CUDA (tensor cores; uint8 values are exact in
            it) and float32 elsewhere.

    Call it with the batch on the device; it returns `pixel_values` (`torch.FloatTensor` of shape `(batch_size,
    num_channels, height, width)`).

    Example:

    ```python
    >>> import torch
    >>> from dilated_vit_mae.data.device_augment import DeviceAugmentation
    >>> batch = {"pixel_values_uint8": torch.zeros(2, 3, 218, 178, dtype=torch.uint8),
    ...          "image_sizes": torch.tensor([[218, 178]] * 2), "crop_boxes": torch.tensor([[0.0, 0.0, 218, 178]] * 2),
    ...          "flips": torch.tensor([False, True])}
    >>> DeviceAugmentation(224)(batch).shape
    torch.Size([2, 3, 224, 224])
    ```
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        interpolation: Interpolation | int = "bicubic",
        rescale_factor: float = 1 / 255,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"`image_size` must be a positive int or (height, width), got {image_size!r}.")
        interpolation = _PIL_RESAMPLE.get(interpolation, interpolation)
        if interpolation not in FILTERS:
            raise ValueError(
                f"`interpolation` must be one of {sorted(FILTERS)} (or the PIL filter), got {interpolation!r}."
            )
        self.interpolation = interpolation
        mean = torch.tensor(np.asarray(image_mean, dtype=np.float32).reshape(-1))
        std = torch.tensor(np.asarray(image_std, dtype=np.float32).reshape(-1))
        if mean.shape != std.shape or (std <= 0).any():
            raise ValueError(f"`image_std` must be positive with one value per mean, got {image_mean!r}, {image_std!r}.")
        # x * rescale_factor, minus mean, over std == x * scale + shift
        self._scale = (rescale_factor / std).reshape(1, -1, 1, 1)
        self._shift = (-mean / std).reshape(1, -1, 1, 1)
        self.compute_dtype = compute_dtype

    @classmethod
    def from_transform(cls, transform: Any, **kwargs: Any) -> DeviceAugmentation:
        """The device half of a `MAETrainTransform` / `MAEHostTransform`: its size, normalisation and filter."""
        values = {
            "image_size": transform.size,
            "image_mean": np.asarray(transform.image_mean).reshape(-1).tolist(),
            "image_std": np.asarray(transform.image_std).reshape(-1).tolist(),
            "interpolation": transform.resample,
            "rescale_factor": transform.rescale_factor,
        }
        values.update(kwargs)
        return cls(**values)

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        images = batch["pixel_values_uint8"]  # (B, C, H, W) uint8
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"`pixel_values_uint8` must be a (batch, channels, height, width) uint8 tensor, got {images.dtype} "
                f"of shape {tuple(images.shape)}: collate MAEHostTransform outputs with collate_examples."
            )
        if images.shape[1] != self._scale.shape[1]:
            raise ValueError(f"Got {images.shape[1]} channels, but image_mean/image_std have {self._scale.shape[1]}.")
        device = images.device
        dtype = self.compute_dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        boxes = batch["crop_boxes"].to(device=device, dtype=torch.float32)  # (B, 4): top, left, height, width
        sizes = batch["image_sizes"].to(device)
        (out_height, out_width), (_, _, height, width) = self.image_size, images.shape
        weights_y = resample_weights(boxes[:, 0], boxes[:, 2], sizes[:, 0], height, out_height, self.interpolation)
        weights_x = resample_weights(boxes[:, 1], boxes[:, 3], sizes[:, 1], width, out_width, self.interpolation)
        flips = batch["flips"].to(device).reshape(-1, 1, 1)
        weights_x = torch.where(flips, weights_x.flip(1), weights_x)  # output column j reads column W-1-j's taps
        pixel_values = self._resample(images, weights_y.to(dtype), weights_x.to(dtype))  # (B, C, h, w) 0..255
        return pixel_values.mul_(self._scale.to(device)).add_(self._shift.to(device))

    @staticmethod
    def _resample(images: torch.Tensor, weights_y: torch.Tensor, weights_x: torch.Tensor) -> torch.Tensor:
        """`W_y @ image @ W_x^T` per image and channel, in `weights_y`'s dtype, clipped to 0..255 like PIL's passes."""
        batch_size, num_channels, height, width = images.shape
        # horizontal pass first, as PIL: the clipping between the passes then falls where PIL's does
        pixels = images.to(weights_x.dtype, memory_format=torch.contiguous_format)
        pixels = torch.bmm(pixels.view(batch_size, num_channels * height, width), weights_x.transpose(1, 2))
        pixels = pixels.clamp_(0, 255).view(batch_size, num_channels, height, -1)  # (B, C, H, w)
        return (weights_y.unsqueeze(1) @ pixels).float().clamp_(0, 255)  # (B, C, h, w)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, interpolation={self.interpolation!r})"


def resolve_augment_on(
    augment_on: Literal["auto", "host", "device"], device: torch.device | str, streaming: bool = False
) -> str:
    """
    `"host"` (float32 `MAETrainTransform` in the workers) or `"device"` (`MAEHostTransform` + `DeviceAugmentation`).
    `"auto"` picks `"device"` on CUDA and `"host"` elsewhere: on a CPU the matrix products cost more CPU time than
    PIL's separable resize (`benchmarks/bench_data_pipeline.py` measures both), and would run in the training process
    instead of the workers. A `streaming` dataset has no random access for the device path: `"auto"` picks `"host"`,
    and `"device"` is refused.
    """
    if augment_on not in ("auto", "host", "device"):
        raise ValueError(f"`augment_on` must be 'auto', 'host' or 'device', got {augment_on!r}.")
    if augment_on == "device" and streaming:
        raise ValueError("--augment_on device needs a map-style dataset: drop --streaming, or use --augment_on host.")
    if augment_on != "auto":
        return augment_on
    return "device" if torch.device(device).type == "cuda" and not streaming else "host"
