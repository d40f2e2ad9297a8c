"""Shared fixtures: a tiny configuration (image 32, patch 4, hidden 32, 2 layers) so the suite runs on two CPU cores."""

import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

TINY_CONFIG = dict(
    image_size=32,
    patch_size=4,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=64,
)


@pytest.fixture
def tiny_config_kwargs() -> dict:
    return dict(TINY_CONFIG)


@pytest.fixture
def tiny_config(tiny_config_kwargs):
    from dilated_vit_mae import DilatedViTMAEConfig

    return DilatedViTMAEConfig(**tiny_config_kwargs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
