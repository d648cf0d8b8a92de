"""The ``site=local`` lab: the lab's services as local processes on 127.0.0.1.

What runs, each in its own process group, each writing to ``<workdir>/lab/logs/NAME.log``:

- ``postgres`` (only with ``lab.mlflow_backend: postgresql``): a PostgreSQL 15 cluster of the
  lab's own in ``<workdir>/lab/postgres``, TCP on a loopback port only (no Unix socket),
  password authentication (scram-sha-256) with a password kept in
  ``<workdir>/secrets/postgres.env``. PostgreSQL refuses to run as root: as root it runs as
  the system user ``postgres`` (created when missing), which owns the cluster directory.
- ``mlflow``: ``mlflow server`` with the backend store (sqlite ``<workdir>/lab/mlflow.db``, or
  the cluster above) and proxied artifacts (``--serve-artifacts``) in the artifacts bucket:
  the local directory ``<workdir>/buckets/<artifacts>``, or the S3 bucket when the config has
  an S3 endpoint and the secrets store EC2 keys. Clients need no object-store keys.
- ``jupyter``: JupyterLab with the token from ``<workdir>/secrets/lab.env`` (passed in the
  environment, never on a command line that ``ps`` shows) and ``MLFLOW_TRACKING_URI`` set
  for its kernels.

Before MLflow starts, :func:`launch` restores the latest database backup when the database is
new or empty (:func:`replab.lab.backup.restore_if_new`), so history survives a lost disk.

State: ``<workdir>/lab/local.json`` (PIDs with their start times, ports, URLs, backend) and
``<workdir>/lab.json`` (the endpoints; where the token is, never the token). A second
:func:`launch` reuses every service still running and healthy; :func:`stop` ends exactly the
recorded processes (and their descendants), and is idempotent.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import pwd
import secrets as _secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..credentials import S3_REGION, SecretsStore
from ..errors import CloudError, ConfigError, ResourceTimeout
from . import backup as _backup
from .backup import BackupInfo, Database

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

STATE_SCHEMA = 1
LAB_DIR = "lab"
STATE_FILE = "local.json"
LAB_FILE = "lab.json"
SQLITE_FILE = "mlflow.db"
POSTGRES_DIR = "postgres"
POSTGRES_SECRET = "postgres.env"  # in the secrets store: PGPASSWORD=...
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_JUPYTER_PORT = 8888
HOST = "127.0.0.1"
PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")  # Debian 12 (bookworm): postgresql 15
PG_SYSTEM_USER = "postgres"
DB_USER = DB_NAME = "mlflow"
SERVICES = ("postgres", "mlflow", "jupyter")  # start order; stop goes the other way
TIMEOUTS = {"postgres": 60.0, "mlflow": 180.0, "jupyter": 90.0}

# The Popen objects of the services this process started: kept so that they are reaped
# (no zombies while the caller lives) and never garbage-collected while running.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServiceFailed(CloudError):
    """A lab service exited, or could not be started; the message has its log's tail."""


# -- paths -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paths:
    """Where the local lab keeps its files."""

    workdir: Path

    @property
    def root(self) -> Path:
        return self.workdir / LAB_DIR

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def lab_file(self) -> Path:
        return self.workdir / LAB_FILE

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    @property
    def sqlite(self) -> Path:
        return self.root / SQLITE_FILE

    @property
    def postgres(self) -> Path:
        return self.root / POSTGRES_DIR

    @property
    def jupyter_runtime(self) -> Path:
        return self.root / "jupyter-runtime"


def paths(cfg) -> Paths:
    return Paths(cfg.workdir_path.absolute())


# -- what launch returns ---------------------------------------------------------------------
@dataclass(frozen=True)
class LabInfo:
    """The running local lab. ``reused``: every service was already running and healthy."""

    site: str
    backend: str
    mlflow_url: str
    jupyter_url: str
    pids: dict[str, int]
    ports: dict[str, int]
    reused: bool
    started_at: str
    lab_file: str
    restored: BackupInfo | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["restored"] = self.restored.to_dict() if self.restored else None
        d["notes"] = list(self.notes)
        return d


# -- small helpers ---------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(progress: Progress | None, message: str) -> None:
    log.info("%s", message)
    if progress:
        progress(message)


def _write_json(path: Path, data: Mapping[str, Any], mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def _read_state(p: Paths) -> dict[str, Any]:
    try:
        data = json.loads(p.state.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("%s is not JSON; ignoring it", p.state)
        return {}
    return data if isinstance(data, dict) else {}


def log_tail(path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of a log file ("" when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers bind (SO_REUSEADDR): a port in TIME_WAIT is free, a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port that nothing listens on at 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _choose_port(what: str, asked: int | None, previous: int | None, default: int,
                 notes: list[str], progress: Progress | None) -> int:
    if asked is not None:
        if not 1 <= asked <= 65535:
            raise ConfigError([(f"{what}_port", f"{asked} is not a TCP port (1-65535)")])
        if not _port_free(asked):
            raise ConfigError([(f"{what}_port", f"{asked} is in use on {HOST}; choose another "
                                                "port or leave it empty for a free one")])
        return asked
    for port in dict.fromkeys(p for p in (previous, default) if p):
        if _port_free(port):
            if port != default:
                log.info("%s: port %d (the one it had last time)", what, port)
            return port
    port = free_port()
    note = f"{what}: port {default} is in use; using {port}"
    notes.append(note)
    _say(progress, note)
    return port


def _http(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10) -> int:
    """HTTP status of a GET (no proxies, no redirects followed); 0 when unreachable."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


# -- processes -------------------------------------------------------------------------------
def _process(record: Mapping[str, Any] | None):
    """The live psutil.Process of a recorded service, or None (gone, a zombie, or the PID
    now belongs to another process: its start time differs)."""
    import psutil

    if not record or not record.get("pid"):
        return None
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record.get("create_time", 0))) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None
    return proc


def _spawn(name: str, argv: list[str], *, env: Mapping[str, str], log_path: Path,
           cwd: Path, user: pwd.struct_passwd | None = None) -> dict[str, Any]:
    """Start ``argv`` in a new session (its own process group), output appended to
    ``log_path``; returns its record (pid, start time, log)."""
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with open(log_path, "ab") as fh:
        fh.write(f"\n=== replab: {name} starting at {_now()}\n".encode())
        fh.flush()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                    start_new_session=True, close_fds=True, **extra)
        except OSError as exc:
            raise ServiceFailed(f"{name}: cannot start {argv[0]}: {exc}") from None
    _CHILDREN[proc.pid] = proc
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        created = time.time()
    log.debug("%s started: pid %d, log %s", name, proc.pid, log_path)
    return {"pid": proc.pid, "create_time": created, "log": str(log_path),
            "started_at": _now()}


def _terminate(name: str, record: Mapping[str, Any], sig: int = signal.SIGTERM,
               timeout: float = 20) -> str:
    """Stop one recorded service: ``sig`` to its process group (it leads one), then SIGKILL
    to whatever of it and its descendants is left after ``timeout`` s."""
    import psutil

    proc = _process(record)
    if proc is None:
        return f"{name}: not running"
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc]
    pid = proc.pid
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    child = _CHILDREN.pop(pid, None)
    _gone, alive = psutil.wait_procs(family, timeout=timeout)
    if alive:
        log.warning("%s: %d process(es) still running %ss after signal %d; killing them",
                    name, len(alive), timeout, sig)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
    if child is not None:
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            pass
    return f"{name}: stopped (pid {pid})"


def _wait(name: str, record: Mapping[str, Any], check: Callable[[], bool], timeout: float,
          progress: Progress | None) -> float:
    """Wait until ``check()`` is true; the time it took. Raises ServiceFailed when the
    process exits first, ResourceTimeout after ``timeout`` s; both carry the log's tail."""
    start = time.monotonic()
    deadline = start + timeout
    last_note = start
    log_path = Path(record["log"])
    while True:
        if check():
            return time.monotonic() - start
        if _process(record) is None:
            child = _CHILDREN.pop(int(record["pid"]), None)
            code = child.poll() if child is not None else None
            with contextlib.suppress(OSError):  # what it left of its process group
                os.killpg(int(record["pid"]), signal.SIGKILL)
            raise ServiceFailed(f"{name} exited{f' with code {code}' if code is not None else ''}"
                                f" before it was ready; the end of {log_path}:\n"
                                f"{log_tail(log_path)}")
        now = time.monotonic()
        if now >= deadline:
            _terminate(name, record, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            raise ResourceTimeout(f"{name} (pid {record['pid']}) was not ready after "
                                  f"{timeout:.0f}s; the end of {log_path}:\n"
                                  f"{log_tail(log_path)}")
        if now - last_note >= 10:
            _say(progress, f"{name}: still starting ({now - start:.0f}s)")
            last_note = now
        time.sleep(0.2)


# -- PostgreSQL --------------------------------------------------------------------------------
def pg_bin_dir() -> Path:
    """The directory of PostgreSQL's server programs: ``$REPLAB_PG_BIN``, else Debian's
    /usr/lib/postgresql/15/bin, else the newest /usr/lib/postgresql/N/bin, else where
    ``initdb`` is on the PATH. Raises ConfigError when there is none."""
    if os.environ.get("REPLAB_PG_BIN"):
        return Path(os.environ["REPLAB_PG_BIN"])
    candidates = [PG_BIN_DIR] + sorted(
        PG_BIN_DIR.parent.parent.glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for directory in candidates:
        if os.access(directory / "initdb", os.X_OK):
            return directory
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ConfigError("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin "
                      "or on the PATH): apt-get install postgresql, or set REPLAB_PG_BIN, or "
                      "use lab.mlflow_backend: sqlite")


def pg_binary(name: str) -> str:
    """Path of a PostgreSQL program (``initdb``, ``postgres``, ``pg_dump``, ...) from
    :func:`pg_bin_dir`, so that client and server versions match.

    Raises ConfigError when it is not installed."""
    path = pg_bin_dir() / name
    if not os.access(path, os.X_OK):
        raise ConfigError(f"PostgreSQL's {name} is not at {path}: install PostgreSQL "
                          "(Debian: apt-get install postgresql) or set REPLAB_PG_BIN, or use "
                          "lab.mlflow_backend: sqlite")
    return str(path)


def _need_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError("the PostgreSQL backend needs psycopg 3: pip install "
                          "'psycopg[binary]' (or use lab.mlflow_backend: sqlite)") from None


def _postgres_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: None (this user) unless we are root, which PostgreSQL
    refuses; then the system user ``postgres``, created when missing."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    log.info("creating the system user %s to run PostgreSQL", PG_SYSTEM_USER)
    proc = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                           "--home-dir", "/var/lib/postgresql", "--shell", "/usr/sbin/nologin",
                           PG_SYSTEM_USER], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ConfigError(f"PostgreSQL cannot run as root and creating the user "
                          f"{PG_SYSTEM_USER!r} failed: {proc.stderr.strip()}")
    return pwd.getpwnam(PG_SYSTEM_USER)


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Raise ConfigError when ``user`` cannot traverse every directory above ``path``."""
    import grp

    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for parent in reversed(path.absolute().parents):
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in gids:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise ConfigError(
                f"PostgreSQL runs as user {user.pw_name!r} (it refuses root), which cannot "
                f"reach {path}: {parent} (mode {oct(st.st_mode & 0o777)}) is closed to it. "
                f"Use a workdir it can reach, or `chmod o+x {parent}`, or use "
                "lab.mlflow_backend: sqlite")


def _pg_password(workdir: Path) -> str:
    store = SecretsStore(workdir)
    text = store.read(POSTGRES_SECRET) or ""
    for line in text.splitlines():
        if line.startswith("PGPASSWORD="):
            return line.partition("=")[2].strip()
    password = _secrets.token_urlsafe(24)
    store.write(POSTGRES_SECRET, "# the lab's PostgreSQL (user mlflow); mode 0600\n"
                                 f"PGPASSWORD={password}\n")
    return password


def _chown(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _pg_init(p: Paths, password: str, user: pwd.struct_passwd | None,
             progress: Progress | None) -> None:
    data = p.postgres
    data.mkdir(parents=True, exist_ok=True)
    _chown(data, user)
    os.chmod(data, 0o700)
    _say(progress, f"postgres: creating the cluster in {data}")
    fd, pwfile = tempfile.mkstemp(prefix="replab-pw-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        _chown(Path(pwfile), user)
        extra: dict[str, Any] = {}
        if user is not None:
            extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        proc = subprocess.run([pg_binary("initdb"), "-D", str(data), "-U", DB_USER,
                               f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                               "--no-locale"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120, cwd="/", **extra)
    finally:
        os.unlink(pwfile)
    with open(p.log("postgres"), "a") as fh:
        fh.write(f"\n=== replab: initdb at {_now()}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise ServiceFailed(f"postgres: initdb failed for {data}:\n{proc.stderr[-2000:]}")
    hba = data / "pg_hba.conf"
    hba.write_text("# replab: TCP on 127.0.0.1 only, passwords (scram-sha-256)\n"
                   "host all all 127.0.0.1/32 scram-sha-256\n")
    _chown(hba, user)


def _pg_connect(db: Database, dbname: str | None = None, timeout: float = 10):
    import psycopg

    return psycopg.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                            dbname=dbname or db.name, connect_timeout=max(1, int(timeout)))


def _pg_ready(db: Database) -> bool:
    import psycopg

    try:
        conn = _pg_connect(db, "postgres")
    except psycopg.OperationalError:
        return False
    conn.close()
    return True


def _ensure_pg_database(db: Database) -> None:
    conn = _pg_connect(db, "postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db.name}"')
                log.info("created database %s", db.name)
    finally:
        conn.close()


def _start_postgres(cfg, p: Paths, port: int, progress: Progress | None
                    ) -> tuple[dict[str, Any], Database]:
    _need_psycopg()
    postgres = pg_binary("postgres")
    user = _postgres_user()
    if user is not None:
        _check_reachable(p.postgres, user)
    password = _pg_password(p.workdir)
    if not (p.postgres / "PG_VERSION").exists():
        _pg_init(p, password, user, progress)
    db = Database.postgres(HOST, port, DB_USER, DB_NAME, password)
    argv = [postgres, "-D", str(p.postgres), "-c", f"listen_addresses={HOST}", "-p", str(port),
            "-c", "unix_socket_directories=", "-c", "max_connections=100"]
    record = _spawn("postgres", argv, env=_base_env(), log_path=p.log("postgres"),
                    cwd=p.postgres, user=user)
    record.update(port=port, data_dir=str(p.postgres),
                  user=user.pw_name if user else pwd.getpwuid(os.geteuid()).pw_name)
    took = _wait("postgres", record, lambda: _pg_ready(db), TIMEOUTS["postgres"], progress)
    _ensure_pg_database(db)
    _say(progress, f"postgres: ready on {HOST}:{port} (pid {record['pid']}, {took:.1f}s)")
    return record, db


# -- MLflow and Jupyter ------------------------------------------------------------------------
def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "PGPASSWORD",
                "JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE"):
        env.pop(key, None)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # MLflow's job runner (GenAI evaluation jobs) is 8 more processes that replab never uses.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env["NO_PROXY"] = env["no_proxy"] = ",".join(
        x for x in ("127.0.0.1", "localhost", env.get("NO_PROXY")) if x)
    return env


def artifacts_destination(cfg) -> tuple[str, dict[str, str]]:
    """Where MLflow keeps artifacts, and the environment the server needs for it: the S3
    artifacts bucket when the config has an S3 endpoint and the secrets store EC2 keys,
    else the local bucket directory ``<workdir>/buckets/<artifacts>``."""
    ec2 = SecretsStore(cfg.workdir).credentials().get("ec2") or {}
    if cfg.s3_endpoint and ec2.get("access") and ec2.get("secret"):
        env = {"AWS_ACCESS_KEY_ID": ec2["access"], "AWS_SECRET_ACCESS_KEY": ec2["secret"],
               "AWS_DEFAULT_REGION": S3_REGION, "MLFLOW_S3_ENDPOINT_URL": cfg.s3_endpoint}
        return f"s3://{cfg.buckets.artifacts}/", env
    if not cfg.is_local:
        raise ConfigError(f"no EC2 credential in {SecretsStore(cfg.workdir).dir} for the "
                          f"artifacts bucket {cfg.buckets.artifacts}: run 1_create_credentials")
    directory = cfg.workdir_path.absolute() / "buckets" / cfg.buckets.artifacts
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory), {}


def _start_mlflow(cfg, p: Paths, db: Database, port: int, progress: Progress | None
                  ) -> dict[str, Any]:
    destination, s3_env = artifacts_destination(cfg)
    env = _base_env()
    bundle = env.get("AWS_CA_BUNDLE")
    if bundle and not Path(bundle).is_file():
        env.pop("AWS_CA_BUNDLE")  # botocore fails on a bundle that is not there
    env.update(s3_env)
    env.update(db.env())
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db.uri,
            "--artifacts-destination", destination, "--serve-artifacts", "--host", HOST,
            "--port", str(port), "--workers", "1"]
    url = f"http://{HOST}:{port}"
    _say(progress, f"mlflow: starting on {url} ({db.backend}, artifacts in {destination})")
    record = _spawn("mlflow", argv, env=env, log_path=p.log("mlflow"), cwd=p.root)
    record.update(port=port, url=url, backend=db.backend, database=db.uri,
                  artifacts=destination)
    took = _wait("mlflow", record, lambda: _http(f"{url}/health") == 200, TIMEOUTS["mlflow"],
                 progress)
    _say(progress, f"mlflow: healthy at {url} (pid {record['pid']}, {took:.1f}s)")
    return record


def jupyter_root(cfg) -> Path:
    """JupyterLab's root: the repository when it is a local directory, else the workdir."""
    repo = cfg.repository or ""
    if repo.startswith("file://"):
        repo = repo[len("file://"):]
    if repo and not repo.startswith(("http://", "https://", "ssh://")) and "@" not in repo:
        path = Path(repo).expanduser()
        if path.is_dir():
            return path.absolute()
    return cfg.workdir_path.absolute()


def _jupyter_ok(url: str, token: str) -> bool:
    return _http(f"{url}/api/status", {"Authorization": f"token {token}"}) == 200


def _start_jupyter(cfg, p: Paths, mlflow_url: str, port: int, progress: Progress | None
                   ) -> dict[str, Any]:
    lab_env = SecretsStore(cfg.workdir).lab_env()
    token = lab_env.get("JUPYTER_TOKEN")
    if not token:
        raise ConfigError(f"no JUPYTER_TOKEN in {SecretsStore(cfg.workdir).path('lab.env')}: "
                          "run 1_create_credentials")
    env = _base_env()
    env.update({k: v for k, v in lab_env.items() if v})  # token, AWS keys, HF/GH tokens
    env.update({"MLFLOW_TRACKING_URI": mlflow_url, "MLFLOW_EXPERIMENT_NAME": cfg.experiment,
                "JUPYTER_RUNTIME_DIR": str(p.jupyter_runtime), "REPLAB_WORKDIR": str(p.workdir)})
    p.jupyter_runtime.mkdir(parents=True, exist_ok=True)
    os.chmod(p.jupyter_runtime, 0o700)
    root = jupyter_root(cfg)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", HOST,
            "--port", str(port), "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    url = f"http://{HOST}:{port}"
    _say(progress, f"jupyter: starting on {url} (root {root})")
    record = _spawn("jupyter", argv, env=env, log_path=p.log("jupyter"), cwd=root)
    record.update(port=port, url=url, mlflow_url=mlflow_url, root_dir=str(root))
    took = _wait("jupyter", record, lambda: _jupyter_ok(url, token), TIMEOUTS["jupyter"],
                 progress)
    _say(progress, f"jupyter: ready at {url} (pid {record['pid']}, {took:.1f}s)")
    return record


# -- health of recorded services ---------------------------------------------------------------
def _healthy(cfg, name: str, record: Mapping[str, Any] | None) -> bool:
    if _process(record) is None:
        return False
    assert record is not None
    if name == "postgres":
        try:
            return _pg_ready(database(cfg, record))
        except (ConfigError, ImportError):
            return False
    if name == "mlflow":
        return _http(f"{record['url']}/health") == 200
    token = SecretsStore(cfg.workdir).lab_env().get("JUPYTER_TOKEN", "")
    return bool(token) and _jupyter_ok(record["url"], token)


def database(cfg, pg_record: Mapping[str, Any] | None = None) -> Database:
    """The local lab's MLflow database (the cluster's port from the state when running)."""
    p = paths(cfg)
    if cfg.lab.mlflow_backend == "sqlite":
        return Database.sqlite(p.sqlite)
    if pg_record is None:
        pg_record = _read_state(p).get("services", {}).get("postgres")
    port = int(pg_record["port"]) if pg_record and pg_record.get("port") else None
    return Database.postgres(HOST, port, DB_USER, DB_NAME, _pg_password(p.workdir))


def running_database(cfg) -> Database | None:
    """The database of the local lab when its store is usable now: the sqlite file (which
    may not exist yet), or the PostgreSQL cluster when its recorded server runs; else None."""
    if cfg.lab.mlflow_backend == "sqlite":
        return database(cfg)
    record = _read_state(paths(cfg)).get("services", {}).get("postgres")
    if record and _process(record) is not None:
        return database(cfg, record)
    return None


def mlflow_running(cfg) -> bool:
    """Whether the local lab's recorded MLflow server process is alive."""
    return _process(_read_state(paths(cfg)).get("services", {}).get("mlflow")) is not None


def start_database(cfg, *, progress: Progress | None = None) -> Database:
    """Start only the lab's PostgreSQL cluster (for a restore before launch); reuses a
    running one. For sqlite, nothing to start. Returns the database."""
    if cfg.lab.mlflow_backend == "sqlite":
        return database(cfg)
    p = paths(cfg)
    _prepare_dirs(p)
    with _locked(p):
        return _start_database(cfg, p, progress)


def _start_database(cfg, p: Paths, progress: Progress | None) -> Database:
    state = _read_state(p)
    services = dict(state.get("services") or {})
    record = services.get("postgres")
    if _healthy(cfg, "postgres", record):
        return database(cfg, record)
    _stop_stale(cfg, "postgres", record)
    previous = (record or {}).get("port") or (state.get("last_ports") or {}).get("postgres")
    port = previous if previous and _port_free(previous) else free_port()
    record, db = _start_postgres(cfg, p, port, progress)
    services["postgres"] = record
    _save_state(p, cfg, services, state.get("started_at") or _now())
    return db


# -- state -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(p: Paths, timeout: float = 600):
    """One launch / stop / database start at a time per work directory (two notebooks, or
    a notebook and the CLI, may try at once)."""
    fd = os.open(p.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ResourceTimeout(f"another launch or stop of this lab holds "
                                          f"{p.root / '.lock'} for more than {timeout:.0f}s"
                                          ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _prepare_dirs(p: Paths) -> None:
    p.root.mkdir(parents=True, exist_ok=True)
    # Others may traverse (PostgreSQL's own user must reach its cluster) but not list.
    os.chmod(p.root, 0o711)
    p.logs.mkdir(exist_ok=True)
    os.chmod(p.logs, 0o700)


def _save_state(p: Paths, cfg, services: Mapping[str, Any], started_at: str) -> None:
    _write_json(p.state, {"schema_version": STATE_SCHEMA, "site": "local",
                          "backend": cfg.lab.mlflow_backend, "started_at": started_at,
                          "updated_at": _now(), "services": dict(services)})


def _lab_document(cfg, services: Mapping[str, Any], status: str, started_at: str
                  ) -> dict[str, Any]:
    mlflow, jupyter = services.get("mlflow") or {}, services.get("jupyter") or {}
    store = SecretsStore(cfg.workdir)
    described: dict[str, Any] = {}
    for name in SERVICES:
        r = services.get(name)
        if not r:
            continue
        described[name] = {k: r[k] for k in ("pid", "port", "url", "log", "backend", "database",
                                             "artifacts", "root_dir", "data_dir") if k in r}
    return {
        "schema_version": STATE_SCHEMA,
        "site": "local",
        "status": status,
        "started_at": started_at,
        "updated_at": _now(),
        "backend": cfg.lab.mlflow_backend,
        "mlflow_url": mlflow.get("url"),
        "jupyter_url": jupyter.get("url"),
        "jupyter_token": f"JUPYTER_TOKEN in {store.path(store.LAB_ENV)} (a secret: open "
                         f"{jupyter.get('url') or 'the Jupyter URL'}/lab?token=<it>)",
        "tunnel": None,
        "services": described,
        "state_file": str(paths(cfg).state),
    }


def _write_lab_file(cfg, services: Mapping[str, Any], status: str, started_at: str) -> Path:
    p = paths(cfg)
    _write_json(p.lab_file, _lab_document(cfg, services, status, started_at))
    return p.lab_file


# -- the public verbs --------------------------------------------------------------------------
def launch(cfg, *, progress: Progress | None = None, mlflow_port: int | None = None,
           jupyter_port: int | None = None, restore: bool = True) -> LabInfo:
    """Start the local lab (or reuse what of it runs and is healthy) and wait until every
    service answers; writes ``<workdir>/lab/local.json`` and ``<workdir>/lab.json``.

    ``mlflow_port`` / ``jupyter_port``: fixed ports (an error when in use); by default 5000
    and 8888, or free ports when those are taken (said through ``progress`` and in
    ``notes``). ``restore``: before MLflow first opens a new or empty database, restore the
    latest backup from the backups bucket.

    Raises ConfigError (missing secrets or PostgreSQL, a port in use), ServiceFailed (a
    service exited), ResourceTimeout (not ready in time); both with the log's tail. What
    this call started is stopped again when it fails.
    """
    if not cfg.is_local:
        raise ConfigError([("site", f"{cfg.site!r}: the local launcher runs only site "
                                    "'local'; other sites run the lab on their server")])
    p = paths(cfg)
    _prepare_dirs(p)
    with _locked(p):
        return _launch(cfg, p, progress, mlflow_port, jupyter_port, restore)


def _launch(cfg, p: Paths, progress: Progress | None, mlflow_port: int | None,
            jupyter_port: int | None, restore: bool) -> LabInfo:
    state = _read_state(p)
    old = dict(state.get("services") or {}) if state.get("backend") == (
        cfg.lab.mlflow_backend) else {}
    if state.get("services") and not old:
        _say(progress, f"backend changed to {cfg.lab.mlflow_backend}: restarting the lab")
        for line in _stop(cfg, p):
            log.info("%s", line)
    last = {k: v for k, v in (state.get("last_ports") or {}).items() if v}
    last.update({k: v["port"] for k, v in old.items() if v.get("port")})
    notes: list[str] = []
    services: dict[str, Any] = {}
    started: list[str] = []
    started_at = state.get("started_at") or _now()
    restored: BackupInfo | None = None
    try:
        # PostgreSQL
        db: Database
        if cfg.lab.mlflow_backend == "postgresql":
            rec = old.get("postgres")
            if _healthy(cfg, "postgres", rec):
                services["postgres"] = rec
                db = database(cfg, rec)
                _say(progress, f"postgres: reused (pid {rec['pid']}, port {rec['port']})")
            else:
                _stop_stale(cfg, "postgres", rec)
                previous = last.get("postgres")
                port = previous if previous and _port_free(previous) else free_port()
                services["postgres"], db = _start_postgres(cfg, p, port, progress)
                started.append("postgres")
                _save_state(p, cfg, {**old, **services}, started_at)
        else:
            db = database(cfg)

        # MLflow
        rec = old.get("mlflow")
        if (_healthy(cfg, "mlflow", rec) and rec.get("database") == db.uri
                and mlflow_port in (None, rec.get("port"))):
            services["mlflow"] = rec
            _say(progress, f"mlflow: reused at {rec['url']} (pid {rec['pid']})")
        else:
            _stop_stale(cfg, "mlflow", rec)
            if restore:
                restored = _backup.restore_if_new(cfg, database=db, progress=progress)
            port = _choose_port("mlflow", mlflow_port, last.get("mlflow"),
                                DEFAULT_MLFLOW_PORT, notes, progress)
            services["mlflow"] = _start_mlflow(cfg, p, db, port, progress)
            started.append("mlflow")
            _save_state(p, cfg, {**old, **services}, started_at)

        # JupyterLab
        rec = old.get("jupyter")
        mlflow_url = services["mlflow"]["url"]
        if (_healthy(cfg, "jupyter", rec) and rec.get("mlflow_url") == mlflow_url
                and jupyter_port in (None, rec.get("port"))
                and rec.get("root_dir") == str(jupyter_root(cfg))):
            services["jupyter"] = rec
            _say(progress, f"jupyter: reused at {rec['url']} (pid {rec['pid']})")
        else:
            _stop_stale(cfg, "jupyter", rec)
            port = _choose_port("jupyter", jupyter_port, last.get("jupyter"),
                                DEFAULT_JUPYTER_PORT, notes, progress)
            services["jupyter"] = _start_jupyter(cfg, p, mlflow_url, port, progress)
            started.append("jupyter")
    except BaseException:
        for name in reversed(started):
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
            log.info("%s", _terminate(name, services[name], sig))
        _save_state(p, cfg, {k: v for k, v in {**old, **services}.items()
                             if k not in started}, started_at)
        raise
    if started:
        started_at = _now() if len(started) == len(services) else started_at
    _save_state(p, cfg, services, started_at)
    lab_file = _write_lab_file(cfg, services, "running", started_at)
    reused = not started
    if reused:
        _say(progress, "lab: reused (every service was already running and healthy)")
    return LabInfo(site="local", backend=cfg.lab.mlflow_backend,
                   mlflow_url=services["mlflow"]["url"], jupyter_url=services["jupyter"]["url"],
                   pids={k: int(v["pid"]) for k, v in services.items()},
                   ports={k: int(v["port"]) for k, v in services.items()}, reused=reused,
                   started_at=started_at, lab_file=str(lab_file), restored=restored,
                   notes=tuple(notes))


def _stop_stale(cfg, name: str, record: Mapping[str, Any] | None) -> None:
    """A recorded service that runs but is not usable as it is: stop it before a restart."""
    if record and _process(record) is not None:
        sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        log.info("%s", _terminate(name, record, sig))


def status(cfg) -> dict[str, Any]:
    """Which recorded services run and answer: ``{"site", "backend", "running", "healthy",
    "started_at", "services": {name: {"pid", "port", "url", "running", "healthy", "log"}}}``.
    ``running``/``healthy`` overall: every expected service runs / answers."""
    p = paths(cfg)
    state = _read_state(p)
    recorded = state.get("services") or {}
    backend = state.get("backend") or cfg.lab.mlflow_backend
    expected = [s for s in SERVICES if s != "postgres" or backend == "postgresql"]
    out: dict[str, Any] = {}
    for name in expected:
        r = recorded.get(name)
        alive = _process(r) is not None
        out[name] = {"pid": (r or {}).get("pid"), "port": (r or {}).get("port"),
                     "url": (r or {}).get("url"), "log": (r or {}).get("log"),
                     "running": alive, "healthy": alive and _healthy(cfg, name, r)}
    return {"site": "local", "backend": backend, "started_at": state.get("started_at"),
            "running": all(s["running"] for s in out.values()),
            "healthy": all(s["healthy"] for s in out.values()),
            "services": out, "state_file": str(p.state)}


def stop(cfg, *, timeout: float = 20) -> list[str]:
    """Stop exactly the recorded lab processes (Jupyter, MLflow, then PostgreSQL with a fast
    shutdown) and their descendants; wait for them. Idempotent: what is not running is
    reported as such. Returns one line per service."""
    p = paths(cfg)
    if not p.state.exists():
        return ["lab: nothing recorded as running"]
    with _locked(p):
        return _stop(cfg, p, timeout)


def _stop(cfg, p: Paths, timeout: float = 20) -> list[str]:
    state = _read_state(p)
    recorded = dict(state.get("services") or {})
    lines = []
    for name in reversed(SERVICES):
        record = recorded.get(name)
        if not record:
            continue
        sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        lines.append(_terminate(name, record, sig, timeout))
        log.info("%s", lines[-1])
    if not lines:
        lines.append("lab: nothing recorded as running")
    if state:
        ports = dict(state.get("last_ports") or {})
        ports.update({k: v["port"] for k, v in recorded.items() if v.get("port")})
        _write_json(p.state, {"schema_version": STATE_SCHEMA, "site": "local",
                              "backend": state.get("backend"), "stopped_at": _now(),
                              "services": {}, "last_ports": ports})
        if p.lab_file.exists():
            _write_lab_file(cfg, {}, "stopped", state.get("started_at") or _now())
    return lines


__all__ = ["DEFAULT_JUPYTER_PORT", "DEFAULT_MLFLOW_PORT", "LabInfo", "Paths", "ServiceFailed",
           "artifacts_destination", "database", "free_port", "jupyter_root", "launch",
           "log_tail", "mlflow_running", "paths", "pg_binary", "running_database",
           "start_database", "status", "stop"]
