"""The ``git`` capture: commit, branch, remote, and everything a replay needs to rebuild the
working tree (the diff against HEAD and the untracked files).

Three git calls on a clean tree (rev-parse, status, config), run at once (the capture waits
for the slowest, not for the sum), and a fourth (diff) when tracked files changed. The diff,
of any size, is kept once: as the attachment ``diff.patch`` when the capture has an
``artifacts_dir`` (a tracked run logs it as ``replab/diff.patch``; the manifest holds its
``diff_sha256``, ``diff_bytes`` and ``diff_attachment``, not its text), inline in the
manifest otherwise (``replab capture`` without ``--artifacts-dir``: there is nowhere else).
``GIT_OPTIONAL_LOCKS=0`` keeps ``git status`` from taking the index lock, so a capture never
races the user's own git commands.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
from collections.abc import Mapping

from replab.capture._util import finish, sha256_file, start, stop
from replab.capture.registry import Context, Skip, capture
from replab.redact import secret_file, strip_url_credentials
from replab.secretmask import GIT_ATTRIBUTE, mask_added_lines, mask_text, reindex

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

UNTRACKED_MAX_BYTES = 64 * 1024  # inline an untracked text file up to this size...
UNTRACKED_TOTAL_BYTES = 1024 * 1024  # ...while the inlined total stays under this
UNTRACKED_MAX_FILES = 1000  # list at most this many untracked files
UNTRACKED_HASH_MAX_BYTES = 256 * 1024 * 1024  # hash untracked files up to this size
DIFF_ATTACHMENT = "diff.patch"  # the diff, whatever its size, when there is an artifacts_dir
DIFF_MAX_BYTES = 32 * 1024 * 1024  # without one, the most a manifest holds inline

# --full-index: whole blob ids, so that a masked file's id can be recomputed (secretmask.reindex)
_DIFF_ARGS = ["diff", "--binary", "--full-index", "--no-color", "--no-ext-diff",
              "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/"]


class GitError(RuntimeError):
    """A git command failed for a reason other than 'not a repository'."""


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_OPTIONAL_LOCKS"] = "0"
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def git(args: list[str], cwd: str, ok_codes: tuple[int, ...] = (0,)) -> bytes:
    """Run ``git args`` in ``cwd`` and return stdout. Raises Skip when git is not installed,
    GitError on an unexpected exit status."""
    return _output(args, _start(args, cwd), ok_codes)


def _start(args: list[str], cwd: str) -> subprocess.Popen:
    try:
        return start(["git", *args], cwd=cwd, env=_git_env())
    except FileNotFoundError as exc:
        raise Skip("git is not installed") from exc


def _output(args: list[str], proc: subprocess.Popen, ok_codes: tuple[int, ...] = (0,)) -> bytes:
    """The stdout of ``git args`` started as ``proc``. Raises GitError on an unexpected exit
    status."""
    done = finish(proc)
    if done.returncode not in ok_codes:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise GitError(f"git {args[0]} exited {done.returncode}: {message}")
    return done.stdout


_TOPLEVEL = ["rev-parse", "--show-toplevel"]
# porcelain paths are relative to the root wherever git runs: status need not wait for it
_STATUS = ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"]
_REMOTES = ["config", "--get-regexp", r"^remote\..*\.url$"]


def toplevel(path: str, proc: subprocess.Popen | None = None) -> str:
    """The root of the work tree containing ``path`` (``proc``: ``git rev-parse
    --show-toplevel`` already started there). Raises Skip outside a repository,
    FileNotFoundError when ``path`` does not exist."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"repository path {path} does not exist")
    try:
        out = _output(_TOPLEVEL, proc or _start(_TOPLEVEL, path))
    except GitError as exc:
        text = str(exc).lower()
        if "not a git repository" in text or "must be run in a work tree" in text:
            raise Skip(f"{path} is not inside a git work tree") from None
        raise
    return os.fsdecode(out.rstrip(b"\n"))


class Status:
    """``git status --porcelain=v2 --branch -z``, parsed. (A plain class, not a dataclass:
    importing dataclasses, with inspect and ast, was a tenth of ``replab capture``'s start-up.)"""

    def __init__(self) -> None:
        self.commit: str | None = None
        self.branch: str | None = None
        self.detached = False
        self.upstream: str | None = None
        self.staged = 0
        self.unstaged = 0
        self.unmerged = 0
        self.untracked: list[str] = []


def parse_status(raw: bytes) -> Status:
    """Parse porcelain v2 output (``-z``, with ``--branch``). Pure; raises nothing."""
    status = Status()
    tokens = raw.split(b"\0")
    i = 0
    while i < len(tokens):
        token = os.fsdecode(tokens[i])
        i += 1
        if not token:
            continue
        kind = token[0]
        if kind == "#":
            parts = token.split(" ", 2)
            key, value = (parts[1], parts[2]) if len(parts) == 3 else (parts[-1], "")
            if key == "branch.oid":
                status.commit = None if value == "(initial)" else value
            elif key == "branch.head":
                status.detached = value == "(detached)"
                status.branch = None if status.detached else value
            elif key == "branch.upstream":
                status.upstream = value
        elif kind in "12":
            xy = token[2:4]
            status.staged += xy[0] != "."
            status.unstaged += xy[1] != "."
            if kind == "2":
                i += 1  # a rename or copy: the original path follows as its own token
        elif kind == "u":
            status.unmerged += 1
        elif kind == "?":
            status.untracked.append(token[2:])
    return status


def parse_remotes(raw: bytes) -> dict[str, str]:
    """``git config --get-regexp ^remote\\..*\\.url$`` output -> {name: url without
    credentials}. Pure."""
    remotes: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, _, url = line.partition(" ")
        if key.startswith("remote.") and key.endswith(".url"):
            remotes[key[len("remote."):-len(".url")]] = strip_url_credentials(url.strip())
    return remotes


def _pick_remote(remotes: dict[str, str], upstream: str | None) -> str | None:
    if upstream:
        for name in sorted(remotes, key=len, reverse=True):  # longest match: "my/fork/main"
            if upstream.startswith(name + "/"):
                return name
    if "origin" in remotes:
        return "origin"
    return min(remotes) if remotes else None


def no_mask_paths(root: str, paths: list[str]) -> set[str]:
    """The ``paths`` (relative to ``root``) whose git attribute ``replab-no-mask`` is set: the
    per-file opt-out of assignment masking. One git call, made only when something was
    masked; a failing call opts nothing out (masking is the safe side)."""
    if not paths:
        return set()
    try:
        raw = git(["check-attr", "-z", GIT_ATTRIBUTE, "--", *paths], cwd=root)
    except GitError as exc:
        log.warning("cannot read the %s attribute (%s): masking every file", GIT_ATTRIBUTE, exc)
        return set()
    fields = [os.fsdecode(f) for f in raw.split(b"\0")]  # path, attribute, value, ...
    return {fields[i] for i in range(0, len(fields) - 2, 3)
            if fields[i + 2] not in ("unspecified", "unset", "false")}


def _working_bytes(root: str, path: str) -> bytes | None:
    full = os.path.join(root, path)
    if os.path.islink(full):
        return None
    try:
        with open(full, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _diff(ctx: Context, root: str, commit: str | None) -> dict[str, Any]:
    if commit is None:  # no commits yet: diff against the empty tree
        base = git(["hash-object", "-t", "tree", "--stdin"], cwd=root).decode().strip()
    else:
        base = "HEAD"
    raw = git([*_DIFF_ARGS, base], cwd=root)
    # Mask what the added lines hold before anything keeps the diff: the attachment, the
    # manifest, the base64 of a non-UTF-8 one. surrogateescape carries bytes
    # that are not UTF-8 through unchanged.
    text = raw.decode("utf-8", "surrogateescape")
    masked = mask_added_lines(text)
    if masked.paths:
        keep = no_mask_paths(root, list(masked.paths))
        if keep:
            masked = mask_added_lines(text, keep=keep)
    if masked.lines:
        raw = reindex(masked.diff, masked.files, lambda path: _working_bytes(root, path)).encode(
            "utf-8", "surrogateescape")
        log.warning("the uncommitted changes add %d line(s) holding what looks like a secret "
                    "(a token, a key, a URL with a password, a password = ... assignment): "
                    "masked in the run record; read secrets from the environment instead "
                    "(or mark a false positive with '%s')", masked.lines, "replab: no-mask")
    # the record holds (and its hash covers) the diff as masked
    out: dict[str, Any] = {"diff_sha256": hashlib.sha256(raw).hexdigest(), "diff_bytes": len(raw)}
    if masked.lines:
        out["diff_secrets_masked"] = masked.lines
    out.update(_keep_diff(ctx, raw))
    return out


def _keep_diff(ctx: Context, raw: bytes) -> dict[str, Any]:
    """Where the (masked) diff ``raw`` is kept: the attachment :data:`DIFF_ATTACHMENT`, any
    size, exact bytes, when the capture has an ``artifacts_dir``; else inline (UTF-8 text, or
    base64 for a file in another encoding) up to ``diff_max_bytes``, beyond which it is left
    out with the reason (``diff_omitted``). Raises OSError when the attachment cannot be
    written (the capture records it)."""
    name = ctx.attach(DIFF_ATTACHMENT, raw)
    if name is not None:
        return {"diff": None, "diff_attachment": name}
    cap = int(ctx.option("diff_max_bytes", DIFF_MAX_BYTES))
    if len(raw) > cap:
        log.warning("the uncommitted diff is %d bytes, more than a manifest holds inline (%d): "
                    "left out; give the capture an artifacts directory (--artifacts-dir, as "
                    "replab.tracking does) to keep it", len(raw), cap)
        return {"diff": None, "diff_omitted": f"larger than {cap} bytes and no artifacts "
                                              "directory to keep it in"}
    try:
        return {"diff": raw.decode("utf-8")}
    except UnicodeDecodeError:  # a text file in another encoding: keep the exact bytes
        import base64  # here: rarely needed, and every capture's start-up would pay it

        return {"diff": None, "diff_base64": base64.b64encode(raw).decode("ascii")}


def detach_diff(info: Mapping[str, Any]) -> tuple[dict[str, Any], bytes] | None:
    """A git capture holding its diff inline (collected without an artifacts directory) ->
    the capture naming the attachment :data:`DIFF_ATTACHMENT` instead, and the diff's exact
    bytes to store there; None when it holds no inline diff. Pure; for
    :func:`replab.tracking.record_manifest`, so a run stores the diff once."""
    if info.get("diff_attachment"):
        return None
    if info.get("diff"):
        raw = info["diff"].encode("utf-8", "surrogateescape")
    elif info.get("diff_base64"):
        import base64  # here: rarely needed, and every capture's start-up would pay it

        raw = base64.b64decode(info["diff_base64"])
    else:
        return None
    out = {k: v for k, v in info.items() if k != "diff_base64"}
    out.update(diff=None, diff_attachment=DIFF_ATTACHMENT, diff_bytes=len(raw))
    out.setdefault("diff_sha256", hashlib.sha256(raw).hexdigest())
    return out, raw


def _is_text(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _mask_entry(entry: dict[str, Any], text: str,
                masked: dict[str, tuple[dict[str, Any], str, str]]) -> None:
    """Mask the secret-looking assignments of an inlined file. Its sha256 then covers the
    content as recorded, as the diff's does: a replay restores that content, and a hash of a
    small file must not let anyone test guesses of the secret."""
    content, count = mask_text(text, entry["path"])
    if count:
        masked[entry["path"]] = (entry, text, entry["sha256"])
        entry.update(content=content, secrets_masked=count,
                     sha256=hashlib.sha256(content.encode()).hexdigest())


def untracked_files(ctx: Context, root: str, paths: list[str]) -> dict[str, Any]:
    """Sizes, sha256 and (for small text files, within the caps) the content of the
    untracked files ``paths`` (relative to ``root``), secret-looking assignments masked
    (``secrets_masked``: how many lines) unless the file opts out. Unreadable files are
    listed with the reason; raises nothing for them."""
    per_file = int(ctx.option("untracked_max_bytes", UNTRACKED_MAX_BYTES))
    total_cap = int(ctx.option("untracked_total_bytes", UNTRACKED_TOTAL_BYTES))
    max_files = int(ctx.option("untracked_max_files", UNTRACKED_MAX_FILES))
    hash_cap = int(ctx.option("untracked_hash_max_bytes", UNTRACKED_HASH_MAX_BYTES))
    files: list[dict[str, Any]] = []
    masked: dict[str, tuple[dict[str, Any], str, str]] = {}  # path -> (entry, text, sha256)
    inlined = 0
    for rel in sorted(paths)[:max_files]:
        full = os.path.join(root, rel)
        entry: dict[str, Any] = {"path": rel}
        files.append(entry)
        try:
            info = os.lstat(full)
            entry["size"] = info.st_size
            if stat.S_ISLNK(info.st_mode):
                entry["symlink"] = os.readlink(full)
                continue
            if info.st_size > hash_cap:
                entry["sha256"] = None
                entry["omitted"] = f"larger than {hash_cap} bytes: not hashed"
                continue
            if info.st_size > per_file:
                entry["sha256"] = sha256_file(full)
                entry["omitted"] = f"larger than {per_file} bytes"
                continue
            with open(full, "rb") as fh:
                data = fh.read()
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            text = _is_text(data)
            if text is None:
                entry["omitted"] = "binary"
            elif secret_file(rel, text):
                entry["omitted"] = "may hold a secret"
            elif inlined + len(data) > total_cap:
                entry["omitted"] = f"total inlined size would pass {total_cap} bytes"
            else:
                entry["content"] = text
                inlined += len(data)
                _mask_entry(entry, text, masked)
        except OSError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc.strerror or exc}"
    if masked:
        for path in no_mask_paths(root, list(masked)):  # the opt-out: back as it is
            entry, text, digest = masked.pop(path)
            entry["content"], entry["sha256"] = text, digest
            del entry["secrets_masked"]
    if masked:
        log.warning("%d untracked file(s) hold what looks like a password = ... assignment "
                    "(%s): masked in the run record", len(masked), ", ".join(sorted(masked)))
    return {
        "untracked": files,
        "untracked_count": len(paths),
        "untracked_truncated": len(paths) > max_files,
        "untracked_inlined_bytes": inlined,
    }


@capture("git")
def git_info(ctx: Context) -> dict[str, Any]:
    """Commit, branch, remote and working-tree changes of the repository holding
    ``ctx.repo``. Raises Skip outside a git work tree or without git."""
    path = ctx.repo
    if not os.path.isdir(path):
        raise FileNotFoundError(f"repository path {path} does not exist")
    procs: list[subprocess.Popen] = []
    try:
        for args in (_TOPLEVEL, _STATUS, _REMOTES):  # all three at once
            procs.append(_start(args, path))
        root = toplevel(path, procs[0])
        ctx.cache["git_root"] = root
        status = parse_status(_output(_STATUS, procs[1]))
        remotes = parse_remotes(_output(_REMOTES, procs[2], ok_codes=(0, 1)))
    finally:
        for proc in procs:
            if proc.returncode is None:  # not awaited: an earlier call failed
                stop(proc)
    remote = _pick_remote(remotes, status.upstream)
    tracked_changes = status.staged + status.unstaged + status.unmerged
    info: dict[str, Any] = {
        "root": root,
        "commit": status.commit,
        "branch": status.branch,
        "detached": status.detached,
        "empty": status.commit is None,
        "upstream": status.upstream,
        "remote": remote,
        "remote_url": remotes.get(remote) if remote else None,
        "remotes": remotes,
        "dirty": bool(tracked_changes or status.untracked),
        "changes": {"staged": status.staged, "unstaged": status.unstaged,
                    "unmerged": status.unmerged, "untracked": len(status.untracked)},
        "diff": "",
    }
    if tracked_changes:
        info.update(_diff(ctx, root, status.commit))
    info.update(untracked_files(ctx, root, status.untracked))
    return info
