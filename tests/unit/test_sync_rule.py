"""The sync master's sending rule (native/src/sync.c lb_sync_needed, lb/sync/rule.py) against kernel
IPVS's ip_vs_sync_conn_needed (net/netfilter/ipvs/ip_vs_sync.c), restated below from the kernel
source in this file's own words, then checked case by case, on random packet sequences, and per
packet through the C engine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, raw

from lb import consts as C
from lb._ffi import ffi, lib
from lb.daemon import parse_args
from lb.director import Director
from lb.engine import FwdState
from lb.fastpath import CEngine
from lb.sync import records
from lb.sync.rule import SyncRule, SyncRuleError

TCP_P, UDP_P = 6, 17
ES, SYN_RECV, FIN_WAIT, CLOSE_WAIT, TIME_WAIT, CLOSE, LAST_ACK = (
    C.LB_S_ESTABLISHED, C.LB_S_SYN_RECV, C.LB_S_FIN_WAIT, C.LB_S_CLOSE_WAIT, C.LB_S_TIME_WAIT, C.LB_S_CLOSE,
    C.LB_S_LAST_ACK)


# ---------------------------------------------------------------- the kernel's rule, restated

@dataclass
class Kept:
    """What the kernel keeps per connection for this: the expiry the last record announced (its two
    low bits: retries used) and the state last sent."""

    announced: int
    last_state: int = 0


def kernel_says_send(rule: SyncRule, kept: Kept, *, proto: int, state: int, template: bool, under_template: bool,
                     count: int, timeout: int, now: int) -> bool:
    """May the packet that brought the entry's count to `count` send it? (all times in ms)

    1. What may be sent at all: a template always, but nothing at all controlled by a template in
       persist mode; TCP only in ESTABLISHED, FIN_WAIT, CLOSE, CLOSE_WAIT, TIME_WAIT; a TCP entry
       whose state differs from the one last sent, and is not ESTABLISHED, goes right away.
    2. With a refresh period R: if the expiry announced now, (now + timeout) with its two low bits
       cleared, is within min(R, max(timeout / 2, 10 s)) of the one last announced, the entry stays
       back, unless fewer than `retries` retries were used and R / 8 has passed since that last
       announcement (its expiry less the timeout): then it goes as one more retry.
    3. The packet count: with a period P, a connection (not a template) goes only when count mod P
       is the threshold; with no period and no refresh period, only when count equals it.
    The count is a C int: past 2^31 it goes negative, and C's remainder keeps the sign."""
    nxt = (now + timeout) & ~3
    if template:
        pass
    elif rule.persist_mode and under_template:
        return False
    elif proto == TCP_P:
        if state not in (ES, FIN_WAIT, CLOSE, CLOSE_WAIT, TIME_WAIT):
            return False
        if state != kept.last_state and state != ES:
            kept.last_state, kept.announced = state, nxt
            return True
    refresh = rule.refresh_period_s * 1000
    if refresh:
        if abs(nxt - kept.announced) < min(refresh, max(timeout // 2, 10_000)):
            used = kept.announced & 3
            if used >= rule.retries or now < kept.announced - timeout + refresh // 8:
                return False
            nxt |= used + 1
    signed = count - (1 << 32) if count >= 1 << 31 else count
    remainder = abs(signed) % rule.period * (1 if signed >= 0 else -1) if rule.period else 0
    if rule.period:
        if not template and remainder != rule.threshold:
            return False
    elif not refresh and signed != rule.threshold:
        return False
    kept.last_state, kept.announced = state, nxt
    return True


def c_says_send(rule: SyncRule, state_c: object, *, proto: int, state: int, template: bool, under_template: bool,
                count: int, timeout: int, now: int) -> bool:
    return bool(lib.lb_sync_needed(rule.to_c(), state_c, proto, state, C.LB_CONN_F_TEMPLATE if template else 0,
                                   int(under_template), count, timeout, now))


def _both(rule: SyncRule, steps: list[dict[str, int]], created: int = 0, **fixed: int) -> list[bool]:
    """Run `steps` (packets: keyword arguments of kernel_says_send) through the restated rule and
    the C one from the same start (an entry created at `created`); both must agree at each step."""
    kept = Kept(created & ~3)
    cst = ffi.new("struct lb_sync_state *")
    cst.sync_end_ms = created & ~3
    out = []
    for step in steps:
        args: dict[str, int] = {"proto": TCP_P, "state": ES, "template": False, "under_template": False,
                                "timeout": 900_000, **fixed, **step}
        want = kernel_says_send(rule, kept, **args)  # type: ignore[arg-type]
        assert c_says_send(rule, cst, **args) == want, (rule, step)  # type: ignore[arg-type]
        out.append(want)
    return out


def _sent_at(rule: SyncRule, n: int, **fixed: int) -> list[int]:
    """The packet numbers (1..n, one a second) that send the entry."""
    sent = _both(rule, [{"count": i, "now": 1000 * i} for i in range(1, n + 1)], **fixed)
    return [i + 1 for i, s in enumerate(sent) if s]


# ---------------------------------------------------------------- the decision table

DEFAULT = SyncRule()


@pytest.mark.parametrize(("rule", "fixed", "expected"), [
    # kernel defaults (3 50, no refresh period): the 3rd packet and every 50th after
    (DEFAULT, {}, [3, 53, 103, 153]),
    (DEFAULT, {"proto": UDP_P, "state": C.LB_S_UDP}, [3, 53, 103, 153]),
    # states the kernel never syncs
    (DEFAULT, {"state": SYN_RECV}, []),
    (DEFAULT, {"state": LAST_ACK}, []),
    # templates skip the packet test while there is a period: every packet of their connections
    (DEFAULT, {"template": True, "proto": TCP_P, "state": C.LB_S_NONE}, list(range(1, 201))),
    # threshold 0: the 50th, 100th, ...
    (SyncRule(0, 50), {}, [50, 100, 150, 200]),
    # period 0 (and no refresh period): once, on the threshold's packet; templates too
    (SyncRule(3, 0), {}, [3]),
    (SyncRule(3, 0), {"template": True, "state": C.LB_S_NONE}, [3]),
    (SyncRule(0, 0), {}, []),  # a count never 0 after a packet
    # threshold 49 period 50: the last packet of each period
    (SyncRule(49, 50), {}, [49, 99, 149, 199]),
    # persist mode: a connection under a template is not sent; one without is
    (SyncRule(persist_mode=1), {"under_template": True}, []),
    (SyncRule(persist_mode=1), {}, [3, 53, 103, 153]),
    (SyncRule(persist_mode=1), {"template": True, "under_template": True, "state": C.LB_S_NONE},
     list(range(1, 201))),
    # a refresh period alone (period 0): the time rule, min(60 s, 450 s) between sends
    (SyncRule(3, 0, refresh_period_s=60), {}, [1, 61, 121, 181]),
    # the time floor: min(60 s, max(timeout / 2 = 5 s, 10 s)) = 10 s
    (SyncRule(3, 0, refresh_period_s=60), {"timeout": 10_000, "proto": UDP_P, "state": C.LB_S_UDP},
     [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 101, 111, 121, 131, 141, 151, 161, 171, 181, 191]),
    # both rules at once: 60 s apart, and only on a packet where count % 50 == 3 (53 is too early)
    (SyncRule(3, 50, refresh_period_s=60), {}, [3, 103]),
    # retries: an unchanged entry is sent again up to 2 times, refresh / 8 = 7.5 s apart; the next
    # full send is 60 s after the last retry (its announced expiry is the reference)
    (SyncRule(3, 0, refresh_period_s=60, retries=2), {}, [1, 9, 17, 78, 86, 94, 155, 163, 171]),
])
def test_decision_table(rule: SyncRule, fixed: dict[str, int], expected: list[int]) -> None:
    assert _sent_at(rule, 200, **fixed) == expected


def test_a_new_closing_state_goes_at_once_and_established_waits_for_the_count() -> None:
    steps = [
        {"count": 1, "state": SYN_RECV, "now": 1},
        {"count": 2, "state": ES, "now": 2},         # ESTABLISHED is a change, but waits for the count
        {"count": 3, "state": ES, "now": 3},         # the 3rd packet
        {"count": 4, "state": ES, "now": 4},
        {"count": 5, "state": CLOSE_WAIT, "now": 5},  # a new closing state: at once
        {"count": 6, "state": CLOSE_WAIT, "now": 6},  # unchanged: the count again
        {"count": 7, "state": TIME_WAIT, "now": 7},   # (client FIN after the server's) another change
        {"count": 8, "state": LAST_ACK, "now": 8},    # never synced
        {"count": 9, "state": CLOSE, "now": 9},
        {"count": 53, "state": CLOSE, "now": 10},
    ]
    assert _both(DEFAULT, steps) == [False, False, True, False, True, False, True, False, True, True]


def test_a_change_not_sent_stays_pending_until_a_packet_sends_it() -> None:
    """The state last sent moves only when the entry is sent: an ESTABLISHED entry seen first at
    packet 60 (after a state the kernel does not sync) goes at packet 103, not 60."""
    steps = [{"count": 60, "state": ES, "now": 1}, {"count": 61, "state": FIN_WAIT, "now": 2},
             {"count": 62, "state": FIN_WAIT, "now": 3}]
    assert _both(DEFAULT, steps) == [False, True, False]


def test_the_count_wraps_as_a_c_int() -> None:
    counts = [(1 << 31) + 3, (1 << 31) + 48, (1 << 32) - 47, (1 << 32) + 3 - (1 << 32)]
    _both(DEFAULT, [{"count": c & 0xFFFFFFFF, "now": i} for i, c in enumerate(counts)])


@settings(max_examples=300, deadline=None)
@given(
    threshold=st.integers(0, 6), period=st.sampled_from([0, 1, 2, 5, 50]), refresh=st.sampled_from([0, 1, 8, 60]),
    retries=st.integers(0, 3), persist=st.integers(0, 1), template=st.booleans(), under=st.booleans(),
    proto=st.sampled_from([TCP_P, UDP_P]),
    steps=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 20_000), st.sampled_from([10_000, 60_000, 900_000])),
                   max_size=40),
)
def test_random_sequences_agree_with_the_kernels_rule(threshold: int, period: int, refresh: int, retries: int,
                                                      persist: int, template: bool, under: bool, proto: int,
                                                      steps: list[tuple[int, int, int]]) -> None:
    if period and threshold >= period:
        threshold = period - 1
    rule = SyncRule(threshold, period, refresh, retries, persist)
    now = 5000
    seq = []
    for count, (state, dt, timeout) in enumerate(steps, start=1):
        now += dt
        seq.append({"count": count, "state": state, "now": now, "timeout": timeout})
    _both(rule, seq, created=5000, proto=proto, template=int(template), under_template=int(under))


# ---------------------------------------------------------------- the knobs

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"threshold": 50, "period": 50}, "less than the period"),
    ({"threshold": 60, "period": 50}, "less than the period"),
    ({"threshold": -1}, ">= 0"),
    ({"period": -1, "threshold": 0}, ">= 0"),
    ({"retries": 4}, "0..3"),
    ({"retries": -1}, "0..3"),
    ({"refresh_period_s": -1}, "seconds"),
    ({"persist_mode": 2}, "0 or 1"),
])
def test_values_the_kernel_refuses_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(SyncRuleError, match=message):
        SyncRule(**kwargs)


@pytest.mark.parametrize("fields", [
    {"threshold": 50, "period": 50}, {"threshold": 60, "period": 50}, {"threshold": -1, "period": 50},
    {"threshold": 0, "period": -1}, {"threshold": 3, "period": 50, "retries": 4},
    {"threshold": 3, "period": 50, "persist_mode": 2},
    {"threshold": 3, "period": 50, "refresh_period_ms": C.LB_SYNC_REFRESH_PERIOD_MS_MAX + 1},
])
def test_the_core_refuses_them_too(fields: dict[str, int]) -> None:
    conf = ffi.new("struct lb_sync_conf *", fields)
    assert lib.lb_sync_conf_check(conf) == C.LB_EINVAL
    engine = CEngine(conn_max=64)
    assert lib.lb_sync_master_set(engine.handle, conf, 1) == C.LB_EINVAL


def test_values_the_kernel_takes() -> None:
    for rule in (SyncRule(), SyncRule(0, 0), SyncRule(7, 0), SyncRule(0, 1), SyncRule(3, 50, 3600, 3, 1)):
        assert lib.lb_sync_conf_check(rule.to_c()) == C.LB_OK
    assert SyncRule().describe() == ("sync_threshold = 3 50, sync_refresh_period = 0, sync_retries = 0, "
                                     "sync_persist_mode = 0")


def test_lbd_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args([]).sync_rule == SyncRule()
    args = parse_args(["--sync-threshold", "0", "0", "--sync-refresh-period", "120", "--sync-retries", "3",
                       "--sync-persist-mode", "1"])
    assert args.sync_rule == SyncRule(0, 0, 120, 3, 1)
    for bad, message in ((["--sync-threshold", "5", "2"], "threshold must be less than the period"),
                         (["--sync-retries", "9"], "sync_retries 9: must be 0..3"),
                         (["--sync-threshold", "3"], "expected 2 arguments")):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(bad)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- per packet, through the C engine

VIP = "10.0.0.100"


def _director(proto: str = "tcp", persistent: int | None = None, rule: SyncRule | None = DEFAULT) -> Director:
    svc = {"proto": proto, "addr": VIP, "port": 80}
    d = Director(CEngine(conn_max=256), rules=None, resolver=None)
    d.handle("add_service", {**svc, "sched": "rr", **({"persistent": persistent} if persistent else {})})
    d.handle("add_dest", {"service": svc, "dest": {"addr": "10.0.0.11", "port": 80, "fwd": "route", "weight": 1}})
    d.engine.set_fwd(d.state.services[next(iter(d.state.services))].spec.key, "10.0.0.11", 80,
                     FwdState(ifindex=5, dst_mac=b"\x02\0\0\0\0\x01", src_mac=b"\x02" * 6))
    d.engine.sync_master_set(rule)
    return d


def _chosen(d: Director, now: int) -> list[tuple[int, bool]]:
    """(client port, template?) of the entries the core chose since the last look."""
    changes = d.engine.dump_sync_changes_raw(now)
    assert changes is not None
    return [(e.cport, bool(e.flags & C.LB_CONN_F_TEMPLATE)) for e in records.entries(changes)
            if e.flags & C.LB_CONN_F_SYNC_WANT]


def test_the_engine_chooses_the_3rd_packet_and_every_50th_after() -> None:
    d = _director()
    sent_at = []
    for n in range(1, 161):
        flags = {1: "S", 2: "A"}.get(n, "PA")
        d.engine.process(raw(IP(src="10.9.0.5", dst=VIP) / TCP(sport=1000, dport=80, flags=flags)), 1000 + n)
        if _chosen(d, 1000 + n):
            sent_at.append(n)
    assert sent_at == [3, 53, 103, 153]
    # A closing state from the client goes with its packet.
    d.engine.process(raw(IP(src="10.9.0.5", dst=VIP) / TCP(sport=1000, dport=80, flags="FA")), 2000)
    assert _chosen(d, 2000) == [(1000, False)]


def test_the_engine_chooses_udp_and_templates_as_the_kernel() -> None:
    d = _director("udp", persistent=300)
    chosen = []
    for n in range(1, 5):
        d.engine.process(raw(IP(src="10.9.0.6", dst=VIP) / UDP(sport=5000, dport=80)), 1000 + n)
        chosen.append(sorted(_chosen(d, 1000 + n)))
    # The template goes with every packet (a sync period is set); the connection on its 3rd.
    assert chosen == [[(0, True)], [(0, True)], [(0, True), (5000, False)], [(0, True)]]


def test_the_engine_chooses_nothing_with_the_master_off_and_restored_entries_count_from_the_threshold() -> None:
    d = _director(rule=None)
    for n in range(1, 6):
        d.engine.process(raw(IP(src="10.9.0.7", dst=VIP) / TCP(sport=7, dport=80, flags="S" if n == 1 else "A")), n)
    assert _chosen(d, 10) == []
    # Entries a backup installs start at the threshold (ip_vs_proc_conn): 50 packets to the next send.
    backup = _director()
    blob = d.engine.dump_connections_raw(10)
    assert blob is not None
    assert backup.engine.restore_connections_raw(blob, 10) == {"restored": 1}
    backup.engine.dump_sync_changes_raw(10)
    sent_at = []
    for n in range(1, 61):
        backup.engine.process(raw(IP(src="10.9.0.7", dst=VIP) / TCP(sport=7, dport=80, flags="PA")), 10 + n)
        if _chosen(backup, 10 + n):
            sent_at.append(n)
    assert sent_at == [50]


def test_a_master_applies_lbds_rule_logs_it_and_a_stopped_one_chooses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    d = _director(rule=None)
    d.sync.rule = SyncRule(4, 10)  # lbd --sync-threshold 4 10

    def packet(n: int) -> None:
        flags = {1: "S", 2: "A"}.get(n, "PA")
        d.engine.process(raw(IP(src="10.9.0.9", dst=VIP) / TCP(sport=9, dport=80, flags=flags)), 1000 + n)

    async def run() -> list[int]:
        with caplog.at_level(logging.INFO, logger="lbd"):
            d.handle("start_daemon", {"state": "master", "mcast_ifn": "lo", "bulk_period": 0})
        (daemon,) = d.handle("get_daemon", {})["daemons"]
        assert (daemon["sync_threshold"], daemon["sync_period"]) == (4, 10)
        chosen = []
        for n in range(1, 25):
            packet(n)
            if _chosen(d, 1000 + n):
                chosen.append(n)
        d.handle("stop_daemon", {"state": "master"})
        return chosen

    assert asyncio.run(run()) == [4, 14, 24]
    assert ("sync_threshold = 4 10, sync_refresh_period = 0, sync_retries = 0, sync_persist_mode = 0"
            in caplog.text), caplog.text
    for n in range(25, 40):  # the master stopped: the core chooses nothing any more
        packet(n)
    assert _chosen(d, 2000) == []
