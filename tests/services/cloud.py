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
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

# the sibling modules, without leaving tests/services on sys.path (its openstack.py would
# shadow openstacksdk in a process that loads this file, such as the pytest fixture)
sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import cloud_conf as conf
    import cloud_seed as seed
    from cloud_processes import (
        NOVA_DBS,
        epmd_binary,
        health,
        mariadb_client,
        mariadb_start,
        rabbit_start,
        rss_mb,
        run,
        services_start,
        venv,
        wait_apis,
    )
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


def log(msg: str) -> None:
    print(f"cloud.py: {msg}", flush=True)


def snapshot_dir() -> Path | None:
    value = os.environ.get("REPLAB_CLOUD_SNAPSHOT") or str(HERE / ".state" / "cloud-snapshot")
    return None if value == "off" else Path(value)


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
