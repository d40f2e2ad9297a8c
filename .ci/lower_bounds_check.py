"""The package at its declared lower bounds: run by .ci/lower_bounds.sh in a venv holding exactly those versions.

Checks, each with the installed versions (printed first):
1. `import dilated_vit_mae` (registers the Auto classes; the image processor must not need torchvision);
2. a tiny model's forward, `save_pretrained` / `from_pretrained` with the package (same logits, no missing keys),
   and the image processor's save/load;
3. two training steps of `scripts/run_mae.py` on the shipped sample (accelerate, datasets, evaluate's metrics,
   the model card through huggingface_hub);
4. the saved folder loaded with `trust_remote_code` in a clean process without the package (`hub.check_folder`).

Usage:
    python3 .ci/lower_bounds_check.py --pins       # the lower bounds declared in setup.cfg, as `NAME==VERSION` pins
    python .ci/lower_bounds_check.py --expect PIN ...   # run the checks; fail if an installed version differs
"""

import argparse
import configparser
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
# what is pinned to its declared lower bound (setup.cfg: install_requires and the train / test extras)
BOUNDED = ("torch", "transformers", "huggingface_hub", "accelerate", "datasets", "evaluate", "simplejpeg", "pytest")
TINY_CONFIG = dict(
    image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4, decoder_intermediate_size=64,
    dilation_rates=(2,),
)  # fmt: skip


def declared_lower_bounds(setup_cfg: Path = REPO_ROOT / "setup.cfg") -> dict[str, str]:
    """`{name: version}` for every `name>=version` of BOUNDED in install_requires and the train / test extras."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(setup_cfg)
    lines = parser["options"]["install_requires"].splitlines()
    lines += [line for extra in ("train", "test") for line in parser["options.extras_require"][extra].splitlines()]
    bounds = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", line)
        if match and match[1] in BOUNDED:
            if bounds.setdefault(match[1], match[2]) != match[2]:
                raise SystemExit(f"setup.cfg declares {match[1]}>={bounds[match[1]]} and >={match[2]}: make them one.")
    missing = sorted(set(BOUNDED) - set(bounds))
    if missing:
        raise SystemExit(f"setup.cfg declares no lower bound (NAME>=VERSION) for {missing}: declare one for each.")
    return bounds


def check_versions(expected: list[str]) -> None:
    """Print the versions in use; fail if one differs from an `--expect NAME==VERSION` (pip moved a pin)."""
    from packaging.version import Version  # a dependency of transformers

    installed = {name: importlib.metadata.version(name) for name in BOUNDED}
    print("versions: " + ", ".join(f"{name} {version}" for name, version in installed.items()), flush=True)
    for requirement in expected:
        name, version = requirement.split("==")
        found = importlib.metadata.version(name)
        if Version(Version(found).public) != Version(version):  # 2.13.0+cpu is 2.13
            raise SystemExit(f"{name} is {found}, but the check was asked to run with {version}")


def check_model_round_trip(folder: Path) -> None:
    """A tiny model's forward, and its save/load with the package: same logits, every weight found."""
    import numpy as np
    import PIL.Image
    import torch

    from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor

    torch.manual_seed(0)
    model = DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**TINY_CONFIG)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, model.get_input_embeddings().num_patches, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model(pixel_values, noise=noise)
    if outputs.logits.shape != (2, 64, 4 * 4 * 3) or not torch.isfinite(outputs.loss):
        raise SystemExit(f"forward: logits {tuple(outputs.logits.shape)}, loss {outputs.loss}")
    model.save_pretrained(folder)
    loaded, info = DilatedViTMAEForPreTraining.from_pretrained(folder, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value and key != "error_msgs"}
    if problems:
        raise SystemExit(f"from_pretrained: {problems}")
    with torch.no_grad():
        reloaded = loaded.eval()(pixel_values, noise=noise)
    torch.testing.assert_close(reloaded.logits, outputs.logits)

    processor = DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    image = PIL.Image.fromarray(np.arange(48 * 40 * 3, dtype=np.uint8).reshape(48, 40, 3))
    values = DilatedViTMAEImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"]
    if tuple(values.shape) != (1, 3, 32, 32):
        raise SystemExit(f"image processor: pixel_values {tuple(values.shape)}")
    print(f"model round trip: loss {outputs.loss.item():.4f}, logits equal after from_pretrained", flush=True)


def check_training(output_dir: Path) -> None:
    """Two steps of scripts/run_mae.py on the shipped sample, then the folder it saved."""
    import math

    command = [sys.executable, str(REPO_ROOT / "scripts" / "run_mae.py"), "--max_train_steps", "2",
               "--output_dir", str(output_dir), "--checkpointing_steps", "no"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit("scripts/run_mae.py failed:\n" + "\n".join(result.stderr.splitlines()[-30:]))
    results = json.loads((output_dir / "all_results.json").read_text())
    if results["global_step"] != 2 or not math.isfinite(results["eval_loss"]):
        raise SystemExit(f"scripts/run_mae.py: step {results['global_step']}, eval_loss {results['eval_loss']}")
    print(f"run_mae.py: 2 steps, eval_loss {results['eval_loss']:.4f}, psnr {results['eval_psnr']:.2f}", flush=True)


def check_remote_code(folder: Path) -> None:
    """The trained folder, loaded with trust_remote_code where the package cannot be imported."""
    from dilated_vit_mae.publish.hub import check_folder

    report = check_folder(folder)
    print(f"trust_remote_code load: {report}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pins", action="store_true", help="print the declared lower bounds as pins and exit")
    parser.add_argument("--expect", nargs="*", default=[], metavar="PACKAGE==VERSION")
    args = parser.parse_args()
    if args.pins:
        print(" ".join(f"{name}=={version}" for name, version in declared_lower_bounds().items()))
        return
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    start = time.perf_counter()
    check_versions(args.expect)
    with tempfile.TemporaryDirectory(prefix="lower-bounds-") as scratch:
        check_model_round_trip(Path(scratch) / "tiny")
        check_training(Path(scratch) / "run")
        check_remote_code(Path(scratch) / "run")
    print(f"lower bounds: all checks passed in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
