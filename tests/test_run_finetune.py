"""End-to-end tests of `scripts/run_finetune.py` with tiny 32 px models: the shipped CelebA sample's 40 attributes
(multi-label) from one of our pre-training folders, image folders from a transformers ViTMAE checkpoint, exact resume
after a crash, best-epoch selection, the published folder loading with and without the package, and bad arguments."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import safetensors.torch
import torch
from accelerate import PartialState

from conftest import load_file, run_without_package
from dilated_vit_mae import (
    DilatedViTMAEConfig,
    DilatedViTMAEForImageClassification,
    DilatedViTMAEForPreTraining,
    DilatedViTMAEImageProcessor,
)
from dilated_vit_mae.train.core import training_schedule
from dilated_vit_mae.train.lifecycle import CHECKPOINT_CHATTER, UserError


REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "celeba_sample"
FAKE_TOKEN = "hf_" + "Q" * 34


@pytest.fixture
def script():
    return load_file("scripts/run_finetune.py")


def processor_32() -> DilatedViTMAEImageProcessor:
    return DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture
def pretrained_dir(tmp_path, tiny_config_kwargs):
    """What scripts/run_mae.py writes (pre-training head with its decoder, image processor), tiny and untrained."""
    folder = tmp_path / "pretrained"
    model = DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**tiny_config_kwargs, dilation_rates=(2,)))
    with torch.no_grad():
        model.vit.embeddings.patch_embeddings.dilated_projections[0].weight.normal_(0, 0.05)
    model.save_pretrained(folder)
    processor_32().save_pretrained(folder)
    return folder


@pytest.fixture
def vit_mae_dir(tmp_path):
    """A transformers ViTMAEForPreTraining with its PIL processor: an offline stand-in for facebook/vit-mae-base."""
    from transformers import ViTImageProcessorPil, ViTMAEConfig, ViTMAEForPreTraining

    folder = tmp_path / "vit-mae"
    config = ViTMAEConfig(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4, decoder_intermediate_size=64,
    )  # fmt: skip
    ViTMAEForPreTraining(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture
def image_folders(tmp_path):
    """Two classes a classifier can learn in a few steps: reddish and bluish noise, in class subfolders."""
    rng = np.random.default_rng(0)
    roots = {}
    for split, count in (("train", 12), ("val", 6)):
        for name, channel in (("blue", 2), ("red", 0)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
                pixels[..., channel] += 120
                PIL.Image.fromarray(pixels).save(folder / f"{i}.png")
        roots[split] = tmp_path / split
    return roots


def argv(model_dir, output_dir, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8",
        "--learning_rate", "2e-3",
        "--num_warmup_steps", "1",
        "--num_train_epochs", "3",
        "--logging_steps", "1",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


def reset_accelerate_state() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def train_losses(output_dir) -> dict[int, float]:
    """The last logged training loss of each step (a resumed run logs the steps after its checkpoint again)."""
    losses = {}
    for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "train_loss" in entry:
            losses[entry["step"]] = entry["train_loss"]
    return losses


def weights(path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(Path(path) / "model.safetensors"))


def assert_same_weights(first, second):
    first, second = weights(first), weights(second)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=key)


# ----------------------------------------------------------------------------------------------------------------------
# CelebA attributes, from our pre-training folder
# ----------------------------------------------------------------------------------------------------------------------


def test_celeba_attributes_from_our_pretraining_folder(script, pretrained_dir, tmp_path, reset_accelerate):
    output_dir = tmp_path / "out"
    script.main(script.parse_args(argv(pretrained_dir, output_dir, "--num_train_epochs", "4", "--token", FAKE_TOKEN)))
    results = json.loads((output_dir / "all_results.json").read_text())

    # multi-label on the 40 attributes, scored by the mean of per-attribute accuracies; the best epoch is selected
    assert results["task"] == "multi_label" and results["labels"]["num_labels"] == 40
    history = [entry["mean_attribute_accuracy"] for entry in results["eval_history"]]
    assert len(history) == 4 and results["best_epoch"] == int(np.argmax(history))
    assert results["eval_mean_attribute_accuracy"] == max(history)
    assert 0 < results["test_mean_attribute_accuracy"] <= 1 and results["test_split"] == "test"
    assert_same_weights(output_dir, output_dir / "checkpoints" / "best")

    # the loss falls
    losses = train_losses(output_dir)
    assert sorted(losses) == list(range(1, 21))  # 40 images / batch 8 = 5 steps x 4 epochs
    assert np.mean([losses[s] for s in range(16, 21)]) < np.mean([losses[s] for s in range(1, 6)])

    # the folder is a classifier: MAE's fine-tuning head, labels named, and the reported figure is reproducible
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    assert isinstance(model, DilatedViTMAEForImageClassification) and model.fc_norm is not None
    assert model.config.id2label[0] == "5_o_Clock_Shadow" and model.config.label2id["Young"] == 39
    assert model.config.problem_type == "multi_label_classification" and model.config.drop_path_rate == 0.1
    processor = AutoImageProcessor.from_pretrained(output_dir)
    names = [f"{i:06d}.jpg" for i in range(41, 49)]  # the sample's validation split
    images = [PIL.Image.open(SAMPLE_DIR / "img_align_celeba" / name) for name in names]
    with torch.no_grad():
        predictions = (model(**processor(images, return_tensors="pt")).logits > 0).numpy()
    rows = {line.split()[0]: line.split()[1:] for line in (SAMPLE_DIR / "list_attr_celeba.txt").read_text().splitlines()[2:]}
    references = (np.array([[int(v) for v in rows[name]] for name in names]) + 1) // 2
    assert (predictions == references).mean(axis=0).mean() == pytest.approx(results["eval_mean_attribute_accuracy"])

    # nothing secret or local is published
    for name in ("README.md", "all_results.json", "train_log.jsonl", "config.json"):
        text = (output_dir / name).read_text()
        assert FAKE_TOKEN not in text and str(tmp_path) not in text, name
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and f"{results['eval_mean_attribute_accuracy']:.4f}" in card
    # a run output (removed by --overwrite_output_dir), but not the pre-training template's (never re-rendered with it)
    from dilated_vit_mae.publish.model_card import is_rendered_card
    from dilated_vit_mae.train.lifecycle import is_generated_card

    assert is_generated_card(output_dir / "README.md") and not is_rendered_card(output_dir / "README.md")

    # a second run into the same folder must say whether to resume or start over
    reset_accelerate_state()
    with pytest.raises(FileExistsError, match="--resume_from_checkpoint latest"):
        script.main(script.parse_args(argv(pretrained_dir, output_dir)))

    # --overwrite_output_dir starts over: nothing of the first run (its later checkpoints, its log lines) survives
    reset_accelerate_state()
    (output_dir / "my_notes.txt").write_text("mine")
    script.main(script.parse_args(argv(pretrained_dir, output_dir, "--num_train_epochs", "1", "--overwrite_output_dir")))
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["best", "step_5"]
    assert sorted(train_losses(output_dir)) == list(range(1, 6))
    assert json.loads((output_dir / "all_results.json").read_text())["global_step"] == 5
    assert (output_dir / "my_notes.txt").read_text() == "mine"  # a file the script does not write is kept


# ----------------------------------------------------------------------------------------------------------------------
# Resume and best-epoch selection
# ----------------------------------------------------------------------------------------------------------------------


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(script, pretrained_dir, tmp_path, monkeypatch, reset_accelerate):
    # single-label (the sample's 3 identities) with every random draw of the recipe switched on
    common = ["--label_column", "celeb_id", "--mixup", "0.8", "--cutmix", "1.0", "--drop_path_rate", "0.2",
              "--checkpointing_steps", "2", "--checkpoints_total_limit", "3"]  # fmt: skip
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    script.main(script.parse_args(argv(pretrained_dir, uninterrupted, *common)))

    reset_accelerate_state()
    real_train_step, calls = script.train_step, []

    def crash_at_step_seven(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("simulated crash")
        return real_train_step(*args, **kwargs)

    monkeypatch.setattr(script, "train_step", crash_at_step_seven)
    with pytest.raises(RuntimeError, match="simulated crash"):
        script.main(script.parse_args(argv(pretrained_dir, interrupted, *common)))
    assert (interrupted / "checkpoints" / "step_6").is_dir()  # mid-epoch 1 (5 steps per epoch), after epoch 0's eval
    monkeypatch.setattr(script, "train_step", real_train_step)
    reset_accelerate_state()
    script.main(script.parse_args(argv(pretrained_dir, interrupted, *common, "--resume_from_checkpoint", "latest")))

    assert_same_weights(interrupted / "checkpoints" / "step_15", uninterrupted / "checkpoints" / "step_15")
    assert_same_weights(interrupted, uninterrupted)
    assert train_losses(interrupted) == train_losses(uninterrupted)
    first, second = (json.loads((folder / "all_results.json").read_text()) for folder in (uninterrupted, interrupted))
    assert first["eval_history"] == second["eval_history"] and first["best_epoch"] == second["best_epoch"]
    assert first["task"] == "single_label" and first["labels"]["num_labels"] == 3 and "eval_accuracy" in first


def test_the_best_epoch_is_the_published_model(script, pretrained_dir, tmp_path, monkeypatch, reset_accelerate):
    real_evaluate, scripted = script.evaluate, iter([0.3, 0.9, 0.6])

    def evaluate_with_scripted_accuracy(*args, **kwargs):
        scores = real_evaluate(*args, **kwargs)
        return {**scores, "mean_attribute_accuracy": next(scripted, scores["mean_attribute_accuracy"])}

    monkeypatch.setattr(script, "evaluate", evaluate_with_scripted_accuracy)
    output_dir = tmp_path / "out"
    script.main(script.parse_args(argv(pretrained_dir, output_dir, "--checkpoints_total_limit", "5")))
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["best_epoch"] == 1 and results["best_step"] == 10 and results["eval_mean_attribute_accuracy"] == 0.9
    assert [entry["mean_attribute_accuracy"] for entry in results["eval_history"]] == [0.3, 0.9, 0.6]
    # the published weights are epoch 1's (saved at its end, step 10), not the last epoch's
    assert_same_weights(output_dir, output_dir / "checkpoints" / "step_10")
    with pytest.raises(AssertionError):
        assert_same_weights(output_dir, output_dir / "checkpoints" / "step_15")


def test_resume_refuses_a_checkpoint_of_another_run(script, pretrained_dir, tmp_path, reset_accelerate):
    # two runs; the second's checkpoint copied into the first's folder must not be resumed as if it were the first's
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        reset_accelerate_state()
        script.main(script.parse_args(argv(pretrained_dir, folder, "--num_train_epochs", "1")))
    shutil.copytree(second / "checkpoints" / "step_5", first / "checkpoints" / "step_9")
    reset_accelerate_state()
    with pytest.raises(UserError, match=r"step_9 belongs to run [0-9a-f]{32}, but this output folder is run"):
        script.main(script.parse_args(argv(pretrained_dir, first, "--num_train_epochs", "2", "--resume_from_checkpoint", "latest")))
    # its own checkpoint resumes
    shutil.rmtree(first / "checkpoints" / "step_9")
    reset_accelerate_state()
    script.main(script.parse_args(argv(pretrained_dir, first, "--num_train_epochs", "2", "--resume_from_checkpoint", "latest")))
    assert json.loads((first / "all_results.json").read_text())["global_step"] == 10


# ----------------------------------------------------------------------------------------------------------------------
# Image folders, a transformers ViTMAE checkpoint, training from scratch
# ----------------------------------------------------------------------------------------------------------------------


def test_image_folders_from_a_vit_mae_checkpoint(script, vit_mae_dir, image_folders, tmp_path, reset_accelerate):
    output_dir = tmp_path / "out"
    extra = ["--train_dir", str(image_folders["train"]), "--validation_dir", str(image_folders["val"]),
             "--dilation_rates", "--num_train_epochs", "6", "--per_device_train_batch_size", "6"]  # fmt: skip
    script.main(script.parse_args(argv(vit_mae_dir, output_dir, *extra)))
    results = json.loads((output_dir / "all_results.json").read_text())
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "blue", "1": "red"} and config["label2id"] == {"blue": 0, "red": 1}
    assert config["model_type"] == "dilated_vit_mae" and config["dilation_rates"] == []  # plain ViTMAE
    assert results["task"] == "single_label" and results["dataset"]["eval_samples"] == 12
    assert "test_split" not in results  # two folders: nothing carved out for a test split
    losses = train_losses(output_dir)
    assert np.mean(list(losses.values())[-4:]) < np.mean(list(losses.values())[:4])
    assert results["eval_accuracy"] > results["eval_majority_baseline"] == 0.5


def test_missing_labels_are_refused_by_name_or_left_out_when_asked(script, pretrained_dir, tmp_path, reset_accelerate, caplog):
    rng = np.random.default_rng(0)
    for split, count, missing in (("train", 12, {2, 5}), ("val", 6, {4})):  # empty cells of a metadata.csv
        (tmp_path / split).mkdir()
        rows = ["file_name,label"]
        for i in range(count):
            PIL.Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / split / f"{i}.png")
            rows.append(f"{i}.png,{'' if i in missing else ('cat', 'dog')[i % 2]}")
        (tmp_path / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    output_dir = tmp_path / "out"
    extra = ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val"), "--label_column", "label",
             "--max_train_steps", "2"]  # fmt: skip
    # was: a third class named "None", trained on and published in id2label
    with pytest.raises(ValueError, match=r"The 'train' split has examples without a label: 2 of 12 examples have no "
                                         r"value in 'label' \(rows 2, 5\)\. Fill them in, or pass --on_missing_label skip"):
        script.main(script.parse_args(argv(pretrained_dir, output_dir, *extra)))
    assert sorted(p.name for p in output_dir.iterdir()) == ["run.json"]  # refused before training
    reset_accelerate_state()
    with caplog.at_level(logging.WARNING):
        script.main(script.parse_args(argv(pretrained_dir, output_dir, *extra, "--on_missing_label", "skip", "--overwrite_output_dir")))
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"}
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["dataset"]["train_samples"] == 10 and results["dataset"]["eval_samples"] == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("left out 2 of 12 'train' examples" in w for w in warnings), warnings
    assert any("left out 1 of 6 'validation' examples" in w for w in warnings), warnings


def test_training_from_scratch_with_a_config(script, tmp_path, tiny_config_kwargs, reset_accelerate, caplog):
    config_dir = tmp_path / "config"
    DilatedViTMAEConfig(**tiny_config_kwargs).save_pretrained(config_dir)
    processor_32().save_pretrained(config_dir)
    output_dir = tmp_path / "out"
    args = argv(config_dir, output_dir, "--max_train_steps", "2", "--classifier_pooling", "cls", "--checkpointing_steps", "1")
    args[args.index("--model_name_or_path")] = "--config_name"
    with caplog.at_level(logging.INFO):
        script.main(script.parse_args(args))
    assert (output_dir / "checkpoints" / "step_2").is_dir()
    # accelerate's line per checkpoint file is dropped, as in run_mae.py; the script's own lines stay
    chatter = [r.getMessage() for r in caplog.records if CHECKPOINT_CHATTER.match(r.getMessage())]
    assert not chatter and any(r.name == "__main__" or "run_finetune" in r.name for r in caplog.records)
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["init"] is None and results["global_step"] == 2 and results["classifier_pooling"] == "cls"
    assert "random initialisation" in (output_dir / "README.md").read_text()


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import PIL.Image
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    folder, image_path, expected_path = sys.argv[1:]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    image = PIL.Image.open(image_path)
    with torch.no_grad():
        logits = model(**processor(image, return_tensors="pt")).logits
    np.testing.assert_allclose(logits.numpy(), np.load(expected_path), atol=1e-5)
    classify = pipeline("image-classification", model=folder, trust_remote_code=True)
    best = classify(image, top_k=1)[0]
    assert best["label"] == model.config.id2label[int(logits.argmax())], best
    print("OK", best["label"])
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: ~10 s
def test_published_classifier_loads_without_the_package(script, pretrained_dir, image_folders, tmp_path, reset_accelerate):
    output_dir = tmp_path / "out"
    extra = ["--train_dir", str(image_folders["train"]), "--validation_dir", str(image_folders["val"]), "--max_train_steps", "2"]
    script.main(script.parse_args(argv(pretrained_dir, output_dir, *extra)))
    image_path = next((image_folders["val"] / "red").iterdir())
    model = DilatedViTMAEForImageClassification.from_pretrained(output_dir).eval()
    with torch.no_grad():
        expected = model(**DilatedViTMAEImageProcessor.from_pretrained(output_dir)(PIL.Image.open(image_path), return_tensors="pt")).logits
    np.save(tmp_path / "expected.npy", expected.numpy())
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)
    result = run_without_package([tmp_path / "remote.py", output_dir, image_path, tmp_path / "expected.npy"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK ") and result.stdout.split()[1] in ("blue", "red")


@pytest.mark.slow  # the publishing check loads the staged folder in a clean interpreter: ~10 s
def test_a_classifier_folder_is_published_as_it_is_with_its_own_card(script, pretrained_dir, tmp_path, reset_accelerate):
    from unittest import mock

    from dilated_vit_mae.publish.hub import files_to_upload, push_folder_to_hub

    output_dir = tmp_path / f"{tmp_path.name}-classifier"  # remote-code module names come from the folder name
    script.main(script.parse_args(argv(pretrained_dir, output_dir, "--max_train_steps", "2")))
    # the pre-training folder's reconstruction / feature pipelines need code a classifier folder does not ship
    assert "custom_pipelines" not in json.loads((output_dir / "config.json").read_text())
    seen, api = {}, mock.Mock()

    def upload_folder(folder_path, **kwargs):
        seen["files"], seen["card"] = files_to_upload(folder_path), (Path(folder_path) / "README.md").read_text()
        return mock.Mock(commit_url="https://huggingface.co/me/classifier/commit/abc", oid="a" * 40)

    api.upload_folder.side_effect = upload_folder
    push_folder_to_hub(output_dir, repo_id="me/classifier", api=api)  # checked in a clean process first
    assert sorted(seen["files"]) == sorted(
        ["README.md", "all_results.json", "config.json", "configuration_dilated_vit_mae.py",
         "image_processing_dilated_vit_mae.py", "model.safetensors", "modeling_dilated_vit_mae.py",
         "preprocessor_config.json"]
    )  # fmt: skip
    # its own card, rendered again so that its snippets name the repository (the local one names no repository)
    assert "# DilatedViTMAE image classifier" in seen["card"] and "license: apache-2.0" in seen["card"]
    assert 'from_pretrained("me/classifier", trust_remote_code=True)' in seen["card"]
    assert "path/to/this/folder" in (output_dir / "README.md").read_text()  # the local folder is left as it was
    api.upload_file.assert_not_called()  # no pre-training template to re-render and pin


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--learning_r", "1e-3"], "unrecognized arguments: --learning_r"),  # no abbreviations (allow_abbrev=False)
        (["--per_device_train_batch_size", "0"], "must be a positive integer, got 0"),
        (["--num_train_epochs", "-1"], "must be a positive integer"),
        (["--learning_rate", "nan"], "must be a positive number"),
        (["--label_smoothing", "1.5"], "must be a number in [0, 1]"),
        (["--drop_path_rate", "1"], "--drop_path_rate: must be a number in [0, 1)"),
        (["--layer_decay", "2"], "--layer_decay must be in (0, 1]"),
        (["--dilation_rates", "1"], "--dilation_rates must be >= 2"),
        (["--validation_dir", "val"], "--validation_dir goes with --train_dir"),
        (["--train_dir", "a", "--celeba_dir", "b"], "Give one data source"),
        (["--checkpointing_steps", "often"], "--checkpointing_steps: must be"),
        (["--checkpointing_steps", "0"], 'must be "epoch", "no" or a positive integer, got 0'),  # was a ZeroDivisionError
        (["--label_column", "a", "--label_columns", "b"], "not allowed with argument"),
        (["--rand_augment", "rand-w0"], "--rand_augment: Cannot read 'w0'"),
        (["--random_erasing", "2"], "--random_erasing: must be a number in [0, 1]"),
        (["--recipe", "big"], "invalid choice: 'big'"),
    ],
)
def test_bad_arguments_are_rejected_when_parsed(script, extra, message, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--model_name_or_path", "m", *extra])
    assert message in capsys.readouterr().err


def test_a_model_or_a_config_is_required(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args([])
    assert "Give --model_name_or_path" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# A full disk during the best-model save and the final save
# ----------------------------------------------------------------------------------------------------------------------

FULL_DISK_CHILD = textwrap.dedent(
    """
    import importlib.util, resource, signal, sys

    spec = importlib.util.spec_from_file_location("run_finetune", sys.argv[1])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from dilated_vit_mae.train.lifecycle import run_cli

    where, argv = sys.argv[2], sys.argv[3:]
    real_evaluate, accuracies = script.evaluate, iter([0.3, 0.6, 0.9])

    def evaluate_better_every_epoch(*args, **kwargs):  # so that every epoch saves a new best model
        scores = real_evaluate(*args, **kwargs)
        return {**scores, "mean_attribute_accuracy": next(accuracies, 0.0)} if scores else scores

    def on_a_full_disk(function, call):
        calls = []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) != call:
                return function(*args, **kwargs)
            # a "disk" with room for 20 kB per file (the weights are ~150 kB): writes beyond fail as on a full disk
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            limits = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, limits[1]))
            try:
                return function(*args, **kwargs)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, limits)

        return wrapper

    script.evaluate = evaluate_better_every_epoch
    if where == "best":  # the second epoch's best model
        script.save_best = on_a_full_disk(script.save_best, call=2)
    else:
        script.save_folder = on_a_full_disk(script.save_folder, call=1)
    run_cli(script.main, script.parse_args(argv))
    """
)


def run_on_a_full_disk(tmp_path, where: str, argv_: list[str]) -> subprocess.CompletedProcess:
    child = tmp_path / "full_disk.py"
    child.write_text(FULL_DISK_CHILD)
    return subprocess.run(
        [sys.executable, str(child), str(REPO_ROOT / "scripts" / "run_finetune.py"), where, *argv_],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT)),
    )  # fmt: skip


def test_a_full_disk_during_the_best_model_save_keeps_the_previous_best(script, pretrained_dir, tmp_path):
    output_dir = tmp_path / "out"
    result = run_on_a_full_disk(tmp_path, "best", argv(pretrained_dir, output_dir))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "SafetensorError" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    best = output_dir / "checkpoints" / "best"
    assert line.startswith(f"error: could not write the best model to {best}"), line
    assert "File too large" in line and re.search(r"needs about [\d.]+ kB and [\d.]+ [kMG]?B is free there", line)
    # epoch 0's best model is complete and in place; nothing partial is left under any name
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["best", "step_5"]
    assert_same_weights(best, output_dir / "checkpoints" / "step_5")
    assert (best / "config.json").is_file()
    assert not list(output_dir.rglob(".tmp-*"))


def test_a_full_disk_during_the_final_save_leaves_no_half_written_folder(script, pretrained_dir, tmp_path, reset_accelerate):
    output_dir = tmp_path / "out"
    result = run_on_a_full_disk(tmp_path, "final", argv(pretrained_dir, output_dir, "--num_train_epochs", "1"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "SafetensorError" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: could not write the final files to {output_dir}"), line
    assert "File too large" in line and "then continue with --resume_from_checkpoint latest" in line
    # no config.json, code or card without weights: only what the training wrote
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoints", "run.json", "train_log.jsonl"]
    assert not list(output_dir.rglob(".tmp-*"))

    # once there is room again, resuming the finished run writes the folder
    script.main(script.parse_args(argv(pretrained_dir, output_dir, "--num_train_epochs", "1", "--resume_from_checkpoint", "latest")))
    assert_same_weights(output_dir, output_dir / "checkpoints" / "best")
    assert json.loads((output_dir / "all_results.json").read_text())["global_step"] == 5


def test_a_truncated_checkpoint_file_is_named_on_resume(script, pretrained_dir, tmp_path, reset_accelerate):
    output_dir = tmp_path / "out"
    script.main(script.parse_args(argv(pretrained_dir, output_dir, "--num_train_epochs", "2")))
    damaged = output_dir / "checkpoints" / "step_10" / "optimizer.bin"
    damaged.write_bytes(damaged.read_bytes()[:100])
    reset_accelerate_state()
    with pytest.raises(UserError) as refused:  # was torch's "PytorchStreamReader failed reading zip archive", with its traceback
        script.main(script.parse_args(argv(pretrained_dir, output_dir, "--resume_from_checkpoint", "latest")))
    message = str(refused.value)
    assert message.startswith(f"checkpoint {damaged.parent} cannot be resumed: its optimizer.bin is damaged"), message
    assert f"--resume_from_checkpoint {output_dir / 'checkpoints' / 'step_5'} (complete ones: step_5)" in message


def test_something_that_is_not_a_model_folder_is_named(script, image_folders, pretrained_dir, tmp_path, reset_accelerate):
    data_folder = image_folders["train"]  # a data folder given as the model, e.g. by swapping two flags
    with pytest.raises(UserError, match=rf"--model_name_or_path {re.escape(str(data_folder))} is not a model folder: "
                                        r"it has no config.json \(it holds blue, red; pass"):  # fmt: skip
        script.main(script.parse_args(argv(data_folder, tmp_path / "out")))
    assert not (tmp_path / "out").exists()  # nothing written: the right folder then runs without --overwrite_output_dir
    reset_accelerate_state()
    first = tmp_path / "first"
    script.main(script.parse_args(argv(pretrained_dir, first, "--max_train_steps", "1", "--checkpointing_steps", "1")))
    reset_accelerate_state()
    checkpoint = first / "checkpoints" / "step_1"  # a checkpoint is not a model either
    with pytest.raises(UserError, match=r"is not a model folder: it has no config.json \(it is a training checkpoint"):
        script.main(script.parse_args(argv(checkpoint, tmp_path / "second")))


# The recipe: MAE's on large sets, the small-data one on small sets; every figure beside its trivial baselines
# ----------------------------------------------------------------------------------------------------------------------


def test_large_sets_get_maes_recipe_and_its_batch_rule(script, pretrained_dir, reset_accelerate):
    PartialState()  # the schedule's log line needs one
    args = script.parse_args(["--model_name_or_path", str(pretrained_dir)])
    script.apply_recipe(args, 162_770)  # CelebA's training split
    assert args.recipe_name == "mae"
    recipe = {name: getattr(args, name) for name in (
        "base_learning_rate", "learning_rate", "layer_decay", "weight_decay", "drop_path_rate", "label_smoothing",
        "mixup", "cutmix", "rand_augment", "random_erasing", "crop_scale_min", "warmup_epochs",
    )}  # fmt: skip
    assert recipe == {
        "base_learning_rate": 5e-4, "learning_rate": None, "layer_decay": 0.75, "weight_decay": 0.05,
        "drop_path_rate": 0.1, "label_smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
        "rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "crop_scale_min": 0.08, "warmup_epochs": 5.0,
    }  # fmt: skip
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.999) and args.per_device_train_batch_size == 32
    model = DilatedViTMAEForImageClassification(DilatedViTMAEConfig.from_pretrained(pretrained_dir, num_labels=2))
    schedule = training_schedule(args, 2, 162_770, drop_last=True, warmup_epochs=args.warmup_epochs)
    assert schedule.learning_rate == pytest.approx(5e-4 * 32 * 2 / 256)  # lr = blr x effective batch / 256
    assert schedule.steps_per_epoch == 162_770 // 64 and schedule.num_warmup_steps == 5 * (162_770 // 64)
    optimizer, _ = script.build_optimizer(args, model, schedule, num_processes=2)
    assert max(group["initial_lr"] for group in optimizer.param_groups) == pytest.approx(schedule.learning_rate)


def test_small_sets_get_the_small_data_recipe_and_flags_win(script, pretrained_dir):
    args = script.parse_args(["--model_name_or_path", str(pretrained_dir)])
    script.apply_recipe(args, 150)
    assert args.recipe_name == "small_data" and args.learning_rate == 2e-3 and args.mixup == args.cutmix == 0.0
    assert args.rand_augment == "rand-m9-mstd0.5-inc1" and args.random_erasing == 0.25 and args.layer_decay == 0.75
    # a flag given wins: --base_learning_rate brings the batch rule back, --mixup and "none" stay
    args = script.parse_args(["--model_name_or_path", "m", "--base_learning_rate", "1e-3", "--mixup", "0.2",
                              "--rand_augment", "none", "--random_erasing", "0"])  # fmt: skip
    script.apply_recipe(args, 150)
    assert args.learning_rate is None and args.base_learning_rate == 1e-3 and args.mixup == 0.2 and args.cutmix == 0
    assert args.rand_augment is None and args.random_erasing == 0.0
    args = script.parse_args(["--model_name_or_path", "m", "--recipe", "mae"])
    script.apply_recipe(args, 150)
    assert args.recipe_name == "mae" and args.learning_rate is None and args.mixup == 0.8


def test_a_small_image_folder_is_fine_tuned_with_the_small_data_recipe_beside_its_baselines(
    script, pretrained_dir, image_folders, tmp_path, reset_accelerate, caplog
):
    output_dir = tmp_path / "out"
    args = ["--model_name_or_path", str(pretrained_dir), "--output_dir", str(output_dir),
            "--train_dir", str(image_folders["train"]), "--validation_dir", str(image_folders["val"]),
            "--per_device_train_batch_size", "10", "--num_train_epochs", "2", "--warmup_epochs", "1"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        script.main(script.parse_args(args))
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["recipe"] == "small_data" and results["learning_rate"] == 2e-3 and results["mixup"] == 0.0
    assert results["rand_augment"] == "rand-m9-mstd0.5-inc1" and results["random_erasing"] == 0.25
    # drop_last: 24 images at batch 10 are 2 steps an epoch, not 3
    assert results["drop_last"] is True and results["global_step"] == 4
    # the baselines: majority class, and the raw-pixel logistic regression (reddish vs bluish: it separates them)
    assert results["eval_majority_baseline"] == 0.5 and results["eval_raw_pixel_baseline"] == 1.0
    assert results["raw_pixel_baseline"]["skipped"] is None
    card = (output_dir / "README.md").read_text()
    assert "| validation | logistic regression on raw pixels | 1.0000 |" in card
    assert "| validation | majority-class floor | 0.5000 |" in card
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"epoch 1: eval accuracy [0-9.]+ \(majority floor 0.5000, raw-pixel linear 1.0000\)", line)
               for line in lines)  # fmt: skip
    assert any("saved the classifier" in line and "raw-pixel linear 1.0000" in line for line in lines)


def test_the_train_loader_drops_the_last_batch_and_the_augmentation_is_maes(
    script, pretrained_dir, image_folders, reset_accelerate
):
    PartialState()  # the schedule's log line needs one
    args = script.parse_args(["--model_name_or_path", str(pretrained_dir), "--train_dir", str(image_folders["train"]),
                              "--per_device_train_batch_size", "10"])  # fmt: skip
    splits, labels = script.labelled_splits(script.load_splits(args), None, None)
    script.apply_recipe(args, len(splits["train"]))
    config = script.build_config(args, labels)
    data = script.prepare_data(args, None, config, processor_32(), labels, splits)
    assert data["loaders"]["train"].drop_last is True and len(data["loaders"]["train"]) == len(splits["train"]) // 10
    transform = data["augmentation"].transform
    assert transform.scale == (0.08, 1.0) and transform.random_erasing.probability == 0.25
    assert (transform.rand_augment.magnitude, transform.rand_augment.magnitude_std) == (9, 0.5)
    # fewer images than one batch: one clear line, not a run of zero steps
    args.per_device_train_batch_size = 100
    with pytest.raises(ValueError, match="fewer than one batch .* lower --per_device_train_batch_size"):
        training_schedule(args, 1, len(splits["train"]), drop_last=True)


def test_the_training_loop_does_not_wait_for_the_device_between_logging_steps(
    script, pretrained_dir, tmp_path, monkeypatch, reset_accelerate
):
    # as run_mae.py's loop: every .item() / .tolist() / .cpu() / bool(tensor) stops the host until the device has caught
    # up; outside the synchronisation points (logging, checkpoint and epoch-end steps: `after_step`, the evaluation
    # and the checkpoints) the loop must issue none: the loss and the finiteness check stay on the device
    sync_points = (script.after_step, script.end_epoch_evaluation, script.Run.save_checkpoint)
    allowed = {function.__code__ for function in sync_points}
    # torch.optim's step counters and the loader (sampler, decoding, augmentation: worker processes on a GPU) are
    # host-side CPU tensors, not device syncs
    host_side = (f"torch{os.sep}optim", f"torch{os.sep}utils{os.sep}data", f"accelerate{os.sep}data_loader.py")
    syncs = []
    for name in ("item", "tolist", "cpu", "__bool__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            frame, in_loop = sys._getframe(1), False
            caller = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            while frame is not None:
                if frame.f_code in allowed or any(part in frame.f_code.co_filename for part in host_side):
                    return _original(self, *args, **kwargs)  # a sync point, or the host's own CPU tensors
                in_loop = in_loop or frame.f_code is script.train.__code__
                frame = frame.f_back
            if in_loop:
                syncs.append(f"{_name} in {caller}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    output_dir = tmp_path / "out"
    common = ["--num_train_epochs", "1", "--checkpointing_steps", "no", "--mixup", "0.8", "--drop_path_rate", "0.1"]
    arguments = argv(pretrained_dir, output_dir, *common)
    arguments[arguments.index("--logging_steps") + 1] = "3"
    script.main(script.parse_args(arguments))
    assert sorted(set(syncs)) == []
    assert sorted(train_losses(output_dir)) == [3, 5]  # 40 images in batches of 8: the logging step and the last
