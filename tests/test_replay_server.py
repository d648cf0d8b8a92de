"""A replay never falls back to MLflow's default store (a stray mlflow.db in the workspace)."""

import signal
import subprocess
import sys
import time

import psutil
import pytest

from replab import replay
from replab.errors import ConfigError


def test_execute_without_a_tracking_server_refuses_and_writes_no_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    source = replay.Source(run_id="0" * 32, experiment="demo", params={}, tags={}, metrics={},
                           manifest={"entrypoint": {"kind": "script", "argv": ["train.py"]}},
                           lock=None, origin="bundle run.tar.gz")
    with pytest.raises(ConfigError, match="no MLflow tracking server"):
        replay.execute(source, tmp_path, sys.executable)
    assert not list(tmp_path.rglob("mlflow.db")) and not (tmp_path / "mlruns").exists()


_LAUNCHER = """
import sys
from pathlib import Path
from replab import replay
ws = Path(sys.argv[1])
source = replay.Source(run_id="0" * 32, experiment="demo", params={}, tags={}, metrics={},
                       manifest={"captures": {"entrypoint": {"kind": "script",
                                                             "path": "train.py"}}},
                       lock=None, origin="bundle run.tar.gz")
replay.execute(source, ws, sys.executable, tracking_uri=sys.argv[2])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_replay_leaves_no_replayed_program_running(tmp_path, sig):
    ws = tmp_path / "ws"
    ws.mkdir()
    pid_file = tmp_path / "program.pid"
    (ws / "train.py").write_text(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(ws),
                             f"sqlite:///{tmp_path}/mlflow.db"])
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        program = int(pid_file.read_text())
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    gone = time.monotonic() + 30
    while psutil.pid_exists(program) and psutil.Process(program).status() != "zombie":
        assert time.monotonic() < gone, f"the replayed program {program} outlived its replay"
        time.sleep(0.1)
