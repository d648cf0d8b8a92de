"""The local lab's service processes: start and record, wait until ready, stop, interrupts,
and the lab's processes that no record names ("strays").

A service's record (``pid``, ``create_time``, ``port``, ``log``, ...) is handed to the caller's
``register`` callback right after the process exists and before anything waits for it, with
SIGINT/SIGTERM held back in between (:func:`deferred`): an interrupt at any moment leaves
every started process recorded. :func:`interruptible` turns SIGINT and SIGTERM into
:class:`LaunchInterrupted` for the duration of a launch, so that the launch can stop what it
started before it gives up; after the clean-up a SIGTERM is delivered again with its previous
disposition (the process then ends as the sender asked).

Every service runs with ``REPLAB_LAB_DIR=<workdir>/lab`` in its environment (its kernels and
their children inherit it): :func:`strays` finds the lab's processes that the state file does
not record by that mark, or by a service command line naming the lab directory (a server left
by an older replab).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import CloudError, ResourceTimeout

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MARK = "REPLAB_LAB_DIR"  # in every service's environment: the lab directory it belongs to
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# command-line words of the lab's services (for strays without the mark in their environment)
_SERVICE_WORDS = ("mlflow server", "mlflow.server", "jupyterlab", "jupyter-lab",
                  "bin/postgres", "gunicorn", "uvicorn")

# The Popen objects of the services this process started: kept so that they are reaped
# (no zombies while the caller lives) and never garbage-collected while running.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServiceFailed(CloudError):
    """A lab service exited, or could not be started; the message has its log's tail."""


class LaunchInterrupted(KeyboardInterrupt):
    """A launch ended by SIGINT (Ctrl-C) or SIGTERM. ``signum``: the signal; ``stopped``:
    what the launch had started and stopped again before giving up."""

    def __init__(self, signum: int, stopped: Iterable[str] = ()):
        self.signum = signum
        self.stopped = list(stopped)
        name = signal.Signals(signum).name
        if self.stopped:
            what = "; ".join(self.stopped)
            text = (f"the lab's launch was interrupted ({name}); what it had started is "
                    f"stopped again ({what}) and no process of it is left running. Launch "
                    "again to start the lab.")
        else:
            text = f"the lab's launch was interrupted ({name}) before it started a service"
        super().__init__(text)

    def __str__(self) -> str:
        return str(self.args[0])


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def say(progress: Progress | None, message: str) -> None:
    log.info("%s", message)
    if progress:
        progress(message)


def log_tail(path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of a log file ("" when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


# -- interrupts --------------------------------------------------------------------------------
class _Guard(threading.local):
    def __init__(self) -> None:
        self.depth = 0  # inside deferred()
        self.pending: int | None = None  # a signal that arrived meanwhile
        self.installed = False


_guard = _Guard()


def _handler(signum: int, frame: Any) -> None:
    if _guard.depth:
        if _guard.pending is None:
            _guard.pending = signum
        return
    raise LaunchInterrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`LaunchInterrupted` inside (main thread only; a
    signal the process ignores stays ignored). On the way out the previous handlers come
    back, and a launch that SIGTERM interrupted gets the signal again under them."""
    if threading.current_thread() is not threading.main_thread() or _guard.installed:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s, h in previous.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, _handler)
    _guard.installed = True
    again = False
    try:
        yield
    except LaunchInterrupted as exc:
        again = exc.signum == signal.SIGTERM
        raise
    finally:
        _guard.installed = False
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if again:  # the interrupt goes on as the sender meant it
            os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def deferred(*, drop: bool = False) -> Iterator[None]:
    """Hold SIGINT/SIGTERM back inside (they raise on the way out, or are dropped with
    ``drop``: a clean-up that is itself the answer to an interrupt)."""
    _guard.depth += 1
    try:
        yield
    finally:
        _guard.depth -= 1
        if not _guard.depth:
            pending, _guard.pending = _guard.pending, None
            if pending is not None and not drop:
                raise LaunchInterrupted(pending)  # noqa: B012


# -- processes -------------------------------------------------------------------------------
def process(record: Mapping[str, Any] | None):
    """The live psutil.Process of a recorded service, or None (gone, a zombie, or the PID
    now belongs to another process: its start time differs)."""
    import psutil

    if not record or not record.get("pid"):
        return None
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record.get("create_time", 0))) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None
    return proc


def spawn(name: str, argv: list[str], *, env: Mapping[str, str], log_path: Path, cwd: Path,
          fields: Mapping[str, Any], register: Callable[[dict[str, Any]], None],
          user: pwd.struct_passwd | None = None, umask: int = 0o077) -> dict[str, Any]:
    """Start ``argv`` in a new session (its own process group), output appended to
    ``log_path``, files created with ``umask``; hand its record (pid, start time, log, and
    ``fields``) to ``register`` before returning it. No signal gets between the start and
    ``register``."""
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as fh, deferred():
        os.fchmod(fh.fileno(), 0o600)
        fh.write(f"\n=== replab: {name} starting at {now()}\n".encode())
        fh.flush()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                    start_new_session=True, close_fds=True, umask=umask,
                                    **extra)
        except OSError as exc:
            raise ServiceFailed(f"{name}: cannot start {argv[0]}: {exc}") from None
        _CHILDREN[proc.pid] = proc
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            created = time.time()
        record = {"pid": proc.pid, "create_time": created, "log": str(log_path),
                  "started_at": now(), **fields}
        register(record)
    log.debug("%s started: pid %d, log %s", name, proc.pid, log_path)
    return record


def terminate(name: str, record: Mapping[str, Any], sig: int = signal.SIGTERM,
              timeout: float = 20) -> str:
    """Stop one recorded service: ``sig`` to its process group (it leads one), then SIGKILL
    to whatever of it and its descendants is left after ``timeout`` s."""
    proc = process(record)
    if proc is None:
        return f"{name}: not running"
    pid = proc.pid
    _end(name, proc, sig, timeout)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)
    return f"{name}: stopped (pid {pid})"


def _end(name: str, proc, sig: int, timeout: float) -> None:
    import psutil

    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc]
    pid = proc.pid
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    _gone, alive = psutil.wait_procs(family, timeout=timeout)
    if alive:
        log.warning("%s: %d process(es) still running %ss after signal %d; killing them",
                    name, len(alive), timeout, sig)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)


def wait_ready(name: str, record: Mapping[str, Any], check: Callable[[], bool],
               timeout: float, progress: Progress | None) -> float:
    """Wait until ``check()`` is true; the time it took. Raises ServiceFailed when the
    process exits first, ResourceTimeout after ``timeout`` s (the process is stopped);
    both carry the log's tail."""
    start = time.monotonic()
    deadline = start + timeout
    last_note = start
    log_path = Path(record["log"])
    while True:
        if check():
            return time.monotonic() - start
        if process(record) is None:
            child = _CHILDREN.pop(int(record["pid"]), None)
            code = child.poll() if child is not None else None
            with contextlib.suppress(OSError):  # what it left of its process group
                os.killpg(int(record["pid"]), signal.SIGKILL)
            raise ServiceFailed(f"{name} exited{f' with code {code}' if code is not None else ''}"
                                f" before it was ready; the end of {log_path}:\n"
                                f"{log_tail(log_path)}")
        current = time.monotonic()
        if current >= deadline:
            terminate(name, record, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            raise ResourceTimeout(f"{name} (pid {record['pid']}) was not ready after "
                                  f"{timeout:.0f}s; the end of {log_path}:\n"
                                  f"{log_tail(log_path)}")
        if current - last_note >= 10:
            say(progress, f"{name}: still starting ({current - start:.0f}s)")
            last_note = current
        time.sleep(0.2)


# -- the lab's processes that no record names --------------------------------------------------
def family_pids(records: Iterable[Mapping[str, Any] | None]) -> set[int]:
    """The PIDs of the recorded services that run, and of their descendants."""
    import psutil

    pids: set[int] = set()
    for record in records:
        proc = process(record)
        if proc is None:
            continue
        pids.add(proc.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            pids.update(c.pid for c in proc.children(recursive=True))
    return pids


def _ours(proc, root: str) -> bool:
    import psutil

    try:
        argv = proc.cmdline()
        line = " ".join(argv)
        if any(root + "/" in a or a == root for a in argv) and any(
                w in line for w in _SERVICE_WORDS):
            return True
        return proc.environ().get(MARK) == root
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


def strays(root: Path, records: Iterable[Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """The processes of the lab in ``root`` that are neither a recorded service nor one of
    their descendants (nor this process or its ancestors): ``[{"pid", "create_time",
    "service", "command", "ports"}]``, oldest first."""
    import psutil

    mark = str(Path(root).absolute())
    known = family_pids(records)
    me = psutil.Process()
    known.add(me.pid)
    with contextlib.suppress(psutil.Error):
        known.update(p.pid for p in me.parents())
    found = []
    for proc in psutil.process_iter(["pid", "create_time", "status"]):
        if proc.pid in known or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if not _ours(proc, mark):
            continue
        try:
            command = " ".join(proc.cmdline())
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        found.append({"pid": proc.pid, "create_time": proc.info["create_time"],
                      "service": env.get("REPLAB_LAB_SERVICE") or _guess(command),
                      "command": command[:300], "ports": listening_ports(proc)})
    return sorted(found, key=lambda s: s["create_time"])


def _guess(command: str) -> str:
    for word, service in (("mlflow", "mlflow"), ("jupyter", "jupyter"),
                          ("postgres", "postgres")):
        if word in command:
            return service
    return "unknown"


def listening_ports(proc) -> list[int]:
    """The TCP ports ``proc`` and its descendants listen on (``mlflow server`` listens
    through a uvicorn child)."""
    import psutil

    try:
        family = [proc, *proc.children(recursive=True)]
    except (psutil.Error, OSError):
        return []
    ports = set()
    for p in family:
        with contextlib.suppress(psutil.Error, OSError):
            ports |= {c.laddr.port for c in p.net_connections(kind="tcp")
                      if c.status == psutil.CONN_LISTEN}
    return sorted(ports)


def port_holder(port: int) -> dict[str, Any] | None:
    """Who listens on TCP ``port`` (any local address): ``{"pid", "command"}`` (pid None
    when the system does not say), or None when nothing does."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        conns = []
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            command = ""
            if c.pid:
                with contextlib.suppress(psutil.Error):
                    command = " ".join(psutil.Process(c.pid).cmdline())[:300]
            return {"pid": c.pid, "command": command}
    return None


def describe(holder: Mapping[str, Any] | None) -> str:
    if not holder:
        return "another process"
    if not holder.get("pid"):
        return "a process this user cannot see"
    return f"pid {holder['pid']} ({holder.get('command') or '?'})"


def end_stray(stray: Mapping[str, Any], timeout: float = 20) -> str:
    """Stop one stray (and its descendants), if it is still the same process."""
    proc = process(stray)
    if proc is None:
        return f"{stray['service']} (unrecorded, pid {stray['pid']}): already gone"
    sig = signal.SIGINT if stray.get("service") == "postgres" else signal.SIGTERM
    _end(f"unrecorded {stray['service']}", proc, sig, timeout)
    return f"{stray['service']} (unrecorded): stopped (pid {stray['pid']})"


__all__ = ["LaunchInterrupted", "MARK", "ServiceFailed", "deferred", "describe", "end_stray",
           "family_pids",
           "interruptible", "listening_ports", "log_tail", "port_holder", "process", "spawn",
           "strays", "terminate", "wait_ready"]
