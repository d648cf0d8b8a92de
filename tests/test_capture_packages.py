"""The packages capture: every distribution, an exact lock, sources of non-index installs."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

from replab.capture import collect
from replab.capture.packages import (
    conda_packages,
    installed,
    lock_hash,
    lock_text,
    normalize,
    requirement,
)
from replab.capture.python import conda_env
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def packages() -> dict:
    manifest = collect(["packages"])
    assert not manifest["errors"], manifest["errors"]
    return manifest["captures"]["packages"]


def test_lock_pins_the_venv_exactly(packages):
    lines = packages["lock"].splitlines()
    for name in ("pytest", "hypothesis", "papermill", "PyYAML", "nbformat"):
        assert f"{md.metadata(name)['Name']}=={md.version(name)}" in lines, name
    assert packages["versions"]["pytest"] == md.version("pytest")
    for line in lines:
        assert "==" in line or " @ " in line, line


def test_lock_matches_pip_freeze(packages):
    """Every exact pin pip freeze reports is in the lock, with the same version."""
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True,
                            text=True, check=True).stdout
    ours = {normalize(n): v for n, v in packages["versions"].items()}
    pins = [line.split("==") for line in freeze.splitlines()
            if "==" in line and not line.startswith("#")]
    assert pins
    for name, version in pins:
        assert ours.get(normalize(name)) == version, name


def test_editable_install_records_its_source(packages):
    url = ROOT.as_uri()
    assert f"-e {url}  # replab==0.1.0" in packages["lock"].splitlines()
    assert packages["editable"] == ["replab"] or "replab" in packages["editable"]
    assert packages["sources"]["replab"] == {"dir_info": {"editable": True}, "url": url}


def test_lock_is_sorted_and_deterministic(packages):
    again = collect(["packages"])["captures"]["packages"]
    assert again["lock"] == packages["lock"] and again["lock_hash"] == packages["lock_hash"]
    keys = [normalize(line.split("  # ")[-1].split("==")[0] if line.startswith("-e ")
                      else line.split("==")[0].split(" @ ")[0])  # -e url  # name==version
            for line in packages["lock"].splitlines()]
    assert keys == sorted(keys) and len(keys) == packages["count"] == len(set(keys))


def test_lock_hash_ignores_order_comments_and_blank_lines():
    assert lock_hash("a==1\nb==2\n") == lock_hash("# header\nb==2  # why\n\na==1")
    assert lock_hash("a==1\n") != lock_hash("a==2\n")


def test_lock_hash_is_the_same_for_the_old_and_new_editable_line():
    """Runs recorded with ``-e name @ url`` keep their hash now that the lock says ``-e url``."""
    old = "a==1\n-e pkg @ file:///src/pkg  # pkg==0.2\n"
    new = "a==1\n-e file:///src/pkg  # pkg==0.2\n"
    assert lock_hash(old) == lock_hash(new)
    assert lock_hash(new) != lock_hash("a==1\n-e file:///src/other  # pkg==0.2\n")


@pytest.mark.parametrize("direct_url, line", [
    (None, "torch==2.4.0"),
    ({"url": "file:///src/torch", "dir_info": {"editable": True}}, "-e file:///src/torch"),
    ({"url": "file:///src/torch", "dir_info": {}}, "torch @ file:///src/torch"),
    ({"url": "https://github.com/pytorch/pytorch.git",
      "vcs_info": {"vcs": "git", "commit_id": "abc123", "requested_revision": "main"}},
     "torch @ git+https://github.com/pytorch/pytorch.git@abc123"),
    ({"url": "https://github.com/x/mono.git", "subdirectory": "pkg",
      "vcs_info": {"vcs": "git", "commit_id": "abc"}},
     "torch @ git+https://github.com/x/mono.git@abc#subdirectory=pkg"),
    ({"url": "https://files.example/torch-2.4.0.whl",
      "archive_info": {"hashes": {"sha256": "ff00"}}},
     "torch @ https://files.example/torch-2.4.0.whl#sha256=ff00"),
    ({"url": "file:///tmp/torch.whl", "archive_info": {"hash": "sha256=ee11"}},
     "torch @ file:///tmp/torch.whl#sha256=ee11"),
])
def test_requirement_lines(direct_url, line):
    assert requirement("torch", "2.4.0", direct_url) == line


def fake_dist(site: Path, dirname: str, name: str, version: str,
              direct_url: dict | None = None) -> None:
    info = site / dirname
    info.mkdir(parents=True)
    meta = "PKG-INFO" if dirname.endswith(".egg-info") else "METADATA"
    (info / meta).write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                             f"Summary: a test\n\nName: not-this\nVersion: 0\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


def test_installed_from_fabricated_site_dirs(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    fake_dist(first, "Foo_Bar-1.0.dist-info", "Foo_Bar", "1.0")
    fake_dist(first, "mypkg.egg-info", "mypkg", "0.3")  # sources next to an editable install
    fake_dist(second, "mypkg-0.3.dist-info", "mypkg", "0.3",
              {"url": "file:///src/mypkg", "dir_info": {"editable": True}})
    fake_dist(second, "foo_bar-9.0.dist-info", "foo-bar", "9.0")  # shadowed by first
    fake_dist(second, "vcspkg-2.0.dist-info", "vcspkg", "2.0",
              {"url": "https://user:ghp_TOKEN123456789012345678@github.com/x/v.git",
               "vcs_info": {"vcs": "git", "commit_id": "deadbeef"}})
    (second / "broken-1.0.dist-info").mkdir()
    dists = installed([str(first), str(second)])
    assert [d["name"] for d in dists] == ["Foo_Bar", "mypkg", "vcspkg"]
    assert dists[0]["version"] == "1.0"
    lock = lock_text(dists)
    assert lock.splitlines() == [
        "Foo_Bar==1.0",
        "-e file:///src/mypkg  # mypkg==0.3",
        "vcspkg @ git+https://github.com/x/v.git@deadbeef  # vcspkg==2.0",
    ]
    assert "TOKEN" not in lock


def test_conda_prefix(tmp_path, monkeypatch):
    prefix = tmp_path / "envs" / "exp"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "conda-meta" / "numpy-1.26.4-py311h64a7726_0.json").write_text("{}")
    (prefix / "conda-meta" / "python-3.11.9-hb806964_0_cpython.json").write_text("{}")
    (prefix / "conda-meta" / "history").write_text("")
    assert conda_packages(str(prefix)) == ["numpy=1.26.4=py311h64a7726_0",
                                           "python=3.11.9=hb806964_0_cpython"]
    monkeypatch.setenv("CONDA_PREFIX", str(prefix))
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "exp")
    assert conda_env() == {"name": "exp", "prefix": str(prefix), "active": True}
    monkeypatch.delenv("CONDA_PREFIX")
    if not (Path(sys.prefix) / "conda-meta").exists():
        assert conda_env() is None
