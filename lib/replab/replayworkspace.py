"""The replayed run's working tree: the repository at the recorded commit, the uncommitted
diff applied, the captured untracked files restored (step two of :mod:`replab.replay`).
``source`` is a :class:`replab.replay.Source` (its ``run_id``, ``manifest`` and ``captures``)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ReplayError

Say = Callable[[str], None]


def _git(args: list[str], cwd: Path | None = None, stdin: bytes | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True)
    if r.returncode != 0:
        raise ReplayError(f"git {' '.join(args[:2])} failed: "
                          f"{r.stderr.decode(errors='replace').strip()[-500:]}")
    return r.stdout.decode(errors="replace")


def rebuild_workspace(source: Any, dest: str | os.PathLike, *,
                      repo: str | os.PathLike | None = None,
                      allow_missing: bool = False, progress: Say | None = None) -> Path:
    """Recreate the original working tree in ``dest`` (which must not exist): the
    repository at the recorded commit, the uncommitted diff applied, the captured untracked
    files restored.

    ``repo``: a local path or URL to clone instead of the recorded remote. Raises
    ReplayError naming what cannot be restored (no commit recorded, repository unreachable,
    commit absent, diff that does not apply, untracked files not captured - unless
    ``allow_missing``); ``dest`` is then not created.
    """
    say = progress or (lambda _m: None)
    git = source.captures.get("git")
    if not git or not git.get("commit"):
        reason = (source.manifest.get("skipped") or {}).get("git", "no git capture")
        raise ReplayError(f"run {source.run_id} recorded no git commit ({reason}): its code "
                          "cannot be rebuilt")
    origin = str(repo) if repo else git.get("remote_url")
    if not origin:
        raise ReplayError(f"run {source.run_id} has no recorded remote; pass the repository "
                          "(a local path or URL) with repo=... / --repo")
    missing = [f["path"] for f in git.get("untracked") or [] if "content" not in f
               and "symlink" not in f]
    if missing and not allow_missing:
        raise ReplayError(
            f"run {source.run_id} had untracked files whose content was not captured "
            f"(too big, binary or secret-looking): {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}. Restore them by hand and pass "
            "allow_missing=True (--allow-missing)")
    dest = Path(dest)
    if dest.exists():
        raise ReplayError(f"{dest} already exists; replays build in a fresh directory")
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        say(f"cloning {origin} at {git['commit'][:12]}")
        try:
            _git(["clone", "--quiet", "--no-checkout", origin, str(tmp)])
        except ReplayError as exc:
            raise ReplayError(f"cannot clone the repository {origin}: {exc}; pass a "
                              "reachable copy with repo=... / --repo") from None
        try:
            _git(["checkout", "--quiet", "--detach", git["commit"]], cwd=tmp)
        except ReplayError:
            raise ReplayError(f"commit {git['commit']} is not in {origin} (force-pushed "
                              "away, or not pushed?)") from None
        patch = git.get("diff")
        raw = patch.encode() if patch else (base64.b64decode(git["diff_base64"])
                                           if git.get("diff_base64") else b"")
        if git.get("diff") is None and git.get("diff_attachment") and not raw:
            raise ReplayError(f"run {source.run_id}'s diff was too large for the manifest "
                              f"and is not in this record ({git['diff_attachment']})")
        if raw:
            if hashlib.sha256(raw).hexdigest() != git.get("diff_sha256", hashlib.sha256(
                    raw).hexdigest()):
                raise ReplayError("the recorded diff does not match its hash: corrupt record")
            say(f"applying the uncommitted diff ({len(raw)} bytes)")
            if git.get("diff_secrets_masked"):
                say(f"note: {git['diff_secrets_masked']} added line(s) of that diff held what "
                    "looked like a secret and were masked when the run was captured; the "
                    "replay runs with the masked values (read secrets from the environment)")
            _git(["apply", "--binary", "--whitespace=nowarn", "-"], cwd=tmp, stdin=raw)
        restored = 0
        for f in git.get("untracked") or []:
            target = tmp / f["path"]
            if tmp.resolve() not in target.resolve().parents:
                raise ReplayError(f"untracked path {f['path']!r} escapes the workspace")
            target.parent.mkdir(parents=True, exist_ok=True)
            if "symlink" in f:
                target.symlink_to(f["symlink"])
            elif "content" in f:
                target.write_text(f["content"], encoding="utf-8")
                restored += 1
        if restored:
            say(f"restored {restored} untracked file(s)")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
