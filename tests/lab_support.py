"""Helpers for the lab tests: work directories PostgreSQL can reach, configs with their
secrets, example runs logged through the lab and checked back, listening sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replab import clientfiles, config, credentials, secretsstore
from replab.errors import ConfigError


def need_postgres() -> None:
    """Fail (skip with REPLAB_SKIP_SERVICES=1) when PostgreSQL's programs are missing."""
    from replab.lab import local

    try:
        local.pg_bin_dir()
    except ConfigError as exc:
        if os.environ.get("REPLAB_SKIP_SERVICES") == "1":
            pytest.skip(f"REPLAB_SKIP_SERVICES=1: {exc}")
        pytest.fail(f"{exc}; run `bash tests/services/install.sh`", pytrace=False)


@contextlib.contextmanager
def lab_workdir(stem: str = "lab") -> Iterator[Path]:
    """A fresh directory under /tmp that the ``postgres`` system user can traverse (pytest's
    own tmp_path lies under a 0700 directory), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=f"replab-test-{stem}-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base / "work"
    except BaseException:
        # the services' logs go with the failure report (the directory is removed below)
        for log in sorted((base / "work" / "lab" / "logs").glob("*.log")):
            print(f"--- {log.name} (end) ---\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        shutil.rmtree(base, ignore_errors=True)


def local_config(workdir: Path, backend: str = "sqlite", *, s3_endpoint: str | None = None,
                 ec2: dict[str, str] | None = None, experiment: str | None = None):
    """A site=local config in ``workdir`` with its secrets made as 1_create_credentials
    makes them; with ``s3_endpoint`` and ``ec2`` keys the lab uses the S3 buckets."""
    raw: dict[str, Any] = {"experiment": experiment or f"lab{uuid.uuid4().hex[:6]}",
                           "frameworks": ["sklearn"], "site": "local", "workdir": str(workdir),
                           "lab": {"mlflow_backend": backend}}
    if s3_endpoint:
        raw["endpoints"] = {"s3_endpoint": s3_endpoint}
    cfg = config.build(raw)
    config.save(cfg)
    credentials.setup(cfg)
    if ec2:
        store = secretsstore.SecretsStore(cfg.workdir)
        data = store.credentials()
        data["ec2"] = {"access": ec2["access"], "secret": ec2["secret"]}
        store.save_credentials(data)
        clientfiles.write_client_files(cfg, store)
    return cfg


def token(cfg) -> str:
    return secretsstore.SecretsStore(cfg.workdir).lab_env()["JUPYTER_TOKEN"]


def log_example_runs(url: str, experiment: str, tmp: Path, runs: int = 2,
                     points: int = 25) -> dict[str, dict[str, Any]]:
    """Log ``runs`` runs through replab.tracking (params, ``points`` points of two metrics,
    an artifact); returns what each should hold, by run id."""
    from replab import tracking

    expected: dict[str, dict[str, Any]] = {}
    for r in range(runs):
        params = {"lr": 0.1 * (r + 1), "layers": r + 2, "note": f"run {r}"}
        loss = [(i, 1.0 / (i + 1 + r)) for i in range(points)]
        acc = [(i, i / points + r / 100) for i in range(points)]
        text = f"artifact of run {r}: {uuid.uuid4().hex}\n"
        path = tmp / f"notes-{r}.txt"
        path.write_text(text)
        with tracking.start_run(experiment=experiment, params=params, tracking_uri=url,
                                capture=False, run_name=f"example-{r}") as run:
            for (step, lv), (_, av) in zip(loss, acc, strict=True):
                run.log_metrics({"loss": lv, "acc": av}, step=step)
            run.log_artifact(path, "notes")
        expected[run.run_id] = {"params": {k: str(v) for k, v in params.items()},
                                "metrics": {"loss": loss, "acc": acc},
                                "artifact": ("notes/" + path.name, text)}
    return expected


def assert_runs_present(url: str, expected: dict[str, dict[str, Any]], tmp: Path) -> None:
    """Every run, param, metric point (full history) and artifact, read through ``url``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    for run_id, want in expected.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for key, value in want["params"].items():
            assert run.data.params[key] == value
        for key, series in want["metrics"].items():
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            assert history == series, f"{run_id} {key}: {len(history)} of {len(series)} points"
        name, text = want["artifact"]
        dest = tmp / f"dl-{run_id}-{time.monotonic_ns()}"
        dest.mkdir()
        local = client.download_artifacts(run_id, name, str(dest))
        assert Path(local).read_text() == text


def family(pids) -> list:
    """psutil.Process objects of ``pids`` and all their descendants (those still alive)."""
    import psutil

    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def listening(procs) -> list[tuple[int, str, int]]:
    """``(pid, ip, port)`` of every listening TCP socket of ``procs``."""
    import psutil

    out = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                out.append((proc.pid, c.laddr.ip, c.laddr.port))
    return out


def write_points(url: str, writers: int, points: int, *, batch: int = 1000,
                 join_timeout: float = 120) -> tuple[float, dict[str, list[int]]]:
    """``writers`` threads, each its own run, log ``points`` points of metric ``m`` with
    ``log_batch`` (``batch`` a request). Returns (seconds, {run id: logged steps}). Raises
    the first writer's error, or AssertionError when a writer is still running."""
    import threading
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp = client.create_experiment(f"load-{time.time_ns()}")
    run_ids = [client.create_run(exp).info.run_id for _ in range(writers)]
    errors: list[BaseException] = []

    def write(run_id: str) -> None:
        try:
            c = MlflowClient(tracking_uri=url)
            now = int(time.time() * 1000)
            pts = [Metric("m", float(i), now, i) for i in range(points)]
            for k in range(0, points, batch):
                c.log_batch(run_id, metrics=pts[k:k + batch])
        except BaseException as exc:  # raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(r,)) for r in run_ids]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=join_timeout)
    took = time.monotonic() - t0
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), f"writers still running after {took:.0f}s"
    return took, {r: sorted(m.step for m in client.get_metric_history(r, "m"))
                  for r in run_ids}
