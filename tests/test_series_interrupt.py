"""Ctrl-C during a headless series: one line, exit 130, no kernel left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil

from tests.conftest import ROOT


def _waiting_notebook(root: Path, marker: Path) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('workdir: str = "work"  # work directory')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(300)\n")
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, root / "0_wait.ipynb")


def test_ctrl_c_during_a_notebook_says_one_line_and_leaves_no_kernel(tmp_path):
    root = tmp_path / "artifact"
    root.mkdir()
    marker = tmp_path / "kernel.pid"
    _waiting_notebook(root, marker)
    # Ctrl-C in a terminal signals the whole foreground process group: do the same.
    proc = subprocess.Popen([sys.executable, "-m", "replab.cli", "series", "--root", str(root),
                             "--workdir", str(tmp_path / "work")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the notebook never started"
            time.sleep(0.2)
        kernel = int(marker.read_text())
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    assert "interrupted during 0_wait" in err
    assert "0_wait interrupted" in out
    gone = time.monotonic() + 30
    while psutil.pid_exists(kernel) and psutil.Process(kernel).status() != "zombie":
        assert time.monotonic() < gone, f"kernel {kernel} still runs after the interrupt"
        time.sleep(0.2)
