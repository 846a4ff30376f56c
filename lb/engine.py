"""What every packet engine offers the control plane, and the Action it returns.

Two engines implement this: the C fast path (lb.fastpath.CEngine) and the
pure-Python executable specification (lb.pyengine.PyEngine). Both follow
docs/fastpath.md; the differential tests hold them to identical actions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from lb import consts as C
from lb.model import ConnInfo, DestSpec, ServiceInfo, ServiceKey, ServiceSpec, SynproxyConf

if TYPE_CHECKING:
    from lb.sync.rule import SyncRule

SOCKET_MARK_BASE = C.LB_SOCKET_MARK_BASE
TOA_LEN = C.LB_TOA_LEN  # bytes
IPIP_OVERHEAD = C.LB_IPIP_OVERHEAD  # bytes

# The enums' member names are Python's API; their values, and that every constant of the C
# enum has a member, come from lb_api.h (tests/unit/test_consts.py).


class Verdict(enum.IntEnum):
    ACCEPT = C.LB_V_ACCEPT
    DROP = C.LB_V_DROP
    MANGLE = C.LB_V_MANGLE
    XMIT_L2 = C.LB_V_XMIT_L2
    ANSWER = C.LB_V_ANSWER


class Reason(enum.IntEnum):
    FORWARDED = C.LB_R_FORWARDED
    NOT_IPV4 = C.LB_R_NOT_IPV4
    MALFORMED = C.LB_R_MALFORMED
    BAD_CSUM = C.LB_R_BAD_CSUM
    FRAGMENT = C.LB_R_FRAGMENT
    NOT_LB_PROTO = C.LB_R_NOT_LB_PROTO
    NO_SERVICE = C.LB_R_NO_SERVICE
    NO_CONN = C.LB_R_NO_CONN
    NO_DEST = C.LB_R_NO_DEST
    TABLE_FULL = C.LB_R_TABLE_FULL
    DEST_UNAVAILABLE = C.LB_R_DEST_UNAVAILABLE
    NO_L2 = C.LB_R_NO_L2
    FRAG_NEEDED = C.LB_R_FRAG_NEEDED
    NO_LADDR = C.LB_R_NO_LADDR
    ICMP = C.LB_R_ICMP
    TOA_NO_ROOM = C.LB_R_TOA_NO_ROOM
    TTL_EXCEEDED = C.LB_R_TTL_EXCEEDED
    SP_COOKIE = C.LB_R_SP_COOKIE
    SP_BAD_COOKIE = C.LB_R_SP_BAD_COOKIE
    SP_HELD = C.LB_R_SP_HELD
    SP_HANDSHAKE = C.LB_R_SP_HANDSHAKE
    PROXY_CUT = C.LB_R_PROXY_CUT
    XMIT_FAILED = C.LB_R_XMIT_FAILED
    MARTIAN_SRC = C.LB_R_MARTIAN_SRC
    LOCAL_SRC = C.LB_R_LOCAL_SRC
    BAD_L4_CSUM = C.LB_R_BAD_L4_CSUM
    L2_QUEUED = C.LB_R_L2_QUEUED


class ConnState(enum.IntEnum):
    NONE = C.LB_S_NONE
    ESTABLISHED = C.LB_S_ESTABLISHED
    SYN_SENT = C.LB_S_SYN_SENT
    SYN_RECV = C.LB_S_SYN_RECV
    FIN_WAIT = C.LB_S_FIN_WAIT
    TIME_WAIT = C.LB_S_TIME_WAIT
    CLOSE = C.LB_S_CLOSE
    CLOSE_WAIT = C.LB_S_CLOSE_WAIT
    LAST_ACK = C.LB_S_LAST_ACK
    LISTEN = C.LB_S_LISTEN
    SYNACK = C.LB_S_SYNACK
    UDP = C.LB_S_UDP


# Forwarding methods by name ("route", "tunnel", "masq", "fullnat"): enum lb_fwd, lower-cased.
FWD_IDS: dict[str, int] = {name.lower(): value for name, value in C.enum_members("lb_fwd", "LB_FWD_").items()}
FWD_NAMES = {v: k for k, v in FWD_IDS.items()}


class EngineError(Exception):
    """A table operation was refused. `errno_name` is IPVS's errno for it (ESRCH, EEXIST, ...)."""

    def __init__(self, errno_name: str, message: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


# Negative LB_E* codes -> symbolic errno names understood by lbadm (enum lb_err without LB_OK).
ERRNO_NAMES: dict[int, str] = {value: name for name, value in C.enum_members("lb_err", "LB_").items() if value != 0}


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
    frag_mtu: int = 0  # XMIT_L2: the packet (DF clear) exceeds the path MTU: send it as fragments of this size


class Engine(Protocol):
    """Tables and packet path of one director instance: everything lbd (lb.director, lb.daemon)
    and the Python NFQUEUE adapter call. Both engines implement all of it; mypy checks that
    (tests/unit/test_engine_protocol.py), so callers never probe for a method."""

    name: str

    # ---- packet path (no I/O; the caller supplies the time)
    def process(self, packet: bytes, now_ms: int, mark: int = 0, loopback: bool = False) -> Action:
        """`loopback`: the packet came in on lo (the director's own traffic to a VIP, looped back): it
        never met input routing, so the martian-source checks do not apply (LB_PKT_F_LOOPBACK)."""
        ...
    def expire(self, now_ms: int) -> int: ...
    def timers(self, now_ms: int) -> list[Action]:
        """Run the due timers (SYN-proxy retransmissions, give-ups); their actions to send."""
        ...
    def timer_due(self) -> int | None:
        """When the next timer is due (now_ms clock), None when none is pending."""
        ...
    def count_xmit_failed(self, reason: Reason) -> None:
        """The adapter could not send what process() decided for a packet counted under `reason`: the
        packet moves to the xmit_failed counter (never left counted as forwarded)."""
        ...

    # ---- configuration (all or nothing per call; EngineError with IPVS's errno name)
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
    def set_local_addrs(self, addrs: Sequence[str]) -> None:
        """The director's own IPv4 addresses (interface and broadcast addresses): a new connection
        from one of them, or from any service's virtual address, is dropped (LOCAL_SRC)."""
        ...
    def set_synproxy(self, key: ServiceKey | None, conf: SynproxyConf | None) -> None:
        """The global SYN-proxy default (key None), or one service's own (conf None: the default)."""
        ...

    # ---- observation
    def services(self, counters: bool = True) -> list[ServiceInfo]:
        """Every service with its destinations and local addresses. counters=False: the caller shows
        no traffic counters (lbadm -L without --stats/--rate), and an engine may leave `stats` zero
        and `rates` None (the C engine does: half the cost of listing 10,000 services)."""
        ...
    def service(self, key: ServiceKey) -> ServiceInfo:
        """One service, in O(1) (EngineError ESRCH when there is none)."""
        ...
    def changed_services(self) -> list[ServiceKey]:
        """The services whose counters moved since the last call, each once (lb_svc_list_changed):
        what the rate estimator must look at; the others' rates only decay."""
        ...
    def rate_tick(self) -> int | None:
        """The engine's own rate estimators (the C engine's, lb_est_tick; lbd calls this every 2 s): one
        step unless its adapter thread steps them, then a mark that changes whenever a destination's
        handshake counters, a refusal counter or a zeroing moved (what the director's stalled-handshake
        watch and refusal log look at). None: the engine has no estimators of its own; the director
        runs lb/estimator.py on the counters it lists."""
        ...
    def dest_flags(self, key: ServiceKey) -> dict[tuple[str, int], int]: ...
    def connections(self, now_ms: int) -> list[ConnInfo]: ...
    def counters(self) -> dict[str, int]:
        """Packets per reason (lower-case reason names) since the engine started."""
        ...
    def synproxy_stats(self) -> dict[str, int]: ...
    def conn_count(self) -> int: ...
    def conn_max(self) -> int: ...
    def table_size(self) -> int: ...
    def conn_stats(self) -> dict[str, int]:
        """entries, max, buckets, droppable (what early drop may release), early_drops (released so far)."""
        ...

    # ---- restart snapshots (lbd's state file, lb/statefile.py)
    def dump_connections_raw(self, now_ms: int, reset_changes: bool = False) -> bytes | None:
        """Every live entry as packed struct lb_conn_info records; None: this engine cannot dump.
        reset_changes: forget the change marks first (the dump starts a new full snapshot)."""
        ...
    def dump_connections_chunks(self, now_ms: int, reset_changes: bool = False) -> Iterator[bytes] | None:
        """dump_connections_raw() in pieces, each made when asked for (a snapshot written as it is
        dumped); None: this engine cannot dump."""
        ...
    def dump_changes_raw(self, now_ms: int) -> bytes | None:
        """The records of the slots changed since they were last reported (lb_conn_dump_changes: a gone
        entry is a record with proto 0); None: this engine cannot dump."""
        ...
    def restore_connections_raw(self, blob: bytes, now_ms: int) -> dict[str, int]:
        """Recreate entries from dump_connections_raw() output; outcome counts by errno name."""
        ...

    # ---- the sync master's view of the table (lb/sync/manager.py)
    def dump_sync_changes_raw(self, now_ms: int) -> bytes | None:
        """As dump_changes_raw, over the sync master's own change marks (lb_conn_dump_sync_changes);
        None: this engine cannot dump."""
        ...
    def sync_changes_reset(self) -> None:
        """Forget the sync master's change marks (lb_conn_sync_changes_reset)."""
        ...
    def sync_master_set(self, rule: SyncRule | None) -> None:
        """Choose entries to send per packet by `rule` (the kernel's sysctls; lb_sync_master_set), or
        stop (None). The choice shows as LB_CONN_F_SYNC_WANT in dump_sync_changes_raw's records."""
        ...
    def dump_connections_page(self, now_ms: int, cursor: int, cap: int) -> tuple[bytes, int] | None:
        """Up to `cap` live entries from table position `cursor` (0: the start) and the cursor to go on
        from, 0 once the table is done (lb_conn_dump); None: this engine cannot dump."""
        ...

    # ---- packet source (NFQUEUE)
    def start(self, queue_num: int, fail_open: bool = False, qdisc_bypass: bool = False, *,
              queues: Sequence[int] | None = None, cpus: Sequence[int | None] | None = None,
              gso_mtu: int | None = None, queue_maxlen: int | None = None) -> None: ...
    def stop(self) -> None: ...
    def nfq_stats(self) -> dict[str, int]:
        """The adapter's counters summed over its queues ({} when not started)."""
        ...
    def nfq_queue_stats(self) -> list[dict[str, int]]:
        """The adapter's counters per queue, in queue order ([] when not started)."""
        ...
    def nfq_overload_fds(self) -> list[int]:
        """Descriptors that become readable when a queue's thread sees it overloaded (the C adapter's
        eventfds, lb_nfq_overload_fd; read 8 bytes to clear); [] where the engine has none."""
        ...

    # ---- NAT replies taken at ingress (lbd --nat-replies ingress, lb/natingress.py)
    def start_natrx(self, ifindex: int, mark_queue: int, qdisc_bypass: bool = False, cpu: int | None = None) -> None:
        """Read the NAT replies lbd's netdev chain forwards to the veth peer `ifindex` (a reader
        already running is replaced). EngineError where the engine has no such reader."""
        ...
    def stop_natrx(self) -> None: ...
    def natrx_stats(self) -> dict[str, int]:
        """The NAT-reply reader's counters ({} when it does not run)."""
        ...
