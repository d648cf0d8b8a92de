"""A run made with replab installed editable (``pip install -e .``, as ``make install`` does),
replayed with ``rebuild_env=True``: the whole recorded lock is rebuilt into a fresh venv under
replab's cache, replab comes back editable from this checkout, the program is re-executed
with that venv's Python and judged REPRODUCED, and a second replay reuses the environment.

Before locks wrote editable installs as ``-e file:///path  # name==version`` every such
rebuild failed ("not a valid editable requirement"). The build installs the checkout's whole
environment (about 240 wheels, from pip's caches and the machine's wheel indexes): about two
minutes on a 2-core machine, so it is done once for the module, in a cache of its own (a
cache shared between runs would make the first replay a reuse, and test nothing of the
build), and removed at the end (it is over a gigabyte).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replab import replay, verdict
from replab.replayenv import lock_mismatches
from tests.conftest import ROOT
from tests.gitrepo import make_repo, train_example

pytestmark = pytest.mark.slow

EX = ROOT / "examples" / "digits"


def _python_says(python: str, code: str, cwd: Path) -> str:
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.fixture(scope="module")
def replays(mlflow_server, tmp_path_factory):
    """The digits example tracked with this checkout's venv, then replayed twice with
    ``rebuild_env=True`` and REPLAB_CACHE pointing at a cache of the module's own."""
    import mlflow

    base = tmp_path_factory.mktemp("editable-replay")
    cache = base / "cache"
    repo = make_repo(base / "digits", {p.name: p.read_text() for p in EX.glob("*.py")})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        mp.setenv("REPLAB_CACHE", str(cache))
        mlflow.set_tracking_uri(mlflow_server.url)
        original = train_example(repo, mlflow_server.url, "--seed", "3", "--epochs", "2")
        first: list[str] = []
        built = replay.replay_run(original, repo=repo, workdir=base / "wd1",
                                  rebuild_env=True, progress=first.append)
        second: list[str] = []
        again = replay.replay_run(original, repo=repo, workdir=base / "wd2",
                                  rebuild_env=True, progress=second.append)
        yield {"original": original, "cache": cache, "repo": repo, "source": built.source,
               "tracking_uri": mlflow_server.url,
               "built": built, "first": first, "again": again, "second": second}
    shutil.rmtree(cache / "envs", ignore_errors=True)


def test_the_run_records_replab_as_an_editable_install_of_this_checkout(replays):
    packages = replays["source"].captures["packages"]
    assert "replab" in packages["editable"]
    version = packages["versions"]["replab"]
    assert f"-e {ROOT.as_uri()}  # replab=={version}" in replays["source"].lock.splitlines()
    assert len(replays["source"].lock.splitlines()) > 50  # the whole environment, not a stub


def test_the_replay_runs_with_a_venv_rebuilt_under_the_cache(replays):
    result, cache = replays["built"], replays["cache"]
    assert result.python != sys.executable
    assert Path(result.python).is_relative_to(cache / "envs") and Path(result.python).exists()
    assert result.execution.command[0] == result.python
    assert any("building an environment from the lock" in ln for ln in replays["first"])
    assert any(ln.startswith("environment ready: ") for ln in replays["first"])
    assert not [m for m in result.mismatches if "not installed" in m], result.mismatches
    assert lock_mismatches(replays["source"].lock, result.python) == []  # every pin, as locked


def test_replab_in_the_rebuilt_venv_is_this_checkout_installed_editable(replays):
    python, elsewhere = replays["built"].python, replays["cache"]
    where = _python_says(python, "import replab; print(replab.__file__)", cwd=elsewhere)
    assert Path(where).resolve() == (ROOT / "lib" / "replab" / "__init__.py").resolve()
    url = _python_says(python, "import importlib.metadata as m, json; print(json.loads("
                       "m.distribution('replab').read_text('direct_url.json'))['url'])",
                       cwd=elsewhere)
    assert url == ROOT.as_uri()
    # from the recorded line itself (its path exists here), not the fallback for a gone path
    assert not any("installed from the running replab's source" in ln for ln in replays["first"])


def test_the_replay_in_the_rebuilt_venv_is_reproduced(replays):
    result = replays["built"]
    assert result.verdict.verdict == verdict.Outcome.REPRODUCED, verdict.explain(result.verdict)
    assert any("verdict: REPRODUCED" in ln for ln in replays["first"])
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(replays["tracking_uri"]).get_run(result.execution.new_run_id).data.tags
    assert tags[verdict.TAG_VERDICT] == "REPRODUCED"


def test_a_second_replay_reuses_the_cached_environment(replays):
    again, lines = replays["again"], replays["second"]
    assert again.python == replays["built"].python
    assert any("reused" in ln for ln in lines), lines
    assert not any("building an environment" in ln for ln in lines)
    assert not any(ln.startswith("pip: ") for ln in lines)
    assert again.verdict.verdict == verdict.Outcome.REPRODUCED, verdict.explain(again.verdict)
    assert again.execution.new_run_id != replays["built"].execution.new_run_id
