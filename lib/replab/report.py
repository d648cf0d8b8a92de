"""The verdict's report: the metric plots (PNG), ``report.md`` / ``report.html`` /
``verdict.json`` written beside the replay, and the same logged onto the replay's run
(artifacts under ``replab/verdict/`` and the verdict tags). :mod:`replab.verdict` decides;
this module shows.

Importing this module is cheap: MLflow and matplotlib load only inside the functions that
use them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .envdiff import Difference
from .errors import CloudError, ReplayError
from .metriccurves import MetricComparison, MetricStatus, keyed, step_order
from .runrecord import Points, RunRecord, client_uri
from .tolerances import Tolerance, same
from .tracking import TAG_COMMIT, TAG_SEED
from .verdict import ARTIFACT_DIR, TAG_MAX, TAG_VERDICT, TAG_VERDICT_EXPLAIN, Verdict
from .verdictwords import explain, num, pct, ranges, short

log = logging.getLogger(__name__)


# -- the report ----------------------------------------------------------------------------
def plot_png(name: str, original: Points | None, replay: Points | None,
             tolerance: Tolerance | None = None, subtitle: str = "",
             repeats: Sequence[Points] = ()) -> bytes:
    """A PNG of one metric: both curves overlaid (with ``repeats``: each repeated replay
    thin and grey, ``replay`` their centre), and replay - original below with the tolerance
    band. Raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def xy(points: Points | None) -> tuple[list[int], list[float]]:
        pts = sorted(points or [], key=lambda p: p[0])
        return [s for s, _ in pts], [v if math.isfinite(v) else math.nan for _, v in pts]

    fig = Figure(figsize=(7.0, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.4])
    (xa, ya), (xb, yb) = xy(original), xy(replay)
    few = max(len(xa), len(xb)) <= 60
    top.plot(xa, ya, color="#1f77b4", lw=2.4, alpha=0.75, label="original",
             marker="o" if few else None, ms=4)
    for i, pts in enumerate(repeats):
        xr, yr = xy(pts)
        top.plot(xr, yr, color="#999999", lw=0.8, alpha=0.7,
                 label=f"{len(repeats)} replays" if i == 0 else None)
    top.plot(xb, yb, color="#d62728", lw=1.3, ls="--",
             label="replays' centre" if repeats else "replay", marker="x" if few else None,
             ms=5)
    top.set_title(f"{name}\n{subtitle}" if subtitle else name, fontsize=10)
    top.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylabel("value")
    top.grid(alpha=0.3)
    top.legend(loc="best", fontsize=8)
    a, b = keyed(original or []), keyed(replay or [])
    common = sorted((s for s in a if s in b), key=step_order)
    xs = [step_order(s)[0] for s in common]
    delta = [b[s] - a[s] if not same(a[s], b[s]) else 0.0 for s in common]
    if tolerance is not None and common:
        band = [max(tolerance.abs, tolerance.rel * max(math.fabs(a[s]), math.fabs(b[s])))
                for s in common]
        bottom.fill_between(xs, [-t for t in band], band, color="#2ca02c", alpha=0.2,
                            label="tolerance")
        bottom.legend(loc="lower right", fontsize=7)
    bottom.axhline(0.0, color="#555555", lw=0.8)
    bottom.plot(xs, delta, color="#d62728", lw=1.2, marker="." if few else None)
    if common and not any(delta):
        bottom.set_ylim(-1, 1)
        bottom.set_yticks([0])
        bottom.text(0.5, 0.7, "identical at every common step", transform=bottom.transAxes,
                    ha="center", fontsize=8, color="#2e7d32")
    bottom.set_ylabel("replay - original", fontsize=8)
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _plots(verdict: Verdict, original: RunRecord, replay: RunRecord,
           repeats: Sequence[RunRecord] = ()) -> dict[str, bytes]:
    images: dict[str, bytes] = {}
    for row in verdict.metrics:
        try:
            subtitle = (f"{row.status.value.replace('_', ' ')}: max abs {num(row.max_abs)}, "
                        f"max rel {pct(row.max_rel)} (tolerance {row.tolerance})")
            images[row.name] = plot_png(
                row.name, original.metrics.get(row.name), replay.metrics.get(row.name),
                row.tolerance, subtitle,
                [r.metrics[row.name] for r in repeats if row.name in r.metrics])
        except ImportError:
            log.warning("matplotlib is not installed: the report has no plots "
                        "(pip install matplotlib)")
            return {}
        except Exception as exc:  # one unplottable metric must not cost the report
            log.warning("could not plot %s: %s", row.name, exc)
    return images


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "metric"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}_{n}"
    taken.add(slug)
    return slug


_STATUS_MARK = {MetricStatus.IDENTICAL: "identical", MetricStatus.WITHIN_TOLERANCE: "within",
                MetricStatus.OUTSIDE_TOLERANCE: "OUTSIDE",
                MetricStatus.MISSING_IN_ORIGINAL: "missing in original",
                MetricStatus.MISSING_IN_REPLAY: "missing in replay"}
MAX_DIFFERENCES = 60  # rows of the environment table in the reports (all are in verdict.json)


def _runs_rows(original: RunRecord, replay: RunRecord) -> list[tuple[str, str, str]]:
    def tag(rec: RunRecord, key: str, n: int | None = None) -> str:
        value = rec.tags.get(key, "")
        return value[:n] if n else value

    return [("run", original.run_id, replay.run_id),
            ("name", tag(original, "mlflow.runName"), tag(replay, "mlflow.runName")),
            ("commit", tag(original, TAG_COMMIT, 12), tag(replay, TAG_COMMIT, 12)),
            ("seed", tag(original, TAG_SEED), tag(replay, TAG_SEED))]


def _metric_cells(row: MetricComparison) -> list[str]:
    missing = "; ".join(f"{ranges(s)} in {w}" for s, w in
                        ((row.missing_in_replay, "replay"), (row.missing_in_original,
                                                             "original")) if s)
    return [row.name, _STATUS_MARK[row.status], str(row.steps_compared), num(row.max_abs),
            pct(row.max_rel), num(row.worst_step), num(row.final_original),
            num(row.final_replay), str(row.tolerance), missing or "-"]


_METRIC_HEAD = ["metric", "status", "points", "max abs", "max rel", "worst at",
                "final original", "final replay", "tolerance", "missing steps"]
_DIFF_HEAD = ["weight", "layer", "key", "original", "replay", "why"]


def _diff_cells(d: Difference) -> list[str]:
    a, b = ("(in both)", "(in both)") if d.kind == "hazard" else (short(d.a), short(d.b))
    return [str(d.weight), d.layer, d.key, a, b, d.why]


def _md_table(head: list[str], rows: Iterable[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


MAX_LINES = 20  # printed-line mismatches shown in a report (all are in verdict.json)


def _evidence_sections(verdict: Verdict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """``(title, warning, table head, table rows)`` for what the verdict compared besides the
    metric curves: faithfulness, evidence, printed output, output files."""
    out = []
    if verdict.unfaithful:
        out.append(("Not a faithful replay",
                    "The replay did not run the original's experiment: its results neither "
                    "confirm nor refute the original.", ["item", "what", "original", "replay"],
                    [[u.item, u.key, short(num(u.original)), short(num(u.replay))]
                     for u in verdict.unfaithful]))
    ev = verdict.evidence
    exits = (f"; exit codes {ev.exit_codes[0]} vs {ev.exit_codes[1]} (not evidence on their "
             "own)") if ev.exit_codes else ""
    assumed = (f" The tolerance of {', '.join(verdict.assumed_for)} is assumed, not measured "
               "(unverified spread)." if verdict.tolerance_assumed else "")
    out.append(("Evidence", f"Compared {ev.words()}{exits}.{assumed}"
                + (f" {verdict.incomplete_reason}." if verdict.incomplete_reason else ""),
                [], []))
    for p in verdict.printed:
        rows = [[num(m.line), num(m.replay_line), short(m.original), short(m.replay), m.reason]
                for m in p.mismatches[:MAX_LINES]]
        more = f" ({p.mismatch_count - len(rows)} more in verdict.json)" \
            if p.mismatch_count > len(rows) else ""
        out.append((f"Printed output ({p.stream})", p.summary() + more,
                    ["line", "replay line", "original", "replay", "why"], rows))
    if verdict.files:
        out.append(("Output files", "", ["file", "status", "compared by", "detail"],
                    [[f.path, f.status, f.how, f.detail or "-"] for f in verdict.files]))
    return out


def render_markdown(verdict: Verdict, original: RunRecord, replay: RunRecord, *,
                    plots: Mapping[str, str] | None = None) -> str:
    """The report as markdown; ``plots`` maps metric names to image paths to link."""
    parts = [f"# Replay verdict: {verdict.verdict.value}", "", explain(verdict), "",
             _md_table(["", "original", "replay"], [list(r) for r in _runs_rows(original,
                                                                               replay)]), "",
             f"Determinism profile of the original: **{verdict.profile}** "
             f"({'; '.join(verdict.profile_reasons)}); default tolerance: {verdict.tolerance}.",
             ""]
    for title, warn, head, rows in _evidence_sections(verdict):
        parts += [f"## {title}", ""] + ([f"> **{warn}**", ""] if warn else [])
        parts += [_md_table(head, rows), ""] if rows else []
    parts += ["## Metrics", "", _md_table(_METRIC_HEAD, map(_metric_cells, verdict.metrics)),
              ""]
    for name, path in (plots or {}).items():
        parts += [f"![{name}: original vs replay]({path})", ""]
    parts += _md_differences(verdict)
    if verdict.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in verdict.notes], ""]
    return "\n".join(parts)


def _md_differences(verdict: Verdict) -> list[str]:
    shown = verdict.differences[:MAX_DIFFERENCES]
    if not shown:
        return ["## Environment differences", "", "None recorded.", ""]
    out = ["## Environment differences (most likely cause first)", "",
           _md_table(_DIFF_HEAD, map(_diff_cells, shown)), ""]
    if len(verdict.differences) > len(shown):
        out += [f"... and {len(verdict.differences) - len(shown)} more (verdict.json).", ""]
    return out


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;
padding:3px 7px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.badge{display:inline-block;padding:.2em .7em;border-radius:4px;color:#fff;font-weight:600}
.REPRODUCED{background:#2e7d32}.REPRODUCED_WITHIN_TOLERANCE{background:#558b2f}
.NOT_REPRODUCED{background:#c62828}.INCOMPLETE{background:#757575}
.NOT_FAITHFUL{background:#ef6c00}
.warn{border-left:4px solid #c62828;background:#fdecea;padding:.5em 1em}
.OUTSIDE{color:#c62828;font-weight:600}figure{display:inline-block;margin:.5em}
code{background:#f3f3f3;padding:0 .2em}"""


def _html_table(head: list[str], rows: Iterable[list[str]], status_col: int | None = None
                ) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            cls = f' class="{e(c)}"' if i == status_col and c == "OUTSIDE" else ""
            cells.append(f"<td{cls}>{e(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def render_html(verdict: Verdict, original: RunRecord, replay: RunRecord, *,
                images: Mapping[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page, plots embedded as base64 PNGs (drawn here
    unless ``images`` gives them; none without matplotlib)."""
    e = html.escape
    images = _plots(verdict, original, replay) if images is None else images
    v = verdict.verdict.value
    body = [f"<h1>Replay verdict: <span class='badge {e(v)}'>{e(v)}</span></h1>",
            f"<p>{e(explain(verdict))}</p>",
            _html_table(["", "original", "replay"], [list(r) for r in _runs_rows(original,
                                                                                replay)]),
            f"<p>Determinism profile of the original: <b>{e(verdict.profile)}</b> "
            f"({e('; '.join(verdict.profile_reasons))}); default tolerance: "
            f"{e(str(verdict.tolerance))}.</p>"]
    for title, warn, head, rows in _evidence_sections(verdict):
        body.append(f"<h2>{e(title)}</h2>")
        if warn:
            body.append(f"<p class='warn'><b>{e(warn)}</b></p>")
        if rows:
            body.append(_html_table(head, rows))
    body += ["<h2>Metrics</h2>", _html_table(_METRIC_HEAD, map(_metric_cells, verdict.metrics),
                                              status_col=1)]
    for name, png in images.items():
        data = base64.b64encode(png).decode("ascii")
        body.append(f"<figure><img alt='{e(name)}: original vs replay' "
                    f"src='data:image/png;base64,{data}'><figcaption>{e(name)}</figcaption>"
                    "</figure>")
    shown = verdict.differences[:MAX_DIFFERENCES]
    body.append("<h2>Environment differences (most likely cause first)</h2>")
    body.append(_html_table(_DIFF_HEAD, map(_diff_cells, shown)) if shown else
                "<p>None recorded.</p>")
    if len(verdict.differences) > len(shown):
        body.append(f"<p>... and {len(verdict.differences) - len(shown)} more "
                    "(verdict.json).</p>")
    if verdict.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in verdict.notes)
                    + "</ul>")
    title = e(f"{v}: replay {verdict.replay_id} of {verdict.original_id}")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}"
            f"</title><style>{_CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def verdict_json(verdict: Verdict) -> str:
    """The verdict and its explanation as JSON text (strict: no NaN)."""
    return json.dumps({**verdict.to_dict(), "explain": explain(verdict)}, indent=1,
                      default=str, allow_nan=False)


def write_report(verdict: Verdict, original: RunRecord, replay: RunRecord,
                 directory: str | Path, repeats: Sequence[RunRecord] = ()) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``verdict.json`` and ``plots/<metric>.png`` into
    ``directory``; returns ``{relative name: path}``. ``repeats``: the repeated replays whose
    spread judged the original (``replay`` is then their centre), drawn in the plots. Raises
    OSError when it cannot write."""
    root = Path(directory)
    images = _plots(verdict, original, replay, repeats)
    paths: dict[str, Path] = {}
    links: dict[str, str] = {}
    taken: set[str] = set()
    if images:
        (root / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        rel = f"plots/{_slug(name, taken)}.png"
        (root / rel).write_bytes(png)
        paths[rel], links[name] = root / rel, rel
    root.mkdir(parents=True, exist_ok=True)
    texts = {"report.md": render_markdown(verdict, original, replay, plots=links),
             "report.html": render_html(verdict, original, replay, images=images),
             "verdict.json": verdict_json(verdict)}
    for rel, text in texts.items():
        (root / rel).write_text(text, encoding="utf-8")
        paths[rel] = root / rel
    return paths


def log_report(client: Any, run_id: str, paths: Mapping[str, str | Path],
               verdict: Verdict | None = None) -> None:
    """Attach the report files (from :func:`write_report`) to run ``run_id`` under
    ``replab/verdict/`` and set the tags ``replab.verdict`` and ``replab.verdict.explain``
    (from ``verdict``, else from ``verdict.json``). Raises CloudError when the server fails,
    ReplayError when neither ``verdict`` nor a readable ``verdict.json`` is given."""
    if verdict is not None:
        outcome, text = verdict.verdict.value, explain(verdict)
    else:
        try:
            data = json.loads(Path(paths["verdict.json"]).read_text("utf-8"))
            outcome, text = data["verdict"], data.get("explain", "")
        except (KeyError, OSError, ValueError) as exc:
            raise ReplayError(f"no readable verdict.json among the report files: {exc}") from exc
    if len(text) > TAG_MAX:
        text = text[:TAG_MAX - 3] + "..."
    try:
        for rel, path in paths.items():
            parent = Path(rel).parent.as_posix()
            client.log_artifact(run_id, str(path),
                                ARTIFACT_DIR if parent == "." else f"{ARTIFACT_DIR}/{parent}")
        client.set_tag(run_id, TAG_VERDICT, outcome)
        client.set_tag(run_id, TAG_VERDICT_EXPLAIN, text)
    except Exception as exc:
        raise CloudError(f"cannot log the verdict report to run {run_id} on {client_uri(client)}: "
                         f"{exc}") from exc
