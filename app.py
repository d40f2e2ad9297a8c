"""
A Gradio demo of DilatedViTMAE's masked reconstruction, for a Hugging Face Space or a local run:
original / masked / reconstruction / re-composited side by side, with a mask-ratio slider and a seed.

    pip install -e '.[demo]'                                    # gradio (an optional extra)
    python app.py                                               # serves outputs/dilated-vit-mae-sample
    python app.py --model your-name/dilated-vit-mae --revision <commit>
    DILATED_VIT_MAE_MODEL=your-name/dilated-vit-mae python app.py

The model is any publishable folder or Hub repository (what `scripts/run_mae.py` saves): it is loaded through its own
`mae-reconstruction` pipeline with `trust_remote_code=True`, so a Space needs only `torch`, `transformers` and
`gradio` in its requirements.txt (not this package). In a Space, set the variables `DILATED_VIT_MAE_MODEL` (and
`DILATED_VIT_MAE_REVISION`, a commit hash) in its settings.

Uploads follow the same image policy as the pipeline and the Inference Endpoints handler: gradio hands over the
uploaded file untouched (no conversion of its own, which would clip 16-bit images to 255) and the model's pipeline
reads it (its file's `load_image`: size bounds checked before decoding, 16/32-bit images scaled by their range). An
upload larger than the handler's limit (the pipeline file's `MAX_IMAGE_BYTES`, 32 MiB) is refused by the server
before it is stored (`launch`), and what gradio caches (uploads, shown results) is deleted once it is
`DELETE_CACHE[1]` seconds old and all of it when the server stops (Ctrl+C or SIGTERM).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import PIL.Image


DEFAULT_MODEL = "outputs/dilated-vit-mae-sample"  # what `accelerate launch scripts/run_mae.py` trains
MODEL_ENV = "DILATED_VIT_MAE_MODEL"
REVISION_ENV = "DILATED_VIT_MAE_REVISION"
COLUMNS = ("original", "masked", "reconstruction", "recomposited")
DISPLAY_SIZE = 256  # the model's inputs are small: show them upscaled, pixel for pixel
# gradio's `delete_cache` (frequency, age): every 5 minutes, delete the cached files older than 10 minutes (and all of
# them when the server stops); an upload is read once, right away
DELETE_CACHE = (300, 600)


def resolve_model(model: str | None = None) -> str:
    """The model to serve: the argument, else `$DILATED_VIT_MAE_MODEL`, else the main job's output folder."""
    return model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def load_reconstruction_pipeline(model: str, revision: str | None = None):
    """The model's own `mae-reconstruction` pipeline (remote code from the folder or repository)."""
    from transformers import pipeline

    return pipeline("mae-reconstruction", model=model, revision=revision, trust_remote_code=True)


def upload_limit(reconstruction_pipeline) -> int:
    """The largest upload in bytes: the `MAX_IMAGE_BYTES` of the model's pipeline module (the folder's own code), the
    limit its Inference Endpoints handler applies to a request's image."""
    return int(sys.modules[type(reconstruction_pipeline).__module__].MAX_IMAGE_BYTES)


def _display(image: PIL.Image.Image) -> PIL.Image.Image:
    factor = max(1, DISPLAY_SIZE // max(image.size))
    return image.convert("RGB").resize((image.width * factor, image.height * factor), PIL.Image.NEAREST)


def make_reconstruct(reconstruction_pipeline):
    """
    The demo's callback: `(image, mask_ratio, seed) -> (original, masked, reconstruction, recomposited)`. `image` is
    the uploaded file's path (or a PIL image), read by the pipeline's image processor.
    """

    def reconstruct(image: str | PIL.Image.Image | None, mask_ratio: float, seed: float | None) -> tuple[Any, ...]:
        if image is None:
            return (None,) * len(COLUMNS)
        # the app's own rule: an emptied seed field arrives as None, which the pipeline would take as "draw a seed"
        # (the field promises same seed, same mask); a whole float (3.0) is accepted
        if not isinstance(seed, (int, float)) or not float(seed).is_integer() or seed < 0:
            raise ValueError(f"The seed must be a non-negative whole number, got {seed!r}.")
        # the pipeline checks `mask_ratio` itself
        result = reconstruction_pipeline(image, mask_ratio=mask_ratio, seed=int(seed))
        return tuple(_display(result[name]) for name in COLUMNS)

    return reconstruct


def shown_to_the_user(callback, user_error):
    """
    `callback` with the input errors it raises (`ValueError`, `TypeError`: the pipeline's and the app's refusals, whose
    messages name the problem and what to do) turned into `user_error` (gradio's `gr.Error`), which the page shows;
    gradio shows any other exception as a bare "Error" unless the whole server reports tracebacks (`show_error`).
    """

    @functools.wraps(callback)
    def shown(*args: Any) -> Any:
        try:
            return callback(*args)
        except (ValueError, TypeError) as error:
            raise user_error(str(error)) from error

    return shown


def example_images(model: str) -> list[str]:
    """The example photos shipped in a local model folder (`examples/`), if any."""
    folder = Path(model) / "examples"
    if not folder.is_dir():
        return []
    return [
        str(p)
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and "_reconstruction" not in p.stem
    ]


def build_demo(model: str | None = None, revision: str | None = None, reconstruction_pipeline=None):
    """
    The Gradio interface (not launched). `reconstruction_pipeline` may be given directly (tests); otherwise the
    pipeline of `model` (see `resolve_model`) at `revision` is loaded.
    """
    import gradio as gr

    model = resolve_model(model)
    revision = revision or os.environ.get(REVISION_ENV)
    if reconstruction_pipeline is None:
        reconstruction_pipeline = load_reconstruction_pipeline(model, revision)
    reconstruct = shown_to_the_user(make_reconstruct(reconstruction_pipeline), gr.Error)
    config = reconstruction_pipeline.model.config

    with gr.Blocks(title="DilatedViTMAE: masked reconstruction", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            f"# DilatedViTMAE: masked reconstruction\n"
            f"Model: `{model}`{f' at `{revision}`' if revision else ''}. The image is resized and cropped to the "
            f"model's input size, a random fraction of its patches is removed (black), and the masked autoencoder "
            f"predicts every patch; *re-composited* keeps the visible patches and fills the removed ones with the "
            f"prediction. Dilated context: `{config.dilated_context}` (with `full`, the dilated branches of visible "
            f"patches also read removed pixels)."
        )
        with gr.Row():
            # the file as uploaded: gradio's own conversion (`image_mode`) would clip 16-bit images to 255
            image = gr.Image(type="filepath", image_mode=None, label="image", sources=["upload", "clipboard"])
            with gr.Column():
                mask_ratio = gr.Slider(0.0, 0.95, value=float(config.mask_ratio), step=0.05, label="mask ratio")
                seed = gr.Number(value=0, precision=0, minimum=0, label="seed (same seed, same mask)")
                button = gr.Button("Reconstruct", variant="primary")
        with gr.Row():
            outputs = [gr.Image(type="pil", label=name, format="png") for name in COLUMNS]
        examples = example_images(model)
        if examples:
            gr.Examples(
                examples=[[path, float(config.mask_ratio), 0] for path in examples], inputs=[image, mask_ratio, seed]
            )
        inputs = [image, mask_ratio, seed]
        button.click(reconstruct, inputs=inputs, outputs=outputs)
        image.upload(reconstruct, inputs=inputs, outputs=outputs)
    return demo


def launch(demo, reconstruction_pipeline, **kwargs):
    """Serve `demo` (`Blocks.launch(**kwargs)`) with uploads larger than `upload_limit(reconstruction_pipeline)`
    refused before they are stored."""
    return demo.launch(max_file_size=upload_limit(reconstruction_pipeline), **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"Model folder or Hub id (default: ${MODEL_ENV} or {DEFAULT_MODEL}).")
    parser.add_argument("--revision", help=f"Commit, branch or tag of a Hub model (default: ${REVISION_ENV}).")
    parser.add_argument("--server_name", default=None, help="e.g. 0.0.0.0 to serve on the network.")
    parser.add_argument("--server_port", type=int, default=None)
    args = parser.parse_args(argv)
    model, revision = resolve_model(args.model), args.revision or os.environ.get(REVISION_ENV)
    reconstruction_pipeline = load_reconstruction_pipeline(model, revision)
    demo = build_demo(model, revision, reconstruction_pipeline)
    # a stop (SIGTERM: a Space, a container, systemd) ends the server as Ctrl+C does, so that gradio deletes its cache
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    launch(demo, reconstruction_pipeline, server_name=args.server_name, server_port=args.server_port)


if __name__ == "__main__":
    main()
