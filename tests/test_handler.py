"""The Inference Endpoints handler, as shipped in a published folder (`handler.py`), called locally."""

import base64
import io
import json

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

from conftest import TINY_CONFIG, load_file
from dilated_vit_mae import DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.hub import add_inference_code


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    from dilated_vit_mae import DilatedViTMAEConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("handler") / "endpoint-model"
    model = DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**TINY_CONFIG)).eval()
    model.save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    add_inference_code(folder)
    module = load_file(folder / "handler.py", "endpoint_handler")
    return module.EndpointHandler(str(folder)), module


@pytest.fixture(scope="module")
def photo() -> PIL.Image.Image:
    return PIL.Image.fromarray(skimage.data.astronaut())


def png_bytes(image: PIL.Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def decode(b64: str) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(base64.b64decode(b64)))


def test_handler_serves_the_folder_with_its_own_pipeline(handler):
    endpoint, _ = handler
    # the pipeline class is the folder's file (remote code); the model class is the package's here, because this
    # process has the package registered (a process without it is tested by tests/test_push_to_hub.py)
    assert type(endpoint.pipeline).__module__.startswith("transformers_modules")
    assert type(endpoint.pipeline).__name__ == "DilatedViTMAEReconstructionPipeline"
    assert type(endpoint.model).__name__ == "DilatedViTMAEForPreTraining" and not endpoint.model.training


def test_reconstruction_returns_base64_pngs_and_is_reproducible(handler, photo):
    endpoint, _ = handler
    response = endpoint({"inputs": photo, "parameters": {"task": "reconstruction", "mask_ratio": 0.5, "seed": 3}})
    json.dumps(response)  # JSON-serialisable as it is
    assert set(response) == {"original", "masked", "reconstruction", "recomposited", "mask_ratio", "seed"}
    assert response["mask_ratio"] == 0.5 and response["seed"] == 3
    images = {key: decode(response[key]) for key in ("original", "masked", "reconstruction", "recomposited")}
    assert all(image.format == "PNG" and image.size == (32, 32) for image in images.values())
    masked = np.asarray(images["masked"])
    original, recomposited = np.asarray(images["original"]), np.asarray(images["recomposited"])
    visible = masked.any(axis=-1, keepdims=True)  # a removed patch is black
    assert np.array_equal(np.where(visible, recomposited, 0), np.where(visible, original, 0))
    assert response == endpoint(
        {"inputs": photo, "parameters": {"task": "reconstruction", "mask_ratio": 0.5, "seed": 3}}
    )


@pytest.mark.parametrize("encoding", ["pil", "bytes", "base64", "data_url"])
def test_inputs_may_be_pil_bytes_or_base64(handler, photo, encoding):
    endpoint, _ = handler
    raw = png_bytes(photo)
    inputs = {
        "pil": photo,
        "bytes": raw,
        "base64": base64.b64encode(raw).decode(),
        "data_url": "data:image/png;base64," + base64.b64encode(raw).decode(),
    }[encoding]
    reference = endpoint({"inputs": photo, "parameters": {"seed": 0}})
    assert endpoint({"inputs": inputs, "parameters": {"seed": 0}}) == reference  # default task: reconstruction


def test_features_are_the_whole_image_tokens_as_lists(handler, photo):
    endpoint, _ = handler
    response = endpoint({"inputs": photo, "parameters": {"task": "features"}})
    json.dumps(response)
    assert response["shape"] == [1 + 64, 32]
    hidden = np.asarray(response["last_hidden_state"])
    assert hidden.shape == (65, 32) and np.isfinite(hidden).all()
    np.testing.assert_allclose(response["cls_embedding"], hidden[0], rtol=1e-6)
    np.testing.assert_allclose(response["mean_patch_embedding"], hidden[1:].mean(axis=0), rtol=1e-5, atol=1e-6)
    # no masking: the same as the encoder on every patch, in image order
    pixel_values = endpoint.image_processor(photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = endpoint.model.base_model(pixel_values, mask_ratio=0.0).last_hidden_state[0]
    np.testing.assert_allclose(hidden, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert response == endpoint({"inputs": photo, "parameters": {"task": "features"}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"parameters": {}}, '"inputs"'),
        ({"inputs": 42}, "must be an image"),
        ({"inputs": "not an image"}, "base64"),
        ({"inputs": base64.b64encode(b"plain text").decode()}, "could not be decoded"),
        ({"inputs": "", "parameters": {"task": "classify"}}, '"task" must be one of'),
        ({"inputs": "", "parameters": {"temperature": 1.0}}, "Unknown parameters"),
        ({"inputs": "", "parameters": {"task": "features", "seed": 1}}, "no other parameters"),
        ({"inputs": "", "parameters": {"mask_ratio": 1.5}}, "mask_ratio"),
    ],
)
def test_bad_requests_name_the_problem(handler, photo, data, message):
    endpoint, _ = handler
    if data.get("inputs") == "":
        data = {**data, "inputs": photo}
    with pytest.raises(ValueError, match=message):
        endpoint(data)
