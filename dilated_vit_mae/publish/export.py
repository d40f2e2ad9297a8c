"""ONNX export of the encoder's whole-image features, checked against PyTorch with onnxruntime.

The exported graph maps `pixel_values` `(batch, num_channels, height, width)`, normalised by the model's image
processor, to `last_hidden_state` `(batch, 1 + num_patches, hidden_size)`: the CLS token then every patch token in
image order (row-major), after the encoder's final layer norm, with nothing masked (`mask_ratio=0`). The batch axis
is dynamic; the image size is the config's. Any folder `AutoModel` loads as our encoder (a `scripts/run_mae.py` or
`scripts/run_finetune.py` output) or a transformers ViTMAE checkpoint exports the same way.

Needs the `onnx` extra (`pip install "dilated-vit-mae[onnx]"`: onnx, onnxruntime and onnxscript, which
`torch.onnx.export(dynamo=True)` uses). Not part of the three model files (the Hub never runs this).

```python
>>> from dilated_vit_mae.publish.export import export_encoder_onnx
>>> report = export_encoder_onnx("outputs/dilated-vit-mae-sample", "encoder.onnx")  # doctest: +SKIP
>>> report["max_abs_difference"]  # doctest: +SKIP
{'1': 9.5e-07, '3': 1.1e-06}
```
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..modeling_dilated_vit_mae import to_2tuple
from ..evaluation.probe import load_frozen_encoder
from ..train.lifecycle import stage_and_swap, tensor_bytes


logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_ATOL", "DEFAULT_OPSET", "EncoderFeatures", "check_onnx_export", "export_encoder_onnx"]

DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4
INPUT_NAME, OUTPUT_NAME = "pixel_values", "last_hidden_state"


class EncoderFeatures(nn.Module):
    """
    The graph that is exported: `pixel_values` -> `last_hidden_state` (CLS + every patch token, in image order) of a
    frozen encoder with `config.mask_ratio == 0`. The masking scores are the patch indices, so that transformers'
    ViTMAE, which would otherwise shuffle the tokens by random noise even with nothing masked, keeps image order and
    the graph has no random operator.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        if encoder.config.mask_ratio != 0:
            raise ValueError(
                f"The encoder masks {encoder.config.mask_ratio!r} of the patches; set `config.mask_ratio = 0.0` (as "
                "dilated_vit_mae.evaluation.probe.load_frozen_encoder does) to export whole-image features."
            )
        if getattr(encoder, "pooled_norm", None) is not None:
            raise ValueError(
                "This encoder is a global-pool classifier's (classifier_pooling='mean'): its last_hidden_state has no "
                "final layer norm, and its features are fc_norm of the patch tokens' mean. Export the pre-training "
                "folder it was fine-tuned from, or the classifier with a classification exporter."
            )
        self.encoder = encoder
        patch, image = to_2tuple(encoder.config.patch_size), to_2tuple(encoder.config.image_size)
        self.image_size = image
        self.num_patches = (image[0] // patch[0]) * (image[1] // patch[1])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        noise = torch.arange(self.num_patches, device=pixel_values.device, dtype=torch.float32)
        noise = noise.unsqueeze(0).expand(pixel_values.shape[0], -1)  # (B, L): keep image order
        return self.encoder(pixel_values=pixel_values, noise=noise).last_hidden_state


def export_encoder_onnx(
    model_name_or_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    check_batch_sizes: Sequence[int] = (1, 3),
    atol: float = DEFAULT_ATOL,
    revision: str | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """
    Export the whole-image features of `model_name_or_path`'s encoder to `output` (one `.onnx` file, weights inside),
    then run it with onnxruntime on random inputs of each of `check_batch_sizes` and compare with PyTorch.

    The file is written and checked in a staging folder beside `output`, then moved into place: a file already at
    `output` stays as it was until then, and nothing partial is ever left there. Raises `ValueError` when the largest
    absolute difference exceeds `atol`, and `DiskWriteError` when the disk is full (in both cases nothing is kept).

    Returns:
        A report: `output`, `opset`, `input` / `output` names and shapes (`"batch"` for the dynamic axis), the model's
        image size and channels, `max_abs_difference` per checked batch size, and `atol`.
    """
    encoder, image_processor = load_frozen_encoder(
        model_name_or_path, revision=revision, token=token, trust_remote_code=trust_remote_code
    )
    module = EncoderFeatures(encoder.float()).eval()
    num_channels, (height, width) = encoder.config.num_channels, module.image_size
    output = Path(output)
    example = torch.randn(2, num_channels, height, width, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    differences: dict[int, float] = {}

    def write_checked_export(staging: Path) -> None:
        staged = staging / output.name
        with torch.no_grad():
            torch.onnx.export(
                module, (example,), str(staged), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"pixel_values": {0: batch}}, opset_version=opset, dynamo=True, external_data=False,
                verbose=False,
            )  # fmt: skip
        _add_metadata(staged, encoder, image_processor, model_name_or_path)
        differences.update(check_onnx_export(staged, module, check_batch_sizes))
        worst = max(differences.values())
        if not worst <= atol:
            raise ValueError(
                f"The ONNX graph differs from PyTorch by up to {worst:.3g} (> atol {atol:g}) at batch sizes "
                f"{list(check_batch_sizes)}; nothing was kept. Try another --opset, or report the model."
            )

    stage_and_swap(
        output.parent, write_checked_export, marker=output.name, expected_bytes=tensor_bytes(module.state_dict()),
        what="the ONNX file", advice="Free some space, or give an --output on a larger disk, and run again.",
    )  # fmt: skip
    return {
        "output": str(output),
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", num_channels, height, width]},
        "output_tensor": {"name": OUTPUT_NAME, "shape": ["batch", 1 + module.num_patches, encoder.config.hidden_size]},
        "max_abs_difference": {str(size): value for size, value in differences.items()},
        "atol": atol,
    }


@torch.no_grad()
def check_onnx_export(onnx_path: str | os.PathLike[str], module: nn.Module, batch_sizes: Sequence[int]) -> dict[int, float]:
    """The largest absolute difference between onnxruntime and `module` on seeded random inputs, per batch size."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape[1:]  # (C, H, W); the batch axis is symbolic
    differences = {}
    for batch_size in batch_sizes:
        pixel_values = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(batch_size))
        (onnx_output,) = session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values.numpy()})
        reference = module(pixel_values).numpy()
        if onnx_output.shape != reference.shape:
            raise ValueError(f"ONNX output shape {onnx_output.shape} != PyTorch {reference.shape} at batch {batch_size}.")
        differences[batch_size] = float(np.abs(onnx_output - reference).max())
    return differences


def _add_metadata(path: Path, encoder: nn.Module, image_processor, model_name_or_path) -> None:
    """What a user of the file needs to feed it: the preprocessing, the layout of the output, where it came from (a
    local folder by its name only)."""
    import onnx

    model = onnx.load(str(path))
    source = Path(str(model_name_or_path)).expanduser()
    entries = {
        "source": source.name if source.exists() else str(model_name_or_path),
        "model_type": encoder.config.model_type,
        "output": "last_hidden_state: CLS token, then every patch token in row-major image order; mask_ratio 0",
        "image_mean": str(list(getattr(image_processor, "image_mean", []) or [])),
        "image_std": str(list(getattr(image_processor, "image_std", []) or [])),
        "dilation_rates": str(list(getattr(encoder.config, "dilation_rates", ()))),
    }
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
