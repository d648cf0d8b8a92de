"""Tolerances measured, not assumed: the run-to-run spread of each metric over repeated
replays (``replab replay --repeats N``, or ``verify`` over several runs), and the original
judged against it.

The rule, stated in every report that uses it (:data:`RULE`): the original is judged as
one more draw from the distribution the N replays sample. At each step, with the replays'
values ``v1..vN`` (mean ``m``, sample standard deviation ``sd``):

- all ``vi`` identical: the metric is *observed deterministic*; the original must equal
  them (up to the float-formatting floor below);
- otherwise the original must lie in the 99% prediction interval of a new draw,
  ``|a - m| <= t(0.995, N-1) * sd * sqrt(1 + 1/N) + floor`` (Student's t, as for any
  prediction from a small sample: with N = 3, t = 9.92, so three repeats give a wide interval
  and more repeats a tighter one; N = 10 gives t = 3.25).

With several metrics and steps, a few per cent of faithful replays of an unseeded program
fall outside somewhere by chance (1% per independent point); the report names the points.
``floor`` is ``abs 1e-12`` plus ``rel 1e-9`` of the value: float formatting noise, not a
tolerance. The widest allowed deviation over the steps becomes the metric's tolerance in the
verdict (``tolerance_from`` = "measured spread").

Pure functions of the records; only the standard library is imported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .metriccurves import keyed, step_order
from .tolerances import Tolerance

FLOOR_ABS, FLOOR_REL = 1e-12, 1e-9
# Student's t, two-sided 99% (the 0.995 quantile), by degrees of freedom; beyond: the normal
_T995 = (63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169, 3.106, 3.055,
         3.012, 2.977, 2.947, 2.921, 2.898, 2.878, 2.861, 2.845, 2.831, 2.819, 2.807, 2.797,
         2.787, 2.779, 2.771, 2.763, 2.756, 2.750)
RULE = ("replays identical: the original must equal them; else within the 99% prediction "
        "interval of a new draw, mean +- t(0.995, N-1) * sd * sqrt(1 + 1/N)")


def t995(df: int) -> float:
    """Student's t 0.995 quantile for ``df`` degrees of freedom (df >= 1)."""
    return _T995[df - 1] if df <= len(_T995) else 2.576


@dataclass
class MetricSpread:
    """One metric over N replays."""

    name: str
    repeats: int
    deterministic: bool
    steps: int
    max_sd: float = 0.0
    max_range: float = 0.0
    half_width: float = 0.0  # the widest allowed deviation from the centre, over the steps
    centre: dict[Any, float] = field(default_factory=dict)  # step key -> centre

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(abs=self.half_width, rel=FLOOR_REL)

    def words(self) -> str:
        if self.deterministic:
            return f"{self.name}: observed deterministic over {self.repeats} replays"
        return (f"{self.name}: spread over {self.repeats} replays up to {self.max_range:.3g} "
                f"(sd {self.max_sd:.3g}); allowed deviation {self.half_width:.3g}")


def _floor(value: float) -> float:
    return FLOOR_ABS + FLOOR_REL * math.fabs(value)


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """``(centre, allowed deviation, sd)`` of two or more finite values by :data:`RULE`:
    identical values allow only the float floor; others the 99% prediction interval."""
    lo, hi = min(values), max(values)
    if lo == hi:
        return lo, _floor(lo), 0.0
    n, mean, sd = len(values), statistics.fmean(values), statistics.stdev(values)
    return mean, t995(n - 1) * sd * math.sqrt(1 + 1 / n) + _floor(mean), sd


def measure(replays: Sequence[Any], names: Sequence[str] | None = None,
            ignore: Sequence[str] = ()) -> dict[str, MetricSpread]:
    """The spread of each metric over the replays (``RunRecord``s, two or more), at the
    steps all of them logged; names matching an ``ignore`` pattern left out. Pure."""
    from .difference import matches

    if len(replays) < 2:
        return {}
    names = [n for n in names or sorted(set.intersection(*(set(r.metrics) for r in replays)))
             if not matches(tuple(ignore), n)]
    out = {}
    for name in names:
        curves = [keyed(r.metrics.get(name) or []) for r in replays]
        common = set.intersection(*(set(c) for c in curves))
        if not common:
            continue
        n = len(replays)
        spread = MetricSpread(name, n, True, len(common))
        for step in common:
            values = [c[step] for c in curves]
            finite = [v for v in values if math.isfinite(v)]
            if len(finite) != n:
                same = all(v == values[0] or (math.isnan(v) and math.isnan(values[0]))
                           for v in values)
                spread.deterministic &= same
                spread.centre[step] = values[0]
                continue
            spread.centre[step], half, sd = interval(finite)
            spread.half_width = max(spread.half_width, half)
            if sd:
                spread.deterministic = False
                spread.max_sd = max(spread.max_sd, sd)
                spread.max_range = max(spread.max_range, max(finite) - min(finite))
        out[name] = spread
    return out


def tolerances(spreads: dict[str, MetricSpread]) -> dict[str, Tolerance]:
    """The measured tolerance of each metric, for ``verdict.compare(measured=)``."""
    return {name: s.tolerance for name, s in spreads.items()}


def measure_printed(replays: Sequence[Any], spec: Any = None
                    ) -> dict[str, dict[Any, tuple[float, float]]]:
    """Per printed stream the original recorded (``spec``: its output spec), ``{number key:
    (centre, allowed deviation)}`` over the replays' printed numbers, by the same rule as the
    metrics; only numbers every replay printed. For ``verdict.compare(printed_spread=)``."""
    from . import outputs

    out: dict[str, dict[Any, tuple[float, float]]] = {}
    if len(replays) < 2:
        return out
    masks = outputs.masks_for(spec)
    for stream in outputs.streams_for(spec):
        texts = [r.printed.get(stream) for r in replays]
        if any(t is None for t in texts):
            continue
        numbers = [outputs.printed_numbers(t, masks=masks, paths=outputs.paths_for(r.outputs))
                   for t, r in zip(texts, replays, strict=True)]
        common = set.intersection(*(set(n) for n in numbers))
        judged = {}
        for key in common:
            values = [nums[key] for nums in numbers]
            if all(math.isfinite(v) for v in values):
                judged[key] = interval(values)[:2]
        out[stream] = judged
    return out


def centre_record(first: Any, spreads: dict[str, MetricSpread]) -> Any:
    """``first`` (a replay's ``RunRecord``) with each measured metric's curve replaced by
    the replays' centre (mean, or the common value): what the original is judged against."""
    import copy

    out = copy.copy(first)
    out.metrics = dict(first.metrics)
    for name, s in spreads.items():
        out.metrics[name] = [(step_order(k)[0], v) for k, v in
                             sorted(s.centre.items(), key=lambda kv: step_order(kv[0]))]
    return out
