"""The GPU server's setup, as idempotent steps that say what they changed.

Each step checks before it acts and returns a :class:`replab.remote.Step`; ``changed`` is
False when the server already was as wanted, so a second :func:`setup_host` reports nothing.
Files are compared with what the server holds (content and mode) before anything is written.

``root`` prefixes every system path a step writes (``/etc/...``): ``"/"`` on a real server.
Any other root (the tests' temporary directory) means "not the live system": the files are
written under it, but nothing system-wide runs (no apt, systemctl, usermod, docker restart),
and the step's detail says what was skipped.

Install scripts are pure renderers (:func:`docker_script`, :func:`nvidia_toolkit_script`,
golden-file tested), uploaded and run with ``bash`` only when the idempotency check fails;
``plan_only=True`` returns what would run without running it. Packages come from the vendors'
signed apt repositories, never ``curl | sh``.

The NVIDIA toolkit with Docker's systemd cgroup driver has a known failure: after any
``systemctl daemon-reload`` running containers lose their GPUs ("Failed to initialize NVML:
Unknown Error", NVIDIA/nvidia-docker#1730, NVIDIA/nvidia-container-toolkit#48). NVIDIA's
documented workarounds are applied both: ``/dev/char`` symlinks for the NVIDIA device nodes
(``nvidia-ctk system create-dev-char-symlinks --create-all``, re-created at boot by a udev
rule), and Docker's ``exec-opts: ["native.cgroupdriver=cgroupfs"]`` merged into
``/etc/docker/daemon.json`` (other keys kept).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shlex
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from . import rclone, remote
from .errors import CloudError, ConfigError
from .redact import strip_url_credentials
from .remote import Step

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DOCKER_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
                   "docker-compose-plugin")
# Docker's install guide: remove these first, they conflict with Docker's own packages.
DOCKER_CONFLICTS = ("docker.io", "docker-doc", "docker-compose", "docker-compose-v2",
                    "podman-docker", "containerd", "runc")
DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
NVIDIA_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
NVIDIA_LIST = "https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list"
NVIDIA_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                   "libnvidia-container-tools", "libnvidia-container1")
DAEMON_JSON = "/etc/docker/daemon.json"
CGROUP_DRIVER_OPT = "native.cgroupdriver=cgroupfs"
UDEV_RULE = "/etc/udev/rules.d/71-nvidia-dev-char.rules"
UDEV_RULE_TEXT = (
    "# replab: /dev/char symlinks for NVIDIA device nodes, so that containers keep their GPUs\n"
    "# across `systemctl daemon-reload` (NVIDIA/nvidia-docker#1730).\n"
    'ACTION=="add", DEVPATH=="/bus/pci/drivers/nvidia", '
    'RUN+="/usr/bin/nvidia-ctk system create-dev-char-symlinks --create-all"\n')
ROCM_GROUPS = ("video", "render")
FUSE_CONF = "/etc/fuse.conf"
SYSTEMD_DIR = "/etc/systemd/system"
SOURCE_HASH_FILE = ".replab-source.sha256"
SOURCE_EXCLUDE = ("__pycache__", ".venv", "work", ".git", "*.egg-info", "*.pyc",
                  ".pytest_cache", ".ruff_cache")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]  # boot-time unattended-upgrades hold it

# step names (setup_host's ``skip`` takes them)
DOCKER, NVIDIA, ROCM = "docker", "nvidia-toolkit", "rocm"
RCLONE, REPOSITORY, LAB_SOURCE, BACKUP_TIMER = ("rclone-fuse", "repository", "lab-source",
                                                "backup-timer")
REPLAB_CLI, WORKDIR = "replab", "workdir"
# what the server's replab needs (its backup timer and the teardown's last backup): S3 and
# PostgreSQL clients; pinned by constraints.txt
SERVER_PACKAGES = ("pyyaml", "boto3", "psycopg[binary]")


# -- pure renderers ----------------------------------------------------------------------------
_SCRIPT_HEAD = """#!/usr/bin/env bash
# {title}
# Written by replab (replab.hostsetup); run as root. Idempotent: safe to run again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt_get() {{ apt-get -o DPkg::Lock::Timeout=600 "$@"; }}
"""


def docker_script(codename: str, user: str, *, distro: str = "ubuntu") -> str:
    """Bash that installs Docker Engine and its compose plugin from Docker's signed apt
    repository for ``distro``/``codename`` (Docker's install guide), and adds ``user`` to
    the ``docker`` group. Raises ConfigError for a codename or distro that is not a word."""
    for name, value in (("codename", codename), ("distro", distro)):
        if not re.match(r"^[a-z0-9][a-z0-9.-]*$", value or ""):
            raise ConfigError([(name, f"{value!r} is not a distribution name")])
    repo = f"https://download.docker.com/linux/{distro}"
    lines = [
        _SCRIPT_HEAD.format(title=f"Docker Engine from {repo} ({codename})"),
        "# packages that conflict with Docker's own (Docker's install guide)",
        f"for pkg in {' '.join(DOCKER_CONFLICTS)}; do",
        "    if dpkg-query -W -f='${Status}' \"$pkg\" 2>/dev/null | grep -q 'ok installed'; then",
        '        apt_get remove -y "$pkg"',
        "    fi",
        "done",
        "apt_get update",
        "apt_get install -y ca-certificates curl",
        f"install -m 0755 -d {PurePosixPath(DOCKER_KEYRING).parent}",
        f"curl -fsSL {repo}/gpg -o {DOCKER_KEYRING}",
        f"chmod a+r {DOCKER_KEYRING}",
        f'echo "deb [arch=$(dpkg --print-architecture) signed-by={DOCKER_KEYRING}] '
        f'{repo} {codename} stable" > /etc/apt/sources.list.d/docker.list',
        "apt_get update",
        f"apt_get install -y {' '.join(DOCKER_PACKAGES)}",
        "systemctl enable --now docker.service containerd.service",
        f"usermod -aG docker {shlex.quote(user)}",
        "docker compose version",
        "",
    ]
    return "\n".join(lines)


def nvidia_toolkit_script(version: str | None = None) -> str:
    """Bash that installs the NVIDIA container toolkit from NVIDIA's signed apt repository
    (its install guide; ``version`` pins the packages, e.g. ``"1.17.8-1"``) and registers the
    ``nvidia`` runtime with Docker (``nvidia-ctk runtime configure``, which merges into
    daemon.json). Raises ConfigError for a malformed version."""
    if version is not None and not re.match(r"^[0-9][A-Za-z0-9.+~-]*$", version):
        raise ConfigError([("version", f"{version!r} is not a package version")])
    packages = " ".join(f"{p}={version}" for p in NVIDIA_PACKAGES) if version else \
        NVIDIA_PACKAGES[0]
    lines = [
        _SCRIPT_HEAD.format(title="NVIDIA container toolkit from nvidia.github.io"),
        "apt_get update",
        "apt_get install -y --no-install-recommends ca-certificates curl gnupg2",
        f"install -m 0755 -d {PurePosixPath(NVIDIA_KEYRING).parent}",
        "curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey \\",
        f"    | gpg --batch --yes --dearmor -o {NVIDIA_KEYRING}",
        f"chmod a+r {NVIDIA_KEYRING}",
        f"curl -fsSL {NVIDIA_LIST} \\",
        f"    | sed 's#deb https://#deb [signed-by={NVIDIA_KEYRING}] https://#g' \\",
        "    > /etc/apt/sources.list.d/nvidia-container-toolkit.list",
        "apt_get update",
        f"apt_get install -y {packages}",
        "nvidia-ctk runtime configure --runtime=docker",
        "",
    ]
    return "\n".join(lines)


def merge_daemon_json(current: Mapping[str, Any]) -> dict[str, Any]:
    """Docker's daemon.json settings with the cgroupfs driver set; every other key (the
    ``nvidia`` runtime, log options) and every other exec-opt kept."""
    out = dict(current)
    opts = [o for o in out.get("exec-opts") or []
            if not str(o).startswith("native.cgroupdriver=")]
    out["exec-opts"] = [*opts, CGROUP_DRIVER_OPT]
    return out


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


# -- helpers at the edge -----------------------------------------------------------------------
def _live(root: str | os.PathLike) -> bool:
    return str(root) in ("/", "")


def _sys(root: str | os.PathLike, path: str) -> str:
    """``path`` (absolute, on the system) below ``root``."""
    return str(PurePosixPath(str(root)) / path.lstrip("/"))


def _is_root(conn) -> bool:
    return remote.run(conn, ["id", "-u"]).stdout.strip() == "0"


def _ok(conn, argv: Sequence[str], sudo: bool = False) -> bool:
    return remote.run(conn, argv, check=False, sudo=sudo).ok


def _which(conn, name: str) -> str | None:
    r = remote.run(conn, ["sh", "-c", 'command -v "$1"', "sh", name], check=False)
    return (r.stdout.strip() or None) if r.ok else None


def _mode(conn, path: str) -> int | None:
    try:
        return stat.S_IMODE(conn.sftp().stat(path).st_mode)
    except FileNotFoundError:
        return None


def _ensure_file(conn, path: str, text: str, mode: int, *, sudo: bool = False,
                 plan_only: bool = False) -> bool:
    """Make the file at ``path`` hold ``text`` with ``mode``; True when it did not yet.
    With ``sudo`` the file goes through a private temporary file and ``install``."""
    current = remote.read_text(conn, path)
    if current == text and _mode(conn, path) == mode:
        return False
    if plan_only:
        return True
    if current == text:
        remote.run(conn, ["chmod", f"{mode:o}", path], sudo=sudo)
    elif sudo:
        tmp = remote.run(conn, ["mktemp"]).stdout.strip()
        try:
            remote.put_text(conn, text, tmp, mode=0o600)
            remote.run(conn, ["install", "-D", "-m", f"{mode:o}", "-o", "root", "-g", "root",
                              tmp, path], sudo=True)
        finally:
            remote.run(conn, ["rm", "-f", tmp], check=False)
    else:
        remote.put_text(conn, text, path, mode=mode)
    log.info("wrote %s (mode %o)", path, mode)
    return True


def _user(conn, user: str | None) -> str:
    return user or conn.user


def home_directory(conn, user: str, home: str | os.PathLike | None = None) -> str:
    """``home`` when given, else ``user``'s home directory on the server (getent)."""
    if home is not None:
        return str(home)
    r = remote.run(conn, ["getent", "passwd", user], check=False)
    fields = r.stdout.strip().split(":")
    if r.ok and len(fields) >= 6 and fields[5]:
        return fields[5]
    return "/root" if user == "root" else f"/home/{user}"


def _groups(conn, user: str) -> set[str]:
    return set(remote.run(conn, ["id", "-nG", user]).stdout.split())


def _apt_install(conn, packages: Sequence[str], sudo: bool) -> None:
    remote.run(conn, [*APT, "update"], env=APT_ENV, sudo=sudo, timeout=900)
    remote.run(conn, [*APT, "install", "-y", *packages], env=APT_ENV, sudo=sudo, timeout=1800)


def _run_script(conn, script: str, name: str, sudo: bool, timeout: float = 1800) -> None:
    path = remote.run(conn, ["mktemp", "--suffix", f"-{name}.sh"]).stdout.strip()
    try:
        remote.put_text(conn, script, path, mode=0o700)
        log.info("running %s on %s", name, conn.host)
        remote.run(conn, ["bash", path], sudo=sudo, timeout=timeout)
    finally:
        remote.run(conn, ["rm", "-f", path], check=False)


def _skipped(root) -> str:
    return f"root is {root}, not /: the live system is not touched"


def _install_units(conn, root, units: Mapping[str, str], enable: str, *, sudo: bool,
                   restart: bool = False) -> tuple[bool, list[str]]:
    """Write systemd ``units`` under ``<root>/etc/systemd/system``; on the live system reload
    and ``enable --now`` the unit ``enable`` when a file changed (``restart``: restart it
    too), or when it is not active. Returns (changed, notes)."""
    written = [name for name, text in units.items()
               if _ensure_file(conn, _sys(root, f"{SYSTEMD_DIR}/{name}"), text, 0o644,
                               sudo=sudo)]
    notes = [f"wrote {', '.join(written)}"] if written else []
    if not _live(root):
        if written:
            notes.append(f"systemctl skipped ({_skipped(root)})")
        return bool(written), notes
    if written:
        remote.run(conn, ["systemctl", "daemon-reload"], sudo=sudo)
        remote.run(conn, ["systemctl", "enable", "--now", enable], sudo=sudo, timeout=120)
        if restart:
            remote.run(conn, ["systemctl", "restart", enable], sudo=sudo, timeout=420)
        notes.append(f"enabled and (re)started {enable}")
        return True, notes
    if not _ok(conn, ["systemctl", "is-active", "--quiet", enable]):
        remote.run(conn, ["systemctl", "enable", "--now", enable], sudo=sudo, timeout=120)
        return True, [f"started {enable} (it was not active)"]
    return False, notes


# -- the steps ---------------------------------------------------------------------------------
def docker(conn, *, root: str | os.PathLike = "/", user: str | None = None,
           plan_only: bool = False) -> Step:
    """Docker Engine with the compose plugin, and ``user`` (default: the login user) in the
    ``docker`` group. Installs (:func:`docker_script`) only when ``docker compose version``
    fails. After a change the caller must reconnect for the new group to apply (``extra
    ["reconnect"]``). Raises CloudError when the install fails."""
    user = _user(conn, user)
    found = remote.run(conn, ["docker", "compose", "version"], check=False)
    sudo = _live(root) and not _is_root(conn)
    if found.ok:
        version = found.stdout.strip().splitlines()[0] if found.stdout.strip() else "?"
        if "docker" in _groups(conn, user) or user == "root":
            return Step(DOCKER, False, f"already installed ({version})")
        argv = ["usermod", "-aG", "docker", user]
        if plan_only or not _live(root):
            why = "plan only" if plan_only else _skipped(root)
            return Step(DOCKER, True, f"would run: {shlex.join(argv)} ({why})")
        remote.run(conn, argv, sudo=sudo)
        return Step(DOCKER, True, f"added {user} to the docker group ({version})",
                    {"reconnect": True})
    osr = remote.run(conn, ["sh", "-c", '. /etc/os-release && echo "$ID" && '
                                        'echo "${UBUNTU_CODENAME:-$VERSION_CODENAME}"'])
    distro, codename = (osr.stdout.split() + ["", ""])[:2]
    script = docker_script(codename, user, distro=distro)
    if plan_only or not _live(root):
        why = "plan only" if plan_only else _skipped(root)
        return Step(DOCKER, True, f"would run as root ({why}):\n{script}",
                    {"script": script})
    _run_script(conn, script, "docker-install", sudo)
    version = remote.run(conn, ["docker", "compose", "version"]).stdout.strip()
    return Step(DOCKER, True, f"installed Docker from download.docker.com ({version}); "
                              f"{user} is in the docker group", {"reconnect": True})


def daemon_json(conn, *, root: str | os.PathLike = "/", plan_only: bool = False,
                sudo: bool | None = None) -> Step:
    """Merge :data:`CGROUP_DRIVER_OPT` into ``<root>/etc/docker/daemon.json`` (other keys
    kept); changed=False when it is there. Does not restart Docker (:func:`nvidia_toolkit`
    does). Raises CloudError when the file is not a JSON object."""
    path = _sys(root, DAEMON_JSON)
    text = remote.read_text(conn, path)
    try:
        current = json.loads(text) if text and text.strip() else {}
    except ValueError as exc:
        raise CloudError(f"{path} on {conn.host} is not valid JSON ({exc}); fix or remove "
                         "it, then run the setup again") from None
    if not isinstance(current, dict):
        raise CloudError(f"{path} on {conn.host} is not a JSON object")
    merged = merge_daemon_json(current)
    if merged == current:
        return Step("docker daemon.json", False, f"{path} already has {CGROUP_DRIVER_OPT}")
    if plan_only:
        return Step("docker daemon.json", True, f"would set {CGROUP_DRIVER_OPT} in {path}")
    if sudo is None:
        sudo = _live(root) and not _is_root(conn)
    _ensure_file(conn, path, json.dumps(merged, indent=4) + "\n", 0o644, sudo=sudo)
    return Step("docker daemon.json", True, f"set {CGROUP_DRIVER_OPT} in {path}")


def _docker_runtimes(conn, sudo: bool) -> set[str] | None:
    r = remote.run(conn, ["docker", "info", "--format", "{{json .Runtimes}}"], check=False,
                   sudo=sudo)
    if not r.ok:
        return None
    try:
        return set(json.loads(r.stdout.strip() or "{}"))
    except ValueError:
        return None


def nvidia_toolkit(conn, *, root: str | os.PathLike = "/", version: str | None = None,
                   plan_only: bool = False) -> Step:
    """The NVIDIA container toolkit with Docker's ``nvidia`` runtime and the cgroup fix (see
    the module's docstring). Installs (:func:`nvidia_toolkit_script`) only when ``nvidia-ctk``
    is missing; re-registers the runtime only when ``docker info`` lacks it; restarts Docker
    only when something changed, then checks ``docker info`` lists ``nvidia``. Raises
    CloudError when the driver is not working (``nvidia-smi``), an install fails, or the
    runtime is still missing after the restart."""
    live = _live(root) and not plan_only
    sudo = _live(root) and not _is_root(conn)
    done: list[str] = []
    todo: list[str] = []
    if live and not _ok(conn, ["nvidia-smi", "-L"]):
        raise CloudError(f"the NVIDIA driver does not work on {conn.host} (nvidia-smi -L "
                         "failed): boot a CUDA image (CC-Ubuntu24.04-CUDA)")
    has_ctk = _ok(conn, ["nvidia-ctk", "--version"])
    runtimes = _docker_runtimes(conn, sudo) if _live(root) else None
    if not has_ctk:
        script = nvidia_toolkit_script(version)
        if live:
            _run_script(conn, script, "nvidia-toolkit-install", sudo)
            done.append("installed the NVIDIA container toolkit")
        else:
            todo.append(f"run as root:\n{script}")
    elif runtimes is not None and "nvidia" not in runtimes:
        argv = ["nvidia-ctk", "runtime", "configure", "--runtime=docker"]
        if live:
            remote.run(conn, argv, sudo=sudo)
            done.append("registered the nvidia runtime with Docker")
        else:
            todo.append(f"run: {shlex.join(argv)}")
    daemon = daemon_json(conn, root=root, plan_only=plan_only, sudo=sudo)
    if daemon.changed:
        (todo if plan_only else done).append(daemon.detail)
    rule = _sys(root, UDEV_RULE)
    if _ensure_file(conn, rule, UDEV_RULE_TEXT, 0o644, sudo=sudo, plan_only=plan_only):
        (todo if plan_only else done).append(f"{'would write' if plan_only else 'wrote'} "
                                             f"{rule}")
        if live:
            remote.run(conn, ["nvidia-ctk", "system", "create-dev-char-symlinks",
                              "--create-all"], sudo=sudo)
    if plan_only or not _live(root):
        if done or todo:
            todo.append("restart docker" + ("" if plan_only else f" ({_skipped(root)})"))
        head = "plan only: " if plan_only else ""
        return Step(NVIDIA, bool(done or todo), head + "; ".join(done + todo)
                    if done or todo else "nothing to do")
    if done:
        remote.run(conn, ["systemctl", "restart", "docker"], sudo=sudo, timeout=300)
        done.append("restarted docker")
    runtimes = _docker_runtimes(conn, sudo)
    if runtimes is None or "nvidia" not in runtimes:
        raise CloudError(f"docker info on {conn.host} does not list the nvidia runtime "
                         f"(runtimes: {sorted(runtimes or [])})", "docker info")
    if not done:
        return Step(NVIDIA, False, "already set up (nvidia runtime, cgroupfs driver, "
                                   "/dev/char symlink rule)")
    return Step(NVIDIA, True, "; ".join(done))


def rocm(conn, *, root: str | os.PathLike = "/", user: str | None = None,
         plan_only: bool = False) -> Step:
    """Verify ROCm (it comes with the CC-Ubuntu24.04-ROCm image): ``<root>/dev/kfd`` exists
    and ``user`` is in the ``video`` and ``render`` groups (added when missing; a new login
    is needed for them to apply). Raises CloudError when /dev/kfd or a group is missing."""
    user = _user(conn, user)
    kfd = _sys(root, "/dev/kfd")
    if not _ok(conn, ["test", "-e", kfd]):
        raise CloudError(f"{kfd} is missing on {conn.host}: the amdgpu driver is not loaded; "
                         "boot the CC-Ubuntu24.04-ROCm image on an AMD GPU node")
    for group in ROCM_GROUPS:
        if not _ok(conn, ["getent", "group", group]):
            raise CloudError(f"group {group!r} does not exist on {conn.host}; is ROCm "
                             "installed (CC-Ubuntu24.04-ROCm)?")
    missing = [g for g in ROCM_GROUPS if g not in _groups(conn, user)]
    if not missing:
        return Step(ROCM, False, f"{kfd} present; {user} is in {', '.join(ROCM_GROUPS)}")
    argv = ["usermod", "-aG", ",".join(missing), user]
    if plan_only or not _live(root):
        why = "plan only" if plan_only else _skipped(root)
        return Step(ROCM, True, f"would run: {shlex.join(argv)} ({why})")
    remote.run(conn, argv, sudo=not _is_root(conn))
    return Step(ROCM, True, f"added {user} to {', '.join(missing)}", {"reconnect": True})


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
    from .lab.compose import HostPaths

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
        from .lab.compose import HostPaths

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
    """Upload replab's build context (``lab.server.SOURCE_PARTS`` of the checkout
    ``source``) to ``paths.source``, only when its content hash differs from the one stored
    there (:data:`SOURCE_HASH_FILE`). The tree is replaced whole, so deleted files go too.
    Raises CloudError when the upload fails."""
    from .lab import server
    from .lab.compose import HostPaths

    paths = paths or HostPaths.for_config(cfg, home_directory(conn, conn.user, home))
    files = source_files(source or server.ROOT, parts or server.SOURCE_PARTS)
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


def lab_mlflow_version(source: str | os.PathLike | None = None) -> str | None:
    """The MLflow version the lab's image pins (``docker/mlflow/requirements.txt`` of the
    checkout ``source``), or None."""
    from .lab import server

    path = Path(source or server.ROOT) / "docker" / "mlflow" / "requirements.txt"
    text = path.read_text() if path.exists() else ""
    found = re.search(r"^mlflow==([^\s;#]+)", text, re.M)
    return found.group(1) if found else None


def replab_cli(conn, cfg, *, paths=None, home: str | None = None, python: str = "python3",
               root: str | os.PathLike = "/",
               constraints: str | os.PathLike | None = None) -> Step:
    """replab itself on the server, in the virtual environment ``HostPaths.venv``, installed
    from the source :func:`upload_lab` put at ``HostPaths.source`` (run that first), with
    :data:`SERVER_PACKAGES` pinned by this checkout's ``constraints.txt`` (and, for a
    PostgreSQL lab, the distribution's ``postgresql-client``). The backup timer and
    teardown's last backup run ``HostPaths.replab``. changed=False when the venv holds
    the uploaded source already (same sha256). ``python3 -m venv`` failing on the live
    system installs ``python3-venv`` first. Raises CloudError when a command fails."""
    from .lab import server
    from .lab.compose import HostPaths

    paths = paths or HostPaths.for_config(cfg, home_directory(conn, conn.user, home))
    digest = (remote.read_text(conn, f"{paths.source}/{SOURCE_HASH_FILE}") or "").strip()
    if not digest:
        raise CloudError(f"no replab source at {paths.source} on {conn.host}: the "
                         f"{LAB_SOURCE} step uploads it first", "replab-cli")
    marker = f"{paths.venv}/{SOURCE_HASH_FILE}"
    replab = paths.replab
    pg_client = (cfg.lab.mlflow_backend != "postgresql" or not _live(root)
                 or _which(conn, "pg_dump") is not None)
    if (remote.read_text(conn, marker) or "").strip() == digest and pg_client and \
            _ok(conn, [replab, "--version"]):
        return Step(REPLAB_CLI, False, f"{replab} is current (sha256 {digest[:12]})")
    notes = []
    vpython = f"{paths.venv}/bin/python"
    if not _ok(conn, [vpython, "-c", "import pip"]):
        made = remote.run(conn, [python, "-m", "venv", "--clear", paths.venv], check=False)
        if not made.ok and _live(root):  # Ubuntu's python3 comes without ensurepip
            _apt_install(conn, ["python3-venv"], sudo=not _is_root(conn))
            notes.append("installed python3-venv")
            made = remote.run(conn, [python, "-m", "venv", "--clear", paths.venv])
        if not made.ok:
            raise CloudError(f"{python} -m venv {paths.venv} failed on {conn.host}:\n"
                             f"{(made.stderr or made.stdout).strip()[-1500:]}", "python -m venv")
        notes.append(f"created {paths.venv}")
    local = Path(constraints) if constraints else server.ROOT / "constraints.txt"
    pins = f"{paths.venv}/replab-constraints.txt"
    remote.put_text(conn, local.read_text() if local.exists() else "", pins, mode=0o644)
    pip = [vpython, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    remote.run(conn, [*pip, "-c", pins, *SERVER_PACKAGES], timeout=1800)
    # replab itself last and always reinstalled: its version does not change with the source
    remote.run(conn, [*pip, "--no-deps", "--force-reinstall", paths.source], timeout=900)
    version = remote.run(conn, [replab, "--version"]).stdout.strip()
    if cfg.lab.mlflow_backend == "postgresql" and not _which(conn, "pg_dump"):
        if _live(root):  # Ubuntu 24.04's client is 16, as the lab's PostgreSQL
            _apt_install(conn, ["postgresql-client"], sudo=not _is_root(conn))
            notes.append("installed postgresql-client (pg_dump for the backups)")
        else:
            notes.append(f"apt-get install postgresql-client skipped ({_skipped(root)})")
    remote.put_text(conn, digest + "\n", marker, mode=0o644)
    notes.append(f"installed {version or 'replab'} from {paths.source} (sha256 {digest[:12]})")
    return Step(REPLAB_CLI, True, "; ".join(notes), {"replab": replab})


def server_workdir(conn, cfg, store, *, paths=None, home: str | None = None) -> Step:
    """The server's replab work directory ``HostPaths.workdir``: ``config.yaml`` (this
    config, its ``workdir`` set to that directory) and ``secrets/credentials.json`` holding
    only the EC2 keys the MLflow backups are written with (0600 in a 0700 directory; the
    application credential never leaves this machine). changed=False when both are there
    as they would be written. Raises ConfigError without EC2 keys (1_create_credentials)."""
    import dataclasses

    from . import config as config_mod
    from .lab.compose import HostPaths

    paths = paths or HostPaths.for_config(cfg, home_directory(conn, conn.user, home))
    ec2 = store.credentials().get("ec2")
    if not ec2:
        raise ConfigError(f"no EC2 credential in {store.path(store.CREDENTIALS)}: run "
                          "1_create_credentials first (the server's backups need it)")
    text = config_mod.dump(dataclasses.replace(cfg, workdir=paths.workdir))
    secrets_dir = f"{paths.workdir}/secrets"
    remote.run(conn, ["mkdir", "-p", secrets_dir])
    remote.run(conn, ["chmod", "700", secrets_dir])
    written = [name for name, content, mode in (
        (f"{paths.workdir}/{config_mod.CONFIG_FILE}", text, 0o644),
        (f"{secrets_dir}/{store.CREDENTIALS}",
         json.dumps({"ec2": ec2}, indent=1, sort_keys=True) + "\n", 0o600),
    ) if _ensure_file(conn, name, content, mode)]
    if not written:
        return Step(WORKDIR, False, f"{paths.workdir} holds the config and the EC2 keys")
    return Step(WORKDIR, True, f"wrote {', '.join(written)}")


def backup_timer(conn, cfg, *, root: str | os.PathLike = "/", home: str | None = None,
                 user: str | None = None, workdir: str | None = None,
                 replab: str | None = None, database_uri: str | None = None,
                 on_calendar: str = "hourly") -> Step:
    """Install and enable ``lab.backup.systemd_units`` (the hourly MLflow backup) under
    ``<root>/etc/systemd/system``; changed=False when both units are already there as
    rendered. ``workdir`` (on the server, written by :func:`server_workdir`) defaults to
    ``HostPaths.workdir``, ``replab`` to ``HostPaths.replab`` (:func:`replab_cli`), the
    database to ``lab.backup.server_database_uri`` (the password comes from the lab's
    ``.env``). Raises CloudError when systemctl fails."""
    from .lab import backup
    from .lab.compose import HostPaths

    user = _user(conn, user)
    paths = HostPaths.for_config(cfg, home_directory(conn, user, home))
    if database_uri is None:
        database_uri = backup.server_database_uri(cfg, paths)
    units = backup.systemd_units(workdir or paths.workdir, replab=replab or paths.replab,
                                 user=user, mlflow_version=lab_mlflow_version(),
                                 on_calendar=on_calendar,
                                 environment_file=f"{paths.lab}/.env",
                                 database_uri=database_uri)
    sudo = _live(root) and not _is_root(conn)
    changed, notes = _install_units(conn, root, units, f"{backup.UNIT}.timer", sudo=sudo)
    if not changed:
        return Step(BACKUP_TIMER, False, f"{backup.UNIT}.timer installed ({on_calendar})")
    return Step(BACKUP_TIMER, True, "; ".join(notes))


def step_names(cfg) -> list[str]:
    """The steps :func:`setup_host` runs for ``cfg``, in order (the GPU runtime by
    ``cfg.gpu_vendor``)."""
    gpu = {"nvidia": [NVIDIA], "amd": [ROCM]}.get(cfg.gpu_vendor, [])
    return [DOCKER, *gpu, RCLONE, REPOSITORY, LAB_SOURCE, REPLAB_CLI, WORKDIR, BACKUP_TIMER]


def setup_host(conn, cfg, store, *, root: str | os.PathLike = "/",
               home: str | os.PathLike | None = None, user: str | None = None,
               progress: Progress | None = None, repository: str | None = None,
               forward_agent: bool = False, source: str | os.PathLike | None = None,
               skip: Iterable[str] = ()) -> list[Step]:
    """Set the server up: Docker, the GPU runtime by ``cfg.gpu_vendor`` (NVIDIA toolkit or
    ROCm check), rclone + FUSE with the data bucket's mount, the repository (``repository``
    overrides ``cfg.repository``), the lab's source (from the checkout ``source``, default
    this one), replab in a venv on the server, the server's work directory (config and EC2
    keys), the backup timer; steps named in
    ``skip`` are left out. Returns every step's outcome, in order. Raises what the steps
    raise (the steps before it have taken effect; running again resumes)."""
    say = progress or (lambda _m: None)
    user = _user(conn, user)
    home = home_directory(conn, user, home)
    skipped = set(skip)
    run: dict[str, Callable[[], Step]] = {
        DOCKER: lambda: docker(conn, root=root, user=user),
        NVIDIA: lambda: nvidia_toolkit(conn, root=root),
        ROCM: lambda: rocm(conn, root=root, user=user),
        RCLONE: lambda: rclone_fuse(conn, cfg, store, root=root, home=home, user=user),
        REPOSITORY: lambda: clone_repository(conn, cfg, home=home, url=repository,
                                             forward_agent=forward_agent),
        LAB_SOURCE: lambda: upload_lab(conn, cfg, home=home, source=source),
        REPLAB_CLI: lambda: replab_cli(conn, cfg, home=home, root=root),
        WORKDIR: lambda: server_workdir(conn, cfg, store, home=home),
        BACKUP_TIMER: lambda: backup_timer(conn, cfg, root=root, home=home, user=user),
    }
    plan = [(name, run[name]) for name in step_names(cfg)]
    steps = []
    for name, step in plan:
        if name in skipped:
            continue
        say(f"{name}: checking")
        outcome = step()
        log.info("%s: %s%s", name, "changed: " if outcome.changed else "",
                 outcome.detail.splitlines()[0] if outcome.detail else "")
        say(f"{name}: {'changed' if outcome.changed else 'unchanged'}"
            + (f" ({outcome.detail.splitlines()[0]})" if outcome.detail else ""))
        if outcome.extra.get("reconnect"):
            conn.close()  # group membership applies to new logins; the next call reconnects
        steps.append(outcome)
    return steps


__all__ = [
    "BACKUP_TIMER", "DOCKER", "LAB_SOURCE", "NVIDIA", "RCLONE", "REPLAB_CLI", "REPOSITORY", "ROCM",
    "SERVER_PACKAGES", "WORKDIR", "backup_timer", "clone_repository", "daemon_json", "docker",
    "docker_script", "home_directory", "is_ssh_url", "lab_mlflow_version", "merge_daemon_json",
    "nvidia_toolkit", "nvidia_toolkit_script", "rclone_fuse", "replab_cli", "rocm",
    "server_workdir", "setup_host", "source_files", "source_hash", "step_names", "upload_lab",
]
