"""S3 bucket-naming rules: which rule a name breaks, and a check that raises."""

from __future__ import annotations

import ipaddress
import re

from .errors import ConfigError

_BUCKET_CHARS = re.compile(r"^[a-z0-9.-]+$")


def bucket_name_problem(name: object) -> str | None:
    """The first S3 bucket-naming rule ``name`` breaks, or None when it is valid."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not 3 <= len(name) <= 63:
        return f"must be 3 to 63 characters long (it is {len(name)})"
    if not _BUCKET_CHARS.match(name):
        return "may hold only lower-case letters, digits, '.' and '-'"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must begin and end with a letter or a digit"
    if ".." in name or ".-" in name or "-." in name:
        return "must not hold '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(name)
        return "must not look like an IP address"
    except ValueError:
        pass
    for prefix in ("xn--", "sthree-"):
        if name.startswith(prefix):
            return f"must not begin with {prefix!r}"
    for suffix in ("-s3alias", "--ol-s3"):
        if name.endswith(suffix):
            return f"must not end with {suffix!r}"
    return None


def check_bucket_name(name: object) -> str:
    """``name`` when it is a valid S3 bucket name; raises ConfigError naming the rule."""
    problem = bucket_name_problem(name)
    if problem:
        raise ConfigError(f"invalid bucket name {name!r}: a bucket name {problem}")
    return name  # type: ignore[return-value]


__all__ = ["bucket_name_problem", "check_bucket_name"]
