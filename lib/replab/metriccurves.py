"""One metric of two runs, curve against curve: the k-th value logged at a step is matched
with the k-th value the other run logged at that step; steps on one side only are missing.
Pure functions; :mod:`replab.verdict` turns the rows into a verdict."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from .runrecord import Points, encode_float
from .tolerances import Tolerance, abs_dev, rel_dev, same


class MetricStatus(str, Enum):
    IDENTICAL = "identical"
    WITHIN_TOLERANCE = "within_tolerance"
    OUTSIDE_TOLERANCE = "outside_tolerance"
    MISSING_IN_ORIGINAL = "missing_in_original"
    MISSING_IN_REPLAY = "missing_in_replay"


Step = Any  # an int, or "12#1" for the second value logged at step 12


@dataclass
class MetricComparison:
    """One metric of both runs: status, deviations over the common steps, final values."""

    name: str
    status: MetricStatus
    tolerance: Tolerance
    tolerance_from: str
    steps_compared: int = 0
    missing_in_replay: list[Step] = field(default_factory=list)
    missing_in_original: list[Step] = field(default_factory=list)
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_step: Step | None = None
    first_outside: Step | None = None
    outside_count: int = 0
    final_step: Step | None = None  # the last common step
    final_original: float | None = None
    final_replay: float | None = None
    final_abs: float = 0.0
    final_rel: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        for key in ("max_abs", "max_rel", "final_abs", "final_rel", "final_original",
                    "final_replay"):
            if isinstance(data[key], float):
                data[key] = encode_float(data[key])
        return data


def keyed(points: Iterable[tuple[int, float]]) -> dict[Step, float]:
    """``{step: value}``; the n-th repeat of a step (n >= 1) is keyed ``"step#n"``."""
    out: dict[Step, float] = {}
    seen: dict[int, int] = {}
    for step, value in sorted(points, key=lambda p: p[0]):
        n = seen.get(step, 0)
        seen[step] = n + 1
        out[step if n == 0 else f"{step}#{n}"] = float(value)
    return out


def step_order(step: Step) -> tuple[int, int]:
    if isinstance(step, str):
        base, _, n = step.partition("#")
        return int(base), int(n)
    return int(step), 0


def compare_metric(name: str, original: Points | None, replay: Points | None,
                   tolerance: Tolerance, tolerance_from: str = "") -> MetricComparison:
    """Compare one metric's curves (None: not logged by that run). Pure."""
    a, b = keyed(original or []), keyed(replay or [])
    row = MetricComparison(name, MetricStatus.IDENTICAL, tolerance, tolerance_from)
    row.missing_in_replay = sorted((s for s in a if s not in b), key=step_order)
    row.missing_in_original = sorted((s for s in b if s not in a), key=step_order)
    common = sorted((s for s in a if s in b), key=step_order)
    row.steps_compared = len(common)
    if not common:
        row.status = (MetricStatus.MISSING_IN_REPLAY if a or not b
                      else MetricStatus.MISSING_IN_ORIGINAL)
        return row
    identical = True
    for step in common:
        va, vb = a[step], b[step]
        d, r = abs_dev(va, vb), rel_dev(va, vb)
        identical = identical and same(va, vb)
        if d > row.max_abs:
            row.max_abs, row.worst_step = d, step
        row.max_rel = max(row.max_rel, r)
        if not tolerance.allows(va, vb):
            row.outside_count += 1
            row.first_outside = step if row.first_outside is None else row.first_outside
    last = common[-1]
    row.final_step, row.final_original, row.final_replay = last, a[last], b[last]
    row.final_abs, row.final_rel = abs_dev(a[last], b[last]), rel_dev(a[last], b[last])
    row.status = (MetricStatus.OUTSIDE_TOLERANCE if row.outside_count else
                  MetricStatus.IDENTICAL if identical else MetricStatus.WITHIN_TOLERANCE)
    return row


