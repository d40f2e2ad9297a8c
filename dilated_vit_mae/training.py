"""Training helpers for `scripts/run_mae.py`: seeded augmentation and masking, optimizer groups, atomic checkpoints,
reconstructions. Not part of the three model files (the Hub never runs this)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .modeling_dilated_vit_mae import DilatedViTMAEForPreTraining


# ----------------------------------------------------------------------------------------------------------------------
# Randomness that depends only on (seed, epoch, sample), so a resumed or re-sharded run draws the same numbers
# ----------------------------------------------------------------------------------------------------------------------


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical in every process (unlike Python's salted `hash`)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(*parts))


class SeededAugmentation:
    """
    A batch transform for `datasets.Dataset.set_transform` whose randomness is a function of `(seed, epoch,
    sample_index)` only: every image gets its own generator, so the augmentation of an example does not depend on the
    batch it lands in, the worker that loads it, the number of processes or an interruption.

    Args:
        transform (`Callable`): a per-image transform taking `(image, generator=...)`, e.g. `MAETrainTransform`.
        seed (`int`): the run's seed.
        image_column (`str`): the column holding images.
        index_column (`str`): the column holding each example's index in the split.

    Set `epoch` before iterating over an epoch (the `DataLoader` pickles the dataset into its workers when the
    iterator is created, so workers see the value it had then).
    """

    def __init__(self, transform: Callable, seed: int, image_column: str = "image", index_column: str = "sample_index"):
        self.transform = transform
        self.seed = seed
        self.image_column = image_column
        self.index_column = index_column
        self.epoch = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        indices = batch[self.index_column]
        pixel_values = [
            self.transform(image, generator=seeded_generator(self.seed, self.epoch, index))
            for image, index in zip(batch[self.image_column], indices)
        ]
        return {"pixel_values": pixel_values, self.index_column: indices}


class IndexedTransform:
    """A deterministic batch transform (evaluation) that keeps each example's index, for fixed per-example masks."""

    def __init__(self, transform: Callable, image_column: str = "image", index_column: str = "sample_index"):
        self.transform = transform
        self.image_column = image_column
        self.index_column = index_column

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixel_values = [self.transform(image) for image in batch[self.image_column]]
        return {"pixel_values": pixel_values, self.index_column: batch[self.index_column]}


def collate_indexed(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "sample_index": torch.tensor([int(example["sample_index"]) for example in examples]),
    }


def masking_noise(sample_indices: torch.Tensor, num_patches: int, *seed_parts: int) -> torch.Tensor:
    """`(B, num_patches)` uniform noise, one fixed draw per `(seed_parts, sample_index)`: MAE's masks, reproducibly."""
    return torch.stack(
        [torch.rand(num_patches, generator=seeded_generator(*seed_parts, int(i))) for i in sample_indices.tolist()]
    )


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer
# ----------------------------------------------------------------------------------------------------------------------

NO_WEIGHT_DECAY_SUFFIXES = ("cls_token", "mask_token", "position_embeddings", "decoder_pos_embed")


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """MAE's groups: weight decay on weights only, none on norms, biases, position tables, CLS and mask tokens."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen sin-cos tables
        if param.ndim <= 1 or name.endswith(".bias") or name.endswith(NO_WEIGHT_DECAY_SUFFIXES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"


class CheckpointManager:
    """
    `OUTPUT_DIR/checkpoints/step_N/`, one folder per checkpoint, written atomically: `accelerator.save_state` writes
    into `.tmp-step_N/`, the trainer state goes in last, and only then is the folder renamed to `step_N` (a rename is
    atomic on one file system). A run killed at any moment therefore leaves complete `step_*` folders and at most a
    stale `.tmp-*` folder, which is ignored and removed by the next save. At most `total_limit` checkpoints are kept.
    """

    def __init__(self, checkpoints_dir: str | os.PathLike, total_limit: int | None = None):
        self.checkpoints_dir = Path(checkpoints_dir)
        if total_limit is not None and total_limit < 1:
            raise ValueError(f"`checkpoints_total_limit` must be >= 1 or None, got {total_limit!r}.")
        self.total_limit = total_limit

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for path in self.checkpoints_dir.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match and (path / TRAINER_STATE).is_file():
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def resolve(self, resume_from_checkpoint: str) -> Path:
        """`"latest"` or a path -> a complete checkpoint folder, or a clear error."""
        if resume_from_checkpoint == "latest":
            latest = self.latest()
            if latest is None:
                raise FileNotFoundError(
                    f"--resume_from_checkpoint latest: no complete checkpoint in {self.checkpoints_dir}; start without "
                    "--resume_from_checkpoint, or point it at a checkpoint folder."
                )
            return latest
        path = Path(resume_from_checkpoint)
        if not (path / TRAINER_STATE).is_file():
            raise FileNotFoundError(
                f"--resume_from_checkpoint {resume_from_checkpoint}: not a complete checkpoint (no {TRAINER_STATE}); "
                f"complete ones: {[str(p) for p in self.checkpoints()] or 'none'}."
            )
        return path

    def save(self, accelerator, step: int, trainer_state: dict[str, Any]) -> Path:
        """Save the accelerator state and `trainer_state` as `step_{step}` (every process must call this)."""
        final = self.checkpoints_dir / f"step_{step}"
        temporary = self.checkpoints_dir / f".tmp-step_{step}"
        if accelerator.is_main_process:
            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.checkpoints_dir.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (temporary / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
            if final.exists():  # the same step saved again (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(temporary, final)
            if self.total_limit is not None:
                for old in self.checkpoints()[: -self.total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final


# ----------------------------------------------------------------------------------------------------------------------
# Reconstructions
# ----------------------------------------------------------------------------------------------------------------------


def reconstruction_images(
    model: DilatedViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> dict[str, torch.Tensor]:
    """
    Images in [0, 1] for showing and scoring a reconstruction: `original`, `masked` (masked patches blanked),
    `reconstruction` (every patch predicted) and `recomposited` (visible patches from the original, masked ones
    predicted), each `(B, C, H, W)`, and `pixel_mask` (1 on masked pixels).

    With `norm_pix_loss`, predictions are mapped back with the target patches' statistics
    ([`DilatedViTMAEForPreTraining.logits_to_pixel_values`]).
    """
    mean = torch.tensor(image_mean, device=pixel_values.device).reshape(1, -1, 1, 1)
    std = torch.tensor(image_std, device=pixel_values.device).reshape(1, -1, 1, 1)

    def to_unit_range(normalised: torch.Tensor) -> torch.Tensor:
        return (normalised * std + mean).clamp(0.0, 1.0)

    original = to_unit_range(pixel_values.float())
    reconstruction = to_unit_range(model.logits_to_pixel_values(logits.float(), pixel_values.float()))
    pixel_mask = model.mask_to_pixels(mask.float(), tuple(pixel_values.shape[2:])).expand_as(original)
    return {
        "original": original,
        "masked": original * (1 - pixel_mask),
        "reconstruction": reconstruction,
        "recomposited": original * (1 - pixel_mask) + reconstruction * pixel_mask,
        "pixel_mask": pixel_mask,
    }


def reconstruction_grid(images: dict[str, torch.Tensor], max_images: int = 8) -> PIL.Image.Image:
    """One row per image: original | masked | reconstruction | recomposited, as a PIL image."""
    columns = ("original", "masked", "reconstruction", "recomposited")
    rows = []
    for i in range(min(max_images, images["original"].shape[0])):
        row = torch.cat([images[name][i] for name in columns], dim=2)  # (C, H, 4W)
        rows.append(row)
    grid = torch.cat(rows, dim=1)  # (C, rows*H, 4W)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array))
