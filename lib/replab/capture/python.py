"""The ``python`` capture: the interpreter and the environment it runs in."""

from __future__ import annotations

import os
import platform
import sys

from replab.capture.registry import capture

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def conda_env() -> dict[str, Any] | None:
    """The conda environment this interpreter comes from (name, prefix, whether it is the
    activated one), or None outside conda."""
    active = os.environ.get("CONDA_PREFIX")
    base = getattr(sys, "base_prefix", sys.prefix)
    if os.path.isdir(os.path.join(sys.prefix, "conda-meta")):
        prefix = sys.prefix
    elif os.path.isdir(os.path.join(base, "conda-meta")):  # a venv made from a conda python
        prefix = base
    elif active:
        prefix = active
    else:
        return None
    is_active = bool(active) and os.path.realpath(active) == os.path.realpath(prefix)
    if is_active and os.environ.get("CONDA_DEFAULT_ENV"):
        name = os.environ["CONDA_DEFAULT_ENV"]
    elif os.path.isdir(os.path.join(prefix, "condabin")):
        name = "base"
    else:
        name = os.path.basename(prefix.rstrip(os.sep))
    return {"name": name, "prefix": prefix, "active": is_active}


@capture("python")
def python_info() -> dict[str, Any]:
    """Version, implementation, executable, virtualenv and conda prefixes. Raises nothing."""
    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    return {
        "version": platform.python_version(),
        "version_info": list(sys.version_info[:3]),
        "implementation": platform.python_implementation(),
        "compiler": platform.python_compiler(),
        "build": list(platform.python_build()),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "virtualenv": sys.prefix if in_venv else None,
        "conda": conda_env(),
        "flags": {"optimize": sys.flags.optimize, "hash_randomization":
                  sys.flags.hash_randomization},
    }
