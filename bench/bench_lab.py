"""The local lab under load: metric throughput of 8 concurrent writers, sqlite vs PostgreSQL,
and artifact upload speed through the lab (MLflow proxied artifacts into S3 on the local
Swift) vs a raw boto3 upload to the same bucket.

Target: a proxied artifact upload at least 0.8x the speed of the raw boto3 upload.

    .venv/bin/python bench/bench_lab.py [--writers 8] [--points 2000] [--mib 50] [--repeat 3]
                                        [--no-postgres] [--no-s3]

Starts its own labs in temporary work directories, and the local OpenStack (Keystone +
Swift, tests/services/openstack.py) for the S3 part unless it is already running; stops
everything it started, deletes its buckets and credentials.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from replab import s3client, storage  # noqa: E402
from replab.lab import local  # noqa: E402
from tests.lab_support import lab_workdir, local_config, write_points  # noqa: E402

MiB = 1024 * 1024


def load(url: str, writers: int, points: int, batch: int = 1000) -> tuple[float, int]:
    """``writers`` threads, each its own run, ``points`` points of one metric in batches of
    ``batch`` (log_batch). Returns (seconds, points verified present)."""
    took, steps = write_points(url, writers, points, batch=batch, join_timeout=600)
    return took, sum(len(s) for s in steps.values())


def bench_load(args) -> dict[str, float]:
    backends = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
    rates = {}
    for backend in backends:
        with lab_workdir(f"bench-{backend}") as workdir:
            cfg = local_config(workdir, backend)
            t0 = time.perf_counter()
            info = local.launch(cfg)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            local.launch(cfg)
            warm = time.perf_counter() - t0
            try:
                total = args.writers * args.points
                for batch in (1000, 100):
                    times = []
                    for _ in range(args.repeat):
                        took, present = load(info.mlflow_url, args.writers, args.points, batch)
                        assert present == total, f"{present} of {total} points"
                        times.append(took)
                    best = statistics.median(times)
                    rates[(backend, batch)] = total / best
                    print(f"load {backend:10s} {args.writers} writers x {args.points} points, "
                          f"batches of {batch:4d}: {best:6.2f} s  {total / best:9.0f} points/s"
                          f"  (all {total} present)")
                print(f"launch {backend:8s} cold {cold:5.1f} s, reuse {warm * 1000:5.0f} ms")
            finally:
                local.stop(cfg)
    if ("postgresql", 1000) in rates:
        for batch in (1000, 100):
            print(f"ratio postgresql/sqlite (batches of {batch}): "
                  f"{rates[('postgresql', batch)] / rates[('sqlite', batch)]:.2f}x")
    return rates


def _openstack():
    from tests import fixtures_openstack as fo

    directory = fo.state_dir()
    running = fo.run_script("status", directory, timeout=60).returncode == 0
    up = fo.run_script("up", directory)
    if up.returncode != 0:
        raise SystemExit(f"local OpenStack did not start:\n{up.stdout}{up.stderr}")
    return fo.LocalOpenStack.from_state(directory / "openstack.json"), running, directory


def _ec2(stack):
    """An EC2 credential (tests.fixtures_openstack.ec2_credential) and how to delete it."""
    import contextlib

    from tests.fixtures_openstack import ec2_credential

    resources = contextlib.ExitStack()
    cred = resources.enter_context(ec2_credential(stack))
    return {"access": cred["access"], "secret": cred["secret"]}, resources.close


def bench_artifacts(args) -> float:
    import mlflow
    from boto3.s3.transfer import TransferConfig
    from mlflow.tracking import MlflowClient

    stack, was_running, directory = _openstack()
    ec2, forget = _ec2(stack)
    try:
        with lab_workdir("bench-s3") as workdir:
            cfg = local_config(workdir, "sqlite", s3_endpoint=stack.s3_endpoint, ec2=ec2)
            s3 = s3client.s3_client(stack.s3_endpoint, ec2["access"], ec2["secret"])
            buckets = [cfg.buckets.artifacts, cfg.buckets.backups]
            storage.ensure_buckets(s3, buckets)
            info = local.launch(cfg)
            try:
                blob = workdir / "blob.bin"
                with open(blob, "wb") as fh:
                    for _ in range(args.mib):
                        fh.write(os.urandom(MiB))
                size = blob.stat().st_size
                client = MlflowClient(tracking_uri=info.mlflow_url)
                mlflow.set_tracking_uri(info.mlflow_url)
                exp = client.create_experiment(f"bench-artifacts-{uuid.uuid4().hex[:6]}")
                lab_times, raw_times = [], []
                for i in range(args.repeat):
                    run_id = client.create_run(exp).info.run_id
                    t0 = time.perf_counter()
                    client.log_artifact(run_id, str(blob), "data")
                    lab_times.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    # what boto3 does by default (multipart 8 MiB parts, 10 threads)
                    s3.upload_file(str(blob), cfg.buckets.artifacts, f"raw/{i}/blob.bin",
                                   Config=TransferConfig())
                    raw_times.append(time.perf_counter() - t0)
                lab_t, raw_t = statistics.median(lab_times), statistics.median(raw_times)
                lab_speed, raw_speed = size / MiB / lab_t, size / MiB / raw_t
                print(f"artifact {args.mib} MiB through the lab (mlflow.log_artifact, proxied): "
                      f"{lab_t:5.2f} s  {lab_speed:6.1f} MiB/s")
                print(f"artifact {args.mib} MiB raw boto3 upload_file to the same bucket:    "
                      f"{raw_t:5.2f} s  {raw_speed:6.1f} MiB/s")
                ratio = lab_speed / raw_speed
                print(f"ratio lab/raw speed: {ratio:.2f}x (target >= 0.80)")
                return ratio
            finally:
                local.stop(cfg)
                for name in buckets:
                    storage.delete_bucket(s3, name, force=True)
    finally:
        forget()
        if not was_running:
            from tests import fixtures_openstack as fo

            fo.run_script("down", directory, timeout=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--mib", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--no-s3", action="store_true")
    a = p.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, mlflow {version('mlflow')}, "
          f"{a.writers} writers x {a.points} points, {a.mib} MiB artifact, median of "
          f"{a.repeat}")
    bench_load(a)
    if not a.no_s3:
        bench_artifacts(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
