"""FSDP2 (`torch.distributed.fsdp.fully_shard`) on two gloo ranks, torch only: the model sharded into the units
accelerate >= 1.14 makes (every `DilatedViTMAELayer`, the input embeddings, the final norm, the root) trains every
masking mode and head as one process does on the two ranks' batches together.

Before the patch embeddings routed every use through `forward`, the masked path called their methods directly and the
first forward failed: "aten.mm.default got mixed torch.Tensor and DTensor" (the unit's weights were never gathered).
The run through accelerate itself is in tests/test_engines.py.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIG


TESTS_DIR = Path(__file__).resolve().parent

CASES = [
    ("pretraining", dict(masking_mode="drop", dilation_rates=(2,))),
    ("pretraining", dict(masking_mode="drop", dilation_rates=(2, 3), dilated_context="visible", dilated_fusion="concat")),
    ("pretraining", dict(masking_mode="mask_token", dilation_rates=(2,), dilated_context="visible")),
    ("pretraining", dict(masking_mode="mask_token", dilation_rates=(2,), dilated_fusion="concat")),
    ("classification", dict(classifier_pooling="mean", num_labels=3)),
]


def shard_like_accelerate(model: torch.nn.Module, mesh) -> list[torch.nn.Module]:
    """`fully_shard` the units `accelerate.utils.fsdp_utils.fsdp2_prepare_model` (1.14-1.16) makes with
    `TRANSFORMER_BASED_WRAP` on `DilatedViTMAELayer`: every layer, then the input embeddings, then the final norm
    (the base model's last `*Norm*` child, not resharded after forward), then the root. Returns the units."""
    from torch.distributed.fsdp import fully_shard

    from dilated_vit_mae.modeling_dilated_vit_mae import DilatedViTMAELayer

    units = [module for module in model.modules() if isinstance(module, DilatedViTMAELayer)]
    for layer in units:
        fully_shard(layer, mesh=mesh)
    embeddings = model.get_input_embeddings()
    fully_shard(embeddings, mesh=mesh)
    base = getattr(model, model.base_model_prefix, model)
    norms = [module for _, module in base.named_children() if "Norm" in type(module).__name__]
    if norms:
        fully_shard(norms[-1], mesh=mesh, reshard_after_forward=False)
    fully_shard(model, mesh=mesh)
    return [*units, embeddings, *norms[-1:], model]


def build(kind: str, overrides: dict) -> torch.nn.Module:
    from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForImageClassification, DilatedViTMAEForPreTraining

    model_class = DilatedViTMAEForPreTraining if kind == "pretraining" else DilatedViTMAEForImageClassification
    torch.manual_seed(0)
    return model_class(DilatedViTMAEConfig(**TINY_CONFIG, **overrides)).train()


def batch(kind: str, rank: int) -> dict:
    generator = torch.Generator().manual_seed(10 + rank)
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)}
    if kind == "pretraining":
        inputs["noise"] = torch.rand(2, 64, generator=generator)
    else:
        inputs["labels"] = torch.randint(0, 3, (2,), generator=generator)
    return inputs


def train_steps(model: torch.nn.Module, batches, num_steps: int = 3) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(num_steps):
        loss = sum(model(**inputs).loss for inputs in batches) / len(batches)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def rank_main(rank: int, port: int) -> None:
    """One rank: each case sharded and trained on this rank's batch; compared with one process on both batches."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    try:
        for kind, overrides in CASES:
            reference = build(kind, overrides)
            expected_losses = train_steps(reference, [batch(kind, 0), batch(kind, 1)])
            model = build(kind, overrides)
            shard_like_accelerate(model, mesh)
            local_losses = train_steps(model, [batch(kind, rank)])
            losses = [None, None]
            dist.all_gather_object(losses, local_losses)
            mean_losses = [sum(pair) / 2 for pair in zip(*losses)]
            assert mean_losses == pytest.approx(expected_losses, rel=1e-5), (overrides, mean_losses, expected_losses)
            for name, parameter in model.named_parameters():
                assert isinstance(parameter, DTensor), name  # sharded, not replicated by accident
                full = parameter.full_tensor()
                torch.testing.assert_close(
                    full, reference.get_parameter(name).detach(), atol=1e-5, rtol=1e-4, msg=f"{overrides}: {name}"
                )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_fully_shard_with_accelerates_units_trains_like_one_process():
    # spawned from a fresh interpreter: forking pytest (with other tests' thread pools running) can deadlock
    code = (
        "import torch.multiprocessing as mp, test_fsdp as t; "
        f"mp.spawn(t.rank_main, args=({free_port()},), nprocs=2)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
