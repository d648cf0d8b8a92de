"""Run the numbered notebooks headless, in order, through papermill.

One parameters file feeds every notebook; each notebook receives only the parameters its
``parameters`` cell declares. Executed notebooks land in ``<workdir>/runs/<stamp>/``. On a
failure the series stops, the executed notebook is kept, and :class:`NotebookFailed` names
the notebook and the cell (as papermill does, evidence first, then the error).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import parampaths
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

# Headless kernels log nothing below CRITICAL to the console: ipykernel warns on every start
# that it listens on TCP without encryption (it binds 127.0.0.1, papermill's kernel manager
# chooses the transport), and jupyter_client interrupts (SIGINT) every kernel it shuts down,
# which ipykernel logs as "KeyboardInterrupt caught in kernel". Neither is the notebook's
# doing; a cell's errors are in the executed notebook and in NotebookFailed.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]


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
    workdir: str = ""

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


def check_known(params: Mapping[str, Any], declared: Mapping[str, set[str]]) -> None:
    """Raise ConfigError for a parameter no notebook of the series declares, naming the
    closest declared one (a typo must not be ignored silently)."""
    known = set().union(*declared.values()) | {"workdir"}
    problems = []
    for key in sorted(set(params) - known):
        near = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(known))}"
        problems.append((key, f"not a parameter of any notebook in the series; {hint}"))
    if problems:
        raise ConfigError(problems, source="the series parameters")


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
    base: str | os.PathLike | None = None,
) -> SeriesResult:
    """Execute the selected notebooks in order with ``params``.

    ``workdir`` (default: ``params['workdir']`` or ``work``) and every other path parameter
    (``repo``, ``clouds_file``, keys, a bundle ``run``; see :mod:`replab.parampaths`) are made
    absolute against ``base`` (default: the current directory) and passed to the notebooks
    that declare them, so an executed notebook re-runs from anywhere. Raises ConfigError for
    bad selectors and for a parameter no notebook of the series declares (before running
    anything); NotebookFailed at the first failing notebook, after writing its executed copy.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    root = Path(root) if root else default_root()
    params = dict(params or {})
    params["workdir"] = workdir or params.get("workdir") or "work"
    params = parampaths.absolute_paths(params, base)
    wd = Path(params["workdir"])
    every = find_notebooks(root)
    notebooks = select(every, only, start)
    if not notebooks:
        raise ConfigError([("notebooks", f"no numbered notebooks found in {root}")])
    declared = {nb.stem: declared_parameters(nb) for nb in every}
    check_known(params, declared)
    stamp = stamp or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = wd / "runs" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    result = SeriesResult(run_dir=str(run_dir), runs=[], workdir=str(wd))
    for i, nb in enumerate(notebooks, 1):
        given = {k: v for k, v in params.items() if k in declared[nb.stem]}
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
                extra_arguments=KERNEL_ARGUMENTS,
            )
        except KeyboardInterrupt as exc:
            # nbclient interrupts the kernel, whose cell (a lab launch, say) cleans up after
            # itself; the user gets one line, not the kernel client's ZMQ traceback.
            result.runs.append(NotebookRun(nb.stem, str(out), time.monotonic() - t0, False,
                                           given))
            say(f"[{i}/{len(notebooks)}] {nb.stem} interrupted")
            raise SeriesInterrupted(f"interrupted during {nb.stem}; its partial output is "
                                    f"{out}; re-run the series to continue") from exc
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
    return result


class SeriesInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM turned into it) during a notebook; the message says which."""


def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    return " | ".join(lines[:6]) if lines else ""
