"""The spread measured over repeated replays, and the original judged against it."""

import math

from replab.runrecord import RunRecord
from replab.spread import centre_record, measure, t995, tolerances
from replab.verdict import MetricStatus, Outcome, compare


def _rec(run_id, **metrics):
    return RunRecord(run_id, metrics={k: list(v) for k, v in metrics.items()})


REPLAYS = [_rec("r1", acc=[(0, 1.0), (1, 2.0)], loss=[(0, 5.0)]),
           _rec("r2", acc=[(0, 1.2), (1, 2.0)], loss=[(0, 5.0)]),
           _rec("r3", acc=[(0, 1.4), (1, 2.0)], loss=[(0, 5.0)])]


def test_the_prediction_interval_of_three_replays():
    s = measure(REPLAYS)
    assert set(s) == {"acc", "loss"}
    acc, loss = s["acc"], s["loss"]
    assert not acc.deterministic and loss.deterministic and "observed deterministic" in \
        loss.words()
    # mean 1.2, sd 0.2: t(0.995, 2) * 0.2 * sqrt(1 + 1/3)
    assert math.isclose(acc.half_width, 9.925 * 0.2 * math.sqrt(4 / 3), rel_tol=1e-6)
    assert math.isclose(acc.centre[0], 1.2) and acc.centre[1] == 2.0
    assert t995(2) == 9.925 and t995(100) == 2.576


def test_the_original_is_judged_against_the_spread_not_one_replay():
    spreads = measure(REPLAYS)
    judged = centre_record(REPLAYS[0], spreads)
    inside = _rec("orig", acc=[(0, 2.5), (1, 2.0)], loss=[(0, 5.0)])  # 1.3 from the mean
    v = compare(inside, judged, measured=tolerances(spreads))
    assert v.verdict is Outcome.REPRODUCED_WITHIN_TOLERANCE and not v.tolerance_assumed
    row = next(m for m in v.metrics if m.name == "acc")
    assert row.tolerance_from == "measured spread"
    outside = _rec("orig", acc=[(0, 4.0), (1, 2.0)], loss=[(0, 5.0)])
    assert compare(outside, judged, measured=tolerances(spreads)).verdict is \
        Outcome.NOT_REPRODUCED
    # a metric every replay logged identically must be identical in the original too
    moved = _rec("orig", acc=[(0, 1.2), (1, 2.0)], loss=[(0, 5.0000001)])
    v = compare(moved, judged, measured=tolerances(spreads))
    loss = next(m for m in v.metrics if m.name == "loss")
    assert loss.status is MetricStatus.OUTSIDE_TOLERANCE


def test_one_replay_measures_nothing():
    assert measure(REPLAYS[:1]) == {}
    assert measure(REPLAYS, ignore=("acc",)).keys() == {"loss"}


def _printing(run_id, text):
    return RunRecord(run_id, outputs={"version": 1, "evidence": True, "streams": ["stdout"]},
                     printed={"stdout": text})


def test_printed_numbers_are_judged_against_the_replays_spread():
    from replab.spread import measure_printed

    replays = [_printing(f"r{i}", f"epoch 3 accuracy {v}\ndone in 2.1s\n")
               for i, v in enumerate(("0.90", "0.92", "0.94"))]
    spread = measure_printed(replays, replays[0].outputs)
    numbers = spread["stdout"]
    assert set(numbers) == {("epoch # accuracy #", 0, 0), ("epoch # accuracy #", 0, 1)}
    epoch, (centre, half) = numbers[("epoch # accuracy #", 0, 0)], numbers[
        ("epoch # accuracy #", 0, 1)]
    assert epoch[0] == 3 and epoch[1] < 1e-8  # printed identically: no room at all
    assert math.isclose(centre, 0.92)
    assert math.isclose(half, 9.925 * 0.02 * math.sqrt(4 / 3), rel_tol=1e-6)
    # 0.99 is 7.6% from the first replay (beyond the assumed 5%) but inside the spread
    inside = _printing("orig", "epoch 3 accuracy 0.99\ndone in 9.9s\n")
    v = compare(inside, replays[0], printed_spread=spread)
    assert v.verdict is Outcome.REPRODUCED_WITHIN_TOLERANCE and not v.tolerance_assumed
    assert v.printed[0].measured == 1 and "measured spread" in v.printed[0].summary()
    assert compare(inside, replays[0]).verdict is Outcome.NOT_REPRODUCED  # no repeats
    outside = _printing("orig", "epoch 3 accuracy 1.5\ndone in 2.0s\n")
    v = compare(outside, replays[0], printed_spread=spread)
    assert v.verdict is Outcome.NOT_REPRODUCED
    assert "outside the replays' spread" in v.printed[0].mismatches[0].reason
