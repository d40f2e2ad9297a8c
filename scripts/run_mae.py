#!/usr/bin/env python
"""Pre-train a DilatedViTMAE (or plain ViTMAE) on CelebA with accelerate.

    accelerate launch scripts/run_mae.py                        # small model, shipped sample, a short run
    accelerate launch scripts/run_mae.py --dataset_name flwrlabs/celeba --config_name configs/dilated-vit-mae-base \\
        --per_device_train_batch_size 256 --num_train_epochs 400 --mixed_precision bf16 --with_tracking

One CPU, several CPU processes or many GPUs with the same command (see docs/distributed.md). Checkpoints are
`accelerator.save_state` folders under OUTPUT_DIR/checkpoints/step_N; `--resume_from_checkpoint latest` continues
mid-epoch and reproduces the uninterrupted run exactly (augmentation and masks depend only on seed, epoch and
example). The end result is a Hub-ready folder: model, image processor and their code.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import accelerate
import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
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
from dilated_vit_mae.data import load_celeba  # noqa: E402
from dilated_vit_mae.hub import prepare_hub_folder, push_folder_to_hub  # noqa: E402
from dilated_vit_mae.model_card import redact_command  # noqa: E402
from dilated_vit_mae.metrics import load_metric  # noqa: E402
from dilated_vit_mae.training import (  # noqa: E402
    CheckpointManager,
    IndexedTransform,
    SeededAugmentation,
    collate_indexed,
    masking_noise,
    param_groups_weight_decay,
    reconstruction_grid,
    reconstruction_images,
)
from dilated_vit_mae.transforms import MAEEvalTransform, MAETrainTransform  # noqa: E402


logger = get_logger(__name__)

DEFAULT_CONFIG = REPO_ROOT / "configs" / "dilated-vit-mae-tiny-64"
DEFAULT_CELEBA_DIR = REPO_ROOT / "data" / "celeba_sample"
EVAL_SEED_OFFSET = 1_000_003  # eval masks use their own stream, fixed for the whole run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub dataset id, e.g. flwrlabs/celeba or nielsr/CelebA-faces.")
    data.add_argument("--dataset_config_name", help="Hub dataset configuration.")
    data.add_argument("--celeba_dir", help=f"A raw CelebA download (default when no source is given: {DEFAULT_CELEBA_DIR}).")
    data.add_argument("--train_dir", help="Any local image folder (imagefolder layout, optional metadata.csv).")
    data.add_argument("--image_column_name", default="image")
    data.add_argument("--streaming", action="store_true", help="Stream the Hub dataset (needs --max_train_steps).")
    data.add_argument("--max_train_samples", type=int)
    data.add_argument("--max_eval_samples", type=int)
    data.add_argument("--on_bad_image", choices=["raise", "skip"], default="raise")
    data.add_argument("--preprocessing_num_workers", type=int, help="Threads for the up-front image check.")
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    data.add_argument("--cache_dir")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", help="Our checkpoint, or a facebook/vit-mae-* one to warm-start from.")
    model.add_argument("--config_name", help=f"Config folder or Hub id (default without --model_name_or_path: {DEFAULT_CONFIG}).")
    model.add_argument("--image_processor_name", help="Image processor folder or Hub id (default: the config's).")
    model.add_argument("--config_overrides", help='e.g. "hidden_size=192,num_hidden_layers=6" (config.update_from_string).')
    model.add_argument("--dilation_rates", type=int, nargs="*", help="Dilation rates of the extra branches; none for ViTMAE.")
    model.add_argument("--dilated_context", choices=["full", "visible"])
    model.add_argument("--dilated_fusion", choices=["sum", "concat"])
    model.add_argument("--masking_mode", choices=["drop", "mask_token"])
    model.add_argument("--mask_ratio", type=float)
    model.add_argument("--norm_pix_loss", action=argparse.BooleanOptionalAction, default=None)
    model.add_argument("--attn_implementation", choices=["eager", "sdpa", "flash_attention_2", "flex_attention"])
    model.add_argument("--gradient_checkpointing", action="store_true")
    model.add_argument("--revision", default="main")
    model.add_argument("--token", help="Hub token for private models/datasets.")

    optim = parser.add_argument_group("optimisation (MAE recipe)")
    optim.add_argument("--base_learning_rate", type=float, default=1.5e-4, help="lr = blr x effective batch / 256.")
    optim.add_argument("--learning_rate", type=float, help="Absolute lr; overrides --base_learning_rate.")
    optim.add_argument("--weight_decay", type=float, default=0.05)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.95)
    optim.add_argument("--warmup_ratio", type=float, default=0.05, help="Warmup fraction (MAE: 40 of 800 epochs).")
    optim.add_argument("--num_warmup_steps", type=int, help="Overrides --warmup_ratio.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_grad_norm", type=float, default=None, help="Clip gradients (MAE pre-training: none).")
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    optim.add_argument("--num_train_epochs", type=int, default=20)
    optim.add_argument("--max_train_steps", type=int, help="Optimizer steps; overrides --num_train_epochs.")
    optim.add_argument("--per_device_train_batch_size", type=int, default=8)
    optim.add_argument("--per_device_eval_batch_size", type=int, default=8)
    optim.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="outputs/dilated-vit-mae-sample")
    run.add_argument("--overwrite_output_dir", action="store_true")
    run.add_argument("--checkpointing_steps", default="epoch", help='"epoch", a number of steps, or "no".')
    run.add_argument("--checkpoints_total_limit", type=int, default=3)
    run.add_argument("--resume_from_checkpoint", help='A checkpoint folder or "latest".')
    run.add_argument("--eval_every_epochs", type=int, default=1, help="0 evaluates only at the end.")
    run.add_argument("--num_grid_images", type=int, default=8)
    run.add_argument("--logging_steps", type=int, default=1)
    run.add_argument("--with_tracking", action="store_true")
    run.add_argument("--report_to", default="tensorboard", help='"tensorboard", "wandb", "all", ... (accelerate).')
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id")
    run.add_argument("--hub_token")
    run.add_argument("--hub_private_repo", action="store_true")
    run.add_argument("--hub_revision", help="Branch to push to (created if missing); default main.")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded (tokens redacted) in all_results.json

    sources = [s for s in (args.dataset_name, args.celeba_dir, args.train_dir) if s]
    if len(sources) > 1:
        parser.error("Give one data source: --dataset_name, --celeba_dir or --train_dir.")
    if not sources:
        args.celeba_dir = str(DEFAULT_CELEBA_DIR)
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no length to count epochs).")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. your-name/dilated-vit-mae-celeba).")
    if args.checkpointing_steps not in ("epoch", "no") and not args.checkpointing_steps.isdigit():
        parser.error(f'--checkpointing_steps must be "epoch", "no" or a number, got {args.checkpointing_steps!r}.')
    return args


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
    return config


def load_datasets(args: argparse.Namespace) -> datasets.DatasetDict:
    source = args.dataset_name or args.celeba_dir or args.train_dir
    splits = load_celeba(
        source,
        config_name=args.dataset_config_name,
        streaming=args.streaming,
        on_bad_image=args.on_bad_image,
        num_workers=args.preprocessing_num_workers,
        cache_dir=args.cache_dir,
        token=args.token,
    )
    if args.image_column_name not in splits["train"].column_names:
        raise ValueError(
            f"--image_column_name {args.image_column_name!r} is not a column of {source}; it has "
            f"{splits['train'].column_names}."
        )
    selected = {"train": args.max_train_samples, "validation": args.max_eval_samples}
    output = {}
    for split, limit in selected.items():
        dataset = splits[split]
        if limit is not None:
            dataset = dataset.take(limit) if args.streaming else dataset.select(range(min(limit, len(dataset))))
        if not args.streaming:
            # an example's index fixes its augmentation and its mask, whatever batch or process it lands in
            dataset = dataset.add_column("sample_index", list(range(len(dataset))))
        output[split] = dataset
    return datasets.DatasetDict(output) if not args.streaming else output


def main(args: argparse.Namespace) -> Path:
    # ---- accelerator -------------------------------------------------------------------------------------------------
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        # seeded, epoch-aware shuffling (set_epoch), saved with the state: resume continues the same order
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if int(os.environ.get("WORLD_SIZE", "1")) > accelerator.num_processes:
        raise RuntimeError(
            f"The launcher started {os.environ['WORLD_SIZE']} processes but accelerate sees {accelerator.num_processes}: "
            "each would train its own copy into the same folder. On CPU, launch with ACCELERATE_USE_CPU=true (see "
            "docs/distributed.md)."
        )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    checkpoints = CheckpointManager(output_dir / "checkpoints", args.checkpoints_total_limit)
    if (
        not args.resume_from_checkpoint
        and not args.overwrite_output_dir
        and checkpoints.latest() is not None
    ):
        raise FileExistsError(
            f"{output_dir} already has checkpoints; pass --resume_from_checkpoint latest to continue, or "
            "--overwrite_output_dir to start over."
        )

    # ---- seed --------------------------------------------------------------------------------------------------------
    set_seed(args.seed)

    # ---- model and image processor -----------------------------------------------------------------------------------
    config = build_config(args)
    processor_name = args.image_processor_name or args.model_name_or_path or args.config_name or str(DEFAULT_CONFIG)
    try:
        image_processor = DilatedViTMAEImageProcessor.from_pretrained(processor_name, token=args.token, revision=args.revision)
    except OSError:
        height, width = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        image_processor = DilatedViTMAEImageProcessor(
            size={"shortest_edge": min(height, width)}, crop_size={"height": height, "width": width}, num_channels=config.num_channels
        )
    model_kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    if args.model_name_or_path:
        model = DilatedViTMAEForPreTraining.from_pretrained(
            args.model_name_or_path, config=config, revision=args.revision, token=args.token, cache_dir=args.cache_dir, **model_kwargs
        )
    else:
        model = DilatedViTMAEForPreTraining._from_config(config, **model_kwargs)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    num_patches = model.vit.embeddings.patch_embeddings.num_patches

    # ---- data --------------------------------------------------------------------------------------------------------
    with accelerator.main_process_first():
        splits = load_datasets(args)
    crop = image_processor.crop_size
    image_size = (crop["height"], crop["width"])
    transform_kwargs = dict(image_mean=image_processor.image_mean, image_std=image_processor.image_std, num_channels=config.num_channels)
    train_augmentation = SeededAugmentation(MAETrainTransform(image_size, **transform_kwargs), args.seed, args.image_column_name)
    eval_transform = IndexedTransform(MAEEvalTransform.from_image_processor(image_processor), args.image_column_name)
    splits["train"].set_transform(train_augmentation)
    splits["validation"].set_transform(eval_transform)
    loader_kwargs = dict(collate_fn=collate_indexed, num_workers=args.dataloader_num_workers, pin_memory=torch.cuda.is_available())
    train_dataloader = DataLoader(splits["train"], shuffle=True, batch_size=args.per_device_train_batch_size, **loader_kwargs)
    eval_dataloader = DataLoader(splits["validation"], batch_size=args.per_device_eval_batch_size, **loader_kwargs)

    # ---- optimizer and schedule --------------------------------------------------------------------------------------
    effective_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    learning_rate = args.learning_rate or args.base_learning_rate * effective_batch_size / 256
    logger.info(
        f"effective batch size {effective_batch_size} = {args.per_device_train_batch_size} per device x "
        f"{accelerator.num_processes} processes x {args.gradient_accumulation_steps} accumulation; "
        f"lr = {learning_rate:.3g}" + ("" if args.learning_rate else f" (blr {args.base_learning_rate:.3g} x {effective_batch_size} / 256)")
    )
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, args.weight_decay), lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2)
    )
    if args.streaming:
        steps_per_epoch = args.max_train_steps
    else:
        batches_per_process = math.ceil(len(splits["train"]) / (args.per_device_train_batch_size * accelerator.num_processes))
        steps_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    num_warmup_steps = args.num_warmup_steps if args.num_warmup_steps is not None else round(args.warmup_ratio * max_train_steps)
    # the prepared scheduler steps once per process at every optimizer step (accelerate's convention)
    lr_scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps * accelerator.num_processes, max_train_steps * accelerator.num_processes
    )

    # ---- accelerator.prepare -----------------------------------------------------------------------------------------
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    if args.with_tracking:
        accelerator.init_trackers("dilated_vit_mae", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    # ---- resume ------------------------------------------------------------------------------------------------------
    global_step, start_epoch, batches_done_in_epoch = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = checkpoints.resolve(args.resume_from_checkpoint)
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        global_step, start_epoch, batches_done_in_epoch = state["global_step"], state["epoch"], state["batches_done_in_epoch"]
        if state["num_processes"] != accelerator.num_processes or state["effective_batch_size"] != effective_batch_size:
            logger.warning(
                f"Resuming a run saved with {state['num_processes']} processes and effective batch "
                f"{state['effective_batch_size']} on {accelerator.num_processes} / {effective_batch_size}: the run "
                "continues, but it will not reproduce the uninterrupted one."
            )
        logger.info(f"resumed from {checkpoint} at step {global_step} (epoch {start_epoch}, batch {batches_done_in_epoch})")

    # ---- preemption: SIGTERM saves a checkpoint at the next step and exits -------------------------------------------
    preempted = {"flag": False}

    def request_stop(signum, frame):
        preempted["flag"] = True

    signal.signal(signal.SIGTERM, request_stop)

    def trainer_state(epoch: int, batches_done: int) -> dict:
        return {
            "global_step": global_step,
            "epoch": epoch,
            "batches_done_in_epoch": batches_done,
            "max_train_steps": max_train_steps,
            "num_processes": accelerator.num_processes,
            "effective_batch_size": effective_batch_size,
            "learning_rate": learning_rate,
            "seed": args.seed,
        }

    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    def log(values: dict, step: int) -> None:
        if args.with_tracking:
            accelerator.log(values, step=step)
        if accelerator.is_main_process:
            with log_path.open("a") as file:
                file.write(json.dumps({"step": step, **values}) + "\n")

    # ---- loop --------------------------------------------------------------------------------------------------------
    progress = tqdm(
        total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="pre-training"
    )
    unwrapped = accelerator.unwrap_model(model)
    images_seen = 0
    eval_results: dict = {}
    stop_reason = None
    loop_start = time.perf_counter()  # this process's time in the loop (a resumed run: since it resumed)
    for epoch in range(start_epoch, num_epochs):
        if global_step >= max_train_steps or stop_reason:
            break
        model.train()
        train_augmentation.epoch = epoch
        train_dataloader.set_epoch(epoch)
        skip = batches_done_in_epoch if epoch == start_epoch else 0
        active_dataloader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        tick, batches_done, at_epoch_end = time.perf_counter(), skip, False
        for batch in active_dataloader:
            noise = masking_noise(batch["sample_index"], num_patches, args.seed, epoch).to(accelerator.device)
            with accelerator.accumulate(model):
                loss = model(pixel_values=batch["pixel_values"], noise=noise).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            batches_done += 1
            images_seen += batch["pixel_values"].shape[0]
            if not accelerator.sync_gradients:
                continue

            global_step += 1
            progress.update(1)
            # one collective a step: the mean loss (for the log and the finiteness check) and the stop request
            status = torch.tensor([loss.detach().float().item(), float(preempted["flag"])], device=accelerator.device)
            status = accelerator.reduce(status, reduction="sum")
            step_loss = status[0].item() / accelerator.num_processes
            if not math.isfinite(step_loss):
                last = checkpoints.latest()
                raise RuntimeError(
                    f"Loss is {step_loss} at step {global_step} (epoch {epoch}); stopping. The last good checkpoint is "
                    f"{last or 'none (no checkpoint was written yet)'}: lower the learning rate, check the data or use "
                    "--mixed_precision bf16 instead of fp16, then resume with --resume_from_checkpoint."
                )
            if global_step % args.logging_steps == 0 or global_step == max_train_steps:
                elapsed = time.perf_counter() - tick
                log(
                    {
                        "train_loss": step_loss,
                        "lr": lr_scheduler.get_last_lr()[0],
                        "images_per_second": images_seen * accelerator.num_processes / max(elapsed, 1e-9),
                        "epoch": epoch,
                    },
                    step=global_step,
                )
                tick, images_seen = time.perf_counter(), 0
                progress.set_postfix(loss=f"{step_loss:.4f}")

            at_epoch_end = accelerator.gradient_state.end_of_dataloader
            stop = status[1].item() > 0
            periodic = args.checkpointing_steps.isdigit() and global_step % int(args.checkpointing_steps) == 0
            if stop or (periodic and not at_epoch_end):  # epoch ends are saved after the epoch, below
                state = trainer_state(epoch + 1, 0) if at_epoch_end else trainer_state(epoch, batches_done)
                checkpoints.save(accelerator, global_step, state)
            if stop:
                stop_reason = "preempted"
                break
            if global_step >= max_train_steps:
                break
        if stop_reason:
            break

        already_saved = (checkpoints.latest() or Path("step_-1")).name == f"step_{global_step}"
        if not already_saved and (
            args.checkpointing_steps == "epoch"
            or (args.checkpointing_steps.isdigit() and global_step % int(args.checkpointing_steps) == 0)
        ):
            # a finished epoch is saved as the start of the next one; a run that reached max_train_steps mid-epoch
            # is saved where it stopped, so that a resume with more steps continues the same epoch
            state = trainer_state(epoch + 1, 0) if at_epoch_end else trainer_state(epoch, batches_done)
            checkpoints.save(accelerator, global_step, state)

        # ---- evaluate ------------------------------------------------------------------------------------------------
        last_epoch = epoch == num_epochs - 1 or global_step >= max_train_steps
        if last_epoch or (args.eval_every_epochs and (epoch + 1) % args.eval_every_epochs == 0):
            eval_results = evaluate(args, accelerator, model, unwrapped, eval_dataloader, image_processor, num_patches, epoch)
            log({f"eval_{k}": v for k, v in eval_results.items()}, step=global_step)

    progress.close()
    if stop_reason == "preempted":
        logger.info(
            f"SIGTERM: saved {checkpoints.latest()} at step {global_step}; continue with --resume_from_checkpoint latest."
        )
        accelerator.end_training()
        return output_dir

    # ---- save --------------------------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(
        output_dir,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=accelerator.get_state_dict(model),
    )
    if accelerator.is_main_process:
        image_processor.save_pretrained(output_dir)
        summary = run_summary(
            args, accelerator, splits, global_step=global_step, num_epochs=num_epochs,
            effective_batch_size=effective_batch_size, learning_rate=learning_rate, num_warmup_steps=num_warmup_steps,
            eval_results=eval_results, train_runtime_seconds=time.perf_counter() - loop_start,
        )  # fmt: skip
        (output_dir / "all_results.json").write_text(json.dumps(summary, indent=2))
        # every output folder is publishable as it is: reconstruction pipeline, endpoint handler, model card
        prepare_hub_folder(output_dir, repo_id=args.hub_model_id)
        logger.info(f"saved the model, image processor and model card to {output_dir}")
        if args.push_to_hub:
            # refuses (FolderCheckError) a folder that does not load without the package; local files stay as they are
            url = push_folder_to_hub(
                output_dir,
                repo_id=args.hub_model_id,
                token=args.hub_token,
                private=args.hub_private_repo,
                revision=args.hub_revision,
                commit_message=f"Pre-training: {global_step} steps",
            )
            logger.info(f"pushed {output_dir} to {args.hub_model_id}: {url}")
    logger.info(f"rank {accelerator.process_index} finished: {global_step} steps", main_process_only=False)
    accelerator.end_training()
    return output_dir


def run_summary(
    args: argparse.Namespace,
    accelerator: Accelerator,
    splits,
    *,
    global_step: int,
    num_epochs: int,
    effective_batch_size: int,
    learning_rate: float,
    num_warmup_steps: int,
    eval_results: dict,
    train_runtime_seconds: float | None = None,
) -> dict:
    """`all_results.json`: what the run did and measured, which the model card is rendered from."""
    source = args.dataset_name or args.celeba_dir or args.train_dir
    if args.dataset_name:
        name, is_celeba = args.dataset_name, "celeba" in args.dataset_name.lower()
        description = f"[{name}](https://huggingface.co/datasets/{name})" + (
            f" (configuration `{args.dataset_config_name}`)." if args.dataset_config_name else "."
        )
    elif args.celeba_dir and Path(args.celeba_dir).resolve() == DEFAULT_CELEBA_DIR.resolve():
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
        name, is_celeba = Path(source).name, False
        description = f"the image folder `{Path(source).name}`."

    def num_examples(split: str) -> int | None:
        try:
            return len(splits[split])
        except TypeError:  # a stream has no length
            return None

    device = accelerator.device
    script = sys.argv[0] if sys.argv and Path(sys.argv[0]).name == "run_mae.py" else "scripts/run_mae.py"
    return {
        "global_step": global_step,
        "epochs": num_epochs,
        "num_processes": accelerator.num_processes,
        "effective_batch_size": effective_batch_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "base_learning_rate": None if args.learning_rate else args.base_learning_rate,
        "adam_betas": [args.adam_beta1, args.adam_beta2],
        "weight_decay": args.weight_decay,
        "warmup_steps": num_warmup_steps,
        "seed": args.seed,
        "init": args.model_name_or_path,
        # the launcher's own flags are not visible to the script: hardware below says how it ran
        "command": redact_command(["accelerate", "launch", script, *args.argv]),
        "dataset": {
            "name": name,
            "hub_id": args.dataset_name,
            "config_name": args.dataset_config_name,
            "source": str(source),
            "is_celeba": is_celeba,
            "description": description,
            "train_split": "train",
            "train_samples": num_examples("train"),
            "eval_split": "validation",
            "eval_samples": num_examples("validation"),
        },
        "hardware": {
            "device_type": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "distributed_type": getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type)),
            # training and evaluation loop of this run (a resumed run counts from its resumption)
            "train_runtime_seconds": train_runtime_seconds,
        },
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__, "accelerate": accelerate.__version__},
        "eval_samples": num_examples("validation"),
        "eval_mask_seed": args.seed + EVAL_SEED_OFFSET,
        **{f"eval_{k}": v for k, v in eval_results.items()},
    }


@torch.no_grad()
def evaluate(args, accelerator, model, unwrapped, eval_dataloader, image_processor, num_patches, epoch) -> dict:
    """Masked-patch MSE and PSNR of the re-composited image on the validation split, with fixed per-example masks."""
    model.eval()
    masked_mse = load_metric("masked_patch_mse", keep_in_memory=True) if accelerator.is_main_process else None
    psnr = load_metric("psnr", keep_in_memory=True) if accelerator.is_main_process else None
    # metrics are computed batch by batch and averaged over images (every image has as many masked pixels), so that
    # memory stays flat on the full validation split
    totals, num_images, grid = {"loss": 0.0, "masked_patch_mse": 0.0, "psnr": 0.0}, 0, None
    for batch in eval_dataloader:
        noise = masking_noise(batch["sample_index"], num_patches, args.seed + EVAL_SEED_OFFSET).to(accelerator.device)
        outputs = model(pixel_values=batch["pixel_values"], noise=noise)
        images = reconstruction_images(
            unwrapped, batch["pixel_values"], outputs.logits, outputs.mask, image_processor.image_mean, image_processor.image_std
        )
        batch_size = batch["pixel_values"].shape[0]
        # every image has the same number of masked pixels, so they stack into (B, n)
        masked_pred = images["reconstruction"][images["pixel_mask"].bool()].reshape(batch_size, -1)
        masked_true = images["original"][images["pixel_mask"].bool()].reshape(batch_size, -1)
        gathered = accelerator.gather_for_metrics(
            (masked_pred, masked_true, images["recomposited"].flatten(1), images["original"].flatten(1),
             outputs.loss.detach().repeat(batch_size))
        )
        if accelerator.is_main_process:
            count = gathered[0].shape[0]
            batch_mse = masked_mse.compute(predictions=gathered[0].cpu().numpy(), references=gathered[1].cpu().numpy())
            batch_psnr = psnr.compute(predictions=gathered[2].cpu().numpy(), references=gathered[3].cpu().numpy(), data_range=1.0)
            totals["masked_patch_mse"] += batch_mse["masked_patch_mse"] * count
            totals["psnr"] += batch_psnr["psnr"] * count
            totals["loss"] += gathered[4].sum().item()
            num_images += count
        if grid is None:
            grid = reconstruction_grid(images, args.num_grid_images)
    model.train()
    if not accelerator.is_main_process:
        return {}
    results = {name: total / num_images for name, total in totals.items()}
    eval_dir = Path(args.output_dir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    grid.save(eval_dir / f"reconstructions_epoch_{epoch}.png")
    grid.save(eval_dir / "reconstructions.png")
    if args.with_tracking:
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("eval/reconstructions", np.asarray(grid.convert("RGB")), epoch, dataformats="HWC")
    logger.info(f"epoch {epoch}: " + ", ".join(f"eval_{k} {v:.4f}" for k, v in results.items()))
    return results


if __name__ == "__main__":
    main(parse_args())
