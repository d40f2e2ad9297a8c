# Copyright 2025 The DilatedViTMAE authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Image processor class for DilatedViTMAE.

This file is shipped to the Hugging Face Hub as remote code, so it is self-contained: it imports only the standard
library, numpy, PIL, torch and the public, stable part of transformers (`BaseImageProcessor`, `BatchFeature`,
`ImagesKwargs` and `transformers.image_utils` constants). The preprocessing itself is written here with PIL and numpy
instead of inheriting transformers' `PilBackend` / `TorchvisionBackend`, whose internals changed in transformers 5.4
and need torchvision for the unsuffixed class.
"""

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs


# Used when `num_channels=1` and no mean/std is given: the average of the three ImageNet channel statistics, the
# common choice for greyscale inputs to ImageNet-style models.
GREYSCALE_DEFAULT_MEAN = (0.449,)
GREYSCALE_DEFAULT_STD = (0.226,)

# num_channels -> PIL mode that every image is converted to before resizing
_TARGET_MODE = {1: "L", 3: "RGB"}
# channel counts an input array may have: grey ("L"), "RGB", "RGBA"
_ARRAY_CHANNELS = (1, 3, 4)
# PIL modes whose values are not 8-bit: `Image.convert` would clip them to 0..255 silently instead of rescaling
_HIGH_BIT_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
# a float array may exceed [0, 1] by this much (arithmetic round-off) and is then clipped
_FLOAT_RANGE_SLACK = 1e-3

_ACCEPTED_INPUTS = (
    "a PIL.Image.Image, a numpy.ndarray or torch.Tensor of shape (H, W), (H, W, C) or (C, H, W) with C in "
    "{1, 3, 4} (uint8 in 0..255 or float in [0, 1]), a 4-D array/tensor holding a batch of such images, "
    "a path to an image file, or a list of these"
)


class DilatedViTMAEImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of [`DilatedViTMAEImageProcessor`] beyond transformers' `ImagesKwargs`.

    Listing `num_channels` here lets `from_pretrained(..., num_channels=1)` pass it to `__init__` (and so through
    its validation) instead of setting it on the instance behind `__init__`'s back.
    """

    num_channels: int | None


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_size_dict(
    size: int | Sequence[int] | dict[str, int], param_name: str, allow_shortest_edge: bool
) -> dict[str, int]:
    """Canonicalise `size` / `crop_size` to `{"height": h, "width": w}` or `{"shortest_edge": s}`.

    As in transformers' ViT processor, an int means a square `(size, size)` and a pair means `(height, width)`.
    """
    if isinstance(size, bool):
        raise TypeError(f"`{param_name}` must be an int, a (height, width) pair or a dict, got {size!r}.")
    if isinstance(size, int):
        size = {"height": size, "width": size}
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, dict):
        raise TypeError(f"`{param_name}` must be an int, a (height, width) pair or a dict, got {size!r}.")

    allowed = [{"height", "width"}] + ([{"shortest_edge"}] if allow_shortest_edge else [])
    if set(size) not in allowed:
        hint = '{"height": h, "width": w}' + (' or {"shortest_edge": s}' if allow_shortest_edge else "")
        raise ValueError(f"`{param_name}` must be {hint}, got {size!r}.")
    for key, value in size.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"`{param_name}[{key!r}]` must be a positive int, got {value!r}.")
    return {key: int(value) for key, value in size.items()}


def _channel_stats(
    values: float | Sequence[float], num_channels: int, param_name: str
) -> list[float]:
    """Turn `image_mean` / `image_std` into one float per channel; a single float is broadcast."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [float(values)] * num_channels
    if isinstance(values, (np.ndarray, torch.Tensor)):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"`{param_name}` must be a float or a sequence of floats, got {values!r}.")
    values = [float(value) for value in values]
    if len(values) != num_channels:
        raise ValueError(
            f"`{param_name}` must have one value per channel (num_channels={num_channels}), got {len(values)} "
            f"values {values!r}. Pass a `{param_name}` of length {num_channels}, or change `num_channels`."
        )
    if not all(np.isfinite(values)):
        raise ValueError(f"`{param_name}` must be finite, got {values!r}.")
    return values


def _check_num_channels(num_channels: int) -> int:
    if isinstance(num_channels, bool) or num_channels not in _TARGET_MODE:
        raise ValueError(
            f"`num_channels` must be 1 (greyscale) or 3 (RGB), got {num_channels!r}. Other channel counts are not "
            "images this processor can read; preprocess them yourself."
        )
    return int(num_channels)


def _open_image_file(path: str | os.PathLike) -> PIL.Image.Image:
    """Open an image file with PIL, applying its EXIF orientation, or raise a ValueError that names the file."""
    path_str = os.fspath(path)
    if path_str.startswith(("http://", "https://")):
        raise ValueError(
            f"Got the URL {_short_repr(path_str)}: this processor does not download images (remote code should not "
            "reach the network). Download the file and pass its path, or pass the opened PIL image."
        )
    if not os.path.isfile(path_str):
        raise ValueError(
            f"Got the string {_short_repr(path_str)}, which is not a path to an existing image file. Accepted: "
            f"{_ACCEPTED_INPUTS}."
        )
    try:
        with PIL.Image.open(path_str) as image:
            image.load()
            # camera photos store their rotation in EXIF; transformers' `load_image` applies it too
            image = PIL.ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"Could not read the image file {path_str!r}: {err}. Is it a valid image?") from err
    return image


def _array_to_pil(
    array: np.ndarray, channels_first_default: bool, input_data_format: str | None
) -> PIL.Image.Image:
    """Read one (H, W), (H, W, C) or (C, H, W) uint8 [0, 255] / float [0, 1] array as an 8-bit PIL image."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"Expected an image of shape (H, W), (H, W, C) or (C, H, W), got an array of shape {tuple(array.shape)}. "
            f"Accepted: {_ACCEPTED_INPUTS}."
        )
    if array.size == 0:
        raise ValueError(f"Got an empty image array of shape {tuple(array.shape)}.")

    # values: 8-bit images arrive as uint8 (or ints in 0..255), normalised ones as floats in [0, 1]
    if array.dtype == np.bool_ or array.dtype.kind not in "uif":
        raise TypeError(
            f"Image arrays must hold uint8 (0..255) or float (0..1) pixel values, got dtype {array.dtype}. "
            "Cast the array, e.g. `array.astype(np.uint8)`."
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(
                f"The image array of shape {tuple(array.shape)} contains NaN or infinite values; pass a finite "
                "image with float values in [0, 1]."
            )
        low, high = float(array.min()), float(array.max())
        if low < -_FLOAT_RANGE_SLACK or high > 1 + _FLOAT_RANGE_SLACK:
            raise ValueError(
                f"Float image arrays must hold values in [0, 1], got values in [{low:.4g}, {high:.4g}]. Divide "
                "0..255 values by 255 (or cast them to uint8); to turn normalised model inputs/outputs back into "
                "images use `postprocess`."
            )
        # round, not truncate, so that `uint8_array / 255` comes back as exactly `uint8_array`
        array = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer image arrays must hold 8-bit values in 0..255, got values in [{low}, {high}]. Rescale "
                "the image to 0..255 and cast it to uint8 (16-bit images are not supported)."
            )
        array = array.astype(np.uint8)

    # layout
    if array.ndim == 3:
        if input_data_format is not None:
            # also accepts transformers' `ChannelDimension` enum, whose values are these strings
            layout = getattr(input_data_format, "value", input_data_format)
            if layout not in ("channels_first", "channels_last"):
                raise ValueError(
                    f"`input_data_format` must be 'channels_first' or 'channels_last', got {input_data_format!r}."
                )
            channels_first = layout == "channels_first"
        else:
            first_ok, last_ok = array.shape[0] in _ARRAY_CHANNELS, array.shape[-1] in _ARRAY_CHANNELS
            if not (first_ok or last_ok):
                raise ValueError(
                    f"Could not find the channel axis of an image array of shape {tuple(array.shape)}: expected 1 "
                    "(grey), 3 (RGB) or 4 (RGBA) channels on the first (C, H, W) or last (H, W, C) axis."
                )
            # when both axes could hold channels (tiny images), follow the library's convention: torch is
            # channels-first, numpy (like `np.asarray(pil_image)`) channels-last
            channels_first = first_ok and (channels_first_default or not last_ok)
        if channels_first:
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] not in _ARRAY_CHANNELS:
            raise ValueError(
                f"Image arrays must have 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {array.shape[-1]} channels "
                f"(array of shape {tuple(array.shape)} read as {'(C, H, W)' if channels_first else '(H, W, C)'})."
            )
        if array.shape[-1] == 1:
            array = array[..., 0]
    # fromarray infers the mode from the shape: (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
    return PIL.Image.fromarray(np.ascontiguousarray(array))


def _to_target_mode(image: PIL.Image.Image, num_channels: int, do_convert_rgb: bool) -> PIL.Image.Image:
    """Convert a PIL image to "RGB" (num_channels=3) or "L" (num_channels=1)."""
    target = _TARGET_MODE[num_channels]
    if image.mode == target:
        return image
    if not do_convert_rgb:
        raise ValueError(
            f"Got an image of PIL mode {image.mode!r}, but num_channels={num_channels} needs mode {target!r} and "
            "do_convert_rgb=False. Pass do_convert_rgb=True or convert the image first."
        )
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        raise ValueError(
            f"Got an image of PIL mode {image.mode!r} (16/32-bit or float); PIL would clip it to 8 bits instead of "
            "rescaling it. Scale it to 0..255 and convert it to 'L' or 'RGB' first."
        )
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # composite transparency on white, as transformers' `convert_to_rgb` does, rather than dropping alpha:
        # dropping it would expose whatever colour happens to be stored under fully transparent pixels
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image)
    try:
        return image.convert(target)
    except ValueError as err:
        raise ValueError(f"Cannot convert an image of PIL mode {image.mode!r} to {target!r}: {err}.") from err


def _resize(image: PIL.Image.Image, size: dict[str, int], resample: int) -> PIL.Image.Image:
    if "shortest_edge" in size:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        # truncate the long side like transformers' `get_resize_output_image_size`, so sizes agree with ViT's
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    else:
        new_height, new_width = size["height"], size["width"]
    if (new_width, new_height) == image.size:
        return image
    return image.resize((new_width, new_height), resample=resample)


def _center_crop(image: PIL.Image.Image, crop_size: dict[str, int]) -> PIL.Image.Image:
    width, height = image.size
    crop_height, crop_width = crop_size["height"], crop_size["width"]
    # same offsets as transformers' `center_crop`; PIL fills a crop larger than the image with zeros (black),
    # which is where transformers pads too
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return image.crop((left, top, left + crop_width, top + crop_height))


class DilatedViTMAEImageProcessor(BaseImageProcessor):
    r"""
    Constructs a DilatedViTMAE image processor. It resizes, centre-crops, rescales and normalises images for
    [`DilatedViTMAEModel`] / [`DilatedViTMAEForPreTraining`], and turns normalised pixel values (inputs or
    un-patchified reconstructions) back into images with [`~DilatedViTMAEImageProcessor.postprocess`].

    The argument names and defaults follow transformers' [`ViTImageProcessor`], except `size`, which defaults to a
    shortest-edge resize followed by a centre crop so that non-square photos (CelebA's aligned faces are 178x218) are
    not distorted. The processing is written with PIL and numpy only: it needs no torchvision.

    Every image is first read as an 8-bit PIL image: float inputs in [0, 1] are rounded to the nearest of 256 levels,
    so a float image and the uint8 image it came from give identical results.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the image to `size`.
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 224}`):
            `{"shortest_edge": s}` resizes the shorter side to `s`, keeping the aspect ratio (the longer side is
            truncated to an int, as in transformers); `{"height": h, "width": w}` resizes to exactly `(h, w)`. An int
            `n` means `{"height": n, "width": n}` and a pair means `(height, width)`, as in [`ViTImageProcessor`].
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Resampling filter used when resizing.
        do_center_crop (`bool`, *optional*, defaults to `True`):
            Whether to centre-crop the (resized) image to `crop_size`. A crop larger than the image pads it with
            zeros (black), as transformers does.
        crop_size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Output size of the centre crop; may be non-square. An int means a square crop.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply the 0..255 pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Scale factor used when rescaling.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise each channel as `(pixel - image_mean) / image_std`.
        image_mean (`float` or `list[float]`, *optional*, defaults to `IMAGENET_DEFAULT_MEAN`):
            Per-channel mean, one value per channel (a single float is broadcast). For `num_channels=1` it defaults
            to `[0.449]`, the average of the ImageNet channel means.
        image_std (`float` or `list[float]`, *optional*, defaults to `IMAGENET_DEFAULT_STD`):
            Per-channel standard deviation, like `image_mean`. For `num_channels=1` it defaults to `[0.226]`.
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Whether to convert every image to the colour mode `num_channels` asks for: "RGB" for 3 channels (from
            greyscale, palette "P", CMYK, ...), "L" for 1 channel (ITU-R 601-2 luma, PIL's conversion). Transparent
            images (RGBA, LA, palette with transparency) are composited on a white background first, as
            transformers' `convert_to_rgb` does; alpha is never simply dropped. With `False`, an image whose mode does
            not already match raises a `ValueError`.
        num_channels (`int`, *optional*, defaults to 3):
            Number of channels of `pixel_values`: 3 (RGB) or 1 (greyscale). Must match the model config's
            `num_channels` and the length of `image_mean` / `image_std`.

    Example:

    ```python
    >>> from PIL import Image
    >>> from dilated_vit_mae import DilatedViTMAEImageProcessor

    >>> image_processor = DilatedViTMAEImageProcessor()
    >>> face = Image.new("RGB", (178, 218), color=(200, 150, 120))  # the size of a CelebA aligned face
    >>> inputs = image_processor(face, return_tensors="pt")
    >>> inputs["pixel_values"].shape
    torch.Size([1, 3, 224, 224])
    >>> image_processor.postprocess(inputs["pixel_values"])[0].getpixel((0, 0))
    (200, 150, 120)
    ```
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = DilatedViTMAEImageProcessorKwargs

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | None = None,
        resample: PILImageResampling | int = PILImageResampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: dict[str, int] | int | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_convert_rgb: bool = True,
        num_channels: int = 3,
        **kwargs,
    ) -> None:
        # leftover kwargs (`image_processor_type`, `auto_map`, ... from a saved config) become attributes there
        super().__init__(**kwargs)
        self.num_channels = _check_num_channels(num_channels)
        self.do_resize = bool(do_resize)
        self.size = _to_size_dict({"shortest_edge": 224} if size is None else size, "size", allow_shortest_edge=True)
        self.resample = self._check_resample(resample)
        self.do_center_crop = bool(do_center_crop)
        self.crop_size = _to_size_dict(
            {"height": 224, "width": 224} if crop_size is None else crop_size, "crop_size", allow_shortest_edge=False
        )
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = self._check_rescale_factor(rescale_factor)
        self.do_normalize = bool(do_normalize)
        default_mean, default_std = self._default_stats(self.num_channels)
        self.image_mean = _channel_stats(
            default_mean if image_mean is None else image_mean, self.num_channels, "image_mean"
        )
        self.image_std = self._check_std(
            _channel_stats(default_std if image_std is None else image_std, self.num_channels, "image_std")
        )
        self.do_convert_rgb = bool(do_convert_rgb)

    @staticmethod
    def _default_stats(num_channels: int) -> tuple[Sequence[float], Sequence[float]]:
        if num_channels == 1:
            return GREYSCALE_DEFAULT_MEAN, GREYSCALE_DEFAULT_STD
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    @staticmethod
    def _check_resample(resample: PILImageResampling | int) -> PILImageResampling:
        try:
            return PILImageResampling(resample)
        except ValueError:
            names = ", ".join(f"{member.name}={member.value}" for member in PILImageResampling)
            raise ValueError(f"`resample` must be a PILImageResampling ({names}), got {resample!r}.") from None

    @staticmethod
    def _check_rescale_factor(rescale_factor: float) -> float:
        if isinstance(rescale_factor, bool) or not isinstance(rescale_factor, (int, float)) or not rescale_factor > 0:
            raise ValueError(f"`rescale_factor` must be a positive number such as 1/255, got {rescale_factor!r}.")
        return float(rescale_factor)

    @staticmethod
    def _check_std(image_std: list[float]) -> list[float]:
        if any(value <= 0 for value in image_std):
            raise ValueError(f"`image_std` must be positive (it divides the pixels), got {image_std!r}.")
        return image_std

    def _make_list_of_pil_images(
        self, images: Any, input_data_format: str | None
    ) -> list[PIL.Image.Image]:
        """Turn any accepted input (single image, batch array, list, path) into a flat list of PIL images."""
        if images is None:
            raise TypeError(f"`images` is None. Accepted: {_ACCEPTED_INPUTS}.")
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            # a 4-D array/tensor is a batch (e.g. from a DataLoader): one image per leading index
            images = list(images)
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError(f"`images` is an empty {type(images).__name__}; pass at least one image.")
            pil_images = []
            for index, image in enumerate(images):
                if isinstance(image, (list, tuple)):
                    raise TypeError(
                        f"images[{index}] is a {type(image).__name__}: nested lists are not supported. Pass a flat "
                        "list of images."
                    )
                try:
                    pil_images.append(self._to_pil_image(image, input_data_format))
                except (TypeError, ValueError) as err:
                    # say which image of the batch is broken
                    raise type(err)(f"images[{index}]: {err}") from err
            return pil_images
        return [self._to_pil_image(images, input_data_format)]

    @staticmethod
    def _to_pil_image(image: Any, input_data_format: str | None) -> PIL.Image.Image:
        if isinstance(image, PIL.Image.Image):
            return image
        if isinstance(image, (str, os.PathLike)):
            return _open_image_file(image)
        if isinstance(image, torch.Tensor):
            # half/bfloat16 have no numpy dtype
            tensor = image.detach().cpu()
            if tensor.is_floating_point():
                tensor = tensor.float()
            return _array_to_pil(tensor.numpy(), channels_first_default=True, input_data_format=input_data_format)
        if isinstance(image, np.ndarray):
            return _array_to_pil(image, channels_first_default=False, input_data_format=input_data_format)
        if image is None:
            raise TypeError(f"Got None instead of an image. Accepted: {_ACCEPTED_INPUTS}.")
        raise TypeError(f"Unsupported image type {type(image).__name__}. Accepted: {_ACCEPTED_INPUTS}.")

    def preprocess(
        self,
        images: "PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike | list",
        do_resize: bool | None = None,
        size: dict[str, int] | int | None = None,
        resample: PILImageResampling | int | None = None,
        do_center_crop: bool | None = None,
        crop_size: dict[str, int] | int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_convert_rgb: bool | None = None,
        num_channels: int | None = None,
        return_tensors: Literal["pt", "np"] | str | None = None,
        input_data_format: Literal["channels_first", "channels_last"] | str | None = None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Preprocess an image or a batch of images. Every argument left to `None` takes the processor's value.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of these):
                The image(s). Arrays and tensors may be `(H, W)` greyscale, `(H, W, C)` or `(C, H, W)` with 1, 3 or 4
                (RGBA) channels, holding uint8 (or integer) values in 0..255 or float values in [0, 1]; a 4-D
                array/tensor is a batch. When both the first and last axis could be channels, numpy arrays are read
                as `(H, W, C)` and tensors as `(C, H, W)` (override with `input_data_format`). A string or
                `os.PathLike` is the path of an image file, opened with PIL (EXIF orientation applied); URLs are not
                downloaded.
            do_resize (`bool`, *optional*):
                Whether to resize the image.
            size (`dict[str, int]`, *optional*):
                `{"shortest_edge": s}` or `{"height": h, "width": w}`.
            resample (`PILImageResampling`, *optional*):
                Resampling filter used when resizing.
            do_center_crop (`bool`, *optional*):
                Whether to centre-crop the image.
            crop_size (`dict[str, int]`, *optional*):
                `{"height": h, "width": w}` of the centre crop.
            do_rescale (`bool`, *optional*):
                Whether to multiply the pixel values by `rescale_factor`.
            rescale_factor (`float`, *optional*):
                Rescale factor.
            do_normalize (`bool`, *optional*):
                Whether to normalise the image.
            image_mean (`float` or `list[float]`, *optional*):
                Per-channel mean.
            image_std (`float` or `list[float]`, *optional*):
                Per-channel standard deviation.
            do_convert_rgb (`bool`, *optional*):
                Whether to convert images to the mode `num_channels` asks for ("RGB" or "L").
            num_channels (`int`, *optional*):
                1 or 3. When it differs from the processor's, pass a matching `image_mean` and `image_std` too.
            return_tensors (`str` or `TensorType`, *optional*):
                `"pt"` for a `torch.FloatTensor`, `"np"` for a `np.ndarray`, both of shape
                `(batch_size, num_channels, height, width)`; `None` (transformers' convention) for a list of
                `(num_channels, height, width)` float32 arrays, which may differ in size when neither resize to
                `{"height", "width"}` nor centre crop is on.
            input_data_format (`str`, *optional*):
                `"channels_first"` or `"channels_last"`, to force the layout of 3-D array/tensor inputs.

        Returns:
            [`BatchFeature`]: with `pixel_values` (float32) as described under `return_tensors`.
        """
        if kwargs:
            raise TypeError(
                f"Unexpected argument(s) {sorted(kwargs)} to {type(self).__name__}.preprocess. Valid ones are the "
                "`__init__` arguments plus `return_tensors` and `input_data_format`."
            )
        num_channels = _check_num_channels(self.num_channels if num_channels is None else num_channels)
        do_resize = self.do_resize if do_resize is None else do_resize
        size = _to_size_dict(self.size if size is None else size, "size", allow_shortest_edge=True)
        resample = self._check_resample(self.resample if resample is None else resample)
        do_center_crop = self.do_center_crop if do_center_crop is None else do_center_crop
        crop_size = _to_size_dict(self.crop_size if crop_size is None else crop_size, "crop_size", False)
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self._check_rescale_factor(self.rescale_factor if rescale_factor is None else rescale_factor)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        image_mean = _channel_stats(self.image_mean if image_mean is None else image_mean, num_channels, "image_mean")
        image_std = self._check_std(
            _channel_stats(self.image_std if image_std is None else image_std, num_channels, "image_std")
        )
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        return_tensors = getattr(return_tensors, "value", return_tensors)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")

        mean = np.asarray(image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(image_std, dtype=np.float32)[:, None, None]
        pixel_values = []
        for image in self._make_list_of_pil_images(images, input_data_format):
            image = _to_target_mode(image, num_channels, do_convert_rgb)
            if do_resize:
                image = _resize(image, size, resample)
            if do_center_crop:
                image = _center_crop(image, crop_size)
            array = np.asarray(image, dtype=np.float32)
            # (H, W) or (H, W, C) -> (C, H, W)
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            if do_rescale:
                array = array * np.float32(rescale_factor)
            if do_normalize:
                array = (array - mean) / std
            pixel_values.append(np.ascontiguousarray(array, dtype=np.float32))

        if return_tensors is not None:
            shapes = {array.shape for array in pixel_values}
            if len(shapes) > 1:
                raise ValueError(
                    f"Cannot stack images of different sizes {sorted(shapes)} into one batch. Turn on do_center_crop, "
                    'resize to {"height": h, "width": w}, or pass return_tensors=None to get a list.'
                )
            pixel_values = np.stack(pixel_values)
            if return_tensors == "pt":
                pixel_values = torch.from_numpy(pixel_values)
        return BatchFeature(data={"pixel_values": pixel_values})

    def postprocess(
        self,
        pixel_values: torch.Tensor | np.ndarray,
        return_type: Literal["pil", "np"] = "pil",
        do_normalize: bool | None = None,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
    ) -> "PIL.Image.Image | list[PIL.Image.Image] | np.ndarray":
        r"""
        Turn normalised pixel values back into displayable images: the inverse of
        [`~DilatedViTMAEImageProcessor.preprocess`] without its resize and crop. Use it on `pixel_values` or on a
        reconstruction, i.e. the model's `logits` after `unpatchify` (with `norm_pix_loss=True`, first undo the
        per-patch normalisation).

        Values are un-normalised with `image_mean` / `image_std`, divided by `rescale_factor` (back to 0..255),
        clipped to [0, 255] (i.e. [0, 1] before that division) and rounded to uint8.

        Args:
            pixel_values (`torch.Tensor` or `np.ndarray` of shape `(batch_size, num_channels, height, width)`):
                Normalised pixel values, channels first; a single `(num_channels, height, width)` image works too.
            return_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"` for PIL images ("RGB" or "L"); `"np"` for uint8 arrays of shape `(H, W, 3)` or `(H, W)`
                (what `np.asarray` gives for the PIL image), stacked to `(batch_size, ...)` for 4-D input.
            do_normalize, image_mean, image_std, do_rescale, rescale_factor (*optional*):
                The settings used by `preprocess`; default to the processor's.

        Returns:
            A `PIL.Image.Image` for 3-D input or a `list` of them for 4-D input (`return_type="pil"`), or a
            `np.ndarray` of dtype uint8 (`return_type="np"`).
        """
        if return_type not in ("pil", "np"):
            raise ValueError(f"`return_type` must be 'pil' or 'np', got {return_type!r}.")
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().float().numpy()
        if not isinstance(pixel_values, np.ndarray):
            raise TypeError(
                f"`pixel_values` must be a torch.Tensor or np.ndarray, got {type(pixel_values).__name__}."
            )
        if pixel_values.ndim not in (3, 4):
            raise ValueError(
                "`pixel_values` must have shape (batch_size, num_channels, height, width) or (num_channels, height, "
                f"width), got {tuple(pixel_values.shape)}. Un-patchify the model's logits first."
            )
        is_batched = pixel_values.ndim == 4
        batch = pixel_values if is_batched else pixel_values[None]
        num_channels = batch.shape[1]
        if num_channels not in _TARGET_MODE:
            raise ValueError(
                f"`pixel_values` must be channels first with 1 or 3 channels, got shape {tuple(pixel_values.shape)}."
            )
        if not np.isfinite(batch).all():
            raise ValueError("`pixel_values` contains NaN or infinite values; they cannot be turned into an image.")

        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self._check_rescale_factor(self.rescale_factor if rescale_factor is None else rescale_factor)
        batch = batch.astype(np.float64)
        if do_normalize:
            mean = _channel_stats(self.image_mean if image_mean is None else image_mean, num_channels, "image_mean")
            std = _channel_stats(self.image_std if image_std is None else image_std, num_channels, "image_std")
            batch = batch * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
        if do_rescale:
            batch = batch / rescale_factor
        # (B, C, H, W) -> (B, H, W, C), dropping C for greyscale like np.asarray of an "L" image
        images = np.rint(np.clip(batch, 0.0, 255.0)).astype(np.uint8).transpose(0, 2, 3, 1)
        if num_channels == 1:
            images = images[..., 0]

        if return_type == "np":
            return images if is_batched else images[0]
        pil_images = [PIL.Image.fromarray(np.ascontiguousarray(image)) for image in images]
        return pil_images if is_batched else pil_images[0]


# `save_pretrained` copies this file next to `preprocessor_config.json` and lists it in `auto_map` (remote code)
DilatedViTMAEImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["DilatedViTMAEImageProcessor"]
