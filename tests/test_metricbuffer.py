"""MetricBuffer's ordering and retry rules, with a real sender that can fail."""

from __future__ import annotations

import time

import pytest

from replab.metricbuffer import MetricBuffer


class Server:
    """Receives batches; refuses the next ``refuse`` of them."""

    def __init__(self, refuse: int = 0):
        self.batches: list[list[int]] = []
        self.refuse = refuse

    def send(self, points):
        if self.refuse:
            self.refuse -= 1
            raise ConnectionError("server down")
        self.batches.append(list(points))


def test_full_batches_go_at_once_and_the_rest_on_flush():
    server = Server()
    buf = MetricBuffer(server.send, batch_size=3, interval=0)
    buf.add([1, 2])
    assert server.batches == [] and len(buf) == 2
    buf.add([3])
    assert server.batches == [[1, 2, 3]] and len(buf) == 0
    buf.add([4])
    assert server.batches == [[1, 2, 3]] and len(buf) == 1
    buf.flush()
    assert server.batches == [[1, 2, 3], [4]] and len(buf) == 0


def test_a_refused_batch_stays_queued_in_order_and_goes_on_the_next_flush():
    server = Server(refuse=1)
    buf = MetricBuffer(server.send, batch_size=2, interval=0)
    buf.add([1])
    with pytest.raises(ConnectionError):
        buf.add([2])  # full: sent at once, refused
    buf.add([3])
    buf.flush()
    assert [p for b in server.batches for p in b] == [1, 2, 3]


def test_a_send_interrupted_by_a_signal_is_sent_again_by_the_exit_flush():
    server = Server()
    calls = []

    def send(points):
        calls.append(list(points))
        if len(calls) == 1:  # SIGTERM arrives while this batch is on the wire
            buf.add([3])
            buf.flush_before_exit()
            raise SystemExit  # the handler ends the process: this send never completes
        server.send(points)

    buf = MetricBuffer(send, batch_size=10, interval=0)
    buf.add([1, 2])
    with pytest.raises(SystemExit):
        buf.flush()
    assert server.batches == [[1, 2], [3]]


def test_the_background_thread_sends_points_nobody_flushes_and_stops_on_close():
    server = Server(refuse=1)  # the first round fails; the thread keeps them and retries
    buf = MetricBuffer(server.send, batch_size=1000, interval=0.05)
    buf.add([1, 2])
    deadline = time.monotonic() + 60
    while not server.batches and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.batches == [[1, 2]]
    thread = buf._thread
    buf.close()
    assert not thread.is_alive()
    buf.add([3])  # after close: kept for the last flush, no new thread
    assert buf._thread is None and len(buf) == 1
