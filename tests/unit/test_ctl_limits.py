"""The control socket's limits (issue 16 item 6): ~1,000 idle root connections under the usual
1,024-fd limit made lbadm and the state snapshot fail with EMFILE. lbd now serves at most
max_clients connections, closes the one idle longest when a new one arrives at the cap (the
operator always gets in), refuses with EBUSY only when all are busy, and closes idle ones."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from lb.ctlserver import ControlServer

pytest.importorskip("lb._fastpath", reason="the served Director runs the C engine")

from test_daemon_control import Served  # noqa: E402

CAP = 8
WAIT_BOUND_S = 10.0  # bounds on waiting for lbd, not performance thresholds


class Limited(Served):
    def __init__(self, path: str, idle_timeout_s: float = 3600.0) -> None:
        super().__init__(path)
        self.server = ControlServer(self.director, path, max_clients=CAP, idle_timeout_s=idle_timeout_s)


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT_BOUND_S)
    s.connect(path)
    return s


def ask(s: socket.socket, op: str = "ping") -> dict[str, Any]:
    s.sendall(json.dumps({"op": op}).encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed by lbd")
        buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer


def closed_by_lbd(s: socket.socket) -> bool:
    """True once lbd has closed `s` (end of file); waits a bounded time."""
    deadline = time.monotonic() + WAIT_BOUND_S
    s.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            if s.recv(1) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Limited]:
    served = Limited(str(tmp_path / "lbd.sock"))
    with served:
        yield served


def test_many_idle_connections_leave_room_for_the_operator(limited: Limited) -> None:
    with ExitStack() as stack:
        idle = [stack.enter_context(connect(limited.path)) for _ in range(10 * CAP)]
        assert ask(idle[-1])["ok"]  # the newest of them is in
        operator = stack.enter_context(connect(limited.path))
        assert ask(operator, "list")["ok"]
        deadline = time.monotonic() + WAIT_BOUND_S
        while len(limited.server.clients) > CAP:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert len(limited.server.clients) <= CAP
        assert limited.server.evicted >= 9 * CAP - 1
        assert closed_by_lbd(idle[0])  # the oldest idle ones made room


def test_the_busy_ones_are_never_evicted_and_a_full_house_says_ebusy(limited: Limited) -> None:
    with ExitStack() as stack:
        conns = [stack.enter_context(connect(limited.path)) for _ in range(CAP)]
        deadline = time.monotonic() + WAIT_BOUND_S
        while len(limited.server.clients) < CAP:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for c in limited.server.clients.values():
            c.busy = True  # as while their answers are being written
        late = stack.enter_context(connect(limited.path))
        answer = json.loads(late.makefile("rb").readline())
        assert answer["ok"] is False and answer["errno"] == "EBUSY"
        assert limited.server.evicted == 0 and limited.server.refused == 1
        for c in limited.server.clients.values():
            c.busy = False
        assert ask(conns[0])["ok"]


def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    served = Limited(str(tmp_path / "lbd.sock"), idle_timeout_s=0.2)
    with served:
        with connect(served.path) as s:
            assert ask(s)["ok"]
            assert closed_by_lbd(s)
        assert served.server.timed_out == 1
        with connect(served.path) as s:  # a new connection is served as ever
            assert ask(s)["ok"]


def test_cap_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ControlServer(None, str(tmp_path / "x"), max_clients=0)  # type: ignore[arg-type]
