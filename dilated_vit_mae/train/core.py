"""
The training core shared by pre-training (`scripts/run_mae.py`) and fine-tuning (`scripts/run_finetune.py`), in the
spirit of facebookresearch/mae's `util/misc.py` + the shared half of its `engine_*.py`: the flags both scripts take,
the data source, the image processor sized for a config, the schedule, the accelerator, the run folder and its log,
the trainer state, resume, checkpoints and the final save, the loss meter that keeps the host from waiting on the
device every step, and the run summary's common keys. The
scripts keep their arguments, their model and loss, and what is truly theirs (masking and reconstruction scores;
the fine-tuning recipe, mixup and the best epoch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import accelerate
import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from transformers import AutoImageProcessor, get_cosine_schedule_with_warmup

from ..configuration_dilated_vit_mae import DilatedViTMAEConfig
from ..data.loading import CELEBA_SAMPLE_DIR, load_celeba
from ..data.transforms import as_our_image_processor, image_processor_for_config
from ..image_processing_dilated_vit_mae import DilatedViTMAEImageProcessor
from ..modeling_dilated_vit_mae import to_2tuple
from .checkpoints import CheckpointManager
from .distributed import build_accelerator, parameters_are_finite, save_pretrained
from .lifecycle import (
    RunClock,
    RunIdentity,
    check_output_dir,
    checkpoint_bytes,
    checkpointing_steps,
    exit_when_parent_dies,
    fraction,
    non_negative_float,
    non_negative_int,
    parent_is_launcher,
    positive_float,
    positive_int,
    prepare_run_folder,
    quiet_library_logs,
    stage_and_swap,
)
from .redaction import publishable, redact_command, secret_values, tracker_config, write_publishable_json


logger = get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------------

# what no run defines (where it writes, how it reports): left out of run.json's fingerprint by both scripts
NOT_RUN_DEFINING = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "argv", "token", "hub_model_id", "push_to_hub",
    "with_tracking", "report_to", "logging_steps", "checkpointing_steps", "checkpoints_total_limit",
    "preprocessing_num_workers", "dataloader_num_workers",
})  # fmt: skip


def training_parser(
    description: str | None,
    *,
    titles: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
    groups: Sequence[str] = ("data", "model", "optim", "run"),
) -> tuple[argparse.ArgumentParser, dict[str, argparse._ArgumentGroup]]:
    """
    A training script's parser (no abbreviations: redaction matches whole flags) with the flags both scripts take, in
    the groups "data", "model", "optim" and "run" (returned, for each script's own flags; `groups` picks some, e.g.
    only "data" for `scripts/linear_probe.py`). `titles` names the groups, `defaults` and `helps` give a script's own
    default and help of a flag (by its dest); a flag not named there has no default (the script's recipe fills it) or
    the one below.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    titles, defaults, helps = dict(titles or {}), dict(defaults or {}), dict(helps or {})
    made = {name: parser.add_argument_group(titles.get(name, name)) for name in groups}

    def add(group: str, flag: str, **kwargs: Any) -> None:
        if group not in made:
            return
        dest = flag.lstrip("-")
        if dest in defaults:
            kwargs["default"] = defaults[dest]
        if dest in helps:
            kwargs["help"] = helps[dest]
        made[group].add_argument(flag, **kwargs)

    add("data", "--dataset_name", help="Hub dataset id, e.g. flwrlabs/celeba.")
    add("data", "--dataset_config_name", help="Hub dataset configuration.")
    add("data", "--celeba_dir", help=f"A raw CelebA download (default without a source: {CELEBA_SAMPLE_DIR}).")
    add("data", "--train_dir", help="Any local image folder (imagefolder layout, optional metadata.csv).")
    add("data", "--image_column_name", default="image")
    add("data", "--max_train_samples", type=positive_int)
    add("data", "--max_eval_samples", type=positive_int)
    add("data", "--on_bad_image", choices=["raise", "skip"], default="raise")
    add("data", "--preprocessing_num_workers", type=positive_int, help="Threads for the up-front image check.")
    add("data", "--dataloader_num_workers", type=non_negative_int)
    add("data", "--cache_dir")

    add("model", "--model_name_or_path", help="A run_mae.py output folder, or a facebook/vit-mae-* checkpoint.")
    add("model", "--config_name", help="Config folder or Hub id.")
    add("model", "--image_processor_name", help="Image processor folder or Hub id (default: the model's).")
    add("model", "--config_overrides", help='e.g. "hidden_size=192,num_hidden_layers=6" (config.update_from_string).')
    add("model", "--dilation_rates", type=positive_int, nargs="*", help="Dilation rates of the extra branches; none for ViTMAE.")
    add("model", "--dilated_context", choices=["full", "visible"])
    add("model", "--attn_implementation", choices=["eager", "sdpa", "flash_attention_2", "flex_attention"])
    add("model", "--gradient_checkpointing", action="store_true")
    add("model", "--revision", default="main")
    add("model", "--token", help="Hub token for private models/datasets.")

    add("optim", "--base_learning_rate", type=positive_float, help="lr = blr x effective batch / 256.")
    add("optim", "--learning_rate", type=positive_float, help="Absolute peak lr; overrides --base_learning_rate.")
    add("optim", "--weight_decay", type=non_negative_float, help="AdamW weight decay.")
    add("optim", "--adam_beta1", type=fraction, default=0.9)
    add("optim", "--adam_beta2", type=fraction)
    add("optim", "--num_warmup_steps", type=non_negative_int, help="Warmup steps; overrides the warmup flag above.")
    add("optim", "--gradient_accumulation_steps", type=positive_int, default=1)
    add("optim", "--max_grad_norm", type=positive_float, help="Clip gradients (MAE: none).")
    add("optim", "--mixed_precision", choices=["no", "fp16", "bf16"])
    add("optim", "--num_train_epochs", type=positive_int)
    add("optim", "--max_train_steps", type=positive_int, help="Optimizer steps; overrides --num_train_epochs.")
    add("optim", "--per_device_train_batch_size", type=positive_int)
    add("optim", "--per_device_eval_batch_size", type=positive_int)
    add("optim", "--seed", type=int, default=0)

    add("run", "--output_dir")
    add("run", "--overwrite_output_dir", action="store_true", help="Remove everything an earlier run wrote there first.")
    add("run", "--checkpointing_steps", type=checkpointing_steps, help='A number of steps, "epoch" or "no".')
    add("run", "--checkpoints_total_limit", type=positive_int)
    add("run", "--resume_from_checkpoint", help='A checkpoint folder or "latest".')
    add("run", "--logging_steps", type=positive_int, help="Log (and check the loss is finite) every N steps.")
    add("run", "--with_tracking", action="store_true")
    add("run", "--report_to", default="tensorboard", help='"tensorboard", "wandb", "all", ... (accelerate).')
    add("run", "--hub_model_id", help="The repository id the model card names.")
    return parser, made


def add_label_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags of the scripts that read labels (fine-tuning, the probe): a second image folder, which columns, and
    what to do with an example that has no label."""
    group.add_argument(
        "--validation_dir", help="The evaluation image folder for --train_dir (then its split is --eval_split)."
    )  # fmt: skip
    labels = group.add_mutually_exclusive_group()
    labels.add_argument("--label_column", help="One label column (single-label); default: celeb_id, then label.")
    labels.add_argument("--label_columns", nargs="+", help="Multi-label columns; default: every CelebA attribute present.")
    group.add_argument(
        "--on_missing_label", choices=["raise", "skip"], default="raise",
        help="Examples with no value in a label column: refuse them by name, or leave them out (counted in a warning).",
    )  # fmt: skip


def check_shared_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks of the shared flags at parse time (exit 2 with one line); no data source means the shipped sample."""
    sources = [s for s in (args.dataset_name, args.celeba_dir, args.train_dir) if s]
    if len(sources) > 1:
        parser.error("Give one data source: --dataset_name, --celeba_dir or --train_dir.")
    if getattr(args, "validation_dir", None) and not args.train_dir:
        parser.error("--validation_dir goes with --train_dir (the other sources have their own evaluation split).")
    if not sources:
        args.celeba_dir = str(CELEBA_SAMPLE_DIR)
    if getattr(args, "resume_from_checkpoint", None) and getattr(args, "overwrite_output_dir", False):
        parser.error("--resume_from_checkpoint continues the run in --output_dir; --overwrite_output_dir removes it: give one.")


# ----------------------------------------------------------------------------------------------------------------------
# Data source and image processor
# ----------------------------------------------------------------------------------------------------------------------


def data_source(args: argparse.Namespace) -> str:
    """The one source the flags name: a Hub dataset id, a raw CelebA folder or an image folder."""
    return args.dataset_name or args.celeba_dir or args.train_dir


def on_shipped_sample(args: argparse.Namespace) -> bool:
    """The run reads the 56-image stand-in shipped in `data/celeba_sample/` (the default source)."""
    return bool(args.celeba_dir) and Path(args.celeba_dir).expanduser().resolve() == CELEBA_SAMPLE_DIR.resolve()


def load_splits(
    args: argparse.Namespace,
    *,
    train_split: str = "train",
    eval_split: str = "validation",
    optional: Sequence[str] = (),
    eval_required: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """
    The splits of the flags' data source, `--max_train_samples` / `--max_eval_samples` applied: `train_split` and
    `eval_split`, refused by name when missing or empty (the evaluation split only when `eval_required`), and those of
    `optional` the source has (a non-empty one). With `--validation_dir`, `--train_dir` is the training split and
    `--validation_dir` the evaluation split, whole. `--streaming` (where a script has it) gives `IterableDataset`s.
    """
    source, streaming = data_source(args), getattr(args, "streaming", False)
    kwargs = dict(
        config_name=args.dataset_config_name, on_bad_image=args.on_bad_image, num_workers=args.preprocessing_num_workers,
        cache_dir=args.cache_dir, token=args.token, progress=progress,
    )  # fmt: skip
    if getattr(args, "validation_dir", None):  # two folders: nothing is carved out of either
        folders = {train_split: args.train_dir, eval_split: args.validation_dir}
        loaded = {
            split: load_celeba(folder, validation_fraction=0.0, test_fraction=0.0, **kwargs)["train"]
            for split, folder in folders.items()
        }
    else:
        loaded = dict(load_celeba(source, streaming=streaming, **kwargs))
    wanted = {train_split: args.max_train_samples, eval_split: args.max_eval_samples}
    wanted.update({split: args.max_eval_samples for split in optional if split in loaded and split not in wanted})
    splits = {}
    for split, limit in wanted.items():
        if split not in loaded and (split != eval_split or eval_required):
            raise ValueError(f"{source} has no {split!r} split; it has {sorted(loaded)}{_split_hint(args, split, train_split)}.")
        dataset = loaded.get(split)
        if dataset is not None and limit is not None:
            dataset = dataset.take(limit) if streaming else dataset.select(range(min(limit, len(dataset))))
        if dataset is not None and not streaming and len(dataset) == 0:
            if split == train_split or (split == eval_split and eval_required):
                raise ValueError(f"The {split} split of {source} is empty{_split_hint(args, split, train_split)}.")
            if split not in (train_split, eval_split):
                continue  # an empty optional split is left out
        splits[split] = dataset
    columns = splits[train_split].column_names
    if columns is not None and args.image_column_name not in columns:
        raise ValueError(f"--image_column_name {args.image_column_name!r} is not a column of {source}; it has {columns}.")
    return {split: dataset for split, dataset in splits.items() if dataset is not None}


def _split_hint(args: argparse.Namespace, split: str, train_split: str) -> str:
    if split == train_split:
        return ": check the source and --max_train_samples"
    hints = ["pass --eval_split"] if hasattr(args, "eval_split") else []
    hints += ["pass --no_eval to train without evaluation"] if hasattr(args, "no_eval") else []
    return (": " + " or ".join(hints)) if hints else ""


def dataset_summary(args: argparse.Namespace, split_sizes: Mapping[str, int | None], eval_split: str) -> dict[str, Any]:
    """`all_results.json`'s `dataset`: the source (with no local path in it), whether it is CelebA, a description the
    model card shows, and each split's size (`train_samples`, `eval_samples`, `{split}_samples` for the others)."""
    source = data_source(args)
    if args.dataset_name:
        name, is_celeba = args.dataset_name, "celeba" in args.dataset_name.lower()
        description = f"[{name}](https://huggingface.co/datasets/{name})" + (
            f" (configuration `{args.dataset_config_name}`)." if args.dataset_config_name else "."
        )
    elif on_shipped_sample(args):
        name, is_celeba = "celeba_sample", False
        description = (
            "the 56-image stand-in in CelebA's layout shipped in the project's `data/celeba_sample/`: crops of three "
            "public-domain / CC0 photographs (two people and a cat), **not CelebA**, so these weights and figures "
            "say nothing about CelebA."
        )
    elif args.celeba_dir:
        name, is_celeba = "CelebA", True
        description = "CelebA (a raw download: `img_align_celeba`, 178x218 aligned crops, with the official partition)."
    else:
        folders = [Path(folder).name for folder in (source, getattr(args, "validation_dir", None)) if folder]
        name, is_celeba = folders[0], False
        description = " and ".join(f"`{folder}`" for folder in folders)
        description = f"the image folder{'s' if len(folders) > 1 else ''} {description}."
    sizes = {"train_samples": split_sizes.get("train"), "eval_samples": split_sizes.get(eval_split)}
    sizes.update({f"{split}_samples": size for split, size in split_sizes.items() if split not in ("train", eval_split)})
    return {
        "name": name, "hub_id": args.dataset_name, "config_name": args.dataset_config_name, "is_celeba": is_celeba,
        "description": description, "train_split": "train", "eval_split": eval_split, **sizes,
    }  # fmt: skip


def load_config(args: argparse.Namespace, name: str, flags: Sequence[str], **values: Any) -> DilatedViTMAEConfig:
    """
    `name`'s config (ours, or a ViTMAE one read as ours), then `--config_overrides`, then those of the model flags
    `flags` that were given (`--dilation_rates`, `--mask_ratio`, ...), then `values` (what the script sets itself);
    validated as a whole.
    """
    config = DilatedViTMAEConfig.from_pretrained(name, revision=args.revision, token=args.token, cache_dir=args.cache_dir)
    if args.config_overrides:
        config.update_from_string(args.config_overrides)
    given = {flag: getattr(args, flag) for flag in flags if getattr(args, flag) is not None}
    for field, value in {**given, **values}.items():
        setattr(config, field, tuple(value) if field == "dilation_rates" else value)
    config._validate_dilated_vit_mae()
    return config


def processor_mismatch(processor: DilatedViTMAEImageProcessor, config: DilatedViTMAEConfig) -> str | None:
    """Why `processor` does not make the images `config`'s model takes (None when it does)."""
    crop = processor.crop_size
    height, width = to_2tuple(config.image_size)
    if (crop["height"], crop["width"]) != (height, width):
        return f"crops images to {crop['height']}x{crop['width']} but the model's image_size is {height}x{width}"
    if processor.num_channels != config.num_channels:
        return f"makes {processor.num_channels}-channel images but the model's num_channels is {config.num_channels}"
    return None


def load_image_processor(
    args: argparse.Namespace, config: DilatedViTMAEConfig, source: str
) -> DilatedViTMAEImageProcessor:
    """
    The processor a run trains with and saves, always matching the model's config, and ours (so that the folder is
    self-contained): `--image_processor_name`'s, refused when it does not fit the config; else `source`'s (the model's
    folder or Hub id: a ViTMAE checkpoint's processor is read as ours), adapted to the config where it does not fit
    (its resampling, crop fraction, mean and std kept where they apply); else one made for the config.
    """
    name = args.image_processor_name or source
    kwargs = dict(token=args.token, revision=args.revision, cache_dir=args.cache_dir)
    try:
        processor = as_our_image_processor(AutoImageProcessor.from_pretrained(name, **kwargs))
    except (OSError, ValueError) as error:
        if args.image_processor_name:
            raise
        logger.warning(f"No usable image processor in {name} ({error}); using one made for the model.")
        return image_processor_for_config(config)
    mismatch = processor_mismatch(processor, config)
    if mismatch and args.image_processor_name:
        raise ValueError(
            f"--image_processor_name {args.image_processor_name} {mismatch}. Pass a processor made for this model, "
            "or drop --image_processor_name to use one that matches the config."
        )
    if mismatch:
        logger.info(f"image processor of {name}: {mismatch}; using one sized for the model instead")
        return image_processor_for_config(config, like=processor)
    return processor


# ----------------------------------------------------------------------------------------------------------------------
# Accelerator, run folder, log
# ----------------------------------------------------------------------------------------------------------------------


def setup_accelerator(args: argparse.Namespace) -> Accelerator:
    """The accelerator the launch asked for (or a one-line refusal: `build_accelerator`), logging, TF32 for fp32 GPUs."""
    output_dir = Path(args.output_dir)
    accelerator = build_accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        # seeded, epoch-aware shuffling (set_epoch), saved with the state: resume continues the same order;
        # batches go to the device from pinned memory without blocking the host
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    quiet_library_logs()  # accelerate's line per checkpoint file
    logger.info(accelerator.state, main_process_only=False)
    verbosity = "warning" if accelerator.is_local_main_process else "error"
    getattr(datasets.utils.logging, f"set_verbosity_{verbosity}")()
    getattr(transformers.utils.logging, f"set_verbosity_{verbosity}")()
    if accelerator.device.type == "cuda" and accelerator.mixed_precision == "no":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # TF32 for fp32 runs
    return accelerator


@dataclasses.dataclass
class TrainerState:
    """
    What a checkpoint's `trainer_state.json` holds besides accelerate's state: where the run is, and the launch it was
    saved by. Each script extends it with what is its own (pre-training: the lr history; fine-tuning: the best epoch
    and the evaluation history).
    """

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    max_train_steps: int = 0
    num_processes: int = 1
    effective_batch_size: int = 0
    seed: int = 0
    train_runtime_seconds: float = 0.0  # cumulative over every resumed part (RunClock)
    run_id: str | None = None  # OUTPUT_DIR/run.json's: a resume refuses a checkpoint of another run
    run_fingerprint: str | None = None

    # what describes this launch, not where the run is: kept when resuming
    LAUNCH_FIELDS: ClassVar[frozenset] = frozenset(
        {"max_train_steps", "num_processes", "effective_batch_size", "run_id", "run_fingerprint"}
    )

    def continue_from(self, saved: Mapping[str, Any]) -> None:
        """Take a checkpoint's state (its fields this class has), except this launch's own."""
        for field in dataclasses.fields(self):
            if field.name in saved and field.name not in self.LAUNCH_FIELDS:
                setattr(self, field.name, saved[field.name])


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A run's length and learning rate, for this launch's processes and batch."""

    effective_batch_size: int
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int
    learning_rate: float
    num_warmup_steps: int


def training_schedule(
    args: argparse.Namespace,
    num_processes: int,
    num_train: int | None,
    *,
    drop_last: bool,
    warmup_epochs: float | None = None,
    warmup_ratio: float | None = None,
) -> Schedule:
    """
    The schedule the flags give on `num_processes` for `num_train` training images (None: a stream, whose "epoch" is
    the whole run): lr = blr x effective batch / 256 unless `--learning_rate`; `--num_warmup_steps`, else
    `warmup_epochs` of steps, else `warmup_ratio` of the run, at most the whole run.
    """
    effective_batch_size = args.per_device_train_batch_size * num_processes * args.gradient_accumulation_steps
    if num_train is None:
        steps_per_epoch = args.max_train_steps
    else:
        images_per_batch = args.per_device_train_batch_size * num_processes
        batches = num_train // images_per_batch if drop_last else math.ceil(num_train / images_per_batch)
        if batches == 0:
            raise ValueError(
                f"The training split has {num_train} images, fewer than one batch ({args.per_device_train_batch_size} "
                f"per device x {num_processes} processes; the last partial batch is dropped, as MAE does); lower "
                "--per_device_train_batch_size."
            )
        steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    if args.num_warmup_steps is not None:
        warmup = args.num_warmup_steps
    elif warmup_epochs is not None:
        warmup = round(warmup_epochs * steps_per_epoch)
    else:
        warmup = round(warmup_ratio * max_train_steps)
    if warmup > max_train_steps:
        logger.warning(f"{warmup} warmup steps exceed the run's {max_train_steps} steps; warming up over all of them.")
        warmup = max_train_steps
    learning_rate = args.learning_rate or args.base_learning_rate * effective_batch_size / 256
    logger.info(
        f"effective batch size {effective_batch_size} = {args.per_device_train_batch_size} per device x "
        f"{num_processes} processes x {args.gradient_accumulation_steps} accumulation; lr = {learning_rate:.3g}"
        + ("" if args.learning_rate else f" (blr {args.base_learning_rate:.3g} x {effective_batch_size} / 256)")
        + f"; {max_train_steps} steps, {warmup} of warmup"
    )  # fmt: skip
    return Schedule(
        effective_batch_size, steps_per_epoch, max_train_steps, math.ceil(max_train_steps / steps_per_epoch),
        learning_rate, warmup,
    )  # fmt: skip


def cosine_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, num_processes: int):
    """Linear warmup, then cosine decay to 0 (MAE's). The prepared scheduler steps once per process at every optimizer
    step (accelerate's convention), hence the counts times the processes."""
    return get_cosine_schedule_with_warmup(
        optimizer, schedule.num_warmup_steps * num_processes, schedule.max_train_steps * num_processes
    )


@dataclasses.dataclass
class RunContext:
    """What every part of a training run shares: the accelerator, the run folder's identity and checkpoints, its
    secrets (redacted from everything written) and its log."""

    args: argparse.Namespace
    accelerator: Accelerator
    identity: RunIdentity
    checkpoints: CheckpointManager
    secrets: set = dataclasses.field(default_factory=set)

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    def log(self, values: dict, step: int) -> None:
        """To the trackers (`--with_tracking`) and OUTPUT_DIR/train_log.jsonl (redacted: publishable as it is)."""
        if self.args.with_tracking:
            self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / "train_log.jsonl").open("a") as file:
                file.write(json.dumps(publishable({"step": step, **values}, self.secrets)) + "\n")

    def init_trackers(self, project: str) -> None:
        if self.args.with_tracking:
            self.accelerator.init_trackers(project, tracker_config(self.args))  # secrets redacted

    def resume(self, state: TrainerState) -> Path:
        """
        Continue `state` from `--resume_from_checkpoint` (every process, after `load_state`): where the run was and
        what the script keeps in its state, the launch's own fields (schedule length, processes, batch, run id) left as
        they are. A checkpoint of another run is refused before loading, a damaged file is named; another process
        count or batch is a warning. Returns the checkpoint.
        """
        checkpoint = self.checkpoints.resolve(self.args.resume_from_checkpoint)
        saved = self.checkpoints.load(self.accelerator, checkpoint, self.identity)
        num_processes, effective_batch_size = self.accelerator.num_processes, state.effective_batch_size
        if saved.get("num_processes") != num_processes or saved.get("effective_batch_size") != effective_batch_size:
            logger.warning(
                f"Resuming a run saved with {saved.get('num_processes')} processes and effective batch "
                f"{saved.get('effective_batch_size')} on {num_processes} / {effective_batch_size}: the run continues, "
                "but it will not reproduce the uninterrupted one."
            )
        state.continue_from(saved)
        logger.info(f"resumed from {checkpoint} at step {state.global_step} (epoch {state.epoch}, batch {state.batches_done_in_epoch})")
        return checkpoint

    def save_checkpoint(self, model, optimizer, state: TrainerState) -> Path:
        """`checkpoints/step_{global_step}` with `state` (every process), refused if any parameter is not finite (it
        would be resumed from); a full disk is a `DiskWriteError` that says how much the checkpoint needs."""
        step = state.global_step
        if not parameters_are_finite(self.accelerator, model):  # each rank its own shard (FSDP2: DTensors)
            raise RuntimeError(
                f"Parameters are not finite at step {step}; no checkpoint written. The last good checkpoint is "
                f"{self.checkpoints.latest() or 'none'}: lower the learning rate and resume from it."
            )
        expected_bytes = checkpoint_bytes(self.accelerator.unwrap_model(model), optimizer)
        return self.checkpoints.save(self.accelerator, step, dataclasses.asdict(state), expected_bytes)

    def save_final(self, model, image_processor, summary: dict, write_card: Callable[[Path], None], **stage) -> None:
        """
        The output folder (every process: the state dict is a collective under FSDP / DeepSpeed): the model, its image
        processor, `all_results.json` (`summary`, redacted) and what `write_card` writes (the card, from
        all_results.json), staged and swapped in all at once (`lifecycle.stage_and_swap`, `stage` its options): a full
        disk leaves the previous final files as they were. The run's runtime goes into `run.json`.
        """
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        state_dict = accelerator.get_state_dict(model)
        if not accelerator.is_main_process:
            return
        unwrapped = accelerator.unwrap_model(model)

        def write_final_files(folder: Path) -> None:
            # as the model's own class: under FSDP2 `unwrapped` is torch's FSDP<Class>, which would write its auto_map
            save_pretrained(unwrapped, folder, state_dict, save_function=accelerator.save)
            image_processor.save_pretrained(folder)
            # redacted by value (any token flag, HF_TOKEN, the cached login) and with no local path in it
            write_publishable_json(folder / "all_results.json", summary, self.secrets)
            write_card(folder)

        stage_and_swap(self.output_dir, write_final_files, expected_bytes=checkpoint_bytes(unwrapped), **stage)
        self.identity.record_runtime(self.output_dir, summary["hardware"]["train_runtime_seconds"])


@dataclasses.dataclass
class Run:
    """
    What a training script's loop, evaluation and save share: the run's context (accelerator, folder, checkpoints,
    log), the prepared model and optimizer, the schedule and the trainer state. Each script extends it with its own
    (pre-training: the loaders and augmentation; fine-tuning: the labelled data).
    """

    context: RunContext
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    schedule: Schedule
    state: TrainerState
    clock: RunClock = dataclasses.field(default_factory=RunClock, kw_only=True)  # see `start_clock`

    @property
    def args(self) -> argparse.Namespace:
        return self.context.args

    @property
    def accelerator(self) -> Accelerator:
        return self.context.accelerator

    def start_clock(self) -> None:
        """Time the training loop of this launch from now on, added to the runtime of the run it resumed."""
        self.clock = RunClock(self.state.train_runtime_seconds)

    def record_runtime(self) -> None:
        """`state.train_runtime_seconds`: the clock's total so far (with each checkpoint, and after the loop)."""
        self.state.train_runtime_seconds = self.clock.total()

    def save_checkpoint(self) -> Path:
        """A checkpoint of the current step with the trainer state and its runtime (every process;
        `RunContext.save_checkpoint`: refused if any parameter is not finite)."""
        self.record_runtime()
        return self.context.save_checkpoint(self.model, self.optimizer, self.state)


def start_run(args: argparse.Namespace, not_run_defining: set[str] | frozenset[str]) -> RunContext:
    """
    Before anything is built: a launcher killed on its own still gets this process to save; every process refuses a
    folder holding an earlier run before anything is written; the accelerator; the run folder (`run.json`); the seed.
    """
    if parent_is_launcher():
        exit_when_parent_dies()  # a launcher killed on its own (it forwards nothing) still gets this process to save
    # every process, before any writes (the Accelerator's rendezvous orders it before the main process's changes)
    check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir, resume=bool(args.resume_from_checkpoint))
    accelerator = setup_accelerator(args)
    checkpoints = CheckpointManager(Path(args.output_dir) / "checkpoints", args.checkpoints_total_limit)
    identity = prepare_run_folder(args, accelerator, not_run_defining)
    set_seed(args.seed)
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    return RunContext(args, accelerator, identity, checkpoints, secret_values(args))


# ----------------------------------------------------------------------------------------------------------------------
# The loop's loss meter
# ----------------------------------------------------------------------------------------------------------------------


class StepMeter:
    """
    Loss and finiteness accumulated on the device over every micro-batch, read only at synchronisation points
    (logging, checkpoint and evaluation steps), so that the host never waits for the device in between.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.last_loss = torch.zeros((), device=device)  # the last micro-batch's
        self.micro_batches = 0
        self.first_bad_step = torch.full((), -1.0, device=device)  # the first step with a non-finite micro-batch loss
        self.first_bad_loss = torch.zeros((), device=device)
        self.images, self.data_wait, self.tick = 0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, step: int, images: int) -> None:
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        self.first_bad_loss = torch.where(bad, loss, self.first_bad_loss)
        self.loss_sum += torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
        self.last_loss = loss
        self.micro_batches += 1
        self.images += images

    def synchronise(self, accelerator: Accelerator, stop_requested: bool = False) -> dict:
        """One collective: the mean loss over every micro-batch since the last log, the last micro-batch's mean loss
        over the processes, the first bad step, a stop."""
        local = torch.stack([
            self.loss_sum, torch.tensor(float(self.micro_batches), device=self.device),
            torch.where(self.first_bad_step < 0, torch.full_like(self.first_bad_step, math.inf), self.first_bad_step),
            self.first_bad_loss, torch.tensor(float(stop_requested), device=self.device), self.last_loss,
        ]).reshape(1, -1)  # fmt: skip
        rows = accelerator.gather(local).cpu()
        first_bad = rows[:, 2].min().item()
        bad_row = rows[:, 2].argmin().item()
        return {
            "loss": rows[:, 0].sum().item() / max(rows[:, 1].sum().item(), 1),
            "last_loss": rows[:, 5].mean().item(),
            "first_bad_step": None if math.isinf(first_bad) else int(first_bad),
            "first_bad_loss": rows[bad_row, 3].item(),
            "stop": rows[:, 4].max().item() > 0,
        }

    def reset_interval(self) -> dict:
        elapsed = max(time.perf_counter() - self.tick, 1e-9)
        interval = {"images_per_second": self.images / elapsed, "data_wait_fraction": min(1.0, self.data_wait / elapsed)}
        self.loss_sum.zero_()
        self.micro_batches, self.images, self.data_wait, self.tick = 0, 0, 0.0, time.perf_counter()
        return interval


def check_finite(synced: dict, checkpoints: CheckpointManager) -> None:
    """Stop (RuntimeError) at a synchronisation point that found a non-finite loss, naming its step and where to
    resume from."""
    if synced["first_bad_step"] is not None:
        raise RuntimeError(
            f"Loss is {synced['first_bad_loss']} at step {synced['first_bad_step']}; stopping. The last good "
            f"checkpoint is {checkpoints.latest() or 'none (no checkpoint was written yet)'}: lower the learning "
            "rate, check the data or use --mixed_precision bf16 instead of fp16, then resume with "
            "--resume_from_checkpoint."
        )


def timed_batches(dataloader, meter: StepMeter) -> Iterator[Any]:
    """Iterate `dataloader`, adding the time spent waiting for each batch to `meter.data_wait`."""
    iterator = iter(dataloader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        meter.data_wait += time.perf_counter() - start
        yield batch


# ----------------------------------------------------------------------------------------------------------------------
# Run summary
# ----------------------------------------------------------------------------------------------------------------------


def launch_command(args: argparse.Namespace, script: str) -> str:
    """`accelerate launch SCRIPT FLAGS` of this run (`args.argv`, `--token` values hidden): `script` is the script's
    path in the repository, kept as it was run when it was run under the same name."""
    launched = sys.argv[0] if sys.argv and Path(sys.argv[0]).name == Path(script).name else script
    return redact_command(["accelerate", "launch", launched, *args.argv])


def summary_common(
    args: argparse.Namespace,
    accelerator: Accelerator,
    state: TrainerState,
    schedule: Schedule,
    *,
    learning_rate: float,
    script: str,
) -> dict[str, Any]:
    """The keys of `all_results.json` both scripts write: the command, the schedule, the optimizer, the hardware, the
    versions. `script` is the script's path in the repository (named so in the command unless run by another path)."""
    device = accelerator.device
    return {
        # the launcher's own flags are not visible to the script: hardware below says how it ran
        "command": launch_command(args, script),
        "global_step": state.global_step,
        "epochs": schedule.num_epochs,
        "num_processes": accelerator.num_processes,
        "effective_batch_size": schedule.effective_batch_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "base_learning_rate": None if args.learning_rate else args.base_learning_rate,
        "adam_betas": [args.adam_beta1, args.adam_beta2],
        "weight_decay": args.weight_decay,
        "warmup_steps": schedule.num_warmup_steps,
        "seed": args.seed,
        "init": args.model_name_or_path,
        "hardware": {
            "device_type": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "distributed_type": getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type)),
            # the training loop, summed over every resumed part of the run
            "train_runtime_seconds": state.train_runtime_seconds,
        },
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__, "accelerate": accelerate.__version__},
    }
