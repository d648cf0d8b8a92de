"""The Python a replay runs with: the recorded pip lock compared with an environment, and
(when they differ) a virtual environment rebuilt from it, cached by the lock's hash and the
Python version so a second replay builds nothing. :mod:`replab.replay` calls
:func:`ensure_environment`; nothing here knows about runs. What each lock line installs
from is decided by :func:`replab.lockplan.plan`; this module runs ``venv`` and ``pip``.

pip installs the planned lines with ``--no-deps``: a lock is a whole environment, pinned, so
nothing else is resolved (and an environment whose pins pip's resolver would refuse is still
rebuilt as it was). The rebuild ignores a pip constraints file configured for the machine or
the shell (``PIP_CONSTRAINT``, ``constraint =`` in a pip.conf): the lock's pins are exact,
and a machine-wide cap would make them fail. The rest of pip's configuration (index URLs,
find-links, certificates) applies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ReplayError
from .lockplan import Entry, Plan, norm, parse_lock, plan

__all__ = ["cache_root", "ensure_environment", "find_python", "lock_mismatches", "parse_lock",
           "running_replab_source"]

log = logging.getLogger(__name__)

Say = Callable[[str], None]

_SHOWN = ("Collecting", "Obtaining", "Processing", "Building", "Installing", "Successfully",
          "ERROR")
_MAX_ROUNDS = 10  # after a failure, look for at most this many more failing lines


def lock_mismatches(lock: str, python: str | None = None) -> list[str]:
    """How the environment of ``python`` (default this one) differs from the lock:
    ``"name: locked X, have Y"`` / ``"name: locked X, missing"``."""
    if python in (None, sys.executable):
        from .capture.packages import installed

        have = {norm(d["name"]): d["version"] for d in installed()}
    else:
        code = ("import json,importlib.metadata as m;print(json.dumps({d.metadata['Name']:"
                "d.version for d in m.distributions() if d.metadata['Name']}))")
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
        have = {norm(k): v for k, v in json.loads(out.stdout).items()}
    wanted = parse_lock(lock)
    return [f"{name}: locked {v}, " + (f"have {have[name]}" if name in have else "missing")
            for name, v in sorted(wanted.items()) if have.get(name) != v]


def cache_root() -> Path:
    return Path(os.environ.get("REPLAB_CACHE", Path.home() / ".cache" / "replab"))


def _here() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def find_python(version: str | None) -> tuple[str, str | None]:
    """The interpreter for a run recorded with Python ``version``: this one when the
    major.minor is the same (or nothing was recorded), else ``python3.X`` from PATH when it
    runs and is that version. Returns ``(executable, note)``, the note saying the difference
    when no such interpreter exists (then this one is returned). Raises nothing."""
    if not version:
        return sys.executable, None
    want = ".".join(version.split(".")[:2])
    if want == _here():
        return sys.executable, None
    exe = shutil.which(f"python{want}")
    if exe:
        try:  # a pyenv shim is on PATH even where that version is not selected
            out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.strip() == want:
                return exe, None
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("python%s on PATH does not run: %s", want, exc)
    return sys.executable, (f"python: recorded {version}, replaying with "
                            f"{platform.python_version()} (no working python{want} on PATH)")


def running_replab_source() -> Path | None:
    """The source tree (the directory holding ``pyproject.toml``) of the replab running this
    code, or None when it was installed from a wheel. Raises nothing."""
    import replab

    here = Path(replab.__file__).resolve().parent
    for parent in here.parents:
        meta = parent / "pyproject.toml"
        if meta.is_file():
            try:
                text = meta.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
            return parent if re.search(r'(?m)^name\s*=\s*"replab"', text) else None
        if parent.name in ("site-packages", "dist-packages"):
            return None
    return None


def _pip_env() -> dict[str, str]:
    # An empty value is ignored by pip, so the machine's constraints file is replaced by an
    # empty one; PIP_USER would send the packages outside the venv.
    return {**os.environ, "PIP_CONSTRAINT": os.devnull, "PIP_USER": "0",
            "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _own_pip_can_target() -> bool:
    """Whether this environment's pip can install into another interpreter (``--python``,
    pip >= 22.3), which spares the venv its own pip (and ensurepip's seconds)."""
    import importlib.metadata as md

    try:
        major, minor = (int(x) for x in md.version("pip").split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (22, 3)


def _make_venv(exe: str, venv: Path) -> list[str]:
    """Create the venv; return the command prefix that runs pip for it."""
    own = Path(exe) == Path(sys.executable) and _own_pip_can_target()
    cmd = [exe, "-m", "venv", *(["--without-pip"] if own else []), str(venv)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReplayError(f"could not create a virtual environment with {exe} "
                          f"({' '.join(cmd)}):\n{(proc.stderr or proc.stdout).strip()[-2000:]}")
    python = str(venv / "bin" / "python")
    return [sys.executable, "-m", "pip", "--python", python] if own else [python, "-m", "pip"]


def _pip(args: list[str], say: Say | None) -> tuple[int, list[str]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_pip_env())
    out: list[str] = []
    for line in proc.stdout:
        out.append(line.rstrip())
        if say and line.startswith(_SHOWN):
            say("pip: " + line.strip()[:200])
    return proc.wait(), out


_REQ_LINE = re.compile(r"\s*\(from -r \S+ \(line (\d+)\)\)")
_NAMED = [re.compile(p) for p in (
    r"No matching distribution found for ([^\s;]+)",
    r"satisfies the requirement ([^\s;]+)",
    r"Failed to build '?([^\s',]+)",
    r"Failed building wheel for ([^\s,]+)",
    r"Could not build wheels for ([^\s,]+)",
    r"Cannot install ([^\s,]+)",
)]


def _reason(errors: list[str], out: list[str]) -> str:
    shown = errors[:3] or [ln for ln in out if ln.strip()][-3:]
    # what git (or a build) said before pip's summary, e.g. "fatal: unable to access ..."
    shown += [ln.strip() for ln in out if ln.strip().startswith("fatal:")][:1]
    text = "; ".join(_REQ_LINE.sub("", ln.removeprefix("ERROR:")).strip() for ln in shown)
    return text[:600] or "pip failed without saying why"


def _culprit(out: list[str], index: list[int], entries: list[Entry]) -> tuple[int | None, str]:
    """Which planned line pip failed on (``index`` maps the requirements file's line
    numbers, from 1, to plan positions), and pip's reason; None when pip does not say."""
    errors = [ln for ln in out if ln.startswith("ERROR:")]
    reason = _reason(errors, out)
    for ln in errors:
        m = _REQ_LINE.search(ln)
        if m and 1 <= int(m.group(1)) <= len(index):
            return index[int(m.group(1)) - 1], reason
    by_name = {entries[i].key: i for i in index if entries[i].key}
    for ln in errors:
        for pattern in _NAMED:
            m = pattern.search(ln)
            if m:
                name = norm(re.split(r"[=<>!~@\[ ;]", m.group(1), maxsplit=1)[0])
                if name in by_name:
                    return by_name[name], reason
    return None, reason


def _install(pip: list[str], venv: Path, todo: Plan, say: Say) -> tuple[list[str], list[str]]:
    """Install the plan; on failure find the failing lines one by one (dry runs without
    each line found so far). Returns the failures (``"line: reason"``) and pip's output."""
    opts = ["install", "--no-deps", "--progress-bar", "off"]
    req = venv / "requirements.lock"
    req.write_text(todo.text)
    if not todo.lines:
        return [], []
    code, out = _pip([*pip, *opts, "-r", str(req)], say)
    if code == 0:
        return [], out
    failures: list[str] = []
    index = list(range(len(todo.lines)))
    output = list(out)
    for _round in range(_MAX_ROUNDS):
        culprit, reason = _culprit(out, index, todo.entries)
        if culprit is None:
            failures.append(f"(pip did not name the line) {reason}")
            break
        failures.append(f"{todo.entries[culprit].line}: {reason}")
        index.remove(culprit)
        if not index:
            break
        say(f"looking for other lines that do not install ({len(index)} left to check)")
        rest = venv / "requirements.rest"
        rest.write_text("".join(f"{todo.lines[i]}\n" for i in index))
        code, out = _pip([*pip, *opts, "--dry-run", "-r", str(rest)], None)
        output += out
        if code == 0:
            break
    return failures, output


def _skip_lines(todo: Plan) -> list[str]:
    return [f"{entry.name or entry.line}: not installed in the replay environment: {why} "
            f"(lock line: {entry.line})" for entry, why in todo.skipped]


def ensure_environment(lock: str | None, *, rebuild: bool | None = None,
                       cache: str | os.PathLike | None = None,
                       progress: Say | None = None,
                       python_version: str | None = None) -> tuple[str, list[str]]:
    """The Python to replay with, and the differences: the lock mismatches of the current
    environment, then what a rebuilt environment could not match (a skipped lock line, a
    different Python), each with its reason.

    ``rebuild`` None: reuse this environment when it satisfies the lock (and has the
    recorded Python ``python_version``'s major.minor, or no interpreter of that version is
    on PATH), else build a venv from the lock with that Python, cached by the lock's hash
    and the Python version (a second replay builds nothing: progress says "reused").
    True: always use such a venv; False: always this environment. Editable and local
    installs are installed from their recorded path when it exists; replab from the running
    replab's source when its path is gone; any other missing path is skipped and reported.
    Raises ReplayError naming every lock line pip cannot install here, with pip's reason.
    """
    from .capture.packages import lock_hash

    say = progress or (lambda _m: None)
    if not lock:
        say("no lock recorded: replaying in the current environment")
        return sys.executable, []
    mismatches = lock_mismatches(lock)
    exe, py_note = find_python(python_version)
    recorded = ".".join((python_version or "").split(".")[:2])
    other_python = bool(recorded) and recorded != _here()
    if rebuild is False or (rebuild is None and not mismatches
                            and (not other_python or py_note)):
        if other_python:
            mismatches.append(f"python: recorded {python_version}, "
                              f"have {platform.python_version()}")
        if mismatches:
            say(f"using the current environment despite {len(mismatches)} difference(s)")
        return sys.executable, mismatches
    version = recorded if other_python and not py_note else _here()
    todo = plan(lock, replab_source=running_replab_source())
    root = Path(cache) if cache else cache_root()
    digest = lock_hash(lock)
    venv = root / "envs" / f"{digest[:16]}-py{version}"
    extra = _skip_lines(todo) + ([py_note] if py_note else [])
    with _one_builder(root / "locks" / f"{venv.name}.lock", say):
        if _cached(venv, todo):
            say(f"environment from the lock reused (cached in {venv})")
            for line in extra + todo.notes:
                say(line)
        else:
            say(f"building an environment from the lock ({len(todo.lines)} lines to install, "
                f"{len(todo.skipped)} skipped; {len(mismatches)} differ here) with Python "
                f"{version} ({exe}) in {venv}; this can take minutes")
            for line in extra + todo.notes:
                say(line)
            _build(venv, exe, todo, root, say)
            (venv / ".complete").write_text(json.dumps({
                "lock_hash": digest, "python": version, "requirements": todo.text,
                "skipped": [e.line for e, _ in todo.skipped]}))
            say(f"environment ready: {venv}")
    return str(venv / "bin" / "python"), mismatches + extra


def _cached(venv: Path, todo: Plan) -> bool:
    """Whether ``venv`` is complete and was built from the same requirement lines (a path
    that appeared or vanished, or a moved replab source, changes them)."""
    try:
        built = json.loads((venv / ".complete").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(built, dict) and built.get("requirements") == todo.text


@contextlib.contextmanager
def _one_builder(path: Path, say: Say):
    """Two replays of the same lock at once: the second waits for the first's build, then
    reuses it. No-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another replay is building this environment; waiting for it ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(venv: Path, exe: str, todo: Plan, root: Path, say: Say) -> None:
    """Create ``venv`` with ``exe`` and install the plan. Raises ReplayError naming each line
    pip fails on (pip's whole output kept under ``root/logs``); a failed build is removed."""
    # Built in place (a venv's scripts name their own path); ".complete" is written last,
    # and a failed build is removed, so a half-built environment is never used.
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        pip = _make_venv(exe, venv)
        failures, output = _install(pip, venv, todo, say)
        if failures:
            logs = root / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            log_file = logs / f"{venv.name}.pip.log"
            log_file.write_text("\n".join(output) + "\n")
            raise ReplayError(
                f"the lock does not install here ({len(failures)} problem(s)); pip failed "
                "on:\n"
                + "".join(f"  - {f}\n" for f in failures)
                + f"pip's whole output: {log_file}. Fix or drop those lines (or install the "
                "packages yourself), or replay in the current environment "
                "(--no-rebuild-env / rebuild_env=False).")
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
