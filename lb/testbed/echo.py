"""Long-lived echo connections for tests that must prove flows survive (reloads, restarts).

The server greets with "HELLO <name>\\n" and echoes everything back; an EchoStream sends
numbered lines from the client namespace and checks each comes back byte for byte, in a
thread bounded in time. Run a server with `python -m lb.testbed.echo NAME PORT [PORT...]`.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from lb.testbed.topology import Topology, enter_netns


def _serve(conn: socket.socket, name: str) -> None:
    with conn:
        conn.sendall(f"HELLO {name}\n".encode())
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def _listen(port: int, name: str) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=_serve, args=(conn, name), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name, ports = args[0], [int(p) for p in args[1:]]
    for p in ports[1:]:
        threading.Thread(target=_listen, args=(p, name), daemon=True).start()
    _listen(ports[0], name)
    return 0


def connect_in(netns: str, addr: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection opened from inside `netns`."""
    with enter_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect((addr, port))
    except BaseException:
        sock.close()
        raise
    return sock


def read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed after {buf!r}")
        buf += chunk
        if len(buf) > limit:
            raise ConnectionError("line too long")
    return buf


def start_servers(topo: Topology, ports: list[int], ready_timeout_s: float = 15.0) -> list[subprocess.Popen[Any]]:
    """An echo server on every real server; returns once each greets on ports[0]."""
    procs = [rs.popen([sys.executable, "-m", "lb.testbed.echo", rs.name, *map(str, ports)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for rs in topo.reals]
    deadline = time.monotonic() + ready_timeout_s
    try:
        for rs in topo.reals:
            while True:
                try:
                    with contextlib.closing(connect_in(topo.client.netns, rs.addr, ports[0], 2.0)) as s:
                        if read_line(s) == f"HELLO {rs.name}\n".encode():
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
    except BaseException:
        for proc in procs:
            topo.stop_process(proc)
        raise
    return procs


@contextlib.contextmanager
def servers(topo: Topology, ports: list[int]) -> Iterator[list[int]]:
    """start_servers for the length of a `with` block (a module fixture's life); yields the ports."""
    procs = start_servers(topo, ports)
    try:
        yield ports
    finally:
        for proc in procs:
            topo.stop_process(proc)


def bulk_echo(netns: str, vip: str, port: int, nbytes: int, seed: int, *, timeout_s: float) -> tuple[str, str, int]:
    """Send `nbytes` (seeded random) to an echo server through `vip` in 64 KiB writes, with Nagle
    on so the stack builds large (GSO) packets, while reading the echo back; returns (sha256 sent,
    sha256 received, bytes received). A failed read raises."""
    data = random.Random(seed).randbytes(nbytes)
    sock = connect_in(netns, vip, port, timeout=timeout_s)
    received = hashlib.sha256()
    got = 0
    error: list[BaseException] = []

    def reader() -> None:
        nonlocal got
        try:
            read_line(sock)  # greeting
            while got < nbytes:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"closed after {got} bytes")
                received.update(chunk)
                got += len(chunk)
        except BaseException as exc:  # reported below, in the caller's thread
            error.append(exc)

    with contextlib.closing(sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        for off in range(0, nbytes, 65536):
            sock.sendall(data[off:off + 65536])
        t.join(timeout_s)
    if error:
        raise ConnectionError(f"bulk echo through {vip}:{port} failed after {got} of {nbytes} bytes") from error[0]
    return hashlib.sha256(data).hexdigest(), received.hexdigest(), got


class EchoStream:
    """One long-lived connection: numbered lines out, the same lines back, checked byte for byte.
    `tag` names the stream in its lines (and is `n`); it stops by itself after `max_s`."""

    def __init__(self, netns: str, vip: str, port: int, tag: int, *, timeout_s: float, every_s: float,
                 max_s: float, pad: int) -> None:
        self.port, self.n = port, tag
        self.timeout_s, self.every_s, self.max_s, self.pad = timeout_s, every_s, max_s, pad
        self.sock = connect_in(netns, vip, port, timeout=timeout_s)
        greeting = read_line(self.sock).decode()
        assert greeting.startswith("HELLO "), greeting
        self.server = greeting.split()[1]
        self.local_port = self.sock.getsockname()[1]
        self.echoed = 0  # lines sent and received back intact
        self.bytes = 0
        self.error: str | None = None
        self.stop = threading.Event()
        self._shut_by_us = False  # set by close() before it shuts the socket down
        self.thread = threading.Thread(target=self._run, name=f"echo-{tag}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        end = time.monotonic() + self.max_s
        try:
            while not self.stop.is_set() and time.monotonic() < end:
                line = f"{self.n} {self.echoed:09d} {'x' * self.pad}\n".encode()
                self.sock.sendall(line)
                got = b""
                while len(got) < len(line):
                    chunk = self.sock.recv(len(line) - len(got))
                    if not chunk:
                        raise ConnectionError(f"closed by the peer after {self.echoed} lines")
                    got += chunk
                if got != line:
                    raise ValueError(f"line {self.echoed}: echoed {got[:40]!r}..., sent {line[:40]!r}...")
                self.echoed += 1
                self.bytes += len(line)
                self.stop.wait(self.every_s)
        except ValueError as exc:  # wrong bytes came back: always a failure
            self.error = f"{type(exc).__name__}: {exc}"
        except OSError as exc:  # ConnectionResetError, EOF (ConnectionError) and timeouts
            if not self._shut_by_us:
                self.error = f"{type(exc).__name__}: {exc}"
            # else: close() shut the socket down under a pending recv; the EOF or error that
            # follows is ours, not the peer's, and must not be reported as the connection failing.

    def close(self) -> None:
        self.stop.set()
        self._shut_by_us = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=self.timeout_s + 5)
        self.sock.close()


if __name__ == "__main__":
    sys.exit(main())
