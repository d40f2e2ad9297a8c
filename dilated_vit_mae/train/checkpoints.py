"""
Checkpoints of a training run: the step folders, their manager (save, prune, load with damaged-file
messages) and the optimizer's weight-decay groups.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from .lifecycle import OVERWRITE_HINT, RunIdentity, UserError, check_resumable, guarded_checkpoint_write


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """
    MAE's pre-training groups (`optim_factory.add_weight_decay` with an empty skip list, timm 0.3.2): no weight decay
    on parameters with `ndim <= 1` (norms, biases) or named `*.bias`; everything else is decayed, the CLS token, the
    mask token and the dilated kernels included. Frozen sin-cos tables have no gradient and are left out.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen sin-cos tables
        if param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"


def damaged_checkpoint_file(checkpoint: str | os.PathLike) -> tuple[str, str] | None:
    """
    The first file of a checkpoint folder that cannot be read whole, and what is wrong with it: an empty file, a
    safetensors file shorter than its header says, a torch file (`optimizer.bin`, `scheduler.bin`, `*.pkl`, `*.pt`:
    zip archives) whose archive is cut or corrupt, a JSON file that does not parse; `None` if every file reads.
    Files of other kinds (FSDP's `.distcp` shards, ...) are not checked.
    """
    checkpoint = Path(checkpoint)
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        problem = _file_problem(path)
        if problem:
            return str(path.relative_to(checkpoint)), problem
    return None


def _file_problem(path: Path) -> str | None:
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    try:
        if path.suffix == ".safetensors":
            with path.open("rb") as file:
                header_size = int.from_bytes(file.read(8), "little")
                header = json.loads(file.read(header_size)) if 8 + header_size <= size else None
            if header is None:
                return f"truncated: {size} bytes, shorter than its header"
            data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
            expected = 8 + header_size + data_end
            return f"truncated: {size} of {expected} bytes" if size != expected else None
        if path.suffix in (".bin", ".pkl", ".pt", ".pth"):
            with zipfile.ZipFile(path) as archive:
                corrupt = archive.testzip()
            return f"{corrupt} in it fails its checksum" if corrupt else None
        if path.suffix == ".json":
            json.loads(path.read_text())
    except (zipfile.BadZipFile, ValueError, KeyError, TypeError, OSError) as error:
        return f"unreadable, {size} bytes: {' '.join(str(error).split()) or type(error).__name__}"
    return None


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

    def load(self, accelerator, checkpoint: str | os.PathLike, identity: RunIdentity) -> dict[str, Any]:
        """
        The trainer state of `checkpoint` (refused if it belongs to another run: `check_resumable`), after
        `accelerator.load_state` restored the model, optimizer, scheduler, sampler and random states from it (every
        process must call this). A damaged file (truncated by a full disk or a copy, unreadable) is a `UserError` that
        names it and the earlier complete checkpoints to resume from instead, not the loading library's traceback.
        """
        checkpoint = Path(checkpoint)
        try:
            saved = check_resumable(checkpoint, identity)  # before loading anything
            accelerator.load_state(str(checkpoint))
        except UserError:
            raise
        except Exception as error:
            damaged = damaged_checkpoint_file(checkpoint)
            if damaged is None:
                raise
            raise UserError(self._damaged_message(checkpoint, *damaged)) from error
        return saved

    def _damaged_message(self, checkpoint: Path, name: str, problem: str) -> str:
        earlier = [p for p in self.checkpoints() if p.resolve() != checkpoint.resolve()]
        if earlier:
            choice = (
                f"resume from an earlier checkpoint with --resume_from_checkpoint {earlier[-1]} (complete ones: "
                f"{', '.join(p.name for p in earlier)}), or delete {checkpoint} so that --resume_from_checkpoint latest "
                f"skips it, or start over with {OVERWRITE_HINT}"
            )
        else:
            choice = f"there is no earlier checkpoint in {self.checkpoints_dir}: start over with {OVERWRITE_HINT}"
        return f"checkpoint {checkpoint} cannot be resumed: its {name} is damaged ({problem}); {choice}."

    def save(self, accelerator, step: int, trainer_state: dict[str, Any], expected_bytes: int | None = None) -> Path:
        """Save the accelerator state and `trainer_state` as `step_{step}` (every process must call this). A full disk
        removes `.tmp-step_N` and raises `DiskWriteError` with `expected_bytes` (`lifecycle.checkpoint_bytes`)."""
        final = self.checkpoints_dir / f"step_{step}"
        temporary = self.checkpoints_dir / f".tmp-step_{step}"
        if accelerator.is_main_process:
            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.checkpoints_dir.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()
        with guarded_checkpoint_write(temporary, expected_bytes=expected_bytes):
            accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with guarded_checkpoint_write(temporary, expected_bytes=expected_bytes):
                (temporary / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
            if final.exists():  # the same step saved again (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(temporary, final)
            if self.total_limit is not None:
                for old in self.checkpoints()[: -self.total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final
