"""Outputs as evidence: printed lines and output files of real runs compared with tolerances."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from replab import outputs, runner
from replab.errors import ConfigError
from tests.gitrepo import make_repo

PRINTING = """\
import os, sys, tempfile, time, datetime
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

t0 = time.time()
X, y = load_iris(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
clf = LogisticRegression(max_iter=500, C=float(sys.argv[1])).fit(Xtr, ytr)
print("started", datetime.datetime.now().isoformat(), "pid", os.getpid())
print("scratch in", tempfile.mkdtemp())
print("model", object())
print(f"train accuracy {clf.score(Xtr, ytr):.4f}")
print(f"test accuracy {clf.score(Xte, yte):.4f}")
print(f"done in {time.time() - t0 + 1e-3 * os.getpid() % 7:.2f}s")
"""

WRITING = """\
import json, os, sys
import numpy as np
scale = float(sys.argv[1])
os.makedirs("results", exist_ok=True)
values = np.linspace(0.1, 1.0, 50) * scale
np.save("results/preds.npy", values)
with open("results/metrics.csv", "w") as fh:
    fh.write("epoch,loss\\n" + "".join(f"{i},{float(v)!r}\\n" for i, v in enumerate(values[:5])))
with open("results/summary.json", "w") as fh:
    json.dump({"accuracy": 0.9 * scale, "classes": ["a", "b"], "n": 50}, fh)
with open("notes.txt", "w") as fh:
    fh.write("untouched by scale\\n")
"""

STD = {"rel": 1e-4, "abs_": 1e-6}


def _replab(*args, cwd):
    return subprocess.run([sys.executable, "-m", "replab.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _run_id(stderr):
    line = next(ln for ln in stderr.splitlines() if ln.startswith("replab: run "))
    return line.split()[2]


def _text(client, run_id, path):
    return Path(client.download_artifacts(run_id, path)).read_text()


def _printed(client, run_id):
    spec = outputs.read_spec(_text(client, run_id, outputs.SPEC))
    return _text(client, run_id, runner.STDOUT), spec


def _files(client, run_id, tmp_path):
    spec = outputs.read_spec(_text(client, run_id, outputs.SPEC))
    local = None
    if any(f.get("artifact") for f in spec["files"]):
        local = Path(client.download_artifacts(run_id, outputs.ARTIFACT_DIR,
                                               str(tmp_path / run_id)))
    return outputs.recorded_files(spec, local)


@pytest.fixture(scope="module")
def printed_runs(mlflow_server, tmp_path_factory):
    """Three `replab run`s of a script that only prints: C=1 twice, then C=0.01."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server.url
    repo = make_repo(tmp_path_factory.mktemp("printing") / "p", {"fit.py": PRINTING})
    ids = []
    for c in ("1.0", "1.0", "0.01"):
        out = _replab("run", "-e", "t-outputs-printed", "--no-autolog", "--",
                      sys.executable, "fit.py", c, cwd=repo)
        assert out.returncode == 0, out.stderr
        ids.append(_run_id(out.stderr))
    yield ids
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def client(mlflow_server):
    """A client of the session's server named explicitly: mlflow's process-wide tracking URI
    may still name a server an earlier module stopped."""
    return MlflowClient(tracking_uri=mlflow_server.url)


def test_a_script_that_only_prints_is_the_same_when_replayed(printed_runs, client):
    (a, spec_a), (b, spec_b) = (_printed(client, r) for r in printed_runs[:2])
    assert a != b  # timestamps, pids, temp paths and durations really differ
    assert outputs.streams_for(spec_a) == ["stdout"]
    res = outputs.compare_printed(a, b, rel=0.0, abs_=0.0, masks=outputs.masks_for(spec_a),
                                  original_paths=outputs.paths_for(spec_a),
                                  replay_paths=outputs.paths_for(spec_b))
    assert res.status == outputs.SAME, res.summary()
    assert res.lines_compared >= 6 and res.numbers_compared >= 2


def test_a_printed_number_moved_beyond_tolerance_differs_naming_the_line(printed_runs, client):
    a, _ = _printed(client, printed_runs[0])
    c, _ = _printed(client, printed_runs[2])
    res = outputs.compare_printed(a, c, rel=5e-2, abs_=1e-2)
    assert res.status == outputs.DIFFERS
    lines = {m.original.split(" 0.")[0] for m in res.mismatches}
    assert "test accuracy" in lines or "train accuracy" in lines, res.mismatches
    assert "accuracy" in res.summary()
    # the unmasked timestamps/pids/paths would differ too: the masks are what keeps it fair
    raw = outputs.compare_printed(a, _printed(client, printed_runs[1])[0], rel=0, abs_=0,
                                  masks=[])
    assert raw.status == outputs.DIFFERS


def test_within_tolerance_and_user_masks():
    a = "loss 0.5000 step 10\nseed-run abc123 ok\n"
    b = "loss 0.5004 step 10\nseed-run zzz999 ok\n"
    res = outputs.compare_printed(a, b, rel=1e-3, abs_=0,
                                  masks=outputs.resolve_masks([r"tag=run \w+"]))
    assert res.status == outputs.WITHIN and res.lines_within == 1
    assert outputs.compare_printed(a, b, rel=1e-3, abs_=0).status == outputs.DIFFERS
    assert outputs.compare_printed(a, b, rel=1e-5, abs_=0,
                                   masks=outputs.resolve_masks([r"tag=run \w+"])
                                   ).status == outputs.DIFFERS


def test_an_extra_line_is_one_mismatch_not_a_shift():
    a = "".join(f"epoch {i} loss {1 / (i + 1):.4f}\n" for i in range(20))
    lines = a.splitlines(keepends=True)
    b = "".join(lines[:5] + ["UserWarning: something\n"] + lines[5:])
    res = outputs.compare_printed(a, b, rel=0, abs_=0)
    assert res.mismatch_count == 1 and res.mismatches[0].reason == "only in the replay"
    assert res.lines_compared == 20


def test_progress_bars_colours_and_blank_lines_are_normalized():
    a = "\x1b[32mfit\x1b[0m\n\n 50%|###  | 5/10 [00:01<00:01, 4.1it/s]\r100%|#####| 10/10 " \
        "[00:02<00:00, 4.9it/s]\nacc 0.9\n"
    b = "fit\n100%|#####| 10/10 [00:09<00:00, 1.1it/s]\nacc 0.9\n"
    assert outputs.compare_printed(a, b, rel=0, abs_=0).status == outputs.SAME


def test_bad_masks_are_clear_errors():
    with pytest.raises(ConfigError, match="no default mask named nope"):
        outputs.resolve_masks(drop=["nope"])
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        outputs.resolve_masks(["x=("])
    assert outputs.resolve_masks(drop=["all"]) == []


@pytest.fixture(scope="module")
def file_runs(mlflow_server, tmp_path_factory):
    """`replab run`s of a script writing CSV/JSON/NPY outputs: scale 1, 1, 1+1e-7, 1.5."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server.url
    repo = make_repo(tmp_path_factory.mktemp("writing") / "p", {"write.py": WRITING})
    ids = []
    for scale in ("1.0", "1.0", "1.0000001", "1.5"):
        r = runner.run_command([sys.executable, "write.py", scale], cwd=repo,
                               experiment="t-outputs-files", autolog=False, echo=False,
                               output_dirs=["results"])
        assert r.returncode == 0
        ids.append(r.run_id)
    auto = _replab("run", "-e", "t-outputs-files", "--no-autolog", "--",
                   sys.executable, "write.py", "1.0", cwd=repo)
    assert auto.returncode == 0, auto.stderr
    ids.append(_run_id(auto.stderr))
    yield ids
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_output_files_are_recorded_with_hashes(file_runs, client):
    spec = outputs.read_spec(_text(client, file_runs[0], outputs.SPEC))
    assert spec["output_dirs"] == ["results"]
    names = {f["path"]: f for f in spec["files"]}
    assert set(names) == {"results/preds.npy", "results/metrics.csv", "results/summary.json"}
    assert all(len(f["sha256"]) == 64 and f["artifact"] for f in names.values())
    # without --outputs: the files the program wrote, wherever under its directory
    auto = outputs.read_spec(_text(client, file_runs[4], outputs.SPEC))
    assert {f["path"] for f in auto["files"]} == set(names) | {"notes.txt"}
    assert outputs.run_options(spec) == ["--outputs", "results"]


def test_output_files_identical_within_and_beyond_tolerance(file_runs, client, tmp_path):
    base, same, close, far, _ = (_files(client, r, tmp_path) for r in file_runs)
    rows = outputs.compare_files(base, same, **STD)
    assert {c.status for c in rows} == {outputs.SAME} and len(rows) == 3
    rows = {c.path: c for c in outputs.compare_files(base, close, **STD)}
    assert {c.status for c in rows.values()} == {outputs.WITHIN}, rows
    assert rows["results/preds.npy"].how == "npy" and rows["results/preds.npy"].values_compared \
        == 50
    assert rows["results/metrics.csv"].how == "csv" and rows["results/summary.json"].how == "json"
    rows = {c.path: c for c in outputs.compare_files(base, far, **STD)}
    assert {c.status for c in rows.values()} == {outputs.DIFFERS}
    assert "accuracy" in rows["results/summary.json"].detail
    assert "row 2 col 2" in rows["results/metrics.csv"].detail
    # the same change passes a loose enough tolerance
    loose = outputs.compare_files(base, far, rel=0.5, abs_=0)
    assert {c.status for c in loose} == {outputs.WITHIN}


def test_missing_files_and_unknown_formats(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "m.bin").write_bytes(b"\x00\x01")
    (b / "m.bin").write_bytes(b"\x00\x02")
    (a / "only.csv").write_text("x\n1\n")
    np.save(b / "new.npy", np.zeros(3))
    rows = {c.path: c.status for c in outputs.compare_files(
        {"m.bin": a / "m.bin", "only.csv": a / "only.csv"},
        {"m.bin": b / "m.bin", "new.npy": b / "new.npy"}, rel=1, abs_=1)}
    assert rows == {"m.bin": outputs.DIFFERS, "only.csv": outputs.MISSING_REPLAY,
                    "new.npy": outputs.MISSING_ORIGINAL}
    big = outputs.RecordedFile("0" * 64, 10**9)
    (row,) = outputs.compare_files({"x.npy": big}, {"x.npy": b / "new.npy"}, rel=1, abs_=1)
    assert row.status == outputs.DIFFERS and "not kept" in row.detail


def test_no_output_evidence_is_recorded(mlflow_server, client, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    repo = make_repo(tmp_path / "p", {"w.py": "open('out.txt', 'w').write('1')\nprint(1)\n"})
    r = runner.run_command([sys.executable, "w.py"], cwd=repo, experiment="t-outputs-off",
                           autolog=False, echo=False, output_evidence=False)
    assert r.returncode == 0
    spec = outputs.read_spec(_text(client, r.run_id, outputs.SPEC))
    assert spec == {"version": 1, "evidence": False}
    assert outputs.streams_for(spec) == []
