"""The lab: JupyterLab + MLflow whose history outlives the lease.

- ``compose``: the compose spec, built as data from the config (pure), and the ``.env``;
- ``local``: the ``site=local`` launcher running the same services as processes;
- ``server``: the lab on the GPU server over SSH (``docker compose up``);
- ``backup``: MLflow database backups to the ``-backups`` bucket and restore (the verbs; they
  pick the lab's database), over ``backupstore`` (snapshots and restores of a given
  ``database.Database``) and ``backupbucket`` (S3 or a local directory);
- ``schedule``: the GPU server's hourly backup timer, pruning, and a backup over SSH.

:func:`launch`, :func:`status` and :func:`stop` pick the right one for the config;
:func:`urls` / :func:`describe` say how to open the launched lab (the login URL with the
token, built from the secrets on demand, never stored in lab.json).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def server_host(cfg):
    """The server to run the lab on, from ``<workdir>/state.json`` (2_provision)."""
    from ..cloud import State
    from ..remote import Host

    state = State.load(cfg.workdir)
    fip = state.get("floating_ip") or {}
    server = state.get("server") or {}
    address = fip.get("address") if not fip.get("deleted_at") else None
    if not address or server.get("deleted_at"):
        raise ConfigError(f"{cfg.workdir_path / 'state.json'} records no running server with "
                          "an address: run 2_provision first")
    return Host(address, user=server.get("user", "cc"),
                key_filename=server.get("key_filename"))


def server_home(cfg) -> str | None:
    """The login user's home directory on the server as 2_provision's host setup had it
    (its ``setup_home``), from ``<workdir>/state.json``: the lab lives below it. None when
    none was given (the user's own home there, ``/home/cc`` on Chameleon)."""
    from ..cloud import State

    return (State.load(cfg.workdir).get("server") or {}).get("home") or None


def launch(cfg, *, progress: Callable[[str], None] | None = None,
           mlflow_port: int | None = None, jupyter_port: int | None = None,
           build: bool = True, **kwargs) -> dict[str, Any]:
    """Start (or reuse) the lab for ``cfg``; returns what ``<workdir>/lab.json`` records.

    ``mlflow_port`` / ``jupyter_port``: the 127.0.0.1 ports MLflow / JupyterLab listen on
    (here, or published on the server; None or 0: 5000 / 8888, or for ``local`` the last
    launch's). On a server: ``build`` False starts the images already there without
    building them; ``kwargs`` go to ``server.launch_remote``; the lab lives below
    :func:`server_home` unless ``home`` or ``paths`` say otherwise. ``local`` builds
    nothing (``build`` is not used); ``kwargs`` go to ``local.launch``."""
    if cfg.is_local:
        from . import local

        return local.launch(cfg, progress=progress, mlflow_port=mlflow_port or None,
                            jupyter_port=jupyter_port or None, **kwargs).to_dict()
    from . import server

    ports = {k: int(v) for k, v in (("mlflow", mlflow_port), ("jupyter", jupyter_port)) if v}
    kwargs.setdefault("home", server_home(cfg))
    return server.launch_remote(cfg, server_host(cfg), progress=progress,
                                ports=ports or None, build=build, **kwargs)


def status(cfg) -> dict[str, Any]:
    if cfg.is_local:
        from . import local

        return local.status(cfg)
    from . import server

    return server.status_remote(cfg, server_host(cfg), home=server_home(cfg))


def stop(cfg) -> list[str]:
    if cfg.is_local:
        from . import local

        return local.stop(cfg)
    from . import server

    return server.stop_remote(cfg, server_host(cfg), home=server_home(cfg))


def markdown(info: dict[str, Any]) -> str:
    """How to reach the lab, for display (URLs and the tunnel; never the token: executed
    notebooks are kept and shared, so the token's file is named instead)."""
    token = (f"JUPYTER_TOKEN in {info['token_file']}" if info.get("token_file")
             else info.get("jupyter_token") or "JUPYTER_TOKEN in <workdir>/secrets/lab.env")
    rows = [("MLflow", info.get("mlflow_url")), ("JupyterLab", info.get("jupyter_url")),
            ("JupyterLab opens at", info.get("jupyter_root")), ("Jupyter token", token)]
    if info.get("tunnel"):
        rows.append(("SSH tunnel (run on your machine)", f"`{info['tunnel']}`"))
    if "reused" in info:
        rows.append(("state", "already running: reused" if info["reused"] else "started"))
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v]
    return "### The lab\n\n" + "\n".join(lines) + "\n"


def urls(workdir: str | os.PathLike) -> dict[str, Any]:
    """How to open the lab that ``<workdir>/lab.json`` records: ``mlflow_url``,
    ``jupyter_url``, ``jupyter_login_url`` (``.../lab?token=...``, ready to open; None when
    the secrets hold no token), ``token_file`` (absolute) and ``status``.

    The login URL carries the token, a secret: it is built here, from
    ``<workdir>/secrets/lab.env``, each time it is asked for, and kept out of lab.json
    (which is printed and copied) and out of notebook outputs. Show it only on the user's
    own screen. Raises ConfigError when there is no lab.json (no lab was launched)."""
    from ..credentials import SecretsStore

    base = Path(workdir).expanduser().absolute()
    lab_file = base / "lab.json"
    try:
        info = json.loads(lab_file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{lab_file} does not exist: launch the lab first "
                          "(3_launch_lab or `replab lab launch`)") from None
    except ValueError:
        raise ConfigError(f"{lab_file} is not JSON: launch the lab again") from None
    store = SecretsStore(base)
    token = store.lab_env().get("JUPYTER_TOKEN")
    jupyter = info.get("jupyter_url")
    login = None
    if jupyter and token:
        lab = jupyter.rstrip("/") if jupyter.rstrip("/").endswith("/lab") else (
            jupyter.rstrip("/") + "/lab")
        login = f"{lab}?token={urllib.parse.quote(token, safe='')}"
    return {"mlflow_url": info.get("mlflow_url"), "jupyter_url": jupyter,
            "jupyter_login_url": login, "token_file": str(store.path(store.LAB_ENV)),
            "jupyter_root": info.get("jupyter_root"), "tunnel": info.get("tunnel"),
            "status": info.get("status")}


def describe(workdir: str | os.PathLike) -> str:
    """One line for a terminal: the MLflow URL, the JupyterLab login URL (with the token)
    and the absolute path of the token's file. Raises ConfigError without a lab.json."""
    u = urls(workdir)
    jupyter = u["jupyter_login_url"] or u["jupyter_url"]
    return (f"MLflow: {u['mlflow_url']}   JupyterLab: {jupyter} "
            f"(token: {u['token_file']})")


def example_run(cfg, info: dict[str, Any], *, seed: int = 0, epochs: int = 10) -> str:
    """Train the digits example against the (local) lab's MLflow; returns the run id.

    Raises ReplabError when the example fails (with its output's tail).
    """
    import os
    import subprocess
    import sys

    from ..errors import ReplabError
    from ..series import ROOT

    example = ROOT / "examples" / "digits"
    env = dict(os.environ, MLFLOW_TRACKING_URI=info["mlflow_url"])
    out = subprocess.run([sys.executable, "train.py", "--seed", str(seed), "--epochs",
                          str(epochs), "--experiment", cfg.experiment], cwd=example,
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise ReplabError(f"the example run failed:\n{out.stderr[-2000:]}")
    return next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("run "))
