"""A tiny HTTP/1.1 server that says who it is: the real server of the test bed.

    python -m lb.testbed.httpd --name rs1 [--port 80] [--bind 0.0.0.0]

- Every GET answers 200 with body "<name>\\n" and header `X-Server: <name>`;
  keep-alive (HTTP/1.1) is supported, so one connection can carry many requests.
- `GET /peer` answers "<name>\\n<peer address> <peer port>\\n": the client as this
  server sees it (for FULLNAT: the director's local address, not the client).
- `GET /hold?seconds=S` answers "<name>\\n" at once and then keeps the
  connection open, sending one "." per second for S seconds (S <= 600), then
  closes: a long-lived connection a test can watch.
- Binds 0.0.0.0 by default, so it also answers requests addressed to a VIP that
  sits on `lo` (the DR / TUN real-server set-up).
- Idle keep-alive connections are closed after 300 s; SIGTERM/SIGINT exit 0.
- Start-up does no name resolution (see `_Server.server_bind`): the socket listens
  as soon as the interpreter runs, whatever /etc/hosts and the resolver say.
"""

from __future__ import annotations

import argparse
import signal
import socket
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOLD_MAX_S = 600  # upper bound for /hold?seconds=
IDLE_TIMEOUT_S = 300  # idle keep-alive connections are closed after this


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self) -> None:
        """Bind, without the reverse lookup that http.server.HTTPServer adds.

        HTTPServer.server_bind sets `server_name = socket.getfqdn(host)` after binding and before
        listening; for 0.0.0.0 that resolves this machine's hostname. Where /etc/hosts does not
        name the host (a fresh Debian root), the query goes to the resolver of /etc/resolv.conf:
        from a test namespace a packet towards an address outside our namespaces, unanswered,
        so the socket only listened after the resolver's timeouts (2 x 5 s on Debian) and real
        servers answered SYNs with RSTs meanwhile. Nothing here uses server_name.
        """
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


def make_handler(name: str, verbose: bool) -> type[BaseHTTPRequestHandler]:
    body = f"{name}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lb-testbed-httpd"
        sys_version = ""
        timeout = IDLE_TIMEOUT_S

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            url = urlsplit(self.path)
            if url.path == "/hold":
                self._hold(url.query)
                return
            out = body
            if url.path == "/peer":
                out = body + f"{self.client_address[0]} {self.client_address[1]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(out)))
            self.send_header("X-Server", name)
            self.end_headers()
            self.wfile.write(out)

        def _hold(self, query: str) -> None:
            try:
                seconds = int(parse_qs(query).get("seconds", ["10"])[0])
                if not 0 <= seconds <= HOLD_MAX_S:
                    raise ValueError
            except ValueError:
                self.send_error(400, f"seconds must be an integer in 0..{HOLD_MAX_S}")
                return
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("X-Server", name)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            deadline = time.monotonic() + seconds
            for i in range(seconds):
                # Sleep to the i+1-th second mark so the total stays bounded by `seconds`.
                time.sleep(max(0.0, deadline - seconds + i + 1 - time.monotonic()))
                self.wfile.write(b".")
                self.wfile.flush()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            if verbose:
                sys.stderr.write(f"{name} {self.client_address[0]}:{self.client_address[1]} {format % args}\n")

    return Handler


def serve(name: str, port: int = 80, bind: str = "0.0.0.0", verbose: bool = False) -> None:
    server = _Server((bind, port), make_handler(name, verbose))

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{name}: listening on {bind}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lb.testbed.httpd", description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="identity returned in every response body")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--bind", default="0.0.0.0", help="address to bind (default 0.0.0.0: answers the VIP too)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each request to stderr")
    args = ap.parse_args(argv)
    serve(args.name, args.port, args.bind, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
