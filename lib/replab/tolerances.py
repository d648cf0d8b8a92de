"""How far apart two values may be and still agree: :class:`Tolerance`, and the defaults
a verdict starts from.

Default tolerances come from the original run's determinism profile
(:func:`replab.envdiff.determinism_profile`):

============ ====== ====== ==============================================================
profile      abs    rel    why
============ ====== ====== ==============================================================
bit-for-bit  0      0      seeded, CPU only or deterministic GPU algorithms: anything but
                           identical is a real change
same-stack   1e-6   1e-4   seeded, GPU nondeterminism or TF32 possible. Reordered float32
                           reductions over 1e3-1e6 terms move a value by about sqrt(n) to
                           n ulps (1e-6 to 1e-4 relative); tighter would flag pure noise,
                           looser would pass one flipped prediction in 10,000 (1e-4)
statistical  1e-2   5e-2   no seed: runs differ by design. 5% relative (1 point absolute,
                           for metrics near 0) is the seed-to-seed spread of typical small
                           models; one replay is a sample of one, not a test
============ ====== ====== ==============================================================

Override them with ``compare(..., tolerances=Tolerance(abs=, rel=))`` (every metric) or a
mapping ``{metric or pattern with *: Tolerance}`` (exact names first, then patterns in order).

A default tolerance is *assumed*: nothing measured the run-to-run spread of the program.
For the statistical profile that matters (5% is a guess about typical models, not a fact
about this one): the verdict says so, and ``replab replay --repeats N`` measures the spread
instead (:mod:`replab.spread`); ``--strict`` fails a verdict that rests on an assumed
statistical tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .envdiff import BIT_FOR_BIT, SAME_STACK, STATISTICAL, matches
from .errors import ConfigError


# -- tolerances --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """Values a, b agree when ``|a - b| <= max(abs, rel * max(|a|, |b|))``. Raises
    ConfigError for a negative or non-finite bound."""

    abs: float = 0.0
    rel: float = 0.0

    def __post_init__(self) -> None:
        for name in ("abs", "rel"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError([(f"tolerance.{name}", f"{value!r} is not a finite number "
                                                         ">= 0")])

    def allows(self, a: float, b: float) -> bool:
        if same(a, b):
            return True
        return abs_dev(a, b) <= max(self.abs, self.rel * max(math.fabs(a), math.fabs(b)))

    def __str__(self) -> str:
        return f"abs {self.abs:g}, rel {self.rel:g}"


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    BIT_FOR_BIT: Tolerance(abs=0.0, rel=0.0),
    SAME_STACK: Tolerance(abs=1e-6, rel=1e-4),
    STATISTICAL: Tolerance(abs=1e-2, rel=5e-2),
}


def as_tolerance(value: Any, name: str) -> Tolerance:
    if isinstance(value, Tolerance):
        return value
    try:
        if isinstance(value, Mapping) and set(value) <= {"abs", "rel"}:
            return Tolerance(**{k: float(v) for k, v in value.items()})
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return Tolerance(abs=float(value[0]), rel=float(value[1]))
    except (TypeError, ValueError):
        pass
    raise ConfigError([(f"tolerances[{name!r}]", f"{value!r}: give Tolerance(abs=, rel=), "
                                                 "{'abs': .., 'rel': ..} or (abs, rel)")])


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def abs_dev(a: float, b: float) -> float:
    if same(a, b):
        return 0.0
    d = math.fabs(a - b)
    return math.inf if math.isnan(d) else d


def rel_dev(a: float, b: float) -> float:
    d = abs_dev(a, b)
    if d == 0.0:
        return 0.0
    scale = max(math.fabs(a), math.fabs(b))
    return math.inf if math.isinf(d) or scale == 0 or math.isnan(scale) else d / scale


def tolerance_for(name: str, per_metric: Mapping[str, Tolerance], default: Tolerance,
                   default_from: str) -> tuple[Tolerance, str]:
    if name in per_metric:
        return per_metric[name], f"given for {name}"
    for pattern, tol in per_metric.items():
        if "*" in pattern and matches((pattern,), name):
            return tol, f"given for {pattern}"
    return default, default_from


