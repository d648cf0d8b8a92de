"""The local lab's PostgreSQL (``lab.mlflow_backend: postgresql``): a cluster of the lab's
own in ``<workdir>/lab/postgres``, TCP on a loopback port only (no Unix socket), password
authentication (scram-sha-256) with the password in ``<workdir>/secrets/postgres.env``.
PostgreSQL refuses to run as root: as root it runs as the system user ``postgres`` (created
when missing), which owns the cluster directory.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets as _secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..secretsstore import SecretsStore
from .database import Database
from .environment import service_env
from .supervisor import ServiceFailed, now, say, spawn, wait_ready

if TYPE_CHECKING:
    from .localstate import Paths

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
HOST = "127.0.0.1"
PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")  # Debian 12 (bookworm): postgresql 15
PG_SYSTEM_USER = "postgres"
DB_USER = DB_NAME = "mlflow"
POSTGRES_SECRET = "postgres.env"  # in the secrets store: PGPASSWORD=...


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


def pg_password(workdir: Path) -> str:
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
    say(progress, f"postgres: creating the cluster in {data}")
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
    fd = os.open(p.log("postgres"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(f"\n=== replab: initdb at {now()}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise ServiceFailed(f"postgres: initdb failed for {data}:\n{proc.stderr[-2000:]}")
    hba = data / "pg_hba.conf"
    hba.write_text("# replab: TCP on 127.0.0.1 only, passwords (scram-sha-256)\n"
                   "host all all 127.0.0.1/32 scram-sha-256\n")
    _chown(hba, user)


def pg_connect(db: Database, dbname: str | None = None, timeout: float = 10):
    import psycopg

    return psycopg.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                            dbname=dbname or db.name, connect_timeout=max(1, int(timeout)))


def pg_ready(db: Database) -> bool:
    import psycopg

    try:
        conn = pg_connect(db, "postgres")
    except psycopg.OperationalError:
        return False
    conn.close()
    return True


def _ensure_pg_database(db: Database) -> None:
    conn = pg_connect(db, "postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db.name}"')
                log.info("created database %s", db.name)
    finally:
        conn.close()


def start(cfg, p: Paths, port: int, progress: Progress | None, *, timeout: float,
          register: Callable[[dict[str, Any]], None]) -> tuple[dict[str, Any], Database]:
    """Start the lab's cluster on ``port`` (initialised first when new); ``register`` gets
    its record as soon as the server process exists. Returns (record, database)."""
    _need_psycopg()
    postgres = pg_binary("postgres")
    user = _postgres_user()
    if user is not None:
        _check_reachable(p.postgres, user)
    password = pg_password(p.workdir)
    if not (p.postgres / "PG_VERSION").exists():
        _pg_init(p, password, user, progress)
    db = Database.postgres(HOST, port, DB_USER, DB_NAME, password)
    argv = [postgres, "-D", str(p.postgres), "-c", f"listen_addresses={HOST}", "-p", str(port),
            "-c", "unix_socket_directories=", "-c", "max_connections=100"]
    fields = {"port": port, "data_dir": str(p.postgres),
              "user": user.pw_name if user else pwd.getpwuid(os.geteuid()).pw_name}
    env = service_env("postgres", os.environ, str(p.root))
    record = spawn("postgres", argv, env=env, log_path=p.log("postgres"), cwd=p.postgres,
                   fields=fields, register=register, user=user)
    took = wait_ready("postgres", record, lambda: pg_ready(db), timeout, progress)
    _ensure_pg_database(db)
    say(progress, f"postgres: ready on {HOST}:{port} (pid {record['pid']}, {took:.1f}s)")
    return record, db


__all__ = ["DB_NAME", "DB_USER", "pg_bin_dir", "pg_binary", "pg_connect", "pg_password",
           "pg_ready", "start"]
