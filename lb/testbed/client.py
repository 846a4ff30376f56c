"""HTTP clients for the test bed: which real server answered, over fresh or held connections.

All functions take `netns`: the client's sockets are created inside that
network namespace (per-thread setns, see topology.enter_netns), so the calling
process can stay where it is. `netns=None` uses the caller's own namespace.

- `fresh_gets(netns, host, port, n)`: n GETs, each on its own new TCP
  connection ("Connection: close"); returns one `Reply` per request.
- `KeepAlive`: one persistent HTTP/1.1 connection; `get()` as often as needed.
- `Hold`: `GET /hold?seconds=S` read in a background thread: a long-lived
  connection that keeps receiving a byte per second.
- `wait_serving(netns, {addr: name}, port)`: until each real server answers with
  its name; a fixture calls it after starting httpds, before any test sends traffic.
- `paced_gets(...)`: fresh-connection GETs for a bounded time at a bounded rate,
  each with its wall-clock start time (CLI: `--seconds S --interval I --jsonl`,
  one JSON object per request, for test-bed traffic generators).

Everything is bounded: per-request timeouts, request counts <= 10000.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from lb.testbed.topology import enter_netns

MAX_REQUESTS = 10000
DEFAULT_TIMEOUT_S = 5.0


@dataclass
class Reply:
    """Outcome of one request: `server` (body's first line) or `error`; `body` is all of it."""

    server: str | None
    status: int | None = None
    error: str | None = None
    local_port: int | None = None
    body: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200


def _socket_in(netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with enter_netns(netns):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


class NetnsHTTPConnection(http.client.HTTPConnection):
    """http.client connection whose socket lives in network namespace `netns`."""

    def __init__(self, host: str, port: int = 80, *, netns: str | None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        sock = _socket_in(self.netns)
        try:
            sock.settimeout(self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    @property
    def local_port(self) -> int | None:
        return self.sock.getsockname()[1] if self.sock else None


def _request(conn: NetnsHTTPConnection, path: str, headers: dict[str, str]) -> Reply:
    port = None
    try:
        conn.request("GET", path, headers=headers)
        port = conn.local_port
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return Reply(server=body.split("\n", 1)[0] or None, status=resp.status, local_port=port, body=body)
    except (OSError, http.client.HTTPException) as exc:
        return Reply(server=None, error=f"{type(exc).__name__}: {exc}", local_port=port)


def get_once(netns: str | None, host: str, port: int = 80, path: str = "/",
             timeout: float = DEFAULT_TIMEOUT_S) -> Reply:
    """One GET on a new connection, closed afterwards."""
    conn = NetnsHTTPConnection(host, port, netns=netns, timeout=timeout)
    try:
        return _request(conn, path, {"Connection": "close"})
    finally:
        conn.close()


def fresh_gets(netns: str | None, host: str, port: int = 80, n: int = 10, path: str = "/",
               timeout: float = DEFAULT_TIMEOUT_S) -> list[Reply]:
    """`n` sequential GETs, each on its own TCP connection. Never raises for network errors."""
    if not 0 <= n <= MAX_REQUESTS:
        raise ValueError(f"n must be in 0..{MAX_REQUESTS}")
    return [get_once(netns, host, port, path, timeout) for _ in range(n)]


def wait_serving(netns: str | None, servers: Mapping[str, str], port: int = 80,
                 timeout_s: float = 15.0, interval_s: float = 0.1) -> None:
    """Until every `addr` of `servers` answers a GET on `port` with its `name` (the first line of
    lb.testbed.httpd's body), asked from `netns`. A freshly started server resets connections
    until it listens; tests must not take that for the behaviour under test.
    Raises TimeoutError naming the server and its last reply after `timeout_s` in all."""
    deadline = time.monotonic() + timeout_s
    for addr, name in servers.items():
        while True:
            reply = get_once(netns, addr, port, timeout=min(1.0, timeout_s))
            if reply.ok and reply.server == name:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"httpd {name} at {addr}:{port} not serving after {timeout_s:g} s "
                                   f"(asked from {netns or 'our own namespace'}); last reply: {reply}")
            time.sleep(interval_s)


def paced_gets(netns: str | None, host: str, port: int = 80, seconds: float = 10.0,
               interval: float = 0.05, max_requests: int = MAX_REQUESTS, path: str = "/",
               timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[tuple[float, float, Reply]]:
    """Yield (wall-clock start, duration, Reply) for fresh-connection GETs, one every
    `interval` seconds at most, until `seconds` have passed or `max_requests` were made."""
    if not 0 <= max_requests <= MAX_REQUESTS:
        raise ValueError(f"max_requests must be in 0..{MAX_REQUESTS}")
    start = time.monotonic()
    for i in range(max_requests):
        now = time.monotonic()
        if now - start >= seconds:
            return
        due = start + i * interval
        if due > now:
            time.sleep(due - now)
        wall, t0 = time.time(), time.monotonic()
        reply = get_once(netns, host, port, path, timeout)
        yield wall, time.monotonic() - t0, reply


def tally(replies: list[Reply]) -> dict[str, int]:
    """server -> count; failures are counted under "<error>"."""
    return dict(collections.Counter(r.server if r.ok and r.server is not None else "<error>" for r in replies))


class KeepAlive:
    """One persistent HTTP/1.1 connection. `server` is who answered the first request."""

    def __init__(self, netns: str | None, host: str, port: int = 80,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.conn = NetnsHTTPConnection(host, port, netns=netns, timeout=timeout)
        self.server: str | None = None

    def get(self, path: str = "/", timeout: float | None = None) -> Reply:
        if timeout is not None:
            self.conn.timeout = timeout
            if self.conn.sock is not None:
                self.conn.sock.settimeout(timeout)
        reply = _request(self.conn, path, {"Connection": "keep-alive"})
        if reply.ok and self.server is None:
            self.server = reply.server
        if not reply.ok:
            # http.client auto-reconnects on the next request; never let that
            # silently replace the connection under test.
            self.conn.auto_open = 0
        return reply

    @property
    def local_port(self) -> int | None:
        return self.conn.local_port

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hold:
    """`GET /hold?seconds=S`: a connection kept open by the server, read in a thread.

    After `start()` returns, `server` is known (the server sends its name at
    once). `received` counts the "." bytes; `join()` waits for the end.
    """

    def __init__(self, netns: str | None, host: str, port: int = 80, seconds: int = 10,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.netns, self.host, self.port = netns, host, port
        self.seconds, self.timeout = seconds, timeout
        self.server: str | None = None
        self.received = 0
        self.error: str | None = None
        self.done = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Hold:
        sock = _socket_in(self.netns)
        self._sock = sock
        try:
            self._start(sock)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, sock: socket.socket) -> None:
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        sock.sendall(
            f"GET /hold?seconds={self.seconds} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf or b"\n" not in buf.split(b"\r\n\r\n", 1)[1]:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"hold: connection closed early after {buf!r}")
            buf += chunk
            if len(buf) > 65536:
                raise ConnectionError("hold: oversized response header")
        head, rest = buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"hold: unexpected response {head[:80]!r}")
        first, after = rest.split(b"\n", 1)
        self.server = first.decode(errors="replace")
        self.received = after.count(b".")
        self._thread = threading.Thread(target=self._read, name=f"hold-{self.server}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._sock is not None
        try:
            # Per-recv timeout: one byte per second is expected, allow slack.
            self._sock.settimeout(max(self.timeout, 3.0))
            while True:
                chunk = self._sock.recv(4096)
                if not chunk:
                    break
                self.received += chunk.count(b".")
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def join(self, timeout: float) -> bool:
        return self.done.wait(timeout)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> Hold:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def keepalives(netns: str | None, host: str, port: int, count: int) -> Iterator[list[KeepAlive]]:
    """`count` keep-alive connections, each having done one request; all closed on exit."""
    conns: list[KeepAlive] = []
    try:
        for _ in range(count):
            ka = KeepAlive(netns, host, port)
            conns.append(ka)
            reply = ka.get()
            if not reply.ok:
                raise ConnectionError(f"keep-alive connection #{len(conns)} failed: {reply.error}")
        yield conns
    finally:
        for ka in conns:
            ka.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lb.testbed.client",
        description="GET a URL N times, each on a fresh connection; print who answered.",
    )
    ap.add_argument("host")
    ap.add_argument("-p", "--port", type=int, default=80)
    ap.add_argument("-n", "--count", type=int, default=10)
    ap.add_argument("--netns", help="network namespace to create the sockets in")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    ap.add_argument("--seconds", type=float, help="keep sending for S seconds (at most --count requests)")
    ap.add_argument("--interval", type=float, default=0.05, help="with --seconds: at most one request per I s")
    ap.add_argument("--jsonl", action="store_true", help="with --seconds: one JSON object per request")
    args = ap.parse_args(argv)
    if args.seconds is not None:
        return _paced_main(args)
    start = time.monotonic()
    replies = fresh_gets(args.netns, args.host, args.port, args.count, timeout=args.timeout)
    for i, r in enumerate(replies, 1):
        print(f"{i:4d}  {r.server if r.ok else 'ERROR ' + str(r.error or r.status)}")
    print(f"{tally(replies)} in {time.monotonic() - start:.2f}s")
    return 0 if all(r.ok for r in replies) else 1


def _paced_main(args: argparse.Namespace) -> int:
    import json

    counts: collections.Counter[str] = collections.Counter()
    for wall, dt, r in paced_gets(args.netns, args.host, args.port, args.seconds, args.interval,
                                  min(args.count, MAX_REQUESTS), timeout=args.timeout):
        counts[r.server if r.ok and r.server is not None else "<error>"] += 1
        if args.jsonl:
            print(json.dumps({"t": round(wall, 6), "dt": round(dt, 6), "server": r.server if r.ok else None,
                              "error": None if r.ok else (r.error or f"status {r.status}")}), flush=True)
    if not args.jsonl:
        print(dict(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
