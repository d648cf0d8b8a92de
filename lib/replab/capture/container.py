"""The ``container`` capture: whether the run is inside a container, and which image.

Detection is by hints (marker files, cgroup paths, the ``container`` variable set by podman
and systemd-nspawn, Kubernetes variables); the image name and digest come from
``REPLAB_IMAGE`` / ``REPLAB_IMAGE_DIGEST``, which the lab's compose file sets.
"""

from __future__ import annotations

import os

from replab.capture._util import read_text
from replab.capture.registry import capture

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CGROUP_HINTS = {"docker": "docker", "kubepods": "kubernetes", "containerd": "containerd",
                 "libpod": "podman", "lxc": "lxc", "crio": "cri-o"}


def parse_containerenv(text: str) -> dict[str, str]:
    """``/run/.containerenv`` (podman: ``key="value"`` lines) as a dict. Pure."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip().strip('"')
    return out


def cgroup_hints(text: str) -> list[str]:
    """The container runtimes named in ``/proc/1/cgroup``-style text. Pure."""
    return sorted({runtime for marker, runtime in _CGROUP_HINTS.items() if marker in text})


@capture("container")
def container_info() -> dict[str, Any]:
    """Container hints, runtime, and image name/digest when the environment declares them."""
    hints: list[str] = []
    runtime = None
    info: dict[str, Any] = {}
    if os.path.exists("/.dockerenv"):
        hints.append("/.dockerenv")
        runtime = "docker"
    podman = read_text("/run/.containerenv", limit=16 * 1024)
    if podman is not None:
        hints.append("/run/.containerenv")
        runtime = "podman"
        fields = parse_containerenv(podman)
        for key in ("engine", "name", "image", "imageid"):
            if fields.get(key):
                info[f"podman_{key}"] = fields[key]
    cgroup = read_text("/proc/1/cgroup", limit=64 * 1024) or ""
    for name in cgroup_hints(cgroup):
        hints.append(f"cgroup:{name}")
        runtime = runtime or name
    if os.environ.get("container"):
        hints.append(f"env:container={os.environ['container']}")
        runtime = runtime or os.environ["container"]
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        hints.append("env:KUBERNETES_SERVICE_HOST")
        runtime = runtime or "kubernetes"
    info.update({
        "in_container": bool(hints),
        "runtime": runtime,
        "hints": hints,
        "image": os.environ.get("REPLAB_IMAGE") or None,
        "image_digest": os.environ.get("REPLAB_IMAGE_DIGEST") or None,
    })
    return info
