"""Did a replay reproduce its original run? Metric by metric, curve by curve, with tolerances,
and the ranked environment differences that most likely explain a mismatch.

``fetch_record(client, id)`` reads a run from MLflow into a :class:`RunRecord`;
``compare(original, replay)`` returns a :class:`Verdict`; ``explain(verdict)`` says it in one
paragraph; ``replab.report.write_report`` renders it (markdown, self-contained HTML with
plots, JSON) and ``replab.report.log_report`` attaches it to the replay run
(``replab/verdict/``, tags ``replab.verdict`` and ``replab.verdict.explain``).

Metrics are compared at common steps (the k-th value logged at a step is matched with the
k-th one of the other run; steps present on one side only are reported as missing). Value
``a`` and ``b`` agree when ``|a - b| <= max(abs, rel * max(|a|, |b|))`` (``math.isclose``'s
rule); equal values and NaN against NaN are identical. A metric's status comes from its whole
curve; the final values are reported too. MLflow's ``system/*`` metrics are ignored.

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

Verdict: NOT_REPRODUCED when any metric is outside its tolerance; else INCOMPLETE when a
metric or some steps are missing on either side (or no metrics at all); else REPRODUCED when
every value is identical, REPRODUCED_WITHIN_TOLERANCE otherwise. Differing parameters do not
change the verdict; they are reported first (a replay with other parameters is not faithful).

Importing this module is cheap: MLflow and matplotlib load only inside the functions that
use them.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .envdiff import (
    BIT_FOR_BIT,
    SAME_STACK,
    STATISTICAL,
    Difference,
    determinism_profile,
    env_diff,
    hazards,
    matches,
    rank,
)
from .errors import CloudError, ConfigError, ReplayError
from .runrecord import metric_histories
from .tracking import MANIFEST

log = logging.getLogger(__name__)

TAG_VERDICT = "replab.verdict"
TAG_VERDICT_EXPLAIN = "replab.verdict.explain"
ARTIFACT_DIR = "replab/verdict"
IGNORED_METRICS = ("system/*",)  # MLflow's system metrics: CPU/GPU load, never reproducible
TAG_MAX = 5000  # MLflow servers before 2.x accept 5000 characters per tag value

Points = list[tuple[int, float]]


# -- the records ------------------------------------------------------------------------------
def _enc(value: float) -> float | str:
    return value if math.isfinite(value) else ("NaN" if math.isnan(value) else
                                               "Infinity" if value > 0 else "-Infinity")


@dataclass
class RunRecord:
    """What the comparison needs of one run: params, full metric histories ``[(step,
    value)]``, the manifest (None when missing) and tags; ``notes`` say what was missing."""

    run_id: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Points] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON data (NaN and infinities as the strings "NaN", "Infinity")."""
        return {"run_id": self.run_id, "params": dict(self.params),
                "metrics": {k: [[int(s), _enc(float(v))] for s, v in pts]
                            for k, pts in self.metrics.items()},
                "manifest": self.manifest, "tags": dict(self.tags), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """The inverse of :meth:`to_dict`. Raises ReplayError for malformed data."""
        try:
            return cls(run_id=str(data["run_id"]),
                       params={str(k): str(v) for k, v in (data.get("params") or {}).items()},
                       metrics={str(k): [(int(s), float(v)) for s, v in pts]
                                for k, pts in (data.get("metrics") or {}).items()},
                       manifest=data.get("manifest"),
                       tags={str(k): str(v) for k, v in (data.get("tags") or {}).items()},
                       notes=[str(n) for n in data.get("notes") or []])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReplayError(f"malformed run record: {type(exc).__name__}: {exc}") from exc


def _uri(client: Any) -> str:
    inner = getattr(client, "_tracking_client", None)
    return str(getattr(inner, "tracking_uri", None) or getattr(client, "tracking_uri", "?"))


def _fetch_manifest(client: Any, run_id: str) -> tuple[dict[str, Any] | None, str | None]:
    with tempfile.TemporaryDirectory(prefix="replab-verdict-") as tmp:
        try:
            text = Path(client.download_artifacts(run_id, MANIFEST, tmp)).read_text("utf-8")
        except Exception as exc:  # absent artifact, unreachable store: the run is still useful
            return None, f"run {run_id} has no readable {MANIFEST} ({type(exc).__name__}: " \
                         f"{str(exc)[:200]}): its environment is not compared"
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        return None, f"{MANIFEST} of run {run_id} is not valid JSON ({exc}): not compared"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("captures"), dict):
        return None, f"{MANIFEST} of run {run_id} is not a replab manifest: not compared"
    if manifest.get("schema_version") != 1:
        return manifest, (f"{MANIFEST} of run {run_id} has schema_version "
                          f"{manifest.get('schema_version')!r} (this replab reads 1)")
    return manifest, None


def fetch_record(client: Any, run_id: str) -> RunRecord:
    """Read run ``run_id`` through an ``MlflowClient``: params, tags, every metric's full
    history in logged order (:func:`replab.runrecord.metric_history`) and
    ``replab/manifest.json``. A missing or corrupt manifest gives ``manifest=None`` and a
    note. Raises ReplayError when the run does not
    exist, CloudError when the tracking server fails."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in f"{getattr(exc, 'error_code', '')} {exc}":
            raise ReplayError(f"no run {run_id} on the tracking server {_uri(client)}") from exc
        raise CloudError(f"cannot read run {run_id} from {_uri(client)}: {exc}") from exc
    try:
        metrics = metric_histories(client, run_id, run.data.metrics)
    except Exception as exc:
        raise CloudError(f"cannot read the metrics of run {run_id} from {_uri(client)}: "
                         f"{exc}") from exc
    manifest, note = _fetch_manifest(client, run_id)
    if note:
        log.warning("%s", note)
    return RunRecord(run_id, dict(run.data.params), metrics, manifest, dict(run.data.tags),
                     [note] if note else [])


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
        if _same(a, b):
            return True
        return _abs_dev(a, b) <= max(self.abs, self.rel * max(math.fabs(a), math.fabs(b)))

    def __str__(self) -> str:
        return f"abs {self.abs:g}, rel {self.rel:g}"


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    BIT_FOR_BIT: Tolerance(abs=0.0, rel=0.0),
    SAME_STACK: Tolerance(abs=1e-6, rel=1e-4),
    STATISTICAL: Tolerance(abs=1e-2, rel=5e-2),
}


def _as_tolerance(value: Any, name: str) -> Tolerance:
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


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _abs_dev(a: float, b: float) -> float:
    if _same(a, b):
        return 0.0
    d = math.fabs(a - b)
    return math.inf if math.isnan(d) else d


def _rel_dev(a: float, b: float) -> float:
    d = _abs_dev(a, b)
    if d == 0.0:
        return 0.0
    scale = max(math.fabs(a), math.fabs(b))
    return math.inf if math.isinf(d) or scale == 0 or math.isnan(scale) else d / scale


# -- comparing ---------------------------------------------------------------------------------
class Outcome(str, Enum):
    REPRODUCED = "REPRODUCED"
    REPRODUCED_WITHIN_TOLERANCE = "REPRODUCED_WITHIN_TOLERANCE"
    NOT_REPRODUCED = "NOT_REPRODUCED"
    INCOMPLETE = "INCOMPLETE"


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
                data[key] = _enc(data[key])
        return data


@dataclass
class ParamDifference:
    key: str
    original: str | None
    replay: str | None


@dataclass
class Verdict:
    """The outcome of :func:`compare`; ``differences`` are ranked, heaviest first."""

    verdict: Outcome
    original_id: str
    replay_id: str
    profile: str
    profile_reasons: list[str]
    tolerance: Tolerance
    metrics: list[MetricComparison] = field(default_factory=list)
    params: list[ParamDifference] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return self.verdict in (Outcome.REPRODUCED, Outcome.REPRODUCED_WITHIN_TOLERANCE)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "original_id": self.original_id,
                "replay_id": self.replay_id, "profile": self.profile,
                "profile_reasons": self.profile_reasons, "tolerance": asdict(self.tolerance),
                "metrics": [m.to_dict() for m in self.metrics],
                "params": [asdict(p) for p in self.params],
                "differences": [d.to_dict() for d in self.differences], "notes": self.notes}


def _keyed(points: Iterable[tuple[int, float]]) -> dict[Step, float]:
    """``{step: value}``; the n-th repeat of a step (n >= 1) is keyed ``"step#n"``."""
    out: dict[Step, float] = {}
    seen: dict[int, int] = {}
    for step, value in sorted(points, key=lambda p: p[0]):
        n = seen.get(step, 0)
        seen[step] = n + 1
        out[step if n == 0 else f"{step}#{n}"] = float(value)
    return out


def _order(step: Step) -> tuple[int, int]:
    if isinstance(step, str):
        base, _, n = step.partition("#")
        return int(base), int(n)
    return int(step), 0


def compare_metric(name: str, original: Points | None, replay: Points | None,
                   tolerance: Tolerance, tolerance_from: str = "") -> MetricComparison:
    """Compare one metric's curves (None: not logged by that run). Pure."""
    a, b = _keyed(original or []), _keyed(replay or [])
    row = MetricComparison(name, MetricStatus.IDENTICAL, tolerance, tolerance_from)
    row.missing_in_replay = sorted((s for s in a if s not in b), key=_order)
    row.missing_in_original = sorted((s for s in b if s not in a), key=_order)
    common = sorted((s for s in a if s in b), key=_order)
    row.steps_compared = len(common)
    if not common:
        row.status = (MetricStatus.MISSING_IN_REPLAY if a or not b
                      else MetricStatus.MISSING_IN_ORIGINAL)
        return row
    identical = True
    for step in common:
        va, vb = a[step], b[step]
        d, r = _abs_dev(va, vb), _rel_dev(va, vb)
        identical = identical and _same(va, vb)
        if d > row.max_abs:
            row.max_abs, row.worst_step = d, step
        row.max_rel = max(row.max_rel, r)
        if not tolerance.allows(va, vb):
            row.outside_count += 1
            row.first_outside = step if row.first_outside is None else row.first_outside
    last = common[-1]
    row.final_step, row.final_original, row.final_replay = last, a[last], b[last]
    row.final_abs, row.final_rel = _abs_dev(a[last], b[last]), _rel_dev(a[last], b[last])
    row.status = (MetricStatus.OUTSIDE_TOLERANCE if row.outside_count else
                  MetricStatus.IDENTICAL if identical else MetricStatus.WITHIN_TOLERANCE)
    return row


def _tolerance_for(name: str, per_metric: Mapping[str, Tolerance], default: Tolerance,
                   default_from: str) -> tuple[Tolerance, str]:
    if name in per_metric:
        return per_metric[name], f"given for {name}"
    for pattern, tol in per_metric.items():
        if "*" in pattern and matches((pattern,), name):
            return tol, f"given for {pattern}"
    return default, default_from


def _outcome(rows: list[MetricComparison]) -> Outcome:
    if any(r.status is MetricStatus.OUTSIDE_TOLERANCE for r in rows):
        return Outcome.NOT_REPRODUCED
    if not rows or any(r.status in (MetricStatus.MISSING_IN_ORIGINAL,
                                    MetricStatus.MISSING_IN_REPLAY)
                       or r.missing_in_replay or r.missing_in_original for r in rows):
        return Outcome.INCOMPLETE
    if all(r.status is MetricStatus.IDENTICAL for r in rows):
        return Outcome.REPRODUCED
    return Outcome.REPRODUCED_WITHIN_TOLERANCE


def compare(original: RunRecord, replay: RunRecord,
            tolerances: Tolerance | Mapping[str, Any] | None = None, *,
            ignore: Iterable[str] = IGNORED_METRICS) -> Verdict:
    """Compare a replay with its original: metrics (curves and finals), params, environment.

    ``tolerances``: one Tolerance for every metric, or ``{name or pattern: Tolerance}`` over
    the profile's default (see the module doc). ``ignore``: metric name patterns left out.
    Raises ConfigError for a malformed tolerance.
    """
    profile, reasons = determinism_profile(original.manifest, original.tags)
    default, default_from = DEFAULT_TOLERANCES[profile], f"{profile} profile"
    per_metric: dict[str, Tolerance] = {}
    if isinstance(tolerances, Tolerance):
        default, default_from = tolerances, "given for all metrics"
    elif tolerances is not None:
        per_metric = {k: _as_tolerance(v, k) for k, v in tolerances.items()}
    ignore = tuple(ignore)
    names = sorted(set(original.metrics) | set(replay.metrics))
    ignored = [n for n in names if matches(ignore, n)]
    rows = [compare_metric(n, original.metrics.get(n), replay.metrics.get(n),
                           *_tolerance_for(n, per_metric, default, default_from))
            for n in names if n not in ignored]
    params = [ParamDifference(k, original.params.get(k), replay.params.get(k))
              for k in sorted(set(original.params) | set(replay.params))
              if original.params.get(k) != replay.params.get(k)]
    notes = [*original.notes, *replay.notes]
    if ignored:
        notes.append(f"ignored metrics: {', '.join(ignored)}")
    if not rows:
        notes.append("neither run logged a metric: nothing to compare")
    for rec, role in ((original, "original"), (replay, "replay")):
        if rec.manifest is None:
            notes.append(f"no manifest for the {role} run {rec.run_id}: environments not "
                         "compared")
    if params:
        notes.append("parameters differ: the replay did not run the original's configuration")
    if profile == STATISTICAL:
        notes.append("the original was not seeded: a single replay can only show whether it "
                     "lands near the original; repeat it to measure the spread")
    differences = rank([*hazards(original.manifest, replay.manifest, original.tags,
                                 replay.tags),
                        *env_diff(original.manifest, replay.manifest)])
    verdict = Verdict(_outcome(rows), original.run_id, replay.run_id, profile, reasons,
                      default, rows, params, differences, notes)
    log.info("verdict %s for replay %s of %s", verdict.verdict.value, replay.run_id,
             original.run_id)
    return verdict


# -- saying it ---------------------------------------------------------------------------------
def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _pair(a: float | None, b: float | None) -> str:
    """``a vs b`` with enough digits to tell them apart."""
    if a is None or b is None or _same(a, b) or not (math.isfinite(a) and math.isfinite(b)):
        return f"{_num(a)} vs {_num(b)}"
    digits = next((p for p in range(6, 18) if f"{a:.{p}g}" != f"{b:.{p}g}"), 17)
    return f"{a:.{digits}g} vs {b:.{digits}g}"


def _pct(rel: float) -> str:
    return "inf" if math.isinf(rel) else f"{rel * 100:.3g}%"


_HASH = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{28,}\b")


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = _HASH.sub(r"\1…", text)  # commits and sha256 digests: 12 characters tell them apart
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _ranges(steps: list[Step]) -> str:
    """``[0, 1, 2, 5, "5#1"]`` as ``"0-2, 5, 5#1"``."""
    parts: list[str] = []
    run: list[int] = []
    for step in [*steps, None]:
        if isinstance(step, int) and (not run or step == run[-1] + 1):
            run.append(step)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [step] if isinstance(step, int) else []
        if isinstance(step, str):
            parts.append(step)
    return ", ".join(parts)


def describe(diff: Difference) -> str:
    """One difference in words."""
    if diff.kind == "hazard":
        return diff.why
    return f"{diff.why} ({diff.layer} {diff.key}: {_short(diff.a, 40)} -> {_short(diff.b, 40)})"


def _tolerance_words(row: MetricComparison) -> str:
    source = row.tolerance_from.replace(" profile", "")
    return f"the {source} tolerance ({row.tolerance})" if "given" not in source else \
        f"the tolerance {source} ({row.tolerance})"


def explain(verdict: Verdict) -> str:
    """The verdict in one paragraph: what differs, by how much, and the most likely cause."""
    rows, out = verdict.metrics, [f"{verdict.verdict.value}:"]
    if verdict.verdict is Outcome.REPRODUCED:
        steps = sum(r.steps_compared for r in rows)
        out.append(f"all {len(rows)} metrics ({', '.join(r.name for r in rows)}) are identical "
                   f"at all {steps} compared points ({verdict.profile} profile).")
    elif verdict.verdict is Outcome.REPRODUCED_WITHIN_TOLERANCE:
        worst = max(rows, key=lambda r: (r.max_rel, r.max_abs))
        out.append(f"all {len(rows)} metrics agree within tolerance; the largest deviation is "
                   f"{worst.name}, by up to {_num(worst.max_abs)} (rel {_pct(worst.max_rel)}) "
                   f"at step {worst.worst_step}, inside {_tolerance_words(worst)}.")
    elif verdict.verdict is Outcome.NOT_REPRODUCED:
        bad = sorted((r for r in rows if r.status is MetricStatus.OUTSIDE_TOLERANCE),
                     key=lambda r: (-r.max_rel, -r.max_abs))
        w = bad[0]
        out.append(f"{w.name} differs by up to {_num(w.max_abs)} (rel {_pct(w.max_rel)}), "
                   f"outside {_tolerance_words(w)} from step {w.first_outside} on "
                   f"({w.outside_count} of {w.steps_compared} points); final value "
                   f"{_pair(w.final_original, w.final_replay)} at step {w.final_step}.")
        if len(bad) > 1:
            out.append(f"Also outside: {', '.join(r.name for r in bad[1:])}.")
        if _outcome([r for r in rows if r not in bad]) is Outcome.INCOMPLETE and \
                len(bad) < len(rows):
            out.append(f"Also incomplete: {_missing_words([r for r in rows if r not in bad])}.")
    else:
        out.append(_missing_words(rows) + ".")
    if verdict.params:
        listed = ", ".join(f"{p.key}: {p.original} -> {p.replay}" for p in verdict.params[:5])
        more = f" and {len(verdict.params) - 5} more" if len(verdict.params) > 5 else ""
        out.append(f"Parameters differ ({listed}{more}): the replay was not faithful.")
    if verdict.verdict is not Outcome.REPRODUCED:
        causes = [d for d in verdict.differences if d.weight >= 10]
        if verdict.params and verdict.verdict is not Outcome.REPRODUCED_WITHIN_TOLERANCE:
            out.append("Most likely cause: the different parameters.")
        elif causes:
            lead = ("Largest environment difference" if verdict.verdict is Outcome.INCOMPLETE
                    else "Most likely cause")
            out.append(f"{lead}: {describe(causes[0])}.")
            if len(causes) > 1:
                out.append("Next: " + "; ".join(f"{d.layer} {d.key}" for d in causes[1:4])
                           + ".")
        elif verdict.verdict is Outcome.NOT_REPRODUCED:
            out.append("No recorded environment difference explains it: look at what replab "
                       "does not capture (data read at run time, network, time, hardware).")
    return " ".join(out)


def _missing_words(rows: list[MetricComparison]) -> str:
    if not rows:
        return "neither run logged a metric, so nothing could be compared"
    parts = []
    for status, where in ((MetricStatus.MISSING_IN_REPLAY, "the replay"),
                          (MetricStatus.MISSING_IN_ORIGINAL, "the original")):
        names = [r.name for r in rows if r.status is status]
        if names:
            parts.append(f"metric{'s' if len(names) > 1 else ''} {', '.join(names)} missing in "
                         f"{where}")
    for r in rows:
        if r.status not in (MetricStatus.MISSING_IN_REPLAY, MetricStatus.MISSING_IN_ORIGINAL):
            for steps, where in ((r.missing_in_replay, "the replay"),
                                 (r.missing_in_original, "the original")):
                if steps:
                    parts.append(f"{r.name} steps {_ranges(steps)} missing in {where}")
    compared = [r for r in rows if r.steps_compared]
    agree = all(r.status in (MetricStatus.IDENTICAL, MetricStatus.WITHIN_TOLERANCE)
                for r in compared)
    if compared and agree:
        parts.append("the values present agree")
    return "; ".join(parts)
