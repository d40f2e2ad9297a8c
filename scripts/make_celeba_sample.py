"""
Regenerate `data/celeba_sample/`: 56 license-clean JPEGs in the raw CelebA layout, with placeholder annotations.

CelebA cannot be downloaded on the build machines and must not be redistributed, so the sample is cut from
public-domain / CC0 photographs bundled with scikit-image (see `data/celeba_sample/README.md`). The output is
deterministic: the same seed, scikit-image data and Pillow/libjpeg build give the same bytes.

    python scripts/make_celeba_sample.py                # writes data/celeba_sample/
    python scripts/make_celeba_sample.py --output_dir /tmp/sample

`--full_size` builds instead a stand-in for the whole raw download, to try a pipeline at CelebA's scale: 202,599 files
named as CelebA's (`--num_images` fewer), split as its official partition, with `list_eval_partition.txt`,
`list_attr_celeba.txt` and `identity_CelebA.txt` in CelebA's exact formats. Its images are the sample's 56 crops, copied
once; every other file is a hard link to one of them (seconds, and ~2 MB of disk besides the 26 MB attribute file):

    python scripts/make_celeba_sample.py --full_size --output_dir /tmp/celeba-full
"""

import argparse
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageEnhance

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing the package

from dilated_vit_mae.data.loading import CELEBA_ATTRIBUTE_NAMES, CELEBA_SAMPLE_DIR  # noqa: E402

SEED = 0
WIDTH, HEIGHT = 178, 218  # img_align_celeba
SPLIT_COUNTS = {0: 40, 1: 8, 2: 8}  # list_eval_partition.txt codes: train / valid / test
JPEG_QUALITY = 90
# CelebA's official partition: images 1-162,770 train, 162,771-182,637 valid, 182,638-202,599 test
CELEBA_SPLIT_COUNTS = {0: 162_770, 1: 19_867, 2: 19_962}
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
    import skimage.data  # only here: the stand-in below needs no scikit-image

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


def standin_split_counts(num_images: int) -> dict[int, int]:
    """CelebA's partition (train / valid / test counts), scaled to `num_images` (each held-out split at least 1)."""
    total = sum(CELEBA_SPLIT_COUNTS.values())
    valid, test = (max(1, round(num_images * CELEBA_SPLIT_COUNTS[code] / total)) for code in (1, 2))
    if num_images - valid - test < 1:
        raise ValueError(f"A stand-in needs at least 3 images (one per split), got {num_images}.")
    return {0: num_images - valid - test, 1: valid, 2: test}


def make_full_size_standin(
    output_dir: Path, num_images: int = sum(CELEBA_SPLIT_COUNTS.values()), sample_dir: Path = CELEBA_SAMPLE_DIR
) -> Path:
    """
    A stand-in for the raw CelebA download in `output_dir` (which must not exist or be empty): `num_images` files
    `000001.jpg`, ... in `img_align_celeba/`, numbered train, then valid, then test as CelebA's partition (scaled), and
    the three annotation files in CelebA's formats. File `i` is the sample's image `(i - 1) % 56 + 1` with that image's
    attribute row and identity: the sample's images are copied once, the others are hard links to the copies (copies
    where the file system has no hard links). Returns `output_dir`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty: remove it first, or pick another --output_dir.")
    sources = sorted((sample_dir / "img_align_celeba").glob("*.jpg"))
    attribute_lines = (sample_dir / "list_attr_celeba.txt").read_text().splitlines()
    # the values of each source row with CelebA's spacing, and each source's identity, by file name
    values = dict(line.split(" ", 1) for line in attribute_lines[2:] if line.strip())
    source_identities = (sample_dir / "identity_CelebA.txt").read_text().splitlines()
    identities = dict(line.split() for line in source_identities if line.strip())
    counts = standin_split_counts(num_images)
    image_dir = output_dir / "img_align_celeba"
    image_dir.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(num_images)]
    copies = []
    for name, source in zip(names, sources):
        shutil.copyfile(source, image_dir / name)
        copies.append((image_dir / name, source.name))
    partition_lines, identity_lines, value_lines = [], [], []
    codes = [code for code, count in counts.items() for _ in range(count)]
    for index, (name, code) in enumerate(zip(names, codes)):
        copy, source = copies[index % len(copies)]
        if index >= len(copies):
            try:
                os.link(copy, image_dir / name)
            except OSError:  # no hard links here (another file system type): a plain copy
                shutil.copyfile(copy, image_dir / name)
        partition_lines.append(f"{name} {code}\n")
        identity_lines.append(f"{name} {identities[source]}\n")
        value_lines.append(f"{name} {values[source]}\n")
    (output_dir / "list_eval_partition.txt").write_text("".join(partition_lines))
    (output_dir / "identity_CelebA.txt").write_text("".join(identity_lines))
    (output_dir / "list_attr_celeba.txt").write_text(
        f"{num_images}\n{attribute_lines[1]}\n" + "".join(value_lines)
    )
    return output_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=CELEBA_SAMPLE_DIR)
    parser.add_argument("--full_size", action="store_true", help="Build the hard-linked full-size stand-in instead.")
    parser.add_argument(
        "--num_images", type=int, default=sum(CELEBA_SPLIT_COUNTS.values()),
        help="With --full_size: how many files (default CelebA's 202,599; fewer are split in CelebA's proportions).",
    )  # fmt: skip
    args = parser.parse_args()
    if args.full_size and args.output_dir == CELEBA_SAMPLE_DIR:
        parser.error("--full_size needs an --output_dir (not the shipped sample's folder), e.g. /tmp/celeba-full.")
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.full_size:
        try:
            make_full_size_standin(args.output_dir, args.num_images)
        except (FileExistsError, ValueError) as error:
            sys.exit(f"make_celeba_sample.py: {error}")
        counts = standin_split_counts(args.num_images)
        print(f"Wrote a {args.num_images:,}-image CelebA stand-in to {args.output_dir} (train/valid/test {counts})")
    else:
        main(args.output_dir)
