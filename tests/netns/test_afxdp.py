"""lbd --packet-source afxdp (issue 19, first slice): DR, IPIP and FULLNAT through the AF_XDP
source, next to NFQUEUE.

The same checks run against both packet sources (`source`): real TCP connections from the
client to the VIP, balanced over the real servers and kept (keep-alive) across many requests;
IPIP proven by the real servers' decapsulation counters, FULLNAT with the program on both the
client's and the real servers' side.
The AF_XDP variant attaches the XDP program to the director's LAN interface (a veth inside the
test's own namespace) and must leave nothing behind when lbd exits, also after kill -9: the
program is held by a bpf_link that only lbd's file descriptor keeps alive.

An AF_XDP run that cannot start (no XDP or AF_XDP in this kernel, the program not built) skips
with lbd's own words as the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HTTP_PORT, HttpHelper, Lbd, LbdError, running_lbd, udp_until_refused
from scapy.all import IP, TCP, raw

# ftopo and decap are those modules' fixtures, used here with the AF_XDP source too.
from test_fullnat import PORT, UDP_PORT, ftopo, fullnat_service, lips  # type: ignore[import-not-found]  # noqa: F401
from test_tunnel import decap, setup_tunnel, tun_rx  # type: ignore[import-not-found]  # noqa: F401

from lb.testbed import client
from lb.testbed.pcap import Capture
from lb.testbed.topology import Topology

BPF_OBJECT = Path(__file__).resolve().parents[2] / "lb" / "lb_xdp.bpf.o"
DETACH_TIMEOUT_S = 10.0  # bound for the kernel to release the link after the process is gone
LOG_ALL = 1 << 24  # log_tail(LOG_ALL): the whole of lbd's log (its start-up lines)


def source_args(topo: Topology, source: str) -> list[str]:
    if source == "nfqueue":
        return []
    return ["--packet-source", "afxdp", "--xdp-interface", topo.director.ifname]


@pytest.fixture(params=["nfqueue", "afxdp"])
def source(request: pytest.FixtureRequest) -> str:
    if request.param == "afxdp" and not BPF_OBJECT.exists():
        pytest.skip(f"{BPF_OBJECT} not built (`make build` compiles native/bpf/lb_xdp.bpf.c)")
    return str(request.param)


@contextlib.contextmanager
def full_checksums(topo: Topology) -> Iterator[None]:
    """The client's and real servers' veths send complete TCP/UDP checksums while the AF_XDP source
    runs. A veth hands the next stack a packet whose checksum holds only the pseudo-header sum
    (CHECKSUM_PARTIAL, to be completed by whoever transmits it on a real wire); XDP sees the bytes
    without that mark, so lbd would forward them as they are and the real server drop them as
    corrupt. A real NIC delivers complete checksums (docs/afxdp.md "veth")."""
    hosts = [topo.client, *topo.reals]
    for h in hosts:
        h.exec(["ethtool", "-K", h.ifname, "tx", "off"])
    try:
        yield
    finally:
        for h in hosts:
            h.exec(["ethtool", "-K", h.ifname, "tx", "on"], check=False)


@pytest.fixture
def slbd(topo: Topology, source: str) -> Iterator[Lbd]:
    if source == "afxdp" and shutil.which("ethtool") is None:
        pytest.skip("ethtool is not installed (the veths' checksum offload must be turned off: see full_checksums)")
    checksums = full_checksums(topo) if source == "afxdp" else contextlib.nullcontext()
    with checksums:
        yield from _lbd(topo, source)


def _lbd(topo: Topology, source: str) -> Iterator[Lbd]:
    try:
        with running_lbd(topo, "c", args=source_args(topo, source)) as d:
            yield d
    except LbdError as exc:
        if source == "afxdp":
            skip_if_unsupported(exc)
        raise
    if source == "afxdp":
        assert xdp_attached(topo) is None, "XDP program left on the interface after lbd exited"


# What a kernel without XDP or AF_XDP answers (EOPNOTSUPP, ENOSYS, EAFNOSUPPORT). Anything else (the
# verifier's EACCES/EINVAL on the program, a map error) is a bug of ours and fails the test.
UNSUPPORTED = re.compile(r"cannot (attach the XDP program|bind an AF_XDP socket).*: "
                         r"(Operation not supported|Function not implemented|Address family not supported)")


def skip_if_unsupported(exc: LbdError) -> None:
    m = UNSUPPORTED.search(str(exc))
    if m:
        pytest.skip(f"this kernel does not do AF_XDP here: lbd says {m.group(0)!r}")


def xdp_attached(topo: Topology) -> str | None:
    """The XDP line `ip link` shows for the director's interface ('prog/xdp id N' and mode), or None."""
    out = topo.director.ip("-d", "link", "show", "dev", topo.director.ifname).stdout
    m = re.search(r"\b(xdp\w*)\b.*?prog/xdp id (\d+)", out, re.S)
    return f"{m.group(1)} id {m.group(2)}" if m else None


def setup_dr(lbd: Lbd, topo: Topology, sched: str = "rr") -> None:
    svc = f"{topo.vip}:{HTTP_PORT}"
    lbd.lbadm("-A", "-t", svc, "-s", sched)
    for rs in topo.reals:
        lbd.lbadm("-a", "-t", svc, "-r", f"{rs.addr}:{HTTP_PORT}", "-g")
    lbd.wait_resolved()


def test_dr_rr_balances_fresh_connections(slbd: Lbd, topo: Topology, http: HttpHelper, source: str) -> None:
    setup_dr(slbd, topo)
    replies = http.gets(30)
    bad = [r for r in replies if not r.ok]
    assert not bad, f"{len(bad)} of 30 requests failed, first: {bad[0]}\nlbd log:\n{slbd.log_tail()}"
    n = len(topo.reals)
    assert Counter(r.server for r in replies) == {rs.name: 30 // n for rs in topo.reals}
    # rr walks the destinations most recently added first, whatever the packet source.
    order = [rs.name for rs in reversed(topo.reals)]
    assert [r.server for r in replies] == order * (30 // n)
    stats = slbd.ok("list")["services"][0]["stats"]
    assert stats["conns"] == 30, stats
    if source == "afxdp":
        assert xdp_attached(topo) is not None, "no XDP program on the director's interface while lbd runs"
        # Every client packet came through the program and its socket, and left on the TX ring.
        afxdp = slbd.ok("counters")["afxdp"]
        sockets = afxdp["sockets"]
        assert afxdp["program"]["redirected"] >= 3 * 30, afxdp
        # (the client's last ACKs may still be on their way: at most what the program redirected)
        assert 3 * 30 <= sum(s["packets"] for s in sockets) <= afxdp["program"]["redirected"], afxdp
        assert sum(s["xmit_xsk"] for s in sockets) >= 3 * 30, afxdp
        assert sum(s["xmit_l2_err"] + s["fill_lost"] + s["bad_frames"] for s in sockets) == 0, afxdp


def test_dr_keepalive_connection_stays_on_its_server(slbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    setup_dr(slbd, topo)
    with http.keepalive() as ka:
        first = ka.get()
        assert first.ok, f"{first}\nlbd log:\n{slbd.log_tail()}"
        for _ in range(20):
            r = ka.get()
            assert r.ok and r.server == first.server, r
    stats = slbd.ok("list")["services"][0]["stats"]
    assert stats["conns"] == 1 and stats["inpkts"] >= 21, stats


def test_afxdp_not_ours_reaches_the_kernel(slbd: Lbd, topo: Topology) -> None:
    """What no service owns (another port of the VIP, the director's own address) is the kernel's,
    with or without lbd: XDP passes it untouched, and the director's TCP refuses the connection
    (a timeout would mean the packet was taken and lost)."""
    setup_dr(slbd, topo)
    for addr, port in ((topo.vip, HTTP_PORT + 1), (topo.director.addr, HTTP_PORT)):
        reply = client.get_once(topo.client.netns, addr, port, timeout=5.0)
        assert not reply.ok and "ConnectionRefused" in str(reply.error), (addr, port, reply)


def http_ok(topo: Topology) -> bool:
    return client.get_once(topo.client.netns, topo.vip, HTTP_PORT).ok


def test_afxdp_kill9_leaves_no_program(topo: Topology) -> None:
    """kill -9 cannot run lbd's cleanup; the bpf_link goes with the process's descriptors."""
    if not BPF_OBJECT.exists():
        pytest.skip(f"{BPF_OBJECT} not built")
    d = Lbd(topo, "c", args=source_args(topo, "afxdp"))
    try:
        try:
            d.start()
        except LbdError as exc:
            skip_if_unsupported(exc)
            raise
        with full_checksums(topo):
            setup_dr(d, topo)
            assert http_ok(topo), f"no answer through the AF_XDP source:\n{d.log_tail()}"
        attached = xdp_attached(topo)
        assert attached is not None, f"no XDP program while lbd runs:\n{d.log_tail()}"
        # the whole log: the start-up line is far from its end once lbd has logged its steering (nft -f scripts at -v)
        assert re.search(r"XDP program attached in (native|generic)", d.log_tail(LOG_ALL)), d.log_tail()
        rc = d.stop(signal.SIGKILL)
        assert rc == -signal.SIGKILL
        deadline = time.monotonic() + DETACH_TIMEOUT_S
        while xdp_attached(topo) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert xdp_attached(topo) is None, f"after kill -9 the interface still has {xdp_attached(topo)}"
    finally:
        if d.running():
            d.stop(signal.SIGKILL)
        d.cleanup()


# --------------------------------------------------------------------------- FULLNAT (two interfaces)


@pytest.fixture
def flbd_source(ftopo: Topology, source: str) -> Iterator[Lbd]:  # noqa: F811 (test_fullnat's fixture)
    """lbd on the FULLNAT topology: with AF_XDP, the program on the client side (lan) and on the real
    servers' side (back), whose replies to the local addresses lbd turns back into VIP -> client."""
    if source == "afxdp" and shutil.which("ethtool") is None:
        pytest.skip("ethtool is not installed (the veths' checksum offload must be turned off: see full_checksums)")
    d = ftopo.director
    args = [] if source == "nfqueue" else ["--packet-source", "afxdp", "--xdp-interface", d.iface("lan").ifname,
                                           "--xdp-interface", d.iface("back").ifname]
    checksums = full_checksums(ftopo) if source == "afxdp" else contextlib.nullcontext()
    with checksums:
        try:
            with running_lbd(ftopo, "c", args=args) as lbd:
                yield lbd
        except LbdError as exc:
            if source == "afxdp":
                skip_if_unsupported(exc)
            raise


def test_fullnat_rr_through_local_addresses(flbd_source: Lbd, ftopo: Topology) -> None:  # noqa: F811
    t = ftopo
    fullnat_service(flbd_source, t)
    replies = client.fresh_gets(t.client.netns, t.vip, PORT, 12, timeout=5.0)
    assert all(r.ok for r in replies), ([r.error for r in replies if not r.ok], flbd_source.log_tail())
    assert [r.server for r in replies] == [rs.name for rs in reversed(t.reals)] * 4
    seen = set()
    for _ in range(4):
        r = client.get_once(t.client.netns, t.vip, PORT, "/peer")
        assert r.ok, r
        seen.add(r.body.split("\n")[1].split()[0])
    assert seen == set(lips(t)), f"peers seen by the real servers: {seen}, LIPs {lips(t)}"


def test_fullnat_director_local_client(flbd_source: Lbd, ftopo: Topology, source: str) -> None:  # noqa: F811
    """A process on the director connecting to the VIP (docs/afxdp.md "Director-local clients"):
    its packets leave through lo and never cross an XDP hook; under afxdp the NFQUEUE fallback
    takes them in raw PREROUTING on lo, as the NFQUEUE source does. FULLNAT, because the real
    server's reply must come back to the director (to the local address)."""
    t = ftopo
    fullnat_service(flbd_source, t)
    replies = client.fresh_gets(t.director.netns, t.vip, PORT, 6, timeout=5.0)
    assert all(r.ok for r in replies), ([r.error for r in replies if not r.ok], flbd_source.log_tail())
    assert sorted(str(r.server) for r in replies) == sorted([rs.name for rs in t.reals] * (6 // len(t.reals)))
    counters = flbd_source.ok("counters")
    assert counters["nfq"]["packets"] >= 6, counters["nfq"]  # the director's SYNs at least, through the queue
    if source == "afxdp":
        assert counters["afxdp"]["program"]["redirected"] >= 6, counters["afxdp"]  # the real servers' replies


# --------------------------------------------------------------------------- IPIP


def test_ipip_rr_through_the_tunnel(slbd: Lbd, topo: Topology, http: HttpHelper, decap: str) -> None:  # noqa: F811
    setup_tunnel(slbd, topo)
    slbd.wait_resolved()
    before = tun_rx(topo, decap)
    replies = http.gets(9)
    assert all(r.ok for r in replies), ([r.error for r in replies if not r.ok], slbd.log_tail())
    assert [r.server for r in replies] == [rs.name for rs in reversed(topo.reals)] * 3
    after = tun_rx(topo, decap)
    for rs in topo.reals:  # >= 3 packets from the client per request, each through the tunnel
        assert after[rs.name] - before[rs.name] >= 3 * 3, (rs.name, before, after)


def test_fullnat_icmp_error_from_real_server_reaches_client(flbd_source: Lbd, ftopo: Topology) -> None:  # noqa: F811
    """The real server's ICMP port unreachable to the local address is one the program must redirect
    (it quotes LIP:lport -> RIP:port, a FULLNAT reply key reversed); lbd turns it into VIP -> client."""
    t = ftopo
    fullnat_service(flbd_source, t, port=UDP_PORT, proto="udp", reals=["f1"])
    got = udp_until_refused(flbd_source, t, UDP_PORT)
    assert isinstance(got.error, ConnectionRefusedError), (got.error, got.translated, got.capture)
    assert got.translated >= 1
    assert {(ip.src, ip.dst) for ip in got.icmps} == {(t.vip, t.client.addr)}, got.capture


def test_segment_without_connection_gets_the_directors_reset(slbd: Lbd, topo: Topology, source: str) -> None:
    """A TCP segment to VIP:port that belongs to no connection is passed by the core (no_conn). With
    NFQUEUE the kernel continues with it; with AF_XDP lbd re-injects it through its raw socket. Either
    way the director's own TCP answers it with a RST, as without lbd."""
    setup_dr(slbd, topo)
    before = slbd.ok("counters")["reasons"].get("no_conn", 0)
    ack = raw(IP(src=topo.client.addr, dst=topo.vip) / TCP(sport=40123, dport=HTTP_PORT, flags="A", seq=1, ack=1))
    cap = Capture(topo.client, f"tcp and src host {topo.vip} and dst port 40123", direction="in").start()
    try:
        out = topo.client.exec([sys.executable, "-m", "lb.testbed.rawsend", ack.hex()])
        assert out.stdout.strip() == "1", out
        deadline = time.monotonic() + DETACH_TIMEOUT_S
        while slbd.ok("counters")["reasons"].get("no_conn", 0) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        packets = cap.stop()
        text = cap.text()
    finally:
        cap.close()
    assert slbd.ok("counters")["reasons"].get("no_conn", 0) == before + 1
    rsts = [p.ip for p in packets if p.ip.l4 is not None and p.ip.l4.flags & 0x04]
    assert rsts, f"no RST from the director:\n{text}"
    if source == "afxdp":
        sockets = slbd.ok("counters")["afxdp"]["sockets"]
        assert sum(s["passed"] for s in sockets) >= 1 and sum(s["pass_err"] for s in sockets) == 0, sockets


def thread_cpus(pid: int) -> list[str]:
    """Cpus_allowed_list of each thread of process pid."""
    out = []
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            m = re.search(r"^Cpus_allowed_list:\s*(\S+)", status.read_text(), re.M)
            if m:
                out.append(m.group(1))
    return out


def test_afxdp_queue_cpus_pins_each_socket_thread(topo: Topology) -> None:
    """--queue-cpus under afxdp: one CPU per AF_XDP socket (one per receive queue), each thread
    pinned and the pinning logged; a list of another length is refused before anything is attached."""
    if not BPF_OBJECT.exists():
        pytest.skip(f"{BPF_OBJECT} not built")
    cpu = max(os.sched_getaffinity(0))
    queues = topo.director.exec(["ls", f"/sys/class/net/{topo.director.ifname}/queues"]).stdout.split()
    n = max(sum(1 for q in queues if q.startswith("rx-")), 1)
    base = source_args(topo, "afxdp")
    d = Lbd(topo, "c", args=[*base, "--queue-cpus", ",".join([str(cpu)] * n)])
    try:
        try:
            d.start()
        except LbdError as exc:
            skip_if_unsupported(exc)
            raise
        assert d.proc is not None
        for q in range(n):
            assert re.search(rf"queue {q}: AF_XDP socket in [\w-]+ mode.*, thread on CPU {cpu}\b", d.log_tail(LOG_ALL)), \
                d.log_tail()
        assert thread_cpus(d.proc.pid).count(str(cpu)) >= n, (cpu, thread_cpus(d.proc.pid))
        assert d.stop(signal.SIGTERM) == 0
    finally:
        if d.running():
            d.stop(signal.SIGKILL)
        d.cleanup()
    wrong = Lbd(topo, "c", args=[*base, "--queue-cpus", ",".join([str(cpu)] * (n + 1))])
    try:
        with pytest.raises(LbdError, match=rf"--queue-cpus lists {n + 1} CPU\(s\) for {n} AF_XDP socket"):
            wrong.start()
        assert xdp_attached(topo) is None
    finally:
        if wrong.running():
            wrong.stop(signal.SIGKILL)
        wrong.cleanup()
