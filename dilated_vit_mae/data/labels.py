"""Label columns of a `datasets.Dataset`: which columns are the labels ([`resolve_label_columns`]: CelebA's attributes
by default), examples without a label ([`drop_missing_labels`]), and their encoding as a 0/1 matrix ([`label_matrix`],
multi-label) or as class ids ([`class_ids`], single-label).

Shared by the linear probe (`scripts/linear_probe.py`) and fine-tuning (`dilated_vit_mae.train.finetune`,
`scripts/run_finetune.py`). Not part of the Hub files (the Hub never runs this).

```python
>>> from dilated_vit_mae.data.labels import class_ids
>>> class_ids(["cat", "dog", "cat"], ["dog", "bird"])[1].tolist()  # a class not seen in training is -1
[1, -1]

```
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .loading import CELEBA_ATTRIBUTE_NAMES


logger = logging.getLogger(__name__)

__all__ = [
    "MISSING_LABEL_FLAG",
    "OnMissingLabel",
    "class_ids",
    "drop_missing_labels",
    "label_matrix",
    "resolve_label_columns",
]


def class_ids(train_values: Sequence[Any], eval_values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """
    Map the values of a single label column to class ids `0..K-1`, the classes being the sorted distinct training
    values; an evaluation value never seen in training maps to `-1` (always an error). Returns
    `(train_ids, eval_ids, classes)`.
    """
    classes = sorted(set(train_values))
    index = {value: i for i, value in enumerate(classes)}
    train_ids = np.array([index[value] for value in train_values], dtype=np.int64)
    eval_ids = np.array([index.get(value, -1) for value in eval_values], dtype=np.int64)
    return train_ids, eval_ids, classes




def label_matrix(dataset, columns: Sequence[str]) -> np.ndarray:
    """`(num_examples, len(columns))` 0/1 int array of a `datasets.Dataset`'s label columns: CelebA's bool columns, or
    0/1 (or raw CelebA -1/1) integers; anything else raises `ValueError`."""
    columns = list(columns)
    matrix = np.stack([np.asarray(dataset[column]) for column in columns], axis=1).astype(np.int64)
    if matrix.size and set(np.unique(matrix).tolist()) <= {-1, 1} and (matrix == -1).any():
        matrix = (matrix + 1) // 2  # raw CelebA -1/1
    bad = sorted(set(np.unique(matrix).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"Multi-label columns must be binary (bool, 0/1 or -1/1), got values {bad[:5]} in {columns}.")
    return matrix


OnMissingLabel = Literal["raise", "skip"]
MISSING_LABEL_FLAG = "--on_missing_label"  # the same flag in scripts/run_finetune.py and scripts/linear_probe.py


def _is_missing(value: Any) -> bool:
    """No label: `None` (an empty cell of a metadata.csv), a blank string, or NaN."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


def drop_missing_labels(
    dataset, columns: Sequence[str], *, split: str, on_missing_label: OnMissingLabel = "raise"
):  # fmt: skip
    """
    `dataset` without the examples that have no value in one of the label `columns` (`None`, blank, NaN): refused with
    a `ValueError` naming the split, each column, how many and the first rows (`on_missing_label="raise"`), or left
    out and counted in a warning (`"skip"`). Columns the split does not have are not checked.
    """
    rows_by_column = {
        column: [i for i, value in enumerate(dataset[column]) if _is_missing(value)]
        for column in columns
        if column in dataset.column_names
    }
    rows_by_column = {column: rows for column, rows in rows_by_column.items() if rows}
    if not rows_by_column:
        return dataset
    missing = sorted({i for rows in rows_by_column.values() for i in rows})
    described = "; ".join(
        f"{len(rows)} of {len(dataset)} examples have no value in {column!r} (rows {_first_rows(rows)})"
        for column, rows in rows_by_column.items()
    )
    if on_missing_label != "skip":
        raise ValueError(
            f"The {split!r} split has examples without a label: {described}. Fill them in, or pass "
            f"{MISSING_LABEL_FLAG} skip to leave those examples out."
        )
    logger.warning(
        f"{MISSING_LABEL_FLAG} skip: left out {len(missing)} of {len(dataset)} {split!r} examples without a label "
        f"({described})."
    )
    if len(missing) == len(dataset):
        raise ValueError(f"No example of the {split!r} split has a label ({described}): fill them in, or pick another split.")
    missing_set = set(missing)
    return dataset.select([i for i in range(len(dataset)) if i not in missing_set])


def _first_rows(rows: Sequence[int], shown: int = 5) -> str:
    return ", ".join(map(str, rows[:shown])) + (", ..." if len(rows) > shown else "")


def resolve_label_columns(
    column_names: Sequence[str],
    *,
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    fallback: Sequence[str] = (),
) -> list[str]:
    """
    The label columns: `[label_column]`, or `label_columns`, or by default every CelebA attribute in `column_names`,
    else the first `fallback` column present (e.g. `celeb_id`, `label`). A missing column raises `ValueError` naming
    the columns there are.
    """
    column_names = list(column_names)
    if label_column is not None:
        wanted = [label_column]
    elif label_columns:
        wanted = list(label_columns)
    else:
        wanted = [name for name in CELEBA_ATTRIBUTE_NAMES if name in column_names]
        wanted = wanted or [name for name in fallback if name in column_names][:1]
        if not wanted:
            raise ValueError(
                f"The dataset has no CelebA attribute columns{' nor ' + '/'.join(fallback) if fallback else ''} "
                f"(columns: {column_names}); pass --label_columns or --label_column, or use a source with attributes "
                "(a raw CelebA download, flwrlabs/celeba)."
            )
    missing = [name for name in wanted if name not in column_names]
    if missing:
        raise ValueError(f"Label column(s) {missing} not in the dataset; it has {column_names}.")
    return wanted
