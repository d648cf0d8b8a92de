"""The entrypoint capture: scripts, modules, commands, and notebooks run by papermill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from replab.capture import collect
from replab.capture.entrypoint import literal_assignments, parse_papermill_argv
from tests.capture_support import make_repo

SECRET = "tok-" + "S3cr3t" * 4
CAPTURE_SCRIPT = (
    "from replab.capture import collect, manifest_json\n"
    "print(manifest_json(collect(['entrypoint'])))\n"
)


def run_json(args: list[str], cwd: Path, env: dict | None = None) -> dict:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout)["captures"]["entrypoint"]


def test_script_path_and_argv_relative_to_repo(tmp_path):
    repo = make_repo(tmp_path / "repo", {"scripts/train.py": CAPTURE_SCRIPT})
    entry = run_json([sys.executable, "scripts/train.py", "--lr", "0.1", "--token", SECRET],
                     cwd=repo)
    assert entry["kind"] == "script" and entry["path"] == "scripts/train.py"
    assert entry["argv"][:3] == ["--lr", "0.1", "--token"] and SECRET not in entry["argv"][3]
    assert entry["cwd"] == "." and entry["root"] == os.path.realpath(repo)
    assert len(entry["sha256"]) == 64

    entry = run_json([sys.executable, "train.py", "--lr", "0.2"], cwd=repo / "scripts")
    assert entry["path"] == "scripts/train.py" and entry["cwd"] == "scripts"
    assert entry["argv"] == ["--lr", "0.2"]


def test_script_outside_a_repo_is_absolute(tmp_path):
    script = tmp_path / "plain" / "run.py"
    script.parent.mkdir()
    script.write_text(CAPTURE_SCRIPT)
    entry = run_json([sys.executable, str(script), "-v"], cwd=script.parent)
    assert entry["kind"] == "script" and entry["path"] == str(script.resolve())
    assert entry["root"] is None and entry["argv"] == ["-v"]


def test_command_mode(tmp_path):
    repo = make_repo(tmp_path / "repo")
    entry = collect(["entrypoint"], repo=str(repo),
                    command=["python", "train.py", "--api-key", SECRET])["captures"]["entrypoint"]
    assert entry["kind"] == "command"
    assert entry["command"][:3] == ["python", "train.py", "--api-key"]
    assert SECRET not in json.dumps(entry)


def test_outside_a_kernel_notebook_variables_are_ignored(monkeypatch):
    monkeypatch.setenv("REPLAB_NOTEBOOK", "/somewhere/nb.ipynb")  # inherited from a notebook
    entry = collect(["entrypoint"])["captures"]["entrypoint"]
    assert entry["kind"] != "notebook"


def test_notebook_path_option_outside_a_kernel(tmp_path):
    repo = make_repo(tmp_path / "repo")
    nb_path = write_notebook(repo / "nbs" / "exp.ipynb")
    entry = collect(["entrypoint"], repo=str(repo), notebook_path=str(nb_path),
                    parameters={"lr": 0.5, "password": "hunter2hunter2"})["captures"]["entrypoint"]
    assert entry["kind"] == "notebook" and entry["path"] == "nbs/exp.ipynb"
    assert entry["detected_by"] == "option" and entry["parameters_from"] == "option"
    assert entry["parameters"]["lr"] == 0.5 and "hunter2" not in json.dumps(entry)
    assert entry["default_parameters"]["lr"] == 0.01
    assert "collect(" in entry["source"] and entry["kernel"] == "python3"
    assert "default-token-value" not in json.dumps(entry)


def test_parse_papermill_argv():
    assert parse_papermill_argv(["/v/bin/python", "/v/bin/papermill", "in.ipynb", "out.ipynb",
                                 "-p", "lr", "0.1", "-k", "python3", "--log-output"]) == (
        "in.ipynb", "out.ipynb")
    assert parse_papermill_argv(["papermill", "-p", "a", "b.ipynb", "x.ipynb", "y.ipynb"]) == (
        "x.ipynb", "y.ipynb")
    assert parse_papermill_argv(["papermill", "in.ipynb"]) == ("in.ipynb", None)
    assert parse_papermill_argv(["python", "train.py"]) is None


def test_literal_assignments():
    src = "# Parameters\nlr = 0.1\nname: str = 'x'\nlayers = [1, 2]\nf = dict(a=1)\nimport os\n"
    assert literal_assignments(src) == {"lr": 0.1, "name": "x", "layers": [1, 2],
                                        "f": "dict(a=1)"}
    assert literal_assignments("not python (") == {}


# --- notebooks executed by papermill --------------------------------------------------------

def write_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'lr = 0.01\nepochs = 1\nout = "manifest.json"\napi_token = "default-token-value"')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "from replab.capture import collect, manifest_json\n"
        "with open(out, 'w') as fh:\n"
        "    fh.write(manifest_json(collect(['entrypoint'])))\n")
    nb.cells = [nbformat.v4.new_markdown_cell("# Experiment"), params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def nb_repo(tmp_path):
    repo = make_repo(tmp_path / "repo")
    write_notebook(repo / "nbs" / "train.ipynb")
    (repo / "runs").mkdir()
    return repo


def assert_not_ipykernel(entry: dict):
    text = json.dumps(entry)
    assert "ipykernel_launcher" not in text and "ipykernel" not in str(entry.get("path"))


@pytest.mark.slow
def test_papermill_cli_records_notebook_and_parameters(nb_repo):
    papermill = Path(sys.executable).with_name("papermill")
    cmd = [str(papermill) if papermill.exists() else "papermill", "nbs/train.ipynb",
           "runs/train.out.ipynb", "-p", "lr", "0.1", "-p", "api_token", SECRET,
           "-p", "out", "runs/manifest.json", "--no-progress-bar"]
    subprocess.run(cmd, cwd=nb_repo, check=True, capture_output=True)
    manifest = json.loads((nb_repo / "runs" / "manifest.json").read_text())
    entry = manifest["captures"]["entrypoint"]
    assert entry["kind"] == "notebook" and entry["in_kernel"] is True
    assert entry["path"] == "nbs/train.ipynb"
    assert entry["executed_path"] == "runs/train.out.ipynb"
    assert entry["detected_by"] == "papermill-cli"
    assert entry["parameters"]["lr"] == 0.1 and entry["parameters"]["out"] == "runs/manifest.json"
    assert entry["parameters_from"] == "papermill-metadata"
    assert entry["default_parameters"]["lr"] == 0.01
    assert "collect(['entrypoint'])" in entry["source"]
    assert "default-token-value" not in entry["source"]
    assert entry["root"] == os.path.realpath(nb_repo) and entry["cwd"] == "."
    assert SECRET not in json.dumps(manifest)
    assert_not_ipykernel(entry)


@pytest.mark.slow
def test_papermill_api_with_replab_notebook_variable(nb_repo, monkeypatch):
    import papermill as pm

    out = nb_repo / "runs" / "api.ipynb"
    monkeypatch.setenv("REPLAB_NOTEBOOK", str(out))  # what the series runner sets
    pm.execute_notebook(str(nb_repo / "nbs" / "train.ipynb"), str(out), cwd=str(nb_repo),
                        parameters={"lr": 0.2, "out": "runs/m2.json"}, progress_bar=False)
    entry = json.loads((nb_repo / "runs" / "m2.json").read_text())["captures"]["entrypoint"]
    assert entry["path"] == "nbs/train.ipynb" and entry["executed_path"] == "runs/api.ipynb"
    assert entry["detected_by"] == "env:REPLAB_NOTEBOOK"
    assert entry["parameters"] == {"lr": 0.2, "out": "runs/m2.json"}
    assert_not_ipykernel(entry)


@pytest.mark.slow
def test_papermill_injected_paths(nb_repo):
    import papermill as pm

    src, out = nb_repo / "nbs" / "train.ipynb", nb_repo / "runs" / "inj.ipynb"
    pm.execute_notebook(str(src), str(out), cwd=str(nb_repo), progress_bar=False,
                        parameters={"PAPERMILL_INPUT_PATH": str(src),
                                    "PAPERMILL_OUTPUT_PATH": str(out),
                                    "lr": 0.3, "out": "runs/m3.json"})
    entry = json.loads((nb_repo / "runs" / "m3.json").read_text())["captures"]["entrypoint"]
    assert entry["detected_by"] == "papermill-parameters"
    assert entry["path"] == "nbs/train.ipynb" and entry["executed_path"] == "runs/inj.ipynb"
    assert entry["parameters"] == {"lr": 0.3, "out": "runs/m3.json"}


@pytest.mark.slow
def test_papermill_without_any_hint_still_finds_parameters(nb_repo, monkeypatch):
    import papermill as pm

    monkeypatch.delenv("REPLAB_NOTEBOOK", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    pm.execute_notebook(str(nb_repo / "nbs" / "train.ipynb"), str(nb_repo / "runs" / "x.ipynb"),
                        cwd=str(nb_repo), parameters={"lr": 0.4, "out": "runs/m4.json"},
                        progress_bar=False)
    entry = json.loads((nb_repo / "runs" / "m4.json").read_text())["captures"]["entrypoint"]
    assert entry["kind"] == "notebook" and entry["path"] is None
    assert entry["parameters"] == {"lr": 0.4, "out": "runs/m4.json"}
    assert entry["parameters_from"] == "kernel-history"
    assert "notebook_path" in entry["note"]
    assert_not_ipykernel(entry)
