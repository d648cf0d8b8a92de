"""Helpers to execute notebooks with papermill in tests."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def execute(name: str, out: Path, **params):
    """Run ``ROOT/name`` with papermill; returns the executed notebook (dict)."""
    import papermill

    from replab.series import KERNEL_ARGUMENTS

    papermill.execute_notebook(str(ROOT / name), str(out), parameters=params, cwd=str(ROOT),
                               progress_bar=False, log_output=False,
                               extra_arguments=KERNEL_ARGUMENTS)
    return json.loads(out.read_text())


def outputs_text(nb_path: Path) -> str:
    """Every output of an executed notebook as one text (to search for words or secrets)."""
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") if isinstance(out.get("text"), str)
                         else "".join(out.get("text", [])))
            for value in out.get("data", {}).values():
                parts.append(value if isinstance(value, str) else json.dumps(value))
            parts.append(out.get("evalue", ""))
            parts += out.get("traceback", [])
    return "\n".join(parts)
