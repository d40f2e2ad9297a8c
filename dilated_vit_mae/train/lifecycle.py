"""
A training run's life outside the loop, for `scripts/run_mae.py`: the output folder it starts in, the identity that
ties its checkpoints together, atomic final writes that survive a full disk, preemption through a launcher, and
one-line refusals. Nothing here imports torch, accelerate or the model (`checkpoint_bytes` only duck-types tensors),
so every piece can be tested with small files and short subprocesses.

- Output folder (`check_output_dir`, `prepare_output_dir`): a folder holding anything an earlier run wrote
  (`RUN_OUTPUTS`) is refused unless the run resumes or overwrites; overwriting moves every earlier output aside, then
  deletes it, before anything new is written. Files this project does not write (a Slurm log, your notes) are never
  deleted and never block a run: they are kept and named in a warning.
- Identity (`RunIdentity`, `check_resumable`, `RunClock`): `OUTPUT_DIR/run.json` holds a run id, the seed, the
  creation time and a fingerprint of the run-defining arguments; every checkpoint's `trainer_state.json` repeats the id,
  and resuming a checkpoint of another run is refused.
- Atomic writes (`stage_and_swap`, `guarded_checkpoint_write`): a failed write (full disk, quota, file-size limit)
  leaves the previous files as they were and raises `DiskWriteError`, which says what failed, where, the space needed
  and the space free.
- Preemption (`exit_when_parent_dies`, `parent_is_launcher`): see docs/preemption.md.
- Command line (`run_cli`, `positive_int` and the other argparse types, `quiet_library_logs`).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..data.fingerprint import write_json_atomically
from .redaction import redact, redact_logs, redact_message, secret_values


logger = logging.getLogger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------------------
# Errors a user can cause, and the command line that reports them in one line
# ----------------------------------------------------------------------------------------------------------------------


class UserError(Exception):
    """A problem the user caused and can fix (the message says how); `run_cli` prints it as one line, no traceback."""


class OutputDirError(UserError, FileExistsError):
    """`--output_dir` holds an earlier run, and neither `--resume_from_checkpoint` nor `--overwrite_output_dir` was
    given."""


DISK_FULL_ADVICE = (
    "Free some space (or set a smaller --checkpoints_total_limit, or an --output_dir on a larger disk) and run again."
)


class DiskWriteError(UserError):
    """
    A write failed (no space left, quota, file-size limit, read-only file system); nothing partial was left behind.

    Attributes:
        what (`str`): what was being written, e.g. `"checkpoint step_90"`.
        path (`Path`): where.
        needed_bytes (`int`, *optional*): the size of what was being written, or an estimate.
        free_bytes (`int`, *optional*): the free space on that file system once the partial files were removed.
        advice (`str`, *optional*): what to do, in place of `DISK_FULL_ADVICE` (a training run's).
    """

    def __init__(
        self, what: str, path: Path, cause: BaseException, needed_bytes: int | None, free_bytes: int | None,
        at_least: bool = False, advice: str | None = None,
    ):  # fmt: skip
        self.what, self.path, self.needed_bytes, self.free_bytes = what, Path(path), needed_bytes, free_bytes
        bound = "at least" if at_least else "about"
        needed = f"{bound} {format_bytes(needed_bytes)}" if needed_bytes else "an unknown amount"
        free = format_bytes(free_bytes) if free_bytes is not None else "an unknown amount"
        super().__init__(
            f"could not write {what} to {path}: {_one_line(cause)}. It needs {needed} and {free} is free there; the "
            f"partial files were removed and the previous files are unchanged. {advice or DISK_FULL_ADVICE}"
        )


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileExistsError, FileNotFoundError)
USER_ERROR_EXIT_CODE = 2  # as argparse's usage errors
TRACEBACK_ENV = "DILATED_VIT_MAE_TRACEBACK"  # set to 1 to see the traceback of a user error too


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_cli(main: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """
    `main(*args, **kwargs)`, with the project's user-facing errors (`USER_ERRORS`: `UserError`, `DiskWriteError`,
    `ValueError`, `FileExistsError`, `FileNotFoundError`) printed as one `error: ...` line on stderr and exit status
    `USER_ERROR_EXIT_CODE` (2), without a traceback. Anything else (a bug) propagates with its traceback, and
    `DILATED_VIT_MAE_TRACEBACK=1` shows the traceback of user errors too.
    """
    try:
        return main(*args, **kwargs)
    except USER_ERRORS as error:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        _close_progress_bars()
        sys.stdout.flush()
        print(f"error: {redact_message(_one_line(error))}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


def _close_progress_bars() -> None:
    """End open tqdm bars, so that the error starts a line of its own (a bar leaves its line unfinished)."""
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ())):
        bar.close()


def _number(text: str, kind: type[int] | type[float], description: str, accept: Callable[[Any], bool]) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        value = None
    if value is None or (kind is float and not math.isfinite(value)) or not accept(value):
        raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse `type=`: an integer > 0."""
    return _number(text, int, "a positive integer", lambda value: value > 0)


def non_negative_int(text: str) -> int:
    """argparse `type=`: an integer >= 0."""
    return _number(text, int, "a non-negative integer", lambda value: value >= 0)


def positive_float(text: str) -> float:
    """argparse `type=`: a finite number > 0."""
    return _number(text, float, "a positive number", lambda value: value > 0)


def non_negative_float(text: str) -> float:
    """argparse `type=`: a finite number >= 0."""
    return _number(text, float, "a number >= 0", lambda value: value >= 0)


def probability(text: str) -> float:
    """argparse `type=`: a number in [0, 1] (a drop rate, Adam's betas, a mixing probability)."""
    return _number(text, float, "a number in [0, 1]", lambda value: 0 <= value <= 1)


def fraction(text: str) -> float:
    """argparse `type=`: a number in [0, 1) (a warmup ratio, a mask ratio)."""
    return _number(text, float, "a number in [0, 1)", lambda value: 0 <= value < 1)


def checkpointing_steps(text: str) -> int | Literal["epoch", "no"]:
    """argparse `type=` for `--checkpointing_steps`: `"epoch"`, `"no"` or a positive number of optimizer steps."""
    if text in ("epoch", "no"):
        return text
    return _number(text, int, '"epoch", "no" or a positive integer', lambda value: value > 0)


# accelerate's INFO lines for every file of every checkpoint it saves or loads (accelerate 1.15:
# `accelerate.accelerator`, `accelerate.checkpointing`, `accelerate.utils.fsdp_utils`); other INFO lines and every
# warning still pass
CHECKPOINT_LOGGERS = ("accelerate.accelerator", "accelerate.checkpointing", "accelerate.utils.fsdp_utils")
CHECKPOINT_CHATTER = re.compile(
    r"^(\[RANK \d+\] )?"  # accelerate's MultiProcessAdapter prefix
    r"(Saving (current state|the state of|FSDP|DeepSpeed|Megatron-LM|model|Optimizer)"
    r"|Loading (states from|the state of|FSDP|DeepSpeed|Megatron-LM|model|Optimizer|in \d+ custom states)"
    r"|(Model weights|Optimizer state|Scheduler state|Gradient scaler state|Random states) saved in"
    r"|Sampler state for dataloader \d+ saved in|All .* loaded successfully|GradScaler state loaded"
    r"|(FSDP|DeepSpeed|Megatron-LM) .*(saved|loaded)|(Model|Optimizer|Optimizer state) (saved|loaded) (to|from|in) )"
)


class _DropCheckpointChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not CHECKPOINT_CHATTER.match(record.getMessage())


_CHATTER_FILTER = _DropCheckpointChatter()


def quiet_library_logs() -> None:
    """Drop accelerate's per-file checkpoint INFO lines ("Saving current state to", "Model weights saved in", ...,
    "Loading states from"), keeping its other messages and every warning. Idempotent."""
    for name in CHECKPOINT_LOGGERS:
        target = logging.getLogger(name)
        if _CHATTER_FILTER not in target.filters:
            target.addFilter(_CHATTER_FILTER)


# ----------------------------------------------------------------------------------------------------------------------
# The output folder
# ----------------------------------------------------------------------------------------------------------------------

RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
# everything `scripts/run_mae.py` (and `scripts/linear_probe.py`, `prepare_hub_folder`) writes at the top of OUTPUT_DIR
RUN_OUTPUTS = (
    RUN_FILE, CHECKPOINTS_DIR, "runs", "eval", "examples", "assets", "train_log.jsonl", "all_results.json",
    "linear_probe_results.json", "config.json", "preprocessor_config.json", "model.safetensors",
    "model.safetensors.index.json", "model-*-of-*.safetensors", "pytorch_model*.bin",
    "configuration_dilated_vit_mae.py", "modeling_dilated_vit_mae.py", "image_processing_dilated_vit_mae.py",
    "pipeline_dilated_vit_mae.py", "handler.py",
)  # fmt: skip
MODEL_CARD = "README.md"  # a run output only when a run generated it (a README.md of your own is kept)
# the first line of the cards a run generates (`dilated_vit_mae.publish.model_card`): the template's, which a push
# renders again, and the fine-tuned classifier's (its text names the function that wrote it before the cards moved
# into publish/: unchanged, so that the cards of earlier runs are still known as theirs)
RENDERED_MARKER = "<!-- Rendered by dilated_vit_mae.publish.model_card"
CLASSIFIER_CARD_MARKER = "<!-- Rendered by dilated_vit_mae.train.finetune"
TEMPORARY_PREFIX = ".tmp-"  # interrupted saves and overwrites; removed whenever a run starts in the folder
STAGING_PREFIX = f"{TEMPORARY_PREFIX}final-"  # `stage_and_swap`'s new files
REPLACED_PREFIX = f"{TEMPORARY_PREFIX}replaced-"  # the files it replaces, until the swap is done (then kept if found)
RESUME_HINT = "--resume_from_checkpoint latest"
OVERWRITE_HINT = "--overwrite_output_dir"


def is_generated_card(path: str | os.PathLike) -> bool:
    """Whether the card at `path` was written by a run (the template's or the classifier's), not by hand."""
    path = Path(path)
    return path.is_file() and any(m in path.read_text(encoding="utf-8") for m in (RENDERED_MARKER, CLASSIFIER_CARD_MARKER))


def _is_run_output(path: Path) -> bool:
    if path.name == MODEL_CARD:
        return is_generated_card(path)
    return any(fnmatch(path.name, pattern) for pattern in RUN_OUTPUTS)


def earlier_run_outputs(output_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The top-level entries of `output_dir` that an earlier run wrote, and the other ones (not `.tmp-*`), sorted."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return [], []
    entries = sorted(p for p in output_dir.iterdir() if not p.name.startswith(TEMPORARY_PREFIX))
    outputs = [p.name for p in entries if _is_run_output(p)]
    return outputs, [p.name for p in entries if p.name not in outputs]


def _checkpoint_steps(output_dir: Path) -> list[int]:
    folder = output_dir / CHECKPOINTS_DIR
    found = (re.fullmatch(r"step_(\d+)", p.name) for p in folder.iterdir()) if folder.is_dir() else ()
    return sorted(int(match.group(1)) for match in found if match)


def _describe(output_dir: Path, outputs: Sequence[str]) -> str:
    steps = _checkpoint_steps(output_dir)
    described = [
        f"{name}/ ({len(steps)} checkpoints, newest step_{steps[-1]})" if name == CHECKPOINTS_DIR and steps else name
        for name in outputs
    ]
    return ", ".join(described)


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool, resume: bool) -> list[str]:
    """
    Refuse (`OutputDirError`) an `output_dir` that holds an earlier run's files unless `resume` or `overwrite`, and
    both together (`UserError`). Reads only: safe on every process. Returns the earlier run's entries.
    """
    if overwrite and resume:
        raise UserError(
            f"{OVERWRITE_HINT} deletes the earlier run and --resume_from_checkpoint continues it: give one of them."
        )
    output_dir = Path(output_dir)
    outputs, _ = earlier_run_outputs(output_dir)
    if outputs and not (overwrite or resume):
        resumable = bool(_checkpoint_steps(output_dir))
        choice = (
            f"pass {RESUME_HINT} to continue it, {OVERWRITE_HINT}"
            if resumable
            else f"it has no checkpoint to resume from: pass {OVERWRITE_HINT}"
        )
        raise OutputDirError(
            f"--output_dir {output_dir} already holds an earlier run ({_describe(output_dir, outputs)}); {choice} to "
            "delete it and start over, or choose another --output_dir."
        )
    return outputs


def _remove_temporary(output_dir: Path) -> None:
    for stale in output_dir.glob(f"{TEMPORARY_PREFIX}*"):
        if stale.name.startswith(REPLACED_PREFIX):  # may hold the only copy of files an interrupted swap moved aside
            logger.warning(
                f"{stale} holds files a final save moved aside and was interrupted: if {output_dir} lacks them, move "
                "them back; otherwise delete it."
            )
            continue
        _remove_path(stale)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _clear(output_dir: Path, outputs: Sequence[str]) -> None:
    """Move `outputs` aside into one hidden folder (renames: nothing old stays visible), then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}overwritten-", dir=output_dir))
    for name in outputs:
        os.replace(output_dir / name, aside / name)
    shutil.rmtree(aside)
    logger.info(f"{OVERWRITE_HINT}: removed the earlier run's {', '.join(outputs)} from {output_dir}")


def prepare_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite: bool,
    resume: bool,
    seed: int,
    run_args: Mapping[str, Any] | None = None,
) -> RunIdentity:
    """
    Make `output_dir` ready for a run and return its identity. Call it on the main process only, after every process
    has passed `check_output_dir` (it refuses the same folders).

    - `overwrite`: the earlier run's files (`RUN_OUTPUTS`: checkpoints, logs, eval grids, model files, card, probe
      results, `run.json`) are removed before this function returns, i.e. before the new run writes anything.
    - `resume`: nothing is removed; the identity is read from `run.json` (a folder from before `run.json` existed
      gets a new one). Arguments that differ from the recorded ones are named in a warning.
    - always: interrupted saves (`.tmp-*`) are removed; files this project does not write are kept, with a warning.

    Args:
        seed (`int`): the run's seed, recorded in `run.json`.
        run_args (`Mapping[str, Any]`, *optional*): the arguments that define the run (model, data, optimisation);
            JSON-serialised with `str` for other types, keys containing "token", "password" or "secret" dropped.
    """
    output_dir = Path(output_dir)
    outputs = check_output_dir(output_dir, overwrite=overwrite, resume=resume)
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_temporary(output_dir)
    if overwrite and outputs:
        _clear(output_dir, outputs)
    _, others = earlier_run_outputs(output_dir)
    if others:
        logger.warning(f"{output_dir} also holds {', '.join(others)}, which a run does not write: kept as they are.")
    if resume and (output_dir / RUN_FILE).is_file():
        identity = RunIdentity.load(output_dir)
        changed = identity.changed_args(run_args or {})
        if changed:
            logger.warning(f"resuming run {identity.run_id} with changed arguments: {_format_changes(changed)}")
        return identity
    identity = RunIdentity.new(seed, run_args or {})
    identity.save(output_dir)
    return identity


def prepare_run_folder(args: Any, accelerator: Any, not_run_defining: Iterable[str]) -> RunIdentity:
    """
    `prepare_output_dir` for a training script's `args` (`output_dir`, `overwrite_output_dir`,
    `resume_from_checkpoint`, `seed`) on the main process, then every process waits and reads the run's identity.
    With `--overwrite_output_dir` the earlier run's files are gone when this returns; `run.json` holds the run's id
    and the arguments not in `not_run_defining`, secrets redacted by value. From here on, every log line of the
    process is redacted of the arguments' secrets too (`redaction.redact_logs`).
    """
    secrets = secret_values(args)
    redact_logs(secrets)
    if accelerator.is_main_process:
        run_args = redact({k: v for k, v in vars(args).items() if k not in set(not_run_defining)}, secrets)
        overwrite, resume = args.overwrite_output_dir, bool(args.resume_from_checkpoint)
        prepare_output_dir(args.output_dir, overwrite=overwrite, resume=resume, seed=args.seed, run_args=run_args)
    accelerator.wait_for_everyone()
    return RunIdentity.load(args.output_dir)


# ----------------------------------------------------------------------------------------------------------------------
# Run identity and cumulative runtime
# ----------------------------------------------------------------------------------------------------------------------

SECRET_ARG = re.compile(r"token|password|secret", re.IGNORECASE)


def json_safe_args(run_args: Mapping[str, Any]) -> dict[str, Any]:
    """`run_args` as plain JSON values (tuples become lists, paths strings), without keys that look like secrets."""
    kept = {key: value for key, value in run_args.items() if not SECRET_ARG.search(key)}
    return json.loads(json.dumps(kept, default=str, sort_keys=True))


def args_fingerprint(run_args: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of `json_safe_args(run_args)`, independent of key order."""
    return hashlib.sha256(json.dumps(json_safe_args(run_args), sort_keys=True).encode()).hexdigest()[:16]


def _format_changes(changed: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items()))


@dataclass
class RunIdentity:
    """
    What `OUTPUT_DIR/run.json` records about a run, created once when the run starts and kept across resumes.

    Attributes:
        run_id (`str`): `uuid4().hex`, also written into every checkpoint's `trainer_state.json` (`checkpoint_fields`).
        seed (`int`): the run's seed.
        created (`str`): when the run started, ISO 8601 in UTC.
        fingerprint (`str`): `args_fingerprint(run_args)`.
        run_args (`dict`): the run-defining arguments, as JSON values.
        train_runtime_seconds (`float`): the training time behind the newest checkpoint or final save (`RunClock`).
    """

    run_id: str
    seed: int
    created: str
    fingerprint: str
    run_args: dict[str, Any] = field(default_factory=dict)
    train_runtime_seconds: float = 0.0

    @classmethod
    def new(cls, seed: int, run_args: Mapping[str, Any]) -> RunIdentity:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return cls(uuid.uuid4().hex, int(seed), created, args_fingerprint(run_args), json_safe_args(run_args))

    @classmethod
    def load(cls, output_dir: str | os.PathLike) -> RunIdentity:
        path = Path(output_dir) / RUN_FILE
        try:
            data = json.loads(path.read_text())
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except (ValueError, TypeError) as error:
            raise UserError(
                f"{path} is damaged ({error}); it records the run's identity: restore it from a copy, or start over "
                f"with {OVERWRITE_HINT}."
            ) from error

    def save(self, output_dir: str | os.PathLike) -> Path:
        path = Path(output_dir) / RUN_FILE
        # under `.tmp-run.json`: what a killed write leaves, the next run in the folder removes
        write_json_atomically(path, asdict(self), partial=path.with_name(f"{TEMPORARY_PREFIX}{path.name}"))
        return path

    def changed_args(self, run_args: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """`{name: (recorded, given)}` for every run-defining argument that differs from the recorded one."""
        recorded, given = self.run_args, json_safe_args(run_args)
        keys = sorted({*recorded, *given})
        return {key: (recorded.get(key), given.get(key)) for key in keys if recorded.get(key) != given.get(key)}

    def checkpoint_fields(self, train_runtime_seconds: float) -> dict[str, Any]:
        """The fields every checkpoint's trainer state carries: the run id, the fingerprint and the runtime so far."""
        runtime = float(train_runtime_seconds)
        return {"run_id": self.run_id, "run_fingerprint": self.fingerprint, "train_runtime_seconds": runtime}

    def record_runtime(self, output_dir: str | os.PathLike, train_runtime_seconds: float) -> None:
        """Set the cumulative runtime (`RunClock.total()`) in `run.json`: with each checkpoint and the final save."""
        self.train_runtime_seconds = float(train_runtime_seconds)
        self.save(output_dir)


def check_resumable(checkpoint_dir: str | os.PathLike, identity: RunIdentity) -> dict[str, Any]:
    """
    The trainer state of `checkpoint_dir` if it belongs to the run `identity`; a `UserError` naming both runs if it
    belongs to another one. A checkpoint written before run ids existed is accepted with a warning.
    """
    checkpoint_dir = Path(checkpoint_dir)
    state_path = checkpoint_dir / "trainer_state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a complete checkpoint: it has no trainer_state.json.")
    state = json.loads(state_path.read_text())
    their_id = state.get("run_id")
    if their_id is None:
        logger.warning(f"{checkpoint_dir} has no run id (an older version wrote it): resumed as run {identity.run_id}.")
    elif their_id != identity.run_id:
        raise UserError(
            f"{checkpoint_dir} belongs to run {their_id}, but this output folder is run {identity.run_id} (started "
            f"{identity.created}, see its {RUN_FILE}): resume a checkpoint of this run, resume that run in its own "
            f"output folder, or start over with {OVERWRITE_HINT}."
        )
    return state


@dataclass
class RunClock:
    """
    Training time across resumes: the seconds recorded in the resumed checkpoint (`previous_seconds`, from
    `resumed_runtime`) plus this process's time since the clock was made. Work redone after a preemption (the steps
    after the last checkpoint) is counted once, as the time that produced the saved progress.
    """

    previous_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def total(self) -> float:
        return self.previous_seconds + (time.perf_counter() - self.started)


def resumed_runtime(trainer_state: Mapping[str, Any]) -> float:
    """The cumulative training time a checkpoint's trainer state records (0 for a checkpoint from before it did)."""
    return float(trainer_state.get("train_runtime_seconds") or 0.0)


# ----------------------------------------------------------------------------------------------------------------------
# Writes that fail cleanly: checkpoints and the final files
# ----------------------------------------------------------------------------------------------------------------------

# what torch.save (PyTorchStreamWriter), safetensors and others say when the file system refuses a write
WRITE_FAILURE_MESSAGES = (
    "iostream error", "unexpected pos", "file write failed", "PytorchStreamWriter failed", "I/O error",
    "No space left", "Disk quota", "File too large",
)  # fmt: skip


def is_write_failure(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is the file system refusing a write: an `OSError`, or a library's
    `RuntimeError`-like wrapper of one (torch.save: "basic_ios::clear: iostream error", "unexpected pos ...")."""
    seen: BaseException | None = error
    for _ in range(8):  # the cause chain, bounded
        if seen is None:
            return False
        if isinstance(seen, OSError) or any(text in str(seen) for text in WRITE_FAILURE_MESSAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def format_bytes(num_bytes: int | float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= size:
            return f"{num_bytes / size:.1f} {unit}"
    return f"{int(num_bytes)} bytes"


def tree_bytes(path: str | os.PathLike) -> int:
    """The size of the files under `path` (0 if it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the file system of `path` (or of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in `value` (tensors, or dicts / lists / tuples of them, nested)."""
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.numel()) * int(value.element_size())
    if isinstance(value, Mapping):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    return 0


def checkpoint_bytes(model: Any, optimizer: Any = None) -> int:
    """An estimate of an `accelerator.save_state` checkpoint: the model's parameters and buffers plus the optimizer's
    state tensors (AdamW: two per parameter, once it has stepped)."""
    tensors = [*model.parameters(), *model.buffers()]
    state = list(optimizer.state.values()) if optimizer is not None else []
    return tensor_bytes(tensors) + tensor_bytes(state)


def _newest_file(path: Path) -> Path | None:
    """The file under `path` written last (the one a failed write was writing), relative to `path`."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns).relative_to(path) if files else None


@contextmanager
def guarded_checkpoint_write(
    temporary_dir: str | os.PathLike,
    *,
    expected_bytes: int | None = None,
    what: str | None = None,
    shown_as: str | os.PathLike | None = None,
    advice: str | None = None,
) -> Iterator[None]:
    """
    Around a write into `temporary_dir` (`accelerator.save_state(".tmp-step_N")` in `CheckpointManager.save`): if it
    fails because the file system refused a write (`is_write_failure`), `temporary_dir` is removed and a
    `DiskWriteError` raised naming the file being written, `expected_bytes` (`checkpoint_bytes(model, optimizer)`;
    without it, what was written before the failure) and the free space. Other errors propagate unchanged.

    Args:
        what (`str`, *optional*): for the message; defaults to `"checkpoint step_N"` from the folder's name.
        shown_as (`str` or `os.PathLike`, *optional*): the folder the message names instead of `temporary_dir`.
        advice (`str`, *optional*): what to do, for the message (default: `DISK_FULL_ADVICE`).
    """
    temporary_dir = Path(temporary_dir)
    try:
        yield
    except Exception as error:
        if not is_write_failure(error):
            raise
        newest, written = _newest_file(temporary_dir), tree_bytes(temporary_dir)
        shutil.rmtree(temporary_dir, ignore_errors=True)
        what = what or f"checkpoint {temporary_dir.name.removeprefix(TEMPORARY_PREFIX)}"
        shown_as = Path(shown_as) if shown_as is not None else temporary_dir
        where = shown_as / newest if newest else shown_as
        needed, at_least = (expected_bytes, False) if expected_bytes else (written or None, True)
        raise DiskWriteError(
            what, where, error, needed, free_bytes(temporary_dir), at_least=at_least, advice=advice
        ) from error


def fsync_tree(root: str | os.PathLike) -> None:
    """Flush every file and folder under `root` to the disk (a write error the page cache hid surfaces here)."""
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync(Path(directory) / name)
        _fsync(Path(directory))


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if not (path.is_dir() and error.errno in (errno.EINVAL, errno.EBADF)):  # some file systems cannot sync folders
            raise
    finally:
        os.close(descriptor)




def final_folder(path: str | os.PathLike) -> Path:
    """The folder `path` will be: the output folder that `stage_and_swap` moves a staging folder's files into, else
    `path` itself. What is written in the staging folder names this one (e.g. the model card's snippets)."""
    path = Path(path)
    return path.parent if path.name.startswith(STAGING_PREFIX) else path


def stage_and_swap(
    output_dir: str | os.PathLike,
    write: Callable[[Path], None],
    *,
    marker: str = "all_results.json",
    include: Iterable[str] = (),
    remove: Iterable[str] = (),
    expected_bytes: int | None = None,
    what: str = "the final files",
    advice: str | None = None,
) -> list[str]:
    """
    Replace files of `output_dir` all at once: `write(staging)` writes them into a staging folder inside `output_dir`
    (same file system), they are fsynced, then each top-level entry is moved into place with `os.replace`: first the
    old copies out (the old `marker` first), then the new ones in (`marker` last), so that a folder with a `marker` is
    always complete. If anything fails before the swap, `output_dir` is untouched and the staging folder removed; a
    write failure raises `DiskWriteError`.

    Args:
        write (`Callable[[Path], None]`): writes the new files into the folder it is given.
        marker (`str`, *optional*, defaults to `"all_results.json"`): the file that says the folder is complete.
        include (`Iterable[str]`, *optional*): paths (relative to `output_dir`) copied into the staging folder before
            `write`, for it to read (e.g. `eval/reconstructions.png`, which the model card shows); they are removed
            from the staging folder afterwards and left in place.
        remove (`Iterable[str]`, *optional*): entries to delete with the swap because they describe the replaced
            files (e.g. `linear_probe_results.json`).
        expected_bytes (`int`, *optional*): the size of what `write` writes, for the error message.
        what (`str`, *optional*, defaults to `"the final files"`): what is written, for the error message (e.g.
            `"the best model"`, `"the ONNX file"`).
        advice (`str`, *optional*): what to do after a write failure, for the message (default: `DISK_FULL_ADVICE`).

    Returns:
        The entries swapped in.
    """
    output_dir, include = Path(output_dir), list(include)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    # spelt as `output_dir` is (mkdtemp makes it absolute from Python 3.12): what `write` names from it is the user's
    staging = output_dir / Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir)).name
    try:
        with guarded_checkpoint_write(
            staging, expected_bytes=expected_bytes, what=what, shown_as=output_dir, advice=advice
        ):
            _copy_included(output_dir, staging, include)
            write(staging)
            _drop_included(staging, include)
            fsync_tree(staging)
            return _swap_in(staging, output_dir, marker, list(remove))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_included(source: Path, staging: Path, include: Sequence[str]) -> None:
    for name in include:
        if (source / name).is_file():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, staging / name)


def _drop_included(staging: Path, include: Sequence[str]) -> None:
    for name in include:
        path = staging / name
        path.unlink(missing_ok=True)
        for parent in path.parents:  # folders that only held it
            if parent == staging or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def _swap_in(staging: Path, output_dir: Path, marker: str, remove: Sequence[str]) -> list[str]:
    """Old entries out (marker first), new ones in (marker last); on an error, everything is put back."""
    names = sorted((p.name for p in staging.iterdir()), key=lambda name: (name == marker, name))
    outgoing = [n for n in dict.fromkeys([marker, *remove, *names]) if os.path.lexists(output_dir / n)]
    replaced = Path(tempfile.mkdtemp(prefix=REPLACED_PREFIX, dir=output_dir))
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for name in outgoing:
            os.replace(output_dir / name, replaced / name)
            moved_out.append(name)
        for name in names:
            os.replace(staging / name, output_dir / name)
            moved_in.append(name)
        _fsync(output_dir)
    except OSError:
        _put_back(output_dir, replaced, moved_in, moved_out)
        raise
    shutil.rmtree(replaced, ignore_errors=True)
    return names


def _put_back(output_dir: Path, replaced: Path, moved_in: Sequence[str], moved_out: Sequence[str]) -> None:
    """Undo a partial swap; should that fail too, the previous files stay in `replaced`, which is kept and named."""
    try:
        for name in moved_in:
            _remove_path(output_dir / name)
        for name in moved_out:
            os.replace(replaced / name, output_dir / name)
        replaced.rmdir()
    except OSError:
        logger.error(f"the previous files of {output_dir} could not all be put back: they are in {replaced}.")
        raise


# ----------------------------------------------------------------------------------------------------------------------
# Model folders given on the command line
# ----------------------------------------------------------------------------------------------------------------------

MODEL_TYPES = ("dilated_vit_mae", "vit_mae")  # what the scripts load: ours, or a transformers ViTMAE checkpoint
PRETRAINING_SOURCES = "a run_mae.py output folder or a facebook/vit-mae-* checkpoint"


def check_model_folder(
    name: str | os.PathLike, *, flag: str = "--model_name_or_path", for_pretraining: bool = False
) -> None:
    """
    Refuse, with one line saying what `name` is and what to pass instead (`UserError`), a local `--model_name_or_path`
    that is not a model folder of ours or of transformers' ViTMAE: a file, a folder without `config.json` (a training
    checkpoint, an unfinished run, a data folder), another model type, or (`for_pretraining`, `run_mae.py`) a
    fine-tuned classifier, whose missing decoder would start from random and whose `mask_ratio` 0 masks nothing. A
    name that is not a local path is left to `from_pretrained` (a Hub id). Reads `config.json` only.
    """
    path = Path(name).expanduser()
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{flag} {name} is a file, not a model folder: pass the folder that holds its config.json.")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{flag} {name} is not a model folder: it has no config.json ({_what_folder_is(path)}).")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{flag} {name}: its config.json is damaged ({_one_line(error)}); pass an intact model folder.")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_TYPES:
        raise UserError(
            f"{flag} {name} holds a {model_type!r} model, not a DilatedViTMAE or ViTMAE one (its config.json): pass "
            f"{PRETRAINING_SOURCES}."
        )
    classifiers = [a for a in config.get("architectures") or [] if str(a).endswith("ForImageClassification")]
    if for_pretraining and classifiers:
        raise UserError(
            f"{flag} {name} is a fine-tuned image classifier ({classifiers[0]}, as run_finetune.py writes): it has no "
            "decoder and masks nothing, so MAE pre-training cannot continue from it. Pass the pre-training folder it "
            f"was fine-tuned from, or {PRETRAINING_SOURCES}."
        )


def _what_folder_is(path: Path) -> str:
    if (path / "trainer_state.json").is_file():
        return (
            "it is a training checkpoint: resume its run with --resume_from_checkpoint, or pass the run's output "
            "folder once the run has finished"
        )
    if (path / CHECKPOINTS_DIR).is_dir():
        best = path / CHECKPOINTS_DIR / "best"
        also = f", or pass {best} (its best model so far)" if (best / "config.json").is_file() else ""
        return f"it is a run that has not finished: resume it with {RESUME_HINT}{also}"
    names = sorted(p.name for p in path.iterdir())
    holding = f"it holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names else "it is empty"
    return f"{holding}; pass {PRETRAINING_SOURCES}"


# ----------------------------------------------------------------------------------------------------------------------
# Preemption through a launcher
# ----------------------------------------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LAUNCHER_COMMANDS = ("accelerate", "torchrun")
LAUNCHER_MODULES = (
    "accelerate.commands.launch", "accelerate.commands.accelerate_cli", "torch.distributed.run",
    "torch.distributed.launch",
)  # fmt: skip


def exit_when_parent_dies(signum: int = signal.SIGTERM, parent_pid: int | None = None) -> bool:
    """
    Ask Linux to send `signum` to this process when its parent dies (`prctl(PR_SET_PDEATHSIG)`), so that a training
    process started by `accelerate launch` learns of a launcher that was killed or preempted and can save a checkpoint
    (its SIGTERM handler), instead of training on orphaned. If the parent has already died (`os.getppid()` is no longer
    `parent_pid`, by default the parent when this is called), `signum` is sent at once.

    Linux sends the signal when the *thread* that started this process exits; `accelerate launch` and torchrun start
    their workers from their main thread. Not inherited by children (DataLoader workers watch their parent already).

    Args:
        signum (`int`, *optional*, defaults to `signal.SIGTERM`): the signal to receive.
        parent_pid (`int`, *optional*): the parent's pid as read at start-up (`os.getppid()` before the slow imports),
            to also catch a parent that died before this call.

    Returns:
        Whether the request was made (`False`, with a debug message, where `prctl` is not available).
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name is None:
        logger.debug(f"exit_when_parent_dies: prctl is not available on {sys.platform}; not armed.")
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_PDEATHSIG, {int(signum)}) failed: {os.strerror(code)}")
    if os.getppid() != parent_pid:  # the parent died before the request was made: nobody will send the signal
        os.kill(os.getpid(), signum)
    return True


def parent_is_launcher(pid: int | None = None) -> bool:
    """
    Whether the parent of this process (or of `pid`) is `accelerate launch` or torchrun, read from `/proc/PPID/cmdline`:
    arm `exit_when_parent_dies` only then, so that a script started from a shell (under `nohup`, say) does not stop
    when that shell exits. `False` where there is no `/proc`.
    """
    try:
        parent = os.getppid() if pid is None else _parent_of(pid)
        command = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False
    return is_launcher_command([part.decode(errors="replace") for part in command if part])


def is_launcher_command(words: Sequence[str]) -> bool:
    """Whether a command line (`argv`) starts `accelerate launch` or torchrun: `python .../bin/accelerate launch ...`,
    `.../bin/torchrun ...`, `python -m accelerate.commands.launch ...`, `python -m torch.distributed.run ...`."""
    return any(Path(word).name in LAUNCHER_COMMANDS for word in words[:2]) or any(w in LAUNCHER_MODULES for w in words)


def _parent_of(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
