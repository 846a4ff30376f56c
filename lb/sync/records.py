"""Between the engine's connection records (struct lb_conn_info, lb_api.h) and sync records.

The master side: which live entries the kernel's sync would send and how it would describe them
(ip_vs_sync_conn, ip_vs_sync_conn_needed); the backup side: the record lbd's restore path
(lb_conn_restore) installs for a received one. The forwarding method and fwmark of an entry are
not in its record: they come from the director's model of its services (`Lookup`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lb import consts as C
from lb.sync.codec import (
    F_DROUTE,
    F_INACTIVE,
    F_MASQ,
    F_TEMPLATE,
    F_TUNNEL,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SyncConn,
)

FWD_FLAGS = {"masq": F_MASQ, "tunnel": F_TUNNEL, "route": F_DROUTE}
FWD_BY_FLAG = {v: k for k, v in FWD_FLAGS.items()}

# TCP states the kernel syncs (ip_vs_sync_conn_needed): the others are not sent at all.
TCP_SYNCED_STATES = frozenset({C.LB_S_ESTABLISHED, C.LB_S_FIN_WAIT, C.LB_S_CLOSE, C.LB_S_CLOSE_WAIT,
                               C.LB_S_TIME_WAIT})
CTPL_S_ASSURED = 1
TEMPLATE_DEFAULT_TIMEOUT_S = 3 * 60  # ip_vs_proc_conn: a template received without a timeout

# Service lookup for an entry: (proto, vaddr, vport, daddr, dport) -> (fwd name, fwmark) or None.
Lookup = Callable[[int, str, int, str, int], "tuple[str, int] | None"]


@dataclass(frozen=True)
class Entry:
    """One engine record, decoded (struct lb_conn_info)."""

    proto: int
    state: int
    flags: int
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    laddr: str
    expires_in_ms: int
    slot: int = 0  # the entry's table slot (the key of change dumps)
    lport: int = 0  # FULLNAT's local port (the sync extension carries it)

    @property
    def key(self) -> tuple[int, str, int, str, int, bool]:
        return (self.proto, self.caddr, self.cport, self.vaddr, self.vport, bool(self.flags & C.LB_CONN_F_TEMPLATE))


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def _infos(blob: bytes) -> Iterator[Any]:
    """The struct lb_conn_info records of a dump, as cffi views."""
    from lb._ffi import ffi

    size = int(ffi.sizeof("struct lb_conn_info"))
    n = len(blob) // size
    if not n:
        return
    arr = ffi.from_buffer("struct lb_conn_info[]", blob[: n * size])
    for i in range(n):
        yield arr[i]


def _is_gone(c: Any) -> bool:
    """A change record of a gone slot: protocol 0 and no (fwmark) template."""
    return not c.proto and not c.flags & C.LB_CONN_F_TEMPLATE


def entries(blob: bytes) -> Iterator[Entry]:
    """The records of a dump (dump_connections_raw / a chunk of it), gone slots left out."""
    for c in _infos(blob):
        if not _is_gone(c):
            yield Entry(c.proto, c.state, c.flags, _ip(c.caddr), c.cport, _ip(c.vaddr), c.vport, _ip(c.daddr),
                        c.dport, _ip(c.laddr), int(c.expires_in_ms), int(c.slot), int(c.lport))


def gone_slots(blob: bytes) -> Iterator[int]:
    """The slots a change dump reports as gone (records with proto 0 that are no template)."""
    for c in _infos(blob):
        if _is_gone(c):
            yield int(c.slot)


def not_sendable(entry: Entry) -> str:
    """Why the kernel protocol cannot carry this entry ("" when it can): FULLNAT's local address and
    SYN-proxy's/PROXY's sequence translation are not in it (issue 18 item 3)."""
    if entry.laddr != "0.0.0.0":
        return "fullnat"
    if entry.flags & (C.LB_CONN_F_SYNPROXY | C.LB_CONN_F_PROXY):
        return "synproxy"
    return ""


def wanted(entry: Entry) -> bool:
    """The kernel's choice of what to sync at all: templates and UDP always, TCP only in the states
    of ip_vs_sync_conn_needed (not SYN_RECV, SYN_SENT, LAST_ACK, ...)."""
    if entry.flags & C.LB_CONN_F_TEMPLATE or entry.proto != IPPROTO_TCP:
        return True
    return entry.state in TCP_SYNCED_STATES


def to_sync(entry: Entry, lookup: Lookup) -> SyncConn | None:
    """The sync record of an entry, None when its service or destination is unknown (deleted since)."""
    found = lookup(entry.proto, entry.vaddr, entry.vport, entry.daddr, entry.dport)
    if found is None:
        return None
    fwd, fwmark = found
    if fwd not in FWD_FLAGS:
        return None
    template = bool(entry.flags & C.LB_CONN_F_TEMPLATE)
    flags = FWD_FLAGS[fwd]
    if template:
        flags |= F_TEMPLATE
        state = CTPL_S_ASSURED if entry.flags & C.LB_CONN_F_ASSURED else 0
    elif entry.proto == IPPROTO_UDP:
        state = 0  # IP_VS_UDP_S_NORMAL
    else:
        state = entry.state
        if state != C.LB_S_ESTABLISHED:
            flags |= F_INACTIVE  # the kernel's connections are inactive until established
    timeout_s = max(1, -(-entry.expires_in_ms // 1000))
    return SyncConn(protocol=entry.proto, flags=flags, state=state, caddr=entry.caddr, cport=entry.cport,
                    vaddr=entry.vaddr, vport=entry.vport, daddr=entry.daddr, dport=entry.dport,
                    fwmark=fwmark, timeout_s=timeout_s)


def to_engine(conn: SyncConn, default_timeout_s: Callable[[int, int], int]) -> bytes:
    """The struct lb_conn_info record lb_conn_restore installs for a received connection.
    `default_timeout_s(proto, lb_state)`: the state's own timeout, for a record without one."""
    from lb._ffi import ffi

    ci = ffi.new("struct lb_conn_info *")
    ci.proto = conn.protocol
    ci.caddr = int(ipaddress.IPv4Address(conn.caddr))
    ci.cport = conn.cport
    ci.vaddr = int(ipaddress.IPv4Address(conn.vaddr))
    ci.vport = conn.vport
    ci.daddr = int(ipaddress.IPv4Address(conn.daddr))
    ci.dport = conn.dport
    # LB_CONN_F_UPDATE: an entry the backup has already takes the master's state and expiry (the
    # kernel's ip_vs_proc_conn updates an existing connection the same way).
    if conn.template:
        ci.flags = (C.LB_CONN_F_TEMPLATE | C.LB_CONN_F_UPDATE
                    | (C.LB_CONN_F_ASSURED if conn.state == CTPL_S_ASSURED else 0))
        ci.state = C.LB_S_NONE
        timeout = conn.timeout_s or TEMPLATE_DEFAULT_TIMEOUT_S
    else:
        ci.flags = C.LB_CONN_F_UPDATE
        ci.state = C.LB_S_UDP if conn.protocol == IPPROTO_UDP else conn.state
        timeout = conn.timeout_s or default_timeout_s(conn.protocol, int(ci.state))
    ci.expires_in_ms = timeout * 1000
    return bytes(ffi.buffer(ci))
