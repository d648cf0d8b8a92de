"""The ``packages`` capture: every installed distribution, and a pip-installable lock.

Found as ``importlib.metadata`` finds them (no ``pip freeze`` subprocess), but from the
``sys.path`` directory listings here: importing ``importlib.metadata`` (and the ``email``,
``zipfile``, ``csv`` packages it pulls in) cost more of ``replab capture``'s start-up than
reading every distribution. It is still asked for what the listings cannot show: a zip file on
the path, and a custom finder of distributions on ``sys.meta_path``. Only the lines of each
``METADATA`` header up to Name and Version are read, which is several times faster than the
email parser behind ``Distribution.metadata`` (and than reading whole files). Installs from a
directory, an archive or a VCS are recorded with their source from ``direct_url.json``
(PEP 610), so the lock reinstalls them as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from importlib.machinery import PathFinder

from replab.capture.python import conda_env
from replab.capture.registry import capture
from replab.redact import strip_url_credentials

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import importlib.metadata as md
    from typing import Any

    Found = str | md.Distribution  # a metadata directory, or what importlib.metadata found

log = logging.getLogger(__name__)

_NORMALIZE = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """The PEP 503 normalized form of a distribution name."""
    return _NORMALIZE.sub("-", name).lower()


_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)  # read_text's None


def _name_version(lines: Iterable[str]) -> tuple[str | None, str | None]:
    """The first Name and Version of a metadata header's lines; stops reading once both
    are found."""
    name = version = None
    for line in lines:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "name" and name is None:
            name = value.strip()
        elif key == "version" and version is None:
            version = value.strip()
        if name and version:
            break
    return name, version


def _file_header(path: str) -> tuple[str | None, str | None] | None:
    """Name and Version from the metadata file at ``path``, reading (unbuffered, in 4 KiB
    blocks) only up to them: METADATA carries the whole README after its header. None when
    the file is absent or empty, where ``Distribution.read_text`` gives None or ""."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except _MISSING:
        return None
    try:
        raw = b""
        while True:
            block = os.read(fd, 4096)
            if not block and not raw:
                return None
            raw += block
            text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")  # as text mode reads
            end = text.find(b"\n\n")
            if end >= 0 or not block:
                head = text[:end] if end >= 0 else text
                return _name_version(head.decode("utf-8").splitlines())
            # the complete lines so far (a line break never splits a UTF-8 character)
            found = _name_version(text[:text.rfind(b"\n") + 1].decode("utf-8").splitlines())
            if found[0] and found[1]:
                return found
    finally:
        os.close(fd)


def _directory(dist: Found) -> str | None:
    """The metadata directory of ``dist``; None for one in a zip file (or elsewhere)."""
    if isinstance(dist, str):
        return dist
    base = getattr(dist, "_path", None)
    return os.fspath(base) if isinstance(base, os.PathLike) else None


def _header(dist: Found) -> tuple[str | None, str | None]:
    base = _directory(dist)
    if base is not None:  # no pathlib, no whole-file read
        for meta in ("METADATA", "PKG-INFO"):
            found = _file_header(os.path.join(base, meta))
            if found is not None:
                return found
        return None, None
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    return _name_version(text.split("\n\n", 1)[0].splitlines())


def _direct_url(dist: Found) -> dict[str, Any] | None:
    base = _directory(dist)
    if base is not None:
        path = os.path.join(base, "direct_url.json")
        if not os.path.exists(path):  # a stat: most installs have none
            return None
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except _MISSING:
            return None
    else:
        text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        log.debug("unreadable direct_url.json in %s", dist)
        return None
    if isinstance(data, dict) and isinstance(data.get("url"), str):
        data["url"] = strip_url_credentials(data["url"])
        return data
    return None


def distributions(paths: Iterable[str] | None = None) -> Iterator[Found]:
    """The distributions on ``paths`` (default ``sys.path``) in the order of
    ``importlib.metadata.distributions(path=paths)``: each a metadata directory, or the
    Distribution importlib.metadata found for a zip file on the path (or, with a custom
    finder on ``sys.meta_path``, for everything). Raises nothing for unreadable entries."""
    paths = sys.path if paths is None else list(paths)
    if any(finder is not PathFinder and getattr(finder, "find_distributions", None)
           for finder in sys.meta_path):
        yield from _metadata().distributions(path=paths)
        return
    for root in paths:
        if not isinstance(root, (str, os.PathLike)):
            continue
        root = os.fspath(root)
        found = _metadata_dirs(root)
        if found is not None:
            yield from found
        elif os.path.isfile(root):  # perhaps a zip file
            yield from _metadata().distributions(path=[root])


def _metadata_dirs(root: str) -> list[str] | None:
    """The metadata directories in the path entry ``root``, as importlib.metadata's
    ``Lookup`` orders them: ``*.dist-info`` and ``*.egg-info`` grouped by the name before
    their first dash, in listing order, then an egg's ``EGG-INFO``. None when ``root`` cannot
    be listed."""
    try:
        children = os.listdir(root or ".")
    except Exception:  # what FastPath.children tolerates
        return None
    base_is_egg = os.path.basename(root).lower().endswith(".egg")
    infos: dict[str, list[str]] = {}
    eggs: list[str] = []
    for child in children:
        low = child.lower()
        if low.endswith((".dist-info", ".egg-info")):
            key = _NORMALIZE.sub("-", low.rpartition(".")[0].partition("-")[0])
            infos.setdefault(key, []).append(os.path.join(root, child))
        elif base_is_egg and low == "egg-info":
            eggs.append(os.path.join(root, child))
    return [path for group in infos.values() for path in group] + eggs


def _metadata():
    # only for a zip file on the path or a custom finder: it pulls in email.*, zipfile, csv
    import importlib.metadata

    return importlib.metadata


def requirement(name: str, version: str, direct_url: Mapping[str, Any] | None) -> str:
    """The lock line for one distribution, in a form ``pip install -r`` accepts:
    ``name==version``, ``name @ url`` for a local or archive install, ``name @ git+url@commit``
    for a VCS install, ``-e url`` for an editable one (:func:`lock_text` adds
    ``  # name==version`` after every line but a pin). Pure.

    Locks from earlier replab versions have ``-e name @ url`` for an editable install, which pip
    refuses when the path is missing ("not a valid editable requirement");
    ``replab.replayenv.parse_lock`` reads both, and :func:`lock_hash` gives both the same hash.
    """
    if not direct_url:
        return f"{name}=={version}"
    url = direct_url.get("url", "")
    fragment = ""
    if direct_url.get("subdirectory"):
        fragment = f"#subdirectory={direct_url['subdirectory']}"
    vcs = direct_url.get("vcs_info")
    if isinstance(vcs, Mapping):
        kind = vcs.get("vcs", "git")
        prefix = "" if url.startswith(f"{kind}+") else f"{kind}+"
        ref = vcs.get("commit_id") or vcs.get("requested_revision")
        line = f"{name} @ {prefix}{url}{'@' + ref if ref else ''}{fragment}"
    elif isinstance(direct_url.get("dir_info"), Mapping):
        editable = direct_url["dir_info"].get("editable")
        line = f"-e {url}{fragment}" if editable else f"{name} @ {url}{fragment}"
    else:
        archive = direct_url.get("archive_info")
        digest = ""
        if isinstance(archive, Mapping):
            hashes = archive.get("hashes") or {}
            if "sha256" in hashes:
                digest = f"sha256={hashes['sha256']}"
            elif isinstance(archive.get("hash"), str):
                digest = archive["hash"]
        if digest and not fragment:
            fragment = f"#{digest}"
        line = f"{name} @ {url}{fragment}"
    return line


def installed(paths: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The distributions importable from ``paths`` (default ``sys.path``), first one wins per
    name as for ``importlib``; each ``{"name", "version", "direct_url"}``. Raises nothing for
    a broken distribution (it is logged and left out)."""
    seen: dict[str, dict[str, Any]] = {}
    for dist in distributions(paths):
        try:
            name, version = _header(dist)
        except (OSError, UnicodeDecodeError) as exc:
            log.debug("cannot read metadata of %s: %s", dist, exc)
            continue
        if not name or not version:
            log.debug("distribution without name or version: %s", dist)
            continue
        key = normalize(name)
        direct_url = _direct_url(dist)
        first = seen.get(key)
        if first is None:
            seen[key] = {"name": name, "version": version, "direct_url": direct_url}
        elif first["direct_url"] is None and direct_url and first["version"] == version:
            # e.g. a setuptools *.egg-info left next to the sources of an editable install
            first["direct_url"] = direct_url
    return [seen[k] for k in sorted(seen)]


def lock_text(dists: Iterable[Mapping[str, Any]]) -> str:
    """The pip requirements text pinning ``dists`` exactly; one line each, sorted. Pure."""
    lines = []
    for dist in sorted(dists, key=lambda d: normalize(d["name"])):
        line = requirement(dist["name"], dist["version"], dist.get("direct_url"))
        if dist.get("direct_url"):
            line += f"  # {dist['name']}=={dist['version']}"
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def lock_hash(lock: str | Mapping[str, Any]) -> str:
    """sha256 of a lock's requirement lines (comments, blank lines and order ignored).

    ``lock`` is the lock text, the ``packages`` capture, or a whole manifest. Raises
    ValueError when a mapping holds no lock.
    """
    if isinstance(lock, Mapping):
        data = lock.get("captures", {}).get("packages", lock) if "captures" in lock else lock
        if not isinstance(data, Mapping) or not isinstance(data.get("lock"), str):
            raise ValueError("no package lock in this manifest (was 'packages' captured?)")
        lock = data["lock"]
    lines = [line for line in map(_hashed_line, lock.splitlines()) if line]
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()


_COMMENT = re.compile(r"(?:^|\s)#")
_COMMENT_PIN = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)==")


def _hashed_line(line: str) -> str:
    """A lock line as :func:`lock_hash` hashes it: without its comment, and an editable
    ``-e url  # name==v`` as ``-e name @ url``, the form of older locks, so an environment
    keeps its hash across the change of line form."""
    parts = _COMMENT.split(line, maxsplit=1)
    body = parts[0].strip()
    if body.startswith("-e") and " @ " not in body and len(parts) > 1:
        pin = _COMMENT_PIN.match(parts[1])
        target = body[2:].strip()
        if pin and target:
            body = f"-e {pin.group(1)} @ {target}"
    return body


def conda_packages(prefix: str) -> list[str]:
    """``name=version=build`` of each package in a conda prefix, from ``conda-meta`` file
    names (no JSON parsing). Raises nothing."""
    try:
        entries = os.listdir(os.path.join(prefix, "conda-meta"))
    except OSError:
        return []
    out = []
    for entry in entries:
        if entry.endswith(".json") and entry.count("-") >= 2:
            name, version, build = entry[:-len(".json")].rsplit("-", 2)
            out.append(f"{name}={version}={build}")
    return sorted(out)


@capture("packages")
def packages_info() -> dict[str, Any]:
    """Installed distributions, their lock text and its hash, and the conda environment."""
    dists = installed()
    lock = lock_text(dists)
    conda = conda_env()
    info: dict[str, Any] = {
        "count": len(dists),
        "versions": {d["name"]: d["version"] for d in dists},
        "sources": {d["name"]: d["direct_url"] for d in dists if d["direct_url"]},
        "editable": sorted(d["name"] for d in dists
                           if (d["direct_url"] or {}).get("dir_info", {}).get("editable")),
        "lock": lock,
        "lock_hash": lock_hash(lock),
        "conda": conda,
    }
    if conda:
        info["conda_packages"] = conda_packages(conda["prefix"])
    return info
