"""Printed output as evidence: two runs' stdout (or stderr) compared line by line.

Each line is normalized (ANSI colours dropped, only the text after the last carriage return
kept, as a terminal shows a progress bar, trailing blanks stripped; blank lines are skipped),
then the :data:`DEFAULT_MASKS` (and the user's own) replace what always varies with a
placeholder (``<timestamp>``, ``<tmp-path>``...). What is left is split into numbers and text:
the text must be identical, the numbers agree when ``|a - b| <= max(abs, rel * max(|a|,
|b|))`` (the metrics' rule; equal values, and NaN against NaN, are identical, so ``0.50`` and
``0.5`` are the same). Lines are aligned on their text (difflib), so one extra warning line
is one extra line, not a shift of everything after it.

A number is a decimal or scientific literal standing alone: not inside a word (``x2``,
``v1``, ``conv3d`` are text). Masks are regular expressions; each match becomes ``<name>``.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from .errors import ConfigError

SAME, WITHIN, DIFFERS = "same", "within_tolerance", "differs"
MAX_MISMATCHES = 100  # kept in detail; mismatch_count has them all
_ALIGN_LIMIT = 20000  # more lines than this on a side: aligned by position, not difflib


@dataclass(frozen=True)
class Mask:
    """What always varies between runs: every match of ``pattern`` becomes ``<name>``."""

    name: str
    pattern: str
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_-]+", self.name or ""):
            raise ConfigError([("mask", f"{self.name!r}: a mask's name is letters, '-' or "
                                        "'_' (no digits: the placeholder must hold no number)")])
        try:
            _compiled(self.pattern)
        except re.error as exc:
            raise ConfigError([(f"mask {self.name}", f"{self.pattern!r} is not a valid "
                                                     f"regular expression: {exc}")]) from exc

    def apply(self, line: str) -> str:
        return _compiled(self.pattern).sub(f"<{self.name}>", line)

    @classmethod
    def parse(cls, text: str, index: int = 1) -> Mask:
        """``NAME=REGEX`` or a bare ``REGEX`` (named ``user``). Raises ConfigError."""
        m = re.match(r"([A-Za-z_-]+)=(.+)$", text)
        if m:
            return cls(m.group(1), m.group(2), "given by the user")
        return cls("user", text, "given by the user")


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
#: The masks applied unless dropped (``replab run --no-mask NAME``, or ``all``), in order.
DEFAULT_MASKS: tuple[Mask, ...] = (
    Mask("mlflow-link", r"^.*View (?:run|experiment) .*at: \S+$",
         "MLflow's own '🏃 View run NAME at: URL' lines (random run names, ids, ports)"),
    Mask("timestamp", r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
                      r"(?:Z|[+-]\d{2}:?\d{2})?\b",
         "ISO 8601 date and time: 2026-12-02T18:58:44.123Z, 2026-12-02 18:58:44,123"),
    Mask("timestamp", rf"\b{_DAY},? +{_MONTH} +\d{{1,2}} +\d{{2}}:\d{{2}}:\d{{2}}"
                      r"(?: +[A-Z]{2,5})? +\d{4}\b",
         "ctime/date(1): Wed Dec  2 18:58:44 UTC 2026"),
    Mask("date", rf"\b\d{{4}}[-/]\d{{2}}[-/]\d{{2}}\b|\b\d{{1,2}}/\d{{1,2}}/\d{{4}}\b"
                 rf"|\b\d{{1,2}} {_MONTH} \d{{4}}\b",
         "a date alone: 2026-12-02, 12/02/2026, 2 Dec 2026"),
    Mask("clock", r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b",
         "a time of day or an h:mm:ss duration: 18:58:44, 0:00:03.5"),
    Mask("progress", r"\[[\d:]+<[\d:?]+(?:, *[\d.?]+ *(?:it|s|[A-Za-z]+)/(?:s|it))?\]"
                     r"|\b[\d.]+ *(?:it/s|s/it)\b",
         "tqdm's elapsed<remaining and rate: [00:01<00:00, 9.5it/s]"),
    Mask("duration", r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)? ?(?:ns|us|µs|ms|s|sec|secs|seconds?"
                     r"|min|mins|minutes?|h|hrs?|hours?)\b",
         "a number of seconds, minutes or hours: 1.2s, 350 ms, 3 minutes"),
    Mask("tmp-path", r"(?:/private)?/(?:tmp|var/tmp|var/folders|dev/shm)/[^\s'\",;)\]}]*"
                     r"|\b[A-Za-z]:\\[^\s'\"]*\\Temp\\[^\s'\",;)\]}]*",
         "a path under a temporary directory: /tmp/tmpab12cd/model.pkl"),
    Mask("pid", r"(?i)\b(?:pid|ppid|process id)\b[\s=:#]*\d+",
         "a process id: pid 12345, PID=12345"),
    Mask("hex-address", r"\b0x[0-9a-fA-F]{6,}\b",
         "a memory address: <object at 0x7f3a2c1d4e50>"),
    Mask("uuid", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
                 r"-[0-9a-fA-F]{12}\b|\b[0-9a-f]{32}\b",
         "a UUID or an MLflow run id (32 hex digits)"),
)


def resolve_masks(add: Iterable[str | Mask] = (), drop: Iterable[str] = ()) -> list[Mask]:
    """The defaults less ``drop`` (mask names, or ``all``), then ``add`` (``NAME=REGEX`` or
    ``REGEX``). Raises ConfigError for an unknown name or a bad expression."""
    drop = set(drop)
    known = {m.name for m in DEFAULT_MASKS}
    unknown = drop - known - {"all"}
    if unknown:
        raise ConfigError([("--no-mask", f"no default mask named {', '.join(sorted(unknown))}"
                                         f"; the names are {', '.join(sorted(known))} or all")])
    masks = [m for m in DEFAULT_MASKS if "all" not in drop and m.name not in drop]
    for i, extra in enumerate(add, 1):
        masks.append(extra if isinstance(extra, Mask) else Mask.parse(extra, i))
    return masks


# -- lines and numbers --------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
                     r"|(?i:nan|inf(?:inity)?))(?![\w])")


def normalize(text: str) -> list[tuple[int, str]]:
    """The non-blank lines of ``text`` as a terminal shows them, with their 1-based numbers."""
    out = []
    for n, raw in enumerate(text.split("\n"), 1):  # not splitlines: it splits at \r
        line = _ANSI.sub("", raw)
        if "\r" in line:
            parts = [p for p in line.split("\r") if p.strip()]
            line = parts[-1] if parts else ""
        line = line.rstrip()
        if line.strip():
            out.append((n, line))
    return out


def _split(line: str) -> tuple[str, list[str]]:
    nums = _NUMBER.findall(line)
    return _NUMBER.sub("#", line), nums


def _agree(a: float, b: float, rel: float, abs_: float) -> tuple[bool, bool]:
    """(identical, within tolerance)."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True, True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False, False
    return False, abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


@dataclass
class LineMismatch:
    """One line that differs: its numbers (1-based, None on the side it is missing from)."""

    line: int | None
    replay_line: int | None
    original: str
    replay: str
    reason: str


@dataclass
class PrintedComparison:
    """The result of :func:`compare_printed`."""

    stream: str
    status: str
    rel: float
    abs: float
    lines_original: int = 0
    lines_replay: int = 0
    lines_compared: int = 0
    numbers_compared: int = 0
    lines_within: int = 0
    mismatch_count: int = 0
    mismatches: list[LineMismatch] = field(default_factory=list)
    max_abs: float = 0.0
    max_rel: float = 0.0
    measured: int = 0  # numbers judged against a measured spread, not the tolerance

    @property
    def evidence(self) -> bool:
        """Whether there was anything to compare (a line on either side)."""
        return bool(self.lines_original or self.lines_replay)

    def summary(self) -> str:
        """One line: what was compared and how it came out."""
        head = (f"{self.stream}: {self.lines_compared} lines, {self.numbers_compared} numbers "
                f"compared")
        if self.status == SAME:
            return f"{head}: identical (after masking)"
        if self.status == WITHIN:
            how = (f"; {self.measured} numbers judged against the replays' measured spread"
                   if self.measured else "")
            return (f"{head}: {self.lines_within} lines within tolerance (abs {self.abs:g}, "
                    f"rel {self.rel:g}; max rel {self.max_rel:.3g}{how})")
        first = self.mismatches[0]
        where = (f"line {first.line}" if first.line is not None
                 else f"replay line {first.replay_line}")
        return (f"{head}: {self.mismatch_count} lines differ; first {where}: "
                f"{first.original[:80]!r} vs {first.replay[:80]!r} ({first.reason})")

    def to_dict(self) -> dict:
        return asdict(self)


def _substitute(text: str, paths: Mapping[str, str] | None) -> str:
    for label, path in sorted((paths or {}).items(), key=lambda kv: -len(kv[1] or "")):
        if path and len(path) > 1:
            text = text.replace(path, f"<{label}>")
    return text


def _align(ma: list[str], mb: list[str], ka: list[str], kb: list[str]) -> list[tuple]:
    """Opcodes pairing lines: on the masked lines (numbers included, so equal lines anchor),
    then each unequal-length changed block again on its text without the numbers."""
    out = []
    for op in difflib.SequenceMatcher(None, ma, mb, autojunk=False).get_opcodes():
        tag, i1, i2, j1, j2 = op
        if tag == "equal":
            out.append(op)
        elif tag == "replace" and i2 - i1 != j2 - j1:
            sub = difflib.SequenceMatcher(None, ka[i1:i2], kb[j1:j2], autojunk=False)
            out += [(t, i1 + x1, i1 + x2, j1 + y1, j1 + y2)
                    for t, x1, x2, y1, y2 in sub.get_opcodes()]
        else:
            out.append(op)
    return out


NumberKey = tuple[str, int, int]  # (line text without its numbers, occurrence, position)


def _prepared(text: str, masks: Sequence[Mask], paths) -> list[tuple[int, str, str, list[str],
                                                                      str]]:
    rows = []
    for n, line in normalize(_substitute(text or "", paths)):
        masked = line
        for m in masks:
            masked = m.apply(masked)
        skeleton, nums = _split(masked)
        rows.append((n, line, skeleton, nums, masked))
    return rows


def _keys(rows) -> list[list[NumberKey]]:
    """Each row's number keys: the k-th line with that text, the j-th number in it."""
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        k = seen.get(row[2], 0)
        seen[row[2]] = k + 1
        out.append([(row[2], k, j) for j in range(len(row[3]))])
    return out


def printed_numbers(text: str, *, masks: Sequence[Mask] | None = None,
                    paths: Mapping[str, str] | None = None) -> dict[NumberKey, float]:
    """Every number a printed output holds, after the masks, by :data:`NumberKey`: what the
    spread of repeated replays is measured on (:mod:`replab.spread`)."""
    rows = _prepared(text, DEFAULT_MASKS if masks is None else masks, paths)
    return {key: float(num) for row, keys in zip(rows, _keys(rows), strict=True)
            for key, num in zip(keys, row[3], strict=True)}


def compare_printed(original: str, replay: str, *, rel: float, abs_: float,
                    masks: Sequence[Mask] | None = None, stream: str = "stdout",
                    original_paths: Mapping[str, str] | None = None,
                    replay_paths: Mapping[str, str] | None = None,
                    spread: Mapping[NumberKey, tuple[float, float]] | None = None
                    ) -> PrintedComparison:
    """Compare two printed outputs line by line (see the module's docstring).

    ``masks`` default to :data:`DEFAULT_MASKS`; ``original_paths`` / ``replay_paths`` map a
    label to a directory of that run (``{"cwd": "/home/u/proj"}``): its literal text becomes
    ``<cwd>`` on each side, so a replay in another directory prints the same lines.
    ``spread``: ``{number key: (centre, allowed deviation)}`` measured over repeated replays;
    an original number with a key there is judged against it instead of the tolerance.
    """
    masks = DEFAULT_MASKS if masks is None else masks
    spread = spread or {}
    a, b = _prepared(original, masks, original_paths), _prepared(replay, masks, replay_paths)
    keys_a = {id(row): keys for row, keys in zip(a, _keys(a), strict=True)}
    res = PrintedComparison(stream, SAME, rel, abs_, len(a), len(b))

    def miss(ra, rb, reason):
        res.mismatch_count += 1
        if len(res.mismatches) < MAX_MISMATCHES:
            res.mismatches.append(LineMismatch(ra[0] if ra else None, rb[0] if rb else None,
                                               ra[1] if ra else "", rb[1] if rb else "",
                                               reason))

    def pair(ra, rb):
        res.lines_compared += 1
        if ra[2] != rb[2] or len(ra[3]) != len(rb[3]):
            miss(ra, rb, "the text differs")
            return
        worst, within_line = None, False
        for j, (sa, sb) in enumerate(zip(ra[3], rb[3], strict=True)):
            res.numbers_compared += 1
            va, vb = float(sa), float(sb)
            same, ok = _agree(va, vb, rel, abs_)
            measured = spread.get(keys_a[id(ra)][j])
            if measured is not None and not same:
                ok = math.isfinite(va) and abs(va - measured[0]) <= measured[1]
                res.measured += 1
            if same:
                continue
            within_line = True
            if math.isfinite(va) and math.isfinite(vb):
                d = abs(va - vb)
                r = d / max(abs(va), abs(vb))
                res.max_abs, res.max_rel = max(res.max_abs, d), max(res.max_rel, r)
            else:
                d = r = math.inf
            if not ok and worst is None and measured is not None:
                worst = (f"{sa} vs {sb}: outside the replays' spread {measured[0]:.6g} +- "
                         f"{measured[1]:.3g}")
            elif not ok and worst is None:
                worst = (f"{sa} vs {sb}: abs {d:.3g}, rel {r:.3g} beyond abs {abs_:g}, "
                         f"rel {rel:g}")
        if worst:
            miss(ra, rb, worst)
        elif within_line:
            res.lines_within += 1

    ka, kb = [r[2] for r in a], [r[2] for r in b]
    if ka == kb or max(len(a), len(b)) > _ALIGN_LIMIT:
        for ra, rb in zip(a, b, strict=False):
            pair(ra, rb)
        opcodes = [("delete", len(b), len(a), len(b), len(b))] if len(a) > len(b) else \
                  [("insert", len(a), len(a), len(a), len(b))] if len(b) > len(a) else []
    else:
        opcodes = _align([r[4] for r in a], [r[4] for r in b], ka, kb)
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            for ra, rb in zip(a[i1:i2], b[j1:j2], strict=True):
                pair(ra, rb)
            continue
        k = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for ra, rb in zip(a[i1:i1 + k], b[j1:j1 + k], strict=True):
            pair(ra, rb)
        for ra in a[i1 + k:i2]:
            miss(ra, None, "missing in the replay")
        for rb in b[j1 + k:j2]:
            miss(None, rb, "only in the replay")
    res.status = DIFFERS if res.mismatch_count else WITHIN if res.lines_within else SAME
    return res
