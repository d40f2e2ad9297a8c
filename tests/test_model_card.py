"""The model cards: rendered from `model_card.md` (pre-training) and `classifier_card.md` (fine-tuning) with
huggingface_hub, filled in from the run, parsed back."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from huggingface_hub import ModelCard

from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.publish.hub import prepare_hub_folder
from dilated_vit_mae.train.lifecycle import stage_and_swap
from dilated_vit_mae.train.redaction import redact_command
from dilated_vit_mae.publish.model_card import (
    CARD_TAGS,
    TEMPLATE_PATH,
    dilated_leakage,
    draw_tokenizer_diagram,
    render_classifier_card,
    render_model_card,
)


COMMAND = (
    "accelerate launch scripts/run_mae.py --dataset_name flwrlabs/celeba --num_train_epochs 3 --hub_token hf_SECRET"
)
RESULTS = {
    "global_step": 9,
    "epochs": 3,
    "num_processes": 2,
    "effective_batch_size": 8,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 4.6875e-06,
    "base_learning_rate": 1.5e-4,
    "adam_betas": [0.9, 0.95],
    "weight_decay": 0.05,
    "warmup_steps": 1,
    "seed": 0,
    "init": None,
    "command": COMMAND,
    "dataset": {
        "name": "flwrlabs/celeba", "hub_id": "flwrlabs/celeba", "config_name": "img_align+identity+attr",
        "source": "flwrlabs/celeba", "is_celeba": True,
        "description": "[flwrlabs/celeba](https://huggingface.co/datasets/flwrlabs/celeba).",
        "train_split": "train", "train_samples": 12, "eval_split": "validation", "eval_samples": 4,
    },
    "hardware": {"device_type": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "num_processes": 2,
                 "mixed_precision": "bf16", "distributed_type": "MULTI_GPU"},
    "versions": {"transformers": "5.23.0", "torch": "2.13.0", "accelerate": "1.15.0"},
    "eval_samples": 4,
    "eval_mask_seed": 1000003,
    "eval_loss": 0.91234,
    "eval_masked_patch_mse": 0.0412345,
    "eval_psnr": 17.25,
}  # fmt: skip


def make_folder(path, config: DilatedViTMAEConfig, results: dict | None = RESULTS):
    DilatedViTMAEForPreTraining(config).save_pretrained(path)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    if results is not None:
        (path / "all_results.json").write_text(json.dumps(results))
    (path / "eval").mkdir()
    PIL.Image.new("RGB", (128, 32)).save(path / "eval" / "reconstructions.png")
    return path


@pytest.fixture
def run_folder(tiny_config, tmp_path):
    return make_folder(tmp_path / "dilated-vit-mae-celeba", tiny_config)


@pytest.fixture
def card(run_folder) -> ModelCard:
    prepare_hub_folder(run_folder)
    return ModelCard.load(run_folder / "README.md")


def test_card_parses_back_with_the_hub_metadata(card, run_folder):
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert data["license"] == "apache-2.0"
    assert set(CARD_TAGS) == {"mae", "vit", "self-supervised", "dilated-tokenization", "custom_code"}
    assert set(CARD_TAGS) <= set(data["tags"])
    assert data["datasets"] == ["flwrlabs/celeba"]
    assert set(data["metrics"]) == {"mse", "psnr"}
    assert "base_model" not in data  # trained from scratch
    # widget: the examples shipped in the folder with their static outputs
    assert len(data["widget"]) == 3
    for entry in data["widget"]:
        assert (run_folder / entry["src"]).is_file() and (run_folder / entry["output"]["url"]).is_file()
        assert PIL.Image.open(run_folder / entry["output"]["url"]).format == "PNG"


def test_evaluation_results_are_eval_results_of_the_model_index(card):
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"mse", "psnr"}
    assert results["mse"].metric_value == pytest.approx(0.0412345)
    assert results["psnr"].metric_value == pytest.approx(17.25)
    for result in results.values():
        assert result.dataset_type == "flwrlabs/celeba" and result.dataset_split == "validation"
        assert result.dataset_config == "img_align+identity+attr"
    assert card.data.model_name == "dilated-vit-mae-celeba"


def unfilled(text: str) -> list[str]:
    """Placeholders, or a missing value rendered as None (the one legitimate None is a config value)."""
    text = text.replace("| `dilated_kernel_size` | `None` |", "")
    return re.findall(r"TODO|None|\{\{ |\{%|%\}", text)


def test_card_text_is_filled_in_from_the_run(card):
    text = card.text
    assert unfilled(text) == []
    for section in ("## How the tokenizer differs", "## How to use", "### Image features", "### Masked reconstruction",
                    "### Fine-tuning on face attributes", "## Training details", "## Evaluation",
                    "## Limitations and biases", "## Citation"):  # fmt: skip
        assert section in text, section
    # config
    assert "| `dilation_rates` | `[2]` |" in text and "| `dilated_context` | `full` |" in text
    assert "| `dilated_fusion` | `sum` |" in text and "| `masking_mode` | `drop` |" in text
    assert "32 px inputs cut into 4 px patches (64 tokens)" in text
    # the exact command, without the token
    assert redact_command(COMMAND) in text and "hf_SECRET" not in text and "--hub_token '***'" in text
    # data, steps, hardware
    assert "The `train` split (12 images) for training, `validation` (4 images) for evaluation." in text
    assert "9 optimizer steps over 3 epochs, effective batch 8 (4 per device x 2 processes x 1 accumulation)" in text
    assert "2 processes on NVIDIA H100 80GB HBM3 (cuda), bf16 mixed precision (MULTI_GPU)" in text
    # evaluation
    assert "| Masked-patch MSE | 0.04123 |" in text and "| PSNR (dB) | 17.25 |" in text
    assert "![Reconstructions](eval/reconstructions.png)" in text
    assert "![Dense and dilated patch tokenizer](assets/tokenizer_diagram.png)" in text
    # usage: remote code with a pinned revision, and the package
    assert "trust_remote_code=True" in text and 'REVISION = "main"' in text and "revision=REVISION" in text
    assert 'pipeline("mae-reconstruction"' in text and "DilatedViTMAEForImageClassification" in text
    assert "pip install -e ." in text
    # limitations: leakage figures for this geometry, CelebA's terms
    assert 'Masked pixels leak into visible tokens (`dilated_context="full"`)' in text
    assert re.search(r"visible tokens read \d+% of the removed pixels", text)
    assert "non-commercial research purposes only" in text
    assert "He, Kaiming" in text and "arxiv.org/abs/2111.06377" in text


def test_linear_probe_result_appears_only_when_measured(run_folder):
    prepare_hub_folder(run_folder, examples=False)
    card = ModelCard.load(run_folder / "README.md")
    assert "accuracy" not in card.data.to_dict()["metrics"] and "Linear probe" not in card.text

    (run_folder / "linear_probe_results.json").write_text(
        json.dumps({"mean_attribute_accuracy": 0.8734, "split": "test", "num_attributes": 40})
    )
    card = render_model_card(run_folder)
    assert ModelCard.load(run_folder / "README.md").data.to_dict() == card.data.to_dict()
    probe = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert len(probe) == 1 and probe[0].metric_value == pytest.approx(0.8734) and probe[0].dataset_split == "test"
    assert "accuracy" in card.data.metrics
    assert "mean per-attribute accuracy of **87.34%**" in card.text
    assert "| Mean attribute accuracy (`test`, 40 attributes) | 87.34% |" in card.text


def test_unmeasured_results_are_left_out(tiny_config, tmp_path):
    no_eval = {k: v for k, v in RESULTS.items() if not k.startswith("eval_")}
    folder = make_folder(tmp_path / "no-eval", tiny_config, no_eval)
    card = render_model_card(folder)
    assert not card.data.eval_results and "## Evaluation" not in card.text
    assert "## Training details" in card.text

    bare = make_folder(tmp_path / "bare", tiny_config, results=None)  # save_pretrained only: no run to describe
    card = render_model_card(bare)
    assert "## Training details" not in card.text and "## Evaluation" not in card.text
    assert unfilled(card.text) == []
    assert ModelCard.load(bare / "README.md").data.library_name == "transformers"


def test_a_card_for_a_repository_pins_the_revision_and_points_the_widget_at_it(run_folder):
    prepare_hub_folder(run_folder)
    sha = "0123456789abcdef0123456789abcdef01234567"
    card = render_model_card(run_folder, repo_id="me/dilated-vit-mae", revision=sha)
    assert f'REVISION = "{sha}"  # the commit this card was published with' in card.text
    assert 'AutoModel.from_pretrained("me/dilated-vit-mae", revision=REVISION, trust_remote_code=True' in card.text
    assert card.data.model_name == "dilated-vit-mae"
    for entry in card.data.widget:
        assert entry["src"].startswith(f"https://huggingface.co/me/dilated-vit-mae/resolve/{sha}/examples/")


def test_a_sample_run_says_it_is_not_celeba_and_a_visible_context_does_not_leak(tiny_config_kwargs, tmp_path):
    config = DilatedViTMAEConfig(**tiny_config_kwargs, dilated_context="visible")
    results = json.loads(json.dumps(RESULTS))
    results["dataset"] = {"name": "celeba_sample", "is_celeba": False, "description": "a stand-in, **not CelebA**.",
                          "train_split": "train", "eval_split": "validation"}  # fmt: skip
    (tmp_path / "sample").mkdir()
    folder = make_folder(tmp_path / "sample" / "out", config, results)
    (folder / "linear_probe_results.json").write_text(json.dumps({"mean_attribute_accuracy": 0.9}))
    card = render_model_card(folder)
    assert card.data.datasets == ["celeba_sample"]
    assert "These weights were not trained on CelebA.** They were trained on a stand-in, **not CelebA**." in card.text
    assert "These labels are not CelebA's" in card.text
    assert "No masked-pixel leakage" in card.text and "leak into visible tokens" not in card.text


def test_leakage_geometry_matches_the_reference_figures():
    # 224 px, patch 16, kernel 16, 75% masking: rate 2 reads ~13% of masked pixels and touches ~86% of masked patches
    rate_2 = dilated_leakage(DilatedViTMAEConfig(dilation_rates=(2,)))
    assert rate_2["pixels"] == pytest.approx(0.13, abs=0.01) and rate_2["patches"] == pytest.approx(0.86, abs=0.02)
    rate_3 = dilated_leakage(DilatedViTMAEConfig(dilation_rates=(3,)))
    assert rate_3["pixels"] == pytest.approx(0.19, abs=0.01)
    assert dilated_leakage(DilatedViTMAEConfig(dilated_context="visible")) is None
    assert dilated_leakage(DilatedViTMAEConfig(dilation_rates=())) is None
    assert dilated_leakage(DilatedViTMAEConfig(), mask_ratio=0.0) is None


def test_tokenizer_diagram_draws_the_patch_and_every_rate(tiny_config_kwargs):
    image = draw_tokenizer_diagram(DilatedViTMAEConfig(**{**tiny_config_kwargs, "dilation_rates": (2, 3)}))
    colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
    assert (198, 219, 239) in colours  # the dense patch
    assert (255, 127, 14) in colours and (44, 160, 44) in colours  # rate 2, rate 3


# ---- nothing secret, nothing local, no figure the run did not measure ------------------------------------------------


def published_text(folder) -> str:
    return (folder / "README.md").read_text()


def test_card_redacts_tokens_by_value_whatever_the_flag_was_called(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_ENVIRONMENT_SECRET")
    results = json.loads(json.dumps(RESULTS))
    # argparse used to accept abbreviations: no flag name to look for, only the value
    results["command"] = "accelerate launch scripts/run_mae.py --hub_tok hf_ABBREVIATED --tok=hf_GLUED --seed 0"
    results["dataset"]["description"] = "faces, fetched with hf_ENVIRONMENT_SECRET."
    folder = make_folder(tmp_path / "run", tiny_config, results)
    card = render_model_card(folder, secrets={"hf_ABBREVIATED", "hf_GLUED"})
    for text in (published_text(folder), str(card)):
        assert "hf_ABBREVIATED" not in text and "hf_GLUED" not in text and "hf_ENVIRONMENT_SECRET" not in text
    assert "--hub_tok '<redacted>' '--tok=<redacted>' --seed 0" in card.text


def test_no_local_path_reaches_the_card(tiny_config, tmp_path):
    results = json.loads(json.dumps(RESULTS))
    results["command"] = f"accelerate launch {tmp_path}/scripts/run_mae.py --celeba_dir {tmp_path}/data/celeba"
    results["dataset"] = {"name": "CelebA", "hub_id": None, "source": str(tmp_path / "data" / "celeba"),
                          "is_celeba": True, "description": "CelebA (a raw download).", "train_split": "train",
                          "eval_split": "validation"}  # fmt: skip
    results["init"] = str(tmp_path / "checkpoints" / "vit-mae-base")  # initialised from a local folder
    folder = make_folder(tmp_path / "run", tiny_config, results)
    (folder / "linear_probe_results.json").write_text(json.dumps({
        "mean_attribute_accuracy": 0.9, "majority_baseline": 0.8, "eval_split": "test", "model": str(folder),
        "dataset": str(tmp_path / "data" / "celeba"), "command": f"linear_probe.py --model_name_or_path {folder}",
    }))  # fmt: skip
    card = render_model_card(folder)  # a local card: no repository to point at
    text = published_text(folder)
    for local in (str(tmp_path), "/tmp", "/home", "/work", str(folder.resolve())):
        assert local not in text, local
    assert "--celeba_dir celeba" in text and 'from_pretrained("path/to/run"' in text
    probe = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert probe.dataset_name == probe.dataset_type == "CelebA"  # the training data (same source), not its path
    assert "base_model" not in card.data.to_dict() and "initialised from a local checkpoint (`vit-mae-base`)" in text


def test_the_probe_floor_is_the_measured_one(run_folder):
    (run_folder / "linear_probe_results.json").write_text(json.dumps(
        {"mean_attribute_accuracy": 0.8734, "majority_baseline": 0.656, "eval_split": "test",
         "label_columns": ["Smiling", "Young"], "num_test": 8}
    ))  # fmt: skip
    text = render_model_card(run_folder).text
    assert "| Mean attribute accuracy (`test`, 2 attributes, 8 images) | 87.34% | 65.60% |" in text
    assert "majority-class floor" in text and "80%" not in text

    (run_folder / "linear_probe_results.json").write_text(json.dumps({"mean_attribute_accuracy": 0.8734}))
    text = render_model_card(run_folder).text
    assert "87.34%" in text and "80%" not in text and "holds no majority-class floor" in text


def test_the_template_holds_no_figures():
    template = TEMPLATE_PATH.read_text()
    template = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", "", template, flags=re.S)  # what the run fills in
    template = template.replace("Apache-2.0", "Apache")  # a license's name
    assert re.findall(r"\d+(?:\.\d+)?\s*%", template) == []
    # decimals: only the argument that switches masking off and the paper's arXiv id
    assert set(re.findall(r"\b\d+\.\d+\b", template)) <= {"0.0", "2111.06377"}


BASELINES = {
    "eval_loss": 0.42, "eval_masked_patch_mse": 0.0312, "eval_psnr": 18.1,
    "eval_baseline_zeros_loss": 1.0, "eval_baseline_zeros_masked_patch_mse": 0.2, "eval_baseline_zeros_psnr": 9.5,
    "eval_baseline_visible_mean_loss": 0.84, "eval_baseline_visible_mean_masked_patch_mse": 0.05,
    "eval_baseline_visible_mean_psnr": 16.0, "eval_oracle_masked_patch_mse": 0.011, "eval_oracle_psnr": 21.7,
}  # fmt: skip


def test_evaluation_puts_the_model_beside_trivial_predictors(tiny_config_kwargs, tmp_path):
    config = DilatedViTMAEConfig(**tiny_config_kwargs, norm_pix_loss=True)
    folder = make_folder(tmp_path / "run", config, {**RESULTS, **BASELINES})
    card = render_model_card(folder)
    text = card.text
    assert unfilled(text) == []
    assert "| metric | model | predict zeros | visible-patch mean |" in text
    assert "| Masked-patch MSE | 0.0312 | 0.2 | 0.05 |" in text and "| PSNR (dB) | 18.1 | 9.5 | 16 |" in text
    assert "| Loss (training objective) | 0.42 | 1 | 0.84 |" in text
    assert "| Masked-patch MSE, oracle | 0.011 | — | — |" in text and "| PSNR (dB), oracle | 21.7 | — | — |" in text
    assert "**0.5x** that of" in text  # 0.42 / 0.84
    # which figures use a statistic of the masked target, said plainly
    assert "The rows marked *oracle* map predictions back to pixels with each removed patch's own mean" in text
    assert "The plain MSE and PSNR rows use only the mean and variance of the image's visible patches" in text
    entries = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert entries[("mse", None)] == pytest.approx(0.0312) and entries[("psnr", None)] == pytest.approx(18.1)
    assert entries[("mse", "baseline_visible_patch_mean")] == pytest.approx(0.05)
    assert entries[("psnr", "baseline_predict_zeros")] == pytest.approx(9.5)
    assert entries[("mse", "oracle_target_patch_statistics")] == pytest.approx(0.011)
    assert entries[("loss_ratio", "baseline_visible_patch_mean")] == pytest.approx(0.5)
    reloaded = ModelCard.load(folder / "README.md").data.eval_results
    assert {(r.metric_type, r.metric_config) for r in reloaded} == set(entries)


def test_older_norm_pix_results_say_their_figures_use_the_target_statistics(tiny_config_kwargs, tmp_path):
    config = DilatedViTMAEConfig(**tiny_config_kwargs, norm_pix_loss=True)
    text = render_model_card(make_folder(tmp_path / "run", config)).text  # RESULTS: no baselines, no oracle keys
    assert "| metric | value |" in text and "| Masked-patch MSE | 0.04123 |" in text
    assert "each masked patch's own mean and variance" in text and "overstate what it predicts" in text
    assert "predict zeros" not in text


def test_example_strips_are_labelled_and_put_the_error_beside_a_trivial_predictor():
    import numpy as np
    import PIL.Image

    from dilated_vit_mae.publish.model_card import _strip_caption, reconstruction_strip

    original = PIL.Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[:16] = 255
    recomposited = np.full((32, 32, 3), 200, np.uint8)
    recomposited[:16] = 100
    result = {"original": original, "masked": original, "reconstruction": PIL.Image.fromarray(recomposited),
              "recomposited": PIL.Image.fromarray(recomposited), "mask": PIL.Image.fromarray(mask),
              "mask_ratio": 0.5, "seed": 0}  # fmt: skip
    caption = _strip_caption(result)
    # (100 - 200)^2 / 255^2 = 0.1538 for the model; the visible mean colour is exactly right here: 0
    assert "masked-pixel MSE 0.1538" in caption and "mean colour: 0.0000" in caption
    strip = reconstruction_strip(result)
    assert strip.size == (4 * 192 + 3 * 4, 24 + 192 + 28)  # tiles upscaled to 192 px, 4 px apart; header; caption
    assert (np.asarray(strip)[:24] < 128).any()  # the column labels


def test_the_probe_stands_beside_the_raw_pixel_baseline_it_measured(run_folder):
    (run_folder / "linear_probe_results.json").write_text(json.dumps(
        {"mean_attribute_accuracy": 0.8734, "majority_baseline": 0.656, "raw_pixel_baseline": 0.9012,
         "eval_split": "test", "label_columns": ["Smiling", "Young"], "num_test": 8}
    ))  # fmt: skip
    text = render_model_card(run_folder).text
    assert "| linear probe | frozen encoder | majority-class floor | logistic regression on raw pixels |" in text
    assert "| Mean attribute accuracy (`test`, 2 attributes, 8 images) | 87.34% | 65.60% | 90.12% |" in text
    assert "A logistic regression on the raw pixels of the same images scores **90.12%**." in text
    # a probe of a large set, where the raw-pixel model was skipped (null), says nothing about it
    (run_folder / "linear_probe_results.json").write_text(json.dumps(
        {"mean_attribute_accuracy": 0.8734, "majority_baseline": 0.656, "raw_pixel_baseline": None}
    ))  # fmt: skip
    assert "raw pixels" not in render_model_card(run_folder).text


def test_a_card_rendered_in_the_staging_folder_names_the_folder_it_is_swapped_into(run_folder, monkeypatch):
    # the user's scenario: run_mae.py writes its final files, the card included, into stage_and_swap's staging folder
    # (OUTPUT_DIR/.tmp-final-*); the card's snippets named that folder, so the run rendered the card again in place
    monkeypatch.chdir(run_folder.parent)

    def write(staging):
        for name in ("config.json", "preprocessor_config.json", "model.safetensors", "all_results.json"):
            shutil.copy2(Path(run_folder.name) / name, staging / name)
        render_model_card(staging)

    stage_and_swap(Path(run_folder.name), write)
    card = ModelCard.load(run_folder / "README.md")
    assert card.data.model_name == run_folder.name and ".tmp-" not in str(card)
    assert f'AutoModel.from_pretrained("{run_folder.name}")' in card.text


# ----------------------------------------------------------------------------------------------------------------------
# The fine-tuned classifier's card
# ----------------------------------------------------------------------------------------------------------------------


def card_results(**overrides) -> dict:
    results = {
        "metric_name": "accuracy", "eval_split": "validation", "eval_accuracy": 0.875, "eval_majority_baseline": 0.5,
        "test_split": "test", "test_accuracy": 0.8, "test_majority_baseline": 0.4, "best_epoch": 2,
        "eval_history": [{}, {}, {}], "labels": {"task": "single_label", "num_labels": 2, "columns": ["label"]},
        "dataset": {"name": "pets", "hub_id": None, "description": None}, "init": "facebook/vit-mae-base",
        "init_is_hub_id": True,
        "global_step": 30, "epochs": 3, "effective_batch_size": 8, "seed": 0, "adam_betas": [0.9, 0.999],
        "weight_decay": 0.05, "learning_rate": 1e-3, "warmup_steps": 2, "layer_decay": 0.75, "drop_path_rate": 0.1,
        "classifier_pooling": "mean", "label_smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
        "eval_raw_pixel_baseline": 0.9, "test_raw_pixel_baseline": 0.7, "raw_pixel_baseline": {"skipped": None},
        "recipe": "mae", "rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "crop_scale_min": 0.08,
    }  # fmt: skip
    return {**results, **overrides}


def test_card_states_the_results_and_metadata():
    card = render_classifier_card(card_results(), repo_id="me/pets-classifier")
    assert card.data.pipeline_tag == "image-classification" and card.data.base_model == "facebook/vit-mae-base"
    assert card.data.eval_results[0].metric_value == 0.875 and card.data.eval_results[0].dataset_split == "validation"
    assert "| test (the selected model) | accuracy | 0.8000 |" in card.text
    assert 'from_pretrained("me/pets-classifier", trust_remote_code=True)' in card.text
    # a local initialisation is named by its folder, and is not a base_model
    local = render_classifier_card(card_results(init="outputs/my-run", init_is_hub_id=False))
    assert local.data.base_model is None and "starting from outputs/my-run" in local.text




def test_the_card_puts_every_figure_beside_its_trivial_baselines():
    card = render_classifier_card(card_results()).text
    assert "| validation | majority-class floor | 0.5000 |" in card
    assert "| validation | logistic regression on raw pixels | 0.9000 |" in card
    assert "| test | majority-class floor | 0.4000 |" in card
    assert "| test | logistic regression on raw pixels | 0.7000 |" in card
    assert "MAE's fine-tuning recipe" in card and "rand-m9-mstd0.5-inc1, random erasing 0.25" in card
    # where the raw-pixel model was too big to fit, the card says why instead of leaving the row out
    skipped = card_results(eval_raw_pixel_baseline=None, test_raw_pixel_baseline=None,
                           raw_pixel_baseline={"skipped": "not computed: 182637 images x 150528 values exceed 50,000,000"},
                           recipe="small_data")  # fmt: skip
    text = render_classifier_card(skipped).text
    assert "| validation | logistic regression on raw pixels | not computed: 182637 images" in text
    assert "the small-data recipe (fewer than 10,000 training images)" in text
