"""Shared parts of host setup: step names, constants, and the helpers every step uses
(running, checking and writing on the server, apt, systemd units)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath

from .. import remote

log = logging.getLogger("replab.hostsetup")

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
