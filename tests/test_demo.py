"""`make demo`'s command, end to end on site=local: configure -> credentials -> provision
(local checks) -> lab -> example run -> replay -> verdict -> teardown (lab kept)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_replab_demo_ends_in_a_verdict_with_a_running_lab(tmp_path):
    wd = tmp_path / "demo"
    cli = [sys.executable, "-m", "replab.cli"]
    try:
        out = subprocess.run([*cli, "demo", "--workdir", str(wd)], cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        text = out.stdout
        for nb in ("0_configure", "1_create_credentials", "2_provision", "3_launch_lab",
                   "4_replay", "5_teardown"):
            assert f"{nb} ok" in text, nb
        assert re.search(r"MLflow: http://127\.0\.0\.1:\d+", text)
        assert f"(token: {wd / 'secrets' / 'lab.env'})" in text  # where, never "secrets/..."
        for noise in ("without encryption", "KeyboardInterrupt caught", "IPKernelApp"):
            assert noise not in text + out.stderr
        assert re.search(r"run [0-9a-f]{32}: http://127\.0\.0\.1:\d+/#/experiments/", text)
        assert "verdict REPRODUCED" in text
        status = subprocess.run([*cli, "lab", "status", "--workdir", str(wd)],
                                capture_output=True, text=True)
        assert status.returncode == 0 and status.stdout.startswith("lab: healthy")
        assert re.search(r"^mlflow +yes +yes ", status.stdout, re.M)
        as_json = subprocess.run([*cli, "lab", "status", "--json", "--workdir", str(wd)],
                                 capture_output=True, text=True)
        assert '"healthy": true' in as_json.stdout
        assert list((wd / "buckets" / "demo-backups").rglob("*.json"))  # teardown backed up
    finally:
        subprocess.run([*cli, "lab", "stop", "--workdir", str(wd)], capture_output=True)
