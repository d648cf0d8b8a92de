"""Small helpers shared by the captures: subprocesses, hashing, reading small files."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from replab._files import CHUNK, sha256_file  # noqa: F401  (the captures' hashing)


def run(args: Sequence[str], cwd: str | None = None, timeout: float = 30,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` (a list, never a shell string) and return the completed process, with
    stdout and stderr as bytes. Raises FileNotFoundError when the program is missing and
    subprocess.TimeoutExpired after ``timeout`` seconds."""
    return subprocess.run(list(args), cwd=cwd, capture_output=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def start(args: Sequence[str], cwd: str | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``args`` (a list) with stdout and stderr piped, to be awaited by :func:`finish`
    while other work goes on. Raises FileNotFoundError when the program (or ``cwd``) is
    missing."""
    return subprocess.Popen(list(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 30) -> subprocess.CompletedProcess:
    """Wait for ``proc`` (from :func:`start`) and return it completed, as :func:`run` does.
    Raises subprocess.TimeoutExpired after ``timeout`` seconds (the process killed)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` (from :func:`start`) if it still runs and reap it. Raises nothing."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def which(program: str) -> str | None:
    """The path of ``program`` on PATH, or None."""
    return shutil.which(program)


def read_text(path: str | os.PathLike, limit: int = 1 << 20) -> str | None:
    """The start of a text file (``limit`` bytes), or None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def find_git_root(path: str | os.PathLike) -> str | None:
    """The nearest directory at or above ``path`` holding ``.git`` (no subprocess), or None."""
    current = os.path.realpath(os.fspath(path))
    if not os.path.isdir(current):
        current = os.path.dirname(current)
    while True:
        if os.path.exists(os.path.join(current, ".git")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def relative_to(path: str, root: str | None) -> str:
    """``path`` relative to ``root`` (both resolved) when it lies inside it, else absolute."""
    absolute = os.path.realpath(path)
    if root:
        root = os.path.realpath(root)
        try:
            rel = os.path.relpath(absolute, root)
        except ValueError:  # another drive on Windows
            return absolute
        if rel != ".." and not rel.startswith(".." + os.sep):
            return rel.replace(os.sep, "/")
    return absolute
