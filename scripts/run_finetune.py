#!/usr/bin/env python
"""Fine-tune a pre-trained DilatedViTMAE (or ViTMAE) encoder as an image classifier with MAE's recipe, with accelerate.

    accelerate launch scripts/run_finetune.py --model_name_or_path outputs/dilated-vit-mae-sample   # shipped sample
    accelerate launch scripts/run_finetune.py --model_name_or_path outputs/my-run --dataset_name flwrlabs/celeba \\
        --per_device_train_batch_size 128 --num_train_epochs 100 --mixed_precision bf16
    accelerate launch scripts/run_finetune.py --model_name_or_path facebook/vit-mae-base --dilation_rates \\
        --train_dir data/pets/train --validation_dir data/pets/val --mixup 0.8 --cutmix 1.0     # ViTMAE, any folders

MAE's recipe (`main_finetune.py` of facebookresearch/mae; `dilated_vit_mae.train.finetune.MAE_FINETUNE_RECIPE`): the whole
image is encoded, the patch tokens are averaged and normalised (`--classifier_pooling mean`, `fc_norm`), AdamW
(0.9, 0.999) with weight decay 0.05, lr = blr x batch / 256 (`--base_learning_rate` 5e-4) with layer-wise decay
(`--layer_decay` 0.75; MAE uses 0.65 for ViT-B) after `--warmup_epochs` 5 of linear warmup and a cosine decay,
stochastic depth (`--drop_path_rate` 0.1), label smoothing 0.1, mixup 0.8 / cutmix 1.0 (`--mixup`, `--cutmix`);
augmentation is RandomResizedCrop (`--crop_scale_min` 0.08) + horizontal flip + timm's RandAugment
(`--rand_augment rand-m9-mstd0.5-inc1`) + random erasing (`--random_erasing` 0.25), the last batch of an epoch dropped.
A training split of fewer than 10,000 images gets the small-data recipe instead (`--recipe auto`; `SMALL_DATA_RECIPE`):
the same at the peak lr MAE's recipe runs at, 2e-3 (blr 5e-4 x its batch 1024 / 256), whatever batch the set
allows (MAE's batch rule gives 150 images at batch 32 lr 6.3e-5), and no mixup / cutmix.
`--recipe mae` / `--recipe small_data` force one; any flag given wins over the recipe. Labels: CelebA's
40 attributes (multi-label: BCE, scored by the mean of per-attribute accuracies) when the data has them, else `celeb_id`
or an image folder's `label` (single-label: cross-entropy, top-1 accuracy); `--label_column` / `--label_columns` choose.

Every epoch the model is evaluated on `--eval_split` beside its trivial baselines (the majority class, and a logistic
regression on the raw pixels of the same split where that is cheap); the best one is kept (OUTPUT_DIR/checkpoints/best) and becomes
the output folder, which also reports it on `--test_split` when the data has one. Checkpoints and
`--resume_from_checkpoint latest` work as in `scripts/run_mae.py`: a resumed run reproduces the uninterrupted one
exactly (crops, mixup, drop path and batch order depend only on seed, epoch and batch). The output folder is a
publishable classifier: `AutoModelForImageClassification.from_pretrained(OUTPUT_DIR, trust_remote_code=True)` loads it
without this package, with `id2label`, a model card (README.md) and `all_results.json`.
"""

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import accelerate
import datasets
import safetensors.torch
import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForImageClassification  # noqa: E402
from dilated_vit_mae.data.seeding import (  # noqa: E402
    IndexedTransform,
    stable_seed,
)
from dilated_vit_mae.data.transforms import (  # noqa: E402
    MAETrainTransform,
    RandAugment,
    collate_examples,
    eval_view,
)
from dilated_vit_mae.evaluation.probe import probe_scores, raw_pixel_baseline  # noqa: E402
from dilated_vit_mae.publish.model_card import render_classifier_card  # noqa: E402
from dilated_vit_mae.train.core import (  # noqa: E402
    NOT_RUN_DEFINING,
    Run,
    Schedule,
    StepMeter,
    TrainerState,
    add_label_arguments,
    check_finite,
    check_shared_arguments,
    cosine_schedule,
    dataset_summary,
    load_config,
    load_image_processor,
    load_splits,
    start_run,
    summary_common,
    timed_batches,
    training_parser,
    training_schedule,
)
from dilated_vit_mae.train.distributed import load_full_state_dict, save_pretrained  # noqa: E402
from dilated_vit_mae.train.finetune import (  # noqa: E402
    LabelSpec,
    MixupCutmix,
    apply_lr_scale,
    batch_rng,
    classification_loss,
    resolve_recipe,
    labelled_splits,
    load_classifier,
    param_groups_lrd,
)
from dilated_vit_mae.train.lifecycle import (  # noqa: E402
    check_model_folder,
    checkpoint_bytes,
    fraction,
    non_negative_float,
    positive_float,
    probability,
    run_cli,
    stage_and_swap,
)

logger = get_logger(__name__)

BEST_DIR = "best"  # under OUTPUT_DIR/checkpoints: the best model so far (CheckpointManager keeps only step_N folders)
DROP_PATH_STREAM = 102  # the tag of the model's own random draws (drop path, dropout), reseeded every batch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser, groups = training_parser(
        __doc__,
        titles={"optim": "optimisation (MAE's fine-tuning recipe; the small-data recipe below 10,000 images)"},
        defaults={
            "dataloader_num_workers": 0, "adam_beta2": 0.999, "num_train_epochs": 100, "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64, "output_dir": "outputs/dilated-vit-mae-classifier",
            "checkpointing_steps": "epoch", "checkpoints_total_limit": 2, "logging_steps": 10,
        },
        helps={
            "train_dir": "An image folder (one subfolder per class, or a metadata.csv with labels).",
            "config_name": "Config to train from scratch (without --model_name_or_path).",
            "config_overrides": 'e.g. "hidden_dropout_prob=0.1" (config.update_from_string).',
            "base_learning_rate": "lr = blr x batch / 256 (MAE: 5e-4).",
            "learning_rate": "Absolute peak lr (small-data recipe: 2e-3).",
            "weight_decay": "AdamW weight decay (MAE: 0.05).",
            "num_warmup_steps": "Overrides --warmup_epochs.",
            "hub_model_id": "The repository id the model card names; publish with scripts/push_to_hub.py.",
        },
    )  # fmt: skip
    data, model, optim = groups["data"], groups["model"], groups["optim"]
    data.add_argument("--eval_split", default="validation", help="Split evaluated every epoch (best model selection).")
    data.add_argument("--test_split", default="test", help='Split the selected model is scored on at the end ("" for none).')
    add_label_arguments(data)

    model.add_argument("--classifier_pooling", choices=["mean", "cls"], default="mean", help="MAE: mean + fc_norm.")
    model.add_argument("--drop_path_rate", type=fraction, help="Stochastic depth (MAE ViT-B: 0.1).")

    optim.add_argument(
        "--recipe", choices=["auto", "mae", "small_data"], default="auto",
        help="Defaults of the flags below: MAE's, or the small-data recipe's (auto: below 10,000 training images).",
    )  # fmt: skip
    optim.add_argument("--layer_decay", type=positive_float, help="Layer-wise lr decay (1: none; MAE: 0.75).")
    optim.add_argument("--label_smoothing", type=probability, help="Single-label only (MAE: 0.1).")
    optim.add_argument("--mixup", type=non_negative_float, help="Mixup Beta alpha (MAE: 0.8; small-data: 0, off).")
    optim.add_argument("--cutmix", type=non_negative_float, help="Cutmix Beta alpha (MAE: 1.0; small-data: 0, off).")
    optim.add_argument("--mixup_prob", type=probability, default=1.0, help="Probability of mixing a batch.")
    optim.add_argument("--mixup_switch_prob", type=probability, default=0.5, help="Cutmix instead of mixup.")
    optim.add_argument("--crop_scale_min", type=probability, help="RandomResizedCrop's smallest area (MAE: 0.08).")
    optim.add_argument(
        "--rand_augment", help='timm RandAugment config (MAE: "rand-m9-mstd0.5-inc1"; "none": off).'
    )  # fmt: skip
    optim.add_argument("--random_erasing", type=probability, help="Random erasing probability (MAE: 0.25; 0: off).")
    optim.add_argument("--warmup_epochs", type=non_negative_float, help="Linear warmup (MAE: 5).")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded (secrets redacted) in all_results.json

    check_shared_arguments(parser, args)
    if not args.model_name_or_path and not args.config_name:
        parser.error("Give --model_name_or_path (a pre-training checkpoint) or --config_name (to train from scratch).")
    if any(rate < 2 for rate in args.dilation_rates or ()):
        parser.error(f"--dilation_rates must be >= 2 (none at all for ViTMAE), got {args.dilation_rates}.")
    if args.layer_decay is not None and args.layer_decay > 1:
        parser.error(f"--layer_decay must be in (0, 1] (1 disables it), got {args.layer_decay}.")
    if args.rand_augment not in (None, "none"):
        try:
            RandAugment(args.rand_augment)
        except ValueError as error:
            parser.error(f"--rand_augment: {error}")
    return args


def apply_recipe(args: argparse.Namespace, num_train: int) -> None:
    """Fill the recipe flags not given: MAE's recipe, or the small-data one on a small training split."""
    args.recipe_name, values = resolve_recipe(num_train, args.recipe, vars(args))
    vars(args).update(values)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def image_dataset(dataset: datasets.Dataset, transform, image_column: str) -> datasets.Dataset:
    """Images only, with each example's index (which fixes its augmentation and finds its labels)."""
    dataset = dataset.select_columns([image_column]).add_column("sample_index", list(range(len(dataset))))
    dataset.set_transform(transform)
    return dataset


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------


def build_config(args: argparse.Namespace, labels: LabelSpec) -> DilatedViTMAEConfig:
    """The pre-training config (ours, or a ViTMAE one read as ours), with the classifier's fields."""
    return load_config(
        args, args.model_name_or_path or args.config_name, ("dilation_rates", "dilated_context"),
        drop_path_rate=args.drop_path_rate, classifier_pooling=args.classifier_pooling,
        mask_ratio=0.0,  # a classifier encodes whole images; AutoModel on its folder then gives whole-image features
        id2label=labels.id2label, label2id=labels.label2id, problem_type=labels.problem_type,
    )  # fmt: skip


def build_model(args: argparse.Namespace, config: DilatedViTMAEConfig) -> DilatedViTMAEForImageClassification:
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    if args.model_name_or_path:
        model = load_classifier(
            args.model_name_or_path, config, revision=args.revision, token=args.token, cache_dir=args.cache_dir, **kwargs
        )
    else:
        model = DilatedViTMAEForImageClassification._from_config(config, **kwargs)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ----------------------------------------------------------------------------------------------------------------------


def build_optimizer(args: argparse.Namespace, model, schedule: Schedule, num_processes: int):
    """AdamW over MAE's layer-decayed groups, with the cosine schedule."""
    groups = apply_lr_scale(param_groups_lrd(model, args.weight_decay, args.layer_decay), schedule.learning_rate)
    for group in groups:
        group.pop("param_names")
    optimizer = torch.optim.AdamW(groups, lr=schedule.learning_rate, betas=(args.adam_beta1, args.adam_beta2))
    return optimizer, cosine_schedule(optimizer, schedule, num_processes)


@dataclasses.dataclass
class FinetuningState(TrainerState):
    """The checkpoint's trainer state: where the run is (`core.TrainerState`), the best epoch so far and every
    evaluation."""

    best_metric: float = -math.inf
    best_scores: dict = dataclasses.field(default_factory=dict)
    best_epoch: int | None = None
    best_step: int | None = None
    history: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FinetuningRun(Run):
    """The run (`core.Run`: context, model, optimizer, schedule, state) and what fine-tuning adds to it (`data`:
    `prepare_data`'s loaders, augmentation, labels and baselines)."""

    data: dict
    labels: LabelSpec


# ----------------------------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------------------------


def train_step(run: FinetuningRun, batch, targets, mixup: MixupCutmix, draw: tuple) -> torch.Tensor:
    """One (micro-)batch: mixup / cutmix, forward, loss, backward, and the optimizer step when gradients sync."""
    args, accelerator, model = run.args, run.accelerator, run.model
    pixel_values = batch["pixel_values"]
    if mixup.enabled:
        pixel_values, targets = mixup(pixel_values, targets, batch_rng(*draw))
    # the model's own randomness (drop path) is a function of the batch, not of the history of the global RNG
    torch.manual_seed(stable_seed(DROP_PATH_STREAM, *draw))
    with accelerator.accumulate(model):
        logits = model(pixel_values=pixel_values).logits
        loss = classification_loss(logits, targets, run.labels.task, args.label_smoothing)
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad()
    return loss.detach()


@torch.no_grad()
def evaluate(accelerator, model, dataloader, references: torch.Tensor, train_labels: torch.Tensor, labels: LabelSpec) -> dict:
    """The split's accuracy (single-label) or mean attribute accuracy (multi-label), the majority-class floor and the
    loss, on the main process (`{}` elsewhere)."""
    model.eval()
    logits, indices = [], []
    for batch in dataloader:
        batch_logits = model(pixel_values=batch["pixel_values"]).logits.float()
        batch_logits, batch_indices = accelerator.gather_for_metrics((batch_logits.contiguous(), batch["sample_index"]))
        logits.append(batch_logits.cpu())
        indices.append(batch_indices.cpu())
    model.train()
    if not accelerator.is_main_process:
        return {}
    logits = torch.cat(logits)[torch.cat(indices).argsort()]  # dataset order
    if labels.task == "multi_label":
        predictions, valid = (logits > 0).long(), slice(None)
    else:
        predictions, valid = logits.argmax(dim=-1), references >= 0  # -1: a class never seen in training
    scores = probe_scores(
        predictions, references, task=labels.task, train_labels=train_labels, attribute_names=labels.columns
    )
    scores["loss"] = classification_loss(logits[valid], references[valid], labels.task).item()
    return scores


def metric_name(labels: LabelSpec) -> str:
    return "mean_attribute_accuracy" if labels.task == "multi_label" else "accuracy"


DISK_FULL_RESUME_ADVICE = (
    "Free some space (or set a smaller --checkpoints_total_limit), then continue with --resume_from_checkpoint latest."
)


def save_best(accelerator, model, checkpoints_dir: Path) -> None:
    """The model's weights and config into `checkpoints/best`, staged and swapped in: a full disk leaves the previous
    best model as it was and raises `DiskWriteError` (every process must call this)."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)

        def write_best(staging: Path) -> None:
            save_pretrained(unwrapped, staging / BEST_DIR, state_dict, save_function=accelerator.save)

        stage_and_swap(
            checkpoints_dir, write_best, marker=BEST_DIR, expected_bytes=checkpoint_bytes(unwrapped),
            what="the best model", advice=DISK_FULL_RESUME_ADVICE,
        )  # fmt: skip
    accelerator.wait_for_everyone()


def load_best(accelerator, model, checkpoints_dir: Path) -> None:
    state_dict = safetensors.torch.load_file(str(checkpoints_dir / BEST_DIR / "model.safetensors"))
    load_full_state_dict(accelerator, model, state_dict)  # into each rank's shards under FSDP2


# ----------------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------------


def run_summary(run: FinetuningRun, splits, final: dict) -> dict[str, Any]:
    """`all_results.json`: what the run did and measured, beside its trivial baselines; the model card is rendered from
    it."""
    args, state, labels, baselines = run.args, run.state, run.labels, run.data["baselines"]
    metric = metric_name(labels)
    sizes = {split: len(dataset) for split, dataset in splits.items()}
    return {
        "task": labels.task,
        "metric_name": metric,
        "eval_split": args.eval_split,
        **{f"eval_{key}": value for key, value in state.best_scores.items()},
        "eval_raw_pixel_baseline": baselines.get(args.eval_split),
        **({"test_raw_pixel_baseline": baselines.get(args.test_split)} if final else {}),
        "raw_pixel_baseline": {
            "model": "logistic regression (L2, C=1, L-BFGS) on the standardised pixels of the evaluation view",
            "skipped": baselines.get("skipped"),
        },
        "best_epoch": state.best_epoch,
        "best_step": state.best_step,
        "last_eval": state.history[-1] if state.history else None,
        "eval_history": state.history,
        **({"test_split": args.test_split, **{f"test_{k}": v for k, v in final.items()}} if final else {}),
        "labels": {"task": labels.task, "num_labels": labels.num_labels, "columns": labels.columns},
        **summary_common(
            args, run.accelerator, state, run.schedule, learning_rate=run.schedule.learning_rate,
            script="scripts/run_finetune.py",
        ),  # fmt: skip
        "layer_decay": args.layer_decay,
        "drop_path_rate": args.drop_path_rate,
        "classifier_pooling": args.classifier_pooling,
        "label_smoothing": args.label_smoothing if labels.task == "single_label" else None,
        "mixup": args.mixup,
        "cutmix": args.cutmix,
        "recipe": args.recipe_name,
        "rand_augment": args.rand_augment,
        "random_erasing": args.random_erasing,
        "crop_scale_min": args.crop_scale_min,
        "drop_last": True,
        "init_is_hub_id": bool(args.model_name_or_path) and not Path(args.model_name_or_path).expanduser().exists(),
        "dataset": dataset_summary(args, sizes, args.eval_split),
    }


def save_folder(run: FinetuningRun, image_processor, summary: dict) -> None:
    """The publishable classifier folder (every process): the selected weights, processor, code, all_results.json and
    README.md, staged and swapped in all at once (`core.RunContext.save_final`): a full disk leaves no part of it under
    OUTPUT_DIR and raises `DiskWriteError`."""
    # the pre-training folder's custom pipelines (reconstruction, features) need code a classifier folder does not
    # ship; transformers' image-classification pipeline serves it
    unwrapped = run.accelerator.unwrap_model(run.model)
    if hasattr(unwrapped.config, "custom_pipelines"):
        del unwrapped.config.custom_pipelines

    def write_card(folder: Path) -> None:
        render_classifier_card(json.loads((folder / "all_results.json").read_text()), repo_id=run.args.hub_model_id).save(
            folder / "README.md"
        )

    run.context.save_final(run.model, image_processor, summary, write_card, advice=DISK_FULL_RESUME_ADVICE)


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------


def prepare_data(args, accelerator, config, image_processor, labels: LabelSpec, splits) -> dict[str, Any]:
    """Dataloaders of every split and each split's label tensor (indexed by `sample_index`)."""
    crop = image_processor.crop_size
    train_augmentation = IndexedTransform(
        MAETrainTransform(
            (crop["height"], crop["width"]), image_mean=image_processor.image_mean, image_std=image_processor.image_std,
            num_channels=config.num_channels, scale=(args.crop_scale_min, 1.0), rand_augment=args.rand_augment,
            random_erasing=args.random_erasing,
        ),
        args.image_column_name, seed=args.seed,
    )  # fmt: skip
    eval_transform = IndexedTransform(eval_view(image_processor), args.image_column_name)
    loader_kwargs = dict(collate_fn=collate_examples, num_workers=args.dataloader_num_workers, pin_memory=torch.cuda.is_available())
    loaders = {
        "train": DataLoader(
            image_dataset(splits["train"], train_augmentation, args.image_column_name), shuffle=True,
            batch_size=args.per_device_train_batch_size, drop_last=True, **loader_kwargs,  # MAE's drop_last
        )
    }  # fmt: skip
    for split in splits:
        if split != "train":
            dataset = image_dataset(splits[split], eval_transform, args.image_column_name)
            loaders[split] = DataLoader(dataset, batch_size=args.per_device_eval_batch_size, **loader_kwargs)
    return {
        "loaders": loaders,
        "augmentation": train_augmentation,
        "labels": {split: labels.encode(dataset) for split, dataset in splits.items()},
    }


def raw_pixel_baselines(args, accelerator, image_processor, labels: LabelSpec, splits, encoded: dict) -> dict[str, Any]:
    """The raw-pixel logistic regression of every evaluated split (`{split: score}`), or why it was skipped (`{"skipped":
    reason}`), on the main process (`{}` elsewhere): the baseline every fine-tuning figure is reported beside."""
    if not accelerator.is_main_process:
        return {}
    others = {split: dataset for split, dataset in splits.items() if split != "train"}
    scores = raw_pixel_baseline(
        splits["train"], encoded["train"], others, {split: encoded[split] for split in others},
        transform=eval_view(image_processor), image_column=args.image_column_name,
        task=labels.task, num_outputs=labels.num_labels,
    )  # fmt: skip
    return {"skipped": scores} if isinstance(scores, str) else scores


def baseline_text(scores: dict, baselines: dict, split: str) -> str:
    """`majority floor 0.5600, raw-pixel linear 0.9800` for a log line."""
    raw = baselines.get(split)
    return f"majority floor {scores.get('majority_baseline', 0.0):.4f}, raw-pixel linear " + (
        f"{raw:.4f}" if raw is not None else "not computed"
    )


def main(args: argparse.Namespace) -> Path:
    # ---- accelerator, seed -------------------------------------------------------------------------------------------
    # a checkpoint, a data folder or another model given as the model is named before the run folder is written
    model_flag = "--model_name_or_path" if args.model_name_or_path else "--config_name"
    check_model_folder(args.model_name_or_path or args.config_name, flag=model_flag)
    # refuses a folder holding an earlier run before anything is written; the accelerator, run.json, the seed
    context = start_run(args, NOT_RUN_DEFINING)
    accelerator = context.accelerator

    # ---- data, labels, model -----------------------------------------------------------------------------------------
    with accelerator.main_process_first():
        optional = [args.test_split] if args.test_split else []
        splits = datasets.DatasetDict(load_splits(args, eval_split=args.eval_split, optional=optional))
    splits, labels = labelled_splits(splits, args.label_column, args.label_columns, args.on_missing_label)
    apply_recipe(args, len(splits["train"]))  # the recipe for the number of labelled training images
    config = build_config(args, labels)
    model = build_model(args, config)
    image_processor = load_image_processor(args, config, args.model_name_or_path or args.config_name)
    data = prepare_data(args, accelerator, config, image_processor, labels, splits)
    logger.info(f"{labels.task}: {labels.num_labels} labels from {labels.columns[:3]}{'...' if len(labels.columns) > 3 else ''}")
    logger.info(f"recipe {args.recipe_name} ({len(splits['train'])} training images)")
    data["baselines"] = raw_pixel_baselines(args, accelerator, image_processor, labels, splits, data["labels"])

    # ---- optimizer, schedule, prepare, resume ------------------------------------------------------------------------
    schedule = training_schedule(
        args, accelerator.num_processes, len(splits["train"]), drop_last=True, warmup_epochs=args.warmup_epochs
    )
    optimizer, lr_scheduler = build_optimizer(args, model, schedule, accelerator.num_processes)
    model, optimizer, lr_scheduler, *loaders = accelerator.prepare(model, optimizer, lr_scheduler, *data["loaders"].values())
    data["loaders"] = dict(zip(data["loaders"], loaders))
    state = FinetuningState(
        max_train_steps=schedule.max_train_steps, num_processes=accelerator.num_processes,
        effective_batch_size=schedule.effective_batch_size, seed=args.seed, run_id=context.identity.run_id,
        run_fingerprint=context.identity.fingerprint,
    )  # fmt: skip
    run = FinetuningRun(context, model, optimizer, lr_scheduler, schedule, state, data, labels)
    context.init_trackers("dilated_vit_mae_finetune")
    if args.resume_from_checkpoint:
        context.resume(state)

    # ---- loop, evaluate every epoch, keep the best -------------------------------------------------------------------
    run.start_clock()
    train(run)
    run.record_runtime()

    # ---- the selected model, its test score, the folder --------------------------------------------------------------
    accelerator.wait_for_everyone()
    load_best(accelerator, model, context.checkpoints.checkpoints_dir)
    final = {}
    if args.test_split in data["loaders"]:
        final = evaluate(accelerator, model, data["loaders"][args.test_split], data["labels"][args.test_split],
                         data["labels"]["train"], labels)  # fmt: skip
    save_folder(run, image_processor, run_summary(run, splits, final))
    metric = metric_name(labels)
    scored = [(args.eval_split, state.best_scores)] + ([(args.test_split, final)] if final else [])
    logger.info(
        f"saved the classifier (best epoch {state.best_epoch}) to {args.output_dir}: "
        + "; ".join(f"{split} {metric} {scores.get(metric, 0.0):.4f} ({baseline_text(scores, data['baselines'], split)})"
                    for split, scores in scored)
    )  # fmt: skip
    accelerator.end_training()
    return context.output_dir


def train(run: FinetuningRun) -> None:
    """The training loop, from `run.state` (updated in place). The loss stays on the device
    (`StepMeter`) and is read only at logging, checkpoint and epoch-end steps."""
    args, accelerator, state, data = run.args, run.accelerator, run.state, run.data
    train_loader = data["loaders"]["train"]
    train_targets = data["labels"]["train"].to(accelerator.device)  # indexed on the device: no copy back per batch
    mixup = MixupCutmix(
        args.mixup, args.cutmix, num_classes=run.labels.num_labels, task=run.labels.task, prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob, label_smoothing=args.label_smoothing,
    )  # fmt: skip
    progress = tqdm(total=state.max_train_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    meter = StepMeter(accelerator.device)
    start_epoch = state.epoch
    for epoch in range(start_epoch, run.schedule.num_epochs):
        if state.global_step >= state.max_train_steps:
            break
        run.model.train()
        data["augmentation"].epoch = epoch
        train_loader.set_epoch(epoch)
        skip = state.batches_done_in_epoch if epoch == start_epoch else 0
        batches_done, at_epoch_end = skip, False
        for batch in timed_batches(accelerator.skip_first_batches(train_loader, skip) if skip else train_loader, meter):
            draw = (args.seed, epoch, batches_done, accelerator.process_index)
            loss = train_step(run, batch, train_targets[batch["sample_index"]], mixup, draw)
            meter.add(loss, state.global_step + 1, batch["pixel_values"].shape[0] * accelerator.num_processes)
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            at_epoch_end = accelerator.gradient_state.end_of_dataloader
            state.epoch, state.batches_done_in_epoch = (epoch + 1, 0) if at_epoch_end else (epoch, batches_done)
            if after_step(run, meter, epoch, at_epoch_end, progress):
                break

        # ---- evaluate, keep the best, then checkpoint the epoch (with the best so far in its state) ------------------
        end_epoch_evaluation(run, epoch)
        if args.checkpointing_steps != "no":
            run.save_checkpoint()
    progress.close()


def after_step(run: FinetuningRun, meter: StepMeter, epoch: int, at_epoch_end: bool, progress) -> bool:
    """The finiteness check, logging and periodic checkpoints at the end of a step (the host reads the device only
    here, and only at those steps); True at the last step."""
    args, step = run.args, run.state.global_step
    last = step >= run.state.max_train_steps
    logging_step = step % args.logging_steps == 0 or last
    periodic = isinstance(args.checkpointing_steps, int) and step % args.checkpointing_steps == 0
    if not (logging_step or periodic or at_epoch_end):  # epoch ends: checked before the evaluation and its checkpoint
        return False
    synced = meter.synchronise(run.accelerator)
    check_finite(synced, run.context.checkpoints)
    if logging_step:
        lr = run.lr_scheduler.get_last_lr()[-1]  # the head's (the last group)
        run.context.log({"train_loss": synced["last_loss"], "lr": lr, "epoch": epoch, **meter.reset_interval()}, step)
        progress.set_postfix(loss=f"{synced['last_loss']:.4f}")
    if periodic and not at_epoch_end:  # epoch ends are saved after the evaluation
        run.save_checkpoint()
    return last


def end_epoch_evaluation(run: FinetuningRun, epoch: int) -> None:
    args, accelerator, data, state = run.args, run.accelerator, run.data, run.state
    split = args.eval_split
    scores = evaluate(accelerator, run.model, data["loaders"][split], data["labels"][split], data["labels"]["train"], run.labels)
    metric = metric_name(run.labels)
    shared = [scores.get(metric, 0.0), scores.get("loss", 0.0)]
    accelerator.wait_for_everyone()
    shared = accelerate.utils.broadcast_object_list(shared)  # every process decides alike whether this is the best
    state.history.append({"epoch": epoch, "step": state.global_step, metric: shared[0], "loss": shared[1]})
    logger.info(
        f"epoch {epoch}: eval {metric} {shared[0]:.4f} ({baseline_text(scores, data['baselines'], split)}), "
        f"loss {shared[1]:.4f}"
    )
    run.context.log({f"eval_{metric}": shared[0], "eval_loss": shared[1], "epoch": epoch}, state.global_step)
    if shared[0] > state.best_metric:
        state.best_metric, state.best_epoch, state.best_step, state.best_scores = shared[0], epoch, state.global_step, scores
        save_best(accelerator, run.model, run.context.checkpoints.checkpoints_dir)


if __name__ == "__main__":
    run_cli(main, parse_args())
