# Copyright 2026 The dilated-vit-mae authors. Licensed under the Apache License, Version 2.0.
"""DilatedViTMAE model configuration.

Self-contained: this file is copied to the Hugging Face Hub as remote code, so it imports only transformers
and the standard library.
"""

from typing import Literal

from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import logging


logger = logging.get_logger(__name__)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _as_pair(value: int | list[int] | tuple[int, ...], name: str) -> tuple[int, int]:
    """`16` -> `(16, 16)`; `[16, 8]` -> `(16, 8)` (height, width). Rejects anything else with a clear message."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be an int or a (height, width) pair of ints, got {value!r}.")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"`{name}` must be an int or a (height, width) pair of ints, got {value!r}.")
    if min(pair) <= 0:
        raise ValueError(f"`{name}` must be positive, got {value!r}.")
    return pair


class DilatedViTMAEConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DilatedViTMAEModel`]: a ViTMAE (He et al. 2021) whose patch tokens are gathered both densely
    (one `patch_size` convolution, exactly as ViTMAE) and by dilated convolutions centred on every patch, so that each
    token also sees its surroundings at a reduced resolution. Every field ViTMAE has keeps ViTMAE's name and default;
    with `dilation_rates=()` the model *is* ViTMAE.

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Dimensionality of the encoder layers.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of encoder layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads in each encoder layer.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Dimensionality of the encoder MLP.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the MLPs.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after attention and MLP.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the CLS and mask tokens.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            Epsilon of the layer norms.
        image_size (`int` or `(height, width)`, *optional*, defaults to 224):
            Input resolution. Non-square images are supported.
        patch_size (`int` or `(height, width)`, *optional*, defaults to 16):
            Patch size; must divide `image_size` along both axes.
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels (1 for greyscale).
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query/key/value projections have a bias.
        decoder_num_attention_heads (`int`, *optional*, defaults to 16):
            Attention heads in each decoder layer.
        decoder_hidden_size (`int`, *optional*, defaults to 512):
            Dimensionality of the decoder.
        decoder_num_hidden_layers (`int`, *optional*, defaults to 8):
            Number of decoder layers.
        decoder_intermediate_size (`int`, *optional*, defaults to 2048):
            Dimensionality of the decoder MLP.
        mask_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of patches removed, in `[0, 1)`. `0.0` encodes the whole image (in image order).
        norm_pix_loss (`bool`, *optional*, defaults to `False`):
            Whether the reconstruction target is each patch normalised by its own mean and variance.
        dilation_rates (`tuple[int, ...]`, *optional*, defaults to `(2,)`):
            New. One extra tokenizer branch per rate: a convolution with stride `patch_size`, kernel
            `dilated_kernel_size` and this dilation, centred on each patch. Rates must be integers >= 2 (a rate of 1
            with the patch as kernel would repeat the dense branch). An empty tuple gives plain ViTMAE.
        dilated_kernel_size (`int` or `(height, width)`, *optional*, defaults to `None`):
            New. Kernel size of the dilated branches; `None` means `patch_size`. The dilated kernel must span at least
            the patch (`(kernel - 1) * rate + 1 >= patch_size`) so that it can be centred on it by padding.
        dilated_fusion (`str`, *optional*, defaults to `"sum"`):
            New. How the branches are merged into one token: `"sum"` adds every branch to the dense token (the
            dilated kernels start at zero); `"concat"` concatenates the dense and dilated tokens and projects them
            back to `hidden_size` with a linear layer (which starts as the identity on the dense token).
            Either way a freshly initialised or ViTMAE-warm-started model computes exactly what ViTMAE computes.
        dilated_context (`str`, *optional*, defaults to `"full"`):
            New. What the dilated branches may see. `"full"`: the whole image, masked pixels included (the original
            design: masked pixels leak into visible tokens, about 13% of masked pixels at rate 2 with 224 px, patch 16,
            75% masking). `"visible"`: masked patches' pixels are zeroed before the dilated branches run, so no
            visible token depends on a masked pixel (as Hiera's masked convolution).
        masking_mode (`str`, *optional*, defaults to `"drop"`):
            New. `"drop"`: MAE's asymmetric encoder, masked patches are removed before the encoder. `"mask_token"`:
            SimMIM-style, masked positions enter the encoder as a learned mask token plus their position embedding
            (and, with dilated branches, their dilated context: under `"full"` this includes the masked patch's own
            pixels, so reconstruction becomes nearly trivial: the config warns; use `"visible"` with it). The loss stays on
            masked patches in both modes.
        classifier_pooling (`str`, *optional*, defaults to `"cls"`):
            New. Token pooling of [`DilatedViTMAEForImageClassification`], as MAE's fine-tuning
            (`main_finetune.py`): `"cls"`, the CLS token after the encoder's final `layernorm`; `"mean"` (MAE's
            `global_pool`), the mean of the patch tokens out of the last encoder block followed by a new LayerNorm
            `fc_norm`, with no final encoder `layernorm` (a checkpoint's `vit.layernorm` is then not loaded).
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            New. Stochastic depth of the encoder, in `[0, 1)`: layer `i` of `n` drops its attention and MLP branches
            for whole samples with probability `drop_path_rate * i / (n - 1)` (0 for the first layer, as timm / MAE),
            in training mode only. The decoder has none. MAE fine-tunes with 0.1 (ViT-B); `0.0` (pre-training) keeps
            exact parity with ViTMAE.

    Example:

    ```python
    >>> from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining

    >>> config = DilatedViTMAEConfig(dilation_rates=(2, 3), dilated_context="visible")
    >>> model = DilatedViTMAEForPreTraining(config)
    ```"""

    model_type = "dilated_vit_mae"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int | list[int] | tuple[int, int] = 16
    num_channels: int = 3
    qkv_bias: bool = True
    decoder_num_attention_heads: int = 16
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_intermediate_size: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    # new fields (documented above)
    dilation_rates: list[int] | tuple[int, ...] = (2,)
    dilated_kernel_size: int | list[int] | tuple[int, int] | None = None
    dilated_fusion: Literal["sum", "concat"] = "sum"
    dilated_context: Literal["full", "visible"] = "full"
    masking_mode: Literal["drop", "mask_token"] = "drop"
    classifier_pooling: Literal["cls", "mean"] = "cls"
    drop_path_rate: float | int = 0.0

    def __post_init__(self, **kwargs):
        # A ViTMAE `config.json` (warm start) carries `model_type="vit_mae"`: it must not override ours.
        kwargs.pop("model_type", None)
        self._validate_dilated_vit_mae()
        super().__post_init__(**kwargs)

    def _validate_dilated_vit_mae(self) -> None:
        """Refuse what cannot build a working model, naming the field and its value. Scripts call it again after
        changing a config in place (`update_from_string`)."""
        self._validate_sizes()
        image_size = _as_pair(self.image_size, "image_size")
        patch_size = _as_pair(self.patch_size, "patch_size")
        for axis, image, patch in zip(("height", "width"), image_size, patch_size):
            if image % patch:
                raise ValueError(
                    f"`patch_size` {self.patch_size!r} does not divide `image_size` {self.image_size!r} along the "
                    f"{axis} ({image} % {patch} = {image % patch}); choose an image size that is a multiple of the "
                    "patch size."
                )
        self._validate_masking(image_size, patch_size)
        self._validate_dilation(image_size, patch_size)
        for name, allowed in (
            ("dilated_fusion", ("sum", "concat")),
            ("dilated_context", ("full", "visible")),
            ("masking_mode", ("drop", "mask_token")),
            ("classifier_pooling", ("cls", "mean")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.masking_mode == "mask_token" and self.dilated_context == "full" and self.dilation_rates:
            # allowed (it is the design the ablation measures), but it is rarely what anyone wants to pre-train
            logger.warning(
                'masking_mode="mask_token" with dilated_context="full": every masked position\'s dilated taps read its '
                "own (masked) pixels, so reconstruction is nearly trivial (masked MSE ~9x lower than any other "
                "variant in benchmarks/ablation.py) and the loss no longer measures inpainting. Use "
                'dilated_context="visible" with it, or masking_mode="drop".'
            )

    def _validate_sizes(self) -> None:
        """Widths, depths, heads, activation, epsilons and probabilities of the encoder and decoder."""
        for prefix in ("", "decoder_"):
            for name in ("hidden_size", "num_attention_heads", "intermediate_size"):
                _check_int(prefix + name, getattr(self, prefix + name), minimum=1)
            _check_int(prefix + "num_hidden_layers", getattr(self, prefix + "num_hidden_layers"), minimum=0)
            width, heads = getattr(self, prefix + "hidden_size"), getattr(self, prefix + "num_attention_heads")
            if width % heads:
                raise ValueError(
                    f"`{prefix}hidden_size` ({width}) must be a multiple of `{prefix}num_attention_heads` ({heads})."
                )
            if width % 4:
                # the 2D sin-cos table splits the width into (sin, cos) x (row, column) quarters
                raise ValueError(f"`{prefix}hidden_size` must be a multiple of 4 for the 2D sin-cos table, got {width}.")
        _check_int("num_channels", self.num_channels, minimum=1)
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            raise ValueError(
                f"`hidden_act` must be one of transformers' activations ({', '.join(sorted(ACT2FN))}), got "
                f"{self.hidden_act!r}."
            )
        if not _is_number(self.layer_norm_eps) or not self.layer_norm_eps > 0:
            raise ValueError(
                f"`layer_norm_eps` must be a number > 0, got {self.layer_norm_eps!r}; ViTMAE uses 1e-12, MAE 1e-6."
            )
        if not _is_number(self.initializer_range) or self.initializer_range < 0:
            raise ValueError(f"`initializer_range` must be a number >= 0, got {self.initializer_range!r}.")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not _is_number(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)!r}.")
        if not _is_number(self.drop_path_rate) or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(
                f"`drop_path_rate` must be in [0, 1) (the last encoder layer's stochastic depth), got "
                f"{self.drop_path_rate!r}; MAE fine-tunes with 0.1."
            )

    def _validate_masking(self, image_size: tuple[int, int], patch_size: tuple[int, int]) -> None:
        if not _is_number(self.mask_ratio) or not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1), got {self.mask_ratio!r}.")
        num_patches = (image_size[0] // patch_size[0]) * (image_size[1] // patch_size[1])
        if int(num_patches * (1 - self.mask_ratio)) < 1:
            raise ValueError(
                f"`mask_ratio` {self.mask_ratio!r} keeps no patch of the {num_patches} of a {image_size} image in "
                f"{patch_size} patches; lower `mask_ratio` or `patch_size`."
            )

    def _validate_dilation(self, image_size: tuple[int, int], patch_size: tuple[int, int]) -> None:
        rates = self.dilation_rates
        if isinstance(rates, int) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rates):
            raise ValueError(f"`dilation_rates` must be a list of integers, got {rates!r}.")
        if any(r < 2 for r in rates):
            raise ValueError(
                f"`dilation_rates` must all be >= 2 (rate 1 repeats the dense branch), got {list(rates)!r}; "
                "use `dilation_rates=()` for plain ViTMAE."
            )
        if len(set(rates)) != len(rates):
            raise ValueError(f"`dilation_rates` must not repeat a rate, got {list(rates)!r}.")
        kernel_size = (
            patch_size if self.dilated_kernel_size is None else _as_pair(self.dilated_kernel_size, "dilated_kernel_size")
        )
        for rate in rates:
            for axis, image, kernel, patch in zip(("height", "width"), image_size, kernel_size, patch_size):
                span = (kernel - 1) * rate + 1
                if span < patch:
                    raise ValueError(
                        f"A dilated kernel of size {kernel} at rate {rate} spans {span} pixels along the {axis}, less "
                        f"than the patch ({patch}), so it cannot be centred on the patch grid by padding; use a larger "
                        "`dilated_kernel_size` (or `None`, the patch size)."
                    )
                if span > image:
                    # its padding (and memory) grows with the rate while every extra tap reads zeros
                    raise ValueError(
                        f"`dilation_rates` {rate} with kernel {kernel} spans {span} pixels along the {axis}, more than "
                        f"the image ({image}); use a rate of at most {(image - 1) // (kernel - 1)} or a smaller "
                        "`dilated_kernel_size`."
                    )


# `save_pretrained` copies this file next to `config.json` and lists it in `auto_map` (remote code)
DilatedViTMAEConfig.register_for_auto_class()

__all__ = ["DilatedViTMAEConfig"]
