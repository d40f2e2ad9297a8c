"""Tests for `dilated_vit_mae.data.decoded_cache`: build once on a tiny folder of JPEGs, reuse, refuse what cannot work."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

from dilated_vit_mae.data import decoded_cache
from dilated_vit_mae.data.decoded_cache import DecodedImageCache
from dilated_vit_mae.data.seeding import IndexedTransform
from dilated_vit_mae.data.transforms import MAEHostTransform, collate_examples, decode_uint8

REPO_ROOT = Path(__file__).resolve().parent.parent


def jpeg_folder(root, sizes) -> datasets.Dataset:
    """JPEGs of the given (width, height) sizes, as an image dataset with a `sample_index` column."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = root / f"{i:06d}.jpg"
        PIL.Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    dataset = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())
    return dataset.add_column("sample_index", list(range(len(paths))))


def forbidden(*args, **kwargs):
    raise AssertionError("an image was decoded although the cache holds it")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cache_holds_the_decoded_images_in_row_order_and_is_reused(tmp_path, num_workers, caplog, monkeypatch):
    dataset = jpeg_folder(tmp_path / "jpegs", [(17, 21)] * 300)  # more than one worker task of 256 images
    with caplog.at_level("INFO", logger="dilated_vit_mae.data.decoded_cache"):
        cache = DecodedImageCache.build(dataset, tmp_path / "cache", num_workers=num_workers)
    # the size and the free disk are stated before anything is written
    assert any("300 images of 21x17x3 uint8 = 0.00 GB" in r.message and "GB free there" in r.message for r in caplog.records)
    assert cache.shape == (300, 21, 17, 3) and len(cache) == 300 and cache.nbytes == 300 * 21 * 17 * 3
    files = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    for i in (0, 1, 255, 256, 299):
        assert np.array_equal(cache[i], decode_uint8(files[i]))
    meta = json.loads((cache.directory / "meta.json").read_text())
    assert meta["fingerprint"] == dataset._fingerprint and meta["shape"] == [300, 21, 17, 3]
    assert cache.directory.name == f"decoded-{dataset._fingerprint}-3ch"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.directory.name]  # no temporary left

    # a second build opens the first: no image is decoded again
    monkeypatch.setattr(decoded_cache, "decode_uint8", forbidden)
    again = DecodedImageCache.build(dataset, tmp_path / "cache")
    assert again.directory == cache.directory and np.array_equal(again[299], cache[299])
    monkeypatch.undo()
    # another dataset (another fingerprint) gets its own cache
    other = jpeg_folder(tmp_path / "other", [(17, 21)] * 3)
    assert DecodedImageCache.build(other, tmp_path / "cache").directory != cache.directory


def test_cached_dataset_feeds_the_host_transform_like_the_files(tmp_path):
    dataset = jpeg_folder(tmp_path / "jpegs", [(30, 40)] * 8)
    cache = DecodedImageCache.build(dataset, tmp_path / "cache")
    transform = IndexedTransform(MAEHostTransform(16), seed=0)
    loader = DataLoader(cache.as_dataset(transform), batch_size=4, num_workers=2, collate_fn=collate_examples)
    from_cache = list(loader)
    undecoded = dataset.cast_column("image", datasets.Image(decode=False))
    for start, batch in zip((0, 4), from_cache):
        rows = undecoded[start : start + 4]
        expected = collate_examples(
            [{"pixel_values": p, "sample_index": i} for p, i in zip(*transform(rows).values())]
        )
        for key in ("pixel_values_uint8", "crop_boxes", "flips", "sample_index", "image_sizes"):
            assert torch.equal(batch[key], expected[key]), key
    assert not cache[0].flags.owndata  # a view of the memory map, not a copy
    cache[0][0, 0, 0] = 255 - cache[0][0, 0, 0]  # copy-on-write: the file does not change
    assert np.array_equal(DecodedImageCache(cache.directory)[0], decode_uint8(undecoded[0]["image"]))


def test_mixed_sizes_are_refused_before_writing(tmp_path):
    dataset = jpeg_folder(tmp_path / "jpegs", [(17, 21)] * 5 + [(20, 21)])
    with pytest.raises(ValueError, match=r"needs images of one size, got 2 sizes: 21x17 .*x5.* 21x20 .*000005\.jpg"):
        DecodedImageCache.build(dataset, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_disk_too_small_is_refused_with_the_sizes(tmp_path, monkeypatch):
    dataset = jpeg_folder(tmp_path / "jpegs", [(17, 21)] * 4)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match=r"Not enough disk for the decoded cache: it needs 0\.00 GB .* 0\.00 GB free"):
        DecodedImageCache.build(dataset, tmp_path / "cache", reserve_bytes=0)  # 4 x 21 x 17 x 3 = 4,284 bytes
    assert not any((tmp_path / "cache").iterdir())
    with pytest.raises(FileNotFoundError, match="is not a decoded cache"):
        DecodedImageCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="No column 'img'"):
        DecodedImageCache.build(dataset, tmp_path / "cache", image_column="img")


# ----------------------------------------------------------------------------------------------------------------------
# Never stale, never damaged, nothing partial left (issue 19)
# ----------------------------------------------------------------------------------------------------------------------


def replace_in_place(path, pixels) -> None:
    """Rewrite a JPEG with other pixels, keeping its name, its size (padded after the end-of-image marker, which decoders
    ignore) and its modification time (as `cp -p` or `rsync -t` would)."""
    status = path.stat()
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, "JPEG", quality=50)
    data = buffer.getvalue()
    assert len(data) <= status.st_size
    path.write_bytes(data + b"\0" * (status.st_size - len(data)))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_images_replaced_in_place_rebuild_the_cache_with_one_warning(tmp_path, caplog):
    dataset = jpeg_folder(tmp_path / "jpegs", [(17, 21)] * 6)
    old = DecodedImageCache.build(dataset, tmp_path / "cache")
    old_pixels = np.array(old[0])
    for path in sorted((tmp_path / "jpegs").glob("*.jpg")):
        replace_in_place(path, np.full((21, 17, 3), 255, np.uint8) - decode_uint8(str(path)))
    files = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    assert [os.path.getsize(f["path"]) for f in files] == [os.path.getsize(p) for p in sorted((tmp_path / "jpegs").glob("*"))]
    with caplog.at_level("INFO", logger="dilated_vit_mae.data.decoded_cache"):
        new = DecodedImageCache.build(dataset, tmp_path / "cache")
    for i in range(6):
        assert np.array_equal(new[i], decode_uint8(files[i])), i
    assert np.abs(new[0].astype(int) - old_pixels).mean() > 50  # the old pixels are not served
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(new.directory) in warnings[0] and "changed since" in warnings[0]
    # unchanged now: reused without a word
    caplog.clear()
    DecodedImageCache.build(dataset, tmp_path / "cache")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("damage", ["truncated_images", "garbage_meta", "no_images_fingerprint"])
def test_a_damaged_cache_is_removed_and_rebuilt_with_one_warning(tmp_path, caplog, damage):
    dataset = jpeg_folder(tmp_path / "jpegs", [(17, 21)] * 5)
    cache = DecodedImageCache.build(dataset, tmp_path / "cache")
    if damage == "truncated_images":
        images = cache.directory / "images.npy"
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "garbage_meta":
        (cache.directory / "meta.json").write_text('{"shape": [5, 21')
    else:  # a cache an earlier release built: nothing says which files it came from
        meta = json.loads((cache.directory / "meta.json").read_text())
        del meta["images_fingerprint"]
        (cache.directory / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="dilated_vit_mae.data.decoded_cache"):
        rebuilt = DecodedImageCache.build(dataset, tmp_path / "cache")
    assert len(caplog.records) == 1 and str(cache.directory) in caplog.records[0].message
    assert "removed it, building it again" in caplog.records[0].message
    files = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    assert all(np.array_equal(rebuilt[i], decode_uint8(files[i])) for i in range(5))


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    dataset = jpeg_folder(tmp_path / "jpegs", [(17, 21)] * 300)
    calls = []

    def fail_late(image, num_channels):
        calls.append(image)
        if len(calls) == 260:  # inside the second chunk: the first is already written
            raise OSError(28, "No space left on device")
        return decode_uint8(image, num_channels)

    monkeypatch.setattr(decoded_cache, "decode_uint8", fail_late)
    with pytest.raises(OSError, match="No space left"):
        DecodedImageCache.build(dataset, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_killed_build_is_cleaned_up_by_the_next_one(tmp_path):
    dataset = jpeg_folder(tmp_path / "jpegs", [(17, 21)] * 300)
    paths = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    code = textwrap.dedent(f"""
        import time, datasets
        from dilated_vit_mae.data import decoded_cache
        decode = decoded_cache.decode_uint8
        def slow(image, num_channels):
            time.sleep(0.05)
            return decode(image, num_channels)
        decoded_cache.decode_uint8 = slow
        dataset = datasets.Dataset.from_dict({{"image": {[p["path"] for p in paths]!r}}}).cast_column("image", datasets.Image())
        dataset = dataset.add_column("sample_index", list(range(len(dataset))))
        decoded_cache.DecodedImageCache.build(dataset, {str(tmp_path / "cache")!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 240
        while not any((p / "images.npy").exists() for p in (tmp_path / "cache").glob(".*")):
            assert child.poll() is None and time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.1)
        time.sleep(1.0)  # some images written
    finally:
        child.kill()
        child.wait()
    assert [p.name.startswith(".") for p in (tmp_path / "cache").iterdir()] == [True]  # the partial copy is there
    cache = DecodedImageCache.build(dataset, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.directory.name]
    assert np.array_equal(cache[299], decode_uint8(paths[299]))
