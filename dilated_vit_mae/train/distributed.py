"""
The training engines (DDP, FSDP2, DeepSpeed ZeRO, several nodes, torchrun) as `scripts/run_mae.py` and
`scripts/run_finetune.py` meet them: one `build_accelerator` for both, which refuses a launch that did not get what it
asked for, and the few operations whose plain form breaks under a sharding engine. See docs/distributed.md.

- `build_accelerator`: the `Accelerator`, then a one-line `EngineError` (exit 2 through `run_cli`) when the launch asked
  for FSDP or DeepSpeed (accelerate's `ACCELERATE_USE_*` environment) and accelerate built something else (accelerate
  1.16 enables them only on GPU-type devices and, under `ACCELERATE_USE_CPU=true`, drops them without a word and builds
  DDP), or when the launcher started more processes than accelerate sees (each would train its own copy). DeepSpeed
  on a machine without an accelerator gets `InitProcessGroupKwargs(backend="gloo")`, which it needs there and only
  there (with a DDP or FSDP launch that kwarg leaves every process rank 0 of 1).
- `parameters_are_finite`: every rank checks its own parameters (its shard under FSDP2, where they are DTensors).
- `save_pretrained` / `load_full_state_dict`: the final folder under the model's own class (FSDP2 turns the prepared
  model into torch's dynamic `FSDP<Class>`, whose `save_pretrained` writes torch's files into `auto_map`), and a full
  state dict loaded back into a sharded model.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from .lifecycle import UserError


# what `accelerate launch` exports to every process when a config (or flag) asks for the engine
REQUESTED_ENGINES = {
    "ACCELERATE_USE_FSDP": DistributedType.FSDP,
    "ACCELERATE_USE_DEEPSPEED": DistributedType.DEEPSPEED,
    "ACCELERATE_USE_MEGATRON_LM": DistributedType.MEGATRON_LM,
}
DISTRIBUTED_DOC = "docs/distributed.md"


class EngineError(UserError):
    """The launch and the engine accelerate built disagree; the message says what was asked, what was built, what to do."""


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def requested_engine(environ: Mapping[str, str] | None = None) -> tuple[str, DistributedType] | None:
    """The (environment variable, engine) the launch asked for, or `None` for plain DDP / one process."""
    environ = os.environ if environ is None else environ
    for name, engine in REQUESTED_ENGINES.items():
        if _flag(environ, name):
            return name, engine
    return None


def deepspeed_needs_gloo(environ: Mapping[str, str] | None = None) -> bool:
    """
    DeepSpeed launched on a machine without an accelerator (and without `ACCELERATE_USE_CPU`): DeepSpeed runs on its
    own CPU accelerator with gloo, but accelerate 1.16 resolves no process-group backend there, sees one process of
    one, and each rank would train alone.
    """
    environ = os.environ if environ is None else environ
    asked = requested_engine(environ)
    launched = int(environ.get("LOCAL_RANK", "-1")) != -1
    return (
        launched and asked is not None and asked[1] == DistributedType.DEEPSPEED
        and not _flag(environ, "ACCELERATE_USE_CPU") and not torch.accelerator.is_available()
    )  # fmt: skip


def _engine_name(distributed_type: DistributedType) -> str:
    names = {
        DistributedType.NO: "a single process (NO)", DistributedType.MULTI_CPU: "DDP on CPU processes (MULTI_CPU)",
        DistributedType.MULTI_GPU: "DDP (MULTI_GPU)", DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed",
    }  # fmt: skip
    return names.get(distributed_type, str(getattr(distributed_type, "value", distributed_type)))


def _what_to_do(asked: DistributedType, environ: Mapping[str, str]) -> str:
    on_cpu = _flag(environ, "ACCELERATE_USE_CPU")
    if asked == DistributedType.DEEPSPEED and on_cpu:
        return (
            "unset ACCELERATE_USE_CPU (DeepSpeed runs on CPU with its own CPU accelerator: "
            "configs/accelerate/deepspeed_zero2_cpu.yaml)"
        )
    if asked == DistributedType.FSDP:
        cause = "ACCELERATE_USE_CPU=true" if on_cpu else "no GPU visible"
        return (
            f"accelerate enables FSDP on GPUs only ({cause}): launch on GPUs, or on CPU use DDP "
            "(configs/accelerate/cpu_2proc.yaml) or DeepSpeed (configs/accelerate/deepspeed_zero2_cpu.yaml)"
        )
    return f"launch on the hardware the config is written for (see {DISTRIBUTED_DOC})"


def check_engine(accelerator: Accelerator, environ: Mapping[str, str] | None = None) -> None:
    """Refuse (`EngineError`) a launch whose engine or process count accelerate did not build."""
    environ = os.environ if environ is None else environ
    asked = requested_engine(environ)
    built = accelerator.distributed_type
    if asked is not None and built != asked[1]:
        name, engine = asked
        raise EngineError(
            f"the launch asks for {_engine_name(engine)} ({name}=true) but accelerate {_accelerate_version()} built "
            f"{_engine_name(built)} with {accelerator.num_processes} process(es): {_what_to_do(engine, environ)}; "
            f"see {DISTRIBUTED_DOC}."
        )
    world_size = int(environ.get("WORLD_SIZE", "1"))
    if world_size > accelerator.num_processes:
        hint = "launch with ACCELERATE_USE_CPU=true" if not torch.accelerator.is_available() else "check the launch"
        raise EngineError(
            f"the launcher started {world_size} processes but accelerate sees {accelerator.num_processes}: each would "
            f"train its own copy into the same folder. On CPU, {hint} (see {DISTRIBUTED_DOC})."
        )


def _accelerate_version() -> str:
    import accelerate

    return accelerate.__version__


def build_accelerator(**kwargs: Any) -> Accelerator:
    """
    `Accelerator(**kwargs)` for the engine the launch asked for, checked (`check_engine`) before anything else runs.
    A DeepSpeed launch that asks for a package that is not installed is refused in one line too.
    """
    asked = requested_engine()
    if asked is not None and asked[1] == DistributedType.DEEPSPEED and importlib.util.find_spec("deepspeed") is None:
        raise EngineError(
            f"the launch asks for DeepSpeed ({asked[0]}=true) but deepspeed is not installed: "
            "pip install -e '.[deepspeed]' (it builds from source in about a minute)."
        )
    if deepspeed_needs_gloo():
        kwargs["kwargs_handlers"] = [*kwargs.get("kwargs_handlers", []), InitProcessGroupKwargs(backend="gloo")]
    accelerator = Accelerator(**kwargs)
    check_engine(accelerator)
    return accelerator


def _local(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.to_local() if hasattr(parameter, "to_local") else parameter  # a DTensor's shard on this rank


def parameters_are_finite(accelerator: Accelerator, model: torch.nn.Module) -> bool:
    """Whether every parameter on every rank is finite: each rank checks what it holds (its shard under FSDP2), then
    one all-reduce-like gather. Call it on every process."""
    local = [torch.isfinite(_local(p)).all() for p in model.parameters()]
    finite = torch.stack(local).all() if local else torch.ones((), dtype=torch.bool, device=accelerator.device)
    return accelerator.gather(finite.float().reshape(1)).min().item() == 1


def plain_class(model: torch.nn.Module) -> type:
    """The model's own class: FSDP2's `fully_shard` swaps it for a dynamic `FSDP<Class>` with bases
    `(FSDPModule, Class)` (torch 2.13, `_fsdp_init.py`)."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if isinstance(model, FSDPModule):
        cls = next(base for base in cls.__bases__ if base is not FSDPModule)
    return cls


@contextmanager
def as_plain_class(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model with its own class while the block runs (no forward in it: FSDP's hooks stay registered)."""
    original, plain = type(model), plain_class(model)
    model.__class__ = plain
    try:
        yield model
    finally:
        model.__class__ = original


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike, state_dict: Mapping[str, Any], **kwargs: Any) -> None:
    """
    `model.save_pretrained(folder, state_dict=state_dict, **kwargs)` as a Hub folder of the model's own class (its
    `auto_map` and code files), also from a model prepared under FSDP2. `state_dict` must be the full one
    (`accelerator.get_state_dict(model)`, a collective: every process calls it, the main process saves).
    """
    with as_plain_class(model) as plain:
        plain.save_pretrained(Path(folder), state_dict=dict(state_dict), **kwargs)


def load_full_state_dict(accelerator: Accelerator, model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict into a prepared model: sharded into place under FSDP2 (every process calls
    it with the same dict), into the unwrapped module otherwise."""
    if getattr(accelerator, "is_fsdp2", False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, dict(state_dict), options=StateDictOptions(full_state_dict=True))
        return
    accelerator.unwrap_model(model).load_state_dict(state_dict)
