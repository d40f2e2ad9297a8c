"""The Gradio demo (`app.py`): it imports and builds its interface, and its callback returns the four images, without
launching a server. gradio is an optional extra of the package (`demo`), and part of `test`, so this always runs."""

import os

import numpy as np
import PIL.Image
import pytest
import skimage.data

from conftest import load_file
from dilated_vit_mae import DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.hub import prepare_hub_folder
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
    with pytest.raises(ValueError, match="mask ratio"):
        reconstruct(photo, 1.0, 0)
    # the demo built around a given pipeline uses it
    assert isinstance(
        app.build_demo(str(model_folder), reconstruction_pipeline=reconstruction_pipeline), __import__("gradio").Blocks
    )
