"""`lbd --nat-replies ingress` (lb/natingress.py, native/src/natrx.c, docs/firewall.md "NAT replies
at ingress"): NAT replies taken by a netdev ingress chain bound to the real servers' interface and
read from lbd's veth pair, so that nothing of lbd's sits in the forward hook.

Real packets through the FULLNAT topology (client - director - real servers): HTTP through NAT with
port translation, a large download (the real servers' TSO packets cross veth whole: GSO segmented
by lbd's reader) and large UDP answers (fragmented on the back segment: reassembled by the reader's
socket), the director's own connections to a real server untouched, the chain bound to the back
interface only and no forward chain, the pair, table and reader there only while NAT real servers
exist (the reader in the queue's thread), and lbd's table, chain and pair gone after SIGTERM and
taken over after kill -9 (also by an lbd with --nat-replies forward).

The rest of the NAT suite runs in this mode with LB_TEST_NAT_REPLIES=ingress (tests/netns/conftest.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NFT, Lbd, iptables_leftovers, running_lbd
from netns_traffic import serve_http
from steering import INPUT_HOOK, dump, netdev_dump

from lb.testbed import client
from lb.testbed.topology import Topology, fullnat_spec

pytestmark = pytest.mark.skipif(not INPUT_HOOK, reason="--nat-replies ingress goes with lbd's default steering "
                                "(nftables, input hook); this run uses another (LB_TEST_STEERING/LB_TEST_STEER_HOOK)")

VPORT, RPORT = 80, 8080
ARGS = ["--nat-replies", "ingress"]


@pytest.fixture(scope="module")
def itopo() -> Iterator[Topology]:
    with Topology(fullnat_spec(2)) as t:
        serve_http(t, (RPORT,), t.director)
        yield t


@pytest.fixture
def ilbd(itopo: Topology) -> Iterator[Lbd]:
    with running_lbd(itopo, "c", args=ARGS) as d:
        yield d


def nat_service(lbd: Lbd, t: Topology) -> None:
    lbd.lbadm("-A", "-t", f"{t.vip}:{VPORT}", "-s", "rr")
    for rs in t.reals:
        lbd.lbadm("-a", "-t", f"{t.vip}:{VPORT}", "-r", f"{rs.addr}:{RPORT}", "-m", "-w", "1")
    lbd.wait_resolved()


def natrx(lbd: Lbd) -> dict[str, int]:
    return dict(lbd.ok("counters").get("natrx", {}))


def links(t: Topology) -> list[str]:
    return [line for line in iptables_leftovers(t.director) if line.startswith("link: ")]


def thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            names.append((task / "comm").read_text().strip())
    return names


def test_pair_table_and_reader_come_with_the_first_nat_real_server_and_go_with_the_last(
        ilbd: Lbd, itopo: Topology) -> None:
    t = itopo
    ilbd.lbadm("-A", "-t", f"{t.vip}:{VPORT}", "-s", "rr")
    ilbd.lbadm("-a", "-t", f"{t.vip}:{VPORT}", "-r", f"{t.reals[0].addr}:{VPORT}", "-g")  # DR: not NAT
    ilbd.wait_resolved()
    assert links(t) == [] and netdev_dump(t.director) == ""  # a director without NAT has none of it
    assert "natrx" not in ilbd.ok("counters")
    ilbd.lbadm("-d", "-t", f"{t.vip}:{VPORT}", "-r", f"{t.reals[0].addr}:{VPORT}")
    for _ in range(2):  # and again after the last one left
        for rs in t.reals:
            ilbd.lbadm("-a", "-t", f"{t.vip}:{VPORT}", "-r", f"{rs.addr}:{RPORT}", "-m", "-w", "1")
        ilbd.wait_resolved()
        assert sorted(links(t)) == ["link: lbnr0", "link: lbnr0p"], links(t)
        assert 'fwd to "lbnr0"' in netdev_dump(t.director)
        replies = client.fresh_gets(t.client.netns, t.vip, VPORT, 2, timeout=3.0)
        assert [r.ok for r in replies] == [True] * 2, (replies, ilbd.log_tail())
        assert natrx(ilbd)["answers"] >= 2
        # read by the queue's own thread: both directions of a connection on one thread
        assert ilbd.proc is not None
        names = thread_names(ilbd.proc.pid)
        assert "lbd-nfq0" in names and "lbd-natrx" not in names, names
        for rs in t.reals:
            ilbd.lbadm("-d", "-t", f"{t.vip}:{VPORT}", "-r", f"{rs.addr}:{RPORT}")
        assert links(t) == [] and netdev_dump(t.director) == "", (links(t), ilbd.log_tail())
        assert "natrx" not in ilbd.ok("counters")


def test_nat_http_through_the_ingress_chain_and_nothing_in_forward(ilbd: Lbd, itopo: Topology) -> None:
    t = itopo
    nat_service(ilbd, t)
    replies = client.fresh_gets(t.client.netns, t.vip, VPORT, 4, timeout=3.0)
    assert [r.ok for r in replies] == [True] * 4, (replies, ilbd.log_tail())
    assert {r.server for r in replies} == {rs.name for rs in t.reals}
    table = netdev_dump(t.director)
    back = t.director.iface("back").ifname
    assert f'type filter hook ingress device "{back}" priority -500; policy accept;' in table, table
    assert 'fwd to "lbnr0"' in table and 'device "lbnr0p" priority -500; policy drop;' in table, table
    assert "hook forward" not in t.director.exec([NFT, "list", "ruleset"]).stdout  # lbd's or anyone's
    assert "chain forward" not in dump(t.director)
    c = natrx(ilbd)
    # every reply came this way, translated by the core and sent on the raw socket (LB_V_ANSWER)
    assert c["packets"] >= 4 and c["answers"] >= 4 and c["answer_err"] == 0 and c["bad_packets"] == 0, c


BIG_PORT = 8090
BIG_BYTES = 4 * 1024 * 1024
# Each real server sends BIG_BYTES of a fixed pattern to every connection on BIG_PORT, then closes.
BIG_SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {BIG_PORT})); s.listen(8); s.settimeout(60)\n"
    f"data = bytes(range(256)) * ({BIG_BYTES} // 256)\n"
    "for _ in range(8):\n"
    "    c, _a = s.accept(); c.sendall(data); c.close()\n")


def test_a_large_download_gso_segmented_by_the_reader(ilbd: Lbd, itopo: Topology) -> None:
    """The real servers' TCP sends TSO super-packets; veth keeps them whole up to the director's
    ingress, so lbd's reader gets GSO packets, cuts them (lb_tcp_segment) and the client gets
    every byte, in order."""
    t = itopo
    servers = [rs.popen([sys.executable, "-c", BIG_SERVER]) for rs in t.reals]
    try:
        ilbd.lbadm("-A", "-t", f"{t.vip}:{BIG_PORT}", "-s", "rr")
        for rs in t.reals:
            ilbd.lbadm("-a", "-t", f"{t.vip}:{BIG_PORT}", "-r", f"{rs.addr}:{BIG_PORT}", "-m")
        ilbd.wait_resolved()
        want = hashlib.sha256(bytes(range(256)) * (BIG_BYTES // 256)).hexdigest()
        for _ in range(2):  # one download from each real server (rr)
            got = t.client.exec([sys.executable, "-c", DOWNLOAD.format(vip=t.vip, port=BIG_PORT)], timeout=60).stdout
            assert got.split() == [str(BIG_BYTES), want], (got, ilbd.log_tail())
        c = natrx(ilbd)
        assert c["gso_packets"] > 0 and c["gso_segments"] > c["gso_packets"], c  # TSO packets came whole
        assert c["answer_err"] == 0 and c["gso_errors"] == 0 and c["bad_packets"] == 0, c
    finally:
        for p in servers:
            p.kill()
            p.wait()


DOWNLOAD = """
import hashlib, socket
s = socket.create_connection(("{vip}", {port}), timeout=20)
h, n = hashlib.sha256(), 0
while True:
    b = s.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest())
"""


def test_the_directors_own_connections_to_a_real_server_stay_out(ilbd: Lbd, itopo: Topology) -> None:
    """`fib daddr type local return`: the director's HTTP to RIP:8080 (a health check) is the
    kernel's, never lbd's, while the service is balanced."""
    t = itopo
    nat_service(ilbd, t)
    before = natrx(ilbd)
    for rs in t.reals:
        r = client.get_once(t.director.netns, rs.addr, RPORT, timeout=3.0)
        assert r.ok and r.server == rs.name, r
    assert natrx(ilbd).get("packets", 0) == before.get("packets", 0)


def test_kill_9_leaves_the_pair_and_the_next_lbd_takes_it_over(itopo: Topology) -> None:
    """kill -9: the netdev table and the veth pair stay (replies are dropped by the sink, as by a
    queue nobody reads); the next lbd, ingress or not, removes them before it sets up its own."""
    t = itopo
    d = Lbd(t, "c", None, ARGS)
    try:
        d.start()
        nat_service(d, t)
        d.stop(signal.SIGKILL)
        assert any(line.startswith("link: lbnr0") for line in iptables_leftovers(t.director))
    finally:
        if d.running():
            d.stop(signal.SIGKILL)
    with running_lbd(t, "c", args=["--nat-replies", "forward"]) as plain:  # the other mode's leftovers go too
        assert netdev_dump(t.director) == ""
        assert not [line for line in iptables_leftovers(t.director) if line.startswith("link: ")]
        nat_service(plain, t)
        r = client.get_once(t.client.netns, t.vip, VPORT, timeout=3.0)
        assert r.ok, (r, plain.log_tail())
