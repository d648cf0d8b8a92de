"""Outputs as evidence: what a run printed and the files it wrote, compared with tolerances.

One import for the verdict: :func:`compare_printed` and the masks
(:mod:`replab.outputs_printed`), :func:`compare_files` and how ``replab run`` records the
output files (:mod:`replab.outputs_files`).
"""

from __future__ import annotations

from .outputs_printed import (
    DEFAULT_MASKS,
    DIFFERS,
    SAME,
    WITHIN,
    LineMismatch,
    Mask,
    PrintedComparison,
    compare_printed,
    normalize,
    resolve_masks,
)

__all__ = ["DEFAULT_MASKS", "DIFFERS", "SAME", "WITHIN", "LineMismatch", "Mask",
           "PrintedComparison", "compare_printed", "normalize", "resolve_masks"]
