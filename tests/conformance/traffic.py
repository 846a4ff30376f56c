"""Real servers and client actions, all inside the runner's own process (no helper processes:
every Python start costs seconds in the TCG guest).

Sockets are created inside the namespaces of our topologies (lb.testbed.topology.enter_netns,
per thread) and served by one selector thread:
- a TCP listener per (real server, VIP) sends the server's name and a newline as soon as it
  accepts, then closes its side when the client has closed its own (client FIN first, always);
- a UDP socket per (real server, VIP) answers every datagram with the server's name.
A real server that must refuse (Scenario.refuse) simply has no TCP listener on that VIP: its
kernel answers the SYN with a RST.

Client sockets bind to an explicit (client address, source port), so both systems see the very
same flows. Every call is bounded by CONNECT_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field

from lb.testbed.topology import enter_netns

CONNECT_TIMEOUT_S = 8.0  # one connection or datagram under emulation, generously
NAME_MAX = 64


class RealServers:
    """Listeners and UDP responders in real-server namespaces, served by one thread."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", ""))
        self._owned: set[socket.socket] = set()  # touched by the serving thread only
        self._pending: list[tuple[socket.socket, tuple[str, str]]] = []
        self._thread = threading.Thread(target=self._loop, name="real-servers", daemon=True)
        self._thread.start()

    def serve(self, netns: str, name: str, addr: str, port: int, tcp: bool = True) -> None:
        """Answer on addr:port inside `netns` as `name`: UDP always, TCP if `tcp`."""
        with enter_netns(netns):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM) if tcp else None
        udp.bind((addr, port))
        udp.setblocking(False)
        socks = [(udp, ("udp", name))]
        if lst is not None:
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind((addr, port))
            lst.listen(256)
            lst.setblocking(False)
            socks.append((lst, ("listen", name)))
        with self._lock:  # registered by the serving thread (selectors are not thread-safe)
            self._pending.extend(socks)
        self._wake_w.send(b"x")

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.5):
                kind, name = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if kind == "wake":
                        sock.recv(4096)
                        with self._lock:
                            pending, self._pending = self._pending, []
                        for s, data in pending:
                            self._owned.add(s)
                            self._sel.register(s, selectors.EVENT_READ, data)
                    elif kind == "udp":
                        _, peer = sock.recvfrom(2048)
                        sock.sendto(f"{name}\n".encode(), peer)
                    elif kind == "listen":
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        conn.send(f"{name}\n".encode())
                        self._owned.add(conn)
                        self._sel.register(conn, selectors.EVENT_READ, ("conn", name))
                    elif kind == "conn" and not sock.recv(4096):  # the client closed: close our side
                        self._drop(sock)
                except BlockingIOError:
                    pass
                except OSError:
                    if kind == "conn":
                        self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        self._owned.discard(sock)
        sock.close()

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(timeout=5.0)
        for s in list(self._owned) + [s for s, _ in self._pending]:
            s.close()
        self._owned.clear()
        self._wake_r.close()
        self._wake_w.close()


def _client_socket(netns: str, kind: int, addr: str, port: int) -> socket.socket:
    with enter_netns(netns):
        s = socket.socket(socket.AF_INET, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.settimeout(CONNECT_TIMEOUT_S)
    except BaseException:
        s.close()
        raise
    return s


def _read_name(sock: socket.socket) -> str:
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(NAME_MAX)
        if not chunk:
            raise ConnectionError(f"closed before a name ({buf!r})")
        buf += chunk
        if len(buf) > NAME_MAX:
            raise ConnectionError(f"no name in {buf!r}")
    return buf.split(b"\n", 1)[0].decode(errors="replace")


@dataclass
class Flow:
    """One client flow: where from, and what became of it."""

    client: str  # "c1".."c4"
    addr: str
    port: int
    outcome: str = ""  # a server name, "refused" (TCP; the runner adds who), "refused:none", "timeout", "error:<why>"
    sock: socket.socket | None = field(default=None, repr=False)


def open_tcp(netns: str, flow: Flow, vip: str, port: int) -> None:
    """Connect and read the server's name; the socket stays open in flow.sock (or outcome says why not)."""
    s = _client_socket(netns, socket.SOCK_STREAM, flow.addr, flow.port)
    try:
        s.connect((vip, port))
        flow.outcome = _read_name(s)
        flow.sock = s
    except ConnectionRefusedError:
        flow.outcome = "refused"
        s.close()
    except TimeoutError:
        flow.outcome = "timeout"
        s.close()
    except OSError as exc:
        flow.outcome = f"error:{type(exc).__name__}: {exc}"
        s.close()


def close_tcp(flow: Flow) -> None:
    """Client FIN first, then wait for the server's FIN (so our last ACK is on its way)."""
    s, flow.sock = flow.sock, None
    if s is None:
        return
    try:
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    except OSError:
        pass
    finally:
        s.close()


def udp_exchange(netns: str, flow: Flow, vip: str, port: int) -> None:
    """One datagram and its answer. The socket is connected, so the ICMP port unreachable a director
    sends when it has no real server for the datagram ends the wait at once (ECONNREFUSED) rather
    than after CONNECT_TIMEOUT_S."""
    s = _client_socket(netns, socket.SOCK_DGRAM, flow.addr, flow.port)
    try:
        s.connect((vip, port))
        s.send(b"?\n")
        data = s.recv(NAME_MAX)
        flow.outcome = data.split(b"\n", 1)[0].decode(errors="replace")
    except ConnectionRefusedError:
        flow.outcome = "refused:none"  # ICMP port unreachable: the director has no real server for it
    except TimeoutError:
        flow.outcome = "timeout"
    except OSError as exc:
        flow.outcome = f"error:{type(exc).__name__}: {exc}"
    finally:
        s.close()
