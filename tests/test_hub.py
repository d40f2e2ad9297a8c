"""Pushing a run's folder: the exact calls made to `huggingface_hub.HfApi` (mocked: no network here). The check that
refuses a folder which does not load is tested in tests/test_push_to_hub.py; here it is switched off (`check=False`)."""

import json
from pathlib import Path
from unittest import mock

import pytest

from dilated_vit_mae import DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.hub import CUSTOM_PIPELINES, add_inference_code, files_to_upload, push_folder_to_hub


@pytest.fixture
def run_folder(tiny_config, tmp_path):
    folder = tmp_path / "run"
    DilatedViTMAEForPreTraining(tiny_config).save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder / "checkpoints" / "step_2").mkdir(parents=True)
    (folder / "checkpoints" / "step_2" / "optimizer.bin").write_bytes(b"state")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("tensorboard")
    (folder / "eval").mkdir()
    (folder / "eval" / "reconstructions.png").write_bytes(b"png")
    (folder / "eval" / "reconstructions_epoch_0.png").write_bytes(b"png")
    return folder


def test_files_to_upload_leave_out_checkpoints_and_tracker_logs(run_folder):
    files = files_to_upload(run_folder)
    assert "model.safetensors" in files and "modeling_dilated_vit_mae.py" in files
    assert "eval/reconstructions.png" in files and "eval/reconstructions_epoch_0.png" not in files
    assert not any(f.startswith(("checkpoints/", "runs/")) for f in files)


def test_push_creates_the_repo_and_uploads_the_folder(run_folder):
    api = mock.Mock()
    uploaded = {}

    def upload_folder(folder_path, **kwargs):
        uploaded["files"] = files_to_upload(folder_path)
        uploaded["config"] = json.loads((Path(folder_path) / "config.json").read_text())
        return mock.Mock(commit_url="https://huggingface.co/me/model/commit/abc", oid="a" * 40)

    api.upload_folder.side_effect = upload_folder
    url = push_folder_to_hub(
        run_folder, "me/model", private=True, commit_message="first", revision="v1", api=api, check=False
    )
    assert url.endswith("/commit/abc")
    api.create_repo.assert_called_once_with(repo_id="me/model", private=True, exist_ok=True, repo_type="model")
    api.create_branch.assert_called_once_with(repo_id="me/model", branch="v1", exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["revision"] == "v1" and kwargs["commit_message"] == "first" and kwargs["repo_type"] == "model"
    assert "checkpoints/*" in kwargs["ignore_patterns"]
    # what was uploaded: a staged copy, completed into a publishable repository, without checkpoints or logs
    staged = Path(api.upload_folder.call_args.kwargs["folder_path"])
    assert staged != run_folder and not staged.exists()  # removed afterwards
    assert {"model.safetensors", "modeling_dilated_vit_mae.py", "pipeline_dilated_vit_mae.py", "handler.py",
            "README.md", "eval/reconstructions.png"} <= set(uploaded["files"])  # fmt: skip
    assert not any(f.startswith(("checkpoints/", "runs/")) for f in uploaded["files"])
    assert uploaded["config"]["custom_pipelines"] == CUSTOM_PIPELINES
    # then the card again, pinned to the upload commit
    api.upload_file.assert_called_once()
    assert api.upload_file.call_args.kwargs["path_in_repo"] == "README.md"
    assert api.upload_file.call_args.kwargs["revision"] == "v1"


def test_failed_upload_keeps_local_files(run_folder):
    api = mock.Mock()
    api.upload_folder.side_effect = ConnectionError("offline")
    before = {p.relative_to(run_folder): p.read_bytes() for p in run_folder.rglob("*") if p.is_file()}
    siblings = set(run_folder.parent.iterdir())
    with pytest.raises(ConnectionError):
        push_folder_to_hub(run_folder, "me/model", api=api, check=False)
    assert {p.relative_to(run_folder): p.read_bytes() for p in run_folder.rglob("*") if p.is_file()} == before
    assert set(run_folder.parent.iterdir()) == siblings  # no staging folder left behind


def test_add_inference_code_ships_the_pipeline_and_the_handler(run_folder):
    written = add_inference_code(run_folder)
    assert written == ["pipeline_dilated_vit_mae.py", "handler.py", "config.json"]
    config = json.loads((run_folder / "config.json").read_text())
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    assert config["auto_map"]["AutoModelForPreTraining"].endswith("DilatedViTMAEForPreTraining")  # untouched
    assert "class EndpointHandler" in (run_folder / "handler.py").read_text()


def test_push_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        push_folder_to_hub(tmp_path, "me/model", api=mock.Mock())
