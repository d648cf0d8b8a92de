"""replab.lab.local: the site=local lab as real processes (MLflow, JupyterLab, PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time

import psutil
import pytest

from replab.errors import ConfigError, ResourceTimeout
from replab.lab import local
from tests.lab_support import (
    assert_runs_present,
    family,
    lab_workdir,
    listening,
    local_config,
    log_example_runs,
    need_postgres,
    token,
    write_points,
)

pytestmark = pytest.mark.services




def cmdline(proc: psutil.Process) -> str:
    """The process's command line; "" once it has exited (a zombie, or reaped meanwhile:
    short-lived children come and go while the lab runs)."""
    try:
        return " ".join(proc.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return ""

def get(url: str, headers: dict | None = None):
    import requests

    return requests.get(url, headers=headers or {}, allow_redirects=False, timeout=10,
                        proxies={"http": "", "https": ""})


LAUNCH = """
import json, sys
from replab import config
from replab.lab import local
info = local.launch(config.load(sys.argv[1]), progress=lambda m: print("said:", m, flush=True))
print("info:", json.dumps(info.to_dict()))
"""


@pytest.fixture(scope="module")
def sqlite_lab(python):
    """The lab launched by another process that then exits, as 3_launch_lab's kernel does;
    the tests use and stop it from this one."""
    with lab_workdir("sqlite") as workdir:
        cfg = local_config(workdir, "sqlite")
        proc = subprocess.run([python, "-c", LAUNCH, str(workdir)], capture_output=True,
                              text=True, timeout=300)
        try:
            assert proc.returncode == 0, proc.stderr[-3000:]
            lines = proc.stdout.splitlines()
            said = [x.removeprefix("said: ") for x in lines if x.startswith("said: ")]
            info = json.loads(next(x for x in lines if x.startswith("info: "))[6:])
            yield cfg, local.LabInfo(**{**info, "notes": tuple(info["notes"])}), said
        finally:
            local.stop(cfg)


@contextlib.contextmanager
def own_lab(stem: str, backend: str = "sqlite"):
    """A lab of the calling test's own, stopped afterwards: a test that stops its lab must
    not stop the module's (the other tests would then depend on running before it)."""
    with lab_workdir(stem) as workdir:
        cfg = local_config(workdir, backend)
        info = local.launch(cfg)
        try:
            yield cfg, info
        finally:
            local.stop(cfg)


@pytest.fixture
def own_sqlite_lab():
    with own_lab("stop") as lab:
        yield lab


@pytest.fixture
def own_pg_lab():
    need_postgres()
    with own_lab("pgstop", "postgresql") as lab:
        yield lab


def start_kernel(cfg, info: local.LabInfo) -> psutil.Process:
    """Start a python3 kernel through the lab's Jupyter API; its process under Jupyter."""
    import requests

    r = requests.post(f"{info.jupyter_url}/api/kernels", json={"name": "python3"},
                      headers={"Authorization": f"token {token(cfg)}"}, timeout=30,
                      proxies={"http": "", "https": ""})
    assert r.status_code == 201, r.text
    jupyter = psutil.Process(info.pids["jupyter"])
    deadline = time.monotonic() + 30
    kernels: list = []
    while not kernels and time.monotonic() < deadline:
        kernels = [k for k in jupyter.children() if "ipykernel" in cmdline(k)]
        time.sleep(0.2)
    assert kernels, "no kernel process under Jupyter"
    return kernels[0]


@pytest.fixture(scope="module")
def pg_lab():
    need_postgres()
    with lab_workdir("pg") as workdir:
        cfg = local_config(workdir, "postgresql")
        info = local.launch(cfg)
        try:
            yield cfg, info
        finally:
            local.stop(cfg)


# -- sqlite lab ------------------------------------------------------------------------------
def test_launch_starts_healthy_mlflow_and_jupyter(sqlite_lab):
    cfg, info, said = sqlite_lab
    assert not info.reused and info.backend == "sqlite" and info.site == "local"
    assert set(info.pids) == {"mlflow", "jupyter"}
    assert get(f"{info.mlflow_url}/health").status_code == 200
    assert info.mlflow_url.startswith("http://127.0.0.1:")
    assert any("mlflow: healthy" in s for s in said) and any("jupyter: ready" in s for s in said)
    assert (cfg.workdir_path / "lab" / "mlflow.db").exists()
    for name in ("mlflow", "jupyter"):
        assert (cfg.workdir_path / "lab" / "logs" / f"{name}.log").stat().st_size > 0


def test_jupyter_needs_the_token(sqlite_lab):
    cfg, info, *_ = sqlite_lab
    t = token(cfg)
    assert get(f"{info.jupyter_url}/api/status",
               {"Authorization": f"token {t}"}).status_code == 200
    assert get(f"{info.jupyter_url}/lab?token={t}").status_code == 200
    assert get(f"{info.jupyter_url}/api/status").status_code == 403
    assert get(f"{info.jupyter_url}/api/status",
               {"Authorization": "token wrong"}).status_code == 403
    r = get(f"{info.jupyter_url}/lab")
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_kernels_get_the_tracking_uri_and_no_secret_is_on_a_command_line(sqlite_lab):
    cfg, info, *_ = sqlite_lab
    t = token(cfg)
    env = start_kernel(cfg, info).environ()
    assert env["MLFLOW_TRACKING_URI"] == info.mlflow_url
    assert env["MLFLOW_EXPERIMENT_NAME"] == cfg.experiment
    for proc in family(info.pids.values()):
        assert t not in cmdline(proc)


def test_everything_listens_on_loopback_only(sqlite_lab):
    _, info, *_ = sqlite_lab
    sockets = listening(family(info.pids.values()))
    ports = {port for _, _, port in sockets}
    assert info.ports["mlflow"] in ports and info.ports["jupyter"] in ports
    assert all(ip == "127.0.0.1" for _, ip, _ in sockets), sockets


def test_lab_json_says_where_things_are_without_the_token(sqlite_lab):
    cfg, info, *_ = sqlite_lab
    text = (cfg.workdir_path / "lab.json").read_text()
    lab = json.loads(text)
    assert token(cfg) not in text
    assert lab["site"] == "local" and lab["status"] == "running" and lab["tunnel"] is None
    assert lab["mlflow_url"] == info.mlflow_url and lab["jupyter_url"] == info.jupyter_url
    assert "secrets/lab.env" in lab["jupyter_token"]
    assert lab["services"]["mlflow"]["pid"] == info.pids["mlflow"]
    assert lab["services"]["mlflow"]["artifacts"].endswith(f"buckets/{cfg.buckets.artifacts}")
    state = json.loads((cfg.workdir_path / "lab" / "local.json").read_text())
    assert state["services"]["jupyter"]["pid"] == info.pids["jupyter"]


def test_a_run_logged_through_the_lab_reads_back(sqlite_lab, tmp_path):
    cfg, info, *_ = sqlite_lab
    expected = log_example_runs(info.mlflow_url, cfg.experiment, tmp_path, runs=1)
    assert_runs_present(info.mlflow_url, expected, tmp_path)
    run_id = next(iter(expected))
    # proxied artifacts land in the local artifacts bucket
    stored = list((cfg.workdir_path / "buckets" / cfg.buckets.artifacts).rglob("notes-0.txt"))
    assert len(stored) == 1 and run_id in str(stored[0])


def test_launch_again_reuses_the_running_lab(sqlite_lab):
    cfg, info, *_ = sqlite_lab
    before = json.loads((cfg.workdir_path / "lab" / "local.json").read_text())["services"]
    said: list[str] = []
    again = local.launch(cfg, progress=said.append)
    assert again.reused and again.pids == info.pids and again.mlflow_url == info.mlflow_url
    # nothing was started or restarted: every service says so, and keeps its process
    for name in ("mlflow", "jupyter"):
        assert any(s.startswith(f"{name}: reused") for s in said), said
    assert said[-1].startswith("lab: reused")
    after = json.loads((cfg.workdir_path / "lab" / "local.json").read_text())["services"]
    assert {k: (v["pid"], v["create_time"]) for k, v in after.items()} == {
        k: (v["pid"], v["create_time"]) for k, v in before.items()}


def test_status_reports_running_healthy_services(sqlite_lab):
    cfg, info, *_ = sqlite_lab
    st = local.status(cfg)
    assert st["running"] and st["healthy"] and st["backend"] == "sqlite"
    assert {k: v["pid"] for k, v in st["services"].items()} == info.pids
    assert all(s["healthy"] for s in st["services"].values())


def test_load_eight_writers_sqlite(sqlite_lab):
    _, info, *_ = sqlite_lab
    writers_load(info.mlflow_url)


def test_stop_ends_exactly_what_it_started(own_sqlite_lab):
    cfg, info = own_sqlite_lab
    kernel = start_kernel(cfg, info)  # a kernel the user left running: stop ends it too
    procs = family(info.pids.values())
    assert kernel.pid in {p.pid for p in procs}
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        lines = local.stop(cfg)
        assert lines == [f"jupyter: stopped (pid {info.pids['jupyter']})",
                         f"mlflow: stopped (pid {info.pids['mlflow']})"]
        assert not any(p.is_running() and p.status() != "zombie" for p in procs)
        assert bystander.poll() is None
        assert local.stop(cfg) == ["lab: nothing recorded as running"]
        st = local.status(cfg)
        assert not st["running"] and not st["healthy"]
        assert json.loads((cfg.workdir_path / "lab.json").read_text())["status"] == "stopped"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", info.ports["mlflow"]), timeout=2).close()
    finally:
        bystander.kill()
        bystander.wait()


# -- failures and edges (no lab needed) ------------------------------------------------------
def test_stop_leaves_a_recycled_pid_alone(tmp_path):
    cfg = local_config(tmp_path / "work")
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        p = local.paths(cfg)
        p.root.mkdir(parents=True)
        p.state.write_text(json.dumps({"backend": "sqlite", "services": {
            "mlflow": {"pid": other.pid, "create_time": 1.0, "port": 1}}}))
        assert local.stop(cfg) == ["mlflow: not running"]
        assert other.poll() is None
        assert local.status(cfg)["services"]["mlflow"]["running"] is False
    finally:
        other.kill()
        other.wait()


def test_a_taken_port_asked_for_is_an_error_and_a_taken_default_moves(tmp_path):
    cfg = local_config(tmp_path / "work")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"{busy} is in use"):
            local.launch(cfg, mlflow_port=busy)
        assert local.status(cfg)["running"] is False
        notes: list[str] = []
        port = local._choose_port("mlflow", None, None, busy, notes, None)
        assert port != busy and notes == [f"mlflow: port {busy} is in use; using {port}"]


def test_a_service_that_exits_fails_the_launch_with_its_log(tmp_path):
    cfg = local_config(tmp_path / "work")
    db = local.paths(cfg).sqlite
    db.parent.mkdir(parents=True)
    db.write_text("this is not a database\n" * 100)
    with pytest.raises(local.ServiceFailed, match="mlflow exited") as err:
        local.launch(cfg, restore=False, mlflow_port=local.free_port())
    assert "mlflow.log" in str(err.value) and "file is not a database" in str(err.value)
    st = local.status(cfg)
    assert not any(s["running"] for s in st["services"].values())
    with pytest.raises(ConfigError, match="not a usable sqlite database"):
        local.launch(cfg)


def test_a_service_not_ready_in_time_is_a_timeout_and_is_stopped(tmp_path, monkeypatch):
    cfg = local_config(tmp_path / "work")
    monkeypatch.setitem(local.TIMEOUTS, "mlflow", 0.5)
    with pytest.raises(ResourceTimeout, match=r"mlflow \(pid \d+\) was not ready after") as err:
        local.launch(cfg, mlflow_port=local.free_port())
    assert "mlflow.log" in str(err.value)
    assert not local.status(cfg)["services"]["mlflow"]["running"]
    pid = int(re.search(r"pid (\d+)", str(err.value)).group(1))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_other_sites_are_refused(tmp_path):
    from replab import config

    cfg = config.build({"experiment": "x1", "frameworks": ["sklearn"], "site": "CHI@UC",
                        "repository": "https://github.com/a/b.git",
                        "workdir": str(tmp_path)})
    with pytest.raises(ConfigError, match="only site 'local'"):
        local.launch(cfg)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to another user")
def test_postgres_out_of_reach_of_its_user_says_so(tmp_path):
    need_postgres()
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    cfg = local_config(closed / "work", "postgresql")
    with pytest.raises(ConfigError, match="cannot reach"):
        local.launch(cfg)
    assert local.status(cfg)["running"] is False


# -- PostgreSQL lab --------------------------------------------------------------------------
def test_postgres_lab_logs_and_reads_back_a_run(pg_lab, tmp_path):
    cfg, info = pg_lab
    assert info.backend == "postgresql" and set(info.pids) == {"postgres", "mlflow", "jupyter"}
    expected = log_example_runs(info.mlflow_url, cfg.experiment, tmp_path, runs=1)
    assert_runs_present(info.mlflow_url, expected, tmp_path)


def test_postgres_is_private_loopback_and_not_root(pg_lab):
    import psutil

    cfg, info = pg_lab
    pg = psutil.Process(info.pids["postgres"])
    data = local.paths(cfg).postgres
    if os.geteuid() == 0:
        assert pg.username() == "postgres" and data.stat().st_uid == pg.uids().real
    assert data.stat().st_mode & 0o777 == 0o700
    sockets = listening(family(info.pids.values()))
    assert (info.pids["postgres"], "127.0.0.1", info.ports["postgres"]) in sockets
    assert all(ip == "127.0.0.1" for _, ip, _ in sockets), sockets
    password = local.database(cfg).password
    assert password and all(password not in cmdline(p) for p in family(info.pids.values()))
    secret = local.paths(cfg).workdir / "secrets" / "postgres.env"
    assert secret.stat().st_mode & 0o777 == 0o600
    hba = (data / "pg_hba.conf").read_text() if os.access(data, os.R_OK) else ""
    assert "trust" not in hba


def test_postgres_lab_is_reused(pg_lab):
    cfg, info = pg_lab
    again = local.launch(cfg)
    assert again.reused and again.pids == info.pids
    st = local.status(cfg)
    assert st["healthy"] and st["services"]["postgres"]["healthy"]


def test_load_eight_writers_postgresql(pg_lab):
    _, info = pg_lab
    writers_load(info.mlflow_url)


def test_postgres_lab_stops_with_a_fast_shutdown(own_pg_lab):
    cfg, info = own_pg_lab
    procs = family(info.pids.values())
    lines = local.stop(cfg)
    assert lines[-1] == f"postgres: stopped (pid {info.pids['postgres']})"
    assert not any(p.is_running() and p.status() != "zombie" for p in procs)
    log = (local.paths(cfg).logs / "postgres.log").read_text()
    assert "fast shutdown request" in log and "database system is shut down" in log


# -- load --------------------------------------------------------------------------------------
WRITERS, POINTS = 8, 2000


def writers_load(url: str, writers: int = WRITERS, points: int = POINTS) -> float:
    """``writers`` threads each log ``points`` points of one metric (log_batch, 1000 a
    request) into their own run; every point must be there. Returns the seconds taken."""
    took, steps = write_points(url, writers, points)
    for run_id, logged in steps.items():
        assert logged == list(range(points)), run_id
    return took
