"""The structs of linux/ip_vs.h (the IPVS sockopt ABI), as layouts with their C offsets and sizes.

Each layout lists its fields in C order with a struct-module format of standard size; offsets
follow the C rules on x86-64 (every field aligned to its own size, the struct's size rounded up to
its largest member's alignment), so `size` and `offsets` are what `sizeof`/`offsetof` print for
the header - tests/unit/test_ipvsabi_structs.py compiles a probe against /usr/include/linux/ip_vs.h
and compares. Addresses and ports are network order in the ABI: they are kept as raw bytes here.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# linux/ip_vs.h
IP_VS_BASE_CTL = 64 + 1024 + 64
SO_SET = {name: IP_VS_BASE_CTL + n for n, name in enumerate((
    "NONE", "INSERT", "ADD", "EDIT", "DEL", "FLUSH", "LIST", "ADDDEST", "DELDEST", "EDITDEST",
    "TIMEOUT", "STARTDAEMON", "STOPDAEMON", "RESTORE", "SAVE", "ZERO"))}
SO_GET = {name: IP_VS_BASE_CTL + n for n, name in enumerate((
    "VERSION", "INFO", "SERVICES", "SERVICE", "DESTS", "DEST", "TIMEOUT", "DAEMON"))}
IP_VS_SO_SET_MAX = SO_SET["ZERO"]
IP_VS_SO_GET_MAX = SO_GET["DAEMON"]
IP_VS_VERSION_CODE = 0x010201
IP_VS_SCHEDNAME_MAXLEN = 16
IP_VS_IFNAME_MAXLEN = 16

IP_VS_SVC_F_PERSISTENT = 0x0001
IP_VS_SVC_F_HASHED = 0x0002
IP_VS_SVC_F_ONEPACKET = 0x0004
IP_VS_SVC_F_SCHED1 = 0x0008  # SCHED2 = 0x10, SCHED3 = 0x20: ipvsadm's flag-1..3
SCHED_FLAG_SHIFT = 3

IP_VS_CONN_F_FWD_MASK = 0x0007
IP_VS_CONN_F_MASQ = 0x0000
IP_VS_CONN_F_LOCALNODE = 0x0001
IP_VS_CONN_F_TUNNEL = 0x0002
IP_VS_CONN_F_DROUTE = 0x0003
IP_VS_CONN_F_NOOUTPUT = 0x0080
IP_VS_CONN_F_INACTIVE = 0x0100

_ALIGN = {"H": 2, "h": 2, "I": 4, "i": 4, "Q": 8, "q": 8}
# Network-order fields (__be32, __be16) are kept as raw bytes but aligned as the integers they are;
# char arrays ("16s") are aligned to 1.
BE32 = "4s"
BE16 = "2s"
_BE_ALIGN = {BE32: 4, BE16: 2}


def _field_align(fmt: str, network_order: bool) -> int:
    if network_order:
        return _BE_ALIGN[fmt]
    return _ALIGN.get(fmt[-1], 1)


@dataclass(frozen=True)
class Layout:
    """One C struct: `fields` (name, format) in order; nested structs are flattened as 'outer.inner'
    with the nested struct's alignment given in `nested_align` for its first field."""

    name: str
    fields: Sequence[tuple[str, str]]
    nested_align: Mapping[str, int] = field(default_factory=dict)
    align_at_least: int = 1  # a flexible array member's alignment (ip_vs_get_dests' entrytable)

    def __post_init__(self) -> None:
        offsets: dict[str, int] = {}
        fmt = "="
        pos = 0
        align = self.align_at_least
        for name, f in self.fields:
            a = max(_field_align(f, name in _NETWORK_ORDER), self.nested_align.get(name, 1))
            align = max(align, a)
            pad = -pos % a
            if pad:
                fmt += f"{pad}x"
                pos += pad
            offsets[name] = pos
            fmt += f
            pos += struct.calcsize("=" + f)
        tail = -pos % align
        if tail:
            fmt += f"{tail}x"
        object.__setattr__(self, "_offsets", offsets)
        object.__setattr__(self, "_struct", struct.Struct(fmt))

    @property
    def size(self) -> int:
        return int(self._struct.size)  # type: ignore[attr-defined]

    @property
    def offsets(self) -> dict[str, int]:
        return dict(self._offsets)  # type: ignore[attr-defined]

    def unpack(self, data: bytes, offset: int = 0) -> dict[str, Any]:
        values = self._struct.unpack_from(data, offset)  # type: ignore[attr-defined]
        return dict(zip((name for name, _ in self.fields), values, strict=True))

    def pack(self, **values: Any) -> bytes:
        defaults = {"s": b"", "H": 0, "h": 0, "I": 0, "i": 0, "Q": 0, "q": 0}
        args = [values.get(name, defaults[f[-1]]) for name, f in self.fields]
        return bytes(self._struct.pack(*args))  # type: ignore[attr-defined]


_NETWORK_ORDER = frozenset({"addr", "port", "netmask"})  # the __be32/__be16 fields of every layout
_SVC_KEY = [("protocol", "H"), ("addr", BE32), ("port", BE16), ("fwmark", "I")]
_SVC_OPTS = [("sched_name", f"{IP_VS_SCHEDNAME_MAXLEN}s"), ("flags", "I"), ("timeout", "I"), ("netmask", BE32)]
_STATS = [("conns", "I"), ("inpkts", "I"), ("outpkts", "I"), ("inbytes", "Q"), ("outbytes", "Q"),
          ("cps", "I"), ("inpps", "I"), ("outpps", "I"), ("inbps", "I"), ("outbps", "I")]
_STATS_ALIGN = 8  # struct ip_vs_stats_user holds __u64
STAT_NAMES = tuple(name for name, _ in _STATS)


def _stats(prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}.{name}", f) for name, f in _STATS]


SERVICE_USER = Layout("ip_vs_service_user", _SVC_KEY + _SVC_OPTS)
DEST_USER = Layout("ip_vs_dest_user", [("addr", BE32), ("port", BE16), ("conn_flags", "I"), ("weight", "i"),
                                       ("u_threshold", "I"), ("l_threshold", "I")])
STATS_USER = Layout("ip_vs_stats_user", _STATS)
GETINFO = Layout("ip_vs_getinfo", [("version", "I"), ("size", "I"), ("num_services", "I")])
SERVICE_ENTRY = Layout("ip_vs_service_entry", _SVC_KEY + _SVC_OPTS + [("num_dests", "I")] + _stats("stats"),
                       nested_align={"stats.conns": _STATS_ALIGN})
DEST_ENTRY = Layout("ip_vs_dest_entry", [("addr", BE32), ("port", BE16), ("conn_flags", "I"), ("weight", "i"),
                                         ("u_threshold", "I"), ("l_threshold", "I"), ("activeconns", "I"),
                                         ("inactconns", "I"), ("persistconns", "I")] + _stats("stats"),
                    nested_align={"stats.conns": _STATS_ALIGN})
# The headers of the two variable-length answers: their entry tables are 8-aligned flexible arrays.
GET_DESTS = Layout("ip_vs_get_dests", _SVC_KEY + [("num_dests", "I")], align_at_least=_STATS_ALIGN)
GET_SERVICES = Layout("ip_vs_get_services", [("num_services", "I")], align_at_least=_STATS_ALIGN)
TIMEOUT_USER = Layout("ip_vs_timeout_user", [("tcp_timeout", "i"), ("tcp_fin_timeout", "i"), ("udp_timeout", "i")])
DAEMON_USER = Layout("ip_vs_daemon_user", [("state", "i"), ("mcast_ifn", f"{IP_VS_IFNAME_MAXLEN}s"), ("syncid", "i")])

LAYOUTS = (SERVICE_USER, DEST_USER, STATS_USER, GETINFO, SERVICE_ENTRY, DEST_ENTRY, GET_DESTS, GET_SERVICES,
           TIMEOUT_USER, DAEMON_USER)

# do_ip_vs_set_ctl's set_arglen: a set command's exact length (commands not listed: 0).
SET_ARGLEN = {
    SO_SET["ADD"]: SERVICE_USER.size, SO_SET["EDIT"]: SERVICE_USER.size, SO_SET["DEL"]: SERVICE_USER.size,
    SO_SET["FLUSH"]: 0,
    SO_SET["ADDDEST"]: SERVICE_USER.size + DEST_USER.size, SO_SET["DELDEST"]: SERVICE_USER.size + DEST_USER.size,
    SO_SET["EDITDEST"]: SERVICE_USER.size + DEST_USER.size,
    SO_SET["TIMEOUT"]: TIMEOUT_USER.size,
    SO_SET["STARTDAEMON"]: DAEMON_USER.size, SO_SET["STOPDAEMON"]: DAEMON_USER.size,
    SO_SET["ZERO"]: SERVICE_USER.size,
}
# do_ip_vs_get_ctl's get_arglen: the least a get command's buffer may hold (and what it reads).
GET_ARGLEN = {
    SO_GET["VERSION"]: 64, SO_GET["INFO"]: GETINFO.size, SO_GET["SERVICES"]: GET_SERVICES.size,
    SO_GET["SERVICE"]: SERVICE_ENTRY.size, SO_GET["DESTS"]: GET_DESTS.size, SO_GET["TIMEOUT"]: TIMEOUT_USER.size,
    SO_GET["DAEMON"]: 2 * DAEMON_USER.size,
}


def cstring(raw: bytes) -> str:
    """A fixed-size char array up to its first NUL (latin-1: never fails on bytes)."""
    return raw.split(b"\0", 1)[0].decode("latin-1")
