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

import os
from collections.abc import Callable, Iterable

from ..remote import Step
from ._base import (
    APT,
    APT_ENV,
    BACKUP_TIMER,
    CGROUP_DRIVER_OPT,
    DAEMON_JSON,
    DOCKER,
    DOCKER_CONFLICTS,
    DOCKER_KEYRING,
    DOCKER_PACKAGES,
    FUSE_CONF,
    LAB_SOURCE,
    NVIDIA,
    NVIDIA_KEYRING,
    NVIDIA_LIST,
    NVIDIA_PACKAGES,
    RCLONE,
    REPLAB_CLI,
    REPOSITORY,
    ROCM,
    ROCM_GROUPS,
    SERVER_PACKAGES,
    SOURCE_EXCLUDE,
    SOURCE_HASH_FILE,
    SYSTEMD_DIR,
    UDEV_RULE,
    UDEV_RULE_TEXT,
    WORKDIR,
    Progress,
    _user,
    home_directory,
    log,
)
from .runtime import (
    daemon_json,
    docker,
    docker_script,
    merge_daemon_json,
    nvidia_toolkit,
    nvidia_toolkit_script,
    rocm,
)
from .service import (
    backup_timer,
    lab_mlflow_version,
    replab_cli,
    server_workdir,
    systemd_units,
)
from .workspace import (
    clone_repository,
    is_ssh_url,
    rclone_fuse,
    source_files,
    source_hash,
    upload_lab,
)

#: every host-setup step, in the order :func:`setup_host` runs those that apply
STEP_NAMES = (DOCKER, NVIDIA, ROCM, RCLONE, REPOSITORY, LAB_SOURCE, REPLAB_CLI, WORKDIR,
              BACKUP_TIMER)


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
    "APT", "APT_ENV", "BACKUP_TIMER", "CGROUP_DRIVER_OPT", "DAEMON_JSON", "DOCKER",
    "DOCKER_CONFLICTS", "DOCKER_KEYRING", "DOCKER_PACKAGES", "FUSE_CONF", "LAB_SOURCE", "NVIDIA",
    "NVIDIA_KEYRING", "NVIDIA_LIST", "NVIDIA_PACKAGES", "RCLONE", "REPLAB_CLI", "REPOSITORY",
    "ROCM", "ROCM_GROUPS", "SERVER_PACKAGES", "SOURCE_EXCLUDE", "SOURCE_HASH_FILE", "STEP_NAMES",
    "SYSTEMD_DIR",
    "UDEV_RULE", "UDEV_RULE_TEXT", "WORKDIR", "backup_timer", "clone_repository", "daemon_json",
    "docker", "docker_script", "home_directory", "is_ssh_url", "lab_mlflow_version",
    "merge_daemon_json", "nvidia_toolkit", "nvidia_toolkit_script", "rclone_fuse", "replab_cli",
    "rocm", "server_workdir", "setup_host", "source_files", "source_hash", "step_names",
    "systemd_units", "upload_lab",
]
