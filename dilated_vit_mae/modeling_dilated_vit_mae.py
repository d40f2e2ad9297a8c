# Copyright 2026 The dilated-vit-mae authors. Licensed under the Apache License, Version 2.0.
"""PyTorch DilatedViTMAE: a masked autoencoder whose patch tokens are gathered densely and by dilated convolutions.

Self-contained: this file is copied to the Hugging Face Hub as remote code, so it imports only torch, transformers
and its sibling configuration file. The structure and the module/parameter names follow transformers' ViTMAE
(https://github.com/huggingface/transformers/tree/v5.23.0/src/transformers/models/vit_mae) and the MAE reference
(https://github.com/facebookresearch/mae/blob/efb2a8062c206524e35e47d04501ed4f544c0ae8/models_mae.py), so that
`facebook/vit-mae-*` checkpoints load by name.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_dilated_vit_mae import DilatedViTMAEConfig


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class DilatedViTMAEModelOutput(ModelOutput):
    r"""
    Outputs of [`DilatedViTMAEModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Encoder output: the CLS token, then the kept patches in the order of `noise` (or, with
            `masking_mode="mask_token"` or nothing masked and no `noise`, every patch in image order).
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            1 for removed (masked) patches, 0 for kept ones, in image order.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            Position of each image-order patch in the shuffled sequence (`argsort(argsort(noise))`).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Embedding output and the output of every layer, returned with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention probabilities of every layer, returned with `output_attentions=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class DilatedViTMAEDecoderOutput(ModelOutput):
    r"""
    Outputs of [`DilatedViTMAEDecoder`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_height * patch_width * num_channels)`):
            Pixel reconstruction of every patch, in image order.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Decoder input and the output of every decoder layer.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention probabilities of every decoder layer.
    """

    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class DilatedViTMAEForPreTrainingOutput(ModelOutput):
    r"""
    Outputs of [`DilatedViTMAEForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Mean squared error over the masked patches (on per-patch normalised pixels with `norm_pix_loss`).
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_height * patch_width * num_channels)`):
            Pixel reconstruction of every patch, in image order; `unpatchify` turns it into an image.
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            1 for removed (masked) patches, 0 for kept ones.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            Position of each image-order patch in the shuffled sequence.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder hidden states, returned with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Encoder attention probabilities, returned with `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------------------------


def to_2tuple(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """`16` -> `(16, 16)`; `[16, 8]` -> `(16, 8)` (height, width)."""
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def get_1d_sincos_pos_embed(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE's 1D table: `[sin(pos * omega) | cos(pos * omega)]`, `omega_i = 10000^(-i / (embed_dim / 2))`."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device=positions.device) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # (M, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (M, D)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: tuple[int, int], add_cls_token: bool = False) -> torch.Tensor:
    """
    The fixed 2D sin-cos table of MAE for a `(grid_height, grid_width)` patch grid, row-major, shape
    `(grid_height * grid_width [+ 1], embed_dim)`, float32. Like MAE's `get_2d_sincos_pos_embed` (which meshgrids
    `(w, h)`), the first half of each row encodes the patch's column and the second half its row, so that
    `facebook/vit-mae-*` tables are reproduced exactly; the CLS row is all zeros.
    """
    grid_height, grid_width = grid_size
    # computed on the CPU whatever the default device, so that a model built on the meta device can be initialised
    rows, cols = torch.meshgrid(
        torch.arange(grid_height, device="cpu"), torch.arange(grid_width, device="cpu"), indexing="ij"
    )
    table = torch.cat(
        [get_1d_sincos_pos_embed(embed_dim // 2, cols), get_1d_sincos_pos_embed(embed_dim // 2, rows)], dim=1
    )
    if add_cls_token:
        table = torch.cat([table.new_zeros(1, embed_dim), table], dim=0)
    return table.float()


def interpolate_pos_table(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a `(1, 1 + H*W, D)` table (CLS row first) to another patch grid, as DINO/ViTMAE do."""
    if tuple(old_grid) == tuple(new_grid) and not torch.jit.is_tracing():
        return table
    dim = table.shape[-1]
    cls_row, patch_rows = table[:, :1], table[:, 1:]
    patch_rows = patch_rows.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, D, H, W)
    patch_rows = F.interpolate(patch_rows.float(), size=new_grid, mode="bicubic", align_corners=False)
    patch_rows = patch_rows.to(table.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_row, patch_rows], dim=1)


def centred_padding(kernel_size: int, dilation: int, patch_size: int) -> tuple[int, int]:
    """
    (before, after) padding that centres a strided dilated kernel on each patch and keeps the dense grid.

    The kernel spans `(k - 1) * d + 1` pixels, the patch `p`; padding the difference `(k - 1) * d + 1 - p` (which is
    `(d - 1)(k - 1)` when `k == p`) keeps `H / p` outputs. When it is odd, the extra pixel goes after.
    """
    total = (kernel_size - 1) * dilation + 1 - patch_size
    return total // 2, total - total // 2


def random_masking_indices(
    noise: torch.Tensor, len_keep: int
) -> tuple[torch.LongTensor, torch.FloatTensor, torch.LongTensor]:
    """
    ViTMAE's per-sample masking, as indices: keep the `len_keep` patches with the smallest `noise`.

    Args:
        noise (`torch.Tensor` of shape `(batch_size, num_patches)`): one score per patch, e.g. uniform noise.
        len_keep (`int`): number of patches kept.

    Returns:
        `ids_keep` (`(batch_size, len_keep)`, image-order indices of the kept patches in noise order), `mask`
        (`(batch_size, num_patches)`, 0 is keep, 1 is remove, image order) and `ids_restore`
        (`(batch_size, num_patches)`, where each image-order patch sits in the shuffled sequence).
    """
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    # 0 is keep, 1 is remove
    mask = torch.ones(noise.shape, device=noise.device)
    mask[:, :len_keep] = 0
    # unshuffle to get the binary mask in image order
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return ids_keep, mask, ids_restore


def gather_tokens(sequence: torch.Tensor, ids: torch.LongTensor) -> torch.Tensor:
    """`sequence[b, ids[b, i]]` for a `(B, L, D)` sequence and `(B, K)` ids -> `(B, K, D)`."""
    return torch.gather(sequence, dim=1, index=ids.unsqueeze(-1).expand(-1, -1, sequence.shape[-1]))


def patchify(pixel_values: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, L, ph*pw*C)`, layout `b c (h p) (w q) -> b (h w) (p q c)` as ViTMAE."""
    batch_size, num_channels, height, width = pixel_values.shape
    patch_height, patch_width = patch_size
    grid_height, grid_width = height // patch_height, width // patch_width
    patches = pixel_values.reshape(batch_size, num_channels, grid_height, patch_height, grid_width, patch_width)
    patches = patches.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, q, C)
    return patches.reshape(batch_size, grid_height * grid_width, patch_height * patch_width * num_channels)


def unpatchify(
    patches: torch.Tensor, patch_size: tuple[int, int], grid_size: tuple[int, int], num_channels: int
) -> torch.Tensor:
    """Inverse of [`patchify`]: `(B, L, ph*pw*C)` -> `(B, C, H, W)`."""
    batch_size = patches.shape[0]
    (patch_height, patch_width), (grid_height, grid_width) = patch_size, grid_size
    patches = patches.reshape(batch_size, grid_height, grid_width, patch_height, patch_width, num_channels)
    patches = patches.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, q)
    return patches.reshape(batch_size, num_channels, grid_height * patch_height, grid_width * patch_width)


def patch_mean_std(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's mean and standard deviation `(B, L, 1)` over its values, those `norm_pix_loss` normalises the target
    with: MAE's unbiased variance plus eps 1e-6."""
    mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
    return mean, (var + 1.0e-6) ** 0.5


def _needs_init(tensor: torch.Tensor) -> bool:
    # `from_pretrained` flags the tensors it loaded; initialisation must leave those alone.
    return not getattr(tensor, "_is_hf_initialized", False)


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings (with masking)
# ----------------------------------------------------------------------------------------------------------------------


class DilatedViTMAEFusion(nn.Linear):
    """`dilated_fusion="concat"`: the concatenated branch tokens projected back to `hidden_size`."""


class DilatedViTMAEClassifierHead(nn.Linear):
    """The linear classification head of [`DilatedViTMAEForImageClassification`], initialised as MAE's (near zero)."""


class DilatedViTMAEPatchEmbeddings(nn.Module):
    """
    The tokenizer: turns `pixel_values` `(batch_size, num_channels, height, width)` into one token per patch.

    The dense branch is ViTMAE's `projection` (a `patch_size` convolution with stride `patch_size`). Each dilation
    rate adds a branch `dilated_projections[i]`: a convolution with the same stride, kernel `dilated_kernel_size` and
    that dilation, padded so that its receptive field is centred on the patch and its output grid equals the dense
    one. Branches are fused by sum or by concatenation + `fusion` projection.
    """

    def __init__(self, config: DilatedViTMAEConfig):
        super().__init__()
        self.config = config
        self.image_size = to_2tuple(config.image_size)
        self.patch_size = to_2tuple(config.patch_size)
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size
        )

        kernel_size = self.patch_size if config.dilated_kernel_size is None else to_2tuple(config.dilated_kernel_size)
        self.dilated_projections = nn.ModuleList(
            nn.Conv2d(
                config.num_channels, config.hidden_size, kernel_size=kernel_size, stride=self.patch_size, dilation=rate
            )
            for rate in config.dilation_rates
        )
        # F.pad order: (left, right, top, bottom)
        self.dilated_paddings = [
            centred_padding(kernel_size[1], rate, self.patch_size[1]) + centred_padding(kernel_size[0], rate, self.patch_size[0])
            for rate in config.dilation_rates
        ]
        self.fusion = None
        if config.dilated_fusion == "concat" and len(config.dilation_rates) > 0:
            num_branches = 1 + len(config.dilation_rates)
            self.fusion = DilatedViTMAEFusion(num_branches * config.hidden_size, config.hidden_size)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an image of this size; raises if the patch size does not divide it."""
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(
                f"Input image size ({height}*{width}) is not a multiple of the patch size {self.patch_size}; resize "
                "or crop it (the image processor does) to a multiple of the patch size."
            )
        return height // self.patch_size[0], width // self.patch_size[1]

    def dense_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ViTMAE tokens of every patch, `(B, L, D)`."""
        # (B, D, h, w) -> (B, h*w, D)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)

    def dilated_tokens(self, pixel_values: torch.Tensor, ids: torch.LongTensor | None = None) -> list[torch.Tensor]:
        """
        One `(B, L, D)` tensor per dilated branch, or `(B, K, D)` for only the patches `ids` `(B, K)`.

        For a subset, the branch's receptive fields are unfolded and only the kept columns are projected, so that
        MAE's 75% masking also removes 75% of the dilated branches' work.
        """
        tokens = []
        for conv, padding in zip(self.dilated_projections, self.dilated_paddings):
            padded = F.pad(pixel_values, padding)
            if ids is None:
                tokens.append(conv(padded).flatten(2).transpose(1, 2))
                continue
            # (B, C*kh*kw, L): column l holds patch l's dilated receptive field, in conv-weight order (c, i, j)
            columns = F.unfold(padded, kernel_size=conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
            columns = torch.gather(columns, dim=2, index=ids.unsqueeze(1).expand(-1, columns.shape[1], -1))
            tokens.append(F.linear(columns.transpose(1, 2), conv.weight.flatten(1), conv.bias))  # (B, K, D)
        return tokens

    def fuse(self, dense: torch.Tensor, dilated: list[torch.Tensor]) -> torch.Tensor:
        """Merge the dense tokens with the dilated branches' tokens at the same positions."""
        if not dilated:
            return dense
        if self.fusion is not None:
            return self.fusion(torch.cat([dense, *dilated], dim=-1))
        return dense + sum(dilated)

    def forward(
        self,
        pixel_values: torch.Tensor,
        ids_keep: torch.LongTensor | None = None,
        context: torch.Tensor | None = None,
        withheld: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The fused tokens of every patch, `(B, L, D)`, or of only the patches `ids_keep` `(B, K)`, `(B, K, D)`.

        Every caller goes through `forward` rather than `dense_tokens` / `dilated_tokens` / `fuse`: FSDP2 gathers a
        unit's sharded weights around its `forward` only, and accelerate >= 1.14 makes this module (the model's input
        embeddings) an FSDP unit of its own.

        Args:
            context (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`, *optional*):
                The dilated branches' input (default `pixel_values`); `dilated_context="visible"` zeroes masked pixels.
            withheld (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                Patches whose dense token is withheld (zero), so that only their dilated context enters the fusion:
                the masked positions of `masking_mode="mask_token"`.
        """
        context = pixel_values if context is None else context
        dense = self.dense_tokens(pixel_values)  # (B, L, D)
        if ids_keep is not None:
            dense = gather_tokens(dense, ids_keep)  # (B, K, D)
        if withheld is not None:
            dense = dense.masked_fill(withheld.unsqueeze(-1), 0.0)
        return self.fuse(dense, self.dilated_tokens(context, ids_keep))


class DilatedViTMAEEmbeddings(nn.Module):
    """
    CLS token, (dense + dilated) patch tokens, fixed 2D sin-cos position embeddings, and MAE's random masking.

    `use_mask_token=False` builds an encoder for whole images only (the classifier's): without a mask token, which
    would be a parameter without gradient (DDP refuses those).
    """

    def __init__(self, config: DilatedViTMAEConfig, use_mask_token: bool | None = None):
        super().__init__()
        self.config = config
        if use_mask_token is None:
            use_mask_token = config.masking_mode == "mask_token"
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_mask_token else None
        self.patch_embeddings = DilatedViTMAEPatchEmbeddings(config)
        self.image_size = self.patch_embeddings.image_size
        self.patch_size = self.patch_embeddings.patch_size
        # fixed sin-cos embedding (kept frozen after loading too: `freeze_position_tables`)
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, self.patch_embeddings.num_patches + 1, config.hidden_size), requires_grad=False
        )

    def interpolate_pos_encoding(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """The position table resampled (bicubic) to another patch grid, for other resolutions."""
        return interpolate_pos_table(self.position_embeddings, self.patch_embeddings.grid_size, grid_size)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        if _needs_init(self.position_embeddings):
            table = get_2d_sincos_pos_embed(
                self.config.hidden_size, self.patch_embeddings.grid_size, add_cls_token=True
            )
            self.position_embeddings.copy_(table.unsqueeze(0))
        # timm's trunc_normal_(std=.02) is effectively normal_(std=0.02) as the cutoff is too big (2.)
        for token in (self.cls_token, self.mask_token):
            if token is not None and _needs_init(token):
                nn.init.normal_(token, std=self.config.initializer_range)

    def position_table(self, height: int, width: int, interpolate_pos_encoding: bool) -> torch.Tensor:
        """The `(1, 1 + L, D)` position table for an image of this size (CLS row first)."""
        grid_size = self.patch_embeddings.grid_for(height, width)
        if interpolate_pos_encoding:
            return self.interpolate_pos_encoding(grid_size)
        if (height, width) != self.image_size:
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({self.image_size[0]}*{self.image_size[1]}); "
                "resize the images or pass `interpolate_pos_encoding=True`."
            )
        return self.position_embeddings

    def len_keep(self, num_patches: int, mask_ratio: float | None) -> int:
        """How many of `num_patches` patches `mask_ratio` (default `config.mask_ratio`) keeps."""
        mask_ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1), got {mask_ratio!r}.")
        len_keep = int(num_patches * (1 - mask_ratio))
        if len_keep == 0:
            raise ValueError(
                f"`mask_ratio={mask_ratio!r}` keeps no patch of {num_patches}; use a smaller mask ratio or patch size."
            )
        if self.config.masking_mode == "mask_token" and self.mask_token is None and len_keep < num_patches:
            raise ValueError(
                "This encoder was built without a mask token (`use_mask_token=False`, e.g. the classifier's) and "
                f"encodes whole images only, got `mask_ratio={mask_ratio!r}`; pass `mask_ratio=0.0`."
            )
        return len_keep

    def masking(
        self, noise: torch.Tensor | None, batch_size: int, num_patches: int, len_keep: int, device: torch.device
    ) -> tuple[torch.LongTensor | None, torch.FloatTensor, torch.LongTensor]:
        """`ids_keep` (`None`: every patch in image order), `mask` and `ids_restore`, as [`random_masking_indices`]."""
        if noise is None and len_keep == num_patches:
            # nothing to mask: keep the patches in image order rather than shuffling them by random noise
            mask = torch.zeros(batch_size, num_patches, device=device)
            return None, mask, torch.arange(num_patches, device=device).expand(batch_size, -1)
        if noise is None:
            noise = torch.rand(batch_size, num_patches, device=device)
        elif noise.shape != (batch_size, num_patches):
            raise ValueError(
                f"`noise` must have shape (batch_size, num_patches) = {(batch_size, num_patches)}, got "
                f"{tuple(noise.shape)}."
            )
        return random_masking_indices(noise.to(device), len_keep)

    def visible_context(self, pixel_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The input of the dilated branches: under `dilated_context="visible"`, the masked patches' pixels zeroed."""
        if self.config.dilated_context != "visible" or not self.patch_embeddings.dilated_projections:
            return pixel_values
        batch_size, _, height, width = pixel_values.shape
        grid_height, grid_width = self.patch_embeddings.grid_for(height, width)
        # (B, L) -> (B, 1, h, p, w, q) -> (B, 1, H, W)
        keep_pixels = (1 - mask).to(pixel_values.dtype).reshape(batch_size, 1, grid_height, 1, grid_width, 1)
        keep_pixels = keep_pixels.expand(-1, -1, -1, self.patch_size[0], -1, self.patch_size[1])
        return pixel_values * keep_pixels.reshape(batch_size, 1, height, width)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        mask_ratio: float | None = None,
    ) -> tuple[torch.Tensor, torch.FloatTensor, torch.LongTensor]:
        batch_size, num_channels, height, width = pixel_values.shape
        if num_channels != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` have {num_channels} channels but the model expects {self.config.num_channels}; "
                "convert the images (the image processor's `num_channels`) or set `num_channels` in the config."
            )
        patch_embeddings = self.patch_embeddings
        position_embeddings = self.position_table(height, width, interpolate_pos_encoding)
        patch_position_embeddings = position_embeddings[:, 1:, :].expand(batch_size, -1, -1)  # (B, L, D)
        num_patches = patch_position_embeddings.shape[1]

        # masking: num_patches -> len_keep
        len_keep = self.len_keep(num_patches, mask_ratio)
        ids_keep, mask, ids_restore = self.masking(noise, batch_size, num_patches, len_keep, pixel_values.device)

        drop = self.config.masking_mode == "drop"
        if len_keep == num_patches:
            # nothing removed: every branch by convolution (unfolding kept columns only pays when patches are dropped)
            embeddings = patch_embeddings(pixel_values) + patch_position_embeddings
            if drop and ids_keep is not None:
                embeddings = gather_tokens(embeddings, ids_keep)  # in noise order, as ViTMAE
        elif drop:
            # MAE: only the kept patches enter the encoder, in noise order
            context = self.visible_context(pixel_values, mask)
            embeddings = patch_embeddings(pixel_values, ids_keep=ids_keep, context=context)  # (B, K, D)
            embeddings = embeddings + gather_tokens(patch_position_embeddings, ids_keep)
        else:
            # SimMIM-style: every position enters the encoder, in image order; a masked one is the mask token plus
            # its dilated context (dense branch withheld) plus its position
            masked = mask.bool()  # (B, L)
            tokens = patch_embeddings(pixel_values, context=self.visible_context(pixel_values, mask), withheld=masked)
            embeddings = torch.where(masked.unsqueeze(-1), tokens + self.mask_token, tokens) + patch_position_embeddings

        # prepend cls token
        cls_tokens = (self.cls_token + position_embeddings[:, :1, :]).expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        return embeddings, mask, ids_restore


# ----------------------------------------------------------------------------------------------------------------------
# Attention, MLP, layer
# ----------------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling) v on `(B, heads, N, head_dim)` inputs; returns `(B, N, heads, head_dim)` and the weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class DilatedViTMAEQKVProjection(nn.Linear):
    """
    One of the query, key and value projections. MAE fuses them in one `nn.Linear(D, 3 * D)`; kept separate here (as
    ViTMAE, whose parameter names checkpoints use) but initialised with the fused layer's fan, `sqrt(6 / (D + 3 * D))`.
    """


class DilatedViTMAESelfAttention(nn.Module):
    def __init__(self, config: DilatedViTMAEConfig, hidden_size: int, num_attention_heads: int):
        super().__init__()
        self.config = config
        self.num_attention_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout_prob = config.attention_probs_dropout_prob
        self.is_causal = False
        self.query = DilatedViTMAEQKVProjection(hidden_size, hidden_size, bias=config.qkv_bias)
        self.key = DilatedViTMAEQKVProjection(hidden_size, hidden_size, bias=config.qkv_bias)
        self.value = DilatedViTMAEQKVProjection(hidden_size, hidden_size, bias=config.qkv_bias)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_length, _ = hidden_states.shape
        # (B, N, D) -> (B, heads, N, head_dim)
        shape = (batch_size, seq_length, self.num_attention_heads, self.head_dim)
        query = self.query(hidden_states).view(shape).transpose(1, 2)
        key = self.key(hidden_states).view(shape).transpose(1, 2)
        value = self.value(hidden_states).view(shape).transpose(1, 2)

        implementation = self.config._attn_implementation
        attention_interface: Callable = eager_attention_forward
        # fused kernels do not return the probabilities: fall back to eager when they are asked for
        if implementation not in (None, "eager") and not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS[implementation]
        context, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.dropout_prob if self.training else 0.0,
            scaling=self.scaling,
        )
        context = context.reshape(batch_size, seq_length, -1)  # (B, N, heads * head_dim)
        return context, attn_weights if output_attentions else None


class DilatedViTMAESelfOutput(nn.Module):
    """Output projection of the attention; the residual is added in [`DilatedViTMAELayer`]."""

    def __init__(self, config: DilatedViTMAEConfig, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class DilatedViTMAEAttention(nn.Module):
    def __init__(self, config: DilatedViTMAEConfig, hidden_size: int, num_attention_heads: int):
        super().__init__()
        self.attention = DilatedViTMAESelfAttention(config, hidden_size, num_attention_heads)
        self.output = DilatedViTMAESelfOutput(config, hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, attn_weights = self.attention(hidden_states, output_attentions)
        return self.output(context), attn_weights


class DilatedViTMAEIntermediate(nn.Module):
    def __init__(self, config: DilatedViTMAEConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class DilatedViTMAEOutput(nn.Module):
    """Output projection of the MLP; the residual is added in [`DilatedViTMAELayer`] (after drop path)."""

    def __init__(self, config: DilatedViTMAEConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class DilatedViTMAEDropPath(nn.Module):
    """
    Stochastic depth: in training, a residual branch is dropped for whole samples with probability `drop_prob` and
    kept ones are scaled by `1 / (1 - drop_prob)`; the identity in eval mode or at `drop_prob=0`. As timm's `DropPath`
    (https://github.com/huggingface/pytorch-image-models/blob/v0.3.2/timm/models/layers/drop.py), used by MAE.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        # one draw per sample, broadcast over tokens and channels: (B, 1, 1)
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class DilatedViTMAELayer(GradientCheckpointingLayer):
    """A pre-norm transformer block; encoder and decoder share it with their own sizes."""

    def __init__(
        self,
        config: DilatedViTMAEConfig,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        drop_path_prob: float = 0.0,
    ):
        super().__init__()
        self.attention = DilatedViTMAEAttention(config, hidden_size, num_attention_heads)
        self.intermediate = DilatedViTMAEIntermediate(config, hidden_size, intermediate_size)
        self.output = DilatedViTMAEOutput(config, hidden_size, intermediate_size)
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.drop_path = DilatedViTMAEDropPath(drop_path_prob)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # self-attention, residual
        attention_output, attn_weights = self.attention(self.layernorm_before(hidden_states), output_attentions)
        hidden_states = self.drop_path(attention_output) + hidden_states
        # MLP, residual
        mlp_output = self.output(self.intermediate(self.layernorm_after(hidden_states)))
        return self.drop_path(mlp_output) + hidden_states, attn_weights


def run_layers(
    layers: nn.ModuleList, hidden_states: torch.Tensor, output_attentions: bool, output_hidden_states: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
    """Apply `layers`, collecting the input and every layer's output, and the attention weights, on request."""
    all_hidden_states = (hidden_states,) if output_hidden_states else None
    all_attentions = () if output_attentions else None
    for layer in layers:
        hidden_states, attn_weights = layer(hidden_states, output_attentions)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if output_attentions:
            all_attentions += (attn_weights,)
    return hidden_states, all_hidden_states, all_attentions


# ----------------------------------------------------------------------------------------------------------------------
# Encoder, decoder
# ----------------------------------------------------------------------------------------------------------------------


class DilatedViTMAEEncoder(nn.Module):
    def __init__(self, config: DilatedViTMAEConfig):
        super().__init__()
        # stochastic depth rising linearly from 0 to `drop_path_rate` over the layers, as timm / MAE; computed on the
        # CPU whatever the default device, so that the model can be built on the meta device
        drop_path_probs = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layer = nn.ModuleList(
            DilatedViTMAELayer(
                config, config.hidden_size, config.num_attention_heads, config.intermediate_size, drop_path_prob
            )
            for drop_path_prob in drop_path_probs
        )

    def forward(self, hidden_states, output_attentions: bool = False, output_hidden_states: bool = False):
        return run_layers(self.layer, hidden_states, output_attentions, output_hidden_states)


class DilatedViTMAEDecoder(nn.Module):
    """
    MAE's lightweight decoder: re-inserts mask tokens, unshuffles, adds positions and predicts every patch.

    With `masking_mode="mask_token"` the encoder already returns every position in image order, so the decoder has
    no `mask_token` (it would never receive a gradient, which DDP refuses).
    """

    def __init__(self, config: DilatedViTMAEConfig, num_patches: int):
        super().__init__()
        self.config = config
        self.grid_size = (
            to_2tuple(config.image_size)[0] // to_2tuple(config.patch_size)[0],
            to_2tuple(config.image_size)[1] // to_2tuple(config.patch_size)[1],
        )
        patch_height, patch_width = to_2tuple(config.patch_size)
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size, bias=True)
        self.mask_token = (
            nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size)) if config.masking_mode == "drop" else None
        )
        # fixed sin-cos embedding (kept frozen after loading too: `freeze_position_tables`)
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, config.decoder_hidden_size), requires_grad=False
        )
        self.decoder_layers = nn.ModuleList(
            DilatedViTMAELayer(
                config,
                config.decoder_hidden_size,
                config.decoder_num_attention_heads,
                config.decoder_intermediate_size,
            )
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(
            config.decoder_hidden_size, patch_height * patch_width * config.num_channels, bias=True
        )

    @torch.no_grad()
    def initialize_weights(self) -> None:
        if _needs_init(self.decoder_pos_embed):
            table = get_2d_sincos_pos_embed(self.config.decoder_hidden_size, self.grid_size, add_cls_token=True)
            self.decoder_pos_embed.copy_(table.unsqueeze(0))
        if self.mask_token is not None and _needs_init(self.mask_token):
            nn.init.normal_(self.mask_token, std=self.config.initializer_range)

    def forward(
        self,
        hidden_states: torch.Tensor,
        ids_restore: torch.LongTensor,
        grid_size: tuple[int, int] | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> DilatedViTMAEDecoderOutput:
        # embed tokens: (B, 1 + K, D) -> (B, 1 + K, D_dec)
        hidden_states = self.decoder_embed(hidden_states)
        num_patches = ids_restore.shape[1]
        if self.config.masking_mode == "drop":
            # append mask tokens to the kept ones, then unshuffle to image order; also when none was removed (the
            # kept tokens are still in noise order), as ViTMAE does
            mask_tokens = self.mask_token.expand(hidden_states.shape[0], num_patches + 1 - hidden_states.shape[1], -1)
            patch_tokens = torch.cat([hidden_states[:, 1:, :], mask_tokens], dim=1)  # (B, L, D_dec)
            patch_tokens = gather_tokens(patch_tokens, ids_restore)
            hidden_states = torch.cat([hidden_states[:, :1, :], patch_tokens], dim=1)

        # add pos embed
        decoder_pos_embed = interpolate_pos_table(self.decoder_pos_embed, self.grid_size, grid_size or self.grid_size)
        hidden_states = hidden_states + decoder_pos_embed

        hidden_states, all_hidden_states, all_attentions = run_layers(
            self.decoder_layers, hidden_states, output_attentions, output_hidden_states
        )
        hidden_states = self.decoder_norm(hidden_states)
        # predictor projection, without the CLS token
        logits = self.decoder_pred(hidden_states)[:, 1:, :]
        return DilatedViTMAEDecoderOutput(logits=logits, hidden_states=all_hidden_states, attentions=all_attentions)


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


# transformers 5.x saves ViTMAE checkpoints with the decoder blocks under `decoder.decoder_encoder.layer.N` (its
# save-time reversal of `encoder.layer.` -> `layers.` also hits `decoder_layers.`); facebook's checkpoints and this
# model use `decoder.decoder_layers.N`. Renamed on load only.
_VIT_MAE_KEY_MAPPING = {r"decoder\.decoder_encoder\.layer\.": "decoder.decoder_layers."}


_AUTO_MAP = {
    "AutoConfig": "configuration_dilated_vit_mae.DilatedViTMAEConfig",
    "AutoModel": "modeling_dilated_vit_mae.DilatedViTMAEModel",
    "AutoModelForPreTraining": "modeling_dilated_vit_mae.DilatedViTMAEForPreTraining",
    "AutoModelForImageClassification": "modeling_dilated_vit_mae.DilatedViTMAEForImageClassification",
}


class DilatedViTMAEPreTrainedModel(PreTrainedModel):
    """Weight initialisation and checkpoint loading shared by every DilatedViTMAE model."""

    config_class = DilatedViTMAEConfig
    config: DilatedViTMAEConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["DilatedViTMAEEmbeddings", "DilatedViTMAELayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """MAE's initialisation (not ViTMAE's, which leaves the position tables and tokens at zero)."""
        if isinstance(module, DilatedViTMAEFusion):
            # identity on the dense token, zero on the dilated ones: the model starts as ViTMAE
            if _needs_init(module.weight):
                module.weight.zero_()
                module.weight[:, : module.out_features].copy_(
                    torch.eye(module.out_features, dtype=module.weight.dtype, device=module.weight.device)
                )
            if _needs_init(module.bias):
                module.bias.zero_()
        elif isinstance(module, DilatedViTMAEClassifierHead):
            # MAE main_finetune.py: trunc_normal_(head.weight, std=2e-5) and a zero bias, so the logits start at ~0
            if _needs_init(module.weight):
                nn.init.trunc_normal_(module.weight, std=2e-5)
            if _needs_init(module.bias):
                module.bias.zero_()
        elif isinstance(module, nn.Conv2d):
            # a dilated branch fused by sum starts at zero, so that the model starts as ViTMAE; its gradient is not
            # zero (the upstream gradient times the receptive field), so it learns from the first step
            zero = module.dilation != (1, 1) and self.config.dilated_fusion == "sum"
            if _needs_init(module.weight):
                if zero:
                    module.weight.zero_()
                else:
                    # MAE: initialise patch projections like nn.Linear (instead of nn.Conv2d)
                    nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None and _needs_init(module.bias):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            # MAE uses xavier_uniform following the official JAX ViT; q/k/v with the fan of MAE's fused qkv (D, 3D)
            if _needs_init(module.weight):
                if isinstance(module, DilatedViTMAEQKVProjection):
                    bound = (6.0 / (module.in_features + 3 * module.out_features)) ** 0.5
                    nn.init.uniform_(module.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(module.weight)
            if module.bias is not None and _needs_init(module.bias):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            if _needs_init(module.weight):
                nn.init.ones_(module.weight)
            if _needs_init(module.bias):
                nn.init.zeros_(module.bias)
        elif isinstance(module, (DilatedViTMAEEmbeddings, DilatedViTMAEDecoder)):
            module.initialize_weights()

    def post_init(self) -> None:
        super().post_init()
        # transformers merges every sub-model's patterns into its parent's: the encoder's `^decoder\.` would hide a
        # pre-training checkpoint's unexpected decoder keys. Keep this class's own patterns, plus the parameters of
        # the other masking mode (or of pre-training) that this model does not have: those are expected to go unused.
        own = {name for name, _ in self.named_parameters()}
        patterns = set(type(self)._keys_to_ignore_on_load_unexpected or [])
        if not any(name.endswith("embeddings.mask_token") for name in own):
            patterns.add(r"(^|\.)embeddings\.mask_token$")
        if any(name.startswith("decoder.") for name in own) and "decoder.mask_token" not in own:
            patterns.add(r"^decoder\.mask_token$")
        if not any(name.startswith("layernorm.") or name.startswith("vit.layernorm.") for name in own):
            patterns.add(r"(^|\.)layernorm\.(weight|bias)$")
        self._keys_to_ignore_on_load_unexpected = patterns

    def save_pretrained(self, save_directory, *args, **kwargs):
        """[`PreTrainedModel.save_pretrained`], with every Auto class in `auto_map` whichever head is saved."""
        # transformers only writes the saved class's own Auto class; a Hub repository should serve them all
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """[`PreTrainedModel.from_pretrained`], also reading ViTMAE checkpoints written by transformers 5.x."""
        user_key_mapping = kwargs.get("key_mapping")
        kwargs["key_mapping"] = {**_VIT_MAE_KEY_MAPPING, **(user_key_mapping or {})}
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        # save in our own (facebook's) key layout, without reversing the load-time renaming
        loaded._weight_conversions = None
        loaded.freeze_position_tables()
        return model

    def freeze_position_tables(self) -> None:
        """
        Keep MAE's fixed sin-cos position tables (the encoder's and the decoder's) out of training, as MAE does. They
        are built frozen, but transformers' loading re-creates every loaded parameter with `requires_grad=True`;
        `from_pretrained` calls this, so every load path (Auto classes, remote code, ViTMAE checkpoints, fine-tuning)
        gives frozen tables, left out of the optimizer's groups.
        """
        for module in self.modules():
            if isinstance(module, DilatedViTMAEEmbeddings):
                module.position_embeddings.requires_grad_(False)
            elif isinstance(module, DilatedViTMAEDecoder):
                module.decoder_pos_embed.requires_grad_(False)


class DilatedViTMAEModel(DilatedViTMAEPreTrainedModel):
    r"""
    The DilatedViTMAE encoder: (dense + dilated) tokenizer, random masking, transformer, final layer norm.

    Example:

    ```python
    >>> import torch
    >>> from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEModel

    >>> config = DilatedViTMAEConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2,
    ...                              num_attention_heads=4, intermediate_size=64)
    >>> model = DilatedViTMAEModel(config)
    >>> outputs = model(torch.randn(1, 3, 32, 32))
    >>> outputs.last_hidden_state.shape  # CLS + 25% of 64 patches
    torch.Size([1, 17, 32])
    ```"""

    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^classifier\.", r"^fc_norm\."]

    def __init__(
        self, config: DilatedViTMAEConfig, use_mask_token: bool | None = None, add_final_layernorm: bool = True
    ):
        r"""
        use_mask_token (`bool`, *optional*):
            Whether the embeddings own a mask token; defaults to `config.masking_mode == "mask_token"`. `False` gives
            an encoder of whole images only.
        add_final_layernorm (`bool`, *optional*, defaults to `True`):
            Whether the encoder output goes through the final `layernorm` (MAE's global-pool fine-tuning drops it).
        """
        super().__init__(config)
        self.config = config
        self.embeddings = DilatedViTMAEEmbeddings(config, use_mask_token=use_mask_token)
        self.encoder = DilatedViTMAEEncoder(config)
        self.layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if add_final_layernorm else nn.Identity()
        )
        self.post_init()

    def get_input_embeddings(self) -> DilatedViTMAEPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        noise: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        mask_ratio: float | None = None,
        **kwargs,
    ) -> DilatedViTMAEModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images, normalised by [`DilatedViTMAEImageProcessor`].
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                Masking scores; the `len_keep` smallest are kept. Pass it to make masking reproducible.
            output_attentions (`bool`, *optional*):
                Return the attention probabilities of every layer (computed eagerly for that call).
            output_hidden_states (`bool`, *optional*):
                Return the hidden states of every layer.
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Resample the position table for images of another size than `config.image_size`.
            return_dict (`bool`, *optional*):
                Return a [`DilatedViTMAEModelOutput`] instead of a tuple.
            mask_ratio (`float`, *optional*):
                New. Overrides `config.mask_ratio` for this call (`0.0` for whole-image features).
        """
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values`.")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict

        embedding_output, mask, ids_restore = self.embeddings(
            pixel_values, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding, mask_ratio=mask_ratio
        )
        hidden_states, all_hidden_states, all_attentions = self.encoder(
            embedding_output, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        sequence_output = self.layernorm(hidden_states)

        output = DilatedViTMAEModelOutput(
            last_hidden_state=sequence_output,
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


class DilatedViTMAEForPreTraining(DilatedViTMAEPreTrainedModel):
    r"""
    DilatedViTMAE with MAE's decoder, for self-supervised pre-training: the loss is the mean squared error of the
    reconstruction over the masked patches.

    Example:

    ```python
    >>> import torch
    >>> from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining

    >>> config = DilatedViTMAEConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2,
    ...                              num_attention_heads=4, intermediate_size=64, decoder_hidden_size=32,
    ...                              decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
    ...                              decoder_intermediate_size=64)
    >>> model = DilatedViTMAEForPreTraining(config)
    >>> pixel_values = torch.randn(2, 3, 32, 32)
    >>> outputs = model(pixel_values, noise=torch.rand(2, 64, generator=torch.Generator().manual_seed(0)))
    >>> outputs.logits.shape, outputs.mask.sum().item()  # every patch predicted; 2 x 48 masked
    (torch.Size([2, 64, 48]), 96.0)
    ```"""

    def __init__(self, config: DilatedViTMAEConfig):
        super().__init__(config)
        self.config = config
        self.vit = DilatedViTMAEModel(config)
        self.decoder = DilatedViTMAEDecoder(config, num_patches=self.vit.embeddings.patch_embeddings.num_patches)
        self.post_init()

    def get_input_embeddings(self) -> DilatedViTMAEPatchEmbeddings:
        return self.vit.embeddings.patch_embeddings

    def patchify(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images whose height and width are multiples of the patch size.
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Allow another size than `config.image_size`.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_patches, patch_height * patch_width * num_channels)`.
        """
        patch_embeddings = self.vit.embeddings.patch_embeddings
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` have {pixel_values.shape[1]} channels but the model expects "
                f"{self.config.num_channels}."
            )
        patch_embeddings.grid_for(*pixel_values.shape[2:])
        if not interpolate_pos_encoding and tuple(pixel_values.shape[2:]) != patch_embeddings.image_size:
            raise ValueError(
                f"Input image size {tuple(pixel_values.shape[2:])} doesn't match model {patch_embeddings.image_size}; "
                "pass `interpolate_pos_encoding=True` for other sizes."
            )
        return patchify(pixel_values, patch_embeddings.patch_size)

    def unpatchify(
        self, patchified_pixel_values: torch.Tensor, original_image_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """
        Args:
            patchified_pixel_values (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_height * patch_width * num_channels)`):
                Patches, e.g. the `logits`.
            original_image_size (`tuple[int, int]`, *optional*):
                `(height, width)` of the image; defaults to `config.image_size`.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`.
        """
        patch_embeddings = self.vit.embeddings.patch_embeddings
        height, width = original_image_size if original_image_size is not None else patch_embeddings.image_size
        grid_size = patch_embeddings.grid_for(height, width)
        if grid_size[0] * grid_size[1] != patchified_pixel_values.shape[1]:
            raise ValueError(
                f"The number of patches in the patchified pixel values {patchified_pixel_values.shape[1]} does not "
                f"match the number of patches of a {height}*{width} image ({grid_size[0]}*{grid_size[1]})."
            )
        return unpatchify(patchified_pixel_values, patch_embeddings.patch_size, grid_size, self.config.num_channels)

    def logits_to_pixel_values(self, logits: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        The reconstruction as an image normalised like the input.

        Args:
            logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_height * patch_width * num_channels)`):
                The model's prediction of every patch.
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                The input. Used only with `norm_pix_loss`: the logits are then per-patch normalised and are mapped
                back with the mean and variance of the input's own patches, as MAE's visualisation does (so a masked
                patch's reconstruction borrows its true mean and variance).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`; the image processor's
            `postprocess` turns it into images.
        """
        patch_embeddings = self.vit.embeddings.patch_embeddings
        grid_size = patch_embeddings.grid_for(*pixel_values.shape[2:])
        prediction = logits
        if self.config.norm_pix_loss:
            mean, std = patch_mean_std(patchify(pixel_values, patch_embeddings.patch_size))
            prediction = logits * std + mean
        return unpatchify(prediction, patch_embeddings.patch_size, grid_size, self.config.num_channels)

    def mask_to_pixels(self, mask: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """`mask` `(batch_size, num_patches)` -> `(batch_size, 1, height, width)`, 1 on every pixel of a removed patch."""
        patch_embeddings = self.vit.embeddings.patch_embeddings
        height, width = image_size if image_size is not None else patch_embeddings.image_size
        grid_height, grid_width = patch_embeddings.grid_for(height, width)
        patch_height, patch_width = patch_embeddings.patch_size
        pixel_mask = mask.reshape(-1, 1, grid_height, 1, grid_width, 1)
        pixel_mask = pixel_mask.expand(-1, -1, -1, patch_height, -1, patch_width)
        return pixel_mask.reshape(-1, 1, height, width)

    def forward_loss(
        self,
        pixel_values: torch.Tensor,
        logits: torch.Tensor,
        mask: torch.Tensor,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """MSE between `logits` and the (optionally per-patch normalised) target, averaged over masked patches."""
        target = self.patchify(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        if self.config.norm_pix_loss:
            mean, std = patch_mean_std(target)
            target = (target - mean) / std
        loss = (logits - target) ** 2
        loss = loss.mean(dim=-1)  # (B, L), mean loss per patch
        return (loss * mask).sum() / mask.sum()  # mean loss on removed patches

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        noise: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        mask_ratio: float | None = None,
        **kwargs,
    ) -> DilatedViTMAEForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images, normalised by [`DilatedViTMAEImageProcessor`].
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                Masking scores; the same `noise` gives the same mask, loss and logits.
            output_attentions (`bool`, *optional*):
                Return the encoder's attention probabilities.
            output_hidden_states (`bool`, *optional*):
                Return the encoder's hidden states.
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Resample the position tables for images of another size.
            return_dict (`bool`, *optional*):
                Return a [`DilatedViTMAEForPreTrainingOutput`] instead of a tuple.
            mask_ratio (`float`, *optional*):
                New. Overrides `config.mask_ratio` for this call. With no masked patch the loss is NaN (0 / 0), as in
                ViTMAE.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vit(
            pixel_values,
            noise=noise,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            mask_ratio=mask_ratio,
        )
        grid_size = self.vit.embeddings.patch_embeddings.grid_for(*pixel_values.shape[2:])
        decoder_outputs = self.decoder(outputs.last_hidden_state, outputs.ids_restore, grid_size=grid_size)
        logits = decoder_outputs.logits
        loss = self.forward_loss(pixel_values, logits, outputs.mask, interpolate_pos_encoding)

        output = DilatedViTMAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            mask=outputs.mask,
            ids_restore=outputs.ids_restore,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class DilatedViTMAEForImageClassification(DilatedViTMAEPreTrainedModel):
    r"""
    DilatedViTMAE encoder of the whole image (no masking, no mask token) with a linear head, pooled by
    `config.classifier_pooling` as MAE fine-tunes: `"cls"`, the CLS token after the encoder's final `layernorm`;
    `"mean"` (MAE's `global_pool`), the mean of the patch tokens out of the last block, then `fc_norm` (the final
    `layernorm` is not built). Single-label, multi-label (e.g. CelebA's 40 attributes) or regression, chosen by
    `config.problem_type` as in transformers' ViT. `config.drop_path_rate` adds MAE's stochastic depth.

    Example:

    ```python
    >>> import torch
    >>> from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForImageClassification

    >>> config = DilatedViTMAEConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2,
    ...                              num_attention_heads=4, intermediate_size=64, num_labels=40,
    ...                              problem_type="multi_label_classification")
    >>> model = DilatedViTMAEForImageClassification(config)
    >>> outputs = model(torch.randn(2, 3, 32, 32), labels=torch.randint(0, 2, (2, 40)).float())
    >>> outputs.logits.shape
    torch.Size([2, 40])
    ```"""

    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: DilatedViTMAEConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        global_pool = config.classifier_pooling == "mean"
        self.vit = DilatedViTMAEModel(config, use_mask_token=False, add_final_layernorm=not global_pool)
        # MAE main_finetune.py `global_pool`: a LayerNorm of the pooled patch tokens replaces the encoder's final one
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if global_pool else None
        self.classifier = (
            DilatedViTMAEClassifierHead(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images; the whole image is encoded (`mask_ratio` is not applied).
            labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
                Class indices (single-label), 0/1 targets (multi-label) or values (regression).
            output_attentions, output_hidden_states, interpolate_pos_encoding, return_dict:
                As in [`DilatedViTMAEModel`].
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            mask_ratio=0.0,
        )
        sequence_output = outputs.last_hidden_state  # (B, 1 + L, D)
        if self.fc_norm is not None:
            pooled = self.fc_norm(sequence_output[:, 1:, :].mean(dim=1))
        else:
            pooled = sequence_output[:, 0, :]
        logits = self.classifier(pooled)

        loss = None
        if labels is not None:
            loss = self.classification_loss(logits, labels.to(logits.device))
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, binary cross-entropy with logits, or MSE, by `config.problem_type` (inferred if unset)."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


# `save_pretrained` copies this file and its sibling configuration next to the weights (remote code)
DilatedViTMAEModel.register_for_auto_class("AutoModel")
DilatedViTMAEForPreTraining.register_for_auto_class("AutoModelForPreTraining")
DilatedViTMAEForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "DilatedViTMAEForImageClassification",
    "DilatedViTMAEForPreTraining",
    "DilatedViTMAEModel",
    "DilatedViTMAEPreTrainedModel",
]
