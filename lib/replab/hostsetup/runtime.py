"""Docker, the NVIDIA container toolkit (with the cgroup-driver fix) and ROCm: the
install scripts as pure renderers, and the steps that run them only when needed."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from .. import remote
from ..errors import CloudError, ConfigError
from ..remote import Step
from ._base import (
    CGROUP_DRIVER_OPT,
    DAEMON_JSON,
    DOCKER,
    DOCKER_CONFLICTS,
    DOCKER_KEYRING,
    DOCKER_PACKAGES,
    NVIDIA,
    NVIDIA_KEYRING,
    NVIDIA_LIST,
    NVIDIA_PACKAGES,
    ROCM,
    ROCM_GROUPS,
    UDEV_RULE,
    UDEV_RULE_TEXT,
    _ensure_file,
    _groups,
    _is_root,
    _live,
    _ok,
    _run_script,
    _skipped,
    _sys,
    _user,
)

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
