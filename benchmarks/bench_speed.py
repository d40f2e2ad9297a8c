#!/usr/bin/env python
"""Speed and memory of DilatedViTMAEForPreTraining against transformers' ViTMAEForPreTraining, same sizes, same process.

    python benchmarks/bench_speed.py                      # small config and ViT-B/16 at 224 px, on CPU
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --presets base --batch_size 64
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --presets base --batch_size 64 --compile

For each preset it times, interleaved and after warm-up, a training step (forward, backward, AdamW step) and an
encoder forward over the whole image (`mask_ratio=0`, no grad), for ViTMAE and for our model with no dilation, the
default dilation set and two rates; it prints medians and ratios to ViTMAE measured in the same run, and peak memory
(CUDA: `max_memory_allocated`; CPU: how much a fresh process's peak RSS grows over 3 training steps). Writes JSON.

Model FLOP utilisation: the FLOPs of one training step are counted, not estimated, with
`torch.utils.flop_counter.FlopCounterMode` on an eager-attention copy of each model (batch 1, on the CPU; a
multiply-add is 2 FLOPs; the optimizer step is not counted); ViTMAE's ViT-B/16 step counts 58.5 GFLOP per image,
MAE's ~59. Achieved TFLOP/s = FLOPs per image x images/s; MFU = that / the device's peak (`--peak_tflops`, or for
bf16/fp16 on a GPU whose dense peak is in `PEAK_TFLOPS_16BIT`). `--dtype` casts the models (no autocast); `--compile`
wraps every model in `torch.compile` (its compilation happens in the untimed warm-up).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining  # noqa: E402


PRESETS = {
    # the shipped configs' sizes (configs/dilated-vit-mae-tiny-64, configs/dilated-vit-mae-base)
    "small": dict(image_size=64, patch_size=8, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                  intermediate_size=768, decoder_hidden_size=128, decoder_num_hidden_layers=2,
                  decoder_num_attention_heads=4, decoder_intermediate_size=512),
    "base": dict(image_size=224, patch_size=16),  # ViT-B/16 encoder, 8 x 512 decoder (the defaults)
}  # fmt: skip
VARIANTS = {
    "vit_mae": None,
    "ours_no_dilation": dict(dilation_rates=()),
    "ours_default": dict(),  # the config's default dilation set
    "ours_rates_2_3": dict(dilation_rates=(2, 3)),
}


# dense bf16/fp16 tensor-core peaks in TFLOP/s (vendor data sheets), matched against torch.cuda.get_device_name()
PEAK_TFLOPS_16BIT = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.05), ("L4", 121.0))


def build(variant: str, preset: str, device: str, dtype: torch.dtype, attn_implementation: str = "sdpa") -> torch.nn.Module:
    sizes = PRESETS[preset]
    if VARIANTS[variant] is None:
        model = ViTMAEForPreTraining(ViTMAEConfig(**sizes, attn_implementation=attn_implementation))
    else:
        model = DilatedViTMAEForPreTraining._from_config(
            DilatedViTMAEConfig(**sizes, **VARIANTS[variant]), attn_implementation=attn_implementation
        )
    return model.to(device=device, dtype=dtype).train()


def train_flops_per_image(variant: str, preset: str) -> float:
    """FLOPs of one image's forward + backward, counted on an eager-attention copy (SDPA kernels are not counted on CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(variant, preset, "cpu", torch.float32, attn_implementation="eager")
    pixel_values, noise = make_inputs(preset, 1, "cpu", torch.float32)
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values, noise=noise).loss.backward()
    return float(counter.get_total_flops())


def peak_tflops(device: str, dtype_name: str, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.startswith("cuda") and dtype_name in ("bfloat16", "float16"):
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in PEAK_TFLOPS_16BIT if key in name), None)
    return None


def make_inputs(preset: str, batch_size: int, device: str, dtype: torch.dtype, seed: int = 0):
    size, patch = PRESETS[preset].get("image_size", 224), PRESETS[preset].get("patch_size", 16)
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator).to(device=device, dtype=dtype)
    noise = torch.rand(batch_size, (size // patch) ** 2, generator=generator).to(device)
    return pixel_values, noise


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step_fn(model, optimizer, pixel_values, noise):
    def step():
        loss = model(pixel_values=pixel_values, noise=noise).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def encoder_fn(model, pixel_values, compile: bool = False):
    model = getattr(model, "_orig_mod", model)  # a compiled model: compile its encoder on its own
    vit = model.vit
    encoder = torch.compile(vit) if compile else vit
    num_patches = vit.embeddings.patch_embeddings.num_patches
    in_order = torch.arange(num_patches, device=pixel_values.device).expand(pixel_values.shape[0], -1)

    @torch.no_grad()
    def run():
        if isinstance(model, DilatedViTMAEForPreTraining):
            encoder(pixel_values=pixel_values, mask_ratio=0.0)
        else:  # ViTMAE takes the ratio from its config; noise keeps the order, as ours does without noise
            vit.config.mask_ratio = 0.0
            encoder(pixel_values=pixel_values, noise=in_order)
            vit.config.mask_ratio = 0.75

    return run


def time_interleaved(functions: dict, repeats: int, warmup: int, device: str) -> dict[str, list[float]]:
    """Run each function `warmup` times, then `repeats` rounds of one call each, in turn, timing every call."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    synchronize(device)
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_memory_mb(variant: str, preset: str, batch_size: int, device: str, dtype_name: str) -> float:
    """
    Peak memory of 3 training steps: the CUDA allocator's peak, or on CPU the growth of a fresh process's peak RSS
    over its RSS just before the first step (parameters, inputs and imports are excluded there).
    """
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        dtype = getattr(torch, dtype_name)
        model = build(variant, preset, device, dtype)
        step = train_step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4), *make_inputs(preset, batch_size, device, dtype))
        for _ in range(3):
            step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated() / 2**20
        del model, step
        return peak
    command = [sys.executable, __file__, "--_memory_child", variant, preset, str(batch_size), dtype_name]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(output.strip().splitlines()[-1])


def memory_child(variant: str, preset: str, batch_size: int, dtype_name: str) -> None:
    torch.set_num_threads(torch.get_num_threads())
    dtype = getattr(torch, dtype_name)
    model = build(variant, preset, "cpu", dtype)
    step = train_step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4), *make_inputs(preset, batch_size, "cpu", dtype))
    before = current_rss_mb()
    for _ in range(3):
        step()
    # what training adds to the process (model, inputs and imports already resident)
    print(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before, 0.0))  # Linux: KiB


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    # no abbreviations: `--tok` for `--token` would slip past redaction, and a new flag could change what one means
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--presets", nargs="+", default=["small", "base"], choices=sorted(PRESETS))
    parser.add_argument("--batch_size", type=int, nargs="+", default=None, help="One per preset (default: 32 small, 8 base).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no_memory", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (compiled in the warm-up)")
    parser.add_argument("--peak_tflops", type=float, help="the device's peak for --dtype, for MFU (default: known GPUs)")
    parser.add_argument("--output_json", default="benchmarks/results/speed.json")
    parser.add_argument("--_memory_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        variant, preset, batch_size, dtype_name = args._memory_child
        memory_child(variant, preset, int(batch_size), dtype_name)
        return

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    default_batch = {"small": 32, "base": 8}
    batch_sizes = args.batch_size or [default_batch[p] for p in args.presets]
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "compile": args.compile,
        "peak_tflops": peak_tflops(args.device, args.dtype, args.peak_tflops),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": {},
    }
    for preset, batch_size in zip(args.presets, batch_sizes):
        models = {name: build(name, preset, args.device, dtype) for name in VARIANTS}
        if args.compile:
            models = {name: torch.compile(model) for name, model in models.items()}
        pixel_values, noise = make_inputs(preset, batch_size, args.device, dtype)
        train_steps = {
            name: train_step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4), pixel_values, noise)
            for name, model in models.items()
        }
        encoders = {name: encoder_fn(model, pixel_values, compile=args.compile) for name, model in models.items()}
        train_times = time_interleaved(train_steps, args.repeats, args.warmup, args.device)
        encoder_times = time_interleaved(encoders, args.repeats, args.warmup, args.device)
        del models, train_steps, encoders
        rows = {}
        reference_train = statistics.median(train_times["vit_mae"])
        reference_encoder = statistics.median(encoder_times["vit_mae"])
        for name in VARIANTS:
            train, encoder = statistics.median(train_times[name]), statistics.median(encoder_times[name])
            rows[name] = {
                "train_step_s": train,
                "train_step_ratio": train / reference_train,
                "images_per_s": batch_size / train,
                "encoder_s": encoder,
                "encoder_ratio": encoder / reference_encoder,
            }
            flops = train_flops_per_image(name, preset)
            rows[name]["train_gflop_per_image"] = flops / 1e9
            rows[name]["train_tflops_per_s"] = flops * batch_size / train / 1e12
            if report["peak_tflops"]:
                rows[name]["mfu"] = rows[name]["train_tflops_per_s"] / report["peak_tflops"]
            if not args.no_memory:
                rows[name]["peak_memory_mb"] = peak_memory_mb(name, preset, batch_size, args.device, args.dtype)
        if not args.no_memory:
            for row in rows.values():
                row["peak_memory_ratio"] = row["peak_memory_mb"] / rows["vit_mae"]["peak_memory_mb"]
        report["results"][preset] = {"batch_size": batch_size, "rows": rows}

        compiled = ", compiled" if args.compile else ""
        print(f"\n{preset} (batch {batch_size}, {args.device}, {args.dtype}{compiled}, median of {args.repeats}, ratios to ViTMAE)")
        header = f"{'model':<18}{'train step':>12}{'ratio':>8}{'images/s':>10}{'GFLOP/img':>10}{'TFLOP/s':>9}"
        header += f"{'MFU':>7}" if report["peak_tflops"] else ""
        header += f"{'encoder':>10}{'ratio':>8}"
        header += "" if args.no_memory else f"{'peak MB':>10}{'ratio':>8}"
        print(header)
        for name, row in rows.items():
            line = (
                f"{name:<18}{row['train_step_s'] * 1000:>10.1f}ms{row['train_step_ratio']:>8.3f}{row['images_per_s']:>10.1f}"
                f"{row['train_gflop_per_image']:>10.2f}{row['train_tflops_per_s']:>9.3f}"
            )
            line += f"{100 * row['mfu']:>6.1f}%" if "mfu" in row else ""
            line += f"{row['encoder_s'] * 1000:>8.1f}ms{row['encoder_ratio']:>8.3f}"
            if not args.no_memory:
                line += f"{row['peak_memory_mb']:>10.0f}{row['peak_memory_ratio']:>8.3f}"
            print(line)

    output = Path(args.output_json)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
