"""Small file helpers of the whole package (standard library only): writing files that
hold secrets, hashing a file's content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's content. Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_private(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``path`` atomically with mode 0600 from the start (never world-readable in
    between); a missing parent directory is created 0700. Returns the path."""
    target = Path(path).expanduser()
    if not target.parent.exists():
        target.parent.mkdir(parents=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
    return target
