"""
Test only: run a script (`scripts/run_mae.py ARGS`) with accelerate's FSDP code on CPU processes (gloo).

    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \\
        --mixed_precision no tests/fsdp_on_cpu.py scripts/run_mae.py ARGS

Why: accelerate (1.14-1.16) enables FSDP only when `PartialState` reports a GPU-type distributed type; on CPU it builds
`MULTI_CPU` and drops the FSDP plugin (`AcceleratorState.__init__`), so no CPU-only CI could run the code GPU users run.
torch's FSDP2 itself works on a gloo CPU mesh. This relabels `PartialState`'s `MULTI_CPU` as `MULTI_GPU` right after it
is built (device `cpu`, backend gloo unchanged), before `AcceleratorState` reads it; everything after that is
accelerate's own FSDP2 path (`fsdp2_prepare_model`, sharded `save_state` / `load_state`, `get_state_dict`).
Guarded to the accelerate releases whose code this was checked against: anything else stops with exit 3.
"""

import runpy
import sys

import accelerate
from packaging.version import Version


CHECKED = (Version("1.14.0"), Version("1.17.0"))  # [lowest, first unchecked)

if not CHECKED[0] <= Version(accelerate.__version__) < CHECKED[1]:
    print(
        f"tests/fsdp_on_cpu.py was checked against accelerate {CHECKED[0]} to < {CHECKED[1]}, not "
        f"{accelerate.__version__}: re-check how its AcceleratorState gates FSDP, then widen CHECKED.",
        file=sys.stderr,
    )
    raise SystemExit(3)

from accelerate.state import PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402


_partial_state_init = PartialState.__init__


def _init_as_multi_gpu(self, cpu: bool = False, **kwargs):
    _partial_state_init(self, cpu, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.MULTI_GPU  # the shared state: AcceleratorState copies it next


PartialState.__init__ = _init_as_multi_gpu

if __name__ == "__main__":
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
