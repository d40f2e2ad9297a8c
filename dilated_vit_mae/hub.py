"""
Publishing a training run's output folder to the Hugging Face Hub.

A *publishable folder* is a `save_pretrained` folder (model, image processor, their code) plus what makes it a
complete Hub repository, all written by `prepare_hub_folder`:

- `pipeline_dilated_vit_mae.py`, named in `config.json` under `custom_pipelines`, so that
  `pipeline("mae-reconstruction", model=..., trust_remote_code=True)` works without the package;
- `handler.py`, an Inference Endpoints custom handler that serves the folder;
- `README.md`, the model card (`dilated_vit_mae.model_card`), with `assets/tokenizer_diagram.png` and the widget's
  example images and their static reconstructions in `examples/`.

`push_folder_to_hub` refuses a folder that does not load: it checks the exact files it would upload in a clean Python
process where this package cannot be imported (remote code only), then creates the repository and uploads them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from fnmatch import fnmatch
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# what a run writes next to the model that does not belong in the model repository (the per-epoch reconstruction
# grids of a long run add up to hundreds of MB; the last one, eval/reconstructions.png, is kept)
IGNORE_PATTERNS = (
    "checkpoints/*", "runs/*", ".tmp-*", "*/.tmp-*", "__pycache__/*", "*/__pycache__/*", "eval/reconstructions_epoch_*",
)  # fmt: skip

RECONSTRUCTION_TASK = "mae-reconstruction"
PIPELINE_FILE = "pipeline_dilated_vit_mae.py"
HANDLER_FILE = "handler.py"
# what `PIPELINE_REGISTRY.register_pipeline(RECONSTRUCTION_TASK, DilatedViTMAEReconstructionPipeline,
# pt_model=AutoModelForPreTraining, type="image")` followed by the pipeline's `save_pretrained` writes to config.json.
# "pt" must name a class that `transformers` exports: the model class itself is resolved through `auto_map`.
CUSTOM_PIPELINES = {
    RECONSTRUCTION_TASK: {
        "impl": "pipeline_dilated_vit_mae.DilatedViTMAEReconstructionPipeline",
        "pt": ["AutoModelForPreTraining"],
        "type": "image",
    }
}


class FolderCheckError(RuntimeError):
    """A folder that would not work once published; nothing was uploaded."""


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """Relative paths of the files `push_folder_to_hub` would upload, sorted."""
    root = Path(folder)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in files if not any(fnmatch(f, pattern) for pattern in IGNORE_PATTERNS))


# ----------------------------------------------------------------------------------------------------------------------
# Making a folder publishable
# ----------------------------------------------------------------------------------------------------------------------


def register_reconstruction_pipeline() -> None:
    """
    Register the `"mae-reconstruction"` task with transformers' pipeline registry (in this process).

    The folder's other pipeline, for `"image-feature-extraction"`, is deliberately not registered: the registry is
    process-wide, and transformers' built-in pipeline of that name must keep serving every other model. Folders name it
    in their config's `custom_pipelines` (`add_inference_code`), which `pipeline(...)` prefers to the built-in one.
    """
    from transformers import AutoModelForPreTraining
    from transformers.pipelines import PIPELINE_REGISTRY

    from .pipeline_dilated_vit_mae import DilatedViTMAEReconstructionPipeline

    if RECONSTRUCTION_TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            RECONSTRUCTION_TASK, DilatedViTMAEReconstructionPipeline, pt_model=AutoModelForPreTraining, type="image"
        )


def add_inference_code(folder: str | os.PathLike) -> list[str]:
    """
    Ship the pipelines and the Inference Endpoints handler in a saved model folder: copy `pipeline_dilated_vit_mae.py`
    and `handler.py` into it and register its two pipelines in its `config.json` (`custom_pipelines`, as transformers'
    own `Pipeline.save_pretrained` would): `"mae-reconstruction"`, and `"image-feature-extraction"`, the task the
    model card advertises, which then replaces transformers' built-in pipeline for this folder (with
    `trust_remote_code=True`): whole-image features, the same at every call, and `pool=True`.

    Returns:
        The files written, relative to `folder`.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved model folder.")
    shutil.copyfile(PACKAGE_DIR / PIPELINE_FILE, folder / PIPELINE_FILE)
    shutil.copyfile(PACKAGE_DIR / "handler.py", folder / HANDLER_FILE)
    # the built-in "image-feature-extraction" would run the model as configured for pre-training (75% of the patches
    # dropped at random) and has nothing to pool
    feature_pipeline = {
        "image-feature-extraction": {
            "impl": "pipeline_dilated_vit_mae.DilatedViTMAEImageFeatureExtractionPipeline",
            "pt": ["AutoModel"],
            "type": "image",
        }
    }
    config = json.loads(config_path.read_text())
    config["custom_pipelines"] = {**(config.get("custom_pipelines") or {}), **CUSTOM_PIPELINES, **feature_pipeline}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return [PIPELINE_FILE, HANDLER_FILE, "config.json"]


def prepare_hub_folder(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    revision: str | None = None,
    model=None,
    image_processor=None,
    examples: bool = True,
) -> list[str]:
    """
    Make a saved model folder publishable as it is: add the pipeline and the handler (`add_inference_code`), draw
    the card's images (`model_card.write_card_assets`) and render its `README.md` (`model_card.render_model_card`).

    Args:
        folder: a folder holding `config.json`, the weights and `preprocessor_config.json` (and, from a training run,
            `all_results.json`).
        repo_id, revision (*optional*): the Hub repository and commit the card's snippets point at.
        model, image_processor (*optional*): the loaded model and processor, to avoid loading them again.
        examples (`bool`, *optional*, defaults to `True`): reconstruct the example images for the widget.

    Returns:
        The files written, relative to `folder`.
    """
    from .model_card import render_model_card, write_card_assets

    written = add_inference_code(folder)
    written += write_card_assets(
        folder, model=model, image_processor=image_processor, example_images=None if examples else []
    )
    render_model_card(folder, repo_id=repo_id, revision=revision)
    return written + ["README.md"]


# ----------------------------------------------------------------------------------------------------------------------
# Checking a folder: does it load where the package is not installed?
# ----------------------------------------------------------------------------------------------------------------------

CHECK_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["dilated_vit_mae"] = None  # what a Hub user has: the folder's code, not this package
    import importlib.util, json, os
    import numpy as np
    import PIL.Image
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForPreTraining, pipeline

    folder = sys.argv[1]
    report = {}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model, info = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    if not type(model).__module__.startswith("transformers_modules"):
        raise SystemExit(f"the model was not loaded from the folder's code but from {type(model).__module__}")
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise SystemExit(f"the weights do not match the model: {problems}")
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    ramp = np.linspace(0, 255, 64 * 48, dtype=np.float64).reshape(48, 64)
    channels = [ramp, ramp.T[:48, :48].repeat(2, 1)[:, :64], 255 - ramp]
    image = PIL.Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    num_patches = model.get_input_embeddings().num_patches
    with torch.no_grad():
        outputs = model(pixel_values, noise=torch.rand(1, num_patches, generator=torch.Generator().manual_seed(0)))
    if not torch.isfinite(outputs.loss) or not torch.isfinite(outputs.logits).all():
        raise SystemExit(f"the forward pass is not finite (loss {outputs.loss.item()})")
    report["loss"] = outputs.loss.item()
    report["logits_shape"] = list(outputs.logits.shape)

    for task in getattr(config, "custom_pipelines", None) or {}:
        result = pipeline(task, model=folder, trust_remote_code=True)(image, mask_ratio=0.75, seed=0)
        for key in ("masked", "reconstruction", "recomposited"):
            if not isinstance(result[key], PIL.Image.Image):
                raise SystemExit(f"the {task} pipeline's {key!r} is not an image: {type(result[key])}")
        report.setdefault("pipelines", []).append(task)

    handler_path = os.path.join(folder, "handler.py")
    if os.path.isfile(handler_path):
        spec = importlib.util.spec_from_file_location("endpoint_handler", handler_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handler = module.EndpointHandler(folder)
        for parameters in ({"task": "reconstruction", "mask_ratio": 0.5, "seed": 1}, {"task": "features"}):
            json.dumps(handler({"inputs": image, "parameters": parameters}))
        report["handler"] = True

    card_path = os.path.join(folder, "README.md")
    if os.path.isfile(card_path):
        card = ModelCard.load(card_path)
        data = card.data.to_dict()
        for key in ("library_name", "pipeline_tag", "license", "tags"):
            if not data.get(key):
                raise SystemExit(f"the model card has no {key!r} metadata")
        report["card"] = True
    print("CHECK-REPORT " + json.dumps(report))
    """
)


def _static_problems(folder: Path) -> list[str]:
    """What is visibly missing, found without loading anything."""
    problems = []
    config_path = folder / "config.json"
    if not config_path.is_file():
        return [f"{folder} has no config.json: it is not a saved model folder."]
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        return [f"config.json is not valid JSON ({error})."]
    auto_map = dict(config.get("auto_map") or {})
    processor_path = folder / "preprocessor_config.json"
    if not processor_path.is_file():
        problems.append("preprocessor_config.json is missing: save the image processor into the folder.")
    else:
        auto_map.update(json.loads(processor_path.read_text()).get("auto_map") or {})
    if not auto_map:
        problems.append("config.json has no auto_map: the folder cannot be loaded with trust_remote_code.")
    references = [ref for value in auto_map.values() for ref in (value if isinstance(value, list) else [value]) if ref]
    references += [task["impl"] for task in (config.get("custom_pipelines") or {}).values()]
    for reference in references:
        module = reference.split("--")[-1].rsplit(".", 1)[0]
        if not (folder / f"{module}.py").is_file():
            problems.append(f"{module}.py is missing, but {reference!r} needs it.")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        problems.append("no weights (model.safetensors) in the folder.")
    if (folder / "README.md").is_file():
        from huggingface_hub import ModelCard

        try:
            ModelCard.load(folder / "README.md")
        except Exception as error:  # the card's YAML header does not parse
            problems.append(f"README.md does not parse as a model card ({error}).")
    return sorted(set(problems))


def check_folder(folder: str | os.PathLike, timeout: float = 600) -> dict[str, Any]:
    """
    Check that `folder` works as a Hub repository where this package is not installed: the files it needs are there,
    and a clean Python process (package blocked, offline, fresh remote-code cache) loads the model, its image
    processor, its custom pipelines and its handler with `trust_remote_code=True`, runs a forward pass with finite
    outputs, and parses the model card's metadata.

    Returns:
        What the check ran (e.g. `{"loss": ..., "pipelines": ["mae-reconstruction"], "handler": True, "card": True}`).

    Raises:
        `FolderCheckError`, naming the problem.
    """
    folder = Path(folder).resolve()
    problems = _static_problems(folder)
    if problems:
        raise FolderCheckError(f"{folder} cannot be published: " + " ".join(problems))
    with tempfile.TemporaryDirectory(prefix="dilated-vit-mae-check-") as scratch:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(scratch) / "modules"), PYTHONNOUSERSITE="1")
        script = Path(scratch) / "check.py"
        script.write_text(CHECK_SCRIPT)
        try:
            result = subprocess.run(
                [sys.executable, str(script), str(folder)],
                cwd=scratch,  # not a directory from which this package could be imported
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise FolderCheckError(f"Loading {folder} in a clean process took more than {timeout} s.") from error
    report_lines = [line for line in result.stdout.splitlines() if line.startswith("CHECK-REPORT ")]
    if result.returncode != 0 or not report_lines:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise FolderCheckError(
            f"{folder} does not load with trust_remote_code where the package is not installed, so it was not "
            f"published. The clean process said:\n{tail}"
        )
    return json.loads(report_lines[-1].removeprefix("CHECK-REPORT "))


# ----------------------------------------------------------------------------------------------------------------------
# Uploading
# ----------------------------------------------------------------------------------------------------------------------


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
PUBLISHING_FILES = (PIPELINE_FILE, HANDLER_FILE, "README.md")


def stage_folder(
    folder: str | os.PathLike, destination: str | os.PathLike, repo_id: str | None = None, prepare: bool = True
) -> list[str]:
    """
    Lay out in `destination` exactly what would be uploaded from `folder`, which itself is never modified:

    - the files of `files_to_upload(folder)`: weights hard-linked where the file system allows (nothing here ever
      writes to them), everything else copied;
    - with `prepare`, a folder that is not publishable yet (no pipeline, handler or card) is completed in
      `destination` (`prepare_hub_folder`); a card rendered from the template is rendered again for `repo_id`.

    Returns:
        The files to upload, relative to `destination`.
    """
    folder, destination = Path(folder), Path(destination)
    for name in files_to_upload(folder):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(WEIGHT_SUFFIXES):
            try:
                os.link(folder / name, target)
                continue
            except OSError:
                pass
        shutil.copy2(folder / name, target)
    if prepare and (destination / "config.json").is_file():
        from .model_card import TEMPLATE_PATH, is_rendered_card, render_model_card

        if not all((destination / name).is_file() for name in PUBLISHING_FILES):
            try:
                prepare_hub_folder(destination, repo_id=repo_id)
            except Exception as error:  # e.g. no image processor: the folder cannot work as a repository
                raise FolderCheckError(f"{folder} could not be made publishable: {error}") from error
        elif repo_id is not None and TEMPLATE_PATH.is_file() and is_rendered_card(destination / "README.md"):
            render_model_card(destination, repo_id=repo_id)
    return files_to_upload(destination)


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload DilatedViTMAE",
    revision: str | None = None,
    api=None,
    check: bool = True,
    pin_revision: bool = True,
    prepare: bool = True,
) -> str:
    """
    Create `repo_id` (if needed) and upload `folder` to it with `huggingface_hub`, leaving out checkpoints and
    tracker logs. Local files are never modified or deleted, whether the upload succeeds or not: what is uploaded is
    staged in a sibling temporary folder (`stage_folder`), checked there, uploaded from there, and removed afterwards.

    Args:
        folder (`str` or `os.PathLike`): a publishable folder (`prepare_hub_folder`; what `scripts/run_mae.py` saves).
        repo_id (`str`): `namespace/name` on the Hub.
        token (`str`, *optional*): a write token; defaults to the logged-in one.
        private (`bool`, *optional*, defaults to `False`): create the repository private.
        commit_message (`str`, *optional*): message of the upload commit.
        revision (`str`, *optional*): a branch to upload to (created if missing); defaults to `main`.
        api (`huggingface_hub.HfApi`, *optional*): the client to use (tests pass a mock).
        check (`bool`, *optional*, defaults to `True`): refuse to upload unless the staged files pass `check_folder`
            (before any call to the Hub).
        pin_revision (`bool`, *optional*, defaults to `True`): after the upload, commit the model card again with its
            snippets pinned to the upload commit (`revision="<sha>"`), so that readers run the code they can review.
        prepare (`bool`, *optional*, defaults to `True`): complete a folder that is not publishable yet (pipeline,
            handler, card) in the staging copy, and render its card for `repo_id` (`stage_folder`).

    Returns:
        The URL of the upload commit.

    Raises:
        `FolderCheckError` when the folder would not work once published (nothing is uploaded).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved model folder.")
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-hub-staging-", dir=folder.resolve().parent))
    try:
        stage_folder(folder, staging, repo_id=repo_id, prepare=prepare)
        if check:
            report = check_folder(staging)
            logger.info(f"{folder} loads without the package: {report}")
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and revision != "main":
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(staging),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=list(IGNORE_PATTERNS),
        )
        url = getattr(commit, "commit_url", None) or str(commit)
        logger.info(f"uploaded {folder} to {repo_id}: {url}")
        sha = getattr(commit, "oid", None)
        if pin_revision and isinstance(sha, str):
            from .model_card import TEMPLATE_PATH, is_rendered_card, render_model_card

            if TEMPLATE_PATH.is_file() and is_rendered_card(staging / "README.md"):
                render_model_card(staging, repo_id=repo_id, revision=sha)
                api.upload_file(
                    path_or_fileobj=str(staging / "README.md"),
                    path_in_repo="README.md",
                    repo_id=repo_id,
                    repo_type="model",
                    revision=revision,
                    commit_message=f"Model card: pin the code revision to {sha[:10]}",
                )
        return url
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "CUSTOM_PIPELINES",
    "FolderCheckError",
    "IGNORE_PATTERNS",
    "RECONSTRUCTION_TASK",
    "add_inference_code",
    "check_folder",
    "files_to_upload",
    "prepare_hub_folder",
    "push_folder_to_hub",
    "register_reconstruction_pipeline",
    "stage_folder",
]
