"""lb.steerevents without privileges: notifications are fed as bytes through a socketpair (or a
fake socket for ENOBUFS) into NftEvents/EventWatch on a real asyncio loop; what is checked is which
SteeringWatch check runs, with which generation, how often."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from lb import steerevents as se
from lb import steerwatch as sw
from lb.ipsets import Steering
from test_steerwatch import FakeRules

HEAD = struct.Struct("=IHHII")
PERIOD_S = 0.2


def newgen(gen: int) -> bytes:
    body = struct.pack("=BBH", 0, 0, 0) + struct.pack("=HH", 8, sw.NFTA_GEN_ID) + struct.pack(">I", gen)
    return HEAD.pack(HEAD.size + len(body), se.NEWGEN, 0, 0, 0) + body


def other(msg: int = 3) -> bytes:  # e.g. NFT_MSG_NEWCHAIN (3): a change announced before its NEWGEN
    body = struct.pack("=BBH", 2, 0, 0)
    return HEAD.pack(HEAD.size + len(body), (sw.NFNL_SUBSYS_NFTABLES << 8) | msg, 0, 0, 0) + body


def test_newgen_id_reads_the_generation_and_is_bounds_checked() -> None:
    assert se.newgen_id(newgen(4242)) == 4242
    assert se.newgen_id(other()) is None
    assert se.newgen_id(newgen(1)[:-2]) is None  # cut short: the attribute does not fit
    assert se.newgen_id(b"") is None
    long = bytearray(newgen(1))
    struct.pack_into("=I", long, 0, len(long) + 4)  # claims more than the datagram holds
    assert se.newgen_id(bytes(long)) is None


class Pair:
    """A socketpair: the kernel's end sends datagrams, NftEvents reads the other (non-blocking)."""

    def __init__(self) -> None:
        self.kernel, self.lbd = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.lbd.setblocking(False)
        self.opened = 0

    def opener(self) -> socket.socket:
        self.opened += 1
        if self.opened > 1:  # a fresh pair after the first was closed
            self.kernel, self.lbd = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.lbd.setblocking(False)
        return self.lbd

    def send(self, *datagrams: bytes) -> None:
        for d in datagrams:
            self.kernel.send(d)


def test_drain_coalesces_to_the_last_generation() -> None:
    pair = Pair()
    events = se.NftEvents(pair.opener)
    events.open()
    assert events.drain() == se.Drained(False, None)  # nothing queued: no check
    pair.send(other(), newgen(5), other(), other(), newgen(6))
    assert events.drain() == se.Drained(True, 6)
    pair.send(newgen(7), other())  # a transaction announced, its NEWGEN not yet: generation unknown
    assert events.drain() == se.Drained(True, None)
    events.close()
    assert events.sock is None and pair.lbd.fileno() == -1


class Overrun:
    """A socket whose receive queue overflowed: ENOBUFS once, then what was still queued."""

    def __init__(self, queued: list[bytes], error: int = errno.ENOBUFS) -> None:
        self.queued = queued
        self.error = error
        self.closed = False

    def recv(self, _n: int) -> bytes:
        if self.error:
            err, self.error = self.error, 0
            raise OSError(err, "boom")
        if not self.queued:
            raise BlockingIOError
        return self.queued.pop(0)

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        self.closed = True


def test_an_overrun_leaves_the_generation_unknown_and_other_errors_close_the_socket() -> None:
    fake = Overrun([newgen(9)])
    events = se.NftEvents(lambda: fake)  # type: ignore[arg-type, return-value]
    events.open()
    assert events.drain() == se.Drained(True, None)  # the NEWGEN that is left may not be the last one
    assert events.overruns == 1 and fake.queued == []
    broken = Overrun([], errno.EBADF)
    events = se.NftEvents(lambda: broken)  # type: ignore[arg-type, return-value]
    events.open()
    with pytest.raises(OSError):
        events.drain()
    assert broken.closed and events.sock is None


def test_a_drain_that_does_not_end_is_cut_and_counts_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(se, "MAX_DATAGRAMS", 2)
    fake = Overrun([newgen(1), newgen(2), newgen(3)], 0)
    events = se.NftEvents(lambda: fake)  # type: ignore[arg-type, return-value]
    events.open()
    assert events.drain() == se.Drained(True, None)
    assert events.drain() == se.Drained(True, 3)  # the next wake-up reads the rest


class Recorder(sw.SteeringWatch):
    """A SteeringWatch that records the generations it was asked to check at."""

    def __init__(self, rules: FakeRules, gen: list[int]) -> None:
        super().__init__(rules, Steering, lambda: gen[0], period_s=PERIOD_S)
        self.asked: list[int | None] = []
        self.when: list[float] = []  # the loop's time of each check

    def check(self, gen: int | None) -> list[str]:
        self.asked.append(gen)
        self.when.append(asyncio.get_running_loop().time())
        return super().check(gen)


def start_watch(rules: FakeRules, gen: list[int], events: se.NftEvents,
                loop: asyncio.AbstractEventLoop) -> tuple[Recorder, se.EventWatch]:
    """A recording watch driven by `events` on `loop`, started (its first check done)."""
    watch = Recorder(rules, gen)
    driver = se.EventWatch(watch, events, loop, PERIOD_S)
    driver.start()
    return watch, driver


def run(body: Callable[[asyncio.AbstractEventLoop], Any]) -> None:
    async def main() -> None:
        await body(asyncio.get_running_loop())
    asyncio.run(main())


def test_a_notification_checks_soon_and_lbds_own_generation_is_not_reread() -> None:
    rules, gen, pair = FakeRules(), [7], Pair()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        watch, driver = start_watch(rules, gen, se.NftEvents(pair.opener), loop)
        assert watch.asked == [7] and rules.calls == ["damage"]  # the first check reads everything
        assert watch.seen_gen == 7
        await asyncio.sleep(PERIOD_S * 1.5)
        assert rules.calls == ["damage"]  # idle: nothing runs, nothing is asked
        pair.send(other(), newgen(7))  # e.g. lbd's own write whose generation the check already saw
        await asyncio.sleep(PERIOD_S / 2)
        assert watch.asked == [7, 7] and rules.calls == ["damage", "set_damage"]
        await asyncio.sleep(PERIOD_S)
        rules.broken = ["nft table ip lbd-q0 gone"]
        started = loop.time()
        pair.send(newgen(8))  # someone else's transaction: read and repaired once quiet (settle_s)
        while len(watch.asked) < 3 and loop.time() - started < 2:
            await asyncio.sleep(0.01)
        assert watch.asked == [7, 7, 8] and rules.calls[-2:] == ["damage", "repair"]
        assert watch.when[-1] - started < PERIOD_S / 2
        assert watch.repairs == 1
        driver.close()
        assert driver.fd is None and pair.lbd.fileno() == -1

    run(body)


def test_a_burst_of_transactions_is_one_check_per_period() -> None:
    rules, gen, pair = FakeRules(), [1], Pair()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        watch, driver = start_watch(rules, gen, se.NftEvents(pair.opener), loop)
        started = loop.time()
        for g in range(2, 12):  # a firewall script: ten transactions, one after the other
            pair.send(other(), newgen(g))
            await asyncio.sleep(0.01)
        await asyncio.sleep(PERIOD_S * 1.5)
        # within the first period after start: all merged into one check, at the period's end, at the last generation
        assert watch.asked == [1, 11], watch.asked
        assert loop.time() - started >= PERIOD_S
        pair.send(newgen(12))
        pair.send(other())  # and then an overrun-like unknown: merged, the check reads everything
        await asyncio.sleep(PERIOD_S * 1.5)
        assert watch.asked == [1, 11, None], watch.asked
        driver.close()

    run(body)


def test_a_check_waits_for_quiet_but_not_longer_than_a_period() -> None:
    rules, gen, pair = FakeRules(), [1], Pair()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        watch, driver = start_watch(rules, gen, se.NftEvents(pair.opener), loop)
        await asyncio.sleep(PERIOD_S * 1.5)
        pair.send(newgen(2))  # `iptables -t raw -F`
        await asyncio.sleep(driver.settle_s / 2)
        pair.send(newgen(3))  # `iptables -t raw -X`, before the first one settled
        await asyncio.sleep(driver.settle_s / 2)
        assert watch.asked == [1]  # not quiet yet
        await asyncio.sleep(driver.settle_s * 2)
        assert watch.asked == [1, 3]  # one check of the end result
        await asyncio.sleep(PERIOD_S * 1.5)
        first = loop.time()
        g = 10
        while loop.time() - first < PERIOD_S * 2.5:  # never quiet: a transaction every 20 ms
            pair.send(newgen(g))
            g += 1
            await asyncio.sleep(0.02)
        assert len(watch.asked) >= 4, watch.asked
        assert first + PERIOD_S * 0.9 <= watch.when[2] <= first + PERIOD_S * 1.5, (first, watch.when)
        driver.close()

    run(body)


def test_the_sets_tick_leaves_a_pending_rule_change_to_the_whole_check() -> None:
    rules, gen, pair = FakeRules(), [1], Pair()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        watch, driver = start_watch(rules, gen, se.NftEvents(pair.opener), loop)
        await asyncio.sleep(PERIOD_S * 1.5)
        driver.check_sets()  # nothing announced: the sets are read
        assert rules.calls == ["damage", "set_damage"]
        rules.broken = ["raw chain LBD-Q0 gone", "ip set lbd-q0-svc gone"]
        pair.send(newgen(2))  # `iptables -t raw -F; -X`, then `ipset destroy`: not read by the loop yet
        driver.check_sets()
        assert rules.calls == ["damage", "set_damage"] and driver.pending  # left to the whole check
        await asyncio.sleep(driver.settle_s * 2)
        assert watch.asked == [1, 2] and rules.calls[-2:] == ["damage", "repair"]
        assert watch.last_report is not None and "raw chain LBD-Q0 gone" in watch.last_report[1]
        driver.close()

    run(body)


def test_a_failed_repair_is_retried_every_period_without_notifications() -> None:
    rules, gen, pair = FakeRules(), [1], Pair()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        watch, driver = start_watch(rules, gen, se.NftEvents(pair.opener), loop)
        await asyncio.sleep(PERIOD_S)
        rules.broken, rules.fail = ["nft table ip lbd-q0 gone"], "nft: table busy"
        pair.send(newgen(2))
        await asyncio.sleep(PERIOD_S * 2.5)
        assert rules.calls.count("repair") >= 2 and watch.asked[:2] == [1, 2]
        assert watch.asked[2:] == [None] * (len(watch.asked) - 2)  # the retries read everything
        rules.fail = ""
        await asyncio.sleep(PERIOD_S * 2.5)  # a retry repairs, the next one finds it complete
        assert rules.broken == [] and not watch.failing
        n = len(watch.asked)
        await asyncio.sleep(PERIOD_S * 2)
        assert len(watch.asked) == n  # repaired: no more retries
        driver.close()

    run(body)


def test_a_socket_error_resubscribes_and_checks_everything() -> None:
    rules, gen, pair = FakeRules(), [1], Pair()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        events = se.NftEvents(pair.opener)
        watch, driver = start_watch(rules, gen, events, loop)
        await asyncio.sleep(PERIOD_S)
        broken = pair.lbd
        pair.send(newgen(2))
        monkey = Breaking(broken)  # its next receive fails with EIO
        events.sock = monkey  # type: ignore[assignment]
        await asyncio.sleep(0.1)
        assert pair.opened == 2 and driver.fd is not None and watch.asked == [1, None]
        assert broken.fileno() == -1  # the broken socket was closed
        pair.send(newgen(3))  # the new socket is watched
        await asyncio.sleep(PERIOD_S * 1.5)
        assert watch.asked == [1, None, 3]
        driver.close()

    run(body)


class Breaking:
    """A socket whose receives fail (EIO) while it stays readable."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, _n: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


class SetsRules(FakeRules):
    sets_in_generation = False


class NftRules(FakeRules):
    sets_in_generation = True


@pytest.mark.parametrize("rules_class, generation, opener_fails, expect", [
    (NftRules, True, False, ("events", [])),
    (SetsRules, True, False, ("events", ["check_sets"])),
    (SetsRules, False, False, ("poll", ["tick"])),  # legacy iptables, rules in another netns
    (NftRules, True, True, ("poll", ["tick"])),  # subscription refused
])
def test_watch_steering_polls_only_where_it_must(monkeypatch: pytest.MonkeyPatch, rules_class: type[FakeRules],
                                                 generation: bool, opener_fails: bool,
                                                 expect: tuple[str, list[str]]) -> None:
    monkeypatch.setattr(se, "generation_source", lambda _r: (lambda: 5) if generation else None)
    monkeypatch.setattr(se, "set_counts_source", lambda _r: None)
    started: list[str] = []

    async def run_every(_p: float, work: Callable[[], object], _what: str, _log: object) -> None:
        started.append(getattr(work, "__name__", ""))

    monkeypatch.setattr(se.periodic, "run_every", run_every)
    pair = Pair()

    def opener() -> socket.socket:
        if opener_fails:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return pair.opener()

    async def body(_loop: asyncio.AbstractEventLoop) -> None:
        watching = se.watch_steering(rules_class(), Steering, afxdp=False, opener=opener)
        await asyncio.gather(*watching.tasks)
        assert ("events" if watching.events is not None else "poll", started) == expect
        watching.close()
        assert watching.events is None
        if expect[0] == "events":
            assert pair.lbd.fileno() == -1  # closed at shutdown

    run(body)
