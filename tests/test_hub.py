"""Pushing a run's folder: the exact calls made to `huggingface_hub.HfApi` (mocked: no network here). The check that
refuses a folder which does not load is tested in tests/test_push_to_hub.py; here it is switched off (`check=False`)."""

import json
from pathlib import Path
from unittest import mock

import pytest

from dilated_vit_mae import DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.publish.hub import (
    CUSTOM_PIPELINES,
    LINK_REASON,
    NOT_PUBLISHED_REASON,
    FolderCheckError,
    add_inference_code,
    files_to_upload,
    plan_upload,
    push_folder_to_hub,
)


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


@pytest.fixture
def planted(run_folder, tmp_path):
    """What must never reach the Hub, planted in the run's folder: secrets, a link out of it, pickles, tracker logs."""
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:PLANTED-OUTSIDE-SECRET:/root:/bin/bash\n")
    (run_folder / ".env").write_text("HF_TOKEN=hf_PLANTED_ENV\n")
    (run_folder / "secrets.json").write_text(json.dumps({"token": "hf_PLANTED_JSON"}))
    (run_folder / "notes.txt").symlink_to(outside)
    (run_folder / "assets").mkdir()
    (run_folder / "assets" / "tokenizer_diagram.png").symlink_to(outside)  # a published name, but a link
    (run_folder / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    for name in ("optimizer.pkl", "rng_state.pkl"):
        (run_folder / "checkpoints" / "step_2" / name).write_bytes(b"\x80\x04pickle")
    (run_folder / "checkpoints" / "step_2" / "nested").mkdir()
    (run_folder / "checkpoints" / "step_2" / "nested" / "scheduler.pkl").write_bytes(b"\x80\x04pickle")
    (run_folder / "wandb" / "run-1" / "logs").mkdir(parents=True)
    (run_folder / "wandb" / "run-1" / "logs" / "debug.log").write_text("HF_TOKEN=hf_PLANTED_LOG")
    (run_folder / "examples").mkdir()
    (run_folder / "examples" / ".secret").write_text("hf_PLANTED_HIDDEN")
    return {
        ".env": NOT_PUBLISHED_REASON, "secrets.json": NOT_PUBLISHED_REASON, "notes.txt": LINK_REASON,
        "assets/tokenizer_diagram.png": LINK_REASON, "linked_dir/": LINK_REASON,
        "checkpoints/step_2/optimizer.bin": NOT_PUBLISHED_REASON,
        "checkpoints/step_2/optimizer.pkl": NOT_PUBLISHED_REASON, "checkpoints/step_2/rng_state.pkl": NOT_PUBLISHED_REASON,
        "checkpoints/step_2/nested/scheduler.pkl": NOT_PUBLISHED_REASON,
        "wandb/run-1/logs/debug.log": NOT_PUBLISHED_REASON, "examples/.secret": NOT_PUBLISHED_REASON,
        "runs/events.out": NOT_PUBLISHED_REASON, "eval/reconstructions_epoch_0.png": NOT_PUBLISHED_REASON,
    }  # fmt: skip


def test_plan_upload_lists_every_planted_file_as_left_out(planted, run_folder):
    plan = plan_upload(run_folder)
    assert plan.left_out == planted
    assert set(plan.files).isdisjoint(planted) and "model.safetensors" in plan.files


def test_published_names_are_exact_and_the_folder_records_name_the_rest(run_folder):
    from dilated_vit_mae.publish.model_card import write_card_assets

    write_card_assets(run_folder)  # the diagram, and the examples listed in examples/examples.json
    listed = json.loads((run_folder / "examples" / "examples.json").read_text())["images"]
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "../outside.safetensors"}}
    (run_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (run_folder / "model-00001-of-00002.safetensors").write_bytes(b"shard")
    planted = ["model-00002-of-00002.safetensors", "evil_dilated_vit_mae.py", "assets/secrets.json", "assets/x.png",
               "examples/id_rsa", "examples/unlisted.png", "examples/unlisted_reconstruction.png",
               "eval/reconstructions.png.bak"]  # fmt: skip
    for name in planted:
        (run_folder / name).write_bytes(b"PLANTED")
    plan = plan_upload(run_folder)
    assert {name: plan.left_out.get(name) for name in planted} == dict.fromkeys(planted, NOT_PUBLISHED_REASON)
    expected = {"model-00001-of-00002.safetensors", "model.safetensors.index.json", "assets/tokenizer_diagram.png",
                "examples/examples.json"}  # fmt: skip
    for name in listed:
        expected |= {f"examples/{name}", f"examples/{Path(name).stem}_reconstruction.png"}
    assert expected <= set(plan.files) and len(listed) == 3
    # a record cannot reach outside its folder, or name a file that is not an image
    (run_folder / "examples" / "examples.json").write_text(json.dumps({"images": ["../config.json", "id_rsa", ".x.png"]}))
    files = files_to_upload(run_folder)
    assert not any(name.startswith("examples/") and name != "examples/examples.json" for name in files)


def uploading_api():
    """A mock HfApi whose upload_folder records every file it would send (the staged folder, filtered as the Hub
    client filters it by `allow_patterns`) and their contents."""
    from huggingface_hub.utils import filter_repo_objects

    api, uploaded = mock.Mock(), {}

    def upload_folder(folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        root = Path(folder_path)
        every = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        for name in filter_repo_objects(every, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            uploaded[name] = (root / name).read_bytes()
        return mock.Mock(commit_url="https://huggingface.co/me/model/commit/abc", oid="a" * 40)

    api.upload_folder.side_effect = upload_folder
    return api, uploaded


def test_a_linked_published_file_is_refused_before_any_call(planted, run_folder):
    api, _ = uploading_api()
    with pytest.raises(FolderCheckError, match=r"assets/tokenizer_diagram.png must be files, not symbolic links"):
        push_folder_to_hub(run_folder, "me/model", api=api, check=False)
    assert api.method_calls == []


def test_only_published_files_are_uploaded_and_the_rest_is_reported(planted, run_folder, caplog):
    (run_folder / "assets" / "tokenizer_diagram.png").unlink()  # the one planted link that would be refused
    del planted["assets/tokenizer_diagram.png"]
    api, uploaded = uploading_api()
    with caplog.at_level("INFO", logger="dilated_vit_mae.publish.hub"):
        result = push_folder_to_hub(run_folder, "me/model", api=api, check=False)
    assert result.left_out == planted and str(result) == "https://huggingface.co/me/model/commit/abc"
    assert set(uploaded) == set(result.files) and set(uploaded).isdisjoint(planted)
    assert {"model.safetensors", "config.json", "README.md", "handler.py", "eval/reconstructions.png"} <= set(uploaded)
    everything = b"".join(uploaded.values())
    assert b"PLANTED" not in everything and b"pickle" not in everything
    for name in planted:  # each one named in the log, with the reason
        assert name in caplog.text


def test_push_creates_the_repo_and_uploads_the_folder(run_folder):
    api = mock.Mock()
    uploaded = {}

    def upload_folder(folder_path, **kwargs):
        uploaded["files"] = files_to_upload(folder_path)
        uploaded["config"] = json.loads((Path(folder_path) / "config.json").read_text())
        return mock.Mock(commit_url="https://huggingface.co/me/model/commit/abc", oid="a" * 40)

    api.upload_folder.side_effect = upload_folder
    result = push_folder_to_hub(
        run_folder, "me/model", private=True, commit_message="first", revision="v1", api=api, check=False
    )
    assert result.url.endswith("/commit/abc") and result.commit_oid == "a" * 40
    assert "checkpoints/step_2/optimizer.bin" in result.left_out and result.files == uploaded["files"]
    api.create_repo.assert_called_once_with(repo_id="me/model", private=True, exist_ok=True, repo_type="model")
    api.create_branch.assert_called_once_with(repo_id="me/model", branch="v1", exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["revision"] == "v1" and kwargs["commit_message"] == "first" and kwargs["repo_type"] == "model"
    assert "checkpoints/step_2/optimizer.bin" not in kwargs["allow_patterns"] and "config.json" in kwargs["allow_patterns"]
    # what was uploaded: a staged copy, completed into a publishable repository, without checkpoints or logs
    staged = Path(api.upload_folder.call_args.kwargs["folder_path"])
    assert staged != run_folder and not staged.exists()  # removed afterwards
    assert {"model.safetensors", "modeling_dilated_vit_mae.py", "pipeline_dilated_vit_mae.py", "handler.py",
            "README.md", "eval/reconstructions.png"} <= set(uploaded["files"])  # fmt: skip
    assert not any(f.startswith(("checkpoints/", "runs/")) for f in uploaded["files"])
    assert CUSTOM_PIPELINES.items() <= uploaded["config"]["custom_pipelines"].items()
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
    assert CUSTOM_PIPELINES.items() <= config["custom_pipelines"].items()
    assert config["auto_map"]["AutoModelForPreTraining"].endswith("DilatedViTMAEForPreTraining")  # untouched
    assert "class EndpointHandler" in (run_folder / "handler.py").read_text()


def test_push_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        push_folder_to_hub(tmp_path, "me/model", api=mock.Mock())


def test_uploaded_results_and_card_hold_no_token_and_no_local_path(run_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_ENVIRONMENT_SECRET")
    command = f"accelerate launch {tmp_path}/scripts/run_mae.py --hub_tok hf_GIVEN_SECRET --celeba_dir {tmp_path}/celeba"
    results = {"global_step": 2, "command": command, "init": None, "note": "hf_ENVIRONMENT_SECRET",
               "dataset": {"name": "CelebA", "source": str(tmp_path / "celeba"), "is_celeba": True}}  # fmt: skip
    (run_folder / "all_results.json").write_text(json.dumps(results))
    probe = {"mean_attribute_accuracy": 0.9, "model": str(run_folder), "dataset": str(tmp_path / "celeba"),
             "command": f"linear_probe.py --tok hf_GIVEN_SECRET --celeba_dir {tmp_path}/celeba"}  # fmt: skip
    (run_folder / "linear_probe_results.json").write_text(json.dumps(probe))
    before = (run_folder / "all_results.json").read_text()
    api, uploaded = uploading_api()
    push_folder_to_hub(run_folder, "me/model", token="hf_GIVEN_SECRET", api=api, check=False)
    assert {"all_results.json", "linear_probe_results.json", "README.md"} <= set(uploaded)
    for name, content in uploaded.items():
        if name.endswith((".json", ".md", ".py")):
            text = content.decode()
            assert "hf_GIVEN_SECRET" not in text and "hf_ENVIRONMENT_SECRET" not in text, name
            for local in (str(tmp_path), "/tmp", "/home", "/work"):
                assert local not in text, (name, local)
    assert json.loads(uploaded["all_results.json"])["dataset"]["source"] == "celeba"
    assert (run_folder / "all_results.json").read_text() == before  # the local file is left as it was
