"""A Unix socket that answers each request line in a thread: lbd's control protocol without lbd.

Used by unit tests that drive lbadm (or the control client) end to end against the daemon's own
request dispatch, or against a scripted fake. No asyncio, no privileges. `served_director` puts a
Director on a fresh socket, `lbadm` runs lbadm in this process against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import socketserver
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

Answer = Callable[[bytes], dict[str, Any]]


class LineServer:
    """Serves `path`: every line received is answered with json(answer(line)) + newline.
    `per_connection` (instead of `answer`): called once per connection for that connection's
    answer function (lbd's dispatch keeps a chunked batch per connection)."""

    def __init__(self, path: str, answer: Answer | None = None, *,
                 per_connection: Callable[[], Answer] | None = None) -> None:
        def answerer() -> Answer:
            if per_connection is not None:
                return per_connection()
            assert answer is not None
            return answer

        class _Connection(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                reply = answerer()
                for line in self.rfile:
                    self.wfile.write((json.dumps(reply(line)) + "\n").encode())

        self.server = socketserver.ThreadingUnixStreamServer(path, _Connection)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def director_socket(path: str, director: Any) -> LineServer:
    """The daemon's request dispatch (ControlServer._dispatch) for `director` behind `path`."""
    from lb.ctlserver import ControlServer
    from lb.director import BatchSession

    server = ControlServer(director, path)
    return LineServer(path, per_connection=lambda: functools.partial(server._dispatch, session=BatchSession()))


def engine_of_kind(kind: str, conn_max: int = 64) -> Any:
    """"python": a PyEngine; "c": a CEngine, or the calling test skips (the C extension is not built)."""
    if kind == "python":
        from lb.pyengine import PyEngine

        return PyEngine(conn_max=conn_max)
    import pytest

    return pytest.importorskip("lb.fastpath", reason="the C extension lb._fastpath is not built").CEngine(conn_max=conn_max)


@contextlib.contextmanager
def served_director(engine: Any) -> Iterator[tuple[str, Any]]:
    """A Director of `engine` (no rules, no resolver) behind a socket in a temporary directory:
    (socket path, director)."""
    from lb.director import Director

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "lbd.sock")
        director = Director(engine, rules=None, resolver=None)
        with director_socket(path, director):
            yield path, director


def lbadm(path: str, *argv: str, stdin: str = "", **main_kwargs: Any) -> tuple[int, str, str]:
    """lbadm (lb.lbadm.main) run in this process against the socket `path`, addresses shown numerically:
    (exit code, stdout, stderr). `main_kwargs`: more of main's keyword arguments (e.g. connect)."""
    from lb.lbadm import main
    from lb.namedb import NumericNames

    old = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), io.StringIO(), io.StringIO()
    try:
        rc = main(["--socket", path, *argv], env={}, names=NumericNames(), **main_kwargs)
        return rc, sys.stdout.getvalue(), sys.stderr.getvalue()
    finally:
        sys.stdin, sys.stdout, sys.stderr = old


class ServedControl:
    """lbd's own ControlServer (asyncio) in a thread of its own, over a Director with the C engine and
    one service (TCP 10.0.0.1:80, rr): `with ServedControl(path)`, or start() ... stop()."""

    def __init__(self, path: str) -> None:
        from lb.ctlserver import ControlServer
        from lb.director import Director
        from lb.fastpath import CEngine

        self.path = path
        self.director = Director(CEngine(conn_max=64), rules=None, resolver=None)
        self.director.handle("add_service", {"proto": "tcp", "addr": "10.0.0.1", "port": 80, "sched": "rr"})
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(self.director, path)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> Self:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
