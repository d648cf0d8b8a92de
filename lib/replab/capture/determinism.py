"""The ``determinism`` capture: the switches that decide whether a rerun can match bit for bit.

Seeds given by the caller (option ``seeds``: ``{"seed": 1, "seeded": [...]}``, where
``seeded`` names the generators :func:`replab.tracking.seed_everything` reached, as a list
or as its ``{generator: bool}`` answer), hash seeding, and the determinism and TF32 flags of
torch and tensorflow, read only when those are already imported. The determinism profile
(:mod:`replab.hazards`) trusts only the generators listed in ``seeded``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from replab.capture.registry import Context, capture
from replab.redact import redact_params

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ENV_FLAGS = ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "TF_DETERMINISTIC_OPS",
             "TF_CUDNN_DETERMINISTIC", "TF_ENABLE_ONEDNN_OPTS", "NVIDIA_TF32_OVERRIDE",
             "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")


def torch_flags(torch: Any) -> dict[str, Any]:
    """Determinism and TF32 settings of an imported torch; a missing switch is None."""
    def get(fn: Any) -> Any:
        try:
            return fn()
        except Exception:  # an old torch without this switch
            return None

    return {
        "deterministic_algorithms": get(torch.are_deterministic_algorithms_enabled),
        "deterministic_warn_only": get(torch.is_deterministic_algorithms_warn_only_enabled),
        "cudnn_deterministic": get(lambda: bool(torch.backends.cudnn.deterministic)),
        "cudnn_benchmark": get(lambda: bool(torch.backends.cudnn.benchmark)),
        "cudnn_allow_tf32": get(lambda: bool(torch.backends.cudnn.allow_tf32)),
        "matmul_allow_tf32": get(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
        "float32_matmul_precision": get(torch.get_float32_matmul_precision),
        "initial_seed": get(torch.initial_seed),
    }


def tensorflow_flags(tf: Any) -> dict[str, Any]:
    """Op determinism and TF32 settings of an imported tensorflow; a missing switch is None."""
    def get(fn: Any) -> Any:
        try:
            return bool(fn())
        except Exception:
            return None

    return {
        "op_determinism": get(lambda: tf.config.experimental.is_op_determinism_enabled()),
        "tensor_float_32": get(lambda: tf.config.experimental.tensor_float_32_execution_enabled()),
    }


def seeds_record(seeds: Any) -> Any:
    """The ``seeds`` option as recorded: secrets hidden, ``seeded`` as a sorted list of the
    generators that were seeded."""
    seeds = redact_params(seeds)
    if isinstance(seeds, Mapping) and isinstance(seeds.get("seeded"), Mapping):
        seeds = {**seeds, "seeded": sorted(str(k) for k, v in seeds["seeded"].items() if v)}
    return seeds


@capture("determinism")
def determinism_info(ctx: Context) -> dict[str, Any]:
    """Seeds, hash seeding, and framework determinism flags. Raises nothing of its own."""
    info: dict[str, Any] = {
        "seeds": seeds_record(ctx.option("seeds")),
        "hash_randomization": bool(sys.flags.hash_randomization),
        "env": {name: os.environ.get(name) for name in ENV_FLAGS},
    }
    for name, view in (("torch", torch_flags), ("tensorflow", tensorflow_flags)):
        module = sys.modules.get(name)
        if module is not None:
            try:
                info[name] = view(module)
            except Exception as exc:
                info[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return info
