"""Tests for `DilatedViTMAEImageProcessor`: agreement with transformers' PIL ViT processor on real photos, input
formats, colour modes, the postprocess inverse, save/load, and the error messages for broken input."""

import ast
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from skimage import data as skimage_data
from transformers import AutoConfig, AutoImageProcessor, PreTrainedConfig, ViTImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from conftest import run_without_package
from dilated_vit_mae import image_processing_dilated_vit_mae as module
from dilated_vit_mae.image_processing_dilated_vit_mae import DilatedViTMAEImageProcessor


# Same PIL resampling on the same uint8 images, so the only difference from transformers is float32 round-off in
# rescale/normalise: measured max abs diff 7.2e-7 on astronaut/chelsea/coffee. 1e-5 leaves room for other numpy
# versions while still catching an off-by-one crop offset or a different resize (those differ by > 1e-2).
PARITY_ATOL = 1e-5


def _photo(name: str) -> PIL.Image.Image:
    return PIL.Image.fromarray(getattr(skimage_data, name)())


@pytest.fixture(scope="module")
def chelsea() -> PIL.Image.Image:
    return _photo("chelsea")  # 451 x 300 RGB


@pytest.fixture(scope="module")
def celeba_sized_face() -> PIL.Image.Image:
    # CelebA's aligned faces are 178 x 218 (W x H); a real photo cropped/resized to that size stands in for one
    return _photo("astronaut").crop((130, 20, 350, 290)).resize((178, 218), PIL.Image.Resampling.BICUBIC)


def _pixels(processor: DilatedViTMAEImageProcessor, images, **kwargs) -> np.ndarray:
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


# ---------------------------------------------------------------- agreement with transformers


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "celeba"])
def test_defaults_match_transformers_vit_pil_processor(name, celeba_sized_face):
    image = celeba_sized_face if name == "celeba" else _photo(name)
    reference = ViTImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )
    expected = reference(image, return_tensors="np")["pixel_values"]
    actual = _pixels(DilatedViTMAEImageProcessor(), image)
    assert actual.shape == expected.shape == (1, 3, 224, 224)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=0, atol=PARITY_ATOL)


def test_height_width_resize_and_non_square_crop_match_transformers(chelsea):
    settings = dict(
        size={"height": 201, "width": 183},  # odd margins around the crop catch off-by-one offsets
        resample=PILImageResampling.BILINEAR,
        crop_size={"height": 160, "width": 96},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.3, 0.4],
    )
    reference = ViTImageProcessorPil(do_center_crop=True, **settings)
    expected = reference(chelsea, return_tensors="np")["pixel_values"]
    actual = _pixels(DilatedViTMAEImageProcessor(**settings), chelsea)
    assert actual.shape == (1, 3, 160, 96)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=PARITY_ATOL)


# ---------------------------------------------------------------- sizes and channels


def test_celeba_face_is_resized_on_shortest_edge_then_centre_cropped(celeba_sized_face):
    processor = DilatedViTMAEImageProcessor(do_normalize=False)
    pixel_values = processor(celeba_sized_face, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)
    assert pixel_values.dtype == torch.float32
    # 178x218 -> 224x274 (shortest edge 224, long side truncated), then rows 25..248 are kept
    resized = celeba_sized_face.resize((224, 274), PIL.Image.Resampling.BICUBIC)
    expected = np.asarray(resized, dtype=np.float32)[25:249].transpose(2, 0, 1) / 255
    np.testing.assert_allclose(pixel_values[0].numpy(), expected, atol=1e-6)


def test_size_height_width_resizes_without_keeping_aspect_ratio(chelsea):
    processor = DilatedViTMAEImageProcessor(size={"height": 100, "width": 60}, do_center_crop=False)
    assert _pixels(processor, chelsea).shape == (1, 3, 100, 60)


def test_num_channels_1_gives_luma_channel(chelsea):
    processor = DilatedViTMAEImageProcessor(num_channels=1)
    assert processor.image_mean == [0.449] and processor.image_std == [0.226]
    assert _pixels(processor, chelsea).shape == (1, 1, 224, 224)

    unnormalised = _pixels(processor, chelsea, do_resize=False, do_center_crop=False, do_normalize=False)
    expected = np.asarray(chelsea.convert("L"), dtype=np.float32)[None] / 255
    np.testing.assert_allclose(unnormalised[0], expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGBA", "LA", "YCbCr"])
def test_colour_modes_are_converted_to_rgb(mode, chelsea):
    image = chelsea.convert(mode)
    pixel_values = _pixels(DilatedViTMAEImageProcessor(), image)
    assert pixel_values.shape == (1, 3, 224, 224)
    if mode in ("P", "CMYK", "YCbCr", "L"):
        # no transparency: same as PIL's own conversion to RGB
        expected = _pixels(DilatedViTMAEImageProcessor(), image.convert("RGB"))
        np.testing.assert_allclose(pixel_values, expected, atol=1e-6)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red under ...
    rgba[:16, :, 3] = 0  # ... fully transparent top half
    rgba[16:, :, 3] = 255  # ... and opaque bottom half
    processor = DilatedViTMAEImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    for image in (PIL.Image.fromarray(rgba), rgba):
        pixel_values = _pixels(processor, image)[0]
        np.testing.assert_allclose(pixel_values[:, :16], 1.0)  # white, not the hidden red
        red = np.broadcast_to(np.array([1.0, 0.0, 0.0])[:, None, None], (3, 16, 32))
        np.testing.assert_allclose(pixel_values[:, 16:], red)


# ---------------------------------------------------------------- input formats


def test_numpy_and_torch_inputs_match_pil_input(chelsea):
    processor = DilatedViTMAEImageProcessor()
    expected = _pixels(processor, chelsea)
    hwc = np.asarray(chelsea)  # (300, 451, 3) uint8
    chw = hwc.transpose(2, 0, 1)
    inputs = {
        "numpy HWC uint8": hwc,
        "numpy CHW uint8": chw,
        "numpy HWC float": hwc.astype(np.float32) / 255,
        "numpy CHW float64": chw / 255.0,
        "torch CHW uint8": torch.from_numpy(chw.copy()),
        "torch CHW float": torch.from_numpy(chw.copy()).float() / 255,
        "torch HWC float": torch.from_numpy(hwc.copy()).float() / 255,
        "torch CHW int64": torch.from_numpy(chw.copy()).long(),
    }
    for name, image in inputs.items():
        # float inputs are rounded to 8 bits first, so they match exactly, not only within resampling tolerance
        np.testing.assert_allclose(_pixels(processor, image), expected, atol=1e-6, err_msg=name)


def test_greyscale_2d_array_matches_l_image(chelsea):
    grey = chelsea.convert("L")
    processor = DilatedViTMAEImageProcessor(do_normalize=False)
    expected = _pixels(processor, grey)
    for image in (np.asarray(grey), np.asarray(grey)[..., None], torch.from_numpy(np.asarray(grey).copy())[None]):
        np.testing.assert_allclose(_pixels(processor, image), expected, atol=1e-6)
    assert np.array_equal(expected[0, 0], expected[0, 1])  # grey replicated into R, G, B


def test_input_data_format_forces_layout():
    # (3, 8, 3) could be CHW or HWC: numpy defaults to HWC, input_data_format overrides it
    array = np.random.default_rng(0).integers(0, 256, size=(3, 8, 3), dtype=np.uint8)
    processor = DilatedViTMAEImageProcessor(do_resize=False, do_center_crop=False)
    assert _pixels(processor, array).shape == (1, 3, 3, 8)
    assert _pixels(processor, array, input_data_format="channels_first").shape == (1, 3, 8, 3)
    assert _pixels(processor, torch.from_numpy(array)).shape == (1, 3, 8, 3)  # torch defaults to CHW


def test_image_file_path_is_opened(chelsea, tmp_path):
    path = tmp_path / "chelsea.png"
    chelsea.save(path)
    processor = DilatedViTMAEImageProcessor()
    expected = _pixels(processor, chelsea)
    np.testing.assert_allclose(_pixels(processor, str(path)), expected, atol=1e-6)
    np.testing.assert_allclose(_pixels(processor, path), expected, atol=1e-6)


def test_batched_inputs(chelsea):
    processor = DilatedViTMAEImageProcessor()
    photos = [_photo("astronaut"), chelsea, _photo("coffee")]
    batch = _pixels(processor, photos)
    assert batch.shape == (3, 3, 224, 224)
    for index, photo in enumerate(photos):
        np.testing.assert_allclose(batch[index], _pixels(processor, photo)[0], atol=1e-6)

    same_size = np.stack([np.asarray(chelsea)] * 2)  # (2, H, W, C) batch array
    assert _pixels(processor, same_size).shape == (2, 3, 224, 224)
    assert processor(torch.from_numpy(same_size).permute(0, 3, 1, 2), return_tensors="pt")["pixel_values"].shape == (
        2,
        3,
        224,
        224,
    )

    as_list = processor(photos)["pixel_values"]  # return_tensors=None: a list, as in transformers
    assert isinstance(as_list, list) and len(as_list) == 3 and as_list[0].shape == (3, 224, 224)


def test_per_call_overrides(chelsea):
    processor = DilatedViTMAEImageProcessor()
    raw = _pixels(processor, chelsea, do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(raw[0], np.asarray(chelsea, dtype=np.float32).transpose(2, 0, 1))
    assert _pixels(processor, chelsea, crop_size={"height": 32, "width": 48}).shape == (1, 3, 32, 48)
    grey = _pixels(processor, chelsea, num_channels=1, image_mean=[0.5], image_std=[0.5])
    assert grey.shape == (1, 1, 224, 224)
    np.testing.assert_allclose(
        processor.preprocess(chelsea, return_tensors="np")["pixel_values"], _pixels(processor, chelsea)
    )


# ---------------------------------------------------------------- postprocess


@pytest.mark.parametrize("num_channels", [3, 1])
def test_postprocess_inverts_preprocess(num_channels, chelsea):
    processor = DilatedViTMAEImageProcessor(num_channels=num_channels, do_resize=False, do_center_crop=False)
    image = chelsea if num_channels == 3 else chelsea.convert("L")
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]

    restored = processor.postprocess(pixel_values)
    assert isinstance(restored, list) and len(restored) == 1
    assert restored[0].mode == image.mode and restored[0].size == image.size
    original = np.asarray(image, dtype=np.int16)
    # within one grey level, i.e. 1/255
    assert np.abs(np.asarray(restored[0], dtype=np.int16) - original).max() <= 1

    as_array = processor.postprocess(pixel_values[0].numpy(), return_type="np")  # (C, H, W) -> one (H, W[, C])
    assert as_array.dtype == np.uint8 and as_array.shape == original.shape
    assert np.abs(as_array.astype(np.int16) - original).max() <= 1


def test_postprocess_clips_out_of_range_reconstructions():
    processor = DilatedViTMAEImageProcessor()
    logits = torch.full((2, 3, 4, 4), 100.0)
    logits[1] = -100.0
    images = processor.postprocess(logits, return_type="np")
    assert images.shape == (2, 4, 4, 3)
    assert (images[0] == 255).all() and (images[1] == 0).all()


# ---------------------------------------------------------------- save / load


def test_save_pretrained_from_pretrained_round_trip(tmp_path, chelsea):
    processor = DilatedViTMAEImageProcessor(
        size={"height": 120, "width": 100},
        resample=PILImageResampling.BILINEAR,
        crop_size={"height": 96, "width": 64},
        rescale_factor=1 / 256,
        image_mean=[0.3],
        image_std=[0.6],
        num_channels=1,
    )
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "DilatedViTMAEImageProcessor"
    assert config["num_channels"] == 1 and config["crop_size"] == {"height": 96, "width": 64}

    loaded = DilatedViTMAEImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.resample == PILImageResampling.BILINEAR
    np.testing.assert_array_equal(_pixels(loaded, chelsea), _pixels(processor, chelsea))

    # overrides at load time go through __init__ and its validation
    overridden = DilatedViTMAEImageProcessor.from_pretrained(tmp_path, crop_size={"height": 32, "width": 32})
    assert overridden.crop_size == {"height": 32, "width": 32}
    with pytest.raises(ValueError, match="one value per channel"):
        DilatedViTMAEImageProcessor.from_pretrained(tmp_path, num_channels=3)


class _ImageProcessorTestConfig(PreTrainedConfig):
    model_type = "dilated_vit_mae_image_processor_test"


def test_auto_image_processor_loads_registered_processor(tmp_path):
    AutoConfig.register(_ImageProcessorTestConfig.model_type, _ImageProcessorTestConfig, exist_ok=True)
    AutoImageProcessor.register(
        _ImageProcessorTestConfig, image_processor_classes={"pil": DilatedViTMAEImageProcessor}, exist_ok=True
    )
    _ImageProcessorTestConfig().save_pretrained(tmp_path)
    processor = DilatedViTMAEImageProcessor(crop_size={"height": 64, "width": 96})
    processor.save_pretrained(tmp_path)

    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DilatedViTMAEImageProcessor
    assert loaded.to_dict() == processor.to_dict()


def test_register_for_auto_class_ships_the_module(tmp_path, monkeypatch):
    # restore the class attribute afterwards so other tests' save_pretrained is unaffected
    monkeypatch.setattr(DilatedViTMAEImageProcessor, "_auto_class", None)
    DilatedViTMAEImageProcessor.register_for_auto_class("AutoImageProcessor")
    DilatedViTMAEImageProcessor().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["auto_map"] == {
        "AutoImageProcessor": "image_processing_dilated_vit_mae.DilatedViTMAEImageProcessor"
    }
    assert (tmp_path / "image_processing_dilated_vit_mae.py").read_text() == Path(module.__file__).read_text()


def test_module_is_self_contained():
    # the Hub runs this file alone as remote code: it may import only these
    allowed = {"numpy", "PIL", "torch", "transformers"} | set(sys.stdlib_module_names)
    tree = ast.parse(Path(module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import from {node.module!r}"
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"{name} cannot be imported by remote code"
    assert module.__all__ == ["DilatedViTMAEImageProcessor"]
    assert DilatedViTMAEImageProcessor.model_input_names == ["pixel_values"]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "images, error, match",
    [
        (None, TypeError, "`images` is None"),
        ("definitely/not/an/image.png", ValueError, "not a path to an existing image file"),
        ("https://example.com/face.jpg", ValueError, "does not download"),
        (np.zeros(10, dtype=np.uint8), ValueError, r"shape \(H, W\), \(H, W, C\) or \(C, H, W\).*\(10,\)"),
        (np.zeros((1, 2, 3, 8, 8), dtype=np.uint8), ValueError, r"shape \(1, 2, 3, 8, 8\)"),
        (np.zeros((8, 8, 5), dtype=np.uint8), ValueError, r"channel axis .*\(8, 8, 5\)"),
        (np.full((8, 8, 3), np.nan, dtype=np.float32), ValueError, "NaN or infinite"),
        (np.full((8, 8, 3), 200.0, dtype=np.float32), ValueError, r"values in \[0, 1\]"),
        (np.full((8, 8, 3), 300, dtype=np.int32), ValueError, "0..255"),
        (np.zeros((8, 8, 3), dtype=bool), TypeError, "dtype bool"),
        (np.zeros((0, 8, 3), dtype=np.uint8), ValueError, "empty image"),
        ([], ValueError, "empty list"),
        ({"image": None}, TypeError, "Unsupported image type dict"),
        ([np.zeros((8, 8, 3), np.uint8), "missing.png"], ValueError, r"images\[1\]: .*'missing.png'"),
        ([[np.zeros((8, 8, 3), np.uint8)]], TypeError, "nested lists"),
    ],
    ids=lambda value: None if not isinstance(value, str) else value[:24],
)
def test_bad_images_raise_clear_errors(images, error, match):
    with pytest.raises(error, match=match):
        DilatedViTMAEImageProcessor()(images)


def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ValueError, match=r"Could not read the image file .*broken\.jpg"):
        DilatedViTMAEImageProcessor()(str(path))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_mean": [0.5, 0.5]}, r"image_mean.*one value per channel \(num_channels=3\), got 2"),
        ({"num_channels": 1, "image_std": IMAGENET_DEFAULT_STD}, r"image_std.*num_channels=1"),
        ({"num_channels": 4}, "must be 1 \\(greyscale\\) or 3 \\(RGB\\), got 4"),
        ({"image_std": [0.2, 0.0, 0.2]}, "must be positive"),
        ({"size": {"longest_edge": 224}}, r"`size` must be .*shortest_edge.*longest_edge"),
        ({"crop_size": {"shortest_edge": 224}}, r"`crop_size` must be \{\"height\""),
        ({"resample": 42}, "`resample` must be a PILImageResampling"),
        ({"rescale_factor": 0}, "`rescale_factor` must be a positive number"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DilatedViTMAEImageProcessor(**kwargs)


def test_bad_call_arguments_raise_clear_errors(chelsea):
    processor = DilatedViTMAEImageProcessor()
    with pytest.raises(ValueError, match="num_channels=1 needs mode 'L' and do_convert_rgb=False"):
        processor(chelsea, num_channels=1, image_mean=[0.5], image_std=[0.5], do_convert_rgb=False)
    with pytest.raises(ValueError, match="one value per channel"):
        processor(chelsea, num_channels=1)  # the processor's 3-value mean does not fit
    with pytest.raises(ValueError, match="different sizes"):
        processor([chelsea, _photo("coffee")], do_resize=False, do_center_crop=False, return_tensors="pt")
    with pytest.raises(ValueError, match="`return_tensors` must be 'pt', 'np' or None, got 'tf'"):
        processor(chelsea, return_tensors="tf")
    with pytest.raises(TypeError, match=r"Unexpected argument\(s\) \['do_resise'\]"):
        processor(chelsea, do_resise=False)
    with pytest.raises(ValueError, match="16/32-bit or float"):
        processor(PIL.Image.new("I;16", (8, 8)))


def test_bad_postprocess_inputs_raise_clear_errors():
    processor = DilatedViTMAEImageProcessor()
    with pytest.raises(ValueError, match="NaN or infinite"):
        processor.postprocess(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"got \(2, 3\)"):
        processor.postprocess(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="channels first with 1 or 3 channels"):
        processor.postprocess(np.zeros((2, 4, 4, 3)))  # channels-last by mistake
    with pytest.raises(ValueError, match="`return_type` must be 'pil' or 'np'"):
        processor.postprocess(np.zeros((3, 4, 4)), return_type="pt")


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: ~7 s
def test_remote_code_loads_in_a_clean_process(tmp_path, monkeypatch):
    # what a Hub user gets with trust_remote_code: only the saved folder, without this package on the path
    monkeypatch.setattr(DilatedViTMAEImageProcessor, "_auto_class", None)
    DilatedViTMAEImageProcessor.register_for_auto_class("AutoImageProcessor")
    folder = tmp_path / "processor"
    DilatedViTMAEImageProcessor(crop_size={"height": 64, "width": 96}).save_pretrained(folder)
    code = (
        "import numpy as np\n"
        "from transformers import AutoImageProcessor\n"
        f"processor = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "assert type(processor).__module__.startswith('transformers_modules.'), type(processor).__module__\n"
        "print(tuple(processor(np.zeros((50, 60, 3), np.uint8), return_tensors='pt')['pixel_values'].shape))\n"
    )
    result = run_without_package(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("(1, 3, 64, 96)")
