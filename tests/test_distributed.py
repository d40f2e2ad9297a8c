"""`dilated_vit_mae.train.distributed` in one process: which engine a launch asked for, the one-line refusals, DeepSpeed's
gloo on CPU only where it needs it, and a model sharded by FSDP2 saved as a Hub folder of its own class. The engines
themselves, on two processes, are in tests/test_engines.py."""

import json
import socket
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from dilated_vit_mae import DilatedViTMAEForPreTraining
from dilated_vit_mae.train import distributed
from dilated_vit_mae.train.distributed import EngineError, check_engine, deepspeed_needs_gloo, requested_engine


def fake_accelerator(distributed_type: DistributedType, num_processes: int = 2):
    return SimpleNamespace(distributed_type=distributed_type, num_processes=num_processes)


def test_the_requested_engine_comes_from_accelerates_environment():
    assert requested_engine({}) is None
    assert requested_engine({"ACCELERATE_USE_FSDP": "true"}) == ("ACCELERATE_USE_FSDP", DistributedType.FSDP)
    assert requested_engine({"ACCELERATE_USE_DEEPSPEED": "True"})[1] == DistributedType.DEEPSPEED
    assert requested_engine({"ACCELERATE_USE_FSDP": "false", "ACCELERATE_USE_CPU": "true"}) is None


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true", "LOCAL_RANK": "0"}, True),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "LOCAL_RANK": "0", "ACCELERATE_USE_CPU": "true"}, False),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, False),  # not launched: one process, no group
        # with the DDP or FSDP configs the same kwarg would leave every process rank 0 of 1
        ({"LOCAL_RANK": "0"}, False),
        ({"ACCELERATE_USE_FSDP": "true", "LOCAL_RANK": "0"}, False),
    ],
)
def test_deepspeed_gets_gloo_only_when_launched_without_an_accelerator(environ, expected, monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert deepspeed_needs_gloo(environ) is expected
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)  # GPUs: accelerate resolves nccl itself
    assert deepspeed_needs_gloo(environ) is False


@pytest.mark.parametrize(
    "environ,built,phrases",
    [
        (
            {"ACCELERATE_USE_FSDP": "true", "ACCELERATE_USE_CPU": "true"}, DistributedType.MULTI_CPU,
            ["asks for FSDP (ACCELERATE_USE_FSDP=true)", "built DDP on CPU processes (MULTI_CPU)", "GPUs only"],
        ),
        (
            {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_CPU": "true"}, DistributedType.MULTI_CPU,
            ["asks for DeepSpeed", "unset ACCELERATE_USE_CPU", "deepspeed_zero2_cpu.yaml"],
        ),
        ({"ACCELERATE_USE_FSDP": "true"}, DistributedType.NO, ["asks for FSDP", "built a single process (NO)"]),
    ],
)  # fmt: skip
def test_an_engine_accelerate_did_not_build_is_refused_in_one_line(environ, built, phrases):
    with pytest.raises(EngineError) as error:
        check_engine(fake_accelerator(built), environ)
    message = str(error.value)
    assert "\n" not in message and all(phrase in message for phrase in phrases), message


def test_the_engine_asked_for_passes_and_so_does_ddp():
    check_engine(fake_accelerator(DistributedType.FSDP), {"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2"})
    check_engine(fake_accelerator(DistributedType.DEEPSPEED), {"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"})
    check_engine(fake_accelerator(DistributedType.MULTI_CPU), {"WORLD_SIZE": "2"})
    check_engine(fake_accelerator(DistributedType.NO, 1), {})


def test_more_processes_than_accelerate_sees_is_refused(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    with pytest.raises(EngineError, match="started 2 processes but accelerate sees 1.*ACCELERATE_USE_CPU=true"):
        check_engine(fake_accelerator(DistributedType.NO, 1), {"WORLD_SIZE": "2"})


def test_deepspeed_asked_for_but_not_installed_is_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineError, match=r"deepspeed is not installed: pip install -e '\.\[deepspeed\]'"):
        distributed.build_accelerator()


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_model_sharded_by_fsdp2_saves_as_a_hub_folder_of_its_own_class(tiny_config, tmp_path, one_rank_group):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    model = DilatedViTMAEForPreTraining(tiny_config)
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fully_shard(model.get_input_embeddings())
    fully_shard(model)
    assert type(model).__name__ == "FSDPDilatedViTMAEForPreTraining"  # what accelerate.unwrap_model returns

    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    distributed.save_pretrained(model, tmp_path / "out", state_dict)
    assert type(model).__name__ == "FSDPDilatedViTMAEForPreTraining"  # put back
    auto_map = json.loads((tmp_path / "out" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForPreTraining"] == "modeling_dilated_vit_mae.DilatedViTMAEForPreTraining"
    assert (tmp_path / "out" / "modeling_dilated_vit_mae.py").is_file()
    assert not list((tmp_path / "out").glob("_fsdp*.py"))
    loaded = DilatedViTMAEForPreTraining.from_pretrained(tmp_path / "out")
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)

    # a DTensor's local shard is what each rank checks for finiteness
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda tensor: tensor)
    assert distributed.parameters_are_finite(accelerator, model)
    with torch.no_grad():
        model.get_input_embeddings().projection.weight.to_local()[0].fill_(float("nan"))
    assert not distributed.parameters_are_finite(accelerator, model)
