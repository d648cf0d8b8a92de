"""Which parameters of the notebooks and the CLI are paths, and making them absolute.

A relative path means "relative to where the user stood" only at the edge: the command line
(the current directory) and a notebook's parameters (the notebook's directory). Past the edge
everything is absolute, because replays, kernels and executed notebooks run in other
directories (a replay runs in its workspace; an executed notebook is re-run from
``<workdir>/runs/<stamp>/``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PATHS = ("workdir", "clouds_file", "public_key", "private_key", "output", "root", "params",
         "env_file")
"""Parameters (and CLI options) that always name a local path."""

_SCP = re.compile(r"^[\w.-]+@[\w.-]+:")  # git@host:group/repo.git
BUNDLE_SUFFIXES = (".tar.gz", ".tgz")


def is_url(value: str) -> bool:
    """A git or HTTP URL (``https://…``, ``ssh://…``, ``file://…``, ``git@host:path``)."""
    return "://" in value or bool(_SCP.match(value))


def is_path(name: str, value: Any) -> bool:
    """Whether parameter ``name`` with ``value`` names a local path: the path parameters,
    ``repo`` unless it is a URL, ``run`` when it is a bundle file."""
    if not isinstance(value, str) or not value:
        return False
    if name in PATHS:
        return True
    if name == "repo":
        return not is_url(value)
    if name == "run":
        return value.endswith(BUNDLE_SUFFIXES)
    return False


def absolute(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``path`` with ``~`` expanded, made absolute against ``base`` (default: the current
    directory)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base or Path.cwd()) / p
    return str(p.resolve())


def absolute_paths(params: Mapping[str, Any],
                   base: str | os.PathLike | None = None) -> dict[str, Any]:
    """``params`` with every path parameter (see :func:`is_path`) made absolute."""
    return {k: absolute(v, base) if is_path(k, v) else v for k, v in params.items()}
