"""Training helpers: seeded randomness, optimizer groups, atomic checkpoints, reconstructions."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from dilated_vit_mae import DilatedViTMAEForPreTraining
from dilated_vit_mae.modeling_dilated_vit_mae import patchify
from dilated_vit_mae.training import (
    CheckpointManager,
    SeededAugmentation,
    masking_noise,
    param_groups_weight_decay,
    reconstruction_grid,
    reconstruction_images,
    stable_seed,
)
from dilated_vit_mae.transforms import MAETrainTransform


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
    first = masking_noise(torch.tensor([3, 5]), 16, 0, 1)
    second = masking_noise(torch.tensor([5, 3]), 16, 0, 1)
    torch.testing.assert_close(first, second.flip(0), rtol=0, atol=0)
    assert not torch.equal(first, masking_noise(torch.tensor([3, 5]), 16, 0, 2))


def test_weight_decay_groups_follow_mae(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config)
    decay, no_decay = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "vit.encoder.layer.0.attention.attention.query.weight" in decayed
    assert "vit.embeddings.patch_embeddings.dilated_projections.0.weight" in decayed
    assert {"vit.embeddings.cls_token", "decoder.mask_token", "vit.layernorm.weight", "decoder.decoder_pred.bias"} <= not_decayed
    # frozen sin-cos tables are not optimised at all
    assert not any("position_embeddings" in n or "decoder_pos_embed" in n for n in decayed | not_decayed)
    assert len(decayed) + len(not_decayed) == sum(p.requires_grad for p in model.parameters())


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
    grid = reconstruction_grid(images)
    assert grid.size == (4 * 32, 2 * 32) and grid.mode == "RGB"
