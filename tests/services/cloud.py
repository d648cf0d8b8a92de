#!/usr/bin/env python3
"""A real, local OpenStack control plane with Blazar for replab's tests, on 127.0.0.1.

    python3 tests/services/cloud.py up     [STATE_DIR]   # start (or reuse) and seed
    python3 tests/services/cloud.py status [STATE_DIR]   # exit 0 if all running and healthy
    python3 tests/services/cloud.py down   [STATE_DIR]   # stop exactly what `up` started

Needs what tests/services/cloud-install.sh installs (Debian's rabbitmq-server and
mariadb-server, one venv with the OpenStack services). Standard library only.

What `up` starts, each in its own process group, logging to STATE_DIR/logs/NAME.log
(upstream code throughout; Nova runs the fake virt driver):
  mariadb, epmd, rabbitmq      Nova's databases (sqlite locks under Nova), the message bus
  keystone                     its own Keystone 29.1.0 (port 26500): the catalog, service
                               users and Blazar's trusts live in it and are snapshotted with
                               the other databases, so it is not the Keystone+Swift stack's
  placement, nova-api, nova-conductor, nova-scheduler (with blazar-nova's BlazarFilter),
  nova-compute-1, nova-compute-2 (hosts compute-1, compute-2), neutron (API only, ML2 with
  tests/services/cloud/alwaysbind), glance, blazar-api, blazar-manager (host, floating-IP
  and flavor plugins)
and seeds it (tests/services/cloud_seed.py). What a client needs is in STATE_DIR/cloud.json.

Start-up: a cold start creates every schema and seeds (80-100 s on 2 idle cores, 6-10
minutes when other test runs load them), then dumps the databases into
tests/services/.state/cloud-snapshot; a later start restores that snapshot instead (no
migration, no seeding: 22-42 s) while cloud_conf.py, cloud_seed.py, the constraints and
STATE_DIR are unchanged. `up` reuses a stack whose processes are all alive and healthy.

Environment: REPLAB_CLOUD_STATE_DIR (tests/services/.state/cloud), REPLAB_CLOUD_VENV
(tests/services/.state/cloud-venv), REPLAB_CLOUD_SNAPSHOT (tests/services/.state/
cloud-snapshot; "off" disables it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# the sibling modules, without leaving tests/services on sys.path (its openstack.py would
# shadow openstacksdk in a process that loads this file, such as the pytest fixture)
sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import cloud_conf as conf
    import cloud_seed as seed
finally:
    sys.path.pop(0)

BASE = conf.base()
StackError = BASE.StackError
HERE = Path(__file__).resolve().parent
STATE_FILE = "cloud.json"
MARKER = ".replab-cloud"
FORMAT_VERSION = 1
SQLITE_DBS = ("placement/placement.db", "glance/glance.db", "neutron/neutron.db",
              "blazar/blazar.db")
NOVA_DBS = ("nova_api", "nova_cell0", "nova_cell1")


def log(msg: str) -> None:
    print(f"cloud.py: {msg}", flush=True)


def venv() -> Path:
    return Path(os.environ.get("REPLAB_CLOUD_VENV") or HERE / ".state" / "cloud-venv")


def snapshot_dir() -> Path | None:
    value = os.environ.get("REPLAB_CLOUD_SNAPSHOT") or str(HERE / ".state" / "cloud-snapshot")
    return None if value == "off" else Path(value)


def epmd_binary() -> str | None:
    return shutil.which("epmd") or next(iter(sorted(glob.glob(
        "/usr/lib/erlang/erts-*/bin/epmd"))), None)


def missing_binaries() -> list[str]:
    """What cloud-install.sh provides and is not here (empty when all is installed)."""
    bins = [venv() / "bin" / exe for exe in (
        "uwsgi", "keystone-manage", "nova-manage", "nova-compute", "placement-manage",
        "glance-manage", "blazar-manager")]
    bins += [Path("/usr/sbin/mariadbd"), Path("/usr/lib/rabbitmq/bin/rabbitmq-server")]
    missing = [str(b) for b in bins if not b.exists()]
    missing += [exe for exe in ("mariadb-install-db", "mariadb", "mariadb-dump")
                if shutil.which(exe) is None]
    return missing + ([] if epmd_binary() else ["epmd"])


def fingerprint(d: Path) -> str:
    """What the databases depend on: the configs, the seed, the constraints, the state
    directory (the configs hold its paths). A snapshot or a running stack with another
    fingerprint is not used."""
    h = hashlib.sha256(str(d).encode())
    for name in ("cloud_conf.py", "cloud_seed.py", "cloud-constraints.txt"):
        h.update((HERE / name).read_bytes())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- processes


def run(argv: list[str], d: Path, logname: str, env: dict | None = None,
        stdin: Any = subprocess.DEVNULL) -> None:
    with open(d / "logs" / f"{logname}.log", "ab") as out:
        rc = subprocess.run(argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                            env=env, cwd="/").returncode
    if rc != 0:
        raise StackError(f"{' '.join(argv[:3])} ... failed ({rc}); see {d}/logs/{logname}.log")


def mariadb_client(d: Path) -> list[str]:
    return ["mariadb", "--no-defaults", "-S", str(d / "mysql" / "mysql.sock"), "-uroot"]


def mariadb_start(d: Path, processes: dict, fresh: bool) -> None:
    m = d / "mysql"
    if fresh:
        m.mkdir()
        argv = ["mariadb-install-db", "--no-defaults", f"--datadir={m / 'data'}",
                "--auth-root-authentication-method=normal", "--skip-test-db"]
        run(argv + (["--user=root"] if os.geteuid() == 0 else []), d, "mariadb-install")
    argv = ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={m / 'data'}",
            f"--bind-address={conf.HOST}", f"--port={conf.PORTS['mariadb']}",
            f"--socket={m / 'mysql.sock'}", f"--pid-file={m / 'mysqld.pid'}",
            "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M", "--max-connections=500",
            "--innodb-flush-log-at-trx-commit=0"]
    processes["mariadb"] = BASE.spawn("mariadb", argv + (["--user=root"] if os.geteuid() == 0
                                                         else []), d / "logs")
    ok = lambda: subprocess.run(mariadb_client(d) + ["-e", "select 1"],  # noqa: E731
                                capture_output=True).returncode == 0
    BASE.wait_until("mariadb", ok, 60, processes["mariadb"]["log"])
    dbs = "".join(f"CREATE DATABASE IF NOT EXISTS {db}; " for db in NOVA_DBS)
    sql = (f"{dbs}CREATE USER IF NOT EXISTS '{conf.DB_USER}'@'{conf.HOST}' IDENTIFIED BY "
           f"'{conf.DB_PASSWORD}'; GRANT ALL ON *.* TO '{conf.DB_USER}'@'{conf.HOST}';")
    run(mariadb_client(d) + ["-e", sql], d, "mariadb-setup")


def rabbit_env(d: Path) -> dict[str, str]:
    r = d / "rabbit"
    return dict(os.environ, HOME=str(r / "home"), RABBITMQ_NODENAME="replab@localhost",
                RABBITMQ_NODE_IP_ADDRESS=conf.HOST,
                RABBITMQ_NODE_PORT=str(conf.PORTS["rabbitmq"]),
                RABBITMQ_DIST_PORT=str(conf.PORTS["rabbitmq_dist"]),
                ERL_EPMD_PORT=str(conf.PORTS["epmd"]), ERL_EPMD_ADDRESS=conf.HOST,
                RABBITMQ_MNESIA_BASE=str(r / "mnesia"), RABBITMQ_LOG_BASE=str(r / "log"),
                RABBITMQ_CONFIG_FILE=str(r / "rabbitmq"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(r / "enabled_plugins"),
                RABBITMQ_PID_FILE=str(r / "rabbit.pid"),
                RABBITMQ_CTL_DIST_PORT_MIN=str(conf.RABBITMQ_CTL_PORTS[0]),
                RABBITMQ_CTL_DIST_PORT_MAX=str(conf.RABBITMQ_CTL_PORTS[1]),
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface "
                                                    "{127,0,0,1}")


def rabbit_start(d: Path, processes: dict) -> None:
    r = d / "rabbit"
    (r / "home").mkdir(parents=True)
    (r / "enabled_plugins").write_text("[].\n")
    (r / "rabbitmq.conf").write_text("loopback_users = none\n")
    env = rabbit_env(d)
    # our own epmd, so that Erlang does not start a daemon outside our process groups
    processes["epmd"] = BASE.spawn("epmd", [epmd_binary() or "epmd", "-address", conf.HOST,
                                            "-port", str(conf.PORTS["epmd"])], d / "logs",
                                   env=env)
    BASE.wait_until("epmd", lambda: BASE.tcp_ok(conf.PORTS["epmd"]), 20)
    processes["rabbitmq"] = BASE.spawn("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"],
                                       d / "logs", env=env)


def uwsgi(name: str, port: int, app: list[str], d: Path, env_var: str, conf_dir: Path,
          extra: tuple[str, ...] = ()) -> dict:
    argv = [str(venv() / "bin" / "uwsgi"), "--http-socket", f"{conf.HOST}:{port}",
            "--master", "--processes", "1", "--lazy-apps", "--die-on-term", "--need-app",
            "--buffer-size", "65535", "--add-header", "Connection: close", *extra, *app]
    return BASE.spawn(name, argv, d / "logs", env=dict(os.environ, **{env_var: str(conf_dir)}))


def services_start(d: Path, dirs: dict[str, Path], processes: dict) -> None:
    """Every OpenStack service but Keystone (which `up` starts earlier)."""
    p, b = conf.PORTS, venv() / "bin"
    processes["placement"] = uwsgi("placement", p["placement"], [
        "--module", "placement.wsgi.api:application"], d, "OS_PLACEMENT_CONFIG_DIR",
        dirs["placement"])
    processes["neutron"] = uwsgi("neutron", p["neutron"], [
        "--module", "neutron.wsgi.api:application"], d, "OS_NEUTRON_CONFIG_DIR",
        dirs["neutron"])
    processes["glance"] = uwsgi("glance", p["glance"], [
        "--module", "glance.wsgi.api:application"], d, "OS_GLANCE_CONFIG_DIR", dirs["glance"],
        ("--enable-threads", "--http-auto-chunked", "--http-raw-body",
         "--chunked-input-limit", "20971520"))
    processes["nova-api"] = uwsgi("nova-api", p["nova"], [
        "--module", "nova.wsgi.osapi_compute:application"], d, "OS_NOVA_CONFIG_DIR",
        dirs["nova"])
    nova_conf = ["--config-file", str(dirs["nova"] / "nova.conf")]
    for name in ("nova-conductor", "nova-scheduler"):
        processes[name] = BASE.spawn(name, [str(b / name), *nova_conf], d / "logs")
    for i, host in enumerate(conf.COMPUTE_HOSTS, 1):
        processes[f"nova-compute-{i}"] = BASE.spawn(f"nova-compute-{i}", [
            str(b / "nova-compute"), *nova_conf, "--config-file",
            str(dirs["nova"] / f"{host}.conf")], d / "logs")
    processes["blazar-manager"] = BASE.spawn("blazar-manager", [
        str(b / "blazar-manager"), "--config-file", str(dirs["blazar"] / "blazar.conf")],
        d / "logs")
    processes["blazar-api"] = uwsgi("blazar-api", p["blazar"], [
        "--wsgi-file", str(dirs["blazar"] / "wsgi.py")], d, "OS_BLAZAR_CONFIG_DIR",
        dirs["blazar"])


def answers(url: str) -> bool:
    """The server at url answers HTTP at all (version documents are 200 or 300)."""
    try:
        status, _, _ = BASE.http("GET", url, timeout=3)
    except OSError:
        return False
    return status < 500


def checks(state: dict) -> dict[str, Any]:
    p, u = conf.PORTS, state["endpoints"]
    return {
        "mariadb": lambda: BASE.tcp_ok(p["mariadb"]),
        "epmd": lambda: BASE.tcp_ok(p["epmd"]),
        "rabbitmq": lambda: BASE.tcp_ok(p["rabbitmq"]),
        "keystone": lambda: BASE.http_ok(state["auth_url"]),
        "placement": lambda: answers(u["placement"]),
        "neutron": lambda: answers(u["network"]),
        "glance": lambda: answers(u["image"]),
        "nova-api": lambda: answers(u["compute"].rsplit("/", 1)[0]),
        "blazar-api": lambda: answers(u["reservation"].rsplit("/", 1)[0]),
    }


def health(state: dict) -> dict[str, str]:
    table, result = checks(state), {}
    for name, entry in state["processes"].items():
        if not BASE.is_ours(entry):
            result[name] = f"not running (pid {entry['pid']})"
        elif name in table and not table[name]():
            result[name] = "running but not answering"
        else:
            result[name] = "ok"
    return result


def wait_apis(state: dict, timeout: float = 180) -> None:
    for name, check in checks(state).items():
        BASE.wait_until(name, check, timeout, state["processes"][name]["log"])


def rss_mb(processes: dict) -> int:
    total = 0
    for entry in processes.values():
        for pid in BASE.group_members(entry["pgid"], entry["starttime"]):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total // 1024


# --------------------------------------------------------------------------- schemas


SCHEMA = """
import sqlite3, sys, sqlalchemy as sa
which, path = sys.argv[1], sys.argv[2]
if which == "neutron":
    from neutron.db.migration.models import head
    metadata = head.get_metadata()
else:
    from blazar.db.sqlalchemy import models
    metadata = models.Lease.metadata
metadata.create_all(sa.create_engine("sqlite:///" + path))
"""


def schemas(d: Path, dirs: dict[str, Path]) -> None:
    """Every database's schema (nova on MariaDB, the others sqlite in WAL mode). Neutron's
    and Blazar's migrations ALTER constraints, which sqlite cannot: their models make it."""
    b, var = venv() / "bin", d / "var"
    nova = [str(b / "nova-manage"), "--config-file", str(dirs["nova"] / "nova.conf")]

    def nova_schema() -> None:
        for step in (["api_db", "sync"],
                     ["cell_v2", "map_cell0", "--database_connection",
                      conf.db_url("nova_cell0")],
                     ["cell_v2", "create_cell", "--name", "cell1"], ["db", "sync"]):
            run(nova + step, d, "schema-nova")

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        job = pool.submit(nova_schema)
        run([str(b / "placement-manage"), "--config-file",
             str(dirs["placement"] / "placement.conf"), "db", "sync"], d, "schema-placement")
        run([str(b / "glance-manage"), "--config-file",
             str(dirs["glance"] / "glance-api.conf"), "db_sync"], d,
            "schema-glance")
        for which in ("neutron", "blazar"):
            run([str(b / "python"), "-c", SCHEMA, which, str(var / which / f"{which}.db")], d,
                f"schema-{which}")
        job.result()
    for db in SQLITE_DBS:
        with sqlite3.connect(var / db) as c:
            c.execute("PRAGMA journal_mode=WAL").fetchone()


# --------------------------------------------------------------------------- snapshot


def snapshot_take(d: Path, snap: Path, meta: dict) -> None:
    """Consistent copies of every database (sqlite backup API, mariadb-dump in one
    transaction), the Keystone keys, the images and the computes' ids, into snap."""
    tmp = snap.with_name(snap.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "var").mkdir(parents=True)
    shutil.copytree(d / "keystone", tmp / "keystone", ignore=shutil.ignore_patterns("*.db*"))
    sqlite_copy(d / "keystone" / "keystone.db", tmp / "keystone" / "keystone.db")
    for db in SQLITE_DBS:
        (tmp / "var" / db).parent.mkdir(parents=True, exist_ok=True)
        sqlite_copy(d / "var" / db, tmp / "var" / db)
    shutil.copytree(d / "var" / "glance" / "images", tmp / "var" / "glance" / "images")
    for host in conf.COMPUTE_HOSTS:
        shutil.copytree(d / "var" / "nova" / host, tmp / "var" / "nova" / host)
    # nova-compute refuses to start on a host its database knows without the node's identity
    # file (state_path/compute_id), which the fake driver never writes: write it from the DB
    rows = subprocess.run(mariadb_client(d) + ["-N", "-e", "SELECT host, uuid FROM "
                          "nova_cell1.compute_nodes WHERE deleted = 0"],
                          capture_output=True, text=True, check=True).stdout.split("\n")
    for host, uuid in (row.split("\t") for row in rows if row.strip()):
        (tmp / "var" / "nova" / host / "compute_id").write_text(uuid + "\n")
    with open(tmp / "nova.sql", "wb") as out:
        subprocess.run(["mariadb-dump", "--no-defaults", "-S", str(d / "mysql" / "mysql.sock"),
                        "-uroot", "--single-transaction", "--databases", *NOVA_DBS],
                       stdout=out, stderr=subprocess.PIPE, check=True)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(snap, ignore_errors=True)
    tmp.rename(snap)


def sqlite_copy(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def snapshot_meta(snap: Path | None, d: Path) -> dict | None:
    if snap is None:
        return None
    try:
        meta = json.loads((snap / "meta.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return meta if meta.get("fingerprint") == fingerprint(d) else None


def snapshot_restore(d: Path, snap: Path) -> None:
    shutil.copytree(snap / "keystone", d / "keystone")
    shutil.copytree(snap / "var", d / "var", dirs_exist_ok=True)
    for db in ("keystone/keystone.db", *(f"var/{x}" for x in SQLITE_DBS)):
        with sqlite3.connect(d / db) as c:
            c.execute("PRAGMA journal_mode=WAL").fetchone()


# --------------------------------------------------------------------------- verbs


def base_state(d: Path) -> dict:
    return {"format": FORMAT_VERSION, "state_dir": str(d), "region": conf.REGION,
            "auth_url": f"http://{conf.HOST}:{conf.PORTS['keystone']}/v3",
            "endpoints": conf.urls(), "ports": dict(conf.PORTS),
            "compute_hosts": dict(conf.COMPUTE_HOSTS),
            "reservable_floating_ips": list(seed.RESERVABLE_IPS),
            "fingerprint": fingerprint(d), "processes": {}}


def start(d: Path, state: dict, snap: Path | None, meta: dict | None) -> dict[str, float]:
    """Start everything into state['processes']; seed (cold) or restore (meta given)."""
    processes, t0, timings = state["processes"], time.monotonic(), {}
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())

    def mark(name: str) -> None:
        timings[name] = round(time.monotonic() - t0, 1)

    dirs = conf.write_all(d, venv())
    if meta is not None:
        snapshot_restore(d, snap)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        rabbit = pool.submit(rabbit_start, d, processes)
        keystone = None if meta else pool.submit(BASE.keystone_setup, d,
                                                 conf.PORTS["keystone"], venv())
        mariadb_start(d, processes, fresh=True)
        if meta is not None:
            run(mariadb_client(d), d, "mariadb-restore", stdin=open(snap / "nova.sql", "rb"))
        mark("mariadb")
        if keystone is not None:
            keystone.result()
        processes["keystone"] = BASE.keystone_start(d, conf.PORTS["keystone"], venv())
        if meta is None:
            schemas(d, dirs)
            mark("schemas")
        rabbit.result()
    BASE.wait_until("rabbitmq", lambda: BASE.tcp_ok(conf.PORTS["rabbitmq"]), 120,
                    processes["rabbitmq"]["log"])
    BASE.wait_until("keystone", lambda: BASE.http_ok(state["auth_url"]), 60,
                    processes["keystone"]["log"])
    mark("keystone+rabbitmq")
    if meta is None:
        api = seed.Api(state["auth_url"])
        state["users"] = seed.keystone(api)
        mark("keystone seeded")
    services_start(d, dirs, processes)
    wait_apis(state)
    mark("APIs answering")
    api = seed.Api(state["auth_url"])
    if meta is None:
        state["networks"] = seed.neutron(api)
        state["images"] = seed.glance(api)
        state["flavors"] = seed.nova(api)
        mark("networks, images, flavors")
    seed.wait_hypervisors(api, since)
    mark("hypervisors up")
    if meta is None:
        state["blazar_hosts"] = seed.blazar(api, state["networks"]["public"])
        mark("blazar hosts")
    else:
        for key in ("users", "networks", "images", "flavors", "blazar_hosts"):
            state[key] = meta[key]
    return timings


def up(d: Path) -> tuple[dict, bool]:
    """Start (or reuse) the control plane in d. Returns (state, reused)."""
    t0 = time.monotonic()
    with BASE.Lock(d):
        old = load_state(d)
        if old is not None:
            if old.get("format") == FORMAT_VERSION and old.get("fingerprint") == fingerprint(d):
                report = health(old)
                if all(v == "ok" for v in report.values()) and "blazar_hosts" in old:
                    log(f"reusing the running control plane in {d} "
                        f"({time.monotonic() - t0:.2f}s)")
                    return old, True
                log(f"control plane in {d} is not healthy ({report}); restarting it")
            else:
                log(f"control plane in {d} was started by other scripts; restarting it")
            BASE.stop_processes(old.get("processes", {}))
        missing = missing_binaries()
        if missing:
            raise StackError(f"missing: {', '.join(missing)}. Run: bash "
                             "tests/services/cloud-install.sh")
        busy = [f"{n}={p}" for n, p in conf.PORTS.items() if not BASE.port_free(p)]
        if busy:
            raise StackError(f"ports already in use on 127.0.0.1: {', '.join(busy)}; stop what "
                             "holds them (tests/services/cloud.py down, if it is ours)")
        wipe(d)
        (d / MARKER).write_text("state of tests/services/cloud.py; `up` may wipe this\n")
        (d / "logs").mkdir()
        state = base_state(d)
        snap = snapshot_dir()
        meta = snapshot_meta(snap, d)
        try:
            timings = start(d, state, snap, meta)
        except BaseException:
            log(f"start failed: stopping what was started (logs in {d / 'logs'})")
            BASE.stop_processes(state["processes"])
            write_state(d, {**state, "failed": True})
            raise
        state["started_from"] = "snapshot" if meta else "scratch"
        state["startup_seconds"] = round(time.monotonic() - t0, 1)
        state["timings"] = timings
        state["rss_mb"] = rss_mb(state["processes"])
        state["pids"] = {n: p["pid"] for n, p in state["processes"].items()}
        write_state(d, state)
        if meta is None and snap is not None:
            t = time.monotonic()
            snapshot_take(d, snap, {k: state[k] for k in (
                "fingerprint", "users", "networks", "images", "flavors", "blazar_hosts")})
            log(f"snapshot written to {snap} ({time.monotonic() - t:.1f}s)")
        detail = ", ".join(f"{k} at {v:.0f}s" for k, v in timings.items())
        log(f"started from {state['started_from']} in {state['startup_seconds']:.0f}s "
            f"({detail}); {len(state['processes'])} processes, RSS {state['rss_mb']} MB")
        return state, False


def load_state(d: Path) -> dict | None:
    try:
        return json.loads((d / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise StackError(f"{d / STATE_FILE} is not valid JSON: {exc}") from exc


def write_state(d: Path, state: dict) -> None:
    tmp = d / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(d / STATE_FILE)


def wipe(d: Path) -> None:
    entries = [p for p in d.iterdir() if p.name != ".lock"]
    if entries and not (d / MARKER).exists():
        raise StackError(f"{d} is not empty and was not made by cloud.py: refusing to wipe it")
    for p in entries:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def down(d: Path) -> bool:
    with BASE.Lock(d):
        state = load_state(d)
        if state is None:
            log(f"no control plane recorded in {d}")
            return False
        t = time.monotonic()
        BASE.stop_processes(state.get("processes", {}))
        (d / STATE_FILE).unlink()
        log(f"stopped {len(state.get('processes', {}))} processes in "
            f"{time.monotonic() - t:.1f}s")
        return True


def status(d: Path) -> bool:
    state = load_state(d)
    if state is None:
        log(f"no control plane recorded in {d}")
        return False
    report = health(state)
    for name, result in report.items():
        print(f"  {name:16} pid {state['processes'][name]['pid']:>7}  {result}")
    healthy = bool(report) and all(v == "ok" for v in report.values()) and (
        "blazar_hosts" in state) and state.get("fingerprint") == fingerprint(d)
    log(f"{'healthy' if healthy else 'NOT healthy'}: {d / STATE_FILE}; RSS "
        f"{rss_mb(state['processes'])} MB")
    return healthy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["up", "down", "status"])
    parser.add_argument("state_dir", nargs="?", default=os.environ.get(
        "REPLAB_CLOUD_STATE_DIR") or str(HERE / ".state" / "cloud"))
    args = parser.parse_args(argv)
    d = Path(args.state_dir).absolute()
    try:
        if args.verb == "up":
            up(d)
            return 0
        if args.verb == "down":
            down(d)
            return 0
        return 0 if status(d) else 1
    except StackError as exc:
        log(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
