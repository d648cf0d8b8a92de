"""The Python a replay runs with: the recorded pip lock parsed, compared with an
environment, and (when they differ) a virtual environment built from it, cached by the
lock's hash so a second replay builds nothing. :mod:`replab.replay` calls
:func:`ensure_environment`; nothing here knows about runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ReplayError

log = logging.getLogger(__name__)

Say = Callable[[str], None]


_PIN = re.compile(r"^\s*(-e\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([^\s;#]+)|@\s*\S+)"
                  r"(?:.*#\s*[A-Za-z0-9._-]+==(\S+))?")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(lock: str) -> dict[str, str]:
    """{normalized name: version} from a replab lock (pins and ``name @ url  # name==v``)."""
    out = {}
    for line in lock.splitlines():
        m = _PIN.match(line)
        if m and (m.group(3) or m.group(4)):
            out[_norm(m.group(2))] = m.group(3) or m.group(4)
    return out


def lock_mismatches(lock: str, python: str | None = None) -> list[str]:
    """How the environment of ``python`` (default this one) differs from the lock:
    ``"name: locked X, have Y"`` / ``"name: locked X, missing"``."""
    if python in (None, sys.executable):
        from .capture.packages import installed

        have = {_norm(d["name"]): d["version"] for d in installed()}
    else:
        code = ("import json,importlib.metadata as m;print(json.dumps({d.metadata['Name']:"
                "d.version for d in m.distributions() if d.metadata['Name']}))")
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
        have = {_norm(k): v for k, v in json.loads(out.stdout).items()}
    wanted = parse_lock(lock)
    return [f"{name}: locked {v}, " + (f"have {have[name]}" if name in have else "missing")
            for name, v in sorted(wanted.items()) if have.get(name) != v]


def cache_root() -> Path:
    return Path(os.environ.get("REPLAB_CACHE", Path.home() / ".cache" / "replab"))


def ensure_environment(lock: str | None, *, rebuild: bool | None = None,
                       cache: str | os.PathLike | None = None,
                       progress: Say | None = None) -> tuple[str, list[str]]:
    """The Python to replay with, and the lock mismatches of the current environment.

    ``rebuild`` None: reuse this environment when it satisfies the lock, else build a venv
    from the lock, cached by the lock's hash (a second replay builds nothing). Raises
    ReplayError when the lock cannot be installed (with pip's last lines).
    """
    say = progress or (lambda _m: None)
    if not lock:
        say("no lock recorded: replaying in the current environment")
        return sys.executable, []
    mismatches = lock_mismatches(lock)
    if rebuild is False or (rebuild is None and not mismatches):
        if mismatches:
            say(f"using the current environment despite {len(mismatches)} difference(s)")
        return sys.executable, mismatches
    digest = hashlib.sha256(lock.encode()).hexdigest()[:16]
    root = Path(cache) if cache else cache_root()
    venv = root / "envs" / digest
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        say(f"environment from the lock: cached ({venv})")
        return str(python), mismatches
    say(f"building an environment from the lock ({len(parse_lock(lock))} packages; "
        f"{len(mismatches)} differ here) in {venv}")
    # Built in place (a venv's scripts name their own path); ".complete" is written last,
    # and a failed build is removed, so a half-built environment is never used.
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True)
        req = venv / "requirements.lock"
        req.write_text(_installable(lock))
        proc = subprocess.Popen([str(python), "-m", "pip", "install",
                                 "--disable-pip-version-check", "--no-input", "-r", str(req)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-15:]
            if line.startswith(("Collecting", "Installing", "Successfully")):
                say(line.strip()[:160])
        if proc.wait() != 0:
            raise ReplayError("the lock does not install here:\n" + "\n".join(tail))
        (venv / ".complete").write_text(digest)
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    return str(python), mismatches


def _installable(lock: str) -> str:
    """The lock without entries pip cannot install elsewhere (local editable paths that do
    not exist here are kept only when present)."""
    lines = []
    for line in lock.splitlines():
        m = re.search(r"@\s*file://(\S+)", line)
        if m and not Path(m.group(1)).exists():
            log.warning("lock entry %s points at a missing local path; skipped", line.strip())
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"
