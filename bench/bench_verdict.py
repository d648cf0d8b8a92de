"""Verdict over 1e5 metric points: reading both runs (``runrecord.fetch_record``) and
comparing them (``verdict.compare``), against one local MLflow server (sqlite backend, as the
lab runs it). Target: <= 3 s for 4 metrics x 25,000 steps in each of the two runs.

The two runs are logged as real runs are, through ``replab.tracking.Run`` (batches of 1000,
recorded by the snapshot's hook; see :func:`log_run`), so each carries its metrics snapshot
(``replab/metrics.json.gz``, :mod:`replab.metricsnapshot`): the path timed against the
target. Timed side by side:

- the fallback: the same points in two runs without a snapshot (written by MLflow's own store
  into the server's database, as runs logged by other tools are), read from the server,
  up to 4 metrics at once;
- the baseline: the per-key reader replab used before (``client.get_metric_history`` for
  each metric, one after the other, then the stable sort).

The points read must be the same on every path.

    .venv/bin/python bench/bench_verdict.py [--metrics 4] [--steps 25000] [-n 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from replab import metricsnapshot, runrecord, tracking, verdict  # noqa: E402
from tests.fixtures_mlflow import start_mlflow, stop_mlflow  # noqa: E402

TARGET_S = 3.0


def _points(metrics: int, steps: int, now: int):
    return [(i, now + i // 10, {f"m{k}": 1.0 / (i + 1) + k for k in range(metrics)})
            for i in range(steps)]


def log_run(client: MlflowClient, direct: MlflowClient, exp_id: str, metrics: int,
            steps: int) -> str:
    """A finished run with ``metrics`` metrics of ``steps`` points each, logged through
    ``replab.tracking.Run`` (batches of 1000, each point recorded by metricsnapshot's hook)
    and ended as ``start_run`` ends it: the snapshot uploaded through the server. The
    batches go to MLflow's own store in this process (``direct``, a client of the server's
    database): through this server they take over a second each."""
    run_id = client.create_run(exp_id).info.run_id
    claim = metricsnapshot.hold(run_id)
    run = tracking.Run(direct, run_id, exp_id, flush_interval=0)
    for step, ts, values in _points(metrics, steps, int(time.time() * 1000)):
        run.log_metrics(values, step=step, timestamp=ts)
    run.flush()
    metricsnapshot.release(claim, client)
    client.set_terminated(run_id)
    return run_id


def log_plain_run(client: MlflowClient, store, exp_id: str, metrics: int, steps: int) -> str:
    """The same points in a run without a snapshot, 1000 a batch (MLflow's limit), written
    by MLflow's own store into the server's database (half the time of sending them through
    the server; reading, the part timed, goes through it)."""
    run_id = client.create_run(exp_id).info.run_id
    points = [Metric(key, value, ts, step) for step, ts, values
              in _points(metrics, steps, int(time.time() * 1000)) for key, value in values.items()]
    for i in range(0, len(points), 1000):
        store.log_batch(run_id, metrics=points[i:i + 1000], params=[], tags=[])
    client.set_terminated(run_id)
    return run_id


def per_key_reader(client: MlflowClient, run_id: str) -> dict:
    """The reader before: one get_metric_history per key, in turn."""
    keys = client.get_run(run_id).data.metrics
    out = {}
    for key in sorted(keys):
        history = list(client.get_metric_history(run_id, key))
        history.sort(key=lambda m: (int(m.step), int(m.timestamp or 0)))
        out[key] = [(int(m.step), float(m.value)) for m in history]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", type=int, default=4)
    p.add_argument("--steps", type=int, default=25_000)
    p.add_argument("-n", type=int, default=3, help="timed rounds, best kept (default 3)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_mlflow(Path(tmp))
        try:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            client = MlflowClient(server.url)
            store = SqlAlchemyStore(f"sqlite:///{tmp}/mlflow.db", f"{tmp}/artifacts")
            direct = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
            exp = client.create_experiment("bench-verdict")
            t0 = time.perf_counter()
            original = log_run(client, direct, exp, a.metrics, a.steps)
            replayed = log_run(client, direct, exp, a.metrics, a.steps)
            t_log = time.perf_counter() - t0
            for run_id in (original, replayed):
                assert metricsnapshot.ARTIFACT in [
                    f.path for f in client.list_artifacts(run_id, "replab")], "no snapshot"
            plain = [log_plain_run(client, store, exp, a.metrics, a.steps) for _ in range(2)]
            t_fetch, t_compare, t_plain, t_base = (float("inf"),) * 4
            for _ in range(a.n):
                t0 = time.perf_counter()
                rec_a = runrecord.fetch_record(client, original)
                rec_b = runrecord.fetch_record(client, replayed)
                t1 = time.perf_counter()
                result = verdict.compare(rec_a, rec_b)
                t2 = time.perf_counter()
                plain_a = runrecord.fetch_record(client, plain[0])
                plain_b = runrecord.fetch_record(client, plain[1])
                t3 = time.perf_counter()
                base_a = per_key_reader(client, original)
                base_b = per_key_reader(client, replayed)
                t4 = time.perf_counter()
                t_fetch, t_compare = min(t_fetch, t1 - t0), min(t_compare, t2 - t1)
                t_plain, t_base = min(t_plain, t3 - t2), min(t_base, t4 - t3)
                assert rec_a.metrics == base_a and rec_b.metrics == base_b, \
                    "the snapshot's points differ from the per-key reader's"
                assert plain_a.metrics == base_a and plain_b.metrics == base_b, \
                    "the fallback's points differ from the per-key reader's"
        finally:
            stop_mlflow(server)
    points = sum(len(v) for v in rec_a.metrics.values())
    total = t_fetch + t_compare
    print(f"points per run: {points} ({a.metrics} metrics x {a.steps} steps); logging both "
          f"runs through replab.tracking.Run took {t_log:.1f} s")
    print(f"fetch_record x2, snapshot (original, replay): {t_fetch:7.2f} s")
    print(f"verdict.compare                            : {t_compare:7.2f} s  "
          f"-> {result.verdict.value}")
    print(f"verdict total                              : {total:7.2f} s  ratio to target "
          f"{total / TARGET_S:.2f} (target <= {TARGET_S:.0f} s) "
          f"{'OK' if total <= TARGET_S else 'MISSED'}")
    print(f"fetch_record x2, no snapshot (fallback)    : {t_plain:7.2f} s  "
          f"(snapshot / fallback {t_fetch / t_plain:.2f}; verdict total "
          f"{t_plain + t_compare:.2f} s)")
    print(f"baseline per-key reader x2                 : {t_base:7.2f} s  "
          f"(snapshot / baseline {t_fetch / t_base:.2f}, fallback / baseline "
          f"{t_plain / t_base:.2f})")
    return 0 if total <= TARGET_S else 1

if __name__ == "__main__":
    sys.exit(main())
