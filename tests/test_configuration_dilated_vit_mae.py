"""Configuration: what is refused (at construction and after `update_from_string`), and what must keep loading."""

import json
import re
from pathlib import Path

import pytest
from transformers import ViTMAEConfig

from dilated_vit_mae import DilatedViTMAEConfig


REPO_ROOT = Path(__file__).resolve().parent.parent

# (overrides of the tiny config, text the message must contain); the field and the refused value are always named
INVALID = [
    (dict(hidden_size=0), "`hidden_size` must be an integer >= 1, got 0"),
    (dict(hidden_size=-32), "`hidden_size` must be an integer >= 1, got -32"),
    (dict(hidden_size=32.0), "`hidden_size` must be an integer >= 1, got 32.0"),
    (dict(num_attention_heads=0), "`num_attention_heads` must be an integer >= 1, got 0"),
    (dict(num_attention_heads=3), "`hidden_size` (32) must be a multiple of `num_attention_heads` (3)"),
    (dict(hidden_size=30, num_attention_heads=3), "multiple of 4"),
    (dict(intermediate_size=0), "`intermediate_size` must be an integer >= 1, got 0"),
    (dict(num_hidden_layers=-1), "`num_hidden_layers` must be an integer >= 0, got -1"),
    (dict(num_channels=0), "`num_channels` must be an integer >= 1, got 0"),
    (dict(hidden_act="gelu_fast_typo"), "`hidden_act` must be one of transformers' activations"),
    (dict(layer_norm_eps=-1), "`layer_norm_eps` must be a number > 0, got -1"),
    (dict(layer_norm_eps=0), "`layer_norm_eps` must be a number > 0, got 0"),
    (dict(hidden_dropout_prob=1.5), "`hidden_dropout_prob` must be in [0, 1], got 1.5"),
    (dict(attention_probs_dropout_prob=-0.1), "`attention_probs_dropout_prob` must be in [0, 1], got -0.1"),
    (dict(initializer_range=-0.02), "`initializer_range` must be a number >= 0, got -0.02"),
    (dict(decoder_hidden_size=0), "`decoder_hidden_size` must be an integer >= 1, got 0"),
    (dict(decoder_num_attention_heads=0), "`decoder_num_attention_heads` must be an integer >= 1, got 0"),
    (dict(decoder_num_attention_heads=3), "`decoder_hidden_size` (32) must be a multiple of `decoder_num_attention_heads` (3)"),
    (dict(decoder_intermediate_size=-1), "`decoder_intermediate_size` must be an integer >= 1, got -1"),
    (dict(decoder_num_hidden_layers=-1), "`decoder_num_hidden_layers` must be an integer >= 0, got -1"),
    (dict(image_size=30), "does not divide `image_size`"),
    (dict(image_size=0), "`image_size` must be positive, got 0"),
    (dict(patch_size=(4, 4, 4)), "pair of ints"),
    (dict(mask_ratio=1.0), "`mask_ratio` must be in [0, 1), got 1.0"),
    (dict(mask_ratio=-0.1), "`mask_ratio` must be in [0, 1), got -0.1"),
    # 64 patches, int(64 * 0.01) = 0 kept; one 32-px patch, int(1 * 0.25) = 0 kept
    (dict(mask_ratio=0.99), "`mask_ratio` 0.99 keeps no patch of the 64"),
    (dict(patch_size=32, dilation_rates=()), "`mask_ratio` 0.75 keeps no patch of the 1"),
    (dict(dilation_rates=(0,)), "`dilation_rates` must all be >= 2"),
    (dict(dilation_rates=(-2,)), "got [-2]"),
    (dict(dilation_rates=(1,)), "rate 1 repeats the dense branch"),
    (dict(dilation_rates=(2, 2)), "must not repeat"),
    (dict(dilation_rates=(3000,)), "`dilation_rates` 3000 with kernel 4 spans 9001 pixels along the height, more than the image (32)"),
    (dict(dilated_kernel_size=(4, 17)), "spans 33 pixels along the width, more than the image (32)"),
    (dict(dilated_kernel_size=1), "cannot be centred on the patch grid"),
    (dict(dilated_kernel_size=0), "`dilated_kernel_size` must be positive, got 0"),
    (dict(dilated_fusion="max"), "`dilated_fusion` must be one of"),
    (dict(dilated_context="hidden"), "`dilated_context` must be one of"),
    (dict(masking_mode="simmim"), "`masking_mode` must be one of"),
    (dict(classifier_pooling="max"), "`classifier_pooling` must be one of"),
    (dict(drop_path_rate=1.0), "`drop_path_rate` must be in [0, 1)"),
    (dict(drop_path_rate=-0.1), "`drop_path_rate` must be in [0, 1)"),
]


@pytest.mark.parametrize("overrides,message", INVALID, ids=[str(o) for o, _ in INVALID])
def test_invalid_configs_are_refused_naming_the_field_and_value(tiny_config_kwargs, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DilatedViTMAEConfig(**{**tiny_config_kwargs, **overrides})
    # scripts change a valid config in place (`update_from_string`), then call the same validation
    config = DilatedViTMAEConfig(**tiny_config_kwargs)
    for name, value in overrides.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        config._validate_dilated_vit_mae()


def test_update_from_string_then_validate_refuses(tiny_config):
    tiny_config.update_from_string("num_attention_heads=0,layer_norm_eps=0.0")
    with pytest.raises(ValueError, match=re.escape("`num_attention_heads` must be an integer >= 1, got 0")):
        tiny_config._validate_dilated_vit_mae()


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (REPO_ROOT / "configs").glob("*/config.json")))
def test_shipped_configs_load(folder):
    config = DilatedViTMAEConfig.from_pretrained(REPO_ROOT / "configs" / folder)
    config._validate_dilated_vit_mae()
    assert config.model_type == "dilated_vit_mae" and config.drop_path_rate == 0.0


# facebook/vit-mae-{base,large,huge} (config.json fields as published on the Hub)
FACEBOOK = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=16),
    "huge": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120, patch_size=14),
}


@pytest.mark.parametrize("size", sorted(FACEBOOK))
def test_facebook_vit_mae_configs_load(tmp_path, size):
    fields = {**ViTMAEConfig(**FACEBOOK[size]).to_dict(), "architectures": ["ViTMAEForPreTraining"]}
    (tmp_path / "config.json").write_text(json.dumps(fields))
    config = DilatedViTMAEConfig.from_pretrained(tmp_path, dilation_rates=())
    assert (config.model_type, config.hidden_size, config.patch_size) == (
        "dilated_vit_mae", FACEBOOK[size]["hidden_size"], FACEBOOK[size]["patch_size"]
    )
    # with the default dilated branch too: rate 2 spans 31 (or 27) pixels of 224
    assert DilatedViTMAEConfig.from_pretrained(tmp_path).dilation_rates == (2,)


@pytest.mark.parametrize(
    "overrides,warns",
    [
        (dict(masking_mode="mask_token", dilation_rates=(2,)), True),
        (dict(masking_mode="mask_token", dilation_rates=(2,), dilated_context="visible"), False),
        (dict(masking_mode="mask_token", dilation_rates=()), False),
        (dict(dilation_rates=(2,)), False),
    ],
)
def test_mask_token_with_full_context_warns_of_self_leakage(tiny_config_kwargs, overrides, warns):
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    with CaptureLogger(logging.get_logger("dilated_vit_mae.configuration_dilated_vit_mae")) as captured:
        DilatedViTMAEConfig(**{**tiny_config_kwargs, **overrides})
    assert ("own (masked) pixels" in captured.out) == warns
