"""The local lab's files: where they are (:class:`Paths`), ``<workdir>/lab/local.json`` (the
services' records and last ports, written atomically, mode 0600), ``<workdir>/lab.json`` (the
endpoints and where the token is, never the token; 0600) and the lock that lets one launch or
stop run at a time per work directory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ResourceTimeout
from ..secretsstore import SecretsStore
from .supervisor import now

log = logging.getLogger(__name__)

STATE_SCHEMA = 1
LAB_DIR = "lab"
STATE_FILE = "local.json"
LAB_FILE = "lab.json"
SQLITE_FILE = "mlflow.db"
POSTGRES_DIR = "postgres"
SERVICES = ("postgres", "mlflow", "jupyter")  # start order; stop goes the other way


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


def write_json(path: Path, data: Mapping[str, Any], mode: int = 0o600) -> None:
    """Atomically (a reader sees the old file or the new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), mode)
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def read_state(p: Paths) -> dict[str, Any]:
    try:
        data = json.loads(p.state.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("%s is not JSON; ignoring it", p.state)
        return {}
    return data if isinstance(data, dict) else {}


# -- state -------------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(p: Paths, timeout: float = 600):
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


def prepare_dirs(p: Paths) -> None:
    p.root.mkdir(parents=True, exist_ok=True)
    # Others may traverse (PostgreSQL's own user must reach its cluster) but not list.
    os.chmod(p.root, 0o711)
    p.logs.mkdir(exist_ok=True)
    os.chmod(p.logs, 0o700)
    for existing in (p.state, p.lab_file, *p.logs.glob("*.log")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(existing, 0o600)


def known_ports(state: Mapping[str, Any], services: Mapping[str, Any]) -> dict[str, int]:
    ports = {k: v for k, v in (state.get("last_ports") or {}).items() if v}
    ports.update({k: v["port"] for k, v in services.items() if v and v.get("port")})
    return ports


def save_state(p: Paths, cfg, services: Mapping[str, Any], started_at: str,
                last_ports: Mapping[str, int]) -> None:
    write_json(p.state, {"schema_version": STATE_SCHEMA, "site": "local",
                          "backend": cfg.lab.mlflow_backend, "started_at": started_at,
                          "updated_at": now(), "services": dict(services),
                          "last_ports": known_ports({"last_ports": last_ports}, services)})


def lab_document(cfg, services: Mapping[str, Any], status: str, started_at: str
                  ) -> dict[str, Any]:
    mlflow, jupyter = services.get("mlflow") or {}, services.get("jupyter") or {}
    store = SecretsStore(cfg.workdir_path.absolute())
    token_file = str(store.path(store.LAB_ENV))
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
        "updated_at": now(),
        "backend": cfg.lab.mlflow_backend,
        "mlflow_url": mlflow.get("url"),
        "jupyter_url": jupyter.get("url"),
        "jupyter_root": jupyter.get("root_dir"),
        # where the token is, never the token: lab.json is a record that gets printed and
        # copied; replab.lab.urls() builds the login URL from the secrets when asked
        "jupyter_token": f"JUPYTER_TOKEN in {token_file}",
        "jupyter_token_file": token_file,
        "tunnel": None,
        "services": described,
        "state_file": str(paths(cfg).state),
    }


def write_lab_file(cfg, services: Mapping[str, Any], status: str, started_at: str) -> Path:
    p = paths(cfg)
    write_json(p.lab_file, lab_document(cfg, services, status, started_at))
    return p.lab_file


__all__ = ["LAB_FILE", "Paths", "SERVICES", "STATE_FILE", "STATE_SCHEMA", "paths"]
