"""The env capture, and planted secrets appearing nowhere in a whole manifest."""

from __future__ import annotations

import subprocess
import sys

from replab.capture import collect, manifest_json
from replab.capture.envvars import allowed, select_env
from tests.capture_support import git, make_repo

SECRETS = {
    "hf": "hf_" + "Q7x" * 12,
    "password": "correct-horse-battery-staple",
    "url": "s3cr3tUrlPassw0rd",
    "blob": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "git": "ghp_" + "R2d2C3po" * 5,
    "aws": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "argv": "argv-secret-0123456789",
    "seed": "seed-secret-0123456789",
}


def plant(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRETS["hf"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRETS["password"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://bob:{SECRETS['url']}@mlflow.example/")
    monkeypatch.setenv("NCCL_DEBUG", f"INFO token={SECRETS['blob']}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["aws"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")


def test_allowlist():
    assert allowed("CUDA_VISIBLE_DEVICES") and allowed("OMP_NUM_THREADS")
    assert allowed("PATH") and allowed("LD_LIBRARY_PATH") and allowed("PYTHONHASHSEED")
    assert allowed("NCCL_IB_HCA") and allowed("HF_HOME") and allowed("MLFLOW_TRACKING_URI")
    assert not allowed("HOME") and not allowed("AWS_SECRET_ACCESS_KEY") and not allowed("USER")
    assert allowed("MY_FLAG", ["MY_FLAG"]) and allowed("MYAPP_X", ["MYAPP_*"])
    assert not allowed("MYAPP", ["MYAPP_*"])


def test_select_env_is_sorted_and_redacted():
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "HF_TOKEN": "hf_" + "a" * 30, "USER": "me",
           "CUDA_HOME": "/usr/local/cuda"}
    out = select_env(env)
    assert list(out) == ["CUDA_HOME", "HF_TOKEN", "TF_CPP_MIN_LOG_LEVEL"]
    assert out["HF_TOKEN"] == "hf_a…" and out["CUDA_HOME"] == "/usr/local/cuda"


def test_env_capture(monkeypatch):
    plant(monkeypatch)
    monkeypatch.setenv("REPLAB_EXTRA", "yes")
    env = collect(["env"], env_allow=["REPLAB_EXTRA"])["captures"]["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["OMP_NUM_THREADS"] == "4"
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example/"
    assert env["HF_TOKEN"].endswith("…") and env["MLFLOW_TRACKING_PASSWORD"].endswith("…")
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["REPLAB_EXTRA"] == "yes"


def test_no_secret_anywhere_in_the_manifest(monkeypatch, tmp_path):
    plant(monkeypatch)
    repo = make_repo(tmp_path / "r")
    git(repo, "remote", "add", "origin", f"https://x-access-token:{SECRETS['git']}@github.com/a/b")
    manifest = collect(repo=str(repo), seeds={"api_key": SECRETS["seed"], "torch": 1},
                       command=["python", "train.py", "--token", SECRETS["argv"]],
                       inputs=[f"https://u:{SECRETS['url']}@data.example/set.tar"])
    assert not manifest["errors"], manifest["errors"]
    text = manifest_json(manifest)
    for label, secret in SECRETS.items():
        assert secret not in text, label
    assert manifest["captures"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_secrets_in_a_subprocess_manifest(tmp_path):
    """The same through `python -m replab.capture`, with the secrets in the child's env."""
    env = {"PATH": "/usr/bin:/bin", "HF_TOKEN": SECRETS["hf"],
           "MLFLOW_TRACKING_URI": f"https://bob:{SECRETS['url']}@mlflow.example/"}
    out = subprocess.run([sys.executable, "-m", "replab.capture", "--only", "env,entrypoint"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert SECRETS["hf"] not in out and SECRETS["url"] not in out
    assert "mlflow.example" in out
