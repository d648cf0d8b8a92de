"""The ``entrypoint`` capture: what was run, so a replay can run it again.

One of four kinds, paths relative to the repository root when inside it:

- ``command``: the option ``command=[...]`` (``replab run -- python train.py``), as given;
- ``notebook``: inside a Jupyter kernel. The notebook is found, first hit wins, from the
  option ``notebook_path``, the variable ``REPLAB_NOTEBOOK`` (set by the caller, e.g. the
  series runner), papermill's ``PAPERMILL_INPUT_PATH`` / ``PAPERMILL_OUTPUT_PATH`` parameters
  (``--inject-paths``), the papermill command line of the kernel's parent process, VS Code's
  ``__vsc_ipynb_file__``, and Jupyter's ``JPY_SESSION_NAME`` / connection file. Parameters come
  from the option ``parameters``, the executed notebook's papermill metadata, or the
  ``# Parameters`` cell papermill ran in this kernel. A kernel is never reported as
  ``ipykernel_launcher.py``;
- ``module``: ``python -m package.module args``;
- ``script``: ``python path/to/script.py args``.

Secrets on command lines and in parameters are hidden (:mod:`replab.redact`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections import namedtuple

from replab.capture._util import find_git_root, relative_to, sha256_file
from replab.capture.registry import Context, capture
from replab.redact import mask, redact_argv, redact_credentials, redact_params, secret_name

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

NOTEBOOK_SOURCE_MAX_BYTES = 1024 * 1024
_PM_TWO_VALUES = {"-p", "--parameters", "-r", "--parameters_raw"}
_PM_ONE_VALUE = {
    "-f", "--parameters_file", "-y", "--parameters_yaml", "-b", "--parameters_base64",
    "--engine", "--autosave-cell-every", "-k", "--kernel", "-l", "--language", "--cwd",
    "--stdout-file", "--stderr-file", "--log-level", "--start-timeout", "--start_timeout",
    "--execution-timeout",
}


class NotebookRef(namedtuple("NotebookRef", "path output detected_by", defaults=(None, None))):
    """Where a kernel's notebook was found: the source ``path`` and/or the executed copy
    (``output``), and how (``detected_by``). A namedtuple: importing dataclasses (with
    inspect and ast) would cost ``replab capture``'s start-up more than this module."""

    __slots__ = ()


def parse_papermill_argv(argv: list[str]) -> tuple[str | None, str | None] | None:
    """(input, output) notebook paths from a papermill command line, or None when it is not
    one. Pure."""
    start = None
    for i, arg in enumerate(argv[:4]):
        base = os.path.basename(arg)
        if base == "papermill" or base.startswith("papermill-") or arg == "papermill":
            start = i + 1
            break
    if start is None:
        return None
    positional: list[str] = []
    i = start
    while i < len(argv):
        arg = argv[i]
        if arg in _PM_TWO_VALUES:
            i += 3
            continue
        if arg in _PM_ONE_VALUE:
            i += 2
            continue
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
        i += 1
    if not positional:
        return None
    output = positional[1] if len(positional) > 1 and positional[1] != "-" else None
    return positional[0], output


def _parent_papermill() -> tuple[str | None, str | None] | None:
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as fh:
            argv = [os.fsdecode(a) for a in fh.read().split(b"\0") if a]
        cwd = os.readlink(f"/proc/{ppid}/cwd")
    except OSError:
        return None
    # "python -m papermill ..." and "/venv/bin/papermill ..." both end up here
    if len(argv) > 2 and argv[1] == "-m" and argv[2] == "papermill":
        argv = ["papermill", *argv[3:]]
    found = parse_papermill_argv(argv)
    if not found:
        return None
    return tuple(p if p is None or "://" in p else os.path.join(cwd, p) for p in found)


def _ipython() -> Any:
    module = sys.modules.get("IPython")
    if module is None:
        return None
    try:
        return module.get_ipython()
    except Exception:
        return None


def in_kernel() -> bool:
    """Whether this code runs inside a Jupyter kernel (ipykernel)."""
    shell = _ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _connection_session() -> str | None:
    module = sys.modules.get("ipykernel.connect")
    if module is None:
        return None
    try:
        with open(module.get_connection_file()) as fh:
            return json.load(fh).get("jupyter_session") or None
    except Exception:
        return None


def find_notebook(ctx: Context) -> NotebookRef | None:
    """Where the running notebook is, by the first method that answers (see module doc);
    None when none does. Raises nothing."""
    option = ctx.option("notebook_path")
    if option:
        return NotebookRef(os.fspath(option), detected_by="option")
    if not in_kernel():  # a script started from a notebook inherits REPLAB_NOTEBOOK: ignore it
        return None
    if os.environ.get("REPLAB_NOTEBOOK"):
        return NotebookRef(os.environ["REPLAB_NOTEBOOK"], detected_by="env:REPLAB_NOTEBOOK")
    user_ns = getattr(_ipython(), "user_ns", None) or {}
    pm_in, pm_out = user_ns.get("PAPERMILL_INPUT_PATH"), user_ns.get("PAPERMILL_OUTPUT_PATH")
    if isinstance(pm_in, str) or isinstance(pm_out, str):
        return NotebookRef(pm_in if isinstance(pm_in, str) else None,
                           pm_out if isinstance(pm_out, str) else None,
                           detected_by="papermill-parameters")
    parent = _parent_papermill()
    if parent:
        return NotebookRef(parent[0], parent[1], detected_by="papermill-cli")
    if isinstance(user_ns.get("__vsc_ipynb_file__"), str):
        return NotebookRef(user_ns["__vsc_ipynb_file__"], detected_by="vscode")
    session = os.environ.get("JPY_SESSION_NAME") or user_ns.get("__session__")
    if isinstance(session, str) and session.endswith(".ipynb"):
        return NotebookRef(session, detected_by="jupyter-session")
    session = _connection_session()
    if session and session.endswith(".ipynb"):
        return NotebookRef(session, detected_by="connection-file")
    return NotebookRef(None)


def _load_notebook(path: str | None) -> tuple[dict[str, Any] | None, bytes | None]:
    if not path or "://" in path:
        return None, None
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        return json.loads(raw), raw
    except (OSError, ValueError) as exc:
        log.debug("cannot read notebook %s: %s", path, exc)
        return None, None


def _cell_source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _tags(cell: dict[str, Any]) -> list[str]:
    return list((cell.get("metadata") or {}).get("tags") or [])


def literal_assignments(source: str) -> dict[str, Any]:
    """The ``name = literal`` assignments of a Python parameters cell. Pure; a cell that does
    not parse gives {}."""
    import ast  # here: only notebooks need it, and every capture's start-up would pay it

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    out: dict[str, Any] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) and node.value else [])
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    out[target.id] = ast.unparse(node.value)
    return out


def _cells_with_tag(nb: dict[str, Any] | None, tag: str) -> list[str]:
    if not nb:
        return []
    return [_cell_source(c) for c in nb.get("cells", []) if tag in _tags(c)]


def _history_parameters() -> dict[str, Any] | None:
    """Papermill's injected ``# Parameters`` cell, as run in this kernel."""
    shell = _ipython()
    history = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None) or []
    for source in reversed(list(history)):
        if isinstance(source, str) and source.lstrip().startswith("# Parameters"):
            return literal_assignments(source)
    return None


def _user_parameters(params: Any) -> Any:
    if isinstance(params, dict):
        params = {k: v for k, v in params.items() if not str(k).startswith("PAPERMILL_")}
    return redact_params(params)


def _resolve(path: str | None, *bases: str | None) -> str | None:
    if not path or "://" in path or os.path.isabs(path):
        return path
    for base in bases:
        if base and os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    return os.path.abspath(path)


def _shown(path: str | None, root: str | None) -> str | None:
    """A local path relative to the repository root; a URL (s3://...) as it is."""
    return relative_to(path, root) if path and "://" not in path else path


def notebook_entry(ctx: Context, ref: NotebookRef, root: str | None) -> dict[str, Any]:
    """The ``notebook`` entrypoint from where it was found: source notebook, executed copy,
    parameters and code. Raises nothing for unreadable notebooks (fields stay None)."""
    source_path = _resolve(ref.path)
    output_path = _resolve(ref.output)
    executed, _ = _load_notebook(output_path)
    if executed is None and source_path:
        loaded, _ = _load_notebook(source_path)
        papermill = (loaded or {}).get("metadata", {}).get("papermill") or {}
        if papermill.get("output_path") and papermill.get("input_path"):
            # the path given is an executed copy: its source is the papermill input
            out_abs = _resolve(papermill["output_path"], os.path.dirname(source_path))
            if out_abs and os.path.exists(out_abs) and os.path.samefile(out_abs, source_path):
                executed, output_path, source_path = loaded, source_path, None
    papermill = (executed or {}).get("metadata", {}).get("papermill") or {}
    if source_path is None and papermill.get("input_path"):
        source_path = _resolve(papermill["input_path"], os.path.dirname(output_path or ""),
                               os.getcwd())
    source_nb, raw = _load_notebook(source_path)

    parameters, parameters_from = ctx.option("parameters"), "option"
    if parameters is None and "parameters" in papermill:
        parameters, parameters_from = papermill["parameters"], "papermill-metadata"
    if parameters is None:
        injected = _cells_with_tag(executed or source_nb, "injected-parameters")
        if injected:
            parameters, parameters_from = literal_assignments(injected[-1]), "injected-cell"
    if parameters is None and in_kernel():
        parameters, parameters_from = _history_parameters(), "kernel-history"
    if parameters is None:
        parameters_from = None
    defaults = _cells_with_tag(source_nb, "parameters")

    info: dict[str, Any] = {
        "kind": "notebook",
        "path": _shown(source_path, root),
        "executed_path": _shown(output_path, root),
        "detected_by": ref.detected_by,
        "in_kernel": in_kernel(),
        "parameters": _user_parameters(parameters),
        "parameters_from": parameters_from,
        "default_parameters": _user_parameters(literal_assignments(defaults[0]))
        if defaults else None,
        "sha256": hashlib.sha256(raw).hexdigest() if raw is not None else None,
        "kernel": ((source_nb or executed or {}).get("metadata", {}).get("kernelspec") or {})
        .get("name"),
    }
    info.update(_notebook_source(ctx, source_nb))
    if ref.path is None and ref.output is None:
        info["note"] = ("notebook path unknown: pass notebook_path= or set REPLAB_NOTEBOOK "
                        "(papermill: --inject-paths)")
    return info


# compiled (and cached) by re on first use: only notebooks need it
_ASSIGN_LINE = r"^(\s*([A-Za-z_]\w*)\s*(?::[^=]*)?=\s*)(.*?)(\s+#.*)?$"


def redact_assignments(source: str) -> str:
    """A parameters cell with the values of secret-named variables masked. Pure."""
    import ast  # here: only notebooks need it, and every capture's start-up would pay it

    lines = []
    for line in source.splitlines():
        m = re.match(_ASSIGN_LINE, line)
        if m and secret_name(m.group(2)):
            try:
                value = ast.literal_eval(m.group(3))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                value = m.group(3)
            line = f"{m.group(1)}{mask(value)!r}{m.group(4) or ''}"
        lines.append(line)
    return "\n".join(lines)


def _redact_cell(cell: dict[str, Any]) -> str:
    source = redact_credentials(_cell_source(cell))
    return redact_assignments(source) if "parameters" in _tags(cell) else source


def _notebook_source(ctx: Context, nb: dict[str, Any] | None) -> dict[str, Any]:
    if not nb:
        return {"source": None}
    cap = int(ctx.option("notebook_source_max_bytes", NOTEBOOK_SOURCE_MAX_BYTES))
    cells = [_redact_cell(c) for c in nb.get("cells", [])
             if c.get("cell_type") == "code" and "injected-parameters" not in _tags(c)]
    text = "\n\n# %%\n".join(cells)
    if len(text.encode("utf-8")) > cap:
        return {"source": None, "source_omitted": f"code larger than {cap} bytes"}
    return {"source": f"# %%\n{text}\n" if cells else ""}


def _script_entry(root: str | None) -> dict[str, Any]:
    argv = list(sys.argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    args = redact_argv(argv[1:])
    if spec is not None and getattr(spec, "name", None):
        module = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return {"kind": "module", "module": module, "argv": args}
    script = argv[0] if argv else ""
    if script in ("", "-c", "-"):
        return {"kind": "interactive" if script == "" else "inline", "argv": args}
    path = os.path.realpath(script)
    entry: dict[str, Any] = {"kind": "script", "path": relative_to(path, root), "argv": args}
    try:
        entry["sha256"] = sha256_file(path)
    except OSError:
        entry["sha256"] = None
    return entry


@capture("entrypoint")
def entrypoint_info(ctx: Context) -> dict[str, Any]:
    """The command, notebook, module or script this run came from, with its arguments."""
    root = ctx.cache.get("git_root") or find_git_root(ctx.repo)
    command = ctx.option("command")
    if command:
        if isinstance(command, str):
            command = [command]
        entry: dict[str, Any] = {"kind": "command", "command": redact_argv(command)}
    else:
        ref = find_notebook(ctx)
        entry = notebook_entry(ctx, ref, root) if ref else _script_entry(root)
    entry["cwd"] = relative_to(os.getcwd(), root)
    entry["root"] = root
    return entry
