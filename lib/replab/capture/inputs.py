"""The ``inputs`` capture: the data a run declared it reads, with content hashes.

Option ``inputs``: a list of paths or URIs, or a mapping ``{name: path or URI}``. Local files
get their size and sha256; directories a tree hash: the sha256 of a ``sha256sum``-style
listing (``<sha256>  <relative path>\\n`` per file, sorted by path; symlinks to directories as
``-> target``), so ``find . -type f | sort | xargs sha256sum`` reproduces it by hand. Inputs
bigger than ``inputs_hash_max_bytes`` (default 4 GiB) get a cheaper stat hash (path, size,
mtime) marked ``"hash": "stat"``. URIs are recorded as given, credentials stripped.

A ``scheme:reference`` that is not a local path (``sklearn:load_digits``, ``hf:user/set``)
is a URI too, never a file name. ``sklearn:load_*`` (the datasets bundled with
scikit-learn) also gets a content hash of the loaded arrays (:func:`sklearn_hash`), so the
same data gives the same sha256 in every run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping

from replab.capture._util import find_git_root, relative_to, sha256_file
from replab.capture.registry import Context, Skip, capture
from replab.redact import strip_url_credentials

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INPUTS_HASH_MAX_BYTES = 4 * 1024**3
# ``name:rest`` with a 2+ letter scheme (``C:`` is a Windows drive) and no ``//`` after it
SCHEME_REF = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(?!//)(.+)$")
log = logging.getLogger(__name__)


def _walk(top: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(files, dir links) under ``top``: (relative path, absolute path) / (rel, target)."""
    files, links = [], []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                links.append((os.path.relpath(full, top).replace(os.sep, "/"),
                              os.readlink(full)))
        for f in filenames:
            full = os.path.join(dirpath, f)
            files.append((os.path.relpath(full, top).replace(os.sep, "/"), full))
    return sorted(files), sorted(links)


def tree_hash(top: str, max_bytes: int | None = None) -> dict[str, Any]:
    """Files, total size and tree hash of directory ``top`` (see module doc); a stat hash
    when the content passes ``max_bytes``. Raises OSError for an unreadable file."""
    files, links = _walk(top)
    sizes = {rel: os.stat(full).st_size for rel, full in files if os.path.exists(full)}
    total = sum(sizes.values())
    listing = hashlib.sha256()
    by_stat = max_bytes is not None and total > max_bytes
    for rel, full in files:
        if rel not in sizes:  # a dangling symlink
            listing.update(f"{'-' * 64}  {rel}\n".encode())
        elif by_stat:
            st = os.stat(full)
            listing.update(f"{st.st_size} {st.st_mtime_ns}  {rel}\n".encode())
        else:
            listing.update(f"{sha256_file(full)}  {rel}\n".encode())
    for rel, target in links:
        listing.update(f"-> {target}  {rel}\n".encode())
    return {"files": len(files), "size": total, "sha256": listing.hexdigest(),
            "hash": "stat" if by_stat else "content"}


def describe(item: Any, root: str | None, max_bytes: int | None) -> dict[str, Any]:
    """One declared input as manifest data. Raises OSError for an unreadable file."""
    text = os.fspath(item) if isinstance(item, os.PathLike) else str(item)
    if "://" in text and not text.startswith("file://"):
        return {"kind": "uri", "uri": strip_url_credentials(text)}
    ref = SCHEME_REF.match(text)
    if ref and ref.group(1).lower() != "file" and not os.path.exists(os.path.expanduser(text)):
        entry = {"kind": "uri", "uri": text}
        if ref.group(1).lower() == "sklearn":
            entry.update(sklearn_hash(ref.group(2)))
        return entry
    path = text
    if text.startswith("file:"):  # file:///p and file:/p
        from urllib.parse import unquote, urlsplit

        path = unquote(urlsplit(text).path)
    full = os.path.realpath(os.path.expanduser(path))
    entry: dict[str, Any] = {"path": relative_to(full, root)}
    if os.path.isdir(full):
        entry["kind"] = "dir"
        entry.update(tree_hash(full, max_bytes))
    elif os.path.isfile(full):
        size = os.path.getsize(full)
        entry.update({"kind": "file", "size": size})
        if max_bytes is not None and size > max_bytes:
            st = os.stat(full)
            entry.update({"hash": "stat", "sha256": hashlib.sha256(
                f"{st.st_size} {st.st_mtime_ns}".encode()).hexdigest()})
        else:
            entry.update({"hash": "content", "sha256": sha256_file(full)})
    else:
        entry["kind"] = "missing"
    return entry


def sklearn_hash(loader: str) -> dict[str, Any]:
    """Content hash of a dataset bundled with scikit-learn (``load_digits``, ``load_iris``...):
    sha256 over each array's name, dtype, shape and bytes, in the order data, target.
    {} for a loader that downloads (``fetch_*``), needs arguments, or when scikit-learn is
    not installed (the URI alone is then the record)."""
    if not re.fullmatch(r"load_[a-z0-9_]+", loader):
        return {}
    try:
        import numpy
        import sklearn
        from sklearn import datasets

        bunch = getattr(datasets, loader)()
        digest = hashlib.sha256()
        arrays = 0
        for key in ("data", "target"):
            if key not in bunch:
                continue
            array = numpy.ascontiguousarray(numpy.asarray(bunch[key]))
            if array.dtype == object:
                return {}
            digest.update(f"{key} {array.dtype.str} {array.shape}\n".encode())
            digest.update(array.tobytes())
            arrays += 1
    except Exception as exc:  # no scikit-learn, no such loader, a loader needing arguments
        log.debug("no content hash for sklearn:%s: %s", loader, exc)
        return {}
    if not arrays:
        return {}
    return {"hash": "content", "sha256": digest.hexdigest(),
            "library": f"scikit-learn {sklearn.__version__}"}


@capture("inputs")
def inputs_info(ctx: Context) -> list[dict[str, Any]]:
    """The declared inputs with hashes. Raises Skip when none are declared."""
    declared = ctx.option("inputs")
    if not declared:
        raise Skip("no inputs declared (option inputs=[...])")
    if isinstance(declared, (str, os.PathLike)):
        declared = [declared]
    root = ctx.cache.get("git_root") or find_git_root(ctx.repo)
    max_bytes = ctx.option("inputs_hash_max_bytes", INPUTS_HASH_MAX_BYTES)
    items = declared.items() if isinstance(declared, Mapping) else ((None, v) for v in declared)
    out = []
    for name, item in items:
        try:
            entry = describe(item, root, max_bytes)
        except OSError as exc:  # one unreadable input does not hide the others
            entry = {"path": str(item), "kind": "error",
                     "error": f"{type(exc).__name__}: {exc}"}
        if name is not None:
            entry = {"name": str(name), **entry}
        out.append(entry)
    return out
