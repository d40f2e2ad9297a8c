"""
Every engine docs/distributed.md names, run for real on two CPU processes (gloo) with `scripts/run_mae.py` on the
shipped sample (12 images, 32 px, 9 steps, a checkpoint every 3): DDP, FSDP2 through accelerate's own code, DeepSpeed
ZeRO-2, two nodes on 127.0.0.1 and torchrun. One scenario for all (`kill_and_resume`): a run SIGKILLed (launcher and
every rank) after its step-3 checkpoint, resumed with `--resume_from_checkpoint latest`, must log the same losses and
end with the same weights, bit for bit, as the uninterrupted DDP run (`reference`), and its folder must load where the
package is not installed. Also: `scripts/run_finetune.py` under FSDP2 ends with DDP's weights, and a launch that asks
for an engine accelerate does not build is refused in one line (exit 2).

FSDP runs through tests/fsdp_on_cpu.py, which lifts accelerate's GPU-only gate for FSDP (see its docstring).
"""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch

from conftest import REPO_ROOT, TINY_CONFIG, run_without_package
from test_run_mae import kill_tree, process_tree, read_log


CONFIGS = REPO_ROOT / "configs" / "accelerate"
MAE = REPO_ROOT / "scripts" / "run_mae.py"
FINETUNE = REPO_ROOT / "scripts" / "run_finetune.py"
FSDP_ON_CPU = REPO_ROOT / "tests" / "fsdp_on_cpu.py"
STEPS, CHECKPOINT_STEP = 9, 3  # 3 epochs of 3 steps: checkpoints at 3, 6 and 9
TIMEOUT = 900  # seconds per launch: two cores shared with other test workers


def write_tiny_config(folder: Path, **overrides) -> Path:
    from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    DilatedViTMAEConfig(**TINY_CONFIG, norm_pix_loss=True, **overrides).to_json_file(folder / "config.json")
    processor = DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.to_json_file(folder / "preprocessor_config.json")
    return folder


def mae_args(config_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    # 12 images, 2 processes x batch 2: 3 steps an epoch, 3 epochs
    return [
        "--config_name", str(config_dir), "--output_dir", str(output_dir), "--max_train_samples", "12",
        "--max_eval_samples", "4", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
        "--learning_rate", "1e-3", "--num_train_epochs", "3", "--seed", "0", "--logging_steps", "1",
        "--checkpointing_steps", str(CHECKPOINT_STEP), *extra,
    ]  # fmt: skip


def port() -> str:
    return str(random.randint(20000, 40000))


def accelerate_launch(*options: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "--main_process_port", port()]


@dataclass
class Engine:
    """How a launch starts: one launcher command per node (each followed by the script and its arguments), and
    whether it exports ACCELERATE_USE_CPU=true."""

    name: str
    nodes: list[list[str]]
    use_cpu_env: bool = True

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_")) and k != "PYTHONPATH"}
        env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        if self.use_cpu_env:
            env["ACCELERATE_USE_CPU"] = "true"
        return env

    def start(self, script_and_args: list[str]) -> list[subprocess.Popen]:
        return [
            subprocess.Popen(
                [*node, *map(str, script_and_args)], env=self.env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )  # fmt: skip
            for node in self.nodes
        ]

    def run(self, script_and_args: list[str], expect_rc: int = 0) -> str:
        processes = self.start(script_and_args)
        outputs = [process.communicate(timeout=TIMEOUT)[0] for process in processes]
        output = "\n".join(outputs)
        assert all(p.returncode == expect_rc for p in processes), (self.name, [p.returncode for p in processes], output[-6000:])
        return output


def ddp() -> Engine:
    # two real gloo ranks (`--cpu --num_processes 2` would start one); the README's command
    options = ("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    return Engine("DDP", [accelerate_launch(*options)])


def fsdp() -> Engine:
    options = ("--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no")
    return Engine("FSDP2", [[*accelerate_launch(*options), str(FSDP_ON_CPU)]])


def deepspeed() -> Engine:
    # without ACCELERATE_USE_CPU: DeepSpeed picks its CPU accelerator and gloo; the scripts give accelerate the backend
    return Engine("DeepSpeed ZeRO-2", [accelerate_launch("--config_file", str(CONFIGS / "deepspeed_zero2_cpu.yaml"))], use_cpu_env=False)


def two_nodes() -> Engine:
    common = ("--multi_gpu", "--num_processes", "2", "--num_machines", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_ip", "127.0.0.1", "--main_process_port", port())  # fmt: skip
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    return Engine("two nodes", [[*launcher, *common, "--machine_rank", str(rank)] for rank in (0, 1)])


def torchrun() -> Engine:
    return Engine("torchrun", [[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port()]])


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The uninterrupted DDP runs (drop and mask_token) every engine must reproduce; built once for all xdist workers."""
    from filelock import FileLock

    # this session's folder: shared by its xdist workers (basetemp is pytest-N/popen-gwK), never by other sessions
    session_dir = tmp_path_factory.getbasetemp()
    shared = (session_dir.parent if os.environ.get("PYTEST_XDIST_WORKER") else session_dir) / "engines-reference"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared / "lock")):
        for mode in ("drop", "mask_token"):
            output_dir = shared / mode
            if not (output_dir / "all_results.json").exists():
                config_dir = write_tiny_config(shared / f"config-{mode}", masking_mode=mode, dilated_context="visible")
                output = ddp().run([MAE, *mae_args(config_dir, output_dir)])
                assert f"rank 0 finished: {STEPS} steps" in output and f"rank 1 finished: {STEPS} steps" in output
    return {mode: (shared / f"config-{mode}", shared / mode) for mode in ("drop", "mask_token")}


def assert_same_run(output_dir: Path, reference_dir: Path, steps: int = STEPS) -> None:
    """Every logged loss and every final weight equal, bit for bit."""
    losses, expected_losses = read_log(output_dir), read_log(reference_dir)
    assert sorted(losses) == sorted(expected_losses) == list(range(1, steps + 1))
    assert [losses[s]["train_loss"] for s in losses] == [expected_losses[s]["train_loss"] for s in losses]
    weights = safetensors.torch.load_file(output_dir / "model.safetensors")
    expected = safetensors.torch.load_file(reference_dir / "model.safetensors")
    assert sorted(weights) == sorted(expected)
    unequal = [name for name in expected if not torch.equal(weights[name], expected[name])]
    assert not unequal, unequal


LOAD_WITHOUT_PACKAGE = """
import sys
import transformers
from transformers import AutoConfig
architecture = AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True).architectures[0]
head = getattr(transformers, "AutoModelFor" + architecture.split("For")[-1])  # PreTraining, ImageClassification
model, info = head.from_pretrained(sys.argv[1], trust_remote_code=True, output_loading_info=True)
assert "dilated_vit_mae" not in sys.modules, "the package was imported"
assert not any(info.values()), info
print("LOADED", type(model).__name__)
"""


def assert_hub_folder(output_dir: Path, workdir: Path) -> None:
    """A normal Hub folder (our code and auto_map, no torch FSDP files) that loads without the package."""
    config = json.loads((output_dir / "config.json").read_text())
    assert all(value.startswith(("configuration_dilated_vit_mae.", "modeling_dilated_vit_mae.")) for value in config["auto_map"].values()), config["auto_map"]
    assert (output_dir / "modeling_dilated_vit_mae.py").is_file() and not list(output_dir.glob("_fsdp*.py"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_without_package(["-c", LOAD_WITHOUT_PACKAGE, output_dir], workdir, timeout=TIMEOUT)
    assert result.returncode == 0 and "LOADED DilatedViTMAE" in result.stdout, result.stderr[-3000:]


def kill_and_resume(engine: Engine, reference: tuple[Path, Path], tmp_path: Path) -> tuple[Path, str]:
    """
    The scenario every engine passes: start `engine` on `run_mae.py` with the reference's config, SIGKILL the launchers
    and every rank once the step-3 checkpoint is in place (it is renamed into place whole), check that the run had not
    finished, resume it to the end, then compare it with the uninterrupted DDP run (`assert_same_run`) and load its
    folder without the package (`assert_hub_folder`). Returns the output folder and the resumed launch's output.
    """
    config_dir, reference_dir = reference
    output_dir = tmp_path / "out"
    processes = engine.start([MAE, *mae_args(config_dir, output_dir)])
    checkpoint = output_dir / "checkpoints" / f"step_{CHECKPOINT_STEP}"
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.is_dir() and time.monotonic() < deadline and all(p.poll() is None for p in processes):
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.1))  # somewhere in the steps after the checkpoint
    trees = [pid for process in processes for pid in process_tree(process.pid)]
    for pid in trees:  # frozen first, all at once: killing tree by tree let a loaded machine's ranks run to the end
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    for process in processes:
        kill_tree(process.pid)
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    time.sleep(0.5)
    survivors = [pid for pid in trees if Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    assert not survivors, survivors
    assert checkpoint.is_dir(), (engine.name, "\n".join(outputs)[-6000:])
    assert len(trees) >= 2 + len(processes), trees  # the launchers and two ranks
    assert not (output_dir / "model.safetensors").exists(), "the run finished before it was killed"
    killed_at = max(read_log(output_dir))
    assert CHECKPOINT_STEP <= killed_at < STEPS, killed_at  # the resumed run replays steps after its checkpoint
    output = engine.run([MAE, *mae_args(config_dir, output_dir, "--resume_from_checkpoint", "latest")])
    assert_same_run(output_dir, reference_dir)
    assert_hub_folder(output_dir, tmp_path / "load")
    return output_dir, output


# ----------------------------------------------------------------------------------------------------------------------
# The engines, each killed and resumed
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_resumed_after_sigkill_reproduces_the_uninterrupted_run(reference, tmp_path):
    output_dir, output = kill_and_resume(ddp(), reference["drop"], tmp_path)
    assert f"rank 1 finished: {STEPS} steps" in output
    checkpoint = output_dir / "checkpoints" / f"step_{STEPS}"
    assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"} <= set(os.listdir(checkpoint))
    assert len(list(checkpoint.rglob("*.safetensors"))) == 1  # the model written once, not once per rank


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drop", "mask_token"])
def test_fsdp2_through_accelerate_resumes_bit_exactly_and_matches_ddp(reference, tmp_path, mode):
    output_dir, output = kill_and_resume(fsdp(), reference[mode], tmp_path)
    assert "Distributed environment: DistributedType.FSDP" in output
    # sharded: each rank wrote its part of the model and of the optimizer (torch distributed checkpoint)
    shards = output_dir / "checkpoints" / f"step_{STEPS}" / "pytorch_model_fsdp_0"
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_deepspeed_zero2_on_cpu_resumes_bit_exactly_and_matches_ddp(reference, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is an extra: pip install -e '.[deepspeed]' (CI installs it)")
    output_dir, output = kill_and_resume(deepspeed(), reference["drop"], tmp_path)
    assert "Distributed environment: DistributedType.DEEPSPEED  Backend: gloo" in output
    states = output_dir / "checkpoints" / f"step_{STEPS}" / "pytorch_model"
    assert len(list(states.glob("zero_pp_rank_*_optim_states.pt"))) == 2  # optimizer states partitioned over 2 ranks


@pytest.mark.slow
def test_two_nodes_on_one_host_resume_bit_exactly_and_match_ddp(reference, tmp_path):
    output_dir, output = kill_and_resume(two_nodes(), reference["drop"], tmp_path)
    assert f"rank 0 finished: {STEPS} steps" in output and f"rank 1 finished: {STEPS} steps" in output
    assert output.count("saved the model, image processor and model card") == 1  # node 0 writes the folder


@pytest.mark.slow
def test_torchrun_resumes_bit_exactly_and_matches_ddp(reference, tmp_path):
    output_dir, output = kill_and_resume(torchrun(), reference["drop"], tmp_path)
    assert f"rank 1 finished: {STEPS} steps" in output


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning under FSDP2
# ----------------------------------------------------------------------------------------------------------------------


def finetune_args(model_dir: Path, output_dir: Path) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--max_train_samples", "8",
        "--max_eval_samples", "4", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
        "--learning_rate", "2e-3", "--num_warmup_steps", "1", "--max_train_steps", "4", "--logging_steps", "1",
        "--seed", "0",
    ]  # fmt: skip


@pytest.mark.slow
def test_finetuning_under_fsdp2_ends_with_ddps_weights_in_a_hub_folder(reference, tmp_path):
    _, pretrained = reference["drop"]
    ddp().run([FINETUNE, *finetune_args(pretrained, tmp_path / "ddp")])
    fsdp().run([FINETUNE, *finetune_args(pretrained, tmp_path / "fsdp")])
    shards = tmp_path / "fsdp" / "checkpoints" / "step_4" / "pytorch_model_fsdp_0"  # sharded: FSDP ran
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert_same_run(tmp_path / "fsdp", tmp_path / "ddp", steps=4)
    assert_hub_folder(tmp_path / "fsdp", tmp_path / "load")


# ----------------------------------------------------------------------------------------------------------------------
# No silent fallback
# ----------------------------------------------------------------------------------------------------------------------


def assert_refused_in_one_line(output: str, *phrases: str) -> None:
    """Each rank printed the same `error: ...` line naming `phrases`, and none of our code printed a traceback (the
    multi-process launcher's agent adds its own failure summary and exits 1)."""
    errors = {line for line in output.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1 and all(phrase in next(iter(errors)) for phrase in phrases), output[-4000:]
    assert f'File "{MAE}"' not in output and "dilated_vit_mae/" not in output, output[-4000:]
    assert "exitcode  : 2" in output  # the training processes' own exit status, as the agent reports it


@pytest.mark.slow
def test_fsdp_config_under_accelerate_use_cpu_is_refused_not_run_as_ddp(tmp_path):
    # accelerate 1.16 drops the FSDP plugin under ACCELERATE_USE_CPU=true and builds DDP: before, this trained as DDP
    options = ("--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no")
    engine = Engine("FSDP without the test wrapper", [accelerate_launch(*options)])
    output = engine.run([MAE, *mae_args(write_tiny_config(tmp_path / "config"), tmp_path / "out")], expect_rc=1)
    assert_refused_in_one_line(output, "asks for FSDP (ACCELERATE_USE_FSDP=true)", "built DDP on CPU processes", "GPUs only")
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_torchrun_without_accelerate_use_cpu_is_refused_in_one_line(tmp_path):
    # without the variable each rank is rank 0 of 1: two independent copies (before: exit 1 and a traceback)
    engine = torchrun()
    engine.use_cpu_env = False
    output = engine.run([MAE, *mae_args(write_tiny_config(tmp_path / "config"), tmp_path / "out")], expect_rc=1)
    assert_refused_in_one_line(output, "the launcher started 2 processes but accelerate sees 1", "ACCELERATE_USE_CPU=true")
    assert not (tmp_path / "out" / "checkpoints").exists()
