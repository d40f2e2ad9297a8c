"""Label columns (`dilated_vit_mae/data/labels.py`): which columns are the labels, and their encoding."""

import datasets
import pytest

from dilated_vit_mae.data.labels import class_ids, label_matrix, resolve_label_columns


def test_class_ids_maps_unseen_values_to_minus_one():
    train_ids, eval_ids, classes = class_ids(["b", "a", "b"], ["a", "c"])
    assert classes == ["a", "b"] and train_ids.tolist() == [1, 0, 1] and eval_ids.tolist() == [0, -1]


def test_label_columns_default_to_attributes_then_fallback():
    assert resolve_label_columns(["image", "Smiling", "Male", "celeb_id"]) == ["Male", "Smiling"]  # CelebA's order
    assert resolve_label_columns(["image", "celeb_id", "label"], fallback=("celeb_id", "label")) == ["celeb_id"]
    assert resolve_label_columns(["image", "x"], label_column="x") == ["x"]
    with pytest.raises(ValueError, match="no CelebA attribute columns"):
        resolve_label_columns(["image", "label"])
    with pytest.raises(ValueError, match="not in the dataset"):
        resolve_label_columns(["image"], label_columns=["Smiling"])


def test_label_matrix_maps_celeba_minus_one_and_refuses_other_values():
    dataset = datasets.Dataset.from_dict({"a": [-1, 1, 1], "b": [1, -1, 1]})
    assert label_matrix(dataset, ["a", "b"]).tolist() == [[0, 1], [1, 0], [1, 1]]
    with pytest.raises(ValueError, match="must be binary"):
        label_matrix(datasets.Dataset.from_dict({"a": [0, 2]}), ["a"])
