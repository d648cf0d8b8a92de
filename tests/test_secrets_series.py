"""Planted secrets never leave ``secrets/``: a full ``replab demo`` series (configure ->
credentials -> lab -> example run -> replay -> teardown) on a copy of this checkout whose
environment, uncommitted diff and untracked files each carry a planted secret, then a bundle
export; every output is searched for the planted values: the series' console output, every
file of the work directory outside ``secrets/`` (executed notebooks, logs, the MLflow
database, artifacts and backups in the local buckets, replay workspaces), the bundle, and
``/proc/<pid>/environ`` of every lab service and its children."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _planted() -> dict[str, str]:
    tag = secrets.token_hex(6)
    return {
        # the caller's shell environment: neither huggingface nor github_cli is on
        "env_token": f"ghp_{secrets.token_hex(18)}",
        "env_password": f"plantedenvpw{tag}",
        "env_api_key": f"plantedenvkey{tag}",
        # an uncommitted change to a tracked file
        "diff_password": f"planteddiffpw{tag}",
        "diff_api_key": f"planteddiffkey{tag}",
        # a small untracked config file
        "untracked_secret": f"plantedfilesecret{tag}",
        "untracked_token": f"plantedfiletoken{tag}",
    }


def _checkout_copy(dest: Path, planted: dict[str, str]) -> Path:
    """A clone of this checkout's HEAD with the planted diff and untracked file."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)],
                   check=True)
    for k, v in (("user.email", "t@example.org"), ("user.name", "t")):
        subprocess.run(["git", "-C", str(dest), "config", k, v], check=True)
    script = dest / "examples" / "digits" / "digits.py"
    script.write_text(script.read_text() + "\n# local settings for the planted-secrets test\n"
                      f'db_password = "{planted["diff_password"]}"\n'
                      f"API_KEY = '{planted['diff_api_key']}'\n")
    (dest / "examples" / "digits" / "settings.yaml").write_text(
        "# a user's local settings, never committed\n"
        f"client_secret: {planted['untracked_secret']}\n"
        f"access_token: \"{planted['untracked_token']}\"\n"
        "batch_size: 32\n")
    return dest


def _files_outside_secrets(workdir: Path) -> list[Path]:
    return [p for p in workdir.rglob("*")
            if p.is_file() and not p.is_symlink()
            and (workdir / "secrets") not in p.parents]


def _found(blob: bytes, planted: dict[str, str]) -> list[str]:
    return [k for k, v in planted.items() if v.encode() in blob]


def _lab_processes(workdir: Path) -> list[psutil.Process]:
    state = json.loads((workdir / "lab" / "local.json").read_text())
    procs = []
    for record in (state.get("services") or {}).values():
        pid = (record or {}).get("pid")
        if pid and psutil.pid_exists(pid):
            p = psutil.Process(pid)
            procs.append(p)
            procs.extend(p.children(recursive=True))
    return procs


def test_planted_secrets_appear_nowhere_outside_the_secrets_store(tmp_path):
    planted = _planted()
    copy = _checkout_copy(tmp_path / "checkout", planted)
    wd = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(copy / "lib"), GITHUB_TOKEN=planted["env_token"],
               MY_SERVICE_PASSWORD=planted["env_password"],
               ACME_API_KEY=planted["env_api_key"])
    cli = [sys.executable, "-m", "replab.cli"]
    bundle = tmp_path / "run.bundle"
    try:
        demo = subprocess.run([*cli, "demo", "--workdir", str(wd)], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        # the lab's tracking server from the work directory (no MLFLOW_TRACKING_URI set)
        run_id = next(ln.split()[1].rstrip(":") for ln in demo.stdout.splitlines()
                      if ln.startswith("run ") and "http" in ln)
        export = subprocess.run([*cli, "bundle", "export", run_id, "-o", str(bundle),
                                 "--workdir", str(wd)], cwd=copy, env=env,
                                capture_output=True, text=True, timeout=300)
        assert export.returncode == 0, export.stdout + export.stderr
        assert bundle.is_file()

        leaks: dict[str, list[str]] = {}
        console = (demo.stdout + demo.stderr + export.stdout + export.stderr).encode()
        if found := _found(console, planted):
            leaks["console"] = found
        outputs = [*_files_outside_secrets(wd), bundle]
        assert any(p.suffix == ".ipynb" for p in outputs)  # the scan did see the outputs
        assert any(p.name.endswith((".db", ".sqlite")) for p in outputs) or any(
            "mlflow" in str(p) for p in outputs)
        for path in outputs:
            if found := _found(path.read_bytes(), planted):
                leaks[str(path.relative_to(tmp_path))] = found
        services = _lab_processes(wd)
        assert services, "the demo keeps its lab running: no lab process was found"
        for proc in services:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
            if found := _found(environ, planted):
                leaks[f"/proc/{proc.pid}/environ ({' '.join(proc.cmdline()[:3])})"] = found
        assert not leaks, f"planted secrets found outside secrets/: {leaks}"
        # the secrets store itself is where the lab's own secrets live, and it is private
        assert (wd / "secrets").stat().st_mode & 0o077 == 0
    finally:
        subprocess.run([*cli, "lab", "stop", "--workdir", str(wd)], env=env,
                       capture_output=True, timeout=120)
        shutil.rmtree(copy, ignore_errors=True)
