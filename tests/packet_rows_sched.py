"""Packet-table rows (tests/packet_table.py's format) of scheduling: rr and wlc (order, weights,
weight 0), OVERLOAD and the thresholds, the list-scanning schedulers (wrr, lc, sed, nq, fo, ovf),
the locality schedulers (lblc, lblcr) and twos (seeded: the kernel model of tests/oracles fed the
engines' draws). The hashing schedulers (sh, dh, mh) are tests/packet_rows_hashing.py's.
"""

from __future__ import annotations

import functools

import packet_table as t
from packet_table import (
    CLIENT1,
    HASH_SEED,
    RS1,
    RS2,
    RS3,
    T_ES,
    T_SR,
    T_TW,
    TCP80,
    VIP,
    ConfigStep,
    ConnExpect,
    DestExpect,
    DestSetup,
    PacketStep,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
    Step,
)


def scheduling_rows() -> list[Row]:
    rows = []
    # rr over three destinations added RS1, RS2, RS3: kernel list RS3, RS2, RS1.
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2), DestSetup(RS3))),))
    syns = [t.tcp(sport=41000 + i) for i in range(4)]
    order = [RS3, RS2, RS1, RS3]
    size = t.ip_total_length(syns[0])
    rows.append(Row(
        "rr-order", "rr starts at the most recently added destination and walks the list, wrapping around",
        setup, tuple(t.fwd(p, i, d) for i, (p, d) in enumerate(zip(syns, order, strict=True))),
        (DestExpect(TCP80, RS3, active=2, conns=2, inpkts=2, inbytes=2 * size),
         DestExpect(TCP80, RS2, active=1, conns=1, inpkts=1, inbytes=size),
         DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size)),
        (ServiceExpect(TCP80, 4, 4, 4 * size),),
        tuple(t.conn("SYN_RECV", T_SR - (3 - i), d, cport=41000 + i) for i, d in enumerate(order)), check_ms=3,
        tags=("sched",)))

    # wlc with RS1 weight 1, RS2 weight 3 (list RS2, RS1): RS2, RS1, RS2, RS2, RS2, RS1 (every entry in
    # SYN_RECV, active: overhead 256 per entry).
    setup = Setup((ServiceSetup(TCP80, "wlc", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=3))),))
    syns = [t.tcp(sport=42000 + i) for i in range(6)]
    order = [RS2, RS1, RS2, RS2, RS2, RS1]
    rows.append(Row(
        "wlc-weights", "wlc: overhead/weight by cross-multiplication, ties keep the earlier destination",
        setup, tuple(t.fwd(p, 0, d) for p, d in zip(syns, order, strict=True)),
        (DestExpect(TCP80, RS2, active=4, conns=4, inpkts=4, inbytes=4 * size),
         DestExpect(TCP80, RS1, active=2, conns=2, inpkts=2, inbytes=2 * size)),
        (ServiceExpect(TCP80, 6, 6, 6 * size),),
        tuple(t.conn("SYN_RECV", T_SR, d, cport=42000 + i) for i, d in enumerate(order)), check_ms=0,
        tags=("sched",)))

    # wlc: an active connection weighs 256 inactive ones. RS2 gets the first SYN and its ACK (ESTABLISHED,
    # active); RS1 the second SYN (SYN_RECV: active too), whose FIN makes it TIME_WAIT (inactive); the third
    # SYN then goes to RS1 (overhead 1 against RS2's 256).
    setup = Setup((ServiceSetup(TCP80, "wlc", (DestSetup(RS1), DestSetup(RS2))),))
    s1, a1 = t.tcp(sport=43000), t.tcp(sport=43000, flags="A", seq=1001, ack=1)
    s2, f2, s3 = t.tcp(sport=43001), t.tcp(sport=43001, flags="FA", seq=1001, ack=1), t.tcp(sport=43002)
    rows.append(Row(
        "wlc-active-weighs-more", "wlc: RS2 with one active entry loses to RS1 with one inactive entry",
        setup, (t.fwd(s1, 0, RS2), t.fwd(a1, 1, RS2), t.fwd(s2, 2, RS1), t.fwd(f2, 3, RS1), t.fwd(s3, 4, RS1)),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),
         DestExpect(TCP80, RS1, active=1, inactive=1, conns=2, inpkts=3, inbytes=3 * size)),
        (ServiceExpect(TCP80, 3, 5, 5 * size),),
        (t.conn("ESTABLISHED", T_ES - 3, RS2, cport=43000), t.conn("TIME_WAIT", T_TW - 1, RS1, cport=43001),
         t.conn("SYN_RECV", T_SR, RS1, cport=43002)), check_ms=4, tags=("sched",)))

    # weight 0: never chosen; alone, it means no destination.
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2, weight=0))),))
    syns = [t.tcp(sport=44000 + i) for i in range(3)]
    rows.append(Row(
        "weight0-skipped", "rr never picks a weight-0 destination (RS2 is first in the list)",
        setup, tuple(t.fwd(p, i, RS1) for i, p in enumerate(syns)),
        (DestExpect(TCP80, RS2), DestExpect(TCP80, RS1, active=3, conns=3, inpkts=3, inbytes=3 * size)),
        (ServiceExpect(TCP80, 3, 3, 3 * size),),
        tuple(t.conn("SYN_RECV", T_SR - (2 - i), RS1, cport=44000 + i) for i in range(3)), check_ms=2,
        tags=("sched", "weight0")))
    for sched in ("rr", "wlc"):
        setup = Setup((ServiceSetup(TCP80, sched, (DestSetup(RS1, weight=0),)),))
        syn = t.tcp(sport=44100)
        dests, services = t.idle_expectations(setup)
        rows.append(Row(
            f"weight0-only-{sched}", f"{sched}: the only destination has weight 0 -> no destination, ICMP answer",
            setup, (t.answer(syn, 0),), dests, services, (), tags=("sched", "weight0", "no-dest")))
    return rows


def overload_rows() -> list[Row]:
    """OVERLOAD as Debian's 6.1.192 evaluates it (__ip_vs_update_dest only when a threshold changes,
    ip_vs_bind_dest when totalconns reaches u, ip_vs_unbind_dest when it leaves l_threshold_val).
    rr over RS1, RS2 (list RS2, RS1); every entry stays in SYN_RECV (active)."""
    rows = []
    syns = [t.tcp(sport=46000 + i) for i in range(5)]
    size = t.ip_total_length(syns[0])

    def row(row_id: str, description: str, setup: Setup, edit: DestSetup, order: list[str]) -> Row:
        steps: tuple[Step, ...] = (*(t.fwd(p, 0, d) for p, d in zip(syns[:3], order[:3], strict=True)),
                 ConfigStep("edit_dest", TCP80, edit, 0),
                 *(t.fwd(p, 0, d) for p, d in zip(syns[3:], order[3:], strict=True)))
        n2, n1 = order.count(RS2), order.count(RS1)
        return Row(row_id, description, setup, steps,
                   (DestExpect(TCP80, RS2, active=n2, conns=n2, inpkts=n2, inbytes=n2 * size),
                    DestExpect(TCP80, RS1, active=n1, conns=n1, inpkts=n1, inbytes=n1 * size)),
                   (ServiceExpect(TCP80, 5, 5, 5 * size),),
                   tuple(t.conn("SYN_RECV", T_SR, d, cport=46000 + i) for i, d in enumerate(order)),
                   tags=("sched", "overload"))

    plain = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    rows.append(row(
        "overload-threshold-lowered", "-e -x 2 on RS2 holding 2 connections flags it at once (the edit "
        "re-evaluates OVERLOAD), so rr skips it from then on", plain, DestSetup(RS2, u_threshold=2),
        [RS2, RS1, RS2, RS1, RS1]))
    capped = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2, u_threshold=2))),))
    rows.append(row(
        "overload-raised-threshold-between", "RS2 -x 2 is flagged by its 2nd connection; raising it to -x 4 -y 2 "
        "keeps the flag while it holds >= 2 (the lower threshold)", capped,
        DestSetup(RS2, u_threshold=4, l_threshold=2), [RS2, RS1, RS2, RS1, RS1]))
    rows.append(row(
        "overload-raised-threshold-clears", "raising RS2's -x 2 to -x 4 (lower value 4 - 4/4 = 3) with 2 "
        "connections clears the flag", capped, DestSetup(RS2, u_threshold=4), [RS2, RS1, RS2, RS1, RS2]))
    rows.append(row(
        "overload-weight-edit-keeps", "-e changing only RS2's weight does not re-evaluate OVERLOAD", capped,
        DestSetup(RS2, weight=3, u_threshold=2), [RS2, RS1, RS2, RS1, RS1]))
    return rows


def list_sched_rows() -> list[Row]:
    """The list-scanning schedulers (wrr, lc, sed, nq, fo, ovf): one row each, their order over
    fresh SYNs (every entry stays in SYN_RECV: active). The thorough checks are the lockstep
    tests against tests/oracles (tests/unit/test_sched_oracle.py, test_sched_list.py)."""
    rows = []

    def row(row_id: str, description: str, sched: str, dests: tuple[DestSetup, ...], order: list[str]) -> Row:
        syns = [t.tcp(sport=47000 + i) for i in range(len(order))]
        size = t.ip_total_length(syns[0])
        counts = {d.addr: order.count(d.addr) for d in dests}
        return Row(row_id, description, Setup((ServiceSetup(TCP80, sched, dests),)),
                   tuple(t.fwd(p, 0, d) for p, d in zip(syns, order, strict=True)),
                   tuple(DestExpect(TCP80, d.addr, active=counts[d.addr], conns=counts[d.addr],
                                    inpkts=counts[d.addr], inbytes=counts[d.addr] * size) for d in reversed(dests)),
                   (ServiceExpect(TCP80, len(order), len(order), len(order) * size),),
                   tuple(t.conn("SYN_RECV", T_SR, d, cport=47000 + i) for i, d in enumerate(order)),
                   tags=("sched", sched))

    rows.append(row(
        "wrr-432", "wrr over RS1 4, RS2 3, RS3 2 added last to first: each add leaves cw at 1, so the first round "
        "takes all three, then cw restarts at 4", "wrr",
        (DestSetup(RS3, weight=2), DestSetup(RS2, weight=3), DestSetup(RS1, weight=4)),
        [RS1, RS2, RS3, RS1, RS1, RS2, RS1, RS2, RS3]))
    rows.append(row(
        "lc-ignores-weights", "lc over RS1 1, RS2 5 (list RS2, RS1): the smaller overhead wins whatever the weights, "
        "the list head on a tie", "lc", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=5)), [RS2, RS1, RS2, RS1]))
    rows.append(row(
        "sed-active-plus-one", "sed over RS1 1, RS2 3 (list RS2, RS1): (active + 1) / weight, the earlier on a tie",
        "sed", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=3)), [RS2, RS2, RS2, RS1, RS2]))
    rows.append(row(
        "nq-idle-first", "nq over RS1 1, RS2 3 (list RS2, RS1): an idle server first whatever its weight, then "
        "(active + 1) / weight", "nq", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=3)), [RS2, RS1, RS2, RS2]))
    rows.append(row(
        "fo-heaviest", "fo over RS1 2, RS2 5, RS3 3: everything to the heaviest, RS2", "fo",
        (DestSetup(RS1, weight=2), DestSetup(RS2, weight=5), DestSetup(RS3, weight=3)), [RS2, RS2, RS2]))
    rows.append(row(
        "ovf-overflow", "ovf over RS1 1, RS2 2: RS2 until its active connections exceed its weight (3), then RS1",
        "ovf", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=2)), [RS2, RS2, RS2, RS1, RS1]))
    return rows


@functools.cache
def _twos_expected(weights: tuple[int, ...], flows: int) -> list[str]:
    """twos' choices for `flows` held connections to TCP80 (RS1, RS2, ... of these weights, added in
    order): tests/oracles' kernel model fed the seeded draws of tests/twos_draws.py."""
    from oracles import PacketInfo, Service
    from oracles.sched_twos import TwosScheduler
    from twos_draws import Draws

    svc = Service(TwosScheduler(rng=Draws(HASH_SEED, *TCP80).below))
    rss = (RS1, RS2, RS3)
    for rs, weight in zip(rss, weights, strict=False):
        svc.add_dest(rs, 80, weight)
    chosen = []
    for i in range(flows):
        flow = svc.new_flow(PacketInfo.of(CLIENT1, VIP, 46000 + i, 80))
        assert flow is not None
        chosen.append(str(flow.dest.addr))
    return chosen


def locality_rows() -> list[Row]:
    """lblc, lblcr (the cache keyed by the destination address: through the packet path, the VIP's own
    entry) and twos (seeded: every engine is made with hash_seed HASH_SEED)."""
    rows = []
    size = t.ip_total_length(t.tcp())
    day = 86_400_000  # lblc/lblcr's expiration (24 h) in ms; their timer runs every 60 s from the first use

    def held(order: list[str], sport0: int, check_ms: int = 0) -> tuple[tuple[PacketStep, ...], tuple[ConnExpect, ...]]:
        steps = tuple(t.fwd(t.tcp(sport=sport0 + i), 0, d) for i, d in enumerate(order))
        conns = tuple(t.conn("SYN_RECV", T_SR - check_ms, d, cport=sport0 + i) for i, d in enumerate(order))
        return steps, conns

    def counts(order: list[str], rss: tuple[str, ...]) -> tuple[DestExpect, ...]:
        return tuple(DestExpect(TCP80, rs, active=order.count(rs), conns=order.count(rs), inpkts=order.count(rs),
                                inbytes=order.count(rs) * size) for rs in rss)

    setup2 = {sched: Setup((ServiceSetup(TCP80, sched, (DestSetup(RS1), DestSetup(RS2))),)) for sched in ("lblc", "lblcr")}
    # lblc, weights 1/1 (list RS2, RS1), every SYN's entry active (SYN_RECV): 1, 2 RS2 (a miss, then
    # 1 active is not above weight 1); 3: RS2 has 2 > 1 while RS1 has 0 * 2 < 1: overloaded, the
    # entry moves to wlc's RS1; 4-6: RS1, even at 3 active, since nobody is under half its weight.
    order = [RS2, RS2, RS1, RS1, RS1, RS1]
    steps, conns = held(order, 47000)
    rows.append(Row(
        "lblc-moves-off-busy-server", "lblc keeps the VIP's entry until its server has more active connections "
        "than its weight while another is under half its own, then moves it to the wlc choice",
        setup2["lblc"], steps, counts(order, (RS2, RS1)), (ServiceExpect(TCP80, 6, 6, 6 * size),), conns,
        tags=("sched", "locality")))
    # lblcr, same: 3 adds RS1 to the set {RS1, RS2}; then the set's least loaded member: 4, 5 RS1
    # (257*1 < 514, then a tie: the newest member first), 6 RS2 (771 > 514).
    order = [RS2, RS2, RS1, RS1, RS1, RS2]
    steps, conns = held(order, 47100)
    rows.append(Row(
        "lblcr-set-grows", "lblcr adds the wlc choice to the VIP's set when its least loaded member is overloaded, "
        "then picks the least loaded member of the set",
        setup2["lblcr"], steps, counts(order, (RS2, RS1)), (ServiceExpect(TCP80, 6, 6, 6 * size),), conns,
        tags=("sched", "locality")))
    # lblc's entry (RS1, last used at 0) and the half-hourly full check: the run at exactly 24 h drops
    # it (idle >= the expiration) and the next SYN misses (wlc: both idle, RS2 first); just before it,
    # the entry still answers RS1.
    for row_id, at, dest, what in (("lblc-entry-expires-after-24h", day, RS2, "dropped by the full check at 24 h"),
                                   ("lblc-entry-kept-before-24h", day - 4, RS1, "still there 4 ms before it")):
        order = [RS2, RS2, RS1, dest]  # the first three long expired at `at` (SYN_RECV: 60 s)
        steps, _ = held(order[:3], 47200)
        rows.append(Row(
            row_id, f"lblc: an entry unused for 24 h is {what} (expire runs the timer)",
            setup2["lblc"], steps + (ConfigStep("expire", TCP80, None, at), t.fwd(t.tcp(sport=47203), at, dest)),
            tuple(DestExpect(TCP80, rs, active=int(rs == dest), conns=order.count(rs), inpkts=order.count(rs),
                             inbytes=order.count(rs) * size) for rs in (RS2, RS1)),
            (ServiceExpect(TCP80, 4, 4, 4 * size),), (t.conn("SYN_RECV", T_SR, dest, cport=47203),), check_ms=at,
            tags=("sched", "locality", "timer")))
    # twos, weights 1/2/3, seeded: the kernel model fed the same draws.
    order = _twos_expected((1, 2, 3), 8)
    setup = Setup((ServiceSetup(TCP80, "twos", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=2),
                                                DestSetup(RS3, weight=3))),))
    steps, conns = held(order, 46000)
    rows.append(Row(
        "twos-seeded", "twos with hash_seed 1: the choices of the kernel's ip_vs_twos.c fed the engines' seeded "
        "draws (two weighted draws, the less loaded by overhead/weight wins)",
        setup, steps, counts(order, (RS3, RS2, RS1)), (ServiceExpect(TCP80, 8, 8, 8 * size),), conns,
        tags=("sched", "twos")))
    return rows
