"""Backups of an MLflow database to the ``-backups`` bucket, and restores into one.

Every verb here is given the :class:`~replab.lab.database.Database` it works on;
``replab.lab.backup`` (the verbs users call) picks the lab's own when none is given.

MLflow's backend store lives on the lab machine's disk (fast, and no database on FUSE); the
object store outlives the lease. :func:`backup` takes a consistent snapshot (sqlite: ``VACUUM
INTO`` from a read-only connection, never a copy of the live file; PostgreSQL: ``pg_dump
-Fc``) and uploads it as ``mlflow-db/<UTC stamp>-<reason>.<sqlite|pgdump>`` with a JSON
sidecar ``....json`` (backend, MLflow version, schema revision, run and experiment counts,
size, sha256). The sidecar is written last, so a listed backup is a complete one.

The bucket (``replab.lab.backupbucket``) is the S3 backups bucket when the config has an S3
endpoint and the secrets store EC2 keys, else (site ``local``) the directory
``<workdir>/buckets/<backups>``.

:func:`restore_if_new` is what a lab launch calls before MLflow starts: a database that does
not exist yet or holds nothing gets the latest backup. Artifacts are not in the database: they
live in the artifacts bucket, which the restored runs keep pointing at.

On the GPU server a systemd timer runs ``replab lab backup`` hourly
(``replab.hostsetup.service.systemd_units``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._files import sha256_file
from ..errors import CloudError, ConfigError
from ..serverlayout import VERSION_ENV
from .backupbucket import Bucket, bucket_location
from .database import Database
from .localpg import pg_binary

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

PREFIX = "mlflow-db/"
EXTENSIONS = {"sqlite": "sqlite", "postgresql": "pgdump"}
REASON = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


# -- what a backup is --------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupInfo:
    """One backup in the backups bucket (what its JSON sidecar holds, plus where it is)."""

    key: str  # mlflow-db/<stamp>-<reason>.<ext>
    bucket: str
    location: str  # s3://bucket/key or the local file
    backend: str
    created_at: str
    reason: str
    mlflow_version: str
    schema_revision: str | None
    runs: int
    experiments: int
    size: int
    sha256: str

    @property
    def meta_key(self) -> str:
        return self.key.rsplit(".", 1)[0] + ".json"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupInfo:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


# -- snapshots ---------------------------------------------------------------------------------
def _mlflow_version() -> str:
    """The MLflow that writes the database: the one installed here, else (the GPU server,
    whose MLflow runs in the lab's container) ``$REPLAB_MLFLOW_VERSION``, else "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlflow")
    except PackageNotFoundError:
        return os.environ.get(VERSION_ENV) or "unknown"


def _sqlite_counts(path: Path) -> tuple[int, int, str | None]:
    """(runs, experiments, alembic revision) of a sqlite MLflow database; zeros when it
    does not exist or has no MLflow tables."""
    if not path.exists() or path.stat().st_size == 0:
        return 0, 0, None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if (
            "runs" in tables) else 0
        exps = conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] if (
            "experiments" in tables) else 0
        rev = conn.execute("SELECT version_num FROM alembic_version").fetchone() if (
            "alembic_version" in tables) else None
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not a usable sqlite database ({exc}); move it away "
                          "to start afresh (the next launch restores the latest backup)"
                          ) from None
    finally:
        conn.close()
    return int(runs), int(exps), rev[0] if rev else None


def _pg_counts(db: Database) -> tuple[int, int, str | None]:
    import psycopg

    try:
        conn = psycopg.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                                dbname=db.name, connect_timeout=10)
    except psycopg.OperationalError as exc:
        if "does not exist" in str(exc):
            return 0, 0, None
        raise CloudError(f"cannot connect to the MLflow database {db.uri}: "
                         f"{str(exc).strip()}") from None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.runs'), to_regclass('public.experiments'),"
                        " to_regclass('public.alembic_version')")
            has_runs, has_exps, has_rev = cur.fetchone()
            out = []
            for present, table in ((has_runs, "runs"), (has_exps, "experiments")):
                if present:
                    cur.execute(f"SELECT COUNT(*) FROM {table}")
                    out.append(int(cur.fetchone()[0]))
                else:
                    out.append(0)
            rev = None
            if has_rev:
                cur.execute("SELECT version_num FROM alembic_version")
                row = cur.fetchone()
                rev = row[0] if row else None
    finally:
        conn.close()
    return out[0], out[1], rev


def counts(db: Database) -> tuple[int, int, str | None]:
    """``(runs, experiments, schema revision)`` in the MLflow database ``db``."""
    return _sqlite_counts(db.path) if db.backend == "sqlite" else _pg_counts(db)


def is_empty(db: Database) -> bool:
    """True when ``db`` does not exist or holds no run and no experiment but MLflow's
    ``Default``."""
    runs, experiments, _ = counts(db)
    return runs == 0 and experiments <= 1


def _pg_tool(name: str) -> str:
    try:
        return pg_binary(name)
    except ConfigError:
        found = shutil.which(name)
        if found:
            return found
        raise


def _run_tool(argv: list[str], db: Database, what: str, timeout: float = 3600) -> None:
    env = dict(os.environ, **db.env())
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise CloudError(f"{what} failed for {db.uri} (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")


def _snapshot(db: Database, target: Path) -> None:
    if db.backend == "sqlite":
        if not db.path or not db.path.exists():
            raise ConfigError(f"no MLflow database at {db.path}: nothing to back up (launch "
                              "the lab first)")
        conn = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True, timeout=60)
        try:
            # A consistent snapshot even while MLflow writes; compacted as it goes.
            conn.execute("VACUUM INTO ?", (str(target),))
        finally:
            conn.close()
        return
    if not db.port:
        raise ConfigError("the lab's PostgreSQL is not running: launch the lab (or "
                          "replab.lab.local.start_database) before backing it up")
    _run_tool([_pg_tool("pg_dump"), "-Fc", "--no-owner", "--no-privileges", "-h", db.host,
               "-p", str(db.port), "-U", db.user, "-d", db.name, "-f", str(target)],
              db, "pg_dump")


def report(message: str, progress: Progress | None) -> None:
    log.info("%s", message)
    if progress:
        progress(message)


def _stamp(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"


# -- the public verbs --------------------------------------------------------------------------
def backup(cfg, database: Database, *, reason: str = "manual",
           progress: Progress | None = None) -> BackupInfo:
    """Snapshot the MLflow database consistently and upload it to the backups bucket.

    ``reason`` (lower-case letters, digits, ``-``, ``_``) ends the key's name. Raises
    ConfigError (bad reason, nothing to back up, PostgreSQL not running), CloudError
    (pg_dump failed, the object store refused)."""
    if not REASON.match(reason):
        raise ConfigError([("reason", f"{reason!r}: 1-32 of a-z, 0-9, '-', '_'")])
    db = database
    bucket = Bucket(cfg)
    ext = EXTENSIONS[db.backend]
    stamp = _stamp()
    key = f"{PREFIX}{stamp}-{reason}.{ext}"
    # the snapshot goes beside a sqlite database (same disk; /tmp may be a small tmpfs)
    near = db.path.parent if db.backend == "sqlite" and db.path and db.path.parent.is_dir() \
        else None
    with tempfile.TemporaryDirectory(prefix=".replab-backup-", dir=near) as tmp:
        snap = Path(tmp) / f"snapshot.{ext}"
        _snapshot(db, snap)
        runs, experiments, revision = (_sqlite_counts(snap) if db.backend == "sqlite"
                                       else counts(db))
        info = BackupInfo(key=key, bucket=bucket.name, location=bucket.url(key),
                          backend=db.backend, created_at=stamp, reason=reason,
                          mlflow_version=_mlflow_version(), schema_revision=revision,
                          runs=runs, experiments=experiments, size=snap.stat().st_size,
                          sha256=sha256_file(snap))
        bucket.put(snap, key)
        meta = Path(tmp) / "meta.json"
        meta.write_text(json.dumps(info.to_dict(), indent=1, sort_keys=True) + "\n")
        bucket.put(meta, info.meta_key)  # last: a listed backup is a complete one
    report(f"backed up the MLflow database ({db.backend}, {runs} runs, {info.size} bytes) "
            f"to {info.location}", progress)
    return info


def _backups(cfg, newest_first: bool = False) -> Iterator[BackupInfo]:
    """Complete backups in key (= time) order, reading each sidecar only when reached."""
    bucket = Bucket(cfg)
    keys = bucket.keys(PREFIX)
    present = set(keys)
    metas = [k for k in keys if k.endswith(".json")]
    with tempfile.TemporaryDirectory(prefix="replab-backups-") as tmp:
        for key in reversed(metas) if newest_first else metas:
            local = Path(tmp) / "meta.json"
            try:
                bucket.get(key, local)
                info = BackupInfo.from_dict(json.loads(local.read_text()))
            except (ValueError, TypeError) as exc:
                log.warning("skipping backup metadata %s: %s", key, exc)
                continue
            if info.key in present:
                yield info


def list_backups(cfg) -> list[BackupInfo]:
    """Every complete backup in the backups bucket, oldest first."""
    return list(_backups(cfg))


def latest_backup(cfg, *, with_content: bool = False) -> BackupInfo | None:
    """The newest complete backup, or None. ``with_content``: the newest that holds a run
    or an experiment besides ``Default`` (a backup of an empty database never hides an
    older one with history)."""
    for info in _backups(cfg, newest_first=True):
        if not with_content or info.runs > 0 or info.experiments > 1:
            return info
    return None


def find_backup(cfg, backup: BackupInfo | str | None) -> BackupInfo:
    """``backup`` as a BackupInfo: itself, the one with that key or stamp, or (None) the
    latest. Raises ConfigError when there is none, naming the newest there are."""
    if isinstance(backup, BackupInfo):
        return backup
    backups = list_backups(cfg)
    if not backups:
        raise ConfigError(f"no backup of the MLflow database in {bucket_location(cfg)}")
    if backup is None:
        return backups[-1]
    for b in backups:
        if backup in (b.key, b.meta_key, b.created_at, b.key.removeprefix(PREFIX)):
            return b
    raise ConfigError(f"no backup {backup!r} in {bucket_location(cfg)}; there are: "
                      + ", ".join(b.key for b in backups[-5:]))


def _restore_sqlite(db: Database, file: Path) -> None:
    assert db.path is not None
    conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if check != "ok":
        raise CloudError(f"the backup is a corrupt sqlite database: {check}")
    db.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.path.with_name(f".{db.path.name}.restore")
    shutil.copyfile(file, tmp)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{db.path}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, db.path)


def _restore_postgres(db: Database, file: Path) -> None:
    import psycopg

    if not db.port:
        raise ConfigError("the lab's PostgreSQL is not running; start it first")
    conn = psycopg.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                            dbname="postgres", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{db.name}"')
    finally:
        conn.close()
    _run_tool([_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
               "-h", db.host, "-p", str(db.port), "-U", db.user, "-d", db.name, str(file)],
              db, "pg_restore")


def _upgrade_schema(db: Database) -> None:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", **db.env())
    proc = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", db.uri],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode != 0:
        raise CloudError(f"mlflow db upgrade failed for {db.uri}: {proc.stderr[-2000:]}")


def restore(cfg, backup: BackupInfo | str | None, database: Database, *,
            force: bool = False, progress: Progress | None = None) -> BackupInfo:
    """Restore ``backup`` (a BackupInfo, its key or stamp; default the latest) into the
    MLflow database ``database``, which must not hold runs or experiments unless ``force``
    (and must not be in use by an MLflow server). After a restore from another MLflow
    version the schema is upgraded (``mlflow db upgrade``).

    Raises ConfigError (no backup, a database with content and no ``force``, another
    backend), CloudError (corrupt download, pg_restore failed)."""
    info = find_backup(cfg, backup)
    db = database
    if info.backend != db.backend:
        raise ConfigError([("backup", f"{info.key} is a {info.backend} backup; the lab's "
                                      f"database is {db.backend}")])
    runs, experiments, _ = counts(db)
    if (runs or experiments > 1) and not force:
        raise ConfigError(f"the MLflow database {db.uri} holds {runs} runs and {experiments} "
                          "experiments; restoring would replace them: pass force=True")
    bucket = Bucket(cfg)
    with tempfile.TemporaryDirectory(prefix="replab-restore-") as tmp:
        file = Path(tmp) / f"backup.{EXTENSIONS[info.backend]}"
        bucket.get(info.key, file)
        digest = sha256_file(file)
        if digest != info.sha256:
            raise CloudError(f"backup {info.location} does not match its recorded sha256 "
                             f"({digest[:12]}… != {info.sha256[:12]}…): corrupt or replaced")
        if db.backend == "sqlite":
            _restore_sqlite(db, file)
        else:
            _restore_postgres(db, file)
    if info.mlflow_version != _mlflow_version():
        log.info("backup made with MLflow %s, this is %s: upgrading the schema",
                 info.mlflow_version, _mlflow_version())
        _upgrade_schema(db)
    report(f"restored {info.key} ({info.runs} runs, from {info.created_at}) into {db.uri}",
            progress)
    return info


def restore_if_new(cfg, database: Database, *,
                   progress: Progress | None = None) -> BackupInfo | None:
    """Before MLflow starts: when its database does not exist yet or is empty, restore the
    latest backup that has content, if there is one. Returns what was restored, or None.

    Raises what :func:`restore` raises, and S3Error when the bucket cannot be listed: a
    launch must not go on with an empty database when the history could not be checked."""
    if not is_empty(database):
        log.debug("the MLflow database %s has content: no restore", database.uri)
        return None
    latest = latest_backup(cfg, with_content=True)
    if latest is None:
        log.info("no backup with runs in %s: MLflow starts with a new database",
                 bucket_location(cfg))
        return None
    if latest.backend != database.backend:
        message = (f"the latest backup {latest.key} is {latest.backend}, the lab now uses "
                   f"{database.backend}: not restored")
        log.warning("%s", message)
        if progress:
            progress(message)
        return None
    return restore(cfg, latest, database, progress=progress)


__all__ = [
    "EXTENSIONS", "PREFIX", "REASON", "BackupInfo", "Bucket", "Database", "Progress", "backup",
    "bucket_location", "counts", "find_backup", "is_empty", "latest_backup", "list_backups",
    "report", "restore", "restore_if_new",
]
