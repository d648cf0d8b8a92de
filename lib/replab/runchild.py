"""The program ``replab run`` tracks, as a process: started early, held at a gate until its
run exists, its output shown live and kept, signals passed on.

Why a gate: a Python program tracked with autologging imports MLflow in its own interpreter
(seconds), and the parent imports MLflow too, to create the run and record the capture. Done
one after the other, both imports are paid in full. A Python program is therefore started
*before* its run exists, with ``REPLAB_GATE_FD`` naming a pipe: replab's ``sitecustomize``
(``replab/_child``) imports MLflow while the parent works, then waits on the pipe. The parent
releases it (:meth:`Child.release`) once the run is created and the capture taken, handing
over the variables only then known (the run id, the experiment); the program's own code
starts after that, so the capture still sees the code and files as they were before it ran.
If the parent fails or is interrupted before releasing it, the pipe is closed empty and the
interpreter exits without running the program (:meth:`Child.cancel`).

Commands that are not a Python interpreter, or an interpreter told to skip
``sitecustomize`` (``-S``, ``-I``, ``-E``), start only at :meth:`Child.release` (nothing
could hold them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from . import termination
from .difference import is_python
from .errors import ConfigError

ENV_GATE_FD = "REPLAB_GATE_FD"
# Interpreter options that stop sitecustomize from running (or from being found on PYTHONPATH).
_NO_SITECUSTOMIZE = ("-S", "-I", "-E")


def gateable(command: Sequence[str]) -> bool:
    """Whether ``command`` starts a Python interpreter that will run replab's sitecustomize,
    so it can be started before its run exists and held until it is released."""
    if not command or not is_python(command[0]):
        return False
    for word in command[1:]:
        if word in ("-m", "-c") or not word.startswith("-"):
            return True  # the interpreter's options end here
        if word in _NO_SITECUSTOMIZE or (word[1:2] != "-" and set(word[1:]) & set("SIE")):
            return False
    return True


def _tee(src: IO[bytes], sinks: list) -> None:
    for chunk in iter(lambda: src.read1(65536), b""):
        for sink in sinks:
            sink.write(chunk)
            sink.flush()


class Child:
    """One run of ``command`` in ``cwd``, its stdout and stderr teed into ``out_dir``'s
    ``stdout.txt`` / ``stderr.txt`` (and to this terminal with ``echo``)."""

    def __init__(self, command: Sequence[str], cwd: Path, env: Mapping[str, str],
                 out_dir: Path, *, echo: bool = True):
        self.command, self.cwd, self.env, self.echo = list(command), cwd, dict(env), echo
        self.stdout_path, self.stderr_path = out_dir / "stdout.txt", out_dir / "stderr.txt"
        self.proc: subprocess.Popen | None = None
        self.interrupted = False  # Ctrl-C reached replab run while the program ran
        self._gate: int | None = None  # the write end of the gate while it is closed
        self._files: list[IO[bytes]] = []
        self._threads: list[threading.Thread] = []

    def start_gated(self) -> bool:
        """Start the program now, held at the gate, when it can be held; False otherwise
        (it starts at :meth:`release`, which raises ConfigError when it cannot start)."""
        if not gateable(self.command):
            return False
        read_end, self._gate = os.pipe()
        try:
            self._spawn({ENV_GATE_FD: str(read_end)}, pass_fds=(read_end,))
        except ConfigError:  # tried again at release(), where the run records why
            os.close(self._gate)
            self._gate = None
            return False
        finally:
            os.close(read_end)
        return True

    def release(self, env: Mapping[str, str]) -> None:
        """Let the program run, with ``env`` (the run's variables) added to its environment:
        through the gate when it was started held, else by starting it now."""
        if self.proc is None:
            self._spawn(env)
            return
        if self._gate is None:
            return
        data = json.dumps(dict(env)).encode()
        gate, self._gate = self._gate, None
        try:
            with os.fdopen(gate, "wb") as fh:
                fh.write(data)
        except BrokenPipeError:  # the interpreter is gone already; wait() says how
            pass

    def cancel(self) -> None:
        """The run could not be made: an interpreter still held exits without running the
        program; one already released is stopped. Waits for it. Nothing to do once
        :meth:`wait` returned."""
        if self.proc is None:
            return
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None
        elif self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()
        self._join()

    def wait(self) -> int:
        """The program's exit code, once it and the output it wrote are done. SIGTERM sent to
        replab run goes on to the program meanwhile; Ctrl-C stops it (``interrupted``)."""
        assert self.proc is not None and self._gate is None, "release() first"
        try:
            with termination.forwarded(self.proc.send_signal):
                rc = self.proc.wait()
        except KeyboardInterrupt:
            self.proc.terminate()
            rc = self.proc.wait()
            self.interrupted = True
        self._join()
        return rc

    def output(self, name: str) -> str:
        """What the program wrote on ``stdout`` or ``stderr``, decoded."""
        path = self.stdout_path if name == "stdout" else self.stderr_path
        return path.read_bytes().decode("utf-8", "replace")

    def _spawn(self, extra_env: Mapping[str, str], pass_fds: tuple[int, ...] = ()) -> None:
        env = {**self.env, **extra_env}
        out_f, err_f = open(self.stdout_path, "wb"), open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=env, pass_fds=pass_fds,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            out_f.close()
            err_f.close()
            raise ConfigError([("command", f"cannot run {self.command[0]!r}: {exc}")]
                              ) from exc
        self._files = [out_f, err_f]
        sinks_out = [out_f] + ([sys.stdout.buffer] if self.echo else [])
        sinks_err = [err_f] + ([sys.stderr.buffer] if self.echo else [])
        self._threads = [threading.Thread(target=_tee, args=(self.proc.stdout, sinks_out)),
                         threading.Thread(target=_tee, args=(self.proc.stderr, sinks_err))]
        for t in self._threads:
            t.start()

    def _join(self) -> None:
        for t in self._threads:
            t.join()
        for f in self._files:
            f.close()
        self._threads, self._files = [], []
