"""replab.runrecord.metric_histories reads several metrics at once: the points, and their
order, are exactly those of reading each metric in turn (metric_history), on a real MLflow
server, with repeated steps, equal timestamps, steps logged out of order and NaN/inf."""

import math

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from replab import runrecord


@pytest.fixture(scope="module")
def run_with_ties(mlflow_server):
    client = MlflowClient(mlflow_server.url)
    exp = client.create_experiment("t-histories")
    run_id = client.create_run(exp).info.run_id
    t = 1_700_000_000_000
    points = []
    for k in range(6):
        key = f"m{k}"
        # many values at step 0, several sharing one timestamp (autologging, a fast loop)
        points += [Metric(key, (7 * i) % 11 + k, t + i // 3, 0) for i in range(30)]
        # steps logged out of order, two values at one step and timestamp
        points += [Metric(key, 1.0 / (s + 1), t + 100 + s, s) for s in (5, 3, 4, 1, 2)]
        points += [Metric(key, 9.5, t + 200, 3), Metric(key, -2.0, t + 200, 3)]
    points += [Metric("odd", float("nan"), t, 0), Metric("odd", float("inf"), t, 0),
               Metric("odd", 1.0, t, 0), Metric("odd", float("-inf"), t + 1, 1)]
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i:i + 1000])
    client.set_terminated(run_id)
    return client, run_id


def _same(a, b):
    return len(a) == len(b) and all(
        sa == sb and (va == vb or math.isnan(va) and math.isnan(vb))
        for (sa, va), (sb, vb) in zip(a, b, strict=True))


def test_reading_at_once_gives_the_points_of_one_by_one_reading(run_with_ties):
    client, run_id = run_with_ties
    keys = client.get_run(run_id).data.metrics
    one_by_one = {k: runrecord.metric_history(client, run_id, k) for k in sorted(keys)}
    assert len(one_by_one) == 7 and len(one_by_one["m0"]) == 37
    assert [s for s, _ in one_by_one["m0"]][30:] == [1, 2, 3, 3, 3, 4, 5]
    for readers in (1, 2, 4, 16):
        at_once = runrecord.metric_histories(client, run_id, keys, readers=readers)
        assert list(at_once) == sorted(keys)
        assert all(_same(at_once[k], one_by_one[k]) for k in keys), readers


def test_a_failing_read_raises_as_one_by_one_reading_does(monkeypatch):
    from tests.fixtures_mlflow import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(Exception, match="(?i)connect"):
        runrecord.metric_histories(client, "0" * 32, ["m0", "m1", "m2"], readers=4)
