"""
Host cost of the pre-training input pipeline, per training image: the float32 host path (`MAETrainTransform` in the
workers, what `run_mae.py` does today) against the uint8 path of a GPU run (decode -> uint8 -> crop box and flip ->
`collate_examples` -> pin; crop, resize, flip and normalise then run batched on the device, `DeviceAugmentation`).

Stages:
- `decode`: one process decoding JPEGs (PIL, and simplejpeg where installed), CPU time per image.
- `loader`: for each path (`float32_host`; `uint8_device` from the JPEGs; `uint8_cache`, the same from the memory-mapped
  pre-decoded cache of `run_mae.py --decoded_cache_dir`, built once before it is timed) and `--num_workers` value, a `DataLoader` over `load_celeba(...)["train"]` with the
  per-example seeded augmentation of `run_mae.py`. `host_cpu_us_per_image` is the CPU time spent on the host per
  training image, workers included: each worker stamps its batches with its own `time.process_time()` (the CPU it
  used between its first batch and its last, over the images in between), plus the main process's CPU time over the
  loop (unpickling, and pinning: with CUDA `pin_memory=True`, without it a copy of every tensor as a stand-in).
  Worker start-up and each worker's first batch are excluded. Images/s (wall) and per worker are given too.
- `device`: `DeviceAugmentation` on batches of the uint8 path, CPU time per image on this CPU (a stand-in for the
  device), and GPU time per image where CUDA is available.
- `training`: what the pipeline has to feed: training steps (forward, backward, AdamW) of the `--model_config` model
  on one batch, in images per second; each loader row is then also given as a multiple of it (`x training`).

On the shipped sample (`data/celeba_sample`, 40 training images) the split is repeated up to `--num_images`;
`--synthetic_images N` writes N CelebA-size (178x218) JPEGs in CelebA's raw layout (cut from the sample's photos,
jittered) and measures those; `--celeba_dir` points at a raw CelebA download.

    python benchmarks/bench_data_pipeline.py --image_size 224 --num_workers 0 2 --output_json outputs/pipeline.json
    python benchmarks/bench_data_pipeline.py --make_synthetic_celeba /tmp/celeba_synthetic --synthetic_images 4096
"""

import argparse
import atexit
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import PIL
import PIL.Image
import torch
from torch.utils.data import DataLoader, get_worker_info

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining  # noqa: E402
from dilated_vit_mae.data.loading import CELEBA_SAMPLE_DIR, load_celeba  # noqa: E402
from dilated_vit_mae.data.decoded_cache import DecodedImageCache  # noqa: E402
from dilated_vit_mae.data.device_augment import DeviceAugmentation  # noqa: E402
from dilated_vit_mae.data.seeding import IndexedTransform  # noqa: E402
from dilated_vit_mae.data import transforms  # noqa: E402
from dilated_vit_mae.data.transforms import MAEHostTransform, MAETrainTransform, collate_examples, decode_uint8  # noqa: E402

DEFAULT_MODEL_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "dilated-vit-mae-tiny-64"
TARGET_US, GOAL_US = 400, 250  # host CPU per 224 px training image (issue "Throughput at scale")
PATHS = ("float32_host", "uint8_device", "uint8_cache")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # no abbreviations: `--tok` for `--token` would slip past redaction, and a new flag could change what one means
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--celeba_dir", type=Path, default=CELEBA_SAMPLE_DIR, help="raw CelebA layout directory")
    parser.add_argument("--synthetic_images", type=int, default=0, help="measure N generated CelebA-size JPEGs instead")
    parser.add_argument("--make_synthetic_celeba", type=Path, help="only write --synthetic_images JPEGs there, and exit")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_images", type=int, default=2000, help="images per measurement")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to try")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, help="loader paths to measure")
    parser.add_argument("--device_batches", type=int, default=4, help="batches for the device-side cost")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model_config", type=Path, default=DEFAULT_MODEL_CONFIG, help="config of the model whose training is timed"
    )
    parser.add_argument("--train_batch_size", type=int, default=8, help="batch of the timed training steps")
    parser.add_argument("--train_steps", type=int, default=20, help="timed training steps (after 3 untimed)")
    parser.add_argument("--no_training", action="store_true", help="skip the training stage")
    parser.add_argument("--output_json", type=Path, default=None)
    return parser.parse_args(argv)


# ---- data -----------------------------------------------------------------------------------------------------------


def make_synthetic_celeba(output_dir: Path, num_images: int, seed: int = 0) -> Path:
    """
    `num_images` 178x218 JPEGs (quality 90, like the sample) in CelebA's raw layout, `img_align_celeba/` and
    `list_eval_partition.txt` (90% train, 5% valid, 5% test): crops of the shipped sample's photos, each shifted,
    zoomed, flipped and re-exposed, so that decoding costs what real faces cost (noise would cost more).
    """
    sources = [np.asarray(PIL.Image.open(p).convert("RGB")) for p in sorted((CELEBA_SAMPLE_DIR / "img_align_celeba").glob("*.jpg"))]
    rng = np.random.default_rng(seed)
    image_dir = output_dir / "img_align_celeba"
    image_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(num_images):
        source = PIL.Image.fromarray(sources[i % len(sources)])
        zoom = rng.uniform(0.8, 1.0)
        width, height = 178 * zoom, 218 * zoom
        left, top = rng.uniform(0, 178 - width), rng.uniform(0, 218 - height)
        image = source.resize((178, 218), PIL.Image.BILINEAR, box=(left, top, left + width, top + height))
        if rng.random() < 0.5:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.clip(np.asarray(image, dtype=np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
        names.append(f"{i + 1:06d}.jpg")
        PIL.Image.fromarray(pixels).save(image_dir / names[-1], quality=90)
    held_out = max(1, num_images // 20)
    codes = [0] * (num_images - 2 * held_out) + [1] * held_out + [2] * held_out
    (output_dir / "list_eval_partition.txt").write_text("".join(f"{n} {c}\n" for n, c in zip(names, codes)))
    return output_dir


def training_split(args: argparse.Namespace) -> tuple[datasets.Dataset, str]:
    """The train split repeated up to `--num_images`, with the `sample_index` column of `run_mae.py`."""
    source = args.celeba_dir
    if args.synthetic_images:
        source = make_synthetic_celeba(scratch_dir("celeba_synthetic_"), args.synthetic_images, args.seed)
    train = load_celeba(source, verify_images=False)["train"]
    repeats = -(-args.num_images // train.num_rows)
    repeated = datasets.concatenate_datasets([train] * repeats).select(range(args.num_images))
    description = f"{source} ({train.num_rows} training images{', repeated' if repeats > 1 else ''})"
    return repeated.add_column("sample_index", list(range(args.num_images))), description


def loader_setup(path: str, dataset: datasets.Dataset, image_size: int, seed: int):
    """(dataset with its transform, collate_fn) of one path, as `run_mae.py` builds them."""
    if path == "float32_host":  # today: datasets decodes with PIL, MAETrainTransform in the worker
        return dataset.with_transform(IndexedTransform(MAETrainTransform(image_size), seed=seed)), collate_examples
    if path == "uint8_cache":  # --decoded_cache_dir: rows of a memory-mapped uint8 array, nothing to decode
        cache = decoded_cache(dataset)
        return cache.as_dataset(IndexedTransform(MAEHostTransform(image_size), seed=seed)), collate_examples
    encoded = dataset.cast_column("image", datasets.Image(decode=False))  # bytes / paths: simplejpeg, draft
    return encoded.with_transform(IndexedTransform(MAEHostTransform(image_size), seed=seed)), collate_examples


def decoded_cache(dataset: datasets.Dataset) -> DecodedImageCache:
    """The decoded cache of `dataset`, built once per process in a temporary folder (its build is not timed)."""
    if dataset._fingerprint not in _CACHES:
        _CACHES[dataset._fingerprint] = DecodedImageCache.build(dataset, scratch_dir("decoded_cache_"), reserve_bytes=0)
    return _CACHES[dataset._fingerprint]


_CACHES: dict[str, DecodedImageCache] = {}


def scratch_dir(prefix: str) -> Path:
    """A temporary folder removed when the process exits (a 2,000-image cache is 223 MB)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


# ---- measurements ---------------------------------------------------------------------------------------------------


def time_decode(paths: list[str], decoder: str) -> float:
    """CPU seconds per image of decoding to uint8 in this process."""
    start = time.process_time()
    for path in paths:
        decode_uint8(path, decoder=decoder)
    return (time.process_time() - start) / len(paths)


class StampedCollate:
    """Adds the worker's id and its CPU time so far (`time.process_time()`) to each batch it collates."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        batch = self.collate(examples)
        info = get_worker_info()
        batch["_worker"] = torch.tensor(info.id if info is not None else -1)
        batch["_cpu"] = torch.tensor(time.process_time(), dtype=torch.float64)
        return batch


def copy_like_pinning(batch: dict) -> None:
    """Without CUDA, the pinning copy's stand-in: one copy of every tensor (numpy: no intra-op threads)."""
    for value in batch.values():
        array = value.numpy()
        np.copyto(np.empty_like(array), array)


def time_loader(path: str, dataset: datasets.Dataset, args: argparse.Namespace, num_workers: int) -> dict:
    transformed, collate = loader_setup(path, dataset, args.image_size, args.seed)
    pin = torch.cuda.is_available()
    loader = DataLoader(
        transformed, batch_size=args.batch_size, shuffle=True, num_workers=num_workers, collate_fn=StampedCollate(collate),
        generator=torch.Generator().manual_seed(args.seed), drop_last=True, pin_memory=pin,
    )  # fmt: skip
    iterator = iter(loader)
    first = next(iterator)  # worker start-up and the first batch are not timed
    first_cpu, last_cpu = {int(first["_worker"]): float(first["_cpu"])}, {}
    worker_images, images = Counter(), 0
    main_start, wall_start = time.process_time(), time.perf_counter()
    for batch in iterator:
        if not pin:
            copy_like_pinning(batch)
        worker, cpu, size = int(batch["_worker"]), float(batch["_cpu"]), len(batch["sample_index"])
        if worker in first_cpu:
            worker_images[worker] += size
            last_cpu[worker] = cpu
        else:
            first_cpu[worker] = cpu
        images += size
    main_cpu, seconds = time.process_time() - main_start, time.perf_counter() - wall_start
    del iterator
    worker_cpu = sum(last_cpu[w] - first_cpu[w] for w in last_cpu) if num_workers else 0.0
    main_us = 1e6 * main_cpu / max(images, 1)
    worker_us = 1e6 * worker_cpu / max(sum(worker_images.values()), 1) if num_workers else 0.0
    return {
        "stage": "loader", "path": path, "num_workers": num_workers, "images": images, "seconds": seconds,
        "images_per_s": images / seconds, "images_per_s_per_worker": images / seconds / max(1, num_workers),
        "main_cpu_us_per_image": main_us, "worker_cpu_us_per_image": worker_us, "host_cpu_us_per_image": main_us + worker_us,
        "pinning": "pin_memory" if pin else "copy (no CUDA: stand-in)",
    }  # fmt: skip


def time_device(dataset: datasets.Dataset, args: argparse.Namespace) -> list[dict]:
    """`DeviceAugmentation` on `--device_batches` uint8 batches: CPU time per image here, GPU time where there is one."""
    transformed, collate = loader_setup("uint8_device", dataset, args.image_size, args.seed)
    batches = [collate([transformed[i] for i in range(b * args.batch_size, (b + 1) * args.batch_size)])
               for b in range(min(args.device_batches, len(dataset) // args.batch_size))]  # fmt: skip
    augment = DeviceAugmentation.from_transform(MAEHostTransform(args.image_size))
    augment(batches[0])  # warm-up
    start = time.process_time()
    for batch in batches:
        augment(batch)
    images = len(batches) * args.batch_size
    rows = [{"stage": "device", "device": "cpu (stand-in)", "threads": torch.get_num_threads(), "images": images,
             "cpu_us_per_image": 1e6 * (time.process_time() - start) / images}]  # fmt: skip
    if torch.cuda.is_available():
        on_gpu = [{k: v.cuda() for k, v in batch.items()} for batch in batches]
        augment(on_gpu[0])
        torch.cuda.synchronize()
        wall = time.perf_counter()
        for batch in on_gpu:
            augment(batch)
        torch.cuda.synchronize()
        rows.append({"stage": "device", "device": torch.cuda.get_device_name(), "images": images,
                     "gpu_us_per_image": 1e6 * (time.perf_counter() - wall) / images})  # fmt: skip
    return rows


def time_training(args: argparse.Namespace, dataset: datasets.Dataset) -> dict:
    """Training steps of the `--model_config` model on one batch of the float path's output (loading excluded)."""
    config = DilatedViTMAEConfig.from_pretrained(args.model_config, image_size=args.image_size)
    torch.manual_seed(args.seed)
    model = DilatedViTMAEForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    transformed, collate = loader_setup("float32_host", dataset, args.image_size, args.seed)
    pixel_values = collate([transformed[i] for i in range(args.train_batch_size)])["pixel_values"]

    def step() -> None:
        model(pixel_values=pixel_values).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    seconds = time.perf_counter() - start
    images = args.train_steps * pixel_values.shape[0]
    return {"stage": "training", "num_workers": 0, "images": images, "seconds": seconds, "images_per_s": images / seconds}


# ---- report ---------------------------------------------------------------------------------------------------------


def summarize(results: list[dict]) -> dict:
    """The headline figures: host CPU per image of each path at the largest worker count, and the device side."""
    loaders = [r for r in results if r["stage"] == "loader"]
    summary: dict = {"target_host_cpu_us_per_image": TARGET_US, "goal_host_cpu_us_per_image": GOAL_US}
    for path in PATHS:
        rows = [r for r in loaders if r["path"] == path]
        if rows:
            best = max(rows, key=lambda r: r["num_workers"])
            summary[f"{path}_host_cpu_us_per_image"] = best["host_cpu_us_per_image"]
            summary[f"{path}_images_per_s_per_worker"] = best["images_per_s_per_worker"]
    for path in ("uint8_device", "uint8_cache"):
        if f"{path}_host_cpu_us_per_image" in summary:
            summary[f"{path}_meets_target"] = summary[f"{path}_host_cpu_us_per_image"] <= TARGET_US
    if "uint8_device_host_cpu_us_per_image" in summary:  # the default GPU path: JPEGs decoded in the workers
        summary["host_cpu_us_per_image"] = summary["uint8_device_host_cpu_us_per_image"]
        summary["meets_target"] = summary["uint8_device_meets_target"]
    device = next((r for r in results if r["stage"] == "device" and "cpu_us_per_image" in r), None)
    if device is not None:
        summary["device_cpu_us_per_image"] = device["cpu_us_per_image"]
    gpu = next((r for r in results if r.get("gpu_us_per_image") is not None), None)
    if gpu is not None:
        summary["device_gpu_us_per_image"] = gpu["gpu_us_per_image"]
    if device is not None and "float32_host_host_cpu_us_per_image" in summary and "host_cpu_us_per_image" in summary:
        # on a CPU-only machine the device side runs on the same CPU: the cheaper total is the right default there
        on_cpu = summary["host_cpu_us_per_image"] + device["cpu_us_per_image"]
        summary["uint8_plus_device_on_cpu_us_per_image"] = on_cpu
        summary["faster_on_cpu"] = "host" if summary["float32_host_host_cpu_us_per_image"] <= on_cpu else "device"
    return summary


def print_report(description: str, args: argparse.Namespace, results: list[dict], summary: dict) -> None:
    print(f"{description}, {args.image_size} px, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'path':<14}{'workers':>8}{'images':>8}{'images/s':>10}{'per worker':>11}{'host CPU us/img':>16}"
          f"{'(main':>8}{'+ workers)':>11}{'x training':>11}")  # fmt: skip
    for r in results:
        if r["stage"] == "decode":
            print(f"decode {r['decoder']:<10} (one process): {r['cpu_us_per_image']:.0f} us CPU per image")
        elif r["stage"] == "loader":
            ratio = f"{r['times_training']:>11.1f}" if "times_training" in r else ""
            print(f"{r['path']:<14}{r['num_workers']:>8}{r['images']:>8}{r['images_per_s']:>10.0f}"
                  f"{r['images_per_s_per_worker']:>11.0f}{r['host_cpu_us_per_image']:>16.0f}"
                  f"{r['main_cpu_us_per_image']:>8.0f}{r['worker_cpu_us_per_image']:>11.0f}{ratio}")  # fmt: skip
        elif r["stage"] == "device":
            figure = f"{r['cpu_us_per_image']:.0f} us CPU" if "cpu_us_per_image" in r else f"{r['gpu_us_per_image']:.1f} us GPU"
            print(f"device side on {r['device']}: {figure} per image")
        elif r["stage"] == "training":
            print(f"training: {args.model_config.name} at batch {args.train_batch_size}: {r['images_per_s']:.0f} images/s")
    for path, label in (("uint8_device", "uint8 path from JPEGs"), ("uint8_cache", "uint8 path from the decoded cache")):
        if f"{path}_host_cpu_us_per_image" in summary:
            verdict = "meets" if summary[f"{path}_meets_target"] else "MISSES"
            print(f"host CPU per training image, {label}: {summary[f'{path}_host_cpu_us_per_image']:.0f} us ({verdict} "
                  f"the {TARGET_US} us target; goal {GOAL_US} us)")  # fmt: skip
    if "faster_on_cpu" in summary:
        print(f"on this CPU alone: float32 host {summary['float32_host_host_cpu_us_per_image']:.0f} us vs uint8 + device "
              f"side {summary['uint8_plus_device_on_cpu_us_per_image']:.0f} us per image: {summary['faster_on_cpu']} is faster")  # fmt: skip


def main(args: argparse.Namespace) -> dict:
    if args.make_synthetic_celeba:
        make_synthetic_celeba(args.make_synthetic_celeba, args.synthetic_images or args.num_images, args.seed)
        print(f"wrote {args.synthetic_images or args.num_images} JPEGs to {args.make_synthetic_celeba}")
        return {"results": []}
    dataset, description = training_split(args)
    files = [f["path"] for f in dataset.cast_column("image", datasets.Image(decode=False))["image"][:200]]
    time_decode(files[:20], "pil")  # warm the page cache and the decoders
    decoders = ["pil", "simplejpeg"] if _has_simplejpeg() else ["pil"]
    results = [{"stage": "decode", "decoder": d, "cpu_us_per_image": 1e6 * time_decode(files, d)} for d in decoders]
    for path in args.paths:
        if path == "uint8_cache":
            try:
                decoded_cache(dataset)
            except (ValueError, OSError) as error:  # images of several sizes, or no room: the other paths still count
                print(f"uint8_cache: skipped ({error})")
                results.append({"stage": "skipped", "path": path, "reason": str(error)})
                continue
        for num_workers in args.num_workers:
            results.append(time_loader(path, dataset, args, num_workers))
    if {"uint8_device", "uint8_cache"} & set(args.paths):
        results.extend(time_device(dataset, args))
    if not args.no_training:
        training = time_training(args, dataset)
        results.append(training)
        for r in results:
            if r["stage"] == "loader":
                r["times_training"] = r["images_per_s"] / training["images_per_s"]
    summary = summarize(results)
    print_report(description, args, results, summary)
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
            "machine": {
                "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                "torch": torch.__version__, "pillow": PIL.__version__, "torch_num_threads": torch.get_num_threads(),
                "load_average": os.getloadavg(),
            },  # fmt: skip
            "command": " ".join(["python", *sys.argv]),
            "summary": summary,
            "results": results,
        }
        args.output_json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"Wrote {args.output_json}")
    return {"results": results, "summary": summary}


def _has_simplejpeg() -> bool:
    return transforms.simplejpeg is not None


if __name__ == "__main__":
    main(parse_args())
