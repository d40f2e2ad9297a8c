"""
What may be published: every file the project writes that can reach the Hub (`README.md`, `all_results.json`,
`linear_probe_results.json`, `train_log.jsonl`) goes through `publishable(obj, secret_values(args))` first.

- **Secrets are redacted by value**, not by flag name: argparse accepted `--tok` for `--token`, so a redaction that
  looked for `--token` on the command line let the value through. `secret_values(args)` collects the values of every
  argument whose name contains "token", of `HF_TOKEN` / `HUGGING_FACE_HUB_TOKEN` and the cached Hub login, and
  `redact(obj, secrets)` replaces each occurrence of them (and of anything shaped like a Hub token) in the strings of
  nested dicts / lists with `"<redacted>"`.
- **Local paths become names**: `scrub_local_paths(obj)` replaces every absolute path (`/home/me/data/celeba`,
  `~/data`, `C:\\data`) in those strings with its last component (`celeba`); relative paths and URLs are kept.
- **Nothing a run writes or logs holds a secret**: `redact_logs(secrets)` makes every later log record of the process
  (any logger, any handler, tracebacks included) redacted by value; `tracker_config(args)` is what the trainers give
  `accelerator.init_trackers` (TensorBoard's `hparams.yml` and events file, W&B...), secrets redacted;
  `lifecycle.prepare_run_folder` redacts `run.json` and the "changed arguments" warning of a resumed run.

Not Hub code (the Hub never runs it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar


T = TypeVar("T")

REDACTED = "<redacted>"
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# command-line flags whose value must never reach a card or a log
SECRET_FLAGS = ("--token", "--hub_token")
# shorter values cannot be real credentials, and replacing them everywhere would mangle the file
MIN_SECRET_LENGTH = 4
# a Hub user access token ("hf_" + 34 letters and digits), wherever it came from
HUB_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
# an absolute path: `/a/b`, `~/a`, `C:\a` or `C:/a`, not inside a word, a relative path (`data/x`, `./x`) or a URL
LOCAL_PATH_PATTERN = re.compile(r"""(?<![\w.~:/\\-])(?:~|[A-Za-z]:)?[/\\](?![/\\\s])[^\s'"`()<>\[\]{},;|*]+""")


def _cached_token() -> str | None:
    """The logged-in Hub token (`hf auth login`), or `None`; never raises (no huggingface_hub, unreadable file...)."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def secret_values(
    args: Any = None, environ: Mapping[str, str] | None = None, cached_token: bool = True
) -> set[str]:
    """
    The secrets a published file must not contain.

    Args:
        args (`argparse.Namespace` or mapping, *optional*): the values of every argument whose name contains "token"
            (`--token`, `--hub_token`, ...), strings or lists of strings.
        environ (*optional*): defaults to `os.environ`; `HF_TOKEN` and `HUGGING_FACE_HUB_TOKEN` are read from it.
        cached_token (`bool`, *optional*, defaults to `True`): add the cached Hub login (`huggingface_hub.get_token()`).

    Returns:
        The values (of at least `MIN_SECRET_LENGTH` characters).
    """
    environ = os.environ if environ is None else environ
    fields = vars(args) if args is not None and not isinstance(args, Mapping) else dict(args or {})
    values: list[Any] = [value for name, value in fields.items() if "token" in str(name).lower()]
    values += [environ.get(name) for name in TOKEN_ENV_VARS]
    if cached_token:
        values.append(_cached_token())
    flat = [v for value in values for v in (value if isinstance(value, (list, tuple)) else [value])]
    return {v for v in flat if isinstance(v, str) and len(v.strip()) >= MIN_SECRET_LENGTH}


def _map_strings(obj: Any, function) -> Any:
    """`obj` with `function` applied to every string in it (dict keys included), through dicts, lists and tuples."""
    if isinstance(obj, str):
        return function(obj)
    if isinstance(obj, Mapping):
        return {_map_strings(key, function): _map_strings(value, function) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_strings(item, function) for item in obj)
    return obj


def redact(obj: T, secrets: Iterable[str] | None = None) -> T:
    """
    `obj` (a string, or dicts / lists / tuples of them and other values) with every occurrence of each secret, and
    anything shaped like a Hub token, replaced by `"<redacted>"`. `secrets` defaults to `secret_values()` (environment
    and cached login).
    """
    secrets = secret_values() if secrets is None else secrets
    ordered = sorted({s for s in secrets if isinstance(s, str) and len(s.strip()) >= MIN_SECRET_LENGTH}, key=len)

    def hide(text: str) -> str:
        for secret in reversed(ordered):  # longest first: a secret inside another is not left half-replaced
            text = text.replace(secret, REDACTED)
        return HUB_TOKEN_PATTERN.sub(REDACTED, text)

    return _map_strings(obj, hide)


def local_path_name(path: str | os.PathLike) -> str:
    """The last component of a path (`/home/me/data/celeba/` -> `celeba`), what a published file may say of it."""
    return re.split(r"[/\\]", str(path).rstrip("/\\"))[-1] or str(path)


def scrub_local_paths(obj: T) -> T:
    """`obj` with every absolute local path in its strings replaced by its last component (`local_path_name`)."""
    return _map_strings(obj, lambda text: LOCAL_PATH_PATTERN.sub(lambda m: local_path_name(m.group(0)), text))


def publishable(obj: T, secrets: Iterable[str] | None = None) -> T:
    """`obj` as it may be published: secrets redacted (`redact`), local paths reduced to names (`scrub_local_paths`)."""
    return scrub_local_paths(redact(obj, secrets))


def tracker_config(args: Any, secrets: Iterable[str] | None = None) -> dict[str, int | float | str | bool]:
    """
    The arguments a tracker may record (`accelerator.init_trackers(name, tracker_config(args))`): those holding a
    number, string or bool, with every secret redacted by value (`secrets` defaults to `secret_values(args)`), so a
    token reaches neither TensorBoard's `hparams.yml` nor its events file.
    """
    secrets = secret_values(args) if secrets is None else secrets
    fields = vars(args) if not isinstance(args, Mapping) else dict(args)
    return redact({k: v for k, v in fields.items() if isinstance(v, (int, float, str, bool))}, secrets)


# the secrets every log record of this process is redacted of, once `redact_logs` installed the record factory
_LOG_SECRETS: set[str] = set()
_UNREDACTED_RECORD_FACTORY: Any = None


def _redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _UNREDACTED_RECORD_FACTORY(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: let the handler report it as usual
        return record
    redacted = redact(message, _LOG_SECRETS)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and record.exc_info[0] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(text, _LOG_SECRETS)  # what handlers print instead of formatting it again
    return record


def redact_logs(secrets: Iterable[str] = ()) -> None:
    """
    From now on, every log record this process creates, from any logger and whatever its handlers, has `secrets` (by
    value), the environment's and the cached login's tokens and anything shaped like a Hub token replaced by
    `"<redacted>"`, in its message and its traceback. Secrets add up over calls; the record factory is installed once.
    """
    global _UNREDACTED_RECORD_FACTORY
    _LOG_SECRETS.update(secret_values())
    _LOG_SECRETS.update(s for s in secrets if isinstance(s, str) and len(s.strip()) >= MIN_SECRET_LENGTH)
    if _UNREDACTED_RECORD_FACTORY is None:
        _UNREDACTED_RECORD_FACTORY = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacted_record)


def redact_message(text: str) -> str:
    """`text` redacted as log records are (the secrets given to `redact_logs`, the environment's and the cached login's
    tokens, anything shaped like a Hub token): for what a script prints outside logging, such as its error line."""
    return redact(text, _LOG_SECRETS | set(secret_values()))


def redact_command(command: str | Sequence[str]) -> str:
    """
    A command line with the values of `--token`/`--hub_token` replaced by `***`. This is by flag name only: redact by
    value as well (`redaction.redact`), which also catches values after flags spelt otherwise.
    """
    parts = shlex.split(command) if isinstance(command, str) else list(command)
    redacted = []
    hide_next = False
    for part in parts:
        if hide_next:
            redacted.append("***")
            hide_next = False
        elif part in SECRET_FLAGS:
            redacted.append(part)
            hide_next = True
        elif part.startswith(tuple(f"{flag}=" for flag in SECRET_FLAGS)):
            redacted.append(part.split("=", 1)[0] + "=***")
        else:
            redacted.append(part)
    return shlex.join(redacted)


def write_publishable_json(path: str | os.PathLike, obj: Any, secrets: Iterable[str] | None = None) -> Path:
    """Write `publishable(obj, secrets)` to `path` as indented JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(publishable(obj, secrets), indent=2) + "\n")
    return path


__all__ = [
    "REDACTED",
    "TOKEN_ENV_VARS",
    "local_path_name",
    "publishable",
    "redact",
    "redact_logs",
    "redact_message",
    "scrub_local_paths",
    "secret_values",
    "tracker_config",
    "write_publishable_json",
]
