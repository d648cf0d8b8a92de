"""Backups of the lab's MLflow database to the ``-backups`` bucket, and restores: the verbs
users (``replab lab backup`` / ``restore``, teardown) call.

They work on the lab's own database unless given one: ``$REPLAB_MLFLOW_DB`` (the GPU
server's timer sets it), else the local lab's (its PostgreSQL started for a restore).
The snapshots, the bucket and the sidecars are ``replab.lab.backupstore``, which the local
launcher uses directly with the database it started; every name of it is importable from
here as well.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from ..serverlayout import DB_ENV, VERSION_ENV
from . import backupstore, local
from .backupstore import (
    EXTENSIONS,
    PREFIX,
    REASON,
    BackupInfo,
    Bucket,
    Progress,
    bucket_location,
    counts,
    is_empty,
    latest_backup,
    list_backups,
)
from .database import Database


def default_database(cfg) -> Database:
    """The database to back up: ``$REPLAB_MLFLOW_DB`` (a URI; the GPU server's timer sets
    it) or the local lab's. Raises ConfigError when neither applies."""
    uri = os.environ.get(DB_ENV)
    if uri:
        return Database.from_uri(uri)
    if cfg.is_local:
        return local.database(cfg)
    raise ConfigError(f"which MLflow database? set {DB_ENV} to its URI (sqlite:////path or "
                      "postgresql://user@host:port/name, password in PGPASSWORD)")


def _restore_target(cfg, progress: Progress | None) -> Database:
    """The database a restore writes into when none is given: the local lab's (its MLflow
    must be stopped; its PostgreSQL is started when needed), else :func:`default_database`."""
    if not cfg.is_local:
        return default_database(cfg)
    if local.mlflow_running(cfg):
        raise ConfigError("the lab's MLflow server is running: stop the lab before a "
                          "restore (replab.lab.local.stop)")
    return local.start_database(cfg, progress=progress)


def backup(cfg, *, reason: str = "manual", database: Database | None = None,
           progress: Progress | None = None) -> BackupInfo:
    """Snapshot the MLflow database (default :func:`default_database`) consistently and
    upload it to the backups bucket.

    ``reason`` (lower-case letters, digits, ``-``, ``_``) ends the key's name. Raises
    ConfigError (bad reason, nothing to back up, PostgreSQL not running), CloudError
    (pg_dump failed, the object store refused)."""
    if not REASON.match(reason):
        raise ConfigError([("reason", f"{reason!r}: 1-32 of a-z, 0-9, '-', '_'")])
    return backupstore.backup(cfg, database or default_database(cfg), reason=reason,
                              progress=progress)


def restore(cfg, backup: BackupInfo | str | None = None, *, force: bool = False,
            database: Database | None = None, progress: Progress | None = None
            ) -> BackupInfo:
    """Restore ``backup`` (a BackupInfo, its key or stamp; default the latest) into the
    MLflow database, which must not hold runs or experiments unless ``force``. For the local
    lab the MLflow server must be stopped (its PostgreSQL is started when needed). After a
    restore from another MLflow version the schema is upgraded (``mlflow db upgrade``).

    Raises ConfigError (no backup, a database with content and no ``force``, the lab's
    MLflow running, another backend), CloudError (corrupt download, pg_restore failed)."""
    info = backupstore.find_backup(cfg, backup)  # no backup: said before PostgreSQL is started
    return backupstore.restore(cfg, info, database or _restore_target(cfg, progress),
                               force=force, progress=progress)


def restore_if_new(cfg, *, database: Database | None = None,
                   progress: Progress | None = None) -> BackupInfo | None:
    """Before MLflow starts: when its database does not exist yet or is empty, restore the
    latest backup that has content, if there is one. Returns what was restored, or None.

    Raises what :func:`restore` raises, and S3Error when the bucket cannot be listed: a
    launch must not go on with an empty database when the history could not be checked."""
    if database is None:
        database = (local.start_database(cfg, progress=progress) if cfg.is_local
                    else default_database(cfg))
    return backupstore.restore_if_new(cfg, database, progress=progress)


__all__ = [
    "DB_ENV", "EXTENSIONS", "PREFIX", "REASON", "VERSION_ENV", "BackupInfo", "Bucket",
    "Database", "Progress", "backup", "bucket_location", "counts", "default_database",
    "is_empty", "latest_backup", "list_backups", "restore", "restore_if_new",
]
