"""replab run: an unmodified program tracked, autologged and given a status."""

import json
import subprocess
import sys

from mlflow.tracking import MlflowClient

from replab import runner, tracking
from tests.gitrepo import make_repo
from tests.test_tracking import _all_artifacts

SKLEARN_SCRIPT = """\
import sys
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

X, y = load_digits(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
clf = LogisticRegression(max_iter=200, C=float(sys.argv[1]))
clf.fit(Xtr, ytr)
print("test accuracy", clf.score(Xte, yte))
clf.fit(Xtr[:500], ytr[:500])  # a second fit lands in the same run too
"""


def _replab(*args, cwd):
    return subprocess.run([sys.executable, "-m", "replab.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _run_id(stderr):
    line = next(ln for ln in stderr.splitlines() if ln.startswith("replab: run "))
    return line.split()[2]


def test_an_unmodified_sklearn_script_is_tracked_with_autolog(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "p", {"fit.py": SKLEARN_SCRIPT})
    out = _replab("run", "--experiment", "t-run", "-p", "note=first", "--",
                  sys.executable, "fit.py", "0.5", cwd=repo)
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout  # shown live
    run_id = _run_id(out.stderr)
    client = MlflowClient()
    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, not one per fit
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["note"] == "first" and r.data.params["C"] == "0.5"  # autologged
    assert "training_score" in r.data.metrics or "training_accuracy_score" in r.data.metrics
    arts = _all_artifacts(client, run_id)
    assert "test accuracy" in arts["replab/stdout.txt"]
    manifest = json.loads(arts[tracking.MANIFEST])
    entry = manifest["captures"]["entrypoint"]
    assert entry["kind"] == "command" and entry["command"][1:] == ["fit.py", "0.5"]


def test_exit_code_sets_the_status_and_stderr_is_kept(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "p", {"bad.py": "import sys\nprint('oops', file=sys.stderr)\n"
                                                "sys.exit(3)\n"})
    out = _replab("run", "-e", "t-run-fail", "--", sys.executable, "bad.py", cwd=repo)
    assert out.returncode == 3
    run_id = _run_id(out.stderr)
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FAILED"
    assert "oops" in _all_artifacts(client, run_id)["replab/stderr.txt"]


def test_a_program_calling_mlflow_itself_lands_in_the_same_run(tracking_uri, tmp_path):
    script = ("import mlflow\nwith mlflow.start_run():\n    mlflow.log_metric('own', 1.5)\n"
              "mlflow.log_param('after', 'yes')\n")
    repo = make_repo(tmp_path / "p", {"own.py": script})
    out = _replab("run", "-e", "t-run-own", "--", sys.executable, "own.py", cwd=repo)
    assert out.returncode == 0, out.stderr
    r = MlflowClient().get_run(_run_id(out.stderr))
    assert r.data.metrics["own"] == 1.5 and r.data.params["after"] == "yes"


def test_missing_command_and_unknown_program_are_clear_errors(tracking_uri, tmp_path):
    assert "nothing to run" in _replab("run", "--", cwd=tmp_path).stderr
    out = _replab("run", "--", "no-such-program-xyz", cwd=tmp_path)
    assert out.returncode == 2 and "no-such-program-xyz" in out.stderr


def test_output_evidence_is_recorded_and_nothing_of_replab_counts_as_output(tracking_uri,
                                                                           tmp_path):
    from replab import outputs

    repo = make_repo(tmp_path / "p", {"quiet.py": "print('result 0.5')\n"})
    (repo / ".replab").mkdir()
    (repo / ".replab" / "replay.log").write_text("written by a replay\n")
    out = _replab("run", "-e", "t-run-outputs", "--no-autolog", "--",
                  sys.executable, "quiet.py", cwd=repo)
    assert out.returncode == 0, out.stderr
    arts = _all_artifacts(MlflowClient(), _run_id(out.stderr))
    spec = outputs.read_spec(arts[outputs.SPEC])
    assert spec["evidence"] is True and spec["streams"] == ["stdout"]
    assert spec["files"] == []  # the program wrote none; replab's own files are not outputs
    assert spec["cwd"] == str(repo.resolve())
    assert "result 0.5" in arts[runner.STDOUT]
