"""Load CelebA (a Hub copy, the raw download, or any image folder) as a `datasets.DatasetDict`.

Every source comes back with the same shape: splits `train` / `validation` / `test`, an `image` column
(`datasets.Image()`, decoded lazily), and, where the source has them, `celeb_id` (int64) and the 40 CelebA
attributes (bool) named as in `flwrlabs/celeba`.

```python
>>> from dilated_vit_mae.data.loading import load_celeba
>>> celeba = load_celeba("data/celeba_sample")  # the raw-layout sample shipped with the repository
>>> {split: celeba[split].num_rows for split in celeba}
{'train': 40, 'validation': 8, 'test': 8}
```
"""

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, NamedTuple

import datasets
import numpy as np
import pandas as pd
import PIL
import PIL.Image
import pyarrow as pa
from tqdm.auto import tqdm

from .fingerprint import default_cache_dir, image_files_fingerprint, write_json_atomically

logger = logging.getLogger(__name__)

__all__ = [
    "CELEBA_ATTRIBUTE_NAMES",
    "CELEBA_SAMPLE_DIR",
    "SPLIT_NAMES",
    "find_bad_images",
    "load_celeba",
]

# The 40 binary attributes, in the order of `list_attr_celeba.txt` and of the `flwrlabs/celeba` columns.
CELEBA_ATTRIBUTE_NAMES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")

# The sample in raw CelebA layout that ships with a source checkout (not with an installed wheel).
CELEBA_SAMPLE_DIR: Path = Path(__file__).resolve().parents[2] / "data" / "celeba_sample"

# `list_eval_partition.txt`: 0 = train, 1 = valid, 2 = test
_PARTITION_TO_SPLIT = {0: "train", 1: "validation", 2: "test"}
_SPLIT_ALIASES = {"valid": "validation", "val": "validation"}
_HUB_DEFAULT_CONFIGS = {"flwrlabs/celeba": "img_align+identity+attr"}
# The official download keeps the text files in `Anno/` and `Eval/` and the images in `Img/`; torchvision
# and Kaggle put them all at the top level (Kaggle as .csv files, with the images one folder deeper).
_ANNOTATION_SUBDIRS = ("", "Anno", "Eval")
_IMAGE_DIR_CANDIDATES = (
    ("img_align_celeba", "img_align_celeba"),
    ("img_align_celeba",),
    ("Img", "img_align_celeba"),
)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_NUM_NAMED = 5  # how many offending file names an error or warning lists

VerifyImages = bool | Literal["header", "decode"] | None


def load_celeba(
    source: str | os.PathLike[str],
    *,
    config_name: str | None = None,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    streaming: bool = False,
    on_bad_image: Literal["raise", "skip"] = "raise",
    verify_images: VerifyImages = None,
    num_workers: int | None = None,
    missing_partition: Literal["raise", "carve"] = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    check_record_dir: str | os.PathLike[str] | Literal[False] | None = None,
    progress: bool = True,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """
    Load CelebA as a `datasets.DatasetDict` with splits `train`, `validation` and `test`.

    The columns are `image` (`datasets.Image()`, decoded lazily on access) and, where the source has them,
    `celeb_id` (int64) and the 40 attributes of [`CELEBA_ATTRIBUTE_NAMES`] (bool), named as in `flwrlabs/celeba`.

    `source` is one of:

    - **a raw CelebA download**: a directory with `img_align_celeba/*.jpg` and `list_eval_partition.txt`, and
      optionally `list_attr_celeba.txt` and `identity_CelebA.txt` (also found in `Anno/` / `Eval/` subfolders, as
      `.csv` files as in the Kaggle copy, and with the Kaggle zip's nested `img_align_celeba/img_align_celeba/`).
      The official partition gives the splits; the partition file is the index, so a trimmed partition file loads
      a subset. Every file is checked up front (see `verify_images`) so that a bad file fails here, not inside a
      `DataLoader` worker hours later.
    - **any other local directory**: loaded with `datasets.load_dataset("imagefolder", data_dir=source)` (which reads
      a `metadata.csv` and `train/` / `test/` subfolders), then normalised like a Hub dataset.
    - **a Hub dataset id**: `flwrlabs/celeba` (config `img_align+identity+attr` by default), image-only copies such as
      `nielsr/CelebA-faces` or `tglcourse/CelebA-faces-cropped-128`, or any other.

    Split normalisation (Hub and image folders): `valid` / `val` are renamed to `validation`; a dataset with a single
    split uses it as the pool; missing `test` and `validation` splits are carved out of `train` with a seeded
    permutation: first `test_fraction` of the pool, then `validation_fraction` of it, each at least one example when
    its fraction is positive. Carving is deterministic for a given `seed` and data, the carved splits are disjoint,
    keep the source order, and the test split does not move when `validation_fraction` changes. Splits other than
    these three are kept unchanged.

    Args:
        source (`str` or `os.PathLike`):
            A local directory (raw CelebA layout or an image folder) or a Hub dataset id. A path that looks local
            (absolute, `./`, `~`, more than one `/`) but does not exist raises `FileNotFoundError`.
        config_name (`str`, *optional*):
            Hub dataset configuration; defaults to `img_align+identity+attr` for `flwrlabs/celeba`.
        validation_fraction (`float`, *optional*, defaults to 0.05):
            Fraction of the pool carved out as `validation` when the source has no validation split.
        test_fraction (`float`, *optional*, defaults to 0.05):
            Fraction of the pool carved out as `test` when the source has no test split.
        seed (`int`, *optional*, defaults to 0):
            Seed of the permutation used to carve missing splits.
        streaming (`bool`, *optional*, defaults to `False`):
            Return an `IterableDatasetDict`. Hub sources are streamed through `datasets.load_dataset(...,
            streaming=True)` and must have explicit `train` / `validation` / `test` splits (after renaming): a
            stream's length is unknown and a seeded buffer shuffle would leak examples between splits once
            `set_epoch` reshuffles `train`, so carving a stream raises `ValueError`. Local sources are built (and
            checked, and carved) as usual, then converted with `Dataset.to_iterable_dataset`.
        on_bad_image (`"raise"` or `"skip"`, *optional*, defaults to `"raise"`):
            What to do with an image that cannot be read: raise a `ValueError` naming it, or drop it and log a
            warning with the number dropped and the first few names.
        verify_images (`bool`, `"header"` or `"decode"`, *optional*):
            How to check images up front. `"header"` (or `True`) opens each file with PIL (headers only, about
            0.1 ms per CelebA image on one core, 20 s for all 202,599) and, for JPEGs without an end-of-image marker
            (a truncated download), decodes the file to be sure. `"decode"` fully decodes every image (about 0.5 ms
            each, spread over `num_workers` threads). `False` skips the check. Defaults to `"header"` for local
            sources and `False` for Hub sources, whose check would need a full pass over the downloaded data.
        num_workers (`int`, *optional*):
            Threads for the image check; defaults to 1 for `"header"` (PIL's header parsing holds the GIL, so
            threads only help on slow disks) and to `min(8, os.cpu_count())` for `"decode"`.
        missing_partition (`"raise"` or `"carve"`, *optional*, defaults to `"raise"`):
            For a raw CelebA directory without `list_eval_partition.txt`: raise `FileNotFoundError`, or use every
            image in `img_align_celeba/` and carve the splits by `seed` and the fractions.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Passed to `datasets.load_dataset` (Hub sources and image folders).
        token (`str` or `bool`, *optional*):
            Passed to `datasets.load_dataset` (Hub sources).
        revision (`str`, *optional*):
            Passed to `datasets.load_dataset` (Hub sources).
        check_record_dir (`str`, `os.PathLike` or `False`, *optional*):
            Where the image check records its result, keyed by the checked files' names, sizes, modification and
            status-change times ([`~dilated_vit_mae.data.fingerprint.image_files_fingerprint`]): a later load of the same
            unchanged files (a resumed or repeated launch, the other processes of a multi-process launch) reuses it
            instead of opening every image again; any change to any file means a full check. Defaults to
            `image_checks/` under [`~dilated_vit_mae.data.fingerprint.default_cache_dir`] (never the data folder, which may
            be read-only or shared); `False` keeps no record.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar while images are checked (pass `False` on all but one process).

    Returns:
        `datasets.DatasetDict` (`datasets.IterableDatasetDict` if `streaming=True`) with `train`, `validation`,
        `test` (and any other splits the source has, after these).

    Example:

    ```python
    >>> from dilated_vit_mae.data.loading import load_celeba
    >>> celeba = load_celeba("data/celeba_sample")
    >>> celeba["train"].features["Smiling"]
    Value('bool')
    >>> faces = load_celeba("nielsr/CelebA-faces", test_fraction=0.05, seed=0)  # doctest: +SKIP
    ```
    """
    for name, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"`{name}` must be in [0, 1), got {fraction!r}.")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(
            "`validation_fraction + test_fraction` must leave examples for training (< 1), got "
            f"{validation_fraction!r} + {test_fraction!r}."
        )
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"`on_bad_image` must be 'raise' or 'skip', got {on_bad_image!r}.")
    if missing_partition not in ("raise", "carve"):
        raise ValueError(f"`missing_partition` must be 'raise' or 'carve', got {missing_partition!r}.")
    if verify_images not in (None, True, False, "header", "decode"):
        raise ValueError(f"`verify_images` must be True, False, 'header', 'decode' or None, got {verify_images!r}.")
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"`num_workers` must be a positive int or None, got {num_workers!r}.")

    kind, location = _resolve_source(source)
    check = _check_mode(verify_images, default="header" if kind != "hub" else None)
    image_check = _ImageCheck(check_record_dir, progress)
    carve_kwargs = {"validation_fraction": validation_fraction, "test_fraction": test_fraction, "seed": seed}

    if kind == "hub":
        if streaming and check is not None:
            raise ValueError(
                f"Cannot verify images of a streamed dataset up front, got verify_images={verify_images!r} with "
                "streaming=True. Pass verify_images=False, or load without streaming."
            )
        name = config_name if config_name is not None else _HUB_DEFAULT_CONFIGS.get(location)
        try:
            loaded = datasets.load_dataset(
                location, name, cache_dir=_fspath(cache_dir), token=token, revision=revision, streaming=streaming
            )
        except Exception as error:
            # A relative path from the wrong working directory also lands here, as a Hub id.
            error.add_note(
                f"load_celeba: {location!r} is not a directory under {os.getcwd()!r}, so it was loaded as a Hub "
                "dataset id. For a local dataset pass an absolute path."
            )
            raise
        dataset_dict = _normalize_splits(loaded, source=location, streaming=streaming, **carve_kwargs)
        dataset_dict = _normalize_columns(dataset_dict, source=location)
        if check is not None:
            dataset_dict = _check_dataset_images(dataset_dict, location, check, on_bad_image, num_workers, image_check)
        return dataset_dict

    root = Path(location)
    if kind == "raw":
        dataset_dict = _load_raw_celeba(
            root,
            check=check,
            on_bad_image=on_bad_image,
            num_workers=num_workers,
            missing_partition=missing_partition,
            image_check=image_check,
            **carve_kwargs,
        )
    else:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=_fspath(cache_dir))
        dataset_dict = _normalize_splits(loaded, source=str(root), streaming=False, **carve_kwargs)
        dataset_dict = _normalize_columns(dataset_dict, source=str(root))
        if check is not None:
            dataset_dict = _check_dataset_images(dataset_dict, str(root), check, on_bad_image, num_workers, image_check)
    if streaming:
        return datasets.IterableDatasetDict({split: _to_iterable(dataset) for split, dataset in dataset_dict.items()})
    return dataset_dict


def find_bad_images(
    images: Iterable[str | os.PathLike[str] | dict],
    *,
    decode: bool = False,
    num_workers: int | None = None,
    progress: bool = False,
) -> list[tuple[int, str, str]]:
    """
    Find the images that PIL cannot read.

    Args:
        images (iterable of `str`, `os.PathLike` or `dict`):
            File paths, or `{"path": ..., "bytes": ...}` dicts as stored by `datasets.Image(decode=False)`.
        decode (`bool`, *optional*, defaults to `False`):
            Fully decode every image instead of reading headers only. Header mode still decodes a JPEG that has no
            end-of-image marker, which is what a truncated download looks like.
        num_workers (`int`, *optional*):
            Number of threads; defaults to 1 for header checks and `min(8, os.cpu_count())` for decoding.
        progress (`bool`, *optional*, defaults to `False`):
            Show a `tqdm` progress bar (images checked).

    Returns:
        `list[tuple[int, str, str]]`: `(index, name, reason)` for each unreadable image, in input order.

    Example:

    ```python
    >>> from dilated_vit_mae.data.loading import find_bad_images
    >>> find_bad_images(["data/celeba_sample/img_align_celeba/000001.jpg"])
    []
    ```
    """
    items = list(images)
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if decode else 1
    chunk_size = 512  # one task per chunk: a future per image would cost more than a header check

    def check_chunk(start: int) -> list[tuple[int, str, str]]:
        bad = []
        for index in range(start, min(start + chunk_size, len(items))):
            name, reason = _check_one_image(items[index], decode)
            if reason is not None:
                bad.append((index, name, reason))
        return bad

    starts = range(0, len(items), chunk_size)
    results = []
    with tqdm(total=len(items), desc="image check", unit="img", disable=not progress) as bar:
        if num_workers <= 1 or len(items) <= chunk_size:
            chunks = map(check_chunk, starts)
            executor = None
        else:
            executor = ThreadPoolExecutor(max_workers=num_workers)
            chunks = executor.map(check_chunk, starts)
        try:
            for start, chunk in zip(starts, chunks):
                results.append(chunk)
                bar.update(min(chunk_size, len(items) - start))
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
    return [bad for chunk in results for bad in chunk]


# ---------------------------------------------------------------------------------------------------------------
# Source resolution
# ---------------------------------------------------------------------------------------------------------------


def _fspath(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def _resolve_source(source: str | os.PathLike[str]) -> tuple[Literal["raw", "imagefolder", "hub"], str]:
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"`source` must be a directory path or a Hub dataset id, got {type(source).__name__}.")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return ("raw" if _looks_like_raw_celeba(path) else "imagefolder"), str(path.resolve())
    if path.exists():
        raise ValueError(
            f"`source` must be a directory (raw CelebA layout or an image folder) or a Hub dataset id, got the file "
            f"{text!r}. Pass the directory that contains it."
        )
    looks_local = (
        isinstance(source, os.PathLike)
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or (os.sep != "/" and os.sep in text)
    )
    if looks_local or not text:
        raise FileNotFoundError(
            f"No directory at {text!r}. Pass an existing directory, or a Hub dataset id such as 'flwrlabs/celeba'."
        )
    return "hub", text


def _looks_like_raw_celeba(root: Path) -> bool:
    return _find_image_dir(root) is not None or _find_annotation(root, "list_eval_partition") is not None


def _find_image_dir(root: Path) -> Path | None:
    for parts in _IMAGE_DIR_CANDIDATES:
        candidate = root.joinpath(*parts)
        if candidate.is_dir():
            return candidate
    return None


def _find_annotation(root: Path, stem: str) -> Path | None:
    for subdir in _ANNOTATION_SUBDIRS:
        for suffix in (".txt", ".csv"):
            candidate = root / subdir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _to_iterable(dataset: datasets.Dataset) -> datasets.IterableDataset:
    if dataset.num_rows == 0:  # `to_iterable_dataset` refuses to shard an empty split
        return datasets.IterableDataset.from_generator(_no_examples, features=dataset.features)
    # Several shards let a DataLoader with workers read a local split in parallel.
    return dataset.to_iterable_dataset(num_shards=min(64, dataset.num_rows))


def _no_examples() -> Iterable[dict]:
    yield from ()


def _check_mode(verify_images: VerifyImages, default: Literal["header"] | None) -> Literal["header", "decode"] | None:
    if verify_images is None:
        return default
    if verify_images is True:
        return "header"
    if verify_images is False:
        return None
    return verify_images


# ---------------------------------------------------------------------------------------------------------------
# Raw CelebA
# ---------------------------------------------------------------------------------------------------------------


def _load_raw_celeba(
    root: Path,
    *,
    check: Literal["header", "decode"] | None,
    on_bad_image: Literal["raise", "skip"],
    num_workers: int | None,
    missing_partition: Literal["raise", "carve"],
    image_check: "_ImageCheck",
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> datasets.DatasetDict:
    image_dir = _find_image_dir(root)
    if image_dir is None:
        raise FileNotFoundError(
            f"No image folder in raw CelebA directory {str(root)!r}: expected {str(root / 'img_align_celeba')!r} "
            "(unzip img_align_celeba.zip there)."
        )
    # Names of the files actually present, in one directory listing instead of 200k `stat` calls.
    present = {entry.name for entry in os.scandir(image_dir) if entry.is_file()}

    partition_file = _find_annotation(root, "list_eval_partition")
    if partition_file is not None:
        file_names, partition = _read_partition(partition_file)
        missing = [name for name in file_names if name not in present]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) listed in {str(partition_file)!r} do not exist in {str(image_dir)!r}: "
                f"{_first_names(missing)}. Re-extract the images, or remove these lines from the partition file."
            )
    elif missing_partition == "carve":
        file_names = sorted(name for name in present if name.lower().endswith(_IMAGE_EXTENSIONS))
        if not file_names:
            raise FileNotFoundError(f"No images in {str(image_dir)!r}.")
        partition = np.zeros(len(file_names), dtype=np.int64)
        carved = _carve_indices(len(file_names), validation_fraction, test_fraction, seed, source=str(image_dir))
        partition[carved["validation"]], partition[carved["test"]] = 1, 2
        logger.warning(
            "No list_eval_partition.txt in %s: carved train/validation/test out of %d images with seed %d "
            "(not the official CelebA partition).",
            root, len(file_names), seed,
        )  # fmt: skip
    else:
        raise FileNotFoundError(
            f"No list_eval_partition.txt in {str(root)!r} (also looked in Anno/, Eval/ and for .csv). Download it "
            "with the images to use the official partition, or pass missing_partition='carve' to carve splits "
            "by `seed`."
        )

    # Optional annotations, each as `values[row_of[i]]` for the i-th file of the partition.
    annotations: dict[str, np.ndarray] = {}
    identity_file = _find_annotation(root, "identity_CelebA")
    if identity_file is not None:
        names, identities = _read_identities(identity_file)
        annotations["celeb_id"] = identities[_rows_for(file_names, names, identity_file)]
    attribute_file = _find_annotation(root, "list_attr_celeba")
    if attribute_file is not None:
        names, attributes = _read_attributes(attribute_file)
        attributes = attributes[_rows_for(file_names, names, attribute_file)]
        annotations.update({name: attributes[:, k] for k, name in enumerate(CELEBA_ATTRIBUTE_NAMES)})

    paths = [os.path.join(image_dir, name) for name in file_names]
    keep = np.ones(len(paths), dtype=bool)
    if check is not None:
        bad = image_check.find_bad_images(paths, str(image_dir), check, num_workers)
        _handle_bad_images(bad, len(paths), str(image_dir), on_bad_image)
        keep[[index for index, _, _ in bad]] = False

    features = datasets.Features(
        {
            "image": datasets.Image(),
            **({"celeb_id": datasets.Value("int64")} if "celeb_id" in annotations else {}),
            **{name: datasets.Value("bool") for name in CELEBA_ATTRIBUTE_NAMES if name in annotations},
        }
    )
    splits = {}
    for code, split in _PARTITION_TO_SPLIT.items():
        indices = np.flatnonzero((partition == code) & keep)
        # Arrow arrays skip `Features.encode_batch`'s per-value Python loop (25 s for CelebA's 8M attribute values);
        # a string array cast to `Image()` stores `{"bytes": None, "path": path}`, decoded only on access.
        columns = {"image": pa.array([paths[i] for i in indices], type=pa.string())}
        columns.update({name: pa.array(values[indices]) for name, values in annotations.items()})
        splits[split] = datasets.Dataset.from_dict(columns, features=features, split=datasets.NamedSplit(split))
    return datasets.DatasetDict(splits)


def _rows_for(file_names: Sequence[str], table_names: Sequence[str], path: Path) -> np.ndarray:
    """Row of each partition file in an annotation table; an annotation file must cover the partition."""
    position = {name: row for row, name in enumerate(table_names)}
    rows = np.fromiter((position.get(name, -1) for name in file_names), dtype=np.int64, count=len(file_names))
    if (rows < 0).any():
        uncovered = [file_names[i] for i in np.flatnonzero(rows < 0)]
        raise ValueError(
            f"{str(path)!r} has no row for {len(uncovered)} image(s) of the partition: {_first_names(uncovered)}. "
            "Use the annotation files that came with the images."
        )
    return rows


class _AnnotationTable(NamedTuple):
    """The layout of a CelebA annotation file: per line an image file name, then `num_values` integers."""

    header_rows: int  # lines before the rows in the .txt (a Kaggle .csv has one header line instead)
    num_values: int
    allowed: tuple[int, ...] | None  # the values a row may hold; None: any integer
    line: str  # what a line holds, for the error messages
    bad_values: str  # what a bad value breaks, for the error messages


_PARTITION = _AnnotationTable(
    0, 1, (0, 1, 2), "'<image file> <0|1|2>' (0 train, 1 valid, 2 test)",
    "expected '<image file> <0|1|2>' (0 train, 1 valid, 2 test)",
)  # fmt: skip
_IDENTITIES = _AnnotationTable(
    0, 1, None, "'<image file> <integer identity>'", "expected '<image file> <integer identity>'"
)
_ATTRIBUTES = _AnnotationTable(
    2, len(CELEBA_ATTRIBUTE_NAMES), (-1, 1), f"an image file and {len(CELEBA_ATTRIBUTE_NAMES)} values",
    "attribute values must be 1 or -1",
)  # fmt: skip


def _read_partition(path: Path) -> tuple[list[str], np.ndarray]:
    """`000001.jpg 0` per line (0/1/2 = train/valid/test). Returns file names in file order and their codes."""
    file_names, values = _read_table(path, _PARTITION)
    return file_names, values[:, 0]


def _read_identities(path: Path) -> tuple[list[str], np.ndarray]:
    """`identity_CelebA.txt`: `000001.jpg 2880` per line."""
    names, values = _read_table(path, _IDENTITIES)
    return names, values[:, 0]


def _read_attributes(path: Path) -> tuple[list[str], np.ndarray]:
    """
    `list_attr_celeba.txt`: line 1 the number of images, line 2 the 40 names, then `000001.jpg -1  1 ...` with runs
    of spaces (-1 = False, 1 = True). The Kaggle `.csv` has a header `image_id,<40 names>` and no count line.
    Returns the file names and a `(num_images, 40)` bool array.
    """
    declared = _check_attribute_header(path)
    names, values = _read_table(path, _ATTRIBUTES)
    if declared is not None and declared != len(names):
        raise ValueError(
            f"{str(path)!r}: line 1 declares {declared} images but the file has {len(names)} rows. The file is "
            "truncated or was edited; re-download it."
        )
    return names, values == 1


def _read_table(path: Path, table: _AnnotationTable) -> tuple[list[str], np.ndarray]:
    """
    The image file names of an annotation file, in file order, and their `(num_rows, num_values)` int64 values.

    Parsed by pandas' C parser (1 s for list_attr_celeba.txt instead of 10 s line by line); when that finds anything
    off, line by line, to raise naming the file, the line and what is wrong with it (or to read what the C parser
    could not, e.g. a quoted .csv field).
    """
    skip_rows = 1 if _is_csv(path) else table.header_rows
    fast = _fast_table(path, skip_rows=skip_rows, num_values=table.num_values)
    if fast is not None and fast[0] and (table.allowed is None or np.isin(fast[1], table.allowed).all()):
        return fast
    names, rows, seen = [], [], set()
    for line_number, fields in _records(path, skip_rows):
        where = f"{str(path)!r} line {line_number}"
        if len(fields) != table.num_values + 1:
            raise ValueError(
                f"{where}: expected {table.line}, got {len(fields) - 1} values in {' '.join(fields)[:80]!r}. "
                f"Re-download {path.name}."
            )
        values = [_as_int(field) for field in fields[1:]]
        bad = {
            field.strip()
            for field, value in zip(fields[1:], values)
            if value is None or (table.allowed is not None and value not in table.allowed)
        }
        if bad:
            raise ValueError(f"{where}: {table.bad_values}, got {sorted(bad)!r}. Re-download {path.name}.")
        name = fields[0].strip()
        if name in seen:
            raise ValueError(f"{where}: {name!r} is listed twice.")
        seen.add(name)
        names.append(name)
        rows.append(values)
    if not names:
        raise ValueError(f"{str(path)!r} lists no images.")
    return names, np.array(rows, dtype=np.int64).reshape(len(rows), table.num_values)


def _as_int(field: str) -> int | None:
    try:
        return int(field)
    except ValueError:
        return None


def _fast_table(path: Path, *, skip_rows: int, num_values: int) -> tuple[list[str], np.ndarray] | None:
    """Rows of `name int int ...`; None when the file does not parse cleanly into unique names and integers."""
    try:
        frame = pd.read_csv(
            path, sep="," if _is_csv(path) else r"\s+", skiprows=skip_rows, header=None, skip_blank_lines=True
        )
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    values = frame.iloc[:, 1:]
    if (
        frame.shape[1] != num_values + 1
        or not pd.api.types.is_string_dtype(frame[0])
        or not all(pd.api.types.is_integer_dtype(dtype) for dtype in values.dtypes)
        or not frame[0].is_unique
    ):
        return None
    return [str(name).strip() for name in frame[0].tolist()], values.to_numpy(dtype=np.int64)


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r} is not a text file ({error}).") from error


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _records(path: Path, skip_rows: int) -> list[tuple[int, list[str]]]:
    """`(line number, fields)` of the non-blank lines after `skip_rows`, split on commas (.csv) or whitespace."""
    lines = _read_lines(path)
    split = (lambda line: next(csv.reader([line]))) if _is_csv(path) else str.split
    return [(n, split(line)) for n, line in enumerate(lines[skip_rows:], start=skip_rows + 1) if line.strip()]


def _check_attribute_header(path: Path) -> int | None:
    """Checks the names line (and the count line of the .txt); returns the declared count (None for .csv)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first, second = f.readline(), f.readline()
    if _is_csv(path):
        names, declared = [name.strip() for name in first.split(",")[1:]], None
        where = "line 1 (header)"
    else:
        try:
            declared = int(first.strip())
        except ValueError:
            raise ValueError(f"{str(path)!r} line 1: expected the number of images, got {first.strip()!r}.") from None
        names, where = second.split(), "line 2"
    if names != list(CELEBA_ATTRIBUTE_NAMES):
        missing = [name for name in CELEBA_ATTRIBUTE_NAMES if name not in names]
        unexpected = [name for name in names if name not in CELEBA_ATTRIBUTE_NAMES]
        raise ValueError(
            f"{str(path)!r} {where}: expected the 40 CelebA attribute names in the official order, got "
            f"{len(names)} names (missing {missing}, unexpected {unexpected})."
        )
    return declared


# ---------------------------------------------------------------------------------------------------------------
# Image checks
# ---------------------------------------------------------------------------------------------------------------


class _ImageCheck:
    """
    The up-front image check of one `load_celeba` call: a log line with the count when it starts, a progress bar, and
    a record of the result keyed by [`image_files_fingerprint`] of the checked files, reused while they are unchanged.
    """

    def __init__(self, record_dir: str | os.PathLike[str] | Literal[False] | None, progress: bool) -> None:
        if record_dir is False:
            self.directory = None
        else:
            self.directory = Path(record_dir) if record_dir is not None else default_cache_dir() / "image_checks"
        self.progress = progress

    def find_bad_images(
        self, items: Sequence[str | os.PathLike[str] | dict], where: str, mode: Literal["header", "decode"],
        num_workers: int | None,
    ) -> list[tuple[int, str, str]]:  # fmt: skip
        """`find_bad_images(items)`, or what the record of `where` says when it was made from these very files."""
        fingerprint = image_files_fingerprint(items) if self.directory is not None else None
        path = self.directory / f"{hashlib.sha256(where.encode()).hexdigest()[:24]}.json" if fingerprint else None
        recorded = self._read(path, fingerprint, mode) if path is not None else None
        if recorded is not None:
            logger.info(
                f"image check: the {len(items):,} images of {where} are unchanged since their {recorded['mode']} check "
                f"of {recorded['checked_at']} ({len(recorded['bad'])} unreadable): not checked again (record {path})"
            )
            return [(index, name, reason) for index, name, reason in recorded["bad"]]
        what = "full decode" if mode == "decode" else "headers only"
        logger.info(f"image check: {len(items):,} images of {where} ({what})")
        started = time.perf_counter()
        bad = find_bad_images(items, decode=mode == "decode", num_workers=num_workers, progress=self.progress)
        seconds = time.perf_counter() - started
        logger.info(f"image check: {len(items):,} images in {seconds:.1f} s, {len(bad)} unreadable")
        if path is not None:
            record = {
                "where": where, "mode": mode, "num_images": len(items), "fingerprint": fingerprint,
                "pillow": PIL.__version__, "checked_at": time.strftime("%Y-%m-%d %H:%M:%S"), "bad": bad,
            }  # fmt: skip
            try:
                write_json_atomically(path, record)
            except OSError as error:
                logger.warning(
                    f"image check: could not record the result in {path} ({error}); the next load checks again."
                )
        return bad

    @staticmethod
    def _read(path: Path, fingerprint: str, mode: Literal["header", "decode"]) -> dict | None:
        try:
            record = json.loads(path.read_text())
            usable = (
                record["fingerprint"] == fingerprint
                and record["pillow"] == PIL.__version__  # what PIL can read may change with its version
                and (record["mode"] == mode or record["mode"] == "decode")  # a decode check covers a header check
            )
            bad = [(int(index), str(name), str(reason)) for index, name, reason in record["bad"]]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                f"image check: the record {path} is damaged ({type(error).__name__}: {error}); removed it, "
                "checking again."
            )
            path.unlink(missing_ok=True)
            return None
        return {**record, "bad": bad} if usable else None


def _check_one_image(item: str | os.PathLike[str] | dict, decode: bool) -> tuple[str, str | None]:
    """Returns `(name, reason)`, `reason` None when PIL can read the image."""
    if isinstance(item, dict):
        data, path = item.get("bytes"), item.get("path")
        name = path or "<in-memory image>"
        if data is None and path is None:
            return name, "no bytes and no path"
    else:
        data, path = None, os.fspath(item)
        name = path

    def open_image() -> PIL.Image.Image:
        return PIL.Image.open(io.BytesIO(data) if data is not None else path)

    try:
        with open_image() as image:
            image_format = image.format
            if decode:
                image.load()
            else:
                image.verify()
        if not decode and image_format == "JPEG" and not _ends_with_jpeg_eoi(data, path):
            # A truncated JPEG has a valid header and fails only when decoded. Some encoders append bytes after the
            # end-of-image marker, so a missing marker is a reason to decode, not a verdict.
            with open_image() as image:
                image.load()
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        return name, f"{type(error).__name__}: {error}"
    return name, None


def _ends_with_jpeg_eoi(data: bytes | None, path: str | None) -> bool:
    if data is not None:
        return data[-2:] == b"\xff\xd9"
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 2:
            return False
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"


def _first_names(names: Sequence[str]) -> str:
    shown = ", ".join(os.path.basename(str(name)) for name in names[:_NUM_NAMED])
    return shown + (f", ... ({len(names) - _NUM_NAMED} more)" if len(names) > _NUM_NAMED else "")


def _handle_bad_images(
    bad: list[tuple[int, str, str]], total: int, where: str, on_bad_image: Literal["raise", "skip"]
) -> None:
    if not bad:
        return
    details = "; ".join(f"{name} ({reason})" for _, name, reason in bad[:_NUM_NAMED])
    if on_bad_image == "raise":
        more = f" and {len(bad) - _NUM_NAMED} more" if len(bad) > _NUM_NAMED else ""
        raise ValueError(
            f"{len(bad)} of {total} image(s) in {where} cannot be read: {details}{more}. Replace these files, or pass "
            "on_bad_image='skip' to drop them."
        )
    logger.warning(
        "Skipped %d of %d unreadable image(s) in %s: %s", len(bad), total, where,
        _first_names([name for _, name, _ in bad]),
    )  # fmt: skip


def _check_dataset_images(
    dataset_dict: datasets.DatasetDict,
    where: str,
    check: Literal["header", "decode"],
    on_bad_image: Literal["raise", "skip"],
    num_workers: int | None,
    image_check: "_ImageCheck",
) -> datasets.DatasetDict:
    checked = {}
    for split, dataset in dataset_dict.items():
        if "image" not in dataset.column_names:
            checked[split] = dataset
            continue
        references = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
        items = [item for batch in references.iter(batch_size=1024) for item in batch["image"]]
        bad = image_check.find_bad_images(items, f"{where} [{split}]", check, num_workers)
        _handle_bad_images(bad, dataset.num_rows, f"{where} [{split}]", on_bad_image)
        if bad:
            bad_indices = {index for index, _, _ in bad}
            dataset = dataset.select([i for i in range(dataset.num_rows) if i not in bad_indices])
        checked[split] = dataset
    return datasets.DatasetDict(checked)


# ---------------------------------------------------------------------------------------------------------------
# Split and column normalisation (Hub datasets, image folders)
# ---------------------------------------------------------------------------------------------------------------


def _carve_indices(
    num_examples: int, validation_fraction: float, test_fraction: float, seed: int, *, source: str
) -> dict[str, np.ndarray]:
    """Disjoint sorted index sets: `test` first, then `validation`, out of one seeded permutation; the rest `train`."""

    def count(fraction: float) -> int:
        return max(1, round(fraction * num_examples)) if fraction > 0 else 0

    num_test, num_validation = count(test_fraction), count(validation_fraction)
    if num_test + num_validation >= num_examples:
        raise ValueError(
            f"Cannot carve {num_test} test and {num_validation} validation example(s) out of the {num_examples} of "
            f"{source} and keep any for training. Use smaller fractions or a larger dataset."
        )
    permutation = np.random.default_rng(seed).permutation(num_examples)
    return {
        "train": np.sort(permutation[num_test + num_validation :]),
        "validation": np.sort(permutation[num_test : num_test + num_validation]),
        "test": np.sort(permutation[:num_test]),
    }


def _normalize_splits(
    loaded: datasets.DatasetDict | datasets.IterableDatasetDict | datasets.Dataset | datasets.IterableDataset,
    *,
    source: str,
    streaming: bool,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
        loaded = {"train": loaded}
    splits = dict(loaded)
    for alias, canonical in _SPLIT_ALIASES.items():
        if alias in splits:
            if canonical in splits:
                raise ValueError(
                    f"{source} has both a {alias!r} and a {canonical!r} split; cannot tell which is the validation "
                    "split. Load it with datasets.load_dataset and pick one."
                )
            splits[canonical] = splits.pop(alias)
    if len(splits) == 1 and "train" not in splits:
        (only_name, only_split), = splits.items()  # fmt: skip
        logger.info("%s has a single split %r: carving train/validation/test out of it.", source, only_name)
        splits = {"train": only_split}
    if "train" not in splits:
        raise ValueError(
            f"{source} has no 'train' split to carve missing splits from, got splits {sorted(splits)}. Load it with "
            "datasets.load_dataset and build the DatasetDict yourself."
        )

    missing = [split for split in ("validation", "test") if split not in splits]
    if missing:
        if streaming:
            raise ValueError(
                f"Streaming needs a source with explicit train/validation/test splits, but {source} has "
                f"{sorted(splits)} (missing {missing}). Load it with streaming=False to carve the missing splits by "
                "seed, or use a source that has them."
            )
        pool = splits["train"]
        carved = _carve_indices(
            pool.num_rows,
            validation_fraction if "validation" in missing else 0.0,
            test_fraction if "test" in missing else 0.0,
            seed,
            source=source,
        )
        splits["train"] = pool.select(carved["train"])
        for split in missing:
            splits[split] = pool.select(carved[split])

    ordered = {split: splits[split] for split in SPLIT_NAMES}
    ordered.update({split: dataset for split, dataset in splits.items() if split not in ordered})
    return (datasets.IterableDatasetDict if streaming else datasets.DatasetDict)(ordered)


def _normalize_columns(
    dataset_dict: datasets.DatasetDict | datasets.IterableDatasetDict, *, source: str
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Name the image column `image`; turn ±1 integer attribute columns (e.g. from a metadata.csv) into bool."""
    normalized = {}
    for split, dataset in dataset_dict.items():
        features = dataset.features
        if features is not None and "image" not in features:
            image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
            if len(image_columns) != 1:
                raise ValueError(
                    f"{source} [{split}] needs exactly one image column, got columns {list(features)} "
                    f"({len(image_columns)} of them images). Rename the image column to 'image'."
                )
            dataset = dataset.rename_column(image_columns[0], "image")
            features = dataset.features
        integer_attributes = [
            name
            for name in CELEBA_ATTRIBUTE_NAMES
            if features is not None
            and isinstance(features.get(name), datasets.Value)
            and features[name].dtype.startswith(("int", "uint"))
        ]
        if integer_attributes:
            dataset = _integer_attributes_to_bool(dataset, integer_attributes, f"{source} [{split}]")
        normalized[split] = dataset
    return type(dataset_dict)(normalized)


def _integer_attributes_to_bool(
    dataset: datasets.Dataset | datasets.IterableDataset, names: list[str], where: str
) -> datasets.Dataset | datasets.IterableDataset:
    def to_bool(*columns: list) -> dict[str, list]:
        converted = {}
        for name, column in zip(names, columns):
            values = np.asarray(column)
            if not np.isin(values, (-1, 0, 1)).all():
                raise ValueError(
                    f"{where}: attribute column {name!r} must hold -1/1 (or 0/1), got {sorted(set(values.tolist()))}."
                )
            converted[name] = (values > 0).tolist()
        return converted

    features = dataset.features.copy()
    features.update({name: datasets.Value("bool") for name in names})
    # `input_columns` keeps the image column out of the function, so images are not decoded here.
    return dataset.map(to_bool, batched=True, input_columns=names, features=features)
