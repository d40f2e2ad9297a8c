"""Two real gloo ranks (accelerate's `debug_launcher`): every masking mode trains under DDP, ranks stay in sync.

DDP (with accelerate's default `find_unused_parameters=False`) raises "Expected to have finished reduction in the
prior iteration" when a trainable parameter gets no gradient, e.g. a decoder mask token in `masking_mode="mask_token"`
(the encoder already holds every position) or a classifier's unused final norm.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState

from conftest import TINY_CONFIG
from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForImageClassification, DilatedViTMAEForPreTraining


TESTS_DIR = Path(__file__).resolve().parent

CASES = [
    (DilatedViTMAEForPreTraining, dict(masking_mode="drop", dilation_rates=(2,))),
    (DilatedViTMAEForPreTraining, dict(masking_mode="drop", dilation_rates=(2, 3), dilated_context="visible")),
    (DilatedViTMAEForPreTraining, dict(masking_mode="mask_token", dilation_rates=())),
    (DilatedViTMAEForPreTraining, dict(masking_mode="mask_token", dilation_rates=(2,), dilated_context="visible")),
    (DilatedViTMAEForPreTraining, dict(masking_mode="mask_token", dilation_rates=(2,), dilated_fusion="concat")),
    # fine-tuning a mask-token checkpoint with MAE's recipe: global pool + fc_norm, drop path
    (
        DilatedViTMAEForImageClassification,
        dict(masking_mode="mask_token", classifier_pooling="mean", drop_path_rate=0.1, num_labels=3),
    ),
]


def loss_of(model: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
    pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
    if isinstance(model.module if hasattr(model, "module") else model, DilatedViTMAEForImageClassification):
        return model(pixel_values, labels=torch.randint(0, 3, (2,), generator=generator)).loss
    return model(pixel_values).loss


def train_every_case(num_steps: int = 3) -> None:
    """Runs on each rank: a few DDP steps per case, then the ranks' parameters must agree."""
    # a forked rank inherits the parent's accelerate singletons (another test may have made them)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch.set_num_threads(1)
    for model_class, overrides in CASES:
        accelerator = Accelerator(cpu=True)
        assert accelerator.num_processes == 2, accelerator.state
        torch.manual_seed(0)
        model = model_class(DilatedViTMAEConfig(**TINY_CONFIG, **overrides)).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model, optimizer = accelerator.prepare(model, optimizer)
        # each rank its own data and masks
        torch.manual_seed(1 + accelerator.process_index)
        generator = torch.Generator().manual_seed(1 + accelerator.process_index)
        for _ in range(num_steps):
            loss = loss_of(model, generator)
            assert torch.isfinite(loss), (overrides, loss)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        parameters = torch.cat([p.detach().flatten() for p in accelerator.unwrap_model(model).parameters()])
        ranks = accelerator.gather(parameters[None])
        torch.testing.assert_close(ranks[0], ranks[1], rtol=0, atol=1e-6, msg=f"ranks diverged: {overrides}")
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()


def test_every_masking_mode_trains_under_ddp_with_two_ranks():
    # `debug_launcher` forks: from the pytest process, whose thread pools (torch's, onnxruntime's from other tests)
    # are already running, a forked rank can deadlock on an inherited lock. Fork from a fresh interpreter instead.
    code = (
        "import test_ddp_modes as t; from accelerate import debug_launcher; "
        "debug_launcher(t.train_every_case, num_processes=2)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
