"""Faithfulness on real captures: what makes a replay another experiment, and what does
not (the interpreter a replay chose, the working copy's location)."""

import subprocess
import sys

from replab import capture
from replab.faithfulness import unfaithful
from replab.runrecord import RunRecord
from replab.verdict import Outcome, compare
from tests.gitrepo import git, make_repo


def _manifest(repo, data, argv):
    m = capture.collect(["git", "inputs"], repo=str(repo), inputs={"data": str(data)})
    m["captures"]["entrypoint"] = {"kind": "command", "command": argv, "cwd": "."}
    return m


def _record(run_id, manifest, **params):
    return RunRecord(run_id, params=params, metrics={"acc": [(0, 0.9)]}, manifest=manifest)


def test_same_experiment_elsewhere_is_faithful_and_each_change_is_named(tmp_path):
    repo = make_repo(tmp_path / "a", {"train.py": "print(1)\n"})
    data = tmp_path / "data.csv"
    data.write_text("x\n1\n")
    clone = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    base = _record("o", _manifest(repo, data, ["python", "train.py", "--lr", "0.1"]), lr="0.1")
    # the clone elsewhere, run by another interpreter path: the same experiment
    same = _record("r", _manifest(clone, data, [sys.executable, "train.py", "--lr", "0.1"]),
                   lr="0.1")
    assert unfaithful(base, same) == []
    assert compare(base, same).verdict is Outcome.REPRODUCED

    # other data, other argv, an untracked file, another commit: each named
    data.write_text("x\n2\n")
    (clone / "notes.txt").write_text("new\n")
    (clone / "train.py").write_text("print(2)\n")
    git(clone, "commit", "-qam", "other")
    other = _record("r2", _manifest(clone, data, ["python", "train.py", "--lr", "0.2"]),
                    lr="0.1")
    items = {(u.item, u.key) for u in unfaithful(base, other)}
    assert {("inputs", "data"), ("entrypoint", "command"), ("code", "commit"),
            ("code", "untracked file notes.txt")} <= items
    v = compare(base, other)
    assert v.verdict is Outcome.NOT_FAITHFUL and v.exit_code() == 5
