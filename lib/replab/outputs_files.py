"""Output files as evidence: which files a run wrote, how ``replab run`` records them, and how
two runs' files compare.

A run's output files are every file under the directories it declares (``replab run --outputs
DIR``), or, without any, every file under its working directory that the run created or
changed (a snapshot of names, sizes and mtimes before and after; hidden directories,
``__pycache__``, virtual environments, ``node_modules`` and ``mlruns`` are skipped). Each is
recorded in ``replab/outputs.json`` (path, sha256, size) and kept as an artifact under
``replab/outputs/`` up to :data:`FILE_CAP` per file and :data:`TOTAL_CAP` in all
(:data:`MAX_FILES` files); bigger ones are compared by hash only. Files whose name says they
hold a secret are never kept; text files are kept with known secret values masked.

Comparison: equal sha256 is the same; otherwise CSV/TSV (cell by cell), JSON (value by value),
NPY (element by element) and text files (as printed output) are compared with the tolerances;
anything else differs. A file on one side only is reported as missing.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._files import sha256_file
from .outputs_printed import DIFFERS, SAME, WITHIN, compare_printed

SPEC = "replab/outputs.json"
ARTIFACT_DIR = "replab/outputs"
FILE_CAP = 8 * 2**20  # bytes: bigger files are recorded by hash only
TOTAL_CAP = 64 * 2**20  # bytes kept as artifacts per run
MAX_FILES = 200
MAX_SCAN = 100_000  # directory entries looked at, at most, when finding written files
SKIP_DIRS = {"__pycache__", "node_modules", "mlruns", "venv", "env", "site-packages"}
TEXT_SUFFIXES = {".txt", ".log", ".md", ".out", ".yaml", ".yml"}
MISSING_ORIGINAL, MISSING_REPLAY = "missing_in_original", "missing_in_replay"


# -- finding and recording ---------------------------------------------------------------------
def _walk(root: Path, hidden: bool) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of the files under ``root``."""
    out: dict[str, tuple[int, int]] = {}
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if hidden or (not d.startswith(".")
                                                          and d not in SKIP_DIRS)]
        for name in filenames:
            seen += 1
            if seen > MAX_SCAN:
                return out
            p = Path(dirpath, name)
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file():
                out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def snapshot(cwd: str | os.PathLike, output_dirs: Sequence[str] = ()) -> dict[str, tuple]:
    """What is there before the run (used to find the files it writes)."""
    return {} if output_dirs else _walk(Path(cwd), hidden=False)


def written_files(cwd: str | os.PathLike, before: Mapping[str, tuple],
                  output_dirs: Sequence[str] = ()) -> dict[str, Path]:
    """The run's output files, ``{path relative to cwd: absolute path}``: every file under
    ``output_dirs``, or the files under ``cwd`` created or changed since ``before``."""
    cwd = Path(cwd)
    found: dict[str, Path] = {}
    if output_dirs:
        for d in output_dirs:
            base = (cwd / d).resolve()
            if base.is_file():
                found[_rel(base, cwd)] = base
            elif base.is_dir():
                for rel in sorted(_walk(base, hidden=True)):
                    found[_rel(base / rel, cwd)] = base / rel
        return found
    for rel, stat in sorted(_walk(cwd, hidden=False).items()):
        if before.get(rel) != stat:
            found[rel] = cwd / rel
    return found


def _rel(path: Path, cwd: Path) -> str:
    try:
        return path.relative_to(cwd.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def record_files(files: Mapping[str, Path], keep) -> tuple[list[dict[str, Any]], list[str]]:
    """Hash every file and keep those within the caps through ``keep(path, artifact_dir,
    text_or_None)``; returns the file entries of the spec and notes on what was not kept."""
    from .redact import scrub_text, secret_file

    entries, notes, total = [], [], 0
    for i, (rel, path) in enumerate(sorted(files.items())):
        if i >= MAX_FILES:
            notes.append(f"only the first {MAX_FILES} of {len(files)} output files recorded")
            break
        try:
            size = path.stat().st_size
            entry: dict[str, Any] = {"path": rel, "sha256": sha256_file(path), "size": size,
                                     "artifact": None}
        except OSError as exc:
            notes.append(f"{rel}: could not be read ({exc})")
            continue
        if secret_file(rel):
            entry["note"] = "not kept: its name says it holds a secret"
        elif size > FILE_CAP or total + size > TOTAL_CAP:
            entry["note"] = (f"not kept: over the {FILE_CAP >> 20} MiB per file / "
                             f"{TOTAL_CAP >> 20} MiB per run cap; compared by hash only")
        else:
            text = None
            if path.suffix.lower() not in (".npy", ".npz"):
                try:
                    raw = path.read_text(encoding="utf-8")
                    scrubbed = scrub_text(raw)
                    if scrubbed != raw:
                        text, entry["redacted"] = scrubbed, True
                except (UnicodeDecodeError, OSError):
                    pass
            inner = rel.lstrip("/")  # a declared file outside the working directory
            parent = Path(ARTIFACT_DIR, inner).parent.as_posix()
            try:
                keep(path, parent, text)
                entry["artifact"] = f"{ARTIFACT_DIR}/{inner}"
                total += size
            except Exception as exc:
                entry["note"] = f"not kept: {exc}"
        entries.append(entry)
    return entries, notes


# -- comparing ----------------------------------------------------------------------------------
@dataclass
class RecordedFile:
    """A recorded output file: its hash and size, and a local copy when one was kept."""

    sha256: str
    size: int
    local: Path | None = None


@dataclass
class FileComparison:
    """One output file of either run: ``status`` is same, within_tolerance, differs,
    missing_in_original or missing_in_replay; ``how`` says how it was compared."""

    path: str
    status: str
    how: str = "sha256"
    detail: str = ""
    values_compared: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0

    def summary(self) -> str:
        tail = f" ({self.detail})" if self.detail else ""
        return f"{self.path}: {self.status} by {self.how}{tail}"

    def to_dict(self) -> dict:
        return asdict(self)


def _as_recorded(value: Path | RecordedFile | str) -> RecordedFile:
    if isinstance(value, RecordedFile):
        return value
    p = Path(value)
    return RecordedFile(sha256_file(p), p.stat().st_size, p)


@dataclass
class _Cmp:
    rel: float
    abs_: float
    n: int = 0
    worse: int = 0
    differ: int = 0
    first: str = ""
    max_abs: float = 0.0
    max_rel: float = 0.0
    notes: list[str] = field(default_factory=list)

    def number(self, a: float, b: float, where: str) -> None:
        self.n += 1
        if a == b or (math.isnan(a) and math.isnan(b)):
            return
        self.differ += 1
        if not (math.isfinite(a) and math.isfinite(b)):
            ok, d, r = False, math.inf, math.inf
        else:
            d = abs(a - b)
            r = d / max(abs(a), abs(b))
            ok = d <= max(self.abs_, self.rel * max(abs(a), abs(b)))
            self.max_abs, self.max_rel = max(self.max_abs, d), max(self.max_rel, r)
        if not ok:
            self.bad(f"{where}: {a:g} vs {b:g} (abs {d:.3g}, rel {r:.3g})")

    def bad(self, what: str) -> None:
        self.worse += 1
        self.first = self.first or what

    def value(self, a: Any, b: Any, where: str) -> None:
        na, nb = _num(a), _num(b)
        if na is not None and nb is not None:
            self.number(na, nb, where)
        elif isinstance(a, dict) and isinstance(b, dict):
            if set(a) != set(b):
                self.bad(f"{where}: keys differ ({sorted(set(a) ^ set(b))[:5]})")
            for k in sorted(set(a) & set(b), key=str):
                self.value(a[k], b[k], f"{where}.{k}" if where else str(k))
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                self.bad(f"{where or 'top'}: {len(a)} vs {len(b)} items")
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                self.value(x, y, f"{where}[{i}]")
        elif a != b:
            self.bad(f"{where or 'value'}: {str(a)[:40]!r} vs {str(b)[:40]!r}")

    def status(self) -> str:
        return DIFFERS if self.worse else WITHIN if self.differ else SAME


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip()) if v.strip() else None
        except ValueError:
            return None
    return None


def _csv(path: Path, delimiter: str) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter=delimiter))


def _compare_content(name: str, a: Path, b: Path, rel: float, abs_: float
                     ) -> tuple[str, str, _Cmp]:
    """(status, how, counts) for two differing files by their content."""
    suffix = Path(name).suffix.lower()
    c = _Cmp(rel, abs_)
    if suffix in (".csv", ".tsv"):
        ra, rb = _csv(a, "\t" if suffix == ".tsv" else ","), _csv(b, "\t" if suffix == ".tsv"
                                                                  else ",")
        if len(ra) != len(rb):
            c.bad(f"{len(ra)} vs {len(rb)} rows")
        for i, (x, y) in enumerate(zip(ra, rb, strict=False), 1):
            if len(x) != len(y):
                c.bad(f"row {i}: {len(x)} vs {len(y)} cells")
            for j, (u, v) in enumerate(zip(x, y, strict=False), 1):
                c.value(u, v, f"row {i} col {j}")
        return c.status(), "csv", c
    if suffix == ".json":
        c.value(json.loads(a.read_text(encoding="utf-8")),
                json.loads(b.read_text(encoding="utf-8")), "")
        return c.status(), "json", c
    if suffix == ".npy":
        import numpy as np

        xa, xb = np.load(a, allow_pickle=False), np.load(b, allow_pickle=False)
        if xa.shape != xb.shape or xa.dtype.kind != xb.dtype.kind:
            c.bad(f"shape/dtype {xa.shape} {xa.dtype} vs {xb.shape} {xb.dtype}")
            return c.status(), "npy", c
        if xa.dtype.kind not in "biufc":
            if not np.array_equal(xa, xb):
                c.bad("non-numeric arrays differ")
            return c.status(), "npy", c
        fa, fb = xa.astype(float).ravel(), xb.astype(float).ravel()
        c.n = int(fa.size)
        both_nan = np.isnan(fa) & np.isnan(fb)
        neq = (fa != fb) & ~both_nan
        c.differ = int(neq.sum())
        if c.differ:
            with np.errstate(invalid="ignore", divide="ignore"):
                d = np.abs(fa - fb)
                scale = np.maximum(np.abs(fa), np.abs(fb))
                ok = (d <= np.maximum(abs_, rel * scale)) | ~neq
                r = np.where(neq, d / scale, 0.0)
            finite = np.isfinite(d)
            c.max_abs = float(d[neq & finite].max()) if (neq & finite).any() else math.inf
            c.max_rel = float(r[neq & finite].max()) if (neq & finite).any() else math.inf
            bad = np.flatnonzero(~ok)
            if bad.size:
                k = int(bad[0])
                c.worse = int(bad.size)
                c.first = f"element {k}: {fa[k]:g} vs {fb[k]:g}"
        return c.status(), "npy", c
    if suffix in TEXT_SUFFIXES:
        p = compare_printed(a.read_text(encoding="utf-8", errors="replace"),
                            b.read_text(encoding="utf-8", errors="replace"), rel=rel,
                            abs_=abs_, stream=name)
        c.n, c.max_abs, c.max_rel = p.numbers_compared, p.max_abs, p.max_rel
        c.first = p.summary() if p.status == DIFFERS else ""
        return p.status, "text", c
    c.bad("the contents differ (not a format compared by value)")
    return DIFFERS, "sha256", c


def compare_files(original: Mapping[str, Path | RecordedFile],
                  replay: Mapping[str, Path | RecordedFile], *, rel: float, abs_: float
                  ) -> list[FileComparison]:
    """Compare two runs' output files by their relative paths (see the module's docstring).
    Values are local paths or :class:`RecordedFile` (hash only when ``local`` is None)."""
    out = []
    for name in sorted(set(original) | set(replay)):
        if name not in replay:
            out.append(FileComparison(name, MISSING_REPLAY, "presence",
                                      "written by the original, not by the replay"))
            continue
        if name not in original:
            out.append(FileComparison(name, MISSING_ORIGINAL, "presence",
                                      "written by the replay, not by the original"))
            continue
        a, b = _as_recorded(original[name]), _as_recorded(replay[name])
        if a.sha256 == b.sha256:
            out.append(FileComparison(name, SAME, "sha256"))
            continue
        if a.local is None or b.local is None:
            out.append(FileComparison(name, DIFFERS, "sha256",
                                      "hashes differ; one side was not kept (too large), so "
                                      "its values could not be compared"))
            continue
        try:
            status, how, c = _compare_content(name, a.local, b.local, rel, abs_)
        except (ValueError, OSError, UnicodeDecodeError, csv.Error) as exc:
            out.append(FileComparison(name, DIFFERS, "sha256",
                                      f"hashes differ and it could not be read by value: "
                                      f"{type(exc).__name__}: {exc}"))
            continue
        detail = c.first if status == DIFFERS else (
            f"{c.differ} of {c.n} values within tolerance" if status == WITHIN else
            f"{c.n} values identical")
        out.append(FileComparison(name, status, how, detail, c.n, c.max_abs, c.max_rel))
    return out


def read_spec(text: str | None) -> dict[str, Any] | None:
    """The parsed ``replab/outputs.json`` (None when absent or unreadable)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def recorded_files(spec: Mapping[str, Any] | None, local_dir: Path | None = None
                   ) -> dict[str, RecordedFile]:
    """The spec's files as :class:`RecordedFile`, with ``local`` set where ``local_dir`` (the
    downloaded ``replab/outputs/`` artifacts) holds the file."""
    out = {}
    for f in (spec or {}).get("files") or []:
        local = None
        if local_dir is not None and f.get("artifact"):
            p = Path(local_dir, f["artifact"][len(ARTIFACT_DIR) + 1:])
            local = p if p.is_file() else None
        out[f["path"]] = RecordedFile(f["sha256"], int(f.get("size", 0)), local)
    return out


def spec_text(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, indent=1, sort_keys=True)

