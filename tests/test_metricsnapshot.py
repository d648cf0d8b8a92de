"""The metrics snapshot (replab/metrics.json.gz): written by replab.tracking and by
`replab run`'s child, read by runrecord for each key that agrees with the server, on a real
MLflow server. Both readers give a key's points in the same order (step, timestamp, then
value: the SQL store's order within equal timestamps), so which one answered is told by the
history requests the client made (a real client that counts them)."""

import gzip
import json
import logging
import math
import sys

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from replab import metricsnapshot, runrecord, tracking
from tests.gitrepo import make_repo
from tests.test_runner import _replab, _run_id

T = 1_700_000_000_000
LOGGED = [(7 * i) % 31 + 0.5 for i in range(30)]  # not sorted: logged order != by value


def _key(points):
    return sorted(points, key=lambda p: (p[0], math.inf if math.isnan(p[1]) else p[1]))


def _server(client, run_id, key):
    return runrecord.metric_history(client, run_id, key)


class CountingClient(MlflowClient):
    """MLflow's client, noting the keys whose history it asked the server for."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def get_metric_history(self, run_id, key):
        self.asked.append(key)
        return super().get_metric_history(run_id, key)


def test_a_metric_logged_30_times_at_step_0_reads_from_the_snapshot_as_from_the_server(
        tracking_uri):
    with tracking.start_run(experiment="t-snapshot", capture=False) as run:
        for value in LOGGED:
            run.log_metrics({"acc": value}, step=0, timestamp=T)
        run.log_metrics({"acc": LOGGED[0]}, step=0, timestamp=T)  # identical: MLflow keeps one
        for step, value in enumerate([1.0, float("nan"), float("inf"), float("nan")]):
            run.log_metrics({"odd": value}, step=step // 2, timestamp=T)
    client = CountingClient()
    record = runrecord.fetch_record(client, run.run_id)
    assert client.asked == []  # every key from the snapshot
    assert record.metrics["acc"] == [(0, v) for v in sorted(LOGGED)]
    assert _server(client, run.run_id, "acc") == record.metrics["acc"]
    for key in ("acc", "odd"):  # the points the server keeps, no more, no fewer
        mine, theirs = _key(record.metrics[key]), _key(_server(client, run.run_id, key))
        assert len(mine) == len(theirs)
        assert all(a[0] == b[0] and (a[1] == b[1] or math.isnan(a[1]) and math.isnan(b[1]))
                   for a, b in zip(mine, theirs, strict=True))


def test_a_point_logged_after_the_snapshot_sends_that_key_to_the_server(tracking_uri):
    with tracking.start_run(experiment="t-snapshot-late", capture=False) as run:
        for value in LOGGED:
            run.log_metrics({"late": value, "kept": value}, step=0, timestamp=T)
    client = CountingClient()
    client.log_metric(run.run_id, "late", 99.0, timestamp=T + 1, step=5)
    metrics = runrecord.fetch_record(client, run.run_id).metrics
    assert client.asked == ["late"]  # "kept" came from the snapshot
    assert metrics["late"] == [(0, v) for v in sorted(LOGGED)] + [(5, 99.0)]
    assert metrics["kept"] == [(0, v) for v in sorted(LOGGED)]


def test_a_corrupt_snapshot_falls_back_to_the_server_with_a_warning(tracking_uri, tmp_path,
                                                                  caplog):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("t-snapshot-corrupt")).info.run_id
    client.log_batch(run_id, metrics=[Metric("m", v, T, 0) for v in LOGGED])
    bad = tmp_path / "metrics.json.gz"
    bad.write_bytes(gzip.compress(b'{"format": "replab.metrics", "version": 1, "run_id": "'
                                  + run_id.encode() + b'", "metrics": {"m": {"step": [0]}}}'))
    client.log_artifact(run_id, str(bad), "replab")
    client.set_terminated(run_id)
    counting = CountingClient()
    with caplog.at_level(logging.WARNING, logger="replab.runrecord"):
        metrics = runrecord.fetch_record(counting, run_id).metrics
    assert counting.asked == ["m"] and metrics["m"] == [(0, v) for v in sorted(LOGGED)]
    assert any(metricsnapshot.ARTIFACT in r.getMessage() and run_id in r.getMessage()
               for r in caplog.records)


SCRIPT = """\
import mlflow
for v in {values}:
    mlflow.log_metric("own", v, step=0, timestamp={t})
mlflow.log_metrics({{"pair": 1.0, "other": 2.0}}, step=3)
mlflow.log_metric("own", 42.0, step=1, synchronous=False)
mlflow.flush_async_logging()  # MLflow may drop what is queued at exit (then: the server's)
"""


def test_replab_run_writes_a_snapshot_of_what_the_script_logged(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "p", {"log.py": SCRIPT.format(values=LOGGED, t=T)})
    out = _replab("run", "-e", "t-snapshot-run", "--no-autolog", "--",
                  sys.executable, "log.py", cwd=repo)
    assert out.returncode == 0, out.stderr
    assert "snapshot" not in out.stderr
    run_id = _run_id(out.stderr)
    client = MlflowClient()
    with open(client.download_artifacts(run_id, metricsnapshot.ARTIFACT, str(tmp_path)),
              "rb") as fh:
        snapshot = metricsnapshot.decode(fh.read(), run_id)
    # the child's points and the parent's exit code, in one snapshot
    assert set(snapshot) == {"own", "pair", "other", "replab.exit_code"}
    counting = CountingClient()
    metrics = runrecord.fetch_record(counting, run_id).metrics
    assert counting.asked == []
    assert metrics["own"] == [(0, v) for v in sorted(LOGGED)] + [(1, 42.0)]
    assert metrics["pair"] == [(3, 1.0)] and metrics["replab.exit_code"] == [(0, 0.0)]
    assert json.loads(json.dumps(metrics))  # plain data
