"""A replay never falls back to MLflow's default store (a stray mlflow.db in the workspace)."""

import sys

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
