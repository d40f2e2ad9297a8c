"""
A pre-decoded uint8 copy of a fixed-size image dataset, built once and memory-mapped: training then skips JPEG
decoding, the largest host cost left on the device path ([`~dilated_vit_mae.data.device_augment.DeviceAugmentation`]).

CelebA's aligned crops are all 178x218: its 162,770 training images take 18.9 GB decoded (all 202,599: 23.6 GB),
against 1.4 GB of JPEGs. The cache is one `.npy` file of shape `(num_images, height, width, channels)` in the
dataset's row order, and a `meta.json` naming the dataset fingerprint it was built from and the fingerprint of the image
files themselves (names, sizes, modification and status-change times: `dilated_vit_mae.data.fingerprint`). A build states
its size and the free disk before it starts, refuses when the disk cannot hold it, and refuses datasets whose images
differ in size (it reads every header first, so a mixed-size dataset fails before anything is written). A cache whose
images have changed since, or whose files are damaged, is removed and built again with one warning naming it; a
failed build removes its partial copy, and a killed one's is removed by the next build.

Rows are stored at full size, so [`~dilated_vit_mae.data.transforms.MAEHostTransform`]'s reduced-scale JPEG decoding
(`draft`) never applies to them: where it would (crops at least twice the output size, e.g. 64 px from CelebA) the
cached and the file-decoded augmentations differ slightly; at 224 px they are identical.

```python
>>> from dilated_vit_mae.data.loading import load_celeba
>>> from dilated_vit_mae.data.decoded_cache import DecodedImageCache
>>> train = load_celeba("data/celeba_sample")["train"]
>>> cache = DecodedImageCache.build(train, "/tmp/decoded")  # doctest: +SKIP
>>> cache.shape, cache[0].dtype  # doctest: +SKIP
((40, 218, 178, 3), dtype('uint8'))
```
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from torch.utils.data import DataLoader, Dataset

from .fingerprint import dataset_images_fingerprint, remove_abandoned_partials, written_atomically
from .transforms import decode_uint8, read_image_size

logger = logging.getLogger(__name__)

__all__ = ["CachedImageDataset", "DecodedImageCache"]

META_FILE = "meta.json"
IMAGES_FILE = "images.npy"  # a .npy file: its header repeats the shape
_CHUNK = 256  # images per worker task


class DecodedImageCache:
    """
    A built cache: `cache[i]` is row `i` of the dataset it was built from, a `(height, width, channels)` uint8 array
    backed by the memory-mapped file (copy-on-write: writable in memory, the file is never changed). Picklable: each
    `DataLoader` worker maps the file on first use.

    Args:
        directory (`str` or `os.PathLike`): a folder written by [`DecodedImageCache.build`].
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.directory} is not a decoded cache (no {META_FILE}); build one first.")
        self.meta = json.loads(meta_path.read_text())
        self.shape = tuple(self.meta["shape"])  # (N, H, W, C)
        self._array: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        dataset: datasets.Dataset,
        cache_dir: str | os.PathLike,
        *,
        image_column: str = "image",
        num_channels: int = 3,
        fingerprint: str | None = None,
        num_workers: int = 0,
        reserve_bytes: int = 2**30,
    ) -> DecodedImageCache:
        """
        Decode every image of `dataset` into `cache_dir/decoded-{fingerprint}-{num_channels}ch/`, or open that folder
        if an earlier build completed it from the same files. The folder appears complete or not at all (built under a
        partial name, removed if the build fails). A folder built from files that have changed since (any size,
        modification or status-change time, or a file gone), or damaged (unreadable `meta.json`, a truncated images
        file), is removed and built again, with a warning naming it; partial copies that killed builds on this host
        left in `cache_dir` are removed first.

        Args:
            dataset (`datasets.Dataset`): the split, in the row order training indexes it by.
            cache_dir (`str` or `os.PathLike`): where caches live.
            image_column (`str`, *optional*, defaults to `"image"`): the image column.
            num_channels (`int`, *optional*, defaults to 3): 3 stores RGB, 1 greyscale.
            fingerprint (`str`, *optional*): the cache key; defaults to the dataset's `_fingerprint`, which changes
                with every `select`, `map`, `add_column`, ... (not with `set_transform`).
            num_workers (`int`, *optional*, defaults to 0): decoding processes (0: this one).
            reserve_bytes (`int`, *optional*, defaults to 1 GiB): disk space to leave free.

        Raises:
            `ValueError`: the images are not all the same size (the cache is for fixed-size datasets).
            `OSError`: the disk under `cache_dir` cannot hold the cache plus `reserve_bytes`.
        """
        fingerprint = fingerprint or getattr(dataset, "_fingerprint", None)
        if not fingerprint:
            raise ValueError("The dataset has no `_fingerprint`: pass `fingerprint=` to key the cache.")
        if image_column not in dataset.column_names:
            raise ValueError(f"No column {image_column!r} in the dataset; it has {dataset.column_names}.")
        directory = Path(cache_dir) / f"decoded-{fingerprint}-{num_channels}ch"
        for partial in remove_abandoned_partials(cache_dir):
            logger.warning(f"decoded cache: removed {partial}, the partial copy of a build that did not finish")
        images = dataset_images_fingerprint(dataset, image_column)
        if directory.exists():
            problem = _problem(directory, len(dataset), num_channels, images)
            if problem is None:
                cache = cls(directory)
                logger.info(f"decoded cache: using {directory} ({cache.nbytes / 1e9:.1f} GB)")
                return cache
            logger.warning(f"decoded cache: {directory} {problem}: removed it, building it again")
            shutil.rmtree(directory)
        encoded = dataset.select_columns([image_column])
        if isinstance(encoded.features[image_column], datasets.Image):
            encoded = encoded.cast_column(image_column, datasets.Image(decode=False))  # bytes / paths, not PIL images
        height, width = _single_size(encoded, image_column, num_channels, num_workers)
        shape = (len(dataset), height, width, num_channels)
        _check_disk(Path(cache_dir), directory, shape, reserve_bytes)

        # a failed or interrupted build leaves nothing behind (a killed one: removed by the next build)
        with written_atomically(directory) as partial:
            partial.mkdir(parents=True)
            np.lib.format.open_memmap(partial / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=shape).flush()
            writer = _Chunks(encoded, image_column, num_channels, task="decode", output=partial / IMAGES_FILE)
            done = 0
            for count in _run(writer, num_workers):
                done += count
                if done == shape[0] or done // _CHUNK % 100 == 0:
                    logger.info(f"decoded cache: {done}/{shape[0]} images")
            meta = {"fingerprint": fingerprint, "images_fingerprint": images, "shape": list(shape), "dtype": "uint8",
                    "layout": "NHWC", "file": IMAGES_FILE, "image_column": image_column,
                    "row_order": "the dataset's"}  # fmt: skip
            (partial / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return cls(directory)

    @property
    def array(self) -> np.ndarray:
        """The `(N, H, W, C)` uint8 memory map (opened on first use in each process)."""
        if self._array is None:
            self._array = np.load(self.directory / self.meta["file"], mmap_mode="c")
        return self._array

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        return self.array[index]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}  # workers map the file themselves

    def as_dataset(
        self, transform: Callable[[dict[str, list]], dict[str, list]], image_column: str = "image",
        index_column: str = "sample_index",
    ) -> CachedImageDataset:  # fmt: skip
        """A map-style dataset over the cache that applies a batch transform (e.g. `IndexedTransform`)."""
        return CachedImageDataset(self, transform, image_column, index_column)


class CachedImageDataset(Dataset):
    """
    The rows of a [`DecodedImageCache`] through a batch transform of the `datasets.Dataset.set_transform` kind: it
    gets `{image_column: [arrays], index_column: [row indices]}` and returns columns, which become one dict per row.
    Row `i` is example `i` of the dataset the cache was built from, so `index_column` is the `sample_index` that
    `run_mae.py` gives it.
    """

    def __init__(
        self, cache: DecodedImageCache, transform: Callable, image_column: str = "image",
        index_column: str = "sample_index",
    ) -> None:  # fmt: skip
        self.cache, self.transform = cache, transform
        self.image_column, self.index_column = image_column, index_column

    def __len__(self) -> int:
        return len(self.cache)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        indices = [int(i) for i in indices]
        columns = self.transform({self.image_column: [self.cache[i] for i in indices], self.index_column: indices})
        return [{name: values[row] for name, values in columns.items()} for row in range(len(indices))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]


class _Chunks(Dataset):
    """Worker tasks over `_CHUNK` rows: read their sizes, or decode them into the memory map."""

    def __init__(self, encoded: datasets.Dataset, image_column: str, num_channels: int, task: str, output=None):
        self.encoded, self.image_column, self.num_channels = encoded, image_column, num_channels
        self.task, self.output = task, output

    def __len__(self) -> int:
        return -(-len(self.encoded) // _CHUNK)

    def __getitem__(self, chunk: int) -> Any:
        rows = range(chunk * _CHUNK, min(len(self.encoded), (chunk + 1) * _CHUNK))
        images = self.encoded[rows.start : rows.stop][self.image_column]
        if self.task == "sizes":
            return [(read_image_size(image, self.num_channels), _name(image)) for image in images]
        array = np.load(self.output, mmap_mode="r+")
        for row, image in zip(rows, images):
            pixels = decode_uint8(image, self.num_channels)
            if pixels.shape != array.shape[1:]:
                raise ValueError(f"{_name(image)} decodes to {pixels.shape}, not its header's {array.shape[1:]}.")
            array[row] = pixels
        array.flush()
        return len(rows)


def _run(tasks: _Chunks, num_workers: int):
    yield from DataLoader(tasks, batch_size=None, num_workers=num_workers, collate_fn=_identity)


def _identity(item: Any) -> Any:
    return item


def _single_size(encoded: datasets.Dataset, image_column: str, num_channels: int, num_workers: int) -> tuple[int, int]:
    """The one `(height, width)` of every image (headers only), or a `ValueError` listing the sizes found."""
    sizes: Counter = Counter()
    examples: dict[tuple[int, int], str] = {}
    for chunk in _run(_Chunks(encoded, image_column, num_channels, task="sizes"), num_workers):
        for size, name in chunk:
            sizes[size] += 1
            examples.setdefault(size, name)
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w} (height x width) x{n}, e.g. {examples[(h, w)]}" for (h, w), n in sizes.most_common(5))
        raise ValueError(
            f"A decoded cache needs images of one size, got {len(sizes)} sizes: {found}. It is for fixed-size datasets "
            "such as CelebA's aligned crops: train without it (images are decoded each epoch), or resize the dataset "
            "to one size first."
        )
    if not sizes:
        raise ValueError("Cannot build a decoded cache of an empty dataset.")
    return next(iter(sizes))


def _problem(directory: Path, num_images: int, num_channels: int, images: str) -> str | None:
    """Why the cache in `directory` cannot serve these images (None: it can)."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
        shape, recorded = tuple(meta["shape"]), meta.get("images_fingerprint")
        array = np.load(directory / meta["file"], mmap_mode="r")  # a truncated file fails here
    except Exception as error:  # noqa: BLE001  (json, numpy and the file system raise many types)
        return f"is damaged ({type(error).__name__}: {error})"
    if array.shape != shape or array.dtype != np.uint8:
        return f"is damaged (its images file holds {array.dtype} {array.shape}, its {META_FILE} says uint8 {shape})"
    if shape[0] != num_images or shape[3] != num_channels:
        return f"holds {shape[0]} images of {shape[3]} channel(s), not {num_images} of {num_channels}"
    if recorded is None:
        return "does not record the sizes and times of the files it was built from (an earlier release built it)"
    if recorded != images:
        return "was built from images that have changed since (a file's size or times differ, or a file is gone)"
    return None


def _check_disk(cache_dir: Path, directory: Path, shape: tuple[int, ...], reserve_bytes: int) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    needed, free = int(np.prod(shape)), shutil.disk_usage(cache_dir).free
    number, height, width, channels = shape
    logger.info(
        f"decoded cache: {number} images of {height}x{width}x{channels} uint8 = {needed / 1e9:.2f} GB into "
        f"{directory}; {free / 1e9:.1f} GB free there"
    )
    if needed + reserve_bytes > free:
        raise OSError(
            f"Not enough disk for the decoded cache: it needs {needed / 1e9:.2f} GB (+{reserve_bytes / 1e9:.1f} GB "
            f"kept free) and {cache_dir} has {free / 1e9:.2f} GB free. Free some space, point the cache at another "
            "disk, or train without it."
        )


def _name(image: Any) -> str:
    if isinstance(image, dict):
        return str(image.get("path") or "<in-memory bytes>")
    return str(image)

