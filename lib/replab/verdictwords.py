"""A verdict in words: :func:`explain` says it in one paragraph (what was compared, what
differs, by how much, the most likely cause), :func:`describe` one environment difference;
the small formatters the reports share."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .envdiff import Difference
from .metriccurves import MetricComparison, MetricStatus, Step
from .tolerances import same


# -- saying it ---------------------------------------------------------------------------------
def num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _pair(a: float | None, b: float | None) -> str:
    """``a vs b`` with enough digits to tell them apart."""
    if a is None or b is None or same(a, b) or not (math.isfinite(a) and math.isfinite(b)):
        return f"{num(a)} vs {num(b)}"
    digits = next((p for p in range(6, 18) if f"{a:.{p}g}" != f"{b:.{p}g}"), 17)
    return f"{a:.{digits}g} vs {b:.{digits}g}"


def pct(rel: float) -> str:
    return "inf" if math.isinf(rel) else f"{rel * 100:.3g}%"


_HASH = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{28,}\b")


def short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = _HASH.sub(r"\1…", text)  # commits and sha256 digests: 12 characters tell them apart
    return text if len(text) <= limit else text[:limit - 3] + "..."


def ranges(steps: list[Step]) -> str:
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
    return f"{diff.why} ({diff.layer} {diff.key}: {short(diff.a, 40)} -> {short(diff.b, 40)})"


def _tolerance_words(row: Any) -> str:
    source = row.tolerance_from.replace(" profile", "")
    if source == "measured spread":
        return f"the spread measured over the repeats ({row.tolerance})"
    return f"the {source} tolerance ({row.tolerance})" if "given" not in source else \
        f"the tolerance {source} ({row.tolerance})"


def _outside_words(verdict: Any) -> list[str]:
    rows, out = verdict.metrics, []
    bad = sorted((r for r in rows if r.status is MetricStatus.OUTSIDE_TOLERANCE),
                 key=lambda r: (-r.max_rel, -r.max_abs))
    if bad:
        w = bad[0]
        out.append(f"{w.name} differs by up to {num(w.max_abs)} (rel {pct(w.max_rel)}), "
                   f"outside {_tolerance_words(w)} from step {w.first_outside} on "
                   f"({w.outside_count} of {w.steps_compared} points); final value "
                   f"{_pair(w.final_original, w.final_replay)} at step {w.final_step}.")
        if len(bad) > 1:
            out.append(f"Also outside: {', '.join(r.name for r in bad[1:])}.")
    for p in verdict.printed:
        if p.status == "differs":
            first = p.mismatches[0] if p.mismatches else None
            where = (f"; first at line {first.line}: {short(first.original, 60)!r} vs "
                     f"{short(first.replay, 60)!r}") if first else ""
            out.append(f"The printed {p.stream} differs ({p.mismatch_count} of "
                       f"{p.lines_compared} lines{where}).")
    bad_files = [f for f in verdict.files if f.status == "differs"]
    if bad_files:
        out.append("Output files differ: " + "; ".join(f.summary() for f in bad_files[:3])
                   + ("" if len(bad_files) <= 3 else f" and {len(bad_files) - 3} more") + ".")
    ex = verdict.evidence.exit_codes
    if ex and ex[0] != ex[1]:
        out.append(f"The program exited with {ex[1]} (the original with {ex[0]}).")
    return out


def explain(verdict: Any) -> str:
    """The verdict in one paragraph: what was compared, what differs, by how much, and the
    most likely cause."""
    rows, v = verdict.metrics, verdict.verdict.value
    out = [f"{v}:"]
    compared = f"compared {verdict.evidence.words()}"
    if v == "NOT_FAITHFUL":
        listed = "; ".join(u.words() for u in verdict.unfaithful[:5])
        more = (f" and {len(verdict.unfaithful) - 5} more" if len(verdict.unfaithful) > 5
                else "")
        out.append(f"the replay did not run the original's experiment ({listed}{more}), so "
                   f"its results neither confirm nor refute the original ({compared}).")
        moved = _outside_words(verdict)
        if moved:
            out.append("Results moved too: " + " ".join(moved))
        return " ".join(out)
    if v == "REPRODUCED":
        ev, parts = verdict.evidence, []
        shown = [r for r in rows if r.steps_compared]
        if shown:
            parts.append(f"all {len(shown)} metrics ({', '.join(r.name for r in shown)}) are "
                         f"identical at all {ev.points} compared points")
        if ev.lines:
            parts.append(f"all {ev.lines} printed lines ({ev.numbers} numbers) are identical "
                         "after masking")
        if ev.files:
            parts.append(f"all {ev.files} output files are identical")
        out.append("; ".join(parts) + f" ({verdict.profile} profile).")
    elif v == "REPRODUCED_WITHIN_TOLERANCE":
        within = [r for r in rows if r.status is MetricStatus.WITHIN_TOLERANCE]
        text = f"{compared}; all within tolerance"
        if within:
            worst = max(within, key=lambda r: (r.max_rel, r.max_abs))
            text += (f"; the largest deviation is {worst.name}, by up to {num(worst.max_abs)} "
                     f"(rel {pct(worst.max_rel)}) at step {worst.worst_step}, inside "
                     f"{_tolerance_words(worst)}")
        out.append(text + ".")
        if verdict.tolerance_assumed:
            what = ", ".join(verdict.assumed_for)
            how = ("printed numbers and output files are compared with it even after "
                   "--repeats" if all(a.startswith(("printed", "output")) for a in
                                      verdict.assumed_for) else
                   "replay with --repeats 3 to measure the spread")
            out.append(f"The tolerance of {what} is assumed, not measured (unverified "
                       f"spread; {how}); --strict fails this verdict.")
    elif v == "NOT_REPRODUCED":
        out.append(f"{compared}.")
        out += _outside_words(verdict)
        if _missing_words(rows) and any(r.status.value.startswith("missing") or
                                        r.missing_in_replay or r.missing_in_original
                                        for r in rows):
            out.append(f"Also incomplete: {_missing_words(rows)}.")
    else:
        out.append((verdict.incomplete_reason or "evidence missing") + ".")
        if verdict.evidence.any:
            out.append(f"Compared {verdict.evidence.words()}: {_missing_words(rows)}.")
    if v != "REPRODUCED":
        causes = [d for d in verdict.differences if d.weight >= 10]
        if causes:
            lead = "Largest environment difference" if v == "INCOMPLETE" else \
                "Most likely cause"
            out.append(f"{lead}: {describe(causes[0])}.")
            if len(causes) > 1:
                out.append("Next: " + "; ".join(f"{d.layer} {d.key}" for d in causes[1:4])
                           + ".")
        elif v == "NOT_REPRODUCED":
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
                    parts.append(f"{r.name} steps {ranges(steps)} missing in {where}")
    compared = [r for r in rows if r.steps_compared]
    agree = all(r.status in (MetricStatus.IDENTICAL, MetricStatus.WITHIN_TOLERANCE)
                for r in compared)
    if compared and agree:
        parts.append("the values present agree")
    return "; ".join(parts)
