"""The server's data and code: rclone + FUSE with the data bucket's mount, the user's
repository, and replab's build context uploaded when its hash changed."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from .. import rclone, remote
from ..errors import CloudError, ConfigError
from ..redact import strip_url_credentials
from ..remote import Step
from ..serverlayout import ROOT, SOURCE_PARTS, HostPaths
from ._base import (
    FUSE_CONF,
    LAB_SOURCE,
    RCLONE,
    REPOSITORY,
    SOURCE_EXCLUDE,
    SOURCE_HASH_FILE,
    _apt_install,
    _ensure_file,
    _install_units,
    _is_root,
    _live,
    _ok,
    _skipped,
    _sys,
    _user,
    _which,
    home_directory,
)


def source_files(source: str | os.PathLike, parts: Iterable[str],
                 exclude: Iterable[str] = SOURCE_EXCLUDE) -> list[tuple[Path, str]]:
    """The files of ``parts`` (files or directories under ``source``) that the lab upload
    carries, as sorted ``(local path, relative name)``; names matching ``exclude`` (any
    path component, glob patterns) are left out."""
    base = Path(source)
    patterns = tuple(exclude)

    def skipped(rel: str) -> bool:
        return any(fnmatch.fnmatch(p, pat) for p in rel.split("/") for pat in patterns)

    out = []
    for part in parts:
        top = base / part
        if top.is_file() or top.is_symlink():
            candidates = [top]
        elif top.is_dir():
            candidates = [p for p in top.rglob("*") if p.is_file() or p.is_symlink()]
        else:
            continue
        for path in candidates:
            rel = path.relative_to(base).as_posix()
            if not skipped(rel):
                out.append((path, rel))
    return sorted(out, key=lambda item: item[1])


def source_hash(files: Iterable[tuple[Path, str]]) -> str:
    """sha256 over names, executable bits and contents (link targets for symlinks)."""
    h = hashlib.sha256()
    for path, rel in files:
        if path.is_symlink():
            kind, data = b"l", os.readlink(path).encode()
        else:
            kind = b"x" if path.stat().st_mode & 0o111 else b"f"
            data = path.read_bytes()
        h.update(rel.encode() + b"\0" + kind + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def _data_remote(cfg, conf_text: str) -> str:
    names = re.findall(r"^\[([^\]]+)\]\s*$", conf_text, re.M)
    for name in (f"{cfg.experiment}-s3", f"{cfg.experiment}-swift"):
        if name in names:
            return name
    raise ConfigError(f"the rclone.conf in the secrets store has no remote "
                      f"{cfg.experiment}-s3 or {cfg.experiment}-swift (it has: "
                      f"{', '.join(names) or 'none'}); re-run 1_create_credentials")


def rclone_fuse(conn, cfg, store, *, root: str | os.PathLike = "/",
                home: str | os.PathLike | None = None, user: str | None = None) -> Step:
    """rclone and fuse3 (apt, only when missing), ``user_allow_other`` in fuse.conf, the
    secrets store's rclone.conf at ``<home>/.config/rclone/rclone.conf`` (0600), and an
    enabled systemd unit mounting the data bucket on ``HostPaths.data`` (so the mount
    survives a reboot); the unit is (re)started when it or rclone.conf changed. Raises
    ConfigError without an rclone.conf, CloudError when a command fails."""
    conf = store.read(store.RCLONE)
    if not conf:
        raise ConfigError(f"no {store.path(store.RCLONE)}: run 1_create_credentials first")
    remote_name = _data_remote(cfg, conf)
    user = _user(conn, user)
    home = home_directory(conn, user, home)
    sudo = _live(root) and not _is_root(conn)
    notes: list[str] = []
    missing = [pkg for pkg, cmd in (("rclone", "rclone"), ("fuse3", "fusermount3"))
               if not _which(conn, cmd)]
    if missing and _live(root):
        _apt_install(conn, missing, sudo)
        notes.append(f"installed {' '.join(missing)}")
    elif missing:
        notes.append(f"apt-get install {' '.join(missing)} skipped ({_skipped(root)})")
    fuse_conf = _sys(root, FUSE_CONF)
    text = remote.read_text(conn, fuse_conf) or ""
    if not re.search(r"^\s*user_allow_other\s*$", text, re.M):
        sep = "" if not text or text.endswith("\n") else "\n"
        _ensure_file(conn, fuse_conf, f"{text}{sep}user_allow_other\n", 0o644, sudo=sudo)
        notes.append(f"added user_allow_other to {fuse_conf}")
    conf_path = f"{home}/.config/rclone/rclone.conf"
    conf_changed = _ensure_file(conn, conf_path, conf, 0o600)
    if conf_changed:
        notes.append(f"uploaded {conf_path}")
    paths = HostPaths.for_config(cfg, home)
    stem = rclone.systemd_unit_name(remote_name, cfg.buckets.data)
    log_file = f"{home}/.cache/replab/{stem.removesuffix('.service')}.log"
    cache_dir = f"{home}/.cache/rclone"
    remote.run(conn, ["mkdir", "-p", paths.data, cache_dir, str(PurePosixPath(log_file).parent)])
    unit = rclone.systemd_unit(
        remote_name, cfg.buckets.data, paths.data, config=conf_path, log_file=log_file,
        user=user, cache_dir=cache_dir, rclone=_which(conn, "rclone") or "/usr/bin/rclone",
        fusermount=_which(conn, "fusermount3") or "/usr/bin/fusermount3")
    changed, unit_notes = _install_units(conn, root, {stem: unit}, stem, sudo=sudo,
                                         restart=True)
    if conf_changed and not changed and _live(root):
        remote.run(conn, ["systemctl", "restart", stem], sudo=sudo, timeout=420)
        unit_notes.append(f"restarted {stem} for the new rclone.conf")
    notes += unit_notes
    source = f"{remote_name}:{cfg.buckets.data}"
    if not notes:
        return Step(RCLONE, False, f"{source} mounted on {paths.data} by {stem}")
    return Step(RCLONE, True, "; ".join(notes), {"unit": stem, "mountpoint": paths.data})


def _same_origin(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return strip_url_credentials(url.strip()).rstrip("/").removesuffix(".git")
    return norm(a) == norm(b)


def is_ssh_url(url: str) -> bool:
    """Whether git reaches ``url`` over SSH (``ssh://`` or scp-like ``user@host:path``)."""
    return url.startswith("ssh://") or bool(re.match(r"^[^/:@]+@[^/:]+:", url))


def clone_repository(conn, cfg, *, dest: str | None = None, home: str | None = None,
                     url: str | None = None, forward_agent: bool = False) -> Step:
    """Clone ``url`` (default ``cfg.repository``) to ``dest`` (default ``HostPaths.repo``);
    when it is already cloned there with the same origin, ``git fetch`` only (the working
    tree is the user's: never reset), changed=False when nothing new came. An ssh URL needs
    the agent forwarded (``Host(forward_agent=True)`` and ``forward_agent=True``).

    Raises ConfigError for an ssh URL without agent forwarding, CloudError when ``dest``
    holds a clone of another origin (naming both) or git fails."""
    url = url or cfg.repository
    if not url:
        return Step(REPOSITORY, False, "no repository configured")
    if dest is None:
        dest = HostPaths.for_config(cfg, home_directory(conn, conn.user, home)).repo
    shown = strip_url_credentials(url)
    if is_ssh_url(url) and not forward_agent:
        raise ConfigError([("repository", f"{shown} is an ssh URL: forward your SSH agent "
                                          "(forward_agent=True) or use the https URL")])
    env = {"GIT_TERMINAL_PROMPT": "0",  # a private https repo fails instead of hanging
           "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new"}
    if _ok(conn, ["test", "-e", f"{dest}/.git"]):
        origin = remote.run(conn, ["git", "-C", dest, "remote", "get-url", "origin"],
                            check=False).stdout.strip()
        if not _same_origin(origin, url):
            raise CloudError(f"{dest} on {conn.host} is a clone of "
                             f"{strip_url_credentials(origin) or '(no origin)'}, not {shown}; "
                             "move it away or choose another repository")
        refs = ["git", "-C", dest, "for-each-ref", "--format=%(objectname) %(refname)",
                "refs/remotes/origin", "refs/tags"]
        before = remote.run(conn, refs).stdout
        remote.run(conn, ["git", "-C", dest, "fetch", "--prune", "--tags", "origin"],
                   env=env, timeout=900)
        if remote.run(conn, refs).stdout == before:
            return Step(REPOSITORY, False, f"{dest} is up to date with {shown}")
        return Step(REPOSITORY, True, f"fetched new commits from {shown} into {dest} "
                                      "(working tree left as it was)")
    remote.run(conn, ["mkdir", "-p", str(PurePosixPath(dest).parent)])
    remote.run(conn, ["git", "clone", "--", url, dest], env=env, timeout=1800)
    head = remote.run(conn, ["git", "-C", dest, "rev-parse", "--short", "HEAD"],
                      check=False).stdout.strip()
    return Step(REPOSITORY, True, f"cloned {shown} into {dest} (HEAD {head or '?'})")


def upload_lab(conn, cfg, *, paths=None, home: str | None = None,
               source: str | os.PathLike | None = None,
               parts: Sequence[str] | None = None) -> Step:
    """Upload replab's build context (``serverlayout.SOURCE_PARTS`` of the checkout
    ``source``) to ``paths.source``, only when its content hash differs from the one stored
    there (:data:`SOURCE_HASH_FILE`). The tree is replaced whole, so deleted files go too.
    Raises CloudError when the upload fails."""
    paths = paths or HostPaths.for_config(cfg, home_directory(conn, conn.user, home))
    files = source_files(source or ROOT, parts or SOURCE_PARTS)
    digest = source_hash(files)
    hash_path = f"{paths.source}/{SOURCE_HASH_FILE}"
    if (remote.read_text(conn, hash_path) or "").strip() == digest:
        return Step(LAB_SOURCE, False, f"{paths.source} is current (sha256 {digest[:12]})")
    staging = f"{paths.source}.new"
    remote.run(conn, ["rm", "-rf", staging])
    sent = remote.put_tree(conn, files, staging)
    remote.put_text(conn, digest + "\n", f"{staging}/{SOURCE_HASH_FILE}", mode=0o644)
    remote.run(conn, ["sh", "-c", 'rm -rf "$1.old" && if [ -e "$1" ]; then mv "$1" "$1.old"; '
                                  'fi && mv "$1.new" "$1" && rm -rf "$1.old"', "sh",
                      paths.source])
    return Step(LAB_SOURCE, True, f"uploaded {len(files)} files ({sent / 1e6:.1f} MB) to "
                                  f"{paths.source} (sha256 {digest[:12]})",
                {"sha256": digest})
