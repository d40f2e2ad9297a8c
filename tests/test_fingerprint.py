"""Tests for `dilated_vit_mae.data.fingerprint`: what the caches and the image-check record are keyed by, and their partials."""

import json
import os
import socket
import subprocess
import sys

import datasets
import pytest

from dilated_vit_mae.data.fingerprint import (
    dataset_images_fingerprint,
    image_files_fingerprint,
    partial_name,
    remove_abandoned_partials,
    write_json_atomically,
    written_atomically,
)


def test_the_fingerprint_changes_with_any_file_change_even_same_size_and_mtime(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(b"abcd")
    before = image_files_fingerprint(paths)
    assert image_files_fingerprint(paths) == before and image_files_fingerprint(map(str, paths)) == before
    assert image_files_fingerprint(paths[::-1]) != before  # order is part of the key
    status = paths[1].stat()
    paths[1].write_bytes(b"wxyz")  # same size, then the old modification time put back
    os.utime(paths[1], ns=(status.st_atime_ns, status.st_mtime_ns))
    assert image_files_fingerprint(paths) != before  # the status-change time moved
    changed = image_files_fingerprint(paths)
    paths[2].unlink()
    assert image_files_fingerprint(paths) != changed  # a file gone
    # in-memory images by their bytes
    assert image_files_fingerprint([{"bytes": b"a", "path": None}]) != image_files_fingerprint([{"bytes": b"b", "path": None}])


def test_dataset_fingerprint_reads_paths_and_bytes_without_decoding(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1")
    by_path = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.jpg")]}).cast_column("image", datasets.Image())
    before = dataset_images_fingerprint(by_path)
    assert dataset_images_fingerprint(by_path) == before
    (tmp_path / "a.jpg").write_bytes(b"22")
    assert dataset_images_fingerprint(by_path) != before
    by_bytes = datasets.Dataset.from_dict({"image": [{"bytes": b"xy", "path": None}]}, features=datasets.Features({"image": datasets.Image()}))
    other = datasets.Dataset.from_dict({"image": [{"bytes": b"xz", "path": None}]}, features=datasets.Features({"image": datasets.Image()}))
    assert dataset_images_fingerprint(by_bytes) != dataset_images_fingerprint(other)


def test_only_partials_of_exited_writers_on_this_host_are_removed(tmp_path):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host = int(exited.stdout), socket.gethostname()
    dead = tmp_path / f".partial-x-{host}-{dead_pid}"
    dead.mkdir()
    (dead / "images.npy").write_bytes(b"half")
    alive = tmp_path / f".partial-y-{host}-{os.getppid()}"  # a running process (pytest's parent)
    alive.write_bytes(b"")
    elsewhere = tmp_path / f".partial-z-another-host-{dead_pid}"
    elsewhere.write_bytes(b"")
    ours = partial_name(tmp_path / "w")  # this process is not writing it now: an earlier failure's leftover
    ours.write_bytes(b"")
    assert sorted(remove_abandoned_partials(tmp_path)) == sorted([dead, ours])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name])
    assert remove_abandoned_partials(tmp_path / "missing") == []


def test_json_is_written_whole_and_a_killed_writers_partial_is_removed(tmp_path):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".partial-record.json-{socket.gethostname()}-{int(exited.stdout)}"
    leftover.write_text('{"half')
    write_json_atomically(tmp_path / "record.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    assert json.loads((tmp_path / "record.json").read_text()) == {"a": 1}


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    final = tmp_path / "features.bin"
    final.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        with written_atomically(final) as partial:
            partial.write_bytes(b"ne")  # a write that fails half-way
            raise OSError("disk full")
    assert final.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["features.bin"]
    with written_atomically(final) as partial:
        assert partial == partial_name(final) and final.read_bytes() == b"old"  # readers see the old file meanwhile
        partial.write_bytes(b"new")
    assert final.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["features.bin"]


def test_a_folder_is_moved_into_place_when_complete_and_removed_when_not(tmp_path):
    final = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        with written_atomically(final) as partial:
            (partial / "sub").mkdir(parents=True)
            (partial / "sub" / "images.npy").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with written_atomically(final) as partial:
        partial.mkdir()
        (partial / "meta.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["cache"] and (final / "meta.json").read_text() == "{}"


def test_a_named_partial_and_a_leftover_of_the_same_name(tmp_path):
    # run.json is written under `.tmp-run.json`, the name the output folder policy removes when a run starts
    partial = tmp_path / ".tmp-run.json"
    partial.write_text('{"half')  # an earlier failure of this writer
    write_json_atomically(tmp_path / "run.json", {"run_id": "a"}, partial=partial)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert json.loads((tmp_path / "run.json").read_text()) == {"run_id": "a"}
