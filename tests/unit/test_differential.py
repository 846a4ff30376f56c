"""Differential test: random configuration changes, packets and time steps through PyEngine and CEngine.

After every step both engines must have returned the same action (or raised the
same EngineError errno) and must report identical services(), connections(now)
and counters(). Two modes:

- exact: only the operations drawn (an explicit `expire` is one of them). This is
  the contract of docs/fastpath.md: an entry is gone at its expiry time, whether or
  not anyone swept the table.
- swept: both engines also get expire(now) before every operation, as lbd's ~1 s
  sweep would do; this isolates every other kind of disagreement from when dead
  entries are reaped.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import packet_table as table  # noqa: E402
from lb.engine import EngineError, FwdState  # noqa: E402
from lb.model import DestSpec, ServiceKey, ServiceSpec  # noqa: E402

FACTORIES = {f.id: f for f in table.engine_factories()}
C_FACTORY = FACTORIES["c"]
pytestmark = pytest.mark.skipif(C_FACTORY.make is None, reason=C_FACTORY.unavailable or "no C engine")

VIP = table.VIP
SERVICES = [(6, VIP, 80), (17, VIP, 53), (6, VIP, 443)]
DESTS = [table.RS1, table.RS2, table.RS3]
CLIENTS = [(table.CLIENT1, 40000), (table.CLIENT1, 40001), (table.CLIENT2, 40000)]
TCP_KINDS = {
    "syn": "S", "synack": "SA", "ack": "A", "data": "PA", "fin": "F", "finack": "FA",
    "rst": "R", "rstack": "RA", "synrst": "SR", "none": "",
}
# Step sizes that land exactly on timeouts make expiry-boundary disagreements likely.
TIME_STEPS = [1, 999, 1000, 2000, 10_000, 30_000, 60_000, 120_000, 300_000, 900_000]


@functools.cache
def packet_bytes(kind: str, client: int, service: int) -> bytes:
    caddr, cport = CLIENTS[client]
    _, vaddr, vport = SERVICES[service]
    if kind == "udp":
        return table.udp(sport=cport, dport=vport, src=caddr, dst=vaddr, payload=b"q" * (8 + client))
    if kind == "icmp":  # an ICMP error from the client about the service's reply to it
        proto = "udp" if SERVICES[service][0] == 17 else "tcp"
        return table.icmp_error(table.reply_quote(28, proto=proto, sport=vport, dport=cport, dst=caddr), src=caddr)
    if kind == "truncated":
        return table.tcp(sport=cport, dport=vport, src=caddr, dst=vaddr)[:30]
    if kind == "fragment":
        return table.tcp(sport=cport, dport=vport, src=caddr, dst=vaddr, flags_ip="MF")
    flags = TCP_KINDS[kind]
    payload = b"p" * 50 if kind == "data" else b""
    return table.tcp(sport=cport, flags=flags, payload=payload, dport=vport, src=caddr, dst=vaddr,
                     seq=1000 + client, ack=1 if "A" in flags else 0)


def fwd_for(dest: int, valid: bool) -> FwdState | None:
    addr = DESTS[dest]
    return FwdState(ifindex=table.IFINDEX + dest, dst_mac=table.RS_MACS[addr], src_mac=table.DIRECTOR_MAC) if valid else None


svc_idx = st.integers(0, len(SERVICES) - 1)
dest_idx = st.integers(0, len(DESTS) - 1)
sched = st.sampled_from(["rr", "wlc"])
persistence = st.sampled_from([None, None, None, 60, 300])  # seconds
netmask = st.sampled_from(["255.255.255.255", "255.255.255.0"])  # CLIENT1 and CLIENT2 share a /24
service_conf = st.tuples(sched, persistence, netmask)
timeout_s = st.sampled_from([0, 0, 5, 60, 900])
weight = st.sampled_from([0, 1, 1, 2, 3])
thresholds = st.sampled_from([(0, 0), (0, 0), (0, 0), (1, 0), (2, 0), (2, 1), (3, 1), (4, 2)])  # (upper, lower)
tcp_kind = st.sampled_from([*TCP_KINDS, "syn", "syn", "syn", "ack", "ack", "data", "fin", "rst"])
odd_kind = st.sampled_from(["truncated", "fragment", "udp", "syn", "icmp", "icmp", "icmp"])  # "udp"/"syn" here: any service
client_idx = st.integers(0, len(CLIENTS) - 1)

packet_op = st.one_of(
    st.tuples(st.just("packet"), tcp_kind, client_idx, st.sampled_from([0, 2])),
    st.tuples(st.just("packet"), tcp_kind, client_idx, st.sampled_from([0, 2])),
    st.tuples(st.just("packet"), st.just("udp"), client_idx, st.just(1)),
    st.tuples(st.just("packet"), odd_kind, client_idx, svc_idx),
)
OP_ARGS = {
    "packet": packet_op,
    "advance": st.tuples(st.just("advance"), st.one_of(st.sampled_from(TIME_STEPS), st.integers(0, 1_000_000))),
    "add_dest": st.tuples(st.just("add_dest"), svc_idx, dest_idx, weight, thresholds),
    "edit_dest": st.tuples(st.just("edit_dest"), svc_idx, dest_idx, weight, thresholds),
    "del_dest": st.tuples(st.just("del_dest"), svc_idx, dest_idx),
    "set_fwd": st.tuples(st.just("set_fwd"), svc_idx, dest_idx, st.sampled_from([True, True, False])),
    "add_service": st.tuples(st.just("add_service"), svc_idx, service_conf),
    "edit_service": st.tuples(st.just("edit_service"), svc_idx, service_conf),
    "zero_service": st.tuples(st.just("zero_service"), svc_idx),
    "set_timeouts": st.tuples(st.just("set_timeouts"), timeout_s, timeout_s, timeout_s),
    "del_service": st.tuples(st.just("del_service"), svc_idx),
    "expire": st.tuples(st.just("expire")),
    "zero": st.tuples(st.just("zero")),
    "clear": st.tuples(st.just("clear")),
}
# Relative frequencies: mostly packets and time, some table churn, rarely a wipe.
OP_MIX = (["packet"] * 24 + ["advance"] * 5 + ["add_dest"] * 3 + ["edit_dest", "del_dest", "set_fwd"] * 2
          + ["add_service", "edit_service", "expire", "zero", "zero_service", "set_timeouts", "del_service", "clear"])
operation = st.sampled_from(OP_MIX).flatmap(lambda name: OP_ARGS[name])
# Start with a populated director.
preamble = st.tuples(
    st.lists(service_conf, min_size=3, max_size=3),
    st.lists(st.tuples(st.just("add_dest"), svc_idx, dest_idx, weight, thresholds), min_size=3, max_size=9),
).map(lambda sd: [*[("add_service", i, conf) for i, conf in enumerate(sd[0])],
                  *sd[1], *[("set_fwd", s, d, True) for s in range(3) for d in range(3)]])
scenarios = st.tuples(preamble, st.lists(operation, min_size=10, max_size=50), st.sampled_from([0, 3, 6]))


@dataclass
class Outcome:
    result: object
    error: str | None


def apply(engine: object, op: tuple, now: int) -> Outcome:  # type: ignore[type-arg]
    e = engine
    try:
        name = op[0]
        if name == "packet":
            return Outcome(e.process(packet_bytes(*op[1:]), now), None)  # type: ignore[attr-defined]
        if name == "expire":
            e.expire(now)  # type: ignore[attr-defined]  # how many it frees is implementation detail
            return Outcome(None, None)
        if name in ("zero", "clear"):
            getattr(e, name)()
            return Outcome(None, None)
        if name == "set_timeouts":
            e.set_timeouts(*op[1:])  # type: ignore[attr-defined]
            return Outcome(e.get_timeouts(), None)  # type: ignore[attr-defined]
        key = ServiceKey(*SERVICES[op[1]])
        if name in ("add_service", "edit_service"):
            sched_name, persistent, mask = op[2] if isinstance(op[2], tuple) else (op[2], None, "255.255.255.255")
            getattr(e, name)(ServiceSpec(key, sched_name, persistent, mask))
        elif name == "zero_service":
            e.zero_service(key)  # type: ignore[attr-defined]
        elif name == "del_service":
            e.del_service(key)  # type: ignore[attr-defined]
        elif name in ("add_dest", "edit_dest"):
            upper, lower = op[4]
            getattr(e, name)(key, DestSpec(DESTS[op[2]], key.port, "route", op[3], upper, lower))
        elif name == "del_dest":
            e.del_dest(key, DESTS[op[2]], key.port)  # type: ignore[attr-defined]
        elif name == "set_fwd":
            e.set_fwd(key, DESTS[op[2]], key.port, fwd_for(op[2], op[3]))  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"unknown op {op}")
        return Outcome(None, None)
    except EngineError as exc:
        return Outcome(None, exc.errno_name)


def snapshot(engine: object, now: int) -> tuple[object, object, object]:
    e = engine
    return (
        e.services(),  # type: ignore[attr-defined]
        sorted(e.connections(now), key=lambda c: (c.proto, c.caddr, c.cport, c.vport)),  # type: ignore[attr-defined]
        e.counters(),  # type: ignore[attr-defined]
    )


def run_both(ops: list[tuple], conn_max: int, swept: bool) -> None:  # type: ignore[type-arg]
    py = FACTORIES["py"].make(conn_max)  # type: ignore[operator]
    c = C_FACTORY.make(conn_max)  # type: ignore[operator]
    now = 0
    history: list[str] = []
    for op in ops:
        if op[0] == "advance":
            now += op[1]
            history.append(f"t={now}")
            continue
        if swept:
            py.expire(now)
            c.expire(now)
        got_py, got_c = apply(py, op, now), apply(c, op, now)
        history.append(f"{op} -> py {got_py.result or got_py.error} | c {got_c.result or got_c.error}")
        trail = "\n  ".join(history[-25:])
        assert (got_py.result, got_py.error) == (got_c.result, got_c.error), f"step diverged at t={now}:\n  {trail}"
        snap_py, snap_c = snapshot(py, now), snapshot(c, now)
        for what, a, b in zip(("services", "connections", "counters"), snap_py, snap_c):
            assert a == b, f"{what} differ after {op} at t={now}:\n  {trail}\npy: {a}\nc:  {b}"


common = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
                  report_multiple_bugs=False)


@common
@given(scenarios)
def test_differential_exact(scenario: tuple) -> None:  # type: ignore[type-arg]
    pre, ops, conn_max = scenario
    run_both(pre + ops, conn_max, swept=False)


@common
@given(scenarios)
def test_differential_swept(scenario: tuple) -> None:  # type: ignore[type-arg]
    pre, ops, conn_max = scenario
    run_both(pre + ops, conn_max, swept=True)


# ---- targeted scenarios: sequences the random search reaches rarely -------------------------

SETUP_ONE = [("add_service", 0, "rr"), ("add_dest", 0, 0, 1, (1, 0)), ("set_fwd", 0, 0, True)]
TARGETED = {
    # wlc must not count an entry that died at t=60000 (SYN_RECV timeout), swept or not.
    "dead-entry-not-counted-by-wlc": [
        ("add_service", 2, "wlc"), ("add_dest", 2, 0, 1, (0, 0)), ("add_dest", 2, 1, 1, (0, 0)),
        ("set_fwd", 2, 0, True), ("set_fwd", 2, 1, True),
        ("packet", "syn", 1, 2), ("advance", 60_000), ("packet", "syn", 0, 2)],
    # conn_max=3: three SYN_RECV entries die at t=60000; a fourth SYN then gets in.
    "dead-entries-free-the-table": [
        *SETUP_ONE[:1], ("add_dest", 0, 0, 1, (0, 0)), ("set_fwd", 0, 0, True),
        ("packet", "syn", 0, 0), ("packet", "syn", 1, 0), ("packet", "syn", 2, 0),
        ("advance", 60_000), ("packet", "syn", 0, 2), ("add_service", 2, "rr"), ("add_dest", 2, 1, 1, (0, 0)),
        ("set_fwd", 2, 1, True), ("packet", "syn", 0, 2)],
    # OVERLOAD (u_threshold 1) is cleared by raising the upper threshold (__ip_vs_update_dest).
    "raised-upper-threshold-clears-overload": [
        *SETUP_ONE, ("packet", "syn", 0, 0), ("edit_dest", 0, 0, 1, (5, 0)), ("packet", "syn", 1, 0)],
    # ... and by re-adding the destination from the trash with no upper threshold.
    "revive-clears-overload": [
        *SETUP_ONE, ("packet", "syn", 0, 0), ("del_dest", 0, 0), ("add_dest", 0, 0, 1, (0, 0)),
        ("set_fwd", 0, 0, True), ("packet", "syn", 1, 0)],
    # Reviving into a re-created service zeroes the destination's stats (old_svc != svc).
    "revive-into-recreated-service-zeroes-stats": [
        *SETUP_ONE[:1], ("add_dest", 0, 0, 1, (0, 0)), ("set_fwd", 0, 0, True), ("packet", "syn", 0, 0),
        ("packet", "ack", 0, 0), ("del_service", 0), ("add_service", 0, "rr"), ("add_dest", 0, 0, 1, (0, 0)),
        ("packet", "data", 0, 0)],
    # Reviving into the same service keeps stats, counts and forwarding state.
    "revive-into-same-service-keeps-everything": [
        *SETUP_ONE[:1], ("add_dest", 0, 0, 1, (0, 0)), ("set_fwd", 0, 0, True), ("packet", "syn", 0, 0),
        ("packet", "ack", 0, 0), ("del_dest", 0, 0), ("packet", "data", 0, 0), ("add_dest", 0, 0, 1, (0, 0)),
        ("packet", "data", 0, 0)],
    # rr cursor after deleting the destination before / at / after it.
    "rr-delete-cursor-and-neighbours": [
        ("add_service", 0, "rr"), *[("add_dest", 0, d, 1, (0, 0)) for d in range(3)],
        *[("set_fwd", 0, d, True) for d in range(3)], ("packet", "syn", 0, 0), ("packet", "syn", 1, 0),
        ("del_dest", 0, 1), ("packet", "syn", 2, 0), ("add_dest", 0, 1, 1, (0, 0)), ("set_fwd", 0, 1, True),
        ("del_dest", 0, 2), ("packet", "fin", 0, 0), ("packet", "syn", 0, 0), ("packet", "syn", 1, 0)],
    # Changing the scheduler restarts rr at the head; re-setting the same one keeps the cursor.
    "edit-service-scheduler": [
        ("add_service", 0, "rr"), *[("add_dest", 0, d, 1, (0, 0)) for d in range(3)],
        *[("set_fwd", 0, d, True) for d in range(3)], ("packet", "syn", 0, 0), ("edit_service", 0, "rr"),
        ("packet", "syn", 1, 0), ("edit_service", 0, "wlc"), ("edit_service", 0, "rr"), ("packet", "syn", 2, 0)],
    # Persistence: one /24 template names RS for all three clients; rr does not move meanwhile.
    "persistence-sticks-per-network": [
        ("add_service", 0, ("rr", 300, "255.255.255.0")), *[("add_dest", 0, d, 1, (0, 0)) for d in range(3)],
        *[("set_fwd", 0, d, True) for d in range(3)], ("packet", "syn", 0, 0), ("packet", "syn", 1, 0),
        ("advance", 1000), ("packet", "syn", 2, 0), ("packet", "ack", 2, 0), ("edit_service", 0, ("rr", None, "255.255.255.255")),
        ("packet", "syn", 2, 0), ("packet", "fin", 0, 0), ("packet", "syn", 0, 0)],
    # The template's destination is deleted: the next SYN is scheduled afresh, a new template made.
    "persistence-dest-deleted": [
        ("add_service", 0, ("rr", 300, "255.255.255.255")), *[("add_dest", 0, d, 1, (0, 0)) for d in range(2)],
        *[("set_fwd", 0, d, True) for d in range(2)], ("packet", "syn", 0, 0), ("del_dest", 0, 1),
        ("packet", "syn", 1, 0), ("advance", 10), ("packet", "ack", 0, 0), ("packet", "syn", 1, 0)],
    # A template outlives its 60 s while its connection (ESTABLISHED, 900 s) lives; afterwards it goes.
    "persistence-template-rearmed": [
        ("add_service", 0, ("wlc", 60, "255.255.255.255")), ("add_dest", 0, 0, 1, (0, 0)),
        ("set_fwd", 0, 0, True), ("packet", "syn", 0, 0), ("packet", "ack", 0, 0), ("advance", 60_000),
        ("packet", "data", 0, 0), ("advance", 30_000), ("packet", "syn", 1, 0), ("advance", 900_000),
        ("packet", "udp", 0, 1), ("advance", 200_000), ("packet", "udp", 0, 1)],
    # Template and connection die at the same moment: nothing is left controlling anything.
    "persistence-template-and-conn-die-together": [
        ("add_service", 2, ("rr", 60, "255.255.255.255")), ("add_dest", 2, 0, 1, (0, 0)), ("set_fwd", 2, 0, True),
        ("packet", "syn", 0, 2), ("advance", 120_000), ("packet", "syn", 1, 2)],
    # Table full while creating the template (conn_max 3 here: 1 template + 1 connection fill 2).
    "persistence-table-full": [
        ("add_service", 0, ("rr", 300, "255.255.255.255")), ("add_dest", 0, 0, 1, (0, 0)), ("set_fwd", 0, 0, True),
        ("packet", "syn", 0, 0), ("packet", "syn", 1, 0), ("packet", "syn", 2, 0), ("packet", "syn", 2, 0)],
}


@pytest.mark.parametrize("swept", [False, True], ids=["exact", "swept"])
@pytest.mark.parametrize("name", list(TARGETED))
def test_targeted(name: str, swept: bool) -> None:
    run_both(TARGETED[name], 3 if name in ("dead-entries-free-the-table", "persistence-table-full") else 0, swept)


# ---- error precedence when several errors apply at once (kernel: the service lookup comes first) ----

MISSING = ServiceKey(6, "198.51.100.99", 80)


@pytest.mark.parametrize(
    "name, call",
    [
        ("add_dest bad thresholds, no service", lambda e: e.add_dest(MISSING, DestSpec(table.RS1, 80, "route", 1, 1, 2))),
        ("add_dest tunnel, no service", lambda e: e.add_dest(MISSING, DestSpec(table.RS1, 80, "tunnel"))),
        ("edit_dest bad thresholds, no service", lambda e: e.edit_dest(MISSING, DestSpec(table.RS1, 80, "route", 1, 1, 2))),
    ],
)
def test_error_precedence_missing_service(name: str, call) -> None:  # type: ignore[no-untyped-def]
    """ipvsadm answers "Service not defined" (ESRCH) first, as ip_vs_genl_set_cmd looks the service up
    before the destination parameters are checked."""
    for factory in (FACTORIES["py"], C_FACTORY):
        engine = factory.make(0)  # type: ignore[operator]
        with pytest.raises(EngineError) as info:
            call(engine)
        assert info.value.errno_name == "ESRCH", f"{factory.id}: {name}"


def test_add_service_exists_before_persistence_check() -> None:
    """An existing service answers EEXIST whatever else the request carries (ip_vs_genl_set_cmd)."""
    key = ServiceKey(6, VIP, 80)
    for factory in (FACTORIES["py"], C_FACTORY):
        engine = factory.make(0)  # type: ignore[operator]
        engine.add_service(ServiceSpec(key, "rr"))
        with pytest.raises(EngineError) as info:
            engine.add_service(ServiceSpec(key, "rr", persistent=300))
        assert info.value.errno_name == "EEXIST", factory.id
