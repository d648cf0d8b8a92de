"""Outputs as evidence: what a run printed and the files it wrote, compared with tolerances.

One import for the verdict: :func:`compare_printed` and the masks
(:mod:`replab.outputs_printed`), :func:`compare_files` and how ``replab run`` records the
output files (:mod:`replab.outputs_files`), and the run's output spec
(``replab/outputs.json``, written by ``replab run``):

``{"version": 1, "evidence": true, "streams": ["stdout"] or ["stdout", "stderr"],
"masks": {"add": [...], "drop": [...]}, "cwd": ..., "home": ..., "output_dirs": [...],
"files": [{"path", "sha256", "size", "artifact" (None when not kept), "note"?,
"redacted"?}], "notes": [...]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .outputs_files import (
    ARTIFACT_DIR,
    FILE_CAP,
    MAX_FILES,
    MISSING_ORIGINAL,
    MISSING_REPLAY,
    SPEC,
    TOTAL_CAP,
    FileComparison,
    RecordedFile,
    compare_files,
    read_spec,
    recorded_files,
)
from .outputs_printed import (
    DEFAULT_MASKS,
    DIFFERS,
    SAME,
    WITHIN,
    LineMismatch,
    Mask,
    NumberKey,
    PrintedComparison,
    compare_printed,
    normalize,
    printed_numbers,
    resolve_masks,
)

__all__ = ["ARTIFACT_DIR", "DEFAULT_MASKS", "DIFFERS", "FILE_CAP", "MAX_FILES",
           "MISSING_ORIGINAL", "MISSING_REPLAY", "SAME", "SPEC", "STREAM_ARTIFACTS",
           "TOTAL_CAP", "WITHIN", "FileComparison", "LineMismatch", "Mask", "NumberKey",
           "PrintedComparison", "RecordedFile", "compare_files", "compare_printed",
           "masks_for", "normalize", "paths_for", "printed_numbers", "read_spec",
           "recorded_files", "resolve_masks", "run_options", "streams_for"]

# Where `replab run` keeps what the program printed (secret values masked).
STREAM_ARTIFACTS = {"stdout": "replab/stdout.txt", "stderr": "replab/stderr.txt"}


def masks_for(spec: Mapping[str, Any] | None) -> list[Mask]:
    """The masks a run asked for (the defaults when it recorded none)."""
    m = (spec or {}).get("masks") or {}
    return resolve_masks(m.get("add") or (), m.get("drop") or ())


def paths_for(spec: Mapping[str, Any] | None) -> dict[str, str]:
    """The run's own directories, for ``compare_printed(original_paths=, replay_paths=)``."""
    return {k: (spec or {})[k] for k in ("cwd", "home") if (spec or {}).get(k)}


def streams_for(spec: Mapping[str, Any] | None) -> list[str]:
    """The streams to compare: ``[]`` when the run switched output evidence off."""
    if spec is None:
        return ["stdout"]
    if not spec.get("evidence", True):
        return []
    return list(spec.get("streams") or ["stdout"])


def run_options(spec: Mapping[str, Any] | None) -> list[str]:
    """The ``replab run`` options that recorded ``spec``, for a replay to pass again."""
    spec = spec or {}
    args: list[str] = []
    if not spec.get("evidence", True):
        args.append("--no-output-evidence")
    if "stderr" in (spec.get("streams") or ()):
        args.append("--compare-stderr")
    for d in spec.get("output_dirs") or ():
        args += ["--outputs", d]
    masks = spec.get("masks") or {}
    for m in masks.get("add") or ():
        args += ["--mask", m]
    for m in masks.get("drop") or ():
        args += ["--no-mask", m]
    return args
