"""The replayed run's working tree: the repository at the recorded commit, the uncommitted
diff applied, the captured untracked files restored (step two of :mod:`replab.replay`).
``source`` is a :class:`replab.replay.Source` (its ``run_id``, ``manifest``, ``captures`` and
``origin``).

The diff, of any size, is the run's artifact ``replab/diff.patch`` (``diff_attachment`` in
the manifest names it; older records hold a small diff inline, read as it is): fetched from
the run's tracking server, or read from a bundle that carries it at that path
(:func:`bundle_files` gives what a bundle must carry), its sha256 checked, then applied.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import tracking
from .errors import ReplayError

Say = Callable[[str], None]


def _git(args: list[str], cwd: Path | None = None, stdin: bytes | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True)
    if r.returncode != 0:
        raise ReplayError(f"git {' '.join(args[:2])} failed: "
                          f"{r.stderr.decode(errors='replace').strip()[-500:]}")
    return r.stdout.decode(errors="replace")


BUNDLE_PREFIX = "bundle "  # Source.origin of a bundle: "bundle <path>"
SERVER_PREFIX = "tracking server "  # ...of a run fetched from a server: "tracking server <uri>"


def diff_artifact(git: Mapping[str, Any]) -> str | None:
    """The run artifact that holds the recorded diff (``replab/diff.patch``; a big diff of an
    older replab: ``replab/git-diff.patch``), or None when the manifest holds the diff
    inline or the run had none."""
    name = git.get("diff_attachment")
    if not name or git.get("diff") or git.get("diff_base64"):
        return None
    return f"{tracking.ARTIFACT_DIR}/{name}"


def recorded_diff(source: Any, *, client: Any = None) -> bytes:
    """The uncommitted diff of the run behind ``source``, exact bytes, its sha256 checked;
    b"" when it had none. Read inline from the manifest when it is there (older records,
    captures without an artifacts directory), else the artifact (:func:`diff_artifact`) from
    the bundle ``source`` was loaded from, or from the run's tracking server (``client``,
    default: a client of the server ``source.origin`` names).

    Raises ReplayError when the diff was not kept, cannot be fetched, or does not match its
    hash, naming the artifact and the way out."""
    git = source.captures.get("git") or {}
    path = diff_artifact(git)
    if git.get("diff"):
        raw = git["diff"].encode("utf-8", "surrogateescape")
    elif git.get("diff_base64"):
        raw = base64.b64decode(git["diff_base64"])
    elif path:
        raw = _fetch_artifact(source, path, git.get("diff_bytes"), client)
    elif git.get("diff_omitted"):
        raise ReplayError(f"run {source.run_id}'s uncommitted diff ({git.get('diff_bytes')} "
                          f"bytes) was not kept: {git['diff_omitted']}; its working tree "
                          "cannot be rebuilt (track runs with replab.tracking or `replab "
                          "run`, which keep a diff of any size)")
    else:
        return b""
    expected = git.get("diff_sha256")
    if expected and hashlib.sha256(raw).hexdigest() != expected:
        where = path or "the manifest"
        raise ReplayError(f"the recorded diff of run {source.run_id} ({where}, {len(raw)} "
                          f"bytes) does not match its sha256 {expected[:12]}: corrupt record "
                          f"from {source.origin}")
    return raw


def bundle_files(source: Any, *, client: Any = None) -> dict[str, bytes]:
    """The files a bundle of ``source`` carries beside its ``record.json``, by their path in
    the bundle (the run's artifact path, where :func:`recorded_diff` reads them): the diff
    when the manifest does not hold it inline. For ``replay.export_bundle``. Raises
    ReplayError when one cannot be fetched or does not match its hash."""
    path = diff_artifact(source.captures.get("git") or {})
    return {path: recorded_diff(source, client=client)} if path else {}


def _fetch_artifact(source: Any, path: str, size: Any, client: Any) -> bytes:
    what = f"run {source.run_id}'s uncommitted diff ({size} bytes, the artifact {path})"
    origin = str(getattr(source, "origin", "") or "")
    if origin.startswith(BUNDLE_PREFIX) and client is None:
        bundle = origin[len(BUNDLE_PREFIX):]
        try:
            with tarfile.open(bundle, "r:gz") as tar:
                member = tar.extractfile(path)
                if member is None:
                    raise KeyError(path)
                return member.read()
        except KeyError:
            raise ReplayError(f"the bundle {bundle} does not carry {what}: it was exported "
                              "by a replab that kept only the record; export it again from "
                              "the tracking server (`replab bundle export RUN -o FILE`)"
                              ) from None
        except (OSError, tarfile.TarError) as exc:
            raise ReplayError(f"cannot read {what} from the bundle {bundle}: {exc}") from None
    if client is None:
        if not origin.startswith(SERVER_PREFIX):
            raise ReplayError(f"{what} is not in this record ({origin or 'no origin'}): "
                              "replay the run from its tracking server or a bundle")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=origin[len(SERVER_PREFIX):])
    try:
        with tempfile.TemporaryDirectory(prefix="replab-diff-") as tmp:
            return Path(client.download_artifacts(source.run_id, path, tmp)).read_bytes()
    except Exception as exc:
        raise ReplayError(f"cannot fetch {what} from {getattr(client, 'tracking_uri', origin)}"
                          f": {exc}; the run's artifact store must hold it (its page lists "
                          "the artifacts)") from None


def rebuild_workspace(source: Any, dest: str | os.PathLike, *,
                      repo: str | os.PathLike | None = None,
                      allow_missing: bool = False, progress: Say | None = None,
                      client: Any = None) -> Path:
    """Recreate the original working tree in ``dest`` (which must not exist): the
    repository at the recorded commit, the uncommitted diff applied (any size: fetched by
    :func:`recorded_diff`, ``client`` passed on), the captured untracked files restored.

    ``repo``: a local path or URL to clone instead of the recorded remote. Raises
    ReplayError naming what cannot be restored (no commit recorded, repository unreachable,
    commit absent, diff not kept, not fetched, corrupt or not applying, untracked files not
    captured - unless ``allow_missing``); ``dest`` is then not created.
    """
    say = progress or (lambda _m: None)
    git = source.captures.get("git")
    if not git or not git.get("commit"):
        reason = (source.manifest.get("skipped") or {}).get("git", "no git capture")
        raise ReplayError(f"run {source.run_id} recorded no git commit ({reason}): its code "
                          "cannot be rebuilt")
    origin = str(repo) if repo else git.get("remote_url")
    root = git.get("root")
    if not origin and root and Path(root, ".git").exists():
        # no remote (a repository that was never pushed): the run's own working copy, when
        # it is on this machine, holds the commit
        origin = str(root)
        say(f"no remote recorded: cloning the run's own repository at {root}")
    if not origin:
        raise ReplayError(f"run {source.run_id} has no recorded remote and its repository "
                          f"{root or '(path unknown)'} is not on this machine; pass the "
                          "repository (a local path or URL) with repo=... / --repo")
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
    if diff_artifact(git):
        say(f"fetching the uncommitted diff ({git.get('diff_bytes')} bytes)")
    raw = recorded_diff(source, client=client)  # before cloning: a diff that is gone fails fast
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
        if raw:
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
