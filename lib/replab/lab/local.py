"""The ``site=local`` lab: the lab's services as local processes on 127.0.0.1.

What runs, each in its own process group, each writing to ``<workdir>/lab/logs/NAME.log``:

- ``postgres`` (only with ``lab.mlflow_backend: postgresql``): the lab's own cluster
  (:mod:`.localpg`), TCP on a loopback port only.
- ``mlflow``: ``mlflow server`` with the backend store (sqlite ``<workdir>/lab/mlflow.db``, or
  the cluster above) and proxied artifacts (``--serve-artifacts``) in the artifacts bucket:
  the local directory ``<workdir>/buckets/<artifacts>``, or the S3 bucket when the config has
  an S3 endpoint and the secrets store EC2 keys. Clients need no object-store keys.
- ``jupyter``: JupyterLab opened at the user's repository when the config names a local one,
  else at the artifact's root (where the numbered notebooks are), with the token from
  ``<workdir>/secrets/lab.env`` (in the environment, never on a command line that ``ps``
  shows) and ``MLFLOW_TRACKING_URI`` set for its kernels.

Each service gets an explicit environment (:mod:`.environment`), never the caller's whole
one, and creates its files with umask 077 (Jupyter keeps the user's umask: the notebooks it
saves are the user's). The lab's directory, logs, ``local.json`` and ``lab.json`` are closed
to other users.

Before MLflow starts, :func:`launch` restores the latest database backup when the database is
new or empty (:func:`replab.lab.backupstore.restore_if_new`), so history survives a lost disk.

State: ``<workdir>/lab/local.json`` (each service's PID with its start time, port, URL,
``ready_at`` once it answered; ``last_ports``) and ``<workdir>/lab.json`` (the endpoints;
where the token is, never the token). A service is recorded the moment its process exists,
before the launch waits for it (:mod:`.supervisor`): Ctrl-C or SIGTERM during a launch stops
what that launch started and says so (:class:`LaunchInterrupted`); after a SIGKILL the record
remains, and the next launch adopts the service when it answers (waiting for one still
starting) or stops it and starts a new one on the same port. Processes of this lab that no
record names (from an older replab) make :func:`launch` refuse with their PIDs rather than
run a second server on the same database; :func:`stop` ends them, :func:`status` lists them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ResourceTimeout
from ..s3client import S3_REGION
from ..secretsstore import SecretsStore
from . import backupstore, localpg, localstate, supervisor
from .backupstore import BackupInfo
from .database import Database
from .environment import jupyter_secrets, service_env
from .localpg import DB_NAME, DB_USER, pg_bin_dir, pg_binary
from .localstate import SERVICES, STATE_SCHEMA, Paths, paths
from .supervisor import LaunchInterrupted, ServiceFailed, log_tail, now, say

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DEFAULT_MLFLOW_PORT = 5000
DEFAULT_JUPYTER_PORT = 8888
HOST = "127.0.0.1"
TIMEOUTS = {"postgres": 60.0, "mlflow": 180.0, "jupyter": 90.0}
ARTIFACT_ROOT = Path(__file__).resolve().parents[3]  # …/lib/replab/lab -> the artifact


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
    jupyter_root: str = ""
    token_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["restored"] = self.restored.to_dict() if self.restored else None
        d["notes"] = list(self.notes)
        return d


# -- files and ports ---------------------------------------------------------------------------
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
            holder = supervisor.describe(supervisor.port_holder(asked))
            raise ConfigError([(f"{what}_port", f"{asked} is in use on {HOST} by {holder}; "
                                                "choose another port or leave it empty for "
                                                "a free one")])
        return asked
    for port in dict.fromkeys(p for p in (previous, default) if p):
        if _port_free(port):
            if port != default:
                log.info("%s: port %d (the one it had last time)", what, port)
            return port
    port = free_port()
    note = f"{what}: port {default} is in use; using {port}"
    notes.append(note)
    holders = ", ".join(f"{taken} by {supervisor.describe(supervisor.port_holder(taken))}"
                        for taken in dict.fromkeys(p for p in (previous, default) if p))
    say(progress, f"{note} (held: {holders})")
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


# -- MLflow and Jupyter ------------------------------------------------------------------------
def artifacts_destination(cfg) -> tuple[str, dict[str, str]]:
    """Where MLflow keeps artifacts, and the environment the server needs for it: the S3
    artifacts bucket when the config has an S3 endpoint and the secrets store EC2 keys,
    else the local bucket directory ``<workdir>/buckets/<artifacts>`` (mode 0700)."""
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
    os.chmod(directory, 0o700)
    return str(directory), {}


def _start_mlflow(cfg, p: Paths, db: Database, port: int, progress: Progress | None,
                  register: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    destination, s3_env = artifacts_destination(cfg)
    env = service_env("mlflow", os.environ, str(p.root), {**s3_env, **db.env()})
    bundle = env.get("AWS_CA_BUNDLE")
    if bundle and not Path(bundle).is_file():
        env.pop("AWS_CA_BUNDLE")  # botocore fails on a bundle that is not there
    if db.backend == "sqlite" and db.path and Path(db.path).exists():
        os.chmod(db.path, 0o600)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db.uri,
            "--artifacts-destination", destination, "--serve-artifacts", "--host", HOST,
            "--port", str(port), "--workers", "1"]
    url = f"http://{HOST}:{port}"
    say(progress, f"mlflow: starting on {url} ({db.backend}, artifacts in {destination})")
    record = supervisor.spawn(
        "mlflow", argv, env=env, log_path=p.log("mlflow"), cwd=p.root, register=register,
        fields={"port": port, "url": url, "backend": db.backend, "database": db.uri,
                "artifacts": destination})
    took = supervisor.wait_ready("mlflow", record, lambda: _http(f"{url}/health") == 200,
                                 TIMEOUTS["mlflow"], progress)
    say(progress, f"mlflow: healthy at {url} (pid {record['pid']}, {took:.1f}s)")
    return record


def _local_repository(cfg) -> Path | None:
    repo = cfg.repository or ""
    if repo.startswith("file://"):
        repo = repo[len("file://"):]
    if repo and not repo.startswith(("http://", "https://", "ssh://")) and "@" not in repo:
        path = Path(repo).expanduser()
        if path.is_dir():
            return path.absolute()
    return None


def jupyter_root(cfg) -> Path:
    """Where JupyterLab opens: the config's ``repository`` when it is a local directory,
    else the artifact's root (where the numbered notebooks are), else the workdir (replab
    installed without its notebooks)."""
    repo = _local_repository(cfg)
    if repo is not None:
        return repo
    if any(ARTIFACT_ROOT.glob("[0-9]_*.ipynb")):
        return ARTIFACT_ROOT
    return cfg.workdir_path.absolute()


def _jupyter_ok(url: str, token: str) -> bool:
    return _http(f"{url}/api/status", {"Authorization": f"token {token}"}) == 200


def _start_jupyter(cfg, p: Paths, mlflow_url: str, port: int, progress: Progress | None,
                   register: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    store = SecretsStore(cfg.workdir)
    secrets = jupyter_secrets(store.lab_env(), huggingface=cfg.lab.huggingface,
                              github_cli=cfg.lab.github_cli)
    token = secrets["JUPYTER_TOKEN"]
    if not token:
        raise ConfigError(f"no JUPYTER_TOKEN in {store.path(store.LAB_ENV)}: "
                          "run 1_create_credentials")
    p.jupyter_runtime.mkdir(parents=True, exist_ok=True)
    os.chmod(p.jupyter_runtime, 0o700)
    env = service_env("jupyter", os.environ, str(p.root), {
        **secrets, "MLFLOW_TRACKING_URI": mlflow_url, "MLFLOW_EXPERIMENT_NAME": cfg.experiment,
        "JUPYTER_RUNTIME_DIR": str(p.jupyter_runtime), "REPLAB_WORKDIR": str(p.workdir)})
    root = jupyter_root(cfg)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", HOST,
            "--port", str(port), "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    url = f"http://{HOST}:{port}"
    say(progress, f"jupyter: starting on {url} (root {root})")
    record = supervisor.spawn(
        "jupyter", argv, env=env, log_path=p.log("jupyter"), cwd=root, register=register,
        umask=-1, fields={"port": port, "url": url, "mlflow_url": mlflow_url,
                          "root_dir": str(root)})
    took = supervisor.wait_ready("jupyter", record, lambda: _jupyter_ok(url, token),
                                 TIMEOUTS["jupyter"], progress)
    # Jupyter writes its redirect page (the token in its URL) 0644 before it answers; the
    # directory is 0700 already, and its files are made 0600 as well (server info and
    # kernel connection files are written 0600 by Jupyter itself)
    for item in p.jupyter_runtime.iterdir():
        with contextlib.suppress(OSError):
            if item.is_file():
                os.chmod(item, 0o600)
    say(progress, f"jupyter: ready at {url} (pid {record['pid']}, {took:.1f}s)")
    return record


# -- health of recorded services ---------------------------------------------------------------
def _healthy(cfg, name: str, record: Mapping[str, Any] | None) -> bool:
    if supervisor.process(record) is None:
        return False
    assert record is not None
    if name == "postgres":
        try:
            return localpg.pg_ready(database(cfg, record))
        except (ConfigError, ImportError):
            return False
    if name == "mlflow":
        return _http(f"{record['url']}/health") == 200
    token = SecretsStore(cfg.workdir).lab_env().get("JUPYTER_TOKEN", "")
    return bool(token) and _jupyter_ok(record["url"], token)


def _usable(cfg, name: str, record: Mapping[str, Any] | None,
            progress: Progress | None) -> bool:
    """Whether a recorded service runs and answers. One that an interrupted launch left
    still starting (no ``ready_at``) is waited for, up to its start timeout."""
    if supervisor.process(record) is None:
        return False
    assert record is not None
    if _healthy(cfg, name, record):
        return True
    left = TIMEOUTS[name] - (time.time() - float(record.get("create_time", 0)))
    if record.get("ready_at") or left <= 0:
        return False
    say(progress, f"{name}: pid {record['pid']} (recorded by an earlier launch) is still "
                  "starting; waiting for it")
    try:
        supervisor.wait_ready(name, record, lambda: _healthy(cfg, name, record), left,
                              progress)
    except (ServiceFailed, ResourceTimeout) as exc:
        log.info("%s: the recorded process did not become ready: %s", name,
                 str(exc).splitlines()[0])
        return False
    return True


def database(cfg, pg_record: Mapping[str, Any] | None = None) -> Database:
    """The local lab's MLflow database (the cluster's port from the state when running)."""
    p = paths(cfg)
    if cfg.lab.mlflow_backend == "sqlite":
        return Database.sqlite(p.sqlite)
    if pg_record is None:
        pg_record = localstate.read_state(p).get("services", {}).get("postgres")
    port = int(pg_record["port"]) if pg_record and pg_record.get("port") else None
    return Database.postgres(HOST, port, DB_USER, DB_NAME, localpg.pg_password(p.workdir))


def running_database(cfg) -> Database | None:
    """The database of the local lab when its store is usable now: the sqlite file (which
    may not exist yet), or the PostgreSQL cluster when its recorded server runs; else None."""
    if cfg.lab.mlflow_backend == "sqlite":
        return database(cfg)
    record = localstate.read_state(paths(cfg)).get("services", {}).get("postgres")
    if record and supervisor.process(record) is not None:
        return database(cfg, record)
    return None


def mlflow_running(cfg) -> bool:
    """Whether the local lab's recorded MLflow server process is alive."""
    record = localstate.read_state(paths(cfg)).get("services", {}).get("mlflow")
    return supervisor.process(record) is not None


# -- the public verbs --------------------------------------------------------------------------
def launch(cfg, *, progress: Progress | None = None, mlflow_port: int | None = None,
           jupyter_port: int | None = None, restore: bool = True) -> LabInfo:
    """Start the local lab (or reuse what of it runs and is healthy) and wait until every
    service answers; writes ``<workdir>/lab/local.json`` and ``<workdir>/lab.json``.

    ``mlflow_port`` / ``jupyter_port``: fixed ports (an error when in use); by default the
    ports of the last launch, else 5000 and 8888, or free ports when those are taken by
    another program (said through ``progress`` and in ``notes``, naming it). ``restore``:
    before MLflow first opens a new or empty database, restore the latest backup.

    Raises ConfigError (missing secrets or PostgreSQL, a port in use, unrecorded processes
    of this lab), ServiceFailed (a service exited), ResourceTimeout (not ready in time);
    both with the log's tail; LaunchInterrupted (a KeyboardInterrupt) on SIGINT or SIGTERM.
    What this call started is stopped again when it fails or is interrupted.
    """
    if not cfg.is_local:
        raise ConfigError([("site", f"{cfg.site!r}: the local launcher runs only site "
                                    "'local'; other sites run the lab on their server")])
    p = paths(cfg)
    with supervisor.interruptible():
        try:
            localstate.prepare_dirs(p)
            with localstate.locked(p):
                return _Launch(cfg, p, progress).run(mlflow_port, jupyter_port, restore)
        except LaunchInterrupted:
            raise
        except KeyboardInterrupt:  # a handler other than ours (not the main thread, ...)
            raise LaunchInterrupted(signal.SIGINT) from None


class _Launch:
    """One launch: what is recorded (written to local.json at every change), what this
    launch started (stopped again when it fails)."""

    def __init__(self, cfg, p: Paths, progress: Progress | None):
        self.cfg, self.p, self.progress = cfg, p, progress
        state = localstate.read_state(p)
        self.records: dict[str, Any] = dict(state.get("services") or {})
        if self.records and state.get("backend") != cfg.lab.mlflow_backend:
            say(progress, f"backend changed to {cfg.lab.mlflow_backend}: restarting the lab")
            for line in _stop(cfg, p):
                log.info("%s", line)
            state, self.records = localstate.read_state(p), {}
        self.last = localstate.known_ports(state, self.records)
        self.started_at = state.get("started_at") or now()
        self.started: list[str] = []
        self.notes: list[str] = []

    def save(self) -> None:
        localstate.save_state(self.p, self.cfg, self.records, self.started_at, self.last)

    def register(self, name: str) -> Callable[[dict[str, Any]], None]:
        def record(rec: dict[str, Any]) -> None:
            self.records[name] = rec
            self.started.append(name)
            self.last[name] = rec["port"]
            self.save()
        return record

    def ready(self, name: str) -> None:
        self.records[name]["ready_at"] = now()
        self.save()

    def reuse(self, name: str) -> None:
        rec = self.records[name]
        rec.setdefault("ready_at", now())
        say(self.progress, f"{name}: reused{' at ' + rec['url'] if rec.get('url') else ''} "
                           f"(pid {rec['pid']}, port {rec['port']})")

    def drop(self, name: str) -> None:
        """A recorded service that is not usable as it is: stop it (its port is kept)."""
        rec = self.records.pop(name, None)
        if rec and supervisor.process(rec) is not None:
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
            log.info("%s", supervisor.terminate(name, rec, sig))
        self.save()

    def undo(self) -> list[str]:
        lines = []
        with supervisor.deferred(drop=True):  # a second Ctrl-C does not cut the clean-up
            for name in reversed(self.started):
                sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
                lines.append(supervisor.terminate(name, self.records[name], sig, timeout=10))
                log.info("%s", lines[-1])
                self.records.pop(name, None)
            self.save()
        return lines

    def run(self, mlflow_port: int | None, jupyter_port: int | None,
            restore: bool) -> LabInfo:
        _refuse_strays(self.p, self.records)
        try:
            return self._run(mlflow_port, jupyter_port, restore)
        except BaseException as exc:
            stopped = self.undo()
            if isinstance(exc, KeyboardInterrupt):
                err = LaunchInterrupted(getattr(exc, "signum", signal.SIGINT), stopped)
                say(self.progress, str(err))
                raise err from None
            raise

    def _run(self, mlflow_port, jupyter_port, restore) -> LabInfo:
        cfg, p, progress, recs = self.cfg, self.p, self.progress, self.records
        restored: BackupInfo | None = None
        if cfg.lab.mlflow_backend == "postgresql":
            if _usable(cfg, "postgres", recs.get("postgres"), progress):
                self.reuse("postgres")
                db = database(cfg, recs["postgres"])
            else:
                self.drop("postgres")
                previous = self.last.get("postgres")
                port = previous if previous and _port_free(previous) else free_port()
                _, db = localpg.start(cfg, p, port, progress, timeout=TIMEOUTS["postgres"],
                                      register=self.register("postgres"))
                self.ready("postgres")
        else:
            db = database(cfg)

        rec = recs.get("mlflow")
        if (rec and rec.get("database") == db.uri and mlflow_port in (None, rec.get("port"))
                and _usable(cfg, "mlflow", rec, progress)):
            self.reuse("mlflow")
        else:
            self.drop("mlflow")
            if restore:
                restored = backupstore.restore_if_new(cfg, db, progress=progress)
            port = _choose_port("mlflow", mlflow_port, self.last.get("mlflow"),
                                DEFAULT_MLFLOW_PORT, self.notes, progress)
            _start_mlflow(cfg, p, db, port, progress, self.register("mlflow"))
            self.ready("mlflow")

        rec = recs.get("jupyter")
        mlflow_url = recs["mlflow"]["url"]
        if (rec and rec.get("mlflow_url") == mlflow_url
                and jupyter_port in (None, rec.get("port"))
                and rec.get("root_dir") == str(jupyter_root(cfg))
                and _usable(cfg, "jupyter", rec, progress)):
            self.reuse("jupyter")
        else:
            self.drop("jupyter")
            port = _choose_port("jupyter", jupyter_port, self.last.get("jupyter"),
                                DEFAULT_JUPYTER_PORT, self.notes, progress)
            _start_jupyter(cfg, p, mlflow_url, port, progress, self.register("jupyter"))
            self.ready("jupyter")

        services = {k: recs[k] for k in SERVICES if k in recs}
        if self.started and len(self.started) == len(services):
            self.started_at = now()
        self.save()
        lab_file = localstate.write_lab_file(cfg, services, "running", self.started_at)
        reused = not self.started
        if reused:
            say(progress, "lab: reused (every service was already running and healthy)")
        store = SecretsStore(p.workdir)
        return LabInfo(site="local", backend=cfg.lab.mlflow_backend,
                       mlflow_url=recs["mlflow"]["url"], jupyter_url=recs["jupyter"]["url"],
                       pids={k: int(v["pid"]) for k, v in services.items()},
                       ports={k: int(v["port"]) for k, v in services.items()}, reused=reused,
                       started_at=self.started_at, lab_file=str(lab_file), restored=restored,
                       notes=tuple(self.notes), jupyter_root=recs["jupyter"]["root_dir"],
                       token_file=str(store.path(store.LAB_ENV)))


def _refuse_strays(p: Paths, records: Mapping[str, Any]) -> None:
    found = supervisor.strays(p.root, records.values())
    if not found:
        return
    listed = "\n".join(
        f"  pid {s['pid']} ({s['service']}"
        f"{', listening on ' + ', '.join(map(str, s['ports'])) if s['ports'] else ''}): "
        f"{s['command']}" for s in found)
    raise ConfigError(f"processes of this lab that {p.state} does not record are running:\n"
                      f"{listed}\nA new launch would run a second server on the same "
                      f"database. Stop them with `replab lab stop --workdir {p.workdir}` (it "
                      "ends these too) or kill them, then launch again.")


def start_database(cfg, *, progress: Progress | None = None) -> Database:
    """Start only the lab's PostgreSQL cluster (for a restore before launch); reuses a
    running one. For sqlite, nothing to start. Returns the database."""
    if cfg.lab.mlflow_backend == "sqlite":
        return database(cfg)
    p = paths(cfg)
    localstate.prepare_dirs(p)
    with supervisor.interruptible(), localstate.locked(p):
        run = _Launch(cfg, p, progress)
        if _usable(cfg, "postgres", run.records.get("postgres"), progress):
            return database(cfg, run.records["postgres"])
        run.drop("postgres")
        previous = run.last.get("postgres")
        port = previous if previous and _port_free(previous) else free_port()
        try:
            _, db = localpg.start(cfg, p, port, progress, timeout=TIMEOUTS["postgres"],
                                  register=run.register("postgres"))
        except BaseException:
            run.undo()
            raise
        run.ready("postgres")
        return db


def status(cfg) -> dict[str, Any]:
    """What runs, told from the processes, not only the record: ``{"site", "backend",
    "running", "healthy", "started_at", "services": {name: {"state", "pid", "port", "url",
    "running", "healthy", "log", "port_held_by"}}, "unrecorded": [...], "summary": [...]}``.

    A service's ``state``: ``running`` (answers), ``starting`` (recorded, not ready yet),
    ``not answering``, ``dead`` (recorded, its process gone) or ``not recorded``.
    ``port_held_by``: who else listens on its (last) port. ``unrecorded``: processes of this
    lab that no record names. ``running``/``healthy`` overall: every expected service runs /
    answers."""
    p = paths(cfg)
    state = localstate.read_state(p)
    recorded = state.get("services") or {}
    backend = state.get("backend") or cfg.lab.mlflow_backend
    expected = [s for s in SERVICES if s != "postgres" or backend == "postgresql"]
    last = localstate.known_ports(state, recorded)
    family = supervisor.family_pids(recorded.values())
    out: dict[str, Any] = {}
    summary = []
    for name in expected:
        r = recorded.get(name) or {}
        alive = supervisor.process(r) is not None
        healthy = alive and _healthy(cfg, name, r)
        word = ("not recorded" if not r else "dead" if not alive else "running" if healthy
                else "not answering" if r.get("ready_at") else "starting")
        port = r.get("port") or last.get(name)
        holder = supervisor.port_holder(port) if port else None
        if holder and holder.get("pid") in family:
            holder = None
        out[name] = {"state": word, "pid": r.get("pid"), "port": port, "url": r.get("url"),
                     "log": r.get("log"), "running": alive, "healthy": healthy,
                     "port_held_by": holder}
        bits = ([f"pid {r['pid']}"] if r.get("pid") else []) + ([f"port {port}"] if port
                                                                else [])
        line = f"{name}: {word}" + (f" ({', '.join(bits)})" if bits else "")
        if holder:
            line += f"; port {port} is held by {supervisor.describe(holder)}"
        summary.append(line)
    strays = supervisor.strays(p.root, recorded.values())
    summary += [f"unrecorded {s['service']}: pid {s['pid']}"
                f"{' on port ' + ', '.join(map(str, s['ports'])) if s['ports'] else ''} "
                "(replab lab stop ends it)" for s in strays]
    return {"site": "local", "backend": backend, "started_at": state.get("started_at"),
            "running": all(s["running"] for s in out.values()),
            "healthy": all(s["healthy"] for s in out.values()),
            "services": out, "unrecorded": strays, "summary": summary,
            "state_file": str(p.state)}


def stop(cfg, *, timeout: float = 20) -> list[str]:
    """Stop exactly the recorded lab processes (Jupyter, MLflow, then PostgreSQL with a fast
    shutdown) and their descendants, and the lab's processes no record names; wait for
    them. Idempotent: what is not running is reported as such. Returns one line each."""
    p = paths(cfg)
    if not p.root.is_dir():
        return ["lab: nothing recorded as running"]
    with localstate.locked(p):
        return _stop(cfg, p, timeout)


def _stop(cfg, p: Paths, timeout: float = 20) -> list[str]:
    state = localstate.read_state(p)
    recorded = dict(state.get("services") or {})
    lines = []
    for name in reversed(SERVICES):
        record = recorded.get(name)
        if not record:
            continue
        sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        lines.append(supervisor.terminate(name, record, sig, timeout))
        log.info("%s", lines[-1])
    for stray in supervisor.strays(p.root, ()):
        lines.append(supervisor.end_stray(stray, timeout))
        log.info("%s", lines[-1])
    if not lines:
        lines.append("lab: nothing recorded as running")
    if state:
        last = localstate.known_ports(state, recorded)
        localstate.write_json(p.state, {"schema_version": STATE_SCHEMA, "site": "local",
                                        "backend": state.get("backend"), "stopped_at": now(),
                                        "services": {}, "last_ports": last})
        if p.lab_file.exists():
            localstate.write_lab_file(cfg, {}, "stopped", state.get("started_at") or now())
    return lines


__all__ = ["DEFAULT_JUPYTER_PORT", "DEFAULT_MLFLOW_PORT", "LabInfo", "LaunchInterrupted",
           "Paths", "ServiceFailed", "artifacts_destination", "database", "free_port",
           "jupyter_root", "launch", "log_tail", "mlflow_running", "paths", "pg_bin_dir",
           "pg_binary", "running_database", "start_database", "status", "stop"]
