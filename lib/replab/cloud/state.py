"""``<workdir>/state.json``: every cloud resource provisioning created or adopted.

The teardown inventory. One live record per kind (``lease``, ``keypair``,
``security_group``, ``server``, ``floating_ip``), each with ``id``, ``name``, ``site``,
``created_at`` and ``created`` (False: it existed and was adopted), plus kind-specific fields
(a lease's ``start``/``end`` in ISO 8601, which ``replab.credentials.lease_end`` reads). A
record marked deleted gets ``deleted_at``; a later record of the same kind moves the old one
to ``history``. Written atomically (temporary file, then rename).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import iso, utcnow

STATE_FILE = "state.json"
SCHEMA_VERSION = 1
KINDS = ("lease", "keypair", "security_group", "server", "floating_ip")


class State:
    """The inventory in ``path``; :meth:`load` reads it, every change saves it."""

    def __init__(self, path: str | os.PathLike, data: Mapping[str, Any] | None = None):
        self.path = Path(path).expanduser()
        self.data: dict[str, Any] = dict(data or {"schema_version": SCHEMA_VERSION})

    @classmethod
    def load(cls, workdir: str | os.PathLike) -> State:
        """The state of ``workdir`` (a directory, or the file itself); empty when there is
        none yet. Raises ConfigError naming the file when it is not valid JSON."""
        p = Path(workdir).expanduser()
        if p.is_dir() or p.suffix != ".json":
            p = p / STATE_FILE
        if not p.exists():
            return cls(p)
        try:
            data = json.loads(p.read_text())
        except ValueError as exc:
            raise ConfigError([("", f"not valid JSON ({exc}); fix it or move it away (it "
                                    "lists the cloud resources to tear down)")], str(p)) from None
        if not isinstance(data, dict):
            raise ConfigError([("", "expected a JSON object")], str(p))
        if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ConfigError([("schema_version", f"{data['schema_version']!r} is not "
                                                  f"supported; this replab reads "
                                                  f"{SCHEMA_VERSION}")], str(p))
        return cls(p, data)

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
        return self.path

    # -- records --------------------------------------------------------------------------
    def record(self, kind: str, *, id: str, name: str, site: str, created: bool = True,
               at: _dt.datetime | None = None, **extra: Any) -> dict[str, Any]:
        """Record resource ``kind`` (one of :data:`KINDS`) and save. Recording the same id
        again updates the record (keeping its ``created_at`` and every field this call does
        not name); another id replaces it and keeps the old one in ``history``."""
        if kind not in KINDS:
            raise ValueError(f"unknown resource kind {kind!r}; known: {', '.join(KINDS)}")
        old = self.data.get(kind)
        entry: dict[str, Any] = {"id": id, "name": name, "site": site, "created": created,
                                 "created_at": iso(at or utcnow()), "deleted_at": None}
        if old and old.get("id") == id:
            # what an earlier record knew (reservation, image, login) and this one does not
            # name is kept
            entry = {**{k: v for k, v in old.items() if k not in entry}, **entry}
            entry["created_at"] = old.get("created_at", entry["created_at"])
            entry["created"] = old.get("created", created)
        elif old:
            self.data.setdefault("history", []).append({"kind": kind, **old})
        entry.update(extra)
        self.data[kind] = entry
        self.save()
        return entry

    def mark_deleted(self, kind: str, *, at: _dt.datetime | None = None) -> dict | None:
        """Mark the live ``kind`` record deleted and save; returns it (None if there was
        none)."""
        entry = self.get(kind)
        if entry is None:
            return None
        entry["deleted_at"] = iso(at or utcnow())
        self.save()
        return entry

    def get(self, kind: str) -> dict[str, Any] | None:
        """The live (not deleted) record of ``kind``, or None."""
        entry = self.data.get(kind)
        return entry if entry and not entry.get("deleted_at") else None

    def live(self) -> dict[str, dict[str, Any]]:
        """Every live record, by kind, in teardown-relevant creation order."""
        return {k: self.data[k] for k in KINDS if self.get(k)}

    def ids(self) -> dict[str, str]:
        return {k: v["id"] for k, v in self.live().items()}

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.data))


def live_ids(state: State | Mapping[str, Any] | None) -> dict[str, str]:
    """``{kind: id}`` of the live resources in a State or a state.json-like mapping."""
    if state is None:
        return {}
    if isinstance(state, State):
        return state.ids()
    out = {}
    for kind in KINDS:
        entry = state.get(kind)
        if isinstance(entry, Mapping) and entry.get("id") and not entry.get("deleted_at"):
            out[kind] = entry["id"]
        elif isinstance(entry, str) and entry:  # {"lease": "<id>"} is accepted too
            out[kind] = entry
    return out
