# Copyright 2026 The dilated-vit-mae authors. Licensed under the Apache License, Version 2.0.
"""Mean attribute accuracy: the CelebA convention for multi-label binary attribute prediction.

An `evaluate` metric module that loads offline: `evaluate.load("path/to/mean_attribute_accuracy.py")`, or
`dilated_vit_mae.evaluation.metrics.load_metric("mean_attribute_accuracy")`. This file must import only `evaluate`,
`numpy` and its sibling `metric_inputs.py` (the input handling the metrics share): `evaluate.load` copies the two alone
into its module cache.
"""

import math

import evaluate
import numpy as np

from .metric_inputs import metric_info


_CITATION = """\
@inproceedings{liu2015faceattributes,
  title={Deep Learning Face Attributes in the Wild},
  author={Liu, Ziwei and Luo, Ping and Wang, Xiaogang and Tang, Xiaoou},
  booktitle={Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  pages={3730--3738},
  year={2015}
}
"""

_DESCRIPTION = """\
Mean attribute accuracy, as CelebA papers report it (Liu et al. 2015 and since): each example carries a 0/1
label for every attribute (40 for CelebA); the accuracy of each attribute is computed over the examples, and the
result is the mean of these per-attribute accuracies. It is not the exact-match accuracy over all attributes at
once (which is far lower).

CelebA's attributes are unbalanced, so the metric also reports the majority-class floor (`majority_baseline`),
the mean attribute accuracy of a constant classifier that predicts the majority class of every attribute:
- by default the majority class is taken from the references themselves, giving mean_j max(p_j, 1 - p_j) with
  p_j the fraction of positive references for attribute j: the best any constant classifier can score on these
  references (an optimistic floor; about 80% on CelebA);
- with `majority_reference` (the per-attribute positive fractions of the training split), the majority class
  of each attribute is the training one (positive where the training fraction is > 0.5, negative otherwise, ties
  included), and the floor is the accuracy of that fixed constant prediction on these references: what a model
  that learnt only the training label frequencies would score.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of int sequences, or an int/bool array of shape `(num_examples, num_attributes)`):
        Predicted labels, 0 or 1, one per attribute (e.g. `(logits > 0).long()`); every example has the same
        number of attributes.
    references (`list` of int sequences, or an int/bool array of shape `(num_examples, num_attributes)`):
        True labels, 0 or 1, in the same attribute order. CelebA's raw -1/1 labels must be mapped to 0/1 first.
    attribute_names (`list[str]`, *optional*):
        One unique name per attribute (e.g. `dilated_vit_mae.data.loading.CELEBA_ATTRIBUTE_NAMES`), used as the keys
        of `per_attribute_accuracy`. Defaults to the attribute indices 0, 1, ...
    majority_reference (`list[float]`, *optional*):
        The fraction of positive labels of each attribute on the training split, each in [0, 1]. When given,
        `majority_baseline` is the accuracy on these references of predicting each attribute's training-majority
        class; otherwise, the accuracy of predicting each attribute's majority class on these references.

Returns:
    mean_attribute_accuracy (`float`): the mean over attributes of the per-attribute accuracy, in [0, 1].
    per_attribute_accuracy (`dict`): attribute name (or index) -> accuracy of that attribute.
    majority_baseline (`float`): the mean attribute accuracy of the majority-class constant prediction.

Examples:

    >>> from dilated_vit_mae.evaluation.metrics import load_metric
    >>> attribute_accuracy = load_metric("mean_attribute_accuracy", keep_in_memory=True)
    >>> results = attribute_accuracy.compute(
    ...     predictions=[[1, 0], [1, 1], [0, 0], [1, 0]],
    ...     references=[[1, 0], [0, 0], [0, 0], [0, 1]],
    ...     attribute_names=["Smiling", "Eyeglasses"],
    ... )
    >>> results["per_attribute_accuracy"]
    {'Smiling': 0.5, 'Eyeglasses': 0.5}
    >>> results["mean_attribute_accuracy"]
    0.5
    >>> results["majority_baseline"]  # predict 0 for both: (max(1/4, 3/4) + max(1/4, 3/4)) / 2
    0.75

    With the training split's positive fractions, the floor is that of predicting the training majority:

    >>> results = attribute_accuracy.compute(
    ...     predictions=[[1, 0], [1, 1], [0, 0], [1, 0]],
    ...     references=[[1, 0], [0, 0], [0, 0], [0, 1]],
    ...     majority_reference=[0.9, 0.07],  # predict 1 for the first attribute, 0 for the second
    ... )
    >>> results["majority_baseline"]  # (1/4 + 3/4) / 2
    0.5
"""


def _binary_matrix(rows, input_name: str) -> np.ndarray:
    """Stack per-example label sequences into a `(num_examples, num_attributes)` int8 array of 0/1."""
    if len(rows) == 0:
        raise ValueError(f"Got 0 examples in `{input_name}`: pass at least one example to compute an accuracy.")
    for index, row in enumerate(rows):
        if row is None:
            raise ValueError(f"Example {index} of `{input_name}` is missing (None): pass one 0/1 label per attribute.")
    num_attributes = len(rows[0])
    for index, row in enumerate(rows):
        if len(row) != num_attributes:
            raise ValueError(
                f"Example {index} of `{input_name}` has {len(row)} attributes but example 0 has {num_attributes}; "
                f"every example must carry one 0/1 label per attribute, in the same order."
            )
    if not num_attributes:
        raise ValueError(f"The examples of `{input_name}` have 0 attributes: pass one 0/1 label per attribute.")
    matrix = np.asarray(rows, dtype=np.int64)
    bad_rows, bad_columns = np.nonzero((matrix != 0) & (matrix != 1))
    if bad_rows.size:
        raise ValueError(
            f"`{input_name}` must hold 0/1 labels, got {int(matrix[bad_rows[0], bad_columns[0]])!r} in example "
            f"{int(bad_rows[0])}, attribute {int(bad_columns[0])}; map CelebA's -1/1 labels with "
            f"`(labels + 1) // 2` and threshold scores (e.g. `logits > 0`) first."
        )
    return matrix.astype(np.int8)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanAttributeAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(
            "int32",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            reference_urls=["https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        attribute_names: list[str] | None = None,
        majority_reference: list[float] | None = None,
    ) -> dict[str, float | dict[str | int, float]]:
        predictions = _binary_matrix(predictions, "predictions")
        references = _binary_matrix(references, "references")
        if predictions.shape[1] != references.shape[1]:
            raise ValueError(
                f"The predictions have {predictions.shape[1]} attributes per example but the references have "
                f"{references.shape[1]}; pass one 0/1 label per attribute, in the same order, for both."
            )
        num_attributes = references.shape[1]

        if attribute_names is None:
            keys: list[str | int] = list(range(num_attributes))
        else:
            keys = list(attribute_names)
            if len(keys) != num_attributes:
                raise ValueError(
                    f"`attribute_names` has {len(keys)} names but the examples have {num_attributes} attributes; "
                    f"pass one name per attribute, in label order (or None to key by index)."
                )
            duplicates = sorted({name for name in keys if keys.count(name) > 1})
            if duplicates:
                raise ValueError(f"`attribute_names` must be unique, got duplicates {duplicates!r}.")

        per_attribute_accuracy = (predictions == references).mean(axis=0)  # (num_attributes,)

        if majority_reference is None:
            positive_fraction = references.mean(axis=0)
            majority_accuracy = np.maximum(positive_fraction, 1.0 - positive_fraction)
        else:
            train_fraction = np.asarray(majority_reference, dtype=np.float64)
            if train_fraction.shape != (num_attributes,):
                raise ValueError(
                    f"`majority_reference` must hold one positive fraction per attribute ({num_attributes}), got "
                    f"shape {train_fraction.shape}; pass e.g. `train_labels.mean(axis=0).tolist()`."
                )
            if not all(math.isfinite(f) and 0.0 <= f <= 1.0 for f in train_fraction.tolist()):
                raise ValueError(
                    f"`majority_reference` must hold fractions in [0, 1] (the share of positive training labels of "
                    f"each attribute), got {list(majority_reference)!r}."
                )
            majority_class = (train_fraction > 0.5).astype(np.int8)  # ties predict the negative class
            majority_accuracy = (references == majority_class).mean(axis=0)

        return {
            "mean_attribute_accuracy": float(per_attribute_accuracy.mean()),
            "per_attribute_accuracy": {key: float(acc) for key, acc in zip(keys, per_attribute_accuracy)},
            "majority_baseline": float(majority_accuracy.mean()),
        }
