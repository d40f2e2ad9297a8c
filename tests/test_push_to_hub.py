"""Publishing: the exact folder to upload is checked in a clean process where the package cannot be imported, a broken
folder is refused before any call to the Hub, and `scripts/push_to_hub.py` / `run_mae.py --push_to_hub` make the
expected calls to a mocked `huggingface_hub.HfApi`."""

import json
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import ModelCard

from conftest import load_file
from dilated_vit_mae import (
    DilatedViTMAEConfig,
    DilatedViTMAEForImageClassification,
    DilatedViTMAEForPreTraining,
    DilatedViTMAEImageProcessor,
)
from dilated_vit_mae.publish import hub, model_card
from dilated_vit_mae.publish.hub import FolderCheckError, check_folder, files_to_upload, prepare_hub_folder, push_folder_to_hub


REPO_ROOT = Path(__file__).resolve().parent.parent
SHA = "0123456789abcdef0123456789abcdef01234567"
FAKE_REPORT = {"loss": 1.0, "pipelines": ["mae-reconstruction"], "handler": True, "card": True}


def load_script(name: str):
    return load_file(f"scripts/{name}.py")


@pytest.fixture
def run_folder(tiny_config, tmp_path):
    """A training run's output: a publishable folder, plus checkpoints and logs that must not be uploaded."""
    folder = tmp_path / f"{tmp_path.name}-run"  # remote-code module names come from the folder name: keep it unique
    DilatedViTMAEForPreTraining(tiny_config).save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    (folder / "all_results.json").write_text(json.dumps({"global_step": 3, "command": "accelerate launch scripts/run_mae.py",
                                                         "eval_masked_patch_mse": 0.05, "eval_psnr": 15.0}))  # fmt: skip
    prepare_hub_folder(folder, examples=False)
    (folder / "checkpoints" / "step_3").mkdir(parents=True)
    (folder / "checkpoints" / "step_3" / "optimizer.bin").write_bytes(b"state")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("tensorboard")
    return folder


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def recording_api():
    """A mock HfApi that records what each call saw (the staged folder is removed after the push)."""
    api = mock.Mock()
    seen = {}

    def upload_folder(folder_path, **kwargs):
        seen["folder_path"] = folder_path
        seen["files"] = files_to_upload(folder_path)
        every = [p for p in Path(folder_path).rglob("*") if p.is_file()]
        seen["contents"] = {p.relative_to(folder_path).as_posix(): p.read_bytes().decode("latin-1") for p in every}
        seen["card"] = (Path(folder_path) / "README.md").read_text()
        return mock.Mock(commit_url=f"https://huggingface.co/me/model/commit/{SHA}", oid=SHA)

    def upload_file(path_or_fileobj, **kwargs):
        seen["pinned_card"] = Path(path_or_fileobj).read_text()

    api.upload_folder.side_effect = upload_folder
    api.upload_file.side_effect = upload_file
    return api, seen


@pytest.mark.slow  # a clean interpreter loads the folder's model, pipeline and handler: ~15 s
def test_the_exact_folder_to_upload_loads_without_the_package(run_folder):
    api, seen = recording_api()
    before = snapshot(run_folder)
    with mock.patch.object(hub, "check_folder", wraps=check_folder) as check:
        result = push_folder_to_hub(run_folder, "me/dilated-vit-mae", private=True, api=api)
    assert result.url.endswith(SHA) and result.commit_oid == SHA
    # the check ran on exactly the folder that was uploaded, and passed everything a user will do with it
    check.assert_called_once()
    assert str(check.call_args.args[0]) == seen["folder_path"]
    assert [name for name, *_ in api.method_calls] == ["create_repo", "upload_folder", "upload_file"]
    assert not any(f.startswith(("checkpoints/", "runs/")) for f in seen["files"])
    assert {"pipeline_dilated_vit_mae.py", "handler.py", "README.md", "model.safetensors"} <= set(seen["files"])
    # the card was rendered for the repository, then pinned to the upload commit
    assert 'from_pretrained("me/dilated-vit-mae"' in seen["card"] and 'REVISION = "main"' in seen["card"]
    assert f'REVISION = "{SHA}"' in seen["pinned_card"]
    assert ModelCard(seen["pinned_card"]).data.library_name == "transformers"
    assert snapshot(run_folder) == before  # nothing local changed


def test_check_reports_what_it_ran(run_folder):
    with mock.patch("subprocess.run") as run:
        run.return_value = mock.Mock(
            returncode=0, stdout="noise\nCHECK-REPORT " + json.dumps(FAKE_REPORT) + "\n", stderr=""
        )
        assert check_folder(run_folder) == FAKE_REPORT
    command, kwargs = run.call_args.args[0], run.call_args.kwargs
    assert command[-1] == str(run_folder.resolve())
    assert kwargs["env"]["HF_HUB_OFFLINE"] == "1" and "PYTHONPATH" not in kwargs["env"]
    assert kwargs["cwd"] != str(REPO_ROOT)
    assert 'sys.modules["dilated_vit_mae"] = None' in hub.CHECK_SCRIPT


def test_a_folder_missing_its_code_is_refused_before_any_call(run_folder):
    (run_folder / "modeling_dilated_vit_mae.py").unlink()
    api = mock.Mock()
    with pytest.raises(FolderCheckError, match="modeling_dilated_vit_mae.py is missing"):
        push_folder_to_hub(run_folder, "me/model", api=api)
    assert api.method_calls == []


def test_a_card_that_does_not_parse_is_refused_before_any_call(run_folder):
    (run_folder / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")
    api = mock.Mock()
    with pytest.raises(FolderCheckError, match="README.md does not parse"):
        push_folder_to_hub(run_folder, "me/model", api=api)
    assert api.method_calls == []


@pytest.mark.slow  # the clean interpreter imports the broken code: ~8 s
def test_a_folder_whose_code_fails_is_refused_before_any_call(run_folder):
    modeling = run_folder / "modeling_dilated_vit_mae.py"
    modeling.write_text(modeling.read_text() + '\nraise RuntimeError("broken on purpose")\n')
    api = mock.Mock()
    before = snapshot(run_folder)
    with pytest.raises(FolderCheckError, match="broken on purpose"):
        push_folder_to_hub(run_folder, "me/model", api=api)
    assert api.method_calls == []
    assert snapshot(run_folder) == before


def test_a_folder_that_cannot_be_completed_is_refused(tiny_config, tmp_path):
    folder = tmp_path / "weights-only"
    DilatedViTMAEForPreTraining(tiny_config).save_pretrained(folder)  # no image processor
    api = mock.Mock()
    with pytest.raises(FolderCheckError, match="could not be made publishable"):
        push_folder_to_hub(folder, "me/model", api=api)
    assert api.method_calls == []


def test_a_folder_that_is_not_publishable_yet_is_completed_in_the_uploaded_copy_only(tiny_config, tmp_path):
    folder = tmp_path / "saved"
    DilatedViTMAEForPreTraining(tiny_config).save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    before = snapshot(folder)
    api, seen = recording_api()
    with mock.patch.object(hub, "check_folder", return_value=FAKE_REPORT):
        push_folder_to_hub(folder, "me/model", api=api)
    assert {"pipeline_dilated_vit_mae.py", "handler.py", "README.md", "assets/tokenizer_diagram.png",
            "examples/astronaut_reconstruction.png"} <= set(seen["files"])  # fmt: skip
    assert snapshot(folder) == before


# ---- scripts/push_to_hub.py ------------------------------------------------------------------------------------------


def test_dry_run_lists_the_files_checks_them_and_uploads_nothing(run_folder, capsys):
    push_to_hub = load_script("push_to_hub")
    before = snapshot(run_folder)
    with mock.patch.object(push_to_hub, "check_folder", return_value=FAKE_REPORT) as check, \
            mock.patch("huggingface_hub.HfApi") as hf_api:  # fmt: skip
        status = push_to_hub.main(push_to_hub.parse_args([str(run_folder), "--repo_id", "me/model", "--dry_run"]))
    assert status == 0
    check.assert_called_once()
    hf_api.assert_not_called()
    out = capsys.readouterr().out
    assert "Would upload" in out and "model.safetensors" in out and "pipeline_dilated_vit_mae.py" in out
    would_upload, left_out = out.split("Left out (")
    assert "optimizer.bin" not in would_upload and "events.out" not in would_upload
    assert "checkpoints/step_3/optimizer.bin  (not one of the published files)" in left_out
    assert "runs/events.out  (not one of the published files)" in left_out
    assert "nothing was uploaded" in out
    assert snapshot(run_folder) == before


def plant(folder: Path, outside: Path) -> list[str]:
    """Secrets, a link out of the folder, pickles and tracker logs where a careless upload would take them."""
    outside.write_text("PLANTED-OUTSIDE-SECRET")
    (folder / ".env").write_text("HF_TOKEN=hf_PLANTED")
    (folder / "secrets.json").write_text('{"token": "hf_PLANTED"}')
    (folder / "passwd").symlink_to(outside)
    (folder / "checkpoints" / "step_3" / "rng_state.pkl").write_bytes(b"PLANTED pickle")
    (folder / "wandb" / "latest-run").mkdir(parents=True)
    (folder / "wandb" / "latest-run" / "output.log").write_text("PLANTED log")
    # beside published files, under names a glob allowlist took: `assets/*`, `examples/*`, `*_dilated_vit_mae.py`
    (folder / "assets" / "secrets.json").write_text('{"token": "hf_PLANTED"}')
    (folder / "examples").mkdir(exist_ok=True)
    (folder / "examples" / "id_rsa").write_text("-----BEGIN PLANTED PRIVATE KEY-----")
    (folder / "evil_dilated_vit_mae.py").write_text("import os  # PLANTED: trust_remote_code would run this\n")
    return [".env", "secrets.json", "passwd", "checkpoints/step_3/rng_state.pkl", "wandb/latest-run/output.log",
            "assets/secrets.json", "examples/id_rsa", "evil_dilated_vit_mae.py"]  # fmt: skip


def test_dry_run_and_upload_list_what_they_leave_out(run_folder, tmp_path, capsys):
    push_to_hub = load_script("push_to_hub")
    planted = plant(run_folder, tmp_path / "outside.txt")
    with mock.patch.object(push_to_hub, "check_folder", return_value=FAKE_REPORT):
        assert push_to_hub.main(push_to_hub.parse_args([str(run_folder), "--repo_id", "me/model", "--dry_run"])) == 0
    would_upload, left_out = capsys.readouterr().out.split("Left out (")
    assert all(name not in would_upload for name in planted) and all(name in left_out for name in planted)
    assert "passwd  (a symbolic link, never followed" in left_out

    api, seen = recording_api()
    with mock.patch.object(hub, "check_folder", return_value=FAKE_REPORT):
        assert push_to_hub.main(push_to_hub.parse_args([str(run_folder), "--repo_id", "me/model"]), api=api) == 0
    uploaded, left_out = capsys.readouterr().out.split("Left out (")
    assert all(name in left_out for name in planted) and set(planted).isdisjoint(seen["files"])
    assert not any("PLANTED" in content for content in seen["contents"].values())


def test_dry_run_says_when_the_folder_would_be_refused(run_folder, capsys):
    push_to_hub = load_script("push_to_hub")
    (run_folder / "configuration_dilated_vit_mae.py").unlink()
    with mock.patch("huggingface_hub.HfApi") as hf_api:
        status = push_to_hub.main(push_to_hub.parse_args([str(run_folder), "--repo_id", "me/model", "--dry_run"]))
    assert status == 1 and "REFUSED" in capsys.readouterr().out
    hf_api.assert_not_called()


def test_script_pushes_with_its_options(run_folder):
    push_to_hub = load_script("push_to_hub")
    api, seen = recording_api()
    argv = [str(run_folder), "--repo_id", "me/model", "--private", "--revision", "exp", "--commit_message", "v0"]
    with mock.patch.object(hub, "check_folder", return_value=FAKE_REPORT):
        assert push_to_hub.main(push_to_hub.parse_args(argv), api=api) == 0
    api.create_repo.assert_called_once_with(repo_id="me/model", private=True, exist_ok=True, repo_type="model")
    api.create_branch.assert_called_once_with(repo_id="me/model", branch="exp", exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["revision"] == "exp" and kwargs["commit_message"] == "v0"
    assert api.upload_file.call_args.kwargs["revision"] == "exp"


def counting_renders(monkeypatch) -> list[tuple[str, str, str | None]]:
    """Every card rendered from now on (`model_card._render`, the one path of both templates), as (template, model
    id, revision)."""
    renders, render = [], model_card._render

    def counted(card_data, template_path, secrets, **facts):
        renders.append((Path(template_path).name, facts.get("model_id"), facts.get("revision")))
        return render(card_data, template_path, secrets, **facts)

    monkeypatch.setattr(model_card, "_render", counted)
    return renders


def test_a_push_renders_the_card_once(run_folder, monkeypatch):
    # the user's scenario: `run_mae.py --hub_model_id me/dilated-vit-mae` rendered the folder's card for the repository,
    # then `push_to_hub.py` publishes it. The push rendered it twice (for the repository in the staging copy, where it
    # already was, then pinned to the upload commit): now once, pinned, from the files uploaded
    prepare_hub_folder(run_folder, repo_id="me/dilated-vit-mae", examples=False)
    renders = counting_renders(monkeypatch)
    push_to_hub = load_script("push_to_hub")
    api, seen = recording_api()
    with mock.patch.object(hub, "check_folder", return_value=FAKE_REPORT):
        assert push_to_hub.main(push_to_hub.parse_args([str(run_folder), "--repo_id", "me/dilated-vit-mae"]), api=api) == 0
    assert renders == [("model_card.md", "me/dilated-vit-mae", SHA)]
    assert 'from_pretrained("me/dilated-vit-mae"' in seen["card"] and 'REVISION = "main"' in seen["card"]
    assert f'REVISION = "{SHA}"' in seen["pinned_card"] and 'from_pretrained("me/dilated-vit-mae"' in seen["pinned_card"]
    # pushed to another repository, the upload commit's card is first rendered for that one
    renders.clear()
    api, seen = recording_api()
    with mock.patch.object(hub, "check_folder", return_value=FAKE_REPORT):
        assert push_to_hub.main(push_to_hub.parse_args([str(run_folder), "--repo_id", "me/other"]), api=api) == 0
    assert renders == [("model_card.md", "me/other", "main"), ("model_card.md", "me/other", SHA)]
    assert 'from_pretrained("me/other"' in seen["card"] and 'REVISION = "main"' in seen["card"]
    # a dry run renders the card it would upload, once
    renders.clear()
    with mock.patch.object(push_to_hub, "check_folder", return_value=FAKE_REPORT):
        assert push_to_hub.main(push_to_hub.parse_args([str(run_folder), "--repo_id", "me/other", "--dry_run"])) == 0
    assert renders == [("model_card.md", "me/other", "main")]


def test_a_classifier_push_renders_its_card_once(tiny_config_kwargs, tmp_path, monkeypatch):
    from test_model_card import card_results

    folder = tmp_path / "classifier"
    DilatedViTMAEForImageClassification(DilatedViTMAEConfig(**tiny_config_kwargs, num_labels=2)).save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder / "all_results.json").write_text(json.dumps(card_results()))
    model_card.render_classifier_card(card_results()).save(folder / "README.md")
    renders = counting_renders(monkeypatch)
    api, seen = recording_api()
    push_folder_to_hub(folder, "me/classifier", api=api, check=False)
    assert renders == [("classifier_card.md", "me/classifier", None)]  # classifier cards are not pinned
    assert 'from_pretrained("me/classifier", trust_remote_code=True)' in seen["card"]
    api.upload_file.assert_not_called()


def test_script_refuses_a_broken_folder_without_calling_the_hub(run_folder):
    push_to_hub = load_script("push_to_hub")
    (run_folder / "model.safetensors").unlink()
    api = mock.Mock()
    assert push_to_hub.main(push_to_hub.parse_args([str(run_folder), "--repo_id", "me/model"]), api=api) == 1
    assert api.method_calls == []


def test_script_rejects_bad_arguments(tmp_path):
    push_to_hub = load_script("push_to_hub")
    with pytest.raises(SystemExit):
        push_to_hub.parse_args([str(tmp_path), "--repo_id", "me/model"])  # no config.json
    with pytest.raises(SystemExit):
        push_to_hub.parse_args([str(REPO_ROOT / "configs" / "dilated-vit-mae-tiny-64"), "--repo_id", "no-namespace"])


# ---- scripts/run_mae.py --push_to_hub --------------------------------------------------------------------------------


def test_training_run_renders_its_card_and_pushes(tiny_config_kwargs, tmp_path, reset_accelerate):
    config_dir = tmp_path / "tiny-config"
    config_dir.mkdir()
    DilatedViTMAEConfig(**tiny_config_kwargs).to_json_file(config_dir / "config.json")
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).to_json_file(
        config_dir / "preprocessor_config.json"
    )
    output_dir = tmp_path / "out"
    argv = [
        "--config_name", str(config_dir), "--output_dir", str(output_dir), "--max_train_samples", "8",
        "--max_eval_samples", "4", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--num_train_epochs", "1", "--push_to_hub", "--hub_model_id", "me/tiny-mae", "--hub_private_repo",
        "--hub_revision", "exp", "--hub_token", "hf_SECRET",
    ]  # fmt: skip
    run_mae = load_script("run_mae")
    api, seen = recording_api()
    with mock.patch("huggingface_hub.HfApi", return_value=api) as hf_api, \
            mock.patch.object(hub, "check_folder", return_value=FAKE_REPORT) as check:  # fmt: skip
        run_mae.main(run_mae.parse_args(argv))
    # the local folder is publishable as it is, its card made from the run
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.model_name == "tiny-mae" and card.data.datasets == ["celeba_sample"]
    assert {"mse", "psnr"} <= {r.metric_type for r in card.data.eval_results}
    assert "--num_train_epochs 1" in card.text and "hf_SECRET" not in card.text
    assert "2 optimizer steps over 1 epoch, effective batch 4" in card.text
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["dataset"]["train_samples"] == 8 and results["hardware"]["device_type"] == "cpu"
    runtime = results["hardware"]["train_runtime_seconds"]
    assert runtime > 0 and f"1 process on CPU, fp32, {runtime:.0f} s of training" in card.text  # short runs in seconds
    assert "hf_SECRET" not in results["command"]
    # and it was pushed: token, private repo, branch, after the check
    hf_api.assert_called_once_with(token="hf_SECRET")
    check.assert_called_once()
    api.create_repo.assert_called_once_with(repo_id="me/tiny-mae", private=True, exist_ok=True, repo_type="model")
    assert api.upload_folder.call_args.kwargs["revision"] == "exp"
    assert api.upload_folder.call_args.kwargs["commit_message"] == "Pre-training: 2 steps"
    assert not any(f.startswith("checkpoints/") for f in seen["files"])
