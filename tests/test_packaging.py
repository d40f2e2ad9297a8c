"""A non-editable install carries what the package reads at run time: the model card template and example images."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # builds a wheel with setuptools: ~10 s
def test_wheel_ships_the_card_template_and_the_example_images(tmp_path):
    # build from a copy, so that setuptools' build/ and egg-info never land in the checkout
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("dilated_vit_mae-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        # the template is a link in the source tree: the wheel must hold the file itself
        assert archive.read("dilated_vit_mae/model_card.md") == (REPO_ROOT / "model_card.md").read_bytes()
    examples = sorted(p.name for p in (REPO_ROOT / "dilated_vit_mae" / "assets" / "examples").iterdir())
    assert examples and all(f"dilated_vit_mae/assets/examples/{name}" in names for name in examples)
    for module in ("modeling_dilated_vit_mae", "pipeline_dilated_vit_mae", "handler", "model_card", "hub", "probe"):
        assert f"dilated_vit_mae/{module}.py" in names
    assert any(name.startswith("dilated_vit_mae/metrics/") for name in names)
