"""Real servers and client actions, all inside the runner's own process (no helper processes:
every Python start costs seconds in the TCG guest).

Sockets are created inside the namespaces of our topologies (lb.testbed.topology.enter_netns,
per thread) and served by one selector thread:
- a TCP listener per (real server, VIP) sends the server's name and a newline as soon as it
  accepts, then closes its side when the client has closed its own (client FIN first, always);
- a UDP socket per (real server, VIP) answers every datagram with the server's name, on a
  second line the TTL the datagram arrived with (`ttl=N`), on a third what it received
  (`bytes=N sha=<16 hex digits of its SHA-256>`), padded with 'R' to the size received: a
  datagram larger than the path MTU gets an answer as large (fragments both ways).
A real server that must refuse (Scenario.refuse) simply has no TCP listener on that VIP: its
kernel answers the SYN with a RST.

Client sockets bind to an explicit (client address, source port), so both systems see the very
same flows. Every call is bounded by CONNECT_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import hashlib
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field

from lb.testbed.topology import enter_netns

CONNECT_TIMEOUT_S = 8.0  # one connection or datagram under emulation, generously
NAME_MAX = 64
DATAGRAM_MAX = 65535  # the largest UDP datagram a real server receives or a client reads back
IP_RECVTTL = 12  # Linux <linux/in.h>: not in every Python's socket module
IP_RECVERR = 11


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
        udp.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
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
                        # The answer's second line is the TTL the datagram arrived with (IP_RECVTTL):
                        # what the director did to it. Readers of the name take the first line only.
                        question, ancillary, _, peer = sock.recvmsg(DATAGRAM_MAX, socket.CMSG_SPACE(4))
                        ttl = next((int.from_bytes(d[:4], "little") for level, kind_, d in ancillary
                                    if level == socket.IPPROTO_IP and kind_ == socket.IP_TTL), -1)
                        sock.sendto(udp_answer(name, ttl, question), peer)
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


def received(data: bytes) -> str:
    """What a real server says it received: its size and the start of its SHA-256."""
    return f"bytes={len(data)} sha={hashlib.sha256(data).hexdigest()[:16]}"


def udp_answer(name: str, ttl: int, data: bytes) -> bytes:
    """A real server's answer to `data`: name, TTL seen, what it received; as large as `data`."""
    answer = f"{name}\nttl={ttl}\n{received(data)}\n".encode()
    return answer + b"R" * max(0, len(data) - len(answer))


def payload_of(size: int) -> bytes:
    """A client's datagram of `size` bytes (Udp(size=)): a pattern, so that a lost or misplaced
    fragment changes its SHA-256."""
    return bytes((i * 7 + size) & 0xFF for i in range(size))


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
    ttl: int | None = None  # UDP: the TTL the real server saw the datagram with (its answer's second line)
    source: tuple[str, int] | None = None  # UDP: the address and port the answer came from
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


_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data
SO_EE_ORIGIN_ICMP = 2


ERRQUEUE_MAX = 2048  # bytes: more than an ICMP error can quote (576 in all)


def _icmp_error(sock: socket.socket) -> str | None:
    """The ICMP error queued on a socket with IP_RECVERR, as "icmp:TYPE/CODE from ADDR quoting N",
    or None. N: how many bytes of the datagram's payload the error quoted (the error queue hands
    back what the quote holds after the UDP header): 0 when it quoted only the header and 8 bytes,
    the whole payload when it quoted as much as fits in 576 bytes, as the kernel's __icmp_send."""
    try:
        quoted, ancillary, _, _ = sock.recvmsg(ERRQUEUE_MAX, 512, socket.MSG_ERRQUEUE)
    except OSError:
        return None
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_RECVERR and len(data) >= _SOCK_EXTENDED_ERR.size + 8:
            _, origin, icmp_type, code, _, _, _ = _SOCK_EXTENDED_ERR.unpack_from(data)
            offender = socket.inet_ntoa(data[_SOCK_EXTENDED_ERR.size + 4:_SOCK_EXTENDED_ERR.size + 8])
            if origin == SO_EE_ORIGIN_ICMP:
                return f"icmp:{icmp_type}/{code} from {offender} quoting {len(quoted)}"
    return None


def udp_exchange(netns: str, flow: Flow, vip: str, port: int, ttl: int = 0, size: int = 0,
                 any_source: bool = False) -> None:
    """One datagram and its answer. The socket is connected, so the ICMP port unreachable a director
    sends when it has no real server for the datagram ends the wait at once (ECONNREFUSED) rather
    than after CONNECT_TIMEOUT_S. With `ttl`, the datagram leaves with that TTL, flow.ttl gets the
    TTL the real server saw, and an ICMP error about it (time exceeded) is the outcome
    ("icmp:11/0 from ADDR quoting N", read with IP_RECVERR: _icmp_error).

    With `size`, the datagram carries payload_of(size) (the client's kernel fragments it when it
    exceeds the MTU) and the outcome is "<name> whole" when the real server received exactly
    those bytes and its answer (as large) came back whole, else "<name> received <what it got>,
    answer <n> bytes". With `any_source` the socket is not connected: it takes an answer from any
    address, and flow.source is where the answer came from (an answer the director did not
    translate comes from the real server's own address and port)."""
    s = _client_socket(netns, socket.SOCK_DGRAM, flow.addr, flow.port)
    payload = payload_of(size) if size else b"?\n"
    try:
        if ttl:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        if any_source:
            s.sendto(payload, (vip, port))
        else:
            s.connect((vip, port))
            s.send(payload)
        try:
            data, source = s.recvfrom(DATAGRAM_MAX)
        except OSError:
            error = _icmp_error(s) if ttl else None
            if error is None:
                raise
            flow.outcome = error
            return
        flow.source = source
        lines = data.decode(errors="replace").split("\n")
        flow.outcome = lines[0]
        if len(lines) > 1 and lines[1].startswith("ttl="):
            flow.ttl = int(lines[1][4:])
        if size:
            got = lines[2] if len(lines) > 2 else "nothing"
            whole = got == received(payload) and len(data) >= size  # the answer is padded to size
            flow.outcome += " whole" if whole else f" received {got}, answer {len(data)} bytes"
    except ConnectionRefusedError:
        flow.outcome = "refused:none"  # ICMP port unreachable: the director has no real server for it
    except TimeoutError:
        flow.outcome = "timeout"
    except OSError as exc:
        flow.outcome = f"error:{type(exc).__name__}: {exc}"
    finally:
        s.close()
