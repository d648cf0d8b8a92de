"""The example projects: real training, tracked, deterministic or not as designed."""

import json
import os
import subprocess
import sys

import papermill
from mlflow.tracking import MlflowClient

from replab import tracking
from tests.conftest import ROOT
from tests.test_tracking import _all_artifacts

EXAMPLES = ROOT / "examples"


def _script(example, *args, env_uri):
    out = subprocess.run([sys.executable, "train.py", *args], cwd=EXAMPLES / example,
                         capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, MLFLOW_TRACKING_URI=env_uri))
    assert out.returncode == 0, out.stderr[-3000:]
    return next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("run "))


def _curves(run_id):
    client = MlflowClient()
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k),
                                                  key=lambda m: m.step)]
            for k in ("train_loss", "val_accuracy")}


def test_digits_is_deterministic_and_fully_recorded(tracking_uri):
    a = _script("digits", "--seed", "3", "--epochs", "5", env_uri=tracking_uri)
    b = _script("digits", "--seed", "3", "--epochs", "5", env_uri=tracking_uri)
    assert _curves(a) == _curves(b) and len(_curves(a)["train_loss"]) == 5
    arts = _all_artifacts(MlflowClient(), a)
    manifest = json.loads(arts[tracking.MANIFEST])
    assert manifest["captures"]["entrypoint"]["path"] == "examples/digits/train.py"
    assert manifest["captures"]["entrypoint"]["argv"] == ["--seed", "3", "--epochs", "5"]
    assert "scikit-learn==" in arts[tracking.LOCK]
    assert MlflowClient().get_run(a).data.tags[tracking.TAG_SEED] == "3"


def test_mlp_unseeded_switch_makes_runs_differ(tracking_uri):
    seeded = [_script("mlp", "--epochs", "4", env_uri=tracking_uri) for _ in range(2)]
    assert _curves(seeded[0]) == _curves(seeded[1])
    loose = [_script("mlp", "--epochs", "4", "--unseeded", env_uri=tracking_uri)
             for _ in range(2)]
    assert _curves(loose[0])["train_loss"] != _curves(loose[1])["train_loss"]


def test_example_notebook_records_the_notebook_as_entrypoint(tracking_uri, tmp_path):
    out = tmp_path / "executed.ipynb"
    src = EXAMPLES / "digits" / "train_notebook.ipynb"
    # what `papermill --inject-paths` does, through the Python API
    papermill.execute_notebook(str(src), str(out), cwd=str(EXAMPLES / "digits"),
                               parameters={"seed": 5, "epochs": 3,
                                           "PAPERMILL_INPUT_PATH": str(src),
                                           "PAPERMILL_OUTPUT_PATH": str(out)},
                               progress_bar=False)
    nb = json.loads(out.read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    run_id = next(ln.split()[1] for ln in text.splitlines() if ln.startswith("run "))
    r = MlflowClient().get_run(run_id)
    assert r.data.tags["mlflow.source.name"].endswith("train_notebook.ipynb")
    assert "ipykernel" not in r.data.tags["mlflow.source.name"]
    manifest = json.loads(_all_artifacts(MlflowClient(), run_id)[tracking.MANIFEST])
    entry = manifest["captures"]["entrypoint"]
    assert entry["kind"] == "notebook" and entry["parameters"] == {"seed": 5, "epochs": 3}
