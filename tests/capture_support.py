"""Helpers for the capture tests: real git repositories in tmp_path, run as a user would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Commits need an identity; a global git config of the machine must not leak into tests.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; returns stdout. Raises CalledProcessError."""
    env = {**os.environ, **GIT_ENV}
    out = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                         text=True)
    return out.stdout


def make_repo(path: Path, files: dict[str, str] | None = None, commit: bool = True) -> Path:
    """A git repository at ``path`` on branch main, holding ``files``, committed or not."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files if files is not None else {"train.py": "print('hi')\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    if commit:
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "init")
    return path
