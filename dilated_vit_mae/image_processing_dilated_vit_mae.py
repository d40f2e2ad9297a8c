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

import contextlib
import io
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

# Bounds on what one image may cost, so that a hostile or accidental input cannot exhaust a server's memory (an
# Inference Endpoint runs this code on whatever it is sent; the pipeline file bounds the encoded size of a request):
MAX_IMAGE_PIXELS = 50_000_000  # width x height of an image to decode, checked from its header before decoding
# largest image a resize may produce; a bigger shortest-edge resize (an extreme aspect ratio: 1 x 1,000,000 px ->
# 224 x 224,000,000) is fused with the centre crop, which then resamples only the pixels it keeps
MAX_RESIZED_PIXELS = 2**24
# MAE's (`main_finetune.py`, `main_linprobe.py`) and DINO's (`eval_knn.py`) evaluation view: resize the shortest edge
# to 256 and centre-crop 224, i.e. the crop keeps 224 / 256 = 0.875 of the resized image's shorter side. What the
# shipped configs state as `crop_pct`; a processor built without it resizes to `size` itself (crop fraction 1).
MAE_EVAL_CROP_PCT = 0.875

# num_channels -> PIL mode that every image is converted to before resizing; other channel counts come from arrays
_TARGET_MODE = {1: "L", 3: "RGB"}
# channel counts an input array may have when num_channels is 1 or 3: grey ("L"), "RGB", "RGBA"
_ARRAY_CHANNELS = (1, 3, 4)
# 16/32-bit PIL modes: `Image.convert` would clip them to 0..255 instead of rescaling, so they are read as arrays
_HIGH_BIT_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
# a float array may exceed [0, 1] by this much (arithmetic round-off) and is then clipped
_FLOAT_RANGE_SLACK = 1e-3

_ACCEPTED_INPUTS = (
    "a PIL.Image.Image, a numpy.ndarray or torch.Tensor of shape (H, W), (H, W, C) or (C, H, W) with C in "
    "{1, 3, 4} or C = num_channels (uint8 in 0..255, uint16 in 0..65535 or float in [0, 1]), a 4-D array/tensor "
    "holding a batch of such images, a path to an image file, or a list of these"
)


class DilatedViTMAEImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of [`DilatedViTMAEImageProcessor`] beyond transformers' `ImagesKwargs`.

    Listing `num_channels` here lets `from_pretrained(..., num_channels=1)` pass it to `__init__`, whose `image_mean` /
    `image_std` defaults and checks follow it, instead of assigning it to the processor once built.
    """

    num_channels: int | None
    crop_pct: float | None


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_size_dict(
    size: int | Sequence[int] | dict[str, int], param_name: str, allow_shortest_edge: bool
) -> dict[str, int]:
    """Canonicalise `size` / `crop_size` to `{"height": h, "width": w}` or `{"shortest_edge": s}`.

    As in transformers' ViT processor, an int means a square `(size, size)` and a pair means `(height, width)`.
    """
    if isinstance(size, int) and not isinstance(size, bool):
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
    values = _check_channel_count([float(value) for value in values], num_channels, param_name)
    if not all(np.isfinite(values)):
        raise ValueError(f"`{param_name}` must be finite, got {values!r}.")
    return values


def _check_channel_count(values: list[float], num_channels: int, param_name: str) -> list[float]:
    if len(values) != num_channels:
        raise ValueError(
            f"`{param_name}` must have one value per channel (num_channels={num_channels}), got {len(values)} "
            f"values {values!r}. Pass a `{param_name}` of length {num_channels}, or change `num_channels`."
        )
    return values


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


@contextlib.contextmanager
def _read_errors_as_value_errors(name: str):
    """Turn whatever a malformed file makes a PIL plugin raise (OSError, SyntaxError, struct.error, ...) into a
    ValueError naming the file, so that a server answers a bad upload with a client error."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as err:
        raise ValueError(f"Could not read {name}: {err}. Is it a valid image (PNG, JPEG, ...)?") from err


def _check_pixel_count(image: PIL.Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(
            f"{name} is {width} x {height} = {width * height:,} pixels, more than the limit of {max_pixels:,}; "
            "downscale it first."
        )


def _open_image(
    file: io.IOBase, name: str, max_pixels: int, formats: tuple[str, ...] | None = None
) -> PIL.Image.Image:
    """Decode an image file object with PIL (in one of `formats`, default any), applying its EXIF orientation (as
    transformers' `load_image` does)."""
    with _read_errors_as_value_errors(name):
        image = PIL.Image.open(file, formats=formats)
    # PIL has read only the header: refuse before decoding, since a small file can declare a huge image
    _check_pixel_count(image, name[0].upper() + name[1:], max_pixels)
    with _read_errors_as_value_errors(name):
        image.load()
        PIL.ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of a large photo
    return image


def _open_image_file(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """Open an image file, or raise a ValueError that names the file."""
    path_str = os.fspath(path)
    if _is_url(path_str):
        raise ValueError(
            f"Got the URL {_short_repr(path_str)}: this processor does not download images (remote code should not "
            "reach the network). Download the file and pass its path, or pass the opened PIL image."
        )
    if not os.path.isfile(path_str):
        raise ValueError(
            f"Got the string {_short_repr(path_str)}, which is not a path to an existing image file. Accepted: "
            f"{_ACCEPTED_INPUTS}."
        )
    with open(path_str, "rb") as file:
        return _open_image(file, f"the image file {path_str!r}", max_pixels)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixel values as uint8: integer arrays read as 0..255, uint16 as 0..65535, float as [0, 1]; anything else
    raises, naming the problem."""
    if array.dtype == np.bool_ or array.dtype.kind not in "uif":
        raise TypeError(
            f"Image arrays must hold integer or float pixel values, got dtype {array.dtype}. Cast the array, e.g. "
            "`array.astype(np.uint8)`."
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
                f"Float images must hold values in [0, 1], got values in [{low:.4g}, {high:.4g}]. Divide 0..255 "
                "values by 255 (or cast them to uint8); to turn normalised model inputs/outputs back into images use "
                "`postprocess`."
            )
        # round, not truncate, so that `uint8_array / 255` comes back as exactly `uint8_array`
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        # 16-bit: v * 255 / 65535 = v / 257 rounded to the nearest level (never a tie, 257 being odd)
        return ((2 * array.astype(np.uint32) + 257) // 514).astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise ValueError(
            f"Integer image arrays must hold 8-bit values in 0..255 (uint16 arrays are read as 0..65535), got values "
            f"in [{low}, {high}]. Rescale the image to 0..255 and cast it to uint8, or cast 16-bit data to uint16."
        )
    return array.astype(np.uint8)


def _high_bit_depth_to_8_bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """An "L" image from a 16/32-bit or float PIL image, scaled by the mode's range: 0..65535 ("I;16*", "I") or
    [0, 1] ("F")."""
    values = np.asarray(image)
    if image.mode == "I":
        # PIL's 32-bit integer mode mostly carries 16-bit data (PNG/TIFF readers, `convert("I")`): read it as such
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"Got a PIL image of mode 'I' with values in [{low}, {high}]; mode 'I' is read as 16-bit (0..65535) "
                "and these values have no known range. Scale them to 0..65535, or to [0, 1] in mode 'F', first."
            )
        values = values.astype(np.uint16)
    try:
        return PIL.Image.fromarray(_to_uint8(values))
    except ValueError as err:
        raise ValueError(f"PIL image of mode {image.mode!r}: {err}") from err


def _read_array(
    array: np.ndarray, channels_first_default: bool, input_data_format: str | None, channel_counts: Sequence[int]
) -> np.ndarray:
    """Read one (H, W), (H, W, C) or (C, H, W) array (C in `channel_counts`) as a uint8 (H, W, C) array."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"Expected an image of shape (H, W), (H, W, C) or (C, H, W), got an array of shape {tuple(array.shape)}. "
            f"Accepted: {_ACCEPTED_INPUTS}."
        )
    if array.size == 0:
        raise ValueError(f"Got an empty image array of shape {tuple(array.shape)}.")
    array = _to_uint8(array)
    counts = " or ".join(map(str, channel_counts))
    if array.ndim == 2:
        array, channels_first = array[..., None], False  # greyscale: one channel, whatever the layout
    elif input_data_format is not None:
        channels_first = input_data_format == "channels_first"
    else:
        first_ok, last_ok = array.shape[0] in channel_counts, array.shape[-1] in channel_counts
        if not (first_ok or last_ok):
            raise ValueError(
                f"Could not find the channel axis of an image array of shape {tuple(array.shape)}: expected {counts} "
                "channels on the first (C, H, W) or last (H, W, C) axis (other counts need `num_channels`)."
            )
        # when both axes could hold channels (tiny images), follow the library's convention: torch is
        # channels-first, numpy (like `np.asarray(pil_image)`) channels-last
        channels_first = first_ok and (channels_first_default or not last_ok)
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in channel_counts:  # a greyscale array or a given layout (a guessed one fits)
        raise ValueError(
            f"Image arrays must have {counts} channels here, got {array.shape[-1]} channels (array of shape "
            f"{tuple(array.shape)} read as {'(C, H, W)' if channels_first else '(H, W, C)'}); set `num_channels` "
            "for other channel counts."
        )
    return array


def _to_target_mode(image: PIL.Image.Image, num_channels: int, do_convert_rgb: bool) -> PIL.Image.Image:
    """Convert a PIL image to "RGB" (num_channels=3) or "L" (num_channels=1)."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        # a change of bit depth, not of colour: done whatever `do_convert_rgb`
        image = _high_bit_depth_to_8_bit(image)
    target = _TARGET_MODE[num_channels]
    if image.mode == target:
        return image
    if not do_convert_rgb:
        raise ValueError(
            f"Got an image of PIL mode {image.mode!r}, but num_channels={num_channels} needs mode {target!r} and "
            "do_convert_rgb=False. Pass do_convert_rgb=True or convert the image first."
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


def _to_channel_images(
    image: PIL.Image.Image | np.ndarray, num_channels: int, do_convert_rgb: bool
) -> list[PIL.Image.Image]:
    """
    The image as 8-bit PIL images whose bands are its `num_channels` channels: one "L" or "RGB" image for 1 or 3
    channels; one "L" image per channel otherwise (PIL has no mode for, e.g., RGB + near-infrared). PIL resamples
    every band on its own, so both give the same pixels.
    """
    if num_channels in _TARGET_MODE:
        if isinstance(image, np.ndarray):
            # fromarray infers the mode from the shape: (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
            image = PIL.Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image))
        return [_to_target_mode(image, num_channels, do_convert_rgb)]
    if isinstance(image, PIL.Image.Image):
        raise ValueError(
            f"Got a PIL image (mode {image.mode!r}), but num_channels={num_channels}: PIL images are read as "
            f"greyscale or RGB only. Pass the {num_channels} channels as a numpy array or torch tensor of shape "
            f"(H, W, {num_channels}) or ({num_channels}, H, W) (`np.asarray(image)` if its bands are those channels)."
        )
    return [PIL.Image.fromarray(np.ascontiguousarray(image[..., channel])) for channel in range(num_channels)]


def _scaled_size(size: dict[str, int], crop_pct: float | None) -> dict[str, int]:
    """
    `size` divided by `crop_pct`, as transformers' PoolFormer processor does: `{"shortest_edge": 224}` with 0.875
    gives `{"shortest_edge": 256}`; a square `{"height": h, "width": h}` becomes a shortest-edge resize to
    `int(h / crop_pct)`, a non-square one an exact resize to `(int(h / crop_pct), int(w / crop_pct))`.
    """
    if crop_pct is None:
        return size
    if "shortest_edge" in size:
        return {"shortest_edge": int(size["shortest_edge"] / crop_pct)}
    if size["height"] == size["width"]:
        return {"shortest_edge": int(size["height"] / crop_pct)}
    return {"height": int(size["height"] / crop_pct), "width": int(size["width"] / crop_pct)}


def _resized_size(image_size: tuple[int, int], size: dict[str, int]) -> tuple[int, int]:
    """(width, height) of an image of `image_size` (width, height) resized to `size`."""
    if "shortest_edge" not in size:
        return size["width"], size["height"]
    width, height = image_size
    short, long = min(width, height), max(width, height)
    # truncate the long side like transformers' `get_resize_output_image_size`, so sizes agree with ViT's
    new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _resize(
    image: PIL.Image.Image, size: dict[str, int], resample: int, crop_size: dict[str, int] | None = None
) -> PIL.Image.Image:
    """Resize `image` to `size`, then centre-crop it to `crop_size` (if given)."""
    new_width, new_height = _resized_size(image.size, size)
    if new_width * new_height <= MAX_RESIZED_PIXELS:
        if (new_width, new_height) != image.size:
            image = image.resize((new_width, new_height), resample=resample)
        return image if crop_size is None else _center_crop(image, crop_size)
    if crop_size is None:
        raise ValueError(
            f"Resizing a {image.width} x {image.height} image to {size} gives {new_width} x {new_height} = "
            f"{new_width * new_height:,} pixels, more than the limit of {MAX_RESIZED_PIXELS:,}. Turn on "
            'do_center_crop, resize to {"height": h, "width": w}, or crop the image to a less extreme aspect ratio.'
        )
    return _resize_within_crop(image, (new_width, new_height), crop_size, resample)


def _resize_within_crop(
    image: PIL.Image.Image, resized_size: tuple[int, int], crop_size: dict[str, int], resample: int
) -> PIL.Image.Image:
    """
    `_center_crop(image.resize(resized_size), crop_size)` without making the resized image: only the part that the
    crop keeps is resampled (PIL's `box`, whose filter still reads the pixels around it), so the cost is that of the
    crop whatever the aspect ratio. Equal to resizing then cropping up to float round-off in the filter weights.
    """
    new_width, new_height = resized_size
    crop_width, crop_height = crop_size["width"], crop_size["height"]
    left, top = (new_width - crop_width) // 2, (new_height - crop_height) // 2
    # the crop window clipped to the resized image, in resized pixels; the rest of the crop is zero padding
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + crop_width, new_width), min(top + crop_height, new_height)
    scale_x, scale_y = image.width / new_width, image.height / new_height
    box = (x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y)
    kept = image.resize((x1 - x0, y1 - y0), resample=resample, box=box)
    if kept.size == (crop_width, crop_height):
        return kept
    canvas = PIL.Image.new(image.mode, (crop_width, crop_height))
    canvas.paste(kept, (x0 - left, y0 - top))
    return canvas


def _center_crop(image: PIL.Image.Image, crop_size: dict[str, int]) -> PIL.Image.Image:
    width, height = image.size
    crop_height, crop_width = crop_size["height"], crop_size["width"]
    # same offsets as transformers' `center_crop`; PIL fills a crop larger than the image with zeros (black),
    # which is where transformers pads too
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return image.crop((left, top, left + crop_width, top + crop_height))


def _channels_first(parts: list[PIL.Image.Image]) -> np.ndarray:
    """(C, H, W) float32 values of "L" / "RGB" images stacked along their channels, in one float32 copy."""
    arrays = [np.asarray(part) for part in parts]  # (H, W) or (H, W, C) uint8
    array = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


def _preprocess_image(
    image: PIL.Image.Image | np.ndarray,
    num_channels: int,
    do_convert_rgb: bool,
    size: dict[str, int] | None,
    resample: int,
    crop_size: dict[str, int] | None,
    rescale_factor: float | None,
    mean: np.ndarray | None,
    std: np.ndarray | None,
) -> np.ndarray:
    """
    One image as [`DilatedViTMAEImageProcessor.preprocess`] makes it, a `(C, H, W)` float32 array, from settings
    already validated (`DilatedViTMAEImageProcessor._preprocess_settings`): `size` (with `crop_pct` applied) or None
    for no resize, `crop_size` or None for no centre crop, `rescale_factor` or None, `mean` / `std` ((C, 1, 1)
    float32) or None for no normalisation. Rescaled and normalised in place: the same float32 operations as
    `array * factor` then `(array - mean) / std`, so the same values, without three more copies.
    """
    parts = _to_channel_images(image, num_channels, do_convert_rgb)
    if size is not None:
        parts = [_resize(part, size, resample, crop_size) for part in parts]
    elif crop_size is not None:
        parts = [_center_crop(part, crop_size) for part in parts]
    array = _channels_first(parts)
    if rescale_factor is not None:
        array *= np.float32(rescale_factor)
    if mean is not None:
        array -= mean
        array /= std
    return array


def check_setting(name: str, value: Any, num_channels: int | None = None) -> Any:
    """
    One processor setting (an `__init__` argument) validated on its own, in its canonical form: `image_mean` /
    `image_std` as one float per channel of `num_channels` (needed for those two), a float being broadcast. The
    training transforms check the settings they share with the processor through it.
    """
    if name in ("size", "crop_size"):
        return _to_size_dict(value, name, allow_shortest_edge=name == "size")
    if name in ("image_mean", "image_std"):
        values = _channel_stats(value, num_channels, name)
        if name == "image_std" and any(v <= 0 for v in values):
            raise ValueError(f"`image_std` must be positive (it divides the pixels), got {values!r}.")
        return values
    if name == "resample":
        try:
            return PILImageResampling(value)
        except ValueError:
            names = ", ".join(f"{member.name}={member.value}" for member in PILImageResampling)
            raise ValueError(f"`resample` must be a PILImageResampling ({names}), got {value!r}.") from None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "rescale_factor":
        if not (is_number and value > 0):
            raise ValueError(f"`rescale_factor` must be a positive number such as 1/255, got {value!r}.")
        return float(value)
    if name == "crop_pct":
        if value is not None and not (is_number and 0 < value <= 1):
            raise ValueError(
                "`crop_pct` must be a number in (0, 1] (the fraction of the resized image the centre crop keeps, "
                f"e.g. {MAE_EVAL_CROP_PCT} for MAE's 256 -> 224 evaluation view) or None, got {value!r}."
            )
        return None if value is None else float(value)
    if name == "num_channels":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(
                "`num_channels` must be a positive int: 1 (greyscale), 3 (RGB), or the channel count of array "
                f"inputs (e.g. 4 for RGB + near-infrared), got {value!r}."
            )
        return int(value)
    return bool(value)  # the do_* switches



class DilatedViTMAEImageProcessor(BaseImageProcessor):
    r"""
    Constructs a DilatedViTMAE image processor. It resizes, centre-crops, rescales and normalises images for
    [`DilatedViTMAEModel`] / [`DilatedViTMAEForPreTraining`], and turns normalised pixel values (inputs or
    un-patchified reconstructions) back into images with [`~DilatedViTMAEImageProcessor.postprocess`].

    The argument names and defaults follow transformers' [`ViTImageProcessor`], except `size`, which defaults to a
    shortest-edge resize followed by a centre crop so that non-square photos (CelebA's aligned faces are 178x218) are
    not distorted, and `crop_pct`, the crop fraction of transformers' PoolFormer processor (and of timm): with
    `crop_pct=0.875` the shortest edge is resized to `224 / 0.875 = 256` and the centre crop keeps 224, MAE's and
    DINO's evaluation view, which the shipped `configs/dilated-vit-mae-base` states. The processing is written with
    PIL and numpy only: it needs no torchvision.

    Every image is first read as 8-bit: float inputs in [0, 1] are rounded to the nearest of 256 levels, so a float
    image and the uint8 image it came from give identical results, and 16/32-bit images are scaled by their range
    rather than clipped: uint8 and other integer arrays are read as 0..255, uint16 arrays and the PIL modes `"I;16"`
    (16-bit PNG/TIFF) and `"I"` (32-bit integer, read as 16-bit data: values outside 0..65535 are refused) as
    0..65535, float arrays and the PIL mode `"F"` as [0, 1] (other values are refused).

    Any channel count works with array inputs: `num_channels=4` (RGB + near-infrared) or more reads numpy arrays and
    torch tensors with that many channels, each resampled like a greyscale image, and needs its own `image_mean` /
    `image_std`; PIL images and files are then refused, as PIL reads them as greyscale or RGB only.

    Inputs are bounded so that a hostile or accidental one cannot exhaust memory: files larger than `MAX_IMAGE_PIXELS`
    are refused from their header, before decoding, and a shortest-edge resize of an extreme aspect ratio (1 x
    1,000,000 px would become 224 x 224,000,000) resamples only the part the centre crop keeps (without a crop it is
    refused).

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
        crop_pct (`float`, *optional*, defaults to `None`):
            Fraction of the resized image that the centre crop keeps, as in transformers' PoolFormer processor:
            the resize goes to `size / crop_pct` (`{"shortest_edge": 224}` with 0.875 resizes the shortest edge to
            256; a square `{"height": h, "width": h}` becomes a shortest-edge resize to `int(h / crop_pct)`), then
            the crop keeps `crop_size`. Applies only with both `do_resize` and `do_center_crop` (without a crop there
            is nothing for it to keep; PoolFormer scales the resize anyway). `None` (a config saved before this field
            existed) resizes to `size` itself: a crop fraction of 1 when `size` equals `crop_size`.
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
            Number of channels of `pixel_values`: 3 (RGB), 1 (greyscale) or any other count for array inputs (then
            `image_mean` and `image_std` have no default). Must match the model config's `num_channels` and the length
            of `image_mean` / `image_std`.

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
    # the stored settings `preprocess` reads: assigning one validates it and drops the form `preprocess` derives from
    # them, rebuilt at the next call (which checks that num_channels and image_mean / image_std still agree)
    _SETTINGS = (
        "do_resize", "size", "resample", "do_center_crop", "crop_size", "crop_pct", "do_rescale", "rescale_factor",
        "do_normalize", "image_mean", "image_std", "do_convert_rgb", "num_channels",
    )  # fmt: skip

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
        crop_pct: float | None = None,
        **kwargs,
    ) -> None:
        # leftover kwargs (`image_processor_type`, `auto_map`, ... from a saved config) become attributes there
        super().__init__(**kwargs)
        # each assignment is validated by `__setattr__`; num_channels first, as image_mean / image_std depend on it
        self.num_channels = num_channels
        self.do_resize = do_resize
        self.size = {"shortest_edge": 224} if size is None else size
        self.resample = resample
        self.do_center_crop = do_center_crop
        self.crop_size = {"height": 224, "width": 224} if crop_size is None else crop_size
        self.crop_pct = crop_pct
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        if image_mean is None or image_std is None:
            default_mean, default_std = self._default_stats(self.num_channels)
            image_mean = default_mean if image_mean is None else image_mean
            image_std = default_std if image_std is None else image_std
        self.image_mean = image_mean
        self.image_std = image_std
        self.do_convert_rgb = do_convert_rgb

    def __setattr__(self, name: str, value: Any) -> None:
        # a setting is validated where it enters, here (`__init__`, `from_pretrained`, `processor.size = ...`), and
        # stored in its canonical form; `preprocess` trusts it from then on
        if name in self._SETTINGS:
            value = self._check_setting(name, value)
            self.__dict__.pop("_validated_settings", None)
        super().__setattr__(name, value)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_validated_settings", None)  # derived from the fields, not one of them
        return output

    @staticmethod
    def _default_stats(num_channels: int) -> tuple[Sequence[float], Sequence[float]]:
        if num_channels == 1:
            return GREYSCALE_DEFAULT_MEAN, GREYSCALE_DEFAULT_STD
        if num_channels == 3:
            return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        raise ValueError(
            f"num_channels={num_channels} has no default `image_mean` / `image_std` (ImageNet's are for RGB): pass "
            "one value per channel, e.g. your data's per-channel mean and standard deviation of values in [0, 1]."
        )

    def _check_setting(self, name: str, value: Any, num_channels: int | None = None) -> Any:
        """`check_setting`; `image_mean` / `image_std` for the processor's channel count unless `num_channels` is
        given."""
        if num_channels is None and name in ("image_mean", "image_std"):
            num_channels = self.num_channels
        return check_setting(name, value, num_channels)

    def _make_list_of_images(
        self, images: Any, input_data_format: str | None, channel_counts: Sequence[int]
    ) -> list[PIL.Image.Image | np.ndarray]:
        """Turn any accepted input (single image, batch array, list, path) into a flat list of PIL images and uint8
        (H, W, C) arrays."""
        if images is None:
            raise TypeError(f"`images` is None. Accepted: {_ACCEPTED_INPUTS}.")
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            # a 4-D array/tensor is a batch (e.g. from a DataLoader): one image per leading index
            images = list(images)
        if not isinstance(images, (list, tuple)):
            return [self._read_image(images, input_data_format, channel_counts)]
        if len(images) == 0:
            raise ValueError(f"`images` is an empty {type(images).__name__}; pass at least one image.")
        read = []
        for index, image in enumerate(images):
            if isinstance(image, (list, tuple)):
                raise TypeError(
                    f"images[{index}] is a {type(image).__name__}: nested lists are not supported. Pass a flat "
                    "list of images."
                )
            try:
                read.append(self._read_image(image, input_data_format, channel_counts))
            except (TypeError, ValueError) as err:
                # say which image of the batch is broken
                raise type(err)(f"images[{index}]: {err}") from err
        return read

    @staticmethod
    def _read_image(
        image: Any, input_data_format: str | None, channel_counts: Sequence[int]
    ) -> PIL.Image.Image | np.ndarray:
        if isinstance(image, PIL.Image.Image):
            return image
        if isinstance(image, (str, os.PathLike)):
            return _open_image_file(image)
        if isinstance(image, torch.Tensor):
            # half/bfloat16 have no numpy dtype
            tensor = image.detach().cpu()
            if tensor.is_floating_point():
                tensor = tensor.float()
            return _read_array(tensor.numpy(), True, input_data_format, channel_counts)
        if isinstance(image, np.ndarray):
            return _read_array(image, False, input_data_format, channel_counts)
        if image is None:
            raise TypeError(f"Got None instead of an image. Accepted: {_ACCEPTED_INPUTS}.")
        raise TypeError(f"Unsupported image type {type(image).__name__}. Accepted: {_ACCEPTED_INPUTS}.")

    def _preprocess_settings(self, **arguments: Any) -> dict[str, Any]:
        """
        The keyword arguments of `_preprocess_image` for a `preprocess` call: the settings given to it (not `None`),
        validated here, where they enter, over the processor's own, validated when they were set. Without any, built
        once and kept until a setting is assigned.
        """
        if all(value is None for value in arguments.values()) and "_validated_settings" in self.__dict__:
            return self.__dict__["_validated_settings"]
        given = {name: value for name, value in arguments.items() if value is not None}
        num_channels = given.get("num_channels")
        if num_channels is None:
            # per-call image_mean / image_std sequences name one value per channel (transformers' processors read
            # that many channels from arrays, e.g. its shared `test_call_numpy_4_channels`)
            stats = (given.get("image_mean"), given.get("image_std"))
            per_call = [len(v) for v in stats if not isinstance(v, (str, int, float)) and np.ndim(v) == 1]
            num_channels = per_call[0] if per_call else None
        num_channels = self.num_channels if num_channels is None else self._check_setting("num_channels", num_channels)
        settings = {}
        for name in self._SETTINGS:  # image_mean before image_std, as in __init__
            if name in given and name != "num_channels":
                settings[name] = self._check_setting(name, given[name], num_channels)
            elif name in ("image_mean", "image_std"):
                # set for the processor's num_channels, which this call's (or one assigned since) may not match
                settings[name] = _check_channel_count(getattr(self, name), num_channels, name)
            else:
                settings[name] = getattr(self, name)
        do_center_crop, do_normalize, size = settings["do_center_crop"], settings["do_normalize"], settings["size"]
        # the crop fraction scales the resize only when there is a crop to keep
        size = _scaled_size(size, settings["crop_pct"]) if do_center_crop else size
        resolved = {
            "num_channels": num_channels,
            "do_convert_rgb": settings["do_convert_rgb"],
            "size": size if settings["do_resize"] else None,
            "resample": settings["resample"],
            "crop_size": settings["crop_size"] if do_center_crop else None,
            "rescale_factor": settings["rescale_factor"] if settings["do_rescale"] else None,
            "mean": np.asarray(settings["image_mean"], dtype=np.float32)[:, None, None] if do_normalize else None,
            "std": np.asarray(settings["image_std"], dtype=np.float32)[:, None, None] if do_normalize else None,
        }
        if not given:
            self.__dict__["_validated_settings"] = resolved
        return resolved

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
        crop_pct: float | None = None,
        return_tensors: Literal["pt", "np"] | str | None = None,
        input_data_format: Literal["channels_first", "channels_last"] | str | None = None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Preprocess an image or a batch of images. Every argument left to `None` takes the processor's value.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of these):
                The image(s). Arrays and tensors may be `(H, W)` greyscale, `(H, W, C)` or `(C, H, W)` with 1, 3 or 4
                (RGBA) channels, or `num_channels` channels for another count, holding uint8 (or integer) values in
                0..255, uint16 values in 0..65535 or float values in [0, 1]; a 4-D array/tensor is a batch. When both
                the first and last axis could be channels, numpy arrays are read as `(H, W, C)` and tensors as
                `(C, H, W)` (override with `input_data_format`). A string or `os.PathLike` is the path of an image
                file, opened with PIL (EXIF orientation applied); URLs are not downloaded.
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
                Channels of `pixel_values`. When it differs from the processor's, pass a matching `image_mean` and
                `image_std` too. Left to `None`, per-call `image_mean` / `image_std` sequences set it (one value per
                channel, as transformers' processors read any channel count from arrays), else the processor's.
            crop_pct (`float`, *optional*):
                Fraction of the resized image the centre crop keeps (see the class); `1.0` resizes to `size` itself.
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
        settings = self._preprocess_settings(
            do_resize=do_resize, size=size, resample=resample, do_center_crop=do_center_crop, crop_size=crop_size,
            crop_pct=crop_pct, do_rescale=do_rescale, rescale_factor=rescale_factor, do_normalize=do_normalize,
            image_mean=image_mean, image_std=image_std, do_convert_rgb=do_convert_rgb, num_channels=num_channels,
        )  # fmt: skip
        # both also accept transformers' enums (`TensorType`, `ChannelDimension`), whose values are these strings
        return_tensors = getattr(return_tensors, "value", return_tensors)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
        input_data_format = getattr(input_data_format, "value", input_data_format)
        if input_data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(
                f"`input_data_format` must be 'channels_first' or 'channels_last', got {input_data_format!r}."
            )

        # an array may have 1, 3 or 4 (RGBA) channels for a greyscale or RGB output, exactly num_channels otherwise
        num_channels = settings["num_channels"]
        channel_counts = _ARRAY_CHANNELS if num_channels in _TARGET_MODE else (num_channels,)
        pixel_values = [
            _preprocess_image(image, **settings)
            for image in self._make_list_of_images(images, input_data_format, channel_counts)
        ]

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
                `"pil"` for PIL images ("RGB" or "L"; 1 or 3 channels only); `"np"` for uint8 arrays of shape
                `(H, W, C)` or `(H, W)` for one channel (what `np.asarray` gives for the PIL image), stacked to
                `(batch_size, ...)` for 4-D input.
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
        expected = self.num_channels if image_mean is None and image_std is None else num_channels
        if num_channels != expected:
            raise ValueError(
                f"`pixel_values` must be channels first with {expected} channels (the processor's num_channels), got "
                f"shape {tuple(pixel_values.shape)}."
            )
        if return_type == "pil" and num_channels not in _TARGET_MODE:
            raise ValueError(
                f"PIL images hold 1 or 3 channels, `pixel_values` have {num_channels}: pass return_type='np' for "
                f"uint8 arrays of shape (H, W, {num_channels})."
            )
        if not np.isfinite(batch).all():
            raise ValueError("`pixel_values` contains NaN or infinite values; they cannot be turned into an image.")

        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = (
            self.rescale_factor if rescale_factor is None else self._check_setting("rescale_factor", rescale_factor)
        )
        batch = batch.astype(np.float64)
        if do_normalize:
            # the stored values were validated when set, but maybe for another channel count
            mean, std = (
                _check_channel_count(getattr(self, name), num_channels, name)
                if given is None
                else _channel_stats(given, num_channels, name)
                for name, given in (("image_mean", image_mean), ("image_std", image_std))
            )
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
