"""replab.tracking against a real MLflow server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from replab import tracking
from replab.errors import CloudError
from tests.gitrepo import git, make_repo

TOKEN = "ghp_plantedTOKEN1234567890abcdefXYZ"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYplantedKEY"


def _all_artifacts(client, run_id, path=None):
    out = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            out.update(_all_artifacts(client, run_id, item.path))
        else:
            local = client.download_artifacts(run_id, item.path)
            out[item.path] = Path(local).read_bytes().decode("utf-8", "replace")
    return out


@pytest.fixture
def repo(tmp_path):
    r = make_repo(tmp_path / "proj", {"train.py": "print(1)\n", "lib.py": "x = 1\n"},
                  remote=f"https://oauth2:{TOKEN}@gitlab.example.org/grp/proj.git")
    (r / "train.py").write_text("print(2)\n")  # unstaged change
    (r / "notes.txt").write_text("untracked notes\n")
    return r


def test_run_records_params_manifest_lock_diff_untracked_and_tags(tracking_uri, repo):
    with tracking.start_run(experiment="t-record", params={"lr": 0.1, "layers": [2, 3]},
                            seed=7, repo=repo) as run:
        run.log_metrics({"loss": 1.0})
    client = MlflowClient()
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params == {"lr": "0.1", "layers": "[2, 3]"}
    tags = r.data.tags
    assert tags[tracking.TAG_COMMIT] == git(repo, "rev-parse", "HEAD")
    assert tags[tracking.TAG_DIRTY] == "true"
    assert tags[tracking.TAG_PYTHON].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}")
    assert tags[tracking.TAG_GPU] == "none" and tags[tracking.TAG_SEED] == "7"
    assert len(tags[tracking.TAG_LOCK_HASH]) >= 16
    arts = _all_artifacts(client, run.run_id)
    manifest = json.loads(arts[tracking.MANIFEST])
    assert manifest["schema_version"] == 1 and "git" in manifest["captures"]
    assert "print(2)" in arts[tracking.DIFF]
    assert "mlflow==" in arts[tracking.LOCK]
    assert "untracked notes" in arts[tracking.UNTRACKED]
    # the readable summary beside the raw manifest, from the first run on
    summary = arts["replab/environment.md"]
    assert git(repo, "rev-parse", "HEAD")[:12] in summary
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in summary
    assert "<html" in arts["replab/environment.html"].lower()


def test_metrics_are_batched_and_every_point_arrives(tracking_uri):
    with tracking.start_run(experiment="t-batch", capture=False) as run:
        for i in range(2500):
            run.log_metrics({"loss": 1.0 / (i + 1), "acc": i / 2500}, step=i)
        assert len(run._buffer) < tracking.BATCH  # flushed in batches while running
    hist = MlflowClient().get_metric_history(run.run_id, "loss")
    assert len(hist) == 2500 and sorted(m.step for m in hist) == list(range(2500))


def test_exception_flushes_metrics_marks_failed_and_attaches_traceback(tracking_uri):
    with pytest.raises(ZeroDivisionError):
        with tracking.start_run(experiment="t-fail", capture=False) as run:
            for i in range(1234):
                run.log_metric("loss", float(i))
            raise ZeroDivisionError("lost in training")
    client = MlflowClient()
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert len(client.get_metric_history(run.run_id, "loss")) == 1234
    tb = _all_artifacts(client, run.run_id)[tracking.TRACEBACK]
    assert "ZeroDivisionError" in tb


def test_planted_secrets_appear_in_no_param_tag_or_artifact(tracking_uri, repo, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI_EXTRA", f"https://user:{TOKEN}@host/x")
    with tracking.start_run(experiment="t-secret", params={"lr": 1}, repo=repo) as run:
        tracking.log_git()
        tracking.log_python()
    client = MlflowClient()
    r = client.get_run(run.run_id)
    blobs = [json.dumps(r.data.params), json.dumps(r.data.tags),
             *_all_artifacts(client, run.run_id).values()]
    for blob in blobs:
        assert TOKEN not in blob and AWS_SECRET not in blob
    assert r.data.tags["mlflow.source.git.repoURL"] == "https://gitlab.example.org/grp/proj.git"


def test_unreachable_server_is_a_clear_error_before_training(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(CloudError, match="127.0.0.1:9"):
        with tracking.start_run(experiment="x", tracking_uri="http://127.0.0.1:9"):
            raise AssertionError("training must not start")


def test_compat_functions_need_an_active_run_and_log_into_it(tracking_uri, repo):
    with pytest.raises(RuntimeError, match="active run"):
        tracking.log_gpu()
    os.chdir(repo)
    with tracking.start_run(experiment="t-compat", capture=False) as run:
        gpu = tracking.log_gpu()
        info = tracking.log_git()
    assert gpu["vendor"] == "none" and info["commit"] == git(repo, "rev-parse", "HEAD")
    tags = MlflowClient().get_run(run.run_id).data.tags
    assert tags["replab.git.commit"] == info["commit"] and tags["replab.gpu.vendor"] == "none"


def test_replay_link_tag(tracking_uri):
    with tracking.start_run(experiment="t-link", capture=False) as original:
        pass
    with tracking.start_run(experiment="t-link", capture=False,
                            replay_of=original.run_id) as replay:
        pass
    tags = MlflowClient().get_run(replay.run_id).data.tags
    assert tags[tracking.TAG_REPLAY_OF] == original.run_id


def test_a_script_using_the_api_in_a_subprocess(tracking_uri, repo):
    script = repo / "fit.py"
    script.write_text(
        "import replab.tracking as t\n"
        "with t.start_run(experiment='t-script', params={'n': 3}, seed=1) as run:\n"
        "    run.log_metrics({'m': 0.5}, step=0)\n"
        "    print('RUN_ID=' + run.run_id)\n")
    out = subprocess.run([sys.executable, "fit.py", "--flag"], cwd=repo, capture_output=True,
                         text=True, env=dict(os.environ), timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = next(ln for ln in out.stdout.splitlines() if ln.startswith("RUN_ID="))[7:]
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags[tracking.TAG_ENTRYPOINT] == "fit.py"


def test_run_info_is_read_without_asking_the_server(tracking_uri):
    """Reading ``run.info`` (an attribute users expect to be free) makes no request: it
    still answers with the server gone; ``fetch_info()`` is the request."""
    from mlflow.tracking import MlflowClient

    with tracking.start_run("t-info", capture=False) as run:
        assert run.fetch_info().status == "RUNNING"
        live = run.client
        run.client = MlflowClient(tracking_uri="http://127.0.0.1:9")  # nothing listens
        try:
            assert run.info.run_id == run.run_id
            assert run.info.experiment_id == run.experiment_id
        finally:
            run.client = live
