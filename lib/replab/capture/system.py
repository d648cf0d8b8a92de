"""The ``platform`` capture: operating system, distribution, kernel, CPU and memory.

Reads ``/etc/os-release``, ``/proc/cpuinfo`` and ``/proc/meminfo`` where they exist; avoids
``platform.processor()``, which runs ``uname -p`` in a subprocess on Linux.
"""

from __future__ import annotations

import os
import platform

from replab.capture._util import read_text
from replab.capture.registry import capture

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def os_release(text: str | None = None) -> dict[str, str]:
    """``/etc/os-release`` (or ``text`` in its format) as a dict. Raises nothing."""
    if text is None:
        text = read_text("/etc/os-release") or read_text("/usr/lib/os-release") or ""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value.strip().strip("\"'")
    return out


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The CPU model name from ``/proc/cpuinfo`` (or ``cpuinfo`` text). Raises nothing."""
    if cpuinfo is None:
        cpuinfo = read_text("/proc/cpuinfo", limit=64 * 1024) or ""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "cpu model", "Hardware"):
            return value.strip()
    return None


def memory_total(meminfo: str | None = None) -> int | None:
    """Total memory in bytes from ``/proc/meminfo`` (or ``meminfo`` text). Raises nothing."""
    if meminfo is None:
        meminfo = read_text("/proc/meminfo", limit=8192) or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1]) * (1024 if parts[-1].lower() == "kb" else 1)
            except (IndexError, ValueError):
                return None
    if hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


@capture("platform")
def platform_info() -> dict[str, Any]:
    """OS, distribution, kernel, hostname, machine, CPU model, cores and memory."""
    uname = platform.uname()
    release = os_release() if uname.system == "Linux" else {}
    try:
        usable = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        usable = None
    return {
        "system": uname.system,
        "distribution": {k: release[k] for k in ("ID", "NAME", "VERSION_ID", "PRETTY_NAME",
                                                 "VERSION_CODENAME") if k in release},
        "kernel": uname.release,
        "kernel_version": uname.version,
        # platform's node is gethostname() (its own fallback); socket would cost start-up
        "hostname": uname.node,
        "machine": uname.machine,
        "platform": platform.platform(),
        "cpu_model": cpu_model() if uname.system == "Linux" else (platform.processor() or None),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_total": memory_total(),
    }
