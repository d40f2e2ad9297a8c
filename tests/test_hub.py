"""Pushing a run's folder: the exact calls made to `huggingface_hub.HfApi` (mocked: no network here)."""

from unittest import mock

import pytest

from dilated_vit_mae import DilatedViTMAEForPreTraining
from dilated_vit_mae.hub import files_to_upload, push_folder_to_hub


@pytest.fixture
def run_folder(tiny_config, tmp_path):
    folder = tmp_path / "run"
    DilatedViTMAEForPreTraining(tiny_config).save_pretrained(folder)
    (folder / "checkpoints" / "step_2").mkdir(parents=True)
    (folder / "checkpoints" / "step_2" / "optimizer.bin").write_bytes(b"state")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("tensorboard")
    (folder / "eval").mkdir()
    (folder / "eval" / "reconstructions.png").write_bytes(b"png")
    return folder


def test_files_to_upload_leave_out_checkpoints_and_tracker_logs(run_folder):
    files = files_to_upload(run_folder)
    assert "model.safetensors" in files and "modeling_dilated_vit_mae.py" in files
    assert "eval/reconstructions.png" in files
    assert not any(f.startswith(("checkpoints/", "runs/")) for f in files)


def test_push_creates_the_repo_and_uploads_the_folder(run_folder):
    api = mock.Mock()
    api.upload_folder.return_value = mock.Mock(commit_url="https://huggingface.co/me/model/commit/abc")
    url = push_folder_to_hub(run_folder, "me/model", private=True, commit_message="first", revision="v1", api=api)
    assert url.endswith("/commit/abc")
    api.create_repo.assert_called_once_with(repo_id="me/model", private=True, exist_ok=True, repo_type="model")
    api.create_branch.assert_called_once_with(repo_id="me/model", branch="v1", exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["folder_path"] == str(run_folder) and kwargs["revision"] == "v1" and kwargs["commit_message"] == "first"
    assert "checkpoints/*" in kwargs["ignore_patterns"]


def test_failed_upload_keeps_local_files(run_folder):
    api = mock.Mock()
    api.upload_folder.side_effect = ConnectionError("offline")
    before = sorted(p.relative_to(run_folder) for p in run_folder.rglob("*"))
    with pytest.raises(ConnectionError):
        push_folder_to_hub(run_folder, "me/model", api=api)
    assert sorted(p.relative_to(run_folder) for p in run_folder.rglob("*")) == before


def test_push_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        push_folder_to_hub(tmp_path, "me/model", api=mock.Mock())
