"""A real MLflow tracking server (sqlite backend, proxied local artifacts) for the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class MlflowServer:
    url: str
    root: Path
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(root: Path, backend: str | None = None, timeout: float = 300) -> MlflowServer:
    """Start ``mlflow server`` on a free loopback port; raises RuntimeError with its log."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "server.log"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", backend or f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return MlflowServer(url, root, proc, log)
        except OSError:
            time.sleep(0.25)
    stop_mlflow(MlflowServer(url, root, proc, log))
    raise RuntimeError(f"mlflow server not healthy after {timeout}s: {log.read_text()[-2000:]}")


def stop_mlflow(server: MlflowServer) -> None:
    import signal

    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(5)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield server
    stop_mlflow(server)


@pytest.fixture
def tracking_uri(mlflow_server, monkeypatch):
    """MLFLOW_TRACKING_URI pointing at the session's server, for this test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow.set_tracking_uri(mlflow_server.url)
    yield mlflow_server.url
    if mlflow.active_run():
        mlflow.end_run()
