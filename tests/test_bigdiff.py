"""Uncommitted diffs of any size: stored once (the artifact replab/diff.patch, not manifest
text), fetched and checked on replay, from the tracking server or from a bundle."""

from __future__ import annotations

import io
import json
import random
import tarfile
import time

import pytest
from mlflow.tracking import MlflowClient

from replab import replay, replayworkspace, tracking
from replab.capture import collect, manifest_json
from replab.capture import git as git_capture
from replab.errors import ReplayError
from tests.gitrepo import make_repo

MIB = 1024 * 1024


def _big_text(megabytes: int) -> str:
    """Deterministic text of about ``megabytes`` MiB (hex lines: nothing secret-looking)."""
    rng = random.Random(40)
    lines = (megabytes * MIB) // 74 + 1
    return "".join(f"{i:08d} {rng.getrandbits(256):064x}\n" for i in range(lines))


def _artifact_sizes(client, run_id, path=None) -> dict[str, int]:
    out = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            out.update(_artifact_sizes(client, run_id, item.path))
        else:
            out[item.path] = item.file_size
    return out


def _logged_manifest(client, run_id, tmp_path) -> tuple[dict, int]:
    local = client.download_artifacts(run_id, tracking.MANIFEST, str(tmp_path))
    text = open(local, encoding="utf-8").read()
    return json.loads(text), len(text.encode())


def _write_bundle(source, path, files: dict[str, bytes]):
    """A bundle as replay.export_bundle writes it: record.json, plus ``files``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"record.json": json.dumps(source.to_dict()).encode(),
                           **files}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def big_run(mlflow_server, tmp_path_factory):
    """A run tracked with a 40 MiB uncommitted change to a committed file (and a planted
    password in a small one): (run id, repository)."""
    repo = make_repo(tmp_path_factory.mktemp("bigdiff") / "proj",
                     {"big.txt": "seed\n", "settings.cfg": "epochs = 3\n"})
    (repo / "big.txt").write_text(_big_text(40))
    (repo / "settings.cfg").write_text('epochs = 3\npassword = "Big-Diff-Pw-9f1e"\n')
    with tracking.start_run(experiment="t-bigdiff", repo=repo,
                            tracking_uri=mlflow_server.url) as run:
        run.log_metrics({"loss": 1.0})
    return run.run_id, repo


def test_the_diff_artifact_is_where_the_run_logs_its_attachments():
    assert tracking.DIFF == f"{tracking.ARTIFACT_DIR}/{git_capture.DIFF_ATTACHMENT}"


def test_a_40_mib_diff_is_stored_once_and_rebuilt_byte_for_byte(big_run, mlflow_server,
                                                                tmp_path):
    run_id, repo = big_run
    client = MlflowClient(mlflow_server.url)
    manifest, manifest_size = _logged_manifest(client, run_id, tmp_path)
    git = manifest["captures"]["git"]
    assert git["diff"] is None and git["diff_attachment"] == "diff.patch"
    assert git["diff_bytes"] > 40 * MIB and git["diff_secrets_masked"] == 1
    sizes = _artifact_sizes(client, run_id)
    assert sizes[tracking.DIFF] == git["diff_bytes"]
    # stored once: no other artifact (the manifest included) holds the diff's text
    assert [p for p, n in sizes.items() if n > MIB] == [tracking.DIFF]
    assert manifest_size < MIB and "diff_base64" not in git

    source = replay.fetch(run_id, tracking_uri=mlflow_server.url)
    ws = replay.rebuild_workspace(source, tmp_path / "ws", repo=repo)
    assert (ws / "big.txt").read_bytes() == (repo / "big.txt").read_bytes()
    # the replay gets the masked value: the planted password never left the machine
    assert (ws / "settings.cfg").read_text() == 'epochs = 3\npassword = "Big-…"\n'


def test_a_bundle_carrying_the_diff_rebuilds_it_with_no_server(big_run, mlflow_server,
                                                               tmp_path):
    run_id, repo = big_run
    client = MlflowClient(mlflow_server.url)
    source = replay.fetch(run_id, client=client)
    files = replayworkspace.bundle_files(source, client=client)
    assert list(files) == [tracking.DIFF]
    bundle = _write_bundle(source, tmp_path / "run.tar.gz", files)
    loaded = replay.load_bundle(bundle)
    ws = replay.rebuild_workspace(loaded, tmp_path / "ws", repo=repo)
    assert (ws / "big.txt").read_bytes() == (repo / "big.txt").read_bytes()


@pytest.fixture
def small_run(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "small", {"train.py": "lr = 0.1\n"})
    (repo / "train.py").write_text("lr = 0.2\n")
    with tracking.start_run(experiment="t-bigdiff", repo=repo) as run:
        pass
    return replay.fetch(run.run_id), repo


def test_a_bundle_without_the_diff_names_the_way_out(small_run, tmp_path):
    source, repo = small_run
    bundle = _write_bundle(source, tmp_path / "old.tar.gz", {})  # only the record
    with pytest.raises(ReplayError, match=r"does not carry .*replab/diff\.patch.*export it "
                                          r"again"):
        replay.rebuild_workspace(replay.load_bundle(bundle), tmp_path / "ws", repo=repo)
    assert not (tmp_path / "ws").exists()


def test_a_diff_that_does_not_match_its_hash_is_refused(small_run, tmp_path):
    source, repo = small_run
    diff = replayworkspace.recorded_diff(source)
    assert b"+lr = 0.2" in diff
    bundle = _write_bundle(source, tmp_path / "bad.tar.gz",
                           {tracking.DIFF: diff.replace(b"0.2", b"0.3")})
    with pytest.raises(ReplayError, match="does not match its sha256"):
        replay.rebuild_workspace(replay.load_bundle(bundle), tmp_path / "ws", repo=repo)
    assert not (tmp_path / "ws").exists()


def test_an_inline_diff_is_moved_out_of_the_manifest_and_older_records_still_replay(
        tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "proj", {"train.py": "lr = 0.1\n"})
    (repo / "train.py").write_text("lr = 0.2\n")
    manifest = collect(["git"], repo=str(repo))  # no artifacts dir: the diff is inline
    inline = manifest["captures"]["git"]["diff"]
    client = MlflowClient()
    with tracking.start_run(experiment="t-bigdiff", capture=False) as run:
        tracking.record_manifest(run, manifest)
    logged, _ = _logged_manifest(client, run.run_id, tmp_path)
    assert logged["captures"]["git"]["diff"] is None
    assert logged["captures"]["git"]["diff_attachment"] == "diff.patch"
    local = client.download_artifacts(run.run_id, tracking.DIFF, str(tmp_path))
    assert open(local, "rb").read() == inline.encode()

    # a record of an older replab: the manifest holds the diff inline, read as it is
    with tracking.start_run(experiment="t-bigdiff", capture=False) as old:
        old.log_text(manifest_json(manifest, indent=1), tracking.MANIFEST)
    ws = replay.rebuild_workspace(replay.fetch(old.run_id), tmp_path / "ws", repo=repo)
    assert (ws / "train.py").read_text() == "lr = 0.2\n"

    # ...and its big diff, kept as the attachment git-diff.patch, is replayable now
    big = collect(["git"], repo=str(repo), artifacts_dir=str(tmp_path / "att"))
    big["captures"]["git"]["diff_attachment"] = "git-diff.patch"
    (tmp_path / "att" / "diff.patch").rename(tmp_path / "att" / "git-diff.patch")
    with tracking.start_run(experiment="t-bigdiff", capture=False) as older:
        older.log_text(manifest_json(big, indent=1), tracking.MANIFEST)
        older.log_artifact(tmp_path / "att" / "git-diff.patch", tracking.ARTIFACT_DIR)
    ws = replay.rebuild_workspace(replay.fetch(older.run_id), tmp_path / "ws2", repo=repo)
    assert (ws / "train.py").read_text() == "lr = 0.2\n"
