"""`scripts/visualize.py`: a PNG grid of original / masked / reconstruction / re-composited for any image folder."""


import numpy as np
import PIL.Image
import pytest
import skimage.data

from conftest import load_file
from dilated_vit_mae import DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.pipeline_dilated_vit_mae import DilatedViTMAEReconstructionPipeline




def load_script():
    return load_file("scripts/visualize.py")


@pytest.fixture
def model_folder(tiny_config, tmp_path):
    folder = tmp_path / "model"
    DilatedViTMAEForPreTraining(tiny_config).save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    PIL.Image.fromarray(skimage.data.astronaut()).save(folder / "a_astronaut.png")
    PIL.Image.fromarray(skimage.data.chelsea()).save(folder / "b_chelsea.jpg")
    PIL.Image.fromarray(skimage.data.camera()).save(folder / "c_camera.png")  # greyscale input
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_grid_has_one_row_per_image_and_the_four_columns(model_folder, image_dir, tmp_path):
    visualize = load_script()
    output = tmp_path / "out" / "grid.png"
    argv = ["--model", str(model_folder), "--images", str(image_dir), "--output", str(output), "--seed", "2"]
    visualize.main(visualize.parse_args(argv))
    grid = PIL.Image.open(output)
    assert grid.format == "PNG"
    cell, gap, header = 128, 4, 24  # 32 px upscaled x4 to --min_cell_size, 4 px apart, under the labels
    assert grid.size == (4 * cell + 3 * gap, header + 3 * cell + 2 * gap)
    assert (np.asarray(grid.convert("L"))[:header] < 128).any(), "the column labels are drawn"
    # the cells are the pipeline's outputs, in file-name order
    reconstruct = DilatedViTMAEReconstructionPipeline(
        model=DilatedViTMAEForPreTraining.from_pretrained(model_folder).eval(),
        image_processor=DilatedViTMAEImageProcessor.from_pretrained(model_folder),
    )
    expected = reconstruct(PIL.Image.open(image_dir / "b_chelsea.jpg"), seed=2)
    pixels = np.asarray(grid.convert("RGB"))
    for column, name in enumerate(("original", "masked", "reconstruction", "recomposited")):
        top, left = header + cell + gap, column * (cell + gap)
        cell_pixels = pixels[top : top + cell, left : left + cell]
        assert np.array_equal(cell_pixels[::4, ::4], np.asarray(expected[name])), name


def test_files_max_images_and_reproducibility(model_folder, image_dir, tmp_path):
    visualize = load_script()
    outputs = []
    for name in ("first.png", "second.png"):
        argv = ["--model", str(model_folder), "--images", str(image_dir / "c_camera.png"), str(image_dir),
                "--output", str(tmp_path / name), "--max_images", "2", "--mask_ratio", "0.5", "--seed", "1"]  # fmt: skip
        outputs.append(visualize.main(visualize.parse_args(argv)))
    assert PIL.Image.open(outputs[0]).size == (4 * 128 + 3 * 4, 24 + 2 * 128 + 4)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


def test_bad_inputs_name_the_problem(model_folder, tmp_path):
    visualize = load_script()
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        visualize.find_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No image"):
        visualize.find_images([tmp_path / "empty"])
    for argv in (["--mask_ratio", "1.0"], ["--max_images", "0"]):
        with pytest.raises(SystemExit):
            visualize.parse_args(["--model", "m", "--images", "x", "--output", "o.png", *argv])
