"""End-to-end tests of `scripts/run_mae.py` on the shipped CelebA sample with a tiny model: a run in-process, SIGTERM
(preemption), a non-finite loss, and bad arguments. Exact resume after SIGKILL with two real CPU processes, for every
engine (DDP, FSDP2, DeepSpeed, two nodes, torchrun): tests/test_engines.py."""

import contextlib
import json
import logging
import math
import re
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import datasets
import pytest
import safetensors.torch
import torch

from conftest import load_file
from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.train.core import load_image_processor, training_schedule


REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "run_mae.py"


def load_script():
    return load_file(SCRIPT)


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_config_kwargs):
    """A config folder like configs/dilated-vit-mae-tiny-64, at 32 px."""
    folder = tmp_path / "tiny-config"
    folder.mkdir()
    DilatedViTMAEConfig(**tiny_config_kwargs, norm_pix_loss=True).to_json_file(folder / "config.json")
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).to_json_file(
        folder / "preprocessor_config.json"
    )
    return folder


def run_args(config_dir, output_dir, *extra) -> list[str]:
    return [
        "--config_name", str(config_dir),
        "--output_dir", str(output_dir),
        "--max_train_samples", "12",
        "--max_eval_samples", "4",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4",
        "--learning_rate", "1e-3",
        "--num_train_epochs", "3",
        "--seed", "0",
        "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


def read_log(output_dir) -> dict[int, dict]:
    """The last logged entry of each step (a resumed run logs the steps after its checkpoint again)."""
    entries = {}
    for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "train_loss" in entry:
            entries[entry["step"]] = entry
    return entries


def test_training_run_saves_a_loadable_hub_folder(tiny_model_dir, tmp_path, reset_accelerate):
    run_mae = load_script()
    output_dir = tmp_path / "out"
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir, "--checkpoints_total_limit", "2", "--checkpointing_steps", "epoch")))

    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "configuration_dilated_vit_mae.py",
                "modeling_dilated_vit_mae.py", "image_processing_dilated_vit_mae.py", "all_results.json"}  # fmt: skip
    assert expected <= set(os.listdir(output_dir))
    model = DilatedViTMAEForPreTraining.from_pretrained(output_dir)
    assert model.config.hidden_size == 32 and model.config.norm_pix_loss
    assert DilatedViTMAEImageProcessor.from_pretrained(output_dir).crop_size == {"height": 32, "width": 32}

    log = read_log(output_dir)
    assert sorted(log) == list(range(1, 10))  # 12 images / batch 4 = 3 steps x 3 epochs
    assert all(entry["train_loss"] > 0 and entry["images_per_second"] > 0 for entry in log.values())
    lrs = [log[step]["lr"] for step in sorted(log)]
    assert max(lrs) <= 1e-3 and lrs[-1] < max(lrs)  # cosine decay
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["global_step"] == 9 and results["effective_batch_size"] == 4
    assert 0 < results["eval_masked_patch_mse"] < 1 and results["eval_psnr"] > 0
    assert (output_dir / "eval" / "reconstructions.png").is_file()
    # epoch checkpoints, the oldest rotated out
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_6", "step_9"]
    # a second run into the same folder must not silently mix with the first
    with pytest.raises(FileExistsError, match="--resume_from_checkpoint latest"):
        run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir)))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
    tiny_model_dir, tmp_path, monkeypatch, reset_accelerate
):
    run_mae = load_script()
    original = DilatedViTMAEForPreTraining.forward_loss
    calls = {"n": 0}

    def loss_goes_nan_at_step_4(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if self.training and calls["n"] >= 4 else loss

    monkeypatch.setattr(DilatedViTMAEForPreTraining, "forward_loss", loss_goes_nan_at_step_4)
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--checkpointing_steps", "2", "--eval_steps", "0")
    with pytest.raises(RuntimeError, match=r"Loss is nan at step 4\b.*step_2"):
        run_mae.main(run_mae.parse_args(args))
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_2"]
    assert not (output_dir / "model.safetensors").exists()


def test_bad_arguments_are_rejected():
    run_mae = load_script()
    with pytest.raises(SystemExit):
        run_mae.parse_args(["--streaming", "--celeba_dir", "/data/celeba"])
    with pytest.raises(SystemExit):
        run_mae.parse_args(["--push_to_hub"])
    with pytest.raises(SystemExit):
        run_mae.parse_args(["--celeba_dir", "a", "--train_dir", "b"])
    with pytest.raises(SystemExit):
        run_mae.parse_args(["--checkpointing_steps", "often"])


def accelerate_command(num_processes: int) -> list[str]:
    if num_processes == 1:
        return [sys.executable, str(SCRIPT)]
    # `--cpu --num_processes 2` would start one process; this starts two gloo ranks
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(random.randint(20000, 40000)), str(SCRIPT)]  # fmt: skip


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (torchrun starts its workers in sessions of their own, out of our group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def kill_tree(pid: int) -> None:
    for victim in process_tree(pid):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch_env() -> dict:
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir, tmp_path):
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--num_train_epochs", "50", "--checkpointing_steps", "no")
    process = subprocess.Popen(
        accelerate_command(1) + args, env=launch_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log_path = output_dir / "train_log.jsonl"
    deadline = time.monotonic() + 300
    while not (log_path.exists() and log_path.read_text().count("train_loss") >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-4000:]
    assert "SIGTERM: saved" in output
    checkpoints = list((output_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 1
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["global_step"] == max(read_log(output_dir)) and state["global_step"] < 150
    assert not (output_dir / "model.safetensors").exists()


def test_run_stopped_mid_epoch_by_max_steps_resumes_in_that_epoch(tiny_model_dir, tmp_path, reset_accelerate):
    run_mae = load_script()
    output_dir = tmp_path / "out"
    common = ("--checkpointing_steps", "epoch", "--eval_steps", "0")
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir, *common, "--max_train_steps", "2")))
    state = json.loads((output_dir / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done_in_epoch"]) == (0, 2)  # 3 batches an epoch: stopped inside epoch 0

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    args = run_args(tiny_model_dir, output_dir, *common, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    run_mae.main(run_mae.parse_args(args))
    log = read_log(output_dir)
    assert sorted(log) == [1, 2, 3, 4]
    assert [log[step]["epoch"] for step in (3, 4)] == [0, 1]  # the third batch of epoch 0, then epoch 1
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_2", "step_3", "step_4"]  # 3 ends epoch 0


@pytest.mark.slow
def test_launch_that_would_train_independent_copies_is_refused(tiny_model_dir, tmp_path):
    env = {k: v for k, v in launch_env().items() if not k.startswith("ACCELERATE_")}
    config = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
               str(random.randint(20000, 40000)), str(SCRIPT)]  # fmt: skip
    result = subprocess.run(
        command + run_args(tiny_model_dir, tmp_path / "out"), env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert result.returncode != 0
    assert "ACCELERATE_USE_CPU=true" in result.stdout + result.stderr


def _checkpoint_is_finite(checkpoint: Path) -> bool:
    weights = safetensors.torch.load_file(checkpoint / "model.safetensors")
    return all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_nan_in_an_earlier_micro_batch_is_caught_at_its_step_and_never_checkpointed(
    tiny_model_dir, tmp_path, monkeypatch, reset_accelerate
):
    # with gradient accumulation the old loop checked only the last micro-batch of a step: a NaN in the first one
    # reached the weights, was caught a step late, and the checkpoint it named as "last good" held NaN weights
    run_mae = load_script()
    original = DilatedViTMAEForPreTraining.forward_loss
    calls = {"n": 0}

    def nan_in_first_micro_batch_of_step_3(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if self.training and calls["n"] == 5 else loss  # micro-batches 5, 6 make step 3

    monkeypatch.setattr(DilatedViTMAEForPreTraining, "forward_loss", nan_in_first_micro_batch_of_step_3)
    output_dir = tmp_path / "out"
    args = run_args(
        tiny_model_dir, output_dir, "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--checkpointing_steps", "1", "--eval_steps", "0", "--logging_steps", "5",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"Loss is nan at step 3\b.*step_2"):
        run_mae.main(run_mae.parse_args(args))
    checkpoints = sorted(p.name for p in (output_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_1", "step_2"]
    assert all(_checkpoint_is_finite(output_dir / "checkpoints" / name) for name in checkpoints)


def test_logged_loss_is_the_mean_over_micro_batches(tiny_model_dir, tmp_path, monkeypatch, reset_accelerate):
    run_mae = load_script()
    original = DilatedViTMAEForPreTraining.forward_loss
    seen = []

    def recording(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if self.training:
            seen.append(loss.item())
        return loss

    monkeypatch.setattr(DilatedViTMAEForPreTraining, "forward_loss", recording)
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                    "--max_train_steps", "2", "--checkpointing_steps", "no", "--no_eval")  # fmt: skip
    run_mae.main(run_mae.parse_args(args))
    log = read_log(output_dir)
    assert log[1]["train_loss"] == pytest.approx((seen[0] + seen[1]) / 2, rel=1e-5)
    assert log[2]["train_loss"] == pytest.approx((seen[2] + seen[3]) / 2, rel=1e-5)


def test_exploding_learning_rate_never_writes_a_non_finite_checkpoint(tiny_model_dir, tmp_path, reset_accelerate):
    run_mae = load_script()
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--learning_rate", "1e6", "--checkpointing_steps", "1", "--eval_steps", "0")
    with pytest.raises(RuntimeError, match="not finite|Loss is"):
        run_mae.main(run_mae.parse_args(args))
    for checkpoint in (output_dir / "checkpoints").glob("step_*"):
        assert _checkpoint_is_finite(checkpoint), checkpoint.name


def test_learning_rate_given_on_resume_is_applied_and_recorded(tiny_model_dir, tmp_path, reset_accelerate):
    run_mae = load_script()
    output_dir = tmp_path / "out"
    common = ("--checkpointing_steps", "1", "--eval_steps", "0", "--num_warmup_steps", "0")
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir, *common, "--max_train_steps", "2")))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    (output_dir / "all_results.json").unlink()
    resumed = run_args(tiny_model_dir, output_dir, *common, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    resumed[resumed.index("--learning_rate") + 1] = "5e-4"
    resumed[resumed.index("--max_train_steps") + 1] = "4"
    run_mae.main(run_mae.parse_args(resumed))
    log = read_log(output_dir)
    # cosine over 4 steps without warmup: the lr after step 3 is peak x 0.5 x (1 + cos(pi x 3/4)) with the new peak
    assert log[3]["lr"] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 3 / 4)), rel=1e-6)
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["learning_rate"] == 5e-4
    assert results["learning_rate_history"] == [[0, 1e-3], [2, 5e-4]]


def test_config_overrides_of_the_image_size_give_a_matching_processor(tiny_model_dir, tmp_path, reset_accelerate):
    # the old run kept the default config's 64 px processor: "Input image size (64*64) doesn't match model (32*32)"
    run_mae = load_script()
    output_dir = tmp_path / "out"
    args = ["--output_dir", str(output_dir), "--config_overrides", "image_size=32,hidden_size=48,num_hidden_layers=1,"
            "intermediate_size=96,num_attention_heads=3,decoder_num_hidden_layers=1", "--max_train_steps", "2",
            "--per_device_train_batch_size", "4", "--checkpointing_steps", "no", "--max_eval_samples", "4"]  # fmt: skip
    run_mae.main(run_mae.parse_args(args))
    assert DilatedViTMAEImageProcessor.from_pretrained(output_dir).crop_size == {"height": 32, "width": 32}


def test_an_explicit_processor_that_does_not_match_is_refused_naming_both_sizes(tiny_model_dir, tmp_path, reset_accelerate):
    run_mae = load_script()
    args = run_args(tiny_model_dir, tmp_path / "out", "--image_processor_name", str(REPO_ROOT / "configs" / "dilated-vit-mae-tiny-64"))
    with pytest.raises(ValueError, match=r"64x64 but the model's image_size is 32x32.*--image_processor_name"):
        run_mae.main(run_mae.parse_args(args))


def test_streaming_from_a_local_folder_trains(tiny_model_dir, tmp_path, reset_accelerate):
    # an IterableDataset has no set_transform and no sample_index column: the old run failed at once
    run_mae = load_script()
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--streaming", "--max_train_steps", "3", "--checkpointing_steps", "no")
    run_mae.main(run_mae.parse_args(args))
    assert sorted(read_log(output_dir)) == [1, 2, 3]
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["global_step"] == 3 and results["eval_loss"] > 0


def test_streaming_from_the_hub_trains(tiny_model_dir, tmp_path, monkeypatch, reset_accelerate):
    import datasets

    from dilated_vit_mae.data import loading as celeba_data

    local = celeba_data.load_celeba(REPO_ROOT / "data" / "celeba_sample")
    calls = []

    def load_dataset(path, name=None, streaming=False, **kwargs):
        calls.append((path, streaming))
        splits = {"train": local["train"], "valid": local["validation"], "test": local["test"]}
        return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in splits.items()})

    monkeypatch.setattr(celeba_data.datasets, "load_dataset", load_dataset)
    run_mae = load_script()
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--streaming", "--max_train_steps", "2", "--checkpointing_steps", "no")
    args[args.index("--config_name"):args.index("--config_name")] = ["--dataset_name", "someone/celeba-copy"]
    run_mae.main(run_mae.parse_args(args))
    assert calls == [("someone/celeba-copy", True)]
    assert sorted(read_log(output_dir)) == [1, 2]


def test_evaluation_reports_trivial_predictors_on_the_same_masks(tiny_model_dir, tmp_path, reset_accelerate):
    run_mae = load_script()
    output_dir = tmp_path / "out"
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir, "--max_train_steps", "2", "--checkpointing_steps", "no")))
    results = json.loads((output_dir / "all_results.json").read_text())
    for predictor in ("", "baseline_zeros_", "baseline_visible_mean_"):
        for metric in ("loss", "masked_patch_mse", "psnr"):
            assert math.isfinite(results[f"eval_{predictor}{metric}"]), predictor + metric
    # the tiny config trains with norm_pix_loss: the oracle figures are reported apart, beside their own baseline
    assert results["eval_oracle_psnr"] > 0 and results["eval_baseline_zeros_oracle_psnr"] > 0


def test_evaluation_says_how_many_images_and_shows_progress(tiny_model_dir, tmp_path, reset_accelerate, caplog, monkeypatch):
    # the final evaluation of CelebA's 19,867 validation images is minutes on a CPU: it must not look hung
    run_mae = load_script()
    bars = []

    def recording_tqdm(*args, **kwargs):
        bars.append(kwargs)
        return tqdm_std(*args, **kwargs)

    from tqdm.auto import tqdm as tqdm_std

    monkeypatch.setattr(run_mae, "tqdm", recording_tqdm)
    args = run_args(tiny_model_dir, tmp_path / "out", "--max_train_steps", "1", "--checkpointing_steps", "no", "--max_eval_samples", "6")
    with caplog.at_level(logging.INFO):
        run_mae.main(run_mae.parse_args(args))
    workers = run_mae._default_num_workers(types.SimpleNamespace(device=torch.device("cuda")))
    assert f"step 1: evaluating 6 validation images ({workers} loader workers per process)" in caplog.text
    (bar,) = [kwargs for kwargs in bars if kwargs.get("desc") == "evaluation"]
    assert bar["total"] == 2 and bar["disable"] is False  # the bar on the main process: 6 images in batches of 4
    assert re.search(r"image check: (the )?56 images of", caplog.text)  # the sample's, counted when it starts


def test_evaluation_uses_the_loader_workers_of_a_gpu_run_also_on_cpu(tiny_model_dir, tmp_path):
    run_mae = load_script()
    args = run_mae.parse_args(run_args(tiny_model_dir, tmp_path / "out"))
    config = run_mae.build_config(args)
    processor = load_image_processor(args, config, str(tiny_model_dir))
    splits = run_mae.load_datasets(args, progress=False)
    gpu = types.SimpleNamespace(device=torch.device("cuda"), main_process_first=contextlib.nullcontext)
    train, evaluation, _, device_augmentation = run_mae.build_dataloaders(args, gpu, config, processor, splits)
    workers = run_mae._default_num_workers(gpu)
    assert device_augmentation is not None and workers >= 1  # the GPU path, with its workers
    assert evaluation.num_workers == train.num_workers == workers
    assert evaluation.persistent_workers and evaluation.prefetch_factor == args.dataloader_prefetch_factor
    # on CPU too for evaluation (training keeps 0 there); an explicit number is used for both
    cpu = types.SimpleNamespace(device=torch.device("cpu"), main_process_first=contextlib.nullcontext)
    train, evaluation, _, _ = run_mae.build_dataloaders(args, cpu, config, processor, run_mae.load_datasets(args, progress=False))
    assert (train.num_workers, evaluation.num_workers) == (0, workers)
    args.dataloader_num_workers = 0
    train, evaluation, _, _ = run_mae.build_dataloaders(args, cpu, config, processor, run_mae.load_datasets(args, progress=False))
    assert (train.num_workers, evaluation.num_workers) == (0, 0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_train_steps", "-5"], "--max_train_steps: must be a positive integer, got -5"),
        (["--max_train_steps", "0"], "--max_train_steps: must be a positive integer, got 0"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps"),
        (["--max_eval_samples", "0"], "--max_eval_samples"),
        (["--tok", "hf_x"], "unrecognized arguments: --tok"),
        (["--hub_tok", "hf_x"], "unrecognized arguments: --hub_tok"),
        (["--learning_rate", "nan"], "--learning_rate"),
        (["--overwrite_output_dir", "--resume_from_checkpoint", "latest"], "give one"),
    ],
)
def test_bad_flags_are_refused_by_argparse(flags, message, capsys):
    run_mae = load_script()
    with pytest.raises(SystemExit) as exit_info:
        run_mae.parse_args(flags)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_sample_recipe_applies_on_the_shipped_sample_only():
    run_mae = load_script()
    sample = run_mae.parse_args([])
    assert (sample.recipe, sample.learning_rate, sample.max_train_steps, sample.norm_pix_loss) == ("sample", 2e-3, 900, False)
    given = run_mae.parse_args(["--learning_rate", "1e-4", "--num_train_epochs", "2"])
    assert (given.learning_rate, given.max_train_steps, given.per_device_train_batch_size) == (1e-4, None, 16)
    real = run_mae.parse_args(["--celeba_dir", "/data/celeba"])
    assert (real.recipe, real.learning_rate, real.base_learning_rate, real.norm_pix_loss) == ("mae", None, 1.5e-4, None)


def test_the_training_loop_does_not_wait_for_the_device_between_logging_steps(
    tiny_model_dir, tmp_path, monkeypatch, reset_accelerate
):
    # every .item() / .tolist() / .cpu() / bool(tensor) stops the host until the device has caught up; between two
    # logging steps the loop must issue none (the loss and the finiteness check stay on the device)
    run_mae = load_script()
    syncs, inside = [], {"step": False}
    for name in ("item", "tolist", "cpu", "__bool__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            # torch.optim reads its step counters, host-side CPU tensors unless capturable: not a device sync
            if inside["step"] and f"torch{os.sep}optim" not in caller:
                syncs.append(f"{_name} in {caller}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    original_step = run_mae.train_micro_batch

    def step(*args, **kwargs):
        inside["step"] = True
        try:
            return original_step(*args, **kwargs)
        finally:
            inside["step"] = False

    monkeypatch.setattr(run_mae, "train_micro_batch", step)
    args = run_args(tiny_model_dir, tmp_path / "out", "--max_train_steps", "6", "--checkpointing_steps", "no", "--no_eval")
    args[args.index("--logging_steps") + 1] = "3"
    run_mae.main(run_mae.parse_args(args))
    assert syncs == []
    assert sorted(read_log(tmp_path / "out")) == [3, 6]


def _reset_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_overwrite_starts_clean_and_resume_refuses_the_old_run(tiny_model_dir, tmp_path, reset_accelerate):
    # the old overwrite kept step_90..100 (outranking the new run's), appended to train_log.jsonl and kept the eval
    # grids and probe results; a later resume then continued the *old* run
    run_mae = load_script()
    output_dir = tmp_path / "out"
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir, "--checkpointing_steps", "1")))  # 9 steps
    (output_dir / "linear_probe_results.json").write_text("{}")
    old_checkpoint = output_dir / "checkpoints" / "step_9"
    kept_aside = tmp_path / "old_step_9"
    import shutil

    shutil.copytree(old_checkpoint, kept_aside)
    _reset_accelerate_state()
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir, "--overwrite_output_dir", "--max_train_steps", "2",
                                             "--checkpointing_steps", "1", "--seed", "1")))  # fmt: skip
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert sorted(read_log(output_dir)) == [1, 2]
    assert not (output_dir / "linear_probe_results.json").exists()
    assert sorted(p.name for p in (output_dir / "eval").iterdir()) == ["reconstructions.png", "reconstructions_step_2.png"]
    # a checkpoint of the earlier run planted back is refused on resume
    shutil.copytree(kept_aside, output_dir / "checkpoints" / "step_9")
    _reset_accelerate_state()
    with pytest.raises(Exception, match="step_9 belongs to run .* but this output folder is run"):
        run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir, "--resume_from_checkpoint", "latest")))


def test_a_finished_folder_without_checkpoints_is_not_silently_replaced(tiny_model_dir, tmp_path, reset_accelerate):
    run_mae = load_script()
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--max_train_steps", "2", "--checkpointing_steps", "no")
    run_mae.main(run_mae.parse_args(args))
    weights = (output_dir / "model.safetensors").read_bytes()
    _reset_accelerate_state()
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        run_mae.main(run_mae.parse_args(args))
    assert (output_dir / "model.safetensors").read_bytes() == weights


def test_resuming_a_finished_run_keeps_its_evaluation_and_runtime(tiny_model_dir, tmp_path, reset_accelerate):
    run_mae = load_script()
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--max_train_steps", "3", "--checkpointing_steps", "1")
    run_mae.main(run_mae.parse_args(args))
    first = json.loads((output_dir / "all_results.json").read_text())
    _reset_accelerate_state()
    run_mae.main(run_mae.parse_args(args + ["--resume_from_checkpoint", "latest"]))
    again = json.loads((output_dir / "all_results.json").read_text())
    assert again["global_step"] == 3
    assert again["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-6)  # the same weights, the same masks
    # cumulative: the resumed launch starts from the runtime its checkpoint recorded (the old card said "0.0 min")
    assert again["hardware"]["train_runtime_seconds"] == pytest.approx(first["hardware"]["train_runtime_seconds"], rel=0.2)
    card = (output_dir / "README.md").read_text()
    assert "0.0 min" not in card and "eval" in card.lower()


def test_empty_validation_split_is_refused_before_training(tiny_model_dir, tmp_path, reset_accelerate):
    import shutil

    run_mae = load_script()
    celeba = tmp_path / "celeba"
    shutil.copytree(REPO_ROOT / "data" / "celeba_sample", celeba)
    partition = celeba / "list_eval_partition.txt"
    partition.write_text("".join(line.replace(" 1", " 0") for line in partition.read_text().splitlines(keepends=True)))
    output_dir = tmp_path / "out"
    args = run_args(tiny_model_dir, output_dir, "--celeba_dir", str(celeba))
    with pytest.raises(ValueError, match="validation split .* is empty.*--no_eval"):
        run_mae.main(run_mae.parse_args(args))
    assert not (output_dir / "train_log.jsonl").exists()
    _reset_accelerate_state()
    run_mae.main(run_mae.parse_args(args + ["--no_eval", "--max_train_steps", "1", "--overwrite_output_dir"]))
    assert (output_dir / "model.safetensors").is_file()


def test_a_decoded_cache_the_host_path_would_ignore_is_named(tiny_model_dir, tmp_path, reset_accelerate, caplog, capsys):
    # the cache feeds the device path only: asked for with --augment_on host it is refused when parsed; with
    # auto on a CPU (the host path) the run goes on and says the cache is not used
    run_mae = load_script()
    cache = str(tmp_path / "cache")
    args = run_args(tiny_model_dir, tmp_path / "host", "--decoded_cache_dir", cache, "--max_train_steps", "1", "--no_eval")
    with pytest.raises(SystemExit):
        run_mae.parse_args(args + ["--augment_on", "host"])
    assert "--decoded_cache_dir feeds the device path only" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        run_mae.main(run_mae.parse_args(args))
    assert any("--decoded_cache_dir is not used" in r.getMessage() for r in caplog.records)
    assert not Path(cache).exists()


@pytest.mark.parametrize("extra", [(), ("--decoded_cache_dir", "CACHE")], ids=["files", "decoded_cache"])
def test_device_augmentation_trains_and_resumes_exactly(tiny_model_dir, tmp_path, reset_accelerate, extra):
    # the GPU input path (workers decode to uint8, crop/resize/flip/normalise batched on the device), run on CPU
    run_mae = load_script()
    extra = tuple(str(tmp_path / "cache") if value == "CACHE" else value for value in extra)
    common = ("--augment_on", "device", "--checkpointing_steps", "2", "--eval_steps", "0", "--max_train_steps", "4", *extra)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, whole, *common)))
    _reset_accelerate_state()
    # the same run interrupted after its step-2 checkpoint: that checkpoint and the run's identity, nothing else
    import shutil

    (parts / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / "step_2", parts / "checkpoints" / "step_2")
    shutil.copy(whole / "run.json", parts / "run.json")
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, parts, *common, "--resume_from_checkpoint", "latest")))
    expected, resumed = (safetensors.torch.load_file(folder / "model.safetensors") for folder in (whole, parts))
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert read_log(parts)[4]["train_loss"] == pytest.approx(read_log(whole)[4]["train_loss"], rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Damaged checkpoints, wrong-kind model folders
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "scheduler.bin"])
def test_a_truncated_checkpoint_file_is_named_on_resume_with_the_checkpoint_to_use(
    tiny_model_dir, tmp_path, reset_accelerate, name
):
    from dilated_vit_mae.train.lifecycle import UserError

    run_mae = load_script()
    output_dir = tmp_path / "out"
    run_mae.main(run_mae.parse_args(run_args(tiny_model_dir, output_dir, "--checkpointing_steps", "epoch", "--checkpoints_total_limit", "2")))
    damaged = output_dir / "checkpoints" / "step_9" / name
    damaged.write_bytes(damaged.read_bytes()[:100])  # cut short, as by a full disk under another tool or a copy
    _reset_accelerate_state()
    args = run_args(tiny_model_dir, output_dir, "--num_train_epochs", "4", "--resume_from_checkpoint", "latest")
    with pytest.raises(UserError) as refused:  # was safetensors' / torch's own error, with its traceback
        run_mae.main(run_mae.parse_args(args))
    message = str(refused.value)
    assert message.startswith(f"checkpoint {damaged.parent} cannot be resumed: its {name} is damaged"), message
    assert f"--resume_from_checkpoint {output_dir / 'checkpoints' / 'step_6'} (complete ones: step_6)" in message


def test_a_fine_tuned_classifier_folder_is_refused_saying_what_to_pass(tiny_model_dir, tmp_path, reset_accelerate):
    from dilated_vit_mae import DilatedViTMAEForImageClassification
    from dilated_vit_mae.train.lifecycle import UserError

    run_mae = load_script()
    classifier = tmp_path / "classifier"  # what run_finetune.py writes: no decoder, mask_ratio 0
    config = DilatedViTMAEConfig.from_pretrained(tiny_model_dir, mask_ratio=0.0, num_labels=2)
    DilatedViTMAEForImageClassification(config).save_pretrained(classifier)
    args = run_args(tiny_model_dir, tmp_path / "out", "--max_train_steps", "2")
    args[args.index("--config_name")] = "--model_name_or_path"
    args[args.index(str(tiny_model_dir))] = str(classifier)
    # was: loaded with a random decoder, then "Loss is nan ... lower the learning rate"
    with pytest.raises(UserError, match=rf"--model_name_or_path {re.escape(str(classifier))} is a fine-tuned image "
                                        r"classifier \(DilatedViTMAEForImageClassification"):  # fmt: skip
        run_mae.main(run_mae.parse_args(args))
    assert not (tmp_path / "out").exists()  # refused before the run folder was written


def test_maes_pre_training_recipe_constants(reset_accelerate):
    # PRETRAIN.md / main_pretrain.py of facebookresearch/mae: lr = blr 1.5e-4 x effective batch / 256, AdamW betas
    # (0.9, 0.95), weight decay 0.05, RandomResizedCrop scale 0.2-1 + flip
    from types import SimpleNamespace

    from accelerate import PartialState

    PartialState()  # the script's logger needs one
    run_mae = load_script()
    args = run_mae.parse_args(["--celeba_dir", "/data/celeba"])
    assert (args.base_learning_rate, args.adam_beta1, args.adam_beta2, args.weight_decay) == (1.5e-4, 0.9, 0.95, 0.05)
    args.per_device_train_batch_size, args.gradient_accumulation_steps = 64, 2
    schedule = training_schedule(args, 4, 100_000, drop_last=False, warmup_ratio=args.warmup_ratio)
    assert schedule.learning_rate == pytest.approx(1.5e-4 * 64 * 4 * 2 / 256)
    processor = DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    host = SimpleNamespace(device=torch.device("cpu"))
    _, augmentation, _ = run_mae.train_dataset_and_augmentation(
        args, host, DilatedViTMAEConfig(image_size=32, patch_size=4), processor,
        {"train": datasets.Dataset.from_dict({"image": [], "sample_index": []})},
    )
    transform = augmentation.transform
    assert transform.scale == (0.2, 1.0) and transform.flip_prob == 0.5 and transform.rand_augment is None


def test_a_mask_ratio_of_zero_is_refused_by_flag_and_by_config(tiny_model_dir, tmp_path, capsys, reset_accelerate):
    """Pre-training's loss is over the masked patches: masking none made it 0/0 and the run stopped with 'Loss is nan'."""
    run_mae = load_script()
    with pytest.raises(SystemExit) as exit_info:
        run_mae.parse_args(run_args(tiny_model_dir, tmp_path / "out", "--mask_ratio", "0"))
    assert exit_info.value.code == 2 and "--mask_ratio 0 masks no patch" in capsys.readouterr().err
    classifier_config = tmp_path / "classifier-config"  # e.g. --config_name of a fine-tuned classifier's folder
    classifier_config.mkdir()
    DilatedViTMAEConfig.from_pretrained(tiny_model_dir, mask_ratio=0.0).to_json_file(classifier_config / "config.json")
    args = run_mae.parse_args(run_args(classifier_config, tmp_path / "out"))
    with pytest.raises(ValueError, match=r"the config from .*classifier-config has mask_ratio 0, which masks no patch.*"
                                         r"--mask_ratio 0\.75"):  # fmt: skip
        run_mae.build_config(args)
