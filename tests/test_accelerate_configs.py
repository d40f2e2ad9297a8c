"""The accelerate config files in `configs/accelerate/`: each loads with accelerate's own loader and launcher
validation, and says what it should (no GPU config is launched; the CPU one is, under the `slow` marker)."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest

accelerate = pytest.importorskip("accelerate", reason="the configs are for `accelerate launch`: pip install .[train]")
yaml = pytest.importorskip("yaml", reason="accelerate's config files are YAML (PyYAML comes with accelerate)")

from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "accelerate"

# file -> (distributed_type, mixed_precision, num_processes)
EXPECTED = {
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, "bf16", 8),
    "fsdp.yaml": (DistributedType.FSDP, "bf16", 8),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, "bf16", 8),
    # run on every CI (tests/test_engines.py): DeepSpeed on CPU, without ACCELERATE_USE_CPU
    "deepspeed_zero2_cpu.yaml": (DistributedType.DEEPSPEED, "no", 2),
    # MULTI_GPU on purpose: it selects the torchrun launcher; ACCELERATE_USE_CPU=true makes the ranks gloo/CPU
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, "no", 2),
}


def launcher_args(config_file: Path):
    """What `accelerate launch --config_file FILE script.py` resolves, through accelerate's own (private) code."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "script.py"])
    return _validate_launch_command(args)


def test_every_config_is_covered():
    assert sorted(path.name for path in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name):
    path = CONFIG_DIR / name
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict) and raw["compute_environment"] == "LOCAL_MACHINE"

    # raises on unknown keys, like `accelerate launch` does
    config = load_config_from_file(str(path))

    distributed_type, mixed_precision, num_processes = EXPECTED[name]
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == distributed_type
    assert config.mixed_precision == mixed_precision
    assert config.num_processes == num_processes
    assert config.num_machines == 1

    args, defaults, _ = launcher_args(path)
    assert args.num_processes == num_processes and args.mixed_precision == mixed_precision
    assert args.multi_gpu == (distributed_type == DistributedType.MULTI_GPU)
    assert args.use_fsdp == (distributed_type == DistributedType.FSDP)
    assert args.use_deepspeed == (distributed_type == DistributedType.DEEPSPEED)


def test_cpu_config_documents_the_required_env_variable():
    config = load_config_from_file(str(CONFIG_DIR / "cpu_2proc.yaml"))
    assert config.use_cpu is True and config.dynamo_config == {}
    # a documented requirement, not a config key: the command line must export it
    assert "ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu_2proc.yaml" in (
        CONFIG_DIR / "cpu_2proc.yaml"
    ).read_text()


def test_fsdp_config_is_fsdp2_wrapping_every_transformer_layer(tiny_config):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.launch import prepare_multi_gpu_env

    from dilated_vit_mae import DilatedViTMAEForPreTraining
    from dilated_vit_mae.modeling_dilated_vit_mae import DilatedViTMAELayer

    args, _, _ = launcher_args(CONFIG_DIR / "fsdp.yaml")
    env = {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_"))}
    assert env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env):  # the environment each launched process gets
        plugin = FullyShardedDataParallelPlugin()

    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FSDP2's full shard
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.transformer_cls_names_to_wrap == ["DilatedViTMAELayer"]
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # no CPU offload (that is `CPUOffloadPolicy`)
    assert not plugin.activation_checkpointing

    model = DilatedViTMAEForPreTraining(tiny_config)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [module for module in model.modules() if policy(module)]
    expected_layers = tiny_config.num_hidden_layers + tiny_config.decoder_num_hidden_layers
    assert len(wrapped) == expected_layers and all(isinstance(m, DilatedViTMAELayer) for m in wrapped)


def test_deepspeed_config_is_zero2_without_clipping_and_takes_the_scripts_accumulation():
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mixed_precision_from_config = launcher_args(CONFIG_DIR / "deepspeed_zero2.yaml")
    # as `accelerate launch` does before calling the DeepSpeed launcher
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    env = {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}
    # set in the config, this would override run_mae.py's --gradient_accumulation_steps in every process
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()

    assert plugin.zero_stage == 2
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"  # filled from the Accelerator
    # no clipping, as in MAE: accelerate 1.15 leaves the key out (DeepSpeed's default 0.0), 1.16 writes 0.0
    assert plugin.deepspeed_config.get("gradient_clipping", 0.0) == 0.0


PROBE = textwrap.dedent(
    """
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator()
    total = accelerator.reduce(torch.tensor([float(accelerator.process_index)], device=accelerator.device), "sum")
    print(f"RANK {accelerator.process_index} OF {accelerator.num_processes} {accelerator.distributed_type} "
          f"{accelerator.device.type} SUM {total.item():.0f}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group: a gloo group left alive can abort at exit
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("use_cpu_env", [True, False], ids=["with-ACCELERATE_USE_CPU", "without"])
def test_cpu_config_starts_two_gloo_ranks_only_with_the_env_variable(tmp_path, use_cpu_env):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    if use_cpu_env:
        env["ACCELERATE_USE_CPU"] = "true"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG_DIR / "cpu_2proc.yaml")]
    result = subprocess.run(
        [*command, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the two processes share stdout, so their lines may interleave
    lines = sorted(re.findall(r"RANK \d+ OF \d+ \S+ \w+ SUM \d+", result.stdout))
    if use_cpu_env:
        assert lines == [
            "RANK 0 OF 2 DistributedType.MULTI_CPU cpu SUM 1",
            "RANK 1 OF 2 DistributedType.MULTI_CPU cpu SUM 1",
        ]
    else:  # the trap the config file documents: two independent single-process runs
        assert lines == ["RANK 0 OF 1 DistributedType.NO cpu SUM 0"] * 2
