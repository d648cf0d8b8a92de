"""The determinism profile is observed, not assumed: params that show unseeded randomness
(``random_state: None`` as autologging stores it) make a run statistical even under
``--seed``, and are the hazard ranked first. Runs are real: ``replab run`` with sklearn
autologging, and ``replab.tracking.start_run(seed=...)``, on the session's MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from replab import capture
from replab.envdiff import (
    STATISTICAL,
    determinism_profile,
    env_diff,
    facts,
    hazards,
    rank,
    unseeded_params,
)
from replab.verdict import fetch_record
from tests.gitrepo import make_repo

RANDOM_STATE_WHY = "parameter random_state is None: the estimator draws a fresh seed each run"

SGD_SCRIPT = """\
import sys
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier

X, y = load_digits(return_X_y=True)
state = None if sys.argv[1] == "none" else int(sys.argv[1])
SGDClassifier(max_iter=5, tol=None, random_state=state).fit(X, y)
"""

TRACKED_SCRIPT = """\
import sys
from replab import tracking

state = None if sys.argv[1] == "none" else int(sys.argv[1])
with tracking.start_run("t-envdiff-params", params={"random_state": state, "lr": 0.1},
                        seed=1) as run:
    run.log_metric("loss", 1.0, step=0)
print("run", run.run_id)
"""


def _ranked(rec):
    """The ranked diff verdict.py would show for a faithful replay of ``rec`` (itself)."""
    m, t, p = rec.manifest, rec.tags, rec.params
    return rank([*hazards(m, m, t, t, params_a=p, params_b=p), *env_diff(m, m)])


def _replab_run(repo, url, *args):
    out = subprocess.run([sys.executable, "-m", "replab.cli", "run", "-e", "t-envdiff-params",
                          "--seed", "1", "--", sys.executable, "fit.py", *args], cwd=repo,
                         env={**os.environ, "MLFLOW_TRACKING_URI": url},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("replab: run "))
    return line.split()[2]


@pytest.fixture(scope="module")
def sgd_runs(mlflow_server, tmp_path_factory):
    """``replab run --seed 1`` of an autologged SGDClassifier: random_state None, then 0."""
    repo = make_repo(tmp_path_factory.mktemp("sgd") / "p", {"fit.py": SGD_SCRIPT})
    ids = {arg: _replab_run(repo, mlflow_server.url, arg) for arg in ("none", "0")}
    client = MlflowClient(mlflow_server.url)
    return {arg: fetch_record(client, run_id) for arg, run_id in ids.items()}


def test_autologged_random_state_none_is_statistical_despite_seed(sgd_runs):
    rec = sgd_runs["none"]
    assert rec.params["random_state"] == "None" and rec.params["shuffle"] == "True"
    assert rec.tags["replab.seed"] == "1"
    # the old call (no params) trusts the seed tag; the params say otherwise
    assert determinism_profile(rec.manifest, rec.tags)[0] != STATISTICAL
    profile, reasons = determinism_profile(rec.manifest, rec.tags, params=rec.params)
    assert profile == STATISTICAL and RANDOM_STATE_WHY in reasons
    ranked = _ranked(rec)
    top = ranked[0]
    assert (top.kind, top.layer, top.key, top.a, top.weight, top.why) == (
        "hazard", "params", "random_state", "None", 100, RANDOM_STATE_WHY)
    assert top.weight >= max(d.weight for d in ranked)
    # shuffle=True next to random_state=None is the same cause, reported once
    assert [d.key for d in ranked if d.layer == "params"] == ["random_state"]


def test_autologged_random_state_zero_is_no_hazard(sgd_runs):
    rec = sgd_runs["0"]
    assert rec.params["random_state"] == "0"
    assert unseeded_params(rec.params) == []
    assert not [d for d in _ranked(rec) if d.layer == "params"]
    assert determinism_profile(rec.manifest, rec.tags, params=rec.params) == \
        determinism_profile(rec.manifest, rec.tags)


@pytest.fixture(scope="module")
def tracked_runs(mlflow_server, tmp_path_factory):
    """``tracking.start_run(seed=1)`` (replab seeds random and numpy) with a param
    random_state None, then 0."""
    repo = make_repo(tmp_path_factory.mktemp("tracked") / "p", {"train.py": TRACKED_SCRIPT})
    client = MlflowClient(mlflow_server.url)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
    out = {}
    for arg in ("none", "0"):
        proc = subprocess.run([sys.executable, "train.py", arg], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_id = next(ln.split()[1] for ln in proc.stdout.splitlines()
                      if ln.startswith("run "))
        out[arg] = fetch_record(client, run_id)
    return out


def test_seeded_by_replab_but_random_state_none_is_statistical(tracked_runs):
    rec = tracked_runs["none"]
    seeds = rec.manifest["captures"]["determinism"]["seeds"]
    assert seeds["seed"] == 1 and "numpy" in seeds["seeded"]
    assert rec.params["random_state"] in ("None", "null")  # replab's log_params writes JSON
    seeded_profile, seeded_reasons = determinism_profile(rec.manifest, rec.tags)
    assert seeded_profile != STATISTICAL
    assert any(r.startswith("replab seeded ") and "numpy" in r for r in seeded_reasons)
    profile, reasons = determinism_profile(rec.manifest, rec.tags, params=rec.params)
    assert profile == STATISTICAL and reasons[0] == "seeded (1)" and RANDOM_STATE_WHY in reasons
    assert (_ranked(rec)[0].layer, _ranked(rec)[0].key) == ("params", "random_state")

    fixed = tracked_runs["0"]
    assert determinism_profile(fixed.manifest, fixed.tags, params=fixed.params) == \
        (seeded_profile, seeded_reasons)
    assert not [d for d in _ranked(fixed) if d.layer == "params"]


def test_the_params_hazard_outranks_the_missing_seed(tracked_runs):
    rec = tracked_runs["none"]
    unseeded = {**rec.manifest, "captures": {**rec.manifest["captures"], "determinism": {
        **rec.manifest["captures"]["determinism"], "seeds": None}}}
    p = rec.params
    ranked = rank([*hazards(unseeded, unseeded, params_a=p, params_b=p),
                   *env_diff(unseeded, unseeded)])
    assert [(d.layer, d.key) for d in ranked[:2]] == [("params", "random_state"),
                                                      ("determinism", "seeds")]
    assert determinism_profile(unseeded, params=p) == (STATISTICAL, [
        "no seed recorded (determinism capture, tag replab.seed)", RANDOM_STATE_WHY])


def test_a_hazard_is_what_both_runs_show():
    none, zero = {"random_state": "None"}, {"random_state": "0"}
    assert [d.key for d in hazards(None, None, params_a=none, params_b=none)] == ["random_state"]
    assert [d.key for d in hazards(None, None, params_a=none)] == ["random_state"]
    # a replay with other params is reported as a parameter difference, not as a hazard
    assert hazards(None, None, params_a=none, params_b=zero) == []


@pytest.mark.parametrize("params, keys", [
    ({"random_state": "None", "lr": "0.1"}, ["random_state"]),
    ({"seed": "None"}, ["seed"]),
    ({"random_seed": "null"}, ["random_seed"]),
    ({"data_seed": "None", "model_seed": "3"}, ["data_seed"]),
    ({"clf__random_state": "None", "scaler__with_mean": "True"}, ["clf__random_state"]),
    ({"model.random_state": "None"}, ["model.random_state"]),
    ({"shuffle": "True"}, ["shuffle"]),
    ({"loader.shuffle": "True", "loader.seed": "4"}, []),  # seeded next to it
    ({"shuffle": "True", "seed": "7"}, []),  # a top-level seed
    ({"shuffle": "True", "random_state": "None"}, ["random_state"]),  # one cause, said once
    ({"shuffle": "False"}, []),
    ({"cv": "KFold(n_splits=5, random_state=None, shuffle=True)"}, ["cv"]),
    ({"cv": "KFold(n_splits=5, random_state=None, shuffle=False)"}, []),
    ({"random_state": "0", "seed": "42", "unseeded": "True", "n_seeds": "None"}, []),
    ({}, []),
])
def test_unseeded_params(params, keys):
    assert [k for k, _ in unseeded_params(params)] == keys


def test_unseeded_params_say_why():
    assert unseeded_params({"random_state": "None"}) == [("random_state", RANDOM_STATE_WHY)]
    (key, why), = unseeded_params({"shuffle": "True"})
    assert why.startswith("parameter shuffle is True and no seed is given")
    assert unseeded_params(None) == [] and unseeded_params("odd") == []


def test_the_profile_names_only_the_generators_replab_seeded():
    # seed_everything's answer as the determinism capture records it
    m = capture.collect(["determinism", "packages"], seeds={
        "seed": 5, "seeded": {"random": True, "numpy": True, "tensorflow": False}})
    assert m["captures"]["determinism"]["seeds"] == {"seed": 5, "seeded": ["numpy", "random"]}
    assert facts(m).seeded_rngs == ["numpy", "random"]
    assert "replab seeded numpy, random" in determinism_profile(m)[1]
    # tensorflow installed but not seeded (not imported before start_run): said, and a hazard
    m["captures"]["packages"]["versions"]["tensorflow"] = "2.17.0"
    reasons = determinism_profile(m)[1]
    assert any(r.startswith("installed but not seeded by replab: tensorflow") for r in reasons)
    (h,) = [d for d in hazards(m, m) if d.key == "seeds.seeded"]
    assert h.a == "not seeded by replab: tensorflow" and h.weight == 90
    # a seed that reached no generator is no seed
    m["captures"]["determinism"]["seeds"]["seeded"] = []
    assert determinism_profile(m) == (STATISTICAL, [
        "seed 5 recorded, but replab seeded no generator"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["seed", "random_state", "shuffle", "a.seed",
                                        "a.shuffle", "b__random_state", "lr", "cv"]) |
                       st.text(max_size=8),
                       st.sampled_from(["None", "null", "True", "0", "KFold(random_state="
                                        "None, shuffle=True)"]) | st.text(max_size=8)))
def test_property_unseeded_params_never_raise_and_name_given_keys(params):
    found = unseeded_params(params)
    assert {k for k, _ in found} <= set(params)
    assert [d.key for d in hazards(None, None, params_a=params, params_b=dict(params))] == \
        [k for k, _ in found]
    profile, _ = determinism_profile(None, {"replab.seed": "1"}, params=params)
    assert (profile == STATISTICAL) == bool(found)
