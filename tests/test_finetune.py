"""Tests of `dilated_vit_mae/train/finetune.py`: MAE's layer-wise lr decay, mixup / cutmix against timm's formulas, the
losses, label resolution, warm starts from our and transformers' ViTMAE checkpoints."""

import logging

import datasets
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForImageClassification, DilatedViTMAEForPreTraining
from dilated_vit_mae.train.finetune import (
    MixupCutmix,
    apply_lr_scale,
    as_our_image_processor,
    classification_loss,
    cutmix_box,
    labelled_splits,
    layer_id_for_vit,
    load_classifier,
    param_groups_lrd,
    resolve_labels,
    smooth_one_hot,
)


@pytest.fixture
def classifier(tiny_config_kwargs):
    config = DilatedViTMAEConfig(**tiny_config_kwargs, num_labels=3, classifier_pooling="mean")
    return DilatedViTMAEForImageClassification(config)


# ----------------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# ----------------------------------------------------------------------------------------------------------------------


def test_layer_ids_follow_mae():
    # 2 blocks: num_layers = 3; embeddings 0, block i -> i + 1, everything after the blocks -> 3
    assert layer_id_for_vit("vit.embeddings.cls_token", 3) == 0
    assert layer_id_for_vit("vit.embeddings.patch_embeddings.dilated_projections.0.weight", 3) == 0
    assert layer_id_for_vit("vit.encoder.layer.0.attention.attention.query.weight", 3) == 1
    assert layer_id_for_vit("vit.encoder.layer.1.output.dense.bias", 3) == 2
    assert layer_id_for_vit("vit.layernorm.weight", 3) == 3
    assert layer_id_for_vit("fc_norm.weight", 3) == 3
    assert layer_id_for_vit("classifier.weight", 3) == 3


def test_param_groups_lrd_scales_and_decay(classifier):
    groups = param_groups_lrd(classifier, weight_decay=0.05, layer_decay=0.5)
    scale_of = {name: group["lr_scale"] for group in groups for name in group["param_names"]}
    decay_of = {name: group["weight_decay"] for group in groups for name in group["param_names"]}
    assert scale_of["classifier.weight"] == 1.0
    assert scale_of["vit.encoder.layer.1.intermediate.dense.weight"] == 0.5
    assert scale_of["vit.encoder.layer.0.intermediate.dense.weight"] == 0.25
    assert scale_of["vit.embeddings.patch_embeddings.projection.weight"] == 0.125
    assert scale_of["vit.embeddings.cls_token"] == 0.125
    # no decay on 1-D parameters and the CLS token (MAE fine-tuning's no_weight_decay list); decay on the weights
    assert decay_of["vit.embeddings.cls_token"] == 0.0 and decay_of["classifier.bias"] == 0.0
    assert decay_of["vit.encoder.layer.0.layernorm_before.weight"] == 0.0
    assert decay_of["classifier.weight"] == 0.05 and decay_of["vit.embeddings.patch_embeddings.projection.weight"] == 0.05
    # every trainable parameter exactly once; the frozen position table left out
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert sorted(scale_of) == sorted(trainable) and sum(len(g["params"]) for g in groups) == len(trainable)
    assert "vit.embeddings.position_embeddings" not in scale_of
    assert {g["lr"] for g in apply_lr_scale(groups, 1e-3)} == {1e-3, 5e-4, 2.5e-4, 1.25e-4}
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups_lrd(classifier, weight_decay=0.05, layer_decay=1.5)


@pytest.mark.parametrize("source", ["config", "pretraining_folder", "vit_mae_folder", "classifier_folder"])
def test_fine_tuning_keeps_the_position_table_out_of_the_optimizer(tiny_config_kwargs, tmp_path, source):
    # `run_finetune.py --model_name_or_path` (any folder) must train what `--config_name` trains: not the sin-cos table
    from transformers import AutoModelForImageClassification

    from conftest import vit_mae_random_checkpoint

    head = dict(num_labels=3, classifier_pooling="mean")
    if source == "config":
        model = DilatedViTMAEForImageClassification(DilatedViTMAEConfig(**tiny_config_kwargs, **head))
    elif source == "classifier_folder":
        DilatedViTMAEForImageClassification(DilatedViTMAEConfig(**tiny_config_kwargs, **head)).save_pretrained(tmp_path)
        model = AutoModelForImageClassification.from_pretrained(tmp_path)
    else:
        if source == "pretraining_folder":
            DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**tiny_config_kwargs)).save_pretrained(tmp_path)
        else:
            vit_mae_random_checkpoint(tiny_config_kwargs, tmp_path)
        model = load_classifier(tmp_path, DilatedViTMAEConfig.from_pretrained(tmp_path, **head))
    table = "vit.embeddings.position_embeddings"
    before = model.get_parameter(table).detach().clone()
    groups = param_groups_lrd(model, weight_decay=0.05, layer_decay=0.75)
    grouped = [name for group in groups for name in group.pop("param_names")]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters() if name != table)
    optimizer = torch.optim.AdamW(apply_lr_scale(groups, 1e-2))
    for _ in range(3):
        model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not model.get_parameter(table).requires_grad and model.get_parameter(table).grad is None
    torch.testing.assert_close(model.get_parameter(table), before, rtol=0, atol=0)


def test_layer_decay_one_is_plain_adamw(classifier):
    assert {group["lr_scale"] for group in param_groups_lrd(classifier, 0.05, layer_decay=1.0)} == {1.0}


# ----------------------------------------------------------------------------------------------------------------------
# Mixup / cutmix and the losses
# ----------------------------------------------------------------------------------------------------------------------


def test_mixup_matches_timms_formula():
    pixel_values, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    mixup = MixupCutmix(0.8, 0.0, num_classes=3, task="single_label", label_smoothing=0.1)
    mixed, targets = mixup(pixel_values, labels, np.random.default_rng(0))
    expected_lam = np.random.default_rng(0)
    expected_lam.random()  # the draw deciding whether to mix
    lam = expected_lam.beta(0.8, 0.8)
    torch.testing.assert_close(mixed, pixel_values * lam + pixel_values.flip(0) * (1 - lam))
    one_hot = smooth_one_hot(labels, 3, 0.1)
    torch.testing.assert_close(targets, one_hot * lam + one_hot.flip(0) * (1 - lam))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    assert one_hot[0].tolist() == pytest.approx([1 - 0.1 + 0.1 / 3, 0.1 / 3, 0.1 / 3])


def test_cutmix_pastes_the_reversed_batch_and_corrects_lam():
    pixel_values = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 10, 10).contiguous()
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    mixup = MixupCutmix(0.0, 1.0, num_classes=2, task="multi_label")
    mixed, targets = mixup(pixel_values, labels, np.random.default_rng(3))
    pasted = (mixed[0] == 3.0).float().mean().item()  # image 0 gets pixels from image 3 (the reversed batch)
    assert 0 < pasted < 1 and ((mixed[0] == 0.0) | (mixed[0] == 3.0)).all()
    lam = 1 - pasted
    torch.testing.assert_close(targets, labels.float() * lam + labels.flip(0).float() * (1 - lam))
    assert torch.equal(pixel_values[:, 0, 0, 0], torch.arange(4.0))  # the input is left alone
    (top, bottom, left, right), corrected = cutmix_box((10, 10), 0.75, np.random.default_rng(0))
    assert corrected == pytest.approx(1 - (bottom - top) * (right - left) / 100)


def test_mixup_is_a_function_of_the_generator_and_can_be_off():
    pixel_values, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    mixup = MixupCutmix(0.8, 1.0, num_classes=3, task="single_label")
    first = mixup(pixel_values, labels, np.random.default_rng(7))
    second = mixup(pixel_values, labels, np.random.default_rng(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    never = MixupCutmix(0.8, 1.0, num_classes=3, task="single_label", prob=0.0)
    assert not never.enabled
    mixed, targets = never(pixel_values, labels, np.random.default_rng(7))
    assert mixed is pixel_values and torch.equal(targets, F.one_hot(labels, 3).float())


def test_losses():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    smoothed = classification_loss(logits, labels, "single_label", label_smoothing=0.1)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.1))
    # soft targets: the same number as hard smoothed labels when the targets are the smoothed one-hot vectors
    torch.testing.assert_close(classification_loss(logits, smooth_one_hot(labels, 4, 0.1), "single_label"), smoothed)
    targets = torch.randint(0, 2, (5, 4)).float()
    torch.testing.assert_close(
        classification_loss(logits, targets, "multi_label"), F.binary_cross_entropy_with_logits(logits, targets)
    )


# ----------------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------------


def test_labels_default_to_attributes_then_celeb_id():
    train = datasets.Dataset.from_dict({"Smiling": [True, False], "Male": [False, True], "celeb_id": [7, 3]})
    spec = resolve_labels(train)
    assert spec.task == "multi_label" and spec.columns == ["Male", "Smiling"] and spec.num_labels == 2
    assert spec.problem_type == "multi_label_classification"
    assert spec.encode(train).tolist() == [[0.0, 1.0], [1.0, 0.0]]
    identities = resolve_labels(train.remove_columns(["Smiling", "Male"]))
    assert identities.task == "single_label" and identities.id2label == {0: "3", 1: "7"}
    evaluation = datasets.Dataset.from_dict({"celeb_id": [7, 9]})  # 9 was never seen in training
    assert identities.encode(evaluation).tolist() == [1, -1]
    assert resolve_labels(train, label_column="Smiling").classes == ["False", "True"]


def test_labels_of_an_image_folder_are_its_folder_names():
    features = datasets.Features({"label": datasets.ClassLabel(names=["cat", "dog"])})
    train = datasets.Dataset.from_dict({"label": [1, 0, 1]}, features=features)
    spec = resolve_labels(train)
    assert spec.label2id == {"cat": 0, "dog": 1} and spec.encode(train).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="at least 2"):
        resolve_labels(datasets.Dataset.from_dict({"label": [1, 1]}, features=features))


def test_missing_labels_are_refused_by_name_not_made_a_class():
    # a metadata.csv with empty cells: datasets reads them as None (string and number columns alike)
    train = datasets.Dataset.from_dict({"label": ["cat", None, "dog", "", None, "cat"], "Smiling": [1, 0, float("nan"), 1, 0, 1]})
    with pytest.raises(ValueError) as refused:
        resolve_labels(train, label_column="label")
    message = str(refused.value)
    assert "'train' split" in message and "3 of 6 examples" in message and "'label'" in message
    assert "rows 1, 3, 4" in message and "--on_missing_label skip" in message
    with pytest.raises(ValueError, match=r"1 of 6 examples have no value in 'Smiling' \(rows 2\)"):
        resolve_labels(train, label_columns=["Smiling"])


def test_missing_labels_are_left_out_of_every_split_when_asked(caplog):
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"label": ["cat", None, "dog", "dog"]}),
        "validation": datasets.Dataset.from_dict({"label": ["dog", " ", "cat"]}),
    })  # fmt: skip
    with pytest.raises(ValueError, match="'train' split"):
        labelled_splits(splits, label_column="label")
    with caplog.at_level(logging.WARNING):
        kept, spec = labelled_splits(splits, label_column="label", on_missing_label="skip")
    assert spec.classes == ["cat", "dog"] and "None" not in spec.classes
    assert kept["train"]["label"] == ["cat", "dog", "dog"] and kept["validation"]["label"] == ["dog", "cat"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("left out 1 of 4 'train' examples" in w for w in warnings), warnings
    assert any("left out 1 of 3 'validation' examples" in w for w in warnings), warnings


# ----------------------------------------------------------------------------------------------------------------------
# Warm start
# ----------------------------------------------------------------------------------------------------------------------


def test_warm_start_from_our_pretraining_folder(tiny_config_kwargs, tmp_path):
    pretrained = DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**tiny_config_kwargs, dilation_rates=(2,)))
    with torch.no_grad():
        pretrained.vit.embeddings.patch_embeddings.dilated_projections[0].weight.normal_()
    pretrained.save_pretrained(tmp_path / "pre")
    config = DilatedViTMAEConfig.from_pretrained(tmp_path / "pre", num_labels=5)
    model = load_classifier(tmp_path / "pre", config)
    expected = {k: v for k, v in pretrained.vit.state_dict().items()}
    loaded = model.vit.state_dict()
    assert expected.keys() >= loaded.keys()
    for key in loaded:
        torch.testing.assert_close(loaded[key], expected[key], rtol=0, atol=0, msg=key)
    # another architecture would leave encoder weights random: refused
    deeper = DilatedViTMAEConfig.from_pretrained(tmp_path / "pre", num_labels=5, num_hidden_layers=3)
    with pytest.raises(ValueError, match="encoder weights are missing"):
        load_classifier(tmp_path / "pre", deeper)


def test_warm_start_from_a_transformers_vit_mae_checkpoint(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    vit_mae = ViTMAEForPreTraining(
        ViTMAEConfig(
            image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
            decoder_intermediate_size=64,
        )
    )  # fmt: skip
    vit_mae.save_pretrained(tmp_path / "vit-mae")  # as facebook/vit-mae-* (offline stand-in)
    for rates in ((), (2,)):
        config = DilatedViTMAEConfig.from_pretrained(tmp_path / "vit-mae", num_labels=2, dilation_rates=rates)
        model = load_classifier(tmp_path / "vit-mae", config)
        # transformers writes ViTMAE in the old key layout, which is ours: compare with the file
        reference = safetensors.torch.load_file(str(tmp_path / "vit-mae" / "model.safetensors"))
        for key, value in model.vit.state_dict().items():
            if "dilated_projections" in key:
                assert not value.any(), key  # the new branches start at zero: the model starts as ViTMAE
            else:
                torch.testing.assert_close(value, reference[f"vit.{key}"], rtol=0, atol=0, msg=key)


def test_a_transformers_processor_becomes_ours_with_the_same_output():
    from transformers import ViTImageProcessorPil

    import PIL.Image

    theirs = ViTImageProcessorPil(size={"height": 32, "width": 48}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4])
    ours = as_our_image_processor(theirs)
    assert type(ours).__name__ == "DilatedViTMAEImageProcessor" and ours.crop_size == {"height": 32, "width": 48}
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    expected = theirs(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours(image, return_tensors="pt")["pixel_values"], expected, atol=1e-5, rtol=0)
    assert as_our_image_processor(ours) is ours


# ----------------------------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------------------------


def test_maes_finetuning_recipe_constants():
    from dilated_vit_mae.train.finetune import MAE_FINETUNE_RECIPE

    # main_finetune.py / FINETUNE.md of facebookresearch/mae (layer decay: the ViT-L/H value)
    assert MAE_FINETUNE_RECIPE == {
        "base_learning_rate": 5e-4, "learning_rate": None, "layer_decay": 0.75, "weight_decay": 0.05,
        "drop_path_rate": 0.1, "label_smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
        "rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "crop_scale_min": 0.08, "warmup_epochs": 5.0,
    }  # fmt: skip


def test_the_recipe_follows_the_size_of_the_training_set():
    from dilated_vit_mae.train.finetune import MAE_FINETUNE_RECIPE, SMALL_DATA_MAX_TRAIN, SMALL_DATA_RECIPE, finetune_recipe

    assert SMALL_DATA_MAX_TRAIN == 10_000
    assert finetune_recipe(10_000) == ("mae", MAE_FINETUNE_RECIPE)
    assert finetune_recipe(9_999) == ("small_data", SMALL_DATA_RECIPE)
    assert finetune_recipe(150, "mae") == ("mae", MAE_FINETUNE_RECIPE)
    assert finetune_recipe(10**6, "small_data")[0] == "small_data"
    # the small-data recipe differs from MAE's in the lr (fixed, not the batch rule) and in mixing only
    different = {key for key in MAE_FINETUNE_RECIPE if SMALL_DATA_RECIPE[key] != MAE_FINETUNE_RECIPE[key]}
    assert different == {"base_learning_rate", "learning_rate", "mixup", "cutmix"}
    assert SMALL_DATA_RECIPE["learning_rate"] == 2e-3 == 5e-4 * 1024 / 256 and SMALL_DATA_RECIPE["mixup"] == SMALL_DATA_RECIPE["cutmix"] == 0
    with pytest.raises(ValueError, match="recipe"):
        finetune_recipe(10, "large")


def test_given_values_win_over_the_recipe_and_a_base_lr_over_its_absolute_lr():
    from dilated_vit_mae.train.finetune import MAE_FINETUNE_RECIPE, SMALL_DATA_RECIPE, resolve_recipe

    name, values = resolve_recipe(150, "auto", {})
    assert name == "small_data" and values == SMALL_DATA_RECIPE
    name, values = resolve_recipe(150, "auto", {"layer_decay": 0.65, "random_erasing": 0.0, "rand_augment": "none"})
    assert (values["layer_decay"], values["random_erasing"], values["rand_augment"]) == (0.65, 0.0, None)
    _, values = resolve_recipe(150, "auto", {"base_learning_rate": 1e-3})  # the batch rule instead of lr 2e-3
    assert values["learning_rate"] is None and values["base_learning_rate"] == 1e-3
    _, values = resolve_recipe(10**5, "auto", {"learning_rate": 3e-4, "mixup": None})
    assert values["learning_rate"] == 3e-4 and values["mixup"] == MAE_FINETUNE_RECIPE["mixup"]
    _, values = resolve_recipe(10**5, "mae", {})
    assert values["learning_rate"] is None and values["base_learning_rate"] == 5e-4
