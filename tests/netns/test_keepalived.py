"""Debian's unmodified keepalived 2.2.7 drives lbd through lbd-exec (issue 17 item 3).

keepalived's checker child configures `virtual_server` blocks through the IPVS sockopts, which
the preload library hands to lbd. Real packets: a client in its own namespace fetches from the
VIP; real servers run their own httpd that a test kills (SIGKILL) and starts again. Every wait
polls `lbadm -Ln` (or the traffic) until the expected state, bounded by EVENT_TIMEOUT_S, several
times the checkers' delay_loop of 1 s.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Lbd, parse_ln, running_lbd

from lb.testbed.ipip_decap import start_in
from lb.testbed.keepalived import EVENT_TIMEOUT_S, PORT, Keepalived, RealServers, listing, served_by, wait_for
from lb.testbed.topology import Topology

pytestmark = pytest.mark.netns

GLOBAL = """\
global_defs {
    router_id lbKA
    script_user root
    enable_script_security
}
"""


def _real(addr: str, check: str, weight: int = 1) -> str:
    return f"""\
    real_server {addr} {PORT} {{
        weight {weight}
        {check}
    }}
"""


TCP_CHECK = "TCP_CHECK { connect_timeout 1 retry 1 delay_before_retry 1 }"
LBD_LATE_S = 3  # lbd starts this long after keepalived (the library's wait is 60 s)
HTTP_GET = ("HTTP_GET { url { path / status_code 200 } connect_timeout 1 retry 1 "
            "delay_before_retry 1 }")


def _virtual_server(vip: str, reals: str, *, algo: str = "rr", kind: str = "DR", extra: str = "") -> str:
    return f"""\
virtual_server {vip} {PORT} {{
    delay_loop 1
    lb_algo {algo}
    lb_kind {kind}
    protocol TCP
{extra}{reals}}}
"""


@pytest.fixture
def ka_lbd(topo: Topology, ka_problem: None) -> Iterator[Lbd]:
    with running_lbd(topo, "c") as d:
        yield d


@pytest.fixture
def reals(topo: Topology) -> Iterator[RealServers]:
    servers = RealServers(topo, topo.reals)
    try:
        yield servers.start_all()
    finally:
        servers.stop_all()


def _start(topo: Topology, lbd: Lbd, config: str, started: list[Keepalived], wait_s: int | None = None) -> Keepalived:
    ka = Keepalived(topo, topo.director, lbd.socket, config, wait_s=wait_s)
    started.append(ka)
    return ka.start()


@contextlib.contextmanager
def own_lbd(topo: Topology) -> Iterator[Lbd]:
    """An lbd the test starts and stops itself; killed (by PID) if still running at the end, its
    files removed."""
    lbd = Lbd(topo, "c")
    try:
        yield lbd
    finally:
        if lbd.running():
            lbd.stop(signal.SIGKILL)
        lbd.cleanup()


def stop_leaves_nothing(ka: Keepalived, lbd: Lbd) -> None:
    """keepalived stops (exit 0) and its shutdown takes its virtual servers out of lbd."""
    assert ka.stop() == 0, ka.log()
    assert listing(lbd.lbadm) == {}, "keepalived's shutdown leaves its virtual server behind"


def _diag(lbd: Lbd, ka: Keepalived) -> Callable[[], str]:
    return lambda: f"lbadm -Ln:\n{lbd.lbadm('-Ln').stdout}\nkeepalived log:\n{ka.log()}\nlbd log:\n{lbd.log_tail()}"


def _weights_become(lbd: Lbd, ka: Keepalived, vip: str, want: dict[str, int]) -> None:
    def probe() -> bool | None:
        return True if listing(lbd.lbadm).get((vip, PORT)) == want else None
    wait_for(f"{vip}:{PORT} lists {want}", probe, _diag(lbd, ka))


def _traffic_becomes(topo: Topology, lbd: Lbd, ka: Keepalived, want: set[str], n: int = 12) -> dict[str, int]:
    """Until `n` fresh connections are all answered, by exactly the servers `want`."""
    def probe() -> dict[str, int] | None:
        got = served_by(topo, topo.vip, n)
        return got if set(got) == want else None
    return wait_for(f"connections to {topo.vip}:{PORT} answered by exactly {sorted(want)}", probe, _diag(lbd, ka))


@pytest.mark.parametrize("check", [TCP_CHECK, HTTP_GET], ids=["TCP_CHECK", "HTTP_GET"])
def test_checker_takes_a_dead_real_server_out_and_back(topo: Topology, ka_lbd: Lbd, reals: RealServers,
                                                       keepalived: list[Keepalived], check: str) -> None:
    rs = topo.reals
    conf = GLOBAL + _virtual_server(topo.vip, "".join(_real(r.addr, check) for r in rs))
    ka = _start(topo, ka_lbd, conf, keepalived)
    everyone = {r.addr: 1 for r in rs}
    _weights_become(ka_lbd, ka, topo.vip, everyone)
    assert ka_lbd.lbadm("-Ln").stdout.splitlines()[3] == f"TCP  {topo.vip}:{PORT} rr"
    _traffic_becomes(topo, ka_lbd, ka, {r.name for r in rs})

    reals.kill(rs[0].name)
    _weights_become(ka_lbd, ka, topo.vip, {r.addr: 1 for r in rs[1:]})
    _traffic_becomes(topo, ka_lbd, ka, {r.name for r in rs[1:]})

    reals.start(rs[0].name)
    _weights_become(ka_lbd, ka, topo.vip, everyone)
    _traffic_becomes(topo, ka_lbd, ka, {r.name for r in rs})

    stop_leaves_nothing(ka, ka_lbd)


def test_misc_check_with_inhibit_on_failure_sets_weight_zero_under_wlc(
        topo: Topology, ka_lbd: Lbd, reals: RealServers, keepalived: list[Keepalived], tmp_path: Path) -> None:
    # MISC_CHECK runs a script per real server: it connects with bash's /dev/tcp. keepalived's
    # enable_script_security accepts it: root's, in directories only root can write to.
    script = tmp_path / "probe.sh"
    script.write_text(f"#!/bin/bash\nexec 3<>/dev/tcp/$1/{PORT}\n")
    script.chmod(0o700)
    rs = topo.reals
    checks = [f'MISC_CHECK {{ misc_path "{script} {r.addr}" misc_timeout 2 }}' for r in rs]
    conf = GLOBAL + _virtual_server(topo.vip, "".join(_real(r.addr, c, weight=2) for r, c in zip(rs, checks, strict=True)),
                                    algo="wlc", extra="    inhibit_on_failure\n")
    ka = _start(topo, ka_lbd, conf, keepalived)
    _weights_become(ka_lbd, ka, topo.vip, {r.addr: 2 for r in rs})
    assert ka_lbd.lbadm("-Ln").stdout.splitlines()[3] == f"TCP  {topo.vip}:{PORT} wlc"
    _traffic_becomes(topo, ka_lbd, ka, {r.name for r in rs})

    reals.kill(rs[1].name)
    # inhibit_on_failure: the dead server stays listed, at weight 0, and gets no new connection.
    _weights_become(ka_lbd, ka, topo.vip, {rs[0].addr: 2, rs[1].addr: 0, rs[2].addr: 2})
    _traffic_becomes(topo, ka_lbd, ka, {rs[0].name, rs[2].name})

    reals.start(rs[1].name)
    _weights_become(ka_lbd, ka, topo.vip, {r.addr: 2 for r in rs})
    _traffic_becomes(topo, ka_lbd, ka, {r.name for r in rs})
    stop_leaves_nothing(ka, ka_lbd)


def test_quorum_lost_hands_the_service_to_the_sorry_server(
        topo: Topology, ka_lbd: Lbd, reals: RealServers, keepalived: list[Keepalived]) -> None:
    # Two real servers of weight 1, quorum 2: one down loses quorum. keepalived then, as with the
    # kernel, removes the remaining live server and adds the sorry server; regaining quorum undoes it.
    rs1, rs2, sorry = topo.reals[:3]
    extra = f"    quorum 2\n    sorry_server {sorry.addr} {PORT}\n"
    conf = GLOBAL + _virtual_server(topo.vip, _real(rs1.addr, TCP_CHECK) + _real(rs2.addr, TCP_CHECK), extra=extra)
    ka = _start(topo, ka_lbd, conf, keepalived)
    _weights_become(ka_lbd, ka, topo.vip, {rs1.addr: 1, rs2.addr: 1})
    _traffic_becomes(topo, ka_lbd, ka, {rs1.name, rs2.name})

    reals.kill(rs1.name)
    _weights_become(ka_lbd, ka, topo.vip, {sorry.addr: 1})
    _traffic_becomes(topo, ka_lbd, ka, {sorry.name})
    assert "Lost quorum" in ka.log(100_000)

    reals.start(rs1.name)
    _weights_become(ka_lbd, ka, topo.vip, {rs1.addr: 1, rs2.addr: 1})
    _traffic_becomes(topo, ka_lbd, ka, {rs1.name, rs2.name})
    stop_leaves_nothing(ka, ka_lbd)


def test_keepalived_started_before_lbd_configures_it_once_lbd_is_up(
        topo: Topology, ka_problem: None, reals: RealServers, keepalived: list[Keepalived]) -> None:
    # keepalived gives up on IPVS for its whole life if its first call fails: the preload library
    # waits for lbd's socket (lbd-exec --wait) instead. lbd comes up a few seconds later here.
    with own_lbd(topo) as lbd:
        conf = GLOBAL + _virtual_server(topo.vip, "".join(_real(r.addr, TCP_CHECK) for r in topo.reals))
        ka = _start(topo, lbd, conf, keepalived, wait_s=60)
        time.sleep(LBD_LATE_S)
        assert ka.running(), ka.log()
        assert not Path(lbd.socket).exists()
        lbd.start()
        _weights_become(lbd, ka, topo.vip, {r.addr: 1 for r in topo.reals})
        _traffic_becomes(topo, lbd, ka, {r.name for r in topo.reals})
        assert "Can't initialize ipvs" not in ka.log(100_000)
        stop_leaves_nothing(ka, lbd)
        assert lbd.stop() == 0, lbd.log_tail()
        assert lbd.iptables_leftovers() == []


def test_lb_kind_tun_sends_through_ipip_and_follows_a_dead_server(
        topo: Topology, ka_lbd: Lbd, reals: RealServers, keepalived: list[Keepalived]) -> None:
    dev = f"{topo.prefix}kaip"
    decaps = [start_in(rs, dev, seconds=EVENT_TIMEOUT_S * 10) for rs in topo.reals]
    try:
        rs = topo.reals
        conf = GLOBAL + _virtual_server(topo.vip, "".join(_real(r.addr, TCP_CHECK) for r in rs),
                                        algo="wlc", kind="TUN")
        ka = _start(topo, ka_lbd, conf, keepalived)
        _weights_become(ka_lbd, ka, topo.vip, {r.addr: 1 for r in rs})
        assert {d.forward for s in parse_ln(ka_lbd.lbadm("-Ln").stdout) for d in s.dests} == {"Tunnel"}
        _traffic_becomes(topo, ka_lbd, ka, {r.name for r in rs})
        reals.kill(rs[2].name)
        _weights_become(ka_lbd, ka, topo.vip, {r.addr: 1 for r in rs[:2]})
        _traffic_becomes(topo, ka_lbd, ka, {r.name for r in rs[:2]})
        stop_leaves_nothing(ka, ka_lbd)
    finally:
        for p in decaps:
            topo.stop_process(p)


def test_without_lbd_keepalived_stops_saying_why_and_loads_no_kernel_module(
        topo: Topology, ka_problem: None, keepalived: list[Keepalived]) -> None:
    # No lbd within the wait (1 s): keepalived's checker tries `modprobe ip_vs`, which the library
    # refuses (its IPVS is lbd), then gives up on IPVS and keepalived exits with an error rather
    # than run health checks that configure nothing.
    missing = str(topo.director.exec(["mktemp", "-u", f"/tmp/{topo.prefix}-nolbd-XXXXXX"]).stdout.strip())
    conf = GLOBAL + _virtual_server(topo.vip, _real(topo.reals[0].addr, TCP_CHECK))
    ka = Keepalived(topo, topo.director, missing, conf, wait_s=1)
    keepalived.append(ka.start())
    assert ka.proc is not None
    rc = ka.proc.wait(timeout=EVENT_TIMEOUT_S)
    log = ka.log(100_000)
    assert rc != 0, log
    assert f"lbd: cannot reach lbd at {missing}" in log
    assert "lbd: not loading the kernel's ip_vs module" in log
    assert "IPVS: Can't initialize ipvs" in log


def test_reload_applies_the_changed_configuration(topo: Topology, ka_lbd: Lbd, reals: RealServers,
                                                   keepalived: list[Keepalived]) -> None:
    # SIGHUP (systemctl reload keepalived): keepalived compares the new configuration with the old
    # and changes only the difference: here the scheduler, a new real server and a removed one.
    rs1, rs2, rs3 = topo.reals[:3]
    conf = GLOBAL + _virtual_server(topo.vip, _real(rs1.addr, TCP_CHECK) + _real(rs2.addr, TCP_CHECK))
    ka = _start(topo, ka_lbd, conf, keepalived)
    _weights_become(ka_lbd, ka, topo.vip, {rs1.addr: 1, rs2.addr: 1})
    ka.conf.write_text(GLOBAL + _virtual_server(
        topo.vip, _real(rs2.addr, TCP_CHECK, weight=3) + _real(rs3.addr, TCP_CHECK), algo="wlc"))
    assert ka.proc is not None
    ka.proc.send_signal(signal.SIGHUP)
    _weights_become(ka_lbd, ka, topo.vip, {rs2.addr: 3, rs3.addr: 1})
    assert ka_lbd.lbadm("-Ln").stdout.splitlines()[3] == f"TCP  {topo.vip}:{PORT} wlc"
    _traffic_becomes(topo, ka_lbd, ka, {rs2.name, rs3.name})
    stop_leaves_nothing(ka, ka_lbd)


def test_lbd_restarted_under_keepalived_keeps_taking_its_orders(topo: Topology, ka_problem: None,
                                                               reals: RealServers,
                                                               keepalived: list[Keepalived]) -> None:
    # lbd restores its table from its state file (next to its socket); the preload library opens a
    # new connection on keepalived's next call, so the checker's next change reaches the new lbd.
    with own_lbd(topo) as lbd:
        lbd.start()
        rs = topo.reals
        conf = GLOBAL + _virtual_server(topo.vip, "".join(_real(r.addr, TCP_CHECK) for r in rs))
        ka = _start(topo, lbd, conf, keepalived)
        _weights_become(lbd, ka, topo.vip, {r.addr: 1 for r in rs})
        assert lbd.stop() == 0, lbd.log_tail()
        lbd.start()
        _weights_become(lbd, ka, topo.vip, {r.addr: 1 for r in rs})
        reals.kill(rs[0].name)
        _weights_become(lbd, ka, topo.vip, {r.addr: 1 for r in rs[1:]})
        _traffic_becomes(topo, lbd, ka, {r.name for r in rs[1:]})
        reals.start(rs[0].name)
        _weights_become(lbd, ka, topo.vip, {r.addr: 1 for r in rs})
        stop_leaves_nothing(ka, lbd)
        assert lbd.stop() == 0, lbd.log_tail()
        assert lbd.iptables_leftovers() == []
