"""The layered environment diff of two run manifests, ranked by how likely each difference is
to move the metrics; and the determinism profile a run's manifest promises.

:func:`env_diff` flattens each layer of the manifest (code, packages, python, platform, gpu,
container, determinism, env, entrypoint, inputs, manifest) into ``key: value`` pairs, drops
noise (``created_at``, ``timings_ms``, attachment sizes, interpreter and repository paths,
notebook source text; paths under temporary directories are rewritten to ``<tmp>``; a value
of None counts as absent), and reports every key whose value differs as a
:class:`Difference`. Each gets the weight of the first rule of :data:`RULES` whose layer and
key pattern match (``*`` matches anything, nothing else is special). Weights run from 100
(certainly moves the metrics) to 1 (never does); they order, they are not probabilities.
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

:func:`hazards` adds what no diff can show: conditions true in *both* runs (neither seeded,
GPU nondeterminism possible in both), as differences of kind ``"hazard"``.
:func:`determinism_profile` reads the original's manifest: ``bit-for-bit`` (seeded; CPU only,
or deterministic algorithms on and no cuDNN benchmark and no TF32), ``same-stack`` (seeded,
but GPU nondeterminism or TF32 possible, or unknown), ``statistical`` (no seed recorded).

Pure functions of JSON data; only the standard library is imported.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

BIT_FOR_BIT = "bit-for-bit"
SAME_STACK = "same-stack"
STATISTICAL = "statistical"

FRAMEWORKS = (
    "torch", "torchvision", "torchaudio", "tensorflow", "tensorflow-*", "tf-keras", "keras",
    "jax", "jaxlib", "jax-cuda*", "flax", "numpy", "scipy", "scikit-learn", "xgboost",
    "lightgbm", "catboost", "lightning", "pytorch-lightning", "transformers", "accelerate",
    "tokenizers", "datasets", "timm", "triton", "cupy*", "nvidia-*", "mkl", "intel-openmp",
    "scipy-openblas*", "onnxruntime*", "deepspeed", "xformers", "flash-attn", "bitsandbytes",
)
GPU_FRAMEWORKS = ("torch", "tensorflow", "jax", "jaxlib", "cupy*")

MISSING: Any = object()  # a key absent on one side (None values count as absent too)


@dataclass
class Difference:
    """One way two environments differ. ``kind``: changed, added (only in b), removed (only
    in a), or hazard (the same risky condition in both: ``a`` and ``b`` describe it)."""

    layer: str
    key: str
    a: Any
    b: Any
    weight: int = 0
    why: str = ""
    kind: str = "changed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Difference:
        return cls(**{k: data[k] for k in ("layer", "key", "a", "b", "weight", "why", "kind")
                      if k in data})


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

_PATTERNS: dict[str, re.Pattern[str]] = {}


def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches anything; every other character is literal (``devices[*].name``)."""
    if pattern not in _PATTERNS:
        _PATTERNS[pattern] = re.compile(
            "".join(".*" if part == "*" else re.escape(part)
                    for part in re.split(r"(\*)", pattern)) + r"\Z", re.S)
    return _PATTERNS[pattern]


def matches(patterns: Iterable[str], key: str) -> bool:
    """Whether ``key`` matches one of ``patterns`` (``*``: anything; the rest literal)."""
    return any(_glob(p).match(key) for p in patterns)


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


def _normalize_package(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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
    Layer("env", "env", flatten),
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


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def layer_values(manifest: Mapping[str, Any], layer: Layer) -> dict[str, Any]:
    """``key: value`` of one layer of ``manifest``, noise removed. Pure; data of an
    unexpected shape is flattened as it is."""
    if layer.capture is None:
        data: Any = manifest
    else:
        data = _map(manifest.get("captures")).get(layer.capture)
        if data is None:
            return {}
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
    """Heaviest first; ties in layer order, then by key."""
    order = {layer.name: i for i, layer in enumerate(LAYERS)}
    return sorted(differences, key=lambda d: (-d.weight, order.get(d.layer, len(order)), d.key))


def env_diff(manifest_a: Mapping[str, Any] | None,
             manifest_b: Mapping[str, Any] | None) -> list[Difference]:
    """Every difference between two run manifests, ranked (see the module doc). A missing
    manifest gives no differences (the caller notes it). Raises nothing for odd data."""
    if not isinstance(manifest_a, Mapping) or not isinstance(manifest_b, Mapping):
        return []
    covered = _determinism_env_names(manifest_a, manifest_b)
    out: list[Difference] = []
    for layer in LAYERS:
        if layer.capture is not None:
            state_a = _capture_state(manifest_a, layer.capture)
            state_b = _capture_state(manifest_b, layer.capture)
            if (state_a == "captured") != (state_b == "captured"):
                out.append(_make(layer.name, "(capture)", state_a, state_b, "changed"))
                continue
        a, b = layer_values(manifest_a, layer), layer_values(manifest_b, layer)
        for key in sorted(set(a) | set(b)):
            if layer.name == "env" and key in covered:
                continue  # compared in the determinism layer
            va, vb = a.get(key, MISSING), b.get(key, MISSING)
            if _equal(va, vb):
                continue
            kind = "added" if va is MISSING else "removed" if vb is MISSING else "changed"
            out.append(_make(layer.name, key, None if va is MISSING else va,
                             None if vb is MISSING else vb, kind))
    return rank(out)


# -- what a manifest promises ------------------------------------------------------------------
@dataclass
class Facts:
    """The determinism-relevant facts of one run (None: unknown)."""

    seeded: bool
    seed: Any = None
    gpu_possible: bool | None = None
    gpu_frameworks: list[str] = field(default_factory=list)
    deterministic: bool | None = None  # deterministic GPU algorithms, when a GPU may be used
    tf32: bool | None = None
    hash_randomization: bool | None = None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def facts(manifest: Mapping[str, Any] | None, tags: Mapping[str, str] | None = None) -> Facts:
    """Read seeding, GPU use and determinism switches from a manifest (and the ``replab.seed``
    tag, which ``replab run --seed`` sets). Pure; raises nothing."""
    tags = _map(tags)
    caps = _map(_map(manifest).get("captures"))
    det = _map(caps.get("determinism"))
    seeds = det.get("seeds")
    seed = None
    if isinstance(seeds, Mapping):
        seed = seeds.get("seed", next((v for v in seeds.values() if v is not None), None))
    elif seeds not in (None, "", [], {}):
        seed = seeds
    if seed is None and tags.get("replab.seed") not in (None, ""):
        seed = tags["replab.seed"]
    out = Facts(seeded=seed is not None, seed=seed)
    if not isinstance(manifest, Mapping):
        return out
    out.hash_randomization = det.get("hash_randomization")
    gpu = caps.get("gpu")
    versions = {_normalize_package(str(k)) for k in _map(_map(caps.get("packages"))
                                                         .get("versions"))}
    loaded = {str(k) for k in _map(_map(gpu).get("frameworks"))}
    loaded |= {k for k in ("torch", "tensorflow") if k in det}
    out.gpu_frameworks = sorted(n for n in versions | loaded if matches(GPU_FRAMEWORKS, n))
    if not isinstance(gpu, Mapping):
        out.gpu_possible = None if out.gpu_frameworks else False
    else:
        has_gpu = bool(gpu.get("devices")) or bool(gpu.get("count"))
        out.gpu_possible = has_gpu and bool(out.gpu_frameworks)
    if not out.gpu_possible:
        return out
    env = _map(det.get("env"))
    torch, tf = _map(det.get("torch")), det.get("tensorflow")
    verdicts: list[bool | None] = []
    tf32: list[bool] = []
    if "torch" in out.gpu_frameworks:
        if torch.get("deterministic_algorithms") is not None:
            verdicts.append(bool(torch["deterministic_algorithms"])
                            and not torch.get("cudnn_benchmark"))
            tf32.append(bool(torch.get("matmul_allow_tf32") or torch.get("cudnn_allow_tf32")))
        else:
            verdicts.append(None)
    if "tensorflow" in out.gpu_frameworks:
        op = _map(tf).get("op_determinism")
        verdicts.append(True if op or _truthy(env.get("TF_DETERMINISTIC_OPS")) else
                        None if op is None else False)
        # TensorFlow allows TF32 by default: unknown counts as on
        tf32.append(bool(tf.get("tensor_float_32")) if isinstance(tf, Mapping) else True)
    if any(matches(("jax*", "cupy*"), n) for n in out.gpu_frameworks):
        flags = str(_map(caps.get("env")).get("XLA_FLAGS") or "")
        verdicts.append(True if "xla_gpu_deterministic_ops=true" in flags else None)
    out.deterministic = (False if False in verdicts else None if None in verdicts
                         else bool(verdicts))
    out.tf32 = (any(tf32) if tf32 else None) and env.get("NVIDIA_TF32_OVERRIDE") != "0"
    return out


def determinism_profile(manifest: Mapping[str, Any] | None,
                        tags: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """``(profile, reasons)``: what a replay of this run can promise (see the module doc)."""
    f = facts(manifest, tags)
    if not f.seeded:
        return STATISTICAL, ["no seed recorded (determinism capture, tag replab.seed)"]
    reasons = [f"seeded ({f.seed})"]
    if not isinstance(manifest, Mapping):
        return SAME_STACK, reasons + ["no manifest: GPU use and determinism flags unknown"]
    if f.gpu_possible is False:
        return BIT_FOR_BIT, reasons + ["CPU only (no GPU, or no GPU framework installed)"]
    if f.gpu_possible is None:
        reasons.append("GPU use unknown (no gpu capture)")
    else:
        reasons.append(f"GPU available to {', '.join(f.gpu_frameworks)}")
    if f.deterministic is not True:
        reasons.append("deterministic algorithms off" if f.deterministic is False else
                       "deterministic algorithms not recorded")
    if f.tf32:
        reasons.append("TF32 allowed")
    if f.gpu_possible and f.deterministic is True and not f.tf32:
        reasons.append("deterministic algorithms on, no cuDNN benchmark, no TF32")
        return BIT_FOR_BIT, reasons
    return SAME_STACK, reasons


@dataclass(frozen=True)
class Hazard:
    """A risky condition: reported when ``test`` holds for the facts of both runs."""

    key: str
    weight: int
    test: Callable[[Facts], bool]
    state: str
    why: str


HAZARDS: tuple[Hazard, ...] = (
    Hazard("seeds", 100, lambda f: not f.seeded, "not seeded",
           "the run was not seeded (seed missing in both runs' determinism capture): every "
           "random draw differs between runs"),
    Hazard("gpu nondeterminism", 85, lambda f: bool(f.gpu_possible) and f.deterministic is not
           True, "nondeterministic GPU algorithms possible",
           "GPU nondeterminism possible in both runs (deterministic algorithms off or not "
           "recorded, or cuDNN benchmark on): reduction order varies run to run"),
    Hazard("tf32", 60, lambda f: bool(f.gpu_possible and f.tf32), "TF32 allowed",
           "TF32 allowed in both runs: matmul results depend on the GPU generation"),
    Hazard("hash_randomization", 15, lambda f: f.hash_randomization is True,
           "PYTHONHASHSEED unset", "hash randomization on in both runs: the iteration order of "
           "sets of strings varies (only matters if the code depends on it)"),
)


def hazards(manifest_a: Mapping[str, Any] | None, manifest_b: Mapping[str, Any] | None,
            tags_a: Mapping[str, str] | None = None,
            tags_b: Mapping[str, str] | None = None) -> list[Difference]:
    """The :data:`HAZARDS` present in both runs, as differences of kind ``hazard``; none
    unless both manifests are given (without one, nothing is known). Pure."""
    if not isinstance(manifest_a, Mapping) or not isinstance(manifest_b, Mapping):
        return []
    fa, fb = facts(manifest_a, tags_a), facts(manifest_b, tags_b)
    return [Difference("determinism", h.key, h.state, h.state, h.weight, h.why, "hazard")
            for h in HAZARDS if h.test(fa) and h.test(fb)]
