"""
The `"mae-reconstruction"` pipeline: mask an image, let the masked autoencoder reconstruct it, and return the masked
input, the reconstruction and the re-composited image (visible patches from the input, masked ones predicted).

This file is Hub code: a publishable folder ships it beside the model files, and its `config.json` names it under
`custom_pipelines`, so that

    pipeline("mae-reconstruction", model="namespace/name", revision=COMMIT, trust_remote_code=True)

works where the `dilated_vit_mae` package is not installed. It therefore imports only torch, numpy, PIL and
transformers. With the package installed, build it directly:
`DilatedViTMAEReconstructionPipeline(model=model, image_processor=processor)`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import Pipeline
from transformers.image_utils import load_image


class DilatedViTMAEReconstructionPipeline(Pipeline):
    r"""
    Masked-image reconstruction with a `DilatedViTMAEForPreTraining` (or any model with ViTMAE's pre-training outputs
    and `logits_to_pixel_values` / `mask_to_pixels`).

    Call it with one image (a `PIL.Image.Image`, a local path, a URL or a base64 string) or a list of them, and:

        mask_ratio (`float`, *optional*, defaults to `config.mask_ratio`):
            Fraction of patches removed, in `[0, 1)`.
        seed (`int`, *optional*):
            Seed of the random mask: the same image, mask ratio and seed give the same mask and outputs on every
            device. Without one, a seed is drawn and returned, so that any result can be reproduced.
        timeout (`float`, *optional*):
            Timeout in seconds for fetching an image from a URL.

    Each image gives a `dict` with:

        - `"original"`: the image as the model sees it (resized and cropped by the image processor), `PIL.Image.Image`.
        - `"masked"`: the same with the removed patches blacked out.
        - `"reconstruction"`: the model's prediction of every patch.
        - `"recomposited"`: visible patches from `"original"`, removed ones from `"reconstruction"`.
        - `"mask"`: `PIL.Image.Image` in mode `"L"`, 255 on removed pixels.
        - `"mask_ratio"` (`float`) and `"seed"` (`int`): what was used.

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

    def _sanitize_parameters(
        self, mask_ratio: float | None = None, seed: int | None = None, timeout: float | None = None, **kwargs
    ):
        if kwargs:
            raise TypeError(
                f"Unexpected arguments {sorted(kwargs)}; the mae-reconstruction pipeline takes `mask_ratio`, `seed` "
                "and `timeout`."
            )
        preprocess_params: dict[str, Any] = {}
        if mask_ratio is not None:
            if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 <= mask_ratio < 1.0:
                raise ValueError(f"`mask_ratio` must be a number in [0, 1), got {mask_ratio!r}.")
            preprocess_params["mask_ratio"] = float(mask_ratio)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
            preprocess_params["seed"] = int(seed)
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        return preprocess_params, {}, {}

    def __call__(self, images, **kwargs):
        """Reconstruct one image (a `dict` of outputs) or a list of images (a list of them); see the class docstring."""
        return super().__call__(images, **kwargs)

    def preprocess(
        self, image, mask_ratio: float | None = None, seed: int | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        image = load_image(image, timeout=timeout)
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
        return {
            "original": PIL.Image.fromarray(original),
            "masked": PIL.Image.fromarray(masked),
            "reconstruction": PIL.Image.fromarray(reconstruction),
            "recomposited": PIL.Image.fromarray(recomposited),
            "mask": PIL.Image.fromarray((removed * 255).astype(np.uint8)),
            "mask_ratio": model_outputs["mask_ratio"],
            "seed": model_outputs["seed"],
        }


__all__ = ["DilatedViTMAEReconstructionPipeline"]
