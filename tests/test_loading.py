"""Tests for `dilated_vit_mae.data.loading.load_celeba` (offline: Hub sources are mocked)."""

import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from dilated_vit_mae.data import loading as celeba_data
from dilated_vit_mae.data.loading import CELEBA_ATTRIBUTE_NAMES, CELEBA_SAMPLE_DIR, find_bad_images, load_celeba

NUM_IMAGES = 12
# 0 train / 1 valid / 2 test, deliberately not contiguous
PARTITION = [0, 0, 1, 0, 2, 0, 0, 1, 0, 2, 0, 0]


def write_raw_celeba(
    root: Path,
    *,
    num_images: int = NUM_IMAGES,
    partition: list[int] = PARTITION,
    attributes: bool = True,
    identities: bool = True,
    image_dir: Path | None = None,
) -> dict:
    """A small raw CelebA download: 178x218 JPEGs, partition, attributes (runs of spaces) and identities."""
    rng = np.random.default_rng(0)
    image_dir = image_dir or root / "img_align_celeba"
    image_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(num_images)]
    for name in names:
        pixels = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(image_dir / name, quality=80)
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, partition)))
    values = rng.choice([-1, 1], size=(num_images, 40))
    ids = rng.integers(1, 10178, size=num_images)
    if attributes:
        lines = [str(num_images), " ".join(CELEBA_ATTRIBUTE_NAMES) + " "]
        lines += [f"{n} " + " ".join(f"{v:2d}" for v in row) for n, row in zip(names, values)]
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    if identities:
        (root / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, i in zip(names, ids)))
    return {"names": names, "values": values, "ids": ids}


def file_names(dataset: datasets.Dataset) -> list[str]:
    references = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    return [os.path.basename(reference["path"]) for reference in references]


@pytest.fixture
def raw_celeba(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_raw_celeba(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Raw CelebA layout
# ---------------------------------------------------------------------------------------------------------------


def test_raw_layout_splits_columns_and_values(raw_celeba):
    root, truth = raw_celeba
    celeba = load_celeba(root)

    assert list(celeba) == ["train", "validation", "test"]
    assert {split: celeba[split].num_rows for split in celeba} == {"train": 8, "validation": 2, "test": 2}
    assert celeba["train"].column_names == ["image", "celeb_id", *CELEBA_ATTRIBUTE_NAMES]
    features = celeba["train"].features
    assert isinstance(features["image"], datasets.Image)
    assert features["celeb_id"] == datasets.Value("int64")
    assert all(features[name] == datasets.Value("bool") for name in CELEBA_ATTRIBUTE_NAMES)

    split_of = {0: "train", 1: "validation", 2: "test"}
    for split in celeba:
        names = file_names(celeba[split])
        expected = [n for n, p in zip(truth["names"], PARTITION) if split_of[p] == split]
        assert names == expected  # official partition, file order kept
        for row, name in enumerate(names):
            index = truth["names"].index(name)
            example = celeba[split][row]
            assert example["celeb_id"] == truth["ids"][index]
            assert [example[a] for a in CELEBA_ATTRIBUTE_NAMES] == (truth["values"][index] == 1).tolist()
    image = celeba["test"][0]["image"]
    assert isinstance(image, PIL.Image.Image) and image.size == (178, 218)


def test_raw_layout_without_annotations_has_image_only(tmp_path):
    write_raw_celeba(tmp_path, attributes=False, identities=False)
    celeba = load_celeba(tmp_path)
    assert celeba["train"].column_names == ["image"]
    assert celeba["validation"].num_rows == 2


def test_kaggle_layout_nested_folder_and_csv(tmp_path):
    truth = write_raw_celeba(
        tmp_path, attributes=False, identities=False, image_dir=tmp_path / "img_align_celeba" / "img_align_celeba"
    )
    (tmp_path / "list_eval_partition.txt").unlink()
    names, values = truth["names"], truth["values"]
    (tmp_path / "list_eval_partition.csv").write_text(
        "image_id,partition\n" + "".join(f"{n},{p}\n" for n, p in zip(names, PARTITION))
    )
    (tmp_path / "list_attr_celeba.csv").write_text(
        "image_id," + ",".join(CELEBA_ATTRIBUTE_NAMES) + "\n"
        + "".join(f"{n}," + ",".join(str(v) for v in row) + "\n" for n, row in zip(names, values))
    )  # fmt: skip
    celeba = load_celeba(tmp_path)
    assert celeba["train"].num_rows == 8
    first = names.index(file_names(celeba["test"])[0])
    assert [celeba["test"][0][a] for a in CELEBA_ATTRIBUTE_NAMES] == (values[first] == 1).tolist()


@pytest.mark.parametrize(
    "name, line_index, line, match",
    [
        ("list_eval_partition.txt", 3, "000003.jpg 0", r"list_eval_partition\.txt' line 4: '000003\.jpg' is listed twice"),
        ("identity_CelebA.txt", 6, "000006.jpg 12", r"identity_CelebA\.txt' line 7: '000006\.jpg' is listed twice"),
        ("list_attr_celeba.txt", 3, "000001.jpg" + " 1" * 40,
         r"list_attr_celeba\.txt' line 4: '000001\.jpg' is listed twice"),
        ("list_eval_partition.txt", 5, "000006.jpg 3",
         r"list_eval_partition\.txt' line 6: expected '<image file> <0\|1\|2>' .*got \['3'\]\. Re-download"),
        ("identity_CelebA.txt", 1, "000002.jpg 7.5",
         r"identity_CelebA\.txt' line 2: expected '<image file> <integer identity>', got \['7\.5'\]"),
    ],
)  # fmt: skip
def test_every_annotation_file_names_its_bad_line(raw_celeba, name, line_index, line, match):
    root, _ = raw_celeba
    replace_line(root / name, line_index, line)
    with pytest.raises(ValueError, match=match):
        load_celeba(root)


def test_bad_lines_of_the_kaggle_csv_files_and_an_empty_partition_are_named(tmp_path):
    truth = write_raw_celeba(tmp_path, identities=False)
    (tmp_path / "list_attr_celeba.txt").unlink()
    names = truth["names"]
    rows = "".join(f"{n}," + ",".join(["1"] * 40) + "\n" for n in names)
    (tmp_path / "list_attr_celeba.csv").write_text("image_id," + ",".join(CELEBA_ATTRIBUTE_NAMES) + "\n" + rows)
    replace_line(tmp_path / "list_attr_celeba.csv", 3, names[2] + "," + ",".join(["1"] * 39) + ",yes")
    with pytest.raises(ValueError, match=r"list_attr_celeba\.csv' line 4: attribute values must be 1 or -1, got \['yes'\]"):
        load_celeba(tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt' lists no images"):
        load_celeba(tmp_path)


def test_official_download_layout_with_subfolders(tmp_path):
    write_raw_celeba(tmp_path, image_dir=tmp_path / "Img" / "img_align_celeba")
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Anno").mkdir()
    (tmp_path / "list_eval_partition.txt").rename(tmp_path / "Eval" / "list_eval_partition.txt")
    (tmp_path / "list_attr_celeba.txt").rename(tmp_path / "Anno" / "list_attr_celeba.txt")
    celeba = load_celeba(tmp_path)
    assert celeba["validation"].num_rows == 2
    assert "Smiling" in celeba["validation"].column_names


def test_shipped_sample_loads():
    celeba = load_celeba(CELEBA_SAMPLE_DIR)
    assert {split: celeba[split].num_rows for split in celeba} == {"train": 40, "validation": 8, "test": 8}
    assert celeba["train"].column_names == ["image", "celeb_id", *CELEBA_ATTRIBUTE_NAMES]
    assert set(celeba["train"]["celeb_id"]) == {1, 2, 3}
    image = celeba["validation"][0]["image"]
    assert image.size == (178, 218) and image.mode == "RGB"
    total_bytes = sum(p.stat().st_size for p in CELEBA_SAMPLE_DIR.rglob("*") if p.is_file())
    assert total_bytes < 2 * 1024**2


def test_streaming_local_source_gives_iterable_splits(raw_celeba):
    root, _ = raw_celeba
    celeba = load_celeba(root, streaming=True)
    assert isinstance(celeba, datasets.IterableDatasetDict)
    examples = list(celeba["test"])
    assert len(examples) == 2 and examples[0]["image"].size == (178, 218)


# ---------------------------------------------------------------------------------------------------------------
# Malformed sources
# ---------------------------------------------------------------------------------------------------------------


def replace_line(path: Path, line_index: int, new_line: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_index] = new_line
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "corrupt, error, match",
    [
        pytest.param(
            lambda root: (root / "img_align_celeba" / "000005.jpg").unlink(),
            FileNotFoundError, r"list_eval_partition\.txt.*do not exist.*000005\.jpg", id="missing-image",
        ),
        pytest.param(
            lambda root: replace_line(root / "list_eval_partition.txt", 2, "000003.jpg valid"),
            ValueError, r"list_eval_partition\.txt' line 3: expected '<image file> <0\|1\|2>'", id="partition-line",
        ),
        pytest.param(
            lambda root: replace_line(root / "list_attr_celeba.txt", 0, "13"),
            ValueError, r"list_attr_celeba\.txt'?: line 1 declares 13 images but the file has 12 rows",
            id="attribute-count",
        ),
        pytest.param(
            lambda root: replace_line(root / "list_attr_celeba.txt", 1, " ".join(CELEBA_ATTRIBUTE_NAMES[:-1])),
            ValueError, r"list_attr_celeba\.txt' line 2: expected the 40 CelebA attribute names.*missing \['Young'\]",
            id="attribute-names",
        ),
        pytest.param(
            lambda root: replace_line(root / "list_attr_celeba.txt", 4, "000003.jpg " + " ".join(["0"] * 40)),
            ValueError, r"list_attr_celeba\.txt' line 5: attribute values must be 1 or -1, got \['0'\]",
            id="attribute-values",
        ),
        pytest.param(
            lambda root: replace_line(root / "list_attr_celeba.txt", 3, "000002.jpg " + " ".join(["1"] * 39)),
            ValueError, r"list_attr_celeba\.txt' line 4: expected an image file and 40 values, got 39",
            id="attribute-row-length",
        ),
        pytest.param(
            lambda root: replace_line(root / "identity_CelebA.txt", 6, "000007.jpg"),
            ValueError, r"identity_CelebA\.txt' line 7: expected '<image file> <integer identity>'", id="identity-line",
        ),
        pytest.param(
            lambda root: replace_line(root / "identity_CelebA.txt", 6, "000099.jpg 12"),
            ValueError, r"identity_CelebA\.txt' has no row for 1 image\(s\) of the partition: 000007\.jpg",
            id="identity-uncovered",
        ),
        pytest.param(
            lambda root: (root / "list_eval_partition.txt").unlink(),
            FileNotFoundError, r"No list_eval_partition\.txt .*missing_partition='carve'", id="no-partition",
        ),
    ],
)  # fmt: skip
def test_malformed_raw_source_raises_naming_the_file(raw_celeba, corrupt, error, match):
    root, _ = raw_celeba
    corrupt(root)
    with pytest.raises(error, match=match):
        load_celeba(root)


def test_missing_partition_can_be_carved(tmp_path, caplog):
    write_raw_celeba(tmp_path, num_images=20, partition=[0] * 20)
    (tmp_path / "list_eval_partition.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="dilated_vit_mae.data.loading"):
        celeba = load_celeba(tmp_path, missing_partition="carve", validation_fraction=0.1, test_fraction=0.1)
    assert {split: celeba[split].num_rows for split in celeba} == {"train": 16, "validation": 2, "test": 2}
    assert "not the official CelebA partition" in caplog.text


def test_missing_image_folder_raises(tmp_path):
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(FileNotFoundError, match="No image folder.*img_align_celeba"):
        load_celeba(tmp_path)


def test_bad_arguments_raise(raw_celeba):
    root, _ = raw_celeba
    with pytest.raises(ValueError, match=r"`test_fraction` must be in \[0, 1\), got 1\.5"):
        load_celeba(root, test_fraction=1.5)
    with pytest.raises(ValueError, match="`on_bad_image` must be 'raise' or 'skip', got 'ignore'"):
        load_celeba(root, on_bad_image="ignore")
    with pytest.raises(FileNotFoundError, match="No directory at"):
        load_celeba(str(root / "does" / "not" / "exist"))
    with pytest.raises(ValueError, match="got the file"):
        load_celeba(root / "list_eval_partition.txt")


# ---------------------------------------------------------------------------------------------------------------
# Unreadable images
# ---------------------------------------------------------------------------------------------------------------


def corrupt_images(root: Path) -> None:
    image_dir = root / "img_align_celeba"
    (image_dir / "000002.jpg").write_bytes(b"<html>not an image</html>")
    data = (image_dir / "000004.jpg").read_bytes()
    (image_dir / "000004.jpg").write_bytes(data[: len(data) // 2])  # truncated: valid header, no end marker


def test_bad_images_raise_naming_the_file(raw_celeba):
    root, _ = raw_celeba
    corrupt_images(root)
    with pytest.raises(ValueError, match=r"2 of 12 image\(s\) .* cannot be read: .*000002\.jpg .*000004\.jpg"):
        load_celeba(root)


def test_bad_images_skipped_and_counted(raw_celeba, caplog):
    root, _ = raw_celeba
    corrupt_images(root)
    with caplog.at_level(logging.WARNING, logger="dilated_vit_mae.data.loading"):
        celeba = load_celeba(root, on_bad_image="skip")
    assert sum(celeba[split].num_rows for split in celeba) == NUM_IMAGES - 2
    kept = [name for split in celeba for name in file_names(celeba[split])]
    assert "000002.jpg" not in kept and "000004.jpg" not in kept
    assert "Skipped 2 of 12 unreadable image(s)" in caplog.text and "000002.jpg" in caplog.text
    for split in celeba:  # every remaining image decodes
        for example in celeba[split]:
            example["image"].load()


def test_bad_images_full_decode_check_and_no_check(raw_celeba):
    root, _ = raw_celeba
    corrupt_images(root)
    assert sum(load_celeba(root, verify_images="decode", on_bad_image="skip").num_rows.values()) == NUM_IMAGES - 2
    assert sum(load_celeba(root, verify_images=False).num_rows.values()) == NUM_IMAGES


def test_find_bad_images_on_bytes_and_paths(raw_celeba):
    root, _ = raw_celeba
    good = root / "img_align_celeba" / "000001.jpg"
    items = [str(good), {"bytes": good.read_bytes(), "path": None}, {"bytes": b"junk", "path": "junk.jpg"}]
    bad = find_bad_images(items)
    assert [(index, name) for index, name, _ in bad] == [(2, "junk.jpg")]


# ---------------------------------------------------------------------------------------------------------------
# The image check at scale: progress, and a record that spares a repeated launch the check (issue 16)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def counted_checks(monkeypatch, tmp_path):
    """Records go to a folder of this test (through the default location's variable); counts the images opened."""
    monkeypatch.setenv("DILATED_VIT_MAE_CACHE", str(tmp_path / "user-cache"))
    opened = []
    check_one = celeba_data._check_one_image
    monkeypatch.setattr(celeba_data, "_check_one_image", lambda item, decode: opened.append(item) or check_one(item, decode))
    return opened


def test_a_repeated_load_of_an_unchanged_folder_does_not_check_again(raw_celeba, counted_checks, caplog):
    from test_decoded_cache import replace_in_place

    root, _ = raw_celeba
    first = load_celeba(root)
    assert len(counted_checks) == NUM_IMAGES
    records = list((root / "user-cache" / "image_checks").iterdir())
    assert len(records) == 1 and records[0].suffix == ".json"  # under the user's cache, not in the data folder
    counted_checks.clear()
    with caplog.at_level(logging.INFO, logger="dilated_vit_mae.data.loading"):
        again = load_celeba(root)
    assert counted_checks == [] and "not checked again" in caplog.text
    assert {split: again[split].num_rows for split in again} == {split: first[split].num_rows for split in first}
    # one image rewritten in place (same name, size and modification time): everything is checked again
    image = root / "img_align_celeba" / "000003.jpg"
    replace_in_place(image, 255 - np.asarray(PIL.Image.open(image)))
    load_celeba(root)
    assert len(counted_checks) == NUM_IMAGES
    counted_checks.clear()
    # a decode check is not satisfied by a header check's record; a header check is by a decode check's
    load_celeba(root, verify_images="decode")
    assert len(counted_checks) == NUM_IMAGES
    counted_checks.clear()
    load_celeba(root)
    assert counted_checks == []
    load_celeba(root, check_record_dir=False)  # no record: always checked
    assert len(counted_checks) == NUM_IMAGES


def test_a_recorded_bad_image_is_still_refused_or_skipped_without_reopening(raw_celeba, counted_checks):
    root, _ = raw_celeba
    corrupt_images(root)
    for attempt in range(2):
        with pytest.raises(ValueError, match=r"2 of 12 image\(s\) .* cannot be read: .*000002\.jpg .*000004\.jpg"):
            load_celeba(root)
    assert len(counted_checks) == NUM_IMAGES  # the second refusal came from the record
    skipped = load_celeba(root, on_bad_image="skip")
    assert sum(skipped.num_rows.values()) == NUM_IMAGES - 2 and len(counted_checks) == NUM_IMAGES


def test_a_damaged_record_is_removed_with_one_warning_and_the_images_checked(raw_celeba, counted_checks, caplog):
    root, _ = raw_celeba
    load_celeba(root)
    (record,) = (root / "user-cache" / "image_checks").iterdir()
    record.write_text('{"fingerprint": "')
    counted_checks.clear()
    with caplog.at_level(logging.WARNING, logger="dilated_vit_mae.data.loading"):
        load_celeba(root)
    assert len(caplog.records) == 1 and str(record) in caplog.text and "damaged" in caplog.text
    assert len(counted_checks) == NUM_IMAGES and json.loads(record.read_text())["num_images"] == NUM_IMAGES


def test_the_image_check_says_how_many_images_it_checks_and_shows_progress(raw_celeba, counted_checks, caplog, capsys):
    root, _ = raw_celeba
    with caplog.at_level(logging.INFO, logger="dilated_vit_mae.data.loading"):
        load_celeba(root)
    assert f"image check: {NUM_IMAGES} images of {root / 'img_align_celeba'} (headers only)" in caplog.text
    assert f"{NUM_IMAGES}/{NUM_IMAGES}" in capsys.readouterr().err  # the bar
    load_celeba(root, progress=False, check_record_dir=False)
    assert f"{NUM_IMAGES}/{NUM_IMAGES}" not in capsys.readouterr().err


@pytest.fixture
def celeba_standin(tmp_path):
    """`make_celeba_sample.py --full_size`, scaled down: CelebA's file names, partition proportions and formats."""
    from conftest import load_file

    builder = load_file("scripts/make_celeba_sample.py", "make_celeba_sample")
    return builder.make_full_size_standin(tmp_path / "standin", 300), builder


def test_the_full_size_standin_loads_as_raw_celeba_with_the_sample_annotations(celeba_standin, counted_checks):
    root, builder = celeba_standin
    assert builder.standin_split_counts(202_599) == {0: 162_770, 1: 19_867, 2: 19_962}  # CelebA's own partition
    celeba = load_celeba(root)
    assert {split: celeba[split].num_rows for split in celeba} == {"train": 241, "validation": 29, "test": 30}
    assert file_names(celeba["validation"])[0] == "000242.jpg" and file_names(celeba["test"])[-1] == "000300.jpg"
    sample = load_celeba(CELEBA_SAMPLE_DIR, verify_images=False)["train"]  # files 1-40 of the sample
    for index in (0, 39, 56 + 39, 240):
        source = index % 56
        if source < 40:
            assert celeba["train"][index]["Smiling"] == sample[source]["Smiling"]
            assert celeba["train"][index]["celeb_id"] == sample[source]["celeb_id"]
    images = root / "img_align_celeba"
    assert (images / "000057.jpg").stat().st_ino == (images / "000001.jpg").stat().st_ino  # a hard link
    assert (images / "000001.jpg").stat().st_ino != (CELEBA_SAMPLE_DIR / "img_align_celeba" / "000001.jpg").stat().st_ino
    assert celeba["test"][0]["image"].size == (178, 218)
    with pytest.raises(FileExistsError, match="is not empty"):
        builder.make_full_size_standin(root, 300)


# ---------------------------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------------------------


def test_imagefolder_with_metadata_is_carved_and_typed(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    rows = ["file_name,celeb_id,Smiling"]
    for i in range(20):
        PIL.Image.new("RGB", (16, 20), (i * 10, 0, 0)).save(folder / f"{i:03d}.png")
        rows.append(f"{i:03d}.png,{i % 3},{1 if i % 2 else -1}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")

    celeba = load_celeba(folder, validation_fraction=0.1, test_fraction=0.1, cache_dir=tmp_path / "cache")
    assert {split: celeba[split].num_rows for split in celeba} == {"train": 16, "validation": 2, "test": 2}
    assert celeba["train"].features["Smiling"] == datasets.Value("bool")
    for split in celeba:
        for example in celeba[split]:
            index = int(example["image"].getpixel((0, 0))[0] / 10)
            assert example["Smiling"] == bool(index % 2) and example["celeb_id"] == index % 3


def test_imagefolder_train_test_folders_get_validation(tmp_path):
    for split, count in (("train", 20), ("test", 4)):
        (tmp_path / "faces" / split).mkdir(parents=True)
        for i in range(count):
            PIL.Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / "faces" / split / f"{i}.png")
    celeba = load_celeba(tmp_path / "faces", validation_fraction=0.25, cache_dir=tmp_path / "cache")
    assert {split: celeba[split].num_rows for split in celeba} == {"train": 15, "validation": 5, "test": 4}
    # no validation wanted: an empty split, also when streamed
    streamed = load_celeba(tmp_path / "faces", validation_fraction=0.0, streaming=True, cache_dir=tmp_path / "cache")
    assert {split: len(list(streamed[split])) for split in streamed} == {"train": 20, "validation": 0, "test": 4}


# ---------------------------------------------------------------------------------------------------------------
# Hub sources (mocked: no network here)
# ---------------------------------------------------------------------------------------------------------------


def tiny_split(num_rows: int, *, start: int = 0, attributes: bool = False) -> datasets.Dataset:
    images = [PIL.Image.new("RGB", (4, 4), (i % 256, 0, 0)) for i in range(num_rows)]
    columns = {"image": images, "idx": list(range(start, start + num_rows))}
    features = {"image": datasets.Image(), "idx": datasets.Value("int64")}
    if attributes:
        columns["celeb_id"] = [i % 7 for i in range(num_rows)]
        features["celeb_id"] = datasets.Value("int64")
        for name in CELEBA_ATTRIBUTE_NAMES:
            columns[name] = [bool(i % 2) for i in range(num_rows)]
            features[name] = datasets.Value("bool")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace `datasets.load_dataset` with a function serving the dicts registered in `hub`, recording calls."""
    hub: dict[str, datasets.DatasetDict] = {}
    calls: list[tuple[tuple, dict]] = []

    def load_dataset(path, name=None, **kwargs):
        calls.append(((path, name), kwargs))
        if path not in hub:
            raise FileNotFoundError(f"Couldn't reach '{path}' on the Hub (offline)")
        loaded = hub[path]
        if kwargs.get("streaming"):
            return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in loaded.items()})
        return loaded

    monkeypatch.setattr(celeba_data.datasets, "load_dataset", load_dataset)
    return hub, calls


def test_hub_flwrlabs_valid_split_is_renamed(fake_hub):
    hub, calls = fake_hub
    hub["flwrlabs/celeba"] = datasets.DatasetDict(
        {"train": tiny_split(6, attributes=True), "valid": tiny_split(3, attributes=True),
         "test": tiny_split(2, attributes=True)}
    )  # fmt: skip
    celeba = load_celeba("flwrlabs/celeba", cache_dir="/tmp/cache", token="hf_x", revision="main")
    assert list(celeba) == ["train", "validation", "test"]
    assert [celeba[s].num_rows for s in celeba] == [6, 3, 2]
    assert celeba["validation"].features["Smiling"] == datasets.Value("bool")
    (path, name), kwargs = calls[0]
    assert (path, name) == ("flwrlabs/celeba", "img_align+identity+attr")
    assert kwargs == {"cache_dir": "/tmp/cache", "token": "hf_x", "revision": "main", "streaming": False}


def test_hub_single_split_is_carved_deterministically(fake_hub):
    hub, _ = fake_hub
    hub["nielsr/CelebA-faces"] = datasets.DatasetDict({"train": tiny_split(100)})

    def carve(seed: int) -> dict[str, list[int]]:
        celeba = load_celeba("nielsr/CelebA-faces", validation_fraction=0.05, test_fraction=0.1, seed=seed)
        return {split: list(celeba[split]["idx"]) for split in celeba}

    first = carve(0)
    assert {split: len(idx) for split, idx in first.items()} == {"train": 85, "validation": 5, "test": 10}
    assert carve(0) == first
    assert carve(1) != first
    assert sorted(first["train"] + first["validation"] + first["test"]) == list(range(100))  # disjoint, complete
    assert all(idx == sorted(idx) for idx in first.values())  # source order kept
    # the test split does not move when only the validation fraction changes
    celeba = load_celeba("nielsr/CelebA-faces", validation_fraction=0.2, test_fraction=0.1, seed=0)
    assert list(celeba["test"]["idx"]) == first["test"]


def test_hub_train_test_source_gets_validation_from_train(fake_hub):
    hub, _ = fake_hub
    hub["tglcourse/CelebA-faces-cropped-128"] = datasets.DatasetDict(
        {"train": tiny_split(40), "test": tiny_split(10, start=1000)}
    )
    celeba = load_celeba("tglcourse/CelebA-faces-cropped-128", validation_fraction=0.25)
    assert [celeba[s].num_rows for s in celeba] == [30, 10, 10]
    assert list(celeba["test"]["idx"]) == list(range(1000, 1010))
    assert set(celeba["validation"]["idx"]) <= set(range(40))
    assert not set(celeba["validation"]["idx"]) & set(celeba["train"]["idx"])


def test_hub_other_sources_normalise_splits(fake_hub):
    hub, _ = fake_hub
    hub["someone/faces-val"] = datasets.DatasetDict(
        {"train": tiny_split(10), "val": tiny_split(2), "test": tiny_split(2), "extra": tiny_split(1)}
    )
    celeba = load_celeba("someone/faces-val")
    assert list(celeba) == ["train", "validation", "test", "extra"]
    hub["someone/faces-img"] = datasets.DatasetDict({"data": tiny_split(20).rename_column("image", "img")})
    celeba = load_celeba("someone/faces-img", validation_fraction=0.1, test_fraction=0.1)
    assert [celeba[s].num_rows for s in celeba] == [16, 2, 2]
    assert "image" in celeba["train"].column_names

    hub["someone/ambiguous"] = datasets.DatasetDict(
        {"train": tiny_split(4), "valid": tiny_split(1), "validation": tiny_split(1)}
    )
    with pytest.raises(ValueError, match="both a 'valid' and a 'validation' split"):
        load_celeba("someone/ambiguous")
    hub["someone/no-train"] = datasets.DatasetDict({"a": tiny_split(4), "b": tiny_split(4)})
    with pytest.raises(ValueError, match=r"has no 'train' split .*got splits \['a', 'b'\]"):
        load_celeba("someone/no-train")


def test_hub_streaming(fake_hub):
    hub, calls = fake_hub
    hub["flwrlabs/celeba"] = datasets.DatasetDict(
        {"train": tiny_split(4), "valid": tiny_split(2), "test": tiny_split(2)}
    )
    celeba = load_celeba("flwrlabs/celeba", streaming=True)
    assert isinstance(celeba, datasets.IterableDatasetDict)
    assert list(celeba) == ["train", "validation", "test"]
    assert len(list(celeba["validation"])) == 2
    assert calls[-1][1]["streaming"] is True

    hub["nielsr/CelebA-faces"] = datasets.DatasetDict({"train": tiny_split(10)})
    with pytest.raises(ValueError, match="Streaming needs a source with explicit train/validation/test splits"):
        load_celeba("nielsr/CelebA-faces", streaming=True)
    with pytest.raises(ValueError, match="Cannot verify images of a streamed dataset"):
        load_celeba("flwrlabs/celeba", streaming=True, verify_images=True)


def test_hub_verification_is_opt_in(fake_hub):
    hub, _ = fake_hub
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"junk", "path": "junk.jpg"}], "idx": [99]},
        features=datasets.Features({"image": datasets.Image(), "idx": datasets.Value("int64")}),
    )
    hub["someone/broken"] = datasets.DatasetDict(
        {"train": datasets.concatenate_datasets([tiny_split(3), broken]), "validation": tiny_split(1),
         "test": tiny_split(1)}
    )  # fmt: skip
    assert load_celeba("someone/broken")["train"].num_rows == 4  # not checked by default
    with pytest.raises(ValueError, match=r"junk\.jpg"):
        load_celeba("someone/broken", verify_images=True)
    assert list(load_celeba("someone/broken", verify_images=True, on_bad_image="skip")["train"]["idx"]) == [0, 1, 2]
