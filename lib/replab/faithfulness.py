"""Was the replay the same experiment as its original? What must be equal for a verdict to
mean anything: the parameters, the code, the entrypoint and its arguments, the options of
``replab run`` and the declared inputs.

:func:`unfaithful` lists what differs, each item with where it differs; the verdict is then
NOT_FAITHFUL (:mod:`replab.verdict`) whatever the metrics say: a replay that ran other code
or other settings cannot reproduce, or fail to reproduce, the original.

============== ===================================================================
item           compared
============== ===================================================================
params         every logged parameter (autologged ones too)
code           the commit, the uncommitted diff (sha256) and the untracked files
               (path and sha256), when both runs recorded their git state
entrypoint     kind, script path / module / command (the interpreter by name), argv,
               working directory relative to the repository, notebook parameters
run options    ``replab run``'s autolog, log-models, seed and ``-p`` params (tag
               ``replab.run.options``), the seed of ``start_run(seed=)``, and the
               output-evidence options (``replab/outputs.json``)
inputs         each declared input's content hash (or URI)
============== ===================================================================

Pure functions of the two records; only the standard library is imported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .difference import command_by_name

TAG_RUN_OPTIONS = "replab.run.options"  # JSON written by `replab run`
TAG_SEED = "replab.seed"


@dataclass
class Unfaithful:
    """One way the replay was not the original's experiment."""

    item: str  # params, code, entrypoint, run options, inputs
    key: str
    original: Any
    replay: Any

    def words(self) -> str:
        return f"{self.item} {self.key}: {_show(self.original)} -> {_show(self.replay)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _show(value: Any, limit: int = 60) -> str:
    text = "(none)" if value is None else value if isinstance(value, str) else json.dumps(
        value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _caps(record: Any) -> Mapping[str, Any]:
    manifest = getattr(record, "manifest", None)
    return (manifest or {}).get("captures") or {} if isinstance(manifest, Mapping) else {}


def _diff_hash(git: Mapping[str, Any]) -> str | None:
    if git.get("diff_sha256"):
        return str(git["diff_sha256"])
    text = git.get("diff")
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest() if text else None


def _untracked(git: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for f in git.get("untracked") or ():
        if isinstance(f, Mapping) and f.get("path"):
            out[str(f["path"])] = f.get("sha256") or f.get("size")
    return out


def _code(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Unfaithful]:
    ga, gb = a.get("git"), b.get("git")
    if not isinstance(ga, Mapping) or not isinstance(gb, Mapping):
        return []
    out = []
    if ga.get("commit") != gb.get("commit"):
        out.append(Unfaithful("code", "commit", ga.get("commit"), gb.get("commit")))
    if _diff_hash(ga) != _diff_hash(gb):
        out.append(Unfaithful("code", "uncommitted diff", _diff_hash(ga), _diff_hash(gb)))
    ua, ub = _untracked(ga), _untracked(gb)
    for path in sorted(set(ua) | set(ub)):
        if ua.get(path) != ub.get(path):
            out.append(Unfaithful("code", f"untracked file {path}", ua.get(path),
                                  ub.get(path)))
    return out


def _entry(caps: Mapping[str, Any]) -> dict[str, Any]:
    e = caps.get("entrypoint")
    if not isinstance(e, Mapping):
        return {}
    out = {k: e.get(k) for k in ("kind", "path", "module", "argv", "cwd", "parameters")
           if e.get(k) not in (None, "", [], {})}
    if e.get("command"):
        out["command"] = command_by_name(e["command"])
    if out.get("cwd") == ".":
        del out["cwd"]
    return out


def _entrypoint(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Unfaithful]:
    ea, eb = _entry(a), _entry(b)
    if not ea or not eb:
        return []
    return [Unfaithful("entrypoint", k, ea.get(k), eb.get(k))
            for k in sorted(set(ea) | set(eb)) if ea.get(k) != eb.get(k)]


def run_options(tags: Mapping[str, str] | None) -> dict[str, Any]:
    """The recorded ``replab run`` options (``{}`` for a run made otherwise, or before they
    were recorded)."""
    text = (tags or {}).get(TAG_RUN_OPTIONS)
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _options(a: Any, b: Any) -> list[Unfaithful]:
    from .outputs import run_options as output_options

    out = []
    oa, ob = run_options(a.tags), run_options(b.tags)
    if oa or ob:
        for key in sorted(set(oa) | set(ob)):
            if oa.get(key) != ob.get(key):
                out.append(Unfaithful("run options", key, oa.get(key), ob.get(key)))
    sa, sb = (a.tags or {}).get(TAG_SEED), (b.tags or {}).get(TAG_SEED)
    if sa != sb and "seed" not in {u.key for u in out}:
        out.append(Unfaithful("run options", "seed", sa, sb))
    if a.outputs is not None and b.outputs is not None:
        pa, pb = output_options(a.outputs), output_options(b.outputs)
        if pa != pb:
            out.append(Unfaithful("run options", "output evidence", " ".join(pa) or "default",
                                  " ".join(pb) or "default"))
    return out


def _input_key(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get("sha256") or value.get("uri") or value.get("path")
    return value


def _input_map(items: Any) -> dict[str, Any] | None:
    """``{name: item}`` of an inputs capture (a list of items; a mapping in older ones)."""
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    if not isinstance(items, list):
        return None
    return {str(i.get("name") or i.get("path") or i.get("uri") or "?"): i
            for i in items if isinstance(i, Mapping)}


def _inputs(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Unfaithful]:
    ia, ib = _input_map(a.get("inputs")), _input_map(b.get("inputs"))
    if ia is None or ib is None:
        return []
    return [Unfaithful("inputs", str(k), _input_key(ia.get(k)), _input_key(ib.get(k)))
            for k in sorted(set(ia) | set(ib))
            if _input_key(ia.get(k)) != _input_key(ib.get(k))]


def unfaithful(original: Any, replay: Any) -> list[Unfaithful]:
    """What differs between the original's experiment and the replay's (``RunRecord``s),
    params first. Empty for a faithful replay. Pure."""
    out = [Unfaithful("params", k, original.params.get(k), replay.params.get(k))
           for k in sorted(set(original.params) | set(replay.params))
           if original.params.get(k) != replay.params.get(k)]
    ca, cb = _caps(original), _caps(replay)
    out += _code(ca, cb)
    out += _entrypoint(ca, cb)
    out += _options(original, replay)
    out += _inputs(ca, cb)
    return out
