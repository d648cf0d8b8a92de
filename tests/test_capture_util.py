"""The captures' small helpers: subprocesses started to run beside other work."""

from __future__ import annotations

import sys

import pytest

from replab.capture._util import finish, start, stop


def test_started_processes_finish_or_stop():
    proc = start([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"])
    done = finish(proc)
    assert (done.returncode, done.stdout.strip(), done.args[0]) == (3, b"out", sys.executable)
    slow = start([sys.executable, "-c", "import time; time.sleep(60)"])
    stop(slow)
    assert slow.returncode is not None
    with pytest.raises(FileNotFoundError):
        start(["replab-no-such-program"])
