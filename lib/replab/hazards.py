"""What a run's evidence promises about determinism: its profile, and the hazards no diff
can show (risky conditions true in *both* runs).

:func:`determinism_profile` reads the original's manifest, tags and params:
``bit-for-bit`` (seeded; CPU only, or deterministic algorithms on and no cuDNN benchmark and
no TF32), ``same-stack`` (seeded, but GPU nondeterminism or TF32 possible, or unknown),
``statistical`` (no seed recorded, or params that show unseeded randomness). The profile is
observed, not assumed: ``replab run --seed`` seeds only the generators
:func:`replab.tracking.seed_everything` reached (recorded as ``seeds.seeded``), and a
parameter such as ``random_state: None`` says the program draws fresh randomness whatever
replab seeded.

:func:`unseeded_params` finds those parameters (MLflow stores params as strings, so ``None``
arrives as ``"None"``): a seed-like key (``random_state``, ``seed``, ``random_seed``,
``*_seed``, ``rng``; nested keys such as ``model.random_state`` or ``clf__random_state`` too)
whose value is None; ``shuffle`` true with no seed next to it nor at the top level; a value
like ``KFold(random_state=None, shuffle=True)``. :func:`hazards` reports them first (layer
``params``, weight 100), then the :data:`HAZARDS` of the manifests.

Pure functions of JSON data; only the standard library is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .difference import Difference, as_map, matches, normalize_package

BIT_FOR_BIT = "bit-for-bit"
SAME_STACK = "same-stack"
STATISTICAL = "statistical"

GPU_FRAMEWORKS = ("torch", "tensorflow", "jax", "jaxlib", "cupy*")
# The generators replab.tracking.seed_everything can seed (besides random), by package name.
SEEDABLE = {"numpy": ("numpy",), "torch": ("torch",), "tensorflow": ("tensorflow",
                                                                     "tensorflow-*")}
PARAM_WEIGHT = 100  # above every other difference: the program itself says it is unseeded


# -- params that reveal unseeded randomness ---------------------------------------------------
_SEED_KEY = re.compile(r"(?:random_state|(?:\w+_)?seed|rng)\Z", re.I)
_SHUFFLE_KEY = re.compile(r"(?:\w+_)?shuffle\Z", re.I)
_PARTS = re.compile(r"\.|__|/")
_NONE = ("none", "null")
_INNER_NONE = re.compile(r"\b(random_state|\w*seed)=None\b")
_INNER_SHUFFLE = re.compile(r"\bshuffle=True\b")


def _name_and_scope(key: str) -> tuple[str, str]:
    parts = _PARTS.split(key)
    return parts[-1], key[: len(key) - len(parts[-1])]


def _is_none(value: Any) -> bool:
    return value is None or str(value).strip().lower() in _NONE


def unseeded_params(params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``[(key, why)]`` of the params that show unseeded randomness, in key order (see the
    module doc). Pure; raises nothing for odd data."""
    params = as_map(params)
    seeded_scopes: set[str] = set()
    seed_scopes: set[str] = set()
    for key, value in params.items():
        name, scope = _name_and_scope(str(key))
        if _SEED_KEY.match(name):
            seed_scopes.add(scope)
            if not _is_none(value):
                seeded_scopes.add(scope)
    out: list[tuple[str, str]] = []
    for key, value in sorted(((str(k), v) for k, v in params.items()), key=lambda kv: kv[0]):
        name, scope = _name_and_scope(key)
        if _SEED_KEY.match(name) and _is_none(value):
            what = ("the estimator draws a fresh seed each run" if name.lower() == "random_state"
                    else "a fresh seed is drawn each run")
            out.append((key, f"parameter {key} is None: {what}"))
        elif (_SHUFFLE_KEY.match(name) and str(value).strip().lower() == "true"
              and scope not in seed_scopes and "" not in seeded_scopes):
            out.append((key, f"parameter {key} is True and no seed is given: the data are "
                             "shuffled differently each run"))
        elif isinstance(value, str) and _INNER_SHUFFLE.search(value):
            inner = _INNER_NONE.search(value)
            if inner:
                out.append((key, f"parameter {key} has {inner.group(1)}=None and shuffle=True: "
                                 "it shuffles differently each run"))
    return out


def _param_hazards(params_a: Mapping[str, Any] | None,
                   params_b: Mapping[str, Any] | None) -> list[Difference]:
    found = unseeded_params(params_a)
    if params_b is not None:  # a hazard is what both runs show
        in_b = {k for k, _ in unseeded_params(params_b)}
        found = [(k, why) for k, why in found if k in in_b]
    a = {str(k): v for k, v in as_map(params_a).items()}
    b = {str(k): v for k, v in as_map(params_b).items()} or a
    return [Difference("params", k, a.get(k), b.get(k), PARAM_WEIGHT, why, "hazard")
            for k, why in found]


# -- what a manifest promises -----------------------------------------------------------------
@dataclass
class Facts:
    """The determinism-relevant facts of one run (None: unknown)."""

    seeded: bool
    seed: Any = None
    seeded_rngs: list[str] | None = None  # the generators replab seeded, when recorded
    unseeded_rngs: list[str] = field(default_factory=list)  # installed, not seeded by replab
    gpu_possible: bool | None = None
    gpu_frameworks: list[str] = field(default_factory=list)
    deterministic: bool | None = None  # deterministic GPU algorithms, when a GPU may be used
    tf32: bool | None = None
    hash_randomization: bool | None = None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def facts(manifest: Mapping[str, Any] | None, tags: Mapping[str, str] | None = None) -> Facts:
    """Read seeding, GPU use and determinism switches from a manifest (and the tags
    ``replab run --seed`` sets: ``replab.seed`` and ``replab.seeds.seeded``, the generators
    the program's interpreter really seeded). Pure; raises nothing."""
    tags = as_map(tags)
    caps = as_map(as_map(manifest).get("captures"))
    det = as_map(caps.get("determinism"))
    seeds = det.get("seeds")
    seed = None
    seeded_rngs = None
    if isinstance(seeds, Mapping):
        seed = seeds.get("seed", next((v for k, v in seeds.items()
                                       if v is not None and k != "seeded"), None))
        listed = seeds.get("seeded")
        if isinstance(listed, Mapping):  # seed_everything's own {generator: bool}
            listed = [k for k, v in listed.items() if v]
        if isinstance(listed, list):
            seeded_rngs = sorted(str(x) for x in listed)
    elif seeds not in (None, "", [], {}):
        seed = seeds
    if seed is None and tags.get("replab.seed") not in (None, ""):
        seed = tags["replab.seed"]
    if seeded_rngs is None and "replab.seeds.seeded" in tags:
        # `replab run --seed`: what the program's interpreter seeded at start (tracking.
        # TAG_SEEDED, set by replab's sitecustomize; empty: nothing, e.g. not Python)
        seeded_rngs = sorted(x for x in str(tags["replab.seeds.seeded"]).split(",") if x)
    # a seed with an empty ``seeded`` list seeded nothing: observed, not assumed
    out = Facts(seeded=seed is not None and seeded_rngs != [], seed=seed,
                seeded_rngs=seeded_rngs)
    if not isinstance(manifest, Mapping):
        return out
    out.hash_randomization = det.get("hash_randomization")
    gpu = caps.get("gpu")
    versions = {normalize_package(str(k)) for k in as_map(as_map(caps.get("packages"))
                                                          .get("versions"))}
    if seeded_rngs is not None:
        out.unseeded_rngs = [rng for rng, pkgs in SEEDABLE.items()
                             if rng not in seeded_rngs and any(matches(pkgs, v)
                                                               for v in versions)]
    loaded = {str(k) for k in as_map(as_map(gpu).get("frameworks"))}
    loaded |= {k for k in ("torch", "tensorflow") if k in det}
    out.gpu_frameworks = sorted(n for n in versions | loaded if matches(GPU_FRAMEWORKS, n))
    if not isinstance(gpu, Mapping):
        out.gpu_possible = None if out.gpu_frameworks else False
    else:
        has_gpu = bool(gpu.get("devices")) or bool(gpu.get("count"))
        out.gpu_possible = has_gpu and bool(out.gpu_frameworks)
    if not out.gpu_possible:
        return out
    env = as_map(det.get("env"))
    torch, tf = as_map(det.get("torch")), det.get("tensorflow")
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
        op = as_map(tf).get("op_determinism")
        verdicts.append(True if op or _truthy(env.get("TF_DETERMINISTIC_OPS")) else
                        None if op is None else False)
        # TensorFlow allows TF32 by default: unknown counts as on
        tf32.append(bool(tf.get("tensor_float_32")) if isinstance(tf, Mapping) else True)
    if any(matches(("jax*", "cupy*"), n) for n in out.gpu_frameworks):
        flags = str(as_map(caps.get("env")).get("XLA_FLAGS") or "")
        verdicts.append(True if "xla_gpu_deterministic_ops=true" in flags else None)
    out.deterministic = (False if False in verdicts else None if None in verdicts
                         else bool(verdicts))
    out.tf32 = (any(tf32) if tf32 else None) and env.get("NVIDIA_TF32_OVERRIDE") != "0"
    return out


def _seed_reasons(f: Facts) -> list[str]:
    reasons = [f"seeded ({f.seed})"]
    if f.seeded_rngs is None:
        reasons.append("which generators were seeded is not recorded (a seed in the tag "
                       "replab.seed or the capture, no seeds.seeded list)")
    else:
        reasons.append(f"replab seeded {', '.join(f.seeded_rngs)}")
    if f.unseeded_rngs:
        reasons.append(f"installed but not seeded by replab: {', '.join(f.unseeded_rngs)} "
                       "(tensorflow is seeded only when imported before start_run)")
    return reasons


def determinism_profile(manifest: Mapping[str, Any] | None,
                        tags: Mapping[str, str] | None = None, *,
                        params: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
    """``(profile, reasons)``: what a replay of this run can promise (see the module doc).
    ``params``: the run's params; any that show unseeded randomness make it statistical."""
    f = facts(manifest, tags)
    unseeded = [why for _, why in unseeded_params(params)]
    if not f.seeded:
        first = ("no seed recorded (determinism capture, tag replab.seed)" if f.seed is None
                 else f"seed {f.seed} recorded, but replab seeded no generator")
        return STATISTICAL, [first, *unseeded]
    reasons = _seed_reasons(f)
    if unseeded:
        return STATISTICAL, reasons + unseeded
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
    state: str | Callable[[Facts], str]  # the condition, in words (of the original's facts)
    why: str


HAZARDS: tuple[Hazard, ...] = (
    Hazard("seeds", 100, lambda f: not f.seeded, "not seeded",
           "the run was not seeded (seed missing in both runs' determinism capture): every "
           "random draw differs between runs"),
    Hazard("seeds.seeded", 90, lambda f: f.seeded and bool(f.unseeded_rngs),
           lambda f: f"not seeded by replab: {', '.join(f.unseeded_rngs)}",
           "replab seeded some generators but not every installed one (it seeds tensorflow "
           "only when imported before start_run): draws from an unseeded one differ between "
           "runs"),
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
            tags_b: Mapping[str, str] | None = None, *,
            params_a: Mapping[str, Any] | None = None,
            params_b: Mapping[str, Any] | None = None) -> list[Difference]:
    """Risky conditions present in both runs, as differences of kind ``hazard``: first the
    params that show unseeded randomness (:func:`unseeded_params`; those of ``params_a``
    alone when ``params_b`` is None), then the :data:`HAZARDS` of the manifests (none
    unless both manifests are given: without one, nothing is known). Pure."""
    out = _param_hazards(params_a, params_b)
    if not isinstance(manifest_a, Mapping) or not isinstance(manifest_b, Mapping):
        return out
    fa, fb = facts(manifest_a, tags_a), facts(manifest_b, tags_b)
    for h in HAZARDS:
        if h.test(fa) and h.test(fb):
            state = h.state(fa) if callable(h.state) else h.state
            out.append(Difference("determinism", h.key, state, state, h.weight, h.why,
                                  "hazard"))
    return out
