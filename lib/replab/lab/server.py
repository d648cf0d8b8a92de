"""Launching the lab on the GPU server over SSH: upload, ``docker compose up``, health.

The server was set up by 2_provision (Docker with the compose plugin, the GPU runtime, the
data bucket's rclone mount). This uploads replab's ``docker/`` build context, the rendered
``compose.yaml`` and its ``.env`` (0600), restores the latest MLflow backup when the server's
database is new (sqlite: the file is put in place; PostgreSQL: the server's replab restores
into the started database), starts the stack and waits until every service is healthy.

Compose: Chameleon's servers get Compose v2 (``docker compose``, the docker-compose-plugin),
which reads ``compose.yaml`` exactly as rendered. Where only Compose v1 (``docker-compose``,
Debian's 1.29) is there, the uploaded file leaves out the top-level ``name:`` (v1's schema
rejects it) and the project name travels as ``-p`` instead; v1 has no ``ps --format json``,
so health comes from ``docker inspect`` of the containers ``docker-compose ps -q`` lists.
:func:`detect_compose` picks one on the server, v2 first.

Every ``docker`` / ``docker compose`` command runs with ``docker_env`` added to its
environment when given (``DOCKER_HOST`` for another engine, ``PATH`` to pick a client); on a
Chameleon server nothing is set and the default socket is used.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import hostsetup, remote
from ..errors import CloudError, ConfigError, ResourceTimeout
from ..serverlayout import DB_ENV, server_database_uri
from ..serverlayout import ROOT as ROOT  # noqa: F401  (kept: lab.server.ROOT, SOURCE_PARTS)
from ..serverlayout import SOURCE_PARTS as SOURCE_PARTS  # noqa: F401
from . import backup, compose

log = logging.getLogger(__name__)
JUPYTER_PORT, MLFLOW_PORT = compose.JUPYTER_PORT, compose.MLFLOW_PORT
COMPOSE_V2, COMPOSE_V1 = "v2", "v1"
_INNER_PORTS = {"mlflow": MLFLOW_PORT, "jupyter": JUPYTER_PORT}
_SERVICE_LABEL = "com.docker.compose.service"


# -- pure helpers --------------------------------------------------------------------------------
def compose_argv(paths: compose.HostPaths, *args: str, flavor: str = COMPOSE_V2,
                 project: str | None = None) -> list[str]:
    """The compose command for the lab in ``paths.lab``: ``docker compose ...`` (v2, the
    project name comes from compose.yaml) or ``docker-compose -p PROJECT ...`` (v1).
    Raises ValueError for v1 without ``project`` or an unknown flavor."""
    lab = paths.lab
    where = ["--project-directory", lab, "-f", f"{lab}/{compose.COMPOSE_FILE}"]
    if flavor == COMPOSE_V2:
        return ["docker", "compose", *where, *args]
    if flavor == COMPOSE_V1:
        if not project:
            raise ValueError("docker-compose v1 needs the project name (-p)")
        return ["docker-compose", "-p", project, *where, *args]
    raise ValueError(f"unknown compose flavor {flavor!r}")


def server_spec(spec: Mapping[str, Any], *, flavor: str = COMPOSE_V2,
                ports: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The compose spec as uploaded: for v1 without the top-level ``name`` (v1.29 rejects
    it; :func:`compose_argv` passes it as ``-p``); with ``ports`` ({"mlflow": port,
    "jupyter": port}) published on those 127.0.0.1 ports instead of 5000 / 8888. The input
    is not modified. Raises ConfigError for a port of another service."""
    out = copy.deepcopy(dict(spec))
    if flavor == COMPOSE_V1:
        out.pop("name", None)
    for service, port in (ports or {}).items():
        if service not in _INNER_PORTS or service not in out["services"]:
            raise ConfigError([("ports", f"{service!r}: only mlflow and jupyter publish a "
                                         "port")])
        out["services"][service]["ports"] = [
            f"{compose.BIND_ADDRESS}:{int(port)}:{_INNER_PORTS[service]}"]
    return out


def services_health(output: str) -> dict[str, str]:
    """{service: "healthy" | "running" | state} from ``docker compose ps --format json``
    (one JSON object per line, or one array, depending on the v2 release) or from
    ``docker inspect`` of the project's containers (a JSON array; v1)."""
    text = output.strip()
    if not text:
        return {}
    items = json.loads(text) if text.startswith("[") else [
        json.loads(line) for line in text.splitlines() if line.strip()]
    out = {}
    for item in items:
        state = item.get("State", "")
        if isinstance(state, dict):  # docker inspect
            labels = (item.get("Config") or {}).get("Labels") or {}
            name = labels.get(_SERVICE_LABEL) or item.get("Name", "?").lstrip("/")
            health = (state.get("Health") or {}).get("Status", "")
            out[name] = health or state.get("Status", "")
            continue
        health = item.get("Health", "")
        out[item.get("Service") or item.get("Name", "?")] = health or state
    return out


def all_healthy(health: Mapping[str, str]) -> bool:
    """Every service healthy (PostgreSQL: running suffices), and at least one."""
    return bool(health) and all(v == "healthy" or (v == "running" and k == "postgres")
                                for k, v in health.items())


def tunnel_command(host: remote.Host, ports: Mapping[str, int] | None = None) -> str:
    ports = {**_INNER_PORTS, **(ports or {})}
    forwards = " ".join(f"-L {ports[s]}:127.0.0.1:{ports[s]}" for s in ("jupyter", "mlflow"))
    key = f" -i {host.key_filename}" if host.key_filename else ""
    port = f" -p {host.port}" if host.port != 22 else ""
    return f"ssh -N{key}{port} {forwards} {host.target}"


def lab_info(cfg, host: remote.Host, paths: compose.HostPaths, health: dict[str, str],
             ports: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What ``<workdir>/lab.json`` records for a server lab (never the token itself)."""
    ports = {**_INNER_PORTS, **(ports or {})}
    token_file = str(cfg.workdir_path.absolute() / "secrets" / "lab.env")
    return {
        "site": cfg.site, "host": host.address, "user": host.user,
        "mlflow_url": f"http://127.0.0.1:{ports['mlflow']}",
        "jupyter_url": f"http://127.0.0.1:{ports['jupyter']}/lab",
        "jupyter_token": f"JUPYTER_TOKEN in {token_file}", "token_file": token_file,
        "tunnel": tunnel_command(host, ports),
        "how": "run the tunnel command on your machine, then open the URLs",
        "compose": f"{paths.lab}/{compose.COMPOSE_FILE}", "services": health,
    }


# -- the lab on one server -----------------------------------------------------------------------
def detect_compose(conn, env: Mapping[str, str] | None = None) -> str:
    """:data:`COMPOSE_V2` when ``docker compose version`` works on the server, else
    :data:`COMPOSE_V1` when ``docker-compose version`` does. Raises CloudError when neither
    (host setup installs the compose plugin)."""
    if remote.run(conn, ["docker", "compose", "version"], check=False, env=env).ok:
        return COMPOSE_V2
    if remote.run(conn, ["docker-compose", "version"], check=False, env=env).ok:
        return COMPOSE_V1
    raise CloudError(f"neither `docker compose` nor `docker-compose` works on {conn.host}: "
                     "run 2_provision's host setup (it installs docker-compose-plugin)",
                     "ssh docker compose version")


def host_paths(cfg, conn, *, home: str | None = None) -> compose.HostPaths:
    """The lab's directories on the server, ``<home>/<experiment>/...``; ``home`` defaults to
    the login user's home directory (``/home/cc`` on Chameleon), as host setup has it."""
    return compose.HostPaths.for_config(cfg, hostsetup.home_directory(conn, conn.user, home))


@dataclass(frozen=True)
class ServerLab:
    """The lab's compose project on a server: the connection, its directories, which compose
    runs it and the environment its docker commands get."""

    conn: Any
    paths: compose.HostPaths
    project: str
    flavor: str = COMPOSE_V2
    env: Mapping[str, str] | None = None

    @classmethod
    def open(cls, cfg, host: remote.Host, *, conn=None, paths: compose.HostPaths | None = None,
             home: str | None = None, docker_env: Mapping[str, str] | None = None
             ) -> ServerLab:
        """Connect (unless ``conn``), resolve the paths and detect the compose version.
        Raises CloudError when the server is unreachable or has no compose."""
        conn = conn or remote.connect(host)
        paths = paths or host_paths(cfg, conn, home=home)
        env = dict(docker_env) if docker_env else None
        return cls(conn, paths, cfg.names["lab"], detect_compose(conn, env), env)

    def argv(self, *args: str) -> list[str]:
        return compose_argv(self.paths, *args, flavor=self.flavor, project=self.project)

    def compose(self, *args: str, check: bool = True,
                timeout: float | None = None) -> remote.Result:
        return remote.run(self.conn, self.argv(*args), check=check, env=self.env,
                          timeout=timeout)

    def health(self) -> dict[str, str]:
        """{service: health or state} of the project's containers; {} when none exist."""
        if self.flavor == COMPOSE_V2:
            return services_health(self.compose("ps", "--all", "--format", "json").stdout)
        ids = self.compose("ps", "-q").stdout.split()
        if not ids:
            return {}
        # a container can go between the two calls: inspect prints the others
        out = remote.run(self.conn, ["docker", "inspect", *ids], check=False, env=self.env)
        return services_health(out.stdout)


def _record_image_digest(cfg, lab: ServerLab, image: str, host_env: Mapping[str, str],
                         say) -> str | None:
    """Put the Jupyter image's id into the server's ``.env`` as ``REPLAB_IMAGE_DIGEST``,
    which the container gets and the capture records (a replay can name the exact image).
    The file changes, and compose recreates the container, only when the image did."""
    out = remote.run(lab.conn, ["docker", "image", "inspect", "--format", "{{.Id}}", image],
                     check=False, env=lab.env)
    digest = out.stdout.strip() if out.ok else ""
    if not digest:
        say(f"image {image} is not on the server yet: REPLAB_IMAGE_DIGEST stays empty")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        _, env_path = compose.write_compose(
            cfg, tmp, host_env={**host_env, "REPLAB_IMAGE_DIGEST": digest},
            host_paths=lab.paths)
        remote.put_text(lab.conn, env_path.read_text(),
                        f"{lab.paths.lab}/{compose.ENV_FILE}", 0o600)
    return digest


def _restore_postgres(cfg, lab: ServerLab, say, *, timeout: float, interval: float,
                      clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    """PostgreSQL: start it alone, then let the server's replab (host setup installed it,
    with pg_restore) restore the newest backup with runs when the database is new, before
    MLflow starts on it."""
    conn, paths = lab.conn, lab.paths
    if not remote.run(conn, [paths.replab, "--version"], check=False).ok:
        say(f"PostgreSQL history not checked: no replab at {paths.replab} (run 2_provision's "
            "host setup, then launch again)")
        return
    lab.compose("up", "-d", "postgres", timeout=timeout)
    start = clock()
    while lab.health().get("postgres") not in ("healthy", "running"):
        if clock() - start >= timeout:
            raise ResourceTimeout(f"PostgreSQL on {conn.host} did not start within "
                                  f"{timeout:.0f}s: {lab.health()}")
        sleep(interval)
    out = remote.run(conn, [paths.replab, "lab", "restore", "--if-new", "--workdir",
                            paths.workdir, "--env-file", f"{paths.lab}/{compose.ENV_FILE}"],
                     env={DB_ENV: server_database_uri(cfg, paths)},
                     timeout=timeout)
    say(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "PostgreSQL checked")


def _restore_database(cfg, lab: ServerLab, say) -> str | None:
    """Put the latest backup in place when the server has no sqlite database yet."""
    if cfg.lab.mlflow_backend != "sqlite":
        return None  # PostgreSQL: _restore_postgres, once its container runs
    conn, paths = lab.conn, lab.paths
    db_path = f"{paths.mlflow_dir}/mlflow.db"
    if remote.run(conn, ["test", "-s", db_path], check=False).ok:
        return None
    latest = backup.latest_backup(cfg, with_content=True)
    if latest is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = backup.Database.sqlite(Path(tmp) / "mlflow.db")
        backup.restore(cfg, latest, database=local)
        remote.put_text(conn, local.path.read_bytes(), db_path, mode=0o644)
    # MLflow (uid 1000 in its container) writes the database: it belongs to whoever owns
    # its directory, as the database MLflow creates itself would
    chown = remote.run(conn, ["chown", f"--reference={paths.mlflow_dir}", db_path],
                       check=False)
    if not chown.ok:
        log.warning("could not hand %s to the owner of %s: %s", db_path, paths.mlflow_dir,
                    chown.stderr.strip())
    say(f"restored MLflow history from backup {latest.key} ({latest.runs} runs)")
    return latest.key


def launch_remote(cfg, host: remote.Host, *, conn=None,
                  paths: compose.HostPaths | None = None, home: str | None = None,
                  docker_env: Mapping[str, str] | None = None, build: bool = True,
                  ports: Mapping[str, int] | None = None,
                  source: str | os.PathLike | None = None,
                  progress: Callable[[str], None] | None = None, timeout: float = 1800,
                  interval: float = 5, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Start (or update) the lab on the server and wait until it is healthy; writes and
    returns ``<workdir>/lab.json``'s content. Idempotent: the source is uploaded only when
    it changed, and compose leaves unchanged services running.

    ``paths`` (default: below ``home``, itself the login user's home) says where the lab
    lives on the server; ``docker_env`` is added to every docker command's environment
    (``DOCKER_HOST``, ``PATH``); ``build`` False starts the images already on the server
    (tagged as compose.yaml names them) without building; ``ports`` publishes MLflow /
    Jupyter on other 127.0.0.1 ports ({"mlflow": 5001, "jupyter": 8889}), e.g. when 5000 /
    8888 are taken on the server; ``source`` is the replab checkout whose
    :data:`SOURCE_PARTS` (the images' build context) are uploaded, default this one.

    Raises CloudError when a step fails on the server (with its output), ConfigError for a
    missing secret, ResourceTimeout when the services are not healthy within ``timeout``
    (with the services' last logs).
    """
    say = progress or (lambda _m: None)
    lab = ServerLab.open(cfg, host, conn=conn, paths=paths, home=home, docker_env=docker_env)
    conn, paths = lab.conn, lab.paths
    remote.run(conn, ["mkdir", "-p", *paths.directories(), paths.source])
    gids = {}
    for group, key in (("video", "REPLAB_VIDEO_GID"), ("render", "REPLAB_RENDER_GID")):
        r = remote.run(conn, ["getent", "group", group], check=False)
        if r.ok and r.stdout.count(":") >= 2:
            gids[key] = r.stdout.split(":")[2]
    with tempfile.TemporaryDirectory() as tmp:
        compose_path, env_path = compose.write_compose(cfg, tmp, host_env=gids,
                                                       host_paths=paths)
        text = compose_path.read_text()
        jupyter_image = yaml.safe_load(text)["services"]["jupyter"]["image"]
        if lab.flavor != COMPOSE_V2 or ports:
            text = compose.render_compose(server_spec(yaml.safe_load(text),
                                                      flavor=lab.flavor, ports=ports))
        say(f"lab source on {host.target}: checking {paths.source}")
        step = hostsetup.upload_lab(conn, cfg, paths=paths, source=source)  # if changed
        remote.put_text(conn, text, f"{paths.lab}/{compose.COMPOSE_FILE}", 0o644)
        remote.put_text(conn, env_path.read_text(), f"{paths.lab}/{compose.ENV_FILE}", 0o600)
    say(f"lab source: {step.detail}")
    _restore_database(cfg, lab, say)
    if cfg.lab.mlflow_backend == "postgresql":
        _restore_postgres(cfg, lab, say, timeout=timeout, interval=interval, clock=clock,
                          sleep=sleep)
    name = "docker compose" if lab.flavor == COMPOSE_V2 else "docker-compose (v1)"
    if build:
        say(f"{name} build (the first build takes several minutes)")
        lab.compose("build", timeout=timeout)
    _record_image_digest(cfg, lab, jupyter_image, gids, say)
    up = ["up", "-d", "--remove-orphans", "--no-build"]
    say(f"{name} {' '.join(up)}")
    lab.compose(*up, timeout=timeout)
    start = clock()
    while True:
        health = lab.health()
        if all_healthy(health):
            break
        waited = clock() - start
        if waited >= timeout:
            logs = lab.compose("logs", "--tail", "30", check=False).stdout
            raise ResourceTimeout(f"the lab on {host.address} is not healthy after "
                                  f"{waited:.0f}s: {health}\n{logs[-3000:]}")
        say(f"waiting for the lab: {', '.join(f'{k} {v}' for k, v in health.items())}")
        sleep(interval)
    info = lab_info(cfg, host, paths, health, ports)
    write_lab_json(cfg, info)
    say(f"the lab is up on {host.address}: {', '.join(sorted(health))} healthy")
    return info


def status_remote(cfg, host: remote.Host, *, conn=None,
                  paths: compose.HostPaths | None = None, home: str | None = None,
                  docker_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The lab's services on the server and their health. Raises CloudError."""
    lab = ServerLab.open(cfg, host, conn=conn, paths=paths, home=home, docker_env=docker_env)
    return {"site": cfg.site, "host": host.address, "services": lab.health()}


def stop_remote(cfg, host: remote.Host, *, conn=None,
                paths: compose.HostPaths | None = None, home: str | None = None,
                docker_env: Mapping[str, str] | None = None) -> list[str]:
    """Stop and remove the lab's containers and network on the server (``down``). The
    database, the named PostgreSQL volume, the images and the uploaded files stay, so the
    next launch continues. Raises CloudError when compose fails."""
    lab = ServerLab.open(cfg, host, conn=conn, paths=paths, home=home, docker_env=docker_env)
    if remote.read_text(lab.conn, f"{lab.paths.lab}/{compose.COMPOSE_FILE}") is None:
        return []  # never launched there
    lab.compose("down", "--remove-orphans", timeout=600)
    name = "docker compose" if lab.flavor == COMPOSE_V2 else "docker-compose"
    return [f"{name} down on {host.address} (project {lab.project})"]


def write_lab_json(cfg, info: dict[str, Any]) -> Path:
    path = cfg.workdir_path / "lab.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, path)
    return path
