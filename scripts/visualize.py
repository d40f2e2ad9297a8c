#!/usr/bin/env python
"""Write a grid of masked reconstructions as a PNG: one row per image, original | masked | reconstruction |
re-composited, for any folder of images.

    python scripts/visualize.py --model outputs/dilated-vit-mae-sample --images data/celeba_sample/img_align_celeba \\
        --output grid.png --mask_ratio 0.75 --seed 0 --max_images 8

`--model` is a saved folder or a Hub id (with the package installed, no remote code runs). Every image gets the same
mask for a given `--seed` (one noise draw per image, seeded identically), so rows are comparable; images are taken in
sorted file-name order.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

import PIL.Image  # noqa: E402

from dilated_vit_mae import DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor  # noqa: E402
from dilated_vit_mae.evaluation.reconstruction import labelled_grid  # noqa: E402
from dilated_vit_mae.pipeline_dilated_vit_mae import DilatedViTMAEReconstructionPipeline  # noqa: E402
from dilated_vit_mae.train.lifecycle import fraction, positive_int  # noqa: E402


logger = logging.getLogger("visualize")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
COLUMNS = ("original", "masked", "reconstruction", "recomposited")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # no abbreviations: `--tok` for `--token` would slip past redaction, and a new flag could change what one means
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="A saved model folder or a Hub id.")
    parser.add_argument("--revision", help="Commit, branch or tag of a Hub model.")
    parser.add_argument("--images", required=True, nargs="+", help="Image files and/or folders of images.")
    parser.add_argument("--output", required=True, help="The PNG to write.")
    parser.add_argument("--mask_ratio", type=fraction, help="Fraction of patches removed (default: the model's).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the masks (default 0).")
    parser.add_argument("--max_images", type=positive_int, default=8, help="At most this many rows (default 8).")
    parser.add_argument(
        "--min_cell_size", type=int, default=128, help="Upscale small images to at least this many pixels."
    )
    return parser.parse_args(argv)


def find_images(sources: Sequence[str | Path], max_images: int | None = None) -> list[Path]:
    """Image files from files and folders (a folder's images in sorted order, not recursive), at most `max_images`."""
    images = []
    for source in map(Path, sources):
        if source.is_dir():
            images += sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file():
            images.append(source)
        else:
            raise FileNotFoundError(f"{source} is neither an image file nor a folder.")
    if not images:
        raise FileNotFoundError(f"No image ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, sources))}.")
    return images[:max_images] if max_images is not None else images


def main(args: argparse.Namespace) -> Path:
    paths = find_images(args.images, args.max_images)
    model = DilatedViTMAEForPreTraining.from_pretrained(args.model, revision=args.revision).eval()
    processor = DilatedViTMAEImageProcessor.from_pretrained(args.model, revision=args.revision)
    reconstruct = DilatedViTMAEReconstructionPipeline(model=model, image_processor=processor)
    results = []
    for path in paths:
        with PIL.Image.open(path) as image:
            image.load()
            results.append(reconstruct(image, mask_ratio=args.mask_ratio, seed=args.seed))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(results, COLUMNS, args.min_cell_size).save(output, format="PNG")
    logger.info(
        f"wrote {output}: {len(results)} images, mask ratio {results[0]['mask_ratio']}, seed {args.seed} "
        f"(columns: {', '.join(COLUMNS)})"
    )
    return output


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
