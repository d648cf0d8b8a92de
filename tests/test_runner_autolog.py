"""replab run's autologging choices (replab/_child/sitecustomize.py): params, training
metrics and post-training metrics are autologged; models, per-fit plots and dataset digests
only when asked for (--log-models), since they were most of autologging's time."""

import sys

from mlflow.tracking import MlflowClient

from tests.gitrepo import make_repo
from tests.test_runner import _replab, _run_id
from tests.test_tracking import _all_artifacts

SCRIPT = """\
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

X, y = load_iris(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
clf = DecisionTreeClassifier(max_depth=3, random_state=0).fit(Xtr, ytr)
print("test accuracy", clf.score(Xte, yte))
"""


def _tracked(tmp_path, *options):
    repo = make_repo(tmp_path / "p", {"fit.py": SCRIPT})
    out = _replab("run", "--experiment", "t-run-autolog", *options, "--",
                  sys.executable, "fit.py", cwd=repo)
    assert out.returncode == 0, out.stderr
    assert "could not attach" not in out.stderr, out.stderr
    assert "Failed to autolog" not in out.stderr, out.stderr  # the plots' stop is silent
    client = MlflowClient()
    run_id = _run_id(out.stderr)
    return client.get_run(run_id), _all_artifacts(client, run_id)


def test_params_and_metrics_are_autologged_but_not_plots_models_or_datasets(
        tracking_uri, tmp_path):
    run, artifacts = _tracked(tmp_path)
    assert run.data.params["max_depth"] == "3"
    assert "training_accuracy_score" in run.data.metrics
    assert "DecisionTreeClassifier_score_Xte" in run.data.metrics  # post-training
    assert not [a for a in artifacts if a.endswith((".png", "estimator.html"))], sorted(artifacts)
    assert not [a for a in artifacts if "MLmodel" in a], sorted(artifacts)
    assert not run.inputs.dataset_inputs


def test_log_models_brings_the_plots_back(tracking_uri, tmp_path):
    run, artifacts = _tracked(tmp_path, "--log-models")
    assert "training_accuracy_score" in run.data.metrics
    assert any(a.endswith("confusion_matrix.png") for a in artifacts), sorted(artifacts)
