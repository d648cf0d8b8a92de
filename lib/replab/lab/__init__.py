"""The lab: JupyterLab + MLflow whose history outlives the lease.

- ``compose``: the compose spec, built as data from the config (pure), and the ``.env``;
- ``local``: the ``site=local`` launcher running the same services as processes;
- ``server``: the lab on the GPU server over SSH (``docker compose up``);
- ``backup``: MLflow database backups to the ``-backups`` bucket and restore;
- ``schedule``: the GPU server's hourly backup timer, pruning, and a backup over SSH.

:func:`launch`, :func:`status` and :func:`stop` pick the right one for the config.
"""

from __future__ import annotations

from collections.abc import Callable
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


def launch(cfg, *, progress: Callable[[str], None] | None = None, **kwargs) -> dict[str, Any]:
    """Start (or reuse) the lab for ``cfg``; returns what ``<workdir>/lab.json`` records."""
    if cfg.is_local:
        from . import local

        return local.launch(cfg, progress=progress, **kwargs).to_dict()
    from . import server

    return server.launch_remote(cfg, server_host(cfg), progress=progress, **kwargs)


def status(cfg) -> dict[str, Any]:
    if cfg.is_local:
        from . import local

        return local.status(cfg)
    from . import server

    return server.status_remote(cfg, server_host(cfg))


def stop(cfg) -> list[str]:
    if cfg.is_local:
        from . import local

        return local.stop(cfg)
    from . import server

    return server.stop_remote(cfg, server_host(cfg))


def markdown(info: dict[str, Any]) -> str:
    """How to reach the lab, for display (URLs and the tunnel; never the token)."""
    rows = [("MLflow", info.get("mlflow_url")), ("JupyterLab", info.get("jupyter_url")),
            ("Jupyter token", info.get("jupyter_token") or "JUPYTER_TOKEN in secrets/lab.env")]
    if info.get("tunnel"):
        rows.append(("SSH tunnel (run on your machine)", f"`{info['tunnel']}`"))
    if "reused" in info:
        rows.append(("state", "already running: reused" if info["reused"] else "started"))
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v]
    return "### The lab\n\n" + "\n".join(lines) + "\n"


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
