#!/usr/bin/env python
"""Publish a training run's output folder to the Hugging Face Hub.

    python scripts/push_to_hub.py outputs/dilated-vit-mae-sample --repo_id your-name/dilated-vit-mae --dry_run
    python scripts/push_to_hub.py outputs/dilated-vit-mae-sample --repo_id your-name/dilated-vit-mae --private

What is uploaded is laid out in a temporary copy: only the published files, each by its exact name (model, processor,
code, pipeline, handler, card, results, and the card images the run recorded), never a symbolic link, everything else
listed as left out (checkpoints, tracker logs, per-epoch grids, anything planted there, even beside published files); tokens redacted from the results and the card; the card rendered for
--repo_id, and a folder that is not publishable yet completed there (reconstruction pipeline, endpoint
handler, model card: what `scripts/run_mae.py` writes at the end of every run). Exactly that copy is checked in a clean
Python process where this package cannot be imported: the model, its image processor, the `mae-reconstruction`
pipeline and `handler.py` must load with `trust_remote_code=True` and run, and the card must parse. A folder that fails
is refused before any call to the Hub. After the upload, the card is committed again with its code snippets pinned to
the upload commit. Local files are never modified or deleted, whether the upload succeeds or not.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from dilated_vit_mae.publish.hub import (  # noqa: E402
    PUBLISHING_FILES,
    FolderCheckError,
    check_folder,
    describe_left_out,
    is_classifier_folder,
    plan_upload,
    push_folder_to_hub,
    stage_folder,
)


logger = logging.getLogger("push_to_hub")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # no abbreviations: `--tok` for `--token` would slip past redaction, and a new flag could change what one means
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("output_dir", help="A folder saved by scripts/run_mae.py (model, image processor, card).")
    parser.add_argument("--repo_id", required=True, help="namespace/name on the Hub.")
    parser.add_argument("--private", action="store_true", help="Create the repository private.")
    parser.add_argument("--revision", help="Branch to upload to (created if missing); default main.")
    parser.add_argument("--commit_message", default="Upload DilatedViTMAE")
    parser.add_argument("--token", help="A write token; defaults to the logged-in one (`hf auth login`).")
    parser.add_argument(
        "--dry_run", action="store_true", help="Check the folder and list what would be uploaded; upload nothing."
    )
    args = parser.parse_args(argv)
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        parser.error(f"--repo_id must be namespace/name, got {args.repo_id!r}.")
    if not (Path(args.output_dir) / "config.json").is_file():
        parser.error(f"{args.output_dir} has no config.json: it is not a saved model folder.")
    return args


def _human_size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GB"


def print_left_out(left_out: dict[str, str]) -> None:
    if left_out:
        print(f"Left out ({len(left_out)}, not uploaded):")
        for line in describe_left_out(left_out):
            print(f"  {line}")


def dry_run(folder: Path, repo_id: str) -> int:
    """List and check what would be uploaded; returns the exit status (1 when the folder would be refused)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f".{folder.name}-dry-run-", dir=folder.resolve().parent) as staging:
        try:
            files = stage_folder(folder, staging, repo_id=repo_id)
        except FolderCheckError as error:
            print(f"REFUSED: {error}")
            return 1
        total = 0
        print(f"Would upload {len(files)} files from {folder} to https://huggingface.co/{repo_id}:")
        for name in files:
            size = (Path(staging) / name).stat().st_size
            total += size
            print(f"  {name}  ({_human_size(size)})")
        print(f"  total {_human_size(total)}")
        print_left_out(plan_upload(folder).left_out)
        try:
            report = check_folder(staging)
        except FolderCheckError as error:
            print(f"REFUSED: {error}")
            return 1
        print(f"Check passed (loads with trust_remote_code without the package): {report}")
    print("Dry run: nothing was uploaded.")
    return 0


def main(args: argparse.Namespace, api=None) -> int:
    folder = Path(args.output_dir)
    missing = [name for name in PUBLISHING_FILES if not (folder / name).is_file()]
    if missing and not is_classifier_folder(folder):  # a classifier is published as it is, with its own card
        logger.info(
            f"{folder} lacks {', '.join(missing)}: they are added to the uploaded copy (the folder is left as it is)"
        )
    if args.dry_run:
        return dry_run(folder, args.repo_id)
    try:
        result = push_folder_to_hub(
            folder,
            repo_id=args.repo_id,
            token=args.token,
            private=args.private,
            commit_message=args.commit_message,
            revision=args.revision,
            api=api,
        )
    except FolderCheckError as error:
        logger.error(str(error))
        return 1
    print(f"Uploaded {len(result.files)} files of {folder} to https://huggingface.co/{args.repo_id}: {result.url}")
    print_left_out(result.left_out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    sys.exit(main(parse_args()))
