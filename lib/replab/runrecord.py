"""The one reader of a run: params, tags, metric histories, manifest, lock and recorded
outputs, from a tracking server or a bundle; the record a replay starts from
(:class:`Source`) and the record a verdict compares (:class:`RunRecord`).

Every part of replab that reads a run (the replay's original, the verdict's two runs, the
report, bundles) reads metric histories through :func:`metric_history`, so the points of
the original and of the replay are paired in the same order: the order they were logged.
That order is step, then timestamp, then the order MLflow returns within equal timestamps
(a stable sort of MLflow's answer). A metric logged several times at one step (MLflow
autologging logs every fit at step 0) keeps its logged sequence; sorting by value, as
replab did before bundle version 2, pairs the wrong points.

A run whose process recorded a metrics snapshot (:mod:`replab.metricsnapshot`, written by
``replab.tracking`` and ``replab run``) is read from it, one download instead of one
request per metric, for every key whose latest point agrees with the server; the snapshot
also knows the logging order of points with equal step and timestamp (the server returns
those ordered by value). Other keys, and every key of a run without a (readable) snapshot,
are read from the server.

Bundles: version 2 stores metric histories in logged order. A version-1 bundle (written
sorted by step, then value) is exact for every metric logged at most once per step; a
version-1 bundle holding a metric with several values at one step cannot be repaired
(the logged order is lost) and is refused with the way out: export it again.
Version 3 adds the recorded outputs (``replab/outputs.json``, the printed streams and the
kept output files, under ``outputs/`` in the archive).

Recorded outputs: ``outputs`` is the run's output spec (None for a run that recorded none,
made before replab recorded outputs or not by ``replab run``); ``printed`` holds each
recorded stream's text; ``files`` the recorded output files (:mod:`replab.outputs`).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metricsnapshot, outputs
from .errors import CloudError, ReplayError
from .tracking import MANIFEST

log = logging.getLogger(__name__)

BUNDLE_VERSION = 3
READABLE_BUNDLE_VERSIONS = (1, 2, 3)

Points = list[tuple[int, float]]


# At most this many metric histories are read at once: the client parses one answer while
# the server builds the next (about half the time of one-by-one reading on a 2-core machine,
# bench/bench_verdict.py; the server's one worker then bounds it).
HISTORY_READERS = 4


def metric_history(client: Any, run_id: str, key: str) -> Points:
    """Every value of metric ``key`` of run ``run_id`` as ``(step, value)`` in logged
    order: step, then timestamp, then MLflow's own order within equal timestamps."""
    history = list(client.get_metric_history(run_id, key))
    history.sort(key=lambda m: (int(m.step), int(m.timestamp or 0)))  # stable
    return [(int(m.step), float(m.value)) for m in history]


def metric_histories(client: Any, run_id: str, keys: Any,
                     readers: int = HISTORY_READERS, *, run: Any = None) -> dict[str, Points]:
    """The history of each key, keys sorted. A key the run's metrics snapshot holds and
    agrees on with the server (:func:`snapshot_histories`; ``run``: the run as
    ``get_run`` gave it, saving that request) comes from the snapshot; the others are
    :func:`metric_history`, up to ``readers`` keys read at once (the points and their
    order are those of one-by-one reading). Raises what the client raises for the first
    key that fails."""
    keys = sorted(keys)
    known = snapshot_histories(client, run_id, keys, run)
    read = server_histories(client, run_id, [k for k in keys if k not in known], readers)
    return {key: known[key] if key in known else read[key] for key in keys}


def server_histories(client: Any, run_id: str, keys: list[str],
                     readers: int = HISTORY_READERS) -> dict[str, Points]:
    """:func:`metric_history` of each of ``keys``, up to ``readers`` at once."""
    if readers <= 1 or len(keys) <= 1:
        return {key: metric_history(client, run_id, key) for key in keys}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(readers, len(keys)),
                            thread_name_prefix="replab-history") as pool:
        futures = [pool.submit(metric_history, client, run_id, key) for key in keys]
        return {key: future.result() for key, future in zip(keys, futures, strict=True)}


def snapshot_histories(client: Any, run_id: str, keys: list[str], run: Any = None
                       ) -> dict[str, Points]:
    """The histories of ``keys`` that the run's :data:`metricsnapshot.ARTIFACT` can give:
    those whose latest point there is the run's latest point as the server reports it (a
    point logged past the snapshot, by another process or after the run ended, shows
    there). No snapshot: {}; a corrupt one: {} and a warning naming it."""
    if not keys:
        return {}
    data = artifact_bytes(client, run_id, metricsnapshot.ARTIFACT)
    if data is None:
        return {}
    try:
        snapshot = metricsnapshot.decode(data, run_id)
    except metricsnapshot.SnapshotError as exc:
        log.warning("the metrics snapshot %s of run %s is unreadable (%s): its metrics are "
                    "read from the tracking server", metricsnapshot.ARTIFACT, run_id, exc)
        return {}
    try:
        run = run if run is not None else client.get_run(run_id)
        # RunData keeps the Metric entities (step, timestamp) behind its {key: value} view
        server = {m.key: (m.step, m.timestamp, m.value) for m in run.data._metric_objs}
    except Exception as exc:
        log.debug("latest metrics of %s unavailable: %s", run_id, exc)
        return {}
    usable = metricsnapshot.usable_keys(snapshot, {k: server[k] for k in keys if k in server})
    return metricsnapshot.histories(snapshot, sorted(usable))


def repeated_steps(metrics: dict[str, Points]) -> list[str]:
    """The metrics that hold several values at one step (their order matters)."""
    out = []
    for key, points in metrics.items():
        steps = [int(s) for s, _ in points]
        if len(set(steps)) != len(steps):
            out.append(key)
    return sorted(out)


def encode_float(value: float) -> float | str:
    return value if math.isfinite(value) else ("NaN" if math.isnan(value) else
                                               "Infinity" if value > 0 else "-Infinity")


@dataclass
class RunRecord:
    """What a comparison needs of one run: params, full metric histories ``[(step,
    value)]``, the manifest (None when missing), tags, the recorded outputs; ``notes`` say
    what was missing."""

    run_id: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Points] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, Any] | None = None
    printed: dict[str, str] = field(default_factory=dict)
    files: dict[str, outputs.RecordedFile] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON data (NaN and infinities as the strings "NaN", "Infinity"); the
        output files by hash only."""
        return {"run_id": self.run_id, "params": dict(self.params),
                "metrics": {k: [[int(s), encode_float(float(v))] for s, v in pts]
                            for k, pts in self.metrics.items()},
                "manifest": self.manifest, "tags": dict(self.tags), "notes": list(self.notes),
                "outputs": self.outputs, "printed": dict(self.printed)}

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
                       notes=[str(n) for n in data.get("notes") or []],
                       outputs=data.get("outputs"),
                       printed={str(k): str(v) for k, v in (data.get("printed") or {}).items()},
                       files=outputs.recorded_files(data.get("outputs")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReplayError(f"malformed run record: {type(exc).__name__}: {exc}") from exc


@dataclass
class Source:
    """Everything a replay needs about the original run."""

    run_id: str
    experiment: str | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, Points]
    manifest: dict[str, Any]
    lock: str | None
    origin: str  # "tracking server <uri>" or "bundle <path>"
    outputs: dict[str, Any] | None = None
    printed: dict[str, str] = field(default_factory=dict)
    files: dict[str, outputs.RecordedFile] = field(default_factory=dict)

    @property
    def captures(self) -> dict[str, Any]:
        return self.manifest.get("captures") or {}

    def record(self) -> RunRecord:
        """The original run as the verdict compares it."""
        return RunRecord(run_id=self.run_id, params=dict(self.params),
                         metrics={k: [(int(s), float(v)) for s, v in pts]
                                  for k, pts in self.metrics.items()},
                         manifest=self.manifest, tags=dict(self.tags), outputs=self.outputs,
                         printed=dict(self.printed), files=dict(self.files))

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_version": BUNDLE_VERSION, "run_id": self.run_id,
                "experiment": self.experiment, "params": self.params, "tags": self.tags,
                "metrics": {k: [list(p) for p in v] for k, v in self.metrics.items()},
                "manifest": self.manifest, "lock": self.lock, "outputs": self.outputs,
                "printed": self.printed}


# -- reading a run from a tracking server ----------------------------------------------------
def mlflow_client(tracking_uri: str | None = None):
    """An ``MlflowClient`` of ``tracking_uri`` (None: MLflow's own resolution)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri) if tracking_uri else MlflowClient()


def client_uri(client: Any) -> str:
    inner = getattr(client, "_tracking_client", None)
    return str(getattr(inner, "tracking_uri", None) or getattr(client, "tracking_uri", "?"))


def artifact_text(client: Any, run_id: str, path: str) -> str | None:
    """The text of one artifact of the run; None when it is absent or unreadable."""
    data = artifact_bytes(client, run_id, path)
    try:
        return None if data is None else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        log.debug("artifact %s of %s is not UTF-8: %s", path, run_id, exc)
        return None


def artifact_bytes(client: Any, run_id: str, path: str) -> bytes | None:
    """The bytes of one artifact of the run; None when it is absent or unreadable."""
    try:
        with tempfile.TemporaryDirectory(prefix="replab-record-") as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()
    except Exception as exc:
        log.debug("artifact %s of %s unavailable: %s", path, run_id, exc)
        return None


def _has_captures(manifest: Any) -> bool:
    return isinstance(manifest, dict) and isinstance(manifest.get("captures"), dict)


def check_manifest(manifest: Any, where: str) -> str | None:
    """None for a manifest this replab reads, else why not."""
    if not _has_captures(manifest):
        return f"the manifest of {where} is corrupt: no 'captures' section"
    if manifest.get("schema_version") != 1:
        return (f"the manifest of {where} has schema_version "
                f"{manifest.get('schema_version')!r}; this replab reads version 1")
    return None


def parse_manifest(text: str, where: str) -> dict[str, Any]:
    """The manifest in ``text``. Raises ReplayError when it is not one this replab reads."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ReplayError(f"the manifest of {where} is corrupt (not JSON: {exc})") from None
    problem = check_manifest(manifest, where)
    if problem:
        raise ReplayError(problem)
    return manifest


def fetch_outputs(client: Any, run_id: str, keep: Path | None = None
                  ) -> tuple[dict[str, Any] | None, dict[str, str],
                             dict[str, outputs.RecordedFile]]:
    """The run's output spec, its recorded streams' texts and its recorded files (kept
    ones downloaded under ``keep``, a fresh temporary directory by default)."""
    text = artifact_text(client, run_id, outputs.SPEC)
    spec = None
    if text is not None:
        try:
            spec = outputs.read_spec(text)
        except Exception as exc:
            log.warning("the output spec of run %s is unreadable (%s): outputs not compared",
                        run_id, exc)
    printed = {}
    for stream in outputs.streams_for(spec):
        body = artifact_text(client, run_id, outputs.STREAM_ARTIFACTS[stream])
        if body is not None:
            printed[stream] = body
    local = None
    if spec and any(f.get("artifact") for f in spec.get("files") or ()):
        keep = keep or Path(tempfile.mkdtemp(prefix="replab-outputs-"))
        try:
            local = Path(client.download_artifacts(run_id, outputs.ARTIFACT_DIR, str(keep)))
        except Exception as exc:
            log.warning("the output files of run %s could not be downloaded: %s", run_id, exc)
    return spec, printed, outputs.recorded_files(spec, local)


def fetch_record(client: Any, run_id: str) -> RunRecord:
    """Read run ``run_id`` through an ``MlflowClient``: params, tags, every metric's full
    history in logged order, ``replab/manifest.json`` and the recorded outputs. A missing or
    corrupt manifest gives ``manifest=None`` and a note. Raises ReplayError when the run does
    not exist, CloudError when the tracking server fails."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in f"{getattr(exc, 'error_code', '')} {exc}":
            raise ReplayError(f"no run {run_id} on the tracking server "
                              f"{client_uri(client)}") from exc
        raise CloudError(f"cannot read run {run_id} from {client_uri(client)}: {exc}") from exc
    try:
        metrics = metric_histories(client, run_id, run.data.metrics, run=run)
    except Exception as exc:
        raise CloudError(f"cannot read the metrics of run {run_id} from "
                         f"{client_uri(client)}: {exc}") from exc
    manifest, note = None, None
    text = artifact_text(client, run_id, MANIFEST)
    if text is None:
        note = f"run {run_id} has no readable {MANIFEST}: its environment is not compared"
    else:
        try:
            manifest = json.loads(text)
        except ValueError as exc:
            note = f"{MANIFEST} of run {run_id} is not valid JSON ({exc}): not compared"
        else:
            note = check_manifest(manifest, f"run {run_id}")
            if not _has_captures(manifest):  # another schema version is still compared
                manifest, note = None, f"{note}: not compared"
    if note:
        log.warning("%s", note)
    spec, printed, files = fetch_outputs(client, run_id)
    return RunRecord(run_id, dict(run.data.params), metrics, manifest, dict(run.data.tags),
                     [note] if note else [], spec, printed, files)
