"""Datagrams larger than the path MTU through every forwarding method, with real packets.

The client's kernel fragments its 1,501- to 8,028-byte UDP datagrams (payloads of 1,473 to 8,000
bytes) at the 1,500-byte MTU of its segment; lbd's rules have the director's kernel reassemble
them before the queue (nf_defrag_ipv4); lbd balances the whole datagram and fragments it again
on the way to the real server (DR, NAT, FULLNAT: at the path MTU; IPIP: the outer packet, DF
clear). Each real server answers with the size and SHA-256 of what it received, padded to the
same size, so every answer proves the datagram arrived intact, and for NAT and FULLNAT the
equally large answer comes back fragmented through the director (reassembled, translated,
fragmented again on the raw socket's EMSGSIZE). DF set and too big: ICMP fragmentation needed to
the client, as the kernel's IPVS. TCP: a segment the client sends as IP fragments (crafted on a
raw socket: a Linux TCP stack never fragments) is acknowledged in full by the real server.
Hostile fragments (never completed, overlapping, more than the memory cap) meet the kernel's
bounds in the director's namespace and do not disturb the next datagram.

Topologies of their own (module fixtures): DR/IPIP on one segment (lb.testbed.topology.dr_spec),
NAT/FULLNAT with the real servers on a second segment whose MTU is 1,400 (fullnat_spec), so lbd's
fragments are cut smaller than the client's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import QUEUE_NUM, Lbd, running_lbd
from steering import INPUT_HOOK, NFTABLES, dump

from lb import iptlayout as iptl
from lb.testbed import echo
from lb.testbed.ipip_decap import start_in
from lb.testbed.topology import Topology, dr_spec, enter_netns, fullnat_spec

PAYLOADS = (1473, 3000, 5000, 8000)  # UDP payload bytes: IP datagrams of 1,501 to 8,028 bytes
# lbd --engine python reads packets with NetfilterQueue, which copies at most 4,016 bytes of each
# (lb.pyengine.nfq.NFQ_COPY_MAX): it is checked up to that size, the C engine up to 8,028 bytes.
PY_PAYLOADS = (1473, 3000, 3988)
UDP_PORT = 5301
ECHO_PORT = 9111
BACK_MTU = 1400  # NAT/FULLNAT: the real servers' segment
N_REAL = 2
EXCHANGE_TIMEOUT_S = 5.0
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO, IP_MTU = 10, 0, 2, 14  # linux/in.h
_ports = itertools.count(43000)



def payload_of(size: int) -> bytes:
    return bytes((i * 7 + size) & 0xFF for i in range(size))


class BigUdpResponders:
    """In each real server: answer every datagram with "<name> <bytes> <sha256[:16]>\\n", padded with
    'R' to the size received (the answer is as large as the question)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def serve(self, netns: str, name: str, addr: str, port: int) -> None:
        with enter_netns(netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        s.settimeout(0.2)
        self._socks.append(s)
        t = threading.Thread(target=self._loop, args=(s, name), daemon=True)
        t.start()
        self._threads.append(t)

    def _loop(self, s: socket.socket, name: str) -> None:
        while not self._stop.is_set():
            try:
                data, peer = s.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            head = f"{name} {len(data)} {hashlib.sha256(data).hexdigest()[:16]}\n".encode()
            try:
                s.sendto(head + b"R" * max(len(data) - len(head), 0), peer)
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        for s in self._socks:
            s.close()


def exchange(netns: str, vip: str, port: int, payload: bytes, df: bool | None = None) -> tuple[str, int, str, int]:
    """One datagram from the client and its answer: (server, bytes it got, their digest, answer bytes).
    df False: sent with DF clear (IP_PMTUDISC_DONT; Linux sets DF on UDP by default)."""
    with enter_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if df is False:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        s.settimeout(EXCHANGE_TIMEOUT_S)
        s.bind(("0.0.0.0", next(_ports)))
        s.connect((vip, port))
        s.send(payload)
        data = s.recv(65535)
    except OSError as exc:
        return f"error:{type(exc).__name__}: {exc}", 0, "", 0
    finally:
        s.close()
    name, got, digest = data.split(b"\n", 1)[0].decode().split()
    return name, int(got), digest, len(data)


def payloads(lbd: Lbd) -> tuple[int, ...]:
    return PY_PAYLOADS if lbd.engine == "python" else PAYLOADS


def assert_intact(t: Topology, lbd: Lbd, port: int = UDP_PORT) -> list[str]:
    """Every size arrives whole at a real server and its equally large answer comes back."""
    servers = []
    for size in payloads(lbd):
        data = payload_of(size)
        name, got, digest, back = exchange(t.client.netns, t.vip, port, data)
        assert (got, digest, back) == (size, hashlib.sha256(data).hexdigest()[:16], size), (
            f"{size}-byte payload: {name} got {got} bytes, answer {back} bytes\n{lbd.log_tail()}")
        servers.append(name)
    return servers


def counters(lbd: Lbd) -> dict[str, Any]:
    """lbd's counters once its adapter is done with every packet it took (a verdict for each: its
    frames were sent and counted before), which the answer that reached the client does not say."""
    deadline = time.monotonic() + EXCHANGE_TIMEOUT_S
    while True:
        c: dict[str, Any] = lbd.ok("counters")
        nfq = c["nfq"]
        if nfq["verdicts"] >= nfq["packets"] or time.monotonic() > deadline:
            return c
        time.sleep(0.05)


def assert_fragment_counts(c: dict[str, Any], fragmented_min: int) -> None:
    """No fragment reached lbd, nothing failed to leave, at least `fragmented_min` packets were cut by lbd,
    and the director's kernel reassembled at least 3 datagrams."""
    reasons, nfq, reasm = c["reasons"], c["nfq"], c["reassembly"]
    assert reasons.get("fragment", 0) == 0, reasons  # nothing reached the queue as fragments
    assert reasons.get("xmit_failed", 0) == 0 and nfq["xmit_l2_err"] == 0 and nfq["answer_err"] == 0, c
    # --nat-replies ingress: the NAT replies came through the reader of lbd's veth pair (lb/natingress.py)
    natrx = c.get("natrx", {})
    assert natrx.get("pass_err", 0) == 0 and natrx.get("xmit_l2_err", 0) == 0, natrx
    assert nfq["frag_packets"] + natrx.get("frag_packets", 0) >= fragmented_min, (nfq, natrx)
    assert reasm["reasm_oks"] >= 3, reasm  # the director's kernel reassembled them


# --------------------------------------------------------------------------- DR and IPIP


@pytest.fixture(scope="module")
def dtopo() -> Iterator[Topology]:
    with Topology(dr_spec(N_REAL)) as t:
        yield t


@pytest.fixture(scope="module")
def dr_udp(dtopo: Topology) -> Iterator[None]:
    srv = BigUdpResponders()
    try:
        for rs in dtopo.reals:
            srv.serve(rs.netns, rs.name, dtopo.vip, UDP_PORT)  # DR/IPIP real servers answer from the VIP
        yield
    finally:
        srv.close()


@pytest.fixture(scope="module")
def decap(dtopo: Topology) -> Iterator[None]:
    procs = [start_in(rs, f"{dtopo.prefix}ipip", seconds=1200.0) for rs in dtopo.reals]
    try:
        yield
    finally:
        for p in procs:
            dtopo.stop_process(p)


@pytest.fixture
def dlbd(dtopo: Topology, engine: str) -> Iterator[Lbd]:
    with running_lbd(dtopo, engine) as d:
        yield d


def udp_service(lbd: Lbd, t: Topology, method: str, port: int = UDP_PORT, vip: str | None = None) -> None:
    vip = vip or t.vip
    lbd.lbadm("-A", "-u", f"{vip}:{port}", "-s", "rr")
    for rs in t.reals:
        lbd.lbadm("-a", "-u", f"{vip}:{port}", "-r", f"{rs.addr}:{port}", method, "-w", "1")
    lbd.wait_resolved()


def test_dr_udp_datagrams_arrive_whole(dlbd: Lbd, dtopo: Topology, dr_udp: None) -> None:
    udp_service(dlbd, dtopo, "-g")
    servers = assert_intact(dtopo, dlbd)
    assert sorted(set(servers)) == sorted(rs.name for rs in dtopo.reals), servers  # balanced (rr)
    assert_fragment_counts(counters(dlbd), 3)
    # The rule that turns reassembly on sits after the terminal NFQUEUE rule: never evaluated, no cost.
    if INPUT_HOOK:  # after routing: local delivery reassembled them, no defrag rule without NAT real servers
        assert " tproxy " not in dump(dtopo.director)
        return
    if NFTABLES:  # lbd's table has no counters: the tproxy rule (nf_defrag_ipv4's switch) follows the queue verdict
        go = [line.strip() for line in dump(dtopo.director).split("chain go {", 1)[-1].split("}", 1)[0].splitlines()]
        queue_at = next(i for i, line in enumerate(go) if line.startswith(("queue ", "xt target")))
        tproxy_at = next(i for i, line in enumerate(go) if " tproxy " in line)
        assert queue_at < tproxy_at, go
        return
    listing = dtopo.director.exec(["iptables", "-t", "raw", "-L", iptl.go_chain_name(QUEUE_NUM), "-v", "-x", "-n"]).stdout
    queue_line, socket_line = (next(line for line in listing.splitlines() if word in line) for word in ("NFQUEUE", "socket"))
    assert int(queue_line.split()[0]) > 0 and int(socket_line.split()[0]) == 0, listing


def test_tunnel_udp_datagrams_arrive_whole(dlbd: Lbd, dtopo: Topology, dr_udp: None, decap: None) -> None:
    """IPIP, DF clear: the outer packet leaves as fragments; the real server reassembles it, then
    decapsulates (lb.testbed.ipip_decap reads reassembled packets on its raw socket)."""
    udp_service(dlbd, dtopo, "-i")
    assert_intact(dtopo, dlbd)
    assert_fragment_counts(counters(dlbd), 3)


_df_vips = itertools.count(150)  # host indexes of the DF tests' own VIPs


@contextlib.contextmanager
def fresh_vip(t: Topology) -> Iterator[str]:
    """A VIP of its own on the director for one test: the client's kernel keeps the path MTU it learnt
    for an address (a route exception, ten minutes), so each DF test needs an address it never used."""
    addr, dev = t.addr("lan", next(_df_vips)), t.director.iface("lan").ifname
    t.director.ip("addr", "add", f"{addr}/32", "dev", dev)
    try:
        yield addr
    finally:
        t.director.ip("addr", "del", f"{addr}/32", "dev", dev, check=False)


def _learnt_mtu(netns: str, vip: str, port: int, size: int) -> int:
    """Send `size` payload bytes with DF (IP_PMTUDISC_DO) until the kernel learnt a smaller path MTU
    from the director's ICMP fragmentation needed; returns what the socket then says (IP_MTU)."""
    with enter_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        s.connect((vip, port))
        deadline = time.monotonic() + EXCHANGE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                s.send(payload_of(size))
            except OSError as exc:
                assert exc.errno == errno.EMSGSIZE, exc
                return int(s.getsockopt(socket.IPPROTO_IP, IP_MTU))
            time.sleep(0.1)
        return int(s.getsockopt(socket.IPPROTO_IP, IP_MTU))
    finally:
        s.close()


def test_tunnel_df_too_big_gets_fragmentation_needed(dlbd: Lbd, dtopo: Topology, dr_udp: None,
                                                     decap: None) -> None:
    """IPIP, DF set: 1,488 bytes fit the client's segment but not the tunnel (1,500 - 20): the client
    gets ICMP fragmentation needed with next-hop MTU 1,480 and its kernel learns it."""
    with fresh_vip(dtopo) as vip:
        udp_service(dlbd, dtopo, "-i", vip=vip)
        assert _learnt_mtu(dtopo.client.netns, vip, UDP_PORT, 1460) == 1480
    assert counters(dlbd)["reasons"]["frag_needed"] >= 1


def _tcp_packet(src: str, dst: str, sport: int, dport: int, flags: str, seq: int, ack: int,
                payload: bytes = b"", ident: int = 1) -> bytes:
    from scapy.all import IP, TCP, Raw, raw

    p = IP(src=src, dst=dst, id=ident, flags=0, ttl=64) / TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                                                              ack=ack, window=65535)
    return raw(p / Raw(payload)) if payload else raw(p)


def test_dr_tcp_segment_sent_as_fragments_is_acknowledged(dlbd: Lbd, dtopo: Topology) -> None:
    """A 3,040-byte TCP segment the client sends as three IP fragments (DF clear): lbd gets it
    reassembled, sends it on as fragments, and the real server acknowledges all 3,000 bytes (its
    kernel verified the TCP checksum over the whole segment)."""
    from scapy.all import IP, TCP, fragment, raw

    t = dtopo
    dlbd.lbadm("-A", "-t", f"{t.vip}:{ECHO_PORT}", "-s", "rr")
    for rs in t.reals:
        dlbd.lbadm("-a", "-t", f"{t.vip}:{ECHO_PORT}", "-r", f"{rs.addr}:{ECHO_PORT}", "-g", "-w", "1")
    dlbd.wait_resolved()
    sport, caddr = next(_ports), t.client.addr
    # Our own stack has no socket for this flow: keep it from resetting the real server's answers.
    rst_rule = ["OUTPUT", "-p", "tcp", "--sport", str(sport), "--tcp-flags", "RST", "RST", "-j", "DROP"]
    t.client.exec(["iptables", "-A", *rst_rule])
    with echo.servers(t, [ECHO_PORT]):
        with enter_netns(t.client.netns):
            tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        rx.settimeout(0.5)

        def wait_for(pred: Any) -> Any:
            deadline = time.monotonic() + EXCHANGE_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    p = IP(rx.recv(65535))
                except TimeoutError:
                    continue
                if TCP in p and p[IP].src == t.vip and p[TCP].dport == sport and pred(p[TCP]):
                    return p[TCP]
            return None

        try:
            tx.sendto(_tcp_packet(caddr, t.vip, sport, ECHO_PORT, "S", 1000, 0), (t.vip, 0))
            synack = wait_for(lambda th: th.flags & 0x12 == 0x12)
            assert synack is not None, f"no SYN-ACK\n{dlbd.log_tail()}"
            rs_next = (synack.seq + 1) & 0xFFFFFFFF
            tx.sendto(_tcp_packet(caddr, t.vip, sport, ECHO_PORT, "A", 1001, rs_next), (t.vip, 0))
            data = payload_of(3000)  # fits lbd --engine python too (PY_PAYLOADS)
            segment = _tcp_packet(caddr, t.vip, sport, ECHO_PORT, "PA", 1001, rs_next, data, ident=77)
            pieces = [raw(f) for f in fragment(IP(segment), fragsize=1480)]
            assert len(pieces) == 3
            for piece in pieces:
                tx.sendto(piece, (t.vip, 0))
            acked = wait_for(lambda th: th.ack == 1001 + len(data))
            assert acked is not None, f"the real server did not acknowledge the 3,000 bytes\n{dlbd.log_tail()}"
        finally:
            tx.close()
            rx.close()
            t.client.exec(["iptables", "-D", *rst_rule], check=False)
    c = counters(dlbd)
    assert c["nfq"]["frag_packets"] >= 1 and c["reasons"].get("xmit_failed", 0) == 0, c


# --------------------------------------------------------------------------- NAT and FULLNAT


@pytest.fixture(scope="module")
def ntopo() -> Iterator[Topology]:
    with Topology(fullnat_spec(N_REAL)) as t:
        t.director.ip("link", "set", t.director.iface("back").ifname, "mtu", str(BACK_MTU))
        for rs in t.reals:
            rs.ip("link", "set", rs.ifname, "mtu", str(BACK_MTU))
        yield t


@pytest.fixture(scope="module")
def nat_udp(ntopo: Topology) -> Iterator[None]:
    srv = BigUdpResponders()
    try:
        for rs in ntopo.reals:
            srv.serve(rs.netns, rs.name, rs.addr, UDP_PORT)
        yield
    finally:
        srv.close()


@pytest.fixture
def nlbd(ntopo: Topology, engine: str) -> Iterator[Lbd]:
    with running_lbd(ntopo, engine) as d:
        yield d


def test_nat_udp_datagrams_and_answers_arrive_whole(nlbd: Lbd, ntopo: Topology, nat_udp: None) -> None:
    """NAT: both ways through the director; the back segment's 1,400-byte MTU cuts lbd's fragments
    smaller than the client's, and the real servers' answers are reassembled by the director too."""
    udp_service(nlbd, ntopo, "-m")
    assert_intact(ntopo, nlbd)
    # Every datagram to the real servers (> 1,400 bytes) and every answer (> 1,500 bytes) was cut by lbd.
    assert_fragment_counts(counters(nlbd), 2 * 3)


def test_nat_df_too_big_for_the_back_segment_gets_fragmentation_needed(nlbd: Lbd, ntopo: Topology,
                                                                         nat_udp: None) -> None:
    with fresh_vip(ntopo) as vip:
        udp_service(nlbd, ntopo, "-m", vip=vip)
        assert _learnt_mtu(ntopo.client.netns, vip, UDP_PORT, 1450) == BACK_MTU
    assert counters(nlbd)["reasons"]["frag_needed"] >= 1


def test_nat_whole_packet_larger_than_the_back_segment_is_cut_by_lbd(nlbd: Lbd, ntopo: Topology,
                                                                      nat_udp: None) -> None:
    """A datagram that fits the client's 1,500-byte segment whole (no fragment reaches the director;
    under afxdp it comes through XDP) but not the real servers' 1,400, DF clear: lbd cuts it."""
    udp_service(nlbd, ntopo, "-m")
    size = BACK_MTU  # IP packet BACK_MTU + 28 bytes
    data = payload_of(size)
    name, got, digest, back = exchange(ntopo.client.netns, ntopo.vip, UDP_PORT, data, df=False)
    assert (got, digest, back) == (size, hashlib.sha256(data).hexdigest()[:16], size), (name, nlbd.log_tail())
    c = counters(nlbd)
    sent_by = c["afxdp"]["sockets"] if "afxdp" in c else [c["nfq"]]
    assert sum(s["frag_packets"] for s in sent_by) >= 1 and sum(s["xmit_l2_err"] for s in sent_by) == 0, c


def test_fullnat_udp_datagrams_and_answers_arrive_whole(nlbd: Lbd, ntopo: Topology, nat_udp: None) -> None:
    t = ntopo
    udp_service(nlbd, t, "-b")
    nlbd.lbadm("-P", "-u", f"{t.vip}:{UDP_PORT}", "-z", t.director.iface("back").addr)
    assert_intact(t, nlbd)
    assert_fragment_counts(counters(nlbd), 2 * 3)


# --------------------------------------------------------------------------- hostile fragments


HIGH_THRESH = 256 * 1024  # the director's ipfrag_high_thresh for this test, bytes
LOW_THRESH = 192 * 1024
FRAG_TIME_S = 3
# inet_frag_find refuses a new fragment while the queues hold more than ipfrag_high_thresh, so memory
# can pass the cap by what the last fragment it accepted holds (its skb's truesize): at most this.
ONE_FRAGMENT_TRUESIZE = 8192


def _ip_fragment(src: str, dst: str, ident: int, offset8: int, more: bool, data: bytes, proto: int = 17) -> bytes:
    """One hand-made IPv4 fragment (header checksum computed here), sent as is on a raw socket."""
    from lb.pyengine.csum import internet_checksum

    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident, (0x2000 if more else 0) | offset8,
                                64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)))
    hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + data


def test_hostile_fragments_stay_bounded_and_counted(ntopo: Topology, nat_udp: None) -> None:
    """Never-completed datagrams beyond the memory cap, overlapping fragments: the director's kernel
    holds at most ipfrag_high_thresh bytes, drops and counts the rest (ReasmFails, ReasmOverlaps),
    expires what never completes (ReasmTimeout), and the next whole datagram goes through as before."""
    t = ntopo
    d = t.director
    saved = {k: d.exec(["sysctl", "-n", f"net.ipv4.{k}"]).stdout.strip()
             for k in ("ipfrag_high_thresh", "ipfrag_low_thresh", "ipfrag_time")}
    d.exec(["sysctl", "-q", f"net.ipv4.ipfrag_low_thresh={LOW_THRESH}",
            f"net.ipv4.ipfrag_high_thresh={HIGH_THRESH}", f"net.ipv4.ipfrag_time={FRAG_TIME_S}"])
    try:
        with running_lbd(t, "c") as lbd:
            udp_service(lbd, t, "-m")
            before = counters(lbd)["reassembly"]
            caddr = t.client.addr
            with enter_netns(t.client.netns):
                tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            udp_head = struct.pack("!HHHH", 44000, UDP_PORT, 8 + 2 * 1472, 0)
            try:
                # 1) overlapping fragments: the second rewrites bytes the first already gave.
                for ident in range(2001, 2011):
                    tx.sendto(_ip_fragment(caddr, t.vip, ident, 0, True, udp_head + b"a" * 1472), (t.vip, 0))
                    tx.sendto(_ip_fragment(caddr, t.vip, ident, 100, False, b"b" * 800), (t.vip, 0))
                mid = counters(lbd)["reassembly"]
                # 2) 1,000 first fragments of datagrams whose rest never comes: ~1.5 MB, 6x the cap.
                for ident in range(1, 1001):
                    tx.sendto(_ip_fragment(caddr, t.vip, ident, 0, True, udp_head + b"x" * 1472), (t.vip, 0))
            finally:
                tx.close()
            after = counters(lbd)["reassembly"]
            assert mid["reasm_overlaps"] - before["reasm_overlaps"] == 10, (before, mid)
            assert after["memory_bytes"] <= HIGH_THRESH + ONE_FRAGMENT_TRUESIZE, after
            assert after["reasm_fails"] - mid["reasm_fails"] > 0, (mid, after)  # refused beyond the cap
            deadline = time.monotonic() + FRAG_TIME_S + 20.0
            while counters(lbd)["reassembly"]["pending"] and time.monotonic() < deadline:
                time.sleep(0.5)
            final = counters(lbd)
            assert final["reassembly"]["pending"] == 0 and final["reassembly"]["memory_bytes"] == 0, final
            assert final["reassembly"]["reasm_timeouts"] > after["reasm_timeouts"], final["reassembly"]
            assert final["reasons"].get("fragment", 0) == 0, final["reasons"]  # none reached lbd
            assert_intact(t, lbd)  # and the director still balances whole datagrams
            print(f"\nreassembly before/after the hostile traffic: {before} -> {final['reassembly']}")
    finally:
        d.exec(["sysctl", "-q", f"net.ipv4.ipfrag_high_thresh={saved['ipfrag_high_thresh']}",
                f"net.ipv4.ipfrag_low_thresh={saved['ipfrag_low_thresh']}",
                f"net.ipv4.ipfrag_time={saved['ipfrag_time']}"], check=False)
