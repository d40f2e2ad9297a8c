"""
What the on-disk caches and records of this package are keyed by, and how they are written, in one place: the
up-front image check's record ([`~dilated_vit_mae.data.loading.load_celeba`]), the decoded-image cache
([`~dilated_vit_mae.data.decoded_cache.DecodedImageCache`]) and the probe's feature cache
([`~dilated_vit_mae.evaluation.probe.FeatureCache`]).

A set of images is identified by what can change without its file names changing: each file's size, modification
time and status-change time (nanoseconds). The status-change time (`ctime`) cannot be set by user tools, so a file
rewritten in place with its old size and its old modification time put back (`cp -p`, `rsync -t`, `touch -r`) still
counts as changed. In-memory images are identified by a hash of their bytes; images held in the Arrow files `datasets`
wrote (a Hub download) by those files' own stat and the dataset's fingerprint (`datasets` never rewrites them in place).
Moving or copying a folder therefore invalidates what was keyed on it: the safe direction.

Partial files and folders are written under [`partial_name`] (host and process id in the name) and renamed into place
when complete ([`written_atomically`], the package's one "write, then rename" helper); [`remove_abandoned_partials`]
removes those of processes on this host that no longer run (a build that was killed), and leaves the others alone (a
concurrent build, or one on another host sharing the folder).

```python
>>> from dilated_vit_mae.data.fingerprint import image_files_fingerprint
>>> a = image_files_fingerprint(["data/celeba_sample/img_align_celeba/000001.jpg"])
>>> a == image_files_fingerprint(["data/celeba_sample/img_align_celeba/000001.jpg"]), len(a)
(True, 24)

```
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "dataset_images_fingerprint",
    "default_cache_dir",
    "image_files_fingerprint",
    "partial_name",
    "remove_abandoned_partials",
    "write_json_atomically",
    "written_atomically",
]

_DIGEST_SIZE = 24  # hex characters kept


def default_cache_dir() -> Path:
    """`$DILATED_VIT_MAE_CACHE`, else `$XDG_CACHE_HOME/dilated_vit_mae`, else `~/.cache/dilated_vit_mae` (read now)."""
    explicit = os.environ.get("DILATED_VIT_MAE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dilated_vit_mae"


def _file_state(path: str) -> bytes:
    try:
        status = os.stat(path)
    except OSError as error:  # a missing file is a state too: it makes the key differ from any built one
        return f"{path}\0missing:{error.errno}\n".encode()
    return f"{path}\0{status.st_size}\0{status.st_mtime_ns}\0{status.st_ctime_ns}\n".encode()


def image_files_fingerprint(images: Iterable[str | os.PathLike[str] | dict]) -> str:
    """
    A key for a sequence of images that changes when any of them changes (see the module docstring).

    Args:
        images (iterable of `str`, `os.PathLike` or `dict`):
            File paths, or `{"path": ..., "bytes": ...}` dicts as `datasets.Image(decode=False)` gives them; in order
            (the order is part of the key).

    Returns:
        `str`: 24 hex characters.
    """
    digest = hashlib.sha256()
    for image in images:
        if isinstance(image, dict):
            data, path = image.get("bytes"), image.get("path")
            if data is not None:
                digest.update(b"bytes\0" + hashlib.sha256(data).digest() + b"\n")
                continue
            if path is None:
                digest.update(b"empty\n")
                continue
            image = path
        digest.update(_file_state(os.fspath(image)))
    return digest.hexdigest()[:_DIGEST_SIZE]


def dataset_images_fingerprint(dataset: Any, image_column: str = "image") -> str:
    """
    [`image_files_fingerprint`] of a `datasets.Dataset`'s image column, read as Arrow (nothing is decoded, and bytes
    held in `datasets`' own Arrow files are not copied out: those files' stat and the dataset's fingerprint stand for
    them).
    """
    cache_files = [entry["filename"] for entry in (dataset.cache_files or [])]
    digest = hashlib.sha256()
    if cache_files:
        digest.update(f"{dataset._fingerprint}\n".encode())
        for name in sorted(cache_files):
            digest.update(_file_state(name))
    table = dataset.select_columns([image_column]).with_format("arrow")
    for start in range(0, len(dataset), 8192):
        column = table[start : start + 8192].column(image_column).combine_chunks()
        if hasattr(column, "field"):  # struct<bytes, path>
            paths, data = column.field("path").to_pylist(), column.field("bytes")
            items = []
            for row, path in enumerate(paths):
                if data[row].is_valid:
                    # bytes inside datasets' Arrow files are covered by those files' stat; others are hashed
                    items.append({"path": path, "bytes": b"" if cache_files else data[row].as_py()})
                else:
                    items.append({"path": path, "bytes": None})
        else:  # a plain string column of paths
            items = column.to_pylist()
        digest.update(image_files_fingerprint(items).encode())
    return digest.hexdigest()[:_DIGEST_SIZE]


def partial_name(final: str | os.PathLike[str]) -> Path:
    """Where to write `final` before renaming it into place: `.partial-<name>-<host>-<pid>` beside it."""
    final = Path(final)
    return final.with_name(f".partial-{final.name}-{socket.gethostname()}-{os.getpid()}")


def remove_abandoned_partials(directory: str | os.PathLike[str]) -> list[Path]:
    """
    Remove the [`partial_name`] files and folders in `directory` whose writer ran on this host and has exited (a
    killed build); returns what was removed. Those of live processes and of other hosts are left alone.
    """
    directory, host, removed = Path(directory), socket.gethostname(), []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if not entry.name.startswith(".partial-"):
            continue
        owner, _, pid = entry.name.rpartition("-")
        if not pid.isdigit() or not owner.endswith(f"-{host}") or _is_running(int(pid)):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it now: a leftover of an earlier failure here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def written_atomically(final: str | os.PathLike[str], partial: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """
    Write `final`, a file or a folder, under `partial` (default [`partial_name`]): yields that name, and renames it
    into place when the block completes, so that readers see the old `final` or the new one, whole (a folder replaces
    only a missing or empty one). On an error, what the block wrote is removed; so is a leftover of the same name
    first (this process's own earlier failure).

    ```python
    >>> with written_atomically(path) as partial:  # doctest: +SKIP
    ...     safetensors.torch.save_file(tensors, str(partial))
    ```
    """
    final = Path(final)
    partial = partial_name(final) if partial is None else Path(partial)
    _remove(partial)
    try:
        yield partial
        os.replace(partial, final)
    finally:
        _remove(partial)


def write_json_atomically(
    path: str | os.PathLike[str], value: Any, partial: str | os.PathLike[str] | None = None
) -> None:
    """
    Write `value` as JSON through [`written_atomically`] (under `partial` when given), creating the folder; partial
    files that killed writers left in the same folder are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(path.parent)
    with written_atomically(path, partial) as partial:
        partial.write_text(json.dumps(value, indent=2) + "\n")
