"""0_configure executed headless by papermill."""

import json

import pytest
import yaml
from papermill.exceptions import PapermillExecutionError

from replab import config
from tests.notebooks import execute, outputs_text


def test_valid_parameters_write_the_config_asked_for(tmp_path):
    wd = tmp_path / "wd"
    params = {"experiment": "mnist", "repository": "git@gitlab.com:grp/sub/mnist.git",
              "frameworks": "pytorch,lightning", "site": "CHI@UC", "node_type": "gpu_a100_pcie",
              "lease_hours": 48, "mlflow_backend": "postgresql", "workdir": str(wd)}
    execute("0_configure.ipynb", tmp_path / "out.ipynb", **params)
    cfg = config.load(wd)
    assert cfg == config.from_parameters(params)
    assert (cfg.node_type, cfg.lease_hours, cfg.frameworks) == (
        "gpu_a100_pcie", 48, ("pytorch", "lightning"))
    assert yaml.safe_load((wd / "params.yaml").read_text())["experiment"] == "mnist"
    readme = (wd / "README.md").read_text()
    assert "mnist" in readme and "Next steps" in readme
    shown = outputs_text(tmp_path / "out.ipynb")
    assert "gpu_a100_pcie" in shown and "CHI@UC" in shown


def test_invalid_parameters_fail_and_the_notebook_shows_the_config_error(tmp_path):
    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError) as err:
        execute("0_configure.ipynb", out, experiment="bad name", site="CHI@UC",
                gpu_vendor="amd", workdir=str(tmp_path / "wd"))
    assert err.value.ename == "ConfigError"
    shown = outputs_text(out)
    assert "experiment: 'bad name'" in shown and "gpu_vendor: 'amd'" in shown
    assert not (tmp_path / "wd" / "config.yaml").exists()


def test_headless_without_parameters_never_waits_and_says_what_to_do(tmp_path):
    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError):
        execute("0_configure.ipynb", out, workdir=str(tmp_path / "wd"), interactive=False)
    assert "experiment: required" in outputs_text(out)


def test_run_all_with_the_form_stops_after_it_in_one_line_without_a_traceback(tmp_path):
    """What Run All does interactively: the form is shown (a kernel never waits on it), the
    next cell stops the run with one line instead of a ConfigError traceback."""
    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError) as err:
        execute("0_configure.ipynb", out, workdir=str(tmp_path / "wd"))
    assert err.value.ename == "FormNotSaved"
    shown = outputs_text(out)
    assert "waiting for the form above: fill it in and press Validate and save" in shown
    assert "ConfigError" not in shown and "Traceback" not in shown
    failing = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])
               if o.get("output_type") == "error"]
    assert len(failing) == 1 and len(failing[0]["traceback"]) == 1
    assert not (tmp_path / "wd" / "config.yaml").exists()


def test_headless_shows_the_plan_once(tmp_path):
    out = tmp_path / "out.ipynb"
    execute("0_configure.ipynb", out, experiment="once", frameworks="sklearn", site="local",
            workdir=str(tmp_path / "wd"), interactive=False)
    assert outputs_text(out).count("What the next notebooks will create") == 1
