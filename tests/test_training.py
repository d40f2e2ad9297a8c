"""Training helpers: seeded randomness, optimizer groups, atomic checkpoints, reconstructions."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from dilated_vit_mae import DilatedViTMAEForPreTraining
from dilated_vit_mae.train.lifecycle import UserError
from dilated_vit_mae.modeling_dilated_vit_mae import patchify
from dilated_vit_mae.train.checkpoints import CheckpointManager, param_groups_weight_decay
from dilated_vit_mae.data.seeding import SeededAugmentation, masking_noise, stable_seed
from dilated_vit_mae.evaluation.reconstruction import reconstruction_grid, reconstruction_images
from dilated_vit_mae.data.transforms import MAETrainTransform


def test_stable_seed_is_deterministic_and_distinguishes_parts():
    assert stable_seed(0, 1, 2) == stable_seed(0, 1, 2)
    assert len({stable_seed(0, 1, 2), stable_seed(0, 2, 1), stable_seed(1, 1, 2), stable_seed(0, 1, 3)}) == 4
    assert 0 <= stable_seed(123) < 2**63


def test_seeded_augmentation_depends_on_seed_epoch_and_index_only():
    images = [PIL.Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 36, 3), dtype=np.uint8)) for i in range(4)]
    augmentation = SeededAugmentation(MAETrainTransform(16), seed=7)
    whole = augmentation({"image": images, "sample_index": [0, 1, 2, 3]})["pixel_values"]
    # the same example in another batch, alone, gets the same augmentation
    alone = augmentation({"image": images[2:3], "sample_index": [2]})["pixel_values"][0]
    torch.testing.assert_close(alone, whole[2], rtol=0, atol=0)
    augmentation.epoch = 1
    next_epoch = augmentation({"image": images[2:3], "sample_index": [2]})["pixel_values"][0]
    assert not torch.equal(next_epoch, whole[2])


def test_masking_noise_is_fixed_per_example():
    first = masking_noise(torch.tensor([3, 5]), 16, stream="train_mask", seed=0, epoch=1)
    second = masking_noise(torch.tensor([5, 3]), 16, stream="train_mask", seed=0, epoch=1)
    torch.testing.assert_close(first, second.flip(0), rtol=0, atol=0)
    assert not torch.equal(first, masking_noise(torch.tensor([3, 5]), 16, stream="train_mask", seed=0, epoch=2))
    assert not torch.equal(first, masking_noise(torch.tensor([3, 5]), 16, stream="eval_mask", seed=0, epoch=1))
    assert not torch.equal(first, masking_noise(torch.tensor([3, 5]), 16, stream="train_mask", seed=1, epoch=1))


def test_masking_noise_is_uniform_distinct_and_vectorised():
    noise = masking_noise(torch.arange(2048), 64, stream="train_mask", seed=3, epoch=0)
    assert noise.shape == (2048, 64) and noise.dtype == torch.float64
    assert 0 <= noise.min() and noise.max() < 1
    assert abs(noise.mean().item() - 0.5) < 0.01 and abs(noise.std().item() - (1 / 12) ** 0.5) < 0.01
    # distinct within a row: argsort has no ties to break differently on another device
    assert all(len(set(row.tolist())) == 64 for row in noise)
    # at 75% masking every patch is kept about a quarter of the time (binomial sd 0.0096 at n=2048)
    kept = torch.bincount(noise.argsort(1)[:, :16].flatten(), minlength=64).double() / 2048
    assert kept.min() > 0.2 and kept.max() < 0.3
    with pytest.raises(ValueError, match="Unknown random stream"):
        masking_noise(torch.arange(2), 4, stream="mask", seed=0)


def test_masking_noise_has_a_pinned_value():
    # a fixed function of its inputs: changing it silently would change every run's masks and break exact resume
    noise = masking_noise(torch.tensor([3]), 4, stream="train_mask", seed=2**40, epoch=1)
    torch.testing.assert_close(noise, torch.tensor([[0.3680, 0.5927, 0.0169, 0.1982]], dtype=torch.float64), atol=1e-4, rtol=0)


def test_weight_decay_groups_follow_mae(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config)
    decay, no_decay = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "vit.encoder.layer.0.attention.attention.query.weight" in decayed
    assert "vit.embeddings.patch_embeddings.dilated_projections.0.weight" in decayed
    # MAE decays the CLS and mask tokens (ndim 3); only norms and biases are exempt
    assert {"vit.embeddings.cls_token", "decoder.mask_token"} <= decayed
    assert {"vit.layernorm.weight", "decoder.decoder_pred.bias"} <= not_decayed
    # frozen sin-cos tables are not optimised at all
    assert not any("position_embeddings" in n or "decoder_pos_embed" in n for n in decayed | not_decayed)
    assert len(decayed) + len(not_decayed) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("source", ["config", "our_folder", "vit_mae_folder"])
def test_loaded_models_keep_the_fixed_tables_out_of_the_optimizer(tiny_config_kwargs, tmp_path, source):
    # `run_mae.py --model_name_or_path` (continued pre-training, the ViTMAE warm start) must train what a model from
    # a config trains: transformers' loading un-freezes the sin-cos tables, the model freezes them again
    from transformers import AutoModelForPreTraining

    from conftest import vit_mae_random_checkpoint
    from dilated_vit_mae import DilatedViTMAEConfig

    if source == "config":
        model = DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**tiny_config_kwargs))
    elif source == "our_folder":
        DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**tiny_config_kwargs)).save_pretrained(tmp_path)
        model = AutoModelForPreTraining.from_pretrained(tmp_path)
    else:
        vit_mae_random_checkpoint(tiny_config_kwargs, tmp_path)
        config = DilatedViTMAEConfig.from_pretrained(tmp_path)  # as run_mae.py's build_config reads it
        model = DilatedViTMAEForPreTraining.from_pretrained(tmp_path, config=config)
    tables = {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"}
    before = {name: param.detach().clone() for name, param in model.named_parameters() if name in tables}
    groups = param_groups_weight_decay(model, 0.05)
    names = {id(param): name for name, param in model.named_parameters()}
    grouped = [names[id(param)] for group in groups for param in group["params"]]
    assert sorted(grouped) == sorted(set(names.values()) - tables)
    optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95))
    for _ in range(3):
        model(torch.randn(2, 3, 32, 32)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        if name in tables:
            assert not param.requires_grad and param.grad is None
            torch.testing.assert_close(param, before[name], rtol=0, atol=0)


class FakeAccelerator:
    """What CheckpointManager uses of an Accelerator, in one process."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        import pathlib

        pathlib.Path(path).mkdir(parents=True)
        (pathlib.Path(path) / "model.safetensors").write_text("weights")


def test_checkpoints_are_atomic_rotated_and_resolved(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", total_limit=2)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        manager.resolve("latest")
    for step in (2, 4, 6):
        manager.save(FakeAccelerator(), step, {"global_step": step})
    assert [p.name for p in manager.checkpoints()] == ["step_4", "step_6"]
    assert json.loads((manager.resolve("latest") / "trainer_state.json").read_text()) == {"global_step": 6}
    # a save killed half-way leaves a temporary folder, or a step folder without its state: both are ignored
    (tmp_path / "checkpoints" / ".tmp-step_8").mkdir()
    (tmp_path / "checkpoints" / "step_10").mkdir()
    assert manager.latest().name == "step_6"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        manager.resolve(str(tmp_path / "checkpoints" / "step_10"))
    manager.save(FakeAccelerator(), 12, {"global_step": 12})
    assert not (tmp_path / "checkpoints" / ".tmp-step_8").exists()
    with pytest.raises(ValueError, match="checkpoints_total_limit"):
        CheckpointManager(tmp_path, total_limit=0)


def real_checkpoints(tmp_path, steps=(2, 4)):
    """Checkpoints written by accelerate (model.safetensors, optimizer.bin, scheduler.bin, random states) for a run."""
    from accelerate import Accelerator

    from dilated_vit_mae.train.lifecycle import RunIdentity

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    identity = RunIdentity.new(seed=0, run_args={})
    manager = CheckpointManager(tmp_path / "checkpoints")
    for step in steps:
        model(torch.randn(2, 64)).sum().backward()
        optimizer.step()
        scheduler.step()
        manager.save(accelerator, step, {"global_step": step, "run_id": identity.run_id})
    return accelerator, manager, identity


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "scheduler.bin", "trainer_state.json"])
def test_a_damaged_checkpoint_file_is_named_with_the_checkpoints_to_resume_instead(tmp_path, name, reset_accelerate):
    accelerator, manager, identity = real_checkpoints(tmp_path)
    assert manager.load(accelerator, manager.resolve("latest"), identity)["global_step"] == 4
    truncate(tmp_path / "checkpoints" / "step_4" / name)  # a copy cut short, a disk that filled under another tool
    with pytest.raises(UserError) as refused:  # was the loading library's own error and traceback
        manager.load(accelerator, manager.resolve("latest"), identity)
    message = str(refused.value)
    latest, earlier = tmp_path / "checkpoints" / "step_4", tmp_path / "checkpoints" / "step_2"
    assert message.startswith(f"checkpoint {latest} cannot be resumed: its {name} is damaged (")
    assert f"--resume_from_checkpoint {earlier} (complete ones: step_2)" in message
    assert f"delete {latest} so that --resume_from_checkpoint latest skips it" in message
    assert "--overwrite_output_dir" in message and "\n" not in message
    assert manager.load(accelerator, earlier, identity)["global_step"] == 2  # the earlier one resumes


def test_a_damaged_only_checkpoint_says_to_start_over(tmp_path, reset_accelerate):
    accelerator, manager, identity = real_checkpoints(tmp_path, steps=(2,))
    (tmp_path / "checkpoints" / "step_2" / "optimizer.bin").write_bytes(b"")
    with pytest.raises(UserError, match=r"its optimizer.bin is damaged \(the file is empty\); there is no earlier "
                                        r"checkpoint in .*: start over with --overwrite_output_dir\."):  # fmt: skip
        manager.load(accelerator, manager.resolve("latest"), identity)


def test_a_load_error_that_is_not_a_damaged_file_propagates(tmp_path, reset_accelerate, monkeypatch):
    accelerator, manager, identity = real_checkpoints(tmp_path, steps=(2,))
    monkeypatch.setattr(accelerator, "load_state", lambda path: {}["a bug"])
    with pytest.raises(KeyError, match="a bug"):
        manager.load(accelerator, manager.resolve("latest"), identity)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruction_images(tiny_config, norm_pix_loss):
    tiny_config.norm_pix_loss = norm_pix_loss
    model = DilatedViTMAEForPreTraining(tiny_config).eval()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    original = torch.rand(2, 3, 32, 32)
    pixel_values = (original - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    outputs = model(pixel_values, noise=torch.rand(2, 64))
    # a perfect prediction (in the model's target space) reconstructs the image exactly
    target = patchify(pixel_values, (4, 4))
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    images = reconstruction_images(model, pixel_values, target, outputs.mask, mean, std)
    torch.testing.assert_close(images["original"], original, atol=1e-5, rtol=0)
    torch.testing.assert_close(images["reconstruction"], original, atol=1e-4, rtol=0)
    # model outputs: visible pixels come from the original, masked ones from the prediction
    images = reconstruction_images(model, pixel_values, outputs.logits, outputs.mask, mean, std)
    visible = images["pixel_mask"] == 0
    assert images["pixel_mask"].mean().item() == pytest.approx(0.75)
    torch.testing.assert_close(images["recomposited"][visible], images["original"][visible])
    torch.testing.assert_close(images["recomposited"][~visible], images["reconstruction"][~visible])
    assert (images["masked"][~visible] == 0).all()
    grid = reconstruction_grid(images, caption="masked-patch MSE 0.01")
    # labelled columns of tiles upscaled to at least 128 px (32 px x 4), 4 px apart, a header and a caption line
    assert grid.size == (4 * 128 + 3 * 4, 24 + 2 * 128 + 4 + 28) and grid.mode == "RGB"
    header = np.asarray(grid)[:24]
    assert (header < 128).any(), "the column labels are drawn"


def test_the_grid_renders_with_the_one_bitmap_font_of_an_old_pillow(monkeypatch):
    import PIL.ImageFont

    load_default = PIL.ImageFont.load_default

    def old_pillow(size=None):  # Pillow < 10.1: no `size`
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return load_default()

    monkeypatch.setattr(PIL.ImageFont, "load_default", old_pillow)
    images = {"original": torch.rand(1, 3, 32, 32), "masked": torch.zeros(1, 3, 32, 32)}
    grid = reconstruction_grid(images, caption="masked-patch MSE 0.01")
    assert grid.size == (2 * 128 + 4, 24 + 128 + 28) and (np.asarray(grid)[:24] < 128).any()


def _coordinate_image(size: int = 96) -> PIL.Image.Image:
    """Red encodes the column and green the row, so a crop's box and a flip can be read back from its pixels."""
    ramp = np.linspace(0, 255, size).round().astype(np.uint8)
    red, green = np.broadcast_to(ramp, (size, size)), np.broadcast_to(ramp[:, None], (size, size))
    return PIL.Image.fromarray(np.stack([red, green, np.zeros((size, size), np.uint8)], axis=-1))


def test_training_masks_are_independent_of_the_augmentation_of_the_same_example():
    # the user's scenario: run_mae seeds an example's augmentation and its training mask from the same
    # (seed, epoch, index); before the streams had tags the mask scores were the crop and flip draws themselves
    count, num_patches = 400, 16
    augmentation = SeededAugmentation(MAETrainTransform(16, image_mean=[0.0] * 3, image_std=[1.0] * 3), seed=0)
    image = _coordinate_image()
    out = augmentation({"image": [image] * count, "sample_index": list(range(count))})["pixel_values"]
    out = torch.stack(out)  # (N, 3, 16, 16) in [0, 1]
    red_left, red_right = out[:, 0, :, 0].mean(1), out[:, 0, :, -1].mean(1)
    flipped = (red_left > red_right).double()
    width = (red_right - red_left).abs()
    height = (out[:, 1, -1, :].mean(1) - out[:, 1, 0, :].mean(1)).abs()
    area = (width * height).double()
    assert 0.3 < flipped.mean() < 0.7 and area.std() > 0.05  # the crops and flips really vary
    noise = masking_noise(torch.arange(count), num_patches, stream="train_mask", seed=0, epoch=0)
    for patch in range(num_patches):
        for drawn in (area, flipped):
            correlation = torch.corrcoef(torch.stack([drawn, noise[:, patch]]))[0, 1].abs().item()
            assert correlation < 0.2, (patch, correlation)  # independent: |r| ~ 0.05 at n=400, tied: ~1
    # the keep decision of patch 0 at 75% masking does not depend on whether the crop covers most of the image
    kept = noise.argsort(1)[:, : num_patches // 4].eq(0).any(1).double()
    large = area > area.median()
    assert abs(kept[large].mean() - kept[~large].mean()) < 0.15
