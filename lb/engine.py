"""What every packet engine offers the control plane, and the Action it returns.

Two engines implement this: the C fast path (lb.fastpath.CEngine) and the
pure-Python executable specification (lb.pyengine.PyEngine). Both follow
docs/fastpath.md; the differential tests hold them to identical actions.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lb._ffi import lib
from lb.model import ConnInfo, DestSpec, ServiceInfo, ServiceKey, ServiceSpec

SOCKET_MARK_BASE = lib.LB_SOCKET_MARK_BASE
TOA_LEN = lib.LB_TOA_LEN
IPIP_OVERHEAD = lib.LB_IPIP_OVERHEAD


class Verdict(enum.IntEnum):
    ACCEPT = lib.LB_V_ACCEPT
    DROP = lib.LB_V_DROP
    MANGLE = lib.LB_V_MANGLE
    XMIT_L2 = lib.LB_V_XMIT_L2
    ANSWER = lib.LB_V_ANSWER


class Reason(enum.IntEnum):
    FORWARDED = lib.LB_R_FORWARDED
    NOT_IPV4 = lib.LB_R_NOT_IPV4
    MALFORMED = lib.LB_R_MALFORMED
    BAD_CSUM = lib.LB_R_BAD_CSUM
    FRAGMENT = lib.LB_R_FRAGMENT
    NOT_LB_PROTO = lib.LB_R_NOT_LB_PROTO
    NO_SERVICE = lib.LB_R_NO_SERVICE
    NO_CONN = lib.LB_R_NO_CONN
    NO_DEST = lib.LB_R_NO_DEST
    TABLE_FULL = lib.LB_R_TABLE_FULL
    DEST_UNAVAILABLE = lib.LB_R_DEST_UNAVAILABLE
    NO_L2 = lib.LB_R_NO_L2
    FRAG_NEEDED = lib.LB_R_FRAG_NEEDED
    NO_LADDR = lib.LB_R_NO_LADDR
    ICMP = lib.LB_R_ICMP
    TOA_NO_ROOM = lib.LB_R_TOA_NO_ROOM
    TTL_EXCEEDED = lib.LB_R_TTL_EXCEEDED
    SP_COOKIE = lib.LB_R_SP_COOKIE
    SP_BAD_COOKIE = lib.LB_R_SP_BAD_COOKIE
    SP_HELD = lib.LB_R_SP_HELD
    SP_HANDSHAKE = lib.LB_R_SP_HANDSHAKE


class ConnState(enum.IntEnum):
    NONE = lib.LB_S_NONE
    ESTABLISHED = lib.LB_S_ESTABLISHED
    SYN_SENT = lib.LB_S_SYN_SENT
    SYN_RECV = lib.LB_S_SYN_RECV
    FIN_WAIT = lib.LB_S_FIN_WAIT
    TIME_WAIT = lib.LB_S_TIME_WAIT
    CLOSE = lib.LB_S_CLOSE
    CLOSE_WAIT = lib.LB_S_CLOSE_WAIT
    LAST_ACK = lib.LB_S_LAST_ACK
    LISTEN = lib.LB_S_LISTEN
    SYNACK = lib.LB_S_SYNACK
    UDP = lib.LB_S_UDP


FWD_IDS = {
    "route": lib.LB_FWD_ROUTE,
    "tunnel": lib.LB_FWD_TUNNEL,
    "masq": lib.LB_FWD_MASQ,
    "fullnat": lib.LB_FWD_FULLNAT,
}
FWD_NAMES = {v: k for k, v in FWD_IDS.items()}


class EngineError(Exception):
    """A table operation was refused. `errno_name` is IPVS's errno for it (ESRCH, EEXIST, ...)."""

    def __init__(self, errno_name: str, message: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


# Negative LB_E* codes -> symbolic errno names understood by lbadm.
ERRNO_NAMES = {
    lib.LB_ENOENT: "ENOENT",
    lib.LB_ESRCH: "ESRCH",
    lib.LB_EIO: "EIO",
    lib.LB_ENOMEM: "ENOMEM",
    lib.LB_EBUSY: "EBUSY",
    lib.LB_EEXIST: "EEXIST",
    lib.LB_EINVAL: "EINVAL",
    lib.LB_ENOSPC: "ENOSPC",
    lib.LB_EOPNOTSUPP: "EOPNOTSUPP",
}


@dataclass(frozen=True)
class FwdState:
    """Per-destination forwarding state, resolved by the control plane."""

    ifindex: int
    dst_mac: bytes = b"\0" * 6
    src_mac: bytes = b"\0" * 6
    saddr: str = "0.0.0.0"
    mtu: int = 1500


@dataclass(frozen=True)
class Action:
    verdict: Verdict
    reason: Reason
    out: bytes = b""
    ifindex: int = 0
    l2hdr: bytes = b""


class Engine(Protocol):
    """Tables and packet path of one director instance."""

    name: str

    def process(self, packet: bytes, now_ms: int) -> Action: ...
    def expire(self, now_ms: int) -> int: ...

    def add_service(self, spec: ServiceSpec) -> None: ...
    def edit_service(self, spec: ServiceSpec) -> None: ...
    def del_service(self, key: ServiceKey) -> None: ...
    def clear(self) -> None: ...
    def add_dest(self, key: ServiceKey, dest: DestSpec) -> None: ...
    def edit_dest(self, key: ServiceKey, dest: DestSpec) -> None: ...
    def del_dest(self, key: ServiceKey, addr: str, port: int) -> None: ...
    def set_fwd(self, key: ServiceKey, addr: str, port: int, fwd: FwdState | None) -> None: ...
    def add_laddr(self, key: ServiceKey, addr: str) -> None: ...
    def del_laddr(self, key: ServiceKey, addr: str) -> None: ...
    def zero(self) -> None: ...
    def zero_service(self, key: ServiceKey) -> None: ...
    def set_timeouts(self, tcp_s: int, tcpfin_s: int, udp_s: int) -> None: ...
    def get_timeouts(self) -> tuple[int, int, int]: ...

    def services(self) -> list[ServiceInfo]: ...
    def connections(self, now_ms: int) -> list[ConnInfo]: ...
    def counters(self) -> dict[str, int]: ...

    def start(self, queue_num: int, fail_open: bool = False, qdisc_bypass: bool = False, *,
              queues: Sequence[int] | None = None, cpus: Sequence[int | None] | None = None,
              gso_mtu: int | None = None) -> None: ...
    def stop(self) -> None: ...
