"""Find and hide secrets in names, values, URLs and command lines.

Shared by the capture library (a run manifest must never carry a secret) and by the
credentials store. Pure functions on strings; none of them raises on odd input.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Name rules (checked on the parts of a name: HF_TOKEN -> HF, TOKEN; apiKey -> API, KEY).
# A part containing one of these is secret anywhere in the name (CLIENTSECRET, DB_PASSWORD)...
SECRET_PART_WORDS = ("SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "COOKIE")
# ...a part ending in TOKEN too, so that TOKENIZER and MAX_TOKENS stay readable...
SECRET_TOKEN_WORD = "TOKEN"
# ...KEY anywhere but first (API_KEY, ENCRYPTION_KEY_B64; not KEY_DIM), AUTH only last
# (BASIC_AUTH; not OS_AUTH_URL).
SECRET_NAME_WORDS = SECRET_PART_WORDS + (SECRET_TOKEN_WORD, "KEY", "AUTH")
ELLIPSIS = "…"

# Schemes whose user name is part of the address, not a credential (ssh://git@host/x).
_USER_SCHEMES = {"ssh", "git+ssh", "ssh+git", "sftp", "scp"}

_URL = r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>[^\s\"'<>]+)"
# Known token shapes, each with literal triggers: the regex runs only when one occurs in the
# text (a plain substring test is far cheaper than a regex scan of a 60 KiB file). Patterns
# are compiled on first use (_re), not at import: `replab capture` starts faster.
_TOKEN_RULES = (
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
     r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"),  # GitHub
    (("github_pat_",), r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    (("glpat-",), r"\bglpat-[A-Za-z0-9_\-]{16,}"),  # GitLab
    (("hf_",), r"\bhf_[A-Za-z0-9]{20,}"),  # Hugging Face
    (("sk-",), r"\bsk-[A-Za-z0-9_\-]{20,}"),  # OpenAI-style API keys
    (("xox",), r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),  # Slack
    (("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    (("eyJ",), r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),  # JWT
    (("PRIVATE KEY-----",),
     r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"),
)


@functools.cache
def _re(pattern: str, flags: int = 0) -> re.Pattern:
    return re.compile(pattern, flags)


def token_triggers() -> tuple[str, ...]:
    """The literal strings one of which every known token shape holds."""
    return tuple(t for triggers, _ in _TOKEN_RULES for t in triggers)


def _token_patterns(text: str) -> list[re.Pattern]:
    return [_re(p) for triggers, p in _TOKEN_RULES if any(t in text for t in triggers)]


def _urls_with_credentials(text: str) -> bool:
    if "://" not in text or "@" not in text:
        return False
    return any(_url_has_credentials(m["scheme"], m["rest"]) for m in _re(_URL).finditer(text))


# `token=<blob>` in query strings, config lines, command lines.
_ASSIGNED = (
    r"(?i)\b(?P<key>[a-z0-9_\-]*(?:token|secret|password|passwd|api[_\-]?key|apikey"
    r"|access[_\-]?key|private[_\-]?key|sig|signature|auth|credential)s?)"
    r"(?P<sep>\s*[=:]\s*)(?P<val>[^\s&;,\"']{8,})"
)


def mask(value: Any, show: int = 4) -> str:
    """``value`` hidden but for its first few characters: ``"ghp_…"``.

    Short values show fewer characters (a quarter at most), so a mask never gives most of a
    secret away.
    """
    text = "" if value is None else str(value)
    keep = max(0, min(show, len(text) // 4))
    return text[:keep] + ELLIPSIS


_NAME_PART = r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])"


def secret_name(name: str | None) -> bool:
    """Whether a variable or parameter name says its value is a secret (``HF_TOKEN``,
    ``apiKey``, ``DB_PASSWORD``), by the rules above."""
    if not name:
        return False
    parts = [p.upper() for p in _re(_NAME_PART).findall(str(name))]
    for i, part in enumerate(parts):
        if any(word in part for word in SECRET_PART_WORDS):
            return True
        if part.endswith(SECRET_TOKEN_WORD):
            return True
        if part.endswith("KEY") and (i > 0 or len(parts) == 1 or part != "KEY"):
            return True
        if part.endswith("AUTH") and i == len(parts) - 1:
            return True
        if part == "AUTHORIZATION":
            return True
    return False


def _url_has_credentials(scheme: str, rest: str) -> bool:
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _host = authority.rpartition("@")
    if not at:
        return False
    return ":" in userinfo or scheme.lower() not in _USER_SCHEMES


def secret_value(value: Any) -> bool:
    """Whether a value carries a secret: URL credentials, a known token shape, ``token=…``."""
    if value is None:
        return False
    text = str(value)
    if has_credentials(text):
        return True
    return _re(_ASSIGNED).search(text) is not None


def has_credentials(text: str) -> bool:
    """Whether ``text`` holds a strong sign of a credential: a URL with a password or token,
    a known token shape, a private key. (Not ``token = ...`` assignments: too common in code.)"""
    return _urls_with_credentials(text) or any(p.search(text) for p in _token_patterns(text))


_SECRET_FILE = (
    r"(?i)^(\.env(\..+)?|.+\.env|.+\.(pem|key|p12|pfx|kdbx|jks|keystore)"
    r"|id_(rsa|dsa|ecdsa|ed25519)(\.pub)?|\.netrc|_netrc|\.pgpass|\.htpasswd|\.git-credentials"
    r"|clouds\.ya?ml|secure\.ya?ml|rclone\.conf|.*openrc.*|app-cred-.*)$")
_CODE_SUFFIXES = {".py", ".ipynb", ".md", ".rst", ".r", ".jl", ".c", ".cc", ".cpp", ".h",
                  ".hpp", ".cu", ".rs", ".go", ".java", ".js", ".ts", ".html", ".css"}


def secret_file(path: str, text: str | None = None) -> bool:
    """Whether a file, by its name (``.env``, ``id_rsa``, ``clouds.yaml``, ``api_token.txt``)
    or its ``text`` (:func:`has_credentials`), probably holds a secret."""
    name = re.split(r"[/\\]", str(path))[-1]
    if _re(_SECRET_FILE).match(name):
        return True
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    if secret_name(stem) and f".{suffix.lower()}" not in _CODE_SUFFIXES:
        return True
    return bool(text) and has_credentials(text)


def looks_secret(name: str | None, value: Any = None) -> bool:
    """Whether ``name`` (e.g. an environment variable) or its ``value`` looks secret."""
    return secret_name(name) or secret_value(value)


def strip_url_credentials(url: str) -> str:
    """``url`` without credentials: ``https://user:token@host/x`` -> ``https://host/x``.

    For ssh-like schemes the user name stays (``ssh://git@host/x``) and only a password goes.
    Anything that is not a ``scheme://`` URL (``git@host:org/repo``) comes back unchanged.
    """
    if not isinstance(url, str):
        return url
    return _re(_URL).sub(_strip_match, url)


def _strip_match(m: re.Match) -> str:
    scheme, rest = m["scheme"], m["rest"]
    cut = re.search(r"[/?#]", rest)
    authority, tail = (rest[: cut.start()], rest[cut.start():]) if cut else (rest, "")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return m.group(0)
    if scheme.lower() in _USER_SCHEMES:
        user = userinfo.split(":", 1)[0]
        return f"{scheme}://{user}@{host}{tail}" if user else f"{scheme}://{host}{tail}"
    return f"{scheme}://{host}{tail}"


def redact_credentials(text: str) -> str:
    """``text`` with URL credentials stripped and known token shapes masked; nothing else
    changes (safe on source code, where ``token = ...`` is usually not a secret)."""
    if not isinstance(text, str) or not text:
        return text
    out = strip_url_credentials(text) if "://" in text else text
    for pattern in _token_patterns(out):
        out = pattern.sub(lambda m: mask(m.group(0)), out)
    return out


def redact_text(text: str) -> str:
    """``text`` with every secret inside it hidden (:func:`redact_credentials`, and the value
    of ``token=…``-style assignments); the rest stays readable."""
    if not isinstance(text, str) or not text:
        return text
    out = redact_credentials(text)
    return _re(_ASSIGNED).sub(lambda m: f"{m['key']}{m['sep']}{mask(m['val'])}", out)


def scrub_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Output or log ``text`` made safe to keep: :func:`redact_text`, plus every verbatim
    occurrence of the value of a secret-named variable of ``environ`` (default
    ``os.environ``) masked, so a training script printing its ``HF_TOKEN`` leaks nothing."""
    if not isinstance(text, str) or not text:
        return text
    env = os.environ if environ is None else environ
    values = sorted({v for k, v in env.items() if secret_name(k) and v and len(v) >= 6},
                    key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, mask(value))
    return redact_text(text)


def redact(name: str | None, value: Any) -> Any:
    """``value`` as safe to record under ``name``: masked whole when the name is secret,
    otherwise with the secrets inside it hidden. Non-string values under a secret name are
    masked too; other non-strings come back as they are."""
    if secret_name(name) and value not in (None, ""):
        return mask(value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_env(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an environment-like mapping with secret values hidden."""
    return {str(k): redact(str(k), v) for k, v in mapping.items()}


def redact_params(params: Any) -> Any:
    """Parameters (nested dicts and lists) with the values of secret-named keys hidden."""
    if isinstance(params, Mapping):
        out = {}
        for key, value in params.items():
            if secret_name(str(key)) and not isinstance(value, (Mapping, list, tuple)):
                out[key] = redact(str(key), value)
            else:
                out[key] = redact_params(value)
        return out
    if isinstance(params, (list, tuple)):
        return [redact_params(v) for v in params]
    if isinstance(params, str):
        return redact_text(params)
    return params


def redact_argv(argv: Iterable[str]) -> list[str]:
    """A command line with secrets hidden: ``--token X``, ``--api-key=X``, URLs, known tokens."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        arg = str(arg)
        if hide_next:
            out.append(mask(arg))
            hide_next = False
            continue
        if arg.startswith("-") and len(arg) > 1:
            flag, eq, val = arg.partition("=")
            if secret_name(flag.lstrip("-")):
                if eq:
                    out.append(f"{flag}={mask(val)}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
        out.append(redact_text(arg))
    return out
