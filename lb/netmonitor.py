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
        on_neighbour: Callable[[str, bytes | None], None] | None = None,
    ) -> None:
        self.callback = callback
        # With on_neighbour, IPv4 neighbour messages are not a "neigh" kind but one call each:
        # (address, its link-layer address while the entry is valid, else None); issue 15.
        self.on_neighbour = on_neighbour
        self._neighbours: dict[str, bytes | None] = {}
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
            for kind in _kinds(data, self._neighbours if self.on_neighbour is not None else None):
                _add(kinds, kind)
        return kinds

    def _on_readable(self) -> None:
        try:
            kinds = self.read_events()
        except OSError:
            log.exception("netlink monitor read failed")
            return
        neighbours, self._neighbours = self._neighbours, {}
        if self.on_neighbour is not None:
            for ip, mac in neighbours.items():  # the last message per address of this burst
                try:
                    self.on_neighbour(ip, mac)
                except Exception:
                    log.exception("netlink monitor neighbour callback failed for %s", ip)
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


def _kinds(data: bytes, neighbours: dict[str, bytes | None] | None = None) -> list[str]:
    """Event kinds of the netlink messages in one datagram (walks nlmsghdr only; cheap, total).
    With `neighbours`, IPv4 neighbour messages go there (address -> MAC or None) instead."""
    kinds: list[str] = []
    offset = 0
    while offset + 16 <= len(data):
        length, mtype = _NLMSGHDR.unpack_from(data, offset)
        if length < 16:
            break
        kind = EVENT_KINDS.get(mtype)
        if kind == "neigh" and neighbours is not None:
            parsed = _neighbour(data[offset + 16:offset + min(length, len(data) - offset)], mtype)
            if parsed is not None:
                neighbours[parsed[0]] = parsed[1]
            elif mtype in (RTM_NEWNEIGH, RTM_DELNEIGH) and len(data) - offset >= 28 and data[offset + 16] == socket.AF_INET:
                _add(kinds, kind)  # an IPv4 message we could not read: treat it as a general change
        elif kind:
            _add(kinds, kind)
        offset += (length + 3) & ~3
    return kinds


_NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
_RTATTR = struct.Struct("=HH")
NDA_DST, NDA_LLADDR = 1, 2
_NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT (lb.netlink)


def _neighbour(body: bytes, mtype: int) -> tuple[str, bytes | None] | None:
    """(IPv4 address, MAC while valid else None) of one neighbour message body; None if it is not
    an IPv4 neighbour or is malformed (bounds-checked: the kernel's data, but still data)."""
    if len(body) < _NDMSG.size:
        return None
    family, _, _, _ifindex, state, _, _ = _NDMSG.unpack_from(body, 0)
    if family != socket.AF_INET:
        return None
    dst: str | None = None
    lladdr: bytes | None = None
    pos = _NDMSG.size
    while pos + 4 <= len(body):
        alen, atype = _RTATTR.unpack_from(body, pos)
        if alen < 4 or pos + alen > len(body):
            return None
        value = body[pos + 4:pos + alen]
        if atype == NDA_DST and len(value) == 4:
            dst = socket.inet_ntoa(value)
        elif atype == NDA_LLADDR and len(value) == 6:
            lladdr = value
        pos += (alen + 3) & ~3
    if dst is None:
        return None
    valid = mtype == RTM_NEWNEIGH and bool(state & _NUD_VALID)
    return dst, (lladdr if valid else None)
