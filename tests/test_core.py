"""Tests of `dilated_vit_mae.train.core`: the flags, data source, image processor, accelerator, run folder, loss meter
and run summary shared by `scripts/run_mae.py` and `scripts/run_finetune.py`."""

import argparse
import json
import math

import pytest
import torch
from accelerate import PartialState
from transformers import ViTImageProcessor

from conftest import load_file
from dilated_vit_mae import DilatedViTMAEConfig
from dilated_vit_mae.data.loading import CELEBA_SAMPLE_DIR
from dilated_vit_mae.train import core


def parser_with_shared(**kwargs) -> argparse.ArgumentParser:
    return core.training_parser(None, **kwargs)[0]


def parse(argv, **kwargs) -> argparse.Namespace:
    parser = parser_with_shared(**kwargs)
    args = parser.parse_args(argv)
    core.check_shared_arguments(parser, args)
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------------


def test_both_scripts_take_every_shared_flag_from_one_place():
    shared = {action.dest for action in parser_with_shared()._actions} - {"help"}
    assert len(shared) >= 35  # the flags both scripts declared twice
    for name in ("run_mae", "run_finetune"):
        script = load_file(f"scripts/{name}.py")
        parser_dests = set(vars(script.parse_args(["--model_name_or_path", "m"])))
        assert shared <= parser_dests, f"{name} lacks {shared - parser_dests}"


def test_a_scripts_defaults_and_group_titles_apply_to_the_shared_flags():
    parser = parser_with_shared(titles={"optim": "optimisation (test)"}, defaults={"adam_beta2": 0.999, "logging_steps": 7})
    args = parser.parse_args([])
    assert (args.adam_beta2, args.logging_steps, args.adam_beta1, args.seed) == (0.999, 7, 0.9, 0)
    assert "optimisation (test)" in parser.format_help()
    assert parse([]).adam_beta2 is None  # no default: the script's recipe fills it


def test_the_scripts_keep_their_own_defaults():
    mae = load_file("scripts/run_mae.py").parse_args([])
    finetune = load_file("scripts/run_finetune.py").parse_args(["--model_name_or_path", "m"])
    assert (mae.adam_beta2, mae.per_device_eval_batch_size, mae.checkpoints_total_limit) == (0.95, 8, 3)
    assert (finetune.adam_beta2, finetune.per_device_eval_batch_size, finetune.checkpoints_total_limit) == (0.999, 64, 2)
    assert (mae.output_dir, finetune.output_dir) == ("outputs/dilated-vit-mae-sample", "outputs/dilated-vit-mae-classifier")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--celeba_dir", "a", "--dataset_name", "b"], "Give one data source"),
        (["--resume_from_checkpoint", "latest", "--overwrite_output_dir"], "give one"),
        (["--adam_beta1", "1"], "--adam_beta1: must be a number in [0, 1)"),  # AdamW refuses beta 1 later, in a traceback
        (["--weight_decay", "-0.1"], "--weight_decay: must be a number >= 0"),
        (["--checkpointing_steps", "0"], 'must be "epoch", "no" or a positive integer, got 0'),
    ],
)
def test_bad_shared_flags_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Data source and image processor
# ----------------------------------------------------------------------------------------------------------------------


def test_no_source_is_the_shipped_sample_and_one_source_is_taken_as_given(tmp_path):
    args = parse([])
    assert core.data_source(args) == str(CELEBA_SAMPLE_DIR) and core.on_shipped_sample(args)
    args = parse(["--train_dir", str(tmp_path)])
    assert core.data_source(args) == str(tmp_path) and not core.on_shipped_sample(args)
    assert core.data_source(parse(["--dataset_name", "flwrlabs/celeba"])) == "flwrlabs/celeba"
    # the same folder named another way is still the sample
    relative = parse(["--celeba_dir", str(CELEBA_SAMPLE_DIR / ".." / "celeba_sample")])
    assert core.on_shipped_sample(relative)


# ----------------------------------------------------------------------------------------------------------------------
# Loss meter
# ----------------------------------------------------------------------------------------------------------------------


class OneProcess:
    num_processes = 1

    @staticmethod
    def gather(tensor):
        return tensor


def test_the_meter_reports_the_interval_mean_the_last_loss_and_the_first_bad_step():
    meter = core.StepMeter(torch.device("cpu"))
    for step, loss in enumerate([1.0, 3.0, math.nan, 2.0, math.inf], start=1):
        meter.add(torch.tensor(loss), step, images=4)
    synced = meter.synchronise(OneProcess())
    assert synced["first_bad_step"] == 3 and math.isnan(synced["first_bad_loss"])
    assert synced["loss"] == pytest.approx(6.0 / 5) and synced["last_loss"] == math.inf
    with pytest.raises(RuntimeError, match=r"Loss is nan at step 3\b.*none \(no checkpoint"):
        core.check_finite(synced, core.CheckpointManager("/nonexistent/checkpoints"))
    meter.reset_interval()
    meter.add(torch.tensor(0.5), 6, images=4)
    synced = meter.synchronise(OneProcess())
    assert synced["loss"] == 0.5 and synced["last_loss"] == 0.5 and synced["first_bad_step"] == 3  # kept until stopped


def test_the_meter_does_not_read_the_device_between_synchronisations(monkeypatch):
    meter = core.StepMeter(torch.device("cpu"))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("host sync in add()"))
    for step in range(1, 4):
        meter.add(torch.tensor(float(step)), step, images=2)


# ----------------------------------------------------------------------------------------------------------------------
# Schedule, image processor, dataset summary
# ----------------------------------------------------------------------------------------------------------------------


def test_the_schedule_counts_batches_as_the_loader_does_and_bounds_its_warmup(reset_accelerate):
    PartialState()  # its log line needs one
    args = parse(["--per_device_train_batch_size", "8", "--num_train_epochs", "3", "--base_learning_rate", "1e-3",
                  "--gradient_accumulation_steps", "2"])  # fmt: skip
    # 100 images on 2 processes: 7 batches per process (the last partial), 6 with drop_last; 2 per optimizer step
    kept = core.training_schedule(args, 2, 100, drop_last=False, warmup_ratio=0.5)
    dropped = core.training_schedule(args, 2, 100, drop_last=True, warmup_epochs=1)
    assert (kept.steps_per_epoch, kept.max_train_steps, kept.num_warmup_steps) == (4, 12, 6)
    assert (dropped.steps_per_epoch, dropped.max_train_steps, dropped.num_warmup_steps) == (3, 9, 3)
    assert kept.effective_batch_size == 32 and kept.learning_rate == pytest.approx(1e-3 * 32 / 256)
    args.num_warmup_steps, args.max_train_steps = 50, 10  # more warmup than steps: the whole run warms up
    assert core.training_schedule(args, 1, 100, drop_last=False).num_warmup_steps == 10
    args.num_warmup_steps = None
    stream = core.training_schedule(args, 1, None, drop_last=False, warmup_ratio=0.1)  # a stream: one "epoch"
    assert (stream.steps_per_epoch, stream.num_epochs, stream.num_warmup_steps) == (10, 1, 1)
    with pytest.raises(ValueError, match="5 images, fewer than one batch .* lower --per_device_train_batch_size"):
        core.training_schedule(args, 1, 5, drop_last=True, warmup_ratio=0.1)


def test_the_image_processor_fits_the_config_or_is_refused_when_named(tmp_path, reset_accelerate):
    PartialState()
    config = DilatedViTMAEConfig(image_size=32, patch_size=4, num_channels=3)
    ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.2] * 3).save_pretrained(tmp_path / "vit")
    args = parse([])
    adapted = core.load_image_processor(args, config, str(tmp_path / "vit"))  # a ViTMAE checkpoint's, read as ours
    assert type(adapted).__name__ == "DilatedViTMAEImageProcessor"
    assert adapted.crop_size == {"height": 32, "width": 32} and list(adapted.image_mean) == [0.5] * 3
    assert core.load_image_processor(args, config, str(tmp_path / "nothing")).crop_size == {"height": 32, "width": 32}
    args = parse(["--image_processor_name", str(tmp_path / "vit")])
    with pytest.raises(ValueError, match=r"--image_processor_name .* crops images to 64x64 but the model's image_size is 32x32"):
        core.load_image_processor(args, config, "unused")


def test_the_config_takes_overrides_then_the_given_flags_then_the_scripts_values(tmp_path):
    DilatedViTMAEConfig(image_size=32, patch_size=4, dilation_rates=(2,)).save_pretrained(tmp_path)
    args = parse(["--config_overrides", "hidden_size=48,mask_ratio=0.5", "--dilation_rates", "2", "3"])
    config = core.load_config(args, str(tmp_path), ("dilation_rates", "dilated_context"), mask_ratio=0.0)
    assert (config.hidden_size, config.dilation_rates, config.mask_ratio) == (48, (2, 3), 0.0)
    assert config.dilated_context == DilatedViTMAEConfig().dilated_context  # not given: the folder's
    with pytest.raises(ValueError, match="mask_ratio"):
        core.load_config(args, str(tmp_path), (), mask_ratio=1.5)


def test_the_dataset_summary_names_no_local_path(tmp_path):
    args = parse(["--train_dir", str(tmp_path / "private" / "pets")])
    args.validation_dir = str(tmp_path / "private" / "pets-val")
    summary = core.dataset_summary(args, {"train": 10, "validation": 4, "test": 3}, "validation")
    assert str(tmp_path) not in json.dumps(summary)
    assert summary["description"] == "the image folders `pets` and `pets-val`."
    assert (summary["train_samples"], summary["eval_samples"], summary["test_samples"]) == (10, 4, 3)
    sample = core.dataset_summary(parse([]), {"train": 40, "validation": 8}, "validation")
    assert sample["name"] == "celeba_sample" and sample["is_celeba"] is False and "**not CelebA**" in sample["description"]
    hub = core.dataset_summary(parse(["--dataset_name", "flwrlabs/celeba"]), {"train": None}, "validation")
    assert hub["is_celeba"] and hub["train_samples"] is None and hub["eval_samples"] is None


def test_a_resumed_state_takes_the_position_and_keeps_the_launch():
    state = core.TrainerState(max_train_steps=100, num_processes=2, effective_batch_size=64, run_id="this")
    saved = {"global_step": 7, "epoch": 1, "batches_done_in_epoch": 3, "train_runtime_seconds": 2.5,
             "max_train_steps": 50, "num_processes": 1, "effective_batch_size": 32, "run_id": "that", "unknown": 1}  # fmt: skip
    state.continue_from(saved)
    assert (state.global_step, state.epoch, state.batches_done_in_epoch, state.train_runtime_seconds) == (7, 1, 3, 2.5)
    assert (state.max_train_steps, state.num_processes, state.effective_batch_size, state.run_id) == (100, 2, 64, "this")


# ----------------------------------------------------------------------------------------------------------------------
# Accelerator, run folder, log, summary
# ----------------------------------------------------------------------------------------------------------------------


def test_a_run_starts_with_its_folder_identity_and_a_redacted_log(tmp_path, reset_accelerate):
    token = "hf_" + "Z" * 34
    args = parse(["--output_dir", str(tmp_path / "run"), "--token", token, "--checkpoints_total_limit", "2"])
    run = core.start_run(args, core.NOT_RUN_DEFINING)
    assert run.accelerator.num_processes == 1 and run.checkpoints.total_limit == 2
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["run_id"] == run.identity.run_id and token not in json.dumps(recorded)
    run.log({"train_loss": 0.5, "note": f"token {token}"}, step=3)
    line = json.loads((tmp_path / "run" / "train_log.jsonl").read_text())
    assert line["step"] == 3 and line["train_loss"] == 0.5 and token not in line["note"]
    args.argv = ["--token", token, "--seed", "0"]
    state = core.TrainerState(global_step=3, train_runtime_seconds=1.5)
    schedule = core.Schedule(8, 1, 3, 1, 1e-3, 0)
    summary = core.summary_common(args, run.accelerator, state, schedule, learning_rate=1e-3, script="scripts/run_x.py")
    assert summary["hardware"]["device_type"] == "cpu" and summary["hardware"]["train_runtime_seconds"] == 1.5
    assert summary["adam_betas"] == [0.9, None] and summary["global_step"] == 3 and "torch" in summary["versions"]
    assert summary["command"] == "accelerate launch scripts/run_x.py --token '***' --seed 0"


def test_a_second_run_into_the_same_folder_is_refused_before_anything_is_written(tmp_path, reset_accelerate):
    args = parse(["--output_dir", str(tmp_path / "run")])
    core.start_run(args, core.NOT_RUN_DEFINING)
    (tmp_path / "run" / "all_results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        core.start_run(parse(["--output_dir", str(tmp_path / "run")]), core.NOT_RUN_DEFINING)


def test_a_checkpoint_is_refused_when_a_parameter_is_not_finite(tmp_path, reset_accelerate):
    run = core.start_run(parse(["--output_dir", str(tmp_path / "run"), "--checkpoints_total_limit", "1"]), core.NOT_RUN_DEFINING)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = run.accelerator.prepare(model, optimizer)
    first = run.save_checkpoint(model, optimizer, core.TrainerState(global_step=1, run_id=run.identity.run_id))
    assert first.name == "step_1" and json.loads((first / "trainer_state.json").read_text())["global_step"] == 1
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    with pytest.raises(RuntimeError, match=r"Parameters are not finite at step 2; no checkpoint written.*step_1"):
        run.save_checkpoint(model, optimizer, core.TrainerState(global_step=2, run_id=run.identity.run_id))
    assert [path.name for path in run.checkpoints.checkpoints()] == ["step_1"]
