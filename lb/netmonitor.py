"""Watching the kernel's tables: NetlinkMonitor calls back when links, addresses, routes, policy
rules or neighbours change, so lbd re-resolves its destinations' forwarding state (lb.netlink).

pyroute2's threadless IPRSocket, bound to the multicast groups, read with loop.add_reader():
works on any asyncio loop, uvloop included (pyroute2's AsyncIPRoute does not run on uvloop).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRSocket
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV4_RULE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)

log = logging.getLogger("lb.netlink")

# Monitor: event kinds, and the groups they come from. Rule changes count as "route": they
# change which route (and so which source address) a destination gets.
MONITOR_GROUPS = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_RULE
EVENT_KINDS: dict[int, str] = {
    RTM_NEWLINK: "link", RTM_DELLINK: "link",
    RTM_NEWADDR: "addr", RTM_DELADDR: "addr",
    RTM_NEWROUTE: "route", RTM_DELROUTE: "route",
    RTM_NEWRULE: "route", RTM_DELRULE: "route",
    RTM_NEWNEIGH: "neigh", RTM_DELNEIGH: "neigh",
}
# Reported when the kernel dropped notifications (ENOBUFS): anything may have changed.
EVENT_OVERRUN = "overrun"
MONITOR_RCVBUF = 4 << 20  # bytes; a route flush of a full table is a burst of notifications
_NLMSGHDR = struct.Struct("=IH")  # nlmsg_len, nlmsg_type: host byte order
MONITOR_MAX_READS = 256  # datagrams per readiness callback, so one burst cannot starve the loop


# --------------------------------------------------------------------------- monitor


class NetlinkMonitor:
    """Calls `callback(kind)` on link/addr/route/neigh changes; kind is one of
    "link", "addr", "route" (routes and policy rules), "neigh", or "overrun" (the kernel dropped
    notifications because we read too slowly: assume everything changed).

    Kinds are coalesced per read burst: a `ip route flush` of 1000 routes is one "route" call,
    not a thousand. Usage from asyncio: `mon.start()` (registers a reader on the running loop),
    `mon.stop()`. Without a loop: `select()` on `fileno()` and call `read_events()`.
    """

    def __init__(
        self,
        callback: Callable[[str], None],
        *,
        netns: str | None = None,
        groups: int = MONITOR_GROUPS,
    ) -> None:
        self.callback = callback
        self.netns = netns
        self.groups = groups
        self._sock: IPRSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        if self._sock is not None:
            return
        sock = IPRSocket(netns=self.netns, flags=0, groups=self.groups, rcvbuf=MONITOR_RCVBUF)
        try:
            sock.bind(groups=self.groups)
            raw = sock.socket
            raw.setblocking(False)
            _grow_rcvbuf(raw)
        except Exception:
            sock.close()
            raise
        self._sock = sock
        log.debug("netlink monitor bound to groups 0x%x (netns %s)", self.groups, self.netns or "current")

    def fileno(self) -> int:
        if self._sock is None:
            raise RuntimeError("monitor not open")
        return int(self._sock.socket.fileno())

    def read_events(self) -> list[str]:
        """Drain pending notifications (non-blocking). Kinds in order of first appearance."""
        if self._sock is None:
            raise RuntimeError("monitor not open")
        kinds: list[str] = []
        raw = self._sock.socket
        for _ in range(MONITOR_MAX_READS):
            try:
                data = raw.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("netlink monitor overrun: notifications were lost")
                    _add(kinds, EVENT_OVERRUN)
                    continue
                raise
            if not data:
                break
            for kind in _kinds(data):
                _add(kinds, kind)
        return kinds

    def _on_readable(self) -> None:
        try:
            kinds = self.read_events()
        except OSError:
            log.exception("netlink monitor read failed")
            return
        for kind in kinds:
            try:
                self.callback(kind)
            except Exception:  # a faulty callback must not kill the reader
                log.exception("netlink monitor callback failed for %r", kind)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Open the socket and watch it from `loop` (default: the running loop)."""
        self.open()
        self._loop = loop or asyncio.get_running_loop()
        self._loop.add_reader(self.fileno(), self._on_readable)

    def stop(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fileno())
        self._loop = None
        self._sock.close()
        self._sock = None

    def __enter__(self) -> NetlinkMonitor:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _grow_rcvbuf(raw: Any) -> None:
    try:
        raw.setsockopt(socket.SOL_SOCKET, 33, MONITOR_RCVBUF)  # SO_RCVBUFFORCE (root): beyond rmem_max
    except OSError:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MONITOR_RCVBUF)


def _add(kinds: list[str], kind: str) -> None:
    if kind not in kinds:
        kinds.append(kind)


def _kinds(data: bytes) -> list[str]:
    """Event kinds of the netlink messages in one datagram (walks nlmsghdr only; cheap, total)."""
    kinds: list[str] = []
    offset = 0
    while offset + 16 <= len(data):
        length, mtype = _NLMSGHDR.unpack_from(data, offset)
        if length < 16:
            break
        kind = EVENT_KINDS.get(mtype)
        if kind:
            _add(kinds, kind)
        offset += (length + 3) & ~3
    return kinds
