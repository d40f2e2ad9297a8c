#!/usr/bin/env bash
# The lower bounds that setup.cfg declares, installed together in a throwaway venv (torch, transformers,
# huggingface_hub, accelerate, datasets, evaluate, simplejpeg and pytest each pinned to its bound), pass
# .ci/lower_bounds_check.py (import, a tiny model's forward/save/load with the package and with trust_remote_code,
# two training steps of scripts/run_mae.py) and the tests that fail one release below a bound:
#   datasets 4.5 (imagefolder metadata.csv under pandas 3), accelerate 1.7 (FSDP2 auto-wrap), evaluate 0.1.2,
#   simplejpeg 1.7.3 (numpy 1 build).
# About 4 minutes on 2 cores, most of it pip.
# It works on a copy of the checkout: .ci/run starts it beside the main install, and two editable installs of one
# folder would race on its egg-info.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 -c "import shutil, sys; shutil.copytree('.', sys.argv[1], ignore=shutil.ignore_patterns(
    '.git', '.venv', 'outputs', 'build', 'dist', '*.egg-info', '__pycache__', '.pytest_cache'))" "$scratch/src"
cd "$scratch/src"

read -r -a pins <<< "$(python3 .ci/lower_bounds_check.py --pins)"
echo "lower bounds: ${pins[*]}"
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q -e '.[train]' "${pins[@]}"
"$scratch/venv/bin/python" .ci/lower_bounds_check.py --expect "${pins[@]}"
"$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/test_loading.py tests/test_metrics.py tests/test_accelerate_configs.py \
    tests/test_transforms.py::test_simplejpeg_decodes_the_pixels_pil_decodes
