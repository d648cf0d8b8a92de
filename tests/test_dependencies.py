"""What lib/replab imports from outside the standard library is declared: in pyproject.toml
(so ``pip install .`` brings it) and pinned in requirements.txt at constraints.txt's version
(so the notebooks' environment is the tested one)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

# imported by the library itself, not only through another dependency
DIRECT = {"psutil": "lab.supervisor", "requests": "hubtoken"}


def _names(specs) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", s, maxsplit=1)[0].lower() for s in specs}


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if found:
            pins[found.group(1).lower()] = found.group(2)
    return pins


def test_direct_dependencies_are_declared_and_pinned_as_constrained():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    required, constrained = _pins(ROOT / "requirements.txt"), _pins(ROOT / "constraints.txt")
    for name, user in DIRECT.items():
        assert name in declared, f"{name} (used by replab.{user}) is not in pyproject.toml"
        assert name in required, f"{name} is not pinned in requirements.txt"
        assert required[name] == constrained[name], (name, required[name], constrained[name])
