"""replab.lab.local under signals: a real process runs the launch and gets SIGINT, SIGTERM or
SIGKILL while a service is recorded but not yet ready; afterwards no process of the lab may
run unrecorded, and the next launch comes up on the same ports. Plus what a launch, status
and stop do about a server of this lab that no record names (left by an older replab)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from replab.errors import ConfigError
from replab.lab import local
from tests.lab_support import lab_workdir, local_config

pytestmark = pytest.mark.services

# The launch as 3_launch_lab's kernel or the CLI runs it. While the file argv[2] exists the
# launcher sees the service argv[3] as not ready yet (the service itself runs for real), so
# the signal always lands between "recorded" and "ready".
LAUNCH = """
import sys
from pathlib import Path
from replab import config
from replab.lab import local
gate, held = Path(sys.argv[2]), sys.argv[3]
real = local._http
def http(url, *args, **kwargs):
    probe = "/health" if held == "mlflow" else "/api/status"
    if gate.exists() and url.endswith(probe):
        return 0
    return real(url, *args, **kwargs)
local._http = http
try:
    local.launch(config.load(sys.argv[1]), progress=lambda m: print("said:", m, flush=True))
except KeyboardInterrupt as exc:
    print("interrupted:", exc, flush=True)
    sys.exit(130)
"""


def lab_processes(workdir: Path) -> dict[int, str]:
    """Every process of the lab in ``workdir`` (by /proc): its mark in the environment, or
    a command line naming the lab directory; not this test process."""
    root = str((workdir / "lab").absolute())
    found = {}
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            line = " ".join(proc.cmdline())
            if root + "/" in line or proc.environ().get("REPLAB_LAB_DIR") == root:
                found[proc.pid] = line
        except (psutil.Error, OSError):
            continue
    return found


def recorded_family(workdir: Path) -> set[int]:
    state = json.loads((workdir / "lab" / "local.json").read_text())
    pids = set()
    for record in state.get("services", {}).values():
        try:
            proc = psutil.Process(record["pid"])
            pids |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
    return pids


def unrecorded(workdir: Path) -> dict[int, str]:
    """The lab's processes that no record of local.json accounts for (neither a recorded
    server nor one of its descendants). A process seen in the first look that has exited by
    the time the records' families are read was a short-lived child (a server's worker or
    helper starting and ending), not one left running, so it does not count."""
    seen = lab_processes(workdir)
    family = recorded_family(workdir)
    left = {}
    for pid, line in seen.items():
        if pid in family:
            continue
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left[pid] = line
        except psutil.NoSuchProcess:
            continue
    return left


def wait_recorded(workdir: Path, service: str, launcher: subprocess.Popen,
                  limit: float = 240) -> dict:
    """local.json's record of ``service`` once the launch has written it (the launcher
    must still be running)."""
    state_file = workdir / "lab" / "local.json"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert launcher.poll() is None, launcher.communicate()
        try:
            record = json.loads(state_file.read_text())["services"].get(service)
        except (FileNotFoundError, ValueError, KeyError):
            record = None
        if record and psutil.pid_exists(record["pid"]):
            return record
        time.sleep(0.05)
    raise AssertionError(f"{service} never appeared in {state_file}")


@pytest.fixture
def lab(python):
    with lab_workdir("signals") as workdir:
        cfg = local_config(workdir, "sqlite")
        gate = workdir / "hold"
        gate.write_text("")
        try:
            yield cfg, workdir, gate
        finally:
            local.stop(cfg)


def start_launcher(python, workdir: Path, gate: Path, held: str) -> subprocess.Popen:
    return subprocess.Popen([python, "-c", LAUNCH, str(workdir), str(gate), held],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("held", ["mlflow", "jupyter"])
def test_ctrl_c_before_ready_stops_what_the_launch_started(lab, python, held):
    cfg, workdir, gate = lab
    launcher = start_launcher(python, workdir, gate, held)
    record = wait_recorded(workdir, held, launcher)
    assert "ready_at" not in record and record["port"]
    first = json.loads((workdir / "lab" / "local.json").read_text())["services"]
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    said = out.split("interrupted: ", 1)[1]
    assert "interrupted (SIGINT)" in said and "no process of it is left running" in said
    for name, rec in first.items():
        assert f"{name}: stopped (pid {rec['pid']})" in said
    assert lab_processes(workdir) == {}
    state = json.loads((workdir / "lab" / "local.json").read_text())
    assert state["services"] == {}
    assert state["last_ports"] == {k: v["port"] for k, v in first.items()}
    st = local.status(cfg)
    assert not st["running"] and st["unrecorded"] == []
    assert all(s["state"] == "not recorded" for s in st["services"].values())

    gate.unlink()
    info = local.launch(cfg)
    assert {k: info.ports[k] for k in first} == {k: v["port"] for k, v in first.items()}
    assert unrecorded(workdir) == {}


def test_sigterm_before_ready_stops_it_and_ends_the_launcher_by_the_signal(lab, python):
    cfg, workdir, gate = lab
    launcher = start_launcher(python, workdir, gate, "mlflow")
    record = wait_recorded(workdir, "mlflow", launcher)
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == -signal.SIGTERM, err[-3000:]
    assert f"mlflow: stopped (pid {record['pid']})" in out
    assert "interrupted (SIGTERM)" in out
    assert lab_processes(workdir) == {}
    assert not psutil.pid_exists(record["pid"]) or \
        psutil.Process(record["pid"]).status() == psutil.STATUS_ZOMBIE

    gate.unlink()
    info = local.launch(cfg)
    assert info.ports["mlflow"] == record["port"]


def test_sigkill_before_ready_leaves_it_recorded_and_the_next_launch_adopts_it(lab, python):
    cfg, workdir, gate = lab
    launcher = start_launcher(python, workdir, gate, "mlflow")
    record = wait_recorded(workdir, "mlflow", launcher)
    launcher.kill()
    launcher.communicate(timeout=60)
    # nothing stopped it: it runs, and local.json names it and its descendants
    assert record["pid"] in lab_processes(workdir)
    assert unrecorded(workdir) == {}
    st = local.status(cfg)
    assert st["services"]["mlflow"]["state"] in ("starting", "running")
    assert st["services"]["mlflow"]["pid"] == record["pid"] and st["unrecorded"] == []

    said: list[str] = []
    info = local.launch(cfg, progress=said.append)
    assert info.pids["mlflow"] == record["pid"] and info.ports["mlflow"] == record["port"]
    assert any("mlflow: reused" in s for s in said), said
    assert unrecorded(workdir) == {}


def test_a_recorded_server_that_died_is_replaced_on_its_port(lab, python):
    cfg, workdir, gate = lab
    launcher = start_launcher(python, workdir, gate, "mlflow")
    record = wait_recorded(workdir, "mlflow", launcher)
    launcher.kill()
    launcher.communicate(timeout=60)
    os.killpg(record["pid"], signal.SIGKILL)
    psutil.wait_procs([psutil.Process(record["pid"])], timeout=30)
    st = local.status(cfg)
    assert st["services"]["mlflow"]["state"] == "dead"
    assert any(line.startswith("mlflow: dead (pid") for line in st["summary"])
    info = local.launch(cfg)
    assert info.pids["mlflow"] != record["pid"] and info.ports["mlflow"] == record["port"]


def test_an_unrecorded_server_on_the_lab_database_is_named_not_doubled(lab, python):
    """A server that an older replab left behind: no record, its command line names the
    lab's database. Launch refuses (two servers on one sqlite file), status lists it with
    its port, stop ends it."""
    cfg, workdir, _ = lab
    p = local.paths(cfg)
    p.root.mkdir(parents=True, exist_ok=True)
    port = local.free_port()
    stray = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{p.sqlite}", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        deadline = time.monotonic() + 180
        while not local._http(f"http://127.0.0.1:{port}/health") == 200:
            assert stray.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        with pytest.raises(ConfigError, match=f"pid {stray.pid} \\(mlflow, listening on "
                                              f"{port}\\)") as err:
            local.launch(cfg)
        assert "replab lab stop" in str(err.value)
        assert stray.poll() is None
        st = local.status(cfg)
        assert [s["pid"] for s in st["unrecorded"]] == [stray.pid]
        assert st["unrecorded"][0]["ports"] == [port]
        assert any(f"unrecorded mlflow: pid {stray.pid} on port {port}" in line
                   for line in st["summary"])
        lines = local.stop(cfg)
        assert f"mlflow (unrecorded): stopped (pid {stray.pid})" in lines
        assert stray.wait(30) is not None
        assert lab_processes(workdir) == {}
    finally:
        if stray.poll() is None:
            os.killpg(stray.pid, signal.SIGKILL)
            stray.wait()


def test_status_names_another_program_on_the_lab_port(tmp_path):
    import socket

    cfg = local_config(tmp_path / "work")
    p = local.paths(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p.root.mkdir(parents=True)
        p.state.write_text(json.dumps({"backend": "sqlite", "services": {},
                                       "last_ports": {"mlflow": port}}))
        st = local.status(cfg)
        holder = st["services"]["mlflow"]["port_held_by"]
        assert holder["pid"] == os.getpid() and st["services"]["mlflow"]["port"] == port
        assert f"port {port} is held by pid {os.getpid()}" in " ".join(st["summary"])
        with pytest.raises(ConfigError, match=f"{port} is in use on 127.0.0.1 by pid "
                                              f"{os.getpid()}"):
            local.launch(cfg, mlflow_port=port)
