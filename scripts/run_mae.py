#!/usr/bin/env python
"""Pre-train a DilatedViTMAE (or plain ViTMAE) on CelebA with accelerate.

    accelerate launch scripts/run_mae.py                        # small model, shipped sample, the sample recipe
    accelerate launch scripts/run_mae.py --dataset_name flwrlabs/celeba --config_name configs/dilated-vit-mae-base \\
        --per_device_train_batch_size 256 --num_train_epochs 400 --mixed_precision bf16 --with_tracking

One CPU, several CPU processes or many GPUs with the same command (see docs/distributed.md). Checkpoints are
`accelerator.save_state` folders under OUTPUT_DIR/checkpoints/step_N; `--resume_from_checkpoint latest` continues
mid-epoch and reproduces the uninterrupted run exactly (augmentation, training masks and evaluation masks are three
independent streams, each a function of seed, epoch and example only). The end result is a Hub-ready folder: model,
image processor, their code, a model card.

Without a data source the run trains on the sample shipped in data/celeba_sample/ with the sample recipe
(configs/dilated-vit-mae-tiny-64/sample_recipe.json: a higher learning rate, pixel loss, 900 steps of batch 16, so that
the two-minute CPU run visibly learns); every flag given on the command line wins over it. With a real data source
the defaults are MAE's recipe.
"""


import argparse
import dataclasses
import json
import math
import os
import signal
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from dilated_vit_mae import (  # noqa: E402
    DilatedViTMAEConfig,
    DilatedViTMAEForPreTraining,
    DilatedViTMAEImageProcessor,
)
from dilated_vit_mae.data.decoded_cache import DecodedImageCache  # noqa: E402
from dilated_vit_mae.data.device_augment import DeviceAugmentation, resolve_augment_on  # noqa: E402
from dilated_vit_mae.data.loading import load_celeba  # noqa: E402
from dilated_vit_mae.data.seeding import (  # noqa: E402
    IndexedTransform,
    masking_noise,
)
from dilated_vit_mae.data.transforms import (  # noqa: E402
    MAEHostTransform,
    MAETrainTransform,
    collate_examples,
    eval_view,
    image_processor_for_config,
)
from dilated_vit_mae.evaluation.reconstruction import (  # noqa: E402
    reconstruction_grid,
    reconstruction_images,
    reconstruction_scores,
    summary_keys,
    visible_mean_images,
)
from dilated_vit_mae.modeling_dilated_vit_mae import to_2tuple  # noqa: E402
from dilated_vit_mae.publish.hub import prepare_hub_folder, push_folder_to_hub  # noqa: E402
from dilated_vit_mae.publish.model_card import redact_command  # noqa: E402
from dilated_vit_mae.train.checkpoints import (  # noqa: E402
    CheckpointManager,
    param_groups_weight_decay,
)
from dilated_vit_mae.train.core import (  # noqa: E402
    NOT_RUN_DEFINING as SHARED_NOT_RUN_DEFINING,
    RunContext,
    StepMeter,
    check_finite,
    check_shared_arguments,
    data_source,
    on_shipped_sample,
    start_run,
    summary_common,
    timed_batches,
    training_parser,
)
from dilated_vit_mae.train.distributed import save_pretrained  # noqa: E402
from dilated_vit_mae.train.lifecycle import (  # noqa: E402
    RunClock,
    RunIdentity,
    check_model_folder,
    checkpoint_bytes,
    checkpointing_steps,
    fraction,
    non_negative_int,
    positive_int,
    run_cli,
    stage_and_swap,
)
from dilated_vit_mae.train.redaction import write_publishable_json  # noqa: E402

logger = get_logger(__name__)

DEFAULT_CONFIG = REPO_ROOT / "configs" / "dilated-vit-mae-tiny-64"
SAMPLE_RECIPE = DEFAULT_CONFIG / "sample_recipe.json"
# MAE's recipe, the defaults for real data; the sample recipe overrides what it names when training on the sample
RECIPE_DEFAULTS = {
    "learning_rate": None,
    "base_learning_rate": 1.5e-4,
    "per_device_train_batch_size": 8,
    "num_train_epochs": 20,
    "max_train_steps": None,
    "norm_pix_loss": None,  # the config's
    "eval_steps": 2000,
    "checkpointing_steps": 2000,
    "logging_steps": 10,
}
# arguments that may change between a run and its resumption (where, how long, how it reports): not in its fingerprint
NOT_RUN_DEFINING = SHARED_NOT_RUN_DEFINING | {
    "hub_token", "hub_private_repo", "hub_revision", "eval_steps", "no_eval", "num_grid_images", "max_train_steps",
    "num_train_epochs", "dataloader_prefetch_factor", "cache_dir", "learning_rate", "base_learning_rate",
}  # fmt: skip


# pre-training's loss is the MSE over the masked patches: with none masked it is 0/0 (it ended in "Loss is nan")
NO_MASK_MESSAGE = (
    "{source} masks no patch, and pre-training's loss is over the masked patches only: pass --mask_ratio 0.75 (MAE's) "
    "or another value in (0, 1)."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser, groups = training_parser(
        __doc__,
        titles={"optim": "optimisation (MAE recipe; the sample recipe on the shipped sample)"},
        defaults={
            "weight_decay": 0.05, "adam_beta2": 0.95, "per_device_eval_batch_size": 8,
            "output_dir": "outputs/dilated-vit-mae-sample", "checkpoints_total_limit": 3,
        },
        helps={
            "dataset_name": "Hub dataset id, e.g. flwrlabs/celeba or nielsr/CelebA-faces.",
            "model_name_or_path": "Our checkpoint, or a facebook/vit-mae-* one to warm-start from.",
            "config_name": f"Config folder or Hub id (default without --model_name_or_path: {DEFAULT_CONFIG}).",
            "image_processor_name": "Image processor folder or Hub id (default: one matching the config).",
            "dataloader_num_workers": (
                "DataLoader worker processes (persistent). Default: on GPUs, the CPUs per process less one (at most 8); "
                "on CPU, 0 for training (the loader runs about 20x faster than CPU training, and workers would take "
                "the training's cores) and the GPU number for evaluation (2 workers evaluated 5.8x faster than none)."
            ),
            "base_learning_rate": "lr = blr x effective batch / 256 (MAE: 1.5e-4).",
            "num_warmup_steps": "Overrides --warmup_ratio.",
            "num_train_epochs": "Default 20.",
            "per_device_train_batch_size": "Default 8 (the sample recipe: 16).",
            "checkpointing_steps": 'A number of steps (default 2000), "epoch" or "no"; the last step is always saved unless "no".',
            "logging_steps": "Log (and check the loss is finite) every N steps (default 10).",
            "hub_model_id": "The Hub repository to push to, which the model card names.",
        },
    )  # fmt: skip
    data, model, optim, run = groups["data"], groups["model"], groups["optim"], groups["run"]
    data.add_argument("--streaming", action="store_true", help="Stream the dataset (needs --max_train_steps).")
    data.add_argument("--dataloader_prefetch_factor", type=positive_int, default=4, help="Batches each worker prepares ahead.")
    data.add_argument(
        "--augment_on", choices=["auto", "host", "device"], default="auto",
        help="Where crop, resize, flip and normalise run: on the host in the workers, or batched on the device (workers "
        "only decode to uint8 and draw the boxes). auto: device on CUDA, host on CPU (faster there).",
    )  # fmt: skip
    data.add_argument(
        "--decoded_cache_dir",
        help="With --augment_on device: a memory-mapped uint8 copy of the train split, built once (fixed-size datasets "
        "only; it states its size and the free disk first; CelebA's train split is 18.9 GB).",
    )  # fmt: skip

    model.add_argument("--dilated_fusion", choices=["sum", "concat"])
    model.add_argument("--masking_mode", choices=["drop", "mask_token"])
    model.add_argument("--mask_ratio", type=fraction)
    model.add_argument("--norm_pix_loss", action=argparse.BooleanOptionalAction, default=None)
    model.add_argument("--torch_compile", action="store_true", help="torch.compile the model (GPU runs).")

    optim.add_argument("--warmup_ratio", type=fraction, default=0.05, help="Warmup fraction (MAE: 40 of 800 epochs).")

    run.add_argument("--eval_steps", type=non_negative_int, help="Evaluate every N steps (default 2000; 0: only at the end).")
    run.add_argument("--no_eval", action="store_true", help="No evaluation at all (e.g. a source without a validation split).")
    run.add_argument("--num_grid_images", type=positive_int, default=8)
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_token")
    run.add_argument("--hub_private_repo", action="store_true")
    run.add_argument("--hub_revision", help="Branch to push to (created if missing); default main.")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded (tokens redacted) in all_results.json

    check_shared_arguments(parser, args)
    apply_recipe(args)
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no length to count epochs).")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. your-name/dilated-vit-mae-celeba).")
    if args.decoded_cache_dir and args.augment_on == "host":
        parser.error("--decoded_cache_dir feeds the device path only: drop it, or use --augment_on device (on a GPU, auto).")
    if args.mask_ratio == 0:
        parser.error(NO_MASK_MESSAGE.format(source="--mask_ratio 0"))
    return args


def uses_sample_recipe(args: argparse.Namespace) -> bool:
    """The shipped sample with the default model: the run the README's first command makes."""
    return on_shipped_sample(args) and not args.config_name and not args.model_name_or_path


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill the flags not given: the sample recipe on the shipped sample, MAE's recipe otherwise."""
    recipe = json.loads(SAMPLE_RECIPE.read_text())["training"] if uses_sample_recipe(args) else {}
    # a flag the user gave wins over the recipe's value for the same thing
    if args.num_train_epochs is not None:
        recipe.pop("max_train_steps", None)
    if args.base_learning_rate is not None:
        recipe.pop("learning_rate", None)
    args.recipe = "sample" if recipe else "mae"
    for name, default in RECIPE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, recipe.get(name, default))
    args.checkpointing_steps = checkpointing_steps(str(args.checkpointing_steps))  # the recipe's is a string


# ----------------------------------------------------------------------------------------------------------------------
# Model, image processor and data
# ----------------------------------------------------------------------------------------------------------------------


def build_config(args: argparse.Namespace) -> DilatedViTMAEConfig:
    """Config from --model_name_or_path / --config_name, then --config_overrides and the explicit model flags."""
    kwargs = dict(revision=args.revision, token=args.token, cache_dir=args.cache_dir)
    name = args.config_name or args.model_name_or_path or str(DEFAULT_CONFIG)
    config = DilatedViTMAEConfig.from_pretrained(name, **kwargs)
    if args.config_overrides:
        config.update_from_string(args.config_overrides)
    for field in ("dilation_rates", "dilated_context", "dilated_fusion", "masking_mode", "mask_ratio", "norm_pix_loss"):
        value = getattr(args, field)
        if value is not None:
            setattr(config, field, tuple(value) if field == "dilation_rates" else value)
    config._validate_dilated_vit_mae()
    if config.mask_ratio == 0:  # e.g. --config_name of a classifier folder, or --config_overrides mask_ratio=0
        raise ValueError(NO_MASK_MESSAGE.format(source=f"the config from {name} has mask_ratio 0, which"))
    return config


def _processor_mismatch(processor: DilatedViTMAEImageProcessor, config: DilatedViTMAEConfig) -> str | None:
    crop = processor.crop_size
    height, width = to_2tuple(config.image_size)
    if (crop["height"], crop["width"]) != (height, width):
        return f"crops images to {crop['height']}x{crop['width']} but the model's image_size is {height}x{width}"
    if processor.num_channels != config.num_channels:
        return f"makes {processor.num_channels}-channel images but the model's num_channels is {config.num_channels}"
    return None


def build_image_processor(args: argparse.Namespace, config: DilatedViTMAEConfig) -> DilatedViTMAEImageProcessor:
    """
    The processor the run trains with and saves, always matching the model's config. An explicit
    --image_processor_name that does not match is refused; one that comes along with --model_name_or_path /
    --config_name (or the default config) is adapted to the config (its resampling, mean and std kept where they fit).
    """
    name = args.image_processor_name or args.config_name or args.model_name_or_path or str(DEFAULT_CONFIG)
    try:
        processor = DilatedViTMAEImageProcessor.from_pretrained(name, token=args.token, revision=args.revision)
    except OSError:
        if args.image_processor_name:
            raise
        processor = None
    mismatch = processor and _processor_mismatch(processor, config)
    if mismatch and args.image_processor_name:
        raise ValueError(
            f"--image_processor_name {args.image_processor_name} {mismatch}. Pass a processor made for this model, "
            "or drop --image_processor_name to use one that matches the config."
        )
    if processor is not None and not mismatch:
        return processor
    if processor is not None:
        logger.info(f"image processor of {name}: {mismatch}; using one sized for the model instead")
    return image_processor_for_config(config, like=processor)


def build_model(args: argparse.Namespace, config: DilatedViTMAEConfig) -> DilatedViTMAEForPreTraining:
    model_kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    if args.model_name_or_path:
        model = DilatedViTMAEForPreTraining.from_pretrained(
            args.model_name_or_path, config=config, revision=args.revision, token=args.token, cache_dir=args.cache_dir,
            **model_kwargs,
        )  # fmt: skip
    else:
        model = DilatedViTMAEForPreTraining._from_config(config, **model_kwargs)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _with_index(dataset, streaming: bool):
    """Add `sample_index` (the example's position in its split): it fixes the example's augmentation and masks."""
    if streaming:
        return dataset.map(lambda example, index: {"sample_index": index}, with_indices=True)
    return dataset.add_column("sample_index", list(range(len(dataset))))


def load_datasets(args: argparse.Namespace, progress: bool = True) -> dict:
    """The splits; the image check (a bar when `progress`) is recorded, so the processes after the first and a
    repeated launch on unchanged files skip it (`load_celeba`'s `check_record_dir`)."""
    source = data_source(args)
    splits = load_celeba(
        source,
        config_name=args.dataset_config_name,
        streaming=args.streaming,
        on_bad_image=args.on_bad_image,
        num_workers=args.preprocessing_num_workers,
        cache_dir=args.cache_dir,
        token=args.token,
        progress=progress,
    )
    columns = splits["train"].column_names
    if columns is not None and args.image_column_name not in columns:
        raise ValueError(f"--image_column_name {args.image_column_name!r} is not a column of {source}; it has {columns}.")
    output = {}
    for split, limit in {"train": args.max_train_samples, "validation": args.max_eval_samples}.items():
        dataset = splits[split]
        if limit is not None:
            dataset = dataset.take(limit) if args.streaming else dataset.select(range(min(limit, len(dataset))))
        if not args.streaming and len(dataset) == 0 and (split == "train" or not args.no_eval):
            hint = "check the source and --max_train_samples" if split == "train" else "pass --no_eval to train without evaluation"
            raise ValueError(f"The {split} split of {source} is empty: {hint}.")
        output[split] = _with_index(dataset, args.streaming)
    return output


def _default_num_workers(accelerator: Accelerator, evaluation: bool = False) -> int:
    """The CPUs per local process less one (the loop's), at most 8: on GPUs, and for evaluation on CPU too (2 workers
    evaluated 5.8x faster than none: README "Start-up and evaluation"); CPU training none (see --help)."""
    if accelerator.device.type == "cpu" and not evaluation:
        return 0
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // local_processes - 1))


def train_dataset_and_augmentation(args, accelerator, config, image_processor, splits):
    """
    The train split with its seeded augmentation, and what the loop applies on the device (None on the host path).
    On the device path the workers only decode to uint8 and draw each example's box and flip (from the same
    generator as the host path, so resume stays exact); crop, resize, flip and normalise run batched on the device.
    """
    crop = image_processor.crop_size
    image_size = (crop["height"], crop["width"])
    kwargs = dict(image_mean=image_processor.image_mean, image_std=image_processor.image_std, num_channels=config.num_channels)
    on_device = resolve_augment_on(args.augment_on, accelerator.device, streaming=args.streaming) == "device"
    if not on_device and args.decoded_cache_dir:  # auto on a CPU (explicit --augment_on host is refused when parsed)
        logger.warning(f"--decoded_cache_dir is not used: --augment_on auto picked the host path on {accelerator.device}.")
    if not on_device:
        augmentation = IndexedTransform(MAETrainTransform(image_size, **kwargs), args.image_column_name, seed=args.seed)
        return splits["train"], augmentation, None, collate_examples
    host_transform = MAEHostTransform(image_size, **kwargs)
    augmentation = IndexedTransform(host_transform, args.image_column_name, seed=args.seed)
    if args.decoded_cache_dir:
        with accelerator.main_process_first():
            cache = DecodedImageCache.build(
                splits["train"], args.decoded_cache_dir, image_column=args.image_column_name,
                num_channels=config.num_channels, num_workers=args.dataloader_num_workers or 1,
            )  # fmt: skip
        dataset = cache.as_dataset(augmentation, image_column=args.image_column_name)
    else:  # encoded bytes / paths, so that the workers decode (simplejpeg where installed)
        dataset = splits["train"].cast_column(args.image_column_name, datasets.Image(decode=False))
        dataset.set_transform(augmentation)
    return dataset, augmentation, DeviceAugmentation.from_transform(host_transform), collate_examples


def build_dataloaders(args, accelerator, config, image_processor, splits):
    """(train loader, eval loader, the train augmentation (its epoch is set each epoch), the device augmentation)."""
    train_dataset, train_augmentation, device_augmentation, train_collate = train_dataset_and_augmentation(
        args, accelerator, config, image_processor, splits
    )
    eval_transform = IndexedTransform(eval_view(image_processor), args.image_column_name)
    if args.streaming:  # an IterableDataset has no set_transform: map lazily, keeping only what the batch needs
        train_dataset = train_dataset.map(train_augmentation, batched=True, batch_size=16, remove_columns=train_dataset.column_names)
        splits["validation"] = splits["validation"].map(
            eval_transform, batched=True, batch_size=16, remove_columns=splits["validation"].column_names
        )
    elif device_augmentation is None:
        train_dataset.set_transform(train_augmentation)
    if not args.streaming:
        splits["validation"].set_transform(eval_transform)
    def loader_kwargs(evaluation: bool) -> dict:
        workers = args.dataloader_num_workers
        workers = _default_num_workers(accelerator, evaluation) if workers is None else workers
        kwargs = dict(num_workers=workers, pin_memory=accelerator.device.type == "cuda")
        if workers:
            kwargs.update(persistent_workers=True, prefetch_factor=args.dataloader_prefetch_factor)
        return kwargs

    shuffle = {} if args.streaming else {"shuffle": True}
    train_dataloader = DataLoader(
        train_dataset, batch_size=args.per_device_train_batch_size, collate_fn=train_collate, **shuffle,
        **loader_kwargs(evaluation=False),
    )  # fmt: skip
    eval_dataloader = DataLoader(
        splits["validation"], batch_size=args.per_device_eval_batch_size, collate_fn=collate_examples,
        **loader_kwargs(evaluation=True),
    )  # fmt: skip
    return train_dataloader, eval_dataloader, train_augmentation, device_augmentation


# ----------------------------------------------------------------------------------------------------------------------
# The run's state, optimizer and resume
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainerState:
    """What a checkpoint's `trainer_state.json` holds besides accelerate's state: where the run is, and its recipe."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    max_train_steps: int = 0
    num_processes: int = 1
    effective_batch_size: int = 0
    learning_rate: float = 0.0
    # [step from which it applies, lr], one entry per lr the run used (a resume may change it)
    learning_rate_history: list = dataclasses.field(default_factory=list)
    seed: int = 0
    train_runtime_seconds: float = 0.0  # cumulative over every resumed part (RunClock)
    run_id: str | None = None  # OUTPUT_DIR/run.json's: a resume refuses a checkpoint of another run
    run_fingerprint: str | None = None


@dataclasses.dataclass
class Run:
    """Everything the loop, the evaluation and the save share."""

    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module
    unwrapped: DilatedViTMAEForPreTraining
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    train_dataloader: DataLoader
    eval_dataloader: DataLoader
    train_augmentation: IndexedTransform
    device_augmentation: DeviceAugmentation | None
    image_processor: DilatedViTMAEImageProcessor
    checkpoints: CheckpointManager
    splits: dict
    state: TrainerState
    num_epochs: int
    num_warmup_steps: int
    secrets: set = dataclasses.field(default_factory=set)  # token values to redact from everything written
    identity: RunIdentity | None = None
    context: RunContext | None = None  # the run folder's: checkpoints, log, resume
    clock: RunClock = dataclasses.field(default_factory=RunClock)
    stop_requested: bool = False  # set by SIGTERM
    preempted: bool = False
    eval_results: dict = dataclasses.field(default_factory=dict)

    @property
    def num_patches(self) -> int:
        return self.unwrapped.vit.embeddings.patch_embeddings.num_patches


def training_schedule(args, accelerator, splits) -> tuple[int, int, int, float]:
    """(steps per epoch, max train steps, epochs, lr) for this launch."""
    effective_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    if args.streaming:
        steps_per_epoch = args.max_train_steps  # a stream has no length: one pass is an "epoch"
    else:
        batches_per_process = math.ceil(len(splits["train"]) / (args.per_device_train_batch_size * accelerator.num_processes))
        steps_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    learning_rate = args.learning_rate or args.base_learning_rate * effective_batch_size / 256
    logger.info(
        f"effective batch size {effective_batch_size} = {args.per_device_train_batch_size} per device x "
        f"{accelerator.num_processes} processes x {args.gradient_accumulation_steps} accumulation; lr = "
        f"{learning_rate:.3g}" + ("" if args.learning_rate else f" (blr {args.base_learning_rate:.3g} x {effective_batch_size} / 256)")
        + f"; {max_train_steps} steps ({args.recipe} recipe)"
    )  # fmt: skip
    return effective_batch_size, max_train_steps, num_epochs, learning_rate


def build_optimizer(args, model, accelerator, learning_rate: float, max_train_steps: int, num_warmup_steps: int):
    fused = {"fused": True} if accelerator.device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, args.weight_decay), lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2), **fused
    )
    # the prepared scheduler steps once per process at every optimizer step (accelerate's convention)
    lr_scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps * accelerator.num_processes, max_train_steps * accelerator.num_processes
    )
    return optimizer, lr_scheduler


def apply_learning_rate(run: Run, saved: TrainerState, learning_rate: float) -> None:
    """
    A resume whose flags give another lr than the checkpoint's applies it from here on: the restored scheduler
    keeps its position and shape, scaled to the new peak. The history records which lr ran when.
    """
    run.state.learning_rate_history = saved.learning_rate_history or [[0, saved.learning_rate]]
    if math.isclose(learning_rate, saved.learning_rate, rel_tol=1e-9):
        run.state.learning_rate = saved.learning_rate
        return
    scheduler = run.lr_scheduler.scheduler
    scheduler.base_lrs = [learning_rate for _ in scheduler.base_lrs]
    for group, lr_lambda in zip(run.optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * lr_lambda(scheduler.last_epoch)
    run.state.learning_rate_history.append([run.state.global_step, learning_rate])
    logger.warning(
        f"the checkpoint was trained with lr {saved.learning_rate:.3g}; this launch's flags give {learning_rate:.3g}, "
        f"applied from step {run.state.global_step} on (recorded in learning_rate_history)."
    )


def resume(run: Run, context: RunContext, learning_rate: float) -> None:
    checkpoint, saved_dict = context.resume(run.state.effective_batch_size)
    fields = {f.name for f in dataclasses.fields(TrainerState)}
    saved = TrainerState(**{k: v for k, v in saved_dict.items() if k in fields})
    state = run.state
    state.global_step, state.epoch, state.batches_done_in_epoch = saved.global_step, saved.epoch, saved.batches_done_in_epoch
    state.train_runtime_seconds = saved.train_runtime_seconds
    apply_learning_rate(run, saved, learning_rate)
    logger.info(f"resumed from {checkpoint} at step {state.global_step} (epoch {state.epoch}, batch {state.batches_done_in_epoch})")


def save_checkpoint(run: Run) -> Path:
    """A checkpoint of the current step, refused if any parameter is not finite (it would be resumed from)."""
    run.state.train_runtime_seconds = run.clock.total()
    return run.context.save_checkpoint(run.model, run.optimizer, run.state.global_step, dataclasses.asdict(run.state))


# ----------------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------------


def train_micro_batch(run: Run, batch: dict, epoch: int, meter: StepMeter) -> None:
    args, accelerator, model = run.args, run.accelerator, run.model
    # the training masks are their own stream: independent of the augmentation drawn for the same example
    noise = masking_noise(batch["sample_index"], run.num_patches, stream="train_mask", seed=args.seed, epoch=epoch)
    augment = run.device_augmentation
    pixel_values = augment(batch) if augment is not None else batch["pixel_values"]  # (B, C, H, W)
    with accelerator.accumulate(model):
        loss = model(pixel_values=pixel_values, noise=noise).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad()
    meter.add(loss, run.state.global_step + 1, pixel_values.shape[0] * accelerator.num_processes)


def _checkpoint_due(run: Run, at_epoch_end: bool) -> bool:
    every, step = run.args.checkpointing_steps, run.state.global_step
    if every == "no":
        return False
    last = step >= run.state.max_train_steps
    return last or (every == "epoch" and at_epoch_end) or (isinstance(every, int) and step % every == 0)


def after_step(run: Run, meter: StepMeter, epoch: int, at_epoch_end: bool, log) -> bool:
    """Logging, the finiteness check, checkpoints, evaluation and preemption at the end of a step; True stops."""
    args, step = run.args, run.state.global_step
    last = step >= run.state.max_train_steps
    checkpoint = _checkpoint_due(run, at_epoch_end)
    evaluation = not args.no_eval and args.eval_steps and step % args.eval_steps == 0 and not last
    logging_step = step % args.logging_steps == 0 or last
    single_stop = run.stop_requested and run.accelerator.num_processes == 1
    if not (logging_step or checkpoint or evaluation or single_stop):
        return False
    synced = meter.synchronise(run.accelerator, run.stop_requested)
    check_finite(synced, run.checkpoints)
    if logging_step:
        lr = run.lr_scheduler.get_last_lr()[0]
        log({"train_loss": synced["loss"], "lr": lr, "epoch": epoch, **meter.reset_interval()}, step)
    if checkpoint or synced["stop"]:
        save_checkpoint(run)
    if synced["stop"]:
        run.preempted = True
        return True
    if evaluation:
        run.eval_results = evaluate(run, log)
    return last


def train(run: Run, log) -> None:
    args, accelerator, state = run.args, run.accelerator, run.state
    progress = tqdm(total=state.max_train_steps, initial=state.global_step, disable=not accelerator.is_local_main_process, desc="pre-training")
    meter = StepMeter(accelerator.device)
    start_epoch, skip = state.epoch, state.batches_done_in_epoch
    for epoch in range(start_epoch, run.num_epochs if not args.streaming else sys.maxsize):
        if state.global_step >= state.max_train_steps:
            break
        run.model.train()
        run.train_augmentation.epoch = epoch
        run.train_dataloader.set_epoch(epoch)
        skipped = skip if epoch == start_epoch else 0
        loader = accelerator.skip_first_batches(run.train_dataloader, skipped) if skipped else run.train_dataloader
        batches_done, steps_before = skipped, state.global_step
        for batch in timed_batches(loader, meter):
            train_micro_batch(run, batch, epoch, meter)
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            at_epoch_end = accelerator.gradient_state.end_of_dataloader
            state.epoch, state.batches_done_in_epoch = (epoch + 1, 0) if at_epoch_end else (epoch, batches_done)
            if after_step(run, meter, epoch, at_epoch_end, log):
                progress.close()
                return
        if state.global_step == steps_before:
            raise ValueError(f"Epoch {epoch} yielded no training batch: the training data ran out (streaming?).")
        state.epoch, state.batches_done_in_epoch = epoch + 1, 0
    progress.close()


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


def _caption(results: dict, step: int, norm_pix_loss: bool) -> str:
    ratio = results["loss"] / max(results["baseline_visible_mean_loss"], 1e-12)
    lines = [
        f"step {step}; held-out images, fixed masks. Masked-patch MSE in [0, 1]: model {results['masked_patch_mse']:.4f}, "
        f"visible-patch mean {results['baseline_visible_mean_masked_patch_mse']:.4f}, zeros "
        f"{results['baseline_zeros_masked_patch_mse']:.4f}",
        f"loss {results['loss']:.4f} = {ratio:.2f}x the visible-patch mean's; PSNR {results['psnr']:.1f} dB (visible-patch "
        f"mean {results['baseline_visible_mean_psnr']:.1f} dB)",
    ]
    if norm_pix_loss:
        lines.append("norm_pix_loss: the reconstruction column borrows each masked patch's true mean and variance")
    return "\n".join(lines)


@torch.no_grad()
def evaluate(run: Run, log) -> dict:
    """
    The loss, masked-patch MSE and PSNR on the validation split with fixed per-example masks (their own stream),
    beside the same metrics for two trivial predictors on the same masks (see `reconstruction_scores`).
    """
    args, accelerator, processor = run.args, run.accelerator, run.image_processor
    run.model.eval()
    totals, count, grid_images = {}, 0, None
    num_images = None if args.streaming else len(run.splits["validation"])
    logger.info(
        f"step {run.state.global_step}: evaluating {'the' if num_images is None else f'{num_images:,}'} validation images "
        f"({run.eval_dataloader.num_workers} loader workers per process)"
    )
    batches = tqdm(
        run.eval_dataloader, total=None if args.streaming else len(run.eval_dataloader), desc="evaluation",
        unit="batch", disable=not accelerator.is_local_main_process, leave=False,
    )  # fmt: skip
    for batch in batches:
        pixel_values = batch["pixel_values"]
        noise = masking_noise(batch["sample_index"], run.num_patches, stream="eval_mask", seed=args.seed)
        outputs = run.model(pixel_values=pixel_values, noise=noise)
        scores = reconstruction_scores(
            run.unwrapped, pixel_values, outputs.logits, outputs.mask, processor.image_mean, processor.image_std
        )
        names = sorted(scores)
        gathered = accelerator.gather_for_metrics(torch.stack([scores[name] for name in names], dim=1))  # (B, metrics)
        for name, column in zip(names, gathered.sum(dim=0).tolist()):
            totals[name] = totals.get(name, 0.0) + column
        count += gathered.shape[0]
        if grid_images is None:
            grid_images = reconstruction_images(
                run.unwrapped, pixel_values, outputs.logits, outputs.mask, processor.image_mean, processor.image_std
            )
            grid_images["baseline"] = visible_mean_images(
                run.unwrapped, pixel_values, outputs.mask, processor.image_mean, processor.image_std
            )
    run.model.train()
    if count == 0:
        raise ValueError("The validation split yielded no batch: pass --no_eval to train without evaluation.")
    results = summary_keys({name: total / count for name, total in totals.items()})
    step = run.state.global_step
    log({f"eval_{k}": v for k, v in results.items()}, step)
    if accelerator.is_main_process:
        grid = reconstruction_grid(grid_images, args.num_grid_images, caption=_caption(results, step, run.unwrapped.config.norm_pix_loss))
        eval_dir = Path(args.output_dir) / "eval"
        eval_dir.mkdir(parents=True, exist_ok=True)
        grid.save(eval_dir / f"reconstructions_step_{step}.png")
        grid.save(eval_dir / "reconstructions.png")
        if args.with_tracking:
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image("eval/reconstructions", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
    ratio = results["loss"] / max(results["baseline_visible_mean_loss"], 1e-12)
    logger.info(
        f"step {step}: eval loss {results['loss']:.4f} ({ratio:.2f}x the visible-patch mean's), masked-patch MSE "
        f"{results['masked_patch_mse']:.4f} (visible-patch mean {results['baseline_visible_mean_masked_patch_mse']:.4f}), "
        f"PSNR {results['psnr']:.2f} dB"
    )
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Save and summary
# ----------------------------------------------------------------------------------------------------------------------


def save_outputs(run: Run) -> None:
    args, accelerator = run.args, run.accelerator
    output_dir = Path(args.output_dir)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(run.model)  # a collective under FSDP / DeepSpeed: every process
    if not accelerator.is_main_process:
        return
    summary = run_summary(run)

    def write_final_files(folder: Path) -> None:
        # as the model's own class: under FSDP2 `run.unwrapped` is torch's FSDP<Class>, which would write its auto_map
        save_pretrained(run.unwrapped, folder, state_dict, save_function=accelerator.save)
        run.image_processor.save_pretrained(folder)
        # redacted by value (any token flag, HF_TOKEN, the cached login) and with no local path in it
        write_publishable_json(folder / "all_results.json", summary, run.secrets)
        # every output folder is publishable as it is: reconstruction pipeline, endpoint handler, model card
        prepare_hub_folder(folder, repo_id=args.hub_model_id, secrets=run.secrets)

    # all at once, all_results.json last: a full disk leaves the previous final files as they were
    stage_and_swap(
        output_dir, write_final_files, include=["eval/reconstructions.png"], remove=["linear_probe_results.json"],
        expected_bytes=checkpoint_bytes(run.unwrapped),
    )  # fmt: skip
    run.identity.record_runtime(output_dir, run.state.train_runtime_seconds)
    logger.info(f"saved the model, image processor and model card to {output_dir}")
    if args.push_to_hub:
        # refuses (FolderCheckError) a folder that does not load without the package; local files stay as they are
        pushed = push_folder_to_hub(
            output_dir, repo_id=args.hub_model_id, token=args.hub_token, private=args.hub_private_repo,
            revision=args.hub_revision, commit_message=f"Pre-training: {run.state.global_step} steps",
        )  # fmt: skip
        logger.info(f"pushed {output_dir} to {args.hub_model_id}: {pushed.url} ({len(pushed.files)} files)")


def _dataset_description(args: argparse.Namespace) -> tuple[str, bool, str]:
    """(name, is_celeba, description) of the training data, with no local path in it."""
    source = data_source(args)
    if args.dataset_name:
        name = args.dataset_name
        description = f"[{name}](https://huggingface.co/datasets/{name})" + (
            f" (configuration `{args.dataset_config_name}`)." if args.dataset_config_name else "."
        )
        return name, "celeba" in name.lower(), description
    if on_shipped_sample(args):
        description = (
            "the 56-image stand-in in CelebA's layout shipped in the project's `data/celeba_sample/`: crops of three "
            "public-domain / CC0 photographs (two people and a cat), **not CelebA**, so these weights and figures "
            "say nothing about CelebA."
        )
        return "celeba_sample", False, description
    if args.celeba_dir:
        return "CelebA", True, "CelebA (a raw download: `img_align_celeba`, 178x218 aligned crops, with the official partition)."
    return Path(source).name, False, f"the image folder `{Path(source).name}`."


def run_summary(run: Run) -> dict:
    """`all_results.json`: what the run did and measured, which the model card is rendered from."""
    args, accelerator, state = run.args, run.accelerator, run.state
    name, is_celeba, description = _dataset_description(args)

    def num_examples(split: str) -> int | None:
        try:
            return len(run.splits[split])
        except TypeError:  # a stream has no length
            return None

    script = sys.argv[0] if sys.argv and Path(sys.argv[0]).name == "run_mae.py" else "scripts/run_mae.py"
    return {
        **summary_common(
            args, accelerator, global_step=state.global_step, epochs=run.num_epochs,
            effective_batch_size=state.effective_batch_size, warmup_steps=run.num_warmup_steps,
            learning_rate=state.learning_rate_history[-1][1] if state.learning_rate_history else state.learning_rate,
            train_runtime_seconds=state.train_runtime_seconds,
        ),  # fmt: skip
        "recipe": args.recipe,
        "learning_rate_history": state.learning_rate_history,
        # the launcher's own flags are not visible to the script: hardware below says how it ran
        "command": redact_command(["accelerate", "launch", script, *args.argv]),
        "dataset": {
            "name": name,
            "hub_id": args.dataset_name,
            "config_name": args.dataset_config_name,
            "is_celeba": is_celeba,
            "description": description,
            "train_split": "train",
            "train_samples": num_examples("train"),
            "eval_split": "validation",
            "eval_samples": num_examples("validation"),
        },
        "eval_samples": num_examples("validation") if run.eval_results else None,
        "eval_mask_seed": args.seed,  # of the "eval_mask" stream (dilated_vit_mae.data.seeding.masking_noise)
        "augmentation": {
            "crop_scale": list(run.train_augmentation.transform.scale),
            "flip_prob": run.train_augmentation.transform.flip_prob,
        },
        **{f"eval_{k}": v for k, v in run.eval_results.items()},
    }


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------


def build_run(args: argparse.Namespace, accelerator: Accelerator, checkpoints: CheckpointManager) -> tuple[Run, float]:
    """Model, data, optimizer and schedule, prepared; the lr this launch's flags give."""
    config = build_config(args)
    image_processor = build_image_processor(args, config)
    model = build_model(args, config)
    with accelerator.main_process_first():
        splits = load_datasets(args, progress=accelerator.is_local_main_process)
    train_dataloader, eval_dataloader, train_augmentation, device_augmentation = build_dataloaders(
        args, accelerator, config, image_processor, splits
    )
    effective_batch_size, max_train_steps, num_epochs, learning_rate = training_schedule(args, accelerator, splits)
    num_warmup_steps = args.num_warmup_steps if args.num_warmup_steps is not None else round(args.warmup_ratio * max_train_steps)
    optimizer, lr_scheduler = build_optimizer(args, model, accelerator, learning_rate, max_train_steps, num_warmup_steps)
    if args.torch_compile:
        model = torch.compile(model)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    state = TrainerState(
        max_train_steps=max_train_steps, num_processes=accelerator.num_processes,
        effective_batch_size=effective_batch_size, learning_rate=learning_rate,
        learning_rate_history=[[0, learning_rate]], seed=args.seed,
    )  # fmt: skip
    run = Run(
        args=args, accelerator=accelerator, model=model, unwrapped=accelerator.unwrap_model(model), optimizer=optimizer,
        lr_scheduler=lr_scheduler, train_dataloader=train_dataloader, eval_dataloader=eval_dataloader,
        train_augmentation=train_augmentation, device_augmentation=device_augmentation, image_processor=image_processor,
        checkpoints=checkpoints, splits=splits,
        state=state, num_epochs=num_epochs, num_warmup_steps=num_warmup_steps,
    )  # fmt: skip
    return run, learning_rate


def main(args: argparse.Namespace) -> Path:
    if args.model_name_or_path:  # a classifier, a checkpoint or a data folder is named before the run folder is written
        check_model_folder(args.model_name_or_path, for_pretraining=True)
    # refuses a folder holding an earlier run before anything is written; the accelerator, run.json, the seed
    context = start_run(args, NOT_RUN_DEFINING)
    accelerator, checkpoints, identity, output_dir = context.accelerator, context.checkpoints, context.identity, context.output_dir
    run, learning_rate = build_run(args, accelerator, checkpoints)
    run.identity, run.context = identity, context
    run.state.run_id, run.state.run_fingerprint = identity.run_id, identity.fingerprint
    run.secrets = context.secrets
    context.init_trackers("dilated_vit_mae")
    if args.resume_from_checkpoint:
        resume(run, context, learning_rate)

    def request_stop(signum, frame):  # preemption: save a checkpoint at the next synchronised step and exit 0
        run.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    log = context.log
    run.clock = RunClock(run.state.train_runtime_seconds)  # this launch's loop time, added to the resumed runtime
    train(run, log)
    run.state.train_runtime_seconds = run.clock.total()
    if run.preempted:
        logger.info(f"SIGTERM: saved {checkpoints.latest()} at step {run.state.global_step}; continue with --resume_from_checkpoint latest.")
        accelerator.end_training()
        return output_dir
    if not args.no_eval:
        run.eval_results = evaluate(run, log)
    save_outputs(run)
    logger.info(f"rank {accelerator.process_index} finished: {run.state.global_step} steps", main_process_only=False)
    accelerator.end_training()
    return output_dir


if __name__ == "__main__":
    run_cli(main, parse_args())
