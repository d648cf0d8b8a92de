"""Buffered metric points, sent in batches: when a batch fills, and at least every second.

A training loop logs thousands of points; one HTTP request per point is the slow path
(``mlflow.log_metric``), so :class:`MetricBuffer` collects them and sends them in batches of
up to ``batch_size`` points. A background thread also sends whatever is waiting every
``interval`` seconds, so a program that dies without warning (kill -9, ``os._exit``, an
out-of-memory kill) loses at most about ``interval`` seconds of points, and the MLflow UI
shows a short run's curves while it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0  # seconds: at most this long between a point being logged and sent


class MetricBuffer:
    """Points waiting to be sent through ``send(list_of_points)`` (which raises on failure).

    ``add`` sends a full batch in the caller's thread; a daemon thread, started with the first
    point, sends the rest once the oldest waiting point is ``interval`` seconds old
    (``interval=0``: no thread), so a busy loop still sends full batches. Batches go out one
    at a time and in order.
    """

    def __init__(self, send: Callable[[list], Any], batch_size: int,
                 interval: float = FLUSH_INTERVAL, name: str = "replab-metrics"):
        self._send = send
        self.batch_size = batch_size
        self.interval = interval
        self._name = name
        self._points: list = []
        self._since = 0.0  # monotonic time the oldest waiting point was queued
        self._lock = threading.Lock()  # guards _points
        # One batch on the wire at a time. Re-entrant: a signal handler may interrupt the
        # main thread in the middle of a send and flush from there.
        self._send_lock = threading.RLock()
        self._inflight: list | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def __len__(self) -> int:
        return len(self._points)

    def add(self, points: Iterable) -> None:
        """Queue points; sends at once when a batch is full. Raises what ``send`` raises."""
        with self._lock:
            if not self._points:
                self._since = time.monotonic()
            self._points.extend(points)
            full = len(self._points) >= self.batch_size
        if self._thread is None and self.interval > 0 and not self._stop.is_set():
            self._start()
        if full:
            self.flush()

    def flush(self) -> None:
        """Send every queued point now. On failure the unsent points stay queued, in order,
        and the error is raised."""
        with self._send_lock:
            while True:
                with self._lock:
                    if not self._points:
                        return
                    chunk = self._points[:self.batch_size]
                    del self._points[:self.batch_size]
                self._inflight = chunk
                try:
                    self._send(chunk)
                except BaseException:
                    with self._lock:
                        self._points[:0] = chunk
                    raise
                finally:
                    self._inflight = None

    def flush_before_exit(self) -> None:
        """Like :meth:`flush`, from a handler that may have interrupted a send in this thread
        (that batch will never complete, so it is sent again; MLflow drops exact duplicates)."""
        with self._send_lock:
            interrupted = self._inflight
            if interrupted:
                self._send(interrupted)
                self._inflight = None
            self.flush()

    def close(self) -> None:
        """Stop the background thread (it finishes a send in progress); queued points stay
        queued for a last :meth:`flush`."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)

    # -- the background sender ---------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def _due_in(self) -> float:
        """Seconds until the oldest waiting point is ``interval`` old (``interval`` if none)."""
        with self._lock:
            if not self._points:
                return self.interval
            return self._since + self.interval - time.monotonic()

    def _loop(self) -> None:
        delay = self.interval
        while not self._stop.wait(max(delay, 0.005)):
            delay = self._due_in()
            if delay > 0:
                continue
            try:
                self.flush()
            except Exception as exc:  # kept queued; the next round or the run's end retries
                if not self._warned:
                    log.warning("could not send metrics (will retry): %s", exc)
                    self._warned = True
                delay = self.interval
            else:
                self._warned = False
                delay = self._due_in()
