"""
Publishing a training run's output folder to the Hugging Face Hub.

A *publishable folder* is a `save_pretrained` folder (model, image processor, their code) plus what makes it a
complete Hub repository, all written by `prepare_hub_folder`:

- `pipeline_dilated_vit_mae.py`, named in `config.json` under `custom_pipelines`, so that
  `pipeline("mae-reconstruction", model=..., trust_remote_code=True)` works without the package;
- `handler.py`, an Inference Endpoints custom handler that serves the folder;
- `README.md`, the model card (`dilated_vit_mae.publish.model_card`), with `assets/tokenizer_diagram.png` and the widget's
  example images and their static reconstructions in `examples/`.

`push_folder_to_hub` uploads only the documented files of such a folder, each by its exact name (`published_names`:
`PUBLISHED_FILES`, and the weight shards and example images the folder's own records list), never a symbolic link,
and says what it left out (`plan_upload`). It refuses a folder that does not load: it checks the exact files it would
upload in a clean Python process where this package cannot be imported (remote code only), then creates the
repository and uploads them. The results files and the card are redacted by value in the uploaded copy
(`dilated_vit_mae.train.redaction`): no token, and no local path in the results.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..pipeline_dilated_vit_mae import DilatedViTMAEReconstructionPipeline
from ..train.lifecycle import is_generated_card
from ..train.redaction import publishable, redact, secret_values
from .model_card import TEMPLATE_PATH, is_rendered_card, render_classifier_card, render_model_card, write_card_assets


logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]

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


# The files of a published repository, by exact name (those the README's *Publishing* table documents); nothing else
# in a run's folder is uploaded (checkpoints with optimizer and RNG pickles, tracker logs, per-epoch grids, a planted
# `.env`, `assets/secrets.json`, `examples/id_rsa`, an `evil_dilated_vit_mae.py` that `trust_remote_code` would run...).
# Beyond these, the folder's own records name the rest exactly (`published_names`): the weight shards listed in
# `model.safetensors.index.json`, and the example images listed in `examples/examples.json` (`write_card_assets`).
HUB_CODE_FILES = (
    "configuration_dilated_vit_mae.py", "modeling_dilated_vit_mae.py", "image_processing_dilated_vit_mae.py",
    PIPELINE_FILE, HANDLER_FILE,
)  # fmt: skip
# published results: redacted by value and stripped of local paths in the uploaded copy
RESULTS_FILES = ("all_results.json", "linear_probe_results.json", "knn_results.json")
WEIGHTS_INDEX = "model.safetensors.index.json"
EXAMPLES_RECORD = "examples/examples.json"
PUBLISHED_FILES = (
    "config.json", "model.safetensors", WEIGHTS_INDEX, "preprocessor_config.json", *HUB_CODE_FILES, "README.md",
    *RESULTS_FILES, "eval/reconstructions.png", "assets/tokenizer_diagram.png", EXAMPLES_RECORD,
)  # fmt: skip
EXAMPLE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LINK_REASON = "a symbolic link, never followed (its target may lie outside the folder)"
NOT_PUBLISHED_REASON = "not one of the published files"


@dataclass
class UploadPlan:
    """What would be uploaded from a folder (`files`, relative, sorted) and what is left out (relative path -> why)."""

    files: list[str]
    left_out: dict[str, str]


def is_classifier_folder(folder: str | os.PathLike) -> bool:
    """A fine-tuned classifier (`scripts/run_finetune.py`): published with its own card, no MAE pipeline or handler."""
    config_path = Path(folder) / "config.json"
    try:
        architectures = json.loads(config_path.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(name.endswith("ForImageClassification") for name in architectures)


def _plain_name(name: Any) -> bool:
    """A file name of one component, not hidden: what a record of the folder may name."""
    return isinstance(name, str) and bool(name) and PurePosixPath(name).name == name and not name.startswith(".")


def _read_record(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        return None


def published_names(folder: str | os.PathLike) -> set[str]:
    """
    The relative paths `push_folder_to_hub` may upload from `folder`, each by exact name: `PUBLISHED_FILES`, the weight
    shards that `model.safetensors.index.json` lists, and the example images (`examples/<name>`,
    `examples/<stem>_reconstruction.png`) that `examples/examples.json` lists, as `write_card_assets` wrote them.
    """
    folder = Path(folder)
    names = set(PUBLISHED_FILES)
    index = _read_record(folder / WEIGHTS_INDEX)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if isinstance(weight_map, dict):
        names.update(n for n in weight_map.values() if _plain_name(n) and n.endswith(".safetensors"))
    examples = _read_record(folder / EXAMPLES_RECORD)
    images = examples.get("images") if isinstance(examples, dict) else None
    for name in images if isinstance(images, list) else ():
        if _plain_name(name) and PurePosixPath(name).suffix.lower() in EXAMPLE_IMAGE_SUFFIXES:
            names.update({f"examples/{name}", f"examples/{PurePosixPath(name).stem}_reconstruction.png"})
    return names


def plan_upload(folder: str | os.PathLike) -> UploadPlan:
    """Sort the files under `folder` into those `push_folder_to_hub` uploads and those it leaves out (and why)."""
    root = Path(folder)
    published = published_names(root)
    files, left_out = [], {}
    for directory, dirnames, filenames in os.walk(root):  # a linked folder is listed, never entered
        for name in dirnames + filenames:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                left_out[relative + ("/" if name in dirnames else "")] = LINK_REASON
            elif name in filenames and relative in published:
                files.append(relative)
            elif name in filenames:
                left_out[relative] = NOT_PUBLISHED_REASON
    return UploadPlan(sorted(files), dict(sorted(left_out.items())))


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """Relative paths of the files `push_folder_to_hub` would upload, sorted (`plan_upload(folder).files`)."""
    return plan_upload(folder).files


def describe_left_out(left_out: dict[str, str]) -> list[str]:
    """One line per file left out of an upload, `path  (why)`."""
    return [f"{name}  ({reason})" for name, reason in left_out.items()]


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
    secrets: Iterable[str] = (),
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
        secrets (*optional*): values the card must not contain (`redaction.secret_values(args)`), beside the
            environment's and the cached login's.

    Returns:
        The files written, relative to `folder`.
    """
    written = add_inference_code(folder)
    written += write_card_assets(
        folder, model=model, image_processor=image_processor, example_images=None if examples else []
    )
    render_model_card(folder, repo_id=repo_id, revision=revision, secrets=secrets)
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
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, AutoModelForPreTraining, pipeline

    folder = sys.argv[1]
    report = {}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    classifier = any(name.endswith("ForImageClassification") for name in config.architectures or [])
    auto_class = AutoModelForImageClassification if classifier else AutoModelForPreTraining
    model, info = auto_class.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
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
    if classifier:  # its logits, and transformers' own image-classification pipeline naming a label
        with torch.no_grad():
            logits = model(pixel_values).logits
        if not torch.isfinite(logits).all():
            raise SystemExit("the classifier's logits are not finite")
        report["logits_shape"] = list(logits.shape)
        best = pipeline("image-classification", model=folder, trust_remote_code=True)(image, top_k=1)[0]
        if best["label"] not in config.id2label.values():
            raise SystemExit(f"the image-classification pipeline named no label of the config: {best}")
        report.setdefault("pipelines", []).append("image-classification")
    else:
        num_patches = model.get_input_embeddings().num_patches
        with torch.no_grad():
            outputs = model(pixel_values, noise=torch.rand(1, num_patches, generator=torch.Generator().manual_seed(0)))
        if not torch.isfinite(outputs.loss) or not torch.isfinite(outputs.logits).all():
            raise SystemExit(f"the forward pass is not finite (loss {outputs.loss.item()})")
        report["loss"] = outputs.loss.item()
        report["logits_shape"] = list(outputs.logits.shape)

    for task in getattr(config, "custom_pipelines", None) or {}:
        run = pipeline(task, model=folder, trust_remote_code=True)
        if task == "mae-reconstruction":
            result = run(image, mask_ratio=0.75, seed=0)
            for key in ("masked", "reconstruction", "recomposited"):
                if not isinstance(result[key], PIL.Image.Image):
                    raise SystemExit(f"the {task} pipeline's {key!r} is not an image: {type(result[key])}")
        else:  # e.g. image-feature-extraction: numbers, all finite
            values = np.asarray(run(image), dtype=np.float64)
            if values.size == 0 or not np.isfinite(values).all():
                raise SystemExit(f"the {task} pipeline returned no finite values (shape {values.shape})")
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


@dataclass
class PushResult:
    """What `push_folder_to_hub` did: the upload commit, the files uploaded and those left out (path -> why)."""

    url: str
    commit_oid: str | None = None
    files: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.url


def _refuse_linked_published_files(folder: Path, plan: UploadPlan) -> None:
    published = published_names(folder)
    linked = [name for name, reason in plan.left_out.items() if reason == LINK_REASON and name in published]
    if linked:
        raise FolderCheckError(
            f"{folder} cannot be published: {', '.join(linked)} must be files, not symbolic links; links are never "
            "followed when publishing (a link's target may be any file). "
            "Replace each link with the file itself, e.g. `cp --remove-destination \"$(readlink -f PATH)\" PATH`."
        )


def _redact_staged(destination: Path, secrets: Iterable[str]) -> None:
    """In the uploaded copy: results files without secrets or local paths, a card without secrets."""
    for name in RESULTS_FILES:
        path = destination / name
        if path.is_file():
            try:
                results = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise FolderCheckError(f"{name} is not valid JSON ({error}); fix or remove it.") from error
            path.write_text(json.dumps(publishable(results, secrets), indent=2) + "\n")
    card = destination / "README.md"
    if card.is_file():
        card.write_text(redact(card.read_text(encoding="utf-8"), secrets), encoding="utf-8")


def stage_folder(
    folder: str | os.PathLike,
    destination: str | os.PathLike,
    repo_id: str | None = None,
    prepare: bool = True,
    secrets: Iterable[str] | None = None,
    refresh_card: bool = True,
) -> list[str]:
    """
    Lay out in `destination` exactly what would be uploaded from `folder`, which itself is never modified:

    - the published files of `folder` (`plan_upload`; never a symbolic link, and a link where a published file
      should be is refused): weights hard-linked where the file system allows (nothing here ever writes to them),
      everything else copied; the results files and the card redacted by value (`secrets`, by default
      `redaction.secret_values()`: the environment's and the cached login's token), the results without local paths;
    - with `prepare`, a folder that is not publishable yet (no pipeline, handler or card) is completed in
      `destination` (`prepare_hub_folder`); a card rendered from the template is rendered again for `repo_id` (with
      `refresh_card=False`, only where it was rendered for another repository or a local folder: `push_folder_to_hub`
      renders it after the upload anyway, pinned). A fine-tuned classifier (`is_classifier_folder`) is published as
      it is, with its own card (rendered again for `repo_id`).

    Returns:
        The files to upload, relative to `destination`.

    Raises:
        `FolderCheckError` for a linked published file, a results file that is not JSON, or a folder that cannot be
        completed.
    """
    folder, destination = Path(folder), Path(destination)
    secrets = set(secret_values() if secrets is None else secrets)
    plan = plan_upload(folder)
    _refuse_linked_published_files(folder, plan)
    for name in plan.files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(WEIGHT_SUFFIXES):
            try:
                os.link(folder / name, target)
                continue
            except OSError:
                pass
        shutil.copy2(folder / name, target)
    _redact_staged(destination, secrets)
    if prepare and (destination / "config.json").is_file() and not is_classifier_folder(destination):
        if not all((destination / name).is_file() for name in PUBLISHING_FILES):
            try:
                prepare_hub_folder(destination, repo_id=repo_id, secrets=secrets)
            except Exception as error:  # e.g. no image processor: the folder cannot work as a repository
                raise FolderCheckError(f"{folder} could not be made publishable: {error}") from error
        elif repo_id is not None and TEMPLATE_PATH.is_file() and is_rendered_card(destination / "README.md"):
            if refresh_card or not is_rendered_card(destination / "README.md", repo_id):
                render_model_card(destination, repo_id=repo_id, secrets=secrets)
    elif prepare and repo_id is not None and is_classifier_folder(destination):
        _render_classifier_card_for(destination, repo_id)
    return files_to_upload(destination)


def _render_classifier_card_for(destination: Path, repo_id: str) -> None:
    """A classifier's generated card again, with its snippets naming `repo_id` (a hand-written card is kept)."""
    results_path = destination / "all_results.json"
    if is_generated_card(destination / "README.md") and results_path.is_file():  # results already redacted here
        render_classifier_card(json.loads(results_path.read_text()), repo_id=repo_id).save(destination / "README.md")


def _pin_card_revision(api, staging: Path, repo_id: str, revision: str | None, sha: str, secrets: set[str]) -> None:
    """Commit the card again with its snippets pinned to the upload commit `sha` (only a card from the template)."""
    if TEMPLATE_PATH.is_file() and is_rendered_card(staging / "README.md"):
        render_model_card(staging, repo_id=repo_id, revision=sha, secrets=secrets)
        api.upload_file(
            path_or_fileobj=str(staging / "README.md"),
            path_in_repo="README.md",
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=f"Model card: pin the code revision to {sha[:10]}",
        )


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
) -> PushResult:
    """
    Create `repo_id` (if needed) and upload the published files of `folder` to it with `huggingface_hub`: only
    `published_names(folder)`, never a symbolic link; what is left out is logged and returned. Local files are never
    modified or deleted, whether the upload succeeds or not: what is uploaded is staged in a sibling temporary folder
    (`stage_folder`, which redacts `token` and the environment's tokens from the results and the card), checked
    there, uploaded from there, and removed afterwards.

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
            The card is then rendered once per push, there, from the files uploaded: the upload commit carries the
            folder's card as it is when it was rendered for `repo_id` (e.g. by `run_mae.py --hub_model_id`), else one
            rendered for `repo_id` in the staging copy.
        prepare (`bool`, *optional*, defaults to `True`): complete a folder that is not publishable yet (pipeline,
            handler, card) in the staging copy, and render its card for `repo_id` (`stage_folder`).

    Returns:
        A `PushResult` (its `str` is the URL of the upload commit), with the files uploaded and those left out.

    Raises:
        `FolderCheckError` when the folder would not work once published (nothing is uploaded).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved model folder.")
    secrets = secret_values({"token": token})
    left_out = plan_upload(folder).left_out
    if left_out:
        logger.info(f"left out of the upload of {folder}:\n  " + "\n  ".join(describe_left_out(left_out)))
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-hub-staging-", dir=folder.resolve().parent))
    try:
        files = stage_folder(
            folder, staging, repo_id=repo_id, prepare=prepare, secrets=secrets, refresh_card=not pin_revision
        )
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
            allow_patterns=[glob.escape(name) for name in files],  # exactly the staged files, whatever appears there
        )
        url = getattr(commit, "commit_url", None) or str(commit)
        logger.info(f"uploaded {len(files)} files of {folder} to {repo_id}: {url}")
        sha = getattr(commit, "oid", None)
        if pin_revision and isinstance(sha, str):
            _pin_card_revision(api, staging, repo_id, revision, sha, secrets)
        return PushResult(url=url, commit_oid=sha if isinstance(sha, str) else None, files=files, left_out=left_out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "CUSTOM_PIPELINES",
    "HUB_CODE_FILES",
    "PUBLISHED_FILES",
    "FolderCheckError",
    "PushResult",
    "RECONSTRUCTION_TASK",
    "UploadPlan",
    "add_inference_code",
    "check_folder",
    "describe_left_out",
    "files_to_upload",
    "is_classifier_folder",
    "plan_upload",
    "prepare_hub_folder",
    "push_folder_to_hub",
    "register_reconstruction_pipeline",
    "stage_folder",
]
