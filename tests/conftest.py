"""Shared fixtures: a tiny configuration (image 32, patch 4, hidden 32, 2 layers) so the suite runs on two CPU cores."""

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch


REPO_ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# the image-check records and feature caches of the tests (and of the scripts they start) go to a folder of this
# process's, removed at exit, not to the user's ~/.cache/dilated_vit_mae
if "DILATED_VIT_MAE_CACHE" not in os.environ:
    os.environ["DILATED_VIT_MAE_CACHE"] = tempfile.mkdtemp(prefix="dilated-vit-mae-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DILATED_VIT_MAE_CACHE"], ignore_errors=True)

TINY_CONFIG = dict(
    image_size=32,
    patch_size=4,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=64,
)


@pytest.fixture
def tiny_config_kwargs() -> dict:
    return dict(TINY_CONFIG)


@pytest.fixture
def tiny_config(tiny_config_kwargs):
    from dilated_vit_mae import DilatedViTMAEConfig

    return DilatedViTMAEConfig(**tiny_config_kwargs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def reset_accelerate():
    """Forget accelerate's process-wide state after a test that ran a training script in this process."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def run_without_package(args: list[str], workdir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """
    Run `python *args` as a Hub user would: a fresh interpreter, offline, with an empty remote-code cache, started in
    `workdir` (not the repository root, whose package folder would be importable) and without PYTHONPATH.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(workdir) / "modules"), PYTHONNOUSERSITE="1")
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )


def load_file(path: str | Path, name: str | None = None):
    """Import a file that is not in the package (a script, a benchmark, `app.py`, a folder's `handler.py`) as a module;
    a relative `path` is taken from the repository root."""
    path = REPO_ROOT / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vit_mae_random_checkpoint(tiny_config_kwargs: dict, path, **overrides):
    """transformers' own ViTMAE with every parameter random (its from-scratch tables are all zero), saved to `path`."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    reference = ViTMAEForPreTraining(ViTMAEConfig(**{**tiny_config_kwargs, **overrides}))
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
    reference.save_pretrained(path)
    return reference.eval()
