"""Links between a replay and its original, both ways, as the MLflow UI shows them.

After a replay is judged, :func:`link_replay` writes:

- on the replay: a markdown description (``mlflow.note.content``, the run page's
  "Description") linking the original run and the verdict report, ``replab.verdict`` and
  ``replab.verdict.at``, and ``mlflow.parentRunId`` = the original when both runs are in the
  same experiment (the runs table then nests the replay under its original; MLflow nests only
  within one experiment, so across experiments the description's link is the only link);
- on the original: ``replab.replays`` (its replays' ids, newest first), ``replab.verdict``,
  ``replab.verdict.at`` and ``replab.verdict.replay`` (the latest verdict of its replays, when,
  and which replay), and a replab-managed section appended to its description listing each
  replay with its verdict. Whatever the user wrote in the description is kept: only the text
  between the ``<!-- replab:replays -->`` markers is replab's.

The original's list is rebuilt each time from the runs tagged ``replab.replay_of`` = the
original, so it repairs itself and two replays finishing together lose nothing for long.

Links in descriptions are relative to the MLflow UI (``#/experiments/<id>/runs/<id>``, the
run-page route of MLflow's UI): they land on the run page whatever address the browser uses
for the server (an SSH tunnel, a proxy); :func:`run_url` gives the absolute address for
printing.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .tracking import TAG_REPLAY_OF
from .verdict import ARTIFACT_DIR, TAG_MAX, TAG_VERDICT, TAG_VERDICT_EXPLAIN

log = logging.getLogger(__name__)

TAG_NOTE = "mlflow.note.content"  # the run page's Description (markdown)
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_REPLAYS = "replab.replays"
TAG_VERDICT_AT = "replab.verdict.at"
TAG_VERDICT_REPLAY = "replab.verdict.replay"

NOTE_ROWS = 20  # replays listed in the original's description (all ids are in the tag)
EXPLAIN_CHARS = 600


# -- addresses in the MLflow UI ---------------------------------------------------------------
def ui_base(tracking_uri: str | None) -> str | None:
    """The MLflow UI's address for an http(s) tracking URI (credentials removed), else None
    (a ``sqlite:``/``file:`` store has no UI address)."""
    if not tracking_uri:
        return None
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    if ":" in parts.hostname:  # IPv6 literal
        host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def run_path(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """The UI route of a run's page (``#/experiments/<e>/runs/<r>``), or of one of its
    artifacts in the run page's artifact viewer."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{path}/artifactPath/{artifact}" if artifact else path


def run_url(tracking_uri: str | None, experiment_id: str, run_id: str,
            artifact: str | None = None) -> str:
    """The absolute UI address of a run where the tracking URI has one, else the route."""
    base = ui_base(tracking_uri)
    path = run_path(experiment_id, run_id, artifact)
    return f"{base}/{path}" if base else path


# -- replab's section of a description ---------------------------------------------------------
def _markers(name: str) -> tuple[str, str]:
    return f"<!-- replab:{name} -->", f"<!-- /replab:{name} -->"


def _block_pattern(name: str) -> re.Pattern[str]:
    begin, end = _markers(name)
    return re.compile(r"[^\n]*" + re.escape(begin) + r".*?" + re.escape(end), re.S)


def with_section(note: str | None, name: str, body: str, *, first: bool = False) -> str:
    """``note`` with replab's section ``name`` set to ``body``: replaced where it already is,
    else appended (or put ``first``); the rest of the note is kept as written. The opening
    marker (an HTML comment, invisible in the UI) ends the section's first line, so a note
    that starts with the section still starts with readable text."""
    begin, end = _markers(name)
    head, _, rest = body.strip().partition("\n")
    block = f"{head} {begin}\n{rest.rstrip()}\n\n{end}" if rest.strip() else \
        f"{head} {begin}\n\n{end}"
    note = note or ""
    pattern = _block_pattern(name)
    if pattern.search(note):
        return pattern.sub(lambda _m: block, note, count=1)
    if not note.strip():
        return block + "\n"
    return f"{block}\n\n{note.lstrip()}" if first else f"{note.rstrip()}\n\n{block}\n"


def section_of(note: str | None, name: str) -> str | None:
    """The body of replab's section ``name`` in ``note``, or None."""
    begin, end = _markers(name)
    m = _block_pattern(name).search(note or "")
    if not m:
        return None
    return m.group(0).replace(f" {begin}", "").replace(begin, "").replace(end, "").strip()


def _md(text: str) -> str:
    """Text safe inside a markdown link label or table cell."""
    return re.sub(r"([\\`*_\[\]|<>#])", r"\\\1", text).replace("\n", " ")


def _when(iso: str | None, end_ms: int | None) -> str:
    if iso:
        return iso.replace("T", " ").replace("Z", " UTC")
    if end_ms:
        return _dt.datetime.fromtimestamp(end_ms / 1000, _dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    return "-"


def _iso(ms: int | None = None) -> str:
    """UTC time as ``2025-01-31T12:00:00Z`` (sorts as text): now, or ``ms`` since the epoch."""
    t = (_dt.datetime.now(_dt.timezone.utc) if ms is None
         else _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc))
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_tags(client: Any, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


# -- linking -----------------------------------------------------------------------------------
@dataclass
class Links:
    """What :func:`link_replay` linked; URLs absolute where the tracking URI allows."""

    replay_url: str
    original_url: str | None  # None: the original is not on this tracking server
    nested: bool  # the replay is nested under the original (same experiment)
    back_linked: bool  # the original lists the replay (False: it could not be written)


def _label(run: Any) -> str:
    name = run.data.tags.get(TAG_RUN_NAME) or getattr(run.info, "run_name", None)
    return f"{name} ({run.info.run_id[:8]})" if name else run.info.run_id


def _replay_note(replay: Any, original: Any | None, original_id: str, verdict: str | None,
                 at: str | None, origin: str | None) -> str:
    exp = replay.info.experiment_id
    report = run_path(exp, replay.info.run_id, f"{ARTIFACT_DIR}/report.html")
    if original is not None:
        target = run_path(original.info.experiment_id, original_id)
        link = f"[run {_md(_label(original))}]({target})"
    else:
        link = f"run `{original_id}`" + (f" (from {_md(origin)})" if origin else "")
    lines = [f"**Replay of {link}** by replab."]
    if verdict:
        lines += ["", f"Verdict: **{verdict}** ({_when(at, None)}); "
                      f"[verdict report]({report})."]
        explain = replay.data.tags.get(TAG_VERDICT_EXPLAIN) or ""
        if explain:
            short = explain if len(explain) <= EXPLAIN_CHARS else explain[:EXPLAIN_CHARS] + "..."
            lines += ["", "> " + short.replace("\n", "\n> ")]
    else:
        lines += ["", "No verdict was recorded for this replay."]
    return "\n".join(lines)


def _replays_of(client: Any, original_id: str, experiment_ids: list[str]) -> list[Any]:
    runs = client.search_runs(experiment_ids,
                              filter_string=f"tags.`{TAG_REPLAY_OF}` = '{original_id}'",
                              order_by=["attributes.start_time DESC"], max_results=200)
    # The replayed program's own nested runs carry the tag too; its top-level run is the replay.
    return [r for r in runs if r.data.tags.get(TAG_PARENT) in (None, original_id)]


def _original_note(replays: list[Any]) -> str:
    rows = [["replay", "verdict", "when"]]
    for r in replays[:NOTE_ROWS]:
        link = f"[{_md(_label(r))}]({run_path(r.info.experiment_id, r.info.run_id)})"
        rows.append([link, _md(r.data.tags.get(TAG_VERDICT) or "no verdict"),
                     _when(r.data.tags.get(TAG_VERDICT_AT), r.info.end_time)])
    table = ["| " + " | ".join(rows[0]) + " |", "|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    more = (f"\n\n... and {len(replays) - NOTE_ROWS} older replay(s) (tag `{TAG_REPLAYS}`)."
            if len(replays) > NOTE_ROWS else "")
    return (f"**Replays of this run** ({len(replays)}, newest first; written by replab, "
            "which rewrites only this block):\n\n" + "\n".join(table) + more)


def _ids_tag(replays: list[Any]) -> str:
    ids: list[str] = []
    for r in replays:
        if len(",".join([*ids, r.info.run_id])) > TAG_MAX:
            break
        ids.append(r.info.run_id)
    return ",".join(ids)


def _latest_verdict(replays: list[Any]) -> Any | None:
    judged = [r for r in replays if r.data.tags.get(TAG_VERDICT)]
    if not judged:
        return None
    return max(judged, key=lambda r: (r.data.tags.get(TAG_VERDICT_AT) or "",
                                      r.info.end_time or 0, r.info.start_time or 0))


def link_replay(client: Any, original_id: str, replay_id: str, *,
                verdict: str | None = None, tracking_uri: str | None = None,
                origin: str | None = None) -> Links:
    """Link run ``replay_id`` and its original ``original_id`` both ways (see the module
    doc). ``verdict``: the outcome to record (else the replay's ``replab.verdict`` tag);
    ``origin``: where the original's record came from, shown when the original is not on
    this server (a bundle). Raises what the client raises when the replay cannot be read or
    tagged; a back link the server refuses (no permission on the original) is logged, and
    ``Links.back_linked`` is False."""
    replay = client.get_run(replay_id)
    tags = replay.data.tags
    verdict = verdict or tags.get(TAG_VERDICT)
    at = tags.get(TAG_VERDICT_AT) if verdict == tags.get(TAG_VERDICT) else None
    at = at or (_iso() if verdict else None)
    try:
        original = client.get_run(original_id)
    except Exception as exc:  # a bundle's original lives on another server, or nowhere
        log.info("original run %s is not on this tracking server (%s): linking one way",
                 original_id, exc)
        original = None
    new_tags = {}
    if verdict:
        new_tags.update({TAG_VERDICT: verdict, TAG_VERDICT_AT: at})
    nested = (original is not None and original.info.experiment_id ==
              replay.info.experiment_id and tags.get(TAG_PARENT) in (None, original_id))
    if nested:
        new_tags[TAG_PARENT] = original_id
    new_tags[TAG_NOTE] = with_section(tags.get(TAG_NOTE), "replay-of", _replay_note(
        replay, original, original_id, verdict, at, origin), first=True)
    _set_tags(client, replay_id, new_tags)
    replay_url = run_url(tracking_uri, replay.info.experiment_id, replay_id)
    if original is None:
        return Links(replay_url, None, False, False)
    original_url = run_url(tracking_uri, original.info.experiment_id, original_id)
    try:
        _link_back(client, original, replay_id)
    except Exception as exc:
        log.warning("could not list replay %s on its original run %s (%s); the replay "
                    "links to the original all the same", replay_id, original_id, exc)
        return Links(replay_url, original_url, nested, False)
    return Links(replay_url, original_url, nested, True)


def _link_back(client: Any, original: Any, replay_id: str) -> None:
    oid = original.info.run_id
    experiments = sorted({original.info.experiment_id,
                          client.get_run(replay_id).info.experiment_id})
    replays = _replays_of(client, oid, experiments)
    if not any(r.info.run_id == replay_id for r in replays):  # belt and braces
        replays.insert(0, client.get_run(replay_id))
    tags = {TAG_REPLAYS: _ids_tag(replays),
            TAG_NOTE: with_section(original.data.tags.get(TAG_NOTE), "replays",
                                   _original_note(replays))}
    latest = _latest_verdict(replays)
    # A run that is itself a replay keeps its own verdict (as a replay) in the column.
    if latest is not None and TAG_REPLAY_OF not in original.data.tags:
        tags.update({TAG_VERDICT: latest.data.tags[TAG_VERDICT],
                     TAG_VERDICT_AT: latest.data.tags.get(TAG_VERDICT_AT)
                     or _iso(latest.info.end_time),
                     TAG_VERDICT_REPLAY: latest.info.run_id})
    _set_tags(client, oid, tags)
