"""Did a replay reproduce its original run? On evidence only: metric curves, the printed
output, the output files, each with tolerances; and first, whether the replay was the same
experiment at all.

``runrecord.fetch_record(client, id)`` reads a run into a :class:`RunRecord`;
``compare(original, replay)`` returns a :class:`Verdict`; ``explain(verdict)``
(:mod:`replab.verdictwords`) says it in one paragraph; ``replab.report.write_report``
renders it (markdown, self-contained HTML with plots, JSON) and ``replab.report.log_report``
attaches it to the replay run (``replab/verdict/``, tags ``replab.verdict`` and
``replab.verdict.explain``).

Evidence (:class:`Evidence`): the metrics compared point by point
(:mod:`replab.metriccurves`; MLflow's ``system/*`` metrics and ``replab.exit_code`` are not
evidence), the printed lines of the streams the original recorded (numbers in a line with
the metric tolerance, the text exactly, after masks: :mod:`replab.outputs`), and the output
files (by hash; CSV/TSV/JSON/NPY by value). The exit code is compared too, but a matching
exit code is never evidence on its own.

============================= ================================================= =====
verdict                       when                                              exit
============================= ================================================= =====
NOT_FAITHFUL                  params, code, entrypoint or argv, run options or  5
                              declared inputs differ (:mod:`replab.faithfulness`)
NOT_REPRODUCED                a metric point, printed line or output file is    1
                              outside its tolerance, or the exit code differs
INCOMPLETE                    no evidence at all (nothing logged, printed or    6
                              written), or some of it missing on one side
REPRODUCED                    every compared value identical                    0
REPRODUCED_WITHIN_TOLERANCE   everything within tolerance (exit 7 under         0
                              ``--strict`` when that tolerance was assumed)
============================= ================================================= =====

Tolerances: :mod:`replab.tolerances` (the defaults by determinism profile, overrides per
metric); a tolerance measured from repeated replays: :mod:`replab.spread`.

Importing this module is cheap: MLflow and matplotlib load only inside the functions that
use them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from . import outputs
from .envdiff import STATISTICAL, Difference, determinism_profile, env_diff, hazards, matches, rank
from .faithfulness import Unfaithful, unfaithful
from .metriccurves import MetricComparison, MetricStatus, Step, compare_metric  # noqa: F401
from .runrecord import Points, RunRecord, fetch_record  # noqa: F401  (re-exported)
from .tolerances import (  # noqa: F401  (re-exported)
    DEFAULT_TOLERANCES,
    Tolerance,
    as_tolerance,
    tolerance_for,
)
from .verdictwords import describe, explain  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

TAG_VERDICT = "replab.verdict"
TAG_VERDICT_EXPLAIN = "replab.verdict.explain"
ARTIFACT_DIR = "replab/verdict"
# MLflow's system metrics (CPU/GPU load, never reproducible) and the exit code replab logs
IGNORED_METRICS = ("system/*", "replab.exit_code")
TAG_EXIT_CODE = "replab.exit_code"
TAG_MAX = 5000  # MLflow servers before 2.x accept 5000 characters per tag value


class Outcome(str, Enum):
    REPRODUCED = "REPRODUCED"
    REPRODUCED_WITHIN_TOLERANCE = "REPRODUCED_WITHIN_TOLERANCE"
    NOT_REPRODUCED = "NOT_REPRODUCED"
    NOT_FAITHFUL = "NOT_FAITHFUL"
    INCOMPLETE = "INCOMPLETE"


EXIT_CODES = {Outcome.REPRODUCED: 0, Outcome.REPRODUCED_WITHIN_TOLERANCE: 0,
              Outcome.NOT_REPRODUCED: 1, Outcome.NOT_FAITHFUL: 5, Outcome.INCOMPLETE: 6}
STRICT_ASSUMED_EXIT = 7


@dataclass
class Evidence:
    """What a verdict compared."""

    metrics: int = 0
    points: int = 0
    lines: int = 0
    numbers: int = 0
    files: int = 0
    exit_codes: tuple[int, int] | None = None  # (original, replay), when both recorded

    @property
    def any(self) -> bool:
        return bool(self.points or self.lines or self.files)

    def words(self) -> str:
        parts = []
        if self.metrics:
            parts.append(f"{self.metrics} metric{'s' * (self.metrics != 1)} "
                         f"({self.points} points)")
        if self.lines:
            parts.append(f"{self.lines} printed line{'s' * (self.lines != 1)} "
                         f"({self.numbers} numbers)")
        if self.files:
            parts.append(f"{self.files} output file{'s' * (self.files != 1)}")
        return ", ".join(parts) if parts else "nothing"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_codes"] = list(self.exit_codes) if self.exit_codes else None
        return data


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
    unfaithful: list[Unfaithful] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evidence: Evidence = field(default_factory=Evidence)
    printed: list[outputs.PrintedComparison] = field(default_factory=list)
    files: list[outputs.FileComparison] = field(default_factory=list)
    assumed_for: list[str] = field(default_factory=list)  # passed on an assumed tolerance
    incomplete_reason: str = ""

    @property
    def reproduced(self) -> bool:
        return self.verdict in (Outcome.REPRODUCED, Outcome.REPRODUCED_WITHIN_TOLERANCE)

    @property
    def tolerance_assumed(self) -> bool:
        """A value passed only on the statistical default tolerance, which nothing
        measured."""
        return bool(self.assumed_for)

    @property
    def params(self) -> list[Unfaithful]:
        return [u for u in self.unfaithful if u.item == "params"]

    def exit_code(self, strict: bool = False) -> int:
        """The verdict as an exit status (the table in the module doc)."""
        if strict and self.verdict is Outcome.REPRODUCED_WITHIN_TOLERANCE and \
                self.tolerance_assumed:
            return STRICT_ASSUMED_EXIT
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "original_id": self.original_id,
                "replay_id": self.replay_id, "profile": self.profile,
                "profile_reasons": self.profile_reasons, "tolerance": asdict(self.tolerance),
                "tolerance_assumed": self.tolerance_assumed, "assumed_for": self.assumed_for,
                "evidence": self.evidence.to_dict(),
                "metrics": [m.to_dict() for m in self.metrics],
                "unfaithful": [u.to_dict() for u in self.unfaithful],
                "printed": [asdict(p) for p in self.printed],
                "files": [f.to_dict() for f in self.files],
                "differences": [d.to_dict() for d in self.differences],
                "incomplete_reason": self.incomplete_reason, "notes": self.notes}


# -- the evidence ------------------------------------------------------------------------------
def _exit_code(record: RunRecord) -> int | None:
    try:
        return int(record.tags[TAG_EXIT_CODE])
    except (KeyError, ValueError):
        return None


def _printed(original: RunRecord, replay: RunRecord, tol: Tolerance,
             spread: Mapping[str, Mapping] | None = None
             ) -> tuple[list[outputs.PrintedComparison], list[str]]:
    rows, missing = [], []
    for stream in outputs.streams_for(original.outputs):
        if stream not in original.printed:
            continue
        if stream not in replay.printed:
            missing.append(f"the replay recorded no {stream} (the original did)")
            continue
        rows.append(outputs.compare_printed(
            original.printed[stream], replay.printed[stream], rel=tol.rel, abs_=tol.abs,
            masks=outputs.masks_for(original.outputs), stream=stream,
            original_paths=outputs.paths_for(original.outputs),
            replay_paths=outputs.paths_for(replay.outputs),
            spread=(spread or {}).get(stream)))
    return [r for r in rows if r.evidence], missing


def _files(original: RunRecord, replay: RunRecord, tol: Tolerance
           ) -> list[outputs.FileComparison]:
    if not original.files and not replay.files:
        return []
    return outputs.compare_files(original.files, replay.files, rel=tol.rel, abs_=tol.abs)


def _evidence(rows: list[MetricComparison], printed, files, exits) -> Evidence:
    return Evidence(metrics=sum(1 for r in rows if r.steps_compared),
                    points=sum(r.steps_compared for r in rows),
                    lines=sum(p.lines_compared for p in printed),
                    numbers=sum(p.numbers_compared for p in printed),
                    files=sum(1 for f in files if f.status not in (
                        outputs.MISSING_ORIGINAL, outputs.MISSING_REPLAY)),
                    exit_codes=exits)


def _outcome(rows: list[MetricComparison], printed, files, evidence: Evidence,
             unfaithful_items, missing_streams: list[str]) -> tuple[Outcome, str]:
    exits = evidence.exit_codes
    if unfaithful_items:
        return Outcome.NOT_FAITHFUL, ""
    if any(r.status is MetricStatus.OUTSIDE_TOLERANCE for r in rows) or \
            any(p.status == outputs.DIFFERS for p in printed) or \
            any(f.status == outputs.DIFFERS for f in files) or \
            (exits is not None and exits[0] != exits[1]):
        return Outcome.NOT_REPRODUCED, ""
    if not evidence.any:
        return Outcome.INCOMPLETE, (
            "nothing to compare: neither run logged a metric, printed a line or wrote an "
            "output file replab recorded (an exit code alone is not evidence); log the "
            "results (mlflow.log_metric), print them under `replab run`, or name the output "
            "directory with `replab run --outputs DIR`")
    if any(r.status in (MetricStatus.MISSING_IN_ORIGINAL, MetricStatus.MISSING_IN_REPLAY)
           or r.missing_in_replay or r.missing_in_original for r in rows) or \
            any(f.status in (outputs.MISSING_ORIGINAL, outputs.MISSING_REPLAY)
                for f in files):
        return Outcome.INCOMPLETE, "some evidence is missing on one side"
    if missing_streams:
        return Outcome.INCOMPLETE, "; ".join(missing_streams)
    if all(r.status is MetricStatus.IDENTICAL for r in rows) and \
            all(p.status == outputs.SAME for p in printed) and \
            all(f.status == outputs.SAME for f in files):
        return Outcome.REPRODUCED, ""
    return Outcome.REPRODUCED_WITHIN_TOLERANCE, ""


def _assumed(profile: str, default_from: str, rows: list[MetricComparison], printed,
             files) -> list[str]:
    """What passed only thanks to the statistical profile's default tolerance, which nothing
    measured: metric names, ``printed <stream>``, ``output files``."""
    if profile != STATISTICAL:
        return []
    out = [r.name for r in rows if r.status is MetricStatus.WITHIN_TOLERANCE
           and r.tolerance_from.endswith("profile")]
    if default_from.endswith("profile"):
        out += [f"printed {p.stream}" for p in printed if p.status == outputs.WITHIN]
        if any(f.status == outputs.WITHIN for f in files):
            out.append("output files")
    return out


def compare(original: RunRecord, replay: RunRecord,
            tolerances: Tolerance | Mapping[str, Any] | None = None, *,
            ignore: Iterable[str] = IGNORED_METRICS,
            measured: Mapping[str, Tolerance] | None = None,
            printed_spread: Mapping[str, Mapping] | None = None) -> Verdict:
    """Compare a replay with its original: faithfulness, metrics (curves and finals),
    printed output, output files, exit code, environment.

    ``tolerances``: one Tolerance for every metric, or ``{name or pattern: Tolerance}`` over
    the profile's default (:mod:`replab.tolerances`). ``measured``: per-metric tolerances
    measured from repeated replays (:mod:`replab.spread`), used before the default;
    ``printed_spread``: the same for printed numbers (``spread.measure_printed``).
    ``ignore``: metric name patterns left out. Raises ConfigError for a malformed tolerance.
    """
    profile, reasons = determinism_profile(original.manifest, original.tags,
                                           params=original.params)
    default, default_from = DEFAULT_TOLERANCES[profile], f"{profile} profile"
    per_metric: dict[str, Tolerance] = {}
    if isinstance(tolerances, Tolerance):
        default, default_from = tolerances, "given for all metrics"
    elif tolerances is not None:
        per_metric = {k: as_tolerance(v, k) for k, v in tolerances.items()}
    measured = dict(measured or {})
    ignore = tuple(ignore)
    names = sorted(set(original.metrics) | set(replay.metrics))
    ignored = [n for n in names if matches(ignore, n)]
    rows = []
    for n in names:
        if n in ignored:
            continue
        if n in measured and n not in per_metric:
            tol, tol_from = measured[n], "measured spread"
        else:
            tol, tol_from = tolerance_for(n, per_metric, default, default_from)
        rows.append(compare_metric(n, original.metrics.get(n), replay.metrics.get(n), tol,
                                   tol_from))
    printed, missing_streams = _printed(original, replay, default, printed_spread)
    files = _files(original, replay, default)
    ea, eb = _exit_code(original), _exit_code(replay)
    exits = (ea, eb) if ea is not None and eb is not None else None
    items = unfaithful(original, replay)
    evidence = _evidence(rows, printed, files, exits)
    outcome, why = _outcome(rows, printed, files, evidence, items, missing_streams)
    notes = [*original.notes, *replay.notes, *missing_streams]
    if ignored:
        notes.append(f"not evidence: {', '.join(ignored)}")
    for rec, role in ((original, "original"), (replay, "replay")):
        if rec.manifest is None:
            notes.append(f"no manifest for the {role} run {rec.run_id}: environments not "
                         "compared")
    assumed = _assumed(profile, default_from, rows,
                       [p for p in printed if p.stream not in (printed_spread or {})], files)
    if profile == STATISTICAL and not measured:
        notes.append("the original was not seeded (or its parameters show unseeded "
                     "randomness): a single replay can only show whether it lands near the "
                     "original, and the statistical tolerance is assumed, not measured; "
                     "replay with --repeats 3 to measure the spread")
    differences = rank([*hazards(original.manifest, replay.manifest, original.tags,
                                 replay.tags, params_a=original.params,
                                 params_b=replay.params),
                        *env_diff(original.manifest, replay.manifest)])
    verdict = Verdict(outcome, original.run_id, replay.run_id, profile, reasons, default,
                      rows, items, differences, notes, evidence, printed, files, assumed, why)
    log.info("verdict %s for replay %s of %s", verdict.verdict.value, replay.run_id,
             original.run_id)
    return verdict

