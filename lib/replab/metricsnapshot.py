"""The metrics snapshot of a run: every metric point the run's process logged, as one
compact artifact (:data:`ARTIFACT`, gzip'd JSON, per key parallel arrays of step, timestamp
and value), so a verdict reads a run's histories in one download instead of one
``get_metric_history`` per key (seconds per 25,000 points on MLflow's server).

Writing: :func:`start` records every point this process logs to a run, at the lowest
point MLflow's clients share (``TrackingServiceClient.log_metric`` and ``log_batch``, both
synchronous and asynchronous: the fluent API, ``MlflowClient``, autologging and replab's own
:class:`replab.tracking.Run` all pass there); :func:`finish` uploads the snapshot when the
run ends. The points are kept as MLflow's SQL store keeps them: a point identical to one
already logged (key, timestamp, step, value; NaN equal to NaN, infinities stored as the
largest finite floats) is dropped, and each key is ordered as the server returns a history
(runrecord.metric_history): by step, timestamp, then stored value (the SQL store's ORDER BY
within equal timestamps), so a key reads the same from the snapshot as from the server and
runs read either way pair their points alike. Recording never breaks the program: a
failure only warns, and a key whose logging failed is left out of the snapshot (read from
the server).

Reading: :func:`decode` parses and validates a snapshot (raises :class:`SnapshotError`);
:func:`usable_keys` says which keys agree with the server: a key is used only when the
run's latest point as the server reports it (MLflow's latest: the largest ``(step,
timestamp, value)``) is the snapshot's latest point for that key.

This module needs only the standard library at import (MLflow is imported when recording
starts): ``replab run``'s child may load it by path in an interpreter without replab.
"""

from __future__ import annotations

import atexit
import gzip
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

ARTIFACT = "replab/metrics.json.gz"
FORMAT = "replab.metrics"
VERSION = 1
# MLflow's SQL store keeps +/-inf as the largest finite floats (sanitize_metric_value)
_MAX = 1.7976931348623157e308

Point = tuple[int, int, float]  # (step, timestamp, value)


class SnapshotError(ValueError):
    """A snapshot that cannot be read: not gzip, not JSON, or not this format."""


def stored_value(value: float) -> tuple[bool, float]:
    """``(is_nan, value)`` as MLflow's SQL store keeps a value: NaN as 0 with the flag,
    +/-inf as the largest finite float of that sign."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, _MAX if value > 0 else -_MAX
    return False, value


def _read_value(value: float) -> float:
    """The value as the server reads it back (NaN stays NaN, infinities become finite)."""
    is_nan, stored = stored_value(value)
    return math.nan if is_nan else stored


# -- recording ---------------------------------------------------------------------------
class Recorder:
    """The points logged to one run by this process, deduplicated as the SQL store does."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pid = os.getpid()  # a forked child's points are not the parent's
        self.holders = 0
        self.failed: set[str] = set()  # keys whose logging raised: left to the server
        self._lock = threading.Lock()
        self._points: dict[str, list[tuple[int, int, int, float]]] = {}
        self._seen: set[tuple] = set()
        self._seq = 0

    def add(self, items: Iterable[tuple[str, Any, int, int]]) -> None:
        """Record ``(key, value, timestamp, step)`` points in logging order."""
        if os.getpid() != self.pid:
            return
        with self._lock:
            for key, value, timestamp, step in items:
                value = float(value)
                is_nan, stored = stored_value(value)
                ident = (key, int(timestamp), int(step), stored, is_nan)
                if ident in self._seen:
                    continue
                self._seen.add(ident)
                self._seq += 1
                self._points.setdefault(key, []).append(
                    (int(step), int(timestamp), self._seq, math.nan if is_nan else stored))

    def fail(self, keys: Iterable[str]) -> None:
        with self._lock:
            self.failed.update(keys)

    def snapshot(self) -> dict[str, list[Point]]:
        """Per key, the points in the server's order (:func:`server_order`); keys whose
        logging failed are left out."""
        with self._lock:
            return {key: server_order((s, t, v) for s, t, _, v in pts)
                    for key, pts in self._points.items() if key not in self.failed}


def server_order(points: Iterable[Point]) -> list[Point]:
    """``points`` as MLflow's SQL store returns a history (ORDER BY timestamp, step, value)
    once sorted by step and timestamp: by step, timestamp, then the value it stores (NaN
    as 0); equal ones keep their order."""
    return sorted(points, key=lambda p: (p[0], p[1], stored_value(p[2])[1]))


_recorders: dict[str, Recorder] = {}
_registry_lock = threading.Lock()
_hooked = False


def start(run_id: str) -> Recorder:
    """Record every point this process logs to ``run_id`` from now on (MLflow's tracking
    client hooked once per process). Several holders may share a run's recorder (``replab
    run``'s child and a ``replab.tracking.start_run`` inside it); the last :func:`finish`
    uploads it."""
    with _registry_lock:
        _hook()
        rec = _recorders.get(run_id)
        if rec is None or rec.pid != os.getpid():
            rec = _recorders[run_id] = Recorder(run_id)
        rec.holders += 1
        return rec


def finish(run_id: str, client: Any, combine: bool = True) -> bool:
    """Release one hold on ``run_id``'s recorder; the last upload the snapshot through
    ``client`` (an ``MlflowClient``), merged with one another process uploaded before
    (``combine``). True when a snapshot was uploaded. Never raises: failures are warned
    about (the run is then read from the server)."""
    rec = _let_go(run_id)
    if rec is None:
        return False
    try:
        snapshot = rec.snapshot()
        handoff = _handoffs.pop(run_id, None)
        earlier = _handed_over(handoff, run_id) if handoff is not None else None
        if earlier is None and combine:  # no file: the program may have uploaded its own
            earlier = _uploaded(client, run_id)
        upload(client, run_id, merge(earlier, snapshot) if earlier else snapshot)
        return True
    except Exception as exc:
        log.warning("could not upload the metrics snapshot of run %s (%s): its metrics "
                    "will be read from the tracking server", run_id, exc)
        return False


def _let_go(run_id: str) -> Recorder | None:
    """Drop one hold on ``run_id``'s recorder in this process; the recorder when that was
    the last one (it stops recording), else None."""
    with _registry_lock:
        rec = _recorders.get(run_id)
        if rec is None or rec.pid != os.getpid():
            return None
        rec.holders -= 1
        if rec.holders > 0:
            return None
        del _recorders[run_id]
    return rec


class Hold:
    """One holder's claim on a run's recorder (:func:`hold`); :func:`release` it once."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.released = False


def hold(run_id: str) -> Hold | None:
    """:func:`start` that never raises: None, and a warning, when recording cannot start
    (the run's metrics are then read from the server)."""
    try:
        start(run_id)
    except Exception as exc:
        log.warning("no metrics snapshot for run %s: %s", run_id, exc)
        return None
    return Hold(run_id)


def release(claim: Hold | None, client: Any, combine: bool = True) -> bool:
    """:func:`finish` for ``claim``, once (later calls, and None, do nothing)."""
    if claim is None or claim.released:
        return False
    claim.released = True
    return finish(claim.run_id, client, combine)


_handoffs: dict[str, str] = {}  # run id -> the file its child process writes its snapshot to


def expect_handoff(run_id: str, path: str) -> None:
    """``replab run``: the program's snapshot of ``run_id`` arrives in the file ``path``
    (:func:`start_for_process` with ``handoff``), merged into this process's own when the run
    ends, instead of downloading one uploaded before."""
    _handoffs[run_id] = path


def _handed_over(path: str, run_id: str) -> dict[str, list[Point]] | None:
    try:
        with open(path, "rb") as fh:
            return decode(fh.read(), run_id)
    except FileNotFoundError:
        return None  # the program logged nothing through MLflow, or died before its exit
    except (OSError, SnapshotError) as exc:
        log.warning("the program's metrics snapshot %s is unreadable (%s): its metrics will "
                    "be read from the tracking server", path, exc)
        return None


def start_for_process(run_id: str, handoff: str | None = None) -> None:
    """``replab run``'s child: record ``run_id`` for the whole process and, at exit, write
    the snapshot to the file ``handoff`` for the parent to merge (it ends the run), or
    without one upload it (through the tracking URI in force then). Never raises."""
    claim = hold(run_id)

    def at_exit() -> None:
        if handoff:
            if not claim.released:
                claim.released = True
                rec = _let_go(run_id)
                if rec is not None:  # the last holder: no other code of this process ends it
                    _write_handoff(rec, handoff)
            return
        try:
            from mlflow.tracking import MlflowClient

            release(claim, MlflowClient(), combine=False)
        except Exception as exc:
            log.warning("no metrics snapshot for run %s: %s", run_id, exc)

    if claim is not None:
        atexit.register(at_exit)


def _write_handoff(rec: Recorder, path: str) -> None:
    try:
        tmp = f"{path}.{os.getpid()}.part"
        with open(tmp, "wb") as fh:
            fh.write(encode(rec.run_id, rec.snapshot()))
        os.replace(tmp, path)
    except Exception as exc:
        log.warning("could not hand the metrics snapshot of run %s over (%s): its metrics "
                    "will be read from the tracking server", rec.run_id, exc)


def _hook() -> None:
    """Wrap TrackingServiceClient.log_metric and log_batch (every MLflow client logs
    through them, synchronously or not) to record the points of recorded runs."""
    global _hooked
    if _hooked:
        return
    from mlflow.tracking._tracking_service.client import TrackingServiceClient
    from mlflow.tracking.metric_value_conversion_utils import (
        convert_metric_value_to_float_if_possible as to_float,
    )
    from mlflow.utils.time import get_current_time_millis

    log_metric, log_batch = TrackingServiceClient.log_metric, TrackingServiceClient.log_batch

    def logged_metric(self, run_id, key, value, timestamp=None, step=None, *args, **kwargs):
        rec = _recorders.get(run_id)
        if rec is None:
            return log_metric(self, run_id, key, value, timestamp, step, *args, **kwargs)
        # fixed here, so the point recorded is the point sent
        timestamp = timestamp if timestamp is not None else get_current_time_millis()
        step = step if step is not None else 0
        try:
            out = log_metric(self, run_id, key, value, timestamp, step, *args, **kwargs)
        except BaseException:
            _record(rec, None, [key])
            raise
        _record(rec, lambda: [(key, to_float(value), timestamp, step)], [key])
        return out

    def logged_batch(self, run_id, metrics=(), *args, **kwargs):
        rec = _recorders.get(run_id)
        if rec is None or not metrics:
            return log_batch(self, run_id, metrics, *args, **kwargs)
        try:
            out = log_batch(self, run_id, metrics, *args, **kwargs)
        except BaseException:
            _record(rec, None, [m.key for m in metrics])
            raise
        _record(rec, lambda: [(m.key, to_float(m.value), m.timestamp, m.step)
                              for m in metrics], [m.key for m in metrics])
        return out

    logged_metric.__wrapped__, logged_batch.__wrapped__ = log_metric, log_batch
    TrackingServiceClient.log_metric = logged_metric
    TrackingServiceClient.log_batch = logged_batch
    _hooked = True


def _record(rec: Recorder, points, keys: list[str]) -> None:
    """Record ``points()`` (None: the logging failed); keys whose points could not be
    recorded are left out of the snapshot. Never raises into the program's logging."""
    try:
        if points is None:
            rec.fail(keys)
            return
        rec.add(points())
    except Exception as exc:
        log.warning("metrics snapshot of run %s: %s not recorded (%s); read from the "
                    "tracking server", rec.run_id, ", ".join(sorted(set(keys))), exc)
        try:
            rec.fail(keys)
        except Exception:  # noqa: S110  (nothing left to do; the server has the points)
            pass


# -- the artifact ------------------------------------------------------------------------
def encode(run_id: str, snapshot: Mapping[str, list[Point]]) -> bytes:
    """The artifact's bytes: gzip'd strict JSON (NaN as null)."""
    metrics = {}
    for key, points in snapshot.items():
        metrics[key] = {"step": [p[0] for p in points], "timestamp": [p[1] for p in points],
                        "value": [None if math.isnan(p[2]) else p[2] for p in points]}
    body = json.dumps({"format": FORMAT, "version": VERSION, "run_id": run_id,
                       "metrics": metrics}, separators=(",", ":"), allow_nan=False)
    return gzip.compress(body.encode("utf-8"), compresslevel=5)


def decode(data: bytes, run_id: str | None = None) -> dict[str, list[Point]]:
    """The snapshot in ``data``. Raises SnapshotError when it is not a readable snapshot
    (of ``run_id``, when given)."""
    try:
        doc = json.loads(gzip.decompress(data))
    except (OSError, EOFError, ValueError) as exc:
        raise SnapshotError(f"not a gzip'd JSON document ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(f"not a {FORMAT} document")
    if doc.get("version") != VERSION:
        raise SnapshotError(f"version {doc.get('version')!r}; this replab reads {VERSION}")
    if run_id is not None and doc.get("run_id") != run_id:
        raise SnapshotError(f"written for run {doc.get('run_id')!r}, not {run_id}")
    out = {}
    try:
        for key, arrays in doc["metrics"].items():
            steps, stamps, values = arrays["step"], arrays["timestamp"], arrays["value"]
            if not len(steps) == len(stamps) == len(values):
                raise SnapshotError(f"metric {key!r}: arrays of unequal length")
            out[str(key)] = [(int(s), int(t), math.nan if v is None else float(v))
                             for s, t, v in zip(steps, stamps, values, strict=True)]
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotError(f"malformed metrics ({type(exc).__name__}: {exc})") from None
    return out


def merge(earlier: Mapping[str, list[Point]], later: Mapping[str, list[Point]]
          ) -> dict[str, list[Point]]:
    """The points of two processes' snapshots of one run (``replab run``'s child, then the
    parent's own): deduplicated, in the server's order (:func:`server_order`)."""
    out = {}
    for key in {**earlier, **later}:
        seen, points = set(), []
        for point in [*earlier.get(key, ()), *later.get(key, ())]:
            ident = (point[0], point[1], stored_value(point[2]))
            if ident not in seen:
                seen.add(ident)
                points.append(point)
        out[key] = server_order(points)
    return out


def _uploaded(client: Any, run_id: str) -> dict[str, list[Point]] | None:
    """The run's snapshot already uploaded (by another process), if a readable one."""
    try:
        with tempfile.TemporaryDirectory(prefix="replab-snapshot-") as tmp:
            path = client.download_artifacts(run_id, ARTIFACT, tmp)
            with open(path, "rb") as fh:
                return decode(fh.read(), run_id)
    except Exception as exc:
        log.debug("no earlier metrics snapshot of %s: %s", run_id, exc)
        return None


def upload(client: Any, run_id: str, snapshot: Mapping[str, list[Point]]) -> None:
    """Log ``snapshot`` as run ``run_id``'s :data:`ARTIFACT`. Raises what the client
    raises."""
    folder, _, name = ARTIFACT.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="replab-snapshot-") as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as fh:
            fh.write(encode(run_id, snapshot))
        client.log_artifact(run_id, path, folder)


# -- validating against the server -------------------------------------------------------
def latest(points: Iterable[Point]) -> Point | None:
    """MLflow's latest point: the largest ``(step, timestamp, stored value)``; of equal
    ones, the first logged (the SQL store replaces only a strictly larger one)."""
    best, best_key = None, None
    for point in points:
        key = (point[0], point[1], stored_value(point[2])[1])
        if best_key is None or key > best_key:
            best, best_key = point, key
    return best


def same_point(a: Point, b: Point) -> bool:
    """Equal step, timestamp and value as the SQL store keeps them (NaN equals NaN)."""
    return (int(a[0]), int(a[1])) == (int(b[0]), int(b[1])) and \
        stored_value(float(a[2])) == stored_value(float(b[2]))


def usable_keys(snapshot: Mapping[str, list[Point]], server_latest: Mapping[str, Point]
                ) -> set[str]:
    """The keys whose snapshot ends where the server says the run's metric ends
    (``server_latest``: key -> the server's latest ``(step, timestamp, value)``)."""
    out = set()
    for key, point in server_latest.items():
        mine = latest(snapshot.get(key) or ())
        if mine is not None and same_point(mine, point):
            out.add(key)
    return out


def histories(snapshot: Mapping[str, list[Point]], keys: Iterable[str]
              ) -> dict[str, list[tuple[int, float]]]:
    """``(step, value)`` of each key as the server reads them back, in snapshot order."""
    return {key: [(s, _read_value(v)) for s, _, v in snapshot[key]] for key in keys}
