"""Optimizer groups and atomic checkpoints (train/checkpoints.py)."""

import json
from pathlib import Path

import pytest
import torch

from dilated_vit_mae import DilatedViTMAEForPreTraining
from dilated_vit_mae.train.checkpoints import CheckpointManager, param_groups_weight_decay
from dilated_vit_mae.train.lifecycle import UserError


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
