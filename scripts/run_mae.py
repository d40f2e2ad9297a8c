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

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining  # noqa: E402
from dilated_vit_mae.data.decoded_cache import DecodedImageCache  # noqa: E402
from dilated_vit_mae.data.device_augment import DeviceAugmentation, resolve_augment_on  # noqa: E402
from dilated_vit_mae.data.seeding import (  # noqa: E402
    IndexedTransform,
    masking_noise,
)
from dilated_vit_mae.data.transforms import (  # noqa: E402
    MAEHostTransform,
    MAETrainTransform,
    collate_examples,
    eval_view,
)
from dilated_vit_mae.evaluation.reconstruction import (  # noqa: E402
    reconstruction_grid,
    reconstruction_images,
    reconstruction_scores,
    summary_keys,
    visible_mean_images,
)
from dilated_vit_mae.publish.hub import prepare_hub_folder, push_folder_to_hub  # noqa: E402
from dilated_vit_mae.train.checkpoints import param_groups_weight_decay  # noqa: E402
from dilated_vit_mae.train.core import (  # noqa: E402
    NOT_RUN_DEFINING as SHARED_NOT_RUN_DEFINING,
    Run,
    RunContext,
    Schedule,
    StepMeter,
    TrainerState,
    check_finite,
    check_shared_arguments,
    cosine_schedule,
    dataset_summary,
    load_config,
    load_image_processor,
    load_splits,
    on_shipped_sample,
    start_run,
    summary_common,
    timed_batches,
    training_parser,
    training_schedule,
)
from dilated_vit_mae.train.lifecycle import (  # noqa: E402
    check_model_folder,
    checkpointing_steps,
    fraction,
    non_negative_int,
    positive_int,
    run_cli,
)

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
    name = args.config_name or args.model_name_or_path or str(DEFAULT_CONFIG)
    flags = ("dilation_rates", "dilated_context", "dilated_fusion", "masking_mode", "mask_ratio", "norm_pix_loss")
    config = load_config(args, name, flags)
    if config.mask_ratio == 0:  # e.g. --config_name of a classifier folder, or --config_overrides mask_ratio=0
        raise ValueError(NO_MASK_MESSAGE.format(source=f"the config from {name} has mask_ratio 0, which"))
    return config


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
    """The splits, each example with its index; the image check (a bar when `progress`) is recorded, so the processes
    after the first and a repeated launch on unchanged files skip it (`load_celeba`'s `check_record_dir`)."""
    splits = load_splits(args, eval_required=not args.no_eval, progress=progress)
    return {split: _with_index(dataset, args.streaming) for split, dataset in splits.items()}


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
        return _with_transform(splits["train"], augmentation, args.streaming), augmentation, None
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
    return dataset, augmentation, DeviceAugmentation.from_transform(host_transform)


def _with_transform(dataset, transform: IndexedTransform, streaming: bool):
    """`dataset` with `transform` applied as it is read: `set_transform`, or for a stream (an IterableDataset has no
    set_transform) a lazy map that keeps only what the batch needs."""
    if streaming:
        return dataset.map(transform, batched=True, batch_size=16, remove_columns=dataset.column_names)
    dataset.set_transform(transform)
    return dataset


def build_dataloaders(args, accelerator, config, image_processor, splits):
    """(train loader, eval loader, the train augmentation (its epoch is set each epoch), the device augmentation)."""
    train_dataset, train_augmentation, device_augmentation = train_dataset_and_augmentation(
        args, accelerator, config, image_processor, splits
    )
    eval_transform = IndexedTransform(eval_view(image_processor), args.image_column_name)
    splits["validation"] = _with_transform(splits["validation"], eval_transform, args.streaming)

    def loader_kwargs(evaluation: bool) -> dict:
        workers = args.dataloader_num_workers
        workers = _default_num_workers(accelerator, evaluation) if workers is None else workers
        kwargs = dict(num_workers=workers, pin_memory=accelerator.device.type == "cuda")
        if workers:
            kwargs.update(persistent_workers=True, prefetch_factor=args.dataloader_prefetch_factor)
        return kwargs

    shuffle = {} if args.streaming else {"shuffle": True}
    train_dataloader = DataLoader(
        train_dataset, batch_size=args.per_device_train_batch_size, collate_fn=collate_examples, **shuffle,
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
class PretrainingState(TrainerState):
    """The checkpoint's trainer state: where the run is (`core.TrainerState`) and which learning rate ran when."""

    learning_rate: float = 0.0
    # [step from which it applies, lr], one entry per lr the run used (a resume may change it)
    learning_rate_history: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PretrainingRun(Run):
    """The run (`core.Run`: context, model, optimizer, schedule, state) and what pre-training adds to it."""

    unwrapped: DilatedViTMAEForPreTraining
    train_dataloader: DataLoader
    eval_dataloader: DataLoader
    train_augmentation: IndexedTransform
    device_augmentation: DeviceAugmentation | None
    image_processor: object
    splits: dict
    stop_requested: bool = False  # set by SIGTERM
    preempted: bool = False
    eval_results: dict = dataclasses.field(default_factory=dict)

    @property
    def num_patches(self) -> int:
        return self.unwrapped.vit.embeddings.patch_embeddings.num_patches


def build_optimizer(args, model, accelerator, schedule: Schedule):
    fused = {"fused": True} if accelerator.device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, args.weight_decay), lr=schedule.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2), **fused,
    )  # fmt: skip
    return optimizer, cosine_schedule(optimizer, schedule, accelerator.num_processes)


def apply_learning_rate(run: PretrainingRun, saved_learning_rate: float, learning_rate: float) -> None:
    """
    A resume whose flags give another lr than the checkpoint's applies it from here on: the restored scheduler
    keeps its position and shape, scaled to the new peak. The history records which lr ran when.
    """
    state = run.state
    state.learning_rate_history = state.learning_rate_history or [[0, saved_learning_rate]]
    if math.isclose(learning_rate, saved_learning_rate, rel_tol=1e-9):
        return
    scheduler = run.lr_scheduler.scheduler
    scheduler.base_lrs = [learning_rate for _ in scheduler.base_lrs]
    for group, lr_lambda in zip(run.optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * lr_lambda(scheduler.last_epoch)
    state.learning_rate = learning_rate
    state.learning_rate_history.append([state.global_step, learning_rate])
    logger.warning(
        f"the checkpoint was trained with lr {saved_learning_rate:.3g}; this launch's flags give {learning_rate:.3g}, "
        f"applied from step {state.global_step} on (recorded in learning_rate_history)."
    )


def resume(run: PretrainingRun) -> None:
    learning_rate = run.state.learning_rate  # this launch's
    run.state.learning_rate_history = []
    run.context.resume(run.state)  # the checkpoint's position, runtime, lr and history
    apply_learning_rate(run, run.state.learning_rate, learning_rate)


# ----------------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------------


def train_micro_batch(run: PretrainingRun, batch: dict, epoch: int, meter: StepMeter) -> None:
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


def _checkpoint_due(run: PretrainingRun, at_epoch_end: bool) -> bool:
    every, step = run.args.checkpointing_steps, run.state.global_step
    if every == "no":
        return False
    last = step >= run.state.max_train_steps
    return last or (every == "epoch" and at_epoch_end) or (isinstance(every, int) and step % every == 0)


def after_step(run: PretrainingRun, meter: StepMeter, epoch: int, at_epoch_end: bool, log) -> bool:
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
    check_finite(synced, run.context.checkpoints)
    if logging_step:
        lr = run.lr_scheduler.get_last_lr()[0]
        log({"train_loss": synced["loss"], "lr": lr, "epoch": epoch, **meter.reset_interval()}, step)
    if checkpoint or synced["stop"]:
        run.save_checkpoint()
    if synced["stop"]:
        run.preempted = True
        return True
    if evaluation:
        run.eval_results = evaluate(run, log)
    return last


def train(run: PretrainingRun, log) -> None:
    args, accelerator, state = run.args, run.accelerator, run.state
    progress = tqdm(total=state.max_train_steps, initial=state.global_step, disable=not accelerator.is_local_main_process, desc="pre-training")
    meter = StepMeter(accelerator.device)
    start_epoch, skip = state.epoch, state.batches_done_in_epoch
    for epoch in range(start_epoch, run.schedule.num_epochs if not args.streaming else sys.maxsize):
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
def evaluate(run: PretrainingRun, log) -> dict:
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


def save_outputs(run: PretrainingRun) -> None:
    """The output folder (the model, its processor, all_results.json, the files that make it publishable as it is:
    reconstruction pipeline, endpoint handler, model card), then `--push_to_hub`."""
    args, output_dir = run.args, run.context.output_dir

    def write_card(folder: Path) -> None:
        prepare_hub_folder(folder, repo_id=args.hub_model_id, secrets=run.context.secrets)

    # the grid the card shows is read from the run folder; a probe's results describe the replaced weights
    run.context.save_final(
        run.model, run.image_processor, run_summary(run), write_card, include=["eval/reconstructions.png"],
        remove=["linear_probe_results.json"],
    )  # fmt: skip
    logger.info(f"saved the model, image processor and model card to {output_dir}")
    if args.push_to_hub and run.accelerator.is_main_process:
        # refuses (FolderCheckError) a folder that does not load without the package; local files stay as they are
        pushed = push_folder_to_hub(
            output_dir, repo_id=args.hub_model_id, token=args.hub_token, private=args.hub_private_repo,
            revision=args.hub_revision, commit_message=f"Pre-training: {run.state.global_step} steps",
        )  # fmt: skip
        logger.info(f"pushed {output_dir} to {args.hub_model_id}: {pushed.url} ({len(pushed.files)} files)")


def run_summary(run: PretrainingRun) -> dict:
    """`all_results.json`: what the run did and measured, which the model card is rendered from."""
    args, state = run.args, run.state

    def num_examples(split: str) -> int | None:
        try:
            return len(run.splits[split])
        except TypeError:  # a stream has no length
            return None

    return {
        **summary_common(
            args, run.accelerator, state, run.schedule, script="scripts/run_mae.py",
            learning_rate=state.learning_rate_history[-1][1] if state.learning_rate_history else state.learning_rate,
        ),  # fmt: skip
        "recipe": args.recipe,
        "learning_rate_history": state.learning_rate_history,
        "dataset": dataset_summary(args, {split: num_examples(split) for split in ("train", "validation")}, "validation"),
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


def build_run(context: RunContext) -> PretrainingRun:
    """Model, data, optimizer and schedule, prepared; the state at step 0 with this launch's lr."""
    args, accelerator = context.args, context.accelerator
    config = build_config(args)
    image_processor = load_image_processor(args, config, args.config_name or args.model_name_or_path or str(DEFAULT_CONFIG))
    model = build_model(args, config)
    with accelerator.main_process_first():
        splits = load_datasets(args, progress=accelerator.is_local_main_process)
    train_dataloader, eval_dataloader, train_augmentation, device_augmentation = build_dataloaders(
        args, accelerator, config, image_processor, splits
    )
    num_train = None if args.streaming else len(splits["train"])
    schedule = training_schedule(args, accelerator.num_processes, num_train, drop_last=False, warmup_ratio=args.warmup_ratio)
    logger.info(f"{args.recipe} recipe")
    optimizer, lr_scheduler = build_optimizer(args, model, accelerator, schedule)
    if args.torch_compile:
        model = torch.compile(model)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    state = PretrainingState(
        max_train_steps=schedule.max_train_steps, num_processes=accelerator.num_processes,
        effective_batch_size=schedule.effective_batch_size, seed=args.seed, run_id=context.identity.run_id,
        run_fingerprint=context.identity.fingerprint, learning_rate=schedule.learning_rate,
        learning_rate_history=[[0, schedule.learning_rate]],
    )  # fmt: skip
    return PretrainingRun(
        context=context, model=model, unwrapped=accelerator.unwrap_model(model), optimizer=optimizer,
        lr_scheduler=lr_scheduler, train_dataloader=train_dataloader, eval_dataloader=eval_dataloader,
        train_augmentation=train_augmentation, device_augmentation=device_augmentation, image_processor=image_processor,
        splits=splits, schedule=schedule, state=state,
    )  # fmt: skip


def main(args: argparse.Namespace) -> Path:
    if args.model_name_or_path:  # a classifier, a checkpoint or a data folder is named before the run folder is written
        check_model_folder(args.model_name_or_path, for_pretraining=True)
    # refuses a folder holding an earlier run before anything is written; the accelerator, run.json, the seed
    context = start_run(args, NOT_RUN_DEFINING)
    accelerator = context.accelerator
    run = build_run(context)
    context.init_trackers("dilated_vit_mae")
    if args.resume_from_checkpoint:
        resume(run)

    def request_stop(signum, frame):  # preemption: save a checkpoint at the next synchronised step and exit 0
        run.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    run.start_clock()
    train(run, context.log)
    run.record_runtime()
    if run.preempted:
        logger.info(
            f"SIGTERM: saved {context.checkpoints.latest()} at step {run.state.global_step}; continue with "
            "--resume_from_checkpoint latest."
        )
        accelerator.end_training()
        return context.output_dir
    if not args.no_eval:
        run.eval_results = evaluate(run, context.log)
    save_outputs(run)
    logger.info(f"rank {accelerator.process_index} finished: {run.state.global_step} steps", main_process_only=False)
    accelerator.end_training()
    return context.output_dir


if __name__ == "__main__":
    run_cli(main, parse_args())
