"""The test bed's real server starts without asking a resolver anything.

http.server.HTTPServer resolves the machine's hostname between bind() and listen(); where
/etc/hosts does not name the host (a fresh Debian 12 root), that waited 10 s for DNS inside a
test namespace while real servers reset every SYN (issue 12: all of test_synproxy.py failed).
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lb.testbed import httpd


def _no_resolver(*args: Any) -> Any:
    raise AssertionError(f"the test bed's httpd asked the resolver: {args!r}")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[httpd._Server]:
    for name in ("getfqdn", "gethostbyaddr", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(socket, name, _no_resolver)
    srv = httpd._Server(("127.0.0.1", 0), httpd.make_handler("rs-under-test", verbose=False))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5.0)


def test_listens_without_name_resolution(server: httpd._Server) -> None:
    host, port = server.server_address[:2]
    assert (server.server_name, server.server_port) == ("127.0.0.1", port)
    conn = http.client.HTTPConnection(str(host), port, timeout=5.0)
    try:
        conn.request("GET", "/")
        reply = conn.getresponse()
        assert (reply.status, reply.getheader("X-Server"), reply.read()) == (200, "rs-under-test", b"rs-under-test\n")
    finally:
        conn.close()
