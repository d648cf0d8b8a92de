"""Metric logging: replab's batched ``run.log_metrics`` vs a naive ``mlflow.log_metric`` loop
vs raw ``MlflowClient.log_batch``, side by side against one local MLflow server.

Targets: replab at least 60x faster than the naive loop, and within 1.5x of raw log_batch.
replab also sends buffered points at least every second (a background thread); that is on
here, as in every real run.

    .venv/bin/python bench/bench_logging.py [--points 10000] [--naive-points 10000]
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

import mlflow  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from replab import tracking  # noqa: E402
from tests.fixtures_mlflow import start_mlflow, stop_mlflow  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=10_000)
    p.add_argument("--naive-points", type=int, default=10_000,
                   help="points for the naive loop (slow: ~ms per point)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_mlflow(Path(tmp))
        try:
            os.environ["MLFLOW_TRACKING_URI"] = server.url
            mlflow.set_tracking_uri(server.url)
            client = MlflowClient()
            exp = client.create_experiment("bench-logging")
            n, naive_n = a.points, a.naive_points

            def with_replab():
                with tracking.start_run(experiment="bench-logging", capture=False) as run:
                    for i in range(n):
                        run.log_metrics({"loss": 1.0 / (i + 1)}, step=i)

            def with_raw_batch():
                run_id = client.create_run(exp).info.run_id
                now = int(time.time() * 1000)
                points = [Metric("loss", 1.0 / (i + 1), now, i) for i in range(n)]
                for k in range(0, n, 1000):
                    client.log_batch(run_id, metrics=points[k:k + 1000])
                client.set_terminated(run_id)

            def naive():
                with mlflow.start_run(experiment_id=exp):
                    for i in range(naive_n):
                        mlflow.log_metric("loss", 1.0 / (i + 1), step=i)

            timed(with_raw_batch)  # warm the server and the client
            # best of 3, interleaved, for the two fast paths; the naive loop once (slow)
            t_raw, t_replab = float("inf"), float("inf")
            for _ in range(3):
                t_raw = min(t_raw, timed(with_raw_batch))
                t_replab = min(t_replab, timed(with_replab))
            t_naive = timed(naive)
        finally:
            stop_mlflow(server)
    rate = lambda pts, t: pts / t  # noqa: E731
    r_replab, r_raw, r_naive = rate(n, t_replab), rate(n, t_raw), rate(naive_n, t_naive)
    print(f"points: {n} (naive loop: {naive_n})")
    print(f"replab run.log_metrics : {t_replab:8.3f} s  {r_replab:10.0f} points/s")
    print(f"raw MlflowClient.log_batch: {t_raw:5.3f} s  {r_raw:10.0f} points/s")
    print(f"naive mlflow.log_metric: {t_naive:8.3f} s  {r_naive:10.0f} points/s")
    speedup, overhead = r_replab / r_naive, r_raw / r_replab
    print(f"replab vs naive loop   : {speedup:6.1f}x faster   (target >= 60x)  "
          f"{'OK' if speedup >= 60 else 'MISSED'}")
    print(f"raw log_batch vs replab: {overhead:6.2f}x          (target <= 1.5x) "
          f"{'OK' if overhead <= 1.5 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
