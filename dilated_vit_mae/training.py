"""Training helpers for `scripts/run_mae.py`: seeded augmentation and masking, optimizer groups, atomic checkpoints,
reconstructions. Not part of the three model files (the Hub never runs this)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import textwrap
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from .lifecycle import OVERWRITE_HINT, RunIdentity, UserError, check_resumable, guarded_checkpoint_write
from .modeling_dilated_vit_mae import DilatedViTMAEForPreTraining, patchify, unpatchify


# ----------------------------------------------------------------------------------------------------------------------
# Randomness that depends only on (seed, epoch, sample), so a resumed or re-sharded run draws the same numbers
# ----------------------------------------------------------------------------------------------------------------------


# Each random stream has its own tag, so that two streams drawn for the same (seed, epoch, example) are independent:
# seeding the augmentation and the training mask from the same numbers made the first mask scores equal the crop
# and flip draws (patch 0 was always masked when the crop covered more than 80% of the image).
STREAMS = {"augmentation": 1, "train_mask": 2, "eval_mask": 3}
Stream = Literal["augmentation", "train_mask", "eval_mask"]


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical in every process (unlike Python's salted `hash`)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _stream_tag(stream: Stream) -> int:
    if stream not in STREAMS:
        raise ValueError(f"Unknown random stream {stream!r}; use one of {sorted(STREAMS)}.")
    return STREAMS[stream]


def seeded_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(*parts))


def stream_generator(stream: Stream, seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator for one example's draws of one stream (e.g. its augmentation in an epoch)."""
    return seeded_generator(_stream_tag(stream), seed, epoch, index)


_MASK32 = 0xFFFFFFFF


def _mulmod32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """`(x * constant) mod 2**32` for int64 tensors holding values below 2**32, without int64 overflow."""
    high, low = constant >> 16, constant & 0xFFFF
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (Wellons' "lowbias32"): every input bit affects every output bit."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(state: torch.Tensor, value: int | torch.Tensor) -> torch.Tensor:
    """Fold a (possibly 64-bit) integer into a 32-bit hash state."""
    if isinstance(value, int):
        value &= 2**64 - 1
        for half in (value & _MASK32, value >> 32):
            state = _mix32(state ^ half ^ 0x9E3779B9)
        return state
    return _mix32(state ^ (value & _MASK32) ^ 0x9E3779B9)


def masking_noise(
    sample_indices: torch.Tensor, num_patches: int, *, stream: Stream, seed: int, epoch: int = 0
) -> torch.Tensor:
    """
    `(B, num_patches)` masking scores in [0, 1), a pure function of `(stream, seed, epoch, sample_index, patch)`.

    A counter-based hash in int64 arithmetic, one vectorised draw for the whole batch on the indices' device: the
    same on CPU and GPU, whatever batch, process or worker an example lands in. The scores are float64 and distinct
    within a row (hash * num_patches + patch), so `argsort` has no ties to break differently on another device.
    """
    device = sample_indices.device
    state = torch.zeros((), dtype=torch.int64, device=device)
    for part in (_stream_tag(stream), seed, epoch):
        state = _absorb(state, int(part))
    rows = _absorb(state, sample_indices.to(torch.int64).reshape(-1, 1))  # (B, 1)
    patches = torch.arange(num_patches, dtype=torch.int64, device=device)
    hashed = _mix32(_absorb(rows, patches) ^ rows)  # (B, L)
    return (hashed.double() * num_patches + patches.double()) / (float(2**32) * num_patches)


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

    Set `epoch` before iterating over an epoch. It lives in shared memory, so that persistent `DataLoader` workers
    (which keep the copy of the dataset they were started with) see the new value when the next epoch's iterator
    starts.
    """

    def __init__(self, transform: Callable, seed: int, image_column: str = "image", index_column: str = "sample_index"):
        self.transform = transform
        self.seed = seed
        self.image_column = image_column
        self.index_column = index_column
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        indices = batch[self.index_column]
        pixel_values = [
            self.transform(image, generator=stream_generator("augmentation", self.seed, self.epoch, index))
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


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer
# ----------------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------------
# Reconstructions
# ----------------------------------------------------------------------------------------------------------------------


def to_unit_range(normalised: torch.Tensor, image_mean: Sequence[float], image_std: Sequence[float]) -> torch.Tensor:
    """`(B, C, H, W)` images normalised by the image processor -> [0, 1]."""
    mean = torch.tensor(image_mean, device=normalised.device).reshape(1, -1, 1, 1)
    std = torch.tensor(image_std, device=normalised.device).reshape(1, -1, 1, 1)
    return (normalised * std + mean).clamp(0.0, 1.0)


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
    original = to_unit_range(pixel_values.float(), image_mean, image_std)
    prediction = model.logits_to_pixel_values(logits.float(), pixel_values.float())
    reconstruction = to_unit_range(prediction, image_mean, image_std)
    pixel_mask = model.mask_to_pixels(mask.float(), tuple(pixel_values.shape[2:])).expand_as(original)
    return {
        "original": original,
        "masked": original * (1 - pixel_mask),
        "reconstruction": reconstruction,
        "recomposited": original * (1 - pixel_mask) + reconstruction * pixel_mask,
        "pixel_mask": pixel_mask,
    }


PREDICTORS = ("model", "baseline_zeros", "baseline_visible_mean")


def _normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    """norm_pix_loss's target: each patch minus its mean, over its standard deviation (MAE's eps 1e-6)."""
    mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + 1.0e-6) ** 0.5


def _visible_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(B, L, ...)` values averaged over each image's visible patches (`mask` 0) -> `(B, 1, ...)`."""
    weights = (1 - mask).reshape(*mask.shape, *([1] * (values.ndim - 2)))
    return (values * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1)


def _patch_predictions(
    model: DilatedViTMAEForPreTraining, patches: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """
    Each predictor's masked patches in the loss's target space, and in the input's normalised pixel space computed
    without any statistic of a masked patch (with `norm_pix_loss` a normalised prediction is mapped back with the
    mean and variance of the image's *visible* patches).
    """
    visible_mean_patch = _visible_mean(patches, mask).expand_as(patches)
    targets = {"model": logits, "baseline_zeros": torch.zeros_like(patches), "baseline_visible_mean": visible_mean_patch}
    if not model.config.norm_pix_loss:
        return targets, dict(targets)
    targets["baseline_visible_mean"] = _normalise_patches(visible_mean_patch)
    mean = _visible_mean(patches.mean(dim=-1, keepdim=True), mask)
    std = (_visible_mean(patches.var(dim=-1, keepdim=True), mask) + 1.0e-6) ** 0.5
    pixels = {name: value * std + mean for name, value in targets.items() if name != "baseline_visible_mean"}
    return targets, {**pixels, "baseline_visible_mean": visible_mean_patch}


def _psnr(recomposited: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1] (data range 1); a perfect image is capped at 100 dB."""
    mse = ((recomposited - original) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def reconstruction_scores(
    model: DilatedViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> dict[str, torch.Tensor]:
    """
    Per-image `(B,)` scores of the model and of two trivial predictors on the same masks, so that every figure has
    a floor beside it: `baseline_zeros` (predict 0 in the loss's target space: the dataset mean colour for a pixel
    loss, each patch's own mean with `norm_pix_loss`) and `baseline_visible_mean` (each masked patch is the mean of
    the image's visible patches).

    Keys are `{predictor}_{metric}` for the predictors in `PREDICTORS` and the metrics `loss` (the training loss:
    MSE on masked patches in the target space), `masked_patch_mse` (MSE on masked pixels in [0, 1]) and `psnr` (of
    the re-composited image in [0, 1]). The last two use no statistic of a masked patch. With `norm_pix_loss`,
    `oracle_masked_patch_mse` / `oracle_psnr` (and the zeros baseline's) map normalised predictions back with each
    masked patch's *true* mean and variance, as MAE's visualisation does: an oracle, only comparable to its baseline.
    """
    patch_size = model.vit.embeddings.patch_embeddings.patch_size
    grid = model.vit.embeddings.patch_embeddings.grid_for(*pixel_values.shape[2:])
    channels = pixel_values.shape[1]
    pixel_values, logits, mask = pixel_values.float(), logits.float(), mask.float()
    patches = patchify(pixel_values, patch_size)  # (B, L, p*p*C)
    target = _normalise_patches(patches) if model.config.norm_pix_loss else patches
    in_target_space, in_pixel_space = _patch_predictions(model, patches, logits, mask)
    def unit_image(patch_values: torch.Tensor) -> torch.Tensor:
        return to_unit_range(unpatchify(patch_values, patch_size, grid, channels), image_mean, image_std)

    original = unit_image(patches)
    pixel_mask = model.mask_to_pixels(mask, tuple(pixel_values.shape[2:])).expand_as(original)
    masked_pixels = pixel_mask.flatten(1).sum(dim=1).clamp(min=1)
    masked_patches = mask.sum(dim=1).clamp(min=1)

    def pixel_scores(patch_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recomposited = original * (1 - pixel_mask) + unit_image(patch_values) * pixel_mask
        return ((recomposited - original) ** 2).flatten(1).sum(dim=1) / masked_pixels, _psnr(recomposited, original)

    scores = {}
    for name in PREDICTORS:
        error = ((in_target_space[name] - target) ** 2).mean(dim=-1)  # (B, L)
        scores[f"{name}_loss"] = (error * mask).sum(dim=1) / masked_patches
        scores[f"{name}_masked_patch_mse"], scores[f"{name}_psnr"] = pixel_scores(in_pixel_space[name])
    if model.config.norm_pix_loss:
        own_mean, own_std = patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        for name in ("model", "baseline_zeros"):
            mse, psnr = pixel_scores(in_target_space[name] * own_std + own_mean)
            scores[f"{name}_oracle_masked_patch_mse"], scores[f"{name}_oracle_psnr"] = mse, psnr
    return scores


def visible_mean_images(
    model: DilatedViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    mask: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> torch.Tensor:
    """The `baseline_visible_mean` predictor as `(B, C, H, W)` images in [0, 1]: masked patches filled with the mean
    of the image's visible patches, visible ones as they are."""
    patch_embeddings = model.vit.embeddings.patch_embeddings
    patches = patchify(pixel_values.float(), patch_embeddings.patch_size)
    filled = torch.where(mask.bool().unsqueeze(-1), _visible_mean(patches, mask.float()).expand_as(patches), patches)
    images = unpatchify(filled, patch_embeddings.patch_size, patch_embeddings.grid_for(*pixel_values.shape[2:]), pixel_values.shape[1])
    return to_unit_range(images, image_mean, image_std)


def summary_keys(scores: dict[str, float]) -> dict[str, float]:
    """`model_loss` -> `loss`, `model_oracle_psnr` -> `oracle_psnr`, baselines unchanged (all_results.json keys)."""
    return {name.removeprefix("model_"): value for name, value in scores.items()}


GRID_COLUMNS = {
    "original": "original",
    "masked": "masked (input)",
    "reconstruction": "reconstruction",
    "recomposited": "re-composited",
    "baseline": "visible-patch mean",
}


def reconstruction_grid(
    images: dict[str, torch.Tensor], max_images: int = 8, min_cell_size: int = 128, caption: str | None = None
) -> PIL.Image.Image:
    """
    One row per image, a labelled column per entry of `GRID_COLUMNS` present in `images` (original | masked |
    reconstruction | re-composited, and the trivial predictor `baseline` when given), tiles upscaled (nearest) to at
    least `min_cell_size` pixels, and `caption` (e.g. the metrics beside the trivial predictor's) under the grid.
    """
    columns = [name for name in GRID_COLUMNS if name in images]
    count = min(max_images, images["original"].shape[0])
    height, width = images["original"].shape[2:]
    factor = max(1, -(-min_cell_size // min(height, width)))  # ceil division
    cell_height, cell_width = height * factor, width * factor
    font = PIL.ImageFont.load_default(size=14)
    if caption:  # wrapped to the grid's width (about 7 px a character at this size)
        width_chars = max(20, cell_width * len(columns) // 7)
        caption = "\n".join(textwrap.fill(line, width_chars) for line in caption.splitlines())
    header, footer = 24, (22 * (caption.count("\n") + 1) + 6 if caption else 0)
    grid = PIL.Image.new("RGB", (cell_width * len(columns), header + cell_height * count + footer), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for column, name in enumerate(columns):
        draw.text((column * cell_width + 4, 4), GRID_COLUMNS[name], fill=(0, 0, 0), font=font)
        for row in range(count):
            array = (images[name][row].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            tile = PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array[..., :3]))
            tile = tile.convert("RGB").resize((cell_width, cell_height), PIL.Image.NEAREST)
            grid.paste(tile, (column * cell_width, header + row * cell_height))
    if caption:
        draw.multiline_text((4, header + cell_height * count + 4), caption, fill=(0, 0, 0), font=font, spacing=8)
    return grid
