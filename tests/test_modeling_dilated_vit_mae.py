"""Model tests in the style of transformers' own: a tiny config, shapes, determinism, parity with ViTMAE, leakage."""

import copy

import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from conftest import vit_mae_random_checkpoint
from dilated_vit_mae import (
    DilatedViTMAEConfig,
    DilatedViTMAEForImageClassification,
    DilatedViTMAEForPreTraining,
    DilatedViTMAEModel,
)
from dilated_vit_mae.modeling_dilated_vit_mae import centred_padding, gather_tokens, patchify, random_masking_indices


VARIANTS = {
    "vitmae": dict(dilation_rates=()),
    "sum_full": dict(dilation_rates=(2,)),
    "sum_visible": dict(dilation_rates=(2, 3), dilated_context="visible"),
    "concat_full": dict(dilation_rates=(2, 3), dilated_fusion="concat"),
    "mask_token_full": dict(dilation_rates=(2,), masking_mode="mask_token"),
    "mask_token_visible": dict(dilation_rates=(2,), masking_mode="mask_token", dilated_context="visible"),
}


def make_config(tiny_config_kwargs, **overrides) -> DilatedViTMAEConfig:
    return DilatedViTMAEConfig(**{**tiny_config_kwargs, **overrides})


def randomize_dilated_branches(model: torch.nn.Module, std: float = 0.05) -> None:
    """The dilated kernels start at zero (the model starts as ViTMAE); give them weights to make them matter."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "dilated_projections" in name or "fusion" in name:
                param.normal_(0.0, std)


# ----------------------------------------------------------------------------------------------------------------------
# shapes, outputs, determinism
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pretraining_shapes_and_loss(tiny_config_kwargs, variant):
    config = make_config(tiny_config_kwargs, **VARIANTS[variant])
    model = DilatedViTMAEForPreTraining(config).eval()
    pixel_values = torch.randn(3, 3, 32, 32)
    outputs = model(pixel_values, output_hidden_states=True, output_attentions=True)

    num_patches, len_keep = 64, 16
    seq_length = 1 + (num_patches if config.masking_mode == "mask_token" else len_keep)
    assert outputs.logits.shape == (3, num_patches, 4 * 4 * 3)
    assert outputs.mask.shape == outputs.ids_restore.shape == (3, num_patches)
    assert outputs.mask.sum(dim=1).tolist() == [num_patches - len_keep] * 3
    assert len(outputs.hidden_states) == config.num_hidden_layers + 1
    assert outputs.hidden_states[-1].shape == (3, seq_length, 32)
    assert len(outputs.attentions) == config.num_hidden_layers
    assert outputs.attentions[0].shape == (3, 4, seq_length, seq_length)
    assert torch.isfinite(outputs.loss) and outputs.loss > 0

    as_tuple = model(pixel_values, noise=torch.rand(3, 64), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].ndim == 0 and as_tuple[1].shape == outputs.logits.shape


def test_masking_follows_vit_mae_semantics(tiny_config):
    model = DilatedViTMAEModel(tiny_config).eval()
    noise = torch.rand(4, 64)
    outputs = model(torch.randn(4, 3, 32, 32), noise=noise)
    # the 16 patches with the smallest noise are kept (0), the rest removed (1)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    torch.testing.assert_close(outputs.mask, (ranks >= 16).float())
    torch.testing.assert_close(outputs.ids_restore, ranks)
    assert outputs.last_hidden_state.shape == (4, 17, 32)


def test_same_noise_same_outputs_and_mask_differs_per_sample(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    first, second = model(pixel_values, noise=noise), model(pixel_values, noise=noise)
    torch.testing.assert_close(first.logits, second.logits, rtol=0, atol=0)
    torch.testing.assert_close(first.loss, second.loss, rtol=0, atol=0)
    # per-sample masks
    assert not torch.equal(first.mask[0], first.mask[1])
    third = model(pixel_values, noise=torch.rand(2, 64))
    assert not torch.equal(first.mask, third.mask)


def test_zero_mask_ratio_encodes_every_patch_in_image_order(tiny_config):
    model = DilatedViTMAEModel(tiny_config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    first = model(pixel_values, mask_ratio=0.0)
    second = model(pixel_values, mask_ratio=0.0)
    assert first.last_hidden_state.shape == (2, 65, 32)
    assert first.mask.sum() == 0
    torch.testing.assert_close(first.ids_restore, torch.arange(64).expand(2, -1))
    torch.testing.assert_close(first.last_hidden_state, second.last_hidden_state, rtol=0, atol=0)


def test_loss_is_mse_on_masked_patches(tiny_config_kwargs):
    for norm_pix_loss in (False, True):
        model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, norm_pix_loss=norm_pix_loss)).eval()
        pixel_values = torch.randn(2, 3, 32, 32)
        outputs = model(pixel_values, noise=torch.rand(2, 64))
        target = model.patchify(pixel_values)
        if norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((outputs.logits - target) ** 2).mean(-1)
        expected = per_patch[outputs.mask.bool()].mean()
        torch.testing.assert_close(outputs.loss, expected)


def test_norm_pix_loss_is_maes_to_the_bit(tiny_config_kwargs):
    # MAE's norm_pix target (models_mae.py `forward_loss`, as transformers' ViTMAE writes it): unbiased variance, eps
    # 1e-6. The per-patch statistics are shared by the loss, `logits_to_pixel_values` and the evaluation's scores
    model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, norm_pix_loss=True))
    pixel_values, logits = torch.randn(2, 3, 32, 32), torch.randn(2, 64, 48)
    mask = (torch.rand(2, 64) < 0.75).float()
    target = model.patchify(pixel_values)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    expected = (((logits - target) ** 2).mean(dim=-1) * mask).sum() / mask.sum()
    assert torch.equal(model.forward_loss(pixel_values, logits, mask), expected)


def test_patchify_matches_vit_mae_layout_and_inverts(tiny_config_kwargs):
    model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs))
    reference = ViTMAEForPreTraining(ViTMAEConfig(**tiny_config_kwargs))
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.patchify(pixel_values), reference.patchify(pixel_values), rtol=0, atol=0)
    torch.testing.assert_close(model.unpatchify(model.patchify(pixel_values)), pixel_values, rtol=0, atol=0)
    # non-square image and patch: b c (h p) (w q) -> b (h w) (p q c)
    image = torch.arange(2 * 8 * 12, dtype=torch.float32).reshape(1, 2, 8, 12)
    patches = patchify(image, (4, 6))
    assert patches.shape == (1, 4, 48)
    torch.testing.assert_close(patches[0, 1, :2], image[0, :, 0, 6])  # patch (0, 1), pixel (0, 0), both channels


# ----------------------------------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------------------------------


def mae_sincos_table(embed_dim: int, grid_height: int, grid_width: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py, written out in numpy (meshgrid of (w, h): column first)."""

    def one_dim(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_width), np.arange(grid_height))  # each (h, w): grid[0] = column, grid[1] = row
    table = np.concatenate([one_dim(embed_dim // 2, grid[0]), one_dim(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), table], axis=0)


@pytest.mark.parametrize("image_size,patch_size", [(32, 4), ((32, 48), (4, 8))])
def test_from_scratch_position_tables_are_mae_sincos(tiny_config_kwargs, image_size, patch_size):
    config = make_config(tiny_config_kwargs, image_size=image_size, patch_size=patch_size, decoder_hidden_size=16)
    model = DilatedViTMAEForPreTraining(config)
    grid = model.vit.embeddings.patch_embeddings.grid_size
    encoder_table = model.vit.embeddings.position_embeddings[0].double().numpy()
    decoder_table = model.decoder.decoder_pos_embed[0].double().numpy()
    np.testing.assert_allclose(encoder_table, mae_sincos_table(32, *grid), atol=1e-6)
    np.testing.assert_allclose(decoder_table, mae_sincos_table(16, *grid), atol=1e-6)
    assert not model.vit.embeddings.position_embeddings.requires_grad
    assert not model.decoder.decoder_pos_embed.requires_grad


def test_from_scratch_tokens_and_projections_initialised_as_mae(tiny_config_kwargs):
    config = make_config(tiny_config_kwargs, hidden_size=256, num_attention_heads=4, decoder_hidden_size=256)
    model = DilatedViTMAEForPreTraining(config)
    for token in (model.vit.embeddings.cls_token, model.decoder.mask_token):
        assert abs(token.std().item() - 0.02) < 0.004 and abs(token.mean().item()) < 0.01
    projection = model.vit.embeddings.patch_embeddings.projection.weight
    fan_in, fan_out = projection[0].numel(), projection.shape[0]
    bound = (6 / (fan_in + fan_out)) ** 0.5  # xavier_uniform on the flattened kernel
    assert projection.abs().max() <= bound and projection.abs().max() > 0.9 * bound
    # the dilated kernels (sum fusion) start at zero: the model starts as ViTMAE
    assert all(p.abs().sum() == 0 for p in model.vit.embeddings.patch_embeddings.dilated_projections.parameters())


def test_query_key_value_initialised_as_mae_fused_qkv(tiny_config_kwargs):
    # MAE: xavier_uniform_ on one fused Linear(D, 3D), bound sqrt(6 / (D + 3D)); separate Linears would be sqrt(2) wider
    config = make_config(
        tiny_config_kwargs, hidden_size=384, num_attention_heads=6, num_hidden_layers=1, decoder_hidden_size=64,
        decoder_num_attention_heads=4,
    )
    model = DilatedViTMAEForPreTraining(config)
    for width, attention in ((384, model.vit.encoder.layer[0].attention.attention),
                             (64, model.decoder.decoder_layers[0].attention.attention)):
        bound = (6 / (width + 3 * width)) ** 0.5
        weights = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
        assert weights.abs().max() <= bound and weights.abs().max() > 0.99 * bound
        assert weights.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)  # 0.0361 at D=384 (not 0.0510)
        assert all(layer.bias.abs().sum() == 0 for layer in (attention.query, attention.key, attention.value))
    # the other projections keep their own xavier fan
    dense = model.vit.encoder.layer[0].attention.output.dense.weight
    assert dense.abs().max() > 0.99 * (6 / (384 + 384)) ** 0.5


# ----------------------------------------------------------------------------------------------------------------------
# the dilated tokenizer
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size,rate,patch_size", [(4, 2, 4), (4, 3, 4), (3, 2, 4), (5, 3, 4)])
def test_dilated_receptive_field_is_centred_on_its_patch(tiny_config_kwargs, kernel_size, rate, patch_size):
    config = make_config(tiny_config_kwargs, dilation_rates=(rate,), dilated_kernel_size=kernel_size, num_channels=1)
    patch_embeddings = DilatedViTMAEModel(config).embeddings.patch_embeddings
    conv = patch_embeddings.dilated_projections[0]
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    # token value = sum of the sampled column coordinates (+1, so that padding counts 0); use an interior patch
    columns = torch.arange(1, 33, dtype=torch.float32).expand(1, 1, 32, 32)
    tokens = patch_embeddings.dilated_tokens(columns)[0][0, :, 0].reshape(8, 8)
    ones = patch_embeddings.dilated_tokens(torch.ones(1, 1, 32, 32))[0][0, :, 0].reshape(8, 8)
    row, col = 4, 4
    sampled_centre = (tokens[row, col] / ones[row, col]).item() - 1
    patch_centre = col * patch_size + (patch_size - 1) / 2
    total = (kernel_size - 1) * rate + 1 - patch_size
    # centred exactly, or half a pixel after when the padding is odd
    assert sampled_centre == pytest.approx(patch_centre + (0.5 if total % 2 else 0.0))
    assert ones[row, col] == kernel_size * kernel_size  # every tap inside the image
    assert centred_padding(kernel_size, rate, patch_size) == (total // 2, total - total // 2)


def test_gathered_dilated_tokens_equal_full_convolution(tiny_config_kwargs):
    config = make_config(tiny_config_kwargs, dilation_rates=(2, 3))
    patch_embeddings = DilatedViTMAEModel(config).embeddings.patch_embeddings
    randomize_dilated_branches(patch_embeddings)
    pixel_values = torch.randn(2, 3, 32, 32)
    ids_keep, _, _ = random_masking_indices(torch.rand(2, 64), 16)
    full = patch_embeddings.dilated_tokens(pixel_values)
    gathered = patch_embeddings.dilated_tokens(pixel_values, ids_keep)
    for full_branch, gathered_branch in zip(full, gathered):
        expected = torch.gather(full_branch, 1, ids_keep.unsqueeze(-1).expand(-1, -1, 32))
        torch.testing.assert_close(gathered_branch, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("masking_mode", ["drop", "mask_token"])
def test_full_keep_tokenizes_by_convolution_masking_by_kept_columns(tiny_config_kwargs, monkeypatch, masking_mode):
    # unfold + gather pays only when patches are dropped; with every patch kept a convolution is ~2x faster
    config = make_config(tiny_config_kwargs, dilation_rates=(2, 3), masking_mode=masking_mode)
    embeddings = DilatedViTMAEModel(config).eval().embeddings
    randomize_dilated_branches(embeddings)
    calls = {"conv2d": 0, "unfold": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(torch.nn.functional, name, counting(name, getattr(torch.nn.functional, name)))
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    whole, _, ids_restore = embeddings(pixel_values, noise=noise, mask_ratio=0.0)
    assert calls == {"conv2d": 3, "unfold": 0}  # dense + two dilated branches, all by convolution
    embeddings(pixel_values, noise=noise, mask_ratio=0.75)
    # drop: the dilated branches of the kept patches only; mask token: every position needs its dilated context
    assert calls == ({"conv2d": 4, "unfold": 2} if masking_mode == "drop" else {"conv2d": 6, "unfold": 0})

    # both paths give the same tokens: the kept-columns path over every patch, in the order the model returns them
    patch_embeddings = embeddings.patch_embeddings
    ids = ids_restore.argsort(dim=1) if masking_mode == "drop" else torch.arange(64).expand(2, -1)
    dense = gather_tokens(patch_embeddings.dense_tokens(pixel_values), ids)
    by_columns = patch_embeddings.fuse(dense, patch_embeddings.dilated_tokens(pixel_values, ids))
    by_columns = by_columns + gather_tokens(embeddings.position_embeddings[:, 1:].expand(2, -1, -1), ids)
    torch.testing.assert_close(whole[:, 1:], by_columns, atol=1e-5, rtol=1e-5)


def masked_pixel_perturbation(model, pixel_values, noise):
    """The same images with every masked patch replaced by noise, and the patches' mask."""
    mask = model(pixel_values, noise=noise).mask
    pixel_mask = mask.reshape(-1, 1, 8, 1, 8, 1).expand(-1, 3, -1, 4, -1, 4).reshape(pixel_values.shape)
    return torch.where(pixel_mask.bool(), torch.randn_like(pixel_values) * 3, pixel_values)


@pytest.mark.parametrize("masking_mode", ["drop", "mask_token"])
def test_visible_context_does_not_leak_masked_pixels(tiny_config_kwargs, masking_mode):
    config = make_config(tiny_config_kwargs, dilation_rates=(2, 3), dilated_context="visible", masking_mode=masking_mode)
    model = DilatedViTMAEModel(config).eval()
    randomize_dilated_branches(model)
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    perturbed = masked_pixel_perturbation(model, pixel_values, noise)
    assert not torch.equal(perturbed, pixel_values)
    torch.testing.assert_close(
        model(perturbed, noise=noise).last_hidden_state, model(pixel_values, noise=noise).last_hidden_state
    )


@pytest.mark.parametrize("masking_mode", ["drop", "mask_token"])
def test_full_context_sees_masked_pixels(tiny_config_kwargs, masking_mode):
    config = make_config(tiny_config_kwargs, dilation_rates=(2,), dilated_context="full", masking_mode=masking_mode)
    model = DilatedViTMAEModel(config).eval()
    randomize_dilated_branches(model)
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    perturbed = masked_pixel_perturbation(model, pixel_values, noise)
    difference = model(perturbed, noise=noise).last_hidden_state - model(pixel_values, noise=noise).last_hidden_state
    assert difference.abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------------------------------
# parity with transformers' ViTMAE
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_ratio", [0.75, 0.0])
@pytest.mark.parametrize("variant", ["vitmae", "sum_full", "sum_visible", "concat_full"])
def test_vit_mae_checkpoint_loads_and_reproduces_vit_mae(tiny_config_kwargs, tmp_path, variant, mask_ratio):
    # at mask ratio 0 with `noise`, the kept tokens are every patch in noise order: the decoder must still unshuffle
    reference = vit_mae_random_checkpoint(tiny_config_kwargs, tmp_path, mask_ratio=mask_ratio)
    overrides = VARIANTS[variant]
    model, info = DilatedViTMAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True, **overrides)
    model.eval()
    new = {"vit.embeddings.patch_embeddings.dilated_projections.%d.%s" % (i, p) for i in range(len(overrides["dilation_rates"])) for p in ("weight", "bias")}
    if overrides.get("dilated_fusion") == "concat":
        new |= {"vit.embeddings.patch_embeddings.fusion.weight", "vit.embeddings.patch_embeddings.fusion.bias"}
    assert set(info["missing_keys"]) == new
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == "dilated_vit_mae"

    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    expected, actual = reference(pixel_values, noise=noise), model(pixel_values, noise=noise)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=1e-5)
    # with nothing masked the loss is 0 / 0 in both
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=1e-5, equal_nan=mask_ratio == 0)
    torch.testing.assert_close(actual.mask, expected.mask)
    torch.testing.assert_close(actual.ids_restore, expected.ids_restore)
    # the encoder output is ViTMAE's too: CLS, then the kept patches in noise order (shuffled even when all are kept)
    expected_encoder = reference.vit(pixel_values, noise=noise).last_hidden_state
    torch.testing.assert_close(model.vit(pixel_values, noise=noise).last_hidden_state, expected_encoder, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reconstruction_at_mask_ratio_zero_does_not_depend_on_noise(tiny_config_kwargs, variant):
    model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, **VARIANTS[variant])).eval()
    randomize_dilated_branches(model)
    pixel_values = torch.randn(2, 3, 32, 32)
    image_order = model(pixel_values, mask_ratio=0.0).logits
    for _ in range(2):
        shuffled = model(pixel_values, noise=torch.rand(2, 64), mask_ratio=0.0).logits
        torch.testing.assert_close(shuffled, image_order, atol=1e-5, rtol=1e-5)


def test_facebook_key_layout_loads(tiny_config_kwargs, tmp_path):
    """facebook/vit-mae-* files name the decoder blocks `decoder.decoder_layers.N` (transformers 5 writes another)."""
    reference = vit_mae_random_checkpoint(tiny_config_kwargs, tmp_path)
    state_dict = safetensors.torch.load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): v for k, v in state_dict.items()}
    assert any("decoder.decoder_layers.0.attention.attention.query" in k for k in renamed)
    safetensors.torch.save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, info = DilatedViTMAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True, dilation_rates=())
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixel_values, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 64)
    torch.testing.assert_close(model.eval()(pixel_values, noise=noise).logits, reference(pixel_values, noise=noise).logits)


def test_vit_mae_encoder_loads_into_model(tiny_config_kwargs, tmp_path):
    reference = ViTMAEModel(ViTMAEConfig(**tiny_config_kwargs))
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
    reference.save_pretrained(tmp_path)
    model, info = DilatedViTMAEModel.from_pretrained(tmp_path, output_loading_info=True)
    assert {k.split(".")[-3] for k in info["missing_keys"]} == {"dilated_projections"}
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    torch.testing.assert_close(
        model.eval()(pixel_values, noise=noise).last_hidden_state,
        reference.eval()(pixel_values, noise=noise).last_hidden_state,
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "source,target", [("drop", "mask_token"), ("mask_token", "drop"), ("mask_token", "mask_token")]
)
def test_checkpoints_of_either_masking_mode_load(tiny_config_kwargs, tmp_path, source, target):
    DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, masking_mode=source)).save_pretrained(tmp_path)
    model, info = DilatedViTMAEForPreTraining.from_pretrained(tmp_path, masking_mode=target, output_loading_info=True)
    # the other mode's mask token is not a surprise; this mode's own one is new (freshly initialised) and says so
    new_token = {"drop": "decoder.mask_token", "mask_token": "vit.embeddings.mask_token"}[target]
    assert set(info["missing_keys"]) == (set() if source == target else {new_token})
    assert not info["unexpected_keys"]
    # mask-token mode: the encoder holds every position, so the decoder has no mask token (DDP needs every gradient)
    assert (model.decoder.mask_token is None) == (target == "mask_token")
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32)).loss)


def test_unexpected_decoder_keys_are_reported(tiny_config_kwargs, tmp_path):
    # the encoder ignores a pre-training checkpoint's decoder; the pre-training model itself must not
    DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, decoder_num_hidden_layers=2)).save_pretrained(tmp_path)
    _, info = DilatedViTMAEForPreTraining.from_pretrained(
        tmp_path, decoder_num_hidden_layers=1, output_loading_info=True
    )
    assert info["unexpected_keys"] and all(k.startswith("decoder.decoder_layers.1.") for k in info["unexpected_keys"])


def test_save_load_round_trip_keeps_outputs_and_key_layout(tiny_config_kwargs, tmp_path):
    model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, dilation_rates=(2, 3))).eval()
    randomize_dilated_branches(model)
    model.save_pretrained(tmp_path)
    keys = safetensors.torch.load_file(tmp_path / "model.safetensors").keys()
    assert "vit.encoder.layer.0.attention.attention.query.weight" in keys
    assert "decoder.decoder_layers.0.intermediate.dense.weight" in keys
    loaded, info = DilatedViTMAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.dilation_rates == [2, 3]
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    torch.testing.assert_close(loaded.eval()(pixel_values, noise=noise).logits, model(pixel_values, noise=noise).logits)
    # a second save after loading keeps the same layout
    loaded.save_pretrained(tmp_path / "again")
    assert safetensors.torch.load_file(tmp_path / "again" / "model.safetensors").keys() == keys


# ----------------------------------------------------------------------------------------------------------------------
# meta device, big-model loading, fixed tables, the head's initialisation
# ----------------------------------------------------------------------------------------------------------------------

MODEL_CLASSES = [DilatedViTMAEModel, DilatedViTMAEForPreTraining, DilatedViTMAEForImageClassification]
FIXED_TABLES = ("embeddings.position_embeddings", "decoder.decoder_pos_embed")


def meta_initialised(model_class, config: DilatedViTMAEConfig, seed: int):
    """What FSDP's RAM-efficient loading does on every rank but the first (and transformers' `test_init_weights_*`):
    build on the meta device, materialise with `to_empty`, then `init_weights`."""
    with torch.device("meta"):
        model = model_class(copy.deepcopy(config))
    assert {tensor.device.type for tensor in model.state_dict().values()} == {"meta"}
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(float("nan"))  # whatever `init_weights` leaves alone stays NaN
    torch.manual_seed(seed)
    model.init_weights()
    return model


@pytest.mark.parametrize("variant", ["sum_full", "concat_full", "mask_token_visible"])
@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_built_on_meta_and_initialised_equals_a_normal_build(tiny_config_kwargs, model_class, variant):
    config = make_config(tiny_config_kwargs, num_labels=3, **VARIANTS[variant])
    model = meta_initialised(model_class, config, seed=0).eval()
    meta = model.state_dict()
    assert not [key for key, value in meta.items() if value.isnan().any()]
    assert not [name for name, param in model.named_parameters() if name.endswith(FIXED_TABLES) and param.requires_grad]

    # transformers' meta-device loading (a checkpoint missing every key) initialises the same tensors identically
    torch.manual_seed(0)
    loaded = model_class.from_pretrained(None, config=copy.deepcopy(config), state_dict={}).eval()
    assert meta.keys() == loaded.state_dict().keys()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(meta[key], value, rtol=0, atol=0, msg=key)

    # a normal build with the same seed: what does not depend on the seed (the sin-cos tables, zeros, ones, the
    # fusion's identity) is equal; what is random is drawn by the same rule (in a normal build torch's own layer
    # constructors draw first, so the numbers themselves differ)
    torch.manual_seed(0)
    normal = model_class(copy.deepcopy(config)).state_dict()
    torch.manual_seed(1)
    other_seed = model_class(copy.deepcopy(config)).state_dict()
    assert meta.keys() == normal.keys()
    for key, value in normal.items():
        if torch.equal(value, other_seed[key]):
            torch.testing.assert_close(meta[key], value, rtol=0, atol=0, msg=key)
        else:
            assert meta[key].std().item() == pytest.approx(value.std().item(), rel=0.3), key
    tables = [key for key in meta if key.endswith(FIXED_TABLES)]
    assert tables and all(meta[key].abs().sum() > 0 for key in tables)  # sin-cos, not zeros

    # every tensor is a parameter or a buffer: a forward pass of the materialised model touches no meta tensor
    pixel_values = torch.randn(2, 3, 32, 32)
    kwargs = {} if model_class is DilatedViTMAEForImageClassification else {"noise": torch.rand(2, 64)}
    torch.testing.assert_close(model(pixel_values, **kwargs)[0], loaded(pixel_values, **kwargs)[0], rtol=0, atol=0)


def test_big_model_loading_gives_the_weights_of_a_normal_load_and_fixed_tables(tiny_config_kwargs, tmp_path):
    from transformers import AutoModelForPreTraining

    model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, dilation_rates=(2, 3)))
    randomize_dilated_branches(model)
    model.save_pretrained(tmp_path)
    expected = model.state_dict()
    loads = {
        "from_pretrained": DilatedViTMAEForPreTraining.from_pretrained(tmp_path),
        "device_map": DilatedViTMAEForPreTraining.from_pretrained(tmp_path, device_map="cpu"),
        "auto": AutoModelForPreTraining.from_pretrained(tmp_path, device_map={"": "cpu"}),
    }
    try:  # accelerate's big-model inference, where the train extra is installed
        from accelerate import init_empty_weights, load_checkpoint_and_dispatch
    except ImportError:
        pass
    else:
        with init_empty_weights():
            empty = DilatedViTMAEForPreTraining(model.config)
        loads["init_empty_weights"] = load_checkpoint_and_dispatch(
            empty, str(tmp_path / "model.safetensors"), device_map={"": "cpu"}
        )
    for how, loaded in loads.items():
        state = loaded.state_dict()
        assert state.keys() == expected.keys(), how
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{how}: {key}")
        # MAE's fixed sin-cos tables come back frozen, as from a config (transformers' loader un-freezes them)
        assert [name for name, param in loaded.named_parameters() if not param.requires_grad] == [
            "vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"
        ], how


FSDP_OTHER_RANK_SCRIPT = """
import os
import sys

import torch
import torch.distributed as dist

from dilated_vit_mae import DilatedViTMAEForImageClassification

folder, store, expected_path = sys.argv[1:4]
# what accelerate's `fsdp_cpu_ram_efficient_loading: true` sets; LOCAL_RANK 1 makes this one-process group look like
# a rank that is not its node's first, which transformers leaves to receive rank 0's weights
os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true", LOCAL_RANK="1")
dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
model = DilatedViTMAEForImageClassification.from_pretrained(folder, num_labels=3)
state, expected = model.state_dict(), torch.load(expected_path)
on_meta = sorted(key for key, value in state.items() if value.device.type == "meta")
assert on_meta == ["classifier.bias", "classifier.weight"], on_meta  # the new head: rank 0 broadcasts it
for key, value in expected.items():
    if key not in on_meta:
        assert torch.equal(state[key], value), key
frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
assert frozen == ["vit.embeddings.position_embeddings"], frozen
dist.destroy_process_group()
print("OK")
"""


def test_fsdp_ram_efficient_loading_on_other_ranks_gives_the_normal_weights_and_a_frozen_table(
    tiny_config_kwargs, tmp_path
):
    import subprocess
    import sys

    DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs)).save_pretrained(tmp_path / "pre")
    rank_zero = DilatedViTMAEForImageClassification.from_pretrained(tmp_path / "pre", num_labels=3)
    torch.save(rank_zero.state_dict(), tmp_path / "expected.pt")
    (tmp_path / "other_rank.py").write_text(FSDP_OTHER_RANK_SCRIPT)
    result = subprocess.run(
        [sys.executable, tmp_path / "other_rank.py", tmp_path / "pre", tmp_path / "store", tmp_path / "expected.pt"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("source", ["ours", "vit_mae"])
def test_position_tables_stay_frozen_after_every_load_path(tiny_config_kwargs, tmp_path, source):
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

    if source == "ours":
        DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs)).save_pretrained(tmp_path)
        config = {}
    else:  # a transformers ViTMAE checkpoint (facebook/vit-mae-*), read into our config as the scripts do
        vit_mae_random_checkpoint(tiny_config_kwargs, tmp_path)
        config = {"config": DilatedViTMAEConfig.from_pretrained(tmp_path, num_labels=3)}
    classifier_kwargs = config or {"num_labels": 3}
    classifier_folder = tmp_path / "classifier"
    DilatedViTMAEForImageClassification.from_pretrained(tmp_path, **classifier_kwargs).save_pretrained(classifier_folder)
    loads = [
        DilatedViTMAEForPreTraining.from_pretrained(tmp_path, **config),
        DilatedViTMAEModel.from_pretrained(tmp_path, **config),
        DilatedViTMAEForImageClassification.from_pretrained(tmp_path, **classifier_kwargs),
        DilatedViTMAEForImageClassification.from_pretrained(classifier_folder),
        AutoModelForImageClassification.from_pretrained(classifier_folder),
    ]
    if source == "ours":
        loads += [AutoModelForPreTraining.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)]
    for loaded in loads:
        tables = [param for name, param in loaded.named_parameters() if name.endswith(FIXED_TABLES)]
        assert len(tables) == (2 if isinstance(loaded, DilatedViTMAEForPreTraining) else 1)
        assert not any(table.requires_grad for table in tables), type(loaded).__name__


class LoadReport:
    """Collects what transformers logs while loading (its loggers do not propagate to pytest's caplog)."""

    def __enter__(self):
        import io
        import logging

        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        logging.getLogger("transformers").addHandler(self.handler)
        return self

    def __exit__(self, *exc_info):
        import logging

        logging.getLogger("transformers").removeHandler(self.handler)

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def assert_head_initialised_as_mae(head: torch.nn.Linear) -> None:
    # MAE main_finetune.py: trunc_normal_(head.weight, std=2e-5), zero bias
    assert head.weight.std().item() == pytest.approx(2e-5, rel=0.25)
    assert head.weight.abs().max().item() < 1e-4
    assert not head.bias.any()


def test_classifier_head_starts_as_mae_with_logits_near_zero(tiny_config_kwargs, tmp_path):
    config = make_config(tiny_config_kwargs, hidden_size=256, num_attention_heads=4, num_labels=40)
    model = DilatedViTMAEForImageClassification(config).eval()
    assert_head_initialised_as_mae(model.classifier)
    assert model(torch.randn(4, 3, 32, 32)).logits.abs().max().item() < 1e-2
    # the fine-tuning warm start: the head is missing from a pre-training checkpoint and initialised the same way
    DilatedViTMAEForPreTraining(config).save_pretrained(tmp_path)
    warm = DilatedViTMAEForImageClassification.from_pretrained(tmp_path)
    assert_head_initialised_as_mae(warm.classifier)


def test_ignore_mismatched_sizes_reinitialises_the_head_and_reports_it(tiny_config_kwargs, tmp_path):
    from transformers import AutoModelForImageClassification

    config = make_config(tiny_config_kwargs, hidden_size=256, num_attention_heads=4, num_labels=3)
    saved = DilatedViTMAEForImageClassification(config)
    with torch.no_grad():
        saved.classifier.weight.normal_(0.0, 1.0)  # a trained head, far from the new one's init
    saved.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        DilatedViTMAEForImageClassification.from_pretrained(tmp_path, num_labels=5)
    for load in (DilatedViTMAEForImageClassification.from_pretrained, AutoModelForImageClassification.from_pretrained):
        with LoadReport() as report:
            model, info = load(tmp_path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
        assert {key for key, *_ in info["mismatched_keys"]} == {"classifier.weight", "classifier.bias"}
        assert "Reinit due to size mismatch" in report.text and "classifier.weight" in report.text
        assert model.classifier.out_features == 5
        assert_head_initialised_as_mae(model.classifier)
        state = model.state_dict()
        for key, value in saved.state_dict().items():
            if not key.startswith("classifier."):
                torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


# ----------------------------------------------------------------------------------------------------------------------
# attention backends, training
# ----------------------------------------------------------------------------------------------------------------------


def model_with_attention(config: DilatedViTMAEConfig, implementation: str) -> DilatedViTMAEForPreTraining:
    # `_from_config` writes the implementation into the config it is given: each model needs its own copy
    model = DilatedViTMAEForPreTraining._from_config(copy.deepcopy(config), attn_implementation=implementation)
    assert model.config._attn_implementation == implementation
    return model.eval()


def test_eager_and_sdpa_agree_and_attentions_are_real(tiny_config_kwargs):
    config = make_config(tiny_config_kwargs, dilation_rates=(2,))
    eager = model_with_attention(config, "eager")
    sdpa = model_with_attention(config, "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config._attn_implementation == "eager"
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    torch.testing.assert_close(sdpa(pixel_values, noise=noise).logits, eager(pixel_values, noise=noise).logits, atol=1e-5, rtol=1e-5)
    attentions = sdpa(pixel_values, noise=noise, output_attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, 4, 17))
    torch.testing.assert_close(attentions[0], eager(pixel_values, noise=noise, output_attentions=True).attentions[0])


@pytest.mark.slow
def test_flex_attention_agrees_with_eager(tiny_config):
    # flex attention compiles a kernel (about 20 s on CPU) and has no CPU backward: inference only here
    eager = model_with_attention(tiny_config, "eager")
    flex = model_with_attention(tiny_config, "flex_attention")
    flex.load_state_dict(eager.state_dict())
    assert eager.config._attn_implementation == "eager"
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(flex(pixel_values, noise=noise).logits, eager(pixel_values, noise=noise).logits, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config).train()
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)

    def gradients():
        model.zero_grad()
        model(pixel_values, noise=noise).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    # `activation_checkpointing_enable` is the new name (transformers >= 5.2x) of `gradient_checkpointing_enable`
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    assert model.vit.encoder.layer[0].gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_gradients_finite_and_reach_dilated_branches(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config).train()
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # zero-initialised dilated kernels still receive a gradient, so they learn from the first step
    assert model.vit.embeddings.patch_embeddings.dilated_projections[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["sum_full", "concat_full", "mask_token_visible"])
def test_loss_falls_when_overfitting_one_batch(tiny_config_kwargs, variant):
    model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, **VARIANTS[variant])).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # smooth images (random 8x8 upsampled), so that masked patches are predictable from visible ones
    pixel_values = torch.nn.functional.interpolate(torch.randn(4, 3, 8, 8), size=32, mode="bilinear")
    noise = torch.rand(4, 64)
    losses = []
    for _ in range(40):
        loss = model(pixel_values, noise=noise).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_torch_compile_training_step(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config).train()
    compiled = torch.compile(model, backend="inductor")
    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    eager_loss = model(pixel_values, noise=noise).loss
    compiled_loss = compiled(pixel_values, noise=noise).loss
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert model.vit.embeddings.patch_embeddings.projection.weight.grad is not None


# ----------------------------------------------------------------------------------------------------------------------
# other images, heads, bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_non_square_images_tuple_patches_and_greyscale(tiny_config_kwargs):
    config = make_config(tiny_config_kwargs, image_size=(32, 48), patch_size=(4, 8), num_channels=1, dilation_rates=(2,))
    model = DilatedViTMAEForPreTraining(config).eval()
    pixel_values = torch.randn(2, 1, 32, 48)
    outputs = model(pixel_values)
    assert outputs.logits.shape == (2, 48, 32)
    assert model.unpatchify(outputs.logits).shape == pixel_values.shape


def test_interpolate_pos_encoding_for_other_resolutions(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config).eval()
    pixel_values = torch.randn(1, 3, 48, 40)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pixel_values)
    outputs = model(pixel_values, interpolate_pos_encoding=True)
    assert outputs.logits.shape == (1, 12 * 10, 48) and torch.isfinite(outputs.loss)
    assert model.unpatchify(outputs.logits, original_image_size=(48, 40)).shape == pixel_values.shape
    # at the training resolution, interpolation is the identity
    noise = torch.rand(1, 64)
    same = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(same, noise=noise, interpolate_pos_encoding=True).logits, model(same, noise=noise).logits)


def test_bad_inputs_raise_clear_errors(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config).eval()
    with pytest.raises(ValueError, match="4 channels but the model expects 3"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match=r"doesn't match model \(32\*32\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="`noise` must have shape"):
        model(torch.randn(2, 3, 32, 32), noise=torch.rand(2, 63))
    with pytest.raises(ValueError, match="mask_ratio"):
        model(torch.randn(1, 3, 32, 32), mask_ratio=1.0)
    with pytest.raises(ValueError, match=r"`mask_ratio=0.99` keeps no patch of 64"):
        model(torch.randn(1, 3, 32, 32), mask_ratio=0.99)


@pytest.mark.parametrize(
    "problem_type,labels",
    [
        ("multi_label_classification", torch.randint(0, 2, (3, 40)).float()),
        ("single_label_classification", torch.randint(0, 40, (3,))),
    ],
)
def test_image_classification_losses(tiny_config_kwargs, problem_type, labels):
    config = make_config(tiny_config_kwargs, num_labels=40, problem_type=problem_type, classifier_pooling="mean")
    model = DilatedViTMAEForImageClassification(config).eval()
    pixel_values = torch.randn(3, 3, 32, 32)
    outputs = model(pixel_values, labels=labels)
    assert outputs.logits.shape == (3, 40)
    if problem_type == "multi_label_classification":
        expected = torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, labels)
    else:
        expected = torch.nn.functional.cross_entropy(outputs.logits, labels)
    torch.testing.assert_close(outputs.loss, expected)
    # no masking: the whole image, deterministically
    torch.testing.assert_close(model(pixel_values).logits, outputs.logits, rtol=0, atol=0)
    features = model.vit(pixel_values, mask_ratio=0.0).last_hidden_state  # no final norm with "mean" pooling
    torch.testing.assert_close(model.classifier(model.fc_norm(features[:, 1:].mean(1))), outputs.logits)


@pytest.mark.parametrize("masking_mode", ["drop", "mask_token"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_loads_pretraining_checkpoint(tiny_config_kwargs, tmp_path, pooling, masking_mode):
    DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, masking_mode=masking_mode)).save_pretrained(tmp_path)
    model, info = DilatedViTMAEForImageClassification.from_pretrained(
        tmp_path, num_labels=5, classifier_pooling=pooling, output_loading_info=True
    )
    # MAE's global pool: a new `fc_norm`, and the encoder's final norm (and any mask token) is not used, so not loaded
    new = {"classifier.weight", "classifier.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if pooling == "mean" else set())
    assert set(info["missing_keys"]) == new
    assert not info["unexpected_keys"]
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 5)


def test_mean_pooling_is_mae_global_pool_with_fc_norm(tiny_config_kwargs):
    config = make_config(tiny_config_kwargs, num_labels=3, classifier_pooling="mean")
    model = DilatedViTMAEForImageClassification(config).eval()
    with torch.no_grad():
        model.fc_norm.weight.normal_(1.0, 0.5)
        model.fc_norm.bias.normal_(0.0, 0.5)
    assert "fc_norm.weight" in model.state_dict() and "vit.layernorm.weight" not in model.state_dict()
    encoder = DilatedViTMAEModel(config).eval()
    missing, unexpected = encoder.load_state_dict(model.vit.state_dict(), strict=False)
    assert set(missing) == {"layernorm.weight", "layernorm.bias"} and not unexpected
    pixel_values = torch.randn(2, 3, 32, 32)
    # main_finetune.py global_pool: mean of the patch tokens out of the last block (no final norm), fc_norm, head
    last_block = encoder(pixel_values, mask_ratio=0.0, output_hidden_states=True).hidden_states[-1]
    expected = model.classifier(model.fc_norm(last_block[:, 1:].mean(dim=1)))
    torch.testing.assert_close(model(pixel_values).logits, expected)


@pytest.mark.parametrize("masking_mode", ["drop", "mask_token"])
def test_classifier_encodes_the_whole_image(tiny_config_kwargs, masking_mode):
    config = make_config(tiny_config_kwargs, num_labels=3, mask_ratio=0.75, masking_mode=masking_mode)
    model = DilatedViTMAEForImageClassification(config).train()
    randomize_dilated_branches(model)
    outputs = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2]), output_hidden_states=True)
    assert outputs.hidden_states[-1].shape == (2, 65, 32)  # CLS + all 64 patches
    outputs.loss.backward()
    # every trainable parameter is used (DDP needs it): in particular no mask token is created
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert "vit.embeddings.mask_token" not in model.state_dict()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_exports_with_a_dynamic_batch(tiny_config_kwargs, pooling):
    """`torch.export` (what `torch.onnx.export` runs first) fails on Python control flow over tensor values."""
    config = make_config(tiny_config_kwargs, num_labels=3, classifier_pooling=pooling, dilation_rates=(2, 3))
    model = DilatedViTMAEForImageClassification(config).eval()
    randomize_dilated_branches(model)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(
        model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"pixel_values": {0: batch}}, strict=False
    )
    pixel_values = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(exported.module()(pixel_values).logits, model(pixel_values).logits, atol=1e-5, rtol=1e-5)


def test_classifier_onnx_export_runs_in_onnxruntime(tiny_config_kwargs, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime (with onnx, onnxscript) is an optional extra")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    config = make_config(tiny_config_kwargs, num_labels=3, classifier_pooling="mean", dilation_rates=(2,))
    model = DilatedViTMAEForImageClassification(config).eval()
    randomize_dilated_branches(model)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        model, (torch.randn(2, 3, 32, 32),), tmp_path / "model.onnx", input_names=["pixel_values"],
        dynamic_shapes={"pixel_values": {0: batch}}, dynamo=True, external_data=False,
    )
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    pixel_values = torch.randn(3, 3, 32, 32)
    (logits,) = session.run(None, {"pixel_values": pixel_values.numpy()})[:1]
    torch.testing.assert_close(torch.from_numpy(logits), model(pixel_values).logits, atol=1e-4, rtol=1e-4)


def test_drop_path_rates_rise_linearly_over_the_encoder_only(tiny_config_kwargs):
    model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, num_hidden_layers=3, drop_path_rate=0.2))
    rates = [layer.drop_path.drop_prob for layer in model.vit.encoder.layer]
    assert rates == pytest.approx([0.0, 0.1, 0.2])  # timm / MAE: linspace(0, drop_path_rate, depth)
    assert all(layer.drop_path.drop_prob == 0.0 for layer in model.decoder.decoder_layers)


def test_drop_path_drops_whole_samples_in_training_only(tiny_config_kwargs):
    from dilated_vit_mae.modeling_dilated_vit_mae import DilatedViTMAEDropPath

    drop_path = DilatedViTMAEDropPath(0.25).train()
    out = drop_path(torch.ones(4000, 3, 2))
    per_sample = out.reshape(4000, -1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # kept samples rescaled by 1/keep
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(drop_path.eval()(torch.ones(8, 3)), torch.ones(8, 3))

    config = make_config(tiny_config_kwargs, num_labels=3, drop_path_rate=0.5)
    model = DilatedViTMAEForImageClassification(config)
    plain = DilatedViTMAEForImageClassification(make_config(tiny_config_kwargs, num_labels=3))
    plain.load_state_dict(model.state_dict())
    pixel_values = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(model.eval()(pixel_values).logits, plain.eval()(pixel_values).logits, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(pixel_values).logits, model(pixel_values).logits)
    plain.train()  # without drop path (and dropout 0) training mode is deterministic
    torch.testing.assert_close(plain(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=0)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_logits_to_pixel_values_inverts_the_target(tiny_config_kwargs, norm_pix_loss):
    model = DilatedViTMAEForPreTraining(make_config(tiny_config_kwargs, norm_pix_loss=norm_pix_loss))
    pixel_values = torch.randn(2, 3, 32, 32)
    target = model.patchify(pixel_values)
    if norm_pix_loss:  # the model's target space
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    torch.testing.assert_close(model.logits_to_pixel_values(target, pixel_values), pixel_values, atol=1e-4, rtol=1e-4)


def test_mask_to_pixels_marks_the_removed_patches(tiny_config):
    model = DilatedViTMAEForPreTraining(tiny_config)
    mask = torch.zeros(1, 64)
    mask[0, 9] = 1  # row 1, column 1 of the 8 x 8 grid
    pixel_mask = model.mask_to_pixels(mask)
    assert pixel_mask.shape == (1, 1, 32, 32) and pixel_mask.sum() == 16
    assert pixel_mask[0, 0, 4:8, 4:8].eq(1).all()
