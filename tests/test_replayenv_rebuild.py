"""Rebuilding a run's environment from its pip lock, with real pip and real venvs: an editable
install comes back editable, a path that is gone is reported with its reason, replab comes
from the running source, a second replay reuses the cached environment, and a machine-wide
pip constraint does not get in the way."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from replab.capture.packages import installed, lock_hash, lock_text
from replab.errors import ReplayError
from replab.replayenv import ensure_environment, find_python, lock_mismatches
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PKG = "replabtinypkg"
QUIET_PIP = {**os.environ, "PIP_CONSTRAINT": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _tiny_package(where: Path, version: str = "0.3") -> Path:
    src = where / PKG
    (src / PKG).mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{PKG}"\nversion = "{version}"\n')
    (src / PKG / "__init__.py").write_text("ANSWER = 42\n")
    return src


def _site(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _run(python: str | Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict:
    """A run's environment: a fresh venv with a tiny package installed ``pip install -e``;
    its lock as the packages capture writes it."""
    base = tmp_path_factory.mktemp("original")
    src = _tiny_package(base)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--no-deps", "-q", "-e", str(src)], check=True, env=QUIET_PIP)
    lock = lock_text(installed([str(_site(venv))]))
    return {"src": src, "lock": lock, "cache": base / "cache"}


@pytest.fixture(scope="module")
def rebuilt(original) -> dict:
    lines: list[str] = []
    python, mismatches = ensure_environment(original["lock"], rebuild=True,
                                            cache=original["cache"], progress=lines.append)
    return {"python": python, "mismatches": mismatches, "progress": lines}


def test_the_lock_of_an_editable_install_is_a_line_pip_accepts(original):
    assert original["lock"] == f"-e {original['src'].as_uri()}  # {PKG}==0.3\n"


def test_an_editable_install_is_rebuilt_editable_from_its_path(original, rebuilt):
    python = rebuilt["python"]
    assert python != sys.executable and Path(python).exists()
    assert _run(python, f"import {PKG}; print({PKG}.ANSWER)") == "42"
    where = _run(python, f"import {PKG}; print({PKG}.__file__)")
    assert Path(where).resolve() == (original["src"] / PKG / "__init__.py").resolve()
    assert lock_mismatches(original["lock"], python) == []
    assert any("building an environment" in ln for ln in rebuilt["progress"])
    assert any(ln.startswith("pip: ") for ln in rebuilt["progress"])  # pip's own progress
    assert not any(PKG in m for m in rebuilt["mismatches"] if "not installed" in m)


def test_a_second_replay_reuses_the_cached_environment(original, rebuilt):
    again: list[str] = []
    python, _ = ensure_environment(original["lock"], rebuild=True, cache=original["cache"],
                                   progress=again.append)
    assert python == rebuilt["python"]
    assert any("reused" in ln for ln in again) and not any("building" in ln for ln in again)


def test_a_lock_with_the_old_editable_line_reads_the_same_and_reuses_the_cache(original,
                                                                               rebuilt):
    """Runs recorded before the line form changed have ``-e name @ url``: same hash, same
    versions, same cached environment."""
    old = f"-e {PKG} @ {original['src'].as_uri()}  # {PKG}==0.3\n"
    assert lock_hash(old) == lock_hash(original["lock"])
    assert lock_mismatches(old, rebuilt["python"]) == []
    again: list[str] = []
    python, _ = ensure_environment(old, rebuild=True, cache=original["cache"],
                                   progress=again.append)
    assert python == rebuilt["python"] and any("reused" in ln for ln in again)


def test_a_gone_path_is_reported_with_its_reason_and_the_rest_installs(tmp_path, monkeypatch):
    """A local install whose path is gone (not replab) is skipped and named, with why; the
    other lines install even though the machine caps them with a pip constraint."""
    cap = tmp_path / "constraints.txt"
    cap.write_text("six<1.16\n")
    monkeypatch.setenv("PIP_CONSTRAINT", str(cap))  # as a machine-wide pip.conf would
    gone = tmp_path / "gone" / "othersrc"
    lock = f"six==1.16.0\n-e {gone.as_uri()}  # otherpkg==1.2\n"
    lines: list[str] = []
    python, mismatches = ensure_environment(lock, rebuild=True, cache=tmp_path / "cache",
                                            progress=lines.append)
    assert _run(python, "import six; print(six.__version__)") == "1.16.0"
    reported = [m for m in mismatches if m.startswith("otherpkg: not installed")]
    assert len(reported) == 1, mismatches
    assert str(gone) in reported[0] and "does not exist here" in reported[0]
    assert f"-e {gone.as_uri()}" in reported[0]  # the lock line itself
    assert reported[0] in lines  # shown while building, too
    assert lock_mismatches(lock, python) == ["otherpkg: locked 1.2, missing"]
    again: list[str] = []
    assert ensure_environment(lock, rebuild=True, cache=tmp_path / "cache",
                              progress=again.append)[0] == python
    assert reported[0] in again  # a reused environment still says what it lacks


def test_lines_pip_cannot_install_are_named_one_by_one(tmp_path):
    not_a_project = tmp_path / "notaproject"
    not_a_project.mkdir()
    lock = (f"-e {not_a_project.as_uri()}  # notaproject==1.0\n"
            "no-such-package-replab-test==9.9.9\n")
    with pytest.raises(ReplayError) as err:
        ensure_environment(lock, rebuild=True, cache=tmp_path / "cache")
    text = str(err.value)
    assert "(2 problem(s))" in text and "Traceback" not in text
    assert f"  - -e {not_a_project.as_uri()}  # notaproject==1.0: " in text
    assert "does not appear to be a Python project" in text
    assert "  - no-such-package-replab-test==9.9.9: " in text
    assert "No matching distribution" in text
    assert not list((tmp_path / "cache" / "envs").iterdir())  # nothing half-built is kept
    assert list((tmp_path / "cache" / "logs").glob("*.pip.log"))  # pip's output is kept


def test_replab_whose_recorded_path_is_gone_comes_from_the_running_source(tmp_path):
    lines: list[str] = []
    lock = f"-e replab @ {(tmp_path / 'gone' / 'replab').as_uri()}  # replab==0.1.0\n"
    python, mismatches = ensure_environment(lock, rebuild=True, cache=tmp_path / "cache",
                                            progress=lines.append)
    assert any(f"installed from the running replab's source {ROOT}" in ln for ln in lines)
    where = _run(python, "import replab; print(replab.__file__)")
    assert Path(where).resolve().is_relative_to(ROOT)
    assert not [m for m in mismatches if "not installed" in m]


def test_the_recorded_python_is_used_when_on_path_else_the_difference_is_said(tmp_path,
                                                                              monkeypatch):
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert find_python(f"{here}.0") == (sys.executable, None)
    fake = tmp_path / "bin"
    fake.mkdir()
    shim = fake / "python3.99"  # on PATH, but it is not 3.99 (as a pyenv shim can be)
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    exe, note = find_python("3.99.1")
    assert exe == sys.executable
    assert note and "recorded 3.99.1" in note and "no working python3.99 on PATH" in note
    assert ensure_environment("", python_version="3.99.1")[0] == sys.executable  # no lock
    _, mismatches = ensure_environment("not-here-replab-test==1\n", rebuild=False,
                                       python_version="3.99.1")
    assert "python: recorded 3.99.1, have " + platform.python_version() in mismatches


def _other_python() -> tuple[str, str] | None:
    """An interpreter of another minor version on this machine (PATH, pyenv), if any."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dirs = os.environ["PATH"].split(os.pathsep) + sorted(
        str(p) for p in (Path.home() / ".pyenv" / "versions").glob("3.*/bin"))
    for d in dirs:
        for exe in sorted(Path(d).glob("python3.[0-9]*")):
            version = exe.name.removeprefix("python")
            if version == here or not version.replace(".", "").isdigit():
                continue
            try:
                out = _run(exe, "import sys; print('%d.%d' % sys.version_info[:2])")
            except (OSError, subprocess.CalledProcessError):
                continue
            if out == version and int(version.split(".")[1]) >= 9:
                return str(exe), version
    return None


def test_a_run_recorded_with_another_python_replays_with_it(tmp_path, monkeypatch):
    other = _other_python()
    if other is None:
        pytest.skip("no interpreter of another Python 3 minor version on this machine")
    exe, version = other
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / f"python{version}").symlink_to(exe)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert find_python(f"{version}.0") == (str(bin_dir / f"python{version}"), None)
    lines: list[str] = []
    python, mismatches = ensure_environment("six==1.16.0\n", cache=tmp_path / "cache",
                                            python_version=f"{version}.0",
                                            progress=lines.append)
    assert Path(python).parent.parent.name.endswith(f"-py{version}")
    assert _run(python, "import sys, six; print('%d.%d' % sys.version_info[:2], "
                "six.__version__)") == f"{version} 1.16.0"
    assert not [m for m in mismatches if m.startswith("python:")]


def test_two_replays_of_one_lock_at_once_build_it_once(tmp_path):
    lock = "six==1.16.0\n"
    progress: list[list[str]] = [[], []]
    results: list[str | BaseException] = [None, None]

    def replay(i: int) -> None:
        try:
            results[i] = ensure_environment(lock, rebuild=True, cache=tmp_path / "cache",
                                            progress=progress[i].append)[0]
        except BaseException as exc:  # shown by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=replay, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] and isinstance(results[0], str), results
    built = [any("building an environment" in ln for ln in p) for p in progress]
    reused = [any("reused" in ln for ln in p) for p in progress]
    assert sorted(built) == [False, True] and sorted(reused) == [False, True]
