"""The ``env`` capture: environment variables that can change a run's result, secrets hidden.

An allowlist, not a dump: variables are recorded only when their name is listed or starts
with a listed prefix (extend with the option ``env_allow``: names, or prefixes ending in
``*``). Values pass through :func:`replab.redact.redact`, so a variable whose name or content
looks secret is masked. ``PATH`` and ``LD_LIBRARY_PATH`` are recorded: they decide which
CUDA, compiler and BLAS libraries a run loads. ``REPLAB_*`` and ``MLFLOW_*`` are recorded
too, as evidence of how the run was started (a replay carries ``REPLAB_REPLAY_OF``); the
environment diff leaves replab's own ones out (:data:`replab.envdiff.REPLAB_ENV`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from replab.capture.registry import Context, capture
from replab.redact import redact

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ALLOW_PREFIXES = (
    "CUDA_", "CUDNN_", "CUBLAS_", "NVIDIA_", "NCCL_", "ROCM_", "HIP_", "HSA_", "ROCR_",
    "OMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO_", "BLIS_", "VECLIB_", "NUMEXPR_",
    "TF_", "TORCH_", "PYTORCH_", "XLA_", "JAX_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_",
    "TOKENIZERS_", "ACCELERATE_", "MLFLOW_", "PYTHON", "CONDA_", "REPLAB_",
)
ALLOW_NAMES = (
    "PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "VIRTUAL_ENV", "LANG", "LANGUAGE", "LC_ALL",
    "LC_CTYPE", "LC_NUMERIC", "TZ", "JPY_SESSION_NAME",
)


def allowed(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether the variable ``name`` is on the allowlist (plus ``extra`` names/prefixes*)."""
    if name in ALLOW_NAMES or name.startswith(ALLOW_PREFIXES):
        return True
    for entry in extra:
        if (entry.endswith("*") and name.startswith(entry[:-1])) or name == entry:
            return True
    return False


def select_env(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, Any]:
    """The allowed variables of ``environ``, sorted, with secrets redacted. Pure."""
    extra = tuple(extra)
    return {name: redact(name, environ[name]) for name in sorted(environ)
            if allowed(name, extra)}


@capture("env")
def env_info(ctx: Context) -> dict[str, Any]:
    """The allowlisted environment variables, secrets redacted. Raises nothing."""
    extra = ctx.option("env_allow", ())
    if isinstance(extra, str):
        extra = [extra]
    return select_env(os.environ, extra)
