"""The Inference Endpoints handler, as shipped in a published folder (`handler.py`), called locally."""

import base64
import io
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

from conftest import TINY_CONFIG, load_file, run_without_package
from dilated_vit_mae import DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.publish.hub import add_inference_code


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


def truncated_png(image: PIL.Image.Image) -> bytes:
    data = png_bytes(image)
    return data[: len(data) // 2]


def strip_png() -> bytes:
    """A 4 KB PNG of 1 x 1,000,000 px: a shortest-edge resize to 224 px would be 224 x 224,000,000 (gigabytes)."""
    return png_bytes(PIL.Image.fromarray(np.tile(np.arange(250, dtype=np.uint8), (1, 4000))))


def bomb_png() -> bytes:
    """A small PNG declaring 10,000 x 6,000 px (60 MP): refused from its header, before decoding."""
    return png_bytes(PIL.Image.new("L", (10_000, 6_000)))


HOSTILE_REQUESTS = {
    "no inputs": ({"parameters": {}}, '"inputs"'),
    "not a JSON object": ([1, 2], "must be a JSON object"),
    "number as image": ({"inputs": 42}, "Unsupported image type int"),
    "not base64": ({"inputs": "not an image"}, "base64"),
    "base64 of text": ({"inputs": base64.b64encode(b"plain text").decode()}, "must be sent in the request"),
    "data URL without comma": ({"inputs": "data:image/png;base64"}, "without ';base64,' before its data"),
    "URL": ({"inputs": "https://example.com/face.png"}, "paths and URLs are never read"),
    "truncated image": ("truncated", "Could not read the image data: image file is truncated"),
    "60 MB base64 body": ({"inputs": "A" * 60_000_000}, r"60,000,000 characters .* more than the limit"),
    "60 MB bytes": ({"inputs": b"\x89PNG" + bytes(60_000_000)}, "more than the limit"),
    "60 MP image": ("bomb", r"10000 x 6000 = 60,000,000 pixels, more than the limit"),
    "list as parameters": ({"inputs": "", "parameters": [1, 2]}, '"parameters" must be a JSON object, got list'),
    "unknown task": ({"inputs": "", "parameters": {"task": "classify"}}, '"task" must be one of'),
    "task not a string": ({"inputs": "", "parameters": {"task": ["features"]}}, '"task" must be one of'),
    "unknown parameter": ({"inputs": "", "parameters": {"temperature": 1.0}}, "Unknown parameters"),
    "features with parameters": ({"inputs": "", "parameters": {"task": "features", "seed": 1}}, "no other parameters"),
    "mask_ratio 1.5": ({"inputs": "", "parameters": {"mask_ratio": 1.5}}, "`mask_ratio` must be a number"),
    "mask_ratio string": ({"inputs": "", "parameters": {"mask_ratio": "0.5"}}, "got '0.5'"),
    "mask_ratio NaN": ({"inputs": "", "parameters": {"mask_ratio": float("nan")}}, "got nan"),
    "seed 2**70": ({"inputs": "", "parameters": {"seed": 2**70}}, r"`seed` must be an integer in \[0, 2\*\*64 - 1\]"),
    "seed negative": ({"inputs": "", "parameters": {"seed": -1}}, "`seed` must be an integer"),
    "seed float": ({"inputs": "", "parameters": {"seed": 0.5}}, "`seed` must be an integer"),
}


def hostile_request(data, photo):
    if data == "truncated":
        return {"inputs": base64.b64encode(truncated_png(photo)).decode()}
    if data == "bomb":
        return {"inputs": bomb_png()}
    if isinstance(data, dict) and data.get("inputs") == "":
        return {**data, "inputs": photo}
    return data


@pytest.mark.parametrize("name", list(HOSTILE_REQUESTS))
def test_bad_requests_raise_value_errors_naming_the_problem(handler, photo, name):
    import time

    endpoint, _ = handler
    data, message = HOSTILE_REQUESTS[name]
    data = hostile_request(data, photo)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):  # the endpoint answers a ValueError with a 400
        endpoint(data)
    assert time.perf_counter() - start < 10


def test_a_request_naming_a_server_file_is_refused_without_reading_it(handler, photo, tmp_path):
    endpoint, module = handler
    served = tmp_path / "server-side.jpg"  # an image on the server, which a request must not be able to fetch
    photo.save(served, format="JPEG")
    missing = tmp_path / "missing.jpg"
    requests = {
        "a server image": str(served), "the same, relative": os.path.relpath(served), "a file URL": served.as_uri(),
        "/etc/passwd": "/etc/passwd", "a missing path": str(missing), "a directory": str(tmp_path),
        "a Path object": served, "not base64": "no image here",
        "base64 of text": base64.b64encode(b"root:x:0:0:root:/root:/bin/bash").decode(),
        # PIL would hand an EPS to Ghostscript, a program of the server's: a request is decoded by PIL's own readers
        "an EPS image": base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n").decode(),
    }  # fmt: skip
    messages = {}
    for name, inputs in requests.items():
        with pytest.raises(ValueError) as error:
            endpoint({"inputs": inputs, "parameters": {"seed": 0}})
        messages[name] = str(error.value)
    # one message whatever was named: a client learns nothing of which files the server has
    assert set(messages.values()) == {messages["a missing path"]}, messages
    assert "base64" in messages["/etc/passwd"] and "paths and URLs are never read" in messages["/etc/passwd"]
    assert str(served) not in messages["a server image"] and "exist" not in messages["a missing path"]
    # the image itself, sent in the request, is served
    assert set(endpoint({"inputs": served.read_bytes(), "parameters": {"seed": 0}})) >= {"original", "recomposited"}


def test_extreme_aspect_ratio_is_served_quickly(handler):
    import time

    endpoint, _ = handler
    start = time.perf_counter()
    response = endpoint({"inputs": strip_png(), "parameters": {"seed": 0}})
    assert time.perf_counter() - start < 10
    assert decode(response["original"]).size == (32, 32)
    features = endpoint({"inputs": base64.b64encode(strip_png()).decode(), "parameters": {"task": "features"}})
    assert features["shape"] == [65, 32]


def test_16_bit_image_is_scaled_not_clipped(handler):
    endpoint, _ = handler
    gradient = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    response = endpoint({"inputs": png_bytes(PIL.Image.fromarray(gradient)), "parameters": {"mask_ratio": 0.5}})
    original = np.asarray(decode(response["original"])).astype(int)
    assert np.abs(original - gradient[..., None] / 257).max() <= 1  # not 99% white


BOUNDS_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["dilated_vit_mae"] = None  # the folder's code only, as on an endpoint
    import base64, importlib.util, io, json, time
    import numpy as np
    import PIL.Image

    def peak_mb():  # VmHWM: this process's peak resident memory
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    folder = sys.argv[1]
    spec = importlib.util.spec_from_file_location("handler", folder + "/handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(folder)

    def png(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    requests = {
        "strip": {"inputs": png(PIL.Image.new("L", (1_000_000, 1), 128)), "parameters": {"seed": 0}},
        "strip features": {"inputs": png(PIL.Image.new("RGB", (1, 1_000_000))), "parameters": {"task": "features"}},
        "bomb": {"inputs": png(PIL.Image.new("L", (10_000, 6_000)))},
        "60 MB base64": {"inputs": "A" * 60_000_000},
        "truncated": {"inputs": png(PIL.Image.new("RGB", (500, 500), (9, 9, 9)))[:300]},
    }
    handler({"inputs": PIL.Image.new("RGB", (40, 40)), "parameters": {"seed": 0}})  # warm up
    report = {"sizes": {name: len(str(r["inputs"])) for name, r in requests.items()}, "before_mb": peak_mb()}
    for name, request in requests.items():
        start = time.perf_counter()
        try:
            handler(request)
            outcome = "ok"
        except ValueError as error:
            outcome = "ValueError"
        report[name] = {"seconds": time.perf_counter() - start, "outcome": outcome, "peak_mb": peak_mb()}
    print("REPORT " + json.dumps(report))
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: ~10 s
def test_hostile_inputs_stay_within_time_and_memory_in_a_clean_process(handler, tmp_path):
    endpoint, module = handler
    folder = Path(module.__file__).parent
    (tmp_path / "bounds.py").write_text(BOUNDS_SCRIPT)
    result = run_without_package([tmp_path / "bounds.py", folder], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    expected = {"strip": "ok", "strip features": "ok", "bomb": "ValueError", "60 MB base64": "ValueError",
                "truncated": "ValueError"}  # fmt: skip
    for name, outcome in expected.items():
        assert report[name]["outcome"] == outcome, (name, report[name])
        assert report[name]["seconds"] < 10, (name, report[name])
    # the peak grows by less than 200 MB over all of them (a 224 x 224,000,000 resize alone would be ~6 GB), and the
    # whole process, torch and transformers included, stays under 1 GB
    assert report["truncated"]["peak_mb"] - report["before_mb"] < 200, report
    assert report["truncated"]["peak_mb"] < 1024, report
