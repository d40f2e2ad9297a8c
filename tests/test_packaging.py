"""Packaging: a non-editable install carries what the package reads at run time (the model card templates and example
images), and CI's lower-bound venv (.ci/lower_bounds.sh) pins exactly the lower bounds that setup.cfg declares."""

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement


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
        assert archive.read("dilated_vit_mae/publish/model_card.md") == (REPO_ROOT / "model_card.md").read_bytes()
        classifier_card = REPO_ROOT / "dilated_vit_mae" / "publish" / "classifier_card.md"
        assert archive.read("dilated_vit_mae/publish/classifier_card.md") == classifier_card.read_bytes()
    examples = sorted(p.name for p in (REPO_ROOT / "dilated_vit_mae" / "assets" / "examples").iterdir())
    assert examples and all(f"dilated_vit_mae/assets/examples/{name}" in names for name in examples)
    for module in ("modeling_dilated_vit_mae", "pipeline_dilated_vit_mae", "handler", "publish/model_card", "publish/hub",
                   "evaluation/probe", "data/labels"):  # fmt: skip
        assert f"dilated_vit_mae/{module}.py" in names
    assert any(name.startswith("dilated_vit_mae/evaluation/metrics/") for name in names)


# ----------------------------------------------------------------------------------------------------------------------
# The declared lower bounds, as CI installs them (.ci/lower_bounds.sh)
# ----------------------------------------------------------------------------------------------------------------------

LOWER_BOUND_CFG = """
[options]
install_requires =
    torch>=2.13
    transformers>=5.18.0,<6
    huggingface_hub>=1.31.0
[options.extras_require]
train =
    accelerate>=1.8.0
    datasets>=4.6.0
    evaluate>=0.2.0
    simplejpeg>=1.7.4
test =
    pytest>=8
    accelerate>={accelerate_in_test}
"""


@pytest.fixture
def lower_bounds():
    from conftest import load_file

    return load_file(".ci/lower_bounds_check.py", "lower_bounds_check")


def test_ci_pins_every_checked_package_to_the_bound_setup_cfg_declares(lower_bounds):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO_ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].splitlines() + parser["options.extras_require"]["train"].splitlines()
    specifiers = {r.name: r.specifier for r in (Requirement(line) for line in lines if line and not line.startswith("#"))}

    pins = lower_bounds.declared_lower_bounds()
    assert set(pins) == set(lower_bounds.BOUNDED)
    for name in ("torch", "transformers", "huggingface_hub", "accelerate", "datasets", "evaluate", "simplejpeg"):
        # the pin is the smallest version the declared range admits
        assert specifiers[name].contains(pins[name]) and f">={pins[name]}" in str(specifiers[name]), name


def test_a_bound_declared_differently_in_two_extras_is_refused(lower_bounds, tmp_path):
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text(LOWER_BOUND_CFG.format(accelerate_in_test="1.8.0"))
    assert lower_bounds.declared_lower_bounds(setup_cfg)["accelerate"] == "1.8.0"

    setup_cfg.write_text(LOWER_BOUND_CFG.format(accelerate_in_test="1.0"))
    with pytest.raises(SystemExit, match=r"accelerate>=1\.8\.0 and >=1\.0"):
        lower_bounds.declared_lower_bounds(setup_cfg)


def test_a_checked_package_without_a_lower_bound_is_refused(lower_bounds, tmp_path):
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text(LOWER_BOUND_CFG.format(accelerate_in_test="1.8.0").replace("datasets>=4.6.0", "datasets"))
    with pytest.raises(SystemExit, match=r"no lower bound .*\['datasets'\]"):
        lower_bounds.declared_lower_bounds(setup_cfg)


def test_the_check_refuses_to_run_with_a_version_pip_moved(lower_bounds):
    import torch

    lower_bounds.check_versions([f"torch=={torch.__version__.split('+')[0]}"])  # 2.13.0+cpu is 2.13.0
    with pytest.raises(SystemExit, match=r"torch is .*, but the check was asked to run with 2\.4"):
        lower_bounds.check_versions(["torch==2.4"])


def test_ci_runs_the_readme_test_command_and_the_lower_bounds_and_fails_if_either_fails():
    readme = (REPO_ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "-e '.[test]'" in line and "pytest" in line)
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    # the README command, as written, with its status kept (set -e would stop before the lower bounds' output)
    assert f"{command} || suite=$?" in ci_lines
    assert 'bash .ci/lower_bounds.sh > "$lower_log" 2>&1 &' in ci_lines and 'wait "$lower_pid" || lower=$?' in ci_lines
    assert ci_lines[-1] == '[ "$suite" -eq 0 ] && [ "$lower" -eq 0 ]'
