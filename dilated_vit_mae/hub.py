"""Publishing a training run's output folder to the Hugging Face Hub."""

from __future__ import annotations

import logging
import os
from fnmatch import fnmatch
from pathlib import Path


logger = logging.getLogger(__name__)

# what a run writes next to the model that does not belong in the model repository
IGNORE_PATTERNS = ("checkpoints/*", "runs/*", ".tmp-*", "*/.tmp-*", "__pycache__/*")


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """Relative paths of the files `push_folder_to_hub` would upload, sorted."""
    root = Path(folder)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in files if not any(fnmatch(f, pattern) for pattern in IGNORE_PATTERNS))


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload DilatedViTMAE",
    revision: str | None = None,
    api=None,
) -> str:
    """
    Create `repo_id` (if needed) and upload `folder` to it with `huggingface_hub`, leaving out checkpoints and
    tracker logs. Local files are never modified or deleted, whether the upload succeeds or not.

    Args:
        folder (`str` or `os.PathLike`): a `save_pretrained` folder (model, image processor, code).
        repo_id (`str`): `namespace/name` on the Hub.
        token (`str`, *optional*): a write token; defaults to the logged-in one.
        private (`bool`, *optional*, defaults to `False`): create the repository private.
        commit_message (`str`, *optional*): message of the upload commit.
        revision (`str`, *optional*): a branch to upload to (created if missing); defaults to `main`.
        api (`huggingface_hub.HfApi`, *optional*): the client to use (tests pass a mock).

    Returns:
        The URL of the upload commit.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    if not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved model folder.")
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None and revision != "main":
        api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=list(IGNORE_PATTERNS),
    )
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info(f"uploaded {folder} to {repo_id}: {url}")
    return url
