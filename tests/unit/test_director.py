"""Director: control operations against real engines (C without a queue, and Python), no privileges.

What is checked: errno of each refusal (as lbadm maps them to ipvsadm's messages), the
all-or-nothing `batch` (refused by the model before anything happens, or by the engine midway
and rolled back), iptables sync failures rolled back, per-service zero, rates in `list`,
timeouts, and reload from a file (minimal plan; an invalid file changes nothing).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lb.afxdp import AfxdpRefusal
from lb.director import BatchError, Director
from lb.engine import EngineError
from lb.ipsets import Steering
from lb.lbadm import ipvs_strerror
from lb.model import SCHEDULERS, Stats
from line_server import director_socket, lbadm  # tests/unit helpers
from refusing_engine import REFUSED_RIP, refusing

VIP = "10.0.0.1"
SVC = {"proto": "tcp", "addr": VIP, "port": 80}
SVC2 = {"proto": "tcp", "addr": VIP, "port": 443}


def make_engine(kind: str) -> Any:
    if kind == "python":
        from lb.pyengine import PyEngine

        return PyEngine(conn_max=1024)
    try:
        from lb.fastpath import CEngine
    except ImportError:  # the lead may be rebuilding the module: one retry
        import importlib

        importlib.invalidate_caches()
        from lb.fastpath import CEngine
    return CEngine(conn_max=1024)


@pytest.fixture(params=["c", "python"])
def director(request: pytest.FixtureRequest) -> Director:
    return Director(make_engine(request.param), rules=None, resolver=None)


def dest(addr: str, port: int = 80, **kw: Any) -> dict[str, Any]:
    return {"addr": addr, "port": port, "fwd": "route", "weight": 1, "u_threshold": 0, "l_threshold": 0, **kw}


def table(d: Director) -> dict[tuple[str, int], dict[tuple[str, int], int]]:
    """{(addr, port): {(daddr, dport): weight}} as `list` reports it."""
    return {
        (s["addr"], s["port"]): {(x["addr"], x["port"]): x["weight"] for x in s["dests"]}
        for s in d.handle("list", {})["services"]
    }


def refused(d: Director, op: str, args: dict[str, Any]) -> EngineError:
    with pytest.raises(EngineError) as info:
        d.handle(op, args)
    return info.value


# ---------------------------------------------------------------------------- errnos


def test_unknown_scheduler_is_enoent(director: Director) -> None:
    err = refused(director, "add_service", {**SVC, "sched": "nosuch"})
    assert err.errno_name == "ENOENT"
    assert "nosuch" in str(err)
    assert table(director) == {}
    director.handle("add_service", {**SVC, "sched": "rr"})
    assert refused(director, "edit_service", {**SVC, "sched": "lc-x"}).errno_name == "ENOENT"


def test_unknown_operation_is_eopnotsupp(director: Director) -> None:
    err = refused(director, "frobnicate", {})
    assert err.errno_name == "EOPNOTSUPP"
    assert "frobnicate" in str(err)


def test_zero_of_a_missing_service_is_esrch(director: Director) -> None:
    assert refused(director, "zero", {"service": SVC}).errno_name == "ESRCH"
    director.handle("add_service", {**SVC, "sched": "rr"})
    assert director.handle("zero", {"service": SVC}) is None


@pytest.mark.parametrize(
    ("op", "args", "errno"),
    [
        ("add_dest", {"service": SVC, "dest": dest("10.0.0.2")}, "ESRCH"),
        ("edit_service", {**SVC, "sched": "rr"}, "ESRCH"),
        ("del_service", SVC, "ESRCH"),
        ("del_dest", {"service": SVC, "dest": {"addr": "10.0.0.2", "port": 80}}, "ESRCH"),
        ("add_service", {**SVC, "proto": "sctp"}, "EOPNOTSUPP"),
        ("add_service", {"fwmark": 1, "ipv6": True, "sched": "rr"}, "EOPNOTSUPP"),
        ("add_service", {**SVC, "addr": "10.0.0.300"}, "EINVAL"),
        ("list", {"service": SVC}, "ESRCH"),
        ("set_timeout", {"tcp": -1, "tcpfin": 0, "udp": 0}, "EINVAL"),
    ],
)
def test_refusals_on_an_empty_director(director: Director, op: str, args: dict[str, Any], errno: str) -> None:
    assert refused(director, op, args).errno_name == errno


def test_dest_refusals(director: Director) -> None:
    director.handle("add_service", {**SVC, "sched": "rr"})
    director.handle("add_dest", {"service": SVC, "dest": dest("10.0.0.2")})
    assert refused(director, "add_dest", {"service": SVC, "dest": dest("10.0.0.2")}).errno_name == "EEXIST"
    assert refused(director, "edit_dest", {"service": SVC, "dest": dest("10.0.0.3")}).errno_name == "ENOENT"
    bad = dest("10.0.0.3", u_threshold=5, l_threshold=6)
    assert refused(director, "add_dest", {"service": SVC, "dest": bad}).errno_name == "ERANGE"  # as the kernel
    assert table(director) == {(VIP, 80): {("10.0.0.2", 80): 1}}


# ---------------------------------------------------------------------------- batch


def restore_requests() -> list[dict[str, Any]]:
    return [
        {"op": "add_service", "args": {**SVC, "sched": "rr"}},
        {"op": "add_dest", "args": {"service": SVC, "dest": dest("10.0.0.2")}},
        {"op": "add_dest", "args": {"service": SVC, "dest": dest("10.0.0.3", weight=3)}},
        {"op": "add_service", "args": {**SVC2, "sched": "wlc"}},
    ]


def test_batch_applies_everything(director: Director) -> None:
    assert director.handle("batch", {"requests": restore_requests()}) == {"applied": 4}
    assert table(director) == {(VIP, 80): {("10.0.0.2", 80): 1, ("10.0.0.3", 80): 3}, (VIP, 443): {}}


def test_batch_refused_by_the_model_changes_nothing_and_names_the_request(director: Director) -> None:
    director.handle("add_service", {**SVC2, "sched": "rr"})
    before = table(director)
    requests = restore_requests()
    # The 4th request collides with the existing service: EEXIST, index 3, and nothing of 0..2 applied.
    with pytest.raises(BatchError) as info:
        director.handle("batch", {"requests": requests})
    assert (info.value.errno_name, info.value.index, info.value.op) == ("EEXIST", 3, "add_service")
    assert table(director) == before


def test_batch_refused_by_the_engine_midway_is_rolled_back(director: Director) -> None:
    refusing(director.engine)
    director.handle("add_service", {**SVC2, "sched": "rr"})
    director.handle("add_dest", {"service": SVC2, "dest": dest("10.0.0.9", 443)})
    before = table(director)
    # The model does not know every engine limit (here the test's: a destination at REFUSED_RIP): the
    # engine refuses request 6 after 0..5 (including an edit and a delete) went through; all are undone.
    ops_svc = {"proto": "udp", "addr": VIP, "port": 53}
    requests = [
        *restore_requests()[:3],
        {"op": "edit_service", "args": {**SVC2, "sched": "wlc"}},
        {"op": "del_dest", "args": {"service": SVC2, "dest": {"addr": "10.0.0.9", "port": 443}}},
        {"op": "add_service", "args": {**ops_svc, "sched": "rr", "ops": True}},
        {"op": "add_dest", "args": {"service": ops_svc, "dest": dest(REFUSED_RIP, 53, fwd="masq")}},
    ]
    with pytest.raises(BatchError) as info:
        director.handle("batch", {"requests": requests})
    assert info.value.index == 6
    assert info.value.errno_name == "EOPNOTSUPP"
    assert table(director) == before
    services = director.handle("list", {})["services"]
    assert [s["sched"] for s in services] == ["rr"]  # the edit was undone too


def test_batch_rejects_reads_and_nesting(director: Director) -> None:
    for op, errno in (("list", "EINVAL"), ("batch", "EINVAL"), ("reload", "EINVAL"), ("nosuch", "EOPNOTSUPP")):
        with pytest.raises(BatchError) as info:
            director.handle("batch", {"requests": [{"op": "add_service", "args": {**SVC, "sched": "rr"}},
                                                   {"op": op, "args": {}}]})
        assert (info.value.errno_name, info.value.index) == (errno, 1)
    assert table(director) == {}


def test_batch_sees_its_own_earlier_requests(director: Director) -> None:
    # Delete and re-create within one batch: valid in order, and the result is the final word.
    director.handle("batch", {"requests": restore_requests()})
    director.handle("batch", {"requests": [
        {"op": "del_service", "args": SVC},
        {"op": "add_service", "args": {**SVC, "sched": "wlc"}},
        {"op": "add_dest", "args": {"service": SVC, "dest": dest("10.0.0.5")}},
    ]})
    assert table(director)[(VIP, 80)] == {("10.0.0.5", 80): 1}


class FailingRules:
    def __init__(self) -> None:
        self.fail = False
        self.synced: list[list[tuple[int, str, int]]] = []

    def sync(self, steering: Steering, verify_sets: bool = False) -> None:
        if self.fail:
            self.fail = False  # the restoring sync afterwards works
            raise RuntimeError("iptables-restore: boom")
        self.synced.append(sorted(steering.services))


def test_rules_sync_failure_rolls_the_engine_back() -> None:
    rules = FailingRules()
    d = Director(make_engine("c"), rules=rules, resolver=None)
    d.handle("add_service", {**SVC, "sched": "rr"})
    rules.fail = True
    with pytest.raises(EngineError) as info:
        d.handle("batch", {"requests": [{"op": "add_service", "args": {**SVC2, "sched": "rr"}}]})
    assert info.value.errno_name == "EIO"
    assert "boom" in str(info.value)
    assert table(d) == {(VIP, 80): {}}
    assert rules.synced[-1] == [(6, VIP, 80)]  # rules restored to the running services


class RefusingRules(FailingRules):
    """A packet source that cannot steer fwmark services (lb.afxdp)."""

    def sync(self, steering: Steering, verify_sets: bool = False) -> None:
        if steering.fwmarks:
            raise AfxdpRefusal(0, "fwmark services need the NFQUEUE packet source")
        super().sync(steering, verify_sets)


def test_a_packet_sources_refusal_keeps_its_errno_and_reason() -> None:
    """lbadm prints lbd's reason for EOPNOTSUPP (ipvsadm's text for EIO would say nothing)."""
    rules = RefusingRules()
    d = Director(make_engine("c"), rules=rules, resolver=None)
    with pytest.raises(EngineError) as info:
        d.handle("add_service", {"fwmark": 7, "sched": "rr"})
    assert info.value.errno_name == "EOPNOTSUPP"
    assert "fwmark services need the NFQUEUE packet source; nothing was changed" == str(info.value)
    assert table(d) == {}
    assert ipvs_strerror("add_service", info.value.errno_name, str(info.value)) == str(info.value)


# ---------------------------------------------------------------------------- counters, rates, timeouts


class CountingEngine:
    """Wraps an engine and lets a test set the cumulative counters services() reports. The rates are
    then the director's (lb/estimator.py) from those counters, whatever the engine: it reports no
    estimators of its own (rate_tick None, no rates in the listing)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.svc_stats: dict[int, Stats] = {}
        self.dest_stats: dict[tuple[int, str], Stats] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def services(self, counters: bool = True) -> list[Any]:
        infos = self.inner.services(counters)
        for s in infos:
            s.stats = self.svc_stats.get(s.spec.key.port, s.stats)
            s.rates = None
            for d in s.dests:
                d.stats = self.dest_stats.get((s.spec.key.port, d.spec.addr), d.stats)
                d.rates = None
        return infos

    def rate_tick(self) -> None:
        return None

    def service(self, key: Any) -> Any:
        return next(s for s in self.services() if s.spec.key == key)

    def changed_services(self) -> list[Any]:  # a superset is allowed: every service
        return [s.spec.key for s in self.services()]


def service_stats(d: Director, port: int) -> dict[str, int]:
    return next(s["stats"] for s in d.handle("list", {})["services"] if s["port"] == port)


@pytest.mark.parametrize("kind", ["c", "python"])
def test_rates_in_list_follow_the_estimator(kind: str) -> None:
    engine = CountingEngine(make_engine(kind))
    d = Director(engine, rules=None, resolver=None)
    d.handle("batch", {"requests": restore_requests()})
    for tick in range(1, 41):  # 40 ticks of 2 s: 100 connections and 1000 packets, 64000 bytes per tick
        engine.svc_stats[80] = Stats(conns=100 * tick, inpkts=1000 * tick, outpkts=500 * tick,
                                     inbytes=64000 * tick, outbytes=32000 * tick)
        d.estimate()
    stats = service_stats(d, 80)
    assert stats["conns"] == 4000
    assert (stats["cps"], stats["inpps"], stats["outpps"], stats["inbps"], stats["outbps"]) == (50, 500, 250, 32000, 16000)
    assert service_stats(d, 443)["cps"] == 0


def syn(sport: int, dport: int) -> bytes:
    import packet_table

    return packet_table.tcp(sport=sport, dport=dport, src="192.0.2.10", dst=VIP, flags="S")


def with_traffic(d: Director) -> None:
    """Services 80 and 443 with one destination each (forwarding state set), 3 and 2 new connections."""
    from lb.engine import FwdState
    from lb.model import ServiceKey

    d.handle("batch", {"requests": [
        {"op": "add_service", "args": {**SVC, "sched": "rr"}},
        {"op": "add_dest", "args": {"service": SVC, "dest": dest("10.0.0.2")}},
        {"op": "add_service", "args": {**SVC2, "sched": "rr"}},
        {"op": "add_dest", "args": {"service": SVC2, "dest": dest("10.0.0.2", 443)}},
    ]})
    fwd = FwdState(ifindex=2, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6, saddr="10.0.0.1")
    for port in (80, 443):
        d.engine.set_fwd(ServiceKey(6, VIP, port), "10.0.0.2", port, fwd)
    for i, port in enumerate((80, 80, 80, 443, 443)):
        d.engine.process(syn(40000 + i, port), 1000)


def test_zero_one_service_leaves_the_others(director: Director) -> None:
    with_traffic(director)
    d = director
    assert (service_stats(d, 80)["conns"], service_stats(d, 443)["conns"]) == (3, 2)
    d.handle("zero", {"service": SVC})
    assert (service_stats(d, 80)["conns"], service_stats(d, 443)["conns"]) == (0, 2)
    dest80 = d.handle("list", {"service": SVC})["services"][0]["dests"][0]["stats"]
    assert (dest80["conns"], dest80["inpkts"]) == (0, 0)
    d.engine.process(syn(41000, 80), 2000)
    assert service_stats(d, 80)["conns"] == 1  # counted since the zero
    d.handle("zero", {})
    assert (service_stats(d, 80)["conns"], service_stats(d, 443)["conns"]) == (0, 0)


def test_zero_restarts_rates(director: Director) -> None:
    engine = CountingEngine(director.engine)
    d = Director(engine, rules=None, resolver=None)
    d.handle("add_service", {**SVC, "sched": "rr"})
    for tick in range(1, 11):
        engine.svc_stats[80] = Stats(conns=100 * tick)
        d.estimate()
    assert service_stats(d, 80)["cps"] > 0
    d.handle("zero", {"service": SVC})
    assert service_stats(d, 80)["cps"] == 0


def test_timeouts_are_stored_merged_and_reported(director: Director) -> None:
    assert director.handle("get_timeout", {}) == {"tcp": 900, "tcpfin": 120, "udp": 300}
    director.handle("set_timeout", {"tcp": 3600, "tcpfin": 0, "udp": 60})
    assert director.handle("get_timeout", {}) == {"tcp": 3600, "tcpfin": 120, "udp": 60}
    assert director.engine.get_timeouts() == (3600, 120, 60)


# ---------------------------------------------------------------------------- reload


@pytest.fixture
def conf_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lbd-conf-") as d:
        yield Path(d)


def toml_services(ports: list[int], weights: dict[int, int] | None = None) -> str:
    out = []
    for port in ports:
        out.append(f'[[service]]\nproto = "tcp"\naddr = "{VIP}"\nport = {port}\nsched = "rr"\n')
        out.append(f'  [[service.dest]]\n  addr = "10.0.0.2"\n  weight = {(weights or {}).get(port, 1)}\n')
    return "\n".join(out)


class Spy:
    """Records the table-changing engine calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("add_service", "edit_service", "del_service", "add_dest", "edit_dest", "del_dest", "clear"):
            def call(*args: Any) -> Any:
                key = args[0].key if hasattr(args[0], "key") else args[0]
                self.calls.append((name, key.port))
                return attr(*args)
            return call
        return attr


def test_reload_applies_the_minimal_plan(conf_dir: Path) -> None:
    path = conf_dir / "lbd.toml"
    path.write_text(toml_services([1, 2, 4, 5]))
    spy = Spy(make_engine("c"))
    d = Director(spy, rules=None, resolver=None, config_path=str(path))
    d.handle("reload", {})
    spy.calls.clear()
    path.write_text(toml_services([1, 2, 3, 4, 5], weights={5: 7}))
    result = d.handle("reload", {})
    assert spy.calls == [("add_service", 3), ("add_dest", 3), ("edit_dest", 5)]
    assert result["applied"] == 3
    assert sorted(table(d)) == [(VIP, p) for p in (1, 2, 3, 4, 5)]


def test_reload_of_an_invalid_file_changes_nothing(conf_dir: Path) -> None:
    path = conf_dir / "lbd.toml"
    path.write_text(toml_services([1, 2]))
    d = Director(make_engine("c"), rules=None, resolver=None, config_path=str(path))
    d.handle("reload", {})
    before = table(d)
    path.write_text(toml_services([1, 3]) + '\n[[service]]\nproto = "tcp"\naddr = "nope"\nport = 9\n')
    err = refused(d, "reload", {})
    assert err.errno_name == "EINVAL"
    assert "lbd.toml:" in str(err) and "bad service address 'nope'" in str(err)
    assert table(d) == before


def test_reload_refused_by_the_engine_is_rolled_back(conf_dir: Path) -> None:
    path = conf_dir / "lbd.toml"
    path.write_text(toml_services([1, 2]))
    d = Director(refusing(make_engine("c")), rules=None, resolver=None, config_path=str(path))
    d.handle("reload", {})
    before = table(d)
    # a destination valid for the model, refused by the (test's) engine
    bad = toml_services([1, 3]) + (f'\n[[service]]\nproto = "udp"\naddr = "{VIP}"\nport = 53\nops = true\n'
                                   f'  [[service.dest]]\n  addr = "{REFUSED_RIP}"\n  fwd = "masq"\n')
    path.write_text(bad)
    err = refused(d, "reload", {})
    assert err.errno_name == "EOPNOTSUPP"
    assert f"{path}:" in str(err)  # the file and line of the destination the engine refused
    assert table(d) == before


def test_reload_without_a_config_file_is_einval(director: Director) -> None:
    assert refused(director, "reload", {}).errno_name == "EINVAL"


# ---------------------------------------------------------------------------- through the socket, with lbadm


def run_lbadm(path: str, argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    return lbadm(path, *argv, stdin=stdin)


def test_lbadm_restore_is_atomic_against_a_real_director(conf_dir: Path) -> None:
    path = os.path.join(str(conf_dir), "s")
    d = Director(make_engine("c"), rules=None, resolver=None)
    with director_socket(path, d):
        good = "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 2\n"
        assert run_lbadm(path, ["-R"], good)[0] == 0
        bad = "-A -t 10.0.0.1:443 -s rr\n-a -t 10.0.0.1:8443 -r 10.0.0.2:80 -g\n"
        rc, _, err = run_lbadm(path, ["-R"], bad)
        assert rc == 255
        assert err.splitlines() == ["Service not defined", "lbadm: restore: command 2 failed; nothing was changed"]
        rc, out, _ = run_lbadm(path, ["-S", "-n"])
        assert (rc, out) == (0, good)
        assert run_lbadm(path, ["-A", "-t", "10.0.0.1:81", "-s", "nosuch"])[1:] == \
            ("", f"scheduler 'nosuch' is not implemented by lbd (lbd has: {', '.join(SCHEDULERS)})\n")
        assert run_lbadm(path, ["-Z", "-t", "10.0.0.1:81"])[2] == "No such service\n"
        assert run_lbadm(path, ["--set", "100", "0", "50"])[0] == 0
        assert run_lbadm(path, ["-L", "--timeout"])[1] == "Timeout (tcp tcpfin udp): 100 120 50\n"


def test_lbadm_reload_reports_every_error(conf_dir: Path) -> None:
    conf = conf_dir / "lbd.toml"
    conf.write_text(toml_services([1]))
    path = os.path.join(str(conf_dir), "s")
    d = Director(make_engine("c"), rules=None, resolver=None, config_path=str(conf))
    with director_socket(path, d):
        assert run_lbadm(path, ["--reload"])[0] == 0
        conf.write_text('[[service]]\nproto = "tcp"\naddr = "10.0.0.1"\nport = 1\nsched = "x"\nweight = 2\n')
        rc, _, err = run_lbadm(path, ["--reload"])
        assert rc == 255
        assert f"{conf}:5: 'sched' must be one of {', '.join(SCHEDULERS)}, got 'x'" in err
        assert f"{conf}:6: unknown key 'weight' in [[service]]" in err
    assert table(d) == {(VIP, 1): {("10.0.0.2", 1): 1}}



def test_lbadm_rate_listing_shows_the_estimates(conf_dir: Path) -> None:
    path = os.path.join(str(conf_dir), "s")
    engine = CountingEngine(make_engine("c"))
    d = Director(engine, rules=None, resolver=None)
    d.handle("batch", {"requests": restore_requests()})
    for tick in range(1, 41):
        engine.svc_stats[80] = Stats(conns=100 * tick, inpkts=1000 * tick, outpkts=500 * tick,
                                     inbytes=64000 * tick, outbytes=32000 * tick)
        engine.dest_stats[(80, "10.0.0.3")] = Stats(conns=100 * tick, inpkts=1000 * tick, outpkts=500 * tick,
                                                    inbytes=64000 * tick, outbytes=32000 * tick)
        d.estimate()
    with director_socket(path, d):
        rc, out, err = run_lbadm(path, ["-Ln", "--rate", "-t", "10.0.0.1:80"])
    assert (rc, err) == (0, "")
    lines = out.splitlines()  # -L -t: ipvsadm prints no version line, just the two column headers
    assert lines[0].split() == ["Prot", "LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"]
    assert lines[2].split() == ["TCP", "10.0.0.1:80", "50", "500", "250", "32000", "16000"]
    assert lines[3].split() == ["->", "10.0.0.2:80", "0", "0", "0", "0", "0"]
    assert lines[4].split() == ["->", "10.0.0.3:80", "50", "500", "250", "32000", "16000"]


class Exploding:
    """An engine whose edit_dest fails with an unexpected exception (a bug below the Director)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def edit_dest(self, *args: Any) -> None:
        raise RuntimeError("cffi exploded")


def test_unexpected_engine_exception_is_rolled_back_as_eio() -> None:
    d = Director(Exploding(make_engine("c")), rules=None, resolver=None)
    d.handle("batch", {"requests": restore_requests()[:2]})
    before = table(d)
    with pytest.raises(BatchError) as info:
        d.handle("batch", {"requests": [
            {"op": "add_service", "args": {**SVC2, "sched": "rr"}},
            {"op": "edit_dest", "args": {"service": SVC, "dest": dest("10.0.0.2", weight=9)}},
        ]})
    assert (info.value.errno_name, info.value.index) == ("EIO", 1)
    assert "cffi exploded" in str(info.value)
    assert table(d) == before
