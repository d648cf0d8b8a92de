"""replab.envdiff on real captures: a replay measures the program, not replab. Manifests come
from ``python -m replab.capture`` run in a subprocess, once from this interpreter as the
original and once from a venv built like a replay's (under a cache directory outside any
temporary directory, as replab's own cache is), with the variables replab sets."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from replab.envdiff import REPLAB_ENV, env_diff, hazards, matches, rank
from replab.runner import CHILD_DIR
from tests.gitrepo import make_repo, train_example

PROGRAM = {"train.py": "print('training')\n"}


def _clean_environ() -> dict[str, str]:
    """This process's environment without replab's or MLflow's variables (the tests set
    those), as the base of both captures."""
    return {k: v for k, v in os.environ.items()
            if not matches(REPLAB_ENV, k) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}


def capture(python: str | Path, repo: Path, env: dict[str, str]) -> dict:
    """The manifest ``python -m replab.capture`` prints in ``repo`` with ``env``."""
    out = subprocess.run([str(python), "-m", "replab.capture", "--repo", str(repo)], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def replay_venv():
    """A venv made like replab's replay environments (``python -m venv`` under
    ``<cache>/envs/<digest>``), seeing the same packages as this interpreter. The cache is
    under ~/.cache, as replab's is: paths under /tmp would be masked as ``<tmp>`` anyway."""
    cache = Path.home() / ".cache" / f"replab-test-envdiff-{uuid.uuid4().hex[:8]}"
    venv = cache / "envs" / uuid.uuid4().hex[:16]
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                       capture_output=True, timeout=120)
        python = venv / "bin" / "python"
        site = subprocess.run([str(python), "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"], check=True,
                              capture_output=True, text=True).stdout.strip()
        here = sysconfig.get_paths()["purelib"]  # this interpreter's packages, .pth files too
        Path(site, "_same_packages.pth").write_text(f"import site; site.addsitedir({here!r})\n")
        yield cache, venv, python
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _pair(replay_venv, tmp_path, original_extra=None, replay_extra=None):
    cache, venv, python = replay_venv
    repo = make_repo(tmp_path / "proj", PROGRAM)
    base = _clean_environ()
    path = base.get("PATH", "/usr/bin")
    # the original ran under `replab run` in an activated venv...
    original = {**base, "VIRTUAL_ENV": sys.prefix, "PATH": f"{sys.prefix}/bin:{path}",
                "PYTHONPATH": str(CHILD_DIR), "REPLAB_PARENT_RUN_ID": "a" * 32,
                "REPLAB_AUTOLOG": "1", "REPLAB_LOG_MODELS": "0", "REPLAB_SEED": "1",
                "MLFLOW_EXPERIMENT_ID": "3", "MLFLOW_TRACKING_URI": "http://lab:5000",
                **(original_extra or {})}
    # ...the replay in replab's venv, with what replay.execute sets
    replay = {**base, "VIRTUAL_ENV": str(venv), "PATH": f"{venv}/bin:{path}",
              "REPLAB_REPLAY_OF": "a" * 32, "REPLAB_REPLAY_EXPERIMENT": "exp",
              "REPLAB_CACHE": str(cache), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5001",
              "MLFLOW_EXPERIMENT_NAME": "exp", "MLFLOW_RUN_ID": "b" * 32,
              **(replay_extra or {})}
    return capture(sys.executable, repo, original), capture(python, repo, replay)


def test_a_faithful_replay_in_a_replay_venv_shows_no_difference(replay_venv, tmp_path):
    a, b = _pair(replay_venv, tmp_path)
    pa, pb = a["captures"]["python"], b["captures"]["python"]
    # the interpreters really are in different places, and replab's variables were captured
    assert pa["executable"] != pb["executable"] and pa["prefix"] != pb["prefix"]
    assert pa["version"] == pb["version"]
    env_a, env_b = a["captures"]["env"], b["captures"]["env"]
    assert env_a["VIRTUAL_ENV"] != env_b["VIRTUAL_ENV"] and env_a["PATH"] != env_b["PATH"]
    assert env_b["REPLAB_REPLAY_OF"] == "a" * 32 and str(CHILD_DIR) in env_a["PYTHONPATH"]
    assert env_diff(a, b) == [] and env_diff(b, a) == []
    # what is left is about the program: not seeded, hash seeding off (no PYTHONHASHSEED)
    ranked = rank([*hazards(a, b), *env_diff(a, b)])
    assert [(d.kind, d.layer, d.key) for d in ranked] == [
        ("hazard", "determinism", "seeds"), ("hazard", "determinism", "hash_randomization")]


def test_a_users_variables_and_path_entries_still_differ(replay_venv, tmp_path):
    base_path = _clean_environ().get("PATH", "/usr/bin")
    metrics = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"  # a user's MLflow setting, not replab's
    a, b = _pair(replay_venv, tmp_path, {"OMP_NUM_THREADS": "1", metrics: "true"},
                 {"OMP_NUM_THREADS": "8",
                  "PATH": f"{replay_venv[1]}/bin:/opt/cuda-12/bin:{base_path}"})
    got = {(d.layer, d.key): (d.a, d.b, d.weight) for d in env_diff(a, b)}
    assert set(got) == {("env", "OMP_NUM_THREADS"), ("env", "PATH"), ("env", metrics)}
    assert got[("env", "OMP_NUM_THREADS")] == ("1", "8", 50)
    assert got[("env", metrics)][:2] == ("true", None)
    # the difference shows the values as captured, venv paths included
    assert "/opt/cuda-12/bin" in got[("env", "PATH")][1]
    assert str(replay_venv[1]) in got[("env", "PATH")][1]


def test_another_python_version_is_a_difference_and_so_are_its_paths(replay_venv, tmp_path):
    a, b = _pair(replay_venv, tmp_path)
    b = copy.deepcopy(b)
    major, minor, micro = b["captures"]["python"]["version_info"]
    b["captures"]["python"]["version"] = f"{major}.{minor + 1}.0"
    keys = {(d.layer, d.key) for d in env_diff(a, b)}
    assert {("python", "version"), ("env", "PATH"), ("env", "VIRTUAL_ENV")} <= keys
    assert not any(matches(REPLAB_ENV, key) for layer, key in keys if layer == "env")


def _other_cpython() -> str | None:
    """A working CPython (3.10 or later) of another minor version than this one, if any."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for version in ("3.13", "3.12", "3.11", "3.10"):
        if version == here:
            continue
        candidates = [shutil.which(f"python{version}"),
                      *map(str, sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/"
                                                        "python3")))]
        for found in filter(None, candidates):
            try:  # a pyenv shim is found by which but may refuse to run
                ok = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"],
                                    capture_output=True, text=True, timeout=30)
            except OSError:
                continue
            if ok.returncode == 0:
                return found
    return None


OTHER_PYTHON = _other_cpython()


@pytest.mark.skipif(OTHER_PYTHON is None, reason="no other CPython version (3.10+) installed")
def test_a_real_other_interpreter_is_a_difference(tmp_path):
    other = OTHER_PYTHON
    repo = make_repo(tmp_path / "proj", PROGRAM)
    lib = str(Path(__file__).resolve().parents[1] / "lib")
    env = {**_clean_environ(), "PYTHONPATH": lib}  # capture imports only the stdlib
    a = capture(sys.executable, repo, env)
    b = capture(other, repo, env)
    versions = [d for d in env_diff(a, b) if (d.layer, d.key) == ("python", "version")]
    assert versions and versions[0].weight == 70


def test_a_faithful_replay_of_a_clean_committed_run_lists_only_hazards(tracking_uri,
                                                                         tmp_path):
    """End to end: the digits example, committed and seeded, replayed by replab."""
    from replab import replay

    src = Path(__file__).resolve().parents[1] / "examples" / "digits"
    repo = make_repo(tmp_path / "digits", {p.name: p.read_text() for p in src.glob("*.py")})
    original = train_example(repo, tracking_uri, "--seed", "3", "--epochs", "2")
    result = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd")
    ranked = result.verdict.differences
    assert [d for d in ranked if d.kind != "hazard"] == [], [
        (d.layer, d.key, d.a, d.b) for d in ranked]
    assert not [d for d in ranked if d.layer == "params"]  # the example seeds its estimator


def test_a_fresh_detached_clone_of_the_same_commit_is_the_same_code(tmp_path):
    from tests.gitrepo import git

    repo = make_repo(tmp_path / "proj", PROGRAM, remote="https://example.org/u/proj.git")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "checkout", "-q", "--detach", "HEAD")
    env = _clean_environ()
    a, b = capture(sys.executable, repo, env), capture(sys.executable, clone, env)
    ga, gb = a["captures"]["git"], b["captures"]["git"]
    assert ga["commit"] == gb["commit"] and (ga["branch"], gb["detached"]) == ("main", True)
    assert ga["remote_url"] != gb["remote_url"]
    assert [d for d in env_diff(a, b) if d.layer == "code"] == []
    # another commit: then the branch and the checkout tell where it came from
    (clone / "train.py").write_text("print('changed')\n")
    git(clone, "-c", "user.email=t@example.org", "-c", "user.name=T", "commit", "-qam", "x")
    keys = {d.key for d in env_diff(a, capture(sys.executable, clone, env))
            if d.layer == "code"}
    assert {"commit", "branch", "detached", "remote_url"} <= keys
