"""Mask secrets in the code a run record keeps: the lines an uncommitted diff adds and the
small untracked text files it inlines.

Two kinds of secret are masked (value replaced by :func:`replab.redact.mask`, ``"hunt…"``):

- strong shapes, everywhere (:func:`replab.redact.redact_credentials`): known token shapes
  (``ghp_…``, ``hf_…``, ``AKIA…``, JWTs, private keys) and credentials in URLs;
- secret-looking assignments (:func:`mask_assignments`): a key whose last word names a secret
  with a literal value, in the forms ``KEY=value``, ``key: value``, ``"key": "value"``,
  ``key = 'value'``, ``["key"] = "value"``, ``key: str = "value"``, ``--key value`` and
  ``--key=value`` (env files, YAML, JSON, INI, TOML, shell, Python, notebooks).

The rule for assignments (README, "What a run record masks"):

- key: its last word (``_ - .`` and camelCase split it) holds PASSWORD, PASSWD, PASSPHRASE,
  SECRET or CREDENTIAL, or is CREDS, AUTH (``BASIC_AUTH``, ``oauth``), AUTHORIZATION, ends
  with TOKEN (not ``pad_token``, ``eos_token`` and the other special tokens of tokenizers),
  or is KEY after API, ACCESS, PRIVATE, SECRET, SIGNING, ENCRYPTION, ... (``api_key``,
  ``AWS_SECRET_ACCESS_KEY``; not ``sort_key``). A trailing B64/BASE64/HEX/VALUE/BASE word
  is skipped (``ENCRYPTION_KEY_B64``, ``secret_key_base``). ``password_file``,
  ``token_count``, ``max_tokens``, ``tokenizer``, ``auth_url`` are not secret keys.
- value: a non-empty literal. Not masked: empty strings; ``None``/``null``/``true``/...;
  references and templates (``$VAR``, ``${VAR}``, ``$(cmd)``, ``%(x)s``, ``{x}``, ``{{ x }}``,
  ``<your-token>``, ``[CLS]``); values already masked (holding ``…``); quoted values with
  leading or trailing blanks (the gap between two strings, ``"Password: " + x``); and bare
  (unquoted) values that are expressions (``os.environ["X"]``, ``getpass()``) or YAML tags and
  aliases. In code files (``.py``, ``.ipynb``, ``.js``, ...) only quoted literals count: a bare
  word there is a variable (``password = pw``); ``--flag value`` counts everywhere.
- opt-out: a line holding ``replab: no-mask`` (in a comment) keeps its assignments; a file with
  the git attribute ``replab-no-mask`` (``.gitattributes`` or ``.git/info/attributes``) keeps
  all of them (the git capture checks it, see ``keep=``). Strong shapes are always masked.

A private key added to a diff is masked whole: its BEGIN line and every added line after it
up to its END line.

Speed: of a diff, only the regions holding added lines are scanned (found by C-speed searches;
removed and context lines cannot bring a new secret), by one regex per trigger literal, each
starting with that literal so that the engine scans for it at C speed (a single regex of all
the triggers, an alternation without a literal prefix, is tried at every position: several
times slower than all these passes together). Only lines holding a trigger are examined
further in Python. Regexes are compiled on first use, not at import (``replab capture``
starts fast).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import re
from bisect import bisect_right
from collections import namedtuple
from collections.abc import Callable, Collection

from .redact import ELLIPSIS, mask, redact_credentials, token_triggers

PRAGMA = "replab: no-mask"  # on a line: leave its assignments unmasked
GIT_ATTRIBUTE = "replab-no-mask"  # on a file (.gitattributes): leave its assignments unmasked

_SECRET_IN_LAST = ("PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "CREDENTIAL")
_KEY_OWNERS = {"API", "ACCESS", "PRIVATE", "SECRET", "SIGNING", "SIGN", "ENCRYPTION", "MASTER",
               "CLIENT", "AUTH", "ACCOUNT", "SSH", "LICENSE", "SUBSCRIPTION", "STORAGE",
               "SERVICE", "DEPLOY", "WEBHOOK", "APP"}
_JOINED_KEYS = {"APIKEY", "ACCESSKEY", "PRIVATEKEY", "SECRETKEY", "SIGNINGKEY"}
# Tokenizers' special tokens and other non-credential tokens: pad_token = "<pad>".
_NON_SECRET_TOKENS = {"PAD", "EOS", "BOS", "UNK", "SEP", "CLS", "MASK", "START", "END", "STOP",
                      "SPECIAL", "BLANK", "EOT", "NEWLINE", "SPACE", "DECODER", "BEGIN",
                      "PREFIX", "SUFFIX", "MIDDLE", "IMAGE", "NEXT", "PAGE"}
_SKIPPED_LAST = {"B64", "BASE64", "HEX", "VALUE", "BASE"}
_NULLS = {"none", "null", "nil", "true", "false", "yes", "no", "on", "off", "~", "undefined",
          "n/a"}
# Files where a bare word after `=` is a name, not a literal.
CODE_SUFFIXES = frozenset({
    ".py", ".pyi", ".pyx", ".ipynb", ".r", ".jl", ".c", ".cc", ".cpp", ".cxx", ".h", ".hpp",
    ".cu", ".cuh", ".rs", ".go", ".java", ".kt", ".scala", ".js", ".mjs", ".cjs", ".jsx", ".ts",
    ".tsx", ".rb", ".php", ".swift", ".cs", ".m", ".lua", ".pl", ".dart"})

# Trigger words (lower case): a line without one holds no secret key.
_ASSIGN_TRIGGERS = ("passw", "passphrase", "secret", "token", "key", "auth", "credential",
                    "creds")


@functools.cache
def _re(pattern: str, flags: int = 0) -> re.Pattern:
    return re.compile(pattern, flags)


def _assignment() -> re.Pattern:
    return _re(r"""
    (?:
        (?<![\w\-])--(?P<flag>[A-Za-z][\w.\-]*)(?P<fsep>=|[ \t]+)
      |
        (?<![\w.\-"'\\$])
        (?P<kq>\\?["']|)(?P<key>\$?[A-Za-z_][\w.\-]*)(?P=kq)\]?
        (?P<sep>
            [ \t]*:[ \t]*[A-Za-z_][\w.\[\], |]*?[ \t]*=(?![=~>])[ \t]*   # name: str = "x"
          | [ \t]*(?:[?+:]?=)(?![=~>])[ \t]*                           # = ?= += :=
          | [ \t]*:(?![:=])[ \t]*                                      # key: value
        )
    )
    (?:
        (?P<pre>[rRbBuU]{0,2})
        (?: "(?P<dq>(?:[^"\\\n]|\\.)*)"
          | '(?P<sq>(?:[^'\\\n]|\\.)*)'
          | \\"(?P<eq>(?:[^"\\\n]|\\[^"\n])*)\\"
        )
        (?=[ \t\r,;)\]}\#\\]|$)
      |
        (?P<bare>[^\s"'`,;\\\#][^\s"'`,;\\]*(?:[ \t]+[^\s"'`,;\\\#=:\-][^\s"'`,;\\]*)*)
    )
    """, re.VERBOSE)


def _parts(key: str) -> list[str]:
    return [p.upper() for p in _re(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])").findall(key)]


@functools.lru_cache(maxsize=4096)  # code repeats its names: most keys are seen before
def secret_key(key: str) -> bool:
    """Whether an assignment's key names a secret (the rule in the module docstring)."""
    parts = _parts(key)
    while len(parts) > 1 and parts[-1] in _SKIPPED_LAST:
        parts.pop()
    if not parts:
        return False
    last, prev = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if any(word in last for word in _SECRET_IN_LAST) or last == "CREDS":
        return True
    if last.endswith("TOKEN"):
        return prev not in _NON_SECRET_TOKENS
    if last.endswith("AUTH") or last == "AUTHORIZATION":
        return True
    if last == "KEY":
        return prev in _KEY_OWNERS
    return last in _JOINED_KEYS


def literal_value(value: str, *, quoted: bool) -> bool:
    """Whether an assignment's value is a literal worth masking (not empty, not a reference,
    a template, a placeholder, an expression or a value masked already)."""
    if not value or value != value.strip() or ELLIPSIS in value:
        return False
    if value.lower() in _NULLS:
        return False
    first, last = value[0], value[-1]
    if first == "$" and len(value) > 1 and (value[1] in "{(" or value[1].isalpha()
                                             or value[1] == "_"):
        return False
    if first == "%" and _re(r"%(?:\(\w+\)[a-z]|\w+%|[a-z])$").match(value):
        return False
    if (first, last) in (("{", "}"), ("<", ">"), ("[", "]")):
        return False
    if not quoted:
        if first in "!*&|>":  # YAML tags, aliases, anchors, block scalars
            return False
        if _re(r"[A-Za-z_][\w.]*[ \t]*[(\[]").match(value):  # a call or a subscript
            return False
    return True


def _mask_value(value: str) -> str:
    kept = mask(value)[:-1]
    if "\\" in kept:  # never cut an escape sequence in two
        kept = kept[:kept.index("\\")]
    return kept + ELLIPSIS


def mask_assignments(line: str, *, code: bool = False) -> str:
    """``line`` with the values of secret-looking assignments masked. ``code``: the line is
    from a code file, where only quoted literals (and ``--flag value``) count."""
    if PRAGMA in line:
        return line
    pattern = _assignment()
    out: list[str] = []
    pos = last = 0
    while (m := pattern.search(line, pos)) is not None:
        masked = _masked_match(m, code)
        if masked is None:  # not a secret: look on inside it (`cmd = "x --token abc"`)
            pos = m.end("fsep") if m["flag"] is not None else m.end("sep")
            continue
        out += (line[last:m.start()], masked)
        pos = last = m.end()
    if not out:
        return line
    out.append(line[last:])
    return "".join(out)


def _masked_match(m: re.Match, code: bool) -> str | None:
    """The match with its value masked, or None when it is not a secret assignment."""
    whole = m.group(0)
    flag = m["flag"]
    key = flag if flag is not None else m["key"]
    if not secret_key(key):
        return None
    if flag is None and not m["kq"] and m["sep"].endswith(":") and m["bare"] is not None:
        return None  # `key:value` without a blank is a YAML scalar or a URL, not a mapping
    for group in ("dq", "sq", "eq"):
        value = m[group]
        if value is not None:
            if not literal_value(value, quoted=True):
                return None
            start, end = m.span(group)
            base = m.start()
            return whole[:start - base] + _mask_value(value) + whole[end - base:]
    value = m["bare"]
    if flag is not None:
        value = value.split()[0]  # --flag takes one word; what follows is the next argument
        if value.startswith("-"):
            return None  # the next flag: this one has no value
    elif code:
        return None
    if not literal_value(value, quoted=False):
        return None
    start = m.start("bare") - m.start()
    return whole[:start] + _mask_value(value) + whole[start + len(value):]


def is_code(path: str) -> bool:
    """Whether ``path`` is a code file, by its suffix (see :data:`CODE_SUFFIXES`)."""
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in CODE_SUFFIXES


# After a trigger word, what the rest of a secret key may be: nothing for the frequent words
# (``tokens``, ``key_dim``, ``author`` end there), anything for the rare ones; then maybe a
# B64/HEX/VALUE/BASE word, a closing quote or bracket, and a separator.
_TAILS = {"token": "", "key": "", "auth": "(?:orization)?"}
_SKIP_TAIL = r"(?:[_.\-]?(?:b64|base64|hex|value|base))?"
_SEPARATOR = r"""(?:\\?["']\]?)?[ \t]*(?:[?+:]?=(?![=~>])|:(?![:=]))"""


@functools.cache
def _word_patterns() -> tuple[re.Pattern, ...]:
    # Each starts with a literal prefix (its word, or what two words share: pass, cred): the
    # regex engine then scans for it at C speed and stops only where a separator follows.
    groups: dict[str, list[str]] = {}
    for word in _ASSIGN_TRIGGERS:
        head = next((p for p in ("pass", "cred") if word.startswith(p)), word)
        groups.setdefault(head, []).append(re.escape(word[len(head):]))
    return tuple(
        _re(re.escape(head) + _either(rests) + _TAILS.get(head, r"[\w.\-]*") + _SKIP_TAIL
            + _SEPARATOR)
        for head, rests in groups.items())


def _flag_pattern() -> re.Pattern:
    words = "|".join(_ASSIGN_TRIGGERS)
    return _re(rf"--[\w.\-]*?(?:{words})[\w.\-]*(?:=|[ \t]+)")


@functools.cache
def _token_scans() -> tuple[re.Pattern, ...]:
    # The token triggers grouped by their first character: one pass per group, each with a
    # literal prefix (the GitHub and GitLab shapes are one pass, AKIA and ASIA another).
    # Python's re scans for a literal prefix at C speed, and tries the rest only there; an
    # alternation without one (all triggers in one regex) is tried at every position and
    # costs more than all these passes together.
    groups: dict[str, list[str]] = {}
    for trigger in token_triggers():
        groups.setdefault(trigger[0], []).append(re.escape(trigger[1:]))
    return tuple(_re(re.escape(head) + _either(rests)) for head, rests in groups.items())


def _either(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _url_with_user() -> re.Pattern:
    return _re(r"://[^\s/@\"'<>]*@")


def _key_head() -> re.Pattern:
    return _re(r"[\w.\-$]*")


# The ASCII characters _key_head matches: a word after any other ASCII character starts its
# key. (\w is Unicode: after a non-ASCII character the regex decides.)
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-$")


def _line_at(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, len(text) if end < 0 else end


_GAP = 8192  # added runs closer than this are scanned as one region (a call per region)
_MAX_RUNS = 20000  # a diff of more, shorter runs is scanned whole past that many


def _added_regions(diff: str) -> list[tuple[int, int]]:
    """Spans of ``diff`` that hold every line it adds ('+' first), each from the newline
    before a run of such lines to the newline after it, found by C-speed searches (one
    pass over the diff in all); runs closer than ``_GAP`` merge. Removed and context lines
    outside them are never scanned: only added lines can bring a new secret."""
    n = len(diff)
    run_end = _re(r"\n(?!\+)")
    regions: list[tuple[int, int]] = []
    pos = 0 if diff.startswith("+") else diff.find("\n+")
    runs = 0
    while pos >= 0:
        m = run_end.search(diff, pos + 1)
        end = n if m is None else m.start()
        if regions and pos - regions[-1][1] < _GAP:
            regions[-1] = (regions[-1][0], end)
        else:
            regions.append((pos, end))
        runs += 1
        if m is None or runs >= _MAX_RUNS:
            if m is not None:
                regions[-1] = (regions[-1][0], n)
            break
        pos = diff.find("\n+", end)
    return regions


def _candidates(text: str, diff: bool) -> list[tuple[int, int, bool, bool]]:
    """The lines worth a closer look, in order: (start, end, strong, assign). ``strong``:
    the line holds a token trigger or a URL with a user; ``assign``: a secret key followed by
    a separator. ``diff``: only lines starting with '+', and only the regions holding them
    (:func:`_added_regions`) are scanned.

    One C-speed regex search per trigger word over the scanned (lower-cased) text, stopping
    only where a separator follows the word; the Python work per stop is a few calls, and the
    full assignment regex runs only on lines whose key passes :func:`secret_key`."""
    found: dict[int, list] = {}
    regions = _added_regions(text) if diff else [(0, len(text))]

    def line(pos: int) -> tuple[int, int] | None:
        start, end = _line_at(text, pos)
        if diff and not text.startswith("+", start):
            return None
        return start, end

    hits = [m.start() for p in (_url_with_user(), *_token_scans()) for lo, hi in regions
            for m in p.finditer(text, lo, hi)]
    for pos in hits:
        if (span := line(pos)) is not None:
            found.setdefault(span[0], [span[1], False, False])[1] = True

    low = text.lower()
    if len(low) != len(text):  # lower-casing moved characters (rare scripts): search as is
        low, flags = text, re.IGNORECASE
    else:
        flags = 0
    head = _key_head()  # matched on the reversed text before a hit: linear, not quadratic
    matches = [p if not flags else _re(p.pattern, flags) for p in _word_patterns()]
    flag_re = _flag_pattern() if not flags else _re(_flag_pattern().pattern, flags)
    rfind, key_chars = text.rfind, _KEY_CHARS
    for pattern, (lo_region, hi_region) in ((p, r) for p in (*matches, flag_re) for r in regions):
        is_flag = pattern is flag_re
        for m in pattern.finditer(low, lo_region, hi_region):
            pos, stop = m.span()
            start = rfind("\n", 0, pos) + 1
            if diff and text[start] != "+":
                continue
            entry = found.get(start)
            if entry is not None and entry[2]:
                continue
            if is_flag:
                if pos and (low[pos - 1].isalnum() or low[pos - 1] in "_-"):
                    continue
                key = text[pos:stop]
            elif pos == start or (text[pos - 1] < "\x80" and text[pos - 1] not in key_chars):
                key = text[pos:stop]  # the word starts the key: no head to look back for
            else:
                lo = max(start, pos - 80)
                key = text[pos - head.match(text[lo:pos][::-1]).end():stop]
            if secret_key(key.strip("-$\\\"'] \t=:?+")):
                if entry is None:
                    end = text.find("\n", pos)
                    entry = found[start] = [len(text) if end < 0 else end, False, False]
                entry[2] = True
    return [(start, *found[start]) for start in sorted(found)]


def mask_text(text: str, path: str = "") -> tuple[str, int]:
    """A file's ``text`` with secret-looking assignments masked, and how many lines changed.
    ``path`` tells code from configuration (:func:`is_code`)."""
    if not isinstance(text, str) or not text:
        return text, 0
    code = is_code(path)
    out: list[str] = []
    last = changed = 0
    for start, end, _strong, assign in _candidates(text, diff=False):
        if not assign:
            continue
        line = text[start:end]
        new = mask_assignments(line, code=code)
        if new != line:
            out += (text[last:start], new)
            last = end
            changed += 1
    if not changed:
        return text, 0
    out.append(text[last:])
    return "".join(out), changed


class MaskedDiff(namedtuple("MaskedDiff", "diff lines paths files", defaults=((),))):
    """What :func:`mask_added_lines` did: the ``diff``, how many added ``lines`` changed, the
    ``paths`` whose assignments were masked (the per-file opt-out applies to them) and the
    ``files`` with any masked line (for :func:`reindex`). A namedtuple, not a dataclass:
    importing dataclasses (with inspect and ast) slowed ``replab capture``'s start-up."""

    __slots__ = ()


def _unquote(name: str) -> str:
    """A path as git prints it in a diff header (C-quoted when unusual) -> the path."""
    name = name.rstrip("\t")  # git ends a name holding a blank with a tab
    if len(name) > 1 and name[0] == name[-1] == '"':
        raw = codecs.escape_decode(name[1:-1].encode("ascii", "backslashreplace"))[0]
        name = raw.decode("utf-8", "surrogateescape")
    return name[2:] if name.startswith("b/") else name


def _sections(diff: str) -> tuple[list[int], list[tuple[int, str]]]:
    """The start of each file of a git diff, and for each its first hunk (-1: none) and path."""
    starts: list[int] = []
    info: list[tuple[int, str]] = []
    pos = 0 if diff.startswith("diff --git ") else diff.find("\ndiff --git ")
    while pos >= 0:
        start = pos if diff.startswith("diff --git ", pos) else pos + 1
        following = diff.find("\ndiff --git ", start)
        limit = len(diff) if following < 0 else following
        hunk = diff.find("\n@@ ", start, limit)
        header = diff[start:limit if hunk < 0 else hunk]
        plus = header.find("\n+++ ")
        path = ""
        if plus >= 0:
            line_end = header.find("\n", plus + 1)
            path = _unquote(header[plus + 5:None if line_end < 0 else line_end])
        starts.append(start)
        info.append((-1 if hunk < 0 else hunk + 1, path))
        pos = following
    return starts, info


def mask_added_lines(diff: str, keep: Collection[str] = ()) -> MaskedDiff:
    """A git diff with strong shapes and secret-looking assignments masked in the lines it
    adds (``+`` in a hunk). Context and removed lines stay as they are, so the diff still
    applies to its base commit. ``keep``: paths whose assignments stay (the opt-out)."""
    if not isinstance(diff, str) or not diff:
        return MaskedDiff(diff, 0, ())
    starts, info = _sections(diff)
    out: list[str] = []
    paths: list[str] = []
    files: list[str] = []
    last = changed = 0
    key_end = -1  # the end of the private key block masked last
    for start, end, strong, assign in _candidates(diff, diff=True):
        i = bisect_right(starts, start) - 1
        if i < 0 or info[i][0] < 0 or start < info[i][0] or start < key_end:
            continue  # a header line (+++ b/...), not an added one; or masked already
        path = info[i][1]
        line = diff[start + 1:end]
        new = redact_credentials(line) if strong else line
        if assign and path not in keep:
            assigned = mask_assignments(new, code=is_code(path))
            if assigned != new:
                new = assigned
                if not paths or paths[-1] != path:
                    paths.append(path)
        edits = [(start, end, new)] if new != line else []
        if strong and _key_begin().search(line) and not _key_end().search(line):
            body = _key_body(diff, end)  # the lines of the key, up to its END line
            edits += [(s, e, mask(diff[s + 1:e])) for s, e in body]
            key_end = body[-1][1] if body else key_end
        for s, e, text in edits:
            out += (diff[last:s + 1], text)
            last = e
            changed += 1
        if edits and (not files or files[-1] != path):
            files.append(path)
    if not changed:
        return MaskedDiff(diff, 0, ())
    out.append(diff[last:])
    return MaskedDiff("".join(out), changed, tuple(dict.fromkeys(paths)),
                      tuple(dict.fromkeys(files)))


def _key_begin() -> re.Pattern:
    return _re(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _key_end() -> re.Pattern:
    return _re(r"-----END [A-Z ]*PRIVATE KEY-----")


def _key_body(diff: str, pos: int) -> list[tuple[int, int]]:
    """The added lines after ``pos`` (the end of a line that begins a private key) up to
    the key's END line, as (start, end) spans: the key itself, which the BEGIN line's mask
    does not cover. Stops at a line that is not added."""
    spans: list[tuple[int, int]] = []
    while diff.startswith("\n+", pos):
        start, end = pos + 1, diff.find("\n", pos + 1)
        end = len(diff) if end < 0 else end
        if _key_end().search(diff, start, end):
            break
        spans.append((start, end))
        pos = end
    return spans


def _postimage(data: bytes, hunks: str) -> bytes | None:
    """The new side of a file whose working-tree content is ``data``, with each line the
    (masked) ``hunks`` add taken from them; None when they do not fit ``data``."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    n = 0
    for line in hunks.split("\n"):
        if line.startswith("@@ "):
            m = _re(r"@@ -\d+(?:,\d+)? \+(\d+)").match(line)
            if m is None:
                return None
            n = max(int(m[1]) - 1, 0)
        elif line.startswith("+"):
            if n >= len(lines):
                return None
            lines[n] = line[1:]
            n += 1
        elif line.startswith(" "):
            n += 1
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def reindex(diff: str, files: Collection[str], read: Callable[[str], bytes | None]) -> str:
    """``diff`` with the new-side blob id on the ``index`` line of each of ``files`` computed
    for the content as masked: a replay that applies the diff gets that content, and its own
    diff then names the same blob (the unmasked file's id, a hash one could test guesses of
    the secret against, is gone). ``read(path)``: the working-tree bytes of a file, or None.
    A file that cannot be read keeps its line. (A file git filters on the way in, such as
    autocrlf, may get another id than git's: its replay then reports a code difference.)"""
    starts, info = _sections(diff)
    out: list[str] = []
    last = 0
    for i, start in enumerate(starts):
        hunk, path = info[i]
        if hunk < 0 or path not in files:
            continue
        m = _re(r"^index ([0-9a-f]+)\.\.([0-9a-f]+)", re.MULTILINE).search(diff, start, hunk)
        data = read(path) if m else None
        end = starts[i + 1] if i + 1 < len(starts) else len(diff)
        image = None if data is None else _postimage(data, diff[hunk:end])
        if image is None:
            continue
        blob = hashlib.sha1(b"blob %d\0" % len(image) + image).hexdigest()  # git's object id
        out += (diff[last:m.start(2)], blob[:len(m[2])])
        last = m.end(2)
    out.append(diff[last:])
    return "".join(out)
