"""The local lab's services get an explicit environment and keep their files private: a
secret planted in the launcher's environment must not reach any service's (or kernel's)
/proc/<pid>/environ; tokens reach Jupyter only when enabled; the lab's files are closed to
other users; JupyterLab opens at the notebooks, and the login URL is built on demand."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from replab import config, credentials, lab, secretsstore
from replab.lab import environment, local
from tests.lab_support import lab_workdir, need_postgres, token

pytestmark = pytest.mark.services

PLANTED = {
    "REPLAB_TEST_PLANTED_SECRET": "planted-shell-secret-4be1c9",
    "AWS_SECRET_ACCESS_KEY": "planted-personal-aws-secret-77d0",
    "GITHUB_TOKEN": "ghp_plantedShellGitHubToken0000",
    "MLFLOW_TRACKING_PASSWORD": "planted-tracking-password-1a2b",
    "PGPASSWORD": "planted-pg-password-9c9c",
}
HF = "hf_plantedLabEnvHuggingFace1234"
GH = "ghp_plantedLabEnvGitHubToken5678"

LAUNCH = """
import sys
from replab import config
from replab.lab import local
local.launch(config.load(sys.argv[1]))
"""


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(x.split("=", 1) for x in raw.decode(errors="replace").split("\0") if "=" in x)


def lab_config(workdir: Path, backend: str, **lab_options):
    """A site=local config with its secrets, as 1_create_credentials leaves them, plus a
    Hugging Face and a GitHub token in lab.env."""
    raw = {"experiment": f"env{uuid.uuid4().hex[:6]}", "frameworks": ["sklearn"],
           "site": "local", "workdir": str(workdir),
           "lab": {"mlflow_backend": backend, **lab_options}}
    cfg = config.build(raw)
    config.save(cfg)
    credentials.setup(cfg)
    store = secretsstore.SecretsStore(cfg.workdir)
    store.write(store.LAB_ENV, store.read(store.LAB_ENV) + f"HF_TOKEN={HF}\nGH_TOKEN={GH}\n")
    return cfg


def get(url: str, headers: dict | None = None):
    import requests

    return requests.get(url, headers=headers or {}, allow_redirects=False, timeout=10,
                        proxies={"http": "", "https": ""})


@pytest.fixture(scope="module")
def pg_lab(python):
    """A PostgreSQL lab (every service) launched from a shell environment full of secrets,
    Hugging Face on and GitHub off, with a kernel running."""
    import requests

    need_postgres()
    with lab_workdir("env") as workdir:
        cfg = lab_config(workdir, "postgresql", huggingface=True, github_cli=False)
        proc = subprocess.run([python, "-c", LAUNCH, str(workdir)], capture_output=True,
                              text=True, timeout=600, env={**os.environ, **PLANTED})
        try:
            assert proc.returncode == 0, proc.stderr[-3000:]
            st = local.status(cfg)
            url = st["services"]["jupyter"]["url"]
            r = requests.post(f"{url}/api/kernels", json={"name": "python3"},
                              headers={"Authorization": f"token {token(cfg)}"}, timeout=30,
                              proxies={"http": "", "https": ""})
            assert r.status_code == 201, r.text
            jupyter = psutil.Process(st["services"]["jupyter"]["pid"])
            deadline = time.monotonic() + 60
            kernels: list = []
            while not kernels and time.monotonic() < deadline:
                kernels = [k for k in jupyter.children() if "ipykernel" in " ".join(
                    k.cmdline())]
                time.sleep(0.2)
            assert kernels, "no kernel process under Jupyter"
            yield cfg, st, kernels[0]
        finally:
            local.stop(cfg)


def family(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def test_no_planted_secret_reaches_any_service_or_kernel(pg_lab):
    cfg, st, kernel = pg_lab
    pids = {name: s["pid"] for name, s in st["services"].items()}
    assert set(pids) == {"postgres", "mlflow", "jupyter"}
    seen = 0
    for name, pid in pids.items():
        for proc in family(pid):
            try:
                env = environ(proc.pid)
            except FileNotFoundError:  # a short-lived child, gone meanwhile
                continue
            seen += 1
            leaked = [k for k, v in env.items() if any(s in v for s in PLANTED.values())]
            assert not leaked, f"{name} pid {proc.pid} holds {leaked}"
            assert "REPLAB_TEST_PLANTED_SECRET" not in env
            if proc.pid == pid or name != "postgres":  # PostgreSQL's children reuse the
                # environment's memory for their process titles
                assert env.get("REPLAB_LAB_DIR") == str(local.paths(cfg).root), (
                    name, proc.pid, proc.cmdline())
    assert seen >= 4
    mlflow, jupyter, pg = (environ(pids[n]) for n in ("mlflow", "jupyter", "postgres"))
    # each service holds only its own secrets
    assert jupyter["JUPYTER_TOKEN"] == token(cfg) and jupyter["HF_TOKEN"] == HF
    assert "GH_TOKEN" not in jupyter and "GITHUB_TOKEN" not in jupyter  # github_cli off
    assert not {"AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "MLFLOW_TRACKING_PASSWORD"} & set(
        jupyter)
    assert mlflow["PGPASSWORD"] == local.database(cfg).password  # its database's password
    assert not {"JUPYTER_TOKEN", "HF_TOKEN", "GH_TOKEN", "MLFLOW_TRACKING_PASSWORD"} & set(
        mlflow)
    assert not {"JUPYTER_TOKEN", "HF_TOKEN", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY"} & set(pg)
    # a kernel inherits Jupyter's environment: the same allow-list
    kenv = environ(kernel.pid)
    assert kenv["MLFLOW_TRACKING_URI"] == st["services"]["mlflow"]["url"]
    assert kenv["HF_TOKEN"] == HF and "GH_TOKEN" not in kenv
    assert not any(s in v for v in kenv.values() for s in PLANTED.values())


def test_lab_files_are_closed_to_other_users(pg_lab):
    cfg, *_ = pg_lab
    p = local.paths(cfg)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(p.root) == 0o711  # traversable for PostgreSQL's own user, not listable
    assert mode(p.logs) == 0o700
    logs = list(p.logs.glob("*.log"))
    assert {x.name for x in logs} >= {"postgres.log", "mlflow.log", "jupyter.log"}
    assert all(mode(x) == 0o600 for x in logs), {x.name: oct(mode(x)) for x in logs}
    assert mode(p.state) == 0o600 and mode(p.lab_file) == 0o600
    assert mode(p.postgres) == 0o700
    artifacts = cfg.workdir_path / "buckets" / cfg.buckets.artifacts
    assert mode(artifacts) == 0o700
    runtime = list(p.jupyter_runtime.iterdir())
    assert mode(p.jupyter_runtime) & 0o777 == 0o700  # Jupyter adds the sticky bit
    assert any(x.name.startswith("kernel-") for x in runtime), runtime  # the kernel's file
    assert all(mode(x) == 0o600 for x in runtime if x.is_file()), {
        x.name: oct(mode(x)) for x in runtime}
    # the redirect page holds the token in its URL: 0600 too (checked above)
    assert any(x.name.endswith("-open.html") for x in runtime)


def test_jupyter_opens_at_the_notebooks_and_the_login_url_is_built_on_demand(pg_lab):
    cfg, st, _ = pg_lab
    url = st["services"]["jupyter"]["url"]
    t = token(cfg)
    listing = get(f"{url}/api/contents", {"Authorization": f"token {t}"}).json()
    names = {item["name"] for item in listing["content"]}
    assert {"0_configure.ipynb", "3_launch_lab.ipynb"} <= names
    doc = json.loads((cfg.workdir_path / "lab.json").read_text())
    assert doc["jupyter_root"] == str(local.ARTIFACT_ROOT)
    assert t not in (cfg.workdir_path / "lab.json").read_text()
    u = lab.urls(cfg.workdir)
    assert u["jupyter_login_url"] == f"{url}/lab?token={t}"
    assert get(u["jupyter_login_url"]).status_code == 200
    token_file = Path(u["token_file"])
    assert token_file.is_absolute() and f"JUPYTER_TOKEN={t}" in token_file.read_text()
    line = lab.describe(cfg.workdir)
    assert u["jupyter_login_url"] in line and str(token_file) in line
    assert st["services"]["mlflow"]["url"] in line


# -- the allow-list itself (no lab needed) ----------------------------------------------------
def test_service_env_passes_only_the_allow_list():
    parent = {**PLANTED, "PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8",
              "LC_ALL": "C.UTF-8", "TZ": "UTC", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
              "JUPYTER_CONFIG_DIR": "/cfg", "CUDA_VISIBLE_DEVICES": "0",
              "JUPYTER_TOKEN": "planted-parent-jupyter-token", "NO_PROXY": "corp.example"}
    pg = environment.service_env("postgres", parent, "/w/lab")
    assert set(pg) == {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "NO_PROXY", "no_proxy",
                       "REPLAB_LAB_DIR", "REPLAB_LAB_SERVICE"}
    assert pg["NO_PROXY"] == "127.0.0.1,localhost,corp.example"
    ml = environment.service_env("mlflow", parent, "/w/lab", {"PGPASSWORD": "own"})
    assert ml["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60" and ml["PGPASSWORD"] == "own"
    assert "JUPYTER_CONFIG_DIR" not in ml and "MLFLOW_TRACKING_PASSWORD" not in ml
    ju = environment.service_env("jupyter", parent, "/w/lab")
    assert ju["JUPYTER_CONFIG_DIR"] == "/cfg" and ju["CUDA_VISIBLE_DEVICES"] == "0"
    assert "JUPYTER_TOKEN" not in ju  # only replab's own, from the secrets
    for env in (pg, ml, ju):
        assert not any(v in env.values() for v in PLANTED.values())


def test_github_and_hugging_face_tokens_only_when_enabled():
    lab_env = {"JUPYTER_TOKEN": "t", "HF_TOKEN": HF, "GITHUB_TOKEN": GH,
               "AWS_SECRET_ACCESS_KEY": "s", "MLFLOW_TRACKING_PASSWORD": "p"}
    assert environment.jupyter_secrets(lab_env, huggingface=False, github_cli=False) == {
        "JUPYTER_TOKEN": "t"}
    assert environment.jupyter_secrets(lab_env, huggingface=True, github_cli=True) == {
        "JUPYTER_TOKEN": "t", "HF_TOKEN": HF, "GH_TOKEN": GH}
    both = {**lab_env, "GH_TOKEN": "ghp_preferred"}
    assert environment.jupyter_secrets(both, huggingface=False, github_cli=True)[
        "GH_TOKEN"] == "ghp_preferred"


def test_urls_without_a_launched_lab_say_so(tmp_path):
    from replab.errors import ConfigError

    with pytest.raises(ConfigError, match="lab.json does not exist: launch the lab first"):
        lab.urls(tmp_path)
