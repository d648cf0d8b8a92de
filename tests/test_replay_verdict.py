"""Replays judged end to end: the examples, a notebook, a `replab run` command, the CLI."""

import json
import subprocess
import sys

import pytest

from replab import replay, verdict
from tests.conftest import ROOT
from tests.gitrepo import make_repo, train_example

EX = ROOT / "examples"


def _repo(tmp_path, example):
    src = EX / example
    files = {p.name: p.read_text() for p in src.glob("*.py")}
    files["train_notebook.ipynb"] = (src / "train_notebook.ipynb").read_text()
    return make_repo(tmp_path / example, files)


def test_deterministic_example_replays_to_reproduced(tracking_uri, tmp_path):
    repo = _repo(tmp_path, "digits")
    original = train_example(repo, tracking_uri, "--seed", "3", "--epochs", "3")
    lines = []
    result = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd",
                               progress=lines.append)
    assert result.verdict.verdict == verdict.Outcome.REPRODUCED
    assert result.report["report.html"].exists() and "REPRODUCED" in result.report[
        "report.md"].read_text()
    assert any("verdict: REPRODUCED" in ln for ln in lines)
    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_run(result.execution.new_run_id).data.tags
    assert tags[verdict.TAG_VERDICT] == "REPRODUCED"


def test_unseeded_example_is_not_reproduced_and_seeding_ranks_first(tracking_uri, tmp_path):
    repo = _repo(tmp_path, "mlp")
    original = train_example(repo, tracking_uri, "--unseeded", "--epochs", "3")
    result = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd",
                               tolerances=verdict.Tolerance())  # exact: any noise shows
    assert result.verdict.verdict == verdict.Outcome.NOT_REPRODUCED
    assert "seed" in verdict.describe(result.verdict.differences[0]).lower()
    assert "seed is None" in verdict.explain(result.verdict)  # its own param says so


def test_notebook_entrypoint_replays_through_papermill(tracking_uri, tmp_path):
    import papermill

    repo = _repo(tmp_path, "digits")
    out = tmp_path / "executed.ipynb"
    nb = repo / "train_notebook.ipynb"
    papermill.execute_notebook(str(nb), str(out), cwd=str(repo), progress_bar=False,
                               parameters={"seed": 6, "epochs": 2,
                                           "PAPERMILL_INPUT_PATH": str(nb)})
    text = "".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"]
                   for o in c.get("outputs", []))
    original = next(ln.split()[1] for ln in text.splitlines() if ln.startswith("run "))
    source = replay.fetch(original)
    assert source.captures["entrypoint"]["kind"] == "notebook"
    result = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd")
    assert result.execution.command[1:3] == ["-m", "papermill"]
    assert result.verdict.verdict == verdict.Outcome.REPRODUCED


def test_replab_run_command_replays_and_the_cli_judges_it(tracking_uri, tmp_path):
    script = ("import sys\nfrom sklearn.datasets import load_iris\n"
              "from sklearn.linear_model import LogisticRegression\n"
              "X, y = load_iris(return_X_y=True)\n"
              "print('score', LogisticRegression(max_iter=300).fit(X, y).score(X, y))\n")
    repo = make_repo(tmp_path / "p", {"fit.py": script})
    cli = [sys.executable, "-m", "replab.cli"]
    out = subprocess.run([*cli, "run", "-e", "t-cmd", "--", sys.executable, "fit.py"],
                         cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    original = next(ln for ln in out.stderr.splitlines() if ln.startswith("replab: run ")
                    ).split()[2]
    r = subprocess.run([*cli, "replay", original, "--repo", str(repo), "--workdir",
                        str(tmp_path / "wd")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: REPRODUCED" in r.stdout
    new = next(ln.split()[2] for ln in r.stdout.splitlines() if ln.startswith("replay run "))
    v = subprocess.run([*cli, "verify", original, new], capture_output=True, text=True)
    assert v.returncode == 0 and "verdict: REPRODUCED" in v.stdout
    d = subprocess.run([*cli, "diff", original, new], capture_output=True, text=True)
    assert d.returncode == 0
    bundle = tmp_path / "b.tar.gz"
    b = subprocess.run([*cli, "bundle", "export", original, "-o", str(bundle)],
                       capture_output=True, text=True)
    assert b.returncode == 0 and bundle.exists()
    vb = subprocess.run([*cli, "verify", str(bundle), new], capture_output=True, text=True)
    assert vb.returncode == 0, vb.stderr


@pytest.mark.parametrize("bad", ["0" * 32])
def test_cli_replay_of_a_missing_run_is_a_replay_error(tracking_uri, bad, tmp_path):
    r = subprocess.run([sys.executable, "-m", "replab.cli", "replay", bad, "--workdir",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 4 and "not found" in r.stderr


def test_4_replay_notebook_browses_and_replays(tracking_uri, tmp_path):
    from tests.notebooks import execute, outputs_text

    repo = _repo(tmp_path, "digits")
    original = train_example(repo, tracking_uri, "--seed", "8", "--epochs", "2")
    wd = tmp_path / "wd"
    browse = tmp_path / "browse.ipynb"
    execute("4_replay.ipynb", browse, workdir=str(wd), run=original,
            tracking_uri=tracking_uri, browse_only=True)
    shown = outputs_text(browse)
    assert f"Run `{original}`" in shown and "val_accuracy" in shown and "verdict" not in shown
    bundle = replay.export_bundle(original, tmp_path / "r.tar.gz")
    from_bundle = tmp_path / "bundle.ipynb"
    execute("4_replay.ipynb", from_bundle, workdir=str(wd), run=str(bundle), browse_only=True)
    assert f"Run `{original}`" in outputs_text(from_bundle)
    full = tmp_path / "full.ipynb"
    execute("4_replay.ipynb", full, workdir=str(wd), run=original, tracking_uri=tracking_uri,
            repo=str(repo))
    assert "REPRODUCED" in outputs_text(full)
