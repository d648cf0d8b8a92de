"""replab: reproducible ML research on shared testbeds.

Importing ``replab`` is cheap: submodules (and their heavy dependencies such as MLflow or
openstacksdk) load only when used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "capture", "cli", "config", "credentials", "envdiff", "errors", "form", "guide", "lab",
    "replay", "series", "sites", "storage", "tracking", "verdict", "cloud", "remote",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"replab.{name}")
    raise AttributeError(f"module 'replab' has no attribute {name!r}")
