"""replab.replay: rebuild the workspace and environment of a tracked run and re-execute it."""

import json
import shutil
import sys
import tarfile

import pytest
from mlflow.tracking import MlflowClient

from replab import replay, tracking
from replab.errors import ReplayError
from tests.conftest import ROOT
from tests.gitrepo import git, make_repo, train_example


def _project(tmp_path):
    """A git repository holding the digits example, with an uncommitted change and an
    untracked file the training reads."""
    src = ROOT / "examples" / "digits"
    repo = make_repo(tmp_path / "proj", {"digits.py": (src / "digits.py").read_text(),
                                         "train.py": (src / "train.py").read_text()})
    # uncommitted: the default learning rate changes; untracked: a note the script reads
    train = repo / "train.py"
    train.write_text(train.read_text().replace('default=0.01', 'default=0.02'))
    (repo / "note.txt").write_text("epochs from an untracked file\n")
    return repo


def _curves(uri, run_id):
    c = MlflowClient(uri)
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k))
            for k in c.get_run(run_id).data.metrics}


def test_dirty_workspace_is_reproduced_from_the_record_alone(tracking_uri, tmp_path):
    repo = _project(tmp_path)
    original = train_example(repo, tracking_uri, "--seed", "2", "--epochs", "3")
    source = replay.fetch(original)
    assert source.params["lr"] == "0.02" and source.lock
    ws = replay.rebuild_workspace(source, tmp_path / "ws", repo=repo)
    assert "default=0.02" in (ws / "train.py").read_text()
    assert (ws / "note.txt").read_text() == "epochs from an untracked file\n"
    assert git(ws, "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
    shutil.rmtree(repo)  # the original checkout is gone: the replay does not need it
    python, mismatches = replay.ensure_environment(source.lock)
    assert python == sys.executable and mismatches == []
    ex = replay.execute(source, ws, python, tracking_uri=tracking_uri)
    assert ex.returncode == 0 and ex.new_run_id, ex.log_tail
    assert _curves(tracking_uri, ex.new_run_id) == _curves(tracking_uri, original)
    tags = MlflowClient(tracking_uri).get_run(ex.new_run_id).data.tags
    assert tags[tracking.TAG_REPLAY_OF] == original


def test_bundle_replays_with_no_tracking_server(tracking_uri, tmp_path):
    repo = _project(tmp_path)
    original = train_example(repo, tracking_uri, "--seed", "4", "--epochs", "2")
    bundle = replay.export_bundle(original, tmp_path / "run.tar.gz")
    # offline from here: a local sqlite store, no server
    offline = f"sqlite:///{tmp_path}/offline.db"
    source = replay.load(str(bundle))
    assert source.run_id == original and source.metrics["train_loss"]
    ws = replay.rebuild_workspace(source, tmp_path / "ws", repo=repo)
    ex = replay.execute(source, ws, sys.executable, tracking_uri=offline)
    assert ex.returncode == 0 and ex.new_run_id
    new = _curves(offline, ex.new_run_id)
    assert new == {k: sorted(map(tuple, v)) for k, v in source.metrics.items()}


def test_corrupt_or_missing_records_are_replay_errors(tracking_uri, tmp_path):
    with tracking.start_run(experiment="t-corrupt", capture=False) as run:
        run.log_text("{not json", tracking.MANIFEST)
    with pytest.raises(ReplayError, match="corrupt"):
        replay.fetch(run.run_id)
    with tracking.start_run(experiment="t-corrupt", capture=False) as bare:
        pass
    with pytest.raises(ReplayError, match="has no replab/manifest.json"):
        replay.fetch(bare.run_id)
    with pytest.raises(ReplayError, match="not found"):
        replay.fetch("0" * 32)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(__file__, arcname="other.txt")
    with pytest.raises(ReplayError, match="not a replab bundle"):
        replay.load_bundle(bad)


def test_unreachable_repository_or_commit_leaves_nothing_behind(tracking_uri, tmp_path):
    repo = _project(tmp_path)
    source = replay.fetch(train_example(repo, tracking_uri, "--epochs", "1"))
    dest = tmp_path / "ws"
    with pytest.raises(ReplayError, match="cannot clone the repository"):
        replay.rebuild_workspace(source, dest, repo=tmp_path / "no-such-repo")
    assert not dest.exists() and not list(tmp_path.glob(".ws*"))
    other = make_repo(tmp_path / "other", {"x.py": "pass\n"})
    with pytest.raises(ReplayError, match="is not in"):
        replay.rebuild_workspace(source, dest, repo=other)
    assert not dest.exists()
    source.manifest["captures"]["git"]["remote_url"] = None
    # no remote: the run's own working copy is cloned while it is on this machine...
    assert (replay.rebuild_workspace(source, dest) / "train.py").is_file()
    source.manifest["captures"]["git"]["root"] = str(tmp_path / "gone")
    with pytest.raises(ReplayError, match="no recorded remote.*not on this machine"):
        replay.rebuild_workspace(source, tmp_path / "ws2")  # ...and named when it is gone
    assert not (tmp_path / "ws2").exists()


def test_untracked_files_not_captured_are_named(tracking_uri, tmp_path):
    repo = _project(tmp_path)
    (repo / ".env").write_text("API_TOKEN=ghp_0123456789abcdefghijklmnopqrstuvwxyzAB\n")
    source = replay.fetch(train_example(repo, tracking_uri, "--epochs", "1"))
    with pytest.raises(ReplayError, match=r"\.env"):
        replay.rebuild_workspace(source, tmp_path / "ws", repo=repo)
    ws = replay.rebuild_workspace(source, tmp_path / "ws", repo=repo, allow_missing=True)
    assert not (ws / ".env").exists() and (ws / "note.txt").exists()


def test_a_different_lock_is_shown_and_the_environment_rebuilt_once(tmp_path):
    lock = "six==1.16.0\n"
    have = replay.lock_mismatches(lock)
    assert have and have[0].startswith("six: locked 1.16.0, have")
    lines = []
    python, mismatches = replay.ensure_environment(lock, cache=tmp_path, progress=lines.append)
    assert python != sys.executable and mismatches == have
    assert replay.lock_mismatches(lock, python) == []
    assert any("building an environment" in ln for ln in lines)
    again = []
    assert replay.ensure_environment(lock, cache=tmp_path, progress=again.append)[0] == python
    assert any("cached" in ln for ln in again) and not any("building" in ln for ln in again)
    with pytest.raises(ReplayError, match="does not install"):
        replay.ensure_environment("no-such-package-replab-test==9.9.9\n", cache=tmp_path)
    assert len(list((tmp_path / "envs").iterdir())) == 1  # the failed build left nothing


def test_latest_and_parse_lock(tracking_uri, tmp_path):
    repo = _project(tmp_path)
    first = train_example(repo, tracking_uri, "--epochs", "1", "--experiment", "t-latest")
    client = MlflowClient(tracking_uri)
    assert replay.resolve_run_id(client, "latest", "t-latest") == first
    with pytest.raises(ReplayError, match="no experiment"):
        replay.resolve_run_id(client, "latest", "t-nothing-here")
    assert replay.parse_lock("a==1\n-e pkg @ file:///x  # pkg==0.2\nb @ git+https://h/r@c  "
                             "# b==3\n") == {"a": "1", "pkg": "0.2", "b": "3"}
    assert json.dumps(replay.Source("r", None, {}, {}, {}, {"captures": {}}, None,
                                    "x").to_dict())
