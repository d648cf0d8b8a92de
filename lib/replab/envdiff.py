"""The layered environment diff of two run manifests, ranked by how likely each difference is
to move the metrics. The determinism profile and the hazards live in :mod:`replab.hazards`
and are importable from here too.

:func:`env_diff` flattens each layer of the manifest (code, packages, python, platform, gpu,
container, determinism, env, entrypoint, inputs, manifest) into ``key: value`` pairs, drops
noise (``created_at``, ``timings_ms``, attachment sizes, interpreter and repository paths,
notebook source text; paths under temporary directories are rewritten to ``<tmp>``; a value
of None counts as absent), and reports every key whose value differs as a
:class:`Difference`. Each gets the weight of the first rule of :data:`RULES` whose layer and
key pattern match (``*`` matches anything, nothing else is special). Weights run from 100
(certainly moves the metrics) to 1 (never does); they order, they are not probabilities.

A replay measures the program, not replab, so the diff leaves out what replab itself sets or
chooses: the variables of :data:`REPLAB_ENV` (``REPLAB_*``; ``MLFLOW_RUN_ID``,
``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_EXPERIMENT_ID``: where a run is
logged, not what it computes); replab's own ``_child`` directory in ``PYTHONPATH``; how the
code was checked out (branch, detached head, remote, upstream) when both runs have the same
commit, since a replay checks that commit out of a fresh clone; and the location of the
interpreter. When both runs have the same Python version and implementation, each run's
interpreter prefix, virtualenv and executable compare equal inside environment values
(``PATH``, ``LD_LIBRARY_PATH``, ...), and ``PATH`` entries and a ``VIRTUAL_ENV`` naming them
are dropped: a replay venv built under replab's cache (or any venv moved elsewhere) is not a
difference. Another Python version still is, and then so are those paths.

First matching rule wins (the order below is :data:`RULES`' order):

====== =========== ========================================= ======================================
weight layer       keys (abridged; exact patterns: RULES)    why
====== =========== ========================================= ======================================
20     any         (capture)                                 a capture is missing on one side
100    determinism seeds, seeds.*                            seeding decides every random draw
95     determinism torch.initial_seed                        torch draws from another seed
95     inputs      any                                       the input data differ
90     code        commit, diff_sha256, untracked:*          the code differs
90     entrypoint  path, sha256, argv, parameters.*, ...     another program or other arguments
85     determinism deterministic algorithms, cuDNN flags,    a determinism switch changed
                   CUBLAS_WORKSPACE_CONFIG,
                   TF_DETERMINISTIC_OPS, ...
85     packages    torch, tensorflow, jax, numpy, scipy,     a framework's numerics and kernels
                   scikit-learn, nvidia-*, ... (FRAMEWORKS)
80     gpu         device names, count, compute capability,  another GPU model or CUDA stack
                   CUDA, cuDNN, framework builds
75     determinism TF32 switches                             matmul precision changes
70     determinism hash_randomization, PYTHONHASHSEED        order of sets of strings changes
70     gpu         driver_version, GPU use by frameworks     another driver, or GPU used differently
70     python      version, implementation                   another interpreter
70     platform    machine, system                           another architecture or OS
60     container   image, image_digest                       another container image
60     determinism any other                                 another determinism setting
55     env         CUDA_*, NCCL_*, TF_*, TORCH_*, XLA_*, ... a framework or CUDA setting
50     env         *_NUM_THREADS, OMP_*, MKL_*, OPENBLAS_*   BLAS threads: reduction order changes
45     platform    cpu_model                                 other SIMD code paths in BLAS
40     platform    cpu_count, cpu_usable                     default thread counts change
40     packages    any other                                 another package version
40     code        dirty                                     uncommitted changes on one side
10     gpu         devices[*].uuid, devices[*].memory_total  another card of the same model
30     gpu         any other                                 a GPU detail
30     python      any other                                 interpreter build details
25     env         PATH, LD_LIBRARY_PATH, PYTHONPATH, ...    which libraries load
20     platform    distribution.*, kernel                    another OS release or kernel
20     container   any other                                 container runtime
10     code        any other                                 branch or remote: names, not content
10     entrypoint  any other                                 where it ran from
10     platform    memory_total, kernel_version              memory size or kernel build
5      env         any other                                 MLFLOW_*, LANG, ...
5      manifest    any                                       another replab version
1      platform    hostname                                  never moves metrics
5      any         any                                       anything else
====== =========== ========================================= ======================================

:func:`hazards` adds what no diff can show: conditions true in *both* runs (params such as
``random_state: None``, ranked above everything; neither run seeded; GPU nondeterminism
possible in both), as differences of kind ``"hazard"``. :func:`determinism_profile` reads
the original's manifest, tags and params: ``bit-for-bit``, ``same-stack`` or
``statistical`` (see :mod:`replab.hazards`).

Pure functions of JSON data; only the standard library (and the pure modules
:mod:`replab.difference` and :mod:`replab.hazards`) is imported.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .difference import MISSING, Difference, command_by_name, matches
from .difference import as_map as _map
from .difference import normalize_package as _normalize_package
from .hazards import (
    BIT_FOR_BIT,
    GPU_FRAMEWORKS,
    HAZARDS,
    SAME_STACK,
    STATISTICAL,
    Facts,
    Hazard,
    determinism_profile,
    facts,
    hazards,
    unseeded_params,
)

__all__ = [
    "BIT_FOR_BIT", "FRAMEWORKS", "GPU_FRAMEWORKS", "HAZARDS", "LAYERS", "MISSING", "RULES",
    "REPLAB_ENV", "SAME_STACK", "STATISTICAL", "Difference", "Facts", "Hazard", "Layer", "Rule",
    "determinism_profile", "env_diff", "facts", "flatten", "hazards", "interpreter_locations",
    "layer_values",
    "matches", "rank", "rule_for", "unseeded_params",
]

FRAMEWORKS = (
    "torch", "torchvision", "torchaudio", "tensorflow", "tensorflow-*", "tf-keras", "keras",
    "jax", "jaxlib", "jax-cuda*", "flax", "numpy", "scipy", "scikit-learn", "xgboost",
    "lightgbm", "catboost", "lightning", "pytorch-lightning", "transformers", "accelerate",
    "tokenizers", "datasets", "timm", "triton", "cupy*", "nvidia-*", "mkl", "intel-openmp",
    "scipy-openblas*", "onnxruntime*", "deepspeed", "xformers", "flash-attn", "bitsandbytes",
)


@dataclass(frozen=True)
class Rule:
    """Weight of the differences in ``layer`` whose key matches one of ``keys``."""

    weight: int
    layer: str
    keys: tuple[str, ...]
    why: str


_TF32 = ("torch.*tf32*", "torch.float32_matmul_precision", "tensorflow.tensor_float_32",
         "env.NVIDIA_TF32_OVERRIDE", "env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")

RULES: tuple[Rule, ...] = (
    Rule(20, "*", ("(capture)",), "a capture is missing on one side: that layer is not compared"),
    Rule(100, "determinism", ("seeds", "seeds.*"), "seeding changed: it decides every random "
                                                   "draw"),
    Rule(95, "determinism", ("torch.initial_seed",), "torch draws from another seed"),
    Rule(95, "inputs", ("*",), "the input data differ"),
    Rule(90, "code", ("commit", "diff_sha256", "untracked:*"), "the code differs"),
    Rule(90, "entrypoint", ("kind", "path", "module", "command", "argv", "sha256",
                            "code_sha256", "parameters.*"),
         "another program or other arguments ran"),
    Rule(85, "determinism", ("torch.deterministic*", "torch.cudnn_deterministic",
                             "torch.cudnn_benchmark", "tensorflow.op_determinism",
                             "env.CUBLAS_WORKSPACE_CONFIG", "env.TF_DETERMINISTIC_OPS",
                             "env.TF_CUDNN_DETERMINISTIC"), "a determinism switch changed"),
    Rule(85, "packages", FRAMEWORKS, "a framework package changed: its numerics and kernels "
                                     "differ between versions"),
    Rule(80, "gpu", ("vendor", "count", "devices[*].name", "devices[*].compute_capability",
                     "cuda_driver_version", "frameworks.*.version", "frameworks.*.cuda",
                     "frameworks.*.cudnn", "frameworks.*.hip", "frameworks.*.build.*"),
         "another GPU model or CUDA stack: other kernels"),
    Rule(75, "determinism", _TF32, "TF32 switched: matmul precision changes"),
    Rule(70, "determinism", ("hash_randomization", "env.PYTHONHASHSEED"),
         "hash seeding changed: the order of sets of strings changes"),
    Rule(70, "gpu", ("driver_version", "frameworks.*.cuda_initialized", "frameworks.*.devices*",
                     "frameworks.*.device_count", "frameworks.*.gpus"),
         "another GPU driver, or the GPU used differently"),
    Rule(70, "python", ("version", "implementation"), "another Python interpreter"),
    Rule(70, "platform", ("machine", "system"), "another CPU architecture or OS: other math "
                                                "libraries"),
    Rule(60, "container", ("image", "image_digest", "podman_image"), "another container image"),
    Rule(60, "determinism", ("*",), "another determinism setting"),
    Rule(55, "env", ("CUDA_*", "CUBLAS_*", "CUDNN_*", "NCCL_*", "TF_*", "TORCH_*", "PYTORCH_*",
                     "XLA_*", "MKL_CBWR"), "a framework or CUDA setting changed"),
    Rule(50, "env", ("*_NUM_THREADS", "OMP_*", "KMP_*", "MKL_*", "OPENBLAS_*", "BLIS_*",
                     "GOTO_*", "VECLIB_*", "NUMEXPR_*"),
         "BLAS/OpenMP threads changed: the order of floating-point reductions changes"),
    Rule(45, "platform", ("cpu_model",), "another CPU: other SIMD code paths in BLAS"),
    Rule(40, "platform", ("cpu_count", "cpu_usable"), "another core count: default thread "
                                                      "counts change"),
    Rule(40, "packages", ("*",), "another package version"),
    Rule(40, "code", ("dirty",), "uncommitted changes on one side"),
    Rule(10, "gpu", ("devices[*].uuid", "devices[*].memory_total"),
         "another card of the same model"),
    Rule(30, "gpu", ("*",), "a GPU detail"),
    Rule(30, "python", ("*",), "interpreter build details"),
    Rule(25, "env", ("PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH"),
         "which libraries load"),
    Rule(20, "platform", ("distribution.*", "kernel"), "another OS release or kernel"),
    Rule(20, "container", ("*",), "container runtime"),
    Rule(10, "code", ("*",), "branch or remote: names, not content"),
    Rule(10, "entrypoint", ("*",), "where it ran from"),
    Rule(10, "platform", ("memory_total", "kernel_version"), "memory size or kernel build"),
    Rule(5, "env", ("*",), "another environment variable"),
    Rule(5, "manifest", ("*",), "another replab version"),
    Rule(1, "platform", ("hostname",), "the host name (never moves metrics)"),
    Rule(5, "*", ("*",), "another setting"),
)

def rule_for(layer: str, key: str) -> Rule:
    """The first rule of :data:`RULES` matching ``layer`` and ``key``."""
    for rule in RULES:
        if rule.layer in ("*", layer) and matches(rule.keys, key):
            return rule
    return RULES[-1]


# -- flattening the manifest ------------------------------------------------------------------
_TMP = re.compile(r"(?:/private)?/(?:tmp|var/tmp|dev/shm|var/folders/[^/\s]+/[^/\s]+/T)"
                  r"/[^\s:;,'\"]*")


def _clean(value: Any) -> Any:
    """Paths under temporary directories become ``<tmp>`` (a replay runs in a fresh one)."""
    if isinstance(value, str):
        return _TMP.sub("<tmp>", value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    return value


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON as ``{"a.b": v, "devices[0].name": v}``; None values are left out, lists
    of scalars stay whole. Pure."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and any(isinstance(x, Mapping) for x in obj):
        for i, x in enumerate(obj):
            out.update(flatten(x, f"{prefix}[{i}]"))
    elif obj is not None:
        out[prefix] = obj
    return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def _code(git: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(git)
    untracked = data.pop("untracked", None) or []
    if not data.get("diff_sha256") and data.get("diff"):
        data["diff_sha256"] = _sha(data["diff"])
    flat = flatten(data)
    for item in untracked:
        if isinstance(item, Mapping) and item.get("path"):
            flat[f"untracked:{item['path']}"] = (item.get("sha256") or item.get("symlink")
                                                 or item.get("size"))
    return flat


def _packages(pkgs: Mapping[str, Any]) -> dict[str, Any]:
    sources = pkgs.get("sources") or {}
    out: dict[str, Any] = {}
    for name, version in (pkgs.get("versions") or {}).items():
        vcs = (sources.get(name) or {}).get("vcs_info") or {}
        commit = vcs.get("commit_id") if isinstance(vcs, Mapping) else None
        out[_normalize_package(name)] = f"{version} @ {commit}" if commit else version
    for entry in pkgs.get("conda_packages") or []:
        name, _, rest = str(entry).partition("=")
        out[f"conda:{name}"] = rest
    return out


def _entrypoint(entry: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(entry)
    if isinstance(data.get("command"), list):
        # a replay runs `python ...` with the interpreter it chose (replab.replayexec)
        data["command"] = command_by_name(data["command"])
    if isinstance(data.get("source"), str):  # a notebook: its code, not its saved outputs
        data["code_sha256"] = _sha(data["source"])
        data.pop("sha256", None)
    return flatten(data)


def _inputs(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping):
            key = str(item.get("name") or item.get("path") or item.get("uri") or "?")
            out[key] = item.get("sha256") or item.get("uri") or item.get("kind")
    return out


# -- what replab itself puts into a run's environment -----------------------------------------
REPLAB_ENV = ("REPLAB_*", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
              "MLFLOW_EXPERIMENT_ID")
_SEARCH_PATHS = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH")
_CHILD_DIR = re.compile(r"(?:^|[/\\])replab[/\\]_child[/\\]?\Z")  # replab run's sitecustomize
_CHECKOUT = ("branch", "detached", "remote", "remote_url", "upstream")  # names, not content
_SLASHES = "/\\"
_HERE = "<python>"  # a run's own interpreter location, in compared values


def _split_paths(value: str) -> tuple[str, list[str]]:
    sep = ";" if ";" in value else ":"
    return sep, value.split(sep)


def _without_child(env: Mapping[str, Any]) -> dict[str, Any]:
    """``env`` without the ``_child`` directory `replab run` puts first in PYTHONPATH
    (before temporary paths are rewritten: the checkout may live under /tmp)."""
    out = dict(env)
    if isinstance(out.get("PYTHONPATH"), str):
        sep, parts = _split_paths(out["PYTHONPATH"])
        kept = sep.join(p for p in parts if not _CHILD_DIR.search(p))
        if kept:
            out["PYTHONPATH"] = kept
        else:
            del out["PYTHONPATH"]
    return out


def _env(env: Mapping[str, Any]) -> dict[str, Any]:
    return flatten(env)


def interpreter_locations(manifest_a: Mapping[str, Any],
                          manifest_b: Mapping[str, Any]) -> tuple[str, ...]:
    """The interpreter prefixes, virtualenvs and executables of both runs, longest first,
    when both ran the same Python version and implementation; else none (then the paths
    are real differences). Pure."""
    pys = [_map(_map(m.get("captures")).get("python")) for m in (manifest_a, manifest_b)]
    same = all(pys[0].get(k) is not None and pys[0].get(k) == pys[1].get(k)
               for k in ("version", "implementation"))
    if not same:
        return ()
    found: set[str] = set()
    for py in pys:
        for key in ("executable", "prefix", "virtualenv"):
            value = py.get(key)  # as captured: a checkout under /tmp is a location too
            if isinstance(value, str) and value.strip(_SLASHES):
                found.add(value.rstrip(_SLASHES))
    return tuple(sorted(found, key=lambda p: (-len(p), p)))


def _relocated(key: str, value: Any, locations: tuple[str, ...]) -> Any:
    """``value`` with the interpreter ``locations`` written as ``<python>``; ``PATH``-like
    entries and a ``VIRTUAL_ENV`` that only name the interpreter are dropped (MISSING)."""
    if not isinstance(value, str) or not locations:
        return value
    pattern = "|".join(re.escape(p) for p in locations)
    text = re.sub(rf"(?:{pattern})(?=[/\\:;\s]|\Z)", _HERE, value)
    if key in _SEARCH_PATHS:
        sep, parts = _split_paths(text)
        parts = [p for p in parts if p.rstrip(_SLASHES) not in
                 (_HERE, f"{_HERE}/bin", f"{_HERE}\\Scripts")]
        return sep.join(parts) if parts else MISSING
    if key == "VIRTUAL_ENV" and text.rstrip(_SLASHES) == _HERE:
        return MISSING
    return text


@dataclass(frozen=True)
class Layer:
    """How one capture becomes ``key: value`` pairs: ``extract`` then drop ``ignore``."""

    name: str
    capture: str | None  # None: the manifest's top level
    extract: Callable[[Any], dict[str, Any]] = flatten
    ignore: tuple[str, ...] = ()


LAYERS: tuple[Layer, ...] = (
    Layer("code", "git", _code, ("root", "diff", "diff_bytes", "diff_base64", "diff_attachment",
                                 "changes.*", "untracked_*", "empty", "remotes.*", "remote")),
    Layer("packages", "packages", _packages),
    Layer("python", "python", flatten, ("executable", "prefix", "base_prefix", "virtualenv",
                                        "conda.*", "version_info", "flags.hash_randomization")),
    Layer("platform", "platform", flatten, ("platform",)),
    Layer("gpu", "gpu", flatten, ("source", "nvidia_smi_attachment", "devices[*].pci_bus_id",
                                  "devices[*].index", "frameworks.*.git_version")),
    Layer("container", "container", flatten, ("hints",)),
    Layer("determinism", "determinism", flatten),
    Layer("env", "env", _env, REPLAB_ENV),
    Layer("entrypoint", "entrypoint", _entrypoint, ("root", "executed_path", "detected_by",
                                                    "in_kernel", "note", "parameters_from",
                                                    "source", "source_omitted")),
    Layer("inputs", "inputs", _inputs),
    Layer("manifest", None, lambda m: flatten({k: m.get(k) for k in ("schema_version",
                                                                       "replab_version")})),
)


def _capture_state(manifest: Mapping[str, Any], name: str) -> str | None:
    if _map(manifest.get("captures")).get(name) is not None:
        return "captured"
    if name in _map(manifest.get("errors")):
        return f"failed: {manifest['errors'][name]}"
    if name in _map(manifest.get("skipped")):
        return f"skipped: {manifest['skipped'][name]}"
    return None


def layer_values(manifest: Mapping[str, Any], layer: Layer,
                 locations: tuple[str, ...] = ()) -> dict[str, Any]:
    """``key: value`` of one layer of ``manifest``, noise removed. Pure; data of an
    unexpected shape is flattened as it is. ``locations``: interpreter locations
    (:func:`interpreter_locations`) written as ``<python>`` in the env layer, before
    temporary paths become ``<tmp>``."""
    if layer.capture is None:
        data: Any = manifest
    else:
        data = _map(manifest.get("captures")).get(layer.capture)
        if data is None:
            return {}
    if layer.name == "env" and isinstance(data, Mapping):
        data = _without_child(data)
        if locations:
            data = {k: r for k, v in data.items()
                    if (r := _relocated(k, v, locations)) is not MISSING}
    data = _clean(data)
    try:
        flat = layer.extract(data)
    except (TypeError, ValueError, AttributeError, KeyError):
        flat = flatten(data, "value")
    return {k: v for k, v in flat.items() if not matches(layer.ignore, k)}


def _equal(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if a is MISSING or b is MISSING:
        return False
    try:  # NaN inside equal structures
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                        default=str)
    except (TypeError, ValueError):
        return False


def _determinism_env_names(*manifests: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for m in manifests:
        names.update(_map(_map(_map(m.get("captures")).get("determinism")).get("env")))
    return names


def _make(layer: str, key: str, a: Any, b: Any, kind: str) -> Difference:
    rule = rule_for(layer, key)
    return Difference(layer, key, a, b, rule.weight, rule.why, kind)


def rank(differences: Iterable[Difference]) -> list[Difference]:
    """Heaviest first; ties in layer order (params hazards first), then by key."""
    order = {"params": -1, **{layer.name: i for i, layer in enumerate(LAYERS)}}
    return sorted(differences, key=lambda d: (-d.weight, order.get(d.layer, len(order)), d.key))


def env_diff(manifest_a: Mapping[str, Any] | None,
             manifest_b: Mapping[str, Any] | None) -> list[Difference]:
    """Every difference between two run manifests, ranked (see the module doc). A missing
    manifest gives no differences (the caller notes it). Raises nothing for odd data."""
    if not isinstance(manifest_a, Mapping) or not isinstance(manifest_b, Mapping):
        return []
    covered = _determinism_env_names(manifest_a, manifest_b)
    here = interpreter_locations(manifest_a, manifest_b)
    out: list[Difference] = []
    for layer in LAYERS:
        if layer.capture is not None:
            state_a = _capture_state(manifest_a, layer.capture)
            state_b = _capture_state(manifest_b, layer.capture)
            if (state_a == "captured") != (state_b == "captured"):
                out.append(_make(layer.name, "(capture)", state_a, state_b, "changed"))
                continue
        a, b = layer_values(manifest_a, layer), layer_values(manifest_b, layer)
        if layer.name == "env":  # compared with the interpreter's location written alike
            ra, rb = layer_values(manifest_a, layer, here), layer_values(manifest_b, layer, here)
        same_commit = layer.name == "code" and a.get("commit") is not None and \
            a.get("commit") == b.get("commit")
        for key in sorted(set(a) | set(b)):
            if same_commit and key in _CHECKOUT:
                continue  # a replay checks the same commit out of a fresh clone
            if layer.name == "env" and key in covered:
                continue  # compared in the determinism layer
            va, vb = a.get(key, MISSING), b.get(key, MISSING)
            if _equal(va, vb):
                continue
            if layer.name == "env" and _equal(ra.get(key, MISSING), rb.get(key, MISSING)):
                continue  # only the interpreter's location differs
            kind = "added" if va is MISSING else "removed" if vb is MISSING else "changed"
            out.append(_make(layer.name, key, None if va is MISSING else va,
                             None if vb is MISSING else vb, kind))
    return rank(out)
