"""The artifact's own hygiene: notebook pairs in sync, no outputs, thin cells, lint
(trovi.json is loaded as Trovi's importer loads it in tests/test_cloud_audit.py)."""

import ast
import json
import re
import subprocess
import sys

import jupytext
import pytest

from tests.conftest import NOTEBOOKS, ROOT

PAIRS = sorted(ROOT.glob("[0-9]_*.py"))


def test_every_notebook_is_a_jupytext_pair():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.stem for p in NOTEBOOKS} == {p.stem for p in PAIRS}
    assert 'formats = "ipynb,py:percent"' in (ROOT / "jupytext.toml").read_text()


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_is_in_sync(nb):
    from_ipynb = jupytext.read(nb)
    from_py = jupytext.read(nb.with_suffix(".py"))
    cells = lambda n: [(c.cell_type, c.source.strip()) for c in n.cells]  # noqa: E731
    assert cells(from_ipynb) == cells(from_py), f"run: jupytext --sync {nb.stem}.py"
    tags = lambda n: [c.metadata.get("tags", []) for c in n.cells]  # noqa: E731
    assert tags(from_ipynb) == tags(from_py)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(nb):
    data = json.loads(nb.read_text())
    for cell in data["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, nb.name
    assert data["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_with_parameters_first(nb):
    code = [c for c in jupytext.read(nb).cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell: parameters"
    for line in code[0].source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert re.match(r"^\w+: (str|int|float|bool) = .+  # .+$", line), line
    for cell in code:
        tree = ast.parse(cell.source)
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{nb.name}: move {defs[0].name} into lib/replab"
        if cell is not code[0]:
            assert len(cell.source.splitlines()) <= 15, f"{nb.name}: cell too long"


def test_papermill_reads_every_parameter_with_its_comment():
    import papermill

    for nb in NOTEBOOKS:
        params = papermill.inspect_notebook(str(nb))
        assert params and all(p["help"] for p in params.values()), nb.name


def test_ruff_is_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "lib", "tests", "bench",
                          "examples"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_requirements_are_pinned_and_install_replab():
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert "-e ." in lines and "-c constraints.txt" in lines
    for ln in lines:
        if not ln.startswith("-"):
            assert re.match(r"^[A-Za-z0-9_.\-\[\]]+==[\w.]+$", ln), ln


def test_gitignore_keeps_work_and_secrets_out():
    text = (ROOT / ".gitignore").read_text()
    for entry in ("work/", ".venv/", "secrets/", ".env", "rclone.conf", "clouds.yaml"):
        assert entry in text
