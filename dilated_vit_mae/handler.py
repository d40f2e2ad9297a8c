"""
A custom handler for Hugging Face Inference Endpoints. Every publishable folder ships this file as `handler.py` next
to the model, and the endpoint serves it from that folder (the repository), loading the model with
`trust_remote_code=True`; it imports only torch and transformers (the folder's pipelines and image processor do the
rest), so the endpoint needs nothing installed beyond its default image.

Requests (JSON, or an image body, which the endpoint turns into `{"inputs": PIL.Image}`):

    {"inputs": "<base64 image>", "parameters": {"task": "reconstruction", "mask_ratio": 0.75, "seed": 0}}
    {"inputs": "<base64 image>", "parameters": {"task": "features"}}

Responses: `"reconstruction"` returns the original (resized and cropped as the model sees it), masked, reconstructed
and re-composited images as base64 PNGs with the mask ratio and seed used; `"features"` returns the encoder's output
for the whole image (no masking) as lists: `last_hidden_state` (CLS + one token per patch), `cls_embedding` and
`mean_patch_embedding`.

Every request is bounded and every bad one raises a `ValueError` naming the problem (the endpoint's 400): images are
read by the pipeline file's `load_image` (at most `MAX_IMAGE_BYTES` encoded and `MAX_IMAGE_PIXELS` decoded, checked
before decoding), 16-bit images are scaled rather than clipped, and an extreme aspect ratio is resampled only
where the centre crop keeps it. The request must carry the image itself: a string is read as base64 (or a data URL)
only, never as a path on the server or a URL, and every string that holds no image gets the same message
(`NOT_AN_IMAGE_MESSAGE`), so that a client cannot probe which files the server has.

Try it locally:

    >>> from handler import EndpointHandler
    >>> handler = EndpointHandler("path/to/folder")
    >>> handler({"inputs": open("face.png", "rb").read(), "parameters": {"task": "features"}})["cls_embedding"][:3]
"""

from __future__ import annotations

import base64
import io
import sys
from typing import Any

import torch
from transformers import pipeline


TASKS = ("reconstruction", "features")
IMAGE_KEYS = ("original", "masked", "reconstruction", "recomposited")
RECONSTRUCTION_PARAMETERS = ("mask_ratio", "seed")


def encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_request(data: Any) -> tuple[Any, str, dict[str, Any]]:
    """`(inputs, task, parameters)` of a request, or a ValueError naming what is wrong with it."""
    if not isinstance(data, dict) or "inputs" not in data:
        raise ValueError('The request must be a JSON object with "inputs" (an image) and optional "parameters".')
    parameters = data.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise ValueError(f'"parameters" must be a JSON object, got {type(parameters).__name__} {parameters!r:.80}.')
    parameters = dict(parameters)
    task = parameters.pop("task", "reconstruction")
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f'"task" must be one of {TASKS}, got {task!r:.80}.')
    if task == "features" and parameters:
        raise ValueError(f'"features" takes no other parameters, got {sorted(parameters)}.')
    unknown = sorted(set(parameters) - set(RECONSTRUCTION_PARAMETERS))
    if unknown:
        raise ValueError(f'Unknown parameters {unknown}; "reconstruction" takes "mask_ratio" and "seed".')
    return data["inputs"], task, parameters


class EndpointHandler:
    """
    Serve a DilatedViTMAE folder: masked reconstruction (the folder's `mae-reconstruction` pipeline) and whole-image
    features (its `image-feature-extraction` pipeline, on the same loaded encoder).

    Args:
        path (`str`): the model folder (the endpoint passes the repository's local copy).
    """

    def __init__(self, path: str = ""):
        device = 0 if torch.cuda.is_available() else -1
        self.pipeline = pipeline("mae-reconstruction", model=path or ".", trust_remote_code=True, device=device)
        self.model = self.pipeline.model.eval()
        self.image_processor = self.pipeline.image_processor
        # the feature pipeline and the request parsing live in the same (remote-code) file
        pipelines = sys.modules[type(self.pipeline).__module__]
        self.load_image = pipelines.load_image
        self.feature_pipeline = pipelines.DilatedViTMAEImageFeatureExtractionPipeline(
            model=self.model, image_processor=self.image_processor, device=self.pipeline.device
        )

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        inputs, task, parameters = parse_request(data)
        # bounded decoding of the image the request carries (bytes, base64, data URL, PIL image): a string is never
        # opened as a path nor fetched as a URL, and any that holds no image gets the same message
        image = self.load_image(inputs, allow_paths=False)
        if task == "features":
            return self.features(image)
        result = self.pipeline(image, **parameters)
        return {
            **{key: encode_png(result[key]) for key in IMAGE_KEYS},
            "mask_ratio": float(result["mask_ratio"]),
            "seed": int(result["seed"]),
        }

    def features(self, image) -> dict[str, Any]:
        hidden_states = self.feature_pipeline(image, return_tensors=True)[0]  # (1 + num_patches, hidden_size)
        return {
            "last_hidden_state": hidden_states.tolist(),
            "cls_embedding": hidden_states[0].tolist(),
            "mean_patch_embedding": hidden_states[1:].mean(dim=0).tolist(),
            "shape": list(hidden_states.shape),
        }
