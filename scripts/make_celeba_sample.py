"""
Regenerate `data/celeba_sample/`: 56 license-clean JPEGs in the raw CelebA layout, with placeholder annotations.

CelebA cannot be downloaded on the build machines and must not be redistributed, so the sample is cut from
public-domain / CC0 photographs bundled with scikit-image (see `data/celeba_sample/README.md`). The output is
deterministic: the same seed, scikit-image data and Pillow/libjpeg build give the same bytes.

    python scripts/make_celeba_sample.py                # writes data/celeba_sample/
    python scripts/make_celeba_sample.py --output_dir /tmp/sample
"""

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import skimage.data

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing the package

from dilated_vit_mae.data import CELEBA_ATTRIBUTE_NAMES  # noqa: E402

SEED = 0
WIDTH, HEIGHT = 178, 218  # img_align_celeba
SPLIT_COUNTS = {0: 40, 1: 8, 2: 8}  # list_eval_partition.txt codes: train / valid / test
JPEG_QUALITY = 90
GRID_ROWS, GRID_COLS = 8, 5  # 40 cells, one per attribute


@dataclass(frozen=True)
class SourcePhoto:
    """A bundled photo, the face box to crop around `(top, left, size)` in its pixels, and how many crops to cut."""

    name: str  # scikit-image loader
    identity: int  # written to identity_CelebA.txt
    face: tuple[int, int, int]
    num_crops: int
    scale_range: tuple[float, float]  # crop width / face size
    license: str


# Face boxes found with scikit-image's LBP frontal-face cascade (astronaut, camera) and by eye (the cat, which the
# cascade does not find); fixed here so the sample does not depend on the detector's version.
SOURCES = (
    SourcePhoto("astronaut", 1, (62, 187, 97), 28, (1.3, 2.2), "public domain (NASA)"),
    SourcePhoto("camera", 2, (124, 207, 56), 16, (1.6, 2.6), "CC0 (Lav Varshney)"),
    SourcePhoto("chelsea", 3, (70, 130, 240), 12, (0.75, 1.0), "CC0 (Stefan van der Walt)"),
)


def make_crop(photo: PIL.Image.Image, source: SourcePhoto, rng: np.random.Generator) -> PIL.Image.Image:
    """A CelebA-like 178x218 crop around the face: random scale, shift, tilt, flip and exposure."""
    top, left, size = source.face
    center_x, center_y = left + size / 2, top + size / 2
    crop_width = size * rng.uniform(*source.scale_range)
    crop_height = crop_width * HEIGHT / WIDTH
    # CelebA centres the face with the eyes a little above the middle: move the box up a bit, plus jitter.
    center_x += rng.uniform(-0.12, 0.12) * size
    center_y += rng.uniform(-0.25, -0.05) * size
    # Keep the box inside the photo (shrink if needed, then shift).
    scale = min(1.0, photo.width / crop_width, photo.height / crop_height)
    crop_width, crop_height = crop_width * scale, crop_height * scale
    x0 = float(np.clip(center_x - crop_width / 2, 0, photo.width - crop_width))
    y0 = float(np.clip(center_y - crop_height / 2, 0, photo.height - crop_height))
    angle = float(rng.uniform(-8.0, 8.0))
    fill = tuple(int(v) for v in np.asarray(photo).reshape(-1, 3).mean(axis=0))
    tilted = photo.rotate(angle, resample=PIL.Image.BICUBIC, center=(center_x, center_y), fillcolor=fill)
    crop = tilted.resize((WIDTH, HEIGHT), PIL.Image.LANCZOS, box=(x0, y0, x0 + crop_width, y0 + crop_height))
    if rng.random() < 0.5:
        crop = crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    crop = PIL.ImageEnhance.Brightness(crop).enhance(float(rng.uniform(0.85, 1.15)))
    return PIL.ImageEnhance.Contrast(crop).enhance(float(rng.uniform(0.85, 1.15)))


def placeholder_attributes(crop: PIL.Image.Image) -> list[int]:
    """
    Attribute k is 1 when cell k (row-major) of an 8x5 grid over the greyscale crop is brighter than the whole crop,
    else -1. A measurable, deterministic stand-in for labels, NOT CelebA ground truth.
    """
    grey = np.asarray(crop.convert("L"), dtype=np.float64)
    row_edges = np.linspace(0, HEIGHT, GRID_ROWS + 1).round().astype(int)
    col_edges = np.linspace(0, WIDTH, GRID_COLS + 1).round().astype(int)
    cells = [
        grey[row_edges[r] : row_edges[r + 1], col_edges[c] : col_edges[c + 1]].mean()
        for r in range(GRID_ROWS)
        for c in range(GRID_COLS)
    ]
    return [1 if cell > grey.mean() else -1 for cell in cells]


def main(output_dir: Path) -> None:
    rng = np.random.default_rng(SEED)
    crops, identities = [], []
    for source in SOURCES:
        photo = PIL.Image.fromarray(getattr(skimage.data, source.name)()).convert("RGB")
        for _ in range(source.num_crops):
            crops.append(make_crop(photo, source, rng))
            identities.append(source.identity)
    num_images = sum(SPLIT_COUNTS.values())
    if len(crops) != num_images:
        raise ValueError(f"The sources give {len(crops)} crops but the partition needs {num_images}.")

    # Like CelebA, files are numbered train first, then valid, then test; shuffle so each split mixes the sources.
    order = rng.permutation(num_images)
    partition = [code for code, count in SPLIT_COUNTS.items() for _ in range(count)]

    image_dir = output_dir / "img_align_celeba"
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("*.jpg"):
        stale.unlink()
    partition_lines, identity_lines, attribute_lines = [], [], []
    for position, crop_index in enumerate(order):
        file_name = f"{position + 1:06d}.jpg"
        crop = crops[crop_index]
        crop.save(image_dir / file_name, "JPEG", quality=JPEG_QUALITY)
        partition_lines.append(f"{file_name} {partition[position]}")
        identity_lines.append(f"{file_name} {identities[crop_index]}")
        # Same spacing as the original: values right-aligned in 2 characters, so positives follow two spaces.
        attribute_lines.append(f"{file_name} " + " ".join(f"{v:2d}" for v in placeholder_attributes(crop)))

    (output_dir / "list_eval_partition.txt").write_text("\n".join(partition_lines) + "\n")
    (output_dir / "identity_CelebA.txt").write_text("\n".join(identity_lines) + "\n")
    (output_dir / "list_attr_celeba.txt").write_text(
        f"{num_images}\n" + " ".join(CELEBA_ATTRIBUTE_NAMES) + " \n" + "\n".join(attribute_lines) + "\n"
    )

    digest = hashlib.sha256()
    for path in sorted(output_dir.rglob("*")):
        if path.is_file() and path.name != "README.md":
            digest.update(path.relative_to(output_dir).as_posix().encode() + path.read_bytes())
    total = sum(path.stat().st_size for path in output_dir.rglob("*") if path.is_file())
    print(f"Wrote {num_images} images to {output_dir} ({total / 1024:.0f} KiB), sha256 {digest.hexdigest()[:16]}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=REPO_ROOT / "data" / "celeba_sample")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args().output_dir)
