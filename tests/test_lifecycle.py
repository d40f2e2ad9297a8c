"""Tests for dilated_vit_mae.train.lifecycle: the output folder's rules, run identity, writes that survive a full disk,
preemption through a launcher, argparse types and one-line refusals. Small fake files and short subprocesses; the
only training-library code that runs is accelerate's `save_state` on a 256 x 256 linear layer."""

import argparse
import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dilated_vit_mae.train import lifecycle
from dilated_vit_mae.train.lifecycle import (
    DiskWriteError,
    OutputDirError,
    RENDERED_MARKER,
    RunClock,
    RunIdentity,
    UserError,
    check_model_folder,
    check_output_dir,
    check_resumable,
    checkpoint_bytes,
    checkpointing_steps,
    exit_when_parent_dies,
    final_folder,
    fraction,
    guarded_checkpoint_write,
    is_launcher_command,
    is_write_failure,
    non_negative_float,
    non_negative_int,
    parent_is_launcher,
    positive_float,
    positive_int,
    prepare_output_dir,
    probability,
    quiet_library_logs,
    resumed_runtime,
    run_cli,
    stage_and_swap,
)


LIFECYCLE_PATH = Path(lifecycle.__file__)
# children load lifecycle.py by path: it needs only the standard library, so they start in a fraction of a second
# the package's and train/'s folders as bare packages (their __init__s, which import torch and transformers, not run),
# so that the child starts fast and lifecycle.py's relative imports resolve
LOAD_LIFECYCLE = """
import importlib.util, os, sys, types
train_dir = os.path.dirname(sys.argv[1])
for name, folder in (("dilated_vit_mae", os.path.dirname(train_dir)), ("dilated_vit_mae.train", train_dir)):
    package = types.ModuleType(name)
    package.__path__ = [folder]
    sys.modules[name] = package
spec = importlib.util.spec_from_file_location("dilated_vit_mae.train.lifecycle", sys.argv[1])
lifecycle = importlib.util.module_from_spec(spec)
sys.modules["lifecycle"] = sys.modules["dilated_vit_mae.train.lifecycle"] = lifecycle
spec.loader.exec_module(lifecycle)
"""


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_earlier_run(folder: Path, steps=(30, 90), run_id: str = "0" * 32) -> None:
    """What a finished `run_mae.py` run leaves (small fake files, same names)."""
    for step in steps:
        checkpoint = folder / "checkpoints" / f"step_{step}"
        write(checkpoint / "trainer_state.json", json.dumps({"global_step": step, "run_id": run_id}))
        write(checkpoint / "model.safetensors", "old weights")
    write(folder / "train_log.jsonl", "".join(json.dumps({"step": s, "train_loss": 1.0}) + "\n" for s in range(1, 91)))
    write(folder / "eval" / "reconstructions_epoch_9.png")
    write(folder / "eval" / "reconstructions.png")
    write(folder / "runs" / "dilated_vit_mae" / "events.out.tfevents.1")
    for name in ("config.json", "preprocessor_config.json", "model.safetensors", "all_results.json", "handler.py",
                 "linear_probe_results.json", "modeling_dilated_vit_mae.py", "examples/chelsea.jpg",
                 "assets/diagram.png"):  # fmt: skip
        write(folder / name)
    write(folder / "README.md", f"card\n{RENDERED_MARKER} -->\n")
    RunIdentity(run_id, 0, "2026-01-01T00:00:00+00:00", "f" * 16).save(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------------
# The output folder
# ----------------------------------------------------------------------------------------------------------------------


def test_a_finished_run_without_checkpoints_is_refused_naming_what_is_there(tmp_path):
    for name in ("config.json", "model.safetensors", "all_results.json", "train_log.jsonl", "eval/reconstructions.png"):
        write(tmp_path / name)
    with pytest.raises(OutputDirError) as refusal:
        check_output_dir(tmp_path, overwrite=False, resume=False)
    message = str(refusal.value)
    for name in ("all_results.json", "config.json", "eval", "model.safetensors", "train_log.jsonl"):
        assert name in message
    assert "--overwrite_output_dir" in message
    assert "no checkpoint to resume from" in message
    assert isinstance(refusal.value, FileExistsError)  # what `run_mae.py` raised so far


def test_a_folder_with_checkpoints_is_refused_naming_the_newest_and_both_flags(tmp_path):
    make_earlier_run(tmp_path)
    with pytest.raises(OutputDirError, match=r"checkpoints/ \(2 checkpoints, newest step_90\)") as refusal:
        check_output_dir(tmp_path, overwrite=False, resume=False)
    assert "--resume_from_checkpoint latest" in str(refusal.value) and "--overwrite_output_dir" in str(refusal.value)
    assert check_output_dir(tmp_path, overwrite=False, resume=True)  # resuming is what the folder is for


@pytest.mark.parametrize("only", ["train_log.jsonl", "eval", "runs", "run.json"])
def test_a_crashed_run_that_wrote_no_checkpoint_is_refused_too(tmp_path, only):
    write(tmp_path / only / "x" if only in ("eval", "runs") else tmp_path / only)
    with pytest.raises(OutputDirError, match=only):
        check_output_dir(tmp_path, overwrite=False, resume=False)


def test_overwrite_and_resume_together_are_refused(tmp_path):
    with pytest.raises(UserError, match="give one of them"):
        check_output_dir(tmp_path, overwrite=True, resume=True)


def test_overwrite_removes_every_earlier_output_before_the_new_run_writes(tmp_path, caplog):
    """The leak: old step_90 became `latest`, old log lines and eval grids sat beside the new ones."""
    output_dir = tmp_path / "out"
    make_earlier_run(output_dir)
    write(output_dir / "slurm-1234.out", "the job's own log, written right now")
    write(output_dir / ".tmp-final-abc" / "model.safetensors")  # an interrupted final save
    with caplog.at_level(logging.WARNING, logger="dilated_vit_mae.train.lifecycle"):
        identity = prepare_output_dir(output_dir, overwrite=True, resume=False, seed=3, run_args={"lr": 1e-3})
    assert sorted(p.name for p in output_dir.iterdir()) == ["run.json", "slurm-1234.out"]
    assert identity.run_id != "0" * 32 and RunIdentity.load(output_dir) == identity
    assert (output_dir / "slurm-1234.out").read_text() == "the job's own log, written right now"
    assert "slurm-1234.out" in caplog.text and "kept" in caplog.text


def test_files_a_run_does_not_write_neither_block_nor_get_deleted(tmp_path, caplog):
    write(tmp_path / "README.md", "# my notes, not a rendered model card")
    write(tmp_path / "slurm-1.out")
    with caplog.at_level(logging.WARNING, logger="dilated_vit_mae.train.lifecycle"):
        prepare_output_dir(tmp_path, overwrite=False, resume=False, seed=0)
        prepare_output_dir(tmp_path, overwrite=True, resume=False, seed=0)  # overwrite keeps them too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "run.json", "slurm-1.out"]
    assert "README.md, slurm-1.out" in caplog.text


def test_a_rendered_model_card_counts_as_an_earlier_run(tmp_path):
    write(tmp_path / "README.md", f"---\nlicense: apache-2.0\n---\n{RENDERED_MARKER} -->\n")
    with pytest.raises(OutputDirError, match="README.md"):
        check_output_dir(tmp_path, overwrite=False, resume=False)


def test_resume_keeps_the_folder_and_its_identity_and_names_changed_arguments(tmp_path, caplog):
    first = prepare_output_dir(tmp_path, overwrite=False, resume=False, seed=1, run_args={"lr": 1e-3, "epochs": 10})
    write(tmp_path / "train_log.jsonl", "{}\n")
    write(tmp_path / "checkpoints" / "step_5" / "trainer_state.json", "{}")
    with caplog.at_level(logging.WARNING, logger="dilated_vit_mae.train.lifecycle"):
        resumed = prepare_output_dir(tmp_path, overwrite=False, resume=True, seed=1, run_args={"lr": 1e-3, "epochs": 2})
    assert resumed == first
    assert (tmp_path / "train_log.jsonl").read_text() == "{}\n" and (tmp_path / "checkpoints" / "step_5").is_dir()
    assert "epochs 10 -> 2" in caplog.text


# ----------------------------------------------------------------------------------------------------------------------
# Run identity and runtime
# ----------------------------------------------------------------------------------------------------------------------


def test_a_fresh_run_records_its_id_seed_time_and_arguments_without_secrets(tmp_path):
    args = {"learning_rate": 1e-3, "dilation_rates": (2, 3), "output_dir": Path("x"), "hub_token": "hf_secret"}
    identity = prepare_output_dir(tmp_path, overwrite=False, resume=False, seed=7, run_args=args)
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{32}", recorded["run_id"]) and recorded["seed"] == 7
    assert recorded["created"].endswith("+00:00")
    assert recorded["run_args"] == {"learning_rate": 1e-3, "dilation_rates": [2, 3], "output_dir": "x"}
    assert "hf_secret" not in (tmp_path / "run.json").read_text()
    assert recorded["fingerprint"] == lifecycle.args_fingerprint(dict(reversed(list(args.items()))))
    assert identity.fingerprint != lifecycle.args_fingerprint({**args, "learning_rate": 2e-3})
    assert prepare_output_dir(tmp_path, overwrite=True, resume=False, seed=7).run_id != identity.run_id


def test_resuming_a_checkpoint_of_another_run_is_refused_naming_both(tmp_path):
    """The folder was overwritten (a new run), then resumed from the earlier run's checkpoint kept elsewhere."""
    earlier = tmp_path / "earlier"
    make_earlier_run(earlier, steps=(90,), run_id="a" * 32)
    identity = prepare_output_dir(tmp_path / "out", overwrite=False, resume=False, seed=0)
    with pytest.raises(UserError) as refusal:
        check_resumable(earlier / "checkpoints" / "step_90", identity)
    assert "a" * 32 in str(refusal.value) and identity.run_id in str(refusal.value)
    assert "--overwrite_output_dir" in str(refusal.value)


def test_a_checkpoint_of_this_run_or_from_before_run_ids_is_resumable(tmp_path, caplog):
    identity = RunIdentity.new(0, {})
    own_state = {"global_step": 4, **identity.checkpoint_fields(12.5)}
    own = write(tmp_path / "own" / "trainer_state.json", json.dumps(own_state))
    legacy = write(tmp_path / "legacy" / "trainer_state.json", json.dumps({"global_step": 2}))
    assert check_resumable(own.parent, identity)["global_step"] == 4
    with caplog.at_level(logging.WARNING, logger="dilated_vit_mae.train.lifecycle"):
        assert check_resumable(legacy.parent, identity)["global_step"] == 2
    assert "no run id" in caplog.text
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        check_resumable(tmp_path, identity)


def test_a_damaged_run_json_is_a_clear_error(tmp_path):
    write(tmp_path / "run.json", "{not json")
    with pytest.raises(UserError, match="run.json is damaged"):
        RunIdentity.load(tmp_path)


def test_runtime_adds_up_across_resumes(tmp_path):
    identity = RunIdentity.new(0, {})
    first = RunClock()
    time.sleep(0.05)
    state = identity.checkpoint_fields(first.total())  # saved with the checkpoint, then the run is preempted
    assert 0.05 <= state["train_runtime_seconds"] < 5
    second = RunClock(resumed_runtime(json.loads(json.dumps(state))))
    time.sleep(0.05)
    total = second.total()
    assert state["train_runtime_seconds"] + 0.05 <= total < state["train_runtime_seconds"] + 5
    identity.record_runtime(tmp_path, total)
    assert RunIdentity.load(tmp_path).train_runtime_seconds == total
    assert resumed_runtime({"global_step": 3}) == 0.0  # a checkpoint from before the field existed


# ----------------------------------------------------------------------------------------------------------------------
# Writes that survive a full disk
# ----------------------------------------------------------------------------------------------------------------------


def write_final_files(folder: Path) -> None:
    write(folder / "model.safetensors", "new weights")
    write(folder / "examples" / "astronaut.jpg", "new example")
    write(folder / "all_results.json", json.dumps({"global_step": 120}))


def test_the_staging_folder_stands_for_the_folder_it_is_swapped_into(tmp_path):
    seen = []
    stage_and_swap(tmp_path / "out", lambda staging: seen.append(final_folder(staging)) or write(staging / "x"))
    assert seen == [tmp_path / "out"] and final_folder(tmp_path / "out") == tmp_path / "out"


def test_the_staging_folder_is_spelt_as_the_output_folder(tmp_path, monkeypatch):
    # from Python 3.12 mkdtemp returns an absolute path whatever `dir` is: a card written in the staging folder must
    # still name the output folder as the user spelt it
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kwargs: os.path.abspath(mkdtemp(**kwargs)))
    monkeypatch.chdir(tmp_path)
    seen = []
    stage_and_swap(Path("out"), lambda staging: seen.append(staging) or write(staging / "x"))
    assert not seen[0].is_absolute() and final_folder(seen[0]) == Path("out")


def test_stage_and_swap_replaces_the_files_with_the_marker_out_first_and_in_last(tmp_path, monkeypatch):
    make_earlier_run(tmp_path)
    moves = []
    real_replace = os.replace

    def recording_replace(source, target):
        moves.append((Path(source).name, "in" if Path(target).parent == tmp_path else "out"))
        real_replace(source, target)

    monkeypatch.setattr(lifecycle.os, "replace", recording_replace)
    swapped = stage_and_swap(tmp_path, write_final_files, remove=["linear_probe_results.json"])
    assert swapped == ["examples", "model.safetensors", "all_results.json"]
    assert moves[0] == ("all_results.json", "out") and moves[-1] == ("all_results.json", "in")
    assert (tmp_path / "model.safetensors").read_text() == "new weights"
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == ["astronaut.jpg"]  # old examples gone
    assert not (tmp_path / "linear_probe_results.json").exists()  # it described the replaced weights
    assert (tmp_path / "checkpoints" / "step_90").is_dir() and (tmp_path / "train_log.jsonl").is_file()
    assert not list(tmp_path.glob(".tmp-*"))


def test_no_space_left_during_the_final_save_keeps_the_previous_folder(tmp_path):
    make_earlier_run(tmp_path)
    before = snapshot(tmp_path)

    def fill_the_disk(folder: Path) -> None:
        write(folder / "all_results.json", "{}")
        with (folder / "model.safetensors").open("wb") as file:
            file.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.safetensors"))

    with pytest.raises(DiskWriteError) as failure:
        stage_and_swap(tmp_path, fill_the_disk, expected_bytes=2_500_000_000)
    message = str(failure.value)
    assert message.startswith(f"could not write the final files to {tmp_path}/model.safetensors: [Errno 28] No space")
    assert "needs about 2.5 GB" in message and re.search(r"and [\d.]+ [kMG]?B is free", message)
    assert failure.value.free_bytes > 0 and failure.value.needed_bytes == 2_500_000_000
    assert snapshot(tmp_path) == before and not list(tmp_path.glob(".tmp-*"))


def test_without_an_estimate_the_error_says_at_least_what_was_written(tmp_path):
    def fail_after_a_megabyte(folder: Path) -> None:
        write(folder / "model.safetensors", "x" * 1_000_000)
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(DiskWriteError, match="needs at least 1.0 MB"):
        stage_and_swap(tmp_path, fail_after_a_megabyte)


def test_a_failing_swap_puts_the_previous_files_back(tmp_path, monkeypatch):
    make_earlier_run(tmp_path)
    before = snapshot(tmp_path)
    real_replace = os.replace
    failures = []

    def failing_replace(source, target):
        moving_in = Path(source).parent.name.startswith(".tmp-final-") and Path(target).parent == tmp_path
        if moving_in and Path(source).name == "model.safetensors":
            failures.append(source)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(source, target)

    monkeypatch.setattr(lifecycle.os, "replace", failing_replace)
    with pytest.raises(DiskWriteError, match="Input/output error"):
        stage_and_swap(tmp_path, write_final_files)
    assert len(failures) == 1  # after `examples` went in and every old entry went out
    assert snapshot(tmp_path) == before and not list(tmp_path.glob(".tmp-*"))


def test_included_files_are_readable_by_the_writer_and_left_in_place(tmp_path):
    make_earlier_run(tmp_path)

    def render_card(folder: Path) -> None:
        assert (folder / "eval" / "reconstructions.png").is_file()  # the card shows it
        write(folder / "README.md", "new card")

    stage_and_swap(tmp_path, render_card, include=["eval/reconstructions.png"])
    eval_files = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert eval_files == ["reconstructions.png", "reconstructions_epoch_9.png"]
    assert (tmp_path / "README.md").read_text() == "new card"


def test_a_bug_in_the_writer_propagates_and_leaves_nothing_behind(tmp_path):
    make_earlier_run(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(KeyError):
        stage_and_swap(tmp_path, lambda folder: {}["missing"])
    assert snapshot(tmp_path) == before and not list(tmp_path.glob(".tmp-*"))


def test_guarded_checkpoint_write_removes_the_partial_checkpoint(tmp_path):
    temporary = tmp_path / "checkpoints" / ".tmp-step_90"
    with pytest.raises(DiskWriteError) as failure:
        with guarded_checkpoint_write(temporary, expected_bytes=1_340_000_000):
            write(temporary / "model.safetensors", "partial")
            raise RuntimeError("basic_ios::clear: iostream error")  # torch.save on a full disk
    expected = f"could not write checkpoint step_90 to {temporary}/model.safetensors: basic_ios::clear"
    assert str(failure.value).startswith(expected)
    assert "needs about 1.3 GB" in str(failure.value)
    assert isinstance(failure.value.__cause__, RuntimeError)
    assert not temporary.exists()
    with pytest.raises(ValueError, match="a bug"):  # not a write failure: unchanged, nothing removed
        with guarded_checkpoint_write(temporary):
            write(temporary / "x")
            raise ValueError("a bug")
    assert temporary.is_dir()


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (RuntimeError("basic_ios::clear: iostream error"), True),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), True),
        (RuntimeError("Error while serializing: I/O error: File too large (os error 27)"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
        (KeyError("model"), False),
    ],
)
def test_is_write_failure(error, expected):
    assert is_write_failure(error) is expected


def test_a_wrapped_os_error_is_a_write_failure():
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as cause:
            raise RuntimeError("saving failed") from cause
    except RuntimeError as error:
        assert is_write_failure(error)


def test_checkpoint_bytes_counts_weights_and_optimizer_state():
    import torch

    model = torch.nn.Linear(64, 32)
    optimizer = torch.optim.AdamW(model.parameters())
    weights = (64 * 32 + 32) * 4
    assert checkpoint_bytes(model, optimizer) == weights  # AdamW creates its state at the first step
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()
    assert 3 * weights <= checkpoint_bytes(model, optimizer) <= 3 * weights + 64  # + exp_avg, exp_avg_sq, steps


FULL_DISK_CHILD = (
    LOAD_LIFECYCLE
    + """
import resource, signal
from pathlib import Path
import torch
from accelerate import Accelerator
import safetensors.torch

def limit_file_size(num_bytes):
    # a "disk" with room for num_bytes per file: writes beyond fail as they do on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

def checkpoint(output_dir):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(256, 256)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    model(torch.randn(2, 256)).sum().backward()
    optimizer.step()
    limit_file_size(400_000)  # the weights (263 kB) fit, the optimizer state (526 kB) does not
    temporary = output_dir / "checkpoints" / ".tmp-step_1"
    with lifecycle.guarded_checkpoint_write(temporary, expected_bytes=lifecycle.checkpoint_bytes(model, optimizer)):
        accelerator.save_state(str(temporary))

def final(output_dir):
    limit_file_size(400_000)
    tensors = {"weight": torch.zeros(250_000)}  # 1 MB
    def save(folder):
        safetensors.torch.save_file(tensors, folder / "model.safetensors")
    lifecycle.stage_and_swap(output_dir, save, expected_bytes=10**6)

lifecycle.run_cli({"checkpoint": checkpoint, "final": final}[sys.argv[2]], Path(sys.argv[3]))
"""
)


@pytest.mark.parametrize("mode", ["checkpoint", "final"])
def test_a_real_full_disk_is_one_clear_line_and_leaves_the_folder_as_it_was(tmp_path, mode):
    """torch.save (optimizer.bin) and safetensors fail for real, under a file-size limit, inside accelerate."""
    output_dir = tmp_path / "out"
    make_earlier_run(output_dir)
    before = snapshot(output_dir)
    script = write(tmp_path / "full_disk.py", FULL_DISK_CHILD)
    result = subprocess.run(
        [sys.executable, str(script), str(LIFECYCLE_PATH), mode, str(output_dir)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not write")
    if mode == "checkpoint":
        assert "checkpoint step_1" in line and "optimizer.bin" in line and re.search(r"needs about 7\d\d\.\d kB", line)
    else:
        assert f"the final files to {output_dir}: " in line and "File too large" in line
        assert "needs about 1.0 MB" in line
    assert re.search(r"and [\d.]+ [kMG]?B is free there", line)
    assert snapshot(output_dir) == before and not list((output_dir / "checkpoints").glob(".tmp-*"))
    assert not list(output_dir.glob(".tmp-*"))


# ----------------------------------------------------------------------------------------------------------------------
# Model folders given on the command line
# ----------------------------------------------------------------------------------------------------------------------


def model_folder(path: Path, model_type="dilated_vit_mae", architectures=("DilatedViTMAEForPreTraining",)) -> Path:
    write(path / "config.json", json.dumps({"model_type": model_type, "architectures": list(architectures)}))
    return path


def test_model_folders_of_ours_and_of_vit_mae_and_hub_ids_pass(tmp_path):
    check_model_folder(model_folder(tmp_path / "ours"), for_pretraining=True)
    check_model_folder(model_folder(tmp_path / "vit", "vit_mae", ["ViTMAEForPreTraining"]), for_pretraining=True)
    classifier = model_folder(tmp_path / "classifier", architectures=["DilatedViTMAEForImageClassification"])
    check_model_folder(classifier)  # a probe or a further fine-tune may read a classifier's encoder
    check_model_folder("facebook/vit-mae-base", for_pretraining=True)  # not local: left to from_pretrained


@pytest.mark.parametrize(
    "make, flag, message",
    [
        (lambda p: write(p / "model.safetensors"), "--model_name_or_path",
         r"--model_name_or_path {p} is not a model folder: it has no config.json \(it holds model.safetensors; pass a "
         r"run_mae.py output folder or a facebook/vit-mae-\* checkpoint\)\.$"),
        (lambda p: [write(p / "checkpoints" / "step_5" / "trainer_state.json"), write(p / "run.json")], "--config_name",
         r"--config_name {p} is not a model folder: .*a run that has not finished: resume it with "
         r"--resume_from_checkpoint latest\)\.$"),
        (lambda p: [write(p / "checkpoints" / "step_5" / "trainer_state.json"),
                    model_folder(p / "checkpoints" / "best")], "--model_name_or_path",
         r"resume it with --resume_from_checkpoint latest, or pass {p}/checkpoints/best \(its best model so far\)\)"),
        (lambda p: write(p / "trainer_state.json"), "--model_name_or_path",
         r"is not a model folder: it has no config.json \(it is a training checkpoint: resume its run with "
         r"--resume_from_checkpoint"),
        (lambda p: model_folder(p, "bert", ["BertModel"]), "--model_name_or_path",
         r"holds a 'bert' model, not a DilatedViTMAE or ViTMAE one \(its config.json\)"),
        (lambda p: write(p / "config.json", "{"), "--model_name_or_path", r"its config.json is damaged"),
    ],
)  # fmt: skip
def test_what_is_not_a_model_folder_is_named_with_what_to_pass(tmp_path, make, flag, message):
    folder = tmp_path / "given"
    folder.mkdir()
    make(folder)
    with pytest.raises(UserError, match=message.format(p=re.escape(str(folder)))):
        check_model_folder(folder, flag=flag)


def test_a_file_or_a_classifier_for_pretraining_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"is a file, not a model folder: pass the folder that holds its config.json"):
        check_model_folder(write(tmp_path / "model.safetensors"))
    classifier = model_folder(tmp_path / "classifier", architectures=["DilatedViTMAEForImageClassification"])
    with pytest.raises(UserError, match=r"is a fine-tuned image classifier \(DilatedViTMAEForImageClassification, as "
                                        r"run_finetune.py writes\): it has no decoder and masks nothing"):  # fmt: skip
        check_model_folder(classifier, for_pretraining=True)


# ----------------------------------------------------------------------------------------------------------------------
# Preemption through a launcher
# ----------------------------------------------------------------------------------------------------------------------

TRAINING_CHILD = (
    LOAD_LIFECYCLE
    + """
import os, signal, time
marker = sys.argv[2] + os.environ.get("RANK", "")  # one per rank under torchrun
parent_pid = int(sys.argv[3]) if len(sys.argv) > 3 else None

def save_and_exit(signum, frame):  # run_mae.py saves a checkpoint here
    with open(marker, "w") as file:
        file.write(f"{signum} {os.getpid()}")
    sys.exit(0)

signal.signal(signal.SIGTERM, save_and_exit)
while parent_pid is not None and os.getppid() == parent_pid:  # wait until orphaned (the race test)
    time.sleep(0.01)
launcher = lifecycle.parent_is_launcher()
armed = lifecycle.exit_when_parent_dies(parent_pid=parent_pid) if os.environ.get("ARM", "1") == "1" else False
print(f"ready {os.getpid()} {armed} {launcher}", flush=True)
time.sleep(120)
sys.exit(3)
"""
)
# a launcher as plain as `accelerate launch`'s one-process path: Popen, wait, no signal handling
LAUNCHER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, *sys.argv[2:]], stdout=None if sys.argv[1] == "wait" else subprocess.DEVNULL)
if sys.argv[1] == "wait":
    child.wait()
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def saved_text(tmp_path) -> str:
    """What the child wrote to `saved` ("" while the file is absent, or created but not yet written)."""
    try:
        return (tmp_path / "saved").read_text()
    except FileNotFoundError:
        return ""


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def child_command(tmp_path: Path, *extra: str) -> list[str]:
    script = write(tmp_path / "train.py", TRAINING_CHILD)
    return [str(script), str(LIFECYCLE_PATH), str(tmp_path / "saved"), *extra]


pytestmark_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")


@pytestmark_linux
@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM])
def test_the_training_process_is_told_when_its_launcher_dies(tmp_path, kill_signal):
    launcher_script = write(tmp_path / "launcher.py", LAUNCHER)
    launcher = subprocess.Popen(
        [sys.executable, str(launcher_script), "wait", *child_command(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    ready, child_pid, armed, _ = launcher.stdout.readline().split()
    assert ready == "ready" and armed == "True"
    launcher.send_signal(kill_signal)  # the launcher alone, as a scheduler or `kill PID` does
    assert launcher.wait(timeout=30) == -kill_signal
    # generous: CI's two cores may be busy with the other tests
    # the file is created, then written: wait for its content (reading it on creation saw "" once in CI)
    assert wait_until(lambda: saved_text(tmp_path), 30), "the orphaned child was not signalled"
    assert saved_text(tmp_path) == f"{int(signal.SIGTERM)} {child_pid}"
    assert wait_until(lambda: not alive(int(child_pid)), 30)


@pytestmark_linux
def test_a_parent_that_died_before_the_request_is_caught(tmp_path):
    # the child gets its launcher's pid, waits until that launcher has exited, then arms: nobody else would signal it
    code = "import os, subprocess, sys; subprocess.Popen([sys.executable, *sys.argv[1:], str(os.getpid())])"
    subprocess.run([sys.executable, "-c", code, *child_command(tmp_path)], timeout=30, check=True)
    assert wait_until(lambda: saved_text(tmp_path), 20)
    assert saved_text(tmp_path).startswith(f"{int(signal.SIGTERM)} ")


def test_exit_when_parent_dies_is_a_no_op_off_linux(monkeypatch, caplog):
    monkeypatch.setattr(lifecycle.sys, "platform", "darwin")
    with caplog.at_level(logging.DEBUG, logger="dilated_vit_mae.train.lifecycle"):
        assert exit_when_parent_dies() is False
    assert "not armed" in caplog.text


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/venv/bin/python3", "/venv/bin/accelerate", "launch", "scripts/run_mae.py"], True),
        (["/venv/bin/python", "-m", "accelerate.commands.launch", "--multi_gpu", "run_mae.py"], True),
        (["/venv/bin/python3", "/venv/bin/torchrun", "--nproc_per_node", "8", "run_mae.py"], True),
        (["/usr/bin/python3", "-m", "torch.distributed.run", "run_mae.py"], True),
        (["/bin/bash"], False),
        (["/venv/bin/python", "scripts/run_mae.py", "--output_dir", "accelerate"], False),
        (["/venv/bin/python", "-m", "pytest", "tests/test_lifecycle.py"], False),
    ],
)
def test_is_launcher_command(argv, expected):
    assert is_launcher_command(argv) is expected


def test_a_process_started_from_a_shell_or_pytest_has_no_launcher_parent():
    assert parent_is_launcher() is False
    assert parent_is_launcher(pid=2**22 + 12345) is False  # no such process


@pytest.mark.slow
@pytestmark_linux
@pytest.mark.parametrize("arm", [False, True])
def test_sigterm_to_accelerate_launch_alone_reaches_the_training_process_only_when_armed(tmp_path, arm):
    """The issue: `accelerate launch` (one process) dies of a SIGTERM sent to it alone and its child trains on."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", *child_command(tmp_path)]  # fmt: skip
    env = dict(os.environ, ACCELERATE_USE_CPU="true", ARM="1" if arm else "0")
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    ready, child_pid, armed, launcher_seen = launcher.stdout.readline().split()
    child_pid = int(child_pid)
    try:
        assert ready == "ready" and launcher_seen == "True" and armed == str(arm)
        launcher.send_signal(signal.SIGTERM)
        # the launcher dies of the signal (accelerate 1.15) or exits 128 + SIGTERM (1.16): what matters is the child
        assert launcher.wait(timeout=30) in (-signal.SIGTERM, 128 + signal.SIGTERM)
        if arm:
            assert wait_until(lambda: saved_text(tmp_path), 10)
            assert wait_until(lambda: not alive(child_pid), 10)
        else:
            time.sleep(2)
            # accelerate <= 1.15 leaves the child orphaned and training (why arming exists); 1.16 passes the signal on
            # itself, and then the child must have saved before it ended: never gone without a save
            forwarded = not alive(child_pid)
            assert saved_text(tmp_path).startswith(f"{signal.SIGTERM} ") if forwarded else not saved_text(tmp_path)
    finally:
        if alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


@pytest.mark.slow
@pytestmark_linux
def test_every_rank_is_told_when_the_multi_process_launcher_is_killed(tmp_path):
    """torchrun's agent forwards a SIGTERM to its workers itself, but a SIGKILL (OOM killer, `kill -9`) it cannot."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(29500 + os.getpid() % 1000), *child_command(tmp_path)]  # fmt: skip
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    lines = [launcher.stdout.readline().split() for _ in range(2)]
    pids = [int(line[1]) for line in lines]
    try:
        assert all(line[0] == "ready" and line[2:] == ["True", "True"] for line in lines), lines
        launcher.kill()
        assert wait_until(lambda: (tmp_path / "saved0").exists() and (tmp_path / "saved1").exists(), 15)
        assert wait_until(lambda: not any(alive(pid) for pid in pids), 10)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------------------------
# Command line: argparse types, one-line refusals, quiet checkpoint logs
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parse, text, expected",
    [
        (positive_int, "5", 5), (positive_int, "-5", "must be a positive integer, got -5"),
        (positive_int, "0", "must be a positive integer, got 0"), (positive_int, "1.5", "must be a positive integer"),
        (non_negative_int, "0", 0), (non_negative_int, "-1", "must be a non-negative integer, got -1"),
        (positive_float, "1.5e-4", 1.5e-4), (positive_float, "0", "must be a positive number, got 0"),
        (positive_float, "inf", "must be a positive number, got inf"), (positive_float, "nan", "got nan"),
        (fraction, "0", 0.0), (fraction, "0.75", 0.75), (fraction, "1", "must be a number in [0, 1), got 1"),
        (fraction, "-0.1", "got -0.1"), (non_negative_float, "0", 0.0), (non_negative_float, "-2", "must be a number >= 0"),
        (probability, "1", 1.0), (probability, "0", 0.0), (probability, "1.1", "must be a number in [0, 1], got 1.1"),
        (probability, "nan", "got nan"), (checkpointing_steps, "epoch", "epoch"), (checkpointing_steps, "no", "no"),
        (checkpointing_steps, "1000", 1000),
        (checkpointing_steps, "0", 'must be "epoch", "no" or a positive integer, got 0'),
        (checkpointing_steps, "Epoch", "got Epoch"),
    ],
)  # fmt: skip
def test_argparse_types(parse, text, expected):
    if isinstance(expected, str) and expected not in ("epoch", "no"):
        with pytest.raises(argparse.ArgumentTypeError) as refusal:
            parse(text)
        assert expected in str(refusal.value)
    else:
        assert parse(text) == expected and type(parse(text)) is type(expected)


def test_argparse_reports_the_type_error_with_the_flag(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_train_epochs", type=positive_int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--num_train_epochs", "-5"])
    assert exit_info.value.code == 2
    assert "argument --num_train_epochs: must be a positive integer, got -5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        FileExistsError("outputs/x already holds an earlier run;\n  pass --overwrite_output_dir"),
        FileNotFoundError("no complete checkpoint"),
        ValueError("--image_column_name 'img' is not a column"),
        UserError("belongs to run a"),
        DiskWriteError("checkpoint step_1", Path("/x"), OSError(errno.ENOSPC, "No space left on device"), 10, 0),
    ],
)
def test_run_cli_prints_user_errors_as_one_line_and_exits_2(error, capsys, monkeypatch):
    monkeypatch.delenv(lifecycle.TRACEBACK_ENV, raising=False)

    def main():
        raise error

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert err == f"error: {' '.join(str(error).split())}\n"


def test_run_cli_starts_the_error_on_a_line_of_its_own_after_a_progress_bar(capsys, monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.delenv(lifecycle.TRACEBACK_ENV, raising=False)

    def main():
        progress = tqdm(total=10, desc="pre-training")  # open when the error happens, as in run_mae.py's loop
        progress.update(4)
        raise FileNotFoundError("no complete checkpoint")

    with pytest.raises(SystemExit):
        run_cli(main)
    err = capsys.readouterr().err
    assert err.endswith("\nerror: no complete checkpoint\n") and "pre-training" in err


def test_run_cli_error_line_hides_tokens(capsys, monkeypatch):
    """The error line is printed outside logging: a token in it (an argument echoed back, HF_TOKEN) is redacted too."""
    monkeypatch.delenv(lifecycle.TRACEBACK_ENV, raising=False)
    monkeypatch.setenv("HF_TOKEN", "env-secret-value")
    hub_shaped = "hf_" + "a1" * 17

    def main():
        raise ValueError(f"repo not found with token env-secret-value or {hub_shaped}")

    with pytest.raises(SystemExit):
        run_cli(main)
    assert capsys.readouterr().err == "error: repo not found with token <redacted> or <redacted>\n"


def test_run_cli_lets_bugs_and_successes_through(monkeypatch):
    assert run_cli(lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(KeyError):
        run_cli(lambda: {}["bug"])
    monkeypatch.setenv(lifecycle.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="shown with its traceback"):
        run_cli(lambda: (_ for _ in ()).throw(ValueError("shown with its traceback")))


@pytest.fixture
def restore_accelerate_loggers():
    # before too: a training script run in-process by an earlier test on this worker installs the filter for good
    def remove() -> None:
        for name in lifecycle.CHECKPOINT_LOGGERS:
            logging.getLogger(name).removeFilter(lifecycle._CHATTER_FILTER)

    remove()
    yield
    remove()


def test_quiet_library_logs_drops_checkpoint_lines_and_keeps_warnings(
    tmp_path, caplog, reset_accelerate, restore_accelerate_loggers
):
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))

    def accelerate_messages(action) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            action()
        return [record.getMessage() for record in caplog.records if record.name.startswith("accelerate")]

    loud = accelerate_messages(lambda: accelerator.save_state(str(tmp_path / "a")))
    assert any("Saving current state to" in m for m in loud) and any("Model weights saved in" in m for m in loud)
    quiet_library_logs()
    quiet_library_logs()  # idempotent
    quiet = accelerate_messages(
        lambda: (
            accelerator.save_state(str(tmp_path / "b")),
            accelerator.load_state(str(tmp_path / "b")),
            logging.getLogger("accelerate.checkpointing").warning("[RANK 0] Random states saved in x, but truncated"),
            logging.getLogger("accelerate.accelerator").info("[RANK 0] an unrelated message"),
        )
    )
    assert quiet == ["[RANK 0] Random states saved in x, but truncated", "[RANK 0] an unrelated message"], quiet
    assert logging.getLogger("accelerate.accelerator").filters.count(lifecycle._CHATTER_FILTER) == 1
