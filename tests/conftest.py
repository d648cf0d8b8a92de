"""Shared fixtures. Fixtures build real things (files, repos, servers), not patches."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_mlflow", "tests.fixtures_openstack", "tests.fixtures_ssh",
                  "tests.fixtures_cloud"]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in ROOT.glob("[0-9]_*.ipynb"))

# Notebook kernels started by papermill must import this checkout's replab.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


def basic(site: str = "CHI@UC", **extra) -> dict:
    """A valid Basic-mode answer set for ``site``."""
    d = {"experiment": "exp1", "repository": "https://github.com/acme/proj.git",
         "frameworks": ["pytorch"], "site": site}
    d.update(extra)
    return d


@pytest.fixture(scope="module", autouse=True)
def _forget_tracking_uri():
    """replab.tracking sets mlflow's process-wide tracking URI; a module's server is stopped
    at its end, so the next module starts without one (it names its own server)."""
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


def pytest_collection_modifyitems(config, items) -> None:
    """The tests against the local OpenStack control plane run together, last: its session
    fixture starts it at the first of them, and it idles through nothing else (it takes
    memory and some CPU while up)."""
    items.sort(key=lambda item: item.get_closest_marker("openstack") is not None)
