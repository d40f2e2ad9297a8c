"""The Gradio demo (`app.py`): it imports and builds its interface, and its callback returns the four images, without
launching a server. gradio is an optional extra of the package (`demo`), and part of `test`, so this always runs."""

import os
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data

from conftest import load_file
from dilated_vit_mae import DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.publish.hub import prepare_hub_folder
from dilated_vit_mae.pipeline_dilated_vit_mae import DilatedViTMAEReconstructionPipeline


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from gradio
import gradio  # noqa: E402,F401  (the `test` extra installs it: its absence is a failure, not a skip)


def load_app():
    return load_file("app.py")


@pytest.fixture
def model_folder(tiny_config, tmp_path):
    folder = tmp_path / f"{tmp_path.name}-model"
    DilatedViTMAEForPreTraining(tiny_config).save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    prepare_hub_folder(folder)
    return folder


def test_the_model_comes_from_the_argument_the_environment_or_the_default(monkeypatch):
    app = load_app()
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    assert app.resolve_model() == "outputs/dilated-vit-mae-sample"
    monkeypatch.setenv(app.MODEL_ENV, "me/model")
    assert app.resolve_model() == "me/model"
    assert app.resolve_model("other/model") == "other/model"


def test_demo_builds_from_a_folder_and_reconstructs(model_folder, monkeypatch):
    import gradio as gr

    app = load_app()
    monkeypatch.setenv(app.MODEL_ENV, str(model_folder))
    demo = app.build_demo()  # loads the folder's own pipeline with trust_remote_code; nothing is launched
    assert isinstance(demo, gr.Blocks)
    components = {type(c).__name__ for c in demo.blocks.values()}
    assert {"Image", "Slider", "Number", "Button"} <= components
    labels = [getattr(c, "label", None) for c in demo.blocks.values() if isinstance(c, gr.Image)]
    assert labels[1:5] == ["original", "masked", "reconstruction", "recomposited"]
    assert any(type(c).__name__ == "Dataset" for c in demo.blocks.values())  # the folder's examples
    assert not getattr(demo, "is_running", False)


def test_callback_shows_the_four_images_side_by_side(model_folder):
    app = load_app()
    reconstruction_pipeline = DilatedViTMAEReconstructionPipeline(
        model=DilatedViTMAEForPreTraining.from_pretrained(model_folder).eval(),
        image_processor=DilatedViTMAEImageProcessor.from_pretrained(model_folder),
    )
    reconstruct = app.make_reconstruct(reconstruction_pipeline)
    photo = PIL.Image.fromarray(skimage.data.astronaut())
    images = reconstruct(photo, 0.75, 3)
    assert len(images) == 4 and all(isinstance(i, PIL.Image.Image) and i.size == (256, 256) for i in images)
    original, masked, _, recomposited = (np.asarray(i) for i in images)
    visible = masked.any(axis=-1, keepdims=True)
    assert 0.2 < visible.mean() < 0.3  # 25% of the patches kept
    assert np.array_equal(np.where(visible, recomposited, 0), np.where(visible, original, 0))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, reconstruct(photo, 0.75, 3)))
    assert reconstruct(None, 0.75, 0) == (None, None, None, None)
    # the pipeline's own check (one place for the rule and its message)
    with pytest.raises(ValueError, match=r"^`mask_ratio` must be a number in \[0, 1\), got 1\.0\.$"):
        reconstruct(photo, 1.0, 0)
    # the demo built around a given pipeline uses it
    assert isinstance(
        app.build_demo(str(model_folder), reconstruction_pipeline=reconstruction_pipeline), __import__("gradio").Blocks
    )


def test_uploads_reach_the_image_processor_untouched_so_16_bit_is_scaled(model_folder, tmp_path):
    from gradio.data_classes import ImageData

    app = load_app()
    demo = app.build_demo(str(model_folder))
    upload = next(c for c in demo.blocks.values() if type(c).__name__ == "Image" and c.label == "image")
    gradient = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    path = tmp_path / "gradient16.png"
    PIL.Image.fromarray(gradient).save(path)  # a 16-bit PNG
    # what gradio hands the callback for an upload: the file itself, not gradio's 8-bit conversion of it
    value = upload.preprocess(ImageData(path=str(path), orig_name="gradient16.png"))
    assert value == str(path)
    reconstruct = app.make_reconstruct(app.load_reconstruction_pipeline(str(model_folder)))
    original = np.asarray(reconstruct(value, 0.5, 0)[0])[::8, ::8].astype(int)  # shown 8x: one pixel per 8
    assert np.abs(original - gradient[..., None] / 257).max() <= 1  # a gradient, not 99% white
    with pytest.raises(ValueError, match="does not download"):
        reconstruct("https://example.com/face.png", 0.5, 0)
    for mask_ratio, seed, match in [("0.5", 0, "`mask_ratio` must be"), (float("nan"), 0, "`mask_ratio` must be"),
                                    (True, 0, "`mask_ratio` must be"), (0.5, None, "seed"),
                                    (0.5, 1.5, "seed"), (0.5, -1, "seed")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            reconstruct(value, mask_ratio, seed)


def same_up_to_round_off(image, other) -> bool:
    """Equal but for float round-off: the tokens' order changes the sums' order, which may move a value by one level
    (measured: 1 level on 0.03% of the pixels); a scrambled reconstruction differs everywhere."""
    difference = np.abs(np.asarray(image).astype(int) - np.asarray(other))
    return difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_mask_ratio_zero_shows_the_unscrambled_reconstruction_whatever_the_seed(model_folder):
    import torch

    app = load_app()
    model = DilatedViTMAEForPreTraining.from_pretrained(model_folder).eval()
    processor = DilatedViTMAEImageProcessor.from_pretrained(model_folder)
    reconstruction_pipeline = DilatedViTMAEReconstructionPipeline(model=model, image_processor=processor)
    reconstruct = app.make_reconstruct(reconstruction_pipeline)
    photo = PIL.Image.fromarray(skimage.data.astronaut())
    shown = [reconstruct(photo, 0.0, seed)[2] for seed in (0, 1, 12345)]
    assert all(same_up_to_round_off(shown[0], other) for other in shown[1:])  # the seed shuffles nothing back
    expected = reconstruction_pipeline(photo, mask_ratio=0.0, seed=0)["reconstruction"]
    assert np.array_equal(np.asarray(shown[0]), np.asarray(app._display(expected)))
    # and it is the model's prediction of every patch in image order (no noise: nothing shuffled)
    pixel_values = processor(photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values, mask_ratio=0.0).logits
    in_order = processor.postprocess(model.logits_to_pixel_values(logits, pixel_values)[0])
    assert same_up_to_round_off(shown[0], app._display(in_order))


def test_uploads_are_bounded_by_the_handler_limit_and_the_cache_is_removed(model_folder, monkeypatch):
    import httpx

    app = load_app()
    monkeypatch.setattr(app, "DELETE_CACHE", (1, 1))  # the sweep, made quick enough to watch
    reconstruction_pipeline = app.load_reconstruction_pipeline(str(model_folder))
    limit = app.upload_limit(reconstruction_pipeline)
    # the bound the folder's own `load_image` applies to an encoded image by default
    assert limit == 32 * 2**20 == sys.modules[type(reconstruction_pipeline).__module__].load_image.__defaults__[1]
    demo = app.build_demo(str(model_folder), reconstruction_pipeline=reconstruction_pipeline)
    app.launch(demo, reconstruction_pipeline, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        upload = demo.local_url.rstrip("/") + "/gradio_api/upload"
        too_large = httpx.post(upload, files={"files": ("big.png", b"\x89PNG" + bytes(limit))}, timeout=120)
        assert too_large.status_code == 413, too_large.text
        kept = httpx.post(upload, files={"files": ("small.png", b"\x89PNG" + bytes(1000))}, timeout=60)
        assert kept.status_code == 200, kept.text
        cached = Path(kept.json()[0])
        assert cached.is_file() and cached.stat().st_size == 1004
        assert not any(p.stat().st_size > limit for p in cached.parent.parent.rglob("*") if p.is_file())
        deadline = time.monotonic() + 30
        while cached.exists() and time.monotonic() < deadline:  # deleted by the sweep while the server runs
            time.sleep(0.2)
        assert not cached.exists()
        again = Path(httpx.post(upload, files={"files": ("again.png", b"\x89PNG" + bytes(10))}, timeout=60).json()[0])
        assert again.is_file()
    finally:
        demo.close()
    assert not again.exists()  # and whatever is left when the server stops


@pytest.mark.slow  # starts `python app.py` and sends it 160 MiB: ~80 s here
def test_the_served_app_refuses_large_uploads_and_deletes_its_cache_when_stopped(model_folder, tmp_path):
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    cache = tmp_path / "gradio-cache"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "app.py", "--model", str(model_folder), "--server_name", "127.0.0.1", "--server_port",
               str(port)]  # fmt: skip
    server = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        upload, deadline = f"http://127.0.0.1:{port}/gradio_api/upload", time.monotonic() + 240
        while time.monotonic() < deadline and server.poll() is None:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        # four uploads of 40 MiB grew the cache by 160 MB; the handler's limit is 32 MiB
        for _ in range(4):
            response = httpx.post(upload, files={"files": ("big.png", bytes(40 * 2**20))}, timeout=120)
            assert response.status_code == 413 and "33554432 bytes" in response.text
        assert sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) < 2**20
        kept = Path(httpx.post(upload, files={"files": ("small.png", bytes(2000))}, timeout=60).json()[0])
        assert kept.is_file() and cache in kept.parents
        server.terminate()  # SIGTERM, as a Space or a container is stopped
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, server.stdout.read()[-2000:]
    assert not kept.exists()


def test_a_refused_upload_tells_the_user_why_in_the_app(model_folder, tmp_path):
    # a careless upload (a truncated file) is refused by the pipeline with a message that names the problem: the
    # served app must show that message (gradio shows only a bare "Error" for any other exception)
    from gradio_client import Client, handle_file

    app = load_app()
    reconstruction_pipeline = app.load_reconstruction_pipeline(str(model_folder))
    demo = app.build_demo(str(model_folder), reconstruction_pipeline=reconstruction_pipeline)
    truncated = tmp_path / "truncated.png"
    PIL.Image.fromarray(skimage.data.astronaut()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    app.launch(demo, reconstruction_pipeline, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(Exception) as refused:
            client.predict(handle_file(str(truncated)), 0.5, 0, api_name="/reconstruct")
        message = str(refused.value)
        assert "truncated" in message.lower(), message
    finally:
        demo.close()
