"""Verdicts on programs written without replab in mind, tracked with `replab run` and
replayed with `replab replay` (real MLflow, real scikit-learn, the real CLI and its exit
codes): evidence or no verdict, faithful or said so, tolerances measured by repeats."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from replab import faithfulness, replay, verdict
from tests.gitrepo import git, make_repo

# Results printed, never logged; the data file lives outside the repository (not captured).
PRINTS = """\
import datetime, sys
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

X, y = load_iris(return_X_y=True)
scale = float(open(sys.argv[1]).read()) if len(sys.argv) > 1 else 1.0
Xtr, Xte, ytr, yte = train_test_split(X * scale, y, random_state=0)
clf = LogisticRegression(max_iter=300, C=0.05).fit(Xtr, ytr)
print("started at", datetime.datetime.now().isoformat(), flush=True)
print(f"test accuracy {clf.score(Xte, yte):.4f}")
print(f"first coefficient {clf.coef_[0, 0]:.6f}")
"""

SILENT = "x = sum(range(10))\n"

# An estimator with random_state=None, autologged: its params say it is unseeded.
UNSEEDED = """\
import sys
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

X, y = load_digits(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
clf = RandomForestClassifier(n_estimators=int(sys.argv[1]), max_depth=4).fit(Xtr, ytr)
print(f"test accuracy {clf.score(Xte, yte):.4f}")
"""

WRITES = """\
import json, os
os.makedirs("out", exist_ok=True)
json.dump({"total": sum(i * 0.5 for i in range(100))}, open("out/result.json", "w"))
"""


def _cli(*args, cwd, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "replab.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def _tracked(repo, *command, experiment="evidence", options=()):
    out = _cli("run", "-e", experiment, *options, "--", sys.executable, *command, cwd=repo)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("replab: run "))
    return line.split()[2]


def _replay(run_id, repo, workdir, *extra):
    where = ["--repo", str(repo)] if repo else []
    out = _cli("replay", run_id, *where, "--workdir", str(workdir), "--no-rebuild-env",
               *extra, cwd=workdir.parent)
    new = next((ln.split()[2] for ln in out.stdout.splitlines()
                if ln.startswith("replay run ")), None)
    return out, new


def test_a_script_that_only_prints_gets_a_verdict_from_its_stdout(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "p", {"fit.py": PRINTS})
    data = tmp_path / "scale.txt"
    data.write_text("1.0")
    original = _tracked(repo, "fit.py", str(data), options=["--no-autolog"])
    out, new = _replay(original, repo, tmp_path / "wd")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "verdict: REPRODUCED\n" in out.stdout
    assert "3 printed lines" in out.stdout and "identical after masking" in out.stdout
    # replab's own files stay out of the rebuilt workspace: the replay measures the program
    ws = next((tmp_path / "wd" / "replays").glob("*/workspace"))
    assert not (ws / ".replab").exists() and (ws.parent / "replay.log").is_file()
    # the replay's run was made before the program ran and handed to it
    tags = MlflowClient(tracking_uri).get_run(new).data.tags
    assert tags["replab.replay_of"] == original and tags["replab.verdict"] == "REPRODUCED"

    # the same program on data that moved (not captured: outside the repository): the
    # printed accuracy/coefficients move beyond tolerance -> NOT_REPRODUCED, naming the line
    data.write_text("3.0")
    out, _ = _replay(original, repo, tmp_path / "wd")
    assert out.returncode == 1, out.stdout[-3000:]
    assert "verdict: NOT_REPRODUCED" in out.stdout and "The printed stdout differs" in out.stdout


def test_a_program_that_logs_and_prints_nothing_is_incomplete(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "s", {"quiet.py": SILENT})
    original = _tracked(repo, "quiet.py", options=["--no-autolog"])
    # no --repo and no remote: the run's own working copy, still on this machine, is cloned
    out, _ = _replay(original, None, tmp_path / "wd")
    assert out.returncode == 6, out.stdout[-3000:] + out.stderr[-2000:]
    assert "no remote recorded: cloning the run's own repository" in out.stdout
    assert "verdict: INCOMPLETE" in out.stdout
    assert "an exit code alone is not evidence" in out.stdout
    # ...and when it is gone, the error says so and how to go on
    repo.rename(tmp_path / "moved")
    out, _ = _replay(original, None, tmp_path / "wd")
    assert out.returncode == 4 and "is not on this machine" in out.stderr, out.stderr
    assert "--repo" in out.stderr


def test_a_changed_hyperparameter_or_commit_is_not_faithful(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "u", {"forest.py": UNSEEDED})
    a = _tracked(repo, "forest.py", "20")
    b = _tracked(repo, "forest.py", "5")
    out = _cli("verify", a, b, "--tracking-uri", tracking_uri, cwd=repo)
    assert out.returncode == 5, out.stdout
    assert out.stdout.startswith("verdict: NOT_FAITHFUL")
    assert "params n_estimators: 20 -> 5" in out.stdout
    # another commit, same arguments
    (repo / "forest.py").write_text(UNSEEDED.replace("max_depth=4", "max_depth=6"))
    git(repo, "commit", "-qam", "deeper trees")
    c = _tracked(repo, "forest.py", "20")
    v, _, _ = replay.verify(a, c, tracking_uri=tracking_uri)
    assert v.verdict is verdict.Outcome.NOT_FAITHFUL
    assert v.unfaithful[0].item == "params" and any(u.item == "code" and u.key == "commit"
                                                    for u in v.unfaithful)


def test_unseeded_randomness_is_ranked_first_and_repeats_measure_the_spread(tracking_uri,
                                                                            tmp_path):
    repo = make_repo(tmp_path / "r", {"forest.py": UNSEEDED})
    original = _tracked(repo, "forest.py", "10")
    result = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd",
                               rebuild_env=False)
    v = result.verdict
    assert v.verdict is not verdict.Outcome.REPRODUCED
    top = v.differences[0]
    assert top.layer == "params" and top.key.endswith("random_state"), top
    assert v.profile == "statistical"
    if v.verdict is verdict.Outcome.REPRODUCED_WITHIN_TOLERANCE:
        assert v.tolerance_assumed and v.exit_code(strict=True) == 7
    # three replays: the spread is measured and the original judged against it
    lines = []
    rep = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd", rebuild_env=False,
                            repeats=3, progress=lines.append)
    assert len(rep.repeats) == 3 and len({e.new_run_id for e in rep.repeats}) == 3
    assert "repeat 3 of 3" in lines
    assert rep.spreads, "no metric was measured over the repeats"
    measured = [m for m in rep.verdict.metrics if m.tolerance_from == "measured spread"]
    assert measured and {m.name for m in measured} == set(rep.spreads)
    assert any("judged against 3 replays" in n for n in rep.verdict.notes)
    # the printed accuracy too is judged against the replays' spread, not an assumed 5%
    assert rep.verdict.printed and rep.verdict.printed[0].measured >= 1
    assert not rep.verdict.assumed_for, rep.verdict.assumed_for
    assert rep.verdict.verdict is not verdict.Outcome.NOT_FAITHFUL
    assert (Path(rep.report["report.html"]).read_text().count("data:image/png") ==
            len(rep.verdict.metrics))
    # verify over existing runs does the same: the original against the three replays
    ids = [e.new_run_id for e in rep.repeats]
    out = _cli("verify", original, *ids, "--tracking-uri", tracking_uri, cwd=repo)
    v3, _, _ = replay.verify(original, *ids, tracking_uri=tracking_uri)
    assert {m.name for m in v3.metrics if m.tolerance_from == "measured spread"} == \
        set(rep.spreads)
    assert out.returncode == v3.exit_code() and out.stdout.startswith(
        f"verdict: {v3.verdict.value}")


def test_no_autolog_is_recorded_and_honoured(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "n", {"forest.py": UNSEEDED})
    original = _tracked(repo, "forest.py", "8", options=["--no-autolog", "-p", "note=plain"])
    client = MlflowClient(tracking_uri)
    opts = faithfulness.run_options(client.get_run(original).data.tags)
    assert opts == {"autolog": False, "log_models": False, "seed": None,
                    "params": {"note": "plain"}}
    result = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd",
                               rebuild_env=False)
    new = client.get_run(result.execution.new_run_id).data
    assert faithfulness.run_options(new.tags) == opts
    assert set(new.params) == {"note"}  # nothing autologged
    assert "--no-autolog" in result.execution.command
    v = result.verdict
    assert not v.unfaithful, [u.words() for u in v.unfaithful]
    # a faithful replay of a clean committed run shows no code and no replab difference
    assert not [d for d in v.differences if d.layer == "code"]
    shown = json.dumps([d.to_dict() for d in v.differences])
    for artefact in ("REPLAB_REPLAY", "MLFLOW_RUN_ID", ".replab/replay.log"):
        assert artefact not in shown


def test_output_files_are_evidence(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "w", {"write.py": WRITES})
    original = _tracked(repo, "write.py", options=["--no-autolog", "--outputs", "out"])
    result = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd",
                               rebuild_env=False)
    v = result.verdict
    assert v.verdict is verdict.Outcome.REPRODUCED, verdict.explain(v)
    assert v.evidence.files == 1 and [f.path for f in v.files] == ["out/result.json"]
    assert "--outputs" in result.execution.command
    # a typo'd output directory is said, not silently recorded as nothing
    out = _cli("run", "-e", "evidence", "--no-autolog", "--outputs", "otu", "--",
               sys.executable, "write.py", cwd=repo)
    assert out.returncode == 0 and "--outputs otu:" in out.stderr and "does not exist" in \
        out.stderr
    # the same run from a bundle: the kept output file travels with it
    bundle = replay.export_bundle(original, tmp_path / "run.tar.gz", tracking_uri=tracking_uri)
    source = replay.load_bundle(bundle)
    local = source.files["out/result.json"].local
    assert local is not None and Path(local).read_text().startswith('{"total"')
    v2, _, _ = replay.verify(str(bundle), result.execution.new_run_id,
                             tracking_uri=tracking_uri)
    assert v2.verdict is verdict.Outcome.REPRODUCED and v2.evidence.files == 1


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_repeats_must_be_positive(tracking_uri, tmp_path, bad):
    out = _cli("replay", "0" * 32, "--repeats", bad, "--workdir", str(tmp_path),
               "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert out.returncode == 2 and "repeats" in out.stderr, out.stderr
