"""The sync daemons' multicast sockets, one way for the kernel-format messages (manager.py) and
the extension (ext_daemon.py): the master's sending socket, the backup's receiving socket and
the backup's read loop in the event loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from lb.engine import EngineError

log = logging.getLogger("lbd")

RECV_BUF = 65535
RECV_BUDGET = 64           # datagrams read per wake-up at most: the loop has other work
IP_MTU_DISCOVER_DONT = 0   # IP_PMTUDISC_DONT: datagrams may be fragmented
IP_MTU_DISCOVER = 10


class Counting(Protocol):
    def add(self, name: str, n: int = 1) -> None: ...


def mreqn(group: str, ifindex: int) -> bytes:
    """struct ip_mreqn: the group, any local address, the interface by index."""
    return socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("=i", ifindex)


def _error(exc: OSError, what: str) -> EngineError:
    return EngineError(errno.errorcode.get(exc.errno or 0, "EIO"), f"start_daemon: {what}: {exc.strerror}")


def open_sender(ifindex: int, ttl: int, group: str, port: int, what: str) -> socket.socket:
    """A non-blocking UDP socket connected to group:port, sending on interface ifindex with the
    given TTL, its own datagrams not looped back. EngineError (start_daemon: `what`: ...) on failure."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn("0.0.0.0", ifindex))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_MTU_DISCOVER_DONT)
        sock.setblocking(False)
        sock.connect((group, port))
    except OSError as exc:
        sock.close()
        raise _error(exc, what) from exc
    return sock


def open_receiver(ifname: str, ifindex: int, group: str, port: int, what: str) -> socket.socket:
    """A non-blocking UDP socket bound to group:port on interface ifname (index ifindex), a member
    of the group there. EngineError (start_daemon: `what`: ...) on failure."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        sock.bind((group, port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn(group, ifindex))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise _error(exc, what) from exc
    return sock


class DatagramReader:
    """A receiving socket read in the event loop: each datagram goes to `handle`. A receive error
    is counted as {prefix}recv_errors, a datagram `handle` fails on as {prefix}internal_errors
    (logged with `what`); neither stops the reader."""

    def __init__(self, sock: socket.socket, handle: Callable[[bytes], object], counters: Counting,
                 prefix: str, what: str) -> None:
        self.sock = sock
        self._handle = handle
        self._counters = counters
        self._prefix = prefix
        self._what = what
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(RECV_BUDGET):
            try:
                data = self.sock.recv(RECV_BUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._counters.add(f"{self._prefix}recv_errors")
                log.debug("sync backup: recv of %s failed: %s", self._what, exc)
                return
            try:
                self._handle(data)
            except Exception:
                log.exception("sync backup: %s could not be processed", self._what)
                self._counters.add(f"{self._prefix}internal_errors")

    def stop(self) -> None:
        """Stop reading and close the socket."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()
