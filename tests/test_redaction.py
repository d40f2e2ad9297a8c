"""`dilated_vit_mae/train/redaction.py`: secrets redacted by value, local paths reduced to names; and the scripts that write
publishable files refuse argparse abbreviations (`--tok` for `--token` used to slip past redaction by flag name)."""

import argparse
import json
import logging
from pathlib import Path
from unittest import mock

import pytest

from conftest import load_file
from dilated_vit_mae import DilatedViTMAEConfig, DilatedViTMAEForPreTraining, DilatedViTMAEImageProcessor
from dilated_vit_mae.train.redaction import (
    REDACTED,
    local_path_name,
    publishable,
    redact,
    redact_command,
    redact_logs,
    scrub_local_paths,
    secret_values,
    tracker_config,
    write_publishable_json,
)


REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "celeba_sample"
HUB_SHAPED = "hf_" + "Ab3" * 12  # what a real user access token looks like


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch):
    """No token in the environment or the cached login unless a test sets one."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)


def test_secret_values_come_from_token_arguments_environment_and_cached_login(monkeypatch):
    args = argparse.Namespace(token="hf_arg_token", hub_token="hf_hub_token", report_to_token=["hf_in_a_list"],
                              seed=1234567, output_dir="/tmp/out", push_to_hub=True, revision=None)  # fmt: skip
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_old_env")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_cached_login")
    assert secret_values(args) == {"hf_arg_token", "hf_hub_token", "hf_in_a_list", "hf_from_env", "hf_old_env",
                                   "hf_cached_login"}  # fmt: skip
    assert secret_values({"token": "abc"}, environ={}, cached_token=False) == set()  # too short to be a credential
    assert secret_values(None, environ={}, cached_token=False) == set()


def test_a_failing_token_lookup_does_not_break_writing(monkeypatch):
    def broken():
        raise OSError("token file unreadable")

    monkeypatch.setattr("huggingface_hub.get_token", broken)
    assert secret_values({"token": "hf_given"}, environ={}) == {"hf_given"}


def test_redact_replaces_every_occurrence_in_nested_values():
    results = {
        "command": "accelerate launch run_mae.py --tok hf_SECRET --seed 1",  # an abbreviation: no flag to look for
        "nested": [{"note": "hf_SECRET and hf_SECRET"}, ("hf_SECRETLONGER",), 0.5, None, True],
        "hf_SECRET": "as a key too",
        "from_elsewhere": f"token={HUB_SHAPED}",
    }
    redacted = redact(results, {"hf_SECRET", "hf_SECRETLONGER"})
    assert "hf_SECRET" not in json.dumps(redacted) and HUB_SHAPED not in json.dumps(redacted)
    assert redacted["command"] == f"accelerate launch run_mae.py --tok {REDACTED} --seed 1"
    assert redacted["nested"] == [{"note": f"{REDACTED} and {REDACTED}"}, (REDACTED,), 0.5, None, True]
    assert redacted[REDACTED] == "as a key too" and redacted["from_elsewhere"] == f"token={REDACTED}"
    assert results["command"].endswith("hf_SECRET --seed 1")  # the input is not modified


def test_redact_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_environment_secret")
    assert redact("x hf_environment_secret y") == f"x {REDACTED} y"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("accelerate launch /work/main/scripts/run_mae.py --celeba_dir /data/celeba --output_dir=/tmp/x/out/",
         "accelerate launch run_mae.py --celeba_dir celeba --output_dir=out"),
        ("~/data/faces and C:\\Users\\me\\faces", "faces and faces"),
        ("'/home/me/my run/x'", "'my run/x'"),
        # kept: URLs, relative paths, fractions, the model's own notation
        ("https://huggingface.co/datasets/flwrlabs/celeba", "https://huggingface.co/datasets/flwrlabs/celeba"),
        ("data/celeba_sample/ ./outputs ../x/y", "data/celeba_sample/ ./outputs ../x/y"),
        ("blr 1.5e-4 x 64 / 256, and/or 1/4", "blr 1.5e-4 x 64 / 256, and/or 1/4"),
    ],
)  # fmt: skip
def test_scrub_local_paths_keeps_only_the_last_component(text, expected):
    assert scrub_local_paths(text) == expected


def test_publishable_results_hold_no_secret_and_no_local_path(tmp_path):
    results = {"dataset": {"source": str(tmp_path / "celeba"), "name": "CelebA"}, "init": str(tmp_path / "ckpt"),
               "command": f"run_mae.py --hub_tok hf_SECRET --celeba_dir {tmp_path}/celeba", "eval_psnr": 17.5}  # fmt: skip
    path = write_publishable_json(tmp_path / "all_results.json", results, {"hf_SECRET"})
    text = path.read_text()
    assert "hf_SECRET" not in text and str(tmp_path) not in text and "/tmp" not in text
    assert json.loads(text) == publishable(results, {"hf_SECRET"})
    assert json.loads(text)["dataset"]["source"] == "celeba" and json.loads(text)["eval_psnr"] == 17.5
    assert local_path_name(tmp_path / "celeba") == "celeba"


def test_once_redact_logs_ran_no_log_record_of_any_logger_holds_the_secret(caplog):
    secret = "tok-SECRET-unit-0001"
    redact_logs({secret})
    library = logging.getLogger("some.library.module")
    with caplog.at_level(logging.INFO):
        library.warning("resuming with changed arguments: %s", {"argv": ["--token", secret]})
        try:
            raise RuntimeError(f"could not log in with {secret}")
        except RuntimeError:
            library.exception("failed")
    assert secret not in caplog.text and caplog.text.count(REDACTED) == 2
    assert "--token', '<redacted>'" in caplog.text and "RuntimeError: could not log in with <redacted>" in caplog.text
    with caplog.at_level(logging.INFO):
        library.info("nothing secret here: %d%%", 5)
    assert caplog.records[-1].getMessage() == "nothing secret here: 5%"


def test_tracker_config_keeps_scalar_arguments_and_redacts_secrets():
    args = argparse.Namespace(token="tok-SECRET-unit-0002", seed=3, lr=1e-3, push_to_hub=False, output_dir="out",
                              argv=["--token", "tok-SECRET-unit-0002"], note="made with tok-SECRET-unit-0002")  # fmt: skip
    config = tracker_config(args)
    assert config == {"token": REDACTED, "seed": 3, "lr": 1e-3, "push_to_hub": False, "output_dir": "out",
                      "note": f"made with {REDACTED}"}  # fmt: skip


# ---- the scripts: no abbreviations ----------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tiny_config_kwargs, tmp_path):
    folder = tmp_path / "model"
    DilatedViTMAEForPreTraining(DilatedViTMAEConfig(**tiny_config_kwargs)).save_pretrained(folder)
    DilatedViTMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_linear_probe_refuses_an_abbreviated_token_flag(model_dir, capsys):
    script = load_file("scripts/linear_probe.py")
    with pytest.raises(SystemExit):
        script.parse_args(["--model_name_or_path", str(model_dir), "--tok", "hf_SECRET"])
    assert "unrecognized arguments: --tok" in capsys.readouterr().err
    assert script.parse_args(["--model_name_or_path", str(model_dir), "--token", "hf_SECRET"]).token == "hf_SECRET"


@pytest.mark.parametrize(
    "path, argv",
    [
        ("scripts/push_to_hub.py", ["{model_dir}", "--repo_id", "me/model", "--tok", "hf_SECRET"]),
        ("scripts/visualize.py", ["--model", "{model_dir}", "--images", "x.png", "--output", "o.png", "--max_im", "2"]),
        ("benchmarks/ablation.py", ["--smoke", "--prob", "1"]),
        ("benchmarks/bench_data_pipeline.py", ["--num_im", "8"]),
    ],
)
def test_scripts_refuse_abbreviated_flags(path, argv, model_dir, capsys):
    module = load_file(path)
    argv = [arg.format(model_dir=model_dir) for arg in argv]
    with pytest.raises(SystemExit):
        module.parse_args(argv)
    assert f"unrecognized arguments: {argv[-2]}" in capsys.readouterr().err


def test_bench_speed_refuses_abbreviated_flags(capsys):
    module = load_file("benchmarks/bench_speed.py")
    # past the parser, the benchmark would start: stop it there, should the abbreviation be accepted
    with mock.patch("sys.argv", ["bench_speed.py", "--rep", "1"]), pytest.raises(SystemExit), \
            mock.patch.object(module.torch, "manual_seed", side_effect=RuntimeError("the benchmark started")):  # fmt: skip
        module.main()
    assert "unrecognized arguments: --rep" in capsys.readouterr().err


# ---- scripts/linear_probe.py writes a publishable linear_probe_results.json ----------------------------------------


def test_linear_probe_results_hold_no_token_and_no_local_path(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_ENVIRONMENT_SECRET")
    script = load_file("scripts/linear_probe.py")
    argv = ["--model_name_or_path", str(model_dir), "--celeba_dir", str(SAMPLE_DIR), "--token", "hf_PROBE_SECRET",
            "--no_feature_cache", "--max_train_samples", "16", "--max_eval_samples", "8", "--probe_epochs", "2"]  # fmt: skip
    with mock.patch("sys.argv", ["scripts/linear_probe.py", *argv]):
        script.main(script.parse_args(argv))
    text = (model_dir / "linear_probe_results.json").read_text()
    written = json.loads(text)
    assert "hf_PROBE_SECRET" not in text and "hf_ENVIRONMENT_SECRET" not in text
    assert "--token '***'" in written["command"]  # as the trainers write it (redact_command)
    for local in (str(tmp_path), str(REPO_ROOT), "/tmp", "/work", "/home"):
        assert local not in text, local
    assert written["model"] == "model" and written["dataset"] == "celeba_sample"
    assert 0.0 <= written["mean_attribute_accuracy"] <= 1.0


# ---- the trainers: no token in any file they write, tracker logs included, nor in any line they log ---------------


ARG_TOKEN, HUB_ARG_TOKEN, ENV_TOKEN = "tok-SECRET-from-the-flag-0042", "tok-SECRET-hub-flag-0077", "tok-SECRET-env-0099"


def run_script(path: str, argv: list[str]) -> str:
    """Run a training script as a user would (a fresh process, HF_TOKEN set); its stdout and stderr."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_TOKEN": ENV_TOKEN, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / path), *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def assert_no_secret_anywhere(output_dir: Path, logs: str, secrets: tuple[str, ...]) -> None:
    files = [path for path in output_dir.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert "hparams.yml" in names and any(name.startswith("events.out.tfevents") for name in names)  # tracking ran
    for secret in secrets:
        assert secret not in logs, (secret, [line for line in logs.splitlines() if secret in line])
        leaking = [str(path.relative_to(output_dir)) for path in files if secret.encode() in path.read_bytes()]
        assert leaking == [], (secret, leaking)
    hparams = next(output_dir.rglob("hparams.yml")).read_text()
    assert REDACTED in hparams  # the token arguments are there, redacted (not dropped unseen)


@pytest.mark.slow  # a training run in a fresh process (two for the fine-tune): ~40 s each here
def test_run_finetune_writes_and_logs_no_token_with_tracking_and_resume(model_dir, tmp_path):
    output_dir = tmp_path / "classifier"
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--token", ARG_TOKEN,
            "--with_tracking", "--report_to", "tensorboard", "--max_train_samples", "16", "--max_eval_samples", "8",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--num_train_epochs", "1",
            "--warmup_epochs", "0", "--logging_steps", "1"]  # fmt: skip
    logs = run_script("scripts/run_finetune.py", argv)
    # a resumed run with a changed argument: its "changed arguments" warning names what changed, not the token
    resumed = run_script("scripts/run_finetune.py", [*argv[:-6], "--num_train_epochs", "2", "--warmup_epochs", "0",
                                                     "--logging_steps", "1", "--resume_from_checkpoint", "latest"])  # fmt: skip
    assert "changed arguments: num_train_epochs 1 -> 2" in resumed
    assert_no_secret_anywhere(output_dir, logs + resumed, (ARG_TOKEN, ENV_TOKEN))


@pytest.mark.slow  # a training run in a fresh process (two for the fine-tune): ~40 s each here
def test_run_mae_writes_and_logs_no_token_with_tracking(model_dir, tmp_path):
    output_dir = tmp_path / "mae"
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--token", ARG_TOKEN,
            "--hub_token", HUB_ARG_TOKEN, "--with_tracking", "--report_to", "tensorboard", "--max_train_samples", "8",
            "--max_eval_samples", "4", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
            "--num_train_epochs", "1", "--logging_steps", "1", "--seed", "0"]  # fmt: skip
    logs = run_script("scripts/run_mae.py", argv)
    assert_no_secret_anywhere(output_dir, logs, (ARG_TOKEN, HUB_ARG_TOKEN, ENV_TOKEN))


def test_redact_command_hides_tokens():
    assert redact_command(["run.py", "--token", "hf_x", "--hub_token=hf_y", "--seed", "1"]) == (
        "run.py --token '***' '--hub_token=***' --seed 1"
    )
