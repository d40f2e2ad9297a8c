"""
Throughput of the pre-training input pipeline: JPEG decode + `MAETrainTransform`, in images per second.

Stages:
- `decode`: `PIL.Image.open(path).load()` in one process;
- `decode+transform`: decode and `MAETrainTransform` in one process (the per-worker cost);
- `dataloader`: `load_celeba(...)["train"]` with `MAEBatchTransform` + `MAECollator` in a `DataLoader`, for each
  `--num_workers` value (0 = in the main process). Timed after the first batch, so worker start-up is excluded.
- `training`: what the pipeline has to feed, measured in the same run: training steps (forward, backward, AdamW) of
  `DilatedViTMAEForPreTraining` built from `--model_config` (default: the main job's model) on one batch of the
  pipeline's output at `--train_batch_size`, in images per second. Each `dataloader` row is then also given as a
  multiple of it (`x training`): above 1, that loader configuration keeps up with the training loop.

On the shipped sample (`data/celeba_sample`, 40 training images) the split is repeated up to `--num_images`; point
`--celeba_dir` at a raw CelebA download to measure real files (page cache state matters: run twice).

    python benchmarks/bench_data_pipeline.py --num_workers 0 2 4 --output_json outputs/bench_data_pipeline.json
    python benchmarks/bench_data_pipeline.py --image_size 64 --train_batch_size 8   # the main job's sizes
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import datasets
import PIL
import PIL.Image
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining  # noqa: E402
from dilated_vit_mae.data import CELEBA_SAMPLE_DIR, load_celeba  # noqa: E402
from dilated_vit_mae.transforms import MAEBatchTransform, MAECollator, MAETrainTransform  # noqa: E402


DEFAULT_MODEL_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "dilated-vit-mae-tiny-64"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # no abbreviations: `--tok` for `--token` would slip past redaction, and a new flag could change what one means
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--celeba_dir", type=Path, default=CELEBA_SAMPLE_DIR, help="raw CelebA layout directory")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_images", type=int, default=2000, help="images per measurement")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model_config", type=Path, default=DEFAULT_MODEL_CONFIG, help="config of the model whose training is timed"
    )
    parser.add_argument("--train_batch_size", type=int, default=8, help="batch of the timed training steps")
    parser.add_argument("--train_steps", type=int, default=20, help="timed training steps (after 3 untimed)")
    parser.add_argument("--no_training", action="store_true", help="skip the training stage")
    parser.add_argument("--output_json", type=Path, default=None)
    return parser.parse_args(argv)


def image_paths(dataset: datasets.Dataset, num_images: int) -> list[str]:
    paths = [item["path"] for item in dataset.cast_column("image", datasets.Image(decode=False))["image"]]
    return [paths[i % len(paths)] for i in range(num_images)]


def time_loop(paths: list[str], transform: MAETrainTransform | None) -> float:
    start = time.perf_counter()
    for path in paths:
        with PIL.Image.open(path) as image:
            image.load()
            if transform is not None:
                transform(image)
    return time.perf_counter() - start


def time_dataloader(
    dataset: datasets.Dataset, transform: MAETrainTransform, num_workers: int, batch_size: int, seed: int
) -> tuple[int, float]:
    dataset = dataset.with_transform(MAEBatchTransform(transform))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=MAECollator(),
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not timed
    num_images, start = 0, time.perf_counter()
    for batch in iterator:
        num_images += batch["pixel_values"].shape[0]
    return num_images, time.perf_counter() - start


def time_training(args: argparse.Namespace, dataset: datasets.Dataset, transform: MAETrainTransform) -> tuple[int, float]:
    """Training steps of the `--model_config` model on one batch of the pipeline's own output (data loading excluded)."""
    config = DilatedViTMAEConfig.from_pretrained(args.model_config, image_size=args.image_size)
    torch.manual_seed(args.seed)
    model = DilatedViTMAEForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = next(iter(DataLoader(
        dataset.with_transform(MAEBatchTransform(transform)), batch_size=args.train_batch_size, collate_fn=MAECollator()
    )))  # fmt: skip
    pixel_values = batch["pixel_values"]

    def step() -> None:
        model(pixel_values=pixel_values).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    return args.train_steps * pixel_values.shape[0], time.perf_counter() - start


def main(args: argparse.Namespace) -> dict:
    train = load_celeba(args.celeba_dir, verify_images=False)["train"]
    paths = image_paths(train, args.num_images)
    repeats = -(-args.num_images // train.num_rows)
    repeated = datasets.concatenate_datasets([train] * repeats).select(range(args.num_images))
    transform = MAETrainTransform(args.image_size, seed=args.seed)

    time_loop(paths[: min(50, len(paths))], transform)  # warm the page cache and PIL's plugins
    results = []
    for stage, stage_transform in (("decode", None), ("decode+transform", transform)):
        seconds = time_loop(paths, stage_transform)
        results.append({"stage": stage, "num_workers": 0, "images": len(paths), "seconds": seconds})
    for num_workers in args.num_workers:
        num_images, seconds = time_dataloader(repeated, transform, num_workers, args.batch_size, args.seed)
        results.append({"stage": "dataloader", "num_workers": num_workers, "images": num_images, "seconds": seconds})
    if not args.no_training:
        num_images, seconds = time_training(args, repeated, transform)
        results.append({"stage": "training", "num_workers": 0, "images": num_images, "seconds": seconds})
    for result in results:
        result["images_per_s"] = result["images"] / result["seconds"]
        result["images_per_s_per_worker"] = result["images_per_s"] / max(1, result["num_workers"])
    training = next((r["images_per_s"] for r in results if r["stage"] == "training"), None)
    for result in results:
        if training is not None and result["stage"] == "dataloader":
            result["times_training"] = result["images_per_s"] / training

    print(f"{args.celeba_dir} ({train.num_rows} training images, repeated), {args.image_size} px, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    if training is not None:
        print(f"training: {args.model_config.name} at batch {args.train_batch_size}, {torch.get_num_threads()} threads")
    print(f"{'stage':<18} {'workers':>7} {'images':>7} {'seconds':>8} {'images/s':>9} {'per worker':>10} {'x training':>10}")
    for r in results:
        ratio = f"{r['times_training']:>10.1f}" if "times_training" in r else f"{'':>10}"
        print(
            f"{r['stage']:<18} {r['num_workers']:>7} {r['images']:>7} {r['seconds']:>8.2f} "
            f"{r['images_per_s']:>9.0f} {r['images_per_s_per_worker']:>10.0f} {ratio}"
        )
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "pillow": PIL.__version__,
                "torch_num_threads": torch.get_num_threads(),
            },
            "command": " ".join(["python", *sys.argv]),
            "results": results,
        }
        args.output_json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"Wrote {args.output_json}")
    return {"results": results}


if __name__ == "__main__":
    main(parse_args())
