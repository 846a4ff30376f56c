"""lbd --overload-xdp without privileges: what parse_args accepts and refuses, and what lb.xdpshed
writes into its programs (a recording stand-in for the C library: the keys of lbd's steering when the
guard arms and again only after the configuration changed, one rate for every interface, the drops
summed). tests/netns/test_overload_guard.py attaches the program to a real veth and overloads it."""

from __future__ import annotations

from typing import Any

import pytest

from lb import afxdp, daemon, xdpshed
from lb import overload as ov
from lb._ffi import ffi
from lb.ipsets import Steering
from lb.nftguard import Limit


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        daemon.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_overload_xdp_takes_interfaces_and_the_xdp_mode() -> None:
    args = daemon.parse_args(["--overload-xdp", "eth0", "--overload-xdp", "eth1", "--xdp-mode", "native"])
    assert args.overload_xdp == ["eth0", "eth1"] and args.xdp_mode == "native" and args.packet_source == "nfqueue"


@pytest.mark.parametrize("argv, words", [
    (["--overload-xdp", "eth0", "--overload-guard", "off"], "does not go with --overload-guard off"),
    (["--overload-xdp", "eth0", "--packet-source", "afxdp", "--xdp-interface", "eth0"],
     "--overload-xdp goes with the NFQUEUE packet source"),
    (["--xdp-mode", "native"], "--xdp-mode goes with --packet-source afxdp or --overload-xdp"),
])
def test_what_overload_xdp_refuses(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert words in refused(argv, capsys)


class FakeLib:
    """lb_xdp_key_set / lb_xdp_local_set / lb_xdp_shed_set / lb_xdp_get_stats, recorded per handle."""

    def __init__(self) -> None:
        self.keys: dict[Any, set[tuple[int, ...]]] = {}
        self.local: dict[Any, set[int]] = {}
        self.rates: list[tuple[Any, int, int]] = []
        self.shed: dict[Any, int] = {}
        self.key_writes = 0

    def lb_xdp_key_set(self, handle: Any, k: Any, present: int) -> int:
        key = (k.saddr, k.daddr, k.sport, k.dport, k.proto)
        self.key_writes += 1
        (self.keys.setdefault(handle, set()).add if present else self.keys.setdefault(handle, set()).discard)(key)
        return 0

    def lb_xdp_local_set(self, handle: Any, addr: int, present: int) -> int:
        (self.local.setdefault(handle, set()).add if present else self.local.setdefault(handle, set()).discard)(addr)
        return 0

    def lb_xdp_shed_set(self, handle: Any, rate: int, burst: int) -> int:
        self.rates.append((handle, rate, burst))
        return 0

    def lb_xdp_get_stats(self, handle: Any, st: Any) -> None:
        st.shed = self.shed.get(handle, 0)
        st.passed = 1


def shed_with(monkeypatch: pytest.MonkeyPatch, steering: Steering) -> tuple[xdpshed.XdpShed, FakeLib, list[int]]:
    fake = FakeLib()
    monkeypatch.setattr(xdpshed, "lib", fake)
    monkeypatch.setattr(afxdp, "lib", fake)  # the keys and addresses: afxdp.ProgramKeys
    generation = [1]
    s = xdpshed.XdpShed(["eth0", "eth1"], lambda: steering, lambda: generation[0])
    for name, handle in (("eth0", "h0"), ("eth1", "h1")):
        s._programs.append(xdpshed._Program(name, handle, "native"))
        s._maps.add(name, handle)
    return s, fake, generation


VIP = (6, "10.0.0.1", 80)
VIP_INT = 0x0A000001


def test_arming_writes_the_keys_first_then_one_rate_for_all_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    steering = Steering(services={VIP}, nat_replies={(17, "192.168.1.5", 53)}, fwmarks={7})
    s, fake, _ = shed_with(monkeypatch, steering)
    s.write_guard(Limit(90_000, 1024))
    want = {(0, VIP_INT, 0, 80, 6), (0xC0A80105, 0, 53, 0, 17)}  # fwmark 7: not matchable in XDP, left out
    assert fake.keys == {"h0": want, "h1": want}
    assert fake.rates == [("h0", 90_000, 1024)] and s.guard == Limit(90_000, 1024)
    s.write_guard(None)
    assert fake.rates[-1] == ("h0", 0, 0) and s.guard is None


def test_keys_are_rewritten_only_after_the_configuration_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    steering = Steering(services={VIP})
    s, fake, generation = shed_with(monkeypatch, steering)
    s.write_guard(Limit(50_000, 512))
    writes = fake.key_writes
    s.refresh()
    s.write_guard(Limit(60_000, 512))
    assert fake.key_writes == writes and s.refreshes == 1  # same generation: nothing walked or written
    steering.services = {(6, "10.0.0.2", 443)}
    generation[0] += 1
    s.refresh()
    assert fake.keys["h0"] == {(0, 0x0A000002, 0, 443, 6)} and fake.key_writes == writes + 4  # add + remove, x2


def test_local_addresses_and_the_drops_summed(monkeypatch: pytest.MonkeyPatch) -> None:
    s, fake, _ = shed_with(monkeypatch, Steering())
    s.set_local_addrs(["10.0.0.9", "fe80::1"])
    assert fake.local == {"h0": {0x0A000009}, "h1": {0x0A000009}}
    s.set_local_addrs([])
    assert fake.local == {"h0": set(), "h1": set()}
    fake.shed = {"h0": 5, "h1": 7}
    assert s.guard_dropped() == 12 and s.program_stats()["passed"] == 2
    assert s.table == "XDP on eth0, eth1"


def test_a_failed_key_write_says_which_interface_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    s, fake, _ = shed_with(monkeypatch, Steering(services={VIP}))
    monkeypatch.setattr(fake, "lb_xdp_key_set", lambda *a: -12)
    with pytest.raises(xdpshed.XdpShedError, match=r"eth0: cannot add the overload guard's XDP key .*Cannot allocate"):
        s.write_guard(Limit(1000, 64))
    assert fake.rates == []  # not armed on keys that are not there


def test_stats_struct_has_the_shed_counter() -> None:
    assert "shed" in {n for n, _ in ffi.typeof("struct lb_xdp_stats").fields}


def test_the_guard_refreshes_its_writers_keys_on_armed_ticks_only() -> None:
    class Writer:
        table = "XDP on eth0"

        def __init__(self) -> None:
            self.guard: Limit | None = None
            self.refreshes = 0

        def write_guard(self, limit: Limit | None) -> None:
            self.guard = limit

        def guard_dropped(self) -> int | None:
            return 0

        def refresh(self) -> None:
            self.refreshes += 1

    now = [0.0]
    sample = [ov.QueueSample(0, 0, 0)]
    w = Writer()
    g = ov.OverloadGuard(lambda: sample[0], w, 1024, clock=lambda: now[0])

    def advance(taken: int, dropped: int) -> None:
        now[0] += g.period()
        s = sample[0]
        sample[0] = ov.QueueSample(s.taken + taken, s.dropped + dropped, s.batches + taken // 64)
        g.tick()

    advance(1000, 0)
    assert w.refreshes == 0  # idle: nothing refreshed
    advance(100_000, 50_000)
    advance(25_000, 12_500)  # confirmed: armed
    assert g.limit is not None and w.refreshes == 0
    advance(25_000, 12_500)
    assert w.refreshes == 1
