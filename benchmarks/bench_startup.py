"""
Start-up and evaluation of `scripts/run_mae.py` on a raw CelebA folder at full scale (issue "Beyond one machine",
item 7): how long a launch takes before its first training step, the first launch on a folder against a repeated one
(whose image check is served by the record the first one left), and how many validation images per second its
evaluation gets through, with each number of loader workers.

By default it builds the hard-linked stand-in of `make_celeba_sample.py --full_size` (202,599 files named and split
as CelebA's, the sample's 56 crops linked over and over; `--num_images` fewer) in a temporary folder that is removed
at exit; `--celeba_dir` measures an existing raw CelebA folder instead. Image-check records go to a temporary folder
too (`DILATED_VIT_MAE_CACHE`), so the first launch is a first launch.

Each launch is a fresh interpreter running `run_mae.py`'s `main` (imports included) with `--model_config` (the tiny
64 px model by default, so the figures are the pipeline's, not the model's) and `--max_train_steps 1`:
- `to_first_step_s`: from just before the process is started to the start of its first training step (its first batch
  loaded); `load_celeba_s` of it is the data loading, image check included; `images_checked` how many images the check
  opened (0: the record served it).
- evaluation: `run_mae.py`'s own `evaluate` on `--eval_images` validation images (default: the whole split) at
  `--eval_batch_size`, wall time, for each `--eval_workers` value.

    python benchmarks/bench_startup.py --output_json outputs/startup.json                 # the 202,599-file stand-in
    python benchmarks/bench_startup.py --num_images 20000 --eval_workers 0 2
    python benchmarks/bench_startup.py --celeba_dir /data/celeba --eval_images 5000
"""

import argparse
import atexit
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from dilated_vit_mae.data import loading  # noqa: E402
from dilated_vit_mae.train import core  # noqa: E402

DEFAULT_MODEL_CONFIG = REPO_ROOT / "configs" / "dilated-vit-mae-tiny-64"
CELEBA_IMAGES = 202_599


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--celeba_dir", type=Path, help="an existing raw CelebA folder (default: build the stand-in)")
    parser.add_argument("--num_images", type=int, default=CELEBA_IMAGES, help="files of the stand-in")
    parser.add_argument("--scratch_dir", type=Path, default=Path(tempfile.gettempdir()), help="where the stand-in goes")
    parser.add_argument("--model_config", type=Path, default=DEFAULT_MODEL_CONFIG)
    parser.add_argument("--eval_images", type=int, help="validation images evaluated (default: the whole split)")
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--eval_workers", type=int, nargs="+", default=[0, 2], help="loader workers to try")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each launch")
    parser.add_argument("--output_json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measured launch (JSON spec)
    return parser.parse_args(argv)


# ---- one launch, in a fresh interpreter ------------------------------------------------------------------------------


def load_script(name: str):
    """`scripts/<name>.py` as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(spec: dict) -> None:
    """Run `run_mae.main` with hooks that time it, write what they saw to `spec["result"]`, and exit at once."""
    run_mae = load_script("run_mae")
    seen = {"images_checked": 0}

    def finish() -> None:
        Path(spec["result"]).write_text(json.dumps(seen))
        os._exit(0)  # the measurement is taken: no save, no final evaluation

    find_bad_images = loading.find_bad_images

    def counted_find_bad_images(items, **kwargs):
        seen["images_checked"] += len(items)
        return find_bad_images(items, **kwargs)

    loading.find_bad_images = counted_find_bad_images
    load_celeba = core.load_celeba  # what run_mae's load_splits calls

    def timed_load_celeba(*args, **kwargs):
        started = time.perf_counter()
        splits = load_celeba(*args, **kwargs)
        seen["load_celeba_s"] = time.perf_counter() - started
        return splits

    core.load_celeba = timed_load_celeba
    if spec["measure"] == "startup":
        def first_step(*args, **kwargs):
            seen["to_first_step_s"] = time.time() - spec["started"]
            finish()

        run_mae.train_micro_batch = first_step
    else:
        evaluate = run_mae.evaluate

        def timed_evaluate(run, log):
            started = time.perf_counter()
            results = evaluate(run, log)
            seen["evaluation_s"] = time.perf_counter() - started
            seen["images"] = len(run.splits["validation"])
            seen["eval_loss"] = results["loss"]
            finish()

        run_mae.evaluate = timed_evaluate
    run_mae.main(run_mae.parse_args(spec["argv"]))
    raise RuntimeError("run_mae.main returned before the measured point")


def launch(
    args: argparse.Namespace, celeba_dir: Path, scratch: Path, name: str, measure: str, extra: list[str]
) -> dict:
    result = scratch / f"{name}.json"
    spec = {
        "measure": measure, "result": str(result), "started": time.time(),
        "argv": ["--celeba_dir", str(celeba_dir), "--config_name", str(args.model_config), "--output_dir",
                 str(scratch / f"run-{name}"), "--max_train_steps", "1", "--checkpointing_steps", "no", *extra],
    }  # fmt: skip
    process = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=args.timeout, env={**os.environ, "DILATED_VIT_MAE_CACHE": str(scratch / "user-cache")},
    )  # fmt: skip
    if process.returncode != 0 or not result.exists():
        raise RuntimeError(f"launch {name!r} failed (exit {process.returncode}):\n{process.stderr[-4000:]}")
    return {"launch": name, **json.loads(result.read_text())}


# ---- the benchmark ---------------------------------------------------------------------------------------------------


def build_standin(args: argparse.Namespace) -> tuple[Path, float]:
    builder = load_script("make_celeba_sample")
    folder = Path(tempfile.mkdtemp(prefix="celeba_standin_", dir=args.scratch_dir))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    started = time.perf_counter()
    builder.make_full_size_standin(folder / "celeba", args.num_images)
    return folder / "celeba", time.perf_counter() - started


def main(args: argparse.Namespace) -> dict:
    if args.child:
        child(json.loads(args.child))
    scratch = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_at_start": os.getloadavg()},
              "model_config": str(args.model_config)}  # fmt: skip
    if args.celeba_dir:
        celeba_dir = args.celeba_dir
        report["data"] = {"celeba_dir": str(celeba_dir)}
    else:
        celeba_dir, build_s = build_standin(args)
        report["data"] = {"standin_images": args.num_images, "build_s": round(build_s, 2)}
    print(f"data: {report['data']}", flush=True)
    launches = []
    for name in ("first", "repeated"):
        launches.append(launch(args, celeba_dir, scratch, name, "startup", []))
        print(f"{name} launch: {launches[-1]}", flush=True)
        write_report(args, {**report, "startup": launches})  # each figure kept as soon as it is taken
    report["startup"] = launches
    evaluations = []
    limit = ["--max_eval_samples", str(args.eval_images)] if args.eval_images else []
    for workers in args.eval_workers:
        row = launch(
            args, celeba_dir, scratch, f"eval-{workers}", "evaluation",
            [*limit, "--per_device_eval_batch_size", str(args.eval_batch_size),
             "--dataloader_num_workers", str(workers)],
        )  # fmt: skip
        row.update(num_workers=workers, images_per_s=row["images"] / row["evaluation_s"])
        evaluations.append(row)
        write_report(args, {**report, "evaluation": evaluations})
        print(f"evaluation, {workers} workers: {row['images']} images in {row['evaluation_s']:.1f} s = "
              f"{row['images_per_s']:.0f} images/s", flush=True)  # fmt: skip
    report["evaluation"] = evaluations
    report["machine"]["load_average_at_end"] = os.getloadavg()  # other work on the machine slows every figure
    first, repeated = launches
    report["summary"] = {
        "first_launch_to_first_step_s": round(first["to_first_step_s"], 2),
        "repeated_launch_to_first_step_s": round(repeated["to_first_step_s"], 2),
        "first_launch_load_celeba_s": round(first["load_celeba_s"], 2),
        "repeated_launch_load_celeba_s": round(repeated["load_celeba_s"], 2),
        "images_checked": [first["images_checked"], repeated["images_checked"]],
        "evaluation_images_per_s": {row["num_workers"]: round(row["images_per_s"], 1) for row in evaluations},
    }
    print(json.dumps(report["summary"], indent=1))
    write_report(args, report)
    return report


def write_report(args: argparse.Namespace, report: dict) -> None:
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main(parse_args())
