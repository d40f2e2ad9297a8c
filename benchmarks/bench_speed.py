#!/usr/bin/env python
"""Speed and memory of DilatedViTMAEForPreTraining against transformers' ViTMAEForPreTraining, same sizes, same process.

    python benchmarks/bench_speed.py                      # small config and ViT-B/16 at 224 px, on CPU
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --presets base --batch_size 64
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --presets base --batch_size 64 --compile

For each preset it times, interleaved and after warm-up, a training step (forward, backward, AdamW step) and an
encoder forward over the whole image (`mask_ratio=0`, no grad), for ViTMAE and for our model with no dilation, the
default dilation set, two rates, and the mask-token encoder (`masking_mode="mask_token"`, no dilation); it prints
medians and ratios to ViTMAE measured in the same run, the mask-token vs drop ratio (training step, and encoder
forward + backward), and peak memory of 3 training steps (CUDA: `max_memory_allocated`; CPU: the peak RSS of a process
started clean, a fresh interpreter: `VmHWM` from its `/proc/self/status`, checked against `/usr/bin/time -v`'s
maximum RSS of the same process, both reported; `ru_maxrss` is not used, because a child created by fork/vfork starts
from its parent's high-water mark). Writes JSON.

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
import re
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
    # every patch through the encoder, masked ones as a mask token (what MAE's asymmetric encoder avoids)
    "ours_mask_token": dict(dilation_rates=(), masking_mode="mask_token"),
}
# the mask-token encoder against the same model dropping masked patches (MAE: 2.8-4.1x; ViT-B/16 with the 8 x 512
# decoder on CPU: 2.33x the training step)
MASK_TOKEN_PAIR = ("ours_mask_token", "ours_no_dilation")


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


def encoder_backward_fn(model, pixel_values, noise):
    """Encoder forward + backward on the training masks (the part that `masking_mode` changes)."""
    vit = getattr(model, "_orig_mod", model).vit

    def run():
        vit(pixel_values=pixel_values, noise=noise).last_hidden_state.float().sum().backward()
        vit.zero_grad(set_to_none=True)

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


def peak_memory_mb(variant: str, preset: str, batch_size: int, device: str, dtype_name: str) -> dict[str, float | None]:
    """
    Peak memory of 3 training steps. CUDA: `{"peak_memory_mb": max_memory_allocated}`. CPU: a fresh interpreter runs
    the steps (model and inputs built there) and reports `peak_memory_mb`, its `VmHWM` (whole-process peak RSS), and
    `baseline_rss_mb`, its RSS just before the first step; run under `/usr/bin/time -v` where it exists, whose
    maximum RSS of that same process is `peak_memory_mb_time_v`.
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
        return {"peak_memory_mb": peak}
    command = [sys.executable, str(Path(__file__).resolve()), "--_memory_child", variant, preset, str(batch_size), dtype_name]
    time_v = Path("/usr/bin/time").exists()  # GNU time: it forks the child itself, from its own small process
    result = subprocess.run((["/usr/bin/time", "-v"] if time_v else []) + command, capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    figures["peak_memory_mb_time_v"] = int(match.group(1)) / 1024 if match else None
    return figures


def memory_child(variant: str, preset: str, batch_size: int, dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    model = build(variant, preset, "cpu", dtype)
    step = train_step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4), *make_inputs(preset, batch_size, "cpu", dtype))
    baseline = proc_status_mb("VmRSS")
    for _ in range(3):
        step()
    print(json.dumps({"peak_memory_mb": proc_status_mb("VmHWM"), "baseline_rss_mb": baseline}))


def proc_status_mb(field: str) -> float:
    """A memory field (`VmRSS`, `VmHWM`) of this process's `/proc/self/status`, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return float(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"No {field} in /proc/self/status: peak memory is measured on Linux only.")


def main() -> None:
    # no abbreviations: `--tok` for `--token` would slip past redaction, and a new flag could change what one means
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--presets", nargs="+", default=["small", "base"], choices=sorted(PRESETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="models to time (vit_mae, the reference of every ratio, is always included)")
    parser.add_argument("--skip_encoder", action="store_true", help="skip the whole-image encoder timing")
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
    variants = ["vit_mae"] + [v for v in VARIANTS if v in args.variants and v != "vit_mae"]
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
        models = {name: build(name, preset, args.device, dtype) for name in variants}
        if args.compile:
            models = {name: torch.compile(model) for name, model in models.items()}
        pixel_values, noise = make_inputs(preset, batch_size, args.device, dtype)
        train_steps = {
            name: train_step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4), pixel_values, noise)
            for name, model in models.items()
        }
        train_times = time_interleaved(train_steps, args.repeats, args.warmup, args.device)
        encoder_times = {}
        if not args.skip_encoder:
            encoders = {name: encoder_fn(model, pixel_values, compile=args.compile) for name, model in models.items()}
            encoder_times = time_interleaved(encoders, args.repeats, args.warmup, args.device)
        pair_times = {}
        if all(name in models for name in MASK_TOKEN_PAIR):
            pair = {name: encoder_backward_fn(models[name], pixel_values, noise) for name in MASK_TOKEN_PAIR}
            pair_times = time_interleaved(pair, args.repeats, args.warmup, args.device)
        del models, train_steps
        rows = {}
        reference_train = statistics.median(train_times["vit_mae"])
        for name in variants:
            train = statistics.median(train_times[name])
            rows[name] = {"train_step_s": train, "train_step_ratio": train / reference_train, "images_per_s": batch_size / train}
            if encoder_times:
                encoder = statistics.median(encoder_times[name])
                rows[name]["encoder_s"] = encoder
                rows[name]["encoder_ratio"] = encoder / statistics.median(encoder_times["vit_mae"])
            if name in pair_times:
                rows[name]["encoder_fwd_bwd_s"] = statistics.median(pair_times[name])
            flops = train_flops_per_image(name, preset)
            rows[name]["train_gflop_per_image"] = flops / 1e9
            rows[name]["train_tflops_per_s"] = flops * batch_size / train / 1e12
            if report["peak_tflops"]:
                rows[name]["mfu"] = rows[name]["train_tflops_per_s"] / report["peak_tflops"]
            if not args.no_memory:
                rows[name].update(peak_memory_mb(name, preset, batch_size, args.device, args.dtype))
        if not args.no_memory:
            for row in rows.values():
                row["peak_memory_ratio"] = row["peak_memory_mb"] / rows["vit_mae"]["peak_memory_mb"]
        report["results"][preset] = {"batch_size": batch_size, "rows": rows}
        if pair_times:
            masked, dropped = (rows[name] for name in MASK_TOKEN_PAIR)
            report["results"][preset]["mask_token_vs_drop"] = {
                "train_step_ratio": masked["train_step_s"] / dropped["train_step_s"],
                "encoder_fwd_bwd_ratio": masked["encoder_fwd_bwd_s"] / dropped["encoder_fwd_bwd_s"],
                "train_flops_ratio": masked["train_gflop_per_image"] / dropped["train_gflop_per_image"],
            }

        compiled = ", compiled" if args.compile else ""
        print(f"\n{preset} (batch {batch_size}, {args.device}, {args.dtype}{compiled}, median of {args.repeats}, ratios to ViTMAE)")
        header = f"{'model':<18}{'train step':>12}{'ratio':>8}{'images/s':>10}{'GFLOP/img':>10}{'TFLOP/s':>9}"
        header += f"{'MFU':>7}" if report["peak_tflops"] else ""
        header += "" if args.skip_encoder else f"{'encoder':>10}{'ratio':>8}"
        header += "" if args.no_memory else f"{'peak MB':>10}{'ratio':>8}"
        print(header)
        for name, row in rows.items():
            line = (
                f"{name:<18}{row['train_step_s'] * 1000:>10.1f}ms{row['train_step_ratio']:>8.3f}{row['images_per_s']:>10.1f}"
                f"{row['train_gflop_per_image']:>10.2f}{row['train_tflops_per_s']:>9.3f}"
            )
            line += f"{100 * row['mfu']:>6.1f}%" if "mfu" in row else ""
            line += f"{row['encoder_s'] * 1000:>8.1f}ms{row['encoder_ratio']:>8.3f}" if "encoder_s" in row else ""
            if not args.no_memory:
                line += f"{row['peak_memory_mb']:>10.0f}{row['peak_memory_ratio']:>8.3f}"
            print(line)
        if not args.no_memory and not args.device.startswith("cuda"):
            print("peak MB: VmHWM of a clean process per model; /usr/bin/time -v max RSS of the same process: "
                  + ", ".join(f"{n} {r['peak_memory_mb_time_v']:.0f}" if r.get("peak_memory_mb_time_v") else f"{n} n/a"
                              for n, r in rows.items()))  # fmt: skip
        if pair_times:
            ratios = report["results"][preset]["mask_token_vs_drop"]
            print(f"mask_token vs drop encoder: training step {ratios['train_step_ratio']:.2f}x, encoder forward+backward "
                  f"{ratios['encoder_fwd_bwd_ratio']:.2f}x, counted FLOPs {ratios['train_flops_ratio']:.2f}x")  # fmt: skip

    output = Path(args.output_json)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
