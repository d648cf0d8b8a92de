#!/usr/bin/env python3
"""A real, local OpenStack for replab's tests: Keystone + Swift (with S3) on 127.0.0.1.

    python3 tests/services/openstack.py up     [STATE_DIR]   # start (or reuse) and seed
    python3 tests/services/openstack.py status [STATE_DIR]   # exit 0 if all running and healthy
    python3 tests/services/openstack.py down   [STATE_DIR]   # stop exactly what `up` started

Needs what tests/services/install.sh installs (Debian's Swift and memcached, a venv with
keystone==29.1.0 and uwsgi). Standard library only, so any python3 >= 3.9 can run it.

What `up` starts, each in its own process group, each writing to STATE_DIR/logs/NAME.log:
  memcached         cache for Swift and for the authtoken middleware
  keystone          Keystone under uwsgi (one process), sqlite (WAL), fernet tokens
  swift-account, swift-container, swift-object    storage servers, 1-replica rings, one device
  swift-proxy       proxy: ... authtoken s3api s3token keystoneauth ... (validated by Keystone)
  swift-tempauth    a second proxy with s3api + tempauth (user test:tester, key testing)

and seeds Keystone like a Chameleon project: user `demo` (role `member` in project `demo`),
the bootstrap admin (role `admin` in project `admin`), project `service` with the service user
`swift`, and the object-store service with endpoints http://127.0.0.1:PORT/v1/AUTH_%(project_id)s
in region RegionOne. No application or EC2 credential is made here: the code under test does that.

Everything a client needs (endpoints, ports, users, passwords, projects, PIDs, logs) is written
to STATE_DIR/openstack.json; `pids` holds the PID of each server started, which leads its own
process group (with its workers), and `down` stops those groups. `up` reuses a stack whose
recorded processes are all alive and healthy; otherwise it stops what is left of it and starts
afresh (STATE_DIR is wiped).

Environment (ports are kept below Linux's ephemeral range 32768-60999, away from the usual
defaults: 5000 is MLflow's and Keystone's, 8080 is everyone's, 11211 a system memcached's):
  REPLAB_KEYSTONE_PORT          15000
  REPLAB_SWIFT_PORT             18080   Keystone-authenticated proxy, Swift and S3 API
  REPLAB_SWIFT_TEMPAUTH_PORT    18090   tempauth proxy, Swift and S3 API
  REPLAB_MEMCACHED_PORT         21211
  REPLAB_SWIFT_ACCOUNT_PORT     16202
  REPLAB_SWIFT_CONTAINER_PORT   16201
  REPLAB_SWIFT_OBJECT_PORT      16200
  REPLAB_OPENSTACK_STATE_DIR    tests/services/.state/openstack   (or the STATE_DIR argument)
  REPLAB_KEYSTONE_VENV          tests/services/.state/keystone-venv
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_STATE_DIR = HERE / ".state" / "openstack"
DEFAULT_KEYSTONE_VENV = HERE / ".state" / "keystone-venv"
STATE_FILE = "openstack.json"
MARKER = ".replab-openstack"  # a STATE_DIR holding this may be wiped by `up`
HOST = "127.0.0.1"
REGION = "RegionOne"
DOMAIN = "Default"
FORMAT_VERSION = 1

# name -> (environment variable, default)
PORTS: dict[str, tuple[str, int]] = {
    "keystone": ("REPLAB_KEYSTONE_PORT", 15000),
    "swift": ("REPLAB_SWIFT_PORT", 18080),
    "swift_tempauth": ("REPLAB_SWIFT_TEMPAUTH_PORT", 18090),
    "memcached": ("REPLAB_MEMCACHED_PORT", 21211),
    "swift_account": ("REPLAB_SWIFT_ACCOUNT_PORT", 16202),
    "swift_container": ("REPLAB_SWIFT_CONTAINER_PORT", 16201),
    "swift_object": ("REPLAB_SWIFT_OBJECT_PORT", 16200),
}

USERS = {
    "admin": {"username": "admin", "password": "adminpw", "project": "admin", "role": "admin"},
    "demo": {"username": "demo", "password": "demopw", "project": "demo", "role": "member"},
    "swift": {"username": "swift", "password": "swiftpw", "project": "service", "role": "admin"},
}
TEMPAUTH = {"user": "test:tester", "key": "testing"}

SWIFT_BINARIES = [
    "swift-ring-builder",
    "swift-account-server",
    "swift-container-server",
    "swift-object-server",
    "swift-proxy-server",
    "memcached",
]


class StackError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"openstack.py: {msg}", flush=True)


# --------------------------------------------------------------------------- configuration


def ports_from_env() -> dict[str, int]:
    ports = {}
    for name, (var, default) in PORTS.items():
        raw = os.environ.get(var, "")
        try:
            ports[name] = int(raw) if raw else default
        except ValueError as exc:
            raise StackError(f"{var}={raw!r} is not a port number") from exc
    if len(set(ports.values())) != len(ports):
        raise StackError(f"two services were given the same port: {ports}")
    return ports


def keystone_venv() -> Path:
    return Path(os.environ.get("REPLAB_KEYSTONE_VENV") or DEFAULT_KEYSTONE_VENV)


def missing_binaries() -> list[str]:
    """What install.sh provides and is not here (empty when all is installed)."""
    missing = [b for b in SWIFT_BINARIES if shutil.which(b) is None]
    venv = keystone_venv()
    for exe in ("keystone-manage", "uwsgi"):
        if not (venv / "bin" / exe).exists():
            missing.append(str(venv / "bin" / exe))
    return missing


def service_user() -> str:
    """The user Swift's servers drop to (Swift's default is `swift`, when run as root)."""
    if os.geteuid() == 0:
        return "swift"
    return pwd.getpwuid(os.geteuid()).pw_name


# --------------------------------------------------------------------------- processes


def proc_starttime(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data[data.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def proc_pgrp(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(data[data.rindex(")") + 2 :].split()[2])


def is_ours(entry: dict[str, Any]) -> bool:
    """True while the recorded process is alive and is the very process we started."""
    return proc_starttime(entry["pid"]) == entry["starttime"]


def spawn(name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None) -> dict:
    """Start a server in its own session, stdin from /dev/null, stdout+stderr to its log."""
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    starttime = None
    for _ in range(100):
        starttime = proc_starttime(proc.pid)
        if starttime is not None:
            break
        time.sleep(0.01)
    if starttime is None:
        raise StackError(f"{name} exited at once; see {log_path}")
    return {
        "pid": proc.pid,
        "pgid": proc.pid,
        "starttime": starttime,
        "argv": argv,
        "log": str(log_path),
    }


def group_members(pgid: int, not_before: int) -> list[int]:
    """PIDs in process group pgid that started no earlier than our group leader."""
    members = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        if proc_pgrp(pid) == pgid:
            st = proc_starttime(pid)
            if st is not None and st >= not_before:
                members.append(pid)
    return members


def reap(pid: int) -> None:
    """Collect a child of ours that has exited (when `up` and `down` run in one process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_processes(processes: dict[str, dict], timeout: float = 20.0) -> None:
    """SIGTERM each recorded process group (only groups whose leader or members we started),
    wait for all of them, SIGKILL what is left after `timeout`."""

    def targets() -> list[int]:
        pids: list[int] = []
        for entry in processes.values():
            pids.extend(group_members(entry["pgid"], entry["starttime"]))
        return pids

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        pids = targets()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for entry in processes.values():
                reap(entry["pid"])
            if not targets():
                return
            time.sleep(0.1)
    left = targets()
    if left:
        raise StackError(f"processes still alive after SIGKILL: {left}")


# --------------------------------------------------------------------------- health checks


def http(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], Any]:
    data = None
    headers = {"Accept": "application/json"}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["X-Auth-Token"] = token
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    # Loopback only: never go through a proxy configured in the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, hdrs, payload


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        status, _, _ = http("GET", url, timeout=timeout)
    except (OSError, urllib.error.URLError):
        return False
    return status == 200


def memcached_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as s:
            s.sendall(b"version\r\n")
            return s.recv(64).startswith(b"VERSION")
    except OSError:
        return False


def tcp_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def health(state: dict) -> dict[str, str]:
    """name -> 'ok' or what is wrong, for every recorded process."""
    ports = state["ports"]
    checks = {
        "memcached": lambda: memcached_ok(ports["memcached"]),
        "keystone": lambda: http_ok(state["keystone"]["auth_url"]),
        "swift-account": lambda: tcp_ok(ports["swift_account"]),
        "swift-container": lambda: tcp_ok(ports["swift_container"]),
        "swift-object": lambda: tcp_ok(ports["swift_object"]),
        "swift-proxy": lambda: http_ok(state["swift"]["url"] + "/healthcheck"),
        "swift-tempauth": lambda: http_ok(state["swift"]["tempauth"]["url"] + "/healthcheck"),
    }
    result = {}
    for name, entry in state["processes"].items():
        if not is_ours(entry):
            result[name] = f"not running (pid {entry['pid']})"
        elif not checks[name]():
            result[name] = "running but not answering"
        else:
            result[name] = "ok"
    return result


def wait_until(what: str, check, timeout: float, log_path: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    hint = f"; see {log_path}" if log_path else ""
    raise StackError(f"{what} did not come up within {timeout:.0f}s{hint}")


# --------------------------------------------------------------------------- Keystone


def keystone_setup(d: Path, port: int, venv: Path) -> None:
    """Config, database (WAL), fernet and credential keys, bootstrap (admin, region, identity)."""
    kd = d / "keystone"
    kd.mkdir(parents=True)
    # What `keystone-manage fernet_setup` / `credential_setup` write (two Fernet keys, 0700/0600),
    # without their two seconds each of start-up.
    for repo in ("fernet-keys", "credential-keys"):
        (kd / repo).mkdir(mode=0o700)
        for index in ("0", "1"):
            key = kd / repo / index
            key.write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
            key.chmod(0o600)
    (kd / "keystone.conf").write_text(
        f"""[DEFAULT]
use_stderr = true
[database]
connection = sqlite:///{kd}/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = {kd}/fernet-keys
[fernet_receipts]
key_repository = {kd}/fernet-keys
[credential]
key_repository = {kd}/credential-keys
[identity]
# bcrypt's cheapest setting: password checks are on every test's path.
password_hash_rounds = 4
"""
    )
    manage = [str(venv / "bin" / "keystone-manage"), "--config-file", str(kd / "keystone.conf")]
    admin = USERS["admin"]
    url = f"http://{HOST}:{port}/v3"
    steps = [
        ["db_sync"],
        [
            "bootstrap",
            "--bootstrap-username", admin["username"],
            "--bootstrap-password", admin["password"],
            "--bootstrap-project-name", admin["project"],
            "--bootstrap-role-name", admin["role"],
            "--bootstrap-region-id", REGION,
            "--bootstrap-admin-url", url,
            "--bootstrap-public-url", url,
            "--bootstrap-internal-url", url,
        ],
    ]  # fmt: skip
    with open(d / "logs" / "keystone-setup.log", "ab") as out:
        for step in steps:
            rc = subprocess.run(
                manage + step, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            ).returncode
            if rc != 0:
                raise StackError(
                    f"keystone-manage {step[0]} failed ({rc}); see {d / 'logs/keystone-setup.log'}"
                )
            if step[0] == "db_sync":
                # One writer at a time otherwise: "database is locked" (HTTP 500) under load.
                with sqlite3.connect(kd / "keystone.db") as db:
                    db.execute("PRAGMA journal_mode=WAL").fetchone()


def keystone_start(d: Path, port: int, venv: Path) -> dict:
    env = dict(os.environ, OS_KEYSTONE_CONFIG_FILES=str(d / "keystone" / "keystone.conf"))
    argv = [
        str(venv / "bin" / "uwsgi"),
        "--http-socket", f"{HOST}:{port}",
        "--module", "keystone.wsgi.api:application",
        "--master", "--processes", "1",
        "--lazy-apps", "--die-on-term", "--need-app",
        "--buffer-size", "65535",
        # uwsgi's http-socket closes the connection after each response without saying so;
        # clients that pool connections (requests, keystoneauth) then get "connection reset"
        # on reuse. Say so. (Keep-alive via --http11-socket would let one idle client hold the
        # only worker.)
        "--add-header", "Connection: close",
    ]  # fmt: skip
    return spawn("keystone", argv, d / "logs", env=env)


def keystone_token(auth_url: str, user: dict) -> tuple[str, dict]:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": user["username"],
                        "password": user["password"],
                        "domain": {"name": DOMAIN},
                    }
                },
            },
            "scope": {"project": {"name": user["project"], "domain": {"name": DOMAIN}}},
        }
    }
    status, headers, payload = http("POST", f"{auth_url}/auth/tokens", body)
    if status != 201:
        raise StackError(f"password auth as {user['username']} failed: {status} {payload}")
    return headers["X-Subject-Token"], payload["token"]


def keystone_seed(state: dict) -> None:
    """Users, projects, roles and the object-store endpoints; fills state['users']."""
    auth_url = state["keystone"]["auth_url"]
    token, body = keystone_token(auth_url, USERS["admin"])

    def call(method: str, path: str, payload: Any = None, expect: int = 201) -> Any:
        status, _, result = http(method, auth_url + path, payload, token=token)
        if status != expect:
            raise StackError(f"{method} {path} -> {status}: {result}")
        return result

    roles = {r["name"]: r["id"] for r in call("GET", "/roles", expect=200)["roles"]}
    for name in ("admin", "member", "reader", "service"):
        if name not in roles:
            roles[name] = call("POST", "/roles", {"role": {"name": name}})["role"]["id"]

    users: dict[str, dict] = {}
    admin = dict(USERS["admin"], roles=[USERS["admin"]["role"]])
    admin["user_id"] = body["user"]["id"]
    admin["project_id"] = body["project"]["id"]
    users["admin"] = admin
    for key in ("demo", "swift"):
        spec = dict(USERS[key])
        project = call(
            "POST",
            "/projects",
            {"project": {"name": spec["project"], "domain_id": "default", "enabled": True}},
        )["project"]
        user = call(
            "POST",
            "/users",
            {
                "user": {
                    "name": spec["username"],
                    "password": spec["password"],
                    "domain_id": "default",
                    "default_project_id": project["id"],
                    "enabled": True,
                }
            },
        )["user"]
        spec["roles"] = [spec["role"]] + (["service"] if key == "swift" else [])
        for role in spec["roles"]:
            call(
                "PUT",
                f"/projects/{project['id']}/users/{user['id']}/roles/{roles[role]}",
                expect=204,
            )
        spec["user_id"] = user["id"]
        spec["project_id"] = project["id"]
        users[key] = spec

    service = call(
        "POST",
        "/services",
        {"service": {"type": "object-store", "name": "swift", "enabled": True}},
    )["service"]
    for interface in ("public", "internal", "admin"):
        call(
            "POST",
            "/endpoints",
            {
                "endpoint": {
                    "service_id": service["id"],
                    "interface": interface,
                    "region_id": REGION,
                    "url": state["swift"]["storage_url_template"],
                    "enabled": True,
                }
            },
        )
    for spec in users.values():
        spec["domain"] = DOMAIN
    state["users"] = users
    state["swift"]["demo_storage_url"] = (
        f"{state['swift']['url']}/v1/AUTH_{users['demo']['project_id']}"
    )


# --------------------------------------------------------------------------- Swift

RING_SCRIPT = """
import sys
from swift.common.ring import RingBuilder
etc, host = sys.argv[1], sys.argv[2]
for arg in sys.argv[3:]:
    kind, port = arg.split(":")
    b = RingBuilder(4, 1, 1)   # 16 partitions, 1 replica, min_part_hours 1
    b.add_dev({"region": 1, "zone": 1, "ip": host, "port": int(port), "device": "d1",
               "weight": 1, "meta": ""})
    b.rebalance()
    b.get_ring().save(f"{etc}/{kind}.ring.gz")
    b.save(f"{etc}/{kind}.builder")
"""


def swift_python() -> str:
    """The interpreter Debian's Swift runs under (from swift-ring-builder's #! line)."""
    exe = shutil.which("swift-ring-builder")
    if exe is None:
        raise StackError("swift-ring-builder not found: run tests/services/install.sh")
    words = Path(exe).read_text(errors="replace").splitlines()[0].removeprefix("#!").split()
    if Path(words[0]).name == "env":  # #!/usr/bin/env python3
        return shutil.which(words[1]) or words[1]
    return words[0]


def check_reachable_by(path: Path, user: str) -> None:
    """Swift's servers run as `user`: every directory above its devices must let it through."""
    if user != "swift":
        return
    for parent in [path, *path.parents]:
        st = parent.stat()
        if not st.st_mode & stat.S_IXOTH and pwd.getpwuid(st.st_uid).pw_name != user:
            raise StackError(
                f"{parent} is not traversable by user {user} (mode {oct(st.st_mode & 0o777)}),"
                " which Swift's servers run as: choose a STATE_DIR below world-traversable"
                " directories"
            )


def pipeline(auth: str) -> str:
    return (
        "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats "
        f"{auth} copy slo dlo versioned_writes proxy-logging proxy-server"
    )


def swift_configure(d: Path, ports: dict[str, int]) -> None:
    sd = d / "swift"
    etc, node, cache = sd / "etc", sd / "node", sd / "cache"
    for p in (etc, node / "d1", cache):
        p.mkdir(parents=True)
    user = service_user()
    check_reachable_by(node, user)
    if os.geteuid() == 0:
        for p in (node, node / "d1", cache):
            shutil.chown(p, user, user)
    (etc / "swift.conf").write_text(
        """[swift-hash]
swift_hash_path_prefix = replab-tests-prefix
swift_hash_path_suffix = replab-tests-suffix
[storage-policy:0]
name = Policy-0
default = yes
"""
    )
    common_default = f"""[DEFAULT]
bind_ip = {HOST}
workers = 1
user = {user}
swift_dir = {etc}
recon_cache_path = {cache}
log_name = swift
"""
    for kind in ("account", "container", "object"):
        (etc / f"{kind}-server.conf").write_text(
            f"""{common_default}bind_port = {ports["swift_" + kind]}
devices = {node}
mount_check = false
[pipeline:main]
pipeline = healthcheck recon {kind}-server
[app:{kind}-server]
use = egg:swift#{kind}
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:recon]
use = egg:swift#recon
recon_cache_path = {cache}
"""
        )
    rings = [f"{kind}:{ports['swift_' + kind]}" for kind in ("account", "container", "object")]
    with open(d / "logs" / "swift-rings.log", "ab") as out:
        rc = subprocess.run(
            [swift_python(), "-c", RING_SCRIPT, str(etc), HOST, *rings],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc != 0:
        raise StackError(f"building Swift's rings failed; see {d / 'logs/swift-rings.log'}")

    memcache = f"{HOST}:{ports['memcached']}"
    filters = f"""[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = {memcache}
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
"""
    auth_url = f"http://{HOST}:{ports['keystone']}/v3"
    swift_user = USERS["swift"]
    service_auth = f"""auth_url = {auth_url}
auth_type = password
username = {swift_user["username"]}
password = {swift_user["password"]}
project_name = {swift_user["project"]}
user_domain_name = {DOMAIN}
project_domain_name = {DOMAIN}
"""
    # authtoken must come before s3api/s3token; keystoneauth after them.
    (etc / "proxy-server.conf").write_text(
        f"""{common_default}bind_port = {ports["swift"]}
[pipeline:main]
pipeline = {pipeline("authtoken s3api s3token keystoneauth")}
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = {auth_url}
{service_auth}delay_auth_decision = True
memcached_servers = {memcache}
[filter:s3token]
use = egg:swift#s3token
auth_uri = {auth_url}
{service_auth}[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
{filters}"""
    )
    user_key = "user_" + TEMPAUTH["user"].replace(":", "_")
    (etc / "proxy-tempauth.conf").write_text(
        f"""{common_default}bind_port = {ports["swift_tempauth"]}
[pipeline:main]
pipeline = {pipeline("s3api tempauth")}
[filter:tempauth]
use = egg:swift#tempauth
{user_key} = {TEMPAUTH["key"]} .admin
{filters}"""
    )


def swift_start(d: Path, processes: dict[str, dict]) -> None:
    etc, logs = d / "swift" / "etc", d / "logs"
    for kind in ("account", "container", "object"):
        processes[f"swift-{kind}"] = spawn(
            f"swift-{kind}",
            [shutil.which(f"swift-{kind}-server") or "", str(etc / f"{kind}-server.conf"), "-v"],
            logs,
        )
    proxy = shutil.which("swift-proxy-server") or ""
    processes["swift-proxy"] = spawn(
        "swift-proxy", [proxy, str(etc / "proxy-server.conf"), "-v"], logs
    )
    processes["swift-tempauth"] = spawn(
        "swift-tempauth", [proxy, str(etc / "proxy-tempauth.conf"), "-v"], logs
    )


# --------------------------------------------------------------------------- state


def state_path(d: Path) -> Path:
    return d / STATE_FILE


def load_state(d: Path) -> dict | None:
    try:
        return json.loads(state_path(d).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise StackError(f"{state_path(d)} is not valid JSON: {exc}") from exc


def write_state(d: Path, state: dict) -> None:
    tmp = state_path(d).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(state_path(d))


def base_state(d: Path, ports: dict[str, int]) -> dict:
    ks = f"http://{HOST}:{ports['keystone']}"
    sw = f"http://{HOST}:{ports['swift']}"
    ta = f"http://{HOST}:{ports['swift_tempauth']}"
    return {
        "format": FORMAT_VERSION,
        "state_dir": str(d),
        "region": REGION,
        "domain": DOMAIN,
        "ports": ports,
        "keystone": {"url": ks, "auth_url": f"{ks}/v3", "identity_api_version": 3},
        "swift": {
            "url": sw,
            "s3_endpoint": sw,
            "s3_region": "us-east-1",
            "storage_url_template": f"{sw}/v1/AUTH_%(project_id)s",
            "tempauth": {
                "url": ta,
                "auth_url": f"{ta}/auth/v1.0",
                "s3_endpoint": ta,
                "user": TEMPAUTH["user"],
                "key": TEMPAUTH["key"],
            },
        },
        "memcached": {"servers": f"{HOST}:{ports['memcached']}"},
        "processes": {},
        "pids": {},
        "logs": {},
    }


class Lock:
    """An exclusive lock on STATE_DIR/.lock, so that concurrent `up`/`down` calls serialise."""

    def __init__(self, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        self.f = open(d / ".lock", "w")

    def __enter__(self) -> Lock:
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def wipe(d: Path) -> None:
    """Empty STATE_DIR for a fresh stack, refusing a directory that is not ours."""
    entries = [p for p in d.iterdir() if p.name != ".lock"]
    if entries and not (d / MARKER).exists():
        raise StackError(f"{d} is not empty and was not made by openstack.py: refusing to wipe it")
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# --------------------------------------------------------------------------- verbs


def up(d: Path) -> tuple[dict, bool]:
    """Start (or reuse) the stack in d. Returns (state, reused)."""
    t0 = time.monotonic()
    ports = ports_from_env()
    with Lock(d):
        old = load_state(d)
        if old is not None:
            if old.get("format") == FORMAT_VERSION and old.get("ports") == ports:
                report = health(old)
                if all(v == "ok" for v in report.values()) and "users" in old:
                    log(f"reusing the running stack in {d} ({time.monotonic() - t0:.2f}s)")
                    return old, True
                log(f"stack in {d} is not healthy ({report}); restarting it")
            else:
                log(f"stack in {d} was started with other settings; restarting it")
            stop_processes(old.get("processes", {}))

        missing = missing_binaries()
        if missing:
            raise StackError(
                "missing: " + ", ".join(missing) + ". Run: bash tests/services/install.sh"
            )
        busy = [f"{name}={p} ({PORTS[name][0]})" for name, p in ports.items() if not port_free(p)]
        if busy:
            raise StackError(
                "ports already in use on 127.0.0.1: "
                + ", ".join(busy)
                + ". Stop what holds them or choose other ports with the variables named."
            )

        wipe(d)
        (d / MARKER).write_text("state of tests/services/openstack.py; `up` may wipe this\n")
        (d / "logs").mkdir()
        state = base_state(d, ports)
        processes: dict[str, dict] = state["processes"]
        venv = keystone_venv()
        timings: dict[str, float] = {}

        def timed(name: str, fn, *args) -> Any:
            t = time.monotonic()
            result = fn(*args)
            timings[name] = round(time.monotonic() - t, 2)
            return result

        try:
            memcached_argv = [shutil.which("memcached") or "memcached", "-l", HOST]
            memcached_argv += ["-p", str(ports["memcached"]), "-U", "0", "-m", "64"]
            if os.geteuid() == 0:
                memcached_argv += ["-u", "memcache"]  # memcached refuses to run as root
            processes["memcached"] = spawn("memcached", memcached_argv, d / "logs")

            # Keystone's setup (about 10 s of keystone-manage) and Swift's (rings, servers)
            # are independent: run them side by side.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                ks_setup = pool.submit(timed, "keystone_setup", keystone_setup, d,
                                       ports["keystone"], venv)  # fmt: skip
                try:
                    timed("swift_config_and_rings", swift_configure, d, ports)
                    swift_start(d, processes)
                finally:
                    ks_setup_error = ks_setup.exception()
            if ks_setup_error is not None:
                raise ks_setup_error
            processes["keystone"] = keystone_start(d, ports["keystone"], venv)
            t = time.monotonic()
            wait_until("keystone", lambda: http_ok(state["keystone"]["auth_url"]), 60,
                       processes["keystone"]["log"])  # fmt: skip
            timings["keystone_start"] = round(time.monotonic() - t, 2)
            timed("keystone_seed", keystone_seed, state)
            t = time.monotonic()
            for name, url in (
                ("swift-proxy", state["swift"]["url"]),
                ("swift-tempauth", state["swift"]["tempauth"]["url"]),
            ):
                wait_until(name, lambda u=url: http_ok(u + "/healthcheck"), 60,
                           processes[name]["log"])  # fmt: skip
            for kind in ("account", "container", "object"):
                wait_until(f"swift-{kind}", lambda k=kind: tcp_ok(ports["swift_" + k]), 30,
                           processes[f"swift-{kind}"]["log"])  # fmt: skip
            wait_until("memcached", lambda: memcached_ok(ports["memcached"]), 10,
                       processes["memcached"]["log"])  # fmt: skip
            timings["swift_wait"] = round(time.monotonic() - t, 2)
        except BaseException:
            log("start failed: stopping what was started")
            stop_processes(processes)
            write_state(d, {**state, "failed": True})
            raise

        state["pids"] = {name: p["pid"] for name, p in processes.items()}
        state["logs"] = {name: p["log"] for name, p in processes.items()}
        state["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        state["startup_seconds"] = round(time.monotonic() - t0, 2)
        state["timings"] = timings
        write_state(d, state)
        detail = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        log(f"started in {state['startup_seconds']:.1f}s ({detail})")
        return state, False


def down(d: Path) -> bool:
    """Stop what the state file records. Returns False if there was nothing recorded."""
    with Lock(d):
        state = load_state(d)
        if state is None:
            log(f"no stack recorded in {d}")
            return False
        t = time.monotonic()
        stop_processes(state.get("processes", {}))
        state_path(d).unlink()
        log(f"stopped {len(state.get('processes', {}))} processes in {time.monotonic() - t:.1f}s")
        return True


def status(d: Path) -> bool:
    state = load_state(d)
    if state is None:
        log(f"no stack recorded in {d}")
        return False
    report = health(state)
    for name, result in report.items():
        print(f"  {name:16} pid {state['processes'][name]['pid']:>7}  {result}")
    healthy = bool(report) and all(v == "ok" for v in report.values()) and "users" in state
    log(f"{'healthy' if healthy else 'NOT healthy'}: {state_path(d)}")
    return healthy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["up", "down", "status"])
    parser.add_argument(
        "state_dir",
        nargs="?",
        default=os.environ.get("REPLAB_OPENSTACK_STATE_DIR") or str(DEFAULT_STATE_DIR),
    )
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
