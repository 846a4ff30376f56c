"""lb.overload's control loop and lb.nftguard's messages without privileges: when the guard arms,
how its rate follows what lbd takes, when it goes, what it counts; the netlink rule it writes.
tests/netns/test_overload_guard.py writes the chain into a real kernel and reads it back with nft."""

from __future__ import annotations

import asyncio
import errno
import os
import struct

import pytest

from lb import nfnlbatch as nb
from lb import nftguard as ng
from lb import overload as ov
from lb.nftguard import Limit


class FakeWriter:
    """The steering's guard interface: what was written, in order; a counter the test sets."""

    table = "lbd-q0"

    def __init__(self) -> None:
        self.guard: Limit | None = None
        self.writes: list[Limit | None] = []
        self.counter: int | None = None
        self.fail: OSError | None = None

    def write_guard(self, limit: Limit | None) -> None:
        if self.fail is not None:
            raise self.fail
        self.writes.append(limit)
        self.guard = limit

    def guard_dropped(self) -> int | None:
        return self.counter


class Queue:
    """Counts as lbd's queues report them, advanced per interval by a rate lbd takes and one dropped."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sample = ov.QueueSample(0, 0, 0)

    def advance(self, dt: float, taken_pps: float, dropped_pps: float = 0.0, per_batch: float = 8.0) -> None:
        self.now += dt
        taken = int(taken_pps * dt)
        self.sample = ov.QueueSample(self.sample.taken + taken, self.sample.dropped + int(dropped_pps * dt),
                                     self.sample.batches + int(taken / per_batch))


def guard(maxlen: int = 1024) -> tuple[ov.OverloadGuard, Queue, FakeWriter]:
    q, w = Queue(), FakeWriter()
    g = ov.OverloadGuard(lambda: q.sample, w, maxlen, clock=lambda: q.now)
    g.tick()  # the first sample: nothing to compare with yet
    return g, q, w


def run(g: ov.OverloadGuard, q: Queue, taken: float, dropped: float = 0.0, ticks: int = 1,
        per_batch: float | None = None) -> None:
    """`ticks` intervals; lbd's batches full while the queue overflows, half full otherwise (unless given)."""
    for _ in range(ticks):
        q.advance(g.period(), taken, dropped, per_batch or (64.0 if dropped else 8.0))
        g.tick()


def test_no_drops_no_guard_and_the_idle_period() -> None:
    g, q, w = guard()
    run(g, q, 50_000, ticks=10)
    assert w.writes == [] and g.limit is None and g.period() == ov.IDLE_TICK_S
    assert g.counters() == {"armed": 0, "rate_pps": 0, "dropped": 0, "episodes": 0, "armed_s": 0.0, "best_pps": 50_000,
                            "signals": 0, "signals_used": 0, "at": "lbd-q0"}


def test_a_burst_the_queue_could_not_hold_is_confirmed_over_a_short_tick_before_anything_is_written() -> None:
    g, q, w = guard()
    run(g, q, 50_000, dropped=1_000)
    assert w.writes == [] and g.period() == ov.ARMED_TICK_S  # watching
    run(g, q, 50_000)  # the short tick saw no overflow: it was a burst
    assert w.writes == [] and g.period() == ov.IDLE_TICK_S


def test_a_packet_threads_signal_starts_the_confirmation_at_once_and_it_arms_after_the_short_interval() -> None:
    g, q, w = guard()
    run(g, q, 80_000, ticks=3)  # best 80k, from whole-second intervals
    q.advance(0.6, 80_000, 20_000, 64.0)  # overloaded since the last poll; the poll is 0.4 s away
    assert g.signalled() is True and g.period() == ov.ARMED_TICK_S
    q.advance(ov.CONFIRM_TICK_S, 50_000, 80_000, 64.0)  # livelock: lbd takes less, the queue overflows
    g.tick()
    assert g.limit is not None and w.writes == [g.limit]
    assert g.limit.rate == pytest.approx(ov.BACKOFF * 80_000, rel=1e-3) and g.limit.burst == 1024
    assert g.best == pytest.approx(80_000, rel=1e-3)  # the confirming interval is too short to count for best
    assert g.signalled() is False  # armed: the armed ticks follow the load
    assert (g.counters()["signals"], g.counters()["signals_used"]) == (2, 1)


def test_a_signal_without_drops_after_it_arms_nothing_and_a_second_one_while_confirming_is_ignored() -> None:
    g, q, w = guard()
    run(g, q, 80_000, ticks=2)
    q.advance(0.3, 80_000, 0.0, 64.0)
    assert g.signalled() is True and g.signalled() is False  # already confirming
    q.advance(ov.CONFIRM_TICK_S, 90_000, 0.0, 64.0)  # full batches, but the queue held: not overload
    g.tick()
    assert w.writes == [] and g.limit is None and g.period() == ov.IDLE_TICK_S
    assert 80_000 <= g.best < 81_000  # the 90k of the short interval, averaged over a second


def test_the_drops_before_a_signal_do_not_count_in_its_interval() -> None:
    g, q, w = guard()
    run(g, q, 80_000, ticks=2)
    q.advance(0.5, 60_000, 40_000, 64.0)  # an overflow that ended before the signal's interval
    g.signalled()
    q.advance(ov.CONFIRM_TICK_S, 80_000, 0.0, 16.0)
    g.tick()
    assert w.writes == [] and g.limit is None


def test_run_ticks_on_the_grid_and_a_signal_moves_the_next_tick_to_the_confirmation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ov, "CONFIRM_TICK_S", 0.01)

    class Recorder:
        def __init__(self) -> None:
            self.ticks = 0
            self.signals = 0
            self.ticked = asyncio.Event()

        def period(self) -> float:
            return 3600.0  # the grid tick never comes within this test

        def signalled(self) -> bool:
            self.signals += 1
            return self.signals == 1

        def tick(self) -> None:
            self.ticks += 1
            self.ticked.set()

    async def scenario() -> tuple[int, int, bool]:
        rec = Recorder()
        rfd = os.eventfd(0, os.EFD_NONBLOCK)
        try:
            task = asyncio.ensure_future(ov.run(rec, [rfd]))  # type: ignore[arg-type]
            await asyncio.sleep(0)
            os.eventfd_write(rfd, 1)
            await asyncio.wait_for(rec.ticked.wait(), timeout=30.0)
            try:
                os.eventfd_read(rfd)
                cleared = False
            except BlockingIOError:
                cleared = True  # run() read the signal
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return rec.ticks, rec.signals, cleared
        finally:
            os.close(rfd)

    assert asyncio.run(scenario()) == (1, 1, True)


def test_best_is_what_lbd_sustains_over_a_second_not_a_quarter_seconds_spike() -> None:
    g, q, w = guard()
    run(g, q, 100_000, dropped=20_000, ticks=2)  # armed: quarter-second ticks from here
    assert g.limit is not None and g.period() == ov.ARMED_TICK_S
    run(g, q, 140_000, ticks=1)  # it drained a backlog, or the receive work left it the CPU a moment
    run(g, q, 100_000, ticks=3)
    assert 100_000 <= g.best <= 110_000


def test_a_few_drops_are_not_overload() -> None:
    g, q, w = guard()
    run(g, q, 50_000, dropped=ov.ARM_MIN_DROPS / ov.IDLE_TICK_S / 2, ticks=3)
    run(g, q, 1_000_000, dropped=5_000, ticks=3)  # 0.5 % of what lbd took
    assert w.writes == []


def test_overload_arms_at_the_best_lbd_has_taken_not_at_what_it_takes_under_livelock() -> None:
    g, q, w = guard()
    run(g, q, 80_000, ticks=4)  # the best lbd has done
    run(g, q, 40_000, dropped=100_000, ticks=2)  # livelock: it takes half of that
    assert g.limit is not None and g.limit.rate == pytest.approx(ov.BACKOFF * 80_000, rel=5e-3)  # best fades slowly
    assert g.limit.burst == 1024 and w.writes == [g.limit] and g.episodes == 1


def test_the_burst_is_the_queue_at_most_and_never_tiny() -> None:
    g, q, _ = guard(maxlen=16384)
    run(g, q, 100_000, dropped=50_000, ticks=2)
    assert g.limit is not None and g.limit.burst == g.limit.rate // 20
    g2, q2, _ = guard(maxlen=8)
    run(g2, q2, 2_000, dropped=1_000, ticks=2)
    assert g2.limit is not None and g2.limit.burst == ov.MIN_BURST


def test_an_overflowing_queue_lowers_the_rate_but_by_a_bounded_step() -> None:
    g, q, _ = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    assert g.limit is not None and g.limit.rate == 95_000
    run(g, q, 10_000, dropped=5_000)  # one interval in which lbd got little CPU
    assert g.limit.rate == int(ov.STEP_DOWN * 95_000)
    run(g, q, 70_000, dropped=5_000, ticks=4)  # it takes 70k: the rate settles under it
    assert g.limit.rate == int(ov.BACKOFF * 70_000)


def test_after_an_overflow_the_rate_holds_then_probes_up_slowly() -> None:
    g, q, w = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    run(g, q, 80_000, dropped=5_000, ticks=2)  # 95k -> 80.75k (a bounded step) -> 76k
    held = g.limit
    assert held is not None and held.rate == 76_000
    run(g, q, held.rate, ticks=ov.HOLD_TICKS, per_batch=24.0)  # busy, not saturated
    assert g.limit == held
    run(g, q, held.rate, per_batch=24.0)
    assert g.limit.rate == int(held.rate * ov.PROBE_UP)


def test_while_lbd_keeps_up_with_room_the_rate_probes_up_even_during_the_hold() -> None:
    g, q, w = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    run(g, q, 80_000, dropped=5_000, ticks=2)  # 95k -> 80.75k -> 76k, held
    assert g.limit is not None and g.limit.rate == 76_000
    run(g, q, 76_000, per_batch=10.0)  # the dip is over: lbd keeps up with room
    assert g.limit.rate == int(76_000 * ov.PROBE_UP)


def test_an_overflow_while_lbd_is_not_saturated_is_a_burst_and_changes_nothing() -> None:
    g, q, w = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    n = len(w.writes)
    run(g, q, 20_000, dropped=5_000, per_batch=10.0)
    assert len(w.writes) == n and g.limit is not None and g.limit.rate == 95_000


def test_while_lbd_mostly_waits_the_rate_rises_fast_even_after_an_overflow() -> None:
    g, q, _ = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    run(g, q, 50_000, dropped=5_000, ticks=6)  # settles at 47.5k, held
    assert g.limit is not None and g.limit.rate == 47_500
    run(g, q, 47_500, per_batch=1.5)
    assert g.limit.rate == int(47_500 * ov.PROBE_IDLE)
    run(g, q, g.limit.rate, per_batch=ov.FULL_BATCH)  # saturated, no overflow: at its capacity, the rate stays
    assert g.limit.rate == int(47_500 * ov.PROBE_IDLE)


def test_before_the_first_overflow_the_rate_rises_fast() -> None:
    g, q, _ = guard()
    run(g, q, 40_000, dropped=100_000, ticks=2)  # armed at 38k: no better figure known
    assert g.limit is not None and g.limit.rate == 38_000
    run(g, q, 38_000)  # lbd takes all the guard lets through and the queue holds
    assert g.limit.rate == int(38_000 * ov.PROBE_FAST)


def test_the_guard_goes_when_the_load_falls_below_its_rate() -> None:
    g, q, w = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    assert g.limit is not None
    run(g, q, 0.8 * g.limit.rate)
    assert g.limit is not None  # one quiet tick
    run(g, q, 0.8 * g.limit.rate)
    assert g.limit is None and w.writes[-1] is None and g.period() == ov.IDLE_TICK_S


def test_no_traffic_at_all_disarms_at_once() -> None:
    g, q, w = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    run(g, q, 0)
    assert g.limit is None and w.writes[-1] is None


def test_a_failed_arm_is_logged_and_retried_on_the_next_overflow(caplog: pytest.LogCaptureFixture) -> None:
    g, q, w = guard()
    w.fail = OSError(errno.EPERM, "not permitted")
    run(g, q, 100_000, dropped=100_000, ticks=2)
    assert g.limit is None and g.episodes == 0 and "could not be armed" in caplog.text
    w.fail = None
    run(g, q, 100_000, dropped=100_000, ticks=2)
    assert g.limit is not None and g.episodes == 1


def test_a_rate_within_two_percent_is_not_written_again_unless_the_guard_went_with_the_table() -> None:
    g, q, w = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    n = len(w.writes)
    run(g, q, 100_500, dropped=5_000)  # 0.95 * 100.5k: within 2 % of 95k
    assert len(w.writes) == n
    w.guard = None  # a sync re-created the table and could not restore it
    run(g, q, 100_500, dropped=5_000)
    assert len(w.writes) == n + 1 and w.guard == g.limit


def test_dropped_adds_up_over_counters_that_were_re_created() -> None:
    g, q, w = guard()
    assert g.dropped() == 0  # never armed: nothing read
    run(g, q, 100_000, dropped=100_000, ticks=2)
    w.counter = 500
    assert g.dropped() == 500
    w.counter = 800
    assert g.dropped() == 800
    w.counter = None  # the table went (and the counter with it)
    assert g.dropped() == 800
    w.counter = 30
    assert g.dropped() == 830


def test_stop_removes_the_guard_and_survives_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    g, q, w = guard()
    run(g, q, 100_000, dropped=100_000, ticks=2)
    g.stop()
    assert g.limit is None and w.writes[-1] is None
    w.fail = OSError(errno.ENOENT, "gone")
    g.stop()
    assert "removing the overload guard" in caplog.text


def test_queue_sample_sums_the_kernels_two_drop_causes() -> None:
    sample = ov.queue_sample(lambda: {"packets": 10, "kernel_queue_dropped": 3, "kernel_user_dropped": 4,
                                      "batches": 2})
    assert sample() == ov.QueueSample(10, 7, 2)
    assert ov.queue_sample(dict)() == ov.QueueSample(0, 0, 0)


# ---- lb.nftguard: the messages


def _expressions(body: bytes) -> list[str]:
    """The expression names of a NEWRULE's body, in order."""
    top = ng._attrs(body, 0, len(body))
    exprs = top[ng.NFTA_RULE_EXPRESSIONS]
    names, off = [], 0
    while off < len(exprs):
        length, _ = struct.unpack_from("=HH", exprs, off)
        elem = ng._attrs(exprs, off + 4, off + length)
        names.append(elem[ng.NFTA_EXPR_NAME].rstrip(b"\0").decode())
        off += (length + 3) & ~3
    return names


def test_arming_is_one_batch_chain_counter_flush_rule() -> None:
    reqs = ng.arm_requests("lbd-q2", Limit(80_000, 1024))
    assert [r.msg_type for r in reqs] == [ng.NFT_MSG_NEWCHAIN, ng.NFT_MSG_NEWOBJ, ng.NFT_MSG_DELRULE, ng.NFT_MSG_NEWRULE]
    chain = ng._attrs(reqs[0].body, 0, len(reqs[0].body))
    assert chain[ng.NFTA_CHAIN_TABLE] == b"lbd-q2\0" and chain[ng.NFTA_CHAIN_NAME] == b"guard\0"
    hook = ng._attrs(chain[ng.NFTA_CHAIN_HOOK], 0, len(chain[ng.NFTA_CHAIN_HOOK]))
    assert struct.unpack(">i", hook[ng.NFTA_HOOK_PRIORITY])[0] == -301
    assert struct.unpack(">I", hook[ng.NFTA_HOOK_HOOKNUM])[0] == ng.NF_INET_PRE_ROUTING
    assert reqs[1].flags & nb.NLM_F_CREATE and not reqs[1].flags & 0x200  # no NLM_F_EXCL: kept when there
    assert _expressions(reqs[3].body) == ["payload", "lookup", "limit", "objref", "immediate"]
    data, _ = nb.batch(reqs, 7)
    assert len(data) % 4 == 0


def test_the_limit_is_over_the_rate_in_packets_per_second() -> None:
    body = ng.rule_expressions(Limit(12_345, 99))
    off = body.index(b"limit\0")
    assert struct.pack(">Q", 12_345) in body[off:] and struct.pack(">I", 99) in body[off:]
    assert Limit(12_345, 99).describe() == "limit rate over 12345/second burst 99 packets"
    with pytest.raises(ValueError, match="at least 1"):
        ng.arm_requests("lbd-q0", Limit(0, 10))


def test_disarming_deletes_the_chain_and_a_missing_one_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[list[nb.Request]] = []

    def refuse(reqs: list[nb.Request], what: str, netns: str | None = None) -> None:
        sent.append(list(reqs))
        raise nb.NetlinkError(errno.ENOENT, "nf_tables refused it: No such file or directory")

    monkeypatch.setattr(ng, "transact", refuse)
    assert ng.write("lbd-q0", None) is False
    assert [r.msg_type for r in sent[0]] == [ng.NFT_MSG_DELCHAIN]

    def busy(reqs: list[nb.Request], what: str, netns: str | None = None) -> None:
        raise nb.NetlinkError(errno.EBUSY, "busy")

    monkeypatch.setattr(ng, "transact", busy)
    with pytest.raises(nb.NetlinkError):
        ng.write("lbd-q0", None)


def _newobj(packets: int) -> bytes:
    data = nb.nest(ng.NFTA_OBJ_DATA, nb.attr(ng.NFTA_COUNTER_BYTES, struct.pack(">Q", 64 * packets)),
                   nb.attr(ng.NFTA_COUNTER_PACKETS, struct.pack(">Q", packets)))
    body = nb.string(ng.NFTA_OBJ_TABLE, "lbd-q0") + nb.string(ng.NFTA_OBJ_NAME, "guard") + data
    return nb.message((nb.NFNL_SUBSYS_NFTABLES << 8) | ng.NFT_MSG_NEWOBJ, 0, 1, nb.NFPROTO_IPV4, 0, body)


def test_the_counter_is_read_from_the_reply_bounds_checked() -> None:
    assert ng.counter_packets(_newobj(4242)) == 4242
    assert ng.counter_packets(_newobj(7)[:-6]) is None  # truncated
    assert ng.counter_packets(b"") is None
    assert ng.counter_packets(b"\xff" * 40) is None
