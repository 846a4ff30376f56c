"""The IPVS TCP state tables, cell by cell, with the expected values read from docs/fastpath.md.

- Every cell of INPUT, OUTPUT and INPUT-ONLY, and every timeout, of lb/pyengine's
  tables equals the document's.
- Through the engines (both): a DR director only ever applies INPUT-ONLY (it sees
  the client's side alone), and from a new entry only SYN_RECV, ESTABLISHED,
  FIN_WAIT, TIME_WAIT and CLOSE are reachable; every event on each of them (and
  syn on NONE, via the creating packet) is driven through process() and checked
  for state, timer and active/inactive counts. Active are the kernel's
  tcp_state_active states (SYN_SENT, SYN_RECV, ESTABLISHED, SYNACK), every other
  state inactive: tests/packet_table.py ACTIVE_STATES, read from ip_vs_proto_tcp.c.
- A FULLNAT director sees both sides: its entries use INPUT for the client's
  packets and OUTPUT for the real server's; every (direction, event) on every state
  reachable that way is driven through process() and checked the same way.
- Kernel rules around the tables: a segment with none of SYN/FIN/ACK/RST moves the
  entry to CLOSE; any SYN on a TIME_WAIT/CLOSE entry expires it (conn_reuse_mode=1,
  is_new_conn looks at SYN only) and SYN+RST is never scheduled.
The columns no packet path reaches are covered by the table comparison only.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

import pytest

import packet_table as table
from lb.model import DestSpec, ServiceKey, ServiceSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "fastpath.md"
FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
EVENTS = ("syn", "fin", "ack", "rst")
SHORT = {"sNO": "NONE", "sES": "ESTABLISHED", "sSS": "SYN_SENT", "sSR": "SYN_RECV", "sFW": "FIN_WAIT",
         "sTW": "TIME_WAIT", "sCL": "CLOSE", "sCW": "CLOSE_WAIT", "sLA": "LAST_ACK", "sLI": "LISTEN",
         "sSA": "SYNACK"}


def doc_tables() -> dict[str, dict[tuple[str, str], str]]:
    """{direction: {(event, state): next state}} parsed from the document's code block."""
    text = DOC.read_text()
    block = text[text.index("INPUT       sNO"):]
    block = block[: block.index("```")]
    columns: list[str] = []
    tables: dict[str, dict[tuple[str, str], str]] = {}
    direction = ""
    for line in block.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] in ("INPUT", "OUTPUT", "INPUT-ONLY"):
            direction = words[0]
            tables[direction] = {}
            if len(words) > 1:
                columns = [SHORT[w] for w in words[1:]]
            continue
        event, cells = words[0], [SHORT[w] for w in words[1:]]
        assert event in EVENTS and len(cells) == len(columns) == 11, line
        for state, nxt in zip(columns, cells, strict=True):
            tables[direction][(event, state)] = nxt
    assert set(tables) == {"INPUT", "OUTPUT", "INPUT-ONLY"}
    return tables


def doc_timeouts_ms() -> dict[str, int]:
    text = DOC.read_text()
    section = text[text.index("Timeouts (seconds):"):]
    section = section[: section.index("\n\n")]
    found = {name: int(sec) * 1000 for name, sec in re.findall(r"([A-Z_]+):? (\d+)", section)}
    assert found.pop("UDP") == 300_000
    assert len(found) == 11, found
    return found


DOC_TABLES = doc_tables()
DOC_TIMEOUTS = doc_timeouts_ms()


# ---- the Python transcription against the document ----------------------------------------------


def test_pyengine_tables_match_document_cell_by_cell() -> None:
    from lb.pyengine import proto_tcp

    names = {"INPUT": proto_tcp.Direction.INPUT, "OUTPUT": proto_tcp.Direction.OUTPUT,
             "INPUT-ONLY": proto_tcp.Direction.INPUT_ONLY}
    for direction, cells in DOC_TABLES.items():
        tbl = proto_tcp.STATE_TABLES[names[direction]]
        for (event, state), expected in cells.items():
            got = tbl[EVENTS.index(event)][proto_tcp.TCP_STATES.index(getattr(proto_tcp, "s" + _abbrev(state)))]
            assert got.name == expected, f"{direction} {event} in {state}"


def test_pyengine_timeouts_match_document() -> None:
    from lb.pyengine import proto_tcp

    assert {s.name: ms for s, ms in proto_tcp.TCP_TIMEOUTS_MS.items()} == DOC_TIMEOUTS
    assert proto_tcp.UDP_TIMEOUT_MS == 300_000


def test_event_priority() -> None:
    """RST, else SYN, else FIN, else ACK, else no event."""
    from lb.pyengine.proto_tcp import NO_EVENT, Event, tcp_event

    f = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}
    for combo in range(64):
        flags = {k for k, bit in f.items() if combo & bit}
        expected = (Event.RST if "R" in flags else Event.SYN if "S" in flags else Event.FIN if "F" in flags
                    else Event.ACK if "A" in flags else NO_EVENT)
        assert tcp_event(combo) == expected, flags


def _abbrev(state: str) -> str:
    return {v: k for k, v in SHORT.items()}[state][1:]


# ---- through the engines (INPUT-ONLY) ---------------------------------------------------------------

# A packet per event (on TIME_WAIT/CLOSE the SYN+ACK also expires the entry: the new one ends in the same state).
EVENT_FLAGS = {"syn": "SA", "fin": "FA", "ack": "A", "rst": "RA"}
CREATE = {"syn": "S"}  # the creating packet: NONE + syn (SYN+RST is never scheduled)
KEY = ServiceKey(6, table.VIP, 80)
ONLY = DOC_TABLES["INPUT-ONLY"]


def reachable_paths() -> dict[str, list[str]]:
    """Shortest event path (after the creating SYN) to every state reachable through INPUT-ONLY."""
    start = ONLY[("syn", "NONE")]
    paths: dict[str, list[str]] = {start: []}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for event in EVENTS:
            nxt = ONLY[(event, state)]
            if nxt not in paths:
                paths[nxt] = paths[state] + [event]
                queue.append(nxt)
    return paths


PATHS = reachable_paths()
CELLS = [(state, event) for state in PATHS for event in EVENTS]


def new_engine(factory: table.EngineFactory):  # type: ignore[no-untyped-def]
    engine = factory.make(0)  # type: ignore[operator]
    engine.add_service(ServiceSpec(KEY, "rr"))
    engine.add_dest(KEY, DestSpec(table.RS1, 80))
    engine.set_fwd(KEY, table.RS1, 80, table.fwd_state(table.DestSetup(table.RS1)))
    return engine


def send(engine, flags: str, now: int, sport: int = 40000) -> None:  # type: ignore[no-untyped-def]
    action = engine.process(table.tcp(sport=sport, flags=flags, seq=1000, ack=1 if "A" in flags else 0), now)
    assert action.reason.name == "FORWARDED", (flags, action)


def observe(engine, now: int) -> tuple[str, int, int, int]:  # type: ignore[no-untyped-def]
    (conn,) = engine.connections(now)
    (dest,) = engine.services()[0].dests
    return conn.state, conn.expires_ms, dest.active, dest.inactive


def expected_after(state: str) -> tuple[str, int, int, int]:
    """(state, timeout, active, inactive) of the one entry: active in the kernel's active states
    (table.ACTIVE_STATES: tcp_state_active_table of ip_vs_proto_tcp.c), inactive in the others."""
    active = table.active_in(state)
    return state, DOC_TIMEOUTS[state], active, 1 - active


def test_reachable_states_are_the_documented_closed_set() -> None:
    assert set(PATHS) == {"SYN_RECV", "ESTABLISHED", "FIN_WAIT", "TIME_WAIT", "CLOSE"}


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("event", sorted(CREATE))
def test_none_column_via_creating_packet(factory: table.EngineFactory, event: str) -> None:
    engine = new_engine(factory)
    send(engine, CREATE[event], 0)
    assert observe(engine, 0) == expected_after(ONLY[(event, "NONE")])


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("state, event", CELLS, ids=[f"{s}-{e}" for s, e in CELLS])
def test_input_only_cell(factory: table.EngineFactory, state: str, event: str) -> None:
    engine = new_engine(factory)
    now = 0
    send(engine, "S", now)
    for step in PATHS[state]:
        now += 7
        send(engine, EVENT_FLAGS[step], now)
    assert observe(engine, now) == expected_after(state), f"driving to {state} via {PATHS[state]}"
    now += 1000
    send(engine, EVENT_FLAGS[event], now)
    assert observe(engine, now) == expected_after(ONLY[(event, state)])


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("state", sorted(PATHS))
def test_no_event_closes_and_restarts_timer(factory: table.EngineFactory, state: str) -> None:
    """A segment with none of RST/SYN/FIN/ACK: the kernel's set_tcp_state starts from CLOSE."""
    engine = new_engine(factory)
    send(engine, "S", 0)
    for step in PATHS[state]:
        send(engine, EVENT_FLAGS[step], 0)
    send(engine, "P", 5000)  # PSH alone: no RST/SYN/FIN/ACK
    assert observe(engine, 5000) == expected_after("CLOSE")


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("flags", ["S", "SA", "SF", "SP"])
@pytest.mark.parametrize("state", sorted(PATHS))
def test_any_syn_reuses_only_time_wait_and_close(factory: table.EngineFactory, state: str, flags: str) -> None:
    """conn_reuse_mode=1: a SYN (whatever else is set) on TIME_WAIT/CLOSE makes a new connection."""
    engine = new_engine(factory)
    send(engine, "S", 0)
    for step in PATHS[state]:
        send(engine, EVENT_FLAGS[step], 0)
    send(engine, flags, 10)
    conns_made = engine.services()[0].dests[0].stats.conns
    assert observe(engine, 10) == expected_after(ONLY[("syn", state)])
    assert conns_made == (2 if state in ("TIME_WAIT", "CLOSE") else 1)


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("state", sorted(PATHS))
def test_syn_rst_expires_closing_entries_and_is_never_scheduled(factory: table.EngineFactory, state: str) -> None:
    engine = new_engine(factory)
    send(engine, "S", 0)
    for step in PATHS[state]:
        send(engine, EVENT_FLAGS[step], 0)
    action = engine.process(table.tcp(flags="SR", seq=1000), 10)
    if state in ("TIME_WAIT", "CLOSE"):
        assert action.reason.name == "NO_CONN"
        assert engine.connections(10) == []
    else:  # the rst event on the live entry
        assert action.reason.name == "FORWARDED"
        assert observe(engine, 10) == expected_after(ONLY[("rst", state)])


@pytest.mark.parametrize("factory", FACTORIES)
def test_syn_rst_creates_nothing(factory: table.EngineFactory) -> None:
    engine = new_engine(factory)
    assert engine.process(table.tcp(flags="SR"), 0).reason.name == "NO_CONN"
    assert engine.connections(0) == []


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("state", sorted(PATHS))
def test_entry_lives_exactly_its_timeout(factory: table.EngineFactory, state: str) -> None:
    engine = new_engine(factory)
    send(engine, "S", 0)
    for step in PATHS[state]:
        send(engine, EVENT_FLAGS[step], 0)
    timeout = DOC_TIMEOUTS[state]
    assert [c.expires_ms for c in engine.connections(timeout - 1)] == [1]
    assert engine.connections(timeout) == []
    assert engine.expire(timeout) == 1
    dest = engine.services()[0].dests[0]
    assert (dest.active, dest.inactive) == (0, 0)


@pytest.mark.parametrize("factory", FACTORIES)
def test_udp_entry(factory: table.EngineFactory) -> None:
    engine = factory.make(0)  # type: ignore[operator]
    key = ServiceKey(17, table.VIP, 53)
    engine.add_service(ServiceSpec(key, "rr"))
    engine.add_dest(key, DestSpec(table.RS1, 53))
    engine.set_fwd(key, table.RS1, 53, table.fwd_state(table.DestSetup(table.RS1, 53)))
    for now in (0, 1000, 250_000):
        assert engine.process(table.udp(), now).reason.name == "FORWARDED"
        (conn,) = engine.connections(now)
        (dest,) = engine.services()[0].dests
        assert (conn.state, conn.expires_ms, dest.active, dest.inactive) == ("UDP", 300_000, 0, 1)


# ---- through the engines (FULLNAT: INPUT for the client's side, OUTPUT for the real server's) --------------

FNAT_SETUP = table.Setup((table.ServiceSetup(table.TCP80, "rr", (table.DestSetup(table.RS1, fwd="fullnat"),),
                                             laddrs=(table.LIP1,)),))
MOVES = [(d, e) for d in ("in", "out") for e in EVENTS]
OUT_FLAGS = {"syn": "SA", "fin": "FA", "ack": "A", "rst": "RA"}
BOTH = {("in", e, s): DOC_TABLES["INPUT"][(e, s)] for e in EVENTS for s in SHORT.values()}
BOTH.update({("out", e, s): DOC_TABLES["OUTPUT"][(e, s)] for e in EVENTS for s in SHORT.values()})


def fnat_paths() -> dict[str, list[tuple[str, str]]]:
    """Shortest (direction, event) path after the creating SYN to every state FULLNAT entries reach; an
    inbound SYN on TIME_WAIT/CLOSE is left out (it makes a new entry, see the reuse tests)."""
    start = DOC_TABLES["INPUT"][("syn", "NONE")]
    paths: dict[str, list[tuple[str, str]]] = {start: []}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for move in MOVES:
            if move == ("in", "syn") and state in ("TIME_WAIT", "CLOSE"):
                continue
            nxt = BOTH[(move[0], move[1], state)]
            if nxt not in paths:
                paths[nxt] = paths[state] + [move]
                queue.append(nxt)
    return paths


FNAT_PATHS = fnat_paths()
FNAT_CELLS = [(state, move) for state in FNAT_PATHS for move in MOVES
              if not (move == ("in", "syn") and state in ("TIME_WAIT", "CLOSE"))]


def fnat_send(engine, move: tuple[str, str], now: int) -> None:  # type: ignore[no-untyped-def]
    direction, event = move
    if direction == "in":
        flags = "S" if event == "syn" else EVENT_FLAGS[event]
        packet = table.tcp(flags=flags, seq=1000, ack=0 if event == "syn" else 1)
    else:
        (conn,) = engine.connections(now)
        packet = table.tcp(sport=80, dport=conn.lport, src=table.RS1, dst=conn.laddr, flags=OUT_FLAGS[event],
                           seq=5000, ack=1001)
    action = engine.process(packet, now)
    assert action.reason.name == "FORWARDED", (move, action)


def test_fnat_reaches_both_tables() -> None:
    """Through FULLNAT entries more states are reachable than through DR's INPUT-ONLY."""
    assert set(PATHS) < set(FNAT_PATHS)
    assert set(FNAT_PATHS) - set(PATHS) == {"SYN_SENT", "CLOSE_WAIT"}


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("state, move", FNAT_CELLS, ids=[f"{s}-{d}-{e}" for s, (d, e) in FNAT_CELLS])
def test_fnat_cell(factory: table.EngineFactory, state: str, move: tuple[str, str]) -> None:
    engine = table.make_engine(factory, FNAT_SETUP)
    table.install_setup(engine, FNAT_SETUP)
    now = 0
    fnat_send(engine, ("in", "syn"), now)
    for step in FNAT_PATHS[state]:
        now += 7
        fnat_send(engine, step, now)
    assert observe(engine, now) == expected_after(state), f"driving to {state} via {FNAT_PATHS[state]}"
    now += 1000
    fnat_send(engine, move, now)
    assert observe(engine, now) == expected_after(BOTH[(move[0], move[1], state)])
