"""Experiments and declared inputs as a user sees them in MLflow (real server)."""

from __future__ import annotations

import hashlib
import json

from mlflow.tracking import MlflowClient

from replab import tracking
from tests.gitrepo import make_repo


def _datasets(run_id: str) -> dict[str, object]:
    """{name: dataset} of a run's logged inputs."""
    inputs = MlflowClient().get_run(run_id).inputs.dataset_inputs
    return {d.dataset.name: d.dataset for d in inputs}


def _manifest(client: MlflowClient, run_id: str) -> dict:
    return json.loads(open(client.download_artifacts(run_id, tracking.MANIFEST)).read())


def test_a_new_experiment_is_a_classic_ml_experiment(tracking_uri):
    with tracking.start_run(experiment="t-kind-new", capture=False) as run:
        pass
    exp = MlflowClient().get_experiment(run.experiment_id)
    assert exp.tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"


def test_an_existing_experiment_gets_a_kind_only_when_it_has_none(tracking_uri):
    client = MlflowClient()
    bare = client.create_experiment("t-kind-bare")
    genai = client.create_experiment("t-kind-genai",
                                     tags={tracking.TAG_EXPERIMENT_KIND: "genai_development"})
    for name in ("t-kind-bare", "t-kind-genai"):
        with tracking.start_run(experiment=name, capture=False):
            pass
    assert client.get_experiment(bare).tags[tracking.TAG_EXPERIMENT_KIND] == (
        "custom_model_development")
    assert client.get_experiment(genai).tags[tracking.TAG_EXPERIMENT_KIND] == (
        "genai_development")  # the user's choice stands


def test_inputs_become_datasets_with_real_sources_and_the_manifest_digest(
        tracking_uri, tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "proj", {"train.py": "print(1)\n", "data/train.csv": "x\n1\n"})
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")  # relative paths are the repository's, not the cwd's
    inputs = ["../data/train.csv", str(repo / "data"), "sklearn:load_digits",
              "https://data.example/sets/set.tar?x=1", "s3://bucket/key.parquet",
              str(repo / "absent.csv")]
    with tracking.start_run(experiment="t-datasets", inputs=inputs, repo=repo) as run:
        pass
    client = MlflowClient()
    items = {i.get("path") or i["uri"]: i for i in _manifest(client, run.run_id)
             ["captures"]["inputs"]}
    ds = _datasets(run.run_id)
    assert set(ds) == {"train.csv", "data", "load_digits", "set.tar", "key.parquet"}

    csv = ds["train.csv"]
    assert csv.source_type == "local"
    assert json.loads(csv.source) == {"uri": str((repo / "data" / "train.csv").resolve())}
    assert csv.digest == hashlib.sha256(b"x\n1\n").hexdigest()[:36]
    assert items["data/train.csv"]["sha256"].startswith(csv.digest)
    assert ds["data"].source_type == "local" and items["data"]["sha256"].startswith(
        ds["data"].digest)

    digits = ds["load_digits"]
    assert digits.source_type == "sklearn"
    assert json.loads(digits.source) == {"uri": "sklearn:load_digits"}
    assert items["sklearn:load_digits"]["sha256"].startswith(digits.digest)
    assert len(digits.digest) == 36
    assert ds["set.tar"].source_type == "http"
    assert json.loads(ds["set.tar"].source)["url"] == "https://data.example/sets/set.tar?x=1"
    assert ds["key.parquet"].source_type == "s3"


def test_the_same_data_has_the_same_digest_in_every_run(tracking_uri, tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "proj", {"data.csv": "a\n"})
    runs = []
    for cwd in (repo, tmp_path):  # a replay runs from another directory
        monkeypatch.chdir(cwd)
        with tracking.start_run(experiment="t-datasets-stable", repo=repo,
                                inputs=[str(repo / "data.csv"), "sklearn:load_digits"]) as run:
            pass
        runs.append(_datasets(run.run_id))
    first, second = runs
    assert first["data.csv"].digest == second["data.csv"].digest
    assert first["load_digits"].digest == second["load_digits"].digest
    assert first["data.csv"].source == second["data.csv"].source
    (repo / "data.csv").write_text("b\n")
    with tracking.start_run(experiment="t-datasets-stable", repo=repo,
                            inputs=[str(repo / "data.csv")]) as run:
        pass
    assert _datasets(run.run_id)["data.csv"].digest != first["data.csv"].digest
