"""replab series: the notebooks in order, headless, on site=local."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from replab import series
from replab.errors import ConfigError, NotebookFailed
from tests.conftest import ROOT
from tests.notebooks import outputs_text


def _notebook(path, *cells, params="workdir: str = 'work'"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, str(path))


@pytest.fixture
def artifact(tmp_path):
    """A copy of the artifact's 0_configure plus a notebook reading its config."""
    root = tmp_path / "artifact"
    root.mkdir()
    shutil.copy(ROOT / "0_configure.ipynb", root)
    _notebook(root / "1_check.ipynb",
              "from replab import config\ncfg = config.load(workdir)\n"
              "open(f'{workdir}/checked', 'w').write(cfg.experiment)")
    return root


PARAMS = {"experiment": "s1", "frameworks": "sklearn", "site": "local", "interactive": False}


def test_series_runs_every_notebook_in_order_with_one_params_file(artifact, tmp_path):
    wd = tmp_path / "wd"
    lines = []
    result = series.run_series(dict(PARAMS, workdir=str(wd)), root=artifact,
                               progress=lines.append, stamp="t1")
    assert [r.notebook for r in result.runs] == ["0_configure", "1_check"]
    assert (wd / "checked").read_text() == "s1"
    run_dir = wd / "runs" / "t1"
    assert sorted(p.name for p in run_dir.iterdir()) == ["0_configure.ipynb", "1_check.ipynb"]
    assert [ln for ln in lines if " ok (" in ln][0].startswith("[1/2] 0_configure ok")
    # 1_check declares only workdir: it was given nothing else
    assert result.runs[1].parameters == {"workdir": str(wd)}


def test_a_failing_notebook_stops_the_series_names_the_cell_and_keeps_the_output(
        artifact, tmp_path):
    _notebook(artifact / "2_fail.ipynb", "x = 1", "raise RuntimeError('boom: disk full')")
    _notebook(artifact / "3_after.ipynb", "open(f'{workdir}/after', 'w').write('ran')")
    wd = tmp_path / "wd"
    with pytest.raises(NotebookFailed) as err:
        series.run_series(dict(PARAMS, workdir=str(wd)), root=artifact, stamp="t2")
    exc = err.value
    # the 4th cell of the executed notebook (papermill inserts the injected parameters)
    assert exc.notebook == "2_fail" and exc.cell == 4 and "In [4]" in str(exc)
    assert "RuntimeError" in str(exc) and "boom: disk full" in str(exc)
    kept = json.loads((wd / "runs" / "t2" / "2_fail.ipynb").read_text())
    assert any(o.get("ename") == "RuntimeError" for c in kept["cells"]
               for o in c.get("outputs", []))
    assert not (wd / "after").exists()


def test_only_and_from_select_notebooks(artifact, tmp_path):
    nbs = series.find_notebooks(artifact)
    assert [p.stem for p in series.select(nbs, start="1")] == ["1_check"]
    assert [p.stem for p in series.select(nbs, only=["0_configure"])] == ["0_configure"]
    with pytest.raises(ConfigError, match="--from"):
        series.select(nbs, start="7")
    with pytest.raises(ConfigError, match="--only"):
        series.select(nbs, only=["9"])


def test_series_finds_whatever_numbered_notebooks_exist(tmp_path):
    _notebook(tmp_path / "10_late.ipynb", "pass")
    _notebook(tmp_path / "2_mid.ipynb", "pass")
    (tmp_path / "notes.ipynb").write_text("{}")
    assert [p.stem for p in series.find_notebooks(tmp_path)] == ["2_mid", "10_late"]


def test_cli_series_success_and_failure(artifact, tmp_path):
    wd = tmp_path / "wd"
    params = tmp_path / "params.yaml"
    params.write_text("\n".join(f"{k}: {v}" for k, v in PARAMS.items()))
    cmd = [sys.executable, "-m", "replab.cli", "series", "--params", str(params),
           "--root", str(artifact), "--workdir", str(wd)]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "[2/2] 1_check ok" in ok.stdout
    _notebook(artifact / "2_fail.ipynb", "raise ValueError('bad value 42')")
    bad = subprocess.run(cmd + ["--from", "2"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "2_fail failed at cell 3" in bad.stderr and "bad value 42" in bad.stderr
    assert "2_fail.ipynb" in bad.stderr
    # the kernels' own console noise stays out of the series' output and its notebooks
    executed = "".join(outputs_text(p) for p in (wd / "runs").rglob("*.ipynb"))
    for text in (ok.stdout + ok.stderr, bad.stdout + bad.stderr, executed):
        assert "without encryption" not in text and "KeyboardInterrupt caught" not in text
        assert "IPKernelApp" not in text
    wrong = subprocess.run(cmd + ["-p", "site=CHI@Mars"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "CHI@Mars" in wrong.stderr


def test_cli_bad_params_file_is_a_config_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "replab.cli", "series", "--params",
                          str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert out.returncode == 2 and "nope.yaml does not exist" in out.stderr


@pytest.mark.parametrize("how", ["param", "file"])
def test_a_parameter_no_notebook_declares_is_refused_with_the_closest_name(
        artifact, tmp_path, how):
    params = tmp_path / "params.yaml"
    given = dict(PARAMS, **({"sitee": "local"} if how == "file" else {}))
    params.write_text("\n".join(f"{k}: {v}" for k, v in given.items()))
    cmd = [sys.executable, "-m", "replab.cli", "series", "--params", str(params),
           "--root", str(artifact), "--workdir", str(tmp_path / "wd")]
    out = subprocess.run(cmd + (["-p", "sitee=local"] if how == "param" else []),
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        "replab: invalid configuration in the series parameters: sitee: not a parameter of "
        "any notebook in the series; did you mean 'site'?")
    assert not (tmp_path / "wd").exists()  # refused before anything ran


def test_path_parameters_are_injected_absolute_and_the_executed_copy_reruns(
        artifact, tmp_path, monkeypatch):
    import papermill

    _notebook(artifact / "1_check.ipynb",
              "import json, os\n"
              "json.dump({'repo': repo, 'clouds_file': clouds_file, 'run': run,\n"
              "           'remote': remote}, open(os.path.join(workdir, 'seen.json'), 'w'))",
              params="workdir: str = 'work'\nrepo: str = ''\nclouds_file: str = ''\n"
                     "run: str = 'latest'\nremote: str = ''")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj").mkdir()
    result = series.run_series(
        dict(PARAMS, workdir="rel/wd", repo="proj", clouds_file="~/clouds.yaml",
             run="b/run.tar.gz", remote="x"), root=artifact, stamp="t9")
    wd = tmp_path / "rel" / "wd"
    assert result.workdir == str(wd)
    seen = json.loads((wd / "seen.json").read_text())
    assert seen == {"repo": str(tmp_path / "proj"),
                    "clouds_file": str(Path("~/clouds.yaml").expanduser()),
                    "run": str(tmp_path / "b" / "run.tar.gz"), "remote": "x"}
    (wd / "seen.json").unlink()
    # the executed copy, re-run from its own folder, finds the same paths
    kept = wd / "runs" / "t9" / "1_check.ipynb"
    papermill.execute_notebook(str(kept), str(tmp_path / "again.ipynb"), cwd=str(kept.parent),
                               progress_bar=False)
    assert json.loads((wd / "seen.json").read_text()) == seen


def test_urls_stay_urls():
    from replab import parampaths

    assert parampaths.absolute_paths({"repo": "https://github.com/a/b.git", "run": "abc123",
                                      "experiment": "demo"}, "/base") == {
        "repo": "https://github.com/a/b.git", "run": "abc123", "experiment": "demo"}
    assert parampaths.absolute_paths({"repo": "git@github.com:a/b.git"})["repo"] == (
        "git@github.com:a/b.git")
    assert parampaths.absolute_paths({"repo": "."}, "/base") == {"repo": "/base"}
