"""
The pipelines of a DilatedViTMAE folder:

- `"mae-reconstruction"`: mask an image, let the masked autoencoder reconstruct it, and return the masked input, the
  reconstruction and the re-composited image (visible patches from the input, masked ones predicted);
- `"image-feature-extraction"`: the encoder's features of the whole image (every patch, in image order), the same at
  every call, optionally pooled.

This file is Hub code: a publishable folder ships it beside the model files, and its `config.json` names both classes
under `custom_pipelines`, so that

    pipeline("mae-reconstruction", model="namespace/name", revision=COMMIT, trust_remote_code=True)
    pipeline("image-feature-extraction", model="namespace/name", revision=COMMIT, trust_remote_code=True)

work where the `dilated_vit_mae` package is not installed (a task in `custom_pipelines` takes precedence over
transformers' built-in pipeline of the same name). It therefore imports only torch, numpy, PIL and transformers. With
the package installed, build them directly:
`DilatedViTMAEReconstructionPipeline(model=model, image_processor=processor)`.

Images are read by this file's `load_image`: PIL images, paths, encoded bytes, base64 strings and arrays, within its
size bounds; URLs are refused (this code does not download), as the image processor refuses them. A path is opened
because a Python caller passes its own files; a server passes what a request carries through
`load_image(inputs, allow_paths=False)` first (as `handler.py` does), never a request's string to the pipeline; the
demo (`app.py`) bounds its uploads by this file's `MAX_IMAGE_BYTES`.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import random
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import ImageFeatureExtractionPipeline, Pipeline

from .image_processing_dilated_vit_mae import (
    MAX_IMAGE_PIXELS,
    _check_pixel_count,
    _is_url,
    _open_image,
    _open_image_file,
    _short_repr,
)


# largest encoded image (bytes, or base64 once decoded) a pipeline or server accepts, checked before decoding
MAX_IMAGE_BYTES = 32 * 2**20

# what a server answers any request string or bytes that hold no image: the same words whatever they were, so that a
# client learns nothing about the server's files by naming one (`load_image(..., allow_paths=False)`)
NOT_AN_IMAGE_MESSAGE = (
    "The image must be sent in the request: base64-encoded image data (PNG, JPEG, ...), a 'data:image/...;base64,' "
    "URL, or the image's bytes; this input is none of these (paths and URLs are never read)."
)

# the formats a request's image may be in (`load_image(..., allow_paths=False)`): PIL's plain raster decoders, not
# those that hand the data to another program (EPS runs Ghostscript) or read other files
REQUEST_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


class _NotImageData(ValueError):
    """Input that holds no image at all: not base64, or bytes that no image format recognises."""


def _bytes_from_base64(text: str, max_bytes: int) -> bytes:
    """The bytes of a base64 string or of a `data:<type>;base64,<data>` URL, refused before decoding when too long."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ValueError(
                f"Got a data URL starting {_short_repr(header, 40)} without ';base64,' before its data: send "
                "'data:image/png;base64,<base64 data>'."
            )
    if len(text) > 4 * -(-max_bytes // 3):
        raise ValueError(
            f"The base64 image is {len(text):,} characters (~{len(text) * 3 / 4 / 2**20:.1f} MiB decoded), more than "
            f"the limit of {max_bytes / 2**20:g} MiB; send a smaller image."
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise _NotImageData(
            f"Got the string {_short_repr(text, 40)}, which is neither a path to an existing image file nor "
            f"base64-encoded image data ({err}). URLs are not downloaded."
        ) from err


def _decode_image_data(data: bytes, max_bytes: int, max_pixels: int, formats: tuple[str, ...] | None):
    if len(data) > max_bytes:
        raise ValueError(
            f"The image is {len(data) / 2**20:.1f} MiB, more than the limit of {max_bytes / 2**20:g} MiB; send a "
            "smaller image."
        )
    try:
        return _open_image(io.BytesIO(data), "the image data", max_pixels, formats)
    except ValueError as err:
        if isinstance(err.__cause__, PIL.UnidentifiedImageError):  # bytes that no (allowed) image format recognises
            raise _NotImageData(str(err)) from err.__cause__
        raise


def load_image(
    image: "PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike | bytes",
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_IMAGE_BYTES,
    allow_paths: bool = True,
) -> "PIL.Image.Image | np.ndarray | torch.Tensor":
    r"""
    Read one image from what a pipeline or a server receives, within bounds, without touching the network. What the
    pipelines, the Inference Endpoints handler and the demo use, so that they all accept and refuse the same inputs.

    Args:
        image:
            A `PIL.Image.Image` (refused when larger than `max_pixels`), a numpy array or torch tensor (returned as
            they are), a path to an image file, raw encoded bytes, or a base64 string (optionally a
            `data:image/...;base64,` URL). URLs are refused: this code does not download.
        max_pixels (`int`, *optional*, defaults to `MAX_IMAGE_PIXELS`):
            Largest width x height to decode, checked from the file header before decoding.
        max_bytes (`int`, *optional*, defaults to `MAX_IMAGE_BYTES`):
            Largest encoded image (bytes, or base64 once decoded), checked before decoding.
        allow_paths (`bool`, *optional*, defaults to `True`):
            Whether a string (or `os.PathLike`) may name a file to open: what a Python caller passes in its own
            process. A server passes `False` for what a request carries: strings are then only ever base64 or data
            URLs, only `REQUEST_IMAGE_FORMATS` are decoded, and every string or bytes input holding no image (in those
            formats) gets the one `NOT_AN_IMAGE_MESSAGE`, whatever files the server has.

    Returns:
        A decoded `PIL.Image.Image` in its own mode (the image processor converts it), or the array/tensor given.

    Raises:
        `ValueError` naming the problem, whatever it is, so that a server can answer it as a bad request.
    """
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image
    if isinstance(image, PIL.Image.Image):
        # an opened file is decoded lazily: this still comes before its pixels are read
        _check_pixel_count(image, "The image", max_pixels)
        return image
    if isinstance(image, os.PathLike) and not allow_paths:
        raise ValueError(NOT_AN_IMAGE_MESSAGE)
    if allow_paths and (
        isinstance(image, os.PathLike)
        or (isinstance(image, str) and (_is_url(image) or (len(image) < 4096 and os.path.isfile(image))))
    ):
        return _open_image_file(image, max_pixels)
    try:
        if isinstance(image, str):
            image = _bytes_from_base64(image, max_bytes)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return _decode_image_data(image, max_bytes, max_pixels, None if allow_paths else REQUEST_IMAGE_FORMATS)
    except _NotImageData:
        if allow_paths:
            raise
        raise ValueError(NOT_AN_IMAGE_MESSAGE) from None
    raise ValueError(
        f"Unsupported image type {type(image).__name__}: pass a PIL image, a path, encoded bytes, a base64 string or "
        "an array."
    )


# seeds of `torch.Generator.manual_seed`: 0 .. 2**64 - 1
MAX_SEED = 2**64 - 1


def _check_mask_ratio(mask_ratio: Any) -> float:
    # `not 0 <= x < 1` also refuses NaN
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"`mask_ratio` must be a number in [0, 1), got {mask_ratio!r}.")
    return float(mask_ratio)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`seed` must be an integer in [0, 2**64 - 1], got {seed!r}.")
    return int(seed)


class DilatedViTMAEReconstructionPipeline(Pipeline):
    r"""
    Masked-image reconstruction with a `DilatedViTMAEForPreTraining` (or any model with ViTMAE's pre-training outputs
    and `logits_to_pixel_values` / `mask_to_pixels`).

    Call it with one image (a `PIL.Image.Image`, a local path, encoded bytes, a base64 string, or an array for any
    channel count; not a URL) or a list of them, and:

        mask_ratio (`float`, *optional*, defaults to `config.mask_ratio`):
            Fraction of patches removed, in `[0, 1)`.
        seed (`int`, *optional*):
            Seed of the random mask: the same image, mask ratio and seed give the same mask and outputs on every
            device. Without one, a seed is drawn and returned, so that any result can be reproduced.

    Each image gives a `dict` with:

        - `"original"`: the image as the model sees it (resized and cropped by the image processor), `PIL.Image.Image`.
        - `"masked"`: the same with the removed patches blacked out.
        - `"reconstruction"`: the model's prediction of every patch.
        - `"recomposited"`: visible patches from `"original"`, removed ones from `"reconstruction"`.
        - `"mask"`: `PIL.Image.Image` in mode `"L"`, 255 on removed pixels.
        - `"mask_ratio"` (`float`) and `"seed"` (`int`): what was used.

    For a model of another channel count than 1 or 3 (e.g. RGB + near-infrared), the four images are uint8 arrays of
    shape `(H, W, num_channels)` instead of PIL images.

    With `norm_pix_loss=True` the model predicts every patch normalised by its own mean and variance; as in MAE's
    visualisation, the prediction is mapped back with the *input* patch's statistics, so a removed patch's
    reconstruction borrows its true mean colour and contrast.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> reconstruct = pipeline("mae-reconstruction", model="path/to/folder", trust_remote_code=True)
    >>> result = reconstruct("face.png", mask_ratio=0.75, seed=0)
    >>> result["recomposited"].save("recomposited.png")
    ```"""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, mask_ratio: float | None = None, seed: int | None = None, **kwargs):
        if kwargs:
            raise TypeError(
                f"Unexpected arguments {sorted(kwargs)}; the mae-reconstruction pipeline takes `mask_ratio` and "
                "`seed`."
            )
        preprocess_params: dict[str, Any] = {}
        if mask_ratio is not None:
            preprocess_params["mask_ratio"] = _check_mask_ratio(mask_ratio)
        if seed is not None:
            preprocess_params["seed"] = _check_seed(seed)
        return preprocess_params, {}, {}

    def __call__(self, images, **kwargs):
        """Reconstruct one image (a `dict` of outputs) or a list of images (a list of them): see the class doc."""
        return super().__call__(images, **kwargs)

    def preprocess(self, image, mask_ratio: float | None = None, seed: int | None = None) -> dict[str, Any]:
        image = load_image(image)
        mask_ratio = float(self.model.config.mask_ratio) if mask_ratio is None else mask_ratio
        # a drawn seed is returned with the result, so that any output can be reproduced
        seed = random.randrange(2**31) if seed is None else seed
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        if self.dtype is not None:
            pixel_values = pixel_values.to(self.dtype)
        grid_height, grid_width = self.model.get_input_embeddings().grid_for(*pixel_values.shape[-2:])
        # drawn on the CPU from its own generator: the same seed gives the same mask on every device
        noise = torch.rand(1, grid_height * grid_width, generator=torch.Generator().manual_seed(seed))
        return {"pixel_values": pixel_values, "noise": noise, "mask_ratio": mask_ratio, "seed": seed}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        pixel_values = model_inputs["pixel_values"]
        outputs = self.model(
            pixel_values=pixel_values, noise=model_inputs["noise"], mask_ratio=model_inputs["mask_ratio"]
        )
        reconstruction = self.model.logits_to_pixel_values(outputs.logits.float(), pixel_values.float())
        pixel_mask = self.model.mask_to_pixels(outputs.mask.float(), tuple(pixel_values.shape[-2:]))  # (1, 1, H, W)
        return {
            "pixel_values": pixel_values.float(),
            "reconstruction": reconstruction,
            "pixel_mask": pixel_mask,
            "mask_ratio": model_inputs["mask_ratio"],
            "seed": model_inputs["seed"],
        }

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        # uint8 arrays (H, W, C) or (H, W) for greyscale, un-normalised by the image processor
        original = self.image_processor.postprocess(model_outputs["pixel_values"][0], return_type="np")
        reconstruction = self.image_processor.postprocess(model_outputs["reconstruction"][0], return_type="np")
        removed = model_outputs["pixel_mask"][0, 0].numpy() > 0.5  # (H, W), True on removed pixels
        removed_like_image = removed[..., None] if original.ndim == 3 else removed
        masked = np.where(removed_like_image, np.zeros_like(original), original)
        recomposited = np.where(removed_like_image, reconstruction, original)
        # PIL holds greyscale and RGB; other channel counts stay arrays
        as_image = PIL.Image.fromarray if original.ndim == 2 or original.shape[-1] == 3 else np.ascontiguousarray
        return {
            "original": as_image(original),
            "masked": as_image(masked),
            "reconstruction": as_image(reconstruction),
            "recomposited": as_image(recomposited),
            "mask": PIL.Image.fromarray((removed * 255).astype(np.uint8)),
            "mask_ratio": model_outputs["mask_ratio"],
            "seed": model_outputs["seed"],
        }


class DilatedViTMAEImageFeatureExtractionPipeline(ImageFeatureExtractionPipeline):
    r"""
    Whole-image features from a DilatedViTMAE encoder (`DilatedViTMAEModel`, or the encoder of any DilatedViTMAE
    head): the `"image-feature-extraction"` pipeline of a published folder.

    transformers' built-in pipeline for the task would call the model as configured for pre-training, so
    `config.mask_ratio` (0.75) of the patches would be dropped at random: features of a quarter of the image, different
    at every call; and its `pool=True` needs a pooler, which MAE has not. This one runs the encoder on every patch in
    image order (`mask_ratio=0`): the same features at every call.

    Call it with one image (as for the reconstruction pipeline: PIL image, path, bytes, base64 string or array; not
    a URL) or a list of them, and:

        pool (`bool`, *optional*, defaults to `False`):
            `False`: the encoder's output, CLS token first then one token per patch, of shape
            `(1, 1 + num_patches, hidden_size)`. `True`: the mean of the patch tokens, MAE's global pool, of shape
            `(1, hidden_size)`.
        return_tensors (`bool`, *optional*, defaults to `False`):
            Return a `torch.Tensor` instead of nested lists.
        image_processor_kwargs (`dict`, *optional*):
            Passed to the image processor, e.g. `{"crop_size": 224}`.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> extract = pipeline("image-feature-extraction", model="path/to/folder", trust_remote_code=True)
    >>> extract("face.png", return_tensors=True).shape  # CLS + 14 x 14 patches of a 224 px ViT-B/16
    torch.Size([1, 197, 768])
    >>> extract("face.png", pool=True, return_tensors=True).shape
    torch.Size([1, 768])
    ```"""

    def _sanitize_parameters(
        self,
        image_processor_kwargs: dict[str, Any] | None = None,
        return_tensors: bool | None = None,
        pool: bool | None = None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(
                f"Unexpected arguments {sorted(kwargs)}; the image-feature-extraction pipeline takes `pool`, "
                "`return_tensors` and `image_processor_kwargs`."
            )
        if image_processor_kwargs is not None and not isinstance(image_processor_kwargs, dict):
            raise ValueError(f"`image_processor_kwargs` must be a dict, got {image_processor_kwargs!r}.")
        postprocess_params = {}
        for name, value in (("pool", pool), ("return_tensors", return_tensors)):
            if value is not None:
                if not isinstance(value, bool):
                    raise ValueError(f"`{name}` must be True or False, got {value!r}.")
                postprocess_params[name] = value
        return dict(image_processor_kwargs or {}), {}, postprocess_params

    def preprocess(self, image, **image_processor_kwargs) -> dict[str, torch.Tensor]:
        image = load_image(image)
        pixel_values = self.image_processor(image, return_tensors="pt", **image_processor_kwargs)["pixel_values"]
        return {"pixel_values": pixel_values if self.dtype is None else pixel_values.to(self.dtype)}

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # the encoder alone (`base_model` is the model itself for DilatedViTMAEModel), on every patch in image order
        outputs = self.model.base_model(pixel_values=model_inputs["pixel_values"], mask_ratio=0.0)
        return {"last_hidden_state": outputs.last_hidden_state}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], pool: bool = False, return_tensors: bool = False):
        hidden_states = model_outputs["last_hidden_state"].float()  # (1, 1 + num_patches, hidden_size)
        features = hidden_states[:, 1:].mean(dim=1) if pool else hidden_states
        return features if return_tensors else features.tolist()


__all__ = ["DilatedViTMAEImageFeatureExtractionPipeline", "DilatedViTMAEReconstructionPipeline", "load_image"]
