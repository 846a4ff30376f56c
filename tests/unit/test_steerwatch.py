"""lb.steerwatch and RuleManager.damage()/repair() without privileges (iptables and ipset faked):
what lbd reports missing, that a tick is cheap while nothing changed, one report per episode."""

from __future__ import annotations

import logging
import struct

import pytest

from lb import iptlayout as iptl
from lb import steerwatch as sw
from lb.ipsets import Steering
from lb.iptables import IptablesError, RuleManager
from lb.iptrules import TableState
from test_iptables_rules import HEALTHY, JUMP3, Fake

TCP = 6
STEERING = Steering(services={(TCP, "10.0.0.1", 80), (TCP, "10.0.0.2", 80)})


def _healthy() -> tuple[Fake, RuleManager]:
    fake = Fake("\n".join(HEALTHY))
    rules = RuleManager(3, runner=fake)
    rules.sync(STEERING)  # fills the fake's sets; the cache now knows what the kernel holds
    return fake, rules


def test_intact_steering_has_no_damage() -> None:
    _fake, rules = _healthy()
    assert rules.damage() == []


@pytest.mark.parametrize("listing, set_change, found", [
    ([line for line in HEALTHY if line != JUMP3], None, ["jump raw PREROUTING -> LBD-Q3 gone"]),
    ([line for line in HEALTHY if not line.startswith("-A LBD-Q3 ")], None,
     [f"raw LBD-Q3 holds 0 rules, not lbd's {len(iptl.chain_rules(3))}"]),
    ([line for line in HEALTHY if "LBD-Q3-OUT" not in line], None, ["raw chain LBD-Q3-OUT gone"]),
    (HEALTHY, ("flush", "lbd-q3-svc"), ["ip set lbd-q3-svc holds 0 of its 2 elements"]),
    (HEALTHY, ("destroy", "lbd-q3-addr"), ["ip set lbd-q3-addr gone"]),
])
def test_damage_names_what_is_missing(listing: list[str], set_change: tuple[str, str] | None,
                                      found: list[str]) -> None:
    fake, rules = _healthy()
    fake.listing = "\n".join(listing)
    if set_change == ("flush", "lbd-q3-svc"):
        fake.sets["lbd-q3-svc"][1].clear()
    elif set_change is not None:
        del fake.sets[set_change[1]]
    assert rules.damage() == found


def test_repair_refills_a_flushed_set_and_rewrites_the_chain() -> None:
    fake, rules = _healthy()
    fake.sets["lbd-q3-svc"][1].clear()
    fake.listing = "\n".join(line for line in HEALTHY if line != JUMP3)
    rules.repair(STEERING)
    assert fake.sets["lbd-q3-svc"][1] == {"10.0.0.1,tcp:80", "10.0.0.2,tcp:80"}
    assert fake.scripts()[-1] == f"*raw\n{JUMP3}\nCOMMIT\n"


class ChainsComeBack(Fake):
    """A Fake whose `iptables -S` shows lbd's chains again once an iptables-restore ran."""

    def __call__(self, cmd, stdin):  # type: ignore[no-untyped-def]
        if any(c.endswith("iptables-restore") for c in cmd):
            self.listing = "\n".join(HEALTHY)
        return super().__call__(cmd, stdin)


def test_repair_of_a_vanished_chain_declares_it_after_filling_the_sets() -> None:
    fake = ChainsComeBack("\n".join(HEALTHY))
    rules = RuleManager(3, runner=fake)
    rules.sync(STEERING)
    fake.listing = "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n"
    fake.sets.clear()
    fake.calls.clear()
    rules.repair(STEERING)
    restores = [(cmd, stdin or "") for cmd, stdin in fake.calls if any(c.endswith("restore") for c in cmd)]
    first_rules = next(i for i, (cmd, _) in enumerate(restores) if "ipset" not in cmd)
    assert any("add lbd-q3-svc" in stdin for cmd, stdin in restores[:first_rules] if "ipset" in cmd)
    assert ":LBD-Q3 - [0:0]" in restores[first_rules][1]


class FakeRules:
    """What SteeringWatch uses of a RuleManager, recording which check ran."""

    queue_num = 0

    def __init__(self) -> None:
        self.broken: list[str] = []
        self.calls: list[str] = []
        self.fail = ""

    def damage(self, _counts: object = None) -> list[str]:
        self.calls.append("damage")
        return list(self.broken)

    def set_damage(self, _counts: object = None) -> list[str]:
        self.calls.append("set_damage")
        return [b for b in self.broken if b.startswith("ip set")]

    def repair(self, _steering: object) -> None:
        self.calls.append("repair")
        if self.fail:
            raise IptablesError(["iptables-restore"], 1, self.fail)
        self.broken = []


def test_a_tick_reads_the_rules_only_when_the_generation_moved() -> None:
    rules, gen = FakeRules(), [7]
    watch = sw.SteeringWatch(rules, Steering, lambda: gen[0])
    watch.tick()
    watch.tick()
    watch.tick()
    assert rules.calls == ["damage", "set_damage", "set_damage"]
    gen[0] = 8  # someone changed some rule somewhere
    watch.tick()
    assert rules.calls[-1] == "damage"


def test_one_report_per_episode_and_repeats_are_summarised(caplog: pytest.LogCaptureFixture) -> None:
    rules, now = FakeRules(), [0.0]
    watch = sw.SteeringWatch(rules, Steering, None, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="lb.steerwatch")
    rules.broken = ["jump raw PREROUTING -> LBD-Q0 gone"]
    watch.tick()
    watch.tick()  # repaired: nothing to say
    for _ in range(3):  # a tool removing it again and again: no line per repair
        now[0] += 1.0
        rules.broken = ["jump raw PREROUTING -> LBD-Q0 gone"]
        watch.tick()
    now[0] += sw.REPEAT_REPORT_S
    rules.broken = ["jump raw PREROUTING -> LBD-Q0 gone"]
    watch.tick()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2 and all("jump raw PREROUTING -> LBD-Q0 gone" in line for line in lines)
    assert "repaired 3 more times" in lines[1]
    assert watch.repairs == 5


def test_a_failing_repair_is_reported_once_then_its_end(caplog: pytest.LogCaptureFixture) -> None:
    rules = FakeRules()
    watch = sw.SteeringWatch(rules, Steering, None)
    caplog.set_level(logging.INFO, logger="lb.steerwatch")
    rules.broken, rules.fail = ["ip set lbd-q0-svc gone"], "xtables lock held"
    for _ in range(3):
        watch.tick()
    rules.fail = ""
    watch.tick()
    watch.tick()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "xtables lock held" in errors[0] and "lbd-q0-svc gone" in errors[0]
    assert any("complete again" in r.getMessage() for r in caplog.records)


def test_generation_reply_parsing_is_bounds_checked() -> None:
    head = struct.Struct("=IHHII")
    attr = struct.pack("=HH", 8, sw.NFTA_GEN_ID) + struct.pack(">I", 4242)
    body = struct.pack("=BBH", 0, 0, 0) + attr
    reply = head.pack(head.size + len(body), (10 << 8) | 15, 0, 1, 0) + body
    assert sw._gen_from_reply(reply) == 4242
    assert sw._gen_from_reply(reply[:-2]) is None  # cut short
    assert sw._gen_from_reply(head.pack(36, sw.NLMSG_ERROR, 0, 1, 0) + bytes(20)) is None
    assert sw._gen_from_reply(b"") is None
    bad_len = head.pack(head.size + 8, (10 << 8) | 15, 0, 1, 0) + struct.pack("=BBH", 0, 0, 0) + struct.pack("=HH", 0, 1)
    assert sw._gen_from_reply(bad_len) is None


def test_chain_damage_wording() -> None:
    assert iptl.chain_damage("raw", "X", TableState(False, [], []), ["-A X -j RETURN"]) == ["raw chain X gone"]
    # gone wins over a missing jump (one phrase); a present chain reports its rules and its jump apart
    assert iptl.chain_damage("raw", "X", TableState(False, [], []), ["-A X -j RETURN"], hook="PREROUTING") == \
        ["raw chain X gone"]
    assert iptl.chain_damage("raw", "X", TableState(True, [], []), ["-A X -j RETURN"], hook="PREROUTING") == \
        ["raw X holds 0 rules, not lbd's 1", "jump raw PREROUTING -> X gone"]
    assert iptl.chain_damage("raw", "X", TableState(True, ["-A X -j RETURN"], ["-A PREROUTING -j X"]),
                             ["-A X -j RETURN"], hook="PREROUTING") == []


def test_set_damage_uses_the_counts_it_is_given_without_running_ipset() -> None:
    fake, rules = _healthy()
    counts = {name: len(members) for name, (_t, members) in fake.sets.items()}
    fake.calls.clear()
    assert rules.set_damage(counts) == []
    counts["lbd-q3-svc"] = 0
    assert rules.set_damage(counts) == ["ip set lbd-q3-svc holds 0 of its 2 elements"]
    assert fake.calls == []  # nothing forked: the watch reads the counts over netlink


def test_a_tick_passes_the_netlink_counts_on() -> None:
    seen: list[object] = []

    class Recording(FakeRules):
        def set_damage(self, counts: object = None) -> list[str]:
            seen.append(counts)
            return []

    watch = sw.SteeringWatch(Recording(), Steering, lambda: 1, set_counts=lambda: {"lbd-q0-svc": 3})
    watch.tick()
    watch.tick()
    assert seen == [{"lbd-q0-svc": 3}]


def _nla(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + bytes(-len(raw) % 4)


def test_set_header_parsing_reads_name_and_count_and_is_bounds_checked() -> None:
    inner = _nla(sw.IPSET_ATTR_ELEMENTS | 0x4000, struct.pack(">I", 10000))
    body = _nla(sw.IPSET_ATTR_SETNAME, b"lbd-q0-svc\0") + _nla(sw.IPSET_ATTR_DATA | 0x8000, inner)
    assert sw._set_header(body, 0, len(body)) == ("lbd-q0-svc", 10000)
    assert sw._set_header(body[:-3], 0, len(body) - 3) == ("lbd-q0-svc", None)  # cut short: no count
    assert sw._set_header(b"\x02\x00", 0, 2) == (None, None)
    # the count after other attributes of the data (hashsize, memsize), and one too short to hold it
    other = _nla(1 | 0x4000, struct.pack(">I", 1024)) + _nla(18 | 0x4000, struct.pack(">I", 4096))
    body = _nla(sw.IPSET_ATTR_SETNAME, b"lbd-q0-addr\0") + _nla(sw.IPSET_ATTR_DATA | 0x8000, other + inner)
    assert sw._set_header(body, 0, len(body)) == ("lbd-q0-addr", 10000)
    short = _nla(sw.IPSET_ATTR_ELEMENTS, b"\x01\x02")
    body = _nla(sw.IPSET_ATTR_SETNAME, b"lbd-q0-nat\0") + _nla(sw.IPSET_ATTR_DATA | 0x8000, other + short)
    assert sw._set_header(body, 0, len(body)) == ("lbd-q0-nat", None)
    # a header listing inside a larger datagram: only data[start:end] is read
    body = _nla(sw.IPSET_ATTR_SETNAME, b"lbd-q0-svc\0") + _nla(sw.IPSET_ATTR_DATA | 0x8000, inner)
    framed = b"\xff" * 8 + body + _nla(sw.IPSET_ATTR_SETNAME, b"other\0")
    assert sw._set_header(framed, 8, 8 + len(body)) == ("lbd-q0-svc", 10000)


class FakeNetlink:
    """Replies queued per send: each a list of datagrams; a datagram is bytes or an OSError to raise."""

    def __init__(self, replies: list[list[bytes | OSError]]) -> None:
        self.replies = replies
        self.sent: list[bytes] = []
        self.pending: list[bytes | OSError] = []
        self.closed = False

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        self.pending += self.replies.pop(0)
        return len(data)

    def recv(self, _size: int) -> bytes:
        item = self.pending.pop(0) if self.pending else OSError(11, "Resource temporarily unavailable")
        if isinstance(item, OSError):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def _set_msg(seq: int, name: bytes, count: int, msg_type: int = (6 << 8) | 7) -> bytes:
    body = struct.pack("=BBH", 2, 0, 0) + _nla(sw.IPSET_ATTR_SETNAME, name + b"\0") + _nla(
        sw.IPSET_ATTR_DATA | 0x8000, _nla(sw.IPSET_ATTR_ELEMENTS | 0x4000, struct.pack(">I", count)))
    return struct.pack("=IHHII", 16 + len(body), msg_type, sw.NLM_F_MULTI, seq, 0) + body


def _done(seq: int) -> bytes:
    return struct.pack("=IHHII", 20, sw.NLMSG_DONE, sw.NLM_F_MULTI, seq, 0) + bytes(4)


def test_the_channel_keeps_one_socket_and_skips_replies_to_older_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    chan = sw.NetfilterChannel()
    fake = FakeNetlink([
        [_set_msg(1, b"lbd-q0-svc", 3) + _set_msg(1, b"lbd-q0-addr", 1), _done(1)],
        # a late reply to request 1 arrives first, then the answer to request 2
        [_set_msg(1, b"stale", 9), _set_msg(2, b"lbd-q0-svc", 4), _done(2)],
    ])
    opened: list[int] = []

    def socket_once() -> FakeNetlink:
        opened.append(1)
        chan.sock = fake  # type: ignore[assignment]
        return fake

    monkeypatch.setattr(chan, "_socket", lambda: chan.sock or socket_once())
    monkeypatch.setattr(sw, "_CHANNEL", chan)
    assert sw.ipset_counts() == {"lbd-q0-svc": 3, "lbd-q0-addr": 1}
    assert sw.ipset_counts() == {"lbd-q0-svc": 4}
    assert len(opened) == 1 and not fake.closed  # one socket for both requests
    assert [struct.unpack_from("=I", m, 8)[0] for m in fake.sent] == [1, 2]  # fresh sequence numbers


def test_the_channel_closes_its_socket_on_a_timeout_and_answers_none(monkeypatch: pytest.MonkeyPatch) -> None:
    chan = sw.NetfilterChannel()
    fake = FakeNetlink([[_set_msg(1, b"lbd-q0-svc", 3)]])  # no NLMSG_DONE: the next recv times out
    monkeypatch.setattr(chan, "_socket", lambda: fake)
    chan.sock = fake  # type: ignore[assignment]
    monkeypatch.setattr(sw, "_CHANNEL", chan)
    assert sw.ipset_counts() is None
    assert fake.closed and chan.sock is None  # the next request opens a new socket


def test_watch_period_is_half_a_second_under_nfqueue_and_a_second_for_the_afxdp_fallback() -> None:
    # issue 16: damage noticed within a second; the periods share lb/periodic.py's grid (divide 2 s)
    assert sw.watch_period_s(False) == sw.WATCH_TICK_S == 0.5
    assert sw.watch_period_s(True) == sw.WATCH_TICK_AFXDP_S == 1.0
    for period in (sw.watch_period_s(False), sw.watch_period_s(True)):
        assert period <= 1.0 and (2.0 / period).is_integer()
