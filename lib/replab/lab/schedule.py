"""The MLflow backups on the GPU server: the hourly systemd timer that runs
``replab lab backup --prune`` there, the pruning it applies, the database URI the server
reaches, and a backup made over SSH (``5_teardown``'s last one).

Pruning deletes only ``scheduled`` backups: it keeps the newest :data:`KEEP_RECENT` and the
newest of each of the last :data:`KEEP_DAILY` days; backups made by hand or by teardown
stay.
"""

from __future__ import annotations

import logging
import re

from ..errors import CloudError, ConfigError
from .backup import (
    _REASON,
    DB_ENV,
    VERSION_ENV,
    BackupInfo,
    Progress,
    _Bucket,
    _report,
    latest_backup,
    list_backups,
)

log = logging.getLogger(__name__)

# the lab's PostgreSQL as the GPU server itself reaches it (compose publishes it on loopback)
SERVER_POSTGRES_URI = "postgresql://mlflow@127.0.0.1:5432/mlflow"


def server_database_uri(cfg, paths) -> str:
    """The URI of the lab's MLflow database on the GPU server (``paths``: its HostPaths),
    without a password: the sqlite file the mlflow container mounts, or its PostgreSQL."""
    if cfg.lab.mlflow_backend == "postgresql":
        return SERVER_POSTGRES_URI
    return f"sqlite:///{paths.mlflow_dir}/mlflow.db"
UNIT = "replab-lab-backup"


SCHEDULED = "scheduled"  # the timer's reason; only these backups are ever pruned
KEEP_RECENT, KEEP_DAILY = 48, 30


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
    bucket = _Bucket(cfg)
    for info in doomed:
        bucket.delete(info.meta_key)
        bucket.delete(info.key)
    if doomed:
        _report(f"pruned {len(doomed)} scheduled backup(s) from {bucket.location} (kept the "
                f"newest {keep_recent} and one a day for {keep_daily} days)", progress)
    return doomed


def backup_on_server(cfg, conn, paths, *, reason: str = "manual",
                     progress: Progress | None = None) -> BackupInfo:
    """Back up the GPU server's lab database there, over SSH (``conn``), with the replab
    and the work directory host setup installed (``paths``: its ``HostPaths``); the lab's
    ``.env`` gives the PostgreSQL password. Returns the backup it made, read back from the
    bucket. Raises ConfigError (bad reason), CloudError (the command failed there, with its
    output)."""
    from .. import hostsetup, remote

    if not _REASON.match(reason):
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
    _report(f"backed up the server's MLflow database ({info.runs} runs) to {info.location}",
            progress)
    return info


# -- the GPU server's timer --------------------------------------------------------------------
def _quote(arg: str) -> str:
    """One argument of an Exec= line, quoted as systemd reads it; ``%`` and ``$`` escaped."""
    if not re.match(r"^[A-Za-z0-9_@+=:,./-]+$", arg):
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg.replace("%", "%%").replace("$", "$$")


def systemd_units(workdir: str, *, replab: str = "/usr/local/bin/replab", user: str = "cc",
                  group: str | None = None, on_calendar: str = "hourly",
                  environment_file: str | None = None, database_uri: str | None = None,
                  mlflow_version: str | None = None) -> dict[str, str]:
    """The service and timer that run ``replab lab backup --workdir WORKDIR --reason
    scheduled --prune`` on the GPU server (``on_calendar``, systemd's syntax; missed runs are
    caught up after a boot). ``environment_file`` (optional) is read for ``PGPASSWORD``
    and the like; ``database_uri`` (without a password) becomes ``REPLAB_MLFLOW_DB``;
    ``mlflow_version`` (the lab container's) ``REPLAB_MLFLOW_VERSION``.
    Returns ``{unit file name: text}``."""
    service = [
        "[Unit]",
        "Description=Back up the replab lab's MLflow database to the backups bucket",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        f"User={user}",
        f"Group={group or user}",
    ]
    if environment_file:
        service.append(f"EnvironmentFile=-{environment_file}")
    if database_uri:
        if "@" in database_uri and ":" in database_uri.split("@")[0].split("//")[-1]:
            raise ConfigError([("database_uri", "must not hold a password: put PGPASSWORD "
                                                "in the environment file")])
        service.append(f"Environment={_quote(f'{DB_ENV}={database_uri}')}")
    if mlflow_version:
        service.append(f"Environment={_quote(f'{VERSION_ENV}={mlflow_version}')}")
    argv = [replab, "lab", "backup", "--workdir", workdir, "--reason", SCHEDULED, "--prune"]
    service += [
        f"ExecStart={' '.join(_quote(a) for a in argv)}",
        "Nice=10",
        "IOSchedulingClass=idle",
        "TimeoutStartSec=30min",
        "",
    ]
    timer = [
        "[Unit]",
        f"Description=Back up the replab lab's MLflow database ({on_calendar})",
        "",
        "[Timer]",
        f"OnCalendar={on_calendar}",
        "Persistent=true",
        "RandomizedDelaySec=5min",
        f"Unit={UNIT}.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ]
    return {f"{UNIT}.service": "\n".join(service), f"{UNIT}.timer": "\n".join(timer)}


__all__ = [
    "KEEP_DAILY", "KEEP_RECENT", "SCHEDULED", "SERVER_POSTGRES_URI", "UNIT", "backup_on_server",
    "prune", "prune_plan", "server_database_uri", "systemd_units",
]
