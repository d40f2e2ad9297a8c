"""Linear probing and k-NN evaluation of a frozen MAE encoder: whole-image features, an on-disk feature cache, MAE's
linear classifier and DINO's weighted k-NN ([`knn_predict`]).

Used by `scripts/linear_probe.py` (CelebA attributes), `benchmarks/ablation.py` and `benchmarks/downstream.py` (MNIST
digits). Not part of the three model files (the Hub never runs this).

The protocol follows MAE's linear probe (He et al. 2021, appendix A.2; `main_linprobe.py` of facebookresearch/mae):
the encoder is frozen and sees the whole image (`mask_ratio=0`), one feature per image is pooled from its last layer
(the CLS token, or the mean of the patch tokens), and a linear layer is trained on top of a `BatchNorm1d` without
affine parameters, which standardises every feature with the batch statistics while training and the running ones at
test time (a linear classifier is sensitive to feature scale, and MAE features are badly scaled).

```python
>>> import torch
>>> from dilated_vit_mae.evaluation.probe import predict_linear_probe, train_linear_probe
>>> generator = torch.Generator().manual_seed(0)
>>> labels = torch.arange(200) % 2
>>> features = torch.randn(200, 8, generator=generator) + 4.0 * labels[:, None]  # two separable blobs
>>> probe = train_linear_probe(features, labels, task="single_label", epochs=20, seed=0)
>>> (predict_linear_probe(probe, features, task="single_label") == labels).float().mean().item()
1.0

```
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.fingerprint import remove_abandoned_partials, written_atomically

# importing a sibling ran the package's __init__, which registers the Auto classes that `load_frozen_encoder` uses
from ..data.transforms import image_processor_for_config
from ..modeling_dilated_vit_mae import to_2tuple
from .metrics import load_metric

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FEATURE_CACHE_DIR",
    "FeatureCache",
    "KNN_K",
    "KNN_TEMPERATURE",
    "LinearProbe",
    "Pooling",
    "ProbeTask",
    "encode_images",
    "extract_features",
    "knn_predict",
    "load_frozen_encoder",
    "logistic_regression_scores",
    "model_fingerprint",
    "predict_linear_probe",
    "probe_scores",
    "raw_pixel_baseline",
    "raw_pixels",
    "train_linear_probe",
    "warmup_cosine",
]

Pooling = Literal["cls", "mean"]
ProbeTask = Literal["multi_label", "single_label"]

# encoders whose forward takes `noise` and whose `last_hidden_state` is CLS + kept patch tokens
SUPPORTED_MODEL_TYPES = ("dilated_vit_mae", "vit_mae")

DEFAULT_FEATURE_CACHE_DIR: Path = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dilated_vit_mae" / "probe_features"
)


# ----------------------------------------------------------------------------------------------------------------------
# The frozen encoder
# ----------------------------------------------------------------------------------------------------------------------


def load_frozen_encoder(
    model_name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any]:
    """
    Load an encoder with `AutoModel` (ours, or transformers' `ViTMAEModel`) with `mask_ratio=0.0`, frozen and in eval
    mode, and its image processor.

    A checkpoint saved from a pre-training head (`DilatedViTMAEForPreTraining`, `ViTMAEForPreTraining`) loads its
    encoder; the decoder is ignored. A fine-tuned classifier (`scripts/run_finetune.py`) loads its encoder too; with
    `classifier_pooling="mean"` (MAE's global pool, no final layer norm) its `fc_norm` comes along as
    `model.pooled_norm`, so that `encode_images(..., "mean")` gives the features its head was trained on. Any encoder
    weight missing from the checkpoint raises, since it would silently be left random. Without a `preprocessor_config.json`, a [`DilatedViTMAEImageProcessor`] is built from the config
    (image size, channels; ImageNet mean and std) and a warning says so.

    Returns:
        `(model, image_processor)`.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    hub_kwargs = dict(revision=revision, token=token, cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(model_name_or_path, **hub_kwargs)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{model_name_or_path} is a {config.model_type!r} model; the linear probe supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} encoders (ours, or a transformers ViTMAE checkpoint)."
        )
    config.mask_ratio = 0.0  # whole-image features: nothing is masked
    if _is_global_pool_classifier(config):  # its encoder has no final layer norm: fc_norm follows the mean instead
        from transformers import AutoModelForImageClassification

        classifier, loading_info = AutoModelForImageClassification.from_pretrained(
            model_name_or_path, config=config, output_loading_info=True, **hub_kwargs
        )
        model = classifier.vit
        model.pooled_norm = classifier.fc_norm  # applied by encode_images after the mean, as the classifier does
    else:
        model, loading_info = AutoModel.from_pretrained(
            model_name_or_path, config=config, output_loading_info=True, **hub_kwargs
        )
    if loading_info["missing_keys"]:
        missing = sorted(loading_info["missing_keys"])
        raise ValueError(
            f"{model_name_or_path}: {len(missing)} encoder weights are missing from the checkpoint and would be random "
            f"(e.g. {missing[:3]}); point --model_name_or_path at a trained encoder."
        )
    model.eval().requires_grad_(False)

    try:
        image_processor = AutoImageProcessor.from_pretrained(model_name_or_path, **hub_kwargs)
    except (OSError, ValueError) as error:
        height, width = to_2tuple(config.image_size)
        logger.warning(
            f"No image processor found for {model_name_or_path} ({error}); using a DilatedViTMAEImageProcessor that "
            f"resizes to {height}x{width} with ImageNet mean/std. Save the right processor next to the model."
        )
        image_processor = image_processor_for_config(config)
    return model, image_processor


def _is_global_pool_classifier(config) -> bool:
    """A `run_finetune.py` folder with MAE's global pool (`classifier_pooling="mean"`)."""
    architectures = getattr(config, "architectures", None) or []
    return getattr(config, "classifier_pooling", None) == "mean" and any(
        name.endswith("ForImageClassification") for name in architectures
    )


def num_patches_of(model: nn.Module, pixel_values: torch.Tensor) -> int:
    patch_height, patch_width = to_2tuple(model.config.patch_size)
    return (pixel_values.shape[-2] // patch_height) * (pixel_values.shape[-1] // patch_width)


@torch.no_grad()
def encode_images(model: nn.Module, pixel_values: torch.Tensor, pooling: Pooling = "cls") -> torch.Tensor:
    """
    Pooled whole-image features of a frozen encoder.

    Args:
        model (`DilatedViTMAEModel` or `ViTMAEModel`):
            The encoder; its `config.mask_ratio` must be 0 (see [`load_frozen_encoder`]).
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images, normalised by the model's image processor.
        pooling (`str`, *optional*, defaults to `"cls"`):
            `"cls"`: the CLS token of the last layer (after the final layer norm); `"mean"`: the mean of the patch
            tokens (CLS excluded), as MAE's `global_pool` but without its extra norm, except for a fine-tuned
            global-pool classifier's encoder, whose `fc_norm` ([`load_frozen_encoder`] keeps it) is applied.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, hidden_size)`, in float32.
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"`pooling` must be 'cls' or 'mean', got {pooling!r}.")
    pooled_norm = getattr(model, "pooled_norm", None)  # a global-pool classifier's fc_norm (see load_frozen_encoder)
    if pooled_norm is not None and pooling == "cls":
        raise ValueError(
            "This encoder is a fine-tuned classifier's with classifier_pooling='mean' (MAE's global pool): it has no "
            "final layer norm to give a CLS feature; use pooling 'mean' (--pooling mean), the features its head read."
        )
    batch_size = pixel_values.shape[0]
    num_patches = num_patches_of(model, pixel_values)
    # With mask_ratio 0, transformers' ViTMAE still permutes the tokens by random `noise`; increasing noise keeps image
    # order and consumes no random numbers (both poolings are order-invariant, but the features become deterministic).
    noise = torch.arange(num_patches, device=pixel_values.device, dtype=torch.float32).expand(batch_size, -1)
    outputs = model(pixel_values=pixel_values, noise=noise)
    if outputs.mask is not None and bool(outputs.mask.any()):
        raise ValueError(
            f"The encoder masked {int(outputs.mask[0].sum())} of {num_patches} patches; set `config.mask_ratio = 0.0` "
            "(load_frozen_encoder does) so that it encodes the whole image."
        )
    hidden_states = outputs.last_hidden_state  # (B, 1 + L, D)
    pooled = hidden_states[:, 0] if pooling == "cls" else hidden_states[:, 1:].mean(dim=1)
    if pooled_norm is not None:
        pooled = pooled_norm(pooled)
    return pooled.float()


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataloader: Iterable[dict[str, torch.Tensor]],
    num_examples: int,
    pooling: Pooling = "cls",
    accelerator=None,
    progress: bool = False,
) -> torch.Tensor:
    """
    Features of every example of a (possibly sharded) dataloader, in dataset order.

    Args:
        model: the frozen encoder, on the accelerator's device.
        dataloader: batches with `pixel_values` and `sample_index` (each example's index in the split); with an
            `accelerator`, a dataloader returned by `accelerator.prepare`, each process encoding its shard.
        num_examples (`int`): the size of the split; every index in `range(num_examples)` must be seen once.
        pooling (`str`): see [`encode_images`].
        accelerator (`accelerate.Accelerator`, *optional*): gathers the shards with `gather_for_metrics` (which drops
            the samples repeated to even out the last batch).
        progress (`bool`): show a `tqdm` bar (main process only).

    Returns:
        `torch.FloatTensor` of shape `(num_examples, hidden_size)` on the CPU, on every process.
    """
    features, indices = [], []
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    if show:
        from tqdm.auto import tqdm

        dataloader = tqdm(dataloader, desc=f"features ({pooling})")
    for batch in dataloader:
        pixel_values = batch["pixel_values"].to(device)
        if accelerator is not None:
            with accelerator.autocast():
                batch_features = encode_images(model, pixel_values, pooling)
            batch_features, batch_indices = accelerator.gather_for_metrics(
                (batch_features.contiguous(), batch["sample_index"].to(device))
            )
        else:
            batch_features, batch_indices = encode_images(model, pixel_values, pooling), batch["sample_index"]
        features.append(batch_features.float().cpu())
        indices.append(batch_indices.cpu())
    features, indices = torch.cat(features), torch.cat(indices)
    if sorted(indices.tolist()) != list(range(num_examples)):
        raise RuntimeError(
            f"Feature extraction saw {len(indices)} examples ({len(set(indices.tolist()))} distinct) but the split has "
            f"{num_examples}; every example must be encoded exactly once (a dataloader with drop_last?)."
        )
    ordered = torch.empty_like(features)
    ordered[indices] = features
    return ordered


# ----------------------------------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------------------------------


def model_fingerprint(model_name_or_path: str | os.PathLike[str], revision: str | None = None) -> dict[str, Any]:
    """
    What identifies a checkpoint's weights, for the feature cache: a local folder by its resolved path and the size
    and modification time of its weight files (so retraining into the same folder invalidates the cache); a Hub id by
    the commit its cached `config.json` comes from.
    """
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        weights = sorted(
            (file.name, file.stat().st_size, file.stat().st_mtime_ns)
            for file in path.iterdir()
            if file.suffix in (".safetensors", ".bin", ".pt", ".pth") or file.name.endswith(".index.json")
        )
        return {"model": str(path.resolve()), "weights": weights}
    fingerprint: dict[str, Any] = {"model": str(model_name_or_path), "revision": revision or "main"}
    try:
        from transformers.utils import cached_file

        config_file = Path(cached_file(str(model_name_or_path), "config.json", revision=revision))
        if "snapshots" in config_file.parts:
            fingerprint["commit"] = config_file.parent.name
    except Exception:  # noqa: BLE001  (best effort: the revision string is the fallback)
        pass
    return fingerprint


class FeatureCache:
    """
    Features on disk, one safetensors file per description (a JSON-able dict: model fingerprint, pooling, data source,
    split, transform, ...), named by its hash; the description and the fingerprint of the images the features were
    computed from ([`~dilated_vit_mae.data.fingerprint.dataset_images_fingerprint`]: names, sizes, modification and
    status-change times) are stored in the file's metadata and checked on load. Features of images that have changed
    since, and a damaged file, are not served: one warning names the file, which is removed (damaged) or replaced by
    the next `save` (stale). Files are written under a partial name and renamed; a failed write removes its partial
    file, and partial files of killed writers on this host are removed when the cache is opened.

    ```python
    >>> import tempfile, torch
    >>> from dilated_vit_mae.evaluation.probe import FeatureCache
    >>> cache = FeatureCache(tempfile.mkdtemp())
    >>> description = {"model": "m", "pooling": "cls", "split": "test"}
    >>> cache.load(description, images="f1") is None
    True
    >>> _ = cache.save(description, torch.ones(3, 2), images="f1")
    >>> cache.load(description, images="f1").shape
    torch.Size([3, 2])

    ```
    """

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_FEATURE_CACHE_DIR):
        self.directory = Path(directory).expanduser()
        for partial in remove_abandoned_partials(self.directory):
            logger.info(f"Feature cache: removed {partial}, the partial file of a write that did not finish.")

    @staticmethod
    def key(description: dict[str, Any]) -> str:
        canonical = json.dumps(description, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    def path(self, description: dict[str, Any]) -> Path:
        return self.directory / f"features-{self.key(description)}.safetensors"

    def load(self, description: dict[str, Any], images: str | None = None) -> torch.Tensor | None:
        """The cached features for `description` computed from the images fingerprinted `images`, or `None`."""
        import safetensors
        import safetensors.torch

        path = self.path(description)
        if not path.is_file():
            return None
        try:
            with safetensors.safe_open(str(path), framework="pt") as file:
                metadata = file.metadata() or {}
            features = safetensors.torch.load_file(str(path))["features"]
        except Exception as error:  # noqa: BLE001  (SafetensorError, OSError, KeyError: a truncated or foreign file)
            logger.warning(
                f"Feature cache {path} is damaged ({type(error).__name__}: {error}); removed it, recomputing."
            )
            path.unlink(missing_ok=True)
            return None
        if metadata.get("description") != json.dumps(description, sort_keys=True, default=str):
            logger.warning(f"Feature cache {path} holds another description (hash collision?); recomputing.")
            return None
        if metadata.get("images") != (images or ""):
            logger.warning(
                f"Feature cache {path} was computed from images of {description.get('split', 'this split')} that have "
                "changed since (a file's size or times differ, or a file is gone); recomputing."
            )
            return None
        return features

    def save(self, description: dict[str, Any], features: torch.Tensor, images: str | None = None) -> Path:
        import safetensors.torch

        path = self.path(description)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"description": json.dumps(description, sort_keys=True, default=str), "images": images or ""}
        with written_atomically(path) as partial:
            safetensors.torch.save_file({"features": features.contiguous().cpu()}, str(partial), metadata=metadata)
        return path


# ----------------------------------------------------------------------------------------------------------------------
# The linear classifier
# ----------------------------------------------------------------------------------------------------------------------


class LinearProbe(nn.Module):
    """
    MAE's linear-probe head: `BatchNorm1d(affine=False, eps=1e-6)` then `Linear` (weights ~ truncated normal, std 0.01;
    bias 0), as `main_linprobe.py` of facebookresearch/mae (commit efb2a80). The norm has no parameters: it only
    standardises the features, so the classifier stays linear in them.
    """

    def __init__(self, num_features: int, num_outputs: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features, affine=False, eps=1e-6)
        self.head = nn.Linear(num_features, num_outputs)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(features))


# The probe's schedule: MAE's `main_linprobe.py` length (90 epochs, 10 of linear warmup, then cosine to 0), with AdamW at
# lr 1e-3 instead of LARS at 0.1 x batch / 256 (see `train_linear_probe`)
PROBE_EPOCHS = 90
PROBE_WARMUP_EPOCHS = 10
PROBE_BATCH_SIZE = 256
PROBE_LEARNING_RATE = 1e-3


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The lr factor at optimizer step `step` (from 0): linear warmup to 1 over `warmup_steps` ((step + 1) /
    warmup_steps), then a half cosine from 1 to 0 at `total_steps` (MAE's `adjust_learning_rate`)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    task: ProbeTask,
    num_outputs: int | None = None,
    epochs: int = PROBE_EPOCHS,
    batch_size: int = PROBE_BATCH_SIZE,
    learning_rate: float = PROBE_LEARNING_RATE,
    weight_decay: float = 0.0,
    warmup_epochs: int = PROBE_WARMUP_EPOCHS,
    seed: int = 0,
) -> LinearProbe:
    """
    Train a [`LinearProbe`] on frozen features.

    Args:
        features (`torch.FloatTensor` of shape `(num_examples, num_features)`): training features.
        labels (`torch.Tensor`): `(num_examples, num_attributes)` 0/1 labels for `task="multi_label"` (one
            `BCEWithLogits` output per attribute), or `(num_examples,)` class ids in `[0, num_outputs)` for
            `task="single_label"` (cross-entropy).
        num_outputs (`int`, *optional*): number of classes (single-label); defaults to `labels.max() + 1`.
        epochs, batch_size, learning_rate, weight_decay, warmup_epochs: the optimisation. MAE's probe uses LARS
            (lr 0.1 x batch / 256, batch 16384, 90 epochs, 10 warmup, no weight decay); at the batch sizes that fit
            small data sets, AdamW (0.9, 0.999) with the same cosine schedule reaches the optimum of this convex
            problem more reliably, so that is what is used here. Each epoch is a fresh shuffle in batches of
            `batch_size` (capped at the number of examples), the last partial batch dropped, as MAE's
            `drop_last=True`. The features are fixed (one view per image): MAE's probe sees a new RandomResizedCrop +
            flip of every image each epoch.
        seed (`int`): seeds the initialisation and the shuffling.

    Returns:
        The trained probe, in eval mode, on the CPU.
    """
    if task not in ("multi_label", "single_label"):
        raise ValueError(f"`task` must be 'multi_label' or 'single_label', got {task!r}.")
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`features` must be (num_examples, num_features) with one label row per example, got features "
            f"{tuple(features.shape)} and labels {tuple(labels.shape)}."
        )
    if features.shape[0] < 2:
        raise ValueError(f"A linear probe needs at least 2 training examples, got {features.shape[0]}.")
    features = features.float()
    if task == "multi_label":
        if labels.ndim != 2:
            raise ValueError(f"multi-label `labels` must be (num_examples, num_attributes), got {tuple(labels.shape)}.")
        targets, num_outputs, loss_fn = labels.float(), labels.shape[1], nn.BCEWithLogitsLoss()
    else:
        if labels.ndim != 1:
            raise ValueError(f"single-label `labels` must be (num_examples,) class ids, got {tuple(labels.shape)}.")
        targets = labels.long()
        num_outputs = int(targets.max()) + 1 if num_outputs is None else num_outputs
        if int(targets.min()) < 0 or int(targets.max()) >= num_outputs:
            raise ValueError(f"single-label `labels` must be class ids in [0, {num_outputs}), got {targets.unique()}.")
        loss_fn = nn.CrossEntropyLoss()

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(features.shape[1], num_outputs)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=weight_decay)
    num_examples = features.shape[0]
    batch_size = min(batch_size, num_examples)
    steps_per_epoch = num_examples // batch_size  # drop_last, as MAE's loader
    total_steps, warmup_steps = epochs * steps_per_epoch, min(warmup_epochs, epochs // 2) * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(num_examples, generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            loss = loss_fn(probe(features[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return probe.eval()


@torch.no_grad()
def predict_linear_probe(
    probe: LinearProbe, features: torch.Tensor, *, task: ProbeTask, batch_size: int = 8192
) -> torch.Tensor:
    """0/1 predictions `(num_examples, num_attributes)` (logit > 0) for `multi_label`, class ids for `single_label`."""
    probe.eval()
    logits = torch.cat([probe(chunk.float()) for chunk in features.split(batch_size)])
    return (logits > 0).long() if task == "multi_label" else logits.argmax(dim=-1)


def probe_scores(
    predictions: torch.Tensor | np.ndarray,
    references: torch.Tensor | np.ndarray,
    *,
    task: ProbeTask,
    train_labels: torch.Tensor | np.ndarray,
    attribute_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """
    Score probe predictions against the majority-class floor learnt from the training labels.

    `multi_label`: the mean of per-attribute accuracies (the CelebA convention) through the package's
    `mean_attribute_accuracy` metric, with `majority_reference` = the training split's positive fractions; returns
    `mean_attribute_accuracy`, `per_attribute_accuracy`, `majority_baseline`.
    `single_label`: `accuracy` and `majority_baseline`, the accuracy of always predicting the most frequent training
    class (ties: the smallest id). References that are not a training class (`-1`) count as errors.
    """
    predictions, references = np.asarray(predictions), np.asarray(references)
    train_labels = np.asarray(train_labels)
    if task == "multi_label":
        metric = load_metric("mean_attribute_accuracy", keep_in_memory=True)
        return metric.compute(
            predictions=predictions.astype(np.int64),
            references=references.astype(np.int64),
            attribute_names=list(attribute_names) if attribute_names is not None else None,
            majority_reference=train_labels.astype(np.float64).mean(axis=0).tolist(),
        )
    if task != "single_label":
        raise ValueError(f"`task` must be 'multi_label' or 'single_label', got {task!r}.")
    majority_class = int(np.bincount(train_labels.astype(np.int64)).argmax())
    return {
        "accuracy": float((predictions == references).mean()),
        "majority_baseline": float((references == majority_class).mean()),
    }


# ----------------------------------------------------------------------------------------------------------------------
# The raw-pixel baseline
# ----------------------------------------------------------------------------------------------------------------------

# train images x values per image above which the raw-pixel baseline is skipped (200 MB of float32: CelebA's 162,770
# training images at 224 px are 24.5 G values)
RAW_PIXEL_MAX_VALUES = 50_000_000


def raw_pixels(dataset, transform, image_column: str = "image") -> torch.Tensor:
    """`(num_examples, num_values)`: every image of a `datasets.Dataset` through a deterministic `transform` (the
    model's evaluation view), flattened."""
    return torch.stack([transform(image).reshape(-1) for image in dataset[image_column]])


def raw_pixel_baseline(
    train_set,
    train_labels: torch.Tensor,
    eval_sets: dict[str, Any],
    eval_labels: dict[str, torch.Tensor],
    *,
    transform,
    image_column: str = "image",
    task: ProbeTask,
    num_outputs: int | None = None,
    max_values: int = RAW_PIXEL_MAX_VALUES,
) -> dict[str, float] | str:
    """
    The raw-pixel baseline of a fine-tune, probe or k-NN result: [`logistic_regression_scores`] on the evaluation
    views ([`raw_pixels`] through `transform`) of `train_set`, scored on each of `eval_sets` (`datasets.Dataset`s).
    Where it is not cheap (more than `max_values` pixel values in all), returns the reason it was skipped instead.
    """
    values_per_image = transform(train_set[0][image_column]).numel()
    num_images = len(train_set) + sum(len(dataset) for dataset in eval_sets.values())
    if num_images * values_per_image > max_values:
        return (
            f"not computed: {num_images} images x {values_per_image} values exceed {max_values:,} (cheap only on "
            "small sets)"
        )
    train_pixels = raw_pixels(train_set, transform, image_column)
    eval_pixels = {split: raw_pixels(dataset, transform, image_column) for split, dataset in eval_sets.items()}
    return logistic_regression_scores(train_pixels, train_labels, eval_pixels, eval_labels, task=task, num_outputs=num_outputs)


def logistic_regression_scores(
    train_pixels: torch.Tensor,
    train_labels: torch.Tensor,
    eval_pixels: dict[str, torch.Tensor],
    eval_labels: dict[str, torch.Tensor],
    *,
    task: ProbeTask,
    num_outputs: int | None = None,
    inverse_regularization: float = 1.0,
    max_iterations: int = 100,
) -> dict[str, float]:
    """
    A linear model on raw pixels, the baseline a learnt representation must beat: L2-regularised logistic regression
    (softmax for `single_label`, one sigmoid per attribute for `multi_label`) on the standardised pixel values of the
    training split, fitted to convergence with L-BFGS, as scikit-learn's `LogisticRegression()` defaults do (objective
    `mean loss + ||W||^2 / (2 C N)`, `C = inverse_regularization` = 1, no penalty on the bias).

    Args:
        train_pixels (`torch.FloatTensor` of shape `(num_train, num_values)`): see [`raw_pixels`].
        train_labels (`torch.Tensor`): class ids `(num_train,)` or 0/1 attributes `(num_train, num_attributes)`.
        eval_pixels, eval_labels (`dict[str, torch.Tensor]`): per evaluation split, the same for that split; class
            ids of -1 (a class never seen in training) count as errors.

    Returns:
        `dict[str, float]`: per evaluation split, the accuracy (single-label) or the mean of per-attribute accuracies
        (multi-label) of the fitted model, scored by [`probe_scores`].
    """
    mean = train_pixels.float().mean(dim=0)
    std = train_pixels.float().std(dim=0).clamp_min(1e-6)
    inputs = (train_pixels.float() - mean) / std
    if task == "multi_label":
        targets, num_outputs = train_labels.float(), train_labels.shape[1]
        loss_fn = F.binary_cross_entropy_with_logits
    else:
        targets = train_labels.long()
        num_outputs = int(targets.max()) + 1 if num_outputs is None else num_outputs
        loss_fn = F.cross_entropy
    weight = torch.zeros(inputs.shape[1], num_outputs, requires_grad=True)
    bias = torch.zeros(num_outputs, requires_grad=True)
    penalty = 1.0 / (2.0 * inverse_regularization * inputs.shape[0])
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iterations, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(inputs @ weight + bias, targets) + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    scores = {}
    with torch.no_grad():
        for split, pixels in eval_pixels.items():
            logits = ((pixels.float() - mean) / std) @ weight + bias
            predictions = (logits > 0).long() if task == "multi_label" else logits.argmax(dim=-1)
            headline = "mean_attribute_accuracy" if task == "multi_label" else "accuracy"
            scored = probe_scores(predictions, eval_labels[split], task=task, train_labels=train_labels)
            scores[split] = float(scored[headline])
    return scores


# ----------------------------------------------------------------------------------------------------------------------
# Weighted k-NN (DINO)
# ----------------------------------------------------------------------------------------------------------------------

KNN_K = 20
KNN_TEMPERATURE = 0.07


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    *,
    task: ProbeTask,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """
    DINO's weighted k-NN classifier (Caron et al. 2021, `eval_knn.py` of facebookresearch/dino, commit 7c446df): the
    features are L2-normalised, each evaluation example's `k` nearest training examples by cosine similarity `s` vote
    with weight `exp(s / temperature)`, and the class with the largest total weight wins (ties: the smallest id).

    Multi-label: every attribute is voted on separately by the same neighbours with the same weights; an attribute is
    predicted 1 when the neighbours that have it outweigh those that do not (ties: 0).

    Args:
        train_features (`torch.FloatTensor` of shape `(num_train, num_features)`): the training features.
        train_labels (`torch.Tensor`): `(num_train,)` class ids in `[0, num_classes)` (single-label), or
            `(num_train, num_attributes)` 0/1 labels (multi-label).
        eval_features (`torch.FloatTensor` of shape `(num_eval, num_features)`): the features to classify.
        task (`str`): `"single_label"` or `"multi_label"`.
        k (`int`, *optional*, defaults to 20): neighbours; capped at `num_train`.
        temperature (`float`, *optional*, defaults to 0.07): the temperature of the vote weights.
        num_classes (`int`, *optional*): single-label classes; defaults to `train_labels.max() + 1`.
        chunk_size (`int`, *optional*, defaults to 256): evaluation rows per similarity matrix (memory:
            `chunk_size * num_train` floats).

    Returns:
        `torch.LongTensor`: class ids `(num_eval,)` (single-label) or 0/1 `(num_eval, num_attributes)` (multi-label).
    """
    if task not in ("multi_label", "single_label"):
        raise ValueError(f"`task` must be 'multi_label' or 'single_label', got {task!r}.")
    if k < 1 or not temperature > 0:
        raise ValueError(f"k-NN needs `k` >= 1 and `temperature` > 0, got k={k!r}, temperature={temperature!r}.")
    if train_features.ndim != 2 or eval_features.ndim != 2 or train_features.shape[1] != eval_features.shape[1]:
        raise ValueError(
            f"k-NN features must be (num_examples, num_features) with the same width, got train "
            f"{tuple(train_features.shape)} and eval {tuple(eval_features.shape)}."
        )
    if train_labels.shape[0] != train_features.shape[0] or train_features.shape[0] == 0:
        raise ValueError(
            f"k-NN needs one label row per training feature, got {train_labels.shape[0]} labels for "
            f"{train_features.shape[0]} features."
        )
    if task == "multi_label":
        # each neighbour votes +1 for an attribute it has and -1 for one it lacks
        votes_per_label = train_labels.float() * 2 - 1  # (N, A)
    else:
        num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
        votes_per_label = F.one_hot(train_labels.long(), num_classes).float()  # (N, K)
    train_features = F.normalize(train_features.float(), dim=1)
    k = min(k, train_features.shape[0])
    predictions = []
    for chunk in F.normalize(eval_features.float(), dim=1).split(chunk_size):
        similarity, neighbours = (chunk @ train_features.T).topk(k, dim=1)  # (B, k), cosine similarities
        weights = (similarity / temperature).exp()
        votes = torch.einsum("bk,bkc->bc", weights, votes_per_label[neighbours])  # (B, K) or (B, A)
        predictions.append((votes > 0).long() if task == "multi_label" else votes.argmax(dim=1))
    return torch.cat(predictions)
