"""replab run starts a Python program before its run exists, held at a gate (replab.runchild):
the program still runs only after the capture, with its run's variables, and never runs when
the run cannot be made."""

import json
import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from replab import tracking
from replab.runchild import gateable
from tests.gitrepo import make_repo
from tests.test_runner import _run_id
from tests.test_tracking import _all_artifacts

# Its first act changes a tracked file and another one: a capture taken after the program
# started would see a dirty tree.
EDITS_ITSELF = """\
import json, os, pathlib
pathlib.Path("notes.txt").write_text("changed by the program\\n")
pathlib.Path("made.txt").write_text("new\\n")
print(json.dumps({k: os.environ.get(k) for k in
                  ("REPLAB_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID", "REPLAB_GATE_FD")}))
"""


def _replab(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "replab.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_program_runs_after_the_capture_and_knows_its_run(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "p", {"edit.py": EDITS_ITSELF, "notes.txt": "as committed\n"})
    for autolog in ([], ["--no-autolog"]):  # held while MLflow loads, or not loading it
        out = _replab("run", "-e", "t-gate", *autolog, "--", sys.executable, "edit.py",
                      cwd=repo)
        assert out.returncode == 0, out.stderr
        run_id = _run_id(out.stderr)
        run = MlflowClient().get_run(run_id)
        seen = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("{")))
        assert seen == {"REPLAB_PARENT_RUN_ID": run_id,
                        "MLFLOW_EXPERIMENT_ID": run.info.experiment_id,
                        "REPLAB_GATE_FD": None}  # the gate is not passed on to its children
        manifest = json.loads(_all_artifacts(MlflowClient(), run_id)[tracking.MANIFEST])
        git = manifest["captures"]["git"]
        assert git["dirty"] is False, git  # captured before the program's first line ran
        subprocess.run(["git", "checkout", "-q", "notes.txt"], cwd=repo, check=True)
        os.remove(repo / "made.txt")


def test_no_run_no_program_and_nothing_left_running(tmp_path):
    """The tracking server is unreachable: replab run says so, and the program, already
    started and held, never runs its first line."""
    repo = make_repo(tmp_path / "p", {"mark.py": "open('ran.txt', 'w').write('ran')\n"})
    env = dict(os.environ, MLFLOW_TRACKING_URI="http://127.0.0.1:9",
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    out = _replab("run", "-e", "t-gate-down", "--", sys.executable, "mark.py", cwd=repo,
                  env=env)
    assert out.returncode != 0
    assert "127.0.0.1:9" in out.stderr  # names the server it could not reach
    assert not (repo / "ran.txt").exists()
    # the held interpreter was reaped: no process of this test's program is left
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"{sys.executable} mark.py" not in ps


def test_which_commands_can_be_held():
    assert gateable(["python", "train.py"]) and gateable(["/venv/bin/python3.11", "-m", "pkg"])
    assert gateable(["python", "-u", "-X", "importtime", "train.py"])
    # not Python, or an interpreter that skips sitecustomize: started only once the run exists
    assert not gateable(["bash", "train.sh"])
    assert not gateable(["python", "-I", "train.py"])
    assert not gateable(["python", "-uS", "train.py"])
    assert not gateable([])


LOADS_MLFLOW_IF_ASKED = """\
import sys
print("mlflow loaded at start:", "mlflow" in sys.modules)
if sys.argv[1:] == ["log"]:
    import mlflow
    with mlflow.start_run():  # the tracked run, reused, not a second one
        mlflow.log_metric("own", 2.0)
"""


def test_no_autolog_loads_mlflow_only_for_a_program_that_imports_it(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "p", {"lazy.py": LOADS_MLFLOW_IF_ASKED})
    client = MlflowClient()
    for args in ([], ["log"]):
        out = _replab("run", "-e", "t-gate-lazy", "--no-autolog", "--", sys.executable,
                      "lazy.py", *args, cwd=repo)
        assert out.returncode == 0, out.stderr
        assert "mlflow loaded at start: False" in out.stdout
        run = client.get_run(_run_id(out.stderr))
        assert run.info.status == "FINISHED"
        assert run.data.metrics.get("own") == (2.0 if args else None)
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 2  # one per replab run, the program's start_run() made none
