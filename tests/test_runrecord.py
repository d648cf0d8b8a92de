"""replab.runrecord: one reader of a run, so the original's and the replay's points pair in
the order they were logged (a metric logged many times at one step, as autologging does)."""

import json
import tarfile

import pytest
from mlflow.tracking import MlflowClient

from replab import replay, runrecord, verdict
from replab.errors import ReplayError
from tests.gitrepo import make_repo

# 30 fits of a real, seeded estimator, each score logged at step 0 (as MLflow autologging
# logs every fit at step 0): the values vary and are not logged in sorted order.
SCRIPT = """\
import mlflow
from sklearn.datasets import load_iris
from sklearn.model_selection import KFold
from sklearn.tree import DecisionTreeClassifier
from replab import tracking

X, y = load_iris(return_X_y=True)
with tracking.start_run("t-repeated-step", {"folds": 30}, seed=0) as run:
    for train, test in KFold(30, shuffle=True, random_state=0).split(X):
        model = DecisionTreeClassifier(random_state=0, max_depth=2).fit(X[train], y[train])
        mlflow.log_metric("fold_score", model.score(X[test], y[test]), step=0)
        mlflow.log_metric("train_score", model.score(X[train], y[train]), step=0)
    print("run", run.run_id)
"""


@pytest.fixture
def repeated(tracking_uri, tmp_path):
    import subprocess
    import sys

    repo = make_repo(tmp_path / "p", {"fit.py": SCRIPT})
    out = subprocess.run([sys.executable, "fit.py"], cwd=repo, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("run "))
    return repo, run_id


def test_the_reader_keeps_the_logged_order_of_one_step(repeated, tracking_uri):
    _, run_id = repeated
    points = runrecord.metric_history(MlflowClient(tracking_uri), run_id, "fold_score")
    assert len(points) == 30 and {s for s, _ in points} == {0}
    values = [v for _, v in points]
    assert values != sorted(values)  # a value-sorted reader would pair these wrongly
    assert replay.fetch(run_id).metrics["fold_score"] == points
    assert verdict.fetch_record(MlflowClient(tracking_uri), run_id).metrics[
        "fold_score"] == points


def test_thirty_values_at_step_0_replay_to_reproduced_from_server_and_bundle(
        repeated, tracking_uri, tmp_path):
    repo, original = repeated
    result = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd")
    assert result.verdict.verdict == verdict.Outcome.REPRODUCED, verdict.explain(
        result.verdict)
    bundle = replay.export_bundle(original, tmp_path / "run.tar.gz")
    assert replay.load_bundle(bundle).metrics == replay.fetch(original).metrics
    v, _, _ = replay.verify(str(bundle), result.execution.new_run_id)
    assert v.verdict == verdict.Outcome.REPRODUCED, verdict.explain(v)


def _rewrite(bundle, out, change):
    with tarfile.open(bundle, "r:gz") as tar:
        data = json.loads(tar.extractfile("record.json").read())
    change(data)
    raw = json.dumps(data).encode()
    import io

    with tarfile.open(out, "w:gz") as tar:
        info = tarfile.TarInfo("record.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return out


def test_an_old_bundle_with_repeated_steps_is_refused_with_the_way_out(repeated, tmp_path):
    _, original = repeated
    bundle = replay.export_bundle(original, tmp_path / "new.tar.gz")

    def old(data):  # what replab wrote before: version 1, sorted by (step, value)
        data["bundle_version"] = 1
        data["metrics"] = {k: sorted(v) for k, v in data["metrics"].items()}

    with pytest.raises(ReplayError, match="bundle export"):
        replay.load_bundle(_rewrite(bundle, tmp_path / "old.tar.gz", old))

    def old_single(data):  # version 1 without repeated steps is exact and still read
        data["bundle_version"] = 1
        data["metrics"] = {"loss": [[0, 1.0], [1, 0.5]]}

    src = replay.load_bundle(_rewrite(bundle, tmp_path / "old1.tar.gz", old_single))
    assert src.metrics == {"loss": [(0, 1.0), (1, 0.5)]}
