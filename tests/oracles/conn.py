"""Connection accounting: how a connection moves a destination's activeconns / totalconns and
its OVERLOAD flag (net/netfilter/ipvs/ip_vs_conn.c, ip_vs_proto_tcp.c, ip_vs_proto_sctp.c).

- A new connection (ip_vs_bind_dest) always starts INACTIVE: the destination's conn_flags carry
  IP_VS_CONN_F_INACTIVE (set in __ip_vs_update_dest). Binding adds 1 to totalconns; when the new
  total equals the upper threshold exactly, the overload flag is re-evaluated (Dest.update_overload
  with mode +1).
- The protocol's state transition for the same packet then runs. TCP and SCTP make the
  connection active or inactive by their state tables; UDP (and AH/ESP) never make it active.
  So a TCP SYN through a DR director leaves the connection in SYN_RECV, active.
- Expiry (ip_vs_unbind_dest) subtracts 1 from activeconns if the connection is active, and 1
  from totalconns; when the total *before* the decrement equals the lower threshold value, the
  overload flag is re-evaluated with mode -1.
- Templates (persistence) count in persistconns instead: not modelled (see README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from .model import Dest

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_SCTP: Final = 132

# IP_VS_TCP_S_* in the order of enum in include/net/ip_vs.h (the tables below are indexed by it).
TCP_STATES: Final = (
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "SYNACK",
)

# tcp_state_active_table (6.1): SYN_SENT, SYN_RECV, ESTABLISHED and SYNACK count as active.
TCP_ACTIVE_STATES: Final = frozenset({"ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYNACK"})

# SCTP: only ESTABLISHED is active (sctp_state_transition compares with it directly).
SCTP_ACTIVE_STATES: Final = frozenset({"ESTABLISHED"})

Direction = Literal["INPUT", "OUTPUT", "INPUT_ONLY"]
TcpEvent = Literal["syn", "fin", "ack", "rst"]

_S = TCP_STATES
# The default (secure_tcp off) tcp_states table: next state per direction, event and current
# state. Rows are in TCP_STATES order. A director that never sees the real server's packets
# (DR, TUN: IP_VS_CONN_F_NOOUTPUT) uses INPUT_ONLY for the client's packets.
_TCP_TABLE: Final[dict[Direction, dict[TcpEvent, tuple[str, ...]]]] = {
    "INPUT": {
        "syn": ("SYN_RECV", "ESTABLISHED", "ESTABLISHED", "SYN_RECV", "SYN_RECV", "SYN_RECV",
                "SYN_RECV", "SYN_RECV", "SYN_RECV", "SYN_RECV", "SYN_RECV"),
        "fin": ("CLOSE", "CLOSE_WAIT", "SYN_SENT", "TIME_WAIT", "TIME_WAIT", "TIME_WAIT",
                "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "TIME_WAIT"),
        "ack": ("ESTABLISHED", "ESTABLISHED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT", "TIME_WAIT",
                "CLOSE", "CLOSE_WAIT", "CLOSE", "LISTEN", "ESTABLISHED"),
        "rst": ("CLOSE", "CLOSE", "CLOSE", "SYN_RECV", "CLOSE", "CLOSE",
                "CLOSE", "CLOSE", "LAST_ACK", "LISTEN", "SYN_RECV"),
    },
    "OUTPUT": {
        "syn": ("SYN_SENT", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYN_SENT", "SYN_SENT",
                "SYN_SENT", "SYN_SENT", "SYN_SENT", "LISTEN", "SYN_RECV"),
        "fin": ("TIME_WAIT", "FIN_WAIT", "SYN_SENT", "TIME_WAIT", "FIN_WAIT", "TIME_WAIT",
                "CLOSE", "TIME_WAIT", "LAST_ACK", "LISTEN", "TIME_WAIT"),
        "ack": ("ESTABLISHED", "ESTABLISHED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT", "TIME_WAIT",
                "CLOSE", "CLOSE_WAIT", "LAST_ACK", "ESTABLISHED", "ESTABLISHED"),
        "rst": ("CLOSE", "CLOSE", "SYN_SENT", "CLOSE", "CLOSE", "TIME_WAIT",
                "CLOSE", "CLOSE", "CLOSE", "CLOSE", "CLOSE"),
    },
    "INPUT_ONLY": {
        "syn": ("SYN_RECV", "ESTABLISHED", "ESTABLISHED", "SYN_RECV", "SYN_RECV", "SYN_RECV",
                "SYN_RECV", "SYN_RECV", "SYN_RECV", "SYN_RECV", "SYN_RECV"),
        "fin": ("CLOSE", "FIN_WAIT", "SYN_SENT", "TIME_WAIT", "FIN_WAIT", "TIME_WAIT",
                "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "TIME_WAIT"),
        "ack": ("ESTABLISHED", "ESTABLISHED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT", "TIME_WAIT",
                "CLOSE", "CLOSE_WAIT", "CLOSE", "LISTEN", "ESTABLISHED"),
        "rst": ("CLOSE", "CLOSE", "CLOSE", "SYN_RECV", "CLOSE", "CLOSE",
                "CLOSE", "CLOSE", "LAST_ACK", "LISTEN", "CLOSE"),
    },
}


def tcp_state_is_active(state: str) -> bool:
    """tcp_state_active(): does a TCP connection in `state` count in activeconns?"""
    if state not in TCP_STATES:
        raise ValueError(f"unknown IPVS TCP state {state!r}")
    return state in TCP_ACTIVE_STATES


def state_is_active(protocol: int, state: str) -> bool:
    """Active-ness of a connection of `protocol` in `state` after a state transition."""
    if protocol == IPPROTO_TCP:
        return tcp_state_is_active(state)
    if protocol == IPPROTO_SCTP:
        return state in SCTP_ACTIVE_STATES
    return False  # UDP, AH, ESP: no transition ever makes a connection active


def tcp_event(syn: bool = False, fin: bool = False, ack: bool = False, rst: bool = False) -> TcpEvent | None:
    """tcp_state_idx(): which row a segment's flags select (RST first, then SYN, FIN, ACK);
    None for a segment with none of them, which the kernel sends to CLOSE."""
    if rst:
        return "rst"
    if syn:
        return "syn"
    if fin:
        return "fin"
    if ack:
        return "ack"
    return None


def tcp_next_state(direction: Direction, event: TcpEvent | None, state: str) -> str:
    """set_tcp_state() with the default table: the state after a segment."""
    if event is None:
        return "CLOSE"
    return _TCP_TABLE[direction][event][TCP_STATES.index(state)]


@dataclass(eq=False)
class Connection:
    """One non-template connection bound to a destination (the counters' view of ip_vs_conn).

    Create it with Service.bind_connection() (the kernel's ip_vs_bind_dest: inactive, state
    NONE), move it with set_state() (the protocol's state transition) and end it with expire()
    (ip_vs_unbind_dest). one_packet connections (UDP with -o) are expired by the Service right
    after their packet, as ip_vs_conn_put() does.
    """

    dest: Dest
    protocol: int
    one_packet: bool = False
    state: str = "NONE"
    inactive: bool = True
    expired: bool = field(default=False)

    def set_state(self, new_state: str) -> None:
        """The protocol's state transition: only a *change* of state touches the counters
        (tcp_state_transition / sctp_state_transition act inside `if (new_state != cp->state)`)."""
        if self.expired:
            raise RuntimeError("state change on an expired connection")
        if self.protocol == IPPROTO_TCP and new_state not in TCP_STATES:
            raise ValueError(f"unknown IPVS TCP state {new_state!r}")
        if new_state == self.state:
            return
        if self.protocol in (IPPROTO_TCP, IPPROTO_SCTP):
            active = state_is_active(self.protocol, new_state)
            if not self.inactive and not active:
                self.dest.activeconns -= 1
                self.inactive = True
            elif self.inactive and active:
                self.dest.activeconns += 1
                self.inactive = False
        self.state = new_state

    def tcp_segment(self, direction: Direction, event: TcpEvent | None) -> str:
        """Apply one TCP segment with the default state table; returns the new state."""
        self.set_state(tcp_next_state(direction, event, self.state))
        return self.state

    def expire(self) -> None:
        """ip_vs_unbind_dest(): give the connection's counts back to its destination."""
        if self.expired:
            return
        self.expired = True
        dest = self.dest
        if not self.inactive:
            dest.activeconns -= 1
        total_before = dest.totalconns
        dest.totalconns -= 1
        dest.refconns -= 1
        if total_before == dest.l_threshold_val:
            dest.update_overload(-1)
