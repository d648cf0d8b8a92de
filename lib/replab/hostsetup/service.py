"""replab on the server: its venv, its work directory (config and EC2 keys only) and the
hourly MLflow backup timer that runs it (:func:`systemd_units` renders its units; pruning
and the backups themselves are ``replab.lab.schedule`` / ``replab.lab.backup``)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from .. import config as config_mod
from .. import remote
from ..errors import CloudError, ConfigError
from ..remote import Step
from ..serverlayout import DB_ENV, ROOT, VERSION_ENV, HostPaths, server_database_uri
from ._base import (
    BACKUP_TIMER,
    LAB_SOURCE,
    REPLAB_CLI,
    SERVER_PACKAGES,
    SOURCE_HASH_FILE,
    WORKDIR,
    _apt_install,
    _ensure_file,
    _install_units,
    _is_root,
    _live,
    _ok,
    _skipped,
    _user,
    _which,
    home_directory,
)

UNIT = "replab-lab-backup"  # the backup timer's systemd unit (.service, .timer)
SCHEDULED = "scheduled"  # the reason the timer's backups carry; only these are ever pruned


def lab_mlflow_version(source: str | os.PathLike | None = None) -> str | None:
    """The MLflow version the lab's image pins (``docker/mlflow/requirements.txt`` of the
    checkout ``source``), or None."""
    path = Path(source or ROOT) / "docker" / "mlflow" / "requirements.txt"
    text = path.read_text() if path.exists() else ""
    found = re.search(r"^mlflow==([^\s;#]+)", text, re.M)
    return found.group(1) if found else None


def replab_cli(conn, cfg, *, paths=None, home: str | None = None, python: str = "python3",
               root: str | os.PathLike = "/",
               constraints: str | os.PathLike | None = None) -> Step:
    """replab itself on the server, in the virtual environment ``HostPaths.venv``, installed
    from the source :func:`upload_lab` put at ``HostPaths.source`` (run that first), with
    :data:`SERVER_PACKAGES` pinned by this checkout's ``constraints.txt`` (and, for a
    PostgreSQL lab, the distribution's ``postgresql-client``). The backup timer and
    teardown's last backup run ``HostPaths.replab``. changed=False when the venv holds
    the uploaded source already (same sha256). ``python3 -m venv`` failing on the live
    system installs ``python3-venv`` first. Raises CloudError when a command fails."""
    paths = paths or HostPaths.for_config(cfg, home_directory(conn, conn.user, home))
    digest = (remote.read_text(conn, f"{paths.source}/{SOURCE_HASH_FILE}") or "").strip()
    if not digest:
        raise CloudError(f"no replab source at {paths.source} on {conn.host}: the "
                         f"{LAB_SOURCE} step uploads it first", "replab-cli")
    marker = f"{paths.venv}/{SOURCE_HASH_FILE}"
    replab = paths.replab
    pg_client = (cfg.lab.mlflow_backend != "postgresql" or not _live(root)
                 or _which(conn, "pg_dump") is not None)
    if (remote.read_text(conn, marker) or "").strip() == digest and pg_client and \
            _ok(conn, [replab, "--version"]):
        return Step(REPLAB_CLI, False, f"{replab} is current (sha256 {digest[:12]})")
    notes = []
    vpython = f"{paths.venv}/bin/python"
    if not _ok(conn, [vpython, "-c", "import pip"]):
        made = remote.run(conn, [python, "-m", "venv", "--clear", paths.venv], check=False)
        if not made.ok and _live(root):  # Ubuntu's python3 comes without ensurepip
            _apt_install(conn, ["python3-venv"], sudo=not _is_root(conn))
            notes.append("installed python3-venv")
            made = remote.run(conn, [python, "-m", "venv", "--clear", paths.venv])
        if not made.ok:
            raise CloudError(f"{python} -m venv {paths.venv} failed on {conn.host}:\n"
                             f"{(made.stderr or made.stdout).strip()[-1500:]}", "python -m venv")
        notes.append(f"created {paths.venv}")
    local = Path(constraints) if constraints else ROOT / "constraints.txt"
    pins = f"{paths.venv}/replab-constraints.txt"
    remote.put_text(conn, local.read_text() if local.exists() else "", pins, mode=0o644)
    pip = [vpython, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    remote.run(conn, [*pip, "-c", pins, *SERVER_PACKAGES], timeout=1800)
    # replab itself last and always reinstalled: its version does not change with the source
    remote.run(conn, [*pip, "--no-deps", "--force-reinstall", paths.source], timeout=900)
    version = remote.run(conn, [replab, "--version"]).stdout.strip()
    if cfg.lab.mlflow_backend == "postgresql" and not _which(conn, "pg_dump"):
        if _live(root):  # Ubuntu 24.04's client is 16, as the lab's PostgreSQL
            _apt_install(conn, ["postgresql-client"], sudo=not _is_root(conn))
            notes.append("installed postgresql-client (pg_dump for the backups)")
        else:
            notes.append(f"apt-get install postgresql-client skipped ({_skipped(root)})")
    remote.put_text(conn, digest + "\n", marker, mode=0o644)
    notes.append(f"installed {version or 'replab'} from {paths.source} (sha256 {digest[:12]})")
    return Step(REPLAB_CLI, True, "; ".join(notes), {"replab": replab})


def server_workdir(conn, cfg, store, *, paths=None, home: str | None = None) -> Step:
    """The server's replab work directory ``HostPaths.workdir``: ``config.yaml`` (this
    config, its ``workdir`` set to that directory) and ``secrets/credentials.json`` holding
    only the EC2 keys the MLflow backups are written with (0600 in a 0700 directory; the
    application credential never leaves this machine). changed=False when both are there
    as they would be written. Raises ConfigError without EC2 keys (1_create_credentials)."""
    paths = paths or HostPaths.for_config(cfg, home_directory(conn, conn.user, home))
    ec2 = store.credentials().get("ec2")
    if not ec2:
        raise ConfigError(f"no EC2 credential in {store.path(store.CREDENTIALS)}: run "
                          "1_create_credentials first (the server's backups need it)")
    text = config_mod.dump(dataclasses.replace(cfg, workdir=paths.workdir))
    secrets_dir = f"{paths.workdir}/secrets"
    remote.run(conn, ["mkdir", "-p", secrets_dir])
    remote.run(conn, ["chmod", "700", secrets_dir])
    written = [name for name, content, mode in (
        (f"{paths.workdir}/{config_mod.CONFIG_FILE}", text, 0o644),
        (f"{secrets_dir}/{store.CREDENTIALS}",
         json.dumps({"ec2": ec2}, indent=1, sort_keys=True) + "\n", 0o600),
    ) if _ensure_file(conn, name, content, mode)]
    if not written:
        return Step(WORKDIR, False, f"{paths.workdir} holds the config and the EC2 keys")
    return Step(WORKDIR, True, f"wrote {', '.join(written)}")


# -- the backup timer's units ------------------------------------------------------------------
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


def backup_timer(conn, cfg, *, root: str | os.PathLike = "/", home: str | None = None,
                 user: str | None = None, workdir: str | None = None,
                 replab: str | None = None, database_uri: str | None = None,
                 on_calendar: str = "hourly") -> Step:
    """Install and enable :func:`systemd_units` (the hourly MLflow backup) under
    ``<root>/etc/systemd/system``; changed=False when both units are already there as
    rendered. ``workdir`` (on the server, written by :func:`server_workdir`) defaults to
    ``HostPaths.workdir``, ``replab`` to ``HostPaths.replab`` (:func:`replab_cli`), the
    database to ``serverlayout.server_database_uri`` (the password comes from the lab's
    ``.env``). Raises CloudError when systemctl fails."""
    user = _user(conn, user)
    paths = HostPaths.for_config(cfg, home_directory(conn, user, home))
    if database_uri is None:
        database_uri = server_database_uri(cfg, paths)
    units = systemd_units(workdir or paths.workdir, replab=replab or paths.replab,
                          user=user, mlflow_version=lab_mlflow_version(),
                          on_calendar=on_calendar, environment_file=f"{paths.lab}/.env",
                          database_uri=database_uri)
    sudo = _live(root) and not _is_root(conn)
    changed, notes = _install_units(conn, root, units, f"{UNIT}.timer", sudo=sudo)
    if not changed:
        return Step(BACKUP_TIMER, False, f"{UNIT}.timer installed ({on_calendar})")
    return Step(BACKUP_TIMER, True, "; ".join(notes))
