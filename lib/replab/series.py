"""Run the numbered notebooks headless, in order, through papermill.

One parameters file feeds every notebook; each notebook receives only the parameters its
``parameters`` cell declares. Executed notebooks land in ``<workdir>/runs/<stamp>/``. On a
failure the series stops, the executed notebook is kept, and :class:`NotebookFailed` names
the notebook and the cell (as papermill does, evidence first, then the error).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, NotebookFailed

log = logging.getLogger(__name__)


class _InjectedPathsFilter(logging.Filter):
    """Papermill warns about parameters a notebook does not declare; the injected paths
    never are declared (they are papermill's own --inject-paths convention)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "unknown parameter: PAPERMILL_" not in record.getMessage()


logging.getLogger("papermill").addFilter(_InjectedPathsFilter())

NOTEBOOK_RE = re.compile(r"^(\d+)_[A-Za-z0-9_]+\.ipynb$")
ROOT = Path(__file__).resolve().parents[2]  # the artifact's root (…/lib/replab -> …)


@dataclass
class NotebookRun:
    notebook: str
    output: str
    seconds: float
    ok: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class SeriesResult:
    run_dir: str
    runs: list[NotebookRun]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)


def default_root() -> Path:
    """The current directory when it holds numbered notebooks, else the artifact root."""
    cwd = Path.cwd()
    return cwd if find_notebooks(cwd) else ROOT


def find_notebooks(root: str | os.PathLike = ROOT) -> list[Path]:
    """The numbered top-level notebooks (``N_name.ipynb``) under ``root``, in order."""
    found = [p for p in Path(root).iterdir() if NOTEBOOK_RE.match(p.name)]
    return sorted(found, key=lambda p: (int(NOTEBOOK_RE.match(p.name).group(1)), p.name))


def select(notebooks: Sequence[Path], only: Sequence[str] | None = None,
           start: str | None = None) -> list[Path]:
    """Filter by ``only`` (numbers or names) and ``start`` (``--from``: number or name).

    Raises ConfigError when a selector matches no notebook.
    """
    def matches(nb: Path, sel: str) -> bool:
        sel = sel.strip()
        num = NOTEBOOK_RE.match(nb.name).group(1)
        return sel in (num, str(int(num)), nb.stem, nb.name)

    names = ", ".join(p.stem for p in notebooks)
    out = list(notebooks)
    if start is not None:
        idx = next((i for i, nb in enumerate(out) if matches(nb, start)), None)
        if idx is None:
            raise ConfigError([("--from", f"{start!r} matches no notebook; have: {names}")])
        out = out[idx:]
    if only:
        missing = [s for s in only if not any(matches(nb, s) for nb in notebooks)]
        if missing:
            raise ConfigError([("--only", f"{', '.join(missing)} match no notebook; "
                                          f"have: {names}")])
        out = [nb for nb in out if any(matches(nb, s) for s in only)]
    return out


def load_params(path: str | os.PathLike | None) -> dict[str, Any]:
    """Read a flat parameters YAML file. Raises ConfigError naming the file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise ConfigError([("--params", f"{p} does not exist")])
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([("--params", f"{p} is not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([("--params", f"{p} must hold a mapping of parameter: value")])
    return data


def declared_parameters(notebook: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def run_series(
    params: Mapping[str, Any] | None = None,
    *,
    root: str | os.PathLike | None = None,
    only: Sequence[str] | None = None,
    start: str | None = None,
    workdir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    kernel_name: str | None = None,
    stamp: str | None = None,
) -> SeriesResult:
    """Execute the selected notebooks in order with ``params``.

    ``workdir`` (default: ``params['workdir']`` or ``work``) is made absolute and passed to
    every notebook that declares it. Raises NotebookFailed at the first failing notebook,
    after writing its executed copy; ConfigError for bad selectors or parameters.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    root = Path(root) if root else default_root()
    params = dict(params or {})
    wd = Path(workdir or params.get("workdir") or "work").expanduser().resolve()
    params["workdir"] = str(wd)
    notebooks = select(find_notebooks(root), only, start)
    if not notebooks:
        raise ConfigError([("notebooks", f"no numbered notebooks found in {root}")])
    stamp = stamp or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = wd / "runs" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    result = SeriesResult(run_dir=str(run_dir), runs=[])
    unused = set(params) - {"workdir"}
    for i, nb in enumerate(notebooks, 1):
        declared = declared_parameters(nb)
        given = {k: v for k, v in params.items() if k in declared}
        unused -= set(given)
        out = run_dir / nb.name
        say(f"[{i}/{len(notebooks)}] {nb.stem} ...")
        t0 = time.monotonic()
        try:
            # As papermill's CLI --inject-paths: the kernel learns which notebook it runs,
            # so run manifests record the notebook, not ipykernel.
            paths = {"PAPERMILL_INPUT_PATH": str(nb), "PAPERMILL_OUTPUT_PATH": str(out)}
            papermill.execute_notebook(
                str(nb), str(out), parameters={**given, **paths}, cwd=str(Path(root)),
                kernel_name=kernel_name, progress_bar=False, log_output=False,
            )
        except PapermillExecutionError as exc:
            dt = time.monotonic() - t0
            result.runs.append(NotebookRun(nb.stem, str(out), dt, False, given))
            say(f"[{i}/{len(notebooks)}] {nb.stem} FAILED after {dt:.1f}s")
            shown = f" (In [{exc.exec_count}])" if exc.exec_count is not None else ""
            raise NotebookFailed(nb.stem, exc.cell_index + 1, str(out),
                                 f"{exc.ename}{shown}: {_first_line(exc.evalue)}") from exc
        dt = time.monotonic() - t0
        result.runs.append(NotebookRun(nb.stem, str(out), dt, True, given))
        say(f"[{i}/{len(notebooks)}] {nb.stem} ok ({dt:.1f}s) -> {out}")
    if unused:
        log.warning("parameters no notebook declares: %s", ", ".join(sorted(unused)))
    return result


def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    return " | ".join(lines[:6]) if lines else ""
