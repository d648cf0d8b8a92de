"""Launching the lab on the GPU server over SSH: upload, ``docker compose up``, health.

The server was set up by 2_provision (Docker with the compose plugin, the GPU runtime, the
data bucket's rclone mount). This uploads replab's ``docker/`` build context, the rendered
``compose.yaml`` and its ``.env`` (0600), restores the latest MLflow backup when the server's
database is new (sqlite), starts the stack and waits until every service is healthy.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import hostsetup, remote
from ..errors import ResourceTimeout
from . import compose

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[3]  # the artifact (…/lib/replab/lab -> …)
SOURCE_PARTS = ("docker", "lib", "pyproject.toml", "README.md", "LICENSE")
JUPYTER_PORT, MLFLOW_PORT = 8888, 5000


def compose_argv(paths: compose.HostPaths, *args: str) -> list[str]:
    lab = paths.lab
    return ["docker", "compose", "--project-directory", lab, "-f", f"{lab}/compose.yaml",
            *args]


def services_health(ps_output: str) -> dict[str, str]:
    """{service: "healthy" | "running" | state} from ``docker compose ps --format json``
    (one JSON object per line, or one array, depending on the compose version)."""
    text = ps_output.strip()
    if not text:
        return {}
    items = json.loads(text) if text.startswith("[") else [
        json.loads(line) for line in text.splitlines() if line.strip()]
    out = {}
    for item in items:
        state = item.get("State", "")
        health = item.get("Health", "")
        out[item.get("Service") or item.get("Name", "?")] = health or state
    return out


def tunnel_command(host: remote.Host) -> str:
    ports = f"-L {JUPYTER_PORT}:127.0.0.1:{JUPYTER_PORT} -L {MLFLOW_PORT}:127.0.0.1:{MLFLOW_PORT}"
    key = f" -i {host.key_filename}" if host.key_filename else ""
    port = f" -p {host.port}" if host.port != 22 else ""
    return f"ssh -N{key}{port} {ports} {host.target}"


def lab_info(cfg, host: remote.Host, paths: compose.HostPaths,
             health: dict[str, str]) -> dict[str, Any]:
    """What ``<workdir>/lab.json`` records for a server lab (never the token itself)."""
    return {
        "site": cfg.site, "host": host.address, "user": host.user,
        "mlflow_url": f"http://127.0.0.1:{MLFLOW_PORT}",
        "jupyter_url": f"http://127.0.0.1:{JUPYTER_PORT}/lab",
        "jupyter_token": "JUPYTER_TOKEN in <workdir>/secrets/lab.env",
        "tunnel": tunnel_command(host),
        "how": "run the tunnel command on your machine, then open the URLs",
        "compose": f"{paths.lab}/compose.yaml", "services": health,
    }


def _restore_database(cfg, conn, paths: compose.HostPaths, say) -> str | None:
    """Put the latest backup in place when the server has no sqlite database yet."""
    from . import backup

    if cfg.lab.mlflow_backend != "sqlite":
        return None  # PostgreSQL: restored with replab lab restore once the stack runs
    db_path = f"{paths.mlflow_dir}/mlflow.db"
    if remote.run(conn, ["test", "-s", db_path], check=False).ok:
        return None
    latest = backup.latest_backup(cfg)
    if latest is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = backup.Database.sqlite(Path(tmp) / "mlflow.db")
        backup.restore(cfg, latest, database=local)
        remote.put_text(conn, local.path.read_bytes(), db_path, mode=0o644)
    say(f"restored MLflow history from backup {latest.key}")
    return latest.key


def launch_remote(cfg, host: remote.Host, *, conn=None, progress: Callable[[str], None]
                  | None = None, timeout: float = 1800, interval: float = 5,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Start (or update) the lab on the server and wait until it is healthy.

    Raises CloudError when a step fails on the server (with its output), ResourceTimeout
    when the services are not healthy within ``timeout`` (with the services' last logs).
    """
    say = progress or (lambda _m: None)
    conn = conn or remote.connect(host)
    paths = compose.HostPaths.for_config(cfg, home=f"/home/{host.user}")
    remote.run(conn, ["mkdir", "-p", *paths.directories(), paths.source])
    gids = {}
    for group, key in (("video", "REPLAB_VIDEO_GID"), ("render", "REPLAB_RENDER_GID")):
        r = remote.run(conn, ["getent", "group", group], check=False)
        if r.ok and r.stdout.count(":") >= 2:
            gids[key] = r.stdout.split(":")[2]
    with tempfile.TemporaryDirectory() as tmp:
        compose_path, env_path = compose.write_compose(cfg, tmp, host_env=gids,
                                                       host_paths=paths)
        say(f"uploading the lab to {host.target}:{paths.root}")
        step = hostsetup.upload_lab(conn, cfg, paths=paths)  # only when the source changed
        remote.put_text(conn, compose_path.read_text(), f"{paths.lab}/compose.yaml", 0o644)
        remote.put_text(conn, env_path.read_text(), f"{paths.lab}/.env", 0o600)
    say(f"lab source: {step.detail}; restoring MLflow history if the database is new")
    _restore_database(cfg, conn, paths, say)
    say("docker compose up -d --build (the first build takes several minutes)")
    remote.run(conn, compose_argv(paths, "up", "-d", "--build"), timeout=timeout)
    start = clock()
    while True:
        health = services_health(remote.run(conn, compose_argv(
            paths, "ps", "--all", "--format", "json")).stdout)
        if health and all(v == "healthy" or (v == "running" and k == "postgres")
                          for k, v in health.items()):
            break
        waited = clock() - start
        if waited >= timeout:
            logs = remote.run(conn, compose_argv(paths, "logs", "--tail", "30"),
                              check=False).stdout
            raise ResourceTimeout(f"the lab on {host.address} is not healthy after "
                                  f"{waited:.0f}s: {health}\n{logs[-3000:]}")
        say(f"waiting for the lab: {', '.join(f'{k} {v}' for k, v in health.items())}")
        sleep(interval)
    info = lab_info(cfg, host, paths, health)
    write_lab_json(cfg, info)
    return info


def write_lab_json(cfg, info: dict[str, Any]) -> Path:
    path = cfg.workdir_path / "lab.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1) + "\n")
    return path
