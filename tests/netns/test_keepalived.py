"""Debian's unmodified keepalived 2.2.7 drives lbd through lbd-exec (issue 17 item 3).

keepalived's checker child configures `virtual_server` blocks through the IPVS sockopts, which
the preload library hands to lbd. Real packets: a client in its own namespace fetches from the
VIP; real servers run their own httpd that a test kills (SIGKILL) and starts again. Every wait
polls `lbadm -Ln` (or the traffic) until the expected state, bounded by EVENT_TIMEOUT_S, several
times the checkers' delay_loop of 1 s.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Lbd, running_lbd
from kahelp import PORT, Keepalived, RealServers, keepalived_problem, listing, served_by, wait_for

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


@pytest.fixture(scope="module")
def ka_problem() -> None:
    problem = keepalived_problem()
    if problem:
        pytest.skip(problem)


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


@pytest.fixture
def keepalived(topo: Topology) -> Iterator[list[Keepalived]]:
    """Keepalived instances a test starts; each is SIGKILLed if still running and its files removed."""
    started: list[Keepalived] = []
    yield started
    for ka in started:
        ka.cleanup()


def _start(topo: Topology, lbd: Lbd, config: str, started: list[Keepalived], **kw: object) -> Keepalived:
    ka = Keepalived(topo, topo.director, lbd.socket, config, **kw)  # type: ignore[arg-type]
    started.append(ka)
    return ka.start()


def _diag(lbd: Lbd, ka: Keepalived):
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

    assert ka.stop() == 0, ka.log()
    assert listing(ka_lbd.lbadm) == {}, "keepalived's shutdown leaves its virtual server behind"
