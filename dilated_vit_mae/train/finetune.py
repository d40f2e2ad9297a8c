"""Fine-tuning helpers for `scripts/run_finetune.py` and `benchmarks/downstream.py`: MAE's recipe
(`main_finetune.py` of facebookresearch/mae, commit efb2a80) without timm.

- labels: [`resolve_labels`] picks the task (CelebA's attributes multi-label, else `celeb_id` / `label` single-label)
  and encodes every split into one tensor, indexed by each example's `sample_index`;
- the recipe: [`MAE_FINETUNE_RECIPE`] on large training sets, [`SMALL_DATA_RECIPE`] on small ones ([`finetune_recipe`]);
- layer-wise learning-rate decay: [`param_groups_lrd`] (MAE's `util/lr_decay.py`);
- mixup / cutmix: [`MixupCutmix`] (timm 0.3.2's `Mixup`, batch mode), seeded per batch so a resumed run redraws the same;
- the loss: [`classification_loss`] (label smoothing or soft targets for single-label, BCE for multi-label);
- warm start: [`load_classifier`] from our pre-training folders or transformers ViTMAE checkpoints (`facebook/vit-mae-*`),
  refusing a checkpoint that would leave encoder weights random.

The publishable folder's card is `dilated_vit_mae.publish.model_card.render_classifier_card`.

Not part of the three model files (the Hub never runs this).

```python
>>> import torch
>>> from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForImageClassification
>>> from dilated_vit_mae.train.finetune import param_groups_lrd
>>> model = DilatedViTMAEForImageClassification(DilatedViTMAEConfig(num_hidden_layers=2, hidden_size=32,
...     num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=4, num_labels=3))
>>> sorted({group["lr_scale"] for group in param_groups_lrd(model, weight_decay=0.05, layer_decay=0.5)})
[0.125, 0.25, 0.5, 1.0]

```
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.labels import OnMissingLabel, class_ids, drop_missing_labels, label_matrix, resolve_label_columns
from ..data.seeding import stable_seed
from ..data.transforms import as_our_image_processor  # noqa: F401  (part of this module's API: run_finetune.py)
from ..modeling_dilated_vit_mae import DilatedViTMAEForImageClassification


__all__ = [
    "LabelSpec",
    "MAE_FINETUNE_RECIPE",
    "MixupCutmix",
    "SMALL_DATA_MAX_TRAIN",
    "SMALL_DATA_RECIPE",
    "as_our_image_processor",
    "classification_loss",
    "finetune_recipe",
    "resolve_recipe",
    "labelled_splits",
    "layer_id_for_vit",
    "load_classifier",
    "param_groups_lrd",
    "resolve_labels",
]

Task = Literal["single_label", "multi_label"]

# the single-label columns tried, in order, when no label flag is given and the data has no CelebA attributes
DEFAULT_SINGLE_LABEL_COLUMNS = ("celeb_id", "label")
# MAE fine-tuning exempts the ViT's `no_weight_decay()` set ({'pos_embed', 'cls_token', 'dist_token'}) besides 1-D
# parameters; unlike pre-training, where the CLS token is decayed
NO_WEIGHT_DECAY = ("cls_token", "position_embeddings")
MIXUP_STREAM = 101  # the tag of mixup / cutmix draws (other streams: dilated_vit_mae.data.seeding.STREAMS)


# ----------------------------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------------------------

# MAE's fine-tuning recipe (`main_finetune.py` of facebookresearch/mae and its FINETUNE.md, ViT-B): lr = blr x effective
# batch / 256, layer-wise decay 0.75 (MAE's ViT-L/H value; ViT-B uses 0.65), AdamW weight decay 0.05, drop path 0.1,
# label smoothing 0.1, mixup 0.8 / cutmix 1.0, timm's RandAugment `rand-m9-mstd0.5-inc1` and random erasing 0.25,
# RandomResizedCrop scale from 0.08 (timm's default), 5 warmup epochs
MAE_FINETUNE_RECIPE: dict[str, Any] = {
    "base_learning_rate": 5e-4,
    "learning_rate": None,
    "layer_decay": 0.75,
    "weight_decay": 0.05,
    "drop_path_rate": 0.1,
    "label_smoothing": 0.1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "rand_augment": "rand-m9-mstd0.5-inc1",
    "random_erasing": 0.25,
    "crop_scale_min": 0.08,
    "warmup_epochs": 5.0,
}
# Below this many training images the small-data recipe applies. MAE's rule ties the lr to the batch (blr 5e-4 at its
# batch of 1024 gives 2e-3), but a small set allows only small batches: 150 images at batch 32 get lr 6.3e-5 for 120
# steps in 30 epochs, which leaves a pre-trained encoder below a logistic regression on raw pixels (issue 18).
SMALL_DATA_MAX_TRAIN = 10_000
# The small-data recipe: MAE's, at the peak lr MAE's recipe runs at (blr 5e-4 x 1024 / 256 = 2e-3) whatever batch the
# set allows, and without mixup / cutmix, which average away the few examples there are
SMALL_DATA_RECIPE: dict[str, Any] = {
    **MAE_FINETUNE_RECIPE,
    "base_learning_rate": None,
    "learning_rate": 2e-3,
    "mixup": 0.0,
    "cutmix": 0.0,
}


def finetune_recipe(num_train: int, choice: Literal["auto", "mae", "small_data"] = "auto") -> tuple[str, dict[str, Any]]:
    """`(name, values)`: MAE's recipe (`"mae"`), or the small-data one (`"small_data"`) for `choice="auto"` when the
    training split has fewer than [`SMALL_DATA_MAX_TRAIN`] images. Values a user gave win over the recipe's."""
    if choice == "auto":
        choice = "small_data" if num_train < SMALL_DATA_MAX_TRAIN else "mae"
    if choice not in ("mae", "small_data"):
        raise ValueError(f"The fine-tuning recipe must be 'auto', 'mae' or 'small_data', got {choice!r}.")
    return choice, dict(MAE_FINETUNE_RECIPE if choice == "mae" else SMALL_DATA_RECIPE)


def resolve_recipe(num_train: int, choice: str, given: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """
    `(name, values)`: the recipe [`finetune_recipe`] picks, with every value in `given` that is not `None` winning
    over the recipe's. A given `base_learning_rate` also wins over the recipe's absolute `learning_rate`; with
    neither, MAE's base lr applies (lr = blr x batch / 256). A `rand_augment` of `"none"` turns it off (`None`).
    """
    name, recipe = finetune_recipe(num_train, choice)
    if given.get("base_learning_rate") is not None:
        recipe["learning_rate"] = None
    values = {key: default if given.get(key) is None else given[key] for key, default in recipe.items()}
    if values["learning_rate"] is None and values["base_learning_rate"] is None:
        values["base_learning_rate"] = MAE_FINETUNE_RECIPE["base_learning_rate"]
    if values["rand_augment"] == "none":
        values["rand_augment"] = None
    return name, values


# ----------------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LabelSpec:
    """
    What the classifier predicts.

    Args:
        task (`str`): `"multi_label"` (one 0/1 output per column, BCE) or `"single_label"` (one class per example).
        columns (`list[str]`): the label columns (single-label: exactly one).
        classes (`list[str]`): the output names in order: the attribute names (multi-label) or the classes, the
            sorted distinct training values as strings (single-label; ClassLabel columns by their names).
    """

    task: Task
    columns: list[str]
    classes: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.classes)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.classes))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def problem_type(self) -> str:
        return "multi_label_classification" if self.task == "multi_label" else "single_label_classification"

    def encode(self, dataset) -> torch.Tensor:
        """`(num_examples, num_labels)` float 0/1 (multi-label) or `(num_examples,)` long class ids, -1 for a class
        never seen in training (always scored as an error)."""
        if self.task == "multi_label":
            return torch.from_numpy(label_matrix(dataset, self.columns)).float()
        _, ids, _ = class_ids(self.classes, _column_values(dataset, self.columns[0]))
        return torch.from_numpy(ids)


def _column_values(dataset, column: str) -> list[str]:
    """A single-label column as strings; a `ClassLabel` column by its class names (image folders' folder names)."""
    feature = dataset.features[column]
    values = dataset[column]
    if hasattr(feature, "int2str"):
        return [feature.int2str(int(value)) for value in values]
    return [str(value) for value in values]


def resolve_labels(train_dataset, label_column: str | None = None, label_columns: Sequence[str] | None = None) -> LabelSpec:
    """
    The labels to fine-tune on: `label_columns` (multi-label), `label_column` (single-label), or by default every
    CelebA attribute present (multi-label), else the first of `celeb_id` / `label` present (single-label).

    Single-label classes are the sorted distinct training values (as strings), so `id2label` reads as the data does.
    Examples without a label (`None`, blank, NaN) are refused by name (`labelled_splits` can leave them out instead).
    """
    columns = _label_columns(train_dataset, label_column, label_columns)
    drop_missing_labels(train_dataset, columns, split="train")
    multi = label_columns is not None or (label_column is None and columns[0] not in DEFAULT_SINGLE_LABEL_COLUMNS)
    if multi:
        label_matrix(train_dataset, columns)  # raises on non-binary columns
        return LabelSpec("multi_label", columns, list(columns))
    _, _, classes = class_ids(_column_values(train_dataset, columns[0]), [])
    if len(classes) < 2:
        raise ValueError(
            f"Label column {columns[0]!r} has {len(classes)} distinct value(s) in the training split ({classes}); a "
            "classifier needs at least 2. Pick another --label_column."
        )
    return LabelSpec("single_label", columns, classes)


def _label_columns(train_dataset, label_column: str | None, label_columns: Sequence[str] | None) -> list[str]:
    return resolve_label_columns(
        train_dataset.column_names, label_column=label_column, label_columns=label_columns,
        fallback=DEFAULT_SINGLE_LABEL_COLUMNS,
    )  # fmt: skip


def labelled_splits(
    splits, label_column: str | None = None, label_columns: Sequence[str] | None = None,
    on_missing_label: OnMissingLabel = "raise",
):  # fmt: skip
    """
    `(splits, LabelSpec)`: the labels of `resolve_labels`, and every split (a `DatasetDict` or dict with `"train"`)
    with its examples that have no label refused by name (`on_missing_label="raise"`) or left out and counted in a
    warning (`"skip"`).
    """
    columns = _label_columns(splits["train"], label_column, label_columns)
    kept = {
        split: drop_missing_labels(dataset, columns, split=split, on_missing_label=on_missing_label)
        for split, dataset in splits.items()
    }
    kept = type(splits)(kept) if isinstance(splits, dict) else kept
    return kept, resolve_labels(kept["train"], label_column, label_columns)


# ----------------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# ----------------------------------------------------------------------------------------------------------------------


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """
    MAE's `get_layer_id_for_vit` with our parameter names: the embeddings (CLS token, position table, dense and
    dilated tokenizer) are layer 0, encoder block `i` is layer `i + 1`, and everything after the blocks (final norm,
    `fc_norm`, classifier) is layer `num_layers` (= number of blocks + 1).
    """
    name = name.removeprefix("vit.")
    if name.startswith("embeddings."):
        return 0
    match = re.match(r"encoder\.layer\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else num_layers


def param_groups_lrd(
    model: nn.Module, weight_decay: float, layer_decay: float, no_weight_decay: Sequence[str] = NO_WEIGHT_DECAY
) -> list[dict[str, Any]]:
    """
    MAE's `param_groups_lrd` (`util/lr_decay.py`): one group per (layer, decay / no decay), with `lr_scale =
    layer_decay ** (num_layers - layer_id)`, `num_layers` = blocks + 1; so the head has scale 1, the last block
    `layer_decay`, the embeddings `layer_decay ** (blocks + 1)`. No weight decay on 1-D parameters (norms, biases) and
    on the CLS token / position tables; frozen parameters are left out.

    Multiply each group's `lr` by its `lr_scale` before building the scheduler (`apply_lr_scale`), as MAE's
    `adjust_learning_rate` does at every step.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"`layer_decay` must be in (0, 1] (1 disables the decay), got {layer_decay!r}.")
    num_layers = model.config.num_hidden_layers + 1
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name.endswith(tuple(no_weight_decay))
        layer_id = layer_id_for_vit(name, num_layers)
        key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers - layer_id),
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def apply_lr_scale(param_groups: list[dict[str, Any]], learning_rate: float) -> list[dict[str, Any]]:
    """Set each group's `lr` to `learning_rate * lr_scale` (a scheduler's lambda then scales every group alike)."""
    return [{**group, "lr": learning_rate * group.get("lr_scale", 1.0)} for group in param_groups]


# ----------------------------------------------------------------------------------------------------------------------
# Mixup / cutmix and the loss
# ----------------------------------------------------------------------------------------------------------------------


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """timm's `one_hot` with `off = smoothing / K`, `on = 1 - smoothing + off` (the target of label smoothing)."""
    off_value = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off_value, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off_value)


class MixupCutmix:
    """
    timm's `Mixup` in batch mode (timm 0.3.2, as MAE fine-tunes with it), without timm: with probability `prob`, the
    batch is mixed with its reverse, either by mixup (`x * lam + x.flip(0) * (1 - lam)`, `lam ~ Beta(mixup_alpha)`)
    or, with probability `switch_prob` when both are on, by cutmix (a random box of area `1 - lam` pasted from the
    reversed batch, `lam ~ Beta(cutmix_alpha)`, then `lam` corrected to the box actually pasted). Targets are mixed
    with the same `lam`: smoothed one-hot vectors (single-label) or the 0/1 attribute vectors (multi-label).

    Randomness comes from the `numpy.random.Generator` passed to each call (seeded per batch by the caller: a resumed
    run redraws the same boxes and `lam`).

    Args:
        mixup_alpha (`float`): Beta parameter of mixup; 0 disables mixup (MAE: 0.8).
        cutmix_alpha (`float`): Beta parameter of cutmix; 0 disables cutmix (MAE: 1.0).
        prob (`float`): probability of mixing a batch at all.
        switch_prob (`float`): probability of cutmix instead of mixup when both are enabled.
        num_classes (`int`): classes of a single-label task.
        label_smoothing (`float`): smoothing of the single-label targets (MAE: 0.1).
        task (`str`): `"single_label"` or `"multi_label"`.
    """

    def __init__(
        self,
        mixup_alpha: float,
        cutmix_alpha: float,
        *,
        num_classes: int,
        task: Task,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
    ):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup_alpha!r} and {cutmix_alpha!r}.")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.num_classes, self.task, self.label_smoothing = num_classes, task, float(label_smoothing)

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def draw(self, rng: np.random.Generator) -> tuple[float, bool]:
        """`(lam, use_cutmix)` for one batch; `lam == 1` means no mixing."""
        if not self.enabled or rng.random() >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    def targets(self, labels: torch.Tensor, lam: float) -> torch.Tensor:
        if self.task == "multi_label":
            labels = labels.float()
        else:
            labels = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        return labels * lam + labels.flip(0) * (1.0 - lam)

    def __call__(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed `(pixel_values, soft targets)`; the input tensors are not modified."""
        lam, use_cutmix = self.draw(rng)
        if lam == 1.0:
            return pixel_values, self.targets(labels, 1.0)
        if use_cutmix:
            (top, bottom, left, right), lam = cutmix_box(pixel_values.shape[-2:], lam, rng)
            mixed = pixel_values.clone()
            mixed[:, :, top:bottom, left:right] = pixel_values.flip(0)[:, :, top:bottom, left:right]
        else:
            mixed = pixel_values * lam + pixel_values.flip(0) * (1.0 - lam)
        return mixed, self.targets(labels, lam)


def cutmix_box(
    image_size: Sequence[int], lam: float, rng: np.random.Generator
) -> tuple[tuple[int, int, int, int], float]:
    """timm's `rand_bbox` + `correct_lam`: a box of about `(1 - lam)` of the image centred anywhere (clipped at the
    border), and `lam` recomputed from the area actually pasted. Returns `((top, bottom, left, right), lam)`."""
    height, width = int(image_size[0]), int(image_size[1])
    ratio = math.sqrt(1.0 - lam)
    cut_height, cut_width = int(height * ratio), int(width * ratio)
    centre_y, centre_x = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip([centre_y - cut_height // 2, centre_y + cut_height // 2], 0, height)
    left, right = np.clip([centre_x - cut_width // 2, centre_x + cut_width // 2], 0, width)
    lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return (int(top), int(bottom), int(left), int(right)), float(lam)


def batch_rng(*parts: int) -> np.random.Generator:
    """The mixup / cutmix generator of one batch, a function of `parts` (seed, epoch, batch, process) only."""
    return np.random.default_rng(stable_seed(MIXUP_STREAM, *parts))


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, task: Task, label_smoothing: float = 0.0
) -> torch.Tensor:
    """
    The training loss. `multi_label`: BCE with logits on 0/1 (or mixed) targets `(B, A)`. `single_label`: cross-entropy
    with `label_smoothing` on class ids `(B,)`, or soft-target cross-entropy `-sum(t * log_softmax)` on soft targets
    `(B, K)` (mixup; the smoothing is then already in the targets), as timm's `SoftTargetCrossEntropy`.
    """
    logits = logits.float()
    if task == "multi_label":
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    if targets.ndim == 2:
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets.long(), label_smoothing=label_smoothing)


# ----------------------------------------------------------------------------------------------------------------------
# Warm start
# ----------------------------------------------------------------------------------------------------------------------

# weights a pre-training checkpoint cannot have: the new head, and (from a ViTMAE checkpoint) the dilated branches,
# which start at zero (sum fusion) or as the identity on the dense token (concat), so that the model starts as ViTMAE
NEW_HEAD_PATTERN = re.compile(r"^(classifier|fc_norm)\.")
NEW_TOKENIZER_PATTERN = re.compile(r"^vit\.embeddings\.patch_embeddings\.(dilated_projections|fusion)\.")


def load_classifier(model_name_or_path: str | os.PathLike[str], config, **kwargs) -> nn.Module:
    """
    `DilatedViTMAEForImageClassification` with the encoder of a pre-training checkpoint: a `scripts/run_mae.py` output
    folder (or any of our checkpoints), or a transformers ViTMAE one (`facebook/vit-mae-base`, ...; its config must
    have been read into `config`, a `DilatedViTMAEConfig`). The decoder is dropped; the classification head is new.

    Raises `ValueError` when a weight other than the new head (and, from a ViTMAE checkpoint, the new dilated
    branches) is missing or has another shape: it would silently be left random.
    """
    model, info = DilatedViTMAEForImageClassification.from_pretrained(
        model_name_or_path, config=config, output_loading_info=True, **kwargs
    )
    source_type = _source_model_type(model_name_or_path, kwargs)
    allowed = [NEW_HEAD_PATTERN] + ([NEW_TOKENIZER_PATTERN] if source_type == "vit_mae" else [])
    missing = sorted(key for key in info["missing_keys"] if not any(p.match(key) for p in allowed))
    mismatched = sorted(str(item) for item in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise ValueError(
            f"{model_name_or_path}: {len(missing)} encoder weights are missing (e.g. {missing[:3]}) and "
            f"{len(mismatched)} have another shape (e.g. {mismatched[:2]}); they would be trained from random. Point "
            "--model_name_or_path at a pre-training checkpoint of the same architecture, or leave it out (and give "
            "--config_name) to train from scratch."
        )
    return model


def _source_model_type(model_name_or_path: str | os.PathLike[str], kwargs: dict) -> str | None:
    from transformers import PreTrainedConfig

    hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "cache_dir") if key in kwargs}
    config_dict, _ = PreTrainedConfig.get_config_dict(str(model_name_or_path), **hub_kwargs)
    return config_dict.get("model_type")


