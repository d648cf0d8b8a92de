"""What a recorded pip lock can install on this machine: each lock line parsed, and the plan
of requirement lines to hand to pip, with every line that cannot be installed here set
aside with its reason. Reads the file system (does a recorded path exist?), runs nothing;
:mod:`replab.replayenv` runs pip on the plan.

Lock lines (see :func:`replab.capture.packages.requirement`): ``name==version``;
``name @ url`` (a local directory, an archive, a VCS URL); ``-e url  # name==version`` for an
editable install, and ``-e name @ url  # name==version`` in locks from earlier versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPLAB = "replab"

_COMMENT = re.compile(r"(?:^|\s)#")
_COMMENT_PIN = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_NAME_AT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*@\s*(\S+)$")
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def norm(name: str) -> str:
    """The PEP 503 normalized form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Entry:
    """One lock line. ``target`` is the URL or path after ``name @`` / ``-e`` (None for a
    pin); ``path`` the local file or directory it names (None when not local)."""

    line: str
    name: str | None
    version: str | None
    editable: bool = False
    target: str | None = None
    path: Path | None = None

    @property
    def key(self) -> str | None:
        return norm(self.name) if self.name else None

    def requirement(self, target: str | None = None) -> str:
        """The line for pip, from ``target`` (default the recorded one)."""
        target = target or self.target
        if target is None:
            return f"{self.name}=={self.version}"
        if self.editable:
            return f"-e {target}"
        return f"{self.name} @ {target}"


def local_path(target: str) -> Path | None:
    """The local path a requirement target names (``file://`` URL or a plain path), without
    its ``#fragment`` but with its ``subdirectory``; None for a remote URL."""
    if "://" in target:
        parts = urlsplit(target)
        if parts.scheme != "file":
            return None
        path = Path(unquote(parts.path))
        fragment = parts.fragment
    else:
        if not target.startswith(("/", "./", "../", "~")):
            return None
        raw, _, fragment = target.partition("#")
        path = Path(raw).expanduser()
    sub = re.search(r"(?:^|&)subdirectory=([^&]+)", fragment)
    return path / sub.group(1) if sub else path


def parse_entry(line: str) -> Entry | None:
    """The entry of one lock line; None for a blank line, a comment or a pip option."""
    parts = _COMMENT.split(line, maxsplit=1)
    body = parts[0].strip()
    pin = _COMMENT_PIN.match(parts[1]) if len(parts) > 1 else None
    if not body or (body.startswith("-") and not body.startswith("-e")):
        return None
    editable = body.startswith("-e")
    if editable:
        body = body[2:].strip()
        if body.startswith("="):  # --editable=… is not what replab writes; be lenient
            body = body[1:].strip()
    m = _NAME_AT.match(body)
    if m:
        name, target = m.group(1), m.group(2)
    elif editable:
        name, target = (pin.group(1) if pin else None), body
    else:
        m = _PIN.match(body)
        if not m:
            return None
        return Entry(line.strip(), m.group(1), m.group(2))
    version = pin.group(2) if pin and (name is None or norm(pin.group(1)) == norm(name)) else None
    return Entry(line.strip(), name, version, editable, target, local_path(target))


def parse_lock(lock: str) -> dict[str, str]:
    """{normalized name: version} of a replab lock, every line form (old and new) read."""
    out = {}
    for line in lock.splitlines():
        entry = parse_entry(line)
        if entry and entry.key and entry.version:
            out[entry.key] = entry.version
    return out


@dataclass
class Plan:
    """``lines`` go to pip, in lock order; ``entries[i]`` is the lock entry ``lines[i]``
    installs. ``skipped`` holds ``(entry, reason)`` for each entry that cannot be
    installed here; ``notes`` says where a line is installed from something else than the
    lock says (replab from the running source)."""

    lines: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[Entry, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


def plan(lock: str, *, replab_source: str | Path | None = None) -> Plan:
    """Which lock lines can be installed here, and how. A local path that still exists is
    installed from that path; replab (whatever its line) is installed from ``replab_source``
    (the running replab's source tree) when its recorded path is gone or it is pinned to an
    index version; any other local path that is gone is skipped with its reason. Remote
    lines (index pins, archives, VCS) are kept: only pip can tell if they install."""
    out = Plan()
    source = Path(replab_source) if replab_source else None
    for line in lock.splitlines():
        entry = parse_entry(line)
        if entry is None:
            continue
        local_missing = entry.path is not None and not entry.path.exists()
        if entry.key == REPLAB and (local_missing or entry.target is None):
            if source is not None:
                requirement = entry.requirement(source.as_uri())
                why = (f"its recorded path {entry.path} does not exist here" if local_missing
                       else f"it is recorded as {entry.requirement()}, not a path")
                out.notes.append(f"replab: installed from the running replab's source "
                                 f"{source} ({why})")
                out.lines.append(requirement)
                out.entries.append(entry)
                continue
            if local_missing:
                out.skipped.append((entry, f"the recorded path {entry.path} does not "
                                    "exist here, and the running replab has no source tree "
                                    "to install instead (install replab into the replay "
                                    "environment yourself)"))
                continue
        elif local_missing:
            kind = "directory" if entry.editable or not entry.path.suffix else "file"
            out.skipped.append((entry, f"installed from the local {kind} {entry.path}, "
                                "which does not exist here (copy or clone it to that path, "
                                "or install the package into the replay environment "
                                "yourself)"))
            continue
        out.lines.append(entry.requirement())
        out.entries.append(entry)
    return out
