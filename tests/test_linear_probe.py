"""Tests of `dilated_vit_mae/evaluation/probe.py` and `scripts/linear_probe.py`: the linear classifier on separable data, scores
against a hand computation, the script end to end on the shipped CelebA sample with our encoder and with a
transformers ViTMAE checkpoint, the feature cache, and sharded extraction over two processes."""

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import load_file
from test_run_finetune import image_folders  # noqa: F401  (a fixture: reddish vs bluish noise in two folders)
from dilated_vit_mae import (
    DilatedViTMAEConfig,
    DilatedViTMAEForImageClassification,
    DilatedViTMAEForPreTraining,
    DilatedViTMAEImageProcessor,
)
from dilated_vit_mae.evaluation.probe import (
    FeatureCache,
    LinearProbe,
    encode_images,
    extract_features,
    knn_predict,
    load_frozen_encoder,
    model_fingerprint,
    predict_linear_probe,
    probe_scores,
    train_linear_probe,
)


REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "linear_probe.py"
SAMPLE_DIR = REPO_ROOT / "data" / "celeba_sample"
RESULT_KEYS = {"majority_baseline", "per_attribute_accuracy", "pooling", "num_train", "num_test", "model", "command"}


def load_script():
    return load_file(SCRIPT)


@pytest.fixture
def our_model_dir(tmp_path, tiny_config_kwargs):
    """A random tiny DilatedViTMAE saved like run_mae.py saves (pre-training head + image processor), 32 px."""
    folder = tmp_path / "ours"
    config = DilatedViTMAEConfig(**tiny_config_kwargs, dilation_rates=(2,))
    DilatedViTMAEForPreTraining(config).save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture
def vit_mae_dir(tmp_path):
    """A random tiny transformers ViTMAEModel with its PIL image processor (no torchvision), 32 px."""
    from transformers import ViTImageProcessorPil, ViTMAEConfig, ViTMAEModel

    folder = tmp_path / "vit-mae"
    config = ViTMAEConfig(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    ViTMAEModel(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def probe_argv(model_dir, cache_dir, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir),
        "--celeba_dir", str(SAMPLE_DIR),
        "--feature_cache_dir", str(cache_dir),
        "--per_device_batch_size", "16",
        "--probe_epochs", "30",
        *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# The classifier and the scores
# ----------------------------------------------------------------------------------------------------------------------


def test_linear_probe_is_batchnorm_without_affine_then_linear():
    probe = LinearProbe(num_features=8, num_outputs=3)
    assert not probe.norm.affine and probe.norm.eps == 1e-6
    assert sum(p.numel() for p in probe.parameters()) == 8 * 3 + 3  # only the linear layer learns
    # the norm standardises badly scaled features: a feature x 1000 gives the same training-mode output
    features = torch.randn(16, 8)
    torch.testing.assert_close(probe.train()(features * 1000 + 5), probe(features), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("task", ["single_label", "multi_label"])
def test_train_linear_probe_fits_separable_data(task):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 4
    classes = torch.arange(300) % 3
    features = centres[classes] + torch.randn(300, 16, generator=generator) * 0.5
    features = features * torch.logspace(-3, 3, 16)  # scales that an unnormalised linear layer would struggle with
    labels = classes if task == "single_label" else torch.stack([classes == 0, classes != 1], dim=1).long()
    probe = train_linear_probe(features[:200], labels[:200], task=task, epochs=50, batch_size=32, seed=0)
    predictions = predict_linear_probe(probe, features[200:], task=task)
    assert predictions.shape == labels[200:].shape
    assert torch.equal(predictions, labels[200:])


def test_train_linear_probe_is_deterministic_and_validates():
    features, labels = torch.randn(50, 4), torch.randint(0, 2, (50, 3))
    first = train_linear_probe(features, labels, task="multi_label", epochs=3, batch_size=8, seed=1)
    second = train_linear_probe(features, labels, task="multi_label", epochs=3, batch_size=8, seed=1)
    torch.testing.assert_close(first.state_dict(), second.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="single-label `labels` must be"):
        train_linear_probe(features, labels, task="single_label")
    with pytest.raises(ValueError, match="`task` must be"):
        train_linear_probe(features, labels, task="regression")


def test_probe_scores_equal_hand_computation():
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 2, (30, 5)), rng.integers(0, 2, (30, 5))
    train_labels = rng.integers(0, 2, (80, 5))
    names = [f"attribute_{i}" for i in range(5)]
    scores = probe_scores(predictions, references, task="multi_label", train_labels=train_labels, attribute_names=names)
    per_attribute = (predictions == references).mean(axis=0)
    assert scores["mean_attribute_accuracy"] == pytest.approx(per_attribute.mean())
    assert scores["per_attribute_accuracy"] == pytest.approx(dict(zip(names, per_attribute)))
    majority = (train_labels.mean(axis=0) > 0.5).astype(int)
    assert scores["majority_baseline"] == pytest.approx((references == majority).mean(axis=0).mean())

    single = probe_scores(
        np.array([0, 2, 2, 1]), np.array([0, 2, 1, -1]), task="single_label", train_labels=np.array([1, 1, 0, 2])
    )
    assert single == {"accuracy": 0.5, "majority_baseline": 0.25}  # the unseen reference (-1) is an error


# ----------------------------------------------------------------------------------------------------------------------
# Weighted k-NN
# ----------------------------------------------------------------------------------------------------------------------


def brute_force_knn(train_features, train_labels, eval_features, k, temperature, multi_label):
    """DINO's weighted vote written out one example at a time in numpy: cosine similarity, the k most similar
    training rows, weight exp(s / T) per neighbour, then the heaviest class (or, per attribute, the heavier side)."""
    train = train_features.numpy().astype(np.float64)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    labels = train_labels.numpy()
    predictions = []
    for row in eval_features.numpy().astype(np.float64):
        similarity = train @ (row / np.linalg.norm(row))
        neighbours = np.argsort(-similarity)[:k]
        if multi_label:
            positive = sum(math.exp(similarity[j] / temperature) * labels[j] for j in neighbours)
            negative = sum(math.exp(similarity[j] / temperature) * (1 - labels[j]) for j in neighbours)
            predictions.append((positive > negative).astype(int))
            continue
        weights = {}
        for j in neighbours:
            weights[int(labels[j])] = weights.get(int(labels[j]), 0.0) + math.exp(similarity[j] / temperature)
        predictions.append(max(sorted(weights), key=lambda c: weights[c]))
    return np.array(predictions)


@pytest.mark.parametrize("k, temperature", [(20, 0.07), (5, 0.5), (1, 1.0)])
def test_knn_equals_brute_force_single_label(k, temperature):
    generator = torch.Generator().manual_seed(k)
    train, eval_ = torch.randn(60, 6, generator=generator) * 3, torch.randn(25, 6, generator=generator)
    labels = torch.randint(0, 4, (60,), generator=generator)
    predictions = knn_predict(train, labels, eval_, task="single_label", k=k, temperature=temperature, chunk_size=7)
    assert predictions.dtype == torch.long and predictions.shape == (25,)
    assert predictions.tolist() == brute_force_knn(train, labels, eval_, k, temperature, False).tolist()


def test_knn_equals_brute_force_multi_label():
    generator = torch.Generator().manual_seed(3)
    train, eval_ = torch.randn(50, 5, generator=generator), torch.randn(30, 5, generator=generator)
    labels = torch.randint(0, 2, (50, 7), generator=generator)
    predictions = knn_predict(train, labels, eval_, task="multi_label", k=9, temperature=0.1)
    assert predictions.shape == (30, 7)
    assert np.array_equal(predictions.numpy(), brute_force_knn(train, labels, eval_, 9, 0.1, True))


def test_knn_weights_votes_and_ignores_feature_scale():
    # one near neighbour of class 1 outweighs two farther ones of class 0 at a low temperature, not at a high one
    train = torch.tensor([[1.0, 0.05], [0.6, 0.8], [0.6, -0.8]]) * torch.tensor([[100.0], [0.01], [3.0]])
    labels, query = torch.tensor([1, 0, 0]), torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, query, task="single_label", k=3, temperature=0.07).item() == 1
    assert knn_predict(train, labels, query, task="single_label", k=3, temperature=100.0).item() == 0
    # k larger than the training set uses all of it
    assert knn_predict(train, labels, query * 5, task="single_label", k=50, temperature=0.07).item() == 1


def test_knn_validates():
    features, labels = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="`task` must be"):
        knn_predict(features, labels, features, task="regression")
    with pytest.raises(ValueError, match="k-NN needs `k` >= 1"):
        knn_predict(features, labels, features, task="single_label", k=0)
    with pytest.raises(ValueError, match="same width"):
        knn_predict(features, labels, torch.randn(2, 5), task="single_label")
    with pytest.raises(ValueError, match="one label row per training feature"):
        knn_predict(features, labels[:3], features, task="single_label")


# ----------------------------------------------------------------------------------------------------------------------
# Encoders and features
# ----------------------------------------------------------------------------------------------------------------------


def test_vit_mae_features_are_whole_image_and_deterministic(vit_mae_dir):
    model, image_processor = load_frozen_encoder(vit_mae_dir)
    assert type(model).__name__ == "ViTMAEModel" and model.config.mask_ratio == 0.0
    assert type(image_processor).__name__ == "ViTImageProcessorPil"
    pixel_values = torch.randn(3, 3, 32, 32)
    torch.manual_seed(1)
    first = encode_images(model, pixel_values, "mean")
    torch.manual_seed(2)  # ViTMAE would shuffle tokens with fresh random noise: we pass increasing noise
    second = encode_images(model, pixel_values, "mean")
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # the mean of the patch tokens of the unshuffled whole-image sequence
    tokens = model(pixel_values, noise=torch.arange(64.0).expand(3, -1)).last_hidden_state
    assert tokens.shape == (3, 65, 32)
    torch.testing.assert_close(first, tokens[:, 1:].mean(dim=1))
    torch.testing.assert_close(encode_images(model, pixel_values, "cls"), tokens[:, 0])


def test_our_encoder_loads_from_a_pretraining_folder(our_model_dir):
    model, image_processor = load_frozen_encoder(our_model_dir)
    assert type(model).__name__ == "DilatedViTMAEModel" and model.config.mask_ratio == 0.0
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    reference = DilatedViTMAEForPreTraining.from_pretrained(our_model_dir).vit
    torch.testing.assert_close(model.state_dict(), reference.state_dict())
    assert encode_images(model, torch.randn(2, 3, 32, 32), "cls").shape == (2, 32)
    with pytest.raises(ValueError, match="`pooling` must be"):
        encode_images(model, torch.randn(2, 3, 32, 32), "max")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_fine_tuned_classifier_gives_the_features_its_head_reads(tmp_path, tiny_config_kwargs, pooling):
    # what run_finetune.py writes: MAE's global pool (no final layernorm in the encoder, fc_norm after the mean) or CLS;
    # the probe, k-NN and export load it as an encoder, with the pooling its head was trained on
    folder = tmp_path / "classifier"
    config = DilatedViTMAEConfig(**tiny_config_kwargs, dilation_rates=(2,), num_labels=3, classifier_pooling=pooling)
    classifier = DilatedViTMAEForImageClassification(config).eval()
    with torch.no_grad():
        for norm in (classifier.fc_norm, classifier.vit.layernorm):
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.uniform_(0.5, 1.5), norm.bias.normal_(0, 0.5)  # not the identity-like init
    classifier.save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)

    encoder, _ = load_frozen_encoder(folder)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = encode_images(encoder, pixel_values, pooling)
        torch.testing.assert_close(classifier.classifier(features), classifier(pixel_values=pixel_values).logits)
    if pooling == "mean":
        with pytest.raises(ValueError, match="classifier_pooling='mean'.*use pooling 'mean'"):
            encode_images(encoder, pixel_values, "cls")
        from dilated_vit_mae.publish.export import EncoderFeatures

        with pytest.raises(ValueError, match="global-pool classifier"):
            EncoderFeatures(encoder)
        # the probe script picks mean pooling for it by default; asked for CLS (or to export it) the scripts say why
        # in one line, exit 2, no traceback
        probe = [str(SCRIPT), "--model_name_or_path", str(folder), "--celeba_dir", str(SAMPLE_DIR), "--protocol", "knn",
                 "--no_feature_cache", "--output_dir", str(tmp_path / "p")]  # fmt: skip
        done = subprocess.run([sys.executable, *probe], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((tmp_path / "p" / "knn_results.json").read_text())["pooling"] == "mean"
        for command in (
            [*probe, "--pooling", "cls"],
            [str(REPO_ROOT / "scripts" / "export_onnx.py"), "--model_name_or_path", str(folder), "--output", str(tmp_path / "m.onnx")],
        ):
            done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
            assert done.stderr.strip().splitlines()[-1].startswith("error: This encoder is a")


def test_masking_encoder_is_refused(tiny_config):
    from dilated_vit_mae import DilatedViTMAEModel

    model = DilatedViTMAEModel(tiny_config).eval()  # mask_ratio 0.75
    with pytest.raises(ValueError, match="mask_ratio"):
        encode_images(model, torch.randn(1, 3, 32, 32))


def test_unsupported_model_type_is_refused(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'vit' model"):
        load_frozen_encoder(tmp_path)


def test_extract_features_restores_dataset_order(tiny_config_kwargs):
    from dilated_vit_mae import DilatedViTMAEModel

    model = DilatedViTMAEModel(DilatedViTMAEConfig(**tiny_config_kwargs, mask_ratio=0.0)).eval()
    pixel_values = torch.randn(5, 3, 32, 32)
    shuffled = [{"pixel_values": pixel_values[[3, 1]], "sample_index": torch.tensor([3, 1])},
                {"pixel_values": pixel_values[[4, 0, 2]], "sample_index": torch.tensor([4, 0, 2])}]  # fmt: skip
    features = extract_features(model, shuffled, num_examples=5, pooling="cls")
    torch.testing.assert_close(features, encode_images(model, pixel_values, "cls"))
    with pytest.raises(RuntimeError, match="exactly once"):
        extract_features(model, shuffled[:1], num_examples=5)


def test_feature_cache_round_trip_and_fingerprint(tmp_path, our_model_dir):
    cache = FeatureCache(tmp_path / "cache")
    description = {"model": "m", "pooling": "cls", "split": "train"}
    assert cache.load(description) is None
    cache.save(description, torch.arange(6.0).reshape(3, 2))
    torch.testing.assert_close(cache.load(description), torch.arange(6.0).reshape(3, 2))
    assert cache.load({**description, "pooling": "mean"}) is None
    assert not list((tmp_path / "cache").glob(".*"))  # written atomically
    # re-saving weights into the same folder changes the fingerprint, so stale features are not reused
    before = model_fingerprint(our_model_dir)
    weights = our_model_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert model_fingerprint(our_model_dir) != before


def test_a_damaged_feature_cache_file_is_removed_with_one_warning(tmp_path, caplog):
    cache = FeatureCache(tmp_path / "cache")
    description = {"model": "m", "pooling": "cls", "split": "train"}
    path = cache.save(description, torch.arange(600.0).reshape(300, 2))
    path.write_bytes(path.read_bytes()[:-50])  # truncated (a full disk, a copy cut short)
    with caplog.at_level("WARNING", logger="dilated_vit_mae.evaluation.probe"):
        assert cache.load(description) is None
    assert len(caplog.records) == 1 and str(path) in caplog.records[0].message and "damaged" in caplog.records[0].message
    assert not path.exists()
    cache.save(description, torch.ones(2, 2))  # and the next save serves again
    torch.testing.assert_close(cache.load(description), torch.ones(2, 2))


def test_features_of_changed_images_are_not_served(tmp_path, caplog):
    cache = FeatureCache(tmp_path / "cache")
    description = {"model": "m", "pooling": "cls", "split": "train"}
    cache.save(description, torch.ones(2, 2), images="before")
    with caplog.at_level("WARNING", logger="dilated_vit_mae.evaluation.probe"):
        assert cache.load(description, images="after") is None
    assert len(caplog.records) == 1 and "changed since" in caplog.records[0].message
    cache.save(description, torch.zeros(2, 2), images="after")  # replaces the stale entry under the same name
    torch.testing.assert_close(cache.load(description, images="after"), torch.zeros(2, 2))
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_partial_feature_files_are_removed_after_a_failed_or_killed_write(tmp_path, monkeypatch):
    import safetensors.torch

    description = {"model": "m", "pooling": "cls", "split": "train"}
    cache = FeatureCache(tmp_path / "cache")

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        cache.save(description, torch.ones(2, 2))
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    # a writer killed mid-write (SIGKILL: no cleanup runs) leaves its partial file: the next start removes it
    child = subprocess.run(
        [sys.executable, "-c", "import os, signal, torch, safetensors.torch\n"
         "from dilated_vit_mae.evaluation.probe import FeatureCache\n"
         "def die(tensors, filename, metadata=None):\n"
         "    open(filename, 'wb').write(b'partial'); os.kill(os.getpid(), signal.SIGKILL)\n"
         "safetensors.torch.save_file = die\n"
         f"FeatureCache({str(tmp_path / 'cache')!r}).save({{'split': 'train'}}, torch.ones(2))"],
        cwd=REPO_ROOT, capture_output=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == -9 and len(list((tmp_path / "cache").iterdir())) == 1
    FeatureCache(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------------
# The script
# ----------------------------------------------------------------------------------------------------------------------


def test_script_on_celeba_sample_with_our_encoder_and_cache(our_model_dir, tmp_path, monkeypatch):
    script = load_script()
    results = script.main(script.parse_args(probe_argv(our_model_dir, tmp_path / "cache")))

    # written next to the model by default, with the documented keys
    written = json.loads((our_model_dir / "linear_probe_results.json").read_text())
    assert RESULT_KEYS | {"mean_attribute_accuracy"} <= set(written)
    assert written["num_train"] == 40 and written["num_test"] == 8 and written["pooling"] == "cls"
    assert len(written["per_attribute_accuracy"]) == 40 and written["features_from_cache"] == {"train": False, "eval": False}

    # the reported numbers are the hand computation from the predictions
    predictions, references = results["predictions"], results["references"]
    assert predictions.shape == references.shape == (8, 40)
    per_attribute = (predictions == references).mean(axis=0)
    assert written["mean_attribute_accuracy"] == pytest.approx(per_attribute.mean())
    assert list(written["per_attribute_accuracy"].values()) == pytest.approx(per_attribute.tolist())
    lines = (SAMPLE_DIR / "list_attr_celeba.txt").read_text().splitlines()[2:]
    labels = (np.array([[int(v) for v in line.split()[1:]] for line in lines]) + 1) // 2
    assert np.array_equal(references, labels[48:56])
    majority = (labels[:40].mean(axis=0) > 0.5).astype(int)
    assert written["majority_baseline"] == pytest.approx((labels[48:56] == majority).mean())
    # the placeholder attributes are brightness cells: even a random encoder's features beat the floor on some
    assert (per_attribute > (labels[48:56] == majority).mean(axis=0)).any()

    # second call: features come from the cache, the encoder is not run again, the numbers are the same
    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed although they are cached")

    monkeypatch.setattr(script, "extract_features", fail)
    again = script.main(script.parse_args(probe_argv(our_model_dir, tmp_path / "cache")))
    assert again["features_from_cache"] == {"train": True, "eval": True}
    assert again["mean_attribute_accuracy"] == written["mean_attribute_accuracy"]
    # another pooling is another cache entry
    with pytest.raises(AssertionError, match="recomputed"):
        script.main(script.parse_args(probe_argv(our_model_dir, tmp_path / "cache", "--pooling", "mean")))


def test_script_does_not_serve_features_of_images_replaced_in_place(our_model_dir, tmp_path, caplog):
    # every image of a raw-CelebA folder replaced by another picture with the same name, size and modification time
    from test_decoded_cache import replace_in_place

    data = tmp_path / "celeba"
    shutil.copytree(SAMPLE_DIR, data)
    script = load_script()
    argv = [*probe_argv(our_model_dir, tmp_path / "cache"), "--celeba_dir", str(data), "--output_dir", str(tmp_path / "p")]
    first = script.main(script.parse_args(argv))
    assert first["features_from_cache"] == {"train": False, "eval": False}
    for path in sorted((data / "img_align_celeba").glob("*.jpg")):
        replace_in_place(path, 255 - np.asarray(PIL.Image.open(path).convert("RGB")))
    with caplog.at_level("WARNING", logger="dilated_vit_mae.evaluation.probe"):
        again = script.main(script.parse_args(argv))
    assert again["features_from_cache"] == {"train": False, "eval": False}
    stale = [r.message for r in caplog.records if "changed since" in r.message]
    assert len(stale) == 2 and all("features-" in message for message in stale)  # one line per split, naming the file
    fresh = script.main(script.parse_args([*argv, "--no_feature_cache"]))
    assert again["mean_attribute_accuracy"] == fresh["mean_attribute_accuracy"]
    np.testing.assert_array_equal(again["predictions"], fresh["predictions"])
    assert script.main(script.parse_args(argv))["features_from_cache"] == {"train": True, "eval": True}


def test_script_with_vit_mae_checkpoint_and_single_label(vit_mae_dir, tmp_path):
    script = load_script()
    output_dir = tmp_path / "out"
    argv = probe_argv(
        vit_mae_dir, tmp_path / "cache", "--pooling", "mean", "--label_column", "Smiling", "--output_dir", str(output_dir)
    )
    results = script.main(script.parse_args(argv))
    written = json.loads((output_dir / "linear_probe_results.json").read_text())
    assert RESULT_KEYS | {"accuracy"} <= set(written) and "mean_attribute_accuracy" not in written
    # published without local paths: the model folder by its name
    assert written["model"] == vit_mae_dir.name and written["pooling"] == "mean" and written["task"] == "single_label"
    assert written["feature_dim"] == 32
    assert written["accuracy"] == pytest.approx((results["predictions"] == results["references"]).mean())
    assert written["per_attribute_accuracy"] == {"Smiling": written["accuracy"]}
    assert 0.0 <= written["majority_baseline"] <= 1.0 and math.isfinite(written["accuracy"])


def cached_features(cache_dir) -> dict[str, torch.Tensor]:
    """The cached features of each split, by the split named in each entry's stored description."""
    import safetensors
    import safetensors.torch

    features = {}
    for path in Path(cache_dir).glob("features-*.safetensors"):
        with safetensors.safe_open(str(path), framework="pt") as file:
            split = json.loads(file.metadata()["description"])["split"]
        features[split] = safetensors.torch.load_file(str(path))["features"]
    return features


def test_script_knn_protocol_on_the_cached_features(our_model_dir, tmp_path, monkeypatch):
    script = load_script()
    cache_dir = tmp_path / "cache"
    script.main(script.parse_args(probe_argv(our_model_dir, cache_dir)))  # the linear probe fills the cache
    linear = (our_model_dir / "linear_probe_results.json").read_text()

    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed although they are cached")

    monkeypatch.setattr(script, "extract_features", fail)
    results = script.main(script.parse_args(probe_argv(our_model_dir, cache_dir, "--protocol", "knn", "--knn_k", "5")))
    written = json.loads((our_model_dir / "knn_results.json").read_text())
    assert (our_model_dir / "linear_probe_results.json").read_text() == linear  # left alone
    assert written["protocol"] == "knn" and written["features_from_cache"] == {"train": True, "eval": True}
    assert written["knn"]["k"] == 5 and written["knn"]["temperature"] == 0.07
    assert RESULT_KEYS | {"knn_accuracy", "mean_attribute_accuracy"} <= set(written) and "probe" not in written
    assert written["knn_accuracy"] == written["mean_attribute_accuracy"]
    per_attribute = (results["predictions"] == results["references"]).mean(axis=0)
    assert written["knn_accuracy"] == pytest.approx(per_attribute.mean())
    # the predictions are DINO's weighted vote on exactly those features
    features = cached_features(cache_dir)
    lines = (SAMPLE_DIR / "list_attr_celeba.txt").read_text().splitlines()[2:]
    train_labels = (torch.tensor([[int(v) for v in line.split()[1:]] for line in lines[:40]]) + 1) // 2
    expected = knn_predict(features["train"], train_labels, features["test"], task="multi_label", k=5, temperature=0.07)
    assert np.array_equal(results["predictions"], expected.numpy())


def test_script_knn_single_label(our_model_dir, tmp_path):
    script = load_script()
    argv = probe_argv(our_model_dir, tmp_path / "cache", "--protocol", "knn", "--label_column", "celeb_id",
                      "--output_dir", str(tmp_path / "out"))  # fmt: skip
    results = script.main(script.parse_args(argv))
    written = json.loads((tmp_path / "out" / "knn_results.json").read_text())
    assert written["task"] == "single_label" and written["knn_accuracy"] == written["accuracy"]
    assert written["accuracy"] == pytest.approx((results["predictions"] == results["references"]).mean())
    assert set(results["predictions"].tolist()) <= {0, 1, 2}  # the sample's three identities


@pytest.mark.parametrize("extra", [["--protocol", "nearest"], ["--knn_k", "0"], ["--knn_temperature", "-1"], ["--knn_k", "2.5"]])
def test_script_rejects_bad_knn_arguments(our_model_dir, tmp_path, extra):
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(probe_argv(our_model_dir, tmp_path / "cache", *extra))


def test_script_rejects_unknown_label_column(our_model_dir, tmp_path):
    script = load_script()
    with pytest.raises(ValueError, match="not in the dataset"):
        script.main(script.parse_args(probe_argv(our_model_dir, tmp_path / "cache", "--label_columns", "Not_A_Column")))


def folders_with_missing_labels(root: Path) -> Path:
    """An image folder whose metadata.csv leaves some labels empty: train/ rows 2, 5 and 9, test/ row 4 (the loader
    carves row 9 of train/ out as the validation split)."""
    rng = np.random.default_rng(0)
    for split, count, missing in (("train", 12, {2, 5, 9}), ("test", 6, {4})):
        (root / split).mkdir(parents=True)
        rows = ["file_name,label"]
        for i in range(count):
            PIL.Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
            rows.append(f"{i}.png,{'' if i in missing else ('cat', 'dog')[i % 2]}")
        (root / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_missing_labels_are_refused_by_name_or_skipped_and_counted(our_model_dir, tmp_path, protocol, caplog):
    script = load_script()
    source = folders_with_missing_labels(tmp_path / "data")
    argv = [
        "--model_name_or_path", str(our_model_dir), "--train_dir", str(source), "--label_column", "label",
        "--feature_cache_dir", str(tmp_path / "cache"), "--probe_epochs", "2", "--protocol", protocol,
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    with pytest.raises(ValueError) as refused:  # was a raw TypeError: '<' not supported between 'NoneType' and 'str'
        script.main(script.parse_args(argv))
    assert str(refused.value).startswith(
        "The 'train' split has examples without a label: 2 of 11 examples have no value in 'label' (rows 2, 5)."
    )
    assert "--on_missing_label skip" in str(refused.value)
    with caplog.at_level(logging.WARNING):
        results = script.main(script.parse_args([*argv, "--on_missing_label", "skip"]))
    assert results["num_train"] == 9 and results["num_test"] == 5 and len(results["references"]) == 5
    assert (results["references"] >= 0).all()  # no example scored against a class named "None"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("left out 2 of 11 'train' examples" in w for w in warnings), warnings
    assert any("left out 1 of 6 'test' examples" in w for w in warnings), warnings


# ----------------------------------------------------------------------------------------------------------------------
# Two processes
# ----------------------------------------------------------------------------------------------------------------------


SHARDED_FEATURES_SCRIPT = """
import sys
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from dilated_vit_mae.evaluation.probe import encode_images, extract_features, load_frozen_encoder
from dilated_vit_mae.data.transforms import collate_examples

model_dir, output_file = sys.argv[1:]
accelerator = Accelerator()
model, _ = load_frozen_encoder(model_dir)
pixel_values = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
examples = [{"pixel_values": pixel_values[i], "sample_index": i} for i in range(7)]
# batch 2 over 2 processes: 7 examples leave an uneven last batch, which gather_for_metrics must trim
dataloader = accelerator.prepare(DataLoader(examples, batch_size=2, collate_fn=collate_examples))
features = extract_features(model, dataloader, num_examples=7, pooling="cls", accelerator=accelerator)
if accelerator.is_main_process:
    expected = encode_images(model, pixel_values, "cls")
    torch.save({"features": features, "expected": expected, "num_processes": accelerator.num_processes}, output_file)
"""


@pytest.mark.slow  # two fresh interpreters (~15 s); fork-based launchers hang once torch's thread pool is in use
def test_extract_features_over_two_processes(our_model_dir, tmp_path):
    script, output_file = tmp_path / "sharded_features.py", tmp_path / "features.pt"
    script.write_text(SHARDED_FEATURES_SCRIPT)
    command = [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(script), str(our_model_dir), str(output_file),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = torch.load(output_file)
    assert result["num_processes"] == 2  # two real ranks (`--cpu --num_processes 2` would start one)
    torch.testing.assert_close(result["features"], result["expected"], rtol=1e-5, atol=1e-5)


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    from dilated_vit_mae.train.lifecycle import UserError

    script = load_script()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_9"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match=r"--model_name_or_path .*step_9 is not a model folder: it has no config.json "
                                        r"\(it is a training checkpoint"):  # was transformers' OSError, with a traceback
        script.main(script.parse_args(probe_argv(checkpoint, tmp_path / "cache")))


# ----------------------------------------------------------------------------------------------------------------------
# The probe's schedule and the raw-pixel baseline
# ----------------------------------------------------------------------------------------------------------------------


def test_the_probes_schedule_is_maes_length_with_adamw():
    import inspect

    from dilated_vit_mae.evaluation.probe import PROBE_BATCH_SIZE, PROBE_EPOCHS, PROBE_LEARNING_RATE, PROBE_WARMUP_EPOCHS, warmup_cosine

    assert (PROBE_EPOCHS, PROBE_WARMUP_EPOCHS, PROBE_BATCH_SIZE, PROBE_LEARNING_RATE) == (90, 10, 256, 1e-3)
    defaults = {name: p.default for name, p in inspect.signature(train_linear_probe).parameters.items()}
    assert (defaults["epochs"], defaults["warmup_epochs"], defaults["batch_size"]) == (90, 10, 256)
    assert (defaults["learning_rate"], defaults["weight_decay"]) == (1e-3, 0.0)
    args = load_script().parse_args(["--model_name_or_path", "m"])
    assert (args.probe_epochs, args.probe_batch_size, args.probe_learning_rate) == (90, 256, 1e-3)
    # linear warmup to the peak over 10 steps, then a half cosine to 0
    factors = [warmup_cosine(step, 10, 110) for step in range(110)]
    assert factors[:10] == pytest.approx([(step + 1) / 10 for step in range(10)])
    assert factors[10] == 1.0 and factors[60] == pytest.approx(0.5) and factors[109] == pytest.approx(0.0, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_train_linear_probe_drops_the_last_partial_batch(monkeypatch):
    seen = []
    real_forward = LinearProbe.forward

    def record(self, features):
        seen.append(features.shape[0])
        return real_forward(self, features)

    monkeypatch.setattr(LinearProbe, "forward", record)
    train_linear_probe(torch.randn(50, 4), torch.arange(50) % 2, task="single_label", epochs=2, batch_size=16)
    assert seen == [16, 16, 16] * 2  # 50 = 3 x 16 + 2: the 2 are left out, as MAE's drop_last
    seen.clear()
    train_linear_probe(torch.randn(10, 4), torch.arange(10) % 2, task="single_label", epochs=1, batch_size=256)
    assert seen == [10]  # a set smaller than the batch is one batch


def test_raw_pixel_logistic_regression_matches_the_optimum():
    from dilated_vit_mae.evaluation.probe import logistic_regression_scores

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    pixels = torch.randn(300, 40, generator=generator) + 3.0 * torch.nn.functional.one_hot(labels, 40).float()
    scores = logistic_regression_scores(pixels[:200], labels[:200], {"eval": pixels[200:]}, {"eval": labels[200:]},
                                        task="single_label")  # fmt: skip
    assert scores["eval"] > 0.8  # separable up to noise: far above the majority floor of 1/3
    # its gradient vanishes at the end: L-BFGS reaches the regularised optimum (the objective scikit-learn minimises)
    mean, std = pixels[:200].mean(0), pixels[:200].std(0)
    inputs = (pixels[:200] - mean) / std
    weight = torch.zeros(40, 3, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(inputs @ weight + bias, labels[:200]) + weight.square().sum() / 400
        loss.backward()
        return loss

    optimizer.step(closure)
    predictions = ((pixels[200:] - mean) / std @ weight + bias).argmax(-1)
    assert scores["eval"] == pytest.approx((predictions == labels[200:]).float().mean().item())
    # multi-label: one sigmoid per attribute; an unseen class (-1) counts as an error
    attributes = torch.stack([labels == 0, labels == 2], dim=1).long()
    multi = logistic_regression_scores(pixels[:200], attributes[:200], {"eval": pixels[200:]}, {"eval": attributes[200:]},
                                       task="multi_label")  # fmt: skip
    assert multi["eval"] > 0.85
    unseen = labels[200:].clone()
    unseen[:50] = -1
    partial = logistic_regression_scores(pixels[:200], labels[:200], {"eval": pixels[200:]}, {"eval": unseen},
                                         task="single_label")  # fmt: skip
    assert partial["eval"] <= 0.5


def test_raw_pixel_baseline_runs_where_it_is_cheap_and_says_why_not_elsewhere():
    import PIL.Image
    from datasets import Dataset, Features, Image

    from dilated_vit_mae.evaluation.probe import raw_pixel_baseline
    from dilated_vit_mae.data.transforms import eval_view
    from dilated_vit_mae.image_processing_dilated_vit_mae import DilatedViTMAEImageProcessor

    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(40):
        pixels = rng.integers(0, 120, (20, 20, 3), dtype=np.uint8)
        pixels[..., 2 * (i % 2)] += 120  # red or blue
        images.append(pixels)
        labels.append(i % 2)
    dataset = Dataset.from_dict({"image": [PIL.Image.fromarray(pixels) for pixels in images]},
                                features=Features({"image": Image()}))  # fmt: skip
    labels = torch.tensor(labels)
    transform = eval_view(DilatedViTMAEImageProcessor(size={"shortest_edge": 16}, crop_size=16))
    scores = raw_pixel_baseline(dataset.select(range(30)), labels[:30], {"validation": dataset.select(range(30, 40))},
                                {"validation": labels[30:]}, transform=transform, task="single_label")  # fmt: skip
    assert scores == {"validation": 1.0}
    skipped = raw_pixel_baseline(dataset.select(range(30)), labels[:30], {"validation": dataset.select(range(30, 40))},
                                 {"validation": labels[30:]}, transform=transform, task="single_label",
                                 max_values=40 * 16 * 16 * 3 - 1)  # fmt: skip
    assert skipped == "not computed: 40 images x 768 values exceed 30,719 (cheap only on small sets)"


def test_script_takes_two_folders_and_reports_the_raw_pixel_baseline(our_model_dir, image_folders, tmp_path, caplog):
    import logging

    script = load_script()
    output_dir = tmp_path / "out"
    argv = ["--model_name_or_path", str(our_model_dir), "--train_dir", str(image_folders["train"]), "--validation_dir",
            str(image_folders["val"]), "--label_column", "label", "--feature_cache_dir", str(tmp_path / "cache"),
            "--probe_epochs", "5", "--output_dir", str(output_dir)]  # fmt: skip
    with caplog.at_level(logging.INFO):
        script.main(script.parse_args(argv))
    written = json.loads((output_dir / "linear_probe_results.json").read_text())
    assert written["num_train"] == 24 and written["num_test"] == 12  # nothing carved out of either folder
    assert written["majority_baseline"] == 0.5 and written["raw_pixel_baseline"] == 1.0
    assert written["probe"]["drop_last"] is True and written["probe"]["warmup_epochs"] == 10
    assert "RandomResizedCrop" in written["probe"]["train_views"]  # the difference from MAE's probe, stated
    assert any("majority floor 0.5000, raw-pixel linear 1.0000" in r.getMessage() for r in caplog.records)
    with pytest.raises(SystemExit):
        script.parse_args(["--model_name_or_path", "m", "--validation_dir", "v"])
