"""A Unix socket that answers each request line in a thread: lbd's control protocol without lbd.

Used by unit tests that drive lbadm (or the control client) end to end against the daemon's own
request dispatch, or against a scripted fake. No asyncio, no privileges.
"""

from __future__ import annotations

import functools
import json
import socketserver
import threading
from collections.abc import Callable
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
