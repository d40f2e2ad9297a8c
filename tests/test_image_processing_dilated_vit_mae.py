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
    # a call argument, checked once at the call whatever the images are (not per array, nor skipped for PIL images)
    for images in (array, [array, array], PIL.Image.new("RGB", (8, 3))):
        with pytest.raises(ValueError, match=r"^`input_data_format` must be 'channels_first' or 'channels_last'"):
            processor(images, input_data_format="channels_middle")


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
        ({"num_channels": 4}, "num_channels=4 has no default `image_mean`"),
        ({"num_channels": 0}, "`num_channels` must be a positive int"),
        ({"num_channels": 2, "image_mean": [0.5, 0.5]}, "no default `image_mean` / `image_std`"),
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


def test_bad_postprocess_inputs_raise_clear_errors():
    processor = DilatedViTMAEImageProcessor()
    with pytest.raises(ValueError, match="NaN or infinite"):
        processor.postprocess(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"got \(2, 3\)"):
        processor.postprocess(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"channels first with 3 channels \(the processor's num_channels\)"):
        processor.postprocess(np.zeros((2, 4, 4, 3)))  # channels-last by mistake
    with pytest.raises(ValueError, match="pass return_type='np'"):
        processor.postprocess(np.zeros((4, 4, 4)), image_mean=[0.5] * 4, image_std=[0.5] * 4)
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


# ---------------------------------------------------------------- any channel count


def _random_images(num_channels: int, count: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Like transformers' `prepare_image_inputs(numpify=True)`: uint8 (H, W, C) arrays of different sizes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(30, 400, size=(count, 2))
    return [rng.integers(0, 256, size=(int(h), int(w), num_channels), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("do_convert_rgb", [None, False])
def test_call_numpy_4_channels_as_in_transformers_common_tests(do_convert_rgb):
    """transformers' shared `test_call_numpy_4_channels`: a processor built with its usual settings reads 4-channel
    arrays when the call names 4 per-channel means and stds (with or without `do_convert_rgb=False`)."""
    processor = DilatedViTMAEImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 18, "width": 18})
    images = _random_images(4)
    kwargs = dict(input_data_format="channels_last", image_mean=(0.0,) * 4, image_std=(1.0,) * 4)
    if do_convert_rgb is not None:
        kwargs["do_convert_rgb"] = do_convert_rgb
    assert tuple(processor(images[0], return_tensors="pt", **kwargs).pixel_values.shape) == (1, 4, 18, 18)
    assert tuple(processor(images, return_tensors="pt", **kwargs).pixel_values.shape) == (3, 4, 18, 18)

    # normalisation is applied to each channel independently
    constant = np.zeros((16, 16, 4), dtype=np.uint8)
    constant[...] = (255, 128, 51, 0)
    output = DilatedViTMAEImageProcessor(do_convert_rgb=False, do_resize=False, do_center_crop=False)(
        constant, input_data_format="channels_last", image_mean=(0.0,) * 4, image_std=(1.0, 2.0, 4.0, 8.0),
        return_tensors="pt",
    ).pixel_values  # fmt: skip
    for channel, expected in enumerate((1.0, 128 / 255 / 2, 51 / 255 / 4, 0.0)):
        torch.testing.assert_close(output[0, channel], torch.full((16, 16), expected))


@pytest.mark.parametrize("num_channels", [4, 5])
def test_any_channel_count_from_arrays_and_tensors(num_channels, tmp_path):
    channels = range(num_channels)
    stats = dict(image_mean=[0.1 * c for c in channels], image_std=[0.2 + 0.1 * c for c in channels])
    processor = DilatedViTMAEImageProcessor(num_channels=num_channels, **stats)
    hwc = _random_images(num_channels, count=1)[0]
    pixel_values = _pixels(processor, hwc)
    assert pixel_values.shape == (1, num_channels, 224, 224)
    # every channel is resampled, cropped and normalised exactly as a greyscale image with that channel's statistics
    for channel in range(num_channels):
        grey = DilatedViTMAEImageProcessor(
            num_channels=1, image_mean=stats["image_mean"][channel], image_std=stats["image_std"][channel]
        )
        np.testing.assert_allclose(pixel_values[0, channel], _pixels(grey, hwc[..., channel])[0, 0], atol=1e-6)
    # the same image as (C, H, W), as a tensor, as floats, as a 4-D batch
    chw = hwc.transpose(2, 0, 1)
    for image in (chw, torch.from_numpy(chw.copy()), torch.from_numpy(chw / 255.0), np.stack([hwc, hwc])):
        np.testing.assert_allclose(_pixels(processor, image)[:1], pixel_values, atol=1e-6)
    # saved and loaded, the channel count and statistics come back; postprocess inverts preprocess
    processor.save_pretrained(tmp_path)
    loaded = DilatedViTMAEImageProcessor.from_pretrained(tmp_path)
    assert loaded.num_channels == num_channels and loaded.to_dict() == processor.to_dict()
    unresized = _pixels(loaded, hwc, do_resize=False, do_center_crop=False)
    restored = loaded.postprocess(unresized, return_type="np")[0]
    assert restored.shape == hwc.shape and np.abs(restored.astype(int) - hwc).max() <= 1


def test_any_channel_count_matches_the_model(tiny_config_kwargs):
    from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining

    model = DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**tiny_config_kwargs, num_channels=5)).eval()
    processor = DilatedViTMAEImageProcessor(
        num_channels=5, size={"shortest_edge": 32}, crop_size=32, image_mean=[0.5] * 5, image_std=[0.25] * 5
    )
    pixel_values = processor(_random_images(5, count=2), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = model(pixel_values, mask_ratio=0.5)
    reconstruction = processor.postprocess(model.unpatchify(outputs.logits), return_type="np")
    assert reconstruction.shape == (2, 32, 32, 5) and reconstruction.dtype == np.uint8


def test_pil_images_with_other_channel_counts_raise_clear_errors(chelsea, tmp_path):
    processor = DilatedViTMAEImageProcessor(num_channels=4, image_mean=[0.5] * 4, image_std=[0.5] * 4)
    path = tmp_path / "chelsea.png"
    chelsea.save(path)
    for image in (chelsea, chelsea.convert("RGBA"), str(path)):
        with pytest.raises(ValueError, match=r"PIL image \(mode 'RGBA?'\), but num_channels=4.*\(H, W, 4\)"):
            processor(image)
    with pytest.raises(ValueError, match=r"must have 4 channels here, got 3 channels"):
        processor(np.zeros((8, 8, 3), np.uint8), input_data_format="channels_last")
    with pytest.raises(ValueError, match=r"channel axis .*expected 4 channels"):
        processor(np.zeros((8, 8, 3), np.uint8))
    for greyscale in (np.zeros((8, 8), np.uint8), torch.zeros(8, 8)):  # (H, W): one channel, not 4
        with pytest.raises(ValueError, match=r"must have 4 channels here, got 1 channels .*\(8, 8, 1\)"):
            processor(greyscale)
    with pytest.raises(ValueError, match=r"image_std.*one value per channel \(num_channels=4\)"):
        DilatedViTMAEImageProcessor()(np.zeros((8, 8, 4), np.uint8), image_mean=[0.5] * 4)


# ---------------------------------------------------------------- 16- and 32-bit images


def _gradient_16_bit(height: int = 48, width: int = 256) -> np.ndarray:
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


@pytest.fixture
def raw_processor() -> DilatedViTMAEImageProcessor:
    return DilatedViTMAEImageProcessor(num_channels=1, do_resize=False, do_center_crop=False, do_normalize=False)


def test_16_bit_images_are_scaled_not_clipped(raw_processor, tmp_path):
    gradient = _gradient_16_bit()
    expected = gradient / 65535.0
    i16 = PIL.Image.fromarray(gradient)
    assert i16.mode == "I;16"
    big_endian = PIL.Image.frombytes("I;16B", i16.size, gradient.astype(">u2").tobytes())
    i16.save(tmp_path / "gradient.png")  # a 16-bit PNG, opened again as "I;16"
    for name, image in {
        "I;16": i16, "I;16B": big_endian, "I": i16.convert("I"), "png": str(tmp_path / "gradient.png"),
        "uint16 array": gradient, "uint16 tensor": torch.from_numpy(gradient.astype(np.int32)).to(torch.uint16),
    }.items():  # fmt: skip
        pixel_values = _pixels(raw_processor, image)[0, 0]
        # within half an 8-bit level of the true value: a gradient, not 99% white as with `convert("L")`
        np.testing.assert_allclose(pixel_values, expected, atol=0.5 / 255 + 1e-6, err_msg=name)
    assert np.asarray(i16.convert("L")).mean() > 250  # what PIL itself does
    # RGB and the default pipeline settings: the grey gradient replicated into three channels
    rgb = _pixels(DilatedViTMAEImageProcessor(do_normalize=False, do_center_crop=False, do_resize=False), i16)[0]
    np.testing.assert_allclose(rgb, np.broadcast_to(expected, (3, *expected.shape)), atol=0.5 / 255 + 1e-6)


def test_float_and_32_bit_images_follow_the_documented_rules(raw_processor):
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_allclose(_pixels(raw_processor, PIL.Image.fromarray(ramp, mode="F"))[0, 0], ramp, atol=0.5 / 255)
    with pytest.raises(ValueError, match=r"mode 'F'.*values in \[0, 1\], got values in \[0, 255\]"):
        raw_processor(PIL.Image.fromarray(ramp * 255, mode="F"))
    with pytest.raises(ValueError, match=r"mode 'I' with values in \[0, 70000\].*0..65535"):
        raw_processor(PIL.Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I"))
    with pytest.raises(ValueError, match=r"uint16 arrays are read as 0..65535"):
        raw_processor(np.array([[0, 1000]], dtype=np.int32))


# ---------------------------------------------------------------- crop fraction (MAE's and DINO's evaluation view)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "settings",
    [
        {"size": {"shortest_edge": 224}, "crop_size": 224},
        {"size": {"height": 224, "width": 224}, "crop_size": 224},  # square: a shortest-edge resize to 256
        {"size": {"height": 64, "width": 48}, "crop_size": {"height": 56, "width": 40}},  # exact resize to (73, 54)
    ],
)
def test_crop_pct_matches_transformers_poolformer(celeba_sized_face, chelsea, settings):
    from transformers import PoolFormerImageProcessorPil

    reference = PoolFormerImageProcessorPil(
        crop_pct=0.875, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD, **settings
    )
    ours = DilatedViTMAEImageProcessor(crop_pct=0.875, **settings)
    for image in (celeba_sized_face, chelsea):
        expected = reference(image, return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(_pixels(ours, image), expected, atol=PARITY_ATOL, rtol=0)


def _view(image: PIL.Image.Image, shortest_edge: int, crop: int) -> np.ndarray:
    """Resize the shortest edge to `shortest_edge`, centre-crop `crop`, rescale and normalise, by hand."""
    width, height = image.size
    if width <= height:
        new_size = (shortest_edge, int(shortest_edge * height / width))
    else:
        new_size = (int(shortest_edge * width / height), shortest_edge)
    resized = np.asarray(image.resize(new_size, PIL.Image.Resampling.BICUBIC), dtype=np.float64) / 255
    top, left = (resized.shape[0] - crop) // 2, (resized.shape[1] - crop) // 2
    crop_values = (resized[top : top + crop, left : left + crop] - IMAGENET_DEFAULT_MEAN) / IMAGENET_DEFAULT_STD
    return crop_values.transpose(2, 0, 1)[None]


@pytest.mark.parametrize(
    "config, crop, resize", [("dilated-vit-mae-base", 224, 256), ("dilated-vit-mae-tiny-64", 64, 73)]
)
def test_shipped_configs_give_maes_evaluation_view_and_old_configs_keep_theirs(
    celeba_sized_face, tmp_path, config, crop, resize
):
    folder = REPO_ROOT / "configs" / config
    shipped = json.loads((folder / "preprocessor_config.json").read_text())
    assert shipped["crop_pct"] == 0.875 and shipped["crop_size"] == {"height": crop, "width": crop}
    for processor in (DilatedViTMAEImageProcessor.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)):
        # 224 / 0.875 = 256 (MAE's resize 256, crop 224); 64 / 0.875 -> 73
        expected = _view(celeba_sized_face, resize, crop)
        np.testing.assert_allclose(_pixels(processor, celeba_sized_face), expected, atol=PARITY_ATOL)
    # a folder saved before `crop_pct` existed resizes the shortest edge to `size` itself, as it did
    del shipped["crop_pct"]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(shipped))
    expected = _view(celeba_sized_face, crop, crop)
    for loader in (DilatedViTMAEImageProcessor, AutoImageProcessor):
        processor = loader.from_pretrained(tmp_path)
        assert processor.crop_pct is None
        np.testing.assert_allclose(_pixels(processor, celeba_sized_face), expected, atol=PARITY_ATOL)


def test_crop_pct_round_trips_overrides_per_call_and_is_validated(celeba_sized_face, tmp_path):
    processor = DilatedViTMAEImageProcessor(crop_pct=0.875)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["crop_pct"] == 0.875
    assert DilatedViTMAEImageProcessor.from_pretrained(tmp_path).crop_pct == 0.875
    assert DilatedViTMAEImageProcessor.from_pretrained(tmp_path, crop_pct=0.9).crop_pct == 0.9
    # per call: 1.0 is the whole resized image's shorter side, as without a crop fraction
    full = _pixels(DilatedViTMAEImageProcessor(), celeba_sized_face)
    np.testing.assert_array_equal(_pixels(processor, celeba_sized_face, crop_pct=1.0), full)
    assert np.abs(_pixels(processor, celeba_sized_face) - full).mean() > 0.1  # a visibly tighter view
    # without a centre crop there is nothing for the fraction to keep: the resize is `size`'s
    uncropped = _pixels(processor, celeba_sized_face, do_center_crop=False)
    assert uncropped.shape == (1, 3, 274, 224)
    for bad in (0, 1.5, -0.5, True, "0.875"):
        with pytest.raises(ValueError, match=r"`crop_pct` must be a number in \(0, 1\] .* or None, got"):
            DilatedViTMAEImageProcessor(crop_pct=bad)
        with pytest.raises(ValueError, match=r"`crop_pct` must be a number in \(0, 1\]"):
            processor(celeba_sized_face, crop_pct=bad)


# ---------------------------------------------------------------- bounds


def test_extreme_aspect_ratio_resamples_only_the_centre_crop():
    import time

    strip = PIL.Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (1, 4000)).repeat(3, 0)[:1])  # 1 x 1,024,000
    strip = strip.convert("RGB")
    start = time.perf_counter()
    pixel_values = _pixels(DilatedViTMAEImageProcessor(do_normalize=False), strip)
    assert time.perf_counter() - start < 2  # a 224 x 229,376,000 intermediate would take minutes and ~150 GB
    assert pixel_values.shape == (1, 3, 224, 224)
    # the centre 224 columns of the 224-times enlargement: ~1 source pixel, constant down each column
    assert np.ptp(pixel_values[0], axis=1).max() < 1e-6
    with pytest.raises(ValueError, match=r"1024000 x 1 image .* gives 229376000 x 224 = .* more than the limit"):
        DilatedViTMAEImageProcessor(do_center_crop=False)(strip)


@pytest.mark.parametrize("crop", [(64, 48), (200, 30)])
def test_fused_resize_and_crop_matches_resize_then_crop(chelsea, monkeypatch, crop):
    processor = DilatedViTMAEImageProcessor(size={"shortest_edge": 150}, crop_size=crop, do_normalize=False)
    exact = _pixels(processor, chelsea)
    monkeypatch.setattr(module, "MAX_RESIZED_PIXELS", 100)  # force the fused path
    fused = _pixels(processor, chelsea)
    assert fused.shape == exact.shape == (1, 3, *crop)
    # float round-off in the filter weights may move a value by one 8-bit level
    assert np.abs(fused - exact).max() <= 1 / 255 + 1e-6



def test_settings_are_validated_where_they_enter_and_only_there(chelsea, tmp_path, monkeypatch):
    processor = DilatedViTMAEImageProcessor(size={"shortest_edge": 40}, crop_size=32)
    first = _pixels(processor, chelsea)
    checked = []
    original = module._to_size_dict
    monkeypatch.setattr(module, "_to_size_dict", lambda *args, **kw: checked.append(args[1]) or original(*args, **kw))
    for _ in range(3):
        np.testing.assert_array_equal(_pixels(processor, chelsea), first)
    assert checked == []  # the stored settings were validated when they entered, not at every call
    processor(chelsea, crop_size=16)
    assert checked == ["crop_size"]  # a call validates the arguments given to it, not the stored settings

    # an assigned setting is validated (and canonicalised) at the assignment, once
    checked.clear()
    processor.crop_size = 16
    assert processor.crop_size == {"height": 16, "width": 16} and checked == ["crop_size"]
    assert _pixels(processor, chelsea).shape == (1, 3, 16, 16)
    assert checked == ["crop_size"]
    # a bad one is refused there, with the constructor's message, and leaves the setting as it was
    for name, value, match in [
        ("size", {"shortest_edge": 0}, r"`size\['shortest_edge'\]` must be a positive int"),
        ("crop_size", {"shortest_edge": 8}, r"`crop_size` must be \{\"height\""),
        ("crop_pct", 1.5, r"`crop_pct` must be a number in \(0, 1\]"),
        ("resample", 42, "`resample` must be a PILImageResampling"),
        ("rescale_factor", 0, "`rescale_factor` must be a positive number"),
        ("num_channels", 0, "`num_channels` must be a positive int"),
        ("image_mean", [0.5, 0.5], r"`image_mean` must have one value per channel \(num_channels=3\), got 2"),
        ("image_std", [0.2, 0.0, 0.2], "`image_std` must be positive"),
    ]:
        before = getattr(processor, name)
        with pytest.raises(ValueError, match=match):
            setattr(processor, name, value)
        assert getattr(processor, name) == before, name
    processor.image_mean = 0.5  # a float is one value for every channel, as in __init__
    assert processor.image_mean == [0.5, 0.5, 0.5]

    # num_channels and the per-channel image_mean / image_std may be assigned one at a time: whether they agree is
    # checked at the next call, once
    processor.num_channels = 1
    with pytest.raises(ValueError, match=r"`image_mean` must have one value per channel \(num_channels=1\)"):
        processor(chelsea)
    processor.image_mean, processor.image_std = [0.5], [0.25]
    pixel_values = _pixels(processor, chelsea)
    assert pixel_values.shape == (1, 1, 16, 16)

    # postprocess likewise validates only what it is given
    stats_checked = []
    original_stats = module._channel_stats
    monkeypatch.setattr(
        module, "_channel_stats", lambda *args, **kw: stats_checked.append(args[2]) or original_stats(*args, **kw)
    )
    processor.postprocess(pixel_values)
    assert stats_checked == []
    processor.postprocess(pixel_values, image_std=0.5)
    assert stats_checked == ["image_std"]

    # the kept form of the settings is not a setting: it is neither saved nor compared
    processor.save_pretrained(tmp_path)
    assert "_validated_settings" not in json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert DilatedViTMAEImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
