"""IPVS TCP state tables and timeouts (docs/fastpath.md; kernel ip_vs_proto_tcp.c), plus UDP's timeout.

Tables are indexed [event][current state] -> next state, with events in IPVS's
order (syn, fin, ack, rst). The director in DR mode sees only the client's side,
so its entries carry NOOUTPUT and use INPUT_ONLY; INPUT and OUTPUT are kept for
the other forwarding methods and for the table tests.
"""

from __future__ import annotations

import enum

from lb.engine import ConnState
from lb.pyengine.parse import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN


class Direction(enum.IntEnum):
    INPUT = 0  # client -> server
    OUTPUT = 1  # server -> client
    INPUT_ONLY = 2  # client -> server on an entry that never saw the server's side (NOOUTPUT)


class Event(enum.IntEnum):
    SYN = 0
    FIN = 1
    ACK = 2
    RST = 3


NO_EVENT = -1  # no RST/SYN/FIN/ACK flag: the entry goes to CLOSE (set_tcp_state starts from CLOSE)

# Column order of every table row: the IPVS state numbers 0..10.
sNO = ConnState.NONE
sES = ConnState.ESTABLISHED
sSS = ConnState.SYN_SENT
sSR = ConnState.SYN_RECV
sFW = ConnState.FIN_WAIT
sTW = ConnState.TIME_WAIT
sCL = ConnState.CLOSE
sCW = ConnState.CLOSE_WAIT
sLA = ConnState.LAST_ACK
sLI = ConnState.LISTEN
sSA = ConnState.SYNACK

TCP_STATES: tuple[ConnState, ...] = (sNO, sES, sSS, sSR, sFW, sTW, sCL, sCW, sLA, sLI, sSA)
assert [int(s) for s in TCP_STATES] == list(range(11)), "tables below assume IPVS state numbering"

# fmt: off
#                 sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
INPUT_TABLE = (
    (sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR),  # syn
    (sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW),  # fin
    (sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES),  # ack
    (sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR),  # rst
)
OUTPUT_TABLE = (
    (sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR),  # syn
    (sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW),  # fin
    (sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES),  # ack
    (sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL),  # rst
)
INPUT_ONLY_TABLE = (
    (sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR),  # syn
    (sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW),  # fin
    (sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES),  # ack
    (sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL),  # rst
)
# fmt: on

STATE_TABLES: dict[Direction, tuple[tuple[ConnState, ...], ...]] = {
    Direction.INPUT: INPUT_TABLE,
    Direction.OUTPUT: OUTPUT_TABLE,
    Direction.INPUT_ONLY: INPUT_ONLY_TABLE,
}

_S = 1000  # milliseconds per second
TCP_TIMEOUTS_MS: dict[ConnState, int] = {
    sNO: 2 * _S,
    sES: 900 * _S,
    sSS: 120 * _S,
    sSR: 60 * _S,
    sFW: 120 * _S,
    sTW: 120 * _S,
    sCL: 10 * _S,
    sCW: 60 * _S,
    sLA: 30 * _S,
    sLI: 120 * _S,
    sSA: 120 * _S,
}
UDP_TIMEOUT_MS = 300 * _S

# Indexed by state number, for the per-packet path.
_TIMEOUT_BY_STATE: tuple[int, ...] = tuple(TCP_TIMEOUTS_MS[s] for s in TCP_STATES)


def tcp_event(flags: int) -> int:
    """IPVS's event index for a TCP flags byte: RST, else SYN, else FIN, else ACK, else NO_EVENT."""
    if flags & TCP_RST:
        return Event.RST
    if flags & TCP_SYN:
        return Event.SYN
    if flags & TCP_FIN:
        return Event.FIN
    if flags & TCP_ACK:
        return Event.ACK
    return NO_EVENT


def next_tcp_state(direction: Direction, state: int, flags: int) -> int:
    """The state after a packet with `flags` travelling in `direction` hits an entry in `state`."""
    event = tcp_event(flags)
    if event == NO_EVENT:
        return int(sCL)
    return STATE_TABLES[direction][event][state]


def tcp_timeout_ms(state: int) -> int:
    return _TIMEOUT_BY_STATE[state]


def is_new_conn(flags: int) -> bool:
    """Any SYN (other flags do not matter: the kernel's is_new_conn): with conn_reuse_mode=1 it
    expires a TIME_WAIT/CLOSE entry and is treated as a miss."""
    return bool(flags & TCP_SYN)


def is_plain_syn(flags: int) -> bool:
    """A SYN without ACK and RST: the one the stalled-handshake signal compares with the first SYN."""
    return flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN


REUSABLE_STATES = frozenset({int(sTW), int(sCL)})

# The states a TCP connection counts as active in (its destination's ActiveConn), as the kernel's
# tcp_state_active_table (ip_vs_proto_tcp.c, 6.1): the handshake states and ESTABLISHED. Every other
# state counts as inactive, and so does a new connection until its first state change. UDP
# connections never change state: always inactive.
ACTIVE_STATES = frozenset({int(sES), int(sSS), int(sSR), int(sSA)})
