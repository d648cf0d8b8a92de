"""Build real git repositories in tmp_path for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None,
              remote: str | None = None) -> Path:
    """A repository with one commit holding ``files`` (and ``remote`` as origin)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "t@example.org")
    git(path, "config", "user.name", "T")
    for name, text in (files or {"train.py": "print('hi')\n"}).items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    if remote:
        git(path, "remote", "add", "origin", remote)
    return path


def train_example(repo: Path, uri: str, *args: str) -> str:
    """Run the example ``train.py`` in ``repo`` against the MLflow at ``uri``; its run id."""
    out = subprocess.run([sys.executable, "train.py", *args], cwd=repo, capture_output=True,
                         text=True, timeout=180, env=dict(os.environ, MLFLOW_TRACKING_URI=uri))
    assert out.returncode == 0, out.stderr[-2000:]
    return next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("run "))
