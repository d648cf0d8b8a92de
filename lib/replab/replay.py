"""Replay a tracked run: fetch its record, rebuild its workspace and environment,
re-execute its entrypoint, and link the new run to the original.

Pipeline (each step a function, as papermill's execute is): :func:`fetch` (or
:func:`load_bundle`) -> :func:`rebuild_workspace` -> :func:`ensure_environment` ->
:func:`execute` -> the new run, tagged ``replab.replay_of``, judged (:mod:`replab.verdict`,
:mod:`replab.report`) and linked to its original both ways (:mod:`replab.runlinks`). Anything
that cannot be restored raises :class:`~replab.errors.ReplayError` naming what is missing,
and leaves nothing half-written behind. The environment building is in
:mod:`replab.replayenv`, the displays of 4_replay in :mod:`replab.replayview`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import outputs, tracking
from .errors import ConfigError, ReplayError
from .replayenv import (  # noqa: F401  (re-exported: replay.ensure_environment & co.)
    cache_root,
    ensure_environment,
    lock_mismatches,
    parse_lock,
)
from .replayexec import (  # noqa: F401  (re-exported: replay.execute & co.)
    Execution,
    command_for,
    determinism_env,
    execute,
)
from .replayview import (  # noqa: F401  (re-exported: the displays 4_replay calls)
    Target,
    diff_here_markdown,
    notebook_target,
    record_markdown,
)
from .replayworkspace import rebuild_workspace  # noqa: F401  (re-exported)
from .runrecord import (  # noqa: F401  (re-exported: replay.Source)
    BUNDLE_VERSION,
    READABLE_BUNDLE_VERSIONS,
    Source,
    artifact_text,
    fetch_outputs,
    metric_histories,
    mlflow_client,
    parse_manifest,
    repeated_steps,
)

log = logging.getLogger(__name__)

Say = Callable[[str], None]


# -- fetching the record ---------------------------------------------------------------------
def resolve_run_id(client, run: str, experiment: str | None = None) -> str:
    """``run`` as a run id; ``latest`` means the newest finished, non-replay run of
    ``experiment``. Raises ReplayError when there is none."""
    if run != "latest":
        return run
    if not experiment:
        raise ReplayError("'latest' needs an experiment name (experiment=...)")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReplayError(f"no experiment named {experiment!r} on the tracking server")
    runs = client.search_runs([exp.experiment_id],
                              filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    for r in runs:
        if tracking.TAG_REPLAY_OF not in r.data.tags:
            return r.info.run_id
    raise ReplayError(f"experiment {experiment!r} has no finished run to replay")


def fetch(run_id: str, *, tracking_uri: str | None = None, client=None) -> Source:
    """The record of ``run_id`` from the tracking server: params, tags, every metric's full
    history, the manifest, the lock and the recorded outputs. Raises ReplayError naming
    what is missing or corrupt."""
    from mlflow.exceptions import MlflowException

    client = client or mlflow_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ReplayError(f"run {run_id} not found on {client.tracking_uri}: {exc}") from None
    except Exception as exc:
        raise ReplayError(f"cannot reach the tracking server {client.tracking_uri}: "
                          f"{exc}") from None
    metrics = metric_histories(client, run_id, run.data.metrics, run=run)
    manifest_text = artifact_text(client, run_id, tracking.MANIFEST)
    if manifest_text is None:
        raise ReplayError(f"run {run_id} has no {tracking.MANIFEST}: it was not tracked with "
                          "replab (or the artifact store lost it); nothing to rebuild from")
    manifest = parse_manifest(manifest_text, f"run {run_id}")
    spec, printed, files = fetch_outputs(client, run_id)
    exp = client.get_experiment(run.info.experiment_id)
    return Source(run_id=run_id, experiment=exp.name if exp else None,
                  params=dict(run.data.params), tags=dict(run.data.tags), metrics=metrics,
                  manifest=manifest, lock=artifact_text(client, run_id, tracking.LOCK),
                  origin=f"tracking server {client.tracking_uri}", outputs=spec,
                  printed=printed, files=files)


# -- bundles ---------------------------------------------------------------------------------
def export_bundle(run_id: str, output: str | os.PathLike, *,
                  tracking_uri: str | None = None) -> Path:
    """Write everything a replay and a verdict need into one ``.tar.gz``: record.json, the
    uncommitted diff when it is an artifact, the kept output files (``outputs/``).
    Returns it."""
    from .replayworkspace import bundle_files

    client = mlflow_client(tracking_uri)
    source = fetch(run_id, client=client)
    out = Path(output)
    members = {"record.json": json.dumps(source.to_dict(), indent=1, sort_keys=True).encode()}
    members.update(bundle_files(source, client=client))
    for path, rec in source.files.items():
        if rec.local is not None:
            members[f"{BUNDLE_OUTPUTS}/{path}"] = Path(rec.local).read_bytes()
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return out


BUNDLE_OUTPUTS = "outputs"  # the kept output files inside a bundle, by their run path


def _bundle_outputs(tar: tarfile.TarFile, spec: dict | None) -> dict:
    """The bundle's recorded output files, the kept ones extracted to a temporary
    directory."""
    files = outputs.recorded_files(spec)
    prefix = f"{BUNDLE_OUTPUTS}/"
    kept = [n for n in tar.getnames() if n.startswith(prefix)]
    if not kept:
        return files
    local = Path(tempfile.mkdtemp(prefix="replab-bundle-outputs-"))
    for name in kept:
        member = tar.extractfile(name)
        path = name[len(prefix):]
        if member is None or path not in files or ".." in Path(path).parts:
            continue
        dest = local / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(member.read())
        files[path] = outputs.RecordedFile(files[path].sha256, files[path].size, dest)
    return files


def load_bundle(path: str | os.PathLike) -> Source:
    """A bundle written by :func:`export_bundle`. Raises ReplayError when it is not one."""
    p = Path(path)
    try:
        with tarfile.open(p, "r:gz") as tar:
            member = tar.extractfile("record.json")
            data = json.loads(member.read()) if member else None
            files = (_bundle_outputs(tar, data.get("outputs")) if isinstance(data, dict)
                     else {})
    except (OSError, tarfile.TarError, KeyError, ValueError, AttributeError) as exc:
        raise ReplayError(f"{p} is not a replab bundle: {exc}") from None
    if not isinstance(data, dict) or data.get("bundle_version") not in READABLE_BUNDLE_VERSIONS:
        raise ReplayError(f"{p} is not a replab bundle of version "
                          f"{' or '.join(map(str, READABLE_BUNDLE_VERSIONS))}")
    manifest = data.get("manifest")
    if not isinstance(manifest, dict):
        raise ReplayError(f"the bundle {p} holds no manifest")
    parse_manifest(json.dumps(manifest), f"bundle {p}")
    metrics = {k: [(int(x[0]), float(x[1])) for x in v]
               for k, v in (data.get("metrics") or {}).items()}
    repeated = repeated_steps(metrics)
    if data["bundle_version"] == 1 and repeated:
        raise ReplayError(
            f"the bundle {p} was written by an older replab that sorted the values logged "
            f"at one step by value, so the logged order of {', '.join(repeated[:5])} is "
            "lost and its points would be paired wrongly; export it again from the "
            "tracking server with this replab (`replab bundle export RUN -o FILE`)")
    return Source(run_id=data["run_id"], experiment=data.get("experiment"),
                  params=data.get("params") or {}, tags=data.get("tags") or {},
                  metrics=metrics, manifest=manifest, lock=data.get("lock"),
                  origin=f"bundle {p}", outputs=data.get("outputs"),
                  printed=data.get("printed") or {}, files=files)


def load(run_or_bundle: str, *, experiment: str | None = None,
         tracking_uri: str | None = None) -> Source:
    """A run id, ``latest`` (with ``experiment``) or a bundle file."""
    if run_or_bundle.endswith((".tar.gz", ".tgz")) or Path(run_or_bundle).is_file():
        return load_bundle(run_or_bundle)
    client = mlflow_client(tracking_uri)
    return fetch(resolve_run_id(client, run_or_bundle, experiment), client=client)


# -- the whole replay, to a verdict ----------------------------------------------------------
@dataclass
class ReplayResult:
    source: Source
    workspace: Path
    python: str
    mismatches: list[str]
    execution: Execution
    verdict: Any = None  # replab.verdict.Verdict
    report: dict[str, Path] = field(default_factory=dict)
    links: Any = None  # replab.runlinks.Links; None when linking failed
    repeats: list[Execution] = field(default_factory=list)  # every replay, the first too
    spreads: dict[str, Any] = field(default_factory=dict)  # replab.spread.MetricSpread


def record_of(source: Source):
    """The original run as :class:`replab.runrecord.RunRecord` (from the server or a
    bundle)."""
    return source.record()


def replay_run(run_or_bundle: str | Source, *, experiment: str | None = None,
               tracking_uri: str | None = None, repo: str | os.PathLike | None = None,
               workdir: str | os.PathLike = "work", rebuild_env: bool | None = None,
               allow_missing: bool = False, tolerances=None, repeats: int = 1,
               progress: Say | None = None) -> ReplayResult:
    """Replay a run (id, ``latest`` with ``experiment``, a bundle file, or a
    :class:`Source` already loaded: it is not fetched again) and judge it.

    The new run is logged to ``tracking_uri`` (default: MLFLOW_TRACKING_URI), tagged as a
    replay of the original; the verdict report goes to ``<workdir>/replays/<run>-<stamp>/``
    and onto the new run. ``repeats`` >= 2 replays it that many times, each in a fresh
    workspace, measures each metric's spread (:mod:`replab.spread`) and judges the original
    against it. Raises ReplayError when the replay cannot run or records no run.
    """
    from . import report as report_mod
    from . import trackingserver
    from . import verdict as verdict_mod

    if int(repeats) < 1:
        raise ConfigError([("repeats", f"{repeats} is not 1 or more (how many times to "
                                       "replay the run)")])
    say = progress or (lambda _m: None)
    source = run_or_bundle if isinstance(run_or_bundle, Source) else load(
        run_or_bundle, experiment=experiment, tracking_uri=tracking_uri)
    say(f"replaying run {source.run_id} from {source.origin}")
    uri = trackingserver.resolve(tracking_uri)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(workdir).resolve() / "replays" / f"{source.run_id[:12]}-{stamp}"
    python, mismatches, runs = None, [], []
    client = mlflow_client(uri)
    for i in range(int(repeats)):
        if repeats > 1:
            say(f"repeat {i + 1} of {repeats}")
        scratch = base if i == 0 else base / f"repeat-{i + 1}"
        ws = rebuild_workspace(source, scratch / "workspace", repo=repo,
                               allow_missing=allow_missing, progress=say)
        if python is None:
            recorded = (source.captures.get("python") or {}).get("version")
            python, mismatches = ensure_environment(source.lock, rebuild=rebuild_env,
                                                    progress=say, python_version=recorded)
        ex = execute(source, ws, python, tracking_uri=uri, progress=say, scratch=scratch)
        if not ex.new_run_id:
            raise ReplayError(f"the replay exited with {ex.returncode} and recorded no run; "
                              f"its output ends with:\n{ex.log_tail}")
        runs.append((ws, ex, verdict_mod.fetch_record(client, ex.new_run_id)))
    ws, ex, new = runs[0]
    original = source.record()
    replays = [r for _, _, r in runs]
    v, judged, spreads = _judge(original, replays, tolerances)
    if spreads:
        v.notes.append("replay runs: " + ", ".join(e.new_run_id for _, e, _ in runs))
    paths = report_mod.write_report(v, original, judged, base / "report",
                                    replays if spreads else ())
    try:
        report_mod.log_report(client, ex.new_run_id, paths, v)
    except Exception as exc:  # the report is on disk; the server may refuse big artifacts
        log.warning("could not attach the report to run %s: %s", ex.new_run_id, exc)
    links = _publish(client, source, new, v.verdict.value, say)
    say(f"verdict: {v.verdict.value}; report in {base / 'report'}")
    return ReplayResult(source, ws, python, mismatches, ex, v, paths, links,
                        [e for _, e, _ in runs], spreads)


def _publish(client, source: Source, new, outcome: str, say: Say):
    """Link the replay and its original both ways and give both the readable environment
    summary where they lack it. Problems are logged: the verdict stands without them."""
    from . import envsummary, runlinks

    try:
        links = runlinks.link_replay(client, source.run_id, new.run_id, verdict=outcome,
                                     tracking_uri=client.tracking_uri, origin=source.origin)
    except Exception as exc:
        log.warning("could not link replay %s to run %s: %s", new.run_id, source.run_id, exc)
        return None
    on_server = [(new.run_id, new.manifest)] + (
        [(source.run_id, source.manifest)] if links.original_url else [])
    for run_id, manifest in on_server:
        try:
            if manifest:
                envsummary.log_missing(client, run_id, manifest)
        except Exception as exc:
            log.warning("could not log the environment summary of run %s: %s", run_id, exc)
    say(f"replay in the MLflow UI: {links.replay_url}")
    if links.original_url:
        say(f"original in the MLflow UI: {links.original_url}"
            + ("" if links.back_linked else " (it could not be updated to list the replay)"))
    return links


def _record(run_or_bundle: str, tracking_uri: str | None):
    from . import verdict as verdict_mod

    if run_or_bundle.endswith((".tar.gz", ".tgz")) or Path(run_or_bundle).is_file():
        return record_of(load_bundle(run_or_bundle))
    return verdict_mod.fetch_record(mlflow_client(tracking_uri), run_or_bundle)


def _judge(original, replays: list, tolerances=None):
    """The verdict of ``original`` against one replay, or against the measured spread of
    several (:mod:`replab.spread`): ``(verdict, the record it was judged against, the
    metrics' spreads)``."""
    from . import spread as spread_mod
    from . import verdict as verdict_mod

    spreads = (spread_mod.measure(replays, ignore=verdict_mod.IGNORED_METRICS)
               if len(replays) > 1 else {})
    judged = spread_mod.centre_record(replays[0], spreads) if spreads else replays[0]
    v = verdict_mod.compare(original, judged, tolerances,
                            measured=spread_mod.tolerances(spreads),
                            printed_spread=spread_mod.measure_printed(replays,
                                                                      original.outputs))
    if spreads:
        v.notes.append(f"judged against {len(replays)} replays ({spread_mod.RULE}): "
                       + "; ".join(s.words() for s in spreads.values()))
    return v, judged, spreads


def verify(run_a: str, run_b: str, *more: str, tracking_uri: str | None = None,
           tolerances=None):
    """The verdict of existing runs (ids or bundle files), ``run_a`` the original. With
    ``more`` replays, their spread is measured (:mod:`replab.spread`) and the original judged
    against it. Returns ``(verdict, original record, judged replay record)``."""
    a = _record(run_a, tracking_uri)
    v, b, _ = _judge(a, [_record(r, tracking_uri) for r in (run_b, *more)], tolerances)
    return v, a, b


def diff(run_a: str, run_b: str, *, tracking_uri: str | None = None) -> list:
    """The ranked environment differences between two runs (ids or bundle files)."""
    from .envdiff import env_diff

    a, b = _record(run_a, tracking_uri), _record(run_b, tracking_uri)
    return env_diff(a.manifest, b.manifest)
