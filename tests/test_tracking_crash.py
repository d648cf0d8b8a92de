"""A tracked program that dies (SIGTERM, kill -9, os._exit) keeps its metrics and its run
ends with a status that says so, against a real MLflow server and real signals.

The programs write a marker file once the state under test is reached; the tests wait for
it, then kill. Nothing asserts on how long anything took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from replab import tracking
from tests.gitrepo import make_repo

N = 500  # under a batch (1000): only a time flush or the SIGTERM handler can send them


def _program(body: str) -> str:
    return textwrap.dedent("""\
        import os, sys, time
        from pathlib import Path
        import replab.tracking as t
        marker = Path(sys.argv[1])

        def ready(run):
            marker.with_suffix('.tmp').write_text(f"{os.getpid()} {run.run_id}")
            marker.with_suffix('.tmp').rename(marker)
        """) + textwrap.dedent(body)


def _wait_for(marker: Path, proc: subprocess.Popen, deadline_s: float = 180) -> tuple[int, str]:
    """(pid, run id) the program wrote once ready; fails with its output if it died first."""
    end = time.monotonic() + deadline_s
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the program ended before it was ready: {out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"the program never got ready: {proc.communicate()}")
        time.sleep(0.05)
    pid, run_id = marker.read_text().split()
    return int(pid), run_id


def _start(repo: Path, script: str, *, under_runner: bool, experiment: str):
    (repo / "prog.py").write_text(script)
    marker = repo.parent / "ready"
    cmd = [sys.executable, "prog.py", str(marker)]
    if under_runner:
        cmd = [sys.executable, "-m", "replab.cli", "run", "-e", experiment, "--", *cmd]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    return proc, marker


def _steps(run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def test_sigterm_sends_every_buffered_point_and_ends_the_run_killed(tracking_uri, tmp_path):
    # flush_interval=0: no background sender, so the points can only arrive via the handler
    script = _program(f"""\
        with t.start_run(experiment='t-crash-term', capture=False, flush_interval=0) as run:
            for i in range({N}):
                run.log_metrics({{'loss': 1.0 / (i + 1)}}, step=i)
            assert len(run._buffer) == {N}  # nothing sent yet
            ready(run)
            time.sleep(600)
        """)
    proc, marker = _start(make_repo(tmp_path / "p"), script, under_runner=False,
                          experiment="t-crash-term")
    _, run_id = _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, err  # it still dies by the signal
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "KILLED"
    assert r.data.tags[tracking.TAG_SIGNAL] == "SIGTERM"
    assert _steps(run_id) == list(range(N))


def test_a_programs_own_sigterm_handler_still_runs_after_the_flush(tracking_uri, tmp_path):
    script = _program(f"""\
        import signal

        def own(signum, frame):
            Path(sys.argv[1] + '.own').write_text('handled')
            sys.exit(3)

        signal.signal(signal.SIGTERM, own)
        with t.start_run(experiment='t-crash-chain', capture=False, flush_interval=0) as run:
            for i in range({N}):
                run.log_metrics({{'loss': float(i)}}, step=i)
            ready(run)
            time.sleep(600)
        """)
    proc, marker = _start(make_repo(tmp_path / "p"), script, under_runner=False,
                          experiment="t-crash-chain")
    _, run_id = _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err  # the program's handler decided how it ends
    assert Path(str(marker) + ".own").read_text() == "handled"
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "KILLED" and r.data.tags[tracking.TAG_SIGNAL] == "SIGTERM"
    assert _steps(run_id) == list(range(N))


def test_kill_9_under_replab_run_keeps_points_older_than_a_second_and_ends_killed(
        tracking_uri, tmp_path):
    # no flush call, batch never full: only the time-based sender can have sent these
    script = _program(f"""\
        with t.start_run(experiment='t-crash-kill9', capture=False) as run:
            for i in range({N}):
                run.log_metrics({{'loss': float(i)}}, step=i)
            time.sleep(2.5)
            ready(run)
            time.sleep(600)
        """)
    proc, marker = _start(make_repo(tmp_path / "p"), script, under_runner=True,
                          experiment="t-crash-kill9")
    pid, run_id = _wait_for(marker, proc)
    os.kill(pid, signal.SIGKILL)  # the program, not `replab run`
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "KILLED", err
    assert r.data.tags[tracking.TAG_SIGNAL] == "SIGKILL"
    assert r.data.tags[tracking.TAG_EXIT_CODE] == "-9"
    assert _steps(run_id) == list(range(N))


def test_os_exit_inside_the_run_under_replab_run_is_not_left_running(tracking_uri, tmp_path):
    script = _program("""\
        with t.start_run(experiment='t-crash-exit', capture=False) as run:
            run.log_metrics({'loss': 1.0}, step=0)
            ready(run)
            os._exit(0)
        """)
    proc, marker = _start(make_repo(tmp_path / "p"), script, under_runner=True,
                          experiment="t-crash-exit")
    _, run_id = _wait_for(marker, proc)
    _, err = proc.communicate(timeout=300)
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "FAILED", err
    assert r.data.tags[tracking.TAG_EXIT_CODE] == "0"
    assert "without ending it" in r.data.tags["replab.exit_note"]
    assert tracking.TAG_OPEN not in r.data.tags


def test_a_run_the_program_ends_normally_under_replab_run_is_finished(tracking_uri, tmp_path):
    script = _program("""\
        with t.start_run(experiment='t-crash-normal', capture=False) as run:
            run.log_metrics({'loss': 1.0}, step=0)
            ready(run)
        """)
    proc, marker = _start(make_repo(tmp_path / "p"), script, under_runner=True,
                          experiment="t-crash-normal")
    _, run_id = _wait_for(marker, proc)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags[tracking.TAG_EXIT_CODE] == "0" and tracking.TAG_SIGNAL not in r.data.tags
    assert tracking.TAG_OPEN not in r.data.tags


def test_sigterm_to_replab_run_reaches_the_program_which_saves_its_points(tracking_uri,
                                                                         tmp_path):
    script = _program(f"""\
        with t.start_run(experiment='t-crash-fwd', capture=False, flush_interval=0) as run:
            for i in range({N}):
                run.log_metrics({{'loss': float(i)}}, step=i)
            ready(run)
            time.sleep(600)
        """)
    proc, marker = _start(make_repo(tmp_path / "p"), script, under_runner=True,
                          experiment="t-crash-fwd")
    _, run_id = _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)  # to `replab run` itself
    _, err = proc.communicate(timeout=300)
    r = MlflowClient().get_run(run_id)
    assert r.info.status == "KILLED", err
    assert r.data.tags[tracking.TAG_SIGNAL] == "SIGTERM"
    assert r.data.tags[tracking.TAG_EXIT_CODE] == "-15"
    assert proc.returncode == 128 + signal.SIGTERM, err  # as a shell reports a signal death
    assert _steps(run_id) == list(range(N))
    assert "replab/stdout.txt" in [a.path for a in MlflowClient().list_artifacts(run_id,
                                                                                "replab")]


def test_the_sigterm_handler_is_put_back_when_the_run_ends(tracking_uri):
    def own(signum, frame):
        raise AssertionError("not called in this test")

    before = signal.signal(signal.SIGTERM, own)
    try:
        with tracking.start_run(experiment="t-crash-restore", capture=False):
            assert signal.getsignal(signal.SIGTERM) is not own  # ours, in front
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_ignored_sigterm_stays_ignored(tracking_uri):
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with tracking.start_run(experiment="t-crash-ign", capture=False):
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_sys_exit_zero_inside_the_run_is_finished_and_nonzero_failed(tracking_uri):
    with pytest.raises(SystemExit):
        with tracking.start_run(experiment="t-crash-sysexit", capture=False) as ok:
            sys.exit(0)
    with pytest.raises(SystemExit):
        with tracking.start_run(experiment="t-crash-sysexit", capture=False) as bad:
            sys.exit(2)
    client = MlflowClient()
    assert client.get_run(ok.run_id).info.status == "FINISHED"
    assert client.get_run(bad.run_id).info.status == "FAILED"
