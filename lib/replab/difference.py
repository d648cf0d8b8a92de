"""The vocabulary shared by :mod:`replab.envdiff`, :mod:`replab.hazards` and
:mod:`replab.faithfulness`: one
:class:`Difference` between two runs, key patterns, and the small readers of manifest data.

Pure; only the standard library is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any

MISSING: Any = object()  # a key absent on one side (None values count as absent too)


@dataclass
class Difference:
    """One way two environments differ. ``kind``: changed, added (only in b), removed (only
    in a), or hazard (the same risky condition in both: ``a`` and ``b`` describe it)."""

    layer: str
    key: str
    a: Any
    b: Any
    weight: int = 0
    why: str = ""
    kind: str = "changed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Difference:
        return cls(**{k: data[k] for k in ("layer", "key", "a", "b", "weight", "why", "kind")
                      if k in data})


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches anything; every other character is literal (``devices[*].name``)."""
    if pattern not in _PATTERNS:
        _PATTERNS[pattern] = re.compile(
            "".join(".*" if part == "*" else re.escape(part)
                    for part in re.split(r"(\*)", pattern)) + r"\Z", re.S)
    return _PATTERNS[pattern]


def matches(patterns: Iterable[str], key: str) -> bool:
    """Whether ``key`` matches one of ``patterns`` (``*``: anything; the rest literal)."""
    return any(_glob(p).match(key) for p in patterns)


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else an empty one (manifests may hold odd data)."""
    return value if isinstance(value, Mapping) else {}


def normalize_package(name: str) -> str:
    """A distribution name as pip compares it: ``PyYAML`` -> ``pyyaml``, ``a_b.c`` -> ``a-b-c``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_python(word: Any) -> bool:
    """Whether a command's first word runs a Python interpreter (``python``, ``python3.11``,
    ``/venv/bin/python``): the word a replay replaces with the interpreter it chose."""
    return PurePath(str(word)).name.startswith("python")


def command_by_name(command: Iterable[Any]) -> list[str]:
    """A recorded command with its interpreter by name (``python``), as original and replay
    compare it."""
    cmd = [str(w) for w in command]
    return ["python", *cmd[1:]] if cmd and is_python(cmd[0]) else cmd
