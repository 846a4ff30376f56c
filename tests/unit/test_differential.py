"""Differential test: random configuration changes, packets, timers and time steps through PyEngine and CEngine.

After every step both engines must have returned the same action (or raised the
same EngineError errno) and must report identical services() (with local
addresses), dest_flags(), connections(now), counters() and synproxy_stats().
Destinations use every method (route, tunnel, fullnat), services may have TOA and
SYN-proxy, and the packets include FULLNAT replies from the real servers (to the
local address and port of a live entry, or to a guessed one), ICMP errors from
both sides, TTL 1, oversized packets (tunnel MTU), SYN-proxy cookie ACKs (valid
cookies computed independently in tests/packet_table.py) and real-server
handshakes; `timers` runs both engines' SYN-proxy timers (compared as multisets:
equal deadlines may come out in any order).

Two modes:
- exact: only the operations drawn (an explicit `expire` is one of them). This is
  the contract of docs/fastpath.md: an entry is gone at its expiry time, whether or
  not anyone swept the table.
- swept: both engines also get expire(now) before every operation, as lbd's sweep
  would do; this isolates every other kind of disagreement from when dead entries
  are reaped.
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packet_table as table
from lb.engine import EngineError, FwdState
from lb.model import SCHEDULERS, DestSpec, ServiceKey, ServiceSpec, SynproxyConf

FACTORIES = {f.id: f for f in table.engine_factories()}
C_FACTORY = FACTORIES["c"]
pytestmark = pytest.mark.skipif(C_FACTORY.make is None, reason=C_FACTORY.unavailable or "no C engine")

VIP = table.VIP
SERVICES = [(6, VIP, 80), (17, VIP, 53), (6, VIP, 443)]
DESTS = [table.RS1, table.RS2, table.RS3]
LADDRS = [table.LIP1, table.LIP2]
CLIENTS = [(table.CLIENT1, 40000), (table.CLIENT1, 40001), (table.CLIENT2, 40000), (table.CLIENT2, 40002)]
LPORT_MIN, LPORT_MAX = 1024, 1026  # three local ports: exhaustion is reachable
RS_ISN = 7000
TCP_KINDS = {
    "syn": "S", "synack": "SA", "ack": "A", "data": "PA", "fin": "F", "finack": "FA",
    "rst": "R", "rstack": "RA", "synrst": "SR", "synfin": "SF", "none": "",
}
# Step sizes that land exactly on timeouts make expiry-boundary disagreements likely.
TIME_STEPS = [1, 199, 200, 400, 999, 1000, 2000, 10_000, 30_000, 60_000, 60_001, 120_000, 300_000, 900_000]
SP_CONFS = {
    "builtin": SynproxyConf(),
    "fast": SynproxyConf(init_rto_ms=100, max_rto_ms=400, max_retries=2),
    "defer": SynproxyConf(defer=True, ack_storm_max=2),
    "nosack": SynproxyConf(sack=False, mss=1300, data_max_bytes=0),
    "slow": SynproxyConf(init_rto_ms=60_000, max_rto_ms=120_000, max_retries=15),  # outlives SYN_SENT's 120 s
}


def client_isn(client: int) -> int:
    return 1000 + 100 * client


@functools.cache
def client_packet(kind: str, client: int, service: int, ttl: int = 61) -> bytes:
    caddr, cport = CLIENTS[client]
    _, vaddr, vport = SERVICES[service]
    isn = client_isn(client)
    if kind == "udp":
        return table.udp(sport=cport, dport=vport, src=caddr, dst=vaddr, payload=b"q" * (8 + client), ttl=ttl)
    if kind == "icmp":  # an ICMP error from the client about the service's reply to it
        proto = "udp" if SERVICES[service][0] == 17 else "tcp"
        return table.icmp_error(table.reply_quote(28, proto=proto, sport=vport, dport=cport, dst=caddr), src=caddr,
                                ttl=ttl)
    if kind == "icmp-bad":
        good = client_packet("icmp", client, service, ttl)
        return good[:22] + bytes([good[22] ^ 0xFF]) + good[23:]
    if kind == "truncated":
        return table.tcp(sport=cport, dport=vport, src=caddr, dst=vaddr)[:30]
    if kind == "fragment":
        return table.tcp(sport=cport, dport=vport, src=caddr, dst=vaddr, flags_ip="MF")
    if kind in ("big", "big-df"):
        return table.tcp(sport=cport, flags="PA", payload=b"B" * 1450, dport=vport, src=caddr, dst=vaddr, seq=isn + 1,
                         ack=1, flags_ip="DF" if kind == "big-df" else 0, ttl=ttl)
    if kind == "longopts":  # data offset 15: no room for TOA
        return table.tcp(sport=cport, flags="A", dport=vport, src=caddr, dst=vaddr, seq=isn + 1, ack=1,
                         tcp_options=[("NOP", None)] * 40, ttl=ttl)
    if kind == "sack":
        return table.tcp(sport=cport, flags="A", dport=vport, src=caddr, dst=vaddr, seq=isn + 1, ack=5000,
                         tcp_options=[("NOP", None), ("NOP", None), ("SAck", (5100, 5200))], ttl=ttl)
    flags = TCP_KINDS[kind]
    payload = b"p" * 50 if kind == "data" else b""
    options = [("MSS", 1460), ("SAckOK", b"")] if kind == "syn" and client % 2 == 0 else None
    return table.tcp(sport=cport, flags=flags, payload=payload, dport=vport, src=caddr, dst=vaddr,
                     seq=isn if "S" in flags else isn + 1, ack=1 if "A" in flags else 0, tcp_options=options, ttl=ttl)


@functools.cache
def cookie_ack(client: int, service: int, minute: int, data: bool) -> bytes:
    """The client's ACK completing a SYN-proxy handshake begun in `minute` (cookie computed independently)."""
    caddr, cport = CLIENTS[client]
    _, vaddr, vport = SERVICES[service]
    isn = client_isn(client)
    # data bits: MSS index 3 (1460) and SACK for even clients (their SYN carries both), index 0 otherwise.
    bits = 3 | 4 if client % 2 == 0 else 0
    cookie = table.syn_cookie(caddr, vaddr, cport, vport, isn, minute * 60000, bits)
    return table.tcp(sport=cport, flags="PA" if data else "A", payload=b"d" * 30 if data else b"", dport=vport,
                     src=caddr, dst=vaddr, seq=isn + 1, ack=cookie + 1)


@functools.cache
def rs_packet(kind: str, proto: int, rs: str, rport: int, laddr: str, lport: int, caddr: str, cport: int,
              vport: int, ttl: int = 61) -> bytes:
    """A packet from a real server to a FULLNAT local address (or an ICMP error about one)."""
    if kind == "icmp":
        pname = "udp" if proto == 17 else "tcp"
        return table.icmp_error(table.reply_quote(28, proto=pname, src=laddr, dst=rs, sport=lport, dport=rport),
                                src=rs, dst=laddr, ttl=ttl)
    if proto == 17:
        return table.udp(sport=rport, dport=lport, src=rs, dst=laddr, payload=b"answer", ttl=ttl)
    client = next((i for i, c in enumerate(CLIENTS) if c == (caddr, cport)), 0)
    isn = client_isn(client)
    flags = TCP_KINDS.get(kind, "A")
    options = [("MSS", 1460)] if "S" in flags else None
    payload = b"r" * 40 if kind == "data" else b""
    return table.tcp(sport=rport, dport=lport, src=rs, dst=laddr, flags=flags, seq=RS_ISN, ack=isn + 1,
                     payload=payload, tcp_options=options, ttl=ttl)


def fwd_for(dest: int, variant: str) -> FwdState | None:
    addr = DESTS[dest]
    if variant == "none":
        return None
    saddr = "0.0.0.0" if variant == "nosrc" else table.TUN_SRC
    mtu = {"small": 600, "zero": 0}.get(variant, 1500)
    return FwdState(ifindex=table.IFINDEX + dest, dst_mac=table.RS_MACS[addr], src_mac=table.DIRECTOR_MAC,
                    saddr=saddr, mtu=mtu)


svc_idx = st.integers(0, len(SERVICES) - 1)
dest_idx = st.integers(0, len(DESTS) - 1)
sched = st.sampled_from(SCHEDULERS)  # every scheduler of the C registry
persistence = st.sampled_from([None, None, None, 60, 300])  # seconds
netmask = st.sampled_from(["255.255.255.255", "255.255.255.0"])  # CLIENT1 and CLIENT2 share a /24
service_conf = st.tuples(sched, persistence, netmask, st.sampled_from([False, False, True]),
                         st.sampled_from([False, False, True]))
timeout_s = st.sampled_from([0, 0, 5, 60, 900])
weight = st.sampled_from([0, 1, 1, 2, 3])
method = st.sampled_from(["route", "tunnel", "fullnat", "fullnat"])
thresholds = st.sampled_from([(0, 0), (0, 0), (0, 0), (1, 0), (2, 0), (2, 1), (3, 1), (4, 2)])  # (upper, lower)
fwd_variant = st.sampled_from(["ok", "ok", "ok", "none", "nosrc", "small", "zero"])
tcp_kind = st.sampled_from([*TCP_KINDS, *["syn"] * 8, "ack", "ack", "ack", "data", "data", "fin", "rst"])
odd_kind = st.sampled_from(["truncated", "fragment", "udp", "syn", "icmp", "icmp", "icmp-bad", "big", "big-df",
                            "big-df", "longopts", "longopts", "sack"])
client_idx = st.sampled_from([0, 0, 0, 1, 2, 3])  # mostly one client: its flows get further
ttl = st.sampled_from([61, 61, 61, 61, 1])

packet_op = st.one_of(
    st.tuples(st.just("packet"), tcp_kind, client_idx, st.sampled_from([0, 0, 0, 2]), ttl),
    st.tuples(st.just("packet"), tcp_kind, client_idx, st.sampled_from([0, 0, 0, 2]), st.just(61)),
    st.tuples(st.just("packet"), st.just("udp"), client_idx, st.just(1), ttl),
    st.tuples(st.just("packet"), odd_kind, client_idx, svc_idx, ttl),
)
reply_op = st.tuples(st.just("reply"), st.sampled_from(["synack", "synack", "ack", "data", "fin", "rst", "icmp", "udp"]),
                     st.integers(0, 7), ttl)
guess_op = st.tuples(st.just("guess"), st.sampled_from(["synack", "ack", "icmp"]), dest_idx, st.sampled_from([0, 2]),
                     st.integers(0, 1), st.integers(LPORT_MIN, LPORT_MAX))
cookie_op = st.tuples(st.just("cookie_ack"), client_idx, st.sampled_from([0, 0, 0, 2]), st.sampled_from([0, 0, 0, 0, -1, -2, -3]),
                      st.booleans())
OP_ARGS = {
    "packet": packet_op,
    "reply": reply_op,
    "guess": guess_op,
    "cookie_ack": cookie_op,
    "timers": st.tuples(st.just("timers")),
    "advance": st.tuples(st.just("advance"), st.one_of(st.sampled_from(TIME_STEPS), st.integers(0, 1_000_000),
                                                       st.integers(0, 1000))),
    "add_dest": st.tuples(st.just("add_dest"), svc_idx, dest_idx, weight, thresholds, method),
    "edit_dest": st.tuples(st.just("edit_dest"), svc_idx, dest_idx, weight, thresholds, method),
    "del_dest": st.tuples(st.just("del_dest"), svc_idx, dest_idx),
    "set_fwd": st.tuples(st.just("set_fwd"), svc_idx, dest_idx, fwd_variant),
    "add_laddr": st.tuples(st.just("add_laddr"), svc_idx, st.integers(0, len(LADDRS) - 1)),
    "del_laddr": st.tuples(st.just("del_laddr"), svc_idx, st.integers(0, len(LADDRS) - 1)),
    "add_service": st.tuples(st.just("add_service"), svc_idx, service_conf),
    "edit_service": st.tuples(st.just("edit_service"), svc_idx, service_conf),
    "set_synproxy": st.tuples(st.just("set_synproxy"), st.sampled_from([None, 0, 2]),
                              st.sampled_from([None, *SP_CONFS])),
    "zero_service": st.tuples(st.just("zero_service"), svc_idx),
    "set_timeouts": st.tuples(st.just("set_timeouts"), timeout_s, timeout_s, timeout_s),
    "del_service": st.tuples(st.just("del_service"), svc_idx),
    "expire": st.tuples(st.just("expire")),
    "zero": st.tuples(st.just("zero")),
    "clear": st.tuples(st.just("clear")),
}
# Relative frequencies (in quarters): mostly packets and time, some table churn, rarely a wipe.
OP_WEIGHTS = {"packet": 80, "reply": 28, "cookie_ack": 14, "guess": 4, "timers": 10, "advance": 22, "add_dest": 10,
              "edit_dest": 6, "del_dest": 6, "set_fwd": 8, "add_laddr": 6, "add_service": 6, "edit_service": 4,
              "set_synproxy": 4, "expire": 4, "zero": 2, "zero_service": 2, "set_timeouts": 3, "del_service": 2,
              "del_laddr": 3, "clear": 1}
OP_MIX = [name for name, w in OP_WEIGHTS.items() for _ in range(w)]
operation = st.sampled_from(OP_MIX).flatmap(lambda name: OP_ARGS[name])
# Start with a populated director.
per_service_dests = st.lists(st.tuples(dest_idx, weight, thresholds, st.sampled_from(["route", "tunnel", "fullnat",
                                                                                     "fullnat", "fullnat"])),
                             min_size=1, max_size=3)
preamble = st.tuples(
    st.lists(service_conf, min_size=3, max_size=3),
    st.lists(per_service_dests, min_size=3, max_size=3),
    st.lists(st.tuples(st.just("add_laddr"), svc_idx, st.integers(0, len(LADDRS) - 1)), min_size=1, max_size=4),
).map(lambda sdl: [*[("add_service", i, conf) for i, conf in enumerate(sdl[0])], *sdl[2],
                   *[("add_dest", i, *d) for i, dests in enumerate(sdl[1]) for d in dests],
                   *[("set_fwd", s, d, "ok") for s in range(3) for d in range(3)]])
# Small tables put early drop (docs/fastpath.md "When the table is full") under pressure.
scenarios = st.tuples(preamble, st.lists(operation, min_size=10, max_size=60), st.sampled_from([0, 0, 1, 2, 3, 6]))


@dataclass
class Outcome:
    result: object
    error: str | None


def fnat_entries(engine: object, now: int) -> list[tuple]:
    """Live FULLNAT connections (not templates), in a deterministic order."""
    return sorted(astuple(c) for c in engine.connections(now)  # type: ignore[attr-defined]
                  if c.laddr != "0.0.0.0" and c.cport != 0)


def resolve(op: tuple, now: int, reference: object) -> tuple:
    """Turn an op whose packet depends on the tables (a reply to the k-th live FULLNAT entry) into
    ("raw", packet), looking at `reference` before either engine sees the op; other ops unchanged."""
    name = op[0]
    if name == "reply":
        entries = fnat_entries(reference, now)
        if not entries:
            return ("nothing",)
        proto, caddr, cport, _vaddr, vport, daddr, dport, _state, _exp, laddr, lport = entries[op[2] % len(entries)]
        kind = "udp" if proto == 17 and op[1] != "icmp" else op[1]
        return ("raw", rs_packet(kind, proto, daddr, dport, laddr, lport, caddr, cport, vport, op[3]))
    if name == "guess":
        kind, dest, service, laddr, lport = op[1:]
        proto, _, vport = SERVICES[service]
        return ("raw", rs_packet(kind, proto, DESTS[dest], vport, LADDRS[laddr], lport, *CLIENTS[0], vport))
    if name == "cookie_ack":
        client, service, age, data = op[1:]
        return ("raw", cookie_ack(client, service, max(0, now // 60000 + age), data))
    if name == "packet":
        kind, client, service, hops = op[1:]
        return ("raw", client_packet(kind, client, service, hops))
    return op


def apply(engine: object, op: tuple, now: int) -> Outcome:
    """Apply a resolved op to engine."""
    e = engine
    try:
        name = op[0]
        if name == "nothing":
            return Outcome(None, None)
        if name == "raw":
            return Outcome(e.process(op[1], now), None)  # type: ignore[attr-defined]
        if name == "timers":
            actions = e.timers(now)  # type: ignore[attr-defined]
            return Outcome(sorted((a.verdict, a.reason, a.out, a.ifindex, a.l2hdr, a.frag_mtu) for a in actions), None)
        if name == "expire":
            e.expire(now)  # type: ignore[attr-defined]  # how many it frees is implementation detail
            return Outcome(None, None)
        if name in ("zero", "clear"):
            getattr(e, name)()
            return Outcome(None, None)
        if name == "set_timeouts":
            e.set_timeouts(*op[1:])  # type: ignore[attr-defined]
            return Outcome(e.get_timeouts(), None)  # type: ignore[attr-defined]
        if name == "set_synproxy":
            key = None if op[1] is None else ServiceKey(*SERVICES[op[1]])
            conf = None if op[2] is None else SP_CONFS[op[2]]
            if key is None and conf is None:
                conf = SP_CONFS["builtin"]
            e.set_synproxy(key, conf)  # type: ignore[attr-defined]
            return Outcome(None, None)
        key = ServiceKey(*SERVICES[op[1]])
        if name in ("add_service", "edit_service"):
            sched_name, persistent, mask, toa, synproxy = op[2]
            getattr(e, name)(ServiceSpec(key, sched_name, persistent, mask, toa, synproxy))
        elif name == "zero_service":
            e.zero_service(key)  # type: ignore[attr-defined]
        elif name == "del_service":
            e.del_service(key)  # type: ignore[attr-defined]
        elif name in ("add_dest", "edit_dest"):
            upper, lower = op[4]
            getattr(e, name)(key, DestSpec(DESTS[op[2]], key.port, op[5], op[3], upper, lower))
        elif name == "del_dest":
            e.del_dest(key, DESTS[op[2]], key.port)  # type: ignore[attr-defined]
        elif name == "set_fwd":
            e.set_fwd(key, DESTS[op[2]], key.port, fwd_for(op[2], op[3]))  # type: ignore[attr-defined]
        elif name in ("add_laddr", "del_laddr"):
            getattr(e, name)(key, LADDRS[op[2]])
        else:
            raise AssertionError(f"unknown op {op}")
        return Outcome(None, None)
    except EngineError as exc:
        return Outcome(None, exc.errno_name)


def snapshot(engine: object, now: int) -> tuple[object, ...]:
    e = engine
    services = e.services()  # type: ignore[attr-defined]
    return (
        services,
        {str(s.spec.key): e.dest_flags(s.spec.key) for s in services},  # type: ignore[attr-defined]
        sorted(astuple(c) for c in e.connections(now)),  # type: ignore[attr-defined]
        e.counters(),  # type: ignore[attr-defined]
        e.synproxy_stats(),  # type: ignore[attr-defined]
        e.conn_stats(),  # type: ignore[attr-defined]
    )


def make_pair(conn_max: int) -> tuple[object, object]:
    cfg = {"lport_min": LPORT_MIN, "lport_max": LPORT_MAX}
    return FACTORIES["py"].make(conn_max, **cfg), C_FACTORY.make(conn_max, **cfg)  # type: ignore[operator]


def run_both(ops: list[tuple], conn_max: int, swept: bool) -> None:
    py, c = make_pair(conn_max)
    now = 0
    history: list[str] = []
    for op in ops:
        if op[0] == "advance":
            now += op[1]
            history.append(f"t={now}")
            continue
        if swept:
            py.expire(now)  # type: ignore[attr-defined]
            c.expire(now)  # type: ignore[attr-defined]
        concrete = resolve(op, now, py)
        got_py, got_c = apply(py, concrete, now), apply(c, concrete, now)
        history.append(f"{op} -> py {got_py.result or got_py.error} | c {got_c.result or got_c.error}")
        trail = "\n  ".join(history[-25:])
        assert (got_py.result, got_py.error) == (got_c.result, got_c.error), f"step diverged at t={now}:\n  {trail}"
        snap_py, snap_c = snapshot(py, now), snapshot(c, now)
        for what, a, b in zip(("services", "dest_flags", "connections", "counters", "synproxy_stats", "conn_stats"),
                              snap_py, snap_c, strict=True):
            assert a == b, f"{what} differ after {op} at t={now}:\n  {trail}\npy: {a}\nc:  {b}"


common = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
                  report_multiple_bugs=False)


@common
@given(scenarios)
def test_differential_exact(scenario: tuple) -> None:
    pre, ops, conn_max = scenario
    run_both(pre + ops, conn_max, swept=False)


@common
@given(scenarios)
def test_differential_swept(scenario: tuple) -> None:
    pre, ops, conn_max = scenario
    run_both(pre + ops, conn_max, swept=True)


# ---- targeted scenarios: sequences the random search reaches rarely -------------------------

RR = ("rr", None, "255.255.255.255", False, False)
WLC = ("wlc", None, "255.255.255.255", False, False)


def svc(sched_name: str = "rr", persistent: int | None = None, mask: str = "255.255.255.255", toa: bool = False,
        synproxy: bool = False) -> tuple:
    return (sched_name, persistent, mask, toa, synproxy)


def dest(s: int, d: int, w: int = 1, th: tuple[int, int] = (0, 0), m: str = "route") -> tuple:
    return ("add_dest", s, d, w, th, m)


def syn(client: int, service: int = 0) -> tuple:
    return ("packet", "syn", client, service, 61)


def pkt(kind: str, client: int, service: int = 0) -> tuple:
    return ("packet", kind, client, service, 61)


SETUP_ONE = [("add_service", 0, RR), dest(0, 0, 1, (1, 0)), ("set_fwd", 0, 0, "ok")]
SP_SETUP = [("add_service", 0, svc(synproxy=True)), ("add_laddr", 0, 0), dest(0, 0, m="fullnat"),
            ("set_fwd", 0, 0, "ok")]
TARGETED = {
    # wlc must not count an entry that died at t=60000 (SYN_RECV timeout), swept or not.
    "dead-entry-not-counted-by-wlc": [
        ("add_service", 2, WLC), dest(2, 0), dest(2, 1), ("set_fwd", 2, 0, "ok"), ("set_fwd", 2, 1, "ok"),
        syn(1, 2), ("advance", 60_000), syn(0, 2)],
    # conn_max=4: four SYN_RECV entries die at t=60000; a fifth SYN then gets in.
    "dead-entries-free-the-table": [
        ("add_service", 0, RR), dest(0, 0), ("set_fwd", 0, 0, "ok"),
        syn(0), syn(1), syn(2), syn(3), ("advance", 60_000), syn(0, 2), ("add_service", 2, RR), dest(2, 1),
        ("set_fwd", 2, 1, "ok"), syn(0, 2)],
    # OVERLOAD (u_threshold 1) is cleared by raising the upper threshold (__ip_vs_update_dest).
    "raised-upper-threshold-clears-overload": [*SETUP_ONE, syn(0), ("edit_dest", 0, 0, 1, (5, 0), "route"), syn(1)],
    # ... and by re-adding the destination from the trash with no upper threshold.
    "revive-clears-overload": [*SETUP_ONE, syn(0), ("del_dest", 0, 0), dest(0, 0), ("set_fwd", 0, 0, "ok"), syn(1)],
    # Reviving into a re-created service zeroes the destination's stats (old_svc != svc).
    "revive-into-recreated-service-zeroes-stats": [
        ("add_service", 0, RR), dest(0, 0), ("set_fwd", 0, 0, "ok"), syn(0), pkt("ack", 0),
        ("del_service", 0), ("add_service", 0, RR), dest(0, 0), pkt("data", 0)],
    # Reviving into the same service keeps stats, counts and forwarding state.
    "revive-into-same-service-keeps-everything": [
        ("add_service", 0, RR), dest(0, 0), ("set_fwd", 0, 0, "ok"), syn(0), pkt("ack", 0), ("del_dest", 0, 0),
        pkt("data", 0), dest(0, 0), pkt("data", 0)],
    # rr cursor after deleting the destination before / at / after it.
    "rr-delete-cursor-and-neighbours": [
        ("add_service", 0, RR), *[dest(0, d) for d in range(3)], *[("set_fwd", 0, d, "ok") for d in range(3)],
        syn(0), syn(1), ("del_dest", 0, 1), syn(2), dest(0, 1), ("set_fwd", 0, 1, "ok"), ("del_dest", 0, 2),
        pkt("fin", 0), syn(0), syn(1)],
    # Changing the scheduler restarts rr at the head; re-setting the same one keeps the cursor.
    "edit-service-scheduler": [
        ("add_service", 0, RR), *[dest(0, d) for d in range(3)], *[("set_fwd", 0, d, "ok") for d in range(3)],
        syn(0), ("edit_service", 0, RR), syn(1), ("edit_service", 0, WLC), ("edit_service", 0, RR), syn(2)],
    # Persistence: one /24 template names RS for all clients; rr does not move meanwhile.
    "persistence-sticks-per-network": [
        ("add_service", 0, svc("rr", 300, "255.255.255.0")), *[dest(0, d) for d in range(3)],
        *[("set_fwd", 0, d, "ok") for d in range(3)], syn(0), syn(1), ("advance", 1000), syn(2), pkt("ack", 2),
        ("edit_service", 0, RR), syn(2), pkt("fin", 0), syn(0)],
    # The template's destination is deleted: the next SYN is scheduled afresh, a new template made.
    "persistence-dest-deleted": [
        ("add_service", 0, svc("rr", 300)), *[dest(0, d) for d in range(2)], *[("set_fwd", 0, d, "ok") for d in range(2)],
        syn(0), ("del_dest", 0, 1), syn(1), ("advance", 10), pkt("ack", 0), syn(1)],
    # A template outlives its 60 s while its connection (ESTABLISHED, 900 s) lives; afterwards it goes.
    "persistence-template-rearmed": [
        ("add_service", 0, svc("wlc", 60)), dest(0, 0), ("set_fwd", 0, 0, "ok"), syn(0), pkt("ack", 0),
        ("advance", 60_000), pkt("data", 0), ("advance", 30_000), syn(1), ("advance", 900_000),
        ("packet", "udp", 0, 1, 61), ("advance", 200_000), ("packet", "udp", 0, 1, 61)],
    # Template and connection die at the same moment: nothing is left controlling anything.
    "persistence-template-and-conn-die-together": [
        ("add_service", 2, svc("rr", 60)), dest(2, 0), ("set_fwd", 2, 0, "ok"), syn(0, 2), ("advance", 120_000),
        syn(1, 2)],
    # Templates of one timeout re-armed late and out of creation order: each is re-armed from its own expiry.
    "persistence-rearm-order": [
        ("add_service", 0, svc("rr", 60)), dest(0, 0), ("set_fwd", 0, 0, "ok"), syn(0), pkt("ack", 0),
        ("advance", 30_000), syn(2), ("advance", 70_000), syn(3), ("advance", 20_000), pkt("data", 0),
        ("advance", 59_999), ("expire",), ("advance", 1), ("expire",), ("advance", 200_000), pkt("data", 0)],
    # Table full while creating the template (conn_max 4: 2 templates + 2 connections fill it).
    "persistence-table-full": [
        ("add_service", 0, svc("rr", 300)), dest(0, 0), ("set_fwd", 0, 0, "ok"), syn(0), syn(2), syn(1), syn(3)],
    # Early drop with FULLNAT (conn_max 2): the third SYN evicts the first half-open entry, whose local
    # port becomes free again; an established one is spared; replies of the evicted one find nothing.
    "early-drop-fullnat": [
        ("add_service", 0, RR), ("add_laddr", 0, 0), dest(0, 0, m="fullnat"), ("set_fwd", 0, 0, "ok"),
        syn(0), ("advance", 5), syn(1), pkt("ack", 1), ("advance", 5), syn(2),
        *[("guess", "synack", 0, 0, 0, port) for port in range(LPORT_MIN, LPORT_MAX + 1)], syn(3), pkt("ack", 2), syn(0)],
    # Early drop never takes a SYN-proxied entry (its client proved itself with a cookie) (conn_max 2).
    "early-drop-spares-synproxy": [
        *SP_SETUP, ("cookie_ack", 0, 0, 0, False), ("advance", 10), syn(1), syn(2), syn(3), ("advance", 10),
        ("cookie_ack", 1, 0, 0, False)],
    # FULLNAT: three local ports, four clients to one real server: the fourth finds none; replies flow.
    "fnat-ports-exhausted": [
        ("add_service", 0, RR), ("add_laddr", 0, 0), dest(0, 0, m="fullnat"), ("set_fwd", 0, 0, "ok"),
        syn(0), syn(1), syn(2), syn(3), ("reply", "synack", 0, 61), ("reply", "synack", 1, 61), pkt("ack", 0),
        ("reply", "fin", 0, 61), ("reply", "icmp", 2, 61), ("advance", 60_000), syn(3)],
    # FULLNAT with TOA: MSS lowered on the way out, TOA on the first ACK, no room with long options.
    "fnat-toa": [
        ("add_service", 0, svc(toa=True)), ("add_laddr", 0, 0), ("add_laddr", 0, 1), dest(0, 0, m="fullnat"),
        ("set_fwd", 0, 0, "ok"), syn(0), ("reply", "synack", 0, 61), pkt("longopts", 0), pkt("ack", 0),
        pkt("data", 0), syn(1), ("packet", "big", 1, 0, 61)],
    # A connection keeps its method when its destination's method changes (route -> fullnat -> tunnel).
    "method-change": [
        ("add_service", 0, RR), ("add_laddr", 0, 0), dest(0, 0), ("set_fwd", 0, 0, "ok"), syn(0),
        ("edit_dest", 0, 0, 1, (0, 0), "fullnat"), ("set_fwd", 0, 0, "ok"), pkt("ack", 0), syn(1),
        ("edit_dest", 0, 0, 1, (0, 0), "tunnel"), ("set_fwd", 0, 0, "ok"), pkt("data", 0), ("reply", "ack", 0, 61),
        syn(2)],
    # Tunnel: MTU, no source address, ICMP errors encapsulated.
    "tunnel": [
        ("add_service", 0, RR), dest(0, 0, m="tunnel"), ("set_fwd", 0, 0, "small"), syn(0),
        ("packet", "big-df", 0, 0, 61), ("packet", "big", 0, 0, 61), pkt("icmp", 0), ("set_fwd", 0, 0, "nosrc"),
        pkt("ack", 0), pkt("icmp", 0)],
    # SYN-proxy: cookie, ACK, real-server handshake, translated data both ways, SACK.
    "synproxy-flow": [
        *SP_SETUP, syn(0), ("cookie_ack", 0, 0, 0, False), ("reply", "synack", 0, 61), pkt("data", 0),
        ("reply", "data", 0, 61), pkt("sack", 0), pkt("fin", 0), ("reply", "fin", 0, 61)],
    # SYN-proxy timers: retransmissions, then the give-up RST; a second connection answered meanwhile.
    "synproxy-timers": [
        *SP_SETUP, syn(0), syn(2), ("cookie_ack", 0, 0, 0, False), ("cookie_ack", 2, 0, 0, True),
        ("advance", 199), ("timers",), ("advance", 1), ("timers",), ("reply", "synack", 1, 61), ("advance", 400),
        ("timers",), ("advance", 800), ("timers",), ("advance", 1600), ("timers",), ("advance", 5000), ("timers",)],
    # SYN-proxy: held data, ACK storm, the real server's RST and stray ACK.
    "synproxy-pending": [
        *SP_SETUP, ("set_synproxy", 0, "defer"), syn(0), ("cookie_ack", 0, 0, 0, False), pkt("ack", 0),
        pkt("ack", 0), pkt("ack", 0), syn(2), ("cookie_ack", 2, 0, 0, True), ("reply", "ack", 0, 61),
        ("reply", "rst", 0, 61), ("cookie_ack", 2, 0, -3, False)],
    # SYN-proxy settings whose retransmissions outlive the entry (SYN_SENT: 120 s): a dead entry sends nothing.
    "synproxy-entry-dies-before-retransmission": [
        *SP_SETUP, ("set_synproxy", 0, "slow"), syn(0), ("cookie_ack", 0, 0, 0, False), ("advance", 60_000),
        ("timers",), ("advance", 60_000), ("timers",), ("advance", 120_000), ("timers",)],
    # Running the timers releases dead entries even where no service ever had SYN-proxy (found by
    # hypothesis: C skipped the release when it had no SYN-proxy state at all).
    "timers-release-dead-entries-without-synproxy": [
        *SETUP_ONE, syn(0), ("advance", 60_000), ("timers",), syn(1)],
}


@pytest.mark.parametrize("swept", [False, True], ids=["exact", "swept"])
@pytest.mark.parametrize("name", list(TARGETED))
def test_targeted(name: str, swept: bool) -> None:
    sizes = {"dead-entries-free-the-table": 4, "persistence-table-full": 4, "early-drop-fullnat": 2,
             "early-drop-spares-synproxy": 2}
    run_both(TARGETED[name], sizes.get(name, 0), swept)


# ---- error precedence when several errors apply at once -------------------------------------------
# docs/fastpath.md "Configuration errors": service (ESRCH), then the arguments, then the existence of
# the destination (EEXIST / ENOENT); adding an existing service is EEXIST first (ip_vs_genl_set_cmd).

MISSING = ServiceKey(6, "198.51.100.99", 80)
KEY = ServiceKey(6, VIP, 80)
SP_KEY = ServiceKey(6, VIP, 443)
OPS_KEY = ServiceKey(17, VIP, 53)


def _populated(engine: object) -> object:
    e = engine
    e.add_service(ServiceSpec(KEY, "rr"))  # type: ignore[attr-defined]
    e.add_dest(KEY, DestSpec(table.RS1, 80, "route"))  # type: ignore[attr-defined]
    e.add_laddr(KEY, table.LIP1)  # type: ignore[attr-defined]
    e.add_service(ServiceSpec(SP_KEY, "rr", synproxy=True))  # type: ignore[attr-defined]
    e.add_dest(SP_KEY, DestSpec(table.RS1, 443, "fullnat"))  # type: ignore[attr-defined]
    e.add_service(ServiceSpec(OPS_KEY, "rr", ops=True))  # type: ignore[attr-defined]
    return e


PRECEDENCE = [
    ("add_dest bad thresholds, no service", "ESRCH",
     lambda e: e.add_dest(MISSING, DestSpec(table.RS1, 80, "route", 1, 1, 2))),
    ("add_dest masq, no service", "ESRCH", lambda e: e.add_dest(MISSING, DestSpec(table.RS1, 80, "masq"))),
    ("edit_dest bad thresholds, no service", "ESRCH",
     lambda e: e.edit_dest(MISSING, DestSpec(table.RS1, 80, "route", 1, 1, 2))),
    ("edit_service SYN-proxy UDP, no service", "ESRCH",
     lambda e: e.edit_service(ServiceSpec(ServiceKey(17, "198.51.100.99", 53), "rr", synproxy=True))),
    ("add_dest bad thresholds, exists", "EINVAL", lambda e: e.add_dest(KEY, DestSpec(table.RS1, 80, "route", 1, 1, 2))),
    ("add_dest fullnat on -o UDP, exists", "EOPNOTSUPP",
     lambda e: e.add_dest(OPS_KEY, DestSpec(table.RS1, 53, "fullnat"))),
    ("edit_dest bad thresholds, missing dest", "EINVAL",
     lambda e: e.edit_dest(KEY, DestSpec(table.RS2, 80, "route", 1, 1, 2))),
    ("add_service exists, persistence out of range", "EEXIST",
     lambda e: e.add_service(ServiceSpec(KEY, "rr", persistent=5_000_000))),
    ("edit_service SYN-proxy on a route destination", "EOPNOTSUPP",
     lambda e: e.edit_service(ServiceSpec(KEY, "rr", synproxy=True))),
    ("add_dest route to a SYN-proxy service, exists", "EOPNOTSUPP",
     lambda e: e.add_dest(SP_KEY, DestSpec(table.RS1, 443, "route"))),
    ("edit_dest route in a SYN-proxy service, missing dest", "EOPNOTSUPP",
     lambda e: e.edit_dest(SP_KEY, DestSpec(table.RS2, 443, "route"))),
    ("set_fwd ifindex -1, no service", "ESRCH",
     lambda e: e.set_fwd(MISSING, table.RS1, 80, FwdState(ifindex=-1))),
    ("set_fwd ifindex -1, missing dest", "EINVAL", lambda e: e.set_fwd(KEY, table.RS2, 80, FwdState(ifindex=-1))),
    ("add_laddr 0.0.0.0, no service", "ESRCH", lambda e: e.add_laddr(MISSING, "0.0.0.0")),
    ("add_laddr 255.255.255.255, exists", "EINVAL", lambda e: e.add_laddr(KEY, "255.255.255.255")),
    ("del_laddr, missing", "ENOENT", lambda e: e.del_laddr(KEY, table.LIP2)),
    ("set_synproxy, no service", "ESRCH",
     lambda e: e.set_synproxy(MISSING, SynproxyConf(init_rto_ms=200, max_rto_ms=200))),
    ("zero_service, no service", "ESRCH", lambda e: e.zero_service(MISSING)),
]


@pytest.mark.parametrize("engine_id", ["py", "c"])
@pytest.mark.parametrize("name, errno_name, call", PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_error_precedence(engine_id: str, name: str, errno_name: str, call) -> None:  # type: ignore[no-untyped-def]
    engine = _populated(FACTORIES[engine_id].make(0))  # type: ignore[operator]
    with pytest.raises(EngineError) as info:
        call(engine)
    assert info.value.errno_name == errno_name, f"{engine_id}: {name}"


def test_add_service_exists_before_persistence_check() -> None:
    """An existing service answers EEXIST whatever else the request carries (ip_vs_genl_set_cmd)."""
    key = ServiceKey(6, VIP, 80)
    for factory in (FACTORIES["py"], C_FACTORY):
        engine = factory.make(0)  # type: ignore[operator]
        engine.add_service(ServiceSpec(key, "rr"))
        with pytest.raises(EngineError) as info:
            engine.add_service(ServiceSpec(key, "rr", persistent=300))
        assert info.value.errno_name == "EEXIST", factory.id
