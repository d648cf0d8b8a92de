"""The MLflow backups on the GPU server: the pruning the hourly timer applies (its units are
rendered by ``replab.hostsetup.service.systemd_units``, re-exported here), and a backup made
over SSH (``5_teardown``'s last one). The database URI the server reaches is
``replab.serverlayout.server_database_uri`` (re-exported here).

Pruning deletes only ``scheduled`` backups: it keeps the newest :data:`KEEP_RECENT` and the
newest of each of the last :data:`KEEP_DAILY` days; backups made by hand or by teardown
stay.
"""

from __future__ import annotations

import logging

from .. import hostsetup, remote
from ..errors import CloudError, ConfigError
from ..hostsetup.service import SCHEDULED, UNIT, systemd_units
from ..serverlayout import DB_ENV, SERVER_POSTGRES_URI, VERSION_ENV, server_database_uri
from .backupstore import (
    REASON,
    BackupInfo,
    Bucket,
    Progress,
    latest_backup,
    list_backups,
    report,
)

log = logging.getLogger(__name__)

KEEP_RECENT, KEEP_DAILY = 48, 30  # scheduled backups kept: the newest, and one a day


def prune_plan(backups: list[BackupInfo], *, keep_recent: int = KEEP_RECENT,
               keep_daily: int = KEEP_DAILY) -> list[BackupInfo]:
    """Which backups :func:`prune` deletes: only ``scheduled`` ones, never the newest
    ``keep_recent`` of them, nor the newest of each of the ``keep_daily`` most recent UTC
    days that have one; backups made by hand or by teardown are always kept. Pure."""
    if keep_recent < 1 or keep_daily < 0:
        raise ConfigError([("keep", f"keep_recent={keep_recent} (>= 1), keep_daily="
                                    f"{keep_daily} (>= 0)")])
    scheduled = sorted((b for b in backups if b.reason == SCHEDULED), key=lambda b: b.key,
                       reverse=True)
    kept = {b.key for b in scheduled[:keep_recent]}
    days: set[str] = set()
    for b in scheduled:
        day = b.created_at[:8]  # YYYYMMDD of the stamp
        if day not in days and len(days) < keep_daily:
            days.add(day)
            kept.add(b.key)
    return [b for b in reversed(scheduled) if b.key not in kept]


def prune(cfg, *, keep_recent: int = KEEP_RECENT, keep_daily: int = KEEP_DAILY,
          progress: Progress | None = None) -> list[BackupInfo]:
    """Delete the scheduled backups :func:`prune_plan` selects (the sidecar first, so a
    listed backup is always a complete one); returns them."""
    doomed = prune_plan(list_backups(cfg), keep_recent=keep_recent, keep_daily=keep_daily)
    bucket = Bucket(cfg)
    for info in doomed:
        bucket.delete(info.meta_key)
        bucket.delete(info.key)
    if doomed:
        report(f"pruned {len(doomed)} scheduled backup(s) from {bucket.location} (kept the "
                f"newest {keep_recent} and one a day for {keep_daily} days)", progress)
    return doomed


def backup_on_server(cfg, conn, paths, *, reason: str = "manual",
                     progress: Progress | None = None) -> BackupInfo:
    """Back up the GPU server's lab database there, over SSH (``conn``), with the replab
    and the work directory host setup installed (``paths``: its ``HostPaths``); the lab's
    ``.env`` gives the PostgreSQL password. Returns the backup it made, read back from the
    bucket. Raises ConfigError (bad reason), CloudError (the command failed there, with its
    output)."""
    if not REASON.match(reason):
        raise ConfigError([("reason", f"{reason!r}: 1-32 of a-z, 0-9, '-', '_'")])
    env = {DB_ENV: server_database_uri(cfg, paths)}
    version = hostsetup.lab_mlflow_version()
    if version:
        env[VERSION_ENV] = version
    before = latest_backup(cfg)
    argv = [paths.replab, "lab", "backup", "--workdir", paths.workdir, "--reason", reason]
    if cfg.lab.mlflow_backend == "postgresql":
        argv += ["--env-file", f"{paths.lab}/.env"]  # POSTGRES_PASSWORD
    out = remote.run(conn, argv, env=env, timeout=1800)
    last = out.stdout.strip().splitlines()[-1:] or [""]
    info = latest_backup(cfg)
    if info is None or (before is not None and info.key == before.key):
        raise CloudError(f"the backup on {conn.host} reported {last[0]!r} but the bucket "
                         f"{cfg.buckets.backups} holds no new backup", "replab lab backup")
    report(f"backed up the server's MLflow database ({info.runs} runs) to {info.location}",
            progress)
    return info


__all__ = [
    "KEEP_DAILY", "KEEP_RECENT", "SCHEDULED", "SERVER_POSTGRES_URI", "UNIT", "backup_on_server",
    "prune", "prune_plan", "server_database_uri", "systemd_units",
]
