"""rclone remotes and FUSE mounts of the object store's buckets.

Pure builders (golden-file tested): :func:`s3_remote`, :func:`swift_remote`,
:func:`render_rclone_conf`, :func:`mount_args`, :func:`systemd_unit`. The edge runs rclone
(argument lists, never a shell string) with :func:`rclone_env`: :func:`mount`,
:func:`unmount`, :func:`copy`, :func:`ls`, :func:`run_rclone`.

Two facts shape this module:

- ``AWS_CA_BUNDLE`` set to a bundle (as on Chameleon's Jupyter and in the tests' sandbox)
  makes every rclone S3 remote fail ("LoadCustomCABundleError: unable to load custom CA
  bundle, HTTPClient's transport unsupported type"); rclone runs without it.
- ``rclone mount --vfs-cache-mode writes`` uploads a written file some seconds after it is
  closed (``--vfs-write-back``). A mount ended by ``fusermount3 -u`` or a signal before then
  does NOT upload it: the file stays in the cache directory and goes up at the next mount
  that uses the same cache. :func:`unmount` and the systemd unit's ``ExecStop`` therefore
  wait until the cache holds no dirty file before unmounting.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._files import write_private
from .errors import CloudError, ConfigError, ReplabError, ResourceTimeout
from .redact import mask, redact_argv, scrub_text, secret_name

log = logging.getLogger(__name__)

INSTALL_HINT = ("install it: `sudo apt-get install -y rclone fuse3` (Debian/Ubuntu), or see "
                "https://rclone.org/install/; for the tests: `bash tests/services/install.sh`")
FUSE_CONF = Path("/etc/fuse.conf")
MOUNTINFO = Path("/proc/self/mountinfo")
CONF_HEADER = ("# rclone configuration written by replab. It holds secrets: keep it mode 0600 "
               "and never commit it.\n")

_REMOTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@-]*$")


class RemoteConfig(dict):
    """An rclone remote's settings (a plain dict) whose repr masks the secret values."""

    def __repr__(self) -> str:
        shown = {k: (mask(v) if secret_name(k) else v) for k, v in self.items()}
        return f"RemoteConfig({shown!r})"

    __str__ = __repr__


# -- pure builders -------------------------------------------------------------------------
def s3_remote(endpoint: str, access_key: str, secret_key: str, provider: str = "Ceph",
              region: str = "us-east-1") -> RemoteConfig:
    """An rclone ``s3`` remote for an S3-compatible store with EC2 keys (path-style).

    ``provider="Ceph"`` for Chameleon's object store (Ceph RGW); ``"Other"`` suits Swift.
    """
    return RemoteConfig(
        type="s3",
        provider=provider,
        env_auth="false",
        access_key_id=access_key,
        secret_access_key=secret_key,
        endpoint=endpoint,
        region=region,
        force_path_style="true",
    )


def swift_remote(auth_url: str, application_credential_id: str,
                 application_credential_secret: str, region: str) -> RemoteConfig:
    """An rclone ``swift`` remote logging in to Keystone v3 with an application credential."""
    return RemoteConfig(
        type="swift",
        env_auth="false",
        auth_version="3",
        auth=auth_url,
        application_credential_id=application_credential_id,
        application_credential_secret=application_credential_secret,
        region=region,
        endpoint_type="public",
    )


def _conf_value(remote: str, key: str, value: Any) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if "\n" in text or "\r" in text:
        raise ConfigError(f"rclone remote {remote!r}: the value of {key!r} holds a line break")
    return text


def render_rclone_conf(remotes: Mapping[str, Mapping[str, Any]]) -> str:
    """The text of an rclone.conf holding ``remotes`` (name -> settings), names sorted,
    each remote's settings in their given order; ``None`` values are left out.

    Raises ConfigError for a name rclone would not accept or a value with a line break.
    """
    lines = [CONF_HEADER]
    for name in sorted(remotes):
        if not _REMOTE_NAME.match(name):
            raise ConfigError(f"rclone remote name {name!r}: use letters, digits and "
                              "'_', '.', '+', '@', '-' (not first)")
        settings = remotes[name]
        if "type" not in settings:
            raise ConfigError(f"rclone remote {name!r} has no 'type'")
        lines.append(f"\n[{name}]\n")
        for key, value in settings.items():
            if value is None:
                continue
            if not re.match(r"^[a-z0-9_]+$", str(key)):
                raise ConfigError(f"rclone remote {name!r}: {key!r} is not an option name")
            lines.append(f"{key} = {_conf_value(name, key, value)}\n")
    return "".join(lines)


def write_rclone_conf(path: str | os.PathLike, remotes: Mapping[str, Mapping[str, Any]]
                      ) -> Path:
    """Write :func:`render_rclone_conf` to ``path`` atomically, mode 0600 (a new parent
    directory gets 0700). Returns the path."""
    target = write_private(path, render_rclone_conf(remotes))
    log.info("wrote rclone config %s (remotes: %s)", target, ", ".join(sorted(remotes)))
    return target


def _source(remote: str, bucket: str) -> str:
    if not _REMOTE_NAME.match(remote or ""):
        raise ConfigError(f"rclone remote name {remote!r}: use letters, digits and "
                          "'_', '.', '+', '@', '-' (not first)")
    path = (bucket or "").strip("/")
    if not path or any(c in path for c in "\n\r:"):
        raise ConfigError(f"bucket {bucket!r}: give a bucket name (optionally with a "
                          "/prefix), without ':' or line breaks")
    return f"{remote}:{path}"


def mount_args(remote: str, bucket: str, mountpoint: str | os.PathLike, *,
               config: str | os.PathLike, log_file: str | os.PathLike,
               cache_dir: str | os.PathLike | None = None, allow_other: bool = True,
               read_only: bool = False, dir_cache_time: str = "30s",
               vfs_cache_max_age: str = "24h", vfs_cache_max_size: str = "20G",
               vfs_write_back: str = "5s", log_level: str = "INFO") -> list[str]:
    """rclone's arguments (after the binary) to mount ``remote:bucket`` on ``mountpoint``.

    ``--vfs-cache-mode writes``: files are written to a local cache and uploaded whole once
    closed, so appends and seeks work (MLflow and most tools append; plain mounts refuse).
    ``--dir-cache-time 30s``: S3 has no change notification, so listings are re-read every
    30 s to see objects written through the S3 API. ``--umask 002``: files 0664, dirs 0775.
    ``--allow-other`` lets other users (the lab's containers) use the mount; for a non-root
    user it needs a line ``user_allow_other`` in /etc/fuse.conf on that machine (the host
    setup adds it). ``--log-level INFO`` logs each upload, which is how a failed upload is
    found later.
    """
    args = [
        "mount", _source(remote, bucket), str(mountpoint),
        "--config", str(config),
        "--log-file", str(log_file),
        "--log-level", log_level,
        "--vfs-cache-mode", "writes",
        "--vfs-write-back", vfs_write_back,
        "--vfs-cache-max-age", vfs_cache_max_age,
        "--vfs-cache-max-size", vfs_cache_max_size,
        "--dir-cache-time", dir_cache_time,
        "--umask", "002",
    ]
    if cache_dir is not None:
        args += ["--cache-dir", str(cache_dir)]
    if allow_other:
        args.append("--allow-other")
    if read_only:
        args.append("--read-only")
    return args


def _systemd_quote(arg: str) -> str:
    """One argument for an Exec= line: systemd's quoting, ``%`` and ``$`` escaped."""
    if not re.match(r"^[A-Za-z0-9_@+=:,./-]+$", arg):
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg.replace("%", "%%").replace("$", "$$")


def _exec(argv: Sequence[str]) -> str:
    return " ".join(_systemd_quote(str(a)) for a in argv)


def vfs_meta_dir(cache_dir: str | os.PathLike, source: str) -> Path:
    """Where rclone keeps the cache's metadata (with each file's ``Dirty`` flag) for the
    mount of ``source`` (``remote:bucket``, or a local path) under ``cache_dir``."""
    remote, colon, path = source.partition(":")
    if not colon:  # a local path: rclone files it under "local"
        remote, path = "local", source
    return Path(cache_dir) / "vfsMeta" / remote / path.strip("/")


def default_cache_dir(home: str | os.PathLike | None = None) -> Path:
    """rclone's default cache directory (``$XDG_CACHE_HOME/rclone`` or ``~/.cache/rclone``)."""
    if home is None and os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "rclone"
    return Path(home or Path.home()) / ".cache" / "rclone"


def systemd_unit_name(remote: str, bucket: str) -> str:
    """A unit name for the mount of ``remote:bucket``: ``replab-rclone-<remote>-<bucket>``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", _source(remote, bucket).replace(":", "-"))
    return f"replab-rclone-{stem}.service"


def systemd_unit(remote: str, bucket: str, mountpoint: str | os.PathLike, *,
                 config: str | os.PathLike, log_file: str | os.PathLike, user: str = "cc",
                 group: str | None = None, cache_dir: str | os.PathLike | None = None,
                 allow_other: bool = True, read_only: bool = False,
                 rclone: str = "/usr/bin/rclone", fusermount: str = "/usr/bin/fusermount3",
                 flush_timeout: int = 300, **mount_options: Any) -> str:
    """A systemd service that keeps ``remote:bucket`` mounted on ``mountpoint`` (the server).

    ``Type=notify`` (rclone tells systemd when the mount is up), restarted on failure,
    started after the network is online. ``UnsetEnvironment=AWS_CA_BUNDLE`` because rclone's
    S3 remotes fail with it set. Stopping waits (at most ``flush_timeout`` s) until rclone's
    cache holds no file waiting for upload, then ``fusermount3 -uz``: unmounting first
    would leave those files un-uploaded. The mountpoint must exist and belong to ``user``;
    ``allow_other`` needs ``user_allow_other`` in /etc/fuse.conf. ``cache_dir`` defaults to
    ``~user/.cache/rclone``; other keywords go to :func:`mount_args`.
    """
    home = "/root" if user == "root" else f"/home/{user}"
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(home)
    source = _source(remote, bucket)
    args = mount_args(remote, bucket, mountpoint, config=config, log_file=log_file,
                      cache_dir=cache, allow_other=allow_other, read_only=read_only,
                      **mount_options)
    meta = vfs_meta_dir(cache, source)
    wait = (f"while grep -rqsE 'Dirty.: true' {shlex.quote(str(meta))}; "
            "do sleep 1; done")
    lines = [
        "[Unit]",
        f"Description=rclone mount of {source} on {mountpoint} (replab)",
        "Documentation=https://rclone.org/commands/rclone_mount/",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        f"User={user}",
        f"Group={group or user}",
        "UnsetEnvironment=AWS_CA_BUNDLE",
        f"ExecStart={_exec([rclone, *args])}",
        f"ExecStop=-{_exec(['/usr/bin/timeout', str(flush_timeout), '/bin/sh', '-c', wait])}",
        f"ExecStop={_exec([fusermount, '-uz', str(mountpoint)])}",
        "Restart=on-failure",
        "RestartSec=10",
        f"TimeoutStopSec={flush_timeout + 30}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


# -- the edge: running rclone --------------------------------------------------------------
def rclone_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to run rclone in: ``env`` (default ``os.environ``) without
    ``AWS_CA_BUNDLE``, which breaks rclone's S3 remotes when set to a bundle."""
    out = dict(os.environ if env is None else env)
    out.pop("AWS_CA_BUNDLE", None)
    return out


def rclone_binary() -> str:
    """The rclone executable; ConfigError saying how to install it when there is none."""
    found = shutil.which("rclone")
    if not found:
        raise ConfigError(f"rclone is not installed (not on PATH); {INSTALL_HINT}")
    return found


def _tail(text: str, lines: int = 20) -> str:
    return scrub_text("\n".join(text.strip().splitlines()[-lines:]))


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return _tail(f.read().decode(errors="replace"), lines)
    except OSError:
        return f"(no log at {path})"


def run_rclone(args: Sequence[str], *, config: str | os.PathLike | None = None,
               env: Mapping[str, str] | None = None, timeout: float = 600,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run ``rclone ARGS [--config CONFIG]`` in :func:`rclone_env`; output captured as text.

    Raises CloudError (with the scrubbed end of rclone's output) when it fails and ``check``,
    ResourceTimeout after ``timeout`` seconds, ConfigError without rclone.
    """
    argv = [rclone_binary(), *map(str, args)]
    if config is not None:
        argv += ["--config", str(config)]
    request = "rclone " + " ".join(redact_argv(map(str, args)))
    log.debug("running %s", request)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=rclone_env(env), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ResourceTimeout(f"{request} did not finish in {timeout:g} s") from None
    if check and proc.returncode != 0:
        raise CloudError(f"rclone failed (exit {proc.returncode}):\n"
                         f"{_tail(proc.stderr or proc.stdout)}", request)
    return proc


def copy(source: str | os.PathLike, dest: str, *, config: str | os.PathLike | None = None,
         env: Mapping[str, str] | None = None, timeout: float = 600,
         extra_args: Sequence[str] = ()) -> None:
    """``rclone copy SOURCE DEST``: files in SOURCE not identical in DEST are copied there
    (``remote:bucket/path`` or a local path on either side). Raises as :func:`run_rclone`."""
    run_rclone(["copy", str(source), dest, *extra_args], config=config, env=env,
               timeout=timeout)


def ls(path: str, *, config: str | os.PathLike | None = None,
       env: Mapping[str, str] | None = None, timeout: float = 120) -> dict[str, int]:
    """Every file under ``path`` (``remote:bucket[/prefix]``), relative name -> size."""
    proc = run_rclone(["lsjson", "--recursive", "--files-only", path], config=config, env=env,
                      timeout=timeout)
    return {item["Path"]: int(item["Size"]) for item in json.loads(proc.stdout or "[]")}


# -- mounts --------------------------------------------------------------------------------
def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mounts(mountinfo: str | os.PathLike = MOUNTINFO) -> dict[str, tuple[str, str]]:
    """The mounts this process sees: mountpoint -> (filesystem type, source)."""
    out: dict[str, tuple[str, str]] = {}
    for line in Path(mountinfo).read_text().splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            out[_unescape(fields[4])] = (fields[sep + 1], _unescape(fields[sep + 2]))
        except (ValueError, IndexError):
            continue
    return out


def _path(mountpoint: str | os.PathLike) -> str:
    # realpath of the parent only: stat'ing a dead FUSE mount fails
    p = os.path.abspath(os.fspath(mountpoint))
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def mount_source(mountpoint: str | os.PathLike) -> str | None:
    """What is mounted on ``mountpoint`` (``remote:bucket`` for rclone), or None."""
    found = mounts().get(_path(mountpoint))
    return found[1] if found else None


def is_mounted(mountpoint: str | os.PathLike) -> bool:
    """Whether something is mounted on ``mountpoint``."""
    return mount_source(mountpoint) is not None


def _fuse_ready(allow_other: bool) -> None:
    if not Path("/dev/fuse").exists():
        raise ConfigError("FUSE is not available here (/dev/fuse is missing): install fuse3 "
                          "and load the fuse module; in a container, run it with "
                          "--device /dev/fuse --cap-add SYS_ADMIN")
    if allow_other and os.geteuid() != 0:
        try:
            text = FUSE_CONF.read_text()
        except OSError:
            text = ""
        if not re.search(r"^\s*user_allow_other\s*$", text, re.M):
            raise ConfigError(f"allow_other needs a line 'user_allow_other' in {FUSE_CONF}: "
                              "`echo user_allow_other | sudo tee -a /etc/fuse.conf`, or "
                              "mount with allow_other=False")


def _fusermount(mountpoint: str, lazy: bool = False) -> subprocess.CompletedProcess:
    binary = shutil.which("fusermount3") or shutil.which("fusermount")
    if binary:
        argv = [binary, "-uz" if lazy else "-u", mountpoint]
    elif os.geteuid() == 0:
        argv = ["umount", *(["-l"] if lazy else []), mountpoint]
    else:
        raise ConfigError(f"fusermount3 is not installed; {INSTALL_HINT}")
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


def _alive(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
        return True
    except OSError as exc:
        return exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)


def mount(remote: str, bucket: str, mountpoint: str | os.PathLike, *,
          config: str | os.PathLike, log_file: str | os.PathLike,
          cache_dir: str | os.PathLike | None = None, allow_other: bool = True,
          read_only: bool = False, timeout: float = 30, env: Mapping[str, str] | None = None,
          **mount_options: Any) -> bool:
    """Mount ``remote:bucket`` on ``mountpoint`` with ``rclone mount --daemon``; True when
    mounted now, False when it already was (a dead mount of it is cleared and redone).

    The mountpoint is created when missing and must be empty. Waits (polling
    /proc/self/mountinfo) until the mount appears. Other keywords go to :func:`mount_args`.
    Raises ConfigError when something else is mounted there, the directory is not empty, or
    rclone/FUSE are missing; CloudError when rclone fails; ResourceTimeout when the mount
    is not up within ``timeout`` seconds (both with the end of rclone's log).
    """
    mp = _path(mountpoint)
    source = _source(remote, bucket)
    existing = mount_source(mp)
    if existing is not None:
        if existing != source:
            raise ConfigError(f"{mp} already has {existing!r} mounted, not {source!r}; "
                              "unmount it first")
        if _alive(mp):
            log.info("%s is already mounted on %s", source, mp)
            return False
        log.warning("the mount of %s on %s is dead (rclone gone); remounting", source, mp)
        _fusermount(mp, lazy=True)
    binary = rclone_binary()
    _fuse_ready(allow_other)
    Path(mp).mkdir(parents=True, exist_ok=True)
    if any(Path(mp).iterdir()):
        raise ConfigError(f"mountpoint {mp} is not empty; rclone mounts only on an empty "
                          "directory (move its files away)")
    logs = Path(log_file)
    logs.parent.mkdir(parents=True, exist_ok=True)
    argv = [binary, *mount_args(remote, bucket, mp, config=config, log_file=logs,
                                cache_dir=cache_dir, allow_other=allow_other,
                                read_only=read_only, **mount_options),
            "--daemon", "--daemon-wait", f"{max(1, int(timeout))}s"]
    request = f"rclone mount {source} {mp}"
    log.info("mounting %s on %s", source, mp)
    deadline = time.monotonic() + timeout
    # Output to the log file, not a pipe: a daemon holding our pipe open would hang us.
    with open(logs, "ab") as out:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  env=rclone_env(env), timeout=timeout + 15)
        except subprocess.TimeoutExpired:
            raise ResourceTimeout(f"{request}: rclone did not return in {timeout + 15:g} s; "
                                  f"{logs} ends with:\n{_log_tail(logs)}") from None
    if proc.returncode != 0 and mount_source(mp) != source:
        raise CloudError(f"rclone mount failed (exit {proc.returncode}); {logs} ends with:\n"
                         f"{_log_tail(logs)}", request)
    while mount_source(mp) != source:
        if time.monotonic() > deadline:
            raise ResourceTimeout(f"{source} is not mounted on {mp} after {timeout:g} s; "
                                  f"{logs} ends with:\n{_log_tail(logs)}")
        time.sleep(0.05)
    log.info("mounted %s on %s", source, mp)
    return True


def _rclone_mount_process(mountpoint: str) -> tuple[int, list[str]] | None:
    """(pid, argv) of the ``rclone mount`` process serving ``mountpoint``, if visible."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if (argv and os.path.basename(argv[0]) == "rclone" and "mount" in argv[1:3]
                and any(a and _path(a) == mountpoint for a in argv[2:4])):
            return int(entry.name), argv
    return None


def mount_pid(mountpoint: str | os.PathLike) -> int | None:
    """The PID of the ``rclone mount`` process serving ``mountpoint``, if this user sees it."""
    found = _rclone_mount_process(_path(mountpoint))
    return found[0] if found else None


def _cache_dir_of(argv: Sequence[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--cache-dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--cache-dir="):
            return Path(arg.split("=", 1)[1])
    return None


def dirty_files(meta_dir: str | os.PathLike) -> list[str]:
    """Files of an rclone VFS cache (its ``vfsMeta`` subtree for one mount) still waiting to
    be uploaded, as paths relative to ``meta_dir``."""
    root = Path(meta_dir)
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                dirty = json.loads(path.read_text()).get("Dirty")
            except (OSError, ValueError, AttributeError):
                continue
            if dirty:
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def _wait_flushed(mp: str, source: str, cache_dir: str | os.PathLike | None,
                  timeout: float, process: tuple[int, list[str]] | None) -> None:
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is None and process is not None:
        cache = _cache_dir_of(process[1])
    meta = vfs_meta_dir(cache or default_cache_dir(), source)
    deadline = time.monotonic() + timeout
    pending = dirty_files(meta)
    if pending:
        log.info("waiting for rclone to upload %d files from %s", len(pending), mp)
    while pending:
        if time.monotonic() > deadline:
            shown = ", ".join(pending[:5]) + (" ..." if len(pending) > 5 else "")
            raise ResourceTimeout(
                f"rclone is still uploading {len(pending)} files of {source} after "
                f"{timeout:g} s ({shown}); {mp} stays mounted. Retry later, or unmount with "
                f"flush_timeout=0: the files then stay in {meta.parents[2]} and are uploaded "
                "by the next mount using that cache directory")
        time.sleep(0.25)
        pending = dirty_files(meta)


def unmount(mountpoint: str | os.PathLike, ignore_missing: bool = True, *,
            flush_timeout: float = 120, cache_dir: str | os.PathLike | None = None) -> bool:
    """Unmount ``mountpoint``; True if unmounted now, False if nothing was mounted there.

    For an rclone mount, first waits (at most ``flush_timeout`` s; 0: not at all) until its
    cache (``cache_dir``, by default the one its rclone process was given) holds no file
    waiting for upload. Then ``fusermount3 -u``, and ``-uz`` (lazy) when the mount is busy.
    Raises ConfigError when nothing is mounted and not ``ignore_missing``, ResourceTimeout
    when uploads do not finish in time, ReplabError when the unmount itself fails.
    """
    mp = _path(mountpoint)
    found = mounts().get(mp)
    if found is None:
        if ignore_missing:
            return False
        raise ConfigError(f"nothing is mounted on {mp}")
    fstype, source = found
    process = _rclone_mount_process(mp) if fstype == "fuse.rclone" else None
    if fstype == "fuse.rclone" and flush_timeout > 0 and _alive(mp):
        _wait_flushed(mp, source, cache_dir, flush_timeout, process)
    result = _fusermount(mp)
    if result.returncode != 0 and is_mounted(mp):
        log.warning("unmounting %s: %s; unmounting lazily", mp, result.stderr.strip())
        result = _fusermount(mp, lazy=True)
        if result.returncode != 0 and is_mounted(mp):
            raise ReplabError(f"cannot unmount {mp}: {result.stderr.strip()}")
    if process is not None:  # let rclone exit before anyone mounts with its cache again
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    log.info("unmounted %s from %s", source, mp)
    return True


__all__ = [
    "RemoteConfig", "copy", "default_cache_dir", "dirty_files", "is_mounted", "ls", "mount",
    "mount_args", "mount_pid", "mount_source", "mounts", "rclone_binary", "rclone_env",
    "render_rclone_conf", "run_rclone", "s3_remote", "swift_remote", "systemd_unit",
    "systemd_unit_name", "unmount", "vfs_meta_dir", "write_rclone_conf",
]
