"""Connection sync between two lbd directors (issue 18 items 1 and 5, DR): director A runs a sync
master, director B a backup on the same segment; connections through A appear in B's `lbadm -Lnc`
with the same real servers. Then A is killed, the VIP moved to B by hand, and the established
connections keep exchanging data through B with their original real servers.

Own topology (two directors): client .50, da .2 (holds the VIP first), db .3, real servers .11/.12
running the test httpd, all on one segment.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

import pytest
from conftest import HTTP_PORT, Lbd
from sync_pair import N_CONNS, LbdOn, director_pair, pair_spec, serve_http, wait_until

from lb.sync import codec
from lb.testbed import client
from lb.testbed.topology import Topology

pytestmark = pytest.mark.netns

SYNC_WAIT_S = 15.0  # master tick 1 s; generous for a loaded machine (a bound, not a threshold)
SYNCID = 18


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Topology, LbdOn, LbdOn]]:
    with Topology(pair_spec()) as topo:
        serve_http(topo, "lbB-sync-", (HTTP_PORT,), topo.client)

        def configure(d: LbdOn) -> None:
            d.lbadm("-A", "-t", f"{topo.vip}:{HTTP_PORT}", "-s", "rr")
            for rs in topo.reals:
                d.lbadm("-a", "-t", f"{topo.vip}:{HTTP_PORT}", "-r", f"{rs.addr}:{HTTP_PORT}", "-g")
            d.wait_resolved()

        with director_pair(topo, configure) as (a, b):
            yield topo, a, b


def _conns(d: Lbd) -> dict[tuple[str, int], tuple[str, str]]:
    """(client, port) -> (real server, state) of d's TCP entries, from `lbadm -Lnc`."""
    out = {}
    for line in d.lbadm("-Lnc").stdout.splitlines()[2:]:
        proto, _expire, state, source, _virtual, dest = line.split()
        if proto == "TCP":
            caddr, cport = source.rsplit(":", 1)
            out[(caddr, int(cport))] = (dest.rsplit(":", 1)[0], state)
    return out


def test_list_daemon_and_refusals(pair: tuple[Topology, LbdOn, LbdOn]) -> None:
    topo, a, _b = pair
    ifname = a.director.ifname
    a.lbadm("--start-daemon", "master", "--mcast-interface", ifname, "--syncid", "7", "--mcast-ttl", "2")
    try:
        listed = a.lbadm("-L", "--daemon").stdout
        assert listed == (f"master sync daemon (mcast={ifname}, syncid=7, maxlen=1472, group=224.0.0.81, "
                          "port=8848, ttl=2, ext-port=8849)\n")
        again = a.lbadm("--start-daemon", "master", "--mcast-interface", ifname, check=False)
        assert (again.returncode, again.stderr) == (255, "Daemon has already run\n")
    finally:
        a.lbadm("--stop-daemon", "master")
    assert a.lbadm("-L", "--daemon").stdout == ""
    stopped = a.lbadm("--stop-daemon", "master", check=False)
    assert (stopped.returncode, stopped.stderr) == (255, "No daemon is running\n")
    missing = a.lbadm("--start-daemon", "backup", "--mcast-interface", "nosuchif0", check=False)
    assert missing.returncode == 255 and missing.stderr


def test_backup_learns_connections_and_takes_over_dr(pair: tuple[Topology, LbdOn, LbdOn]) -> None:
    topo, a, b = pair
    b.start_sync_daemon("backup", SYNCID)
    a.start_sync_daemon("master", SYNCID)
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT)) for _ in range(N_CONNS)]
        for ka in conns:
            assert ka.get().ok
        served: dict[tuple[str, int], str | None] = {(topo.client.addr, int(ka.local_port or 0)): ka.server
                                                     for ka in conns}
        names = {rs.addr: rs.name for rs in topo.reals}
        on_a = _conns(a)
        assert {k: names[v[0]] for k, v in on_a.items() if k in served} == served

        # The backup lists the same connections with the same real servers, ESTABLISHED.
        def synced() -> dict[tuple[str, int], tuple[str, str]] | None:
            on_b = _conns(b)
            return on_b if all(k in on_b for k in served) else None

        on_b = wait_until(synced, SYNC_WAIT_S, "every connection on the backup")
        assert {k: (names[on_b[k][0]], on_b[k][1]) for k in served} == {k: (v, "ESTABLISHED") for k, v in served.items()}
        daemons = b.ok("get_daemon")["daemons"]
        assert daemons[0]["state"] == "backup" and daemons[0]["counters"]["conns_installed"] >= N_CONNS

        # Failover by hand: A dies, the VIP moves to B, the client learns B's MAC.
        a.stop(signal.SIGKILL)
        vip_cidr = f"{topo.vip}/32"
        a.director.ip("addr", "del", vip_cidr, "dev", a.director.ifname)
        b.director.ip("addr", "add", vip_cidr, "dev", b.director.ifname)
        topo.client.ip("neigh", "flush", "to", topo.vip)
        before = b.ok("counters")["reasons"]["forwarded"]
        survived = 0
        for ka in conns:
            reply = ka.get(timeout=5.0)
            survived += reply.ok and reply.server == ka.server
        assert survived >= N_CONNS - 1, f"{survived} of {N_CONNS} connections survived the failover"
        # ... through B: it forwarded their packets (at least one per surviving request)
        assert b.ok("counters")["reasons"]["forwarded"] - before >= survived


def test_forged_and_malformed_datagrams_are_counted(pair: tuple[Topology, LbdOn, LbdOn]) -> None:
    """Item 6 in part: datagrams sent to the group by another host of the segment (the client):
    garbage, another syncid, a record of a service the backup does not have. Nothing is installed
    from them, the backup keeps running, its counters say why each was dropped."""
    topo, _a, b = pair
    if not b.ok("get_daemon")["daemons"]:
        b.start_sync_daemon("backup", SYNCID)
    before = b.ok("get_daemon")["daemons"][0]["counters"]
    alien = codec.SyncConn(6, codec.F_DROUTE, 1, topo.client.addr, 4242, "10.99.0.1", 80, topo.reals[0].addr, 80, 0, 900)
    datagrams = [b"\x00garbage", codec.encode([alien], SYNCID + 1, 1472)[0], codec.encode([alien], SYNCID, 1472)[0],
                 bytes(codec.encode([alien], SYNCID, 1472)[0][:20])]
    script = ("import socket,sys\n"
              "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton(sys.argv[1]))\n"
              "for h in sys.argv[2:]:\n    s.sendto(bytes.fromhex(h),('224.0.0.81',8848))\n")
    topo.client.exec([sys.executable, "-c", script, topo.client.addr, *(d.hex() for d in datagrams)])

    def counted() -> dict[str, int] | None:
        now = b.ok("get_daemon")["daemons"][0]["counters"]
        return now if now.get("datagrams_received", 0) - before.get("datagrams_received", 0) >= 4 else None

    after = wait_until(counted, SYNC_WAIT_S, "the four datagrams received")
    grew = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    # garbage and the cut datagram: their size field is not their length (checked first, as the kernel)
    assert grew == {"datagrams_received": 4, "dropped_bad_size": 2, "dropped_syncid_mismatch": 1,
                    "dropped_no_service": 1}, grew
    assert (topo.client.addr, 4242) not in _conns(b)
    assert b.running()


def _with_option(datagram: bytes, ptype: int, plen: int) -> bytes:
    """`datagram` (one record carrying sequence data) with that option's type and length bytes replaced."""
    pos = codec.HEADER.size + codec.V4.size
    return datagram[:pos] + bytes((ptype, plen)) + datagram[pos + 2:]


def test_malformed_records_forged_from_the_master_address_install_nothing(pair: tuple[Topology, LbdOn, LbdOn]) -> None:
    """Item 6: datagrams crafted with scapy, sent to the group from the client with the master's
    address and port forged, each wrong in one way: an impossible state, an unknown protocol, an
    unknown mandatory option, an option of length 0, a real server the backup does not have, a
    record count beyond the datagram. The backup counts each under its reason, installs none of
    them and keeps running."""
    topo, a, b = pair
    if not b.ok("get_daemon")["daemons"]:
        b.start_sync_daemon("backup", SYNCID)
    before = b.ok("get_daemon")["daemons"][0]["counters"]
    rs = topo.reals[0].addr

    def conn(**kw: object) -> codec.SyncConn:
        base = {"protocol": 6, "flags": codec.F_DROUTE, "state": 1, "caddr": topo.client.addr, "cport": 4300,
                "vaddr": topo.vip, "vport": HTTP_PORT, "daddr": rs, "dport": HTTP_PORT, "timeout_s": 900}
        return codec.SyncConn(**{**base, **kw})

    def one(c: codec.SyncConn) -> bytes:
        return codec.encode([c], SYNCID, 1472)[0]

    with_seq = one(conn(cport=4303, seq=(1, 2, 3, 4, 5, 6)))
    unknown_service = one(conn(cport=4306, vaddr="10.99.0.1"))
    truncated = unknown_service[:4] + bytes([2]) + unknown_service[5:]  # nr_conns 2, one record
    datagrams = {
        "bad_state": one(conn(cport=4301, state=99)),
        "bad_protocol": one(conn(cport=4302, protocol=1)),
        "unknown_option": _with_option(with_seq, 9, 24),
        "bad_option": _with_option(with_seq, 1, 0),
        "no_dest": one(conn(cport=4305, daddr="10.99.0.2")),
        "truncated": truncated,
    }
    script = ("import sys\n"
              "from scapy.all import IP, UDP, Raw, send\n"
              "iface, src = sys.argv[1], sys.argv[2]\n"
              "for h in sys.argv[3:]:\n"
              "    send(IP(src=src, dst='224.0.0.81', ttl=1)/UDP(sport=8848, dport=8848)/Raw(bytes.fromhex(h)),"
              " iface=iface, verbose=False)\n")
    topo.client.exec([sys.executable, "-c", script, topo.client.ifname, a.director.addr,
                      *(d.hex() for d in datagrams.values())])

    def counted() -> dict[str, int] | None:
        now = b.ok("get_daemon")["daemons"][0]["counters"]
        return now if now.get("datagrams_received", 0) - before.get("datagrams_received", 0) >= len(datagrams) else None

    after = wait_until(counted, SYNC_WAIT_S, "the forged datagrams received")
    grew = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert grew == {"datagrams_received": 6, "dropped_bad_state": 1, "dropped_bad_protocol": 1,
                    "dropped_unknown_option": 1, "dropped_bad_option": 1, "dropped_no_dest": 1,
                    "dropped_no_service": 1, "dropped_truncated": 1}, grew
    assert not [k for k in _conns(b) if k[0] == topo.client.addr and 4300 <= k[1] < 4310]
    assert b.running()
