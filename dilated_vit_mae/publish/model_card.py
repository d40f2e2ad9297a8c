"""
The model cards of publishable folders, each a Jinja template rendered by one code path (`_render`, with
huggingface_hub's `ModelCard.from_template`, then redaction): `render_model_card(folder)` fills in the repository's
`model_card.md` from what a pre-training folder holds, and `write_card_assets(folder)` draws the images the card shows;
`render_classifier_card(results)` fills in `classifier_card.md` from a fine-tuned classifier's `all_results.json`.

What the card reads from the folder (all written by `scripts/run_mae.py`):

- `config.json`, `preprocessor_config.json`, `model.safetensors`: the architecture, input size, parameter count;
- `all_results.json`: the training command, data, steps, hardware and the evaluation results (optional: without it the
  card has no training or evaluation section);
- `linear_probe_results.json` (optional): `mean_attribute_accuracy`, and optionally `split`, `dataset`,
  `num_attributes`, `num_train_samples`, `num_eval_samples`;
- `eval/reconstructions.png`, `examples/*` and `assets/tokenizer_diagram.png`, if present.

Nothing the run did not measure is written: a missing figure leaves its line out, and every figure comes from those
files (the template holds none). The evaluation shows the model beside the trivial predictors `all_results.json` scored
on the same masks (`eval_baseline_*`), and says which figures use a statistic of the masked target (`eval_oracle_*`).
Nothing published holds a secret or a local path: what the card shows of the results is redacted by value and its
paths reduced to names (`dilated_vit_mae.train.redaction`). Not Hub code (the Hub never runs it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_dilated_vit_mae import DilatedViTMAEConfig
from ..evaluation.reconstruction import label_font, labelled_grid
from ..image_processing_dilated_vit_mae import DilatedViTMAEImageProcessor
from ..modeling_dilated_vit_mae import DilatedViTMAEForPreTraining, centred_padding, to_2tuple
from ..pipeline_dilated_vit_mae import DilatedViTMAEReconstructionPipeline
from ..train.lifecycle import CLASSIFIER_CARD_MARKER, RENDERED_MARKER, final_folder
from ..train.redaction import publishable, redact, redact_command, secret_values


# the template is the repository's `model_card.md`; the package holds it (a link in the source tree, a copy in wheels)
TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card.md"
# the fine-tuned classifier's card (`render_classifier_card`), rendered the same way
CLASSIFIER_TEMPLATE_PATH = Path(__file__).resolve().parent / "classifier_card.md"
EXAMPLE_IMAGES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
CARD_TAGS = ["mae", "vit", "self-supervised", "dilated-tokenization", "custom_code"]
PIPELINE_TAG = "image-feature-extraction"
LICENSE = "apache-2.0"
DIAGRAM_PATH = "assets/tokenizer_diagram.png"
RECONSTRUCTIONS_PATH = "eval/reconstructions.png"
EXAMPLES_DIR = "examples"
EXAMPLES_MASK_RATIO = 0.75
EXAMPLES_SEED = 0

CELEBA_LICENSE_NOTE = (
    "the training data's own terms apply to it (CelebA: non-commercial research purposes only, see *Limitations*)."
)


# ----------------------------------------------------------------------------------------------------------------------
# Facts computed from the configuration
# ----------------------------------------------------------------------------------------------------------------------


def dilated_leakage(
    config: DilatedViTMAEConfig, mask_ratio: float | None = None, num_masks: int = 16, seed: int = 0
) -> dict[str, float] | None:
    """
    How much of the removed patches the dilated kernels of the visible patches read under `dilated_context="full"`.

    Returns the fraction of removed pixels that at least one visible token's dilated kernel samples, and the fraction
    of removed patches with at least one such pixel, averaged over `num_masks` uniform random masks; `None` when
    nothing can leak (no dilated branch, `dilated_context="visible"` or no masking). Geometry only: it counts
    sampled positions, whatever the weights.
    """
    if not config.dilation_rates or config.dilated_context == "visible":
        return None
    mask_ratio = config.mask_ratio if mask_ratio is None else mask_ratio
    image_height, image_width = to_2tuple(config.image_size)
    patch_height, patch_width = to_2tuple(config.patch_size)
    kernel = to_2tuple(config.patch_size if config.dilated_kernel_size is None else config.dilated_kernel_size)
    grid_height, grid_width = image_height // patch_height, image_width // patch_width
    num_patches = grid_height * grid_width
    len_keep = int(num_patches * (1 - mask_ratio))
    if len_keep == num_patches:
        return None

    def sampled(axis_size: int, patch: int, kernel_size: int, rate: int, index: int) -> np.ndarray:
        before, _ = centred_padding(kernel_size, rate, patch)
        positions = index * patch - before + rate * np.arange(kernel_size)
        return positions[(positions >= 0) & (positions < axis_size)]  # padding reads zeros, not pixels

    generator = np.random.default_rng(seed)
    pixel_fractions, patch_fractions = [], []
    for _ in range(num_masks):
        removed = np.ones(num_patches, dtype=bool)
        removed[generator.permutation(num_patches)[:len_keep]] = False
        removed_pixels = np.kron(
            removed.reshape(grid_height, grid_width), np.ones((patch_height, patch_width), dtype=bool)
        )
        read = np.zeros_like(removed_pixels)
        for patch_index in np.flatnonzero(~removed):
            row, column = divmod(int(patch_index), grid_width)
            for rate in config.dilation_rates:
                rows = sampled(image_height, patch_height, kernel[0], rate, row)
                columns = sampled(image_width, patch_width, kernel[1], rate, column)
                read[np.ix_(rows, columns)] = True
        leaked = read & removed_pixels
        pixel_fractions.append(leaked.sum() / removed_pixels.sum())
        # (h p) (w q) -> h w: does any pixel of the patch leak
        touched = leaked.reshape(grid_height, patch_height, grid_width, patch_width).any(axis=(1, 3)).reshape(-1)
        patch_fractions.append(touched[removed].mean())
    return {
        "pixels": float(np.mean(pixel_fractions)),
        "patches": float(np.mean(patch_fractions)),
        "mask_ratio": float(mask_ratio),
        "num_masks": num_masks,
    }


def _tokenizer_sentence(config: DilatedViTMAEConfig) -> str:
    patch = to_2tuple(config.patch_size)
    kernel = to_2tuple(config.patch_size if config.dilated_kernel_size is None else config.dilated_kernel_size)
    if not config.dilation_rates:
        return "ViTMAE's (no dilated branch: `dilation_rates=()`)."
    spans = ", ".join(
        f"rate {rate}: {kernel[0]}x{kernel[1]} kernel spanning {(kernel[0] - 1) * rate + 1}x{(kernel[1] - 1) * rate + 1} px"
        for rate in config.dilation_rates
    )
    fusion = (
        "added to the dense token"
        if config.dilated_fusion == "sum"
        else "concatenated with the dense token and projected back"
    )
    context = (
        "the whole image, masked pixels included"
        if config.dilated_context == "full"
        else "only the visible patches (removed ones are zeroed first)"
    )
    return (
        f"ViTMAE's dense {patch[0]}x{patch[1]} patch projection plus {len(config.dilation_rates)} dilated "
        f"convolution branch{'es' if len(config.dilation_rates) > 1 else ''} centred on every patch ({spans}), "
        f"{fusion}; the dilated branches read {context}."
    )


def _tokenizer_rows(config: DilatedViTMAEConfig) -> list[dict[str, str]]:
    kernel = "patch size" if config.dilated_kernel_size is None else str(config.dilated_kernel_size)
    return [
        {"field": "dilation_rates", "value": str(list(config.dilation_rates)),
         "meaning": "one extra branch per rate: a stride-`patch_size` convolution with that dilation, centred on every patch"},
        {"field": "dilated_kernel_size", "value": str(config.dilated_kernel_size),
         "meaning": f"kernel of the dilated branches ({kernel})"},
        {"field": "dilated_fusion", "value": config.dilated_fusion,
         "meaning": "`sum` adds the branches to the dense token; `concat` concatenates and projects back"},
        {"field": "dilated_context", "value": config.dilated_context,
         "meaning": "`full`: the dilated kernels read the whole image, removed patches included; "
                    "`visible`: removed patches are zeroed first"},
        {"field": "masking_mode", "value": config.masking_mode,
         "meaning": "`drop`: MAE's encoder sees only visible patches; `mask_token`: removed positions enter as a "
                    "learned mask token (SimMIM-style)"},
        {"field": "mask_ratio", "value": str(config.mask_ratio), "meaning": "fraction of patches removed in pre-training"},
        {"field": "norm_pix_loss", "value": str(config.norm_pix_loss).lower(),
         "meaning": "whether each target patch is normalised by its own mean and variance"},
    ]  # fmt: skip


def _num_parameters(folder: Path) -> str | None:
    """The parameter count from the safetensors headers (nothing is loaded), e.g. `"5.4M"`."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="np") as handle:
            for name in handle.keys():
                total += int(np.prod(handle.get_slice(name).get_shape()))
    return f"{total / 1e6:.1f}M" if total >= 1e5 else f"{total:,}"


# ----------------------------------------------------------------------------------------------------------------------
# Images: the tokenizer diagram and the widget examples
# ----------------------------------------------------------------------------------------------------------------------

_COLOURS = {"dense": (31, 119, 180), "grid": (205, 205, 205), "patch": (120, 120, 120), "text": (30, 30, 30)}
_RATE_COLOURS = [(255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def draw_tokenizer_diagram(config: DilatedViTMAEConfig) -> PIL.Image.Image:
    """
    A schematic of the tokenizer of `config`, drawn to scale in pixels: a neighbourhood of patches, the dense kernel
    of the centre patch (its own pixels) and, per dilation rate, the pixels its dilated kernel samples.
    """
    patch_height, patch_width = to_2tuple(config.patch_size)
    kernel_height, kernel_width = to_2tuple(
        config.patch_size if config.dilated_kernel_size is None else config.dilated_kernel_size
    )
    rates = list(config.dilation_rates)
    # enough patches around the centre one to show the widest kernel
    reach = max([((kernel_height - 1) * r + 1 - patch_height) / 2 / patch_height for r in rates] + [0.0])
    radius = max(1, int(np.ceil(reach)))
    num_cells = 2 * radius + 1
    size_px = (num_cells * patch_height, num_cells * patch_width)  # pixels shown
    cell = max(2, min(18, 360 // max(size_px)))  # screen pixels per image pixel
    margin, legend_width = 24, 360
    width = 2 * margin + size_px[1] * cell + legend_width
    height = max(2 * margin + size_px[0] * cell, 220)
    image = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(image)

    def box(row: float, column: float, rows: float = 1, columns: float = 1) -> list[float]:
        x0, y0 = margin + column * cell, margin + row * cell
        return [x0, y0, x0 + columns * cell - 1, y0 + rows * cell - 1]

    if cell >= 6:  # pixel grid, where it is readable
        for row in range(size_px[0]):
            for column in range(size_px[1]):
                draw.rectangle(box(row, column), outline=_COLOURS["grid"])
    centre_row, centre_column = radius * patch_height, radius * patch_width
    draw.rectangle(box(centre_row, centre_column, patch_height, patch_width), fill=(198, 219, 239))
    for index, rate in enumerate(rates):
        colour = _RATE_COLOURS[index % len(_RATE_COLOURS)]
        top, _ = centred_padding(kernel_height, rate, patch_height)
        left, _ = centred_padding(kernel_width, rate, patch_width)
        inset = index * max(1, cell // 6)
        for i in range(kernel_height):
            for j in range(kernel_width):
                row, column = centre_row - top + i * rate, centre_column - left + j * rate
                if 0 <= row < size_px[0] and 0 <= column < size_px[1]:
                    x0, y0, x1, y1 = box(row, column)
                    draw.ellipse([x0 + 1 + inset, y0 + 1 + inset, x1 - 1 - inset, y1 - 1 - inset], fill=colour)
    for k in range(num_cells + 1):  # patch boundaries
        draw.line(
            [margin, margin + k * patch_height * cell, margin + size_px[1] * cell, margin + k * patch_height * cell],
            fill=_COLOURS["patch"],
            width=2,
        )
        draw.line(
            [margin + k * patch_width * cell, margin, margin + k * patch_width * cell, margin + size_px[0] * cell],
            fill=_COLOURS["patch"],
            width=2,
        )
    draw.rectangle(box(centre_row, centre_column, patch_height, patch_width), outline=_COLOURS["dense"], width=3)

    font, small = label_font(16), label_font(13)
    x, y = 2 * margin + size_px[1] * cell, margin
    draw.text((x, y), "One token of the centre patch =", fill=_COLOURS["text"], font=font)
    y += 28
    draw.rectangle([x, y + 2, x + 14, y + 16], fill=(198, 219, 239), outline=_COLOURS["dense"], width=2)
    draw.text(
        (x + 22, y),
        f"dense: {patch_height}x{patch_width} conv, stride {patch_height} (ViTMAE)",
        fill=_COLOURS["text"],
        font=small,
    )
    for index, rate in enumerate(rates):
        y += 24
        colour = _RATE_COLOURS[index % len(_RATE_COLOURS)]
        draw.ellipse([x + 2, y + 3, x + 12, y + 13], fill=colour)
        draw.text(
            (x + 22, y),
            f"{'+' if config.dilated_fusion == 'sum' else '||'} dilated: {kernel_height}x{kernel_width} conv, rate {rate}",
            fill=_COLOURS["text"],
            font=small,
        )
    y += 34
    fusion = "summed" if config.dilated_fusion == "sum" else "concatenated, then a linear projection"
    context = "whole image (masked pixels too)" if config.dilated_context == "full" else "visible patches only"
    for line in (
        f"branches {fusion}",
        f"dilated kernels read: {context}",
        f"patch grid: {size_px[0]}x{size_px[1]} px shown",
    ):
        draw.text((x, y), line, fill=_COLOURS["text"], font=small)
        y += 20
    return image


def _strip_caption(result: dict[str, Any]) -> str:
    """The masked pixels' MSE of the re-composited image beside a trivial predictor (the visible pixels' mean colour)."""
    original = np.asarray(result["original"].convert("RGB"), dtype=np.float64) / 255
    recomposited = np.asarray(result["recomposited"].convert("RGB"), dtype=np.float64) / 255
    removed = np.asarray(result["mask"]) > 127
    if not removed.any() or removed.all():
        return f"mask ratio {result['mask_ratio']}"
    model = ((recomposited - original)[removed] ** 2).mean()
    trivial = ((original[~removed].mean(axis=0) - original[removed]) ** 2).mean()
    return (
        f"mask ratio {result['mask_ratio']}, seed {result['seed']}: masked-pixel MSE {model:.4f}; filling them with "
        f"the visible pixels' mean colour: {trivial:.4f}"
    )


def reconstruction_strip(
    result: dict[str, Any], columns: Sequence[str] = ("original", "masked", "reconstruction", "recomposited")
) -> PIL.Image.Image:
    """The images of one `mae-reconstruction` result side by side (upscaled, labelled), with a caption that puts its
    masked-pixel error beside a trivial predictor's."""
    return labelled_grid([result], columns, min_cell_size=192, caption=_strip_caption(result))


def write_card_assets(
    folder: str | os.PathLike,
    model=None,
    image_processor=None,
    example_images: Sequence[str | os.PathLike] | None = None,
    mask_ratio: float = EXAMPLES_MASK_RATIO,
    seed: int = EXAMPLES_SEED,
) -> list[str]:
    """
    Write the images the card shows into `folder`: `assets/tokenizer_diagram.png`, and for each example image
    `examples/<name>.<ext>` (a copy) with `examples/<name>_reconstruction.png` (masked | reconstruction |
    re-composited, at `mask_ratio` and `seed`), the widget's static outputs.

    Args:
        folder: a saved model folder (model, image processor).
        model, image_processor (*optional*): the loaded `DilatedViTMAEForPreTraining` and image processor; loaded
            from `folder` when not given.
        example_images (*optional*): image files; defaults to the license-clean photos in
            `dilated_vit_mae/assets/examples/` (public domain / CC0; no CelebA image may be redistributed).

    Returns:
        The paths written, relative to `folder`.
    """
    folder = Path(folder)
    config = DilatedViTMAEConfig.from_pretrained(folder)
    written = []
    (folder / DIAGRAM_PATH).parent.mkdir(parents=True, exist_ok=True)
    draw_tokenizer_diagram(config).save(folder / DIAGRAM_PATH)
    written.append(DIAGRAM_PATH)

    if example_images is None:
        example_images = sorted(
            p for p in EXAMPLE_IMAGES_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
    if not example_images:
        return written
    model = DilatedViTMAEForPreTraining.from_pretrained(folder) if model is None else model
    image_processor = (
        DilatedViTMAEImageProcessor.from_pretrained(folder) if image_processor is None else image_processor
    )
    was_training = model.training
    model.eval()
    reconstruct = DilatedViTMAEReconstructionPipeline(model=model, image_processor=image_processor)
    (folder / EXAMPLES_DIR).mkdir(exist_ok=True)
    for path in map(Path, example_images):
        with PIL.Image.open(path) as image:
            image.load()
            result = reconstruct(image, mask_ratio=mask_ratio, seed=seed)
            target = folder / EXAMPLES_DIR / path.name
            if path.resolve() != target.resolve():
                target.write_bytes(path.read_bytes())
        reconstruction_strip(result).save(folder / EXAMPLES_DIR / f"{path.stem}_reconstruction.png")
        written += [f"{EXAMPLES_DIR}/{path.name}", f"{EXAMPLES_DIR}/{path.stem}_reconstruction.png"]
    model.train(was_training)
    (folder / EXAMPLES_DIR / "examples.json").write_text(
        json.dumps({"mask_ratio": mask_ratio, "seed": seed, "images": [Path(p).name for p in example_images]}, indent=2)
    )
    written.append(f"{EXAMPLES_DIR}/examples.json")
    return written


# ----------------------------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------------------------


def is_rendered_card(path: str | os.PathLike, repo_id: str | None = None) -> bool:
    """
    Whether the card at `path` was rendered from the template (and so may be re-rendered without losing edits); with
    `repo_id`, whether it was rendered for that repository (its first line says what its snippets load).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if repo_id is None:
        return RENDERED_MARKER in text
    rendered_for = re.search(rf"{re.escape(RENDERED_MARKER)}[^\n]*? for (\S+);", text)
    return rendered_for is not None and rendered_for.group(1) == repo_id


def _read_json(path: Path, secrets: Iterable[str]) -> dict[str, Any] | None:
    """A results file as the card may show it: secrets redacted, local paths reduced to names."""
    return publishable(json.loads(path.read_text()), secrets) if path.is_file() else None


def _resolve_url(repo_id: str | None, revision: str | None, path: str) -> str:
    """A widget `src` the Hub can fetch: the file's resolve URL once the repository is known, else the relative path."""
    if repo_id is None:
        return path
    return f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{path}"


def _local_model_id(folder: Path) -> str:
    """What a local card's snippets load: the folder as given when relative, else `path/to/<name>` (no local path)."""
    if not folder.is_absolute() and ".." not in folder.parts:
        return folder.as_posix()
    return f"path/to/{folder.resolve().name}"


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repository id (`namespace/name`) rather than a local folder."""
    return bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()


def _dataset_facts(results: dict[str, Any] | None) -> dict[str, Any]:
    dataset = dict((results or {}).get("dataset") or {})
    name = dataset.get("name")
    is_celeba = bool(dataset.get("is_celeba", False))
    hub_id = dataset.get("hub_id")
    if name is None:
        return {
            "id": None, "name_md": "the evaluation data", "is_celeba": True,
            "trained_on": "built to be pre-trained on CelebA face images",
            "license_note": CELEBA_LICENSE_NOTE,
            "not_celeba_note": "", "description": "", "train_split": "train", "eval_split": "validation",
        }  # fmt: skip
    name_md = f"[{hub_id}](https://huggingface.co/datasets/{hub_id})" if hub_id else f"`{name}`"
    facts = {
        "id": hub_id or name,
        "source": dataset.get("source"),
        "name_md": name_md,
        "is_celeba": is_celeba,
        "trained_on": f"pre-trained on {name_md}" + (" (CelebA)" if is_celeba and "celeba" not in name.lower() else ""),
        "license_note": CELEBA_LICENSE_NOTE if is_celeba else "the training data's own terms apply to it.",
        "description": dataset.get("description") or f"{name_md}.",
        "not_celeba_note": f"They were trained on {dataset.get('description') or name_md + '.'}",
        "train_split": dataset.get("train_split", "train"),
        "eval_split": dataset.get("eval_split", "validation"),
        "train_samples": dataset.get("train_samples"),
        "eval_samples": dataset.get("eval_samples"),
        "config_name": dataset.get("config_name"),
    }
    return facts


def _hardware_text(hardware: dict[str, Any], num_processes: int | None) -> str:
    count = hardware.get("num_processes", num_processes) or 1
    device_type = hardware.get("device_type", "unknown device")
    device_name = hardware.get("device_name")
    device = (
        f"{device_name} ({device_type})"
        if device_name
        else device_type.upper()
        if device_type in ("cpu", "cuda", "mps", "xpu")
        else device_type
    )
    precision = hardware.get("mixed_precision") or "no"
    precision_text = "fp32" if precision == "no" else f"{precision} mixed precision"
    text = f"{count} process{'es' if count != 1 else ''} on {device}, {precision_text}"
    if hardware.get("distributed_type") and hardware["distributed_type"] not in ("NO", "no"):
        text += f" ({hardware['distributed_type']})"
    if hardware.get("train_runtime_seconds"):
        seconds = hardware["train_runtime_seconds"]
        text += f", {seconds:.0f} s of training" if seconds < 120 else f", {seconds / 60:.1f} min of training"
    return text


def _format(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def _training_facts(results: dict[str, Any]) -> dict[str, Any]:
    """The *Training details* of `all_results.json`."""
    command = results.get("command")
    learning_rate = results.get("learning_rate")
    base_lr = results.get("base_learning_rate")
    lr_text = _format(learning_rate) if learning_rate is not None else "as configured"
    if base_lr is not None and learning_rate is not None:
        lr_text += f" (base {_format(base_lr)} x {results['effective_batch_size']} / 256)"
    betas = results.get("adam_betas")
    init = results.get("init")
    crop_scale = (results.get("augmentation") or {}).get("crop_scale")
    return {
        "global_step": results["global_step"], "epochs": results.get("epochs"),
        "effective_batch_size": results.get("effective_batch_size"),
        "per_device_train_batch_size": results.get("per_device_train_batch_size"),
        "num_processes": results.get("num_processes", 1),
        "gradient_accumulation_steps": results.get("gradient_accumulation_steps", 1),
        "adam_betas": f"({betas[0]}, {betas[1]})" if betas else None,
        "weight_decay": results.get("weight_decay"), "learning_rate_text": lr_text,
        "warmup_steps": results.get("warmup_steps"), "init": init, "init_is_hub": _is_hub_id(init),
        "seed": results.get("seed"),
        "crop_scale_text": f"scale {crop_scale[0]} to {crop_scale[1]}" if crop_scale else None,
        "command": redact_command(command) if command else "(not recorded)",
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation: the model beside trivial predictors scored on the same masks
# ----------------------------------------------------------------------------------------------------------------------

# (results key suffix, model-index metric type or None, row name), in the table's order
EVAL_METRICS = (
    ("masked_patch_mse", "mse", "Masked-patch MSE"),
    ("psnr", "psnr", "PSNR (dB)"),
    ("loss", None, "Loss (training objective)"),
    ("oracle_masked_patch_mse", "mse", "Masked-patch MSE, oracle"),
    ("oracle_psnr", "psnr", "PSNR (dB), oracle"),
)
# (results key prefix, column, model-index `metric_config`): the predictors `scripts/run_mae.py` scores
EVAL_PREDICTORS = (
    ("eval_", "model", None),
    ("eval_baseline_zeros_", "predict zeros", "baseline_predict_zeros"),
    ("eval_baseline_visible_mean_", "visible-patch mean", "baseline_visible_patch_mean"),
)
ORACLE_CONFIG = "oracle_target_patch_statistics"


def _target_statistics_text(results: dict[str, Any], norm_pix_loss: bool) -> str:
    """Which reconstruction figures use a statistic of the masked target, said plainly."""
    if not norm_pix_loss:
        return (
            "**No figure uses a statistic of the masked target:** the model predicts pixels, and they are scored as "
            "they are."
        )
    if any(key.startswith("eval_oracle_") for key in results):
        return (
            "**Which figures use a statistic of the masked target.** The rows marked *oracle* map predictions back "
            "to pixels with each removed patch's own mean and variance, which the model is not given (MAE's "
            "visualisation), so they flatter every predictor. The loss does too, by definition (`norm_pix_loss`: "
            "the error against each removed patch normalised by its own mean and variance, as in training). The plain "
            "MSE and PSNR rows use only the mean and variance of the image's visible patches: they measure the model "
            "alone."
        )
    return (
        "**Which figures use a statistic of the masked target.** The MSE and PSNR: predictions are mapped back to "
        "pixels with each masked patch's own mean and variance (`norm_pix_loss`, MAE's visualisation), which the model "
        "is not given, so these figures overstate what it predicts on its own. The loss is `norm_pix_loss`'s, against "
        "targets normalised by their own mean and variance."
    )


def _reconstruction_evaluation(
    results: dict[str, Any], norm_pix_loss: bool, dataset_fields: dict[str, str]
) -> tuple[list[EvalResult], dict[str, Any] | None]:
    """The reconstruction table (one column per predictor present) and its model-index entries."""
    predictors = [p for p in EVAL_PREDICTORS if any(results.get(p[0] + m[0]) is not None for m in EVAL_METRICS)]
    if not predictors or predictors[0][0] != "eval_":
        return [], None
    eval_results, rows = [], []
    for suffix, metric_type, name in EVAL_METRICS:
        values = [results.get(prefix + suffix) for prefix, _, _ in predictors]
        if values[0] is None:
            continue
        rows.append({"name": name, "cells": [_format(float(v)) if v is not None else "—" for v in values]})
        for (_, column, config), value in zip(predictors, values):
            if metric_type is None or value is None:
                continue
            oracle = suffix.startswith("oracle_")
            label = name + ("" if config is None else f", baseline: {column}")
            label += " (mapped back with the target patch's own mean and variance)" if oracle else ""
            eval_results.append(
                EvalResult(task_type="image-to-image", task_name="Masked image reconstruction", metric_type=metric_type,
                           metric_name=label, metric_value=float(value), **dataset_fields,
                           metric_config=ORACLE_CONFIG if oracle and config is None else config)
            )  # fmt: skip
    loss_ratio = None
    visible_mean_loss = results.get("eval_baseline_visible_mean_loss")
    if results.get("eval_loss") is not None and visible_mean_loss:
        loss_ratio = float(results["eval_loss"]) / float(visible_mean_loss)
        eval_results.append(
            EvalResult(task_type="image-to-image", task_name="Masked image reconstruction", metric_type="loss_ratio",
                       metric_name="Loss / loss of the visible-patch-mean baseline", metric_value=loss_ratio,
                       metric_config="baseline_visible_patch_mean", **dataset_fields)
        )  # fmt: skip
    evaluation = {
        "columns": [column for _, column, _ in predictors] if len(predictors) > 1 else ["value"],
        "rows": rows,
        "has_baselines": len(predictors) > 1,
        "loss_ratio": f"{loss_ratio:.3g}" if loss_ratio is not None else None,
        "target_statistics": _target_statistics_text(results, norm_pix_loss),
    }
    return eval_results, evaluation


def _percent(fraction: float) -> str:
    """A fraction (or a figure already in percent) as `87.34%`."""
    value = float(fraction)
    return f"{100 * value:.2f}%" if value <= 1.0 else f"{value:.2f}%"


def _linear_probe(probe: dict[str, Any], dataset: dict[str, Any]) -> tuple[EvalResult, dict[str, Any]]:
    """The linear probe's sentence and table, beside the majority-class floor it measured, and its model-index entry."""
    accuracy = float(probe["mean_attribute_accuracy"])
    split = probe.get("split") or probe.get("eval_split")
    named = probe.get("dataset")
    same_data = named is None or named in (dataset.get("id"), dataset.get("source"))
    probe_dataset = (dataset["id"] if same_data else named) or "evaluation data"
    fields = {"dataset_type": probe_dataset, "dataset_name": probe_dataset}
    if split:
        fields["dataset_split"] = split
    eval_result = EvalResult(
        task_type="image-classification", task_name="Linear probe on face attributes", metric_type="accuracy",
        metric_name="Mean attribute accuracy", metric_value=accuracy, **fields,
    )  # fmt: skip
    attributes = probe.get("num_attributes") or len(probe.get("label_columns") or []) or None
    floor = probe.get("majority_baseline")
    raw = probe.get("raw_pixel_baseline")  # scripts/linear_probe.py, where it was cheap
    where = (f"the `{split}` split of " if split else "") + (dataset["name_md"] if same_data else f"`{probe_dataset}`")
    text = (
        f"A linear classifier trained on the frozen encoder's features"
        f"{f' ({attributes} attributes)' if attributes else ''} reaches a mean per-attribute accuracy of "
        f"**{_percent(accuracy)}** on {where}; "
        + (
            f"always predicting each attribute's most frequent training value (the majority-class floor) scores "
            f"**{_percent(floor)}** on the same images."
            if floor is not None
            else "its `linear_probe_results.json` holds no majority-class floor to compare with."
        )
        + (
            f" A logistic regression on the raw pixels of the same images scores **{_percent(raw)}**."
            if raw is not None
            else ""
        )
        + " CelebA papers report this mean of per-attribute accuracies."
    )
    if not dataset["is_celeba"]:
        text += " These labels are not CelebA's: the figure says nothing about CelebA."
    details = ", ".join(
        text
        for text, present in ((f"`{split}`", split), (f"{attributes} attributes", attributes),
                              (f"{probe.get('num_test')} images", probe.get("num_test")))
        if present
    )  # fmt: skip
    row = {"name": "Mean attribute accuracy" + (f" ({details})" if details else ""), "cells": [_percent(accuracy)]}
    columns = ["frozen encoder"]
    if floor is not None:
        columns.append("majority-class floor")
        row["cells"].append(_percent(floor))
    if raw is not None:
        columns.append("logistic regression on raw pixels")
        row["cells"].append(_percent(raw))
    return eval_result, {"text": text, "columns": columns, "rows": [row]}


def _widget(folder: Path, repo_id: str | None, revision: str | None) -> tuple[list[dict], list[dict], dict]:
    """The example images with their static outputs: for the card's table, for the widget metadata, and their meta."""
    examples, widget = [], []
    examples_meta = _read_json(folder / EXAMPLES_DIR / "examples.json", ()) or {}
    for name in examples_meta.get("images", []):
        stem = Path(name).stem
        source, output = f"{EXAMPLES_DIR}/{name}", f"{EXAMPLES_DIR}/{stem}_reconstruction.png"
        if not (folder / source).is_file() or not (folder / output).is_file():
            continue
        title = stem.replace("_", " ").capitalize()
        examples.append({"title": title, "src": source, "output": output})
        widget.append(
            {"src": _resolve_url(repo_id, revision, source), "example_title": title, "output": {"url": output}}
        )
    return examples, widget, examples_meta


def _architecture(config: DilatedViTMAEConfig, folder: Path) -> dict[str, Any]:
    image_height, image_width = to_2tuple(config.image_size)
    patch_height, patch_width = to_2tuple(config.patch_size)
    return {
        "num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "image_size": image_height if image_height == image_width else f"{image_height}x{image_width}",
        "patch_size": patch_height if patch_height == patch_width else f"{patch_height}x{patch_width}",
        "num_patches": (image_height // patch_height) * (image_width // patch_width),
        "decoder_num_hidden_layers": config.decoder_num_hidden_layers,
        "decoder_hidden_size": config.decoder_hidden_size, "num_parameters": _num_parameters(folder),
        "tokenizer_sentence": _tokenizer_sentence(config), "mask_ratio": config.mask_ratio,
        "mask_percent": round(100 * config.mask_ratio), "norm_pix_loss": config.norm_pix_loss,
        "dilated_context": config.dilated_context, "masking_mode": config.masking_mode,
        "num_dilated_branches": len(config.dilation_rates),
    }  # fmt: skip


def _leakage_facts(config: DilatedViTMAEConfig) -> dict[str, Any] | None:
    leakage = dilated_leakage(config)
    if leakage is None:
        return None
    return {
        "pixels_percent": f"{100 * leakage['pixels']:.0f}", "patches_percent": f"{100 * leakage['patches']:.0f}",
        "mask_percent": f"{100 * leakage['mask_ratio']:.0f}", "num_masks": leakage["num_masks"],
    }  # fmt: skip


def _evaluation(
    results: dict[str, Any] | None, probe: dict[str, Any] | None, config: DilatedViTMAEConfig, dataset: dict, model_name: str
) -> tuple[list[EvalResult], dict[str, Any] | None, dict[str, Any] | None]:
    """The model-index entries, the reconstruction evaluation and the linear probe of the card."""
    fields = {"dataset_type": dataset["id"] or model_name, "dataset_name": dataset["id"] or "evaluation data",
              "dataset_split": dataset["eval_split"]}  # fmt: skip
    if dataset.get("config_name"):
        fields["dataset_config"] = dataset["config_name"]
    eval_results, evaluation = _reconstruction_evaluation(results or {}, config.norm_pix_loss, fields)
    linear_probe = None
    if probe is not None and probe.get("mean_attribute_accuracy") is not None:
        probe_result, linear_probe = _linear_probe(probe, dataset)
        eval_results.append(probe_result)
    if evaluation is not None or linear_probe is not None:
        evaluation = {
            **(evaluation or {"rows": []}),
            "split": dataset["eval_split"],
            "num_images": (results or {}).get("eval_samples", dataset.get("eval_samples")),
            "mask_seed": (results or {}).get("eval_mask_seed"),
        }
    return eval_results, evaluation, linear_probe


def render_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    revision: str | None = None,
    template_path: str | os.PathLike | None = None,
    output_path: str | os.PathLike | None = None,
    code_url: str | None = None,
    secrets: Iterable[str] = (),
) -> ModelCard:
    """
    Render the repository's `model_card.md` for the publishable `folder` and write it to `folder/README.md`.

    Args:
        folder: a folder saved by `scripts/run_mae.py` (or by `save_pretrained`, for a card without training details).
        repo_id (*optional*): the Hub repository; the usage snippets and the widget's images point at it. Without it,
            they use the folder's name (a local card; an absolute path is never written).
        revision (*optional*): the commit the snippets pin (`revision=...`); without it they say `"main"` and ask the
            reader to pin the commit they reviewed. `push_folder_to_hub` re-renders the card with the commit it made.
        template_path (*optional*): defaults to `model_card.md` at the root of the project.
        output_path (*optional*): where to write the card; defaults to `folder/README.md`.
        code_url (*optional*): where the project's source is, for the `pip install` instructions.
        secrets (*optional*): values the card must not contain (`redaction.secret_values(args)`); the environment's
            and the cached login's tokens are redacted too, as is anything shaped like a Hub token.

    Returns:
        The `huggingface_hub.ModelCard` (also written to `output_path`). What it shows of the results files has its
        secrets redacted and its local paths reduced to names.
    """
    folder = Path(folder)
    template_path = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template_path.is_file():
        raise FileNotFoundError(
            f"The model card template {template_path} is missing; pass `template_path=` (it is `model_card.md` at the "
            "root of the dilated-vit-mae source)."
        )
    secrets = secret_values() | set(secrets)
    config = DilatedViTMAEConfig.from_pretrained(folder)
    results = _read_json(folder / "all_results.json", secrets)
    probe = _read_json(folder / "linear_probe_results.json", secrets)
    # a card rendered in `stage_and_swap`'s staging folder names the output folder it is swapped into
    model_name = repo_id.split("/")[-1] if repo_id else final_folder(folder).resolve().name
    dataset = _dataset_facts(results)
    versions = dict((results or {}).get("versions") or {})
    versions.setdefault("transformers", config.transformers_version or "5")
    training = _training_facts(results) if results is not None and "global_step" in results else None
    hardware = None
    if training is not None and results.get("hardware"):
        hardware = {"text": _hardware_text(results["hardware"], results.get("num_processes"))}
    eval_results, evaluation, linear_probe = _evaluation(results, probe, config, dataset, model_name)
    examples, widget, examples_meta = _widget(folder, repo_id, revision)

    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license=LICENSE,
        tags=list(CARD_TAGS),
        datasets=[dataset["id"]] if dataset["id"] else None,
        metrics=sorted({result.metric_type for result in eval_results}) or None,
        base_model=training["init"] if training and training["init_is_hub"] else None,
        eval_results=eval_results or None,
        widget=widget or None,
    )
    card = _render(
        card_data,
        template_path,
        secrets,
        model_name=model_name,
        model_id=repo_id or _local_model_id(final_folder(folder)),
        revision=revision or "main",
        revision_is_commit=revision is not None and len(revision) == 40,
        code_url=code_url,
        arch=_architecture(config, folder),
        tokenizer_rows=_tokenizer_rows(config),
        dataset=dataset,
        versions=versions,
        training=training,
        hardware=hardware,
        evaluation=evaluation,
        linear_probe=linear_probe,
        leakage=_leakage_facts(config),
        diagram_path=DIAGRAM_PATH if (folder / DIAGRAM_PATH).is_file() else None,
        reconstructions_path=RECONSTRUCTIONS_PATH if (folder / RECONSTRUCTIONS_PATH).is_file() else None,
        examples=examples,
        examples_mask_ratio=examples_meta.get("mask_ratio", EXAMPLES_MASK_RATIO),
        examples_seed=examples_meta.get("seed", EXAMPLES_SEED),
    )
    output_path = Path(output_path) if output_path is not None else folder / "README.md"
    card.save(output_path)
    return card


def _render(card_data: ModelCardData, template_path: Path, secrets: set[str], **facts: Any) -> ModelCard:
    """
    Every card's one rendering: `template_path` (Jinja) filled in with `card_data` (its YAML header, `{{ card_data }}`)
    and `facts` by `huggingface_hub.ModelCard.from_template`, then every value of `secrets` redacted from the text,
    whatever the template rendered and from wherever it came.
    """
    card = ModelCard.from_template(card_data, template_path=str(template_path), **facts)
    text = redact(str(card), secrets)
    return ModelCard(text) if text != str(card) else card


# ----------------------------------------------------------------------------------------------------------------------
# The card of a fine-tuned classifier (`scripts/run_finetune.py`)
# ----------------------------------------------------------------------------------------------------------------------

CLASSIFIER_TAGS = ["image-classification", "mae", "vit", "dilated-tokenization", "custom_code"]
RECIPE_NAMES = {"mae": "MAE's fine-tuning recipe", "small_data": "the small-data recipe (fewer than 10,000 training images)"}


def render_classifier_card(
    results: dict[str, Any], repo_id: str | None = None, secrets: Iterable[str] = ()
) -> ModelCard:
    """
    A short `huggingface_hub.ModelCard` for a fine-tuned classifier folder, from its `all_results.json` (`results`),
    rendered from `classifier_card.md` as `render_model_card` renders `model_card.md`: metadata
    (`pipeline_tag: image-classification`, `base_model` when `init_is_hub_id`, `model-index` with the selected
    accuracy), what was trained on what, the figures measured beside their trivial baselines and how to load it.
    Local paths appear as folder names only; `results` must already be redacted
    (`dilated_vit_mae.train.redaction.publishable`). `secrets`, the environment's and the cached login's tokens are
    redacted from the text. The caller saves it (`card.save(path)`).
    """
    metric, dataset = results["metric_name"], results["dataset"]
    init = results.get("init") if results.get("init_is_hub_id") else None
    card_data = ModelCardData(
        library_name="transformers",
        license=LICENSE,
        pipeline_tag="image-classification",
        tags=list(CLASSIFIER_TAGS),
        base_model=init,
        datasets=[dataset["hub_id"]] if dataset.get("hub_id") else None,
        metrics=["accuracy"],
        model_name=repo_id or "dilated-vit-mae-classifier",
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset.get("hub_id") or re.sub(r"[^\w.-]+", "-", dataset["name"]),
                dataset_name=dataset["name"],
                dataset_split=results["eval_split"],
                metric_type="accuracy",
                metric_name=metric.replace("_", " "),
                metric_value=round(results[f"eval_{metric}"], 4),
            )
        ],
    )
    return _render(
        card_data, CLASSIFIER_TEMPLATE_PATH, secret_values() | set(secrets), marker=CLASSIFIER_CARD_MARKER,
        **_classifier_facts(results, repo_id),
    )  # fmt: skip


def _classifier_baseline_rows(results: dict[str, Any], prefix: str, split: str) -> list[dict[str, str]]:
    """The trivial baselines of a split, as result rows: the majority class and the raw-pixel linear model."""
    rows = []
    if results.get(f"{prefix}_majority_baseline") is not None:
        rows.append({"split": split, "metric": "majority-class floor",
                     "value": f"{results[f'{prefix}_majority_baseline']:.4f}"})  # fmt: skip
    raw = results.get(f"{prefix}_raw_pixel_baseline")
    skipped = (results.get("raw_pixel_baseline") or {}).get("skipped")
    if raw is not None:
        rows.append({"split": split, "metric": "logistic regression on raw pixels", "value": f"{raw:.4f}"})
    elif skipped:
        rows.append({"split": split, "metric": "logistic regression on raw pixels", "value": skipped})
    return rows


def _classifier_facts(results: dict[str, Any], repo_id: str | None) -> dict[str, Any]:
    """What `classifier_card.md` shows, from `all_results.json`."""
    metric, labels, dataset = results["metric_name"], results["labels"], results["dataset"]
    split = results["eval_split"]
    rows = [{"split": f"{split} (best of {len(results['eval_history'])} epochs: {results['best_epoch']})",
             "metric": metric, "value": f"{results[f'eval_{metric}']:.4f}"}]  # fmt: skip
    rows += _classifier_baseline_rows(results, "eval", split)
    if results.get(f"test_{metric}") is not None:
        rows.append({"split": f"{results['test_split']} (the selected model)", "metric": metric,
                     "value": f"{results[f'test_{metric}']:.4f}"})  # fmt: skip
        rows += _classifier_baseline_rows(results, "test", results["test_split"])
    multi_label = labels["task"] == "multi_label"
    columns = labels["columns"]
    training = {key: results[key] for key in (
        "global_step", "epochs", "effective_batch_size", "seed", "weight_decay", "warmup_steps", "layer_decay",
        "drop_path_rate", "classifier_pooling", "mixup", "cutmix",
    )}  # fmt: skip
    training.update(
        adam_betas=tuple(results["adam_betas"]),
        learning_rate=f"{results['learning_rate']:.3g}",
        label_smoothing="none (multi-label)" if multi_label else results["label_smoothing"],
    )
    return {
        "task": "multi-label (one sigmoid per attribute)" if multi_label else "single-label (softmax)",
        "multi_label": multi_label,
        "num_labels": labels["num_labels"],
        "label_names": ", ".join(columns[:3]) + (", ..." if len(columns) > 3 else ""),
        "about": f"{dataset['name']}" + (f", {dataset['description']}" if dataset.get("description") else ""),
        "init": results.get("init") or "a random initialisation (no pre-training)",
        "rows": rows,
        "training": training,
        "recipe": {
            "name": RECIPE_NAMES.get(results.get("recipe"), "recipe not recorded"),
            "crop_scale_min": results.get("crop_scale_min"),
            "rand_augment": results.get("rand_augment") or "no RandAugment",
            "random_erasing": results.get("random_erasing"),
        },
        "model_id": repo_id or "path/to/this/folder",
    }


__all__ = [
    "CARD_TAGS",
    "CLASSIFIER_TEMPLATE_PATH",
    "EVAL_METRICS",
    "EVAL_PREDICTORS",
    "TEMPLATE_PATH",
    "dilated_leakage",
    "draw_tokenizer_diagram",
    "is_rendered_card",
    "reconstruction_strip",
    "render_classifier_card",
    "render_model_card",
    "write_card_assets",
]
