#!/usr/bin/env python
"""Export an encoder's whole-image features to ONNX, checked against PyTorch with onnxruntime.

    python scripts/export_onnx.py --model_name_or_path outputs/dilated-vit-mae-sample --output encoder.onnx
    python scripts/export_onnx.py --model_name_or_path facebook/vit-mae-base --output vit-mae-base.onnx

The graph: `pixel_values` (batch, channels, height, width), normalised as the model's image processor does, to
`last_hidden_state` (batch, 1 + patches, hidden): the CLS token then every patch token in image order, nothing masked.
The batch axis is dynamic. After the export the file is run with onnxruntime at `--check_batch_sizes` (1 and 3) and
compared with PyTorch; a largest absolute difference above `--atol` (1e-4) removes the file and fails. The image
processor's mean and std and the output's layout are stored in the file's metadata. Prints the report as JSON.

Needs `pip install "dilated-vit-mae[onnx]"` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from dilated_vit_mae.publish.export import DEFAULT_ATOL, DEFAULT_OPSET, export_encoder_onnx  # noqa: E402
from dilated_vit_mae.train.lifecycle import check_model_folder, positive_float, positive_int, run_cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model_name_or_path", required=True, help="Our model folder, or a ViTMAE checkpoint.")
    parser.add_argument("--output", required=True, help="The .onnx file to write.")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET)
    parser.add_argument("--check_batch_sizes", type=positive_int, nargs="+", default=[1, 3])
    parser.add_argument("--atol", type=positive_float, default=DEFAULT_ATOL, help="Largest difference to PyTorch.")
    parser.add_argument("--revision")
    parser.add_argument("--token", help="Hub token for a private model.")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    if not args.output.endswith(".onnx"):
        parser.error(f"--output must be a .onnx file, got {args.output!r}.")
    return args


def main(args: argparse.Namespace) -> dict:
    check_model_folder(args.model_name_or_path)
    report = export_encoder_onnx(
        args.model_name_or_path, args.output, opset=args.opset, check_batch_sizes=args.check_batch_sizes,
        atol=args.atol, revision=args.revision, token=args.token, trust_remote_code=args.trust_remote_code,
    )  # fmt: skip
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_cli(main, parse_args())
