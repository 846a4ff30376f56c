"""EchoStream (the netns tests' long-lived connection) reports the peer's failures, not its own close.

A CI run once failed test_reload with "closed by the peer" although the director was fine: the
test's own close() shut the socket down while the stream thread waited for an echo, and the EOF
that followed was blamed on the peer. These run on loopback (no namespace needed).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from lb.testbed import echo


class SlowEchoServer:
    """Greets, then echoes each chunk after `delay_s`, or closes after `close_after` chunks."""

    def __init__(self, delay_s: float, close_after: int | None = None) -> None:
        self.delay_s, self.close_after = delay_s, close_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(b"HELLO slow\n")
            chunks = 0
            while True:
                data = conn.recv(65536)
                if not data or (self.close_after is not None and chunks >= self.close_after):
                    return
                time.sleep(self.delay_s)
                conn.sendall(data)
                chunks += 1

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    def connect_here(netns: str, addr: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((addr, port), timeout=timeout)

    monkeypatch.setattr(echo, "connect_in", connect_here)


def stream_to(server: SlowEchoServer) -> echo.EchoStream:
    return echo.EchoStream("unused", "127.0.0.1", server.port, 1, timeout_s=5.0, every_s=0.0,
                           max_s=10.0, pad=10)


@pytest.fixture
def slow_server() -> Iterator[SlowEchoServer]:
    server = SlowEchoServer(delay_s=0.5)
    yield server
    server.close()


def test_close_during_a_pending_echo_is_not_a_peer_failure(loopback: None, slow_server: SlowEchoServer) -> None:
    stream = stream_to(slow_server)
    time.sleep(0.1)  # the first line is out, its echo 0.4 s away: the thread sits in recv()
    assert stream.echoed == 0
    stream.close()
    assert not stream.thread.is_alive()
    assert stream.error is None


def test_a_peer_that_closes_is_reported(loopback: None) -> None:
    server = SlowEchoServer(delay_s=0.0, close_after=3)
    try:
        stream = stream_to(server)
        stream.thread.join(timeout=5.0)
        assert stream.error == "ConnectionError: closed by the peer after 3 lines"
        stream.close()
        assert stream.error == "ConnectionError: closed by the peer after 3 lines"
    finally:
        server.close()
