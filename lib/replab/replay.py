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
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import termination, tracking
from .errors import ReplayError
from .replayenv import (  # noqa: F401  (re-exported: replay.ensure_environment & co.)
    cache_root,
    ensure_environment,
    lock_mismatches,
    parse_lock,
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
    metric_histories,
    repeated_steps,
)

log = logging.getLogger(__name__)

Say = Callable[[str], None]


# -- fetching the record ---------------------------------------------------------------------
def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri) if tracking_uri else MlflowClient()


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
    history, the manifest and the lock. Raises ReplayError naming what is missing or
    corrupt."""
    from mlflow.exceptions import MlflowException

    client = client or _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ReplayError(f"run {run_id} not found on {client.tracking_uri}: {exc}") from None
    except Exception as exc:
        raise ReplayError(f"cannot reach the tracking server {client.tracking_uri}: "
                          f"{exc}") from None
    metrics = metric_histories(client, run_id, run.data.metrics)
    manifest_text = _artifact_text(client, run_id, tracking.MANIFEST)
    if manifest_text is None:
        raise ReplayError(f"run {run_id} has no {tracking.MANIFEST}: it was not tracked with "
                          "replab (or the artifact store lost it); nothing to rebuild from")
    manifest = _parse_manifest(manifest_text, f"run {run_id}")
    exp = client.get_experiment(run.info.experiment_id)
    return Source(run_id=run_id, experiment=exp.name if exp else None,
                  params=dict(run.data.params), tags=dict(run.data.tags), metrics=metrics,
                  manifest=manifest, lock=_artifact_text(client, run_id, tracking.LOCK),
                  origin=f"tracking server {client.tracking_uri}")


def _artifact_text(client, run_id: str, path: str) -> str | None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, path, tmp)
            return Path(local).read_text()
    except Exception as exc:
        log.debug("artifact %s of %s unavailable: %s", path, run_id, exc)
        return None


def _parse_manifest(text: str, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ReplayError(f"the manifest of {where} is corrupt (not JSON: {exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("captures"), dict):
        raise ReplayError(f"the manifest of {where} is corrupt: no 'captures' section")
    version = manifest.get("schema_version")
    if version != 1:
        raise ReplayError(f"the manifest of {where} has schema_version {version!r}; this "
                          "replab reads version 1")
    return manifest


# -- bundles ---------------------------------------------------------------------------------
def export_bundle(run_id: str, output: str | os.PathLike, *,
                  tracking_uri: str | None = None) -> Path:
    """Write everything a replay needs into one ``.tar.gz`` (record.json). Returns it."""
    source = fetch(run_id, tracking_uri=tracking_uri)
    out = Path(output)
    data = json.dumps(source.to_dict(), indent=1, sort_keys=True).encode()
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        info = tarfile.TarInfo("record.json")
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return out


def load_bundle(path: str | os.PathLike) -> Source:
    """A bundle written by :func:`export_bundle`. Raises ReplayError when it is not one."""
    p = Path(path)
    try:
        with tarfile.open(p, "r:gz") as tar:
            member = tar.extractfile("record.json")
            data = json.loads(member.read()) if member else None
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise ReplayError(f"{p} is not a replab bundle: {exc}") from None
    if not isinstance(data, dict) or data.get("bundle_version") not in READABLE_BUNDLE_VERSIONS:
        raise ReplayError(f"{p} is not a replab bundle of version "
                          f"{' or '.join(map(str, READABLE_BUNDLE_VERSIONS))}")
    manifest = data.get("manifest")
    if not isinstance(manifest, dict):
        raise ReplayError(f"the bundle {p} holds no manifest")
    _parse_manifest(json.dumps(manifest), f"bundle {p}")
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
                  origin=f"bundle {p}")


def load(run_or_bundle: str, *, experiment: str | None = None,
         tracking_uri: str | None = None) -> Source:
    """A run id, ``latest`` (with ``experiment``) or a bundle file."""
    if run_or_bundle.endswith((".tar.gz", ".tgz")) or Path(run_or_bundle).is_file():
        return load_bundle(run_or_bundle)
    client = _client(tracking_uri)
    return fetch(resolve_run_id(client, run_or_bundle, experiment), client=client)


# -- re-execution ----------------------------------------------------------------------------
@dataclass
class Execution:
    command: list[str]
    cwd: str
    returncode: int
    seconds: float
    new_run_id: str | None
    log_tail: str = ""
    env: dict[str, str] = field(default_factory=dict)


def determinism_env(source: Source) -> dict[str, str]:
    """The recorded settings that must hold before the interpreter starts."""
    flags = ((source.captures.get("determinism") or {}).get("env")) or {}
    env_cap = source.captures.get("env") or {}
    out = {}
    for key in ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "TF_DETERMINISTIC_OPS",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = flags.get(key) or env_cap.get(key)
        if isinstance(value, str) and value and not _redacted(value):
            out[key] = value
    return out


def _redacted(value: str) -> bool:
    from .redact import ELLIPSIS  # masked values end with it

    return ELLIPSIS in value


def command_for(source: Source, workspace: Path, python: str) -> tuple[list[str], Path]:
    """The command re-executing the recorded entrypoint, and its working directory.
    Raises ReplayError for an entrypoint that cannot be re-executed."""
    entry = source.captures.get("entrypoint") or {}
    kind = entry.get("kind")
    cwd = workspace / (entry.get("cwd") or ".")
    if kind == "script":
        return [python, str(workspace / entry["path"]), *entry.get("argv", [])], cwd
    if kind == "module":
        return [python, "-m", entry["module"], *entry.get("argv", [])], cwd
    if kind == "command":
        cmd = list(entry.get("command") or [])
        if not cmd:
            raise ReplayError("the recorded command is empty")
        if Path(cmd[0]).name.startswith("python"):
            cmd[0] = python
        return [python, "-m", "replab.cli", "run", "--", *cmd], cwd
    if kind == "notebook":
        if not entry.get("path"):
            raise ReplayError("the run came from a notebook whose path was not recorded "
                              "(run it with papermill --inject-paths next time)")
        nb = workspace / entry["path"]
        out = workspace / ".replab" / f"replay-{nb.name}"
        args = [python, "-m", "papermill", str(nb), str(out), "--cwd", str(nb.parent),
                "--no-progress-bar", "-p", "PAPERMILL_INPUT_PATH", str(nb)]
        for k, v in (entry.get("parameters") or {}).items():
            args += ["-y", json.dumps({k: v})]
        return args, nb.parent
    what = "an interactive session" if kind in ("interactive", "inline") else "unknown"
    raise ReplayError(f"cannot re-execute an entrypoint of kind {kind!r} ({what}: no program "
                      "to run again)")


def execute(source: Source, workspace: Path, python: str, *,
            tracking_uri: str | None = None, progress: Say | None = None,
            timeout: float | None = None) -> Execution:
    """Re-execute the entrypoint in ``workspace`` with the recorded determinism settings;
    the new run is tagged as a replay of the original and returned."""
    from . import trackingserver

    say = progress or (lambda _m: None)
    # Never MLflow's default store: it is a stray mlflow.db in the replayed workspace.
    uri = trackingserver.resolve(tracking_uri)
    cmd, cwd = command_for(source, workspace, python)
    (workspace / ".replab").mkdir(exist_ok=True)
    env = dict(os.environ)
    extra = {**determinism_env(source), "MLFLOW_TRACKING_URI": uri,
             "REPLAB_REPLAY_OF": source.run_id}
    if source.experiment:
        extra["REPLAB_REPLAY_EXPERIMENT"] = source.experiment
    env.update(extra)
    env.pop("MLFLOW_RUN_ID", None)
    say(f"re-executing: {' '.join(cmd[1:] if cmd[0] == python else cmd)}")
    t0 = time.time()
    log_path = workspace / ".replab" / "replay.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        # SIGTERM to the replay goes on to the program (which saves its metrics and ends its
        # run); Ctrl-C stops it too: no replayed program outlives its replay.
        try:
            with termination.forwarded(proc.send_signal):
                rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    seconds = time.time() - t0
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    new = _find_replay(uri, source.run_id, since_ms=int(t0 * 1000) - 1000)
    say(f"replay exited with {rc} after {seconds:.1f}s; new run: {new or 'none'}")
    return Execution(cmd, str(cwd), rc, seconds, new, tail, extra)


def _find_replay(uri: str, original: str, since_ms: int) -> str | None:
    client = _client(uri)
    try:
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`{tracking.TAG_REPLAY_OF}` = '{original}' and "
                          f"attributes.start_time >= {since_ms}",
            order_by=["attributes.start_time DESC"], max_results=50)
    except Exception as exc:
        log.warning("cannot look up the replay run: %s", exc)
        return None
    # runs the program nests inside its own run carry the tag too: the replay is the top one
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return (top or runs)[0].info.run_id if runs else None


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


def record_of(source: Source):
    """The original run as :class:`replab.verdict.RunRecord` (from the server or a bundle)."""
    from .verdict import RunRecord

    return RunRecord(run_id=source.run_id, params=dict(source.params),
                     metrics={k: [(int(s), float(v)) for s, v in pts]
                              for k, pts in source.metrics.items()},
                     manifest=source.manifest, tags=dict(source.tags))


def replay_run(run_or_bundle: str, *, experiment: str | None = None,
               tracking_uri: str | None = None, repo: str | os.PathLike | None = None,
               workdir: str | os.PathLike = "work", rebuild_env: bool | None = None,
               allow_missing: bool = False, tolerances=None,
               progress: Say | None = None) -> ReplayResult:
    """Replay a run (id, ``latest`` with ``experiment``, or a bundle file) and judge it.

    The new run is logged to ``tracking_uri`` (default: MLFLOW_TRACKING_URI), tagged as a
    replay of the original; the verdict report goes to ``<workdir>/replays/<run>-<stamp>/``
    and onto the new run. Raises ReplayError when the replay cannot run or records no run.
    """
    from . import report as report_mod
    from . import verdict as verdict_mod

    say = progress or (lambda _m: None)
    source = load(run_or_bundle, experiment=experiment, tracking_uri=tracking_uri)
    say(f"replaying run {source.run_id} from {source.origin}")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(workdir) / "replays" / f"{source.run_id[:12]}-{stamp}"
    ws = rebuild_workspace(source, base / "workspace", repo=repo,
                           allow_missing=allow_missing, progress=say)
    python, mismatches = ensure_environment(source.lock, rebuild=rebuild_env, progress=say)
    ex = execute(source, ws, python, tracking_uri=tracking_uri, progress=say)
    if not ex.new_run_id:
        raise ReplayError(f"the replay exited with {ex.returncode} and recorded no run; "
                          f"its output ends with:\n{ex.log_tail}")
    client = _client(tracking_uri)
    new = verdict_mod.fetch_record(client, ex.new_run_id)
    v = verdict_mod.compare(record_of(source), new, tolerances)
    paths = report_mod.write_report(v, record_of(source), new, base / "report")
    try:
        report_mod.log_report(client, ex.new_run_id, paths, v)
    except Exception as exc:  # the report is on disk; the server may refuse big artifacts
        log.warning("could not attach the report to run %s: %s", ex.new_run_id, exc)
    links = _publish(client, source, new, v.verdict.value, say)
    say(f"verdict: {v.verdict.value}; report in {base / 'report'}")
    return ReplayResult(source, ws, python, mismatches, ex, v, paths, links)


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
    return verdict_mod.fetch_record(_client(tracking_uri), run_or_bundle)


def verify(run_a: str, run_b: str, *, tracking_uri: str | None = None, tolerances=None):
    """The verdict of two existing runs (ids or bundle files), ``run_a`` the original."""
    from . import verdict as verdict_mod

    a, b = _record(run_a, tracking_uri), _record(run_b, tracking_uri)
    return verdict_mod.compare(a, b, tolerances), a, b


def diff(run_a: str, run_b: str, *, tracking_uri: str | None = None) -> list:
    """The ranked environment differences between two runs (ids or bundle files)."""
    from .envdiff import env_diff

    a, b = _record(run_a, tracking_uri), _record(run_b, tracking_uri)
    return env_diff(a.manifest, b.manifest)
