"""SIGTERM during a tracked run: save what is buffered, then terminate as before.

``docker stop``, ``kill``, a batch scheduler or a lease ending send SIGTERM. Without a
handler Python dies at once and the points still buffered are lost. :func:`install` puts a
handler in front of the one that was there: it calls ``on_signal(signum, fatal)`` (flush,
end the run), then does what the previous disposition would have done: call the previous
Python handler (``fatal`` False: the program decides what happens next), or, for the
default disposition, restore it and re-send the signal, so the process still dies *by*
SIGTERM (exit status -15 to its parent). Installed only from the main thread (Python's rule)
and only over the default disposition or a Python handler: a signal the program ignores
stays ignored, and a handler set outside Python (None) is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


class Installed:
    """What :func:`install` replaced, for :func:`restore`."""

    def __init__(self, signum: int, previous: Any, handler: Callable):
        self.signum, self.previous, self.handler = signum, previous, handler


def install(on_signal: Callable[[int, bool], None], signum: int = signal.SIGTERM
            ) -> Installed | None:
    """Chain ``on_signal`` in front of the current ``signum`` handler; None when it is not
    safe here (not the main thread, an ignored signal, a handler not set from Python)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        previous = signal.getsignal(signum)
    except (ValueError, OSError):
        return None
    if previous is None or previous == signal.SIG_IGN:
        return None
    chained = callable(previous) and previous != signal.SIG_DFL

    def handler(sig, frame):
        try:
            on_signal(sig, not chained)
        except Exception as exc:  # the signal's effect must not depend on the server
            log.error("could not save the run on %s: %s", signal.Signals(sig).name, exc)
        if chained:
            return previous(sig, frame)
        _die_by(sig)
        return None

    try:
        signal.signal(signum, handler)
    except (ValueError, OSError):
        return None
    return Installed(signum, previous, handler)


def restore(installed: Installed | None) -> None:
    """Put the previous handler back, if ours is still the one installed."""
    if installed is None:
        return
    try:
        if signal.getsignal(installed.signum) is installed.handler:
            signal.signal(installed.signum, installed.previous)
    except (ValueError, OSError) as exc:  # not the main thread any more
        log.debug("could not restore the %s handler: %s", installed.signum, exc)


@contextlib.contextmanager
def forwarded(send: Callable[[int], Any], signum: int = signal.SIGTERM) -> Iterator[None]:
    """Inside the block, ``signum`` is handed to ``send`` (a child's ``send_signal``) instead
    of taking effect here; the previous handler is back afterwards. Main thread only (it does
    nothing elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signum)
    signal.signal(signum, lambda sig, _frame: send(sig))
    try:
        yield
    finally:
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


def _die_by(sig: int) -> None:
    """Terminate as the default disposition would: by the signal itself."""
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    time.sleep(5)  # the signal is delivered at once; this only bounds an impossible wait
    os._exit(128 + sig)
