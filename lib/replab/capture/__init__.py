"""Environment capture: a registry of small named functions whose union is the run manifest.

Each capture function (``@capture("git")``) returns JSON-able data about one layer of the
environment, or raises :class:`Skip` when that layer does not apply here (not a git repository,
no GPU framework loaded). :func:`collect` calls them in registration order and never raises
into the user's run: any other exception is logged and recorded under ``errors``.

This module runs inside training code, so it stays light: only the standard library at import
time; frameworks (torch, tensorflow) are looked at only when already in ``sys.modules``, and
optional libraries (pynvml, amdsmi) are imported inside the capture that needs them.

Manifest (schema version 1)::

    {"schema_version": 1, "replab_version": "...", "created_at": "2025-01-01T00:00:00.000Z",
     "captures": {name: data}, "skipped": {name: reason}, "errors": {name: "Type: message"},
     "timings_ms": {name: ms}, "attachments": {filename: {"capture", "bytes", "sha256"}}}
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import PurePath

from replab.capture.registry import (  # noqa: F401  (re-exported: the package's API)
    _REGISTRY,
    CaptureFn,
    Context,
    DuplicateCaptureError,
    Skip,
    _qualname,
    _wants_context,
    capture,
    names,
    unregister,
)

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Run in a thread beside the others by collect(): they wait on subprocesses, not the CPU.
_OVERLAP = frozenset({"git"})


def _json_default(obj: Any) -> Any:
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _as_json(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists); raises TypeError/ValueError."""
    return json.loads(json.dumps(data, default=_json_default, allow_nan=False))


def _now_iso() -> str:
    """UTC now as ``2025-01-01T00:00:00.000Z``; from time, not datetime, whose import (a
    large pure-Python module before its C part) would cost start-up."""
    now = time.time_ns() // 1_000_000
    seconds, millis = divmod(now, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def collect(names: Iterable[str] | None = None, **options: Any) -> dict[str, Any]:
    """Run the captures (all, or those in ``names``) and return the manifest. Never raises.

    Options (all optional): ``repo`` (path, default the working directory); ``artifacts_dir``
    (where attachments go: ``nvidia-smi -q`` text, a diff too big for the manifest);
    ``nvidia_smi`` (run ``nvidia-smi -q``; default: when ``artifacts_dir`` is given);
    ``seeds``; ``inputs`` (paths/URIs, or ``{name: path}``) and ``inputs_hash_max_bytes``;
    ``command`` (the ``replab run`` command line); ``notebook_path`` and ``parameters``;
    ``env_allow`` (extra variable names, or prefixes ending in ``*``); the git caps
    ``untracked_max_bytes`` (64 KiB), ``untracked_total_bytes`` (1 MiB),
    ``untracked_max_files`` (1000), ``untracked_hash_max_bytes`` (256 MiB),
    ``diff_max_bytes`` (32 MiB); ``notebook_source_max_bytes`` (1 MiB). Unknown capture
    names are recorded in ``errors``.
    """
    from replab import __version__

    ctx = Context(options)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "replab_version": __version__,
        "created_at": _now_iso(),
        "captures": {},
        "skipped": {},
        "errors": {},
        "timings_ms": {},
        "attachments": ctx.attachments,
    }
    if isinstance(names, str):
        names = [names]
    selected = list(_REGISTRY) if names is None else list(dict.fromkeys(names))
    results: dict[str, tuple[str, Any, float]] = {}
    # Captures that mostly wait on subprocesses (git's) run in a thread while the others
    # run here; the manifest is assembled in registration order all the same.
    background = [n for n in selected if n in _OVERLAP] if len(selected) > 1 else []
    threads = [threading.Thread(target=_run_into, args=(ctx, name, results),
                                name=f"replab-capture-{name}", daemon=True)
               for name in background]
    for thread in threads:
        thread.start()
    for name in selected:
        if name not in background:
            _run_into(ctx, name, results)
    for thread in threads:
        thread.join()
    for name in selected:
        section, data, ms = results[name]
        manifest[section][name] = data
        manifest["timings_ms"][name] = ms
    return manifest


def _run_into(ctx: Context, name: str, results: dict[str, tuple[str, Any, float]]) -> None:
    """Run capture ``name``; ``results[name]`` = (manifest section, data, ms). Never raises."""
    ctx.current = name
    start = time.perf_counter()
    try:
        fn = _REGISTRY.get(name)
        if fn is None:
            raise LookupError(f"no capture named {name!r}; have: {', '.join(_REGISTRY)}")
        data = fn(ctx) if _wants_context(fn) else fn()
        section, value = "captures", _as_json(data)
    except Skip as skip:
        section, value = "skipped", str(skip) or "not applicable"
        log.debug("capture %s skipped: %s", name, skip)
    except Exception as exc:  # a capture must never kill the run
        section, value = "errors", f"{type(exc).__name__}: {exc}"
        log.warning("capture %s failed: %s: %s", name, type(exc).__name__, exc)
        log.debug("capture %s traceback", name, exc_info=True)
    finally:
        ctx.current = None
    results[name] = (section, value, round((time.perf_counter() - start) * 1000, 3))


def manifest_json(manifest: Mapping[str, Any], indent: int | None = None) -> str:
    """The manifest as JSON text: sorted keys, fixed separators, so equal manifests give equal
    text. Raises TypeError/ValueError for data that is not JSON-able."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(manifest, sort_keys=True, indent=indent, separators=separators,
                      ensure_ascii=False, allow_nan=False, default=_json_default)


# The built-in captures register themselves when imported; this order is the manifest's.
# isort: off
from replab.capture import git  # noqa: E402
from replab.capture import python  # noqa: E402
from replab.capture import packages  # noqa: E402
from replab.capture import system  # noqa: E402
from replab.capture import gpu  # noqa: E402
from replab.capture import container  # noqa: E402
from replab.capture import determinism  # noqa: E402
from replab.capture import envvars  # noqa: E402
from replab.capture import entrypoint  # noqa: E402
from replab.capture import inputs  # noqa: E402
# isort: on
from replab.capture.packages import lock_hash  # noqa: E402

__all__ = [
    "SCHEMA_VERSION", "Context", "DuplicateCaptureError", "Skip", "capture", "collect",
    "lock_hash", "main", "manifest_json", "names", "unregister",
    "container", "determinism", "entrypoint", "envvars", "git", "gpu", "inputs", "packages",
    "python", "system",
]
