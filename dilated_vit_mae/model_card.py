"""
The model card of a publishable folder: `render_model_card(folder)` fills in the repository's `model_card.md` from what
the folder holds, and `write_card_assets(folder)` draws the images the card shows.

What the card reads from the folder (all written by `scripts/run_mae.py`):

- `config.json`, `preprocessor_config.json`, `model.safetensors`: the architecture, input size, parameter count;
- `all_results.json`: the training command, data, steps, hardware and the evaluation results (optional: without it the
  card has no training or evaluation section);
- `linear_probe_results.json` (optional): `mean_attribute_accuracy`, and optionally `split`, `dataset`,
  `num_attributes`, `num_train_samples`, `num_eval_samples`;
- `eval/reconstructions.png`, `examples/*` and `assets/tokenizer_diagram.png`, if present.

Nothing the run did not measure is written: a missing figure leaves its line out. Not Hub code (the Hub never runs it).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_dilated_vit_mae import DilatedViTMAEConfig
from .modeling_dilated_vit_mae import centred_padding, to_2tuple


# the template is the repository's `model_card.md`; the package holds it (a link in the source tree, a copy in wheels)
TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card.md"
EXAMPLE_IMAGES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
CARD_TAGS = ["mae", "vit", "self-supervised", "dilated-tokenization", "custom_code"]
PIPELINE_TAG = "image-feature-extraction"
LICENSE = "apache-2.0"
DIAGRAM_PATH = "assets/tokenizer_diagram.png"
RECONSTRUCTIONS_PATH = "eval/reconstructions.png"
EXAMPLES_DIR = "examples"
EXAMPLES_MASK_RATIO = 0.75
EXAMPLES_SEED = 0
# command-line flags whose value must never reach a card
SECRET_FLAGS = ("--token", "--hub_token")
# the first line of a card rendered from the template: only such cards are re-rendered when a folder is pushed
RENDERED_MARKER = "<!-- Rendered by dilated_vit_mae.model_card"

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


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return PIL.ImageFont.load_default()


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

    font, small = _font(16), _font(13)
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


def _upscale(image: PIL.Image.Image, min_side: int = 192) -> PIL.Image.Image:
    """Nearest-neighbour upscaling by an integer factor, so that small model inputs stay crisp on a web page."""
    factor = max(1, int(np.ceil(min_side / min(image.size))))
    return image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST)


def reconstruction_strip(
    result: dict[str, Any], columns: Sequence[str] = ("masked", "reconstruction", "recomposited")
) -> PIL.Image.Image:
    """The images of one `mae-reconstruction` result side by side, upscaled, 4 px apart."""
    images = [_upscale(result[name].convert("RGB")) for name in columns]
    gap = 4
    strip = PIL.Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), images[0].height), "white")
    x = 0
    for image in images:
        strip.paste(image, (x, 0))
        x += image.width + gap
    return strip


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
    from .image_processing_dilated_vit_mae import DilatedViTMAEImageProcessor
    from .modeling_dilated_vit_mae import DilatedViTMAEForPreTraining
    from .pipeline_dilated_vit_mae import DilatedViTMAEReconstructionPipeline

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


def redact_command(command: str | Sequence[str]) -> str:
    """A command line with the values of `--token`/`--hub_token` replaced by `***`."""
    parts = shlex.split(command) if isinstance(command, str) else list(command)
    redacted = []
    hide_next = False
    for part in parts:
        if hide_next:
            redacted.append("***")
            hide_next = False
        elif part in SECRET_FLAGS:
            redacted.append(part)
            hide_next = True
        elif part.startswith(tuple(f"{flag}=" for flag in SECRET_FLAGS)):
            redacted.append(part.split("=", 1)[0] + "=***")
        else:
            redacted.append(part)
    return shlex.join(redacted)


def is_rendered_card(path: str | os.PathLike) -> bool:
    """Whether the card at `path` was rendered from the template (and so may be re-rendered without losing edits)."""
    path = Path(path)
    return path.is_file() and RENDERED_MARKER in path.read_text(encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _resolve_url(repo_id: str | None, revision: str | None, path: str) -> str:
    """A widget `src` the Hub can fetch: the file's resolve URL once the repository is known, else the relative path."""
    if repo_id is None:
        return path
    return f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{path}"


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
        text += f", {hardware['train_runtime_seconds'] / 60:.1f} min of training"
    return text


def _format(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def render_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    revision: str | None = None,
    template_path: str | os.PathLike | None = None,
    output_path: str | os.PathLike | None = None,
    code_url: str | None = None,
) -> ModelCard:
    """
    Render the repository's `model_card.md` for the publishable `folder` and write it to `folder/README.md`.

    Args:
        folder: a folder saved by `scripts/run_mae.py` (or by `save_pretrained`, for a card without training details).
        repo_id (*optional*): the Hub repository; the usage snippets and the widget's images point at it. Without it,
            they use the folder's path (a local card).
        revision (*optional*): the commit the snippets pin (`revision=...`); without it they say `"main"` and ask the
            reader to pin the commit they reviewed. `push_folder_to_hub` re-renders the card with the commit it made.
        template_path (*optional*): defaults to `model_card.md` at the root of the project.
        output_path (*optional*): where to write the card; defaults to `folder/README.md`.
        code_url (*optional*): where the project's source is, for the `pip install` instructions.

    Returns:
        The `huggingface_hub.ModelCard` (also written to `output_path`).
    """
    folder = Path(folder)
    template_path = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template_path.is_file():
        raise FileNotFoundError(
            f"The model card template {template_path} is missing; pass `template_path=` (it is `model_card.md` at the "
            "root of the dilated-vit-mae source)."
        )
    config = DilatedViTMAEConfig.from_pretrained(folder)
    results = _read_json(folder / "all_results.json")
    probe = _read_json(folder / "linear_probe_results.json")
    image_height, image_width = to_2tuple(config.image_size)
    patch_height, patch_width = to_2tuple(config.patch_size)
    num_patches = (image_height // patch_height) * (image_width // patch_width)
    model_name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    model_id = repo_id or str(folder)

    arch = {
        "num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "image_size": image_height if image_height == image_width else f"{image_height}x{image_width}",
        "patch_size": patch_height if patch_height == patch_width else f"{patch_height}x{patch_width}",
        "num_patches": num_patches, "decoder_num_hidden_layers": config.decoder_num_hidden_layers,
        "decoder_hidden_size": config.decoder_hidden_size, "num_parameters": _num_parameters(folder),
        "tokenizer_sentence": _tokenizer_sentence(config), "mask_ratio": config.mask_ratio,
        "mask_percent": round(100 * config.mask_ratio), "norm_pix_loss": config.norm_pix_loss,
        "dilated_context": config.dilated_context, "masking_mode": config.masking_mode,
        "num_dilated_branches": len(config.dilation_rates),
    }  # fmt: skip
    dataset = _dataset_facts(results)
    versions = dict((results or {}).get("versions") or {})
    versions.setdefault("transformers", config.transformers_version or "5")
    leakage = dilated_leakage(config)
    if leakage is not None:
        leakage = {
            "pixels_percent": f"{100 * leakage['pixels']:.0f}", "patches_percent": f"{100 * leakage['patches']:.0f}",
            "mask_percent": f"{100 * leakage['mask_ratio']:.0f}", "num_masks": leakage["num_masks"],
        }  # fmt: skip

    # ---- training, hardware --------------------------------------------------------------------------------------
    training = hardware = None
    if results is not None and "global_step" in results:
        command = results.get("command")
        learning_rate = results.get("learning_rate")
        base_lr = results.get("base_learning_rate")
        lr_text = _format(learning_rate) if learning_rate is not None else "as configured"
        if base_lr is not None and learning_rate is not None:
            lr_text += f" (base {_format(base_lr)} x {results['effective_batch_size']} / 256)"
        betas = results.get("adam_betas")
        training = {
            "global_step": results["global_step"], "epochs": results.get("epochs"),
            "effective_batch_size": results.get("effective_batch_size"),
            "per_device_train_batch_size": results.get("per_device_train_batch_size"),
            "num_processes": results.get("num_processes", 1),
            "gradient_accumulation_steps": results.get("gradient_accumulation_steps", 1),
            "adam_betas": f"({betas[0]}, {betas[1]})" if betas else None,
            "weight_decay": results.get("weight_decay"), "learning_rate_text": lr_text,
            "warmup_steps": results.get("warmup_steps"), "init": results.get("init"), "seed": results.get("seed"),
            "command": redact_command(command) if command else "(not recorded)",
        }  # fmt: skip
        if results.get("hardware"):
            hardware = {"text": _hardware_text(results["hardware"], results.get("num_processes"))}

    # ---- evaluation ------------------------------------------------------------------------------------------------
    eval_results: list[EvalResult] = []
    evaluation = None
    metric_rows = []
    eval_split = dataset["eval_split"]
    dataset_id = dataset["id"] or model_name
    dataset_display = dataset["id"] or "evaluation data"
    common = dict(dataset_type=dataset_id, dataset_name=dataset_display, dataset_split=eval_split)
    if dataset.get("config_name"):
        common["dataset_config"] = dataset["config_name"]
    if results is not None:
        for key, metric_type, metric_name, digits in (
            ("eval_masked_patch_mse", "mse", "Masked-patch MSE", 4),
            ("eval_psnr", "psnr", "PSNR (dB)", 4),
        ):
            if results.get(key) is not None:
                value = float(results[key])
                eval_results.append(
                    EvalResult(task_type="image-to-image", task_name="Masked image reconstruction",
                               metric_type=metric_type, metric_name=metric_name, metric_value=value, **common)
                )  # fmt: skip
                metric_rows.append({"name": metric_name, "value": _format(value, digits)})
        if results.get("eval_loss") is not None:
            metric_rows.append({"name": "Loss (training objective)", "value": _format(float(results["eval_loss"]))})
    linear_probe = None
    if probe is not None and probe.get("mean_attribute_accuracy") is not None:
        accuracy = float(probe["mean_attribute_accuracy"])
        percent = 100 * accuracy if accuracy <= 1.0 else accuracy
        probe_split = probe.get("split") or probe.get("eval_split")
        probe_dataset = probe.get("dataset") or dataset_id
        probe_common = dict(dataset_type=probe_dataset, dataset_name=probe_dataset)
        if probe_split:
            probe_common["dataset_split"] = probe_split
        eval_results.append(
            EvalResult(task_type="image-classification", task_name="Linear probe on face attributes",
                       metric_type="accuracy", metric_name="Mean attribute accuracy", metric_value=accuracy,
                       **probe_common)
        )  # fmt: skip
        attributes = probe.get("num_attributes")
        text = (
            f"A linear classifier trained on the frozen encoder's features{' (%d attributes)' % attributes if attributes else ''}"
            f" reaches a mean per-attribute accuracy of **{percent:.2f}%** on "
            + (f"the `{probe_split}` split of " if probe_split else "")
            + (f"`{probe_dataset}`." if probe_dataset != dataset["id"] else f"{dataset['name_md']}.")
            + " CelebA papers report this mean of per-attribute accuracies (the majority-class floor is about 80%)."
        )
        if not dataset["is_celeba"]:
            text += " These labels are not CelebA's: the figure says nothing about CelebA."
        linear_probe = {"text": text}
        metric_rows.append({"name": "Linear probe: mean attribute accuracy", "value": f"{percent:.2f}%"})
    if metric_rows:
        evaluation = {
            "split": eval_split,
            "num_images": (results or {}).get("eval_samples", dataset.get("eval_samples")),
            "mask_seed": (results or {}).get("eval_mask_seed"),
            "rows": metric_rows,
        }

    # ---- widget: example inputs with their static outputs ----------------------------------------------------------
    examples, widget = [], []
    examples_meta = _read_json(folder / EXAMPLES_DIR / "examples.json") or {}
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

    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license=LICENSE,
        tags=list(CARD_TAGS),
        datasets=[dataset["id"]] if dataset["id"] else None,
        metrics=sorted({result.metric_type for result in eval_results}) or None,
        base_model=training["init"] if training and training["init"] else None,
        eval_results=eval_results or None,
        widget=widget or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        model_id=model_id,
        revision=revision or "main",
        revision_is_commit=revision is not None and len(revision) == 40,
        code_url=code_url,
        arch=arch,
        tokenizer_rows=_tokenizer_rows(config),
        dataset=dataset,
        versions=versions,
        training=training,
        hardware=hardware,
        evaluation=evaluation,
        linear_probe=linear_probe,
        leakage=leakage,
        diagram_path=DIAGRAM_PATH if (folder / DIAGRAM_PATH).is_file() else None,
        reconstructions_path=RECONSTRUCTIONS_PATH if (folder / RECONSTRUCTIONS_PATH).is_file() else None,
        examples=examples,
        examples_mask_ratio=examples_meta.get("mask_ratio", EXAMPLES_MASK_RATIO),
        examples_seed=examples_meta.get("seed", EXAMPLES_SEED),
    )
    output_path = Path(output_path) if output_path is not None else folder / "README.md"
    card.save(output_path)
    return card


__all__ = [
    "CARD_TAGS",
    "TEMPLATE_PATH",
    "dilated_leakage",
    "draw_tokenizer_diagram",
    "is_rendered_card",
    "reconstruction_strip",
    "redact_command",
    "render_model_card",
    "write_card_assets",
]
