"""
A custom handler for Hugging Face Inference Endpoints. Every publishable folder ships this file as `handler.py` next
to the model, and the endpoint serves it from that folder (the repository), loading the model with
`trust_remote_code=True`; it imports only torch, PIL and transformers, so the endpoint needs nothing installed beyond
its default image.

Requests (JSON, or an image body, which the endpoint turns into `{"inputs": PIL.Image}`):

    {"inputs": "<base64 image>", "parameters": {"task": "reconstruction", "mask_ratio": 0.75, "seed": 0}}
    {"inputs": "<base64 image>", "parameters": {"task": "features"}}

Responses: `"reconstruction"` returns the original (resized and cropped as the model sees it), masked, reconstructed
and re-composited images as base64 PNGs with the mask ratio and seed used; `"features"` returns the encoder's output
for the whole image (no masking) as lists: `last_hidden_state` (CLS + one token per patch), `cls_embedding` and
`mean_patch_embedding`.

Try it locally:

    >>> from handler import EndpointHandler
    >>> handler = EndpointHandler("path/to/folder")
    >>> handler({"inputs": open("face.png", "rb").read(), "parameters": {"task": "features"}})["cls_embedding"][:3]
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import PIL.Image
import torch
from transformers import pipeline


TASKS = ("reconstruction", "features")
IMAGE_KEYS = ("original", "masked", "reconstruction", "recomposited")


def decode_image(inputs: Any) -> PIL.Image.Image:
    """A `PIL.Image.Image` from a PIL image, raw bytes, or a base64 string (optionally a `data:image/...` URL)."""
    if isinstance(inputs, PIL.Image.Image):
        return inputs
    if isinstance(inputs, str):
        if inputs.startswith("data:image/"):
            inputs = inputs.split(",", 1)[1]
        try:
            inputs = base64.b64decode(inputs, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"`inputs` is a string but not base64-encoded image data ({error}).") from error
    if isinstance(inputs, (bytes, bytearray)):
        try:
            image = PIL.Image.open(io.BytesIO(inputs))
            image.load()
        except PIL.UnidentifiedImageError as error:
            raise ValueError("`inputs` could not be decoded as an image (PNG, JPEG, ...).") from error
        return image
    raise ValueError(f"`inputs` must be an image: a PIL image, bytes or a base64 string, got {type(inputs).__name__}.")


def encode_png(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class EndpointHandler:
    """
    Serve a DilatedViTMAE folder: masked reconstruction (the folder's `mae-reconstruction` pipeline) and whole-image
    features.

    Args:
        path (`str`): the model folder (the endpoint passes the repository's local copy).
    """

    def __init__(self, path: str = ""):
        device = 0 if torch.cuda.is_available() else -1
        self.pipeline = pipeline("mae-reconstruction", model=path or ".", trust_remote_code=True, device=device)
        self.model = self.pipeline.model.eval()
        self.image_processor = self.pipeline.image_processor

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('The request must be a JSON object with "inputs" (an image) and optional "parameters".')
        parameters = dict(data.get("parameters") or {})
        task = parameters.pop("task", "reconstruction")
        if task not in TASKS:
            raise ValueError(f'"task" must be one of {TASKS}, got {task!r}.')
        image = decode_image(data["inputs"])
        if task == "features":
            if parameters:
                raise ValueError(f'"features" takes no other parameters, got {sorted(parameters)}.')
            return self.features(image)
        unknown = set(parameters) - {"mask_ratio", "seed"}
        if unknown:
            raise ValueError(f'Unknown parameters {sorted(unknown)}; "reconstruction" takes "mask_ratio" and "seed".')
        result = self.pipeline(image, **parameters)
        return {
            **{key: encode_png(result[key]) for key in IMAGE_KEYS},
            "mask_ratio": float(result["mask_ratio"]),
            "seed": int(result["seed"]),
        }

    @torch.no_grad()
    def features(self, image: PIL.Image.Image) -> dict[str, Any]:
        pixel_values = self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(self.model.device, self.model.dtype)
        # the encoder alone, on every patch in image order
        hidden_states = self.model.base_model(pixel_values, mask_ratio=0.0).last_hidden_state[0].float().cpu()
        return {
            "last_hidden_state": hidden_states.tolist(),  # (1 + num_patches, hidden_size)
            "cls_embedding": hidden_states[0].tolist(),
            "mean_patch_embedding": hidden_states[1:].mean(dim=0).tolist(),
            "shape": list(hidden_states.shape),
        }
