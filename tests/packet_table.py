"""THE packet table: what each engine must do with each packet (docs/fastpath.md).

`build_rows()` returns a list of self-contained `Row`s. A row names the tables to
install (`Setup`), then a sequence of steps (`PacketStep`: an IPv4 packet at a
time with the expected action; `ConfigStep`: a table change between packets), then
the state expected afterwards (per-destination counts and stats in kernel list
order, per-service stats, live connections). Per-reason packet counters are
expected to equal the reasons of the row's packet steps.

Every forwarding method has rows for each rewrite, in and out: DR, IPIP (outer
header, MTU / fragmentation needed, no source address), FULLNAT (IN and OUT
rewrites, local address and port allocation, TTL, UDP checksum 0, TOA, MSS
lowering), NAT (tests/packet_rows_nat.py: both rewrites, port translation, the OUTPUT-table
states, ICMP both ways), the PROXY protocol (tests/packet_rows_proxy.py: v1 and v2 headers, sequence
translation, retransmissions, SACK, cuts, with SYN-proxy), ICMP errors (forwarded, encapsulated, translated both ways, bad
checksum), SYN-proxy (cookie, ACK, real-server handshake, sequence and SACK
translation, held data, defer, ACK storm, RSTs) and SYN-proxy timers (`TimerStep`:
what engine.timers(now) must return).

Inputs and expected outputs are built with scapy, independently of the engines:
XMIT_L2 rows carry the full frame Ether(dst=real server, src=director)/(rewritten)
packet, ANSWER rows the complete packet for the kernel (ICMP errors the director
originates, FULLNAT replies, SYN-proxy segments). Rewritten packets are rebuilt by
scapy with full checksums (the engines update them incrementally; RFC 1624 eqn. 3
gives the same bytes); local ports and SYN cookies come from reference
computations written here from docs/fastpath.md and native/src/synproxy.c's
layout (`local_port`, `syn_cookie`, with its own SipHash-2-4). Engines under test
are made with hash_seed HASH_SEED. Nothing here imports an engine, and rows are
plain data (bytes, ints, strings), so the C microbenchmark can replay them; scapy
is needed only to build the table.

Addresses come from the documentation ranges (RFC 5737) and never leave the process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

PROTO_TCP = 6
PROTO_UDP = 17

CLIENT1 = "192.0.2.10"
CLIENT2 = "192.0.2.11"
VIP = "198.51.100.1"
VIP2 = "198.51.100.2"  # has no service
RS1 = "203.0.113.11"
RS2 = "203.0.113.12"
RS3 = "203.0.113.13"
IFINDEX = 7
DIRECTOR_MAC = bytes.fromhex("020000000001")
RS_MACS = {
    RS1: bytes.fromhex("020000000b01"),
    RS2: bytes.fromhex("020000000b02"),
    RS3: bytes.fromhex("020000000b03"),
}
LIP1 = "198.51.100.201"  # FULLNAT local addresses
LIP2 = "198.51.100.202"
TUN_SRC = "203.0.113.1"  # the director's address towards the real servers (tunnel outer source)
HASH_SEED = 1  # every engine under test is made with this seed: local port cursors and SYN cookies follow
LPORT_MIN, LPORT_MAX = 20000, 20999  # FULLNAT local ports in the table's setups

# Timeouts from docs/fastpath.md, milliseconds (stated here, not read from an engine).
T_NONE, T_ES, T_SR, T_FW, T_TW, T_CL, T_UDP = 2_000, 900_000, 60_000, 120_000, 120_000, 10_000, 300_000

# The TCP states a connection counts as active in (ActiveConn; every other state, and UDP, counts in
# InActConn), read from the kernel: tcp_state_active_table in net/netfilter/ipvs/ip_vs_proto_tcp.c
# (Linux 6.1), used by set_tcp_state on every state change.
ACTIVE_STATES = frozenset({"ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYNACK"})


def active_in(state: str) -> int:
    """1 if a TCP connection in `state` counts as active, else 0."""
    return int(state in ACTIVE_STATES)

SvcRef = tuple[int, str, int]  # (proto, vaddr, vport)
TCP80: SvcRef = (PROTO_TCP, VIP, 80)
UDP53: SvcRef = (PROTO_UDP, VIP, 53)
TCP0: SvcRef = (PROTO_TCP, VIP, 0)  # port-zero ("all ports") services: persistent only (ipvsadm)
UDP0: SvcRef = (PROTO_UDP, VIP, 0)
FWM1: SvcRef = (0, "0.0.0.1", 0)  # ipvsadm -f 1: protocol LB_PROTO_FWMARK, the mark as the address, no port


# ---- row data types ------------------------------------------------------------------


@dataclass(frozen=True)
class DestSetup:
    addr: str
    port: int = 80
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    l2: bool = True  # install forwarding state (ifindex IFINDEX, RS_MACS[addr], DIRECTOR_MAC)
    fwd: str = "route"  # route | tunnel | masq | fullnat
    saddr: str = "0.0.0.0"  # forwarding state: route source address (the tunnel's outer source)
    mtu: int = 1500  # forwarding state: path MTU (0 = 1500)

    @property
    def mac(self) -> bytes:
        return RS_MACS[self.addr]


@dataclass(frozen=True)
class ServiceSetup:
    ref: SvcRef
    sched: str = "rr"
    dests: tuple[DestSetup, ...] = ()  # in the order they are added: the kernel list is the reverse
    persistent: int | None = None  # persistence timeout, seconds
    netmask: str = "255.255.255.255"  # persistence granularity
    toa: bool = False
    synproxy: bool = False
    laddrs: tuple[str, ...] = ()  # FULLNAT local addresses, in the order added
    sp_conf: tuple[tuple[str, object], ...] | None = None  # the service's own SYN-proxy settings (SynproxyConf fields)
    sched_flags: int = 0  # lb.model's bits: 1 flag-1 (sh/mh fallback), 2 flag-2 (sh/mh port), 4 flag-3
    ops: bool = False  # -o: one-packet scheduling
    proxy_protocol: str | None = None  # FULLNAT TCP: "v1" / "v2" PROXY header (tests/packet_rows_proxy.py)


@dataclass(frozen=True)
class Setup:
    services: tuple[ServiceSetup, ...]
    conn_max: int = 0  # 0 = the engine's default
    timeouts: tuple[int, int, int] | None = None  # set_timeouts(tcp, tcpfin, udp) seconds, None = defaults
    lport_min: int = LPORT_MIN  # FULLNAT local port range (engines are made with hash_seed HASH_SEED)
    lport_max: int = LPORT_MAX
    local_addrs: tuple[str, ...] = ()  # the director's own addresses (engine.set_local_addrs)


@dataclass(frozen=True)
class PacketStep:
    packet: bytes
    now_ms: int
    verdict: str  # lb.engine.Verdict member name
    reason: str  # lb.engine.Reason member name
    out: bytes = b""  # MANGLE/ANSWER bytes
    ifindex: int = 0  # XMIT_L2
    l2hdr: bytes = b""  # XMIT_L2
    frame: bytes = b""  # XMIT_L2: the whole frame that must leave (l2hdr + (out or packet))
    note: str = ""
    mark: int = 0  # the packet's firewall mark (NFQUEUE's NFQA_MARK): fwmark services are found by it
    frag_mtu: int = 0  # XMIT_L2: the packet leaves as IP fragments of at most this many bytes (0: whole)


@dataclass(frozen=True)
class TimerStep:
    """engine.timers(now_ms) must return exactly these actions (verdict, reason, out, ifindex, l2hdr), in order;
    an action that leaves as IP fragments carries its frag_mtu as a sixth element."""

    now_ms: int
    actions: tuple[tuple[str, str, bytes, int, bytes] | tuple[str, str, bytes, int, bytes, int], ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ConfigStep:
    op: str  # add_dest | edit_dest | del_dest | set_fwd | del_service | expire (service unused)
    service: SvcRef
    dest: DestSetup | None = None
    now_ms: int = 0


Step = PacketStep | ConfigStep | TimerStep


@dataclass(frozen=True)
class DestExpect:
    service: SvcRef
    addr: str
    port: int = 80
    active: int = 0
    inactive: int = 0
    conns: int = 0
    inpkts: int = 0
    inbytes: int = 0
    syn_retrans: int = 0  # client SYNs repeating the entry's first SYN while in SYN_RECV
    handshakes: int = 0  # SYN_RECV -> ESTABLISHED transitions
    persist: int = 0  # persistence templates naming this destination
    outpkts: int = 0  # packets from the real server (FULLNAT replies, ICMP errors about OUT tuples)
    outbytes: int = 0


@dataclass(frozen=True)
class ServiceExpect:
    ref: SvcRef
    conns: int = 0
    inpkts: int = 0
    inbytes: int = 0
    outpkts: int = 0
    outbytes: int = 0


@dataclass(frozen=True, order=True)
class ConnExpect:
    proto: int
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    state: str
    expires_ms: int
    laddr: str = "0.0.0.0"  # FULLNAT local address and port
    lport: int = 0


@dataclass(frozen=True)
class Row:
    id: str
    description: str
    setup: Setup
    steps: tuple[Step, ...]
    dests: tuple[DestExpect, ...]  # every listed destination, services in setup order, dests in kernel order
    services: tuple[ServiceExpect, ...]
    conns: tuple[ConnExpect, ...]  # live entries at check_ms (order irrelevant)
    check_ms: int = 0
    tags: tuple[str, ...] = field(default=())
    laddrs: tuple[tuple[SvcRef, str, int], ...] | None = None  # (service, local address, conns); None: not checked
    sp_stats: tuple[tuple[str, int], ...] | None = None  # non-zero SYN-proxy counters; None: not checked
    timer_counts: tuple[tuple[str, int], ...] = ()  # counts no step's reason shows (held packets the timers drop or room-making drops)

    @property
    def packet_steps(self) -> tuple[PacketStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, PacketStep))


# ---- packet builders (scapy) --------------------------------------------------------


def _scapy():
    import scapy.all as scapy  # imported lazily: only table building needs it

    return scapy


def ip_header(**kw: object):
    s = _scapy()
    fields = {"src": CLIENT1, "dst": VIP, "id": 4242, "ttl": 61}
    fields.update(kw)
    return s.IP(**fields)


def tcp(sport: int = 40000, flags: str = "S", payload: bytes = b"", *, dport: int = 80, seq: int = 1000,
        ack: int = 0, tcp_options: list | None = None, **ip: object) -> bytes:
    s = _scapy()
    segment = s.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=64240,
                    options=tcp_options or [])
    if "flags_ip" in ip:
        ip["flags"] = ip.pop("flags_ip")
    packet = ip_header(**ip) / segment
    if payload:
        packet = packet / s.Raw(payload)
    return bytes(packet)


def udp(sport: int = 50000, payload: bytes = b"query-01", *, dport: int = 53, **ip: object) -> bytes:
    s = _scapy()
    return bytes(ip_header(**ip) / s.UDP(sport=sport, dport=dport) / s.Raw(payload))


def ip_total_length(packet: bytes) -> int:
    return int(_scapy().IP(packet).len)


def expected_frame(dest_addr: str, packet: bytes) -> bytes:
    s = _scapy()
    return bytes(s.Ether(dst=RS_MACS[dest_addr], src=DIRECTOR_MAC, type=0x0800) / s.Raw(packet))


def icmp_quote(packet: bytes) -> bytes:
    """What an ICMP error the director originates quotes: the packet up to its total length, as much
    as keeps the error within 576 bytes (the kernel's __icmp_send; RFC 1812 4.3.2.3)."""
    return packet[: min(ip_total_length(packet), 576 - 28)]


def icmp_tos(packet: bytes) -> int:
    """The TOS of an ICMP error about `packet`: its TOS bits with precedence "internetwork control"
    (__icmp_send: RT_TOS(tos) | IPTOS_PREC_INTERNETCONTROL)."""
    return (packet[1] & 0x1E) | 0xC0


def expected_port_unreachable(packet: bytes) -> bytes:
    """IPv4 (TOS icmp_tos, id 0, DF clear, TTL 64) from the VIP to the client, ICMP 3/3 quoting
    the original packet (icmp_quote)."""
    s = _scapy()
    original = s.IP(packet)
    quote = icmp_quote(packet)
    answer = s.IP(src=original.dst, dst=original.src, tos=icmp_tos(packet), id=0, flags=0, frag=0, ttl=64,
                  proto=1) / s.ICMP(type=3, code=3) / s.Raw(quote)
    return bytes(answer)


def ttl_dec(packet: bytes) -> bytes:
    """What every method sends on: the packet up to its total length, TTL - 1, header checksum recomputed
    (the kernel's __ip_vs_get_out_rt -> decrement_ttl, DR included)."""
    s = _scapy()
    p = s.IP(packet)
    p.ttl -= 1
    del p.chksum
    ihl = p.ihl * 4
    header = bytes(p)[:ihl]
    return header + packet[ihl:p.len]


def fwd(packet: bytes, now_ms: int, dest: str, note: str = "", reason: str = "FORWARDED") -> PacketStep:
    """DR: XMIT_L2 of the packet with its TTL decremented."""
    out = ttl_dec(packet)
    frame = expected_frame(dest, out)
    return PacketStep(packet, now_ms, "XMIT_L2", reason, out=out, ifindex=IFINDEX, l2hdr=frame[:14],
                      frame=frame, note=note or f"forwarded to {dest}")


def fwd_frag(packet: bytes, now_ms: int, dest: str, frag_mtu: int) -> PacketStep:
    """DR: the packet (TTL decremented), too big for the path, leaves as fragments of frag_mtu bytes."""
    out = ttl_dec(packet)
    frame = expected_frame(dest, out)
    return PacketStep(packet, now_ms, "XMIT_L2", "FORWARDED", out=out, ifindex=IFINDEX, l2hdr=frame[:14], frame=frame,
                      note=f"forwarded to {dest} as fragments of {frag_mtu} bytes", frag_mtu=frag_mtu)


def time_exceeded(packet: bytes, src: str) -> bytes:
    """ICMP time exceeded in transit (11/0) from `src` to the packet's source (TOS icmp_tos, id 0, DF
    clear, TTL 64), quoting the packet (icmp_quote): the kernel's decrement_ttl at TTL <= 1."""
    s = _scapy()
    original = s.IP(packet)
    quote = icmp_quote(packet)
    return bytes(s.IP(src=src, dst=original.src, tos=icmp_tos(packet), id=0, flags=0, frag=0, ttl=64, proto=1)
                 / s.ICMP(type=11, code=0) / s.Raw(quote))


def verdict(packet: bytes, now_ms: int, verdict_name: str, reason: str, note: str = "") -> PacketStep:
    return PacketStep(packet, now_ms, verdict_name, reason, note=note)


def answer(packet: bytes, now_ms: int, note: str = "ICMP port unreachable") -> PacketStep:
    return PacketStep(packet, now_ms, "ANSWER", "NO_DEST", out=expected_port_unreachable(packet), note=note)


def conn(state: str, expires_ms: int, dest: str, *, cport: int = 40000, caddr: str = CLIENT1,
         svc: SvcRef = TCP80, dport: int = 80, laddr: str = "0.0.0.0", lport: int = 0) -> ConnExpect:
    return ConnExpect(svc[0], caddr, cport, svc[1], svc[2], dest, dport, state, expires_ms, laddr, lport)


# ---- setups ---------------------------------------------------------------------------


def one_dest(sched: str = "rr", **dest: object) -> Setup:
    return Setup((ServiceSetup(TCP80, sched, (DestSetup(RS1, **dest),)),  # type: ignore[arg-type]
                  ServiceSetup(UDP53, sched, (DestSetup(RS1, 53),))))


def idle_expectations(setup: Setup) -> tuple[tuple[DestExpect, ...], tuple[ServiceExpect, ...]]:
    """All-zero expectations: destinations listed most recently added first."""
    dests = tuple(
        DestExpect(svc.ref, d.addr, d.port) for svc in setup.services for d in reversed(svc.dests)
    )
    return dests, tuple(ServiceExpect(svc.ref) for svc in setup.services)


def untouched(row_id: str, description: str, packet: bytes, verdict_name: str, reason: str,
              setup: Setup | None = None, tags: tuple[str, ...] = ()) -> Row:
    """A row whose single packet never reaches the tables."""
    setup = setup or one_dest()
    dests, services = idle_expectations(setup)
    return Row(row_id, description, setup, (verdict(packet, 1000, verdict_name, reason),), dests, services, (),
               check_ms=1000, tags=tags)


def _set_byte(packet: bytes, offset: int, value: int) -> bytes:
    return packet[:offset] + bytes([value]) + packet[offset + 1:]


def _flip_checksum(packet: bytes) -> bytes:
    """Flip the low bit of the IPv4 header checksum: wrong afterwards (only 0x0000 and 0xffff are
    equivalent in one's complement, and flipping bit 0 never maps one to the other)."""
    return packet[:11] + bytes([packet[11] ^ 0x01]) + packet[12:]


def _fix_ip_checksum(packet: bytes) -> bytes:
    s = _scapy()
    ihl = (packet[0] & 0x0F) * 4
    header = bytearray(packet[:ihl])
    header[10:12] = b"\0\0"
    csum = s.checksum(bytes(header))
    header[10:12] = csum.to_bytes(2, "big")
    return bytes(header) + packet[ihl:]


# ---- the rows ---------------------------------------------------------------------------


def _dr_flow_rows() -> list[Row]:
    setup = one_dest()
    syn = tcp(flags="S")
    ack = tcp(flags="A", seq=1001, ack=5001)
    data = tcp(flags="PA", payload=b"G" * 100, seq=1001, ack=5001)
    fin = tcp(flags="FA", seq=1101, ack=5001)
    rst = tcp(flags="RA", seq=1001, ack=5001)
    n = {name: ip_total_length(p) for name, p in (("syn", syn), ("ack", ack), ("data", data), ("fin", fin), ("rst", rst))}
    udp_svc = ServiceExpect(UDP53)
    udp_dest = DestExpect(UDP53, RS1, 53)

    def row(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
            names: tuple[str, ...]) -> Row:
        inbytes = sum(n[x] for x in names)
        last = steps[-1].now_ms
        return Row(
            row_id, description, setup, steps,
            (DestExpect(TCP80, RS1, active=active_in(state), inactive=1 - active_in(state), conns=1,
                        inpkts=len(names), inbytes=inbytes, handshakes=int("ack" in names)),
             udp_dest),
            (ServiceExpect(TCP80, 1, len(names), inbytes), udp_svc),
            (conn(state, timeout, RS1),), check_ms=last, tags=("dr",))

    return [
        row("dr-syn", "SYN to the VIP creates an entry (SYN_RECV, active) and leaves unchanged with the real "
            "server's MAC", (fwd(syn, 0, RS1),), "SYN_RECV", T_SR, ("syn",)),
        row("dr-ack", "the handshake's ACK makes the entry ESTABLISHED (active) and is forwarded unchanged",
            (fwd(syn, 0, RS1), fwd(ack, 10, RS1)), "ESTABLISHED", T_ES, ("syn", "ack")),
        row("dr-data", "data on an established flow is forwarded unchanged; inbytes counts IP total length",
            (fwd(syn, 0, RS1), fwd(ack, 10, RS1), fwd(data, 20, RS1)), "ESTABLISHED", T_ES, ("syn", "ack", "data")),
        row("dr-fin", "the client's FIN moves ESTABLISHED to FIN_WAIT (INPUT-ONLY) and makes it inactive",
            (fwd(syn, 0, RS1), fwd(ack, 10, RS1), fwd(data, 20, RS1), fwd(fin, 30, RS1)), "FIN_WAIT", T_FW,
            ("syn", "ack", "data", "fin")),
        row("dr-rst", "the client's RST moves ESTABLISHED to CLOSE and is still forwarded",
            (fwd(syn, 0, RS1), fwd(ack, 10, RS1), fwd(rst, 20, RS1)), "CLOSE", T_CL, ("syn", "ack", "rst")),
    ]


def _udp_rows() -> list[Row]:
    setup = one_dest()
    first, second = udp(payload=b"query-01"), udp(payload=b"query-02-longer")
    b1, b2 = ip_total_length(first), ip_total_length(second)
    rows = [
        Row("udp-flow", "a UDP flow: the first datagram creates an inactive UDP entry, the second reuses it",
            setup, (fwd(first, 0, RS1), fwd(second, 5000, RS1)),
            (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2, inbytes=b1 + b2)),
            (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 2, b1 + b2)),
            (conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=5000, tags=("udp",)),
        Row("udp-expiry", "a UDP entry dies 300 s after its last packet; the next datagram is a new connection",
            setup, (fwd(first, 0, RS1), fwd(second, 300_000, RS1)),
            (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=2, inpkts=2, inbytes=b1 + b2)),
            (ServiceExpect(TCP80), ServiceExpect(UDP53, 2, 2, b1 + b2)),
            (conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=300_000, tags=("udp", "expiry")),
    ]
    return rows


def _scheduling_rows() -> list[Row]:
    rows = []
    # rr over three destinations added RS1, RS2, RS3: kernel list RS3, RS2, RS1.
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2), DestSetup(RS3))),))
    syns = [tcp(sport=41000 + i) for i in range(4)]
    order = [RS3, RS2, RS1, RS3]
    size = ip_total_length(syns[0])
    rows.append(Row(
        "rr-order", "rr starts at the most recently added destination and walks the list, wrapping around",
        setup, tuple(fwd(p, i, d) for i, (p, d) in enumerate(zip(syns, order, strict=True))),
        (DestExpect(TCP80, RS3, active=2, conns=2, inpkts=2, inbytes=2 * size),
         DestExpect(TCP80, RS2, active=1, conns=1, inpkts=1, inbytes=size),
         DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size)),
        (ServiceExpect(TCP80, 4, 4, 4 * size),),
        tuple(conn("SYN_RECV", T_SR - (3 - i), d, cport=41000 + i) for i, d in enumerate(order)), check_ms=3,
        tags=("sched",)))

    # wlc with RS1 weight 1, RS2 weight 3 (list RS2, RS1): RS2, RS1, RS2, RS2, RS2, RS1 (every entry in
    # SYN_RECV, active: overhead 256 per entry).
    setup = Setup((ServiceSetup(TCP80, "wlc", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=3))),))
    syns = [tcp(sport=42000 + i) for i in range(6)]
    order = [RS2, RS1, RS2, RS2, RS2, RS1]
    rows.append(Row(
        "wlc-weights", "wlc: overhead/weight by cross-multiplication, ties keep the earlier destination",
        setup, tuple(fwd(p, 0, d) for p, d in zip(syns, order, strict=True)),
        (DestExpect(TCP80, RS2, active=4, conns=4, inpkts=4, inbytes=4 * size),
         DestExpect(TCP80, RS1, active=2, conns=2, inpkts=2, inbytes=2 * size)),
        (ServiceExpect(TCP80, 6, 6, 6 * size),),
        tuple(conn("SYN_RECV", T_SR, d, cport=42000 + i) for i, d in enumerate(order)), check_ms=0,
        tags=("sched",)))

    # wlc: an active connection weighs 256 inactive ones. RS2 gets the first SYN and its ACK (ESTABLISHED,
    # active); RS1 the second SYN (SYN_RECV: active too), whose FIN makes it TIME_WAIT (inactive); the third
    # SYN then goes to RS1 (overhead 1 against RS2's 256).
    setup = Setup((ServiceSetup(TCP80, "wlc", (DestSetup(RS1), DestSetup(RS2))),))
    s1, a1 = tcp(sport=43000), tcp(sport=43000, flags="A", seq=1001, ack=1)
    s2, f2, s3 = tcp(sport=43001), tcp(sport=43001, flags="FA", seq=1001, ack=1), tcp(sport=43002)
    rows.append(Row(
        "wlc-active-weighs-more", "wlc: RS2 with one active entry loses to RS1 with one inactive entry",
        setup, (fwd(s1, 0, RS2), fwd(a1, 1, RS2), fwd(s2, 2, RS1), fwd(f2, 3, RS1), fwd(s3, 4, RS1)),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),
         DestExpect(TCP80, RS1, active=1, inactive=1, conns=2, inpkts=3, inbytes=3 * size)),
        (ServiceExpect(TCP80, 3, 5, 5 * size),),
        (conn("ESTABLISHED", T_ES - 3, RS2, cport=43000), conn("TIME_WAIT", T_TW - 1, RS1, cport=43001),
         conn("SYN_RECV", T_SR, RS1, cport=43002)), check_ms=4, tags=("sched",)))

    # weight 0: never chosen; alone, it means no destination.
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2, weight=0))),))
    syns = [tcp(sport=44000 + i) for i in range(3)]
    rows.append(Row(
        "weight0-skipped", "rr never picks a weight-0 destination (RS2 is first in the list)",
        setup, tuple(fwd(p, i, RS1) for i, p in enumerate(syns)),
        (DestExpect(TCP80, RS2), DestExpect(TCP80, RS1, active=3, conns=3, inpkts=3, inbytes=3 * size)),
        (ServiceExpect(TCP80, 3, 3, 3 * size),),
        tuple(conn("SYN_RECV", T_SR - (2 - i), RS1, cport=44000 + i) for i in range(3)), check_ms=2,
        tags=("sched", "weight0")))
    for sched in ("rr", "wlc"):
        setup = Setup((ServiceSetup(TCP80, sched, (DestSetup(RS1, weight=0),)),))
        syn = tcp(sport=44100)
        dests, services = idle_expectations(setup)
        rows.append(Row(
            f"weight0-only-{sched}", f"{sched}: the only destination has weight 0 -> no destination, ICMP answer",
            setup, (answer(syn, 0),), dests, services, (), tags=("sched", "weight0", "no-dest")))
    return rows


def _no_dest_rows() -> list[Row]:
    setup = Setup((ServiceSetup(TCP80, "rr"), ServiceSetup(UDP53, "wlc")))
    dests, services = idle_expectations(setup)
    from_rows = [
        ("no-dest-tcp", "SYN to a service without destinations: ICMP port unreachable from the VIP",
         tcp(sport=45000, payload=b"early-data")),
        ("no-dest-udp", "UDP to a service without destinations: ICMP port unreachable quoting the UDP header",
         udp(sport=45001, payload=b"x" * 40)),
        ("no-dest-ip-options", "the quote keeps the original IP options (IHL 6) and 8 bytes of TCP header",
         tcp(sport=45002, options=_router_alert())),
    ]
    rows = [Row(i, d, setup, (answer(p, 0),), dests, services, (), tags=("no-dest",)) for i, d, p in from_rows]
    # ANSWER wins over a full table: scheduling comes first.
    setup_full = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)), ServiceSetup(UDP53, "rr")), conn_max=1)
    syn = tcp(sport=45010)
    query = udp(sport=45011)
    size = ip_total_length(syn)
    rows.append(Row(
        "no-dest-before-table-full", "with the table full, a packet for a service without destinations still gets "
        "the ICMP answer (no destination is decided before the table is consulted)",
        setup_full, (fwd(syn, 0, RS1), answer(query, 1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),),
        (ServiceExpect(TCP80, 1, 1, size), ServiceExpect(UDP53)),
        (conn("SYN_RECV", T_SR - 1, RS1, cport=45010),), check_ms=1, tags=("no-dest", "table-full")))
    return rows


def _router_alert() -> list:
    return [_scapy().IPOption_Router_Alert()]


def _lookup_rows() -> list[Row]:
    setup = one_dest()
    rows = [
        untouched("no-service-port", "SYN to the VIP on a port without a service passes through",
                  tcp(dport=8080), "ACCEPT", "NO_SERVICE"),
        untouched("no-service-addr", "SYN to another address passes through", tcp(dst=VIP2), "ACCEPT", "NO_SERVICE"),
        untouched("no-service-proto", "UDP to a port that only has a TCP service passes through",
                  udp(dport=80), "ACCEPT", "NO_SERVICE"),
        untouched("no-service-nonsyn", "an ACK to a port without a service is NO_SERVICE (service lookup comes first)",
                  tcp(dport=8080, flags="A"), "ACCEPT", "NO_SERVICE"),
    ]
    for flags, name in (("A", "ack"), ("PA", "data"), ("FA", "fin"), ("R", "rst"), ("", "noflags")):
        rows.append(untouched(f"no-conn-{name}", f"TCP {name} without an entry passes through (the local stack answers)",
                              tcp(flags=flags, seq=1001, ack=1 if "A" in flags else 0), "ACCEPT", "NO_CONN",
                              setup, tags=("no-conn",)))
    return rows


def _tcp_flag_rows() -> list[Row]:
    setup = one_dest()
    rows = []
    syn = tcp(flags="S")
    size = ip_total_length(syn)

    def single_conn(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
                    handshakes: int, conns: int = 1, tags: tuple[str, ...] = ()) -> Row:
        pkts = [s for s in steps if isinstance(s, PacketStep)]
        inbytes = sum(ip_total_length(p.packet) for p in pkts)
        last = pkts[-1].now_ms
        return Row(row_id, description, setup, steps,
                   (DestExpect(TCP80, RS1, active=active_in(state), inactive=1 - active_in(state), conns=conns,
                               inpkts=len(pkts), inbytes=inbytes, handshakes=handshakes), DestExpect(UDP53, RS1, 53)),
                   (ServiceExpect(TCP80, conns, len(pkts), inbytes), ServiceExpect(UDP53)),
                   (conn(state, timeout, RS1),), check_ms=last, tags=("tcp-state",) + tags)

    rows.append(single_conn("synack-creates", "a SYN+ACK without an entry has SYN: it is scheduled (syn event)",
                            (fwd(tcp(flags="SA", ack=1), 0, RS1),), "SYN_RECV", T_SR, handshakes=0))
    rows.append(untouched("synrst-no-conn", "a SYN+RST without an entry is never scheduled (tcp_conn_schedule): "
                          "the local stack answers", tcp(flags="SR"), "ACCEPT", "NO_CONN", setup, tags=("tcp-state",)))
    rows.append(single_conn("synfin-creates", "a SYN+FIN without an entry: syn wins over fin -> SYN_RECV",
                            (fwd(tcp(flags="SF"), 0, RS1),), "SYN_RECV", T_SR, handshakes=0))
    ack = tcp(flags="A", seq=1001, ack=1)
    rows.append(single_conn("syn-on-established", "a SYN on an ESTABLISHED entry keeps it (no reuse), same server",
                            (fwd(syn, 0, RS1), fwd(ack, 1, RS1), fwd(syn, 2, RS1)), "ESTABLISHED", T_ES,
                            handshakes=1))
    rows.append(Row("noflags-closes", "a TCP segment without SYN/FIN/ACK/RST moves the entry to CLOSE (the kernel's "
                    "set_tcp_state starts from CLOSE) and restarts the timer with CLOSE's timeout", setup,
                    (fwd(syn, 0, RS1), fwd(ack, 1, RS1), fwd(tcp(flags="", seq=1001), 5000, RS1)),
                    (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=3, inbytes=3 * size, handshakes=1),
                     DestExpect(UDP53, RS1, 53)),
                    (ServiceExpect(TCP80, 1, 3, 3 * size), ServiceExpect(UDP53)),
                    (conn("CLOSE", T_CL, RS1),), check_ms=5000, tags=("tcp-state",)))
    rows.append(single_conn("expiry-boundary-alive", "an entry is alive 1 ms before its expiry time",
                            (fwd(syn, 0, RS1), fwd(ack, T_SR - 1, RS1)), "ESTABLISHED", T_ES, handshakes=1,
                            tags=("expiry",)))
    # At exactly its expiry time the SYN_RECV entry is dead: the ACK finds no entry.
    dests = (DestExpect(TCP80, RS1, conns=1, inpkts=1, inbytes=size), DestExpect(UDP53, RS1, 53))
    rows.append(Row("expiry-boundary-dead", "an entry is dead at its expiry time (now >= expires): ACK -> NO_CONN",
                    setup, (fwd(syn, 0, RS1), verdict(ack, T_SR, "ACCEPT", "NO_CONN")), dests,
                    (ServiceExpect(TCP80, 1, 1, size), ServiceExpect(UDP53)), (), check_ms=T_SR,
                    tags=("tcp-state", "expiry")))

    # conn_reuse_mode=1: SYN on CLOSE / TIME_WAIT reschedules (rr moves on to the next destination).
    setup2 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    rst = tcp(flags="R", seq=1001)
    fin = tcp(flags="F", seq=1001)
    reuse_cases = (
        ("reuse-close", "CLOSE", (fwd(syn, 0, RS2), fwd(ack, 1, RS2), fwd(rst, 2, RS2)), fwd(syn, 3, RS1)),
        ("reuse-time-wait", "TIME_WAIT", (fwd(syn, 0, RS2), fwd(fin, 1, RS2)), fwd(syn, 2, RS1)),
    )
    for row_id, state, closing, new_syn in reuse_cases:
        old = len(closing)
        handshakes = int(state == "CLOSE")  # that path went through ESTABLISHED
        rows.append(Row(
            row_id, f"a new SYN on a {state} entry expires it and schedules afresh (conn_reuse_mode=1)",
            setup2, closing + (new_syn,),
            (DestExpect(TCP80, RS2, conns=1, inpkts=old, inbytes=old * size, handshakes=handshakes),
             DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size)),
            (ServiceExpect(TCP80, 2, old + 1, (old + 1) * size),), (conn("SYN_RECV", T_SR, RS1),),
            check_ms=new_syn.now_ms, tags=("tcp-state", "reuse")))
    synack = tcp(flags="SA", ack=1)
    rows.append(Row(
        "reuse-synack", "a SYN+ACK on a TIME_WAIT entry is a new connection too (is_new_conn looks at SYN only): "
        "the entry expires and the SYN+ACK is scheduled afresh",
        setup2, (fwd(syn, 0, RS2), fwd(fin, 1, RS2), fwd(synack, 2, RS1)),
        (DestExpect(TCP80, RS2, conns=1, inpkts=2, inbytes=2 * size),
         DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size)),
        (ServiceExpect(TCP80, 2, 3, 3 * size),), (conn("SYN_RECV", T_SR, RS1),), check_ms=2,
        tags=("tcp-state", "reuse")))
    rows.append(Row(
        "reuse-synrst", "a SYN+RST on a CLOSE entry expires it; as a miss it is never scheduled (NO_CONN)",
        setup2, (fwd(syn, 0, RS2), fwd(ack, 1, RS2), fwd(rst, 2, RS2), verdict(tcp(flags="SR"), 3, "ACCEPT", "NO_CONN")),
        (DestExpect(TCP80, RS2, conns=1, inpkts=3, inbytes=3 * size, handshakes=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 3, 3 * size),), (), check_ms=3, tags=("tcp-state", "reuse")))
    return rows


def _l2_and_table_rows() -> list[Row]:
    rows = []
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, l2=False),)),))
    syn = tcp()
    size = ip_total_length(syn)
    rows.append(Row(
        "no-l2", "a destination without forwarding state: the entry is made and counted, the packet held until "
        "the state is installed (L2_QUEUED; tests/packet_rows_faults.py has what becomes of it)",
        setup, (verdict(syn, 0, "DROP", "L2_QUEUED"),),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 1, 1, size),),
        (conn("SYN_RECV", T_SR, RS1),), tags=("l2",)))
    rows.append(Row(
        "no-l2-then-resolved", "once forwarding state is installed the held SYN leaves from the timers and the "
        "same entry's packets are forwarded",
        setup, (verdict(syn, 0, "DROP", "L2_QUEUED"), ConfigStep("set_fwd", TCP80, DestSetup(RS1), 1),
                TimerStep(1, (("XMIT_L2", "FORWARDED", ttl_dec(syn), IFINDEX, expected_frame(RS1, syn)[:14]),)),
                fwd(tcp(flags="A", seq=1001, ack=1), 2, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (conn("ESTABLISHED", T_ES, RS1),), check_ms=2, tags=("l2",)))
    rows.append(Row(
        "l2-invalidated", "invalidating a destination's forwarding state holds its packets until it is resolved "
        "again (L2_QUEUED)",
        Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),)),
        (fwd(syn, 0, RS1), ConfigStep("set_fwd", TCP80, DestSetup(RS1, l2=False), 1),
         verdict(tcp(flags="A", seq=1001, ack=1), 2, "DROP", "L2_QUEUED")),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (conn("ESTABLISHED", T_ES, RS1),), check_ms=2, tags=("l2",)))

    # When the table is full, early drop releases the droppable entry (half-open or finished TCP)
    # that expires first, the older at equal times; without one the new connection is refused.
    full = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),), conn_max=1)
    a, b = tcp(sport=46000), tcp(sport=46001)
    a_ack = tcp(sport=46000, flags="A", seq=1001, ack=1)
    rows.append(Row(
        "table-full", "with conn_max=1 and an ESTABLISHED entry (not droppable) a second connection is dropped; "
        "after the first expires it gets in",
        full, (fwd(a, 0, RS1), fwd(a_ack, 1, RS1), verdict(b, 1000, "DROP", "TABLE_FULL"), fwd(b, T_ES + 1, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=2, inpkts=3, inbytes=3 * size, handshakes=1),),
        (ServiceExpect(TCP80, 2, 3, 3 * size),),
        (conn("SYN_RECV", T_SR, RS1, cport=46001),), check_ms=T_ES + 1, tags=("table-full",)))
    rows.append(Row(
        "table-full-existing-flow", "a full table still forwards packets of existing entries",
        full, (fwd(a, 0, RS1), fwd(a_ack, 1, RS1), verdict(b, 2, "DROP", "TABLE_FULL"),
               fwd(tcp(sport=46000, flags="PA", seq=1001, ack=1), 3, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=3 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 3, 3 * size),),
        (conn("ESTABLISHED", T_ES, RS1, cport=46000),), check_ms=3, tags=("table-full",)))
    rows.append(Row(
        "table-full-early-drop", "a half-open (SYN_RECV) entry makes room for a new connection (early drop, as "
        "kernel IPVS's drop_entry and conntrack's early_drop): the new SYN is forwarded, the dropped entry's "
        "next segment finds no connection",
        full, (fwd(a, 0, RS1), fwd(b, 1000, RS1), verdict(a_ack, 1001, "ACCEPT", "NO_CONN")),
        (DestExpect(TCP80, RS1, active=1, conns=2, inpkts=2, inbytes=2 * size),),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (conn("SYN_RECV", T_SR - 1, RS1, cport=46001),), check_ms=1001, tags=("table-full", "early-drop")))
    full_rr = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),), conn_max=1)
    c = tcp(sport=46002)
    rows.append(Row(
        "table-full-advances-rr", "scheduling happens before the table-full check, so a dropped SYN still moved "
        "the rr cursor (RS2, [RS1 dropped], RS2)",
        full_rr, (fwd(a, 0, RS2), fwd(a_ack, 1, RS2), verdict(b, 2, "DROP", "TABLE_FULL"), fwd(c, T_ES + 2, RS2)),
        (DestExpect(TCP80, RS2, active=1, conns=2, inpkts=3, inbytes=3 * size, handshakes=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 2, 3, 3 * size),), (conn("SYN_RECV", T_SR, RS2, cport=46002),),
        check_ms=T_ES + 2, tags=("table-full", "sched")))
    two = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),), conn_max=2)
    c_ack = tcp(sport=46002, flags="A", seq=1001, ack=1)
    b_ack = tcp(sport=46001, flags="A", seq=1001, ack=1)
    rows.append(Row(
        "early-drop-first-to-expire", "early drop takes the droppable entry that expires first: of two SYN_RECV "
        "entries the older goes, the newer completes its handshake",
        two, (fwd(a, 0, RS1), fwd(b, 10, RS1), fwd(c, 20, RS1), verdict(a_ack, 21, "ACCEPT", "NO_CONN"),
              fwd(b_ack, 22, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=3, inpkts=4, inbytes=4 * size, handshakes=1),),
        (ServiceExpect(TCP80, 3, 4, 4 * size),),
        (conn("ESTABLISHED", T_ES, RS1, cport=46001), conn("SYN_RECV", T_SR - 2, RS1, cport=46002)),
        check_ms=22, tags=("table-full", "early-drop")))
    rows.append(Row(
        "early-drop-ties-older-first", "at equal expiry times early drop takes the entry created first",
        two, (fwd(a, 5, RS1), fwd(b, 5, RS1), fwd(c, 5, RS1), verdict(a_ack, 6, "ACCEPT", "NO_CONN"),
              fwd(b_ack, 7, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=3, inpkts=4, inbytes=4 * size, handshakes=1),),
        (ServiceExpect(TCP80, 3, 4, 4 * size),),
        (conn("ESTABLISHED", T_ES, RS1, cport=46001), conn("SYN_RECV", T_SR - 2, RS1, cport=46002)),
        check_ms=7, tags=("table-full", "early-drop")))
    rows.append(Row(
        "early-drop-spares-established", "an ESTABLISHED entry is never dropped, even when it expires first: the "
        "half-open one goes",
        two, (fwd(a, 0, RS1), fwd(a_ack, 1, RS1), fwd(b, 2, RS1), fwd(c, 3, RS1), verdict(b_ack, 4, "ACCEPT", "NO_CONN"),
              fwd(c_ack, 5, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=3, inpkts=5, inbytes=5 * size, handshakes=2),),
        (ServiceExpect(TCP80, 3, 5, 5 * size),),
        (conn("ESTABLISHED", T_ES - 4, RS1, cport=46000), conn("ESTABLISHED", T_ES, RS1, cport=46002)),
        check_ms=5, tags=("table-full", "early-drop")))
    a_rst = tcp(sport=46000, flags="R", seq=1001)
    rows.append(Row(
        "early-drop-closed-entry", "a finished entry (CLOSE after a RST) is droppable too, and it expires before a "
        "SYN_RECV one: it goes first",
        two, (fwd(a, 0, RS1), fwd(a_ack, 1, RS1), fwd(a_rst, 2, RS1), fwd(b, 3, RS1), fwd(c, 4, RS1),
              fwd(b_ack, 5, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=3, inpkts=6, inbytes=6 * size, handshakes=2),),
        (ServiceExpect(TCP80, 3, 6, 6 * size),),
        (conn("ESTABLISHED", T_ES, RS1, cport=46001), conn("SYN_RECV", T_SR - 1, RS1, cport=46002)),
        check_ms=5, tags=("table-full", "early-drop")))
    udp_full = Setup((ServiceSetup(UDP53, "rr", (DestSetup(RS1, port=53),)),), conn_max=1)
    q1, q2 = udp(sport=46000), udp(sport=46001)
    usize = ip_total_length(q1)
    rows.append(Row(
        "early-drop-not-udp", "UDP entries are never early-dropped (the director cannot tell a spoofed one)",
        udp_full, (fwd(q1, 0, RS1), verdict(q2, 1, "DROP", "TABLE_FULL")),
        (DestExpect(UDP53, RS1, port=53, inactive=1, conns=1, inpkts=1, inbytes=usize),),
        (ServiceExpect(UDP53, 1, 1, usize),),
        (conn("UDP", T_UDP - 1, RS1, cport=46000, svc=UDP53, dport=53),), check_ms=1, tags=("table-full", "early-drop")))
    return rows


def _deleted_dest_rows() -> list[Row]:
    rows = []
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    syn = tcp()
    ack = tcp(flags="A", seq=1001, ack=1)
    data = tcp(flags="PA", payload=b"d" * 20, seq=1001, ack=1)
    size, dsize = ip_total_length(syn), ip_total_length(data)
    established = (fwd(syn, 0, RS2), fwd(ack, 1, RS2))
    rows.append(Row(
        "deleted-dest-drops", "after its destination is deleted, an entry's packets are dropped and its timer is "
        "not restarted; the entry still counts in the deleted destination (not listed)",
        setup, established + (ConfigStep("del_dest", TCP80, DestSetup(RS2), 2), verdict(data, 5000, "DROP", "DEST_UNAVAILABLE"),
                              verdict(syn, 6000, "DROP", "DEST_UNAVAILABLE", "SYN on ESTABLISHED is no reuse")),
        (DestExpect(TCP80, RS1),), (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (conn("ESTABLISHED", T_ES + 1 - 6000, RS2),), check_ms=6000, tags=("deleted",)))
    rows.append(Row(
        "deleted-dest-revived", "re-adding the deleted destination revives it: the entry works again and the "
        "destination keeps its counts and stats",
        setup, established + (ConfigStep("del_dest", TCP80, DestSetup(RS2), 2), verdict(data, 5000, "DROP", "DEST_UNAVAILABLE"),
                              ConfigStep("add_dest", TCP80, DestSetup(RS2), 6000),
                              ConfigStep("set_fwd", TCP80, DestSetup(RS2), 6000), fwd(data, 7000, RS2)),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=3, inbytes=2 * size + dsize, handshakes=1),
         DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 3, 2 * size + dsize),), (conn("ESTABLISHED", T_ES, RS2),), check_ms=7000,
        tags=("deleted",)))
    rows.append(Row(
        "deleted-dest-new-client", "new connections after a deletion go to the remaining destination",
        setup, established + (ConfigStep("del_dest", TCP80, DestSetup(RS2), 2), fwd(tcp(sport=40001), 3, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 2, 3, 3 * size),),
        (conn("ESTABLISHED", T_ES - 2, RS2), conn("SYN_RECV", T_SR, RS1, cport=40001)), check_ms=3,
        tags=("deleted",)))
    rst = tcp(flags="R", seq=1001)
    rows.append(Row(
        "deleted-dest-reuse", "a new SYN on a CLOSE entry of a deleted destination expires it and is scheduled "
        "to a listed destination (reuse is checked before availability)",
        setup, established + (fwd(rst, 2, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 3), fwd(syn, 4, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 2, 4, 4 * size),),
        (conn("SYN_RECV", T_SR, RS1),), check_ms=4, tags=("deleted", "reuse")))
    rows.append(Row(
        "deleted-service", "after the service is deleted its entries' packets are dropped, new SYNs pass through",
        setup, established + (ConfigStep("del_service", TCP80, None, 2), verdict(data, 3, "DROP", "DEST_UNAVAILABLE"),
                              verdict(tcp(sport=40001), 4, "ACCEPT", "NO_SERVICE")),
        (), (), (conn("ESTABLISHED", T_ES - 3, RS2),), check_ms=4, tags=("deleted",)))
    return rows


def _bad_input_rows() -> list[Row]:
    s = _scapy()
    rows: list[Row] = []
    syn = tcp(payload=b"")
    syn_data = tcp(payload=b"0123456789")
    query = udp()

    rows.append(untouched("ipv6", "an IPv6 packet passes through",
                          bytes(s.IPv6(src="2001:db8::10", dst="2001:db8::1") / s.TCP(sport=40000, dport=80, flags="S")),
                          "ACCEPT", "NOT_IPV4", tags=("bad",)))
    rows.append(untouched("ipv6-short", "a 1-byte packet with version 6 passes through as IPv6",
                          b"\x60", "ACCEPT", "NOT_IPV4", tags=("bad",)))
    rows.append(untouched("empty", "an empty packet is malformed", b"", "DROP", "MALFORMED", tags=("bad",)))
    for version in (0, 5, 15):
        rows.append(untouched(f"version-{version}", f"IP version {version} is malformed",
                              _fix_ip_checksum(_set_byte(syn, 0, (version << 4) | 5)), "DROP", "MALFORMED",
                              tags=("bad",)))

    # Raw truncation at every offset inside the IPv4 + TCP / UDP headers (total length still says more).
    for n in range(0, 40):
        rows.append(untouched(f"trunc-tcp-{n:02d}", f"TCP SYN cut to {n} bytes", syn[:n], "DROP", "MALFORMED",
                              tags=("bad", "trunc")))
    for n in range(0, 28):
        rows.append(untouched(f"trunc-udp-{n:02d}", f"UDP datagram cut to {n} bytes", query[:n], "DROP", "MALFORMED",
                              tags=("bad", "trunc")))
    with_options = tcp(options=_router_alert())
    for n in range(20, 24):
        rows.append(untouched(f"trunc-ipopt-{n:02d}", f"IP header with options (IHL 6) cut to {n} bytes",
                              with_options[:n], "DROP", "MALFORMED", tags=("bad", "trunc")))

    # Transport header truncated with a consistent IP header (total length and checksum correct).
    tcp_header = s.raw(s.TCP(sport=40000, dport=80, flags="S", seq=1000, window=64240))
    for k in range(0, 20):
        packet = bytes(ip_header(proto=6) / s.Raw(tcp_header[:k]))
        rows.append(untouched(f"short-tcp-{k:02d}", f"TCP header of {k} bytes inside a consistent IP packet",
                              packet, "DROP", "MALFORMED", tags=("bad", "trunc")))
    udp_header = s.raw(s.UDP(sport=50000, dport=53, len=8))
    for k in range(0, 8):
        packet = bytes(ip_header(proto=17) / s.Raw(udp_header[:k]))
        rows.append(untouched(f"short-udp-{k}", f"UDP header of {k} bytes inside a consistent IP packet",
                              packet, "DROP", "MALFORMED", tags=("bad", "trunc")))
    tcp_with_options = s.raw(s.TCP(sport=40000, dport=80, flags="S", seq=1000, window=64240,
                                   options=[("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b"")]))
    assert len(tcp_with_options) == 32
    for k in range(20, 32):
        packet = bytes(ip_header(proto=6) / s.Raw(tcp_with_options[:k]))
        rows.append(untouched(f"short-tcpopt-{k}", f"TCP data offset 8 but only {k} bytes of TCP in the IP packet",
                              packet, "DROP", "MALFORMED", tags=("bad", "trunc")))

    def ip_field(packet: bytes, offset: int, value: int, fix: bool = True) -> bytes:
        changed = _set_byte(packet, offset, value)
        return _fix_ip_checksum(changed) if fix else changed

    ihl4 = _set_byte(syn, 0, 0x44)
    rows += [
        untouched("ihl-4", "IHL 4 (< 5) is malformed", ihl4, "DROP", "MALFORMED", tags=("bad",)),
        untouched("ihl-15", "IHL 15 (60 bytes) in a 40-byte packet is malformed", _set_byte(syn, 0, 0x4F), "DROP",
                  "MALFORMED", tags=("bad",)),
        untouched("ihl-6-no-options", "IHL 6 on a 40-byte packet: header fits, TCP then has 16 bytes -> malformed",
                  ip_field(syn, 0, 0x46), "DROP", "MALFORMED", tags=("bad",)),
        untouched("totlen-below-ihl", "total length 19 (< IHL*4) is malformed",
                  _fix_ip_checksum(syn[:2] + (19).to_bytes(2, "big") + syn[4:]), "DROP", "MALFORMED", tags=("bad",)),
        untouched("totlen-beyond-packet", "total length larger than the packet is malformed",
                  _fix_ip_checksum(syn[:2] + (len(syn) + 1).to_bytes(2, "big") + syn[4:]), "DROP", "MALFORMED",
                  tags=("bad",)),
        untouched("tcp-doff-4", "TCP data offset 4 is malformed", _set_byte(syn, 32, 0x40), "DROP", "MALFORMED",
                  tags=("bad",)),
        untouched("tcp-doff-0", "TCP data offset 0 is malformed", _set_byte(syn, 32, 0x00), "DROP", "MALFORMED",
                  tags=("bad",)),
        untouched("tcp-doff-beyond", "TCP data offset 15 beyond the IP payload is malformed",
                  _set_byte(syn_data, 32, 0xF0), "DROP", "MALFORMED", tags=("bad",)),
        untouched("bad-ip-csum", "a wrong IPv4 header checksum drops the packet",
                  _flip_checksum(syn), "DROP", "BAD_CSUM", tags=("bad",)),
        untouched("bad-ip-csum-options", "the checksum covers the IP options too",
                  _set_byte(with_options, 21, with_options[21] ^ 0x01), "DROP", "BAD_CSUM", tags=("bad",)),
        untouched("frag-first", "a first fragment (MF set, offset 0) is dropped",
                  bytes(ip_header(flags="MF", frag=0) / s.TCP(sport=40000, dport=80, flags="S")),
                  "DROP", "FRAGMENT", tags=("bad", "frag")),
        untouched("frag-middle", "a middle fragment (MF set, offset 185) is dropped",
                  bytes(ip_header(flags="MF", frag=185, proto=6) / s.Raw(b"m" * 64)), "DROP", "FRAGMENT",
                  tags=("bad", "frag")),
        untouched("frag-last", "a last fragment (MF clear, offset 185) is dropped",
                  bytes(ip_header(frag=185, proto=17) / s.Raw(b"l" * 3)), "DROP", "FRAGMENT", tags=("bad", "frag")),
        untouched("frag-icmp", "the fragment check comes before the protocol check",
                  bytes(ip_header(flags="MF") / s.ICMP() / s.Raw(b"p" * 16)), "DROP", "FRAGMENT",
                  tags=("bad", "frag")),
        untouched("frag-before-transport", "a fragment with a truncated TCP header is FRAGMENT, not MALFORMED",
                  bytes(ip_header(flags="MF", proto=6) / s.Raw(b"\x9c\x40")), "DROP", "FRAGMENT",
                  tags=("bad", "frag")),
        untouched("csum-before-frag", "a bad checksum on a fragment is BAD_CSUM (checksum first)",
                  _flip_checksum(bytes(ip_header(frag=185, proto=6) / s.Raw(b"x" * 8))), "DROP",
                  "BAD_CSUM", tags=("bad", "frag")),
        untouched("icmp-echo", "ICMP to the VIP passes through", bytes(ip_header() / s.ICMP() / s.Raw(b"ping")),
                  "ACCEPT", "NOT_LB_PROTO", tags=("bad",)),
        untouched("gre", "another protocol (GRE) passes through", bytes(ip_header(proto=47) / s.Raw(b"\0" * 4)),
                  "ACCEPT", "NOT_LB_PROTO", tags=("bad",)),
        untouched("ipproto-255-empty", "a protocol other than TCP/UDP/ICMP is not parsed further, even with 0 "
                  "payload bytes", bytes(ip_header(proto=255)), "ACCEPT", "NOT_LB_PROTO", tags=("bad",)),
    ]

    # Well-formed oddities that must be forwarded unchanged.
    setup = one_dest()

    def forwarded_row(row_id: str, description: str, packet: bytes, total: int) -> Row:
        return Row(row_id, description, setup, (fwd(packet, 0, RS1),),
                   (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=total), DestExpect(UDP53, RS1, 53)),
                   (ServiceExpect(TCP80, 1, 1, total), ServiceExpect(UDP53)),
                   (conn("SYN_RECV", T_SR, RS1),), tags=("dr", "odd"))

    rows.append(forwarded_row("ip-options", "a SYN with IP options (router alert) is forwarded unchanged",
                              with_options, ip_total_length(with_options)))
    many_options = tcp(options=[s.IPOption_NOP()] * 3 + [s.IPOption_RR(routers=["0.0.0.0"] * 8)])
    rows.append(forwarded_row("ip-options-long", "IP options filling a long header are forwarded unchanged",
                              many_options, ip_total_length(many_options)))
    rows.append(forwarded_row("padding", "bytes after the IP total length (link padding) are ignored: forwarded as "
                              "received, inbytes counts the total length only", syn + b"\0" * 6, len(syn)))
    rows.append(forwarded_row("df-set", "DF alone is not a fragment", tcp(flags="S", flags_ip="DF"), 40))
    with_tcp_options = tcp(tcp_options=[("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b"")])
    rows.append(forwarded_row("tcp-options", "TCP options are forwarded unchanged", with_tcp_options, 52))
    return rows


def icmp_error(quote: bytes, icmp_type: int = 3, code: int = 4, *, src: str = CLIENT1, dst: str = VIP,
               ttl: int = 61, **icmp: object) -> bytes:
    """An ICMP error from the client's side (src) to the VIP (dst) quoting `quote`."""
    s = _scapy()
    return bytes(ip_header(src=src, dst=dst, ttl=ttl) / s.ICMP(type=icmp_type, code=code, **icmp) / s.Raw(quote))


def reply_quote(length: int = 28, *, proto: str = "tcp", sport: int = 80, dport: int = 40000, **ip: object) -> bytes:
    """The start of a reply VIP:sport -> CLIENT1:dport as the client's side would quote it."""
    s = _scapy()
    fields = {"src": VIP, "dst": CLIENT1, "id": 7, "ttl": 55}
    fields.update(ip)
    l4 = s.TCP(sport=sport, dport=dport, flags="SA", seq=5000, ack=1001) if proto == "tcp" else s.UDP(sport=sport, dport=dport)
    return bytes(s.IP(**fields) / l4 / s.Raw(b"r" * 32))[:length]


def _icmp_rows() -> list[Row]:
    rows: list[Row] = []
    setup = one_dest()
    syn, ack = tcp(flags="S"), tcp(flags="A", seq=1001, ack=5001)
    size = ip_total_length(syn)
    flow = (fwd(syn, 0, RS1), fwd(ack, 10, RS1))

    def about_flow(row_id: str, description: str, packet: bytes, step: PacketStep, counted: bool,
                   row_setup: Setup = setup) -> Row:
        extra = ip_total_length(packet) if counted else 0
        return Row(row_id, description, row_setup, flow + (step,),
                   (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2 + counted, inbytes=2 * size + extra,
                               handshakes=1), DestExpect(UDP53, RS1, 53)),
                   (ServiceExpect(TCP80, 1, 2 + counted, 2 * size + extra), ServiceExpect(UDP53)),
                   (conn("ESTABLISHED", T_ES - 10, RS1),), check_ms=20, tags=("icmp",))

    def icmp_fwd(packet: bytes) -> PacketStep:
        return fwd(packet, 20, RS1, "ICMP error forwarded to the entry's real server, TTL - 1", reason="ICMP")

    frag_needed = icmp_error(reply_quote(), 3, 4, nexthopmtu=1400)
    rows.append(about_flow("icmp-frag-needed-dr", "an ICMP fragmentation-needed about a DR connection's reply goes "
                           "unchanged to its real server; state and timer untouched, in-stats counted",
                           frag_needed, icmp_fwd(frag_needed), True))
    for icmp_type, code, name in ((3, 1, "host-unreach"), (4, 0, "source-quench"), (11, 0, "time-exceeded"),
                                  (12, 0, "param-problem")):
        packet = icmp_error(reply_quote(60), icmp_type, code)
        rows.append(about_flow(f"icmp-{name}-dr", f"ICMP type {icmp_type} (an error) about a DR connection is "
                               "forwarded", packet, icmp_fwd(packet), True))
    with_options = icmp_error(reply_quote(32, options=_router_alert()))
    rows.append(about_flow("icmp-quote-ip-options", "the quoted header's IHL (6) locates the quoted ports",
                           with_options, icmp_fwd(with_options), True))
    first_fragment = icmp_error(reply_quote(28, flags="MF"))
    rows.append(about_flow("icmp-quote-first-fragment", "a quoted first fragment (MF, offset 0) has its ports",
                           first_fragment, icmp_fwd(first_fragment), True))

    not_examined = [
        ("icmp-redirect", "ICMP redirect (type 5) is not an error IPVS examines", icmp_error(reply_quote(), 5, 1)),
        ("icmp-echo-request", "an echo request passes through", icmp_error(reply_quote(), 8, 0)),
        ("icmp-quote-7-bytes", "a quote with only 7 transport bytes is not examined", icmp_error(reply_quote(27))),
        ("icmp-quote-short-ip", "a quote shorter than an IP header is not examined", icmp_error(reply_quote(19))),
        ("icmp-quote-later-fragment", "a quoted later fragment has no ports: not examined",
         icmp_error(reply_quote(28, frag=1))),
        ("icmp-quote-icmp", "a quoted ICMP packet is not examined", icmp_error(
            bytes(_scapy().IP(src=VIP, dst=CLIENT1) / _scapy().ICMP(type=0)))),
        ("icmp-quote-ipv6", "a quote that is not IPv4 is not examined", icmp_error(b"\x60" + reply_quote()[1:])),
        ("icmp-quote-other-port", "a quote of a flow without entry passes through",
         icmp_error(reply_quote(dport=40001))),
        ("icmp-quote-forward-direction", "a quote of the client's own packet (CIP -> VIP) matches no entry",
         icmp_error(reply_quote(src=CLIENT1, dst=VIP, sport=40000, dport=80))),
    ]
    for row_id, description, packet in not_examined:
        rows.append(about_flow(row_id, description, packet, verdict(packet, 20, "ACCEPT", "NOT_LB_PROTO"), False))

    udp_setup = one_dest()
    query = udp(sport=50000)
    udp_error = icmp_error(reply_quote(28, proto="udp", sport=53, dport=50000), 3, 3)
    qsize, esize = ip_total_length(query), ip_total_length(udp_error)
    rows.append(Row("icmp-udp-flow", "an ICMP port unreachable about a UDP flow's reply goes to its real server",
                    udp_setup, (fwd(query, 0, RS1), fwd(udp_error, 5, RS1, reason="ICMP")),
                    (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2,
                                                        inbytes=qsize + esize)),
                    (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 2, qsize + esize)),
                    (conn("UDP", T_UDP - 5, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=5, tags=("icmp",)))

    no_l2 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, l2=False),)),))
    rows.append(Row("icmp-no-l2", "an ICMP error about an entry whose destination has no forwarding state is dropped "
                    "(and counted)", no_l2, (verdict(syn, 0, "DROP", "L2_QUEUED"), verdict(frag_needed, 20, "DROP", "NO_L2")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=size + ip_total_length(frag_needed)),),
                    (ServiceExpect(TCP80, 1, 2, size + ip_total_length(frag_needed)),),
                    (conn("SYN_RECV", T_SR - 20, RS1),), check_ms=20, tags=("icmp", "l2")))
    two = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    rows.append(Row("icmp-deleted-dest", "an ICMP error about an entry of a deleted destination still follows the "
                    "entry (no availability check for ICMP) but counts nowhere (ip_vs_in_stats: AVAILABLE only)", two,
                    (fwd(syn, 0, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 1),
                     fwd(frag_needed, 20, RS2, reason="ICMP")),
                    (DestExpect(TCP80, RS1),), (ServiceExpect(TCP80, 1, 1, size),),
                    (conn("SYN_RECV", T_SR - 20, RS2),), check_ms=20, tags=("icmp", "deleted")))
    for k in range(0, 8):
        packet = bytes(ip_header(proto=1) / _scapy().Raw(bytes(_scapy().ICMP(type=3, code=3))[:k]))
        rows.append(untouched(f"icmp-short-{k}", f"ICMP with {k} bytes (< 8) is malformed", packet, "DROP",
                              "MALFORMED", tags=("bad", "icmp")))
    return rows


def _syn_retrans_rows() -> list[Row]:
    setup = one_dest()
    syn = tcp(flags="S", seq=1000)
    other_seq = tcp(flags="S", seq=777)
    ack = tcp(flags="A", seq=1001, ack=5001)
    size = ip_total_length(syn)
    steps = (fwd(syn, 0, RS1), fwd(syn, 1000, RS1, "retransmitted SYN: same sequence number"),
             fwd(syn, 3000, RS1, "again"), fwd(other_seq, 4000, RS1, "different sequence number: not counted"),
             fwd(ack, 5000, RS1), fwd(syn, 6000, RS1, "on ESTABLISHED: not counted"))
    return [Row("syn-retrans-handshake", "SYNs repeating the first SYN's sequence number while in SYN_RECV count "
                "syn_retrans; SYN_RECV -> ESTABLISHED counts a handshake", setup, steps,
                (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=6, inbytes=6 * size, syn_retrans=2, handshakes=1),
                 DestExpect(UDP53, RS1, 53)),
                (ServiceExpect(TCP80, 1, 6, 6 * size), ServiceExpect(UDP53)),
                (conn("ESTABLISHED", T_ES, RS1),), check_ms=6000, tags=("tcp-state", "signals"))]


def _port_zero_rows() -> list[Row]:
    """Port-zero services (ip_vs_service_find: the exact <protocol, VIP, port> first, then the
    VIP's port 0; ip_vs_sched_persist: one template <protocol, client, 0, VIP, 0> for every port,
    the connection goes to the real server on the client's port)."""
    rows: list[Row] = []
    p0 = (DestSetup(RS1, 0), DestSetup(RS2, 0))
    a, b = tcp(sport=47000, dport=80), tcp(sport=47001, dport=443)
    c = tcp(sport=47002, dport=8080, src=CLIENT2)
    size = ip_total_length(a)
    rows.append(Row(
        "port0-tcp-every-port", "a persistent TCP port-0 service takes every port of the VIP; one template per "
        "client covers all of them (80 and 443 of one client go to the same real server), another client gets "
        "its own", Setup((ServiceSetup(TCP0, "rr", p0, persistent=300),)),
        (fwd(a, 0, RS2), fwd(b, 1, RS2), fwd(c, 2, RS1)),
        (DestExpect(TCP0, RS2, 0, active=2, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(TCP0, RS1, 0, active=1, conns=1, inpkts=1, inbytes=size, persist=1)),
        (ServiceExpect(TCP0, 3, 3, 3 * size),),
        (conn("SYN_RECV", T_SR - 2, RS2, cport=47000, svc=(PROTO_TCP, VIP, 80), dport=80),
         conn("SYN_RECV", T_SR - 1, RS2, cport=47001, svc=(PROTO_TCP, VIP, 443), dport=443),
         conn("SYN_RECV", T_SR, RS1, cport=47002, caddr=CLIENT2, svc=(PROTO_TCP, VIP, 8080), dport=8080),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 0, RS2, 0, "NONE", 300_000 - 1),
         ConnExpect(PROTO_TCP, CLIENT2, 0, VIP, 0, RS1, 0, "NONE", 300_000)), check_ms=2, tags=("port0", "persist")))

    exact = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)), ServiceSetup(TCP0, "rr", (DestSetup(RS2, 0),),
                                                                               persistent=300)))
    d = tcp(sport=47003, dport=22)
    rows.append(Row(
        "port0-exact-service-first", "the exact service VIP:80 wins over the VIP's port-0 service; port 22, which "
        "has no exact service, goes to the port-0 service", exact, (fwd(a, 0, RS1), fwd(d, 1, RS2)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),
         DestExpect(TCP0, RS2, 0, active=1, conns=1, inpkts=1, inbytes=size, persist=1)),
        (ServiceExpect(TCP80, 1, 1, size), ServiceExpect(TCP0, 1, 1, size)),
        (conn("SYN_RECV", T_SR - 1, RS1, cport=47000),
         conn("SYN_RECV", T_SR, RS2, cport=47003, svc=(PROTO_TCP, VIP, 22), dport=22),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 0, RS2, 0, "NONE", 300_000)), check_ms=1, tags=("port0",)))

    u1, u2 = udp(sport=50000, dport=53), udp(sport=50001, dport=5353)
    usize = ip_total_length(u1)
    rows.append(Row(
        "port0-udp-every-port", "a persistent UDP port-0 service: datagrams to two ports of the VIP from one client "
        "go to one real server (a TCP packet to the VIP finds no service)",
        Setup((ServiceSetup(UDP0, "rr", p0, persistent=300),)),
        (fwd(u1, 0, RS2), fwd(u2, 1, RS2), verdict(tcp(sport=47009), 2, "ACCEPT", "NO_SERVICE")),
        (DestExpect(UDP0, RS2, 0, inactive=2, conns=2, inpkts=2, inbytes=2 * usize, persist=1),
         DestExpect(UDP0, RS1, 0)),
        (ServiceExpect(UDP0, 2, 2, 2 * usize),),
        (conn("UDP", T_UDP - 2, RS2, cport=50000, svc=(PROTO_UDP, VIP, 53), dport=53),
         conn("UDP", T_UDP - 1, RS2, cport=50001, svc=(PROTO_UDP, VIP, 5353), dport=5353),
         ConnExpect(PROTO_UDP, CLIENT1, 0, VIP, 0, RS2, 0, "NONE", 300_000 - 1)), check_ms=2, tags=("port0",)))

    rows.append(Row(
        "port0-not-persistent-unreachable", "a port-0 service that is not persistent (ipvsadm refuses it; the API "
        "does not) schedules nothing: ip_vs_schedule's \"port zero only supported in persistent services\", "
        "answered with ICMP port unreachable as ip_vs_leave does",
        Setup((ServiceSetup(TCP0, "rr", (DestSetup(RS1, 0),)),)), (answer(a, 0),),
        (DestExpect(TCP0, RS1, 0),), (ServiceExpect(TCP0),), (), tags=("port0",)))
    return rows


def _marked(step: PacketStep, mark: int) -> PacketStep:
    return PacketStep(step.packet, step.now_ms, step.verdict, step.reason, step.out, step.ifindex, step.l2hdr,
                      step.frame, step.note, mark)


def _fwmark_rows() -> list[Row]:
    """fwmark services (ip_vs_service_find: the packet's mark first, then <protocol, VIP, port>, then
    port 0; ip_vs_sched_persist: one template <IPPROTO_IP, client, 0, fwmark, 0> for every protocol,
    address and port the mark gathers; the real server is reached on the client's port)."""
    rows: list[Row] = []
    a = tcp(sport=47000, dport=80)
    b = tcp(sport=47001, dport=443, dst=VIP2)
    c = tcp(sport=47002, dport=443, dst=VIP2, src=CLIENT2)
    size = ip_total_length(a)
    rows.append(Row(
        "fwm-two-vips-one-service", "a persistent fwmark service gathers two VIPs and ports (the operator's MARK "
        "rules): one template per client covers them all, the connection goes to the port asked for",
        Setup((ServiceSetup(FWM1, "rr", (DestSetup(RS1, 0), DestSetup(RS2, 0)), persistent=300),)),
        (_marked(fwd(a, 0, RS2), 1), _marked(fwd(b, 1, RS2), 1), _marked(fwd(c, 2, RS1), 1)),
        (DestExpect(FWM1, RS2, 0, active=2, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(FWM1, RS1, 0, active=1, conns=1, inpkts=1, inbytes=size, persist=1)),
        (ServiceExpect(FWM1, 3, 3, 3 * size),),
        (conn("SYN_RECV", T_SR - 2, RS2, cport=47000, svc=(PROTO_TCP, VIP, 80), dport=80),
         conn("SYN_RECV", T_SR - 1, RS2, cport=47001, svc=(PROTO_TCP, VIP2, 443), dport=443),
         conn("SYN_RECV", T_SR, RS1, cport=47002, caddr=CLIENT2, svc=(PROTO_TCP, VIP2, 443), dport=443),
         ConnExpect(0, CLIENT1, 0, "0.0.0.1", 0, RS2, 0, "NONE", 300_000 - 1),
         ConnExpect(0, CLIENT2, 0, "0.0.0.1", 0, RS1, 0, "NONE", 300_000)), check_ms=2, tags=("fwmark", "persist")))

    both = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)), ServiceSetup(FWM1, "rr", (DestSetup(RS2),))))
    d, e = tcp(sport=47003, dport=80), tcp(sport=47004, dport=80)
    u = udp(sport=50000, dport=53)
    rows.append(Row(
        "fwm-mark-first", "the fwmark service of the packet's mark is looked up before VIP:80; an unmarked packet "
        "and one with a mark no service has go to VIP:80; a marked UDP datagram goes to the fwmark service too "
        "(any protocol); the real server's own port is used (non-persistent)",
        both, (_marked(fwd(a, 0, RS2), 1), fwd(d, 1, RS1), _marked(fwd(e, 2, RS1), 2), _marked(fwd(u, 3, RS2), 1)),
        (DestExpect(TCP80, RS1, active=2, conns=2, inpkts=2, inbytes=2 * size),
         DestExpect(FWM1, RS2, 80, active=1, inactive=1, conns=2, inpkts=2, inbytes=size + ip_total_length(u))),
        (ServiceExpect(TCP80, 2, 2, 2 * size), ServiceExpect(FWM1, 2, 2, size + ip_total_length(u))),
        (conn("SYN_RECV", T_SR - 3, RS2, cport=47000), conn("SYN_RECV", T_SR - 2, RS1, cport=47003),
         conn("SYN_RECV", T_SR - 1, RS1, cport=47004),
         conn("UDP", T_UDP, RS2, cport=50000, svc=(PROTO_UDP, VIP, 53), dport=80)), check_ms=3, tags=("fwmark",)))
    return rows


def _persistence_rows() -> list[Row]:
    rows: list[Row] = []
    net24 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300,
                                netmask="255.255.255.0"),))
    a, b, c = tcp(sport=47000), tcp(sport=47001), tcp(sport=47002, src=CLIENT2)
    size = ip_total_length(a)
    template24 = ConnExpect(PROTO_TCP, "192.0.2.0", 0, VIP, 80, RS2, 80, "NONE", 300_000)
    rows.append(Row(
        "persist-client-network", "a persistent service (/24) sends every client of the network to the destination "
        "its template names; the template's timer restarts with each new connection; rr does not move",
        net24, (fwd(a, 0, RS2), fwd(b, 1000, RS2), fwd(c, 2000, RS2)),
        (DestExpect(TCP80, RS2, active=3, conns=3, inpkts=3, inbytes=3 * size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 3, 3, 3 * size),),
        (conn("SYN_RECV", T_SR - 2000, RS2, cport=47000), conn("SYN_RECV", T_SR - 1000, RS2, cport=47001),
         conn("SYN_RECV", T_SR, RS2, cport=47002, caddr=CLIENT2), template24), check_ms=2000, tags=("persist",)))

    net32 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300),))
    rows.append(Row(
        "persist-per-address", "with netmask /32 another client gets its own template (and rr moves on)",
        net32, (fwd(a, 0, RS2), fwd(b, 1, RS2), fwd(c, 2, RS1)),
        (DestExpect(TCP80, RS2, active=2, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size, persist=1)),
        (ServiceExpect(TCP80, 3, 3, 3 * size),),
        (conn("SYN_RECV", T_SR - 2, RS2, cport=47000), conn("SYN_RECV", T_SR - 1, RS2, cport=47001),
         conn("SYN_RECV", T_SR, RS1, cport=47002, caddr=CLIENT2),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 1),
         ConnExpect(PROTO_TCP, CLIENT2, 0, VIP, 80, RS1, 80, "NONE", 300_000)), check_ms=2, tags=("persist",)))

    weight0 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300),))
    rows.append(Row(
        "persist-weight0-still-named", "a template keeps naming its destination after its weight drops to 0 "
        "(expire_quiescent_template=0)",
        weight0, (fwd(a, 0, RS2), ConfigStep("edit_dest", TCP80, DestSetup(RS2, weight=0), 1), fwd(b, 2, RS2)),
        (DestExpect(TCP80, RS2, active=2, conns=2, inpkts=2, inbytes=2 * size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (conn("SYN_RECV", T_SR - 2, RS2, cport=47000), conn("SYN_RECV", T_SR, RS2, cport=47001),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000)), check_ms=2, tags=("persist",)))

    rows.append(Row(
        "persist-dest-deleted", "a template whose destination was deleted stops matching (kept while it controls a "
        "connection, timer not restarted); the next connection is scheduled afresh with a new template",
        net32, (fwd(a, 0, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 1), fwd(b, 2, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size, persist=1),),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (conn("SYN_RECV", T_SR - 2, RS2, cport=47000), conn("SYN_RECV", T_SR, RS1, cport=47001),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 2),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS1, 80, "NONE", 300_000)), check_ms=2, tags=("persist", "deleted")))

    full = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300),), conn_max=2)
    a_ack = tcp(sport=47000, flags="A", seq=1001, ack=1, src=CLIENT1)
    rows.append(Row(
        "persist-table-full", "templates take table slots: with conn_max 2 the template and the first (established) "
        "connection fill it; the next connection and a new template are refused",
        full, (fwd(a, 0, RS2), fwd(a_ack, 1, RS2),
               verdict(b, 2, "DROP", "TABLE_FULL", "template found, no slot for the connection"),
               verdict(c, 3, "DROP", "TABLE_FULL", "no slot for the template")),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=2, inbytes=2 * size, persist=1, handshakes=1),
         DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (conn("ESTABLISHED", T_ES - 2, RS2, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "ASSURED", 300_000 - 1)), check_ms=3,
        tags=("persist", "table-full")))
    rows.append(Row(
        "persist-early-drop", "templates are never early-dropped, their half-open connections are: b (template "
        "found) takes a's slot; c needs a template, which takes b's slot, and then finds no room for itself",
        full, (fwd(a, 0, RS2), fwd(b, 1, RS2),
               verdict(c, 2, "DROP", "TABLE_FULL", "the new template evicted b; no droppable entry is left")),
        (DestExpect(TCP80, RS2, active=0, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(TCP80, RS1, persist=1)),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 1),
         ConnExpect(PROTO_TCP, CLIENT2, 0, VIP, 80, RS1, 80, "NONE", 300_000)), check_ms=2,
        tags=("persist", "table-full", "early-drop")))

    short = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),), persistent=10),))
    rows.append(Row(
        "persist-template-rearmed", "a template whose time is up while its connection lives is re-armed for another "
        "period (at its expiry time), then released after the connection; its connection was established, so it "
        "shows ASSURED",
        short, (fwd(a, 0, RS1), fwd(tcp(sport=47000, flags="A", seq=1001, ack=1), 0, RS1),
                fwd(tcp(sport=47000, flags="R", seq=1001), 25_000, RS1)),
        (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=3, inbytes=3 * size, persist=1, handshakes=1),),
        (ServiceExpect(TCP80, 1, 3, 3 * size),),
        (conn("CLOSE", T_CL, RS1, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS1, 80, "ASSURED", 30_000 - 25_000)), check_ms=25_000,
        tags=("persist", "expiry")))

    # A template's state in ipvsadm -Lnc: NONE until one of its connections is established (TCP:
    # set_tcp_state -> ip_vs_control_assure_ct on ESTABLISHED) or gets a reply (UDP: udp_state_transition
    # in the OUTPUT direction), ASSURED from then on, whatever its connections do next.
    fin = tcp(sport=47000, flags="FA", seq=1001, ack=1)
    ack = tcp(sport=47000, flags="A", seq=1001, ack=1)
    rows.append(Row(
        "persist-template-none", "a template whose connection is still in its handshake shows NONE",
        net32, (fwd(a, 0, RS2),),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=1, inbytes=size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 1, size),),
        (conn("SYN_RECV", T_SR, RS2, cport=47000), ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000)),
        tags=("persist", "template-state")))
    rows.append(Row(
        "persist-template-assured", "a template whose connection reached ESTABLISHED shows ASSURED, and stays so "
        "after the connection closes",
        net32, (fwd(a, 0, RS2), fwd(ack, 1, RS2), fwd(fin, 2, RS2)),
        (DestExpect(TCP80, RS2, inactive=1, conns=1, inpkts=3, inbytes=3 * size, persist=1, handshakes=1),
         DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 3, 3 * size),),
        (conn("FIN_WAIT", T_FW, RS2, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "ASSURED", 300_000 - 2)), check_ms=2,
        tags=("persist", "template-state")))
    rows.append(Row(
        "persist-template-closed-in-handshake", "a connection that closes before ESTABLISHED (SYN_RECV -> TIME_WAIT) "
        "leaves its template NONE",
        net32, (fwd(a, 0, RS2), fwd(fin, 1, RS2)),
        (DestExpect(TCP80, RS2, inactive=1, conns=1, inpkts=2, inbytes=2 * size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (conn("TIME_WAIT", T_TW, RS2, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 1)), check_ms=1,
        tags=("persist", "template-state")))
    udp_net32 = Setup((ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53),), persistent=300),))
    query = udp(sport=47100)
    qsize = ip_total_length(query)
    rows.append(Row(
        "persist-template-udp-dr", "a DR director never sees the replies: a UDP service's template stays NONE",
        udp_net32, (fwd(query, 0, RS1), fwd(query, 5, RS1)),
        (DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2, inbytes=2 * qsize, persist=1),),
        (ServiceExpect(UDP53, 1, 2, 2 * qsize),),
        (conn("UDP", T_UDP, RS1, cport=47100, svc=UDP53, dport=53),
         ConnExpect(PROTO_UDP, CLIENT1, 0, VIP, 53, RS1, 53, "NONE", 300_000 - 5)), check_ms=5,
        tags=("persist", "template-state", "udp")))
    return rows


def _timeout_rows() -> list[Row]:
    setup = Setup(one_dest().services, timeouts=(100, 7, 30))
    syn, ack = tcp(), tcp(flags="A", seq=1001, ack=1)
    query = udp()
    size, qsize = ip_total_length(syn), ip_total_length(query)
    return [Row(
        "timeouts-set", "set_timeouts(100, 7, 30): ESTABLISHED, FIN_WAIT and UDP entries use them; others keep theirs",
        setup, (fwd(syn, 0, RS1), fwd(ack, 10, RS1), fwd(query, 20, RS1), fwd(tcp(sport=40001), 30, RS1),
                fwd(tcp(sport=40001, flags="A", seq=1001, ack=1), 40, RS1),
                fwd(tcp(sport=40001, flags="FA", seq=1001, ack=1), 50, RS1)),
        (DestExpect(TCP80, RS1, active=1, inactive=1, conns=2, inpkts=5, inbytes=5 * size, handshakes=2),
         DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=1, inbytes=qsize)),
        (ServiceExpect(TCP80, 2, 5, 5 * size), ServiceExpect(UDP53, 1, 1, qsize)),
        (conn("ESTABLISHED", 100_000 - 40, RS1), conn("FIN_WAIT", 7_000, RS1, cport=40001),
         conn("UDP", 30_000 - 30, RS1, cport=50000, svc=UDP53, dport=53)), check_ms=50, tags=("timeouts",))]


# ---- reference computations for the other forwarding methods (independent of the engines) -------------

_M64 = (1 << 64) - 1


def _siphash24(key: tuple[int, int], msg: bytes) -> int:
    """SipHash-2-4 (Aumasson & Bernstein), written from the paper for the table: 64-bit result."""
    v = [key[0] ^ 0x736F6D6570736575, key[1] ^ 0x646F72616E646F6D, key[0] ^ 0x6C7967656E657261,
         key[1] ^ 0x7465646279746573]

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & _M64

    def sipround() -> None:
        v[0] = (v[0] + v[1]) & _M64; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)  # noqa: E702
        v[2] = (v[2] + v[3]) & _M64; v[3] = rotl(v[3], 16) ^ v[2]  # noqa: E702
        v[0] = (v[0] + v[3]) & _M64; v[3] = rotl(v[3], 21) ^ v[0]  # noqa: E702
        v[2] = (v[2] + v[1]) & _M64; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)  # noqa: E702

    padded = msg + b"\0" * (7 - len(msg) % 8) + bytes([len(msg) & 0xFF])
    for i in range(0, len(padded), 8):
        m = int.from_bytes(padded[i:i + 8], "little")
        v[3] ^= m
        sipround()
        sipround()
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(4):
        sipround()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def sp_master_key(hash_seed: int = HASH_SEED) -> tuple[int, int]:
    """The cookie master key an engine made with this hash seed uses (native/src/conn.c seeds)."""
    seed0 = hash_seed & _M64
    seed1 = (seed0 * 0xD6E8FEB86659FD93 + 1) & _M64
    return seed0 ^ 0x5BD1E9955BD1E995, seed1 ^ 0x27D4EB2F165667C5


def syn_cookie(src: str, dst: str, sport: int, dport: int, client_isn: int, now_ms: int, data: int,
               hash_seed: int = HASH_SEED) -> int:
    """The cookie of a SYN (native/src/synproxy.c layout): H1 + isn + (minute << 24) + ((H2 + data) & 0xffffff)."""
    import socket
    import struct

    master = sp_master_key(hash_seed)
    minute = now_ms // 60000

    def h(which: int) -> int:
        k0 = _siphash24(master, struct.pack("<II", minute // 64, which))
        t = (socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
             + struct.pack("<I", minute if which else 0))
        return _siphash24((k0, master[1] ^ k0), t) & 0xFFFFFFFF

    return (h(0) + client_isn + ((minute << 24) & 0xFFFFFFFF) + ((h(1) + data) & 0xFFFFFF)) & 0xFFFFFFFF


def local_port(laddr: str, n: int = 0, lmin: int = LPORT_MIN, lmax: int = LPORT_MAX, hash_seed: int = HASH_SEED) -> int:
    """The n-th port handed out from a fresh local address (no collisions): its cursor starts at
    lmin + ((addr * 0x9E3779B1 + seed mod 2**32) mod 2**32) mod (lmax - lmin + 1) and walks up, wrapping."""
    import ipaddress

    span = lmax - lmin + 1
    first = ((int(ipaddress.IPv4Address(laddr)) * 0x9E3779B1 + (hash_seed & 0xFFFFFFFF)) & 0xFFFFFFFF) % span
    return lmin + (first + n) % span


def nat(packet: bytes, src: str, sport: int, dst: str, dport: int, *, toa: tuple[int, str] | None = None,
        mss: int | None = None, seq_delta: int = 0, ack_delta: int = 0, sack_delta: int = 0) -> bytes:
    """`packet` as a FULLNAT director sends it on: TTL - 1, new addresses and ports, checksums recomputed
    (a UDP checksum of 0 stays 0); optionally with the TOA option appended, the MSS option set, or
    sequence numbers / SACK edges shifted (SYN-proxy)."""
    s = _scapy()
    p = s.IP(packet)
    p.ttl -= 1
    p.src, p.dst = src, dst
    del p.chksum
    l4 = p.payload
    l4.sport, l4.dport = sport, dport
    if isinstance(l4, s.TCP):
        del l4.chksum
        l4.seq = (l4.seq + seq_delta) & 0xFFFFFFFF
        if l4.flags.A:
            l4.ack = (l4.ack + ack_delta) & 0xFFFFFFFF
        opts = []
        for name, value in l4.options:
            if name == "MSS" and mss is not None:
                value = mss
            if name == "SAck" and sack_delta:
                value = tuple((e + sack_delta) & 0xFFFFFFFF for e in value)
            opts.append((name, value))
        if toa is not None:
            import socket

            opts.append((254, toa[0].to_bytes(2, "big") + socket.inet_aton(toa[1])))
            del p.len
            del l4.dataofs
        l4.options = opts
    elif l4.chksum:
        del l4.chksum
    return bytes(p)


def ipip(inner: bytes, src: str = TUN_SRC, dst: str = RS1) -> bytes:
    """The IPIP packet a tunnelling director sends: outer TOS = inner, ID = 0 with DF else the inner ID,
    DF = inner DF, TTL 64, protocol 4."""
    s = _scapy()
    i = s.IP(inner)
    df = bool(i.flags.DF)
    outer = s.IP(src=src, dst=dst, tos=i.tos, id=0 if df else i.id, flags="DF" if df else 0, ttl=64, proto=4)
    return bytes(outer / s.Raw(ttl_dec(inner)))  # the inner TTL decremented before encapsulation


def director_icmp(packet: bytes, code: int, mtu: int = 0) -> bytes:
    """An ICMP 3/code the director originates about `packet` (VIP -> client, quoting it: icmp_quote).
    Fragmentation needed (code 4) quotes the packet with its TTL already decremented: the kernel's
    __ip_vs_get_out_rt runs decrement_ttl (ip_decrease_ttl writes the skb) before
    ensure_mtu_is_adequate's icmp_send (net/netfilter/ipvs/ip_vs_xmit.c)."""
    s = _scapy()
    original = s.IP(packet)
    quote = icmp_quote(ttl_dec(packet) if code == 4 else packet)
    answer = s.IP(src=original.dst, dst=original.src, tos=icmp_tos(packet), id=0, flags=0, frag=0, ttl=64,
                  proto=1) / s.ICMP(
        type=3, code=code, nexthopmtu=mtu) / s.Raw(quote)
    return bytes(answer)


def tcp_segment(src: str, sport: int, dst: str, dport: int, flags: str, seq: int, ack: int, window: int,
                options: list | None = None, payload: bytes = b"") -> bytes:
    """A segment the director builds itself (SYN-proxy): ID 0, DF, TTL 64."""
    s = _scapy()
    p = s.IP(src=src, dst=dst, id=0, flags="DF", ttl=64) / s.TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                                                                   ack=ack, window=window, options=options or [])
    if payload:
        p = p / s.Raw(payload)
    return bytes(p)


def xmit(packet: bytes, out: bytes, now_ms: int, dest: str, reason: str = "FORWARDED", note: str = "",
         frag_mtu: int = 0) -> PacketStep:
    """XMIT_L2 with new bytes `out` framed for `dest` (as fragments of frag_mtu bytes when not 0)."""
    frame = expected_frame(dest, out)
    return PacketStep(packet, now_ms, "XMIT_L2", reason, out=out, ifindex=IFINDEX, l2hdr=frame[:14], frame=frame,
                      note=note or f"sent to {dest}", frag_mtu=frag_mtu)


def answered(packet: bytes, out: bytes, now_ms: int, reason: str = "FORWARDED", note: str = "") -> PacketStep:
    return PacketStep(packet, now_ms, "ANSWER", reason, out=out, note=note)


def timer_frame(out: bytes, dest: str) -> tuple[str, str, bytes, int, bytes]:
    return ("XMIT_L2", "FORWARDED", out, IFINDEX, expected_frame(dest, out)[:14])


def _with_ttl(packet: bytes, ttl: int) -> bytes:
    s = _scapy()
    p = s.IP(packet)
    p.ttl = ttl
    del p.chksum
    return bytes(p)


def _fix_icmp_checksum(packet: bytes, good: bool = True) -> bytes:
    """Recompute (or deliberately break) the ICMP checksum of an ICMP packet."""
    s = _scapy()
    p = s.IP(packet)
    del p[s.ICMP].chksum
    out = bytes(p)
    if not good:
        ihl = (out[0] & 0x0F) * 4
        out = out[: ihl + 2] + bytes([out[ihl + 2] ^ 0x01]) + out[ihl + 3:]
    return out


# ---- FULLNAT -------------------------------------------------------------------------------------------


def _fnat_setup(*, toa: bool = False, laddrs: tuple[str, ...] = (LIP1,), l2: bool = True, mtu: int = 1500,
                lport_min: int = LPORT_MIN, lport_max: int = LPORT_MAX, dests: tuple[str, ...] = (RS1,)) -> Setup:
    return Setup((ServiceSetup(TCP80, "rr", tuple(DestSetup(d, fwd="fullnat", l2=l2, mtu=mtu) for d in dests),
                               toa=toa, laddrs=laddrs),
                  ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd="fullnat"),), laddrs=laddrs)),
                 lport_min=lport_min, lport_max=lport_max)


def _fnat_rows() -> list[Row]:
    rows: list[Row] = []
    lp = local_port(LIP1)
    syn = tcp(flags="S", tcp_options=[("MSS", 1460), ("SAckOK", b"")])
    synack = tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="SA", seq=5000, ack=1001,
                 tcp_options=[("MSS", 1460), ("SAckOK", b"")])
    ack = tcp(flags="A", seq=1001, ack=5001)
    data = tcp(flags="PA", seq=1001, ack=5001, payload=b"GET / HTTP/1.0\r\n\r\n")
    reply = tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="PA", seq=5001, ack=1019, payload=b"HTTP/1.0 200 OK\r\n")
    rs_fin = tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="FA", seq=5018, ack=1019)
    n = {k: ip_total_length(v) for k, v in (("syn", syn), ("synack", synack), ("ack", ack), ("data", data),
                                            ("reply", reply), ("rs_fin", rs_fin))}
    to_rs = {k: nat(v, LIP1, lp, RS1, 80) for k, v in (("syn", syn), ("ack", ack), ("data", data))}
    to_client = {k: nat(v, VIP, 80, CLIENT1, 40000) for k, v in (("synack", synack), ("reply", reply),
                                                                  ("rs_fin", rs_fin))}
    setup = _fnat_setup()
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)

    def flow_row(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
                 ins: tuple[str, ...], outs: tuple[str, ...], tags: tuple[str, ...] = ()) -> Row:
        inb, outb = sum(n[k] for k in ins), sum(n[k] for k in outs)
        last = steps[-1].now_ms
        active = active_in(state)
        return Row(row_id, description, setup, steps,
                   (DestExpect(TCP80, RS1, active=active, inactive=1 - active, conns=1, inpkts=len(ins), inbytes=inb,
                               handshakes=int("ack" in ins), outpkts=len(outs), outbytes=outb), udp_dest),
                   (ServiceExpect(TCP80, 1, len(ins), inb, len(outs), outb), udp_svc),
                   (conn(state, timeout, RS1, laddr=LIP1, lport=lp),), check_ms=last, tags=("fnat",) + tags,
                   laddrs=((TCP80, LIP1, 1), (UDP53, LIP1, 0)))

    rows.append(flow_row(
        "fnat-in-syn", "FULLNAT IN: the SYN leaves as LIP:lport -> RIP:rport (TTL - 1, checksums updated); the "
        "entry uses the INPUT table (NONE -> SYN_RECV) and its local port comes from the address's seeded cursor",
        (xmit(syn, to_rs["syn"], 0, RS1),), "SYN_RECV", T_SR, ("syn",), ()))
    rows.append(flow_row(
        "fnat-out-synack", "FULLNAT OUT: the real server's SYN-ACK to LIP:lport goes back as VIP:vport -> CIP:cport "
        "through the kernel (ANSWER); OUTPUT syn keeps SYN_RECV; out-stats count it",
        (xmit(syn, to_rs["syn"], 0, RS1), answered(synack, to_client["synack"], 5)), "SYN_RECV", T_SR,
        ("syn",), ("synack",)))
    rows.append(flow_row(
        "fnat-flow", "FULLNAT both ways: ACK (ESTABLISHED), data in, data out; the real server's FIN moves "
        "ESTABLISHED to FIN_WAIT (OUTPUT table)",
        (xmit(syn, to_rs["syn"], 0, RS1), answered(synack, to_client["synack"], 5), xmit(ack, to_rs["ack"], 10, RS1),
         xmit(data, to_rs["data"], 20, RS1), answered(reply, to_client["reply"], 30),
         answered(rs_fin, to_client["rs_fin"], 40)), "FIN_WAIT", T_FW,
        ("syn", "ack", "data"), ("synack", "reply", "rs_fin")))

    # TOA: the client's first ACK without SYN/RST carries option 254; the server's SYN MSS is lowered by 8.
    toa_setup = _fnat_setup(toa=True)
    ack2 = tcp(flags="A", seq=1019, ack=5018)
    toa_ack = nat(ack, LIP1, lp, RS1, 80, toa=(40000, CLIENT1))
    big_opts = tcp(flags="A", seq=1001, ack=5001, tcp_options=[("NOP", None)] * 40)  # data offset 15: no room
    row_steps = (xmit(syn, to_rs["syn"], 0, RS1),
                 answered(synack, nat(synack, VIP, 80, CLIENT1, 40000, mss=1452), 5, note="MSS 1460 -> 1452"),
                 xmit(ack, toa_ack, 10, RS1, note="TOA appended"),
                 xmit(data, to_rs["data"], 20, RS1, note="only once"))
    size_toa = n["syn"] + n["ack"] + n["data"]
    rows.append(Row(
        "fnat-toa", "TOA: the client's first ACK (no SYN/RST) gets option 254 (client port and address) after its "
        "options, data offset + 2, total length + 8; later segments go without; the server's SYN-ACK MSS is lowered "
        "by 8", toa_setup, row_steps,
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=size_toa, handshakes=1, outpkts=1,
                    outbytes=n["synack"]), udp_dest),
        (ServiceExpect(TCP80, 1, 3, size_toa, 1, n["synack"]), udp_svc),
        (conn("ESTABLISHED", T_ES, RS1, laddr=LIP1, lport=lp),), check_ms=20, tags=("fnat", "toa")))
    unresolved, resolved = DestSetup(RS1, fwd="fullnat", l2=False), DestSetup(RS1, fwd="fullnat")
    rows.append(Row(
        "fnat-toa-held", "TOA on a held segment: the client's first ACK, held while the real server's MAC is "
        "re-resolved, leaves from the timers with option 254 as it would have unheld; the next goes without",
        toa_setup, row_steps[:2] + (
            ConfigStep("set_fwd", TCP80, unresolved, 6), verdict(ack, 10, "DROP", "L2_QUEUED"),
            ConfigStep("set_fwd", TCP80, resolved, 11),
            TimerStep(11, (("XMIT_L2", "FORWARDED", toa_ack, IFINDEX, expected_frame(RS1, toa_ack)[:14]),)),
            row_steps[3]),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=size_toa, handshakes=1, outpkts=1,
                    outbytes=n["synack"]), udp_dest),
        (ServiceExpect(TCP80, 1, 3, size_toa, 1, n["synack"]), udp_svc),
        (conn("ESTABLISHED", T_ES, RS1, laddr=LIP1, lport=lp),), check_ms=20, tags=("fnat", "toa", "held")))
    rows.append(Row(
        "fnat-toa-no-room", "TOA: a segment whose TCP header is already 60 bytes goes without it (R_TOA_NO_ROOM); "
        "the next ACK gets it", toa_setup,
        (xmit(syn, to_rs["syn"], 0, RS1),
         xmit(big_opts, nat(big_opts, LIP1, lp, RS1, 80), 10, RS1, "TOA_NO_ROOM"),
         xmit(ack2, nat(ack2, LIP1, lp, RS1, 80, toa=(40000, CLIENT1)), 20, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=n["syn"] + ip_total_length(big_opts)
                    + ip_total_length(ack2), handshakes=1), udp_dest),
        (ServiceExpect(TCP80, 1, 3, n["syn"] + ip_total_length(big_opts) + ip_total_length(ack2)), udp_svc),
        (conn("ESTABLISHED", T_ES, RS1, laddr=LIP1, lport=lp),), check_ms=20, tags=("fnat", "toa")))
    mtu_setup = _fnat_setup(toa=True, mtu=100)
    full = tcp(flags="PA", seq=1001, ack=5001, payload=b"x" * 60)  # 100 bytes: + 8 > MTU 100
    rows.append(Row(
        "fnat-toa-mtu", "TOA: a segment that would exceed the path MTU with the option goes without it "
        "(R_TOA_NO_ROOM)", mtu_setup,
        (xmit(syn, to_rs["syn"], 0, RS1), xmit(full, nat(full, LIP1, lp, RS1, 80), 10, RS1, "TOA_NO_ROOM")),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=n["syn"] + 100, handshakes=1), udp_dest),
        (ServiceExpect(TCP80, 1, 2, n["syn"] + 100), udp_svc),
        (conn("ESTABLISHED", T_ES, RS1, laddr=LIP1, lport=lp),), check_ms=10, tags=("fnat", "toa")))

    # UDP: checksum updated, a zero checksum stays zero.
    ulp = local_port(LIP1)
    query = udp(sport=50000)
    nocsum = bytes(_scapy().IP(query))
    nocsum = nocsum[:26] + b"\0\0" + nocsum[28:]
    answer_udp = udp(sport=53, dport=ulp, src=RS1, dst=LIP1, payload=b"answer-01")
    qn, an = ip_total_length(query), ip_total_length(answer_udp)
    rows.append(Row(
        "fnat-udp", "FULLNAT UDP both ways (UDP entries: no states); a datagram without checksum (0) keeps 0",
        setup, (xmit(query, nat(query, LIP1, ulp, RS1, 53), 0, RS1),
                answered(answer_udp, nat(answer_udp, VIP, 53, CLIENT1, 50000), 5),
                xmit(nocsum, nat(nocsum, LIP1, ulp, RS1, 53), 6, RS1, note="checksum 0 stays 0")),
        (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2, inbytes=2 * qn, outpkts=1,
                                            outbytes=an)),
        (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 2, 2 * qn, 1, an)),
        (conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53, laddr=LIP1, lport=ulp),), check_ms=6,
        tags=("fnat", "udp"), laddrs=((TCP80, LIP1, 0), (UDP53, LIP1, 1))))

    # FULLNAT under a persistent port-zero service, destination without a port: the connection reaches the
    # real server on the client's port (443, 8443) from the local address's next ports; the replies from
    # RIP:443 / RIP:8443 to LIP:lport are found by that reply tuple.
    p0_setup = Setup((ServiceSetup(TCP0, "rr", (DestSetup(RS1, 0, fwd="fullnat"),), laddrs=(LIP1,), persistent=300),),
                     lport_min=LPORT_MIN, lport_max=LPORT_MAX)
    s443, s8443 = tcp(flags="S", sport=47000, dport=443), tcp(flags="S", sport=47001, dport=8443)
    a443 = tcp(sport=443, dport=lp, src=RS1, dst=LIP1, flags="SA", seq=5000, ack=1001)
    a8443 = tcp(sport=8443, dport=lp + 1, src=RS1, dst=LIP1, flags="SA", seq=6000, ack=1001)
    p0_in, p0_out = 2 * ip_total_length(s443), ip_total_length(a443) + ip_total_length(a8443)
    rows.append(Row(
        "fnat-port0-client-port", "FULLNAT under a persistent TCP port-0 service, destination without a port: "
        "LIP:lport -> RIP:443 and LIP:lport+1 -> RIP:8443 (the client's ports; one template), the real server's "
        "SYN-ACKs from RIP:443 / RIP:8443 go back as VIP:443 / VIP:8443 -> CIP", p0_setup,
        (xmit(s443, nat(s443, LIP1, lp, RS1, 443), 0, RS1), answered(a443, nat(a443, VIP, 443, CLIENT1, 47000), 1),
         xmit(s8443, nat(s8443, LIP1, lp + 1, RS1, 8443), 2, RS1),
         answered(a8443, nat(a8443, VIP, 8443, CLIENT1, 47001), 3)),
        (DestExpect(TCP0, RS1, 0, active=2, conns=2, inpkts=2, inbytes=p0_in, outpkts=2, outbytes=p0_out,
                    persist=1),),
        (ServiceExpect(TCP0, 2, 2, p0_in, 2, p0_out),),
        (conn("SYN_RECV", T_SR - 2, RS1, cport=47000, svc=(PROTO_TCP, VIP, 443), dport=443, laddr=LIP1, lport=lp),
         conn("SYN_RECV", T_SR, RS1, cport=47001, svc=(PROTO_TCP, VIP, 8443), dport=8443, laddr=LIP1, lport=lp + 1),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 0, RS1, 0, "NONE", 300_000 - 1)), check_ms=3,
        tags=("fnat", "port0", "persist"), laddrs=((TCP0, LIP1, 2),)))

    # A persistent UDP service whose director sees the replies (FULLNAT): the first reply assures the template
    # (udp_state_transition in the OUTPUT direction -> ip_vs_control_assure_ct).
    persist_udp = Setup((ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd="fullnat"),), laddrs=(LIP1,),
                                      persistent=300),), lport_min=LPORT_MIN, lport_max=LPORT_MAX)
    rows.append(Row(
        "fnat-udp-template-assured", "FULLNAT UDP on a persistent service: the real server's reply makes the "
        "template ASSURED in the connection listing", persist_udp,
        (xmit(query, nat(query, LIP1, ulp, RS1, 53), 0, RS1),
         answered(answer_udp, nat(answer_udp, VIP, 53, CLIENT1, 50000), 5)),
        (DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=1, inbytes=qn, persist=1, outpkts=1, outbytes=an),),
        (ServiceExpect(UDP53, 1, 1, qn, 1, an),),
        (conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53, laddr=LIP1, lport=ulp),
         ConnExpect(PROTO_UDP, CLIENT1, 0, VIP, 53, RS1, 53, "ASSURED", 300_000 - 5)), check_ms=5,
        tags=("fnat", "udp", "persist", "template-state"), laddrs=((UDP53, LIP1, 1),)))

    # TTL: the director routes FULLNAT packets, so a TTL of 1 cannot be forwarded.
    syn_ttl1 = _with_ttl(syn, 1)
    synack_ttl1 = _with_ttl(synack, 1)
    rows.append(Row(
        "fnat-ttl-exceeded", "FULLNAT: a TTL of 1 cannot be decremented: ICMP time exceeded both ways "
        "(R_TTL_EXCEEDED), to the client from the VIP, to the real server from the local address; the entry is "
        "made and the packets counted before the rewrite", setup,
        (PacketStep(syn_ttl1, 0, "ANSWER", "TTL_EXCEEDED", out=time_exceeded(syn_ttl1, VIP)),
         PacketStep(synack_ttl1, 5, "ANSWER", "TTL_EXCEEDED", out=time_exceeded(synack_ttl1, LIP1))),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=n["syn"], outpkts=1, outbytes=n["synack"]),
         udp_dest),
        (ServiceExpect(TCP80, 1, 1, n["syn"], 1, n["synack"]), udp_svc),
        (conn("SYN_RECV", T_SR, RS1, laddr=LIP1, lport=lp),), check_ms=5, tags=("fnat", "ttl")))

    no_laddr = _fnat_setup(laddrs=())
    dests, services = idle_expectations(no_laddr)
    rows.append(Row("fnat-no-laddr", "FULLNAT without local addresses: no entry, DROP/R_NO_LADDR", no_laddr,
                    (verdict(syn, 0, "DROP", "NO_LADDR"),), dests, services, (), tags=("fnat",),
                    laddrs=()))
    one_port = _fnat_setup(lport_min=20000, lport_max=20000)
    syn_b = tcp(sport=40001)
    rows.append(Row(
        "fnat-ports-exhausted", "FULLNAT with one local port: the second connection to the same real server finds "
        "no free OUT tuple (R_NO_LADDR)", one_port,
        (xmit(syn, nat(syn, LIP1, 20000, RS1, 80), 0, RS1), verdict(syn_b, 1, "DROP", "NO_LADDR")),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=n["syn"]), udp_dest),
        (ServiceExpect(TCP80, 1, 1, n["syn"]), udp_svc),
        (conn("SYN_RECV", T_SR - 1, RS1, laddr=LIP1, lport=20000),), check_ms=1, tags=("fnat",),
        laddrs=((TCP80, LIP1, 1), (UDP53, LIP1, 0))))
    two = n["syn"] + ip_total_length(syn_b)
    rows.append(Row(
        "fnat-port-freed", "a local port is free again once its entry expired", one_port,
        (xmit(syn, nat(syn, LIP1, 20000, RS1, 80), 0, RS1),
         xmit(syn_b, nat(syn_b, LIP1, 20000, RS1, 80), T_SR, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=2, inpkts=2, inbytes=two), udp_dest),
        (ServiceExpect(TCP80, 2, 2, two), udp_svc),
        (conn("SYN_RECV", T_SR, RS1, cport=40001, laddr=LIP1, lport=20000),), check_ms=T_SR, tags=("fnat", "expiry")))
    ring = _fnat_setup(laddrs=(LIP1, LIP2))
    syns = [tcp(sport=41000 + i) for i in range(3)]
    used = [(LIP1, local_port(LIP1)), (LIP2, local_port(LIP2)), (LIP1, local_port(LIP1, 1))]
    rows.append(Row(
        "fnat-laddr-ring", "local addresses are used in turn (ring cursor), each with its own port cursor", ring,
        tuple(xmit(p, nat(p, la, port, RS1, 80), i, RS1) for i, (p, (la, port)) in enumerate(zip(syns, used, strict=True))),
        (DestExpect(TCP80, RS1, active=3, conns=3, inpkts=3, inbytes=3 * ip_total_length(syns[0])), udp_dest),
        (ServiceExpect(TCP80, 3, 3, 3 * ip_total_length(syns[0])), udp_svc),
        tuple(conn("SYN_RECV", T_SR - (2 - i), RS1, cport=41000 + i, laddr=la, lport=port)
              for i, (la, port) in enumerate(used)), check_ms=2, tags=("fnat",),
        laddrs=((TCP80, LIP1, 2), (TCP80, LIP2, 1), (UDP53, LIP1, 0), (UDP53, LIP2, 0))))
    no_l2 = _fnat_setup(l2=False)
    rows.append(Row(
        "fnat-no-l2", "FULLNAT without forwarding state: entry made and counted, packet dropped (R_NO_L2); a reply "
        "still goes back (the kernel routes it)", no_l2,
        (verdict(syn, 0, "DROP", "L2_QUEUED"), answered(synack, to_client["synack"], 5)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=n["syn"], outpkts=1, outbytes=n["synack"]),
         udp_dest),
        (ServiceExpect(TCP80, 1, 1, n["syn"], 1, n["synack"]), udp_svc),
        (conn("SYN_RECV", T_SR, RS1, laddr=LIP1, lport=lp),), check_ms=5, tags=("fnat", "l2")))
    rows.append(Row(
        "fnat-deleted-dest-reply", "replies of a deleted destination's entry are still translated (no availability "
        "check on OUT) but not counted (AVAILABLE only); its client's packets are dropped", setup,
        (xmit(syn, to_rs["syn"], 0, RS1), ConfigStep("del_dest", TCP80, DestSetup(RS1, fwd="fullnat"), 1),
         answered(synack, to_client["synack"], 5), verdict(ack, 6, "DROP", "DEST_UNAVAILABLE")),
        (udp_dest,), (ServiceExpect(TCP80, 1, 1, n["syn"]), udp_svc),
        (conn("SYN_RECV", T_SR - 1, RS1, laddr=LIP1, lport=lp),), check_ms=6, tags=("fnat", "deleted")))
    return rows


# ---- IPIP ------------------------------------------------------------------------------------------------


def _tun_setup(*, saddr: str = TUN_SRC, mtu: int = 1500, l2: bool = True) -> Setup:
    return Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, fwd="tunnel", saddr=saddr, mtu=mtu, l2=l2),)),
                  ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd="tunnel", saddr=saddr),))))


def _tun_rows() -> list[Row]:
    rows: list[Row] = []
    setup = _tun_setup()
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)
    syn = tcp(flags="S", tos=0x10)
    syn_df = tcp(flags="S", flags_ip="DF")
    ack = tcp(flags="A", seq=1001, ack=5001, flags_ip="DF")
    big_df = tcp(flags="PA", seq=1001, ack=5001, payload=b"b" * 1441, flags_ip="DF")  # 1481 + 20 > 1500
    big = tcp(flags="PA", seq=1001, ack=5001, payload=b"b" * 1441)
    fits = tcp(flags="PA", seq=1001, ack=5001, payload=b"b" * 1440, flags_ip="DF")  # 1480 + 20 = 1500
    sz = ip_total_length

    def one(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
            pkts: tuple[bytes, ...], row_setup: Setup = setup, tags: tuple[str, ...] = ()) -> Row:
        inb = sum(sz(p) for p in pkts)
        return Row(row_id, description, row_setup, steps,
                   (DestExpect(TCP80, RS1, active=active_in(state), inactive=1 - active_in(state), conns=1,
                               inpkts=len(pkts), inbytes=inb, handshakes=int(state == "ESTABLISHED")), udp_dest),
                   (ServiceExpect(TCP80, 1, len(pkts), inb), udp_svc),
                   (conn(state, timeout, RS1),), check_ms=steps[-1].now_ms, tags=("tun",) + tags)

    rows.append(one("tun-syn", "IPIP: outer header 0x45, TOS = inner TOS, ID = inner ID (no DF), TTL 64, proto 4, "
                    "from the route source to the real server; the inner packet unchanged; INPUT-ONLY states",
                    (xmit(syn, ipip(syn), 0, RS1),), "SYN_RECV", T_SR, (syn,)))
    rows.append(one("tun-df", "IPIP: an inner DF gives the outer header DF and ID 0",
                    (xmit(syn_df, ipip(syn_df), 0, RS1), xmit(ack, ipip(ack), 1, RS1)), "ESTABLISHED", T_ES,
                    (syn_df, ack)))
    rows.append(one("tun-mtu-fits", "IPIP: a packet of MTU - 20 bytes still fits",
                    (xmit(syn_df, ipip(syn_df), 0, RS1), xmit(fits, ipip(fits), 1, RS1)), "ESTABLISHED", T_ES,
                    (syn_df, fits), tags=("mtu",)))
    rows.append(one("tun-frag-needed", "IPIP: too big after encapsulation with DF: ICMP fragmentation needed "
                    "(next-hop MTU = MTU - 20) to the client (ANSWER, R_FRAG_NEEDED); state and stats as forwarded",
                    (xmit(syn_df, ipip(syn_df), 0, RS1), answered(big_df, director_icmp(big_df, 4, 1480), 1,
                                                                 "FRAG_NEEDED")), "ESTABLISHED", T_ES, (syn_df, big_df),
                    tags=("mtu",)))
    rows.append(one("tun-frag-no-df", "IPIP: too big without DF: the outer packet (DF clear) leaves as fragments "
                    "of the path MTU (frag_mtu 1500), as ip_vs_tunnel_xmit's output fragments it",
                    (xmit(syn, ipip(syn), 0, RS1), xmit(big, ipip(big), 1, RS1, frag_mtu=1500)), "ESTABLISHED", T_ES,
                    (syn, big), tags=("mtu", "frag")))
    small = _tun_setup(mtu=600)
    mid = tcp(flags="PA", seq=1001, ack=5001, payload=b"m" * 541, flags_ip="DF")  # 581 + 20 > 600
    rows.append(one("tun-path-mtu", "IPIP: the destination's path MTU (600) decides; next-hop MTU 580",
                    (xmit(syn_df, ipip(syn_df), 0, RS1), answered(mid, director_icmp(mid, 4, 580), 1, "FRAG_NEEDED")),
                    "ESTABLISHED", T_ES, (syn_df, mid), row_setup=small, tags=("mtu",)))
    rows.append(one("tun-no-source", "IPIP without a route source address: never an outer source 0.0.0.0: "
                    "DROP/R_NO_L2", (verdict(syn, 0, "DROP", "NO_L2"),), "SYN_RECV", T_SR, (syn,),
                    row_setup=_tun_setup(saddr="0.0.0.0"), tags=("l2",)))
    rows.append(one("tun-no-l2", "IPIP without forwarding state: held (R_L2_QUEUED)", (verdict(syn, 0, "DROP", "L2_QUEUED"),),
                    "SYN_RECV", T_SR, (syn,), row_setup=_tun_setup(l2=False), tags=("l2",)))
    query = udp(sport=50000)
    qn = sz(query)
    rows.append(Row("tun-udp", "IPIP carries UDP the same way", setup, (xmit(query, ipip(query), 0, RS1),),
                    (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=1, inbytes=qn)),
                    (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 1, qn)),
                    (conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), tags=("tun", "udp")))
    error = icmp_error(reply_quote(), 3, 4, nexthopmtu=1400)
    rows.append(Row("tun-icmp", "an ICMP error about a tunnelled connection is encapsulated to its real server "
                    "(R_ICMP), in-stats counted", setup,
                    (xmit(syn, ipip(syn), 0, RS1), xmit(error, ipip(error), 5, RS1, "ICMP")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=sz(syn) + sz(error)), udp_dest),
                    (ServiceExpect(TCP80, 1, 2, sz(syn) + sz(error)), udp_svc),
                    (conn("SYN_RECV", T_SR - 5, RS1),), check_ms=5, tags=("tun", "icmp")))
    no_src = _tun_setup(saddr="0.0.0.0")
    rows.append(Row("tun-icmp-no-source", "an ICMP error about a tunnelled connection whose destination has no "
                    "route source address is dropped (R_NO_L2), as the connection's own packets: never an outer "
                    "source 0.0.0.0", no_src, (verdict(syn, 0, "DROP", "NO_L2"), verdict(error, 5, "DROP", "NO_L2")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=sz(syn) + sz(error)), udp_dest),
                    (ServiceExpect(TCP80, 1, 2, sz(syn) + sz(error)), udp_svc),
                    (conn("SYN_RECV", T_SR - 5, RS1),), check_ms=5, tags=("tun", "icmp", "l2")))

    # A connection keeps the method it was created with (the kernel binds cp->packet_xmit at creation).
    dr = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),))
    as_tun = DestSetup(RS1, fwd="tunnel", saddr=TUN_SRC)
    syn2 = tcp(sport=40001)
    rows.append(Row(
        "method-change-keeps-entries", "editing a destination's method (route -> tunnel) drops its forwarding "
        "state; once new state is installed, existing entries keep their method (DR: the held ACK leaves from "
        "the timers unencapsulated) and new ones use the new one (IPIP)", dr,
        (fwd(syn, 0, RS1), ConfigStep("edit_dest", TCP80, as_tun, 1), verdict(ack, 2, "DROP", "L2_QUEUED"),
         ConfigStep("set_fwd", TCP80, as_tun, 3),
         TimerStep(3, (("XMIT_L2", "FORWARDED", ttl_dec(ack), IFINDEX, expected_frame(RS1, ack)[:14]),)),
         fwd(ack, 4, RS1), xmit(syn2, ipip(syn2), 5, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=2, inpkts=4, inbytes=2 * sz(syn) + 2 * sz(ack),
                    handshakes=1),),
        (ServiceExpect(TCP80, 2, 4, 2 * sz(syn) + 2 * sz(ack)),),
        (conn("ESTABLISHED", T_ES - 1, RS1), conn("SYN_RECV", T_SR, RS1, cport=40001)), check_ms=5,
        tags=("tun", "dr", "method")))
    return rows


# ---- ICMP errors about FULLNAT connections, and the ICMP checksum -----------------------------------------


def _icmp_translation_rows() -> list[Row]:
    rows: list[Row] = []
    lp = local_port(LIP1)
    setup = _fnat_setup()
    syn = tcp(flags="S")
    to_rs = nat(syn, LIP1, lp, RS1, 80)
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)
    sz = ip_total_length
    # From the client's side, about a reply VIP:80 -> CIP:40000.
    from_client = icmp_error(reply_quote(), 3, 4, nexthopmtu=1400)
    to_rs_error = icmp_error(reply_quote(src=RS1, dst=LIP1, sport=80, dport=lp), 3, 4, nexthopmtu=1400, src=LIP1,
                             dst=RS1, ttl=60)
    # From the real server's side, about LIP:lport -> RIP:80.
    from_rs = icmp_error(reply_quote(src=LIP1, dst=RS1, sport=lp, dport=80), 3, 4, nexthopmtu=1400, src=RS1,
                         dst=LIP1)
    to_client_error = icmp_error(reply_quote(src=CLIENT1, dst=VIP, sport=40000, dport=80), 3, 4, nexthopmtu=1400,
                                 src=VIP, dst=CLIENT1, ttl=60)

    def row(row_id: str, description: str, step: PacketStep, ins: int, outs: int, tags: tuple[str, ...] = (),
            row_setup: Setup = setup, first: PacketStep | None = None) -> Row:
        first = first or xmit(syn, to_rs, 0, RS1)
        inb = sz(syn) + (sz(step.packet) if ins else 0)
        outb = sz(step.packet) if outs else 0
        return Row(row_id, description, row_setup, (first, step),
                   (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1 + ins, inbytes=inb, outpkts=outs,
                               outbytes=outb), udp_dest),
                   (ServiceExpect(TCP80, 1, 1 + ins, inb, outs, outb), udp_svc),
                   (conn("SYN_RECV", T_SR - 5, RS1, laddr=LIP1, lport=lp),), check_ms=5, tags=("icmp", "fnat") + tags)

    rows.append(row("icmp-fnat-in", "an ICMP error from the client's side about a FULLNAT reply is translated "
                    "towards the real server: outer LIP -> RIP (TTL - 1), quoting RIP:rport -> LIP:lport; quoted IP "
                    "and ICMP checksums recomputed; in-stats", xmit(from_client, to_rs_error, 5, RS1, "ICMP"), 1, 0))
    rows.append(row("icmp-fnat-out", "an ICMP error from the real server's side about LIP:lport -> RIP:rport is "
                    "translated to the client: outer VIP -> CIP, quoting CIP:cport -> VIP:vport (ANSWER); out-stats",
                    answered(from_rs, to_client_error, 5, "ICMP"), 0, 1))
    rows.append(row("icmp-fnat-ttl", "an ICMP error with TTL 1 cannot be translated (R_TTL_EXCEEDED); still counted",
                    verdict(_with_ttl(from_rs, 1), 5, "DROP", "TTL_EXCEEDED"), 0, 1))
    rows.append(row("icmp-fnat-no-l2", "an ICMP error towards a real server without forwarding state is dropped "
                    "(R_NO_L2), counted", verdict(from_client, 5, "DROP", "NO_L2"), 1, 0,
                    row_setup=_fnat_setup(l2=False), first=verdict(syn, 0, "DROP", "L2_QUEUED")))
    bad = _fix_icmp_checksum(from_rs, good=False)
    rows.append(row("icmp-bad-csum-out", "an ICMP error about a connection with a wrong ICMP checksum is dropped "
                    "(R_BAD_CSUM, ip_vs_in_icmp) and not counted", verdict(bad, 5, "DROP", "BAD_CSUM"), 0, 0,
                    tags=("bad",)))
    dr = one_dest()
    dr_syn = tcp(flags="S")
    dr_error = _fix_icmp_checksum(icmp_error(reply_quote(), 3, 4, nexthopmtu=1400), good=False)
    rows.append(Row("icmp-bad-csum-dr", "a wrong ICMP checksum on an error about a DR connection: DROP/R_BAD_CSUM",
                    dr, (fwd(dr_syn, 0, RS1), verdict(dr_error, 5, "DROP", "BAD_CSUM")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=sz(dr_syn)), udp_dest),
                    (ServiceExpect(TCP80, 1, 1, sz(dr_syn)), udp_svc),
                    (conn("SYN_RECV", T_SR - 5, RS1),), check_ms=5, tags=("icmp", "bad")))
    unrelated = _fix_icmp_checksum(icmp_error(reply_quote(dport=40001)), good=False)
    rows.append(Row("icmp-bad-csum-unrelated", "the ICMP checksum is only checked for errors about a connection: "
                    "unrelated ones pass through", dr, (verdict(unrelated, 5, "ACCEPT", "NOT_LB_PROTO"),),
                    *idle_expectations(dr), (), check_ms=5, tags=("icmp", "bad")))
    return rows


# ---- SYN-proxy ------------------------------------------------------------------------------------------

SP_ISN = 1000  # the client's ISN in the SYN-proxy rows
RS_ISN = 7000  # the real server's
SYN_OPTS = [("MSS", 1460), ("SAckOK", b"")]
SP_SYN_OPTS = [("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b"")]  # as the director writes them


def _sp_setup(*, toa: bool = False, conf: tuple[tuple[str, object], ...] | None = None, l2: bool = True) -> Setup:
    return Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, fwd="fullnat", l2=l2),), toa=toa, synproxy=True,
                               laddrs=(LIP1,), sp_conf=conf),))


def _sp_rows() -> list[Row]:
    rows: list[Row] = []
    lp = local_port(LIP1)
    cookie = syn_cookie(CLIENT1, VIP, 40000, 80, SP_ISN, 0, 3 | 4)  # MSS 1460 (index 3), SACK
    d_in = (RS_ISN - cookie) & 0xFFFFFFFF
    syn = tcp(flags="S", seq=SP_ISN, tcp_options=SYN_OPTS)
    synack_cookie = tcp_segment(VIP, 80, CLIENT1, 40000, "SA", cookie, SP_ISN + 1, 65535, SP_SYN_OPTS)
    ack = tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1)
    rs_syn = tcp_segment(LIP1, lp, RS1, 80, "S", SP_ISN, 0, 64240, SP_SYN_OPTS)
    rs_synack = tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="SA", seq=RS_ISN, ack=SP_ISN + 1,
                    tcp_options=[("MSS", 1400)])
    rs_ack = tcp_segment(LIP1, lp, RS1, 80, "A", SP_ISN + 1, RS_ISN + 1, 64240)
    request = b"GET / HTTP/1.0\r\n\r\n"
    data = tcp(flags="PA", seq=SP_ISN + 1, ack=cookie + 1, payload=request)
    reply = tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="PA", seq=RS_ISN + 1, ack=SP_ISN + 1 + len(request),
                payload=b"HTTP/1.0 200 OK\r\n")
    client_rst = tcp_segment(VIP, 80, CLIENT1, 40000, "RA", cookie + 1, SP_ISN + 1, 0)
    sz = ip_total_length
    setup = _sp_setup()
    opened = (answered(syn, synack_cookie, 0, "SP_COOKIE"), xmit(ack, rs_syn, 10, RS1, note="SYN to the real server"))

    def row(row_id: str, description: str, steps: tuple[Step, ...], *, state: str | None, timeout: int = 0,
            ins: tuple[bytes, ...] = (), outs: tuple[bytes, ...] = (), handshakes: int = 0,
            conns: int = 1, stats: dict[str, int], row_setup: Setup = setup, tags: tuple[str, ...] = ()) -> Row:
        inb, outb = sum(sz(p) for p in ins), sum(sz(p) for p in outs)
        last = steps[-1].now_ms
        live = () if state is None else (conn(state, timeout, RS1, laddr=LIP1, lport=lp),)
        active = 0 if state is None else active_in(state)
        return Row(row_id, description, row_setup, steps,
                   (DestExpect(TCP80, RS1, active=active, inactive=0 if state is None else 1 - active, conns=conns,
                               inpkts=len(ins), inbytes=inb, handshakes=handshakes, outpkts=len(outs),
                               outbytes=outb),),
                   (ServiceExpect(TCP80, conns, len(ins), inb, len(outs), outb),),
                   live, check_ms=last, tags=("synproxy",) + tags,
                   laddrs=((TCP80, LIP1, 0 if state is None else 1),), sp_stats=tuple(sorted(stats.items())))

    rows.append(row("sp-cookie", "SYN-proxy: a SYN is answered with a SYN-ACK carrying the cookie (MSS 1460, SACK "
                    "permitted, window 65535, ID 0, DF, TTL 64); no entry", (opened[0],), state=None, conns=0,
                    stats={"cookies_sent": 1}))
    rows.append(row("sp-ack-opens", "SYN-proxy: the ACK with a valid cookie creates the entry (SYN_SENT), counts in "
                    "the stats and sends the SYN to the real server (client's ISN, MSS and SACK from the cookie, "
                    "client's window)", opened, state="SYN_SENT", timeout=120_000, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    rows.append(row("sp-bad-cookie", "SYN-proxy: an ACK whose cookie does not validate is dropped",
                    (opened[0], verdict(tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 2), 10, "DROP", "SP_BAD_COOKIE")),
                    state=None, conns=0, stats={"cookies_sent": 1, "cookies_invalid": 1}))
    late = tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1)
    rows.append(row("sp-cookie-age", "SYN-proxy: a cookie is valid in its minute and the 2 after; in the third it "
                    "is refused", (opened[0], verdict(late, 180_000, "DROP", "SP_BAD_COOKIE")), state=None, conns=0,
                    stats={"cookies_sent": 1, "cookies_invalid": 1}))
    rows.append(row("sp-cookie-2-minutes", "SYN-proxy: a cookie made at minute 0 still validates at minute 2",
                    (opened[0], xmit(late, rs_syn, 179_999, RS1)), state="SYN_SENT", timeout=120_000, ins=(late,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    rows.append(row("sp-not-syn-no-conn", "SYN-proxy: a segment that is neither SYN nor ACK without an entry passes "
                    "through (NO_CONN)", (verdict(tcp(flags="FA", seq=5, ack=5), 0, "ACCEPT", "NO_CONN"),),
                    state=None, conns=0, stats={}))
    handshake = opened + (xmit(rs_synack, rs_ack, 20, RS1, "SP_HANDSHAKE"),)
    rows.append(row("sp-handshake", "SYN-proxy: the real server's SYN-ACK is consumed and answered with the ACK "
                    "that completes its handshake; the entry becomes ESTABLISHED", handshake, state="ESTABLISHED",
                    timeout=T_ES, ins=(ack,), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    rows.append(row("sp-translate", "SYN-proxy: after both handshakes the client's ACK numbers move into the "
                    "server's sequence space and the server's sequence numbers into the cookie's (FULLNAT rewrite "
                    "too)", handshake + (
                        xmit(data, nat(data, LIP1, lp, RS1, 80, ack_delta=d_in), 30, RS1),
                        answered(reply, nat(reply, VIP, 80, CLIENT1, 40000, seq_delta=-d_in), 40)),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack, data), outs=(reply,), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    sack = tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1,
               tcp_options=[("NOP", None), ("NOP", None), ("SAck", (cookie + 100, cookie + 200))])
    rows.append(row("sp-sack", "SYN-proxy: SACK block edges from the client are translated like its ACK number",
                    handshake + (xmit(sack, nat(sack, LIP1, lp, RS1, 80, ack_delta=d_in, sack_delta=d_in), 30, RS1),),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack, sack), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    ack_data = tcp(flags="PA", seq=SP_ISN + 1, ack=cookie + 1, payload=request)
    rows.append(row("sp-held-data", "SYN-proxy: data on the cookie's ACK is held and delivered with the ACK that "
                    "completes the real server's handshake (PSH)",
                    (opened[0], xmit(ack_data, rs_syn, 10, RS1),
                     xmit(rs_synack, tcp_segment(LIP1, lp, RS1, 80, "PA", SP_ISN + 1, RS_ISN + 1, 64240,
                                                 payload=request), 20, RS1, "SP_HANDSHAKE")),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack_data,), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    rows.append(row("sp-held-later", "SYN-proxy: the client's first data while the real server is pending is held "
                    "(DROP/R_SP_HELD) and delivered with the handshake ACK",
                    opened + (verdict(data, 15, "DROP", "SP_HELD"),
                              xmit(rs_synack, tcp_segment(LIP1, lp, RS1, 80, "PA", SP_ISN + 1, RS_ISN + 1, 64240,
                                                          payload=request), 20, RS1, "SP_HANDSHAKE")),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack,), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    defer = _sp_setup(conf=(("defer", True),))
    rows.append(row("sp-defer", "SYN-proxy defer mode: the real server is only contacted when the client's first "
                    "data arrives", (opened[0], verdict(ack, 10, "DROP", "SP_HELD"), xmit(data, rs_syn, 15, RS1),
                                     xmit(rs_synack, tcp_segment(LIP1, lp, RS1, 80, "PA", SP_ISN + 1, RS_ISN + 1,
                                                                 64240, payload=request), 20, RS1, "SP_HANDSHAKE")),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack,), handshakes=1, row_setup=defer,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    storm = _sp_setup(conf=(("ack_storm_max", 2),))
    pure = tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1)
    rows.append(row("sp-ack-storm", "SYN-proxy ACK-storm guard: more than ack_storm_max pure ACKs while pending "
                    "reset the client and forget the entry",
                    opened + (verdict(pure, 11, "DROP", "SP_HELD"), verdict(pure, 12, "DROP", "SP_HELD"),
                              answered(pure, client_rst, 13, "SP_HELD")), state=None, ins=(ack,), row_setup=storm,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "give_ups": 1,
                           "held_dropped": 3}))
    rows.append(row("sp-client-rst", "SYN-proxy: the client's RST while the real server is pending forgets the entry",
                    opened + (verdict(tcp(flags="R", seq=SP_ISN + 1), 11, "DROP", "SP_HELD"),), state=None, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    rows.append(row("sp-rs-rst", "SYN-proxy: the real server's RST resets the client (ANSWER) and forgets the entry",
                    opened + (answered(tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="RA", seq=0, ack=SP_ISN + 1),
                                       client_rst, 20),), state=None, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "rs_resets": 1}))
    stray = tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="A", seq=31337, ack=123456)
    rows.append(row("sp-rs-unexpected-ack", "SYN-proxy: an ACK from the real server that does not answer our SYN "
                    "gets a RST with SEQ = its ACK (RFC 793 SYN-SENT)",
                    opened + (xmit(stray, tcp_segment(LIP1, lp, RS1, 80, "R", 123456, 0, 0), 20, RS1, "SP_HELD"),),
                    state="SYN_SENT", timeout=120_000, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    retransmit = timer_frame(rs_syn, RS1)
    rows.append(row("sp-timers", "SYN-proxy: the SYN to the real server is retransmitted after 200, 400, 800 ms "
                    "(doubling, capped at 3000), then the client gets a RST (give-up) and the entry goes",
                    opened + (TimerStep(209), TimerStep(210, (retransmit,)), TimerStep(609),
                              TimerStep(610, (retransmit,)), TimerStep(1410, (retransmit,)), TimerStep(3009),
                              TimerStep(3010, (("ANSWER", "FORWARDED", client_rst, 0, b""),))),
                    state=None, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "syn_retransmits": 3,
                           "give_ups": 1}, tags=("timers",)))
    rows.append(row("sp-timers-answered", "SYN-proxy: once the real server answered, no retransmission is due",
                    handshake + (TimerStep(10_000),), state="ESTABLISHED", timeout=T_ES - 9980, ins=(ack,),
                    handshakes=1, stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1},
                    tags=("timers",)))
    toa = _sp_setup(toa=True)
    toa_cookie = syn_cookie(CLIENT1, VIP, 40000, 80, SP_ISN, 0, 3 | 4)
    toa_ack = tcp_segment(LIP1, lp, RS1, 80, "A", SP_ISN + 1, RS_ISN + 1, 64240,
                          [(254, (40000).to_bytes(2, "big") + bytes(map(int, CLIENT1.split("."))))])
    rows.append(row("sp-toa", "SYN-proxy with TOA: the cookie SYN-ACK announces MSS 1452; the handshake ACK to the "
                    "real server carries the TOA option",
                    (answered(syn, tcp_segment(VIP, 80, CLIENT1, 40000, "SA", toa_cookie, SP_ISN + 1, 65535,
                                               [("MSS", 1452), ("NOP", None), ("NOP", None), ("SAckOK", b"")]), 0,
                              "SP_COOKIE"),
                     xmit(ack, rs_syn, 10, RS1), xmit(rs_synack, toa_ack, 20, RS1, "SP_HANDSHAKE")),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack,), handshakes=1, row_setup=toa,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    small_syn = tcp(flags="S", seq=SP_ISN, tcp_options=[("MSS", 1300)])
    small_cookie = syn_cookie(CLIENT1, VIP, 40000, 80, SP_ISN, 0, 1)
    rows.append(row("sp-cookie-mss-index", "SYN-proxy: the client's MSS is kept as the largest table entry not above "
                    "it (1300), without SACK; the real server's SYN announces that",
                    (answered(small_syn, tcp_segment(VIP, 80, CLIENT1, 40000, "SA", small_cookie, SP_ISN + 1, 65535,
                                                     [("MSS", 1460)]), 0, "SP_COOKIE"),
                     xmit(tcp(flags="A", seq=SP_ISN + 1, ack=small_cookie + 1),
                          tcp_segment(LIP1, lp, RS1, 80, "S", SP_ISN, 0, 64240, [("MSS", 1300)]), 10, RS1)),
                    state="SYN_SENT", timeout=120_000, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    no_l2 = _sp_setup(l2=False)
    rows.append(row("sp-no-l2", "SYN-proxy without forwarding state: the SYN cannot leave (R_NO_L2); the timer "
                    "keeps trying without sending", (opened[0], verdict(ack, 10, "DROP", "NO_L2"), TimerStep(210)),
                    state="SYN_SENT", timeout=120_000 - 200, ins=(ack,), row_setup=no_l2,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}, tags=("timers",)))
    return rows


def _overload_rows() -> list[Row]:
    """OVERLOAD as Debian's 6.1.192 evaluates it (__ip_vs_update_dest only when a threshold changes,
    ip_vs_bind_dest when totalconns reaches u, ip_vs_unbind_dest when it leaves l_threshold_val).
    rr over RS1, RS2 (list RS2, RS1); every entry stays in SYN_RECV (active)."""
    rows = []
    syns = [tcp(sport=46000 + i) for i in range(5)]
    size = ip_total_length(syns[0])

    def row(row_id: str, description: str, setup: Setup, edit: DestSetup, order: list[str]) -> Row:
        steps: tuple[Step, ...] = (*(fwd(p, 0, d) for p, d in zip(syns[:3], order[:3], strict=True)),
                 ConfigStep("edit_dest", TCP80, edit, 0),
                 *(fwd(p, 0, d) for p, d in zip(syns[3:], order[3:], strict=True)))
        n2, n1 = order.count(RS2), order.count(RS1)
        return Row(row_id, description, setup, steps,
                   (DestExpect(TCP80, RS2, active=n2, conns=n2, inpkts=n2, inbytes=n2 * size),
                    DestExpect(TCP80, RS1, active=n1, conns=n1, inpkts=n1, inbytes=n1 * size)),
                   (ServiceExpect(TCP80, 5, 5, 5 * size),),
                   tuple(conn("SYN_RECV", T_SR, d, cport=46000 + i) for i, d in enumerate(order)),
                   tags=("sched", "overload"))

    plain = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    rows.append(row(
        "overload-threshold-lowered", "-e -x 2 on RS2 holding 2 connections flags it at once (the edit "
        "re-evaluates OVERLOAD), so rr skips it from then on", plain, DestSetup(RS2, u_threshold=2),
        [RS2, RS1, RS2, RS1, RS1]))
    capped = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2, u_threshold=2))),))
    rows.append(row(
        "overload-raised-threshold-between", "RS2 -x 2 is flagged by its 2nd connection; raising it to -x 4 -y 2 "
        "keeps the flag while it holds >= 2 (the lower threshold)", capped,
        DestSetup(RS2, u_threshold=4, l_threshold=2), [RS2, RS1, RS2, RS1, RS1]))
    rows.append(row(
        "overload-raised-threshold-clears", "raising RS2's -x 2 to -x 4 (lower value 4 - 4/4 = 3) with 2 "
        "connections clears the flag", capped, DestSetup(RS2, u_threshold=4), [RS2, RS1, RS2, RS1, RS2]))
    rows.append(row(
        "overload-weight-edit-keeps", "-e changing only RS2's weight does not re-evaluate OVERLOAD", capped,
        DestSetup(RS2, weight=3, u_threshold=2), [RS2, RS1, RS2, RS1, RS1]))
    return rows


def _list_sched_rows() -> list[Row]:
    """The list-scanning schedulers (wrr, lc, sed, nq, fo, ovf): one row each, their order over
    fresh SYNs (every entry stays in SYN_RECV: active). The thorough checks are the lockstep
    tests against tests/oracles (tests/unit/test_sched_oracle.py, test_sched_list.py)."""
    rows = []

    def row(row_id: str, description: str, sched: str, dests: tuple[DestSetup, ...], order: list[str]) -> Row:
        syns = [tcp(sport=47000 + i) for i in range(len(order))]
        size = ip_total_length(syns[0])
        counts = {d.addr: order.count(d.addr) for d in dests}
        return Row(row_id, description, Setup((ServiceSetup(TCP80, sched, dests),)),
                   tuple(fwd(p, 0, d) for p, d in zip(syns, order, strict=True)),
                   tuple(DestExpect(TCP80, d.addr, active=counts[d.addr], conns=counts[d.addr],
                                    inpkts=counts[d.addr], inbytes=counts[d.addr] * size) for d in reversed(dests)),
                   (ServiceExpect(TCP80, len(order), len(order), len(order) * size),),
                   tuple(conn("SYN_RECV", T_SR, d, cport=47000 + i) for i, d in enumerate(order)),
                   tags=("sched", sched))

    rows.append(row(
        "wrr-432", "wrr over RS1 4, RS2 3, RS3 2 added last to first: each add leaves cw at 1, so the first round "
        "takes all three, then cw restarts at 4", "wrr",
        (DestSetup(RS3, weight=2), DestSetup(RS2, weight=3), DestSetup(RS1, weight=4)),
        [RS1, RS2, RS3, RS1, RS1, RS2, RS1, RS2, RS3]))
    rows.append(row(
        "lc-ignores-weights", "lc over RS1 1, RS2 5 (list RS2, RS1): the smaller overhead wins whatever the weights, "
        "the list head on a tie", "lc", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=5)), [RS2, RS1, RS2, RS1]))
    rows.append(row(
        "sed-active-plus-one", "sed over RS1 1, RS2 3 (list RS2, RS1): (active + 1) / weight, the earlier on a tie",
        "sed", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=3)), [RS2, RS2, RS2, RS1, RS2]))
    rows.append(row(
        "nq-idle-first", "nq over RS1 1, RS2 3 (list RS2, RS1): an idle server first whatever its weight, then "
        "(active + 1) / weight", "nq", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=3)), [RS2, RS1, RS2, RS2]))
    rows.append(row(
        "fo-heaviest", "fo over RS1 2, RS2 5, RS3 3: everything to the heaviest, RS2", "fo",
        (DestSetup(RS1, weight=2), DestSetup(RS2, weight=5), DestSetup(RS3, weight=3)), [RS2, RS2, RS2]))
    rows.append(row(
        "ovf-overflow", "ovf over RS1 1, RS2 2: RS2 until its active connections exceed its weight (3), then RS1",
        "ovf", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=2)), [RS2, RS2, RS2, RS1, RS1]))
    return rows


def _hashing_rows() -> list[Row]:
    import packet_rows_hashing  # sh, dh, mh and -o: their own module (it builds on this one)

    return packet_rows_hashing.rows()


def _frag_rows() -> list[Row]:
    import packet_rows_frag  # datagrams larger than the path MTU: their own module (it builds on this one)

    return packet_rows_frag.rows()


def _fault_rows() -> list[Row]:
    import packet_rows_faults  # hostile and unlucky packets (issue 16): their own module

    return packet_rows_faults.rows()


def _nat_rows() -> list[Row]:
    import packet_rows_nat  # NAT (masquerading): its own module (it builds on this one)

    return packet_rows_nat.rows()


def _proxy_rows() -> list[Row]:
    import packet_rows_proxy  # the PROXY protocol on FULLNAT: its own module (it builds on this one)

    return packet_rows_proxy.rows()


@functools.cache
def _twos_expected(weights: tuple[int, ...], flows: int) -> list[str]:
    """twos' choices for `flows` held connections to TCP80 (RS1, RS2, ... of these weights, added in
    order): tests/oracles' kernel model fed the seeded draws of tests/twos_draws.py."""
    from oracles import PacketInfo, Service
    from oracles.sched_twos import TwosScheduler
    from twos_draws import Draws

    svc = Service(TwosScheduler(rng=Draws(HASH_SEED, *TCP80).below))
    rss = (RS1, RS2, RS3)
    for rs, weight in zip(rss, weights, strict=False):
        svc.add_dest(rs, 80, weight)
    chosen = []
    for i in range(flows):
        flow = svc.new_flow(PacketInfo.of(CLIENT1, VIP, 46000 + i, 80))
        assert flow is not None
        chosen.append(str(flow.dest.addr))
    return chosen


def _locality_rows() -> list[Row]:
    """lblc, lblcr (the cache keyed by the destination address: through the packet path, the VIP's own
    entry) and twos (seeded: every engine is made with hash_seed HASH_SEED)."""
    rows = []
    size = ip_total_length(tcp())
    day = 86_400_000  # lblc/lblcr's expiration (24 h) in ms; their timer runs every 60 s from the first use

    def held(order: list[str], sport0: int, check_ms: int = 0) -> tuple[tuple[PacketStep, ...], tuple[ConnExpect, ...]]:
        steps = tuple(fwd(tcp(sport=sport0 + i), 0, d) for i, d in enumerate(order))
        conns = tuple(conn("SYN_RECV", T_SR - check_ms, d, cport=sport0 + i) for i, d in enumerate(order))
        return steps, conns

    def counts(order: list[str], rss: tuple[str, ...]) -> tuple[DestExpect, ...]:
        return tuple(DestExpect(TCP80, rs, active=order.count(rs), conns=order.count(rs), inpkts=order.count(rs),
                                inbytes=order.count(rs) * size) for rs in rss)

    setup2 = {sched: Setup((ServiceSetup(TCP80, sched, (DestSetup(RS1), DestSetup(RS2))),)) for sched in ("lblc", "lblcr")}
    # lblc, weights 1/1 (list RS2, RS1), every SYN's entry active (SYN_RECV): 1, 2 RS2 (a miss, then
    # 1 active is not above weight 1); 3: RS2 has 2 > 1 while RS1 has 0 * 2 < 1: overloaded, the
    # entry moves to wlc's RS1; 4-6: RS1, even at 3 active, since nobody is under half its weight.
    order = [RS2, RS2, RS1, RS1, RS1, RS1]
    steps, conns = held(order, 47000)
    rows.append(Row(
        "lblc-moves-off-busy-server", "lblc keeps the VIP's entry until its server has more active connections "
        "than its weight while another is under half its own, then moves it to the wlc choice",
        setup2["lblc"], steps, counts(order, (RS2, RS1)), (ServiceExpect(TCP80, 6, 6, 6 * size),), conns,
        tags=("sched", "locality")))
    # lblcr, same: 3 adds RS1 to the set {RS1, RS2}; then the set's least loaded member: 4, 5 RS1
    # (257*1 < 514, then a tie: the newest member first), 6 RS2 (771 > 514).
    order = [RS2, RS2, RS1, RS1, RS1, RS2]
    steps, conns = held(order, 47100)
    rows.append(Row(
        "lblcr-set-grows", "lblcr adds the wlc choice to the VIP's set when its least loaded member is overloaded, "
        "then picks the least loaded member of the set",
        setup2["lblcr"], steps, counts(order, (RS2, RS1)), (ServiceExpect(TCP80, 6, 6, 6 * size),), conns,
        tags=("sched", "locality")))
    # lblc's entry (RS1, last used at 0) and the half-hourly full check: the run at exactly 24 h drops
    # it (idle >= the expiration) and the next SYN misses (wlc: both idle, RS2 first); just before it,
    # the entry still answers RS1.
    for row_id, at, dest, what in (("lblc-entry-expires-after-24h", day, RS2, "dropped by the full check at 24 h"),
                                   ("lblc-entry-kept-before-24h", day - 4, RS1, "still there 4 ms before it")):
        order = [RS2, RS2, RS1, dest]  # the first three long expired at `at` (SYN_RECV: 60 s)
        steps, _ = held(order[:3], 47200)
        rows.append(Row(
            row_id, f"lblc: an entry unused for 24 h is {what} (expire runs the timer)",
            setup2["lblc"], steps + (ConfigStep("expire", TCP80, None, at), fwd(tcp(sport=47203), at, dest)),
            tuple(DestExpect(TCP80, rs, active=int(rs == dest), conns=order.count(rs), inpkts=order.count(rs),
                             inbytes=order.count(rs) * size) for rs in (RS2, RS1)),
            (ServiceExpect(TCP80, 4, 4, 4 * size),), (conn("SYN_RECV", T_SR, dest, cport=47203),), check_ms=at,
            tags=("sched", "locality", "timer")))
    # twos, weights 1/2/3, seeded: the kernel model fed the same draws.
    order = _twos_expected((1, 2, 3), 8)
    setup = Setup((ServiceSetup(TCP80, "twos", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=2),
                                                DestSetup(RS3, weight=3))),))
    steps, conns = held(order, 46000)
    rows.append(Row(
        "twos-seeded", "twos with hash_seed 1: the choices of the kernel's ip_vs_twos.c fed the engines' seeded "
        "draws (two weighted draws, the less loaded by overhead/weight wins)",
        setup, steps, counts(order, (RS3, RS2, RS1)), (ServiceExpect(TCP80, 8, 8, 8 * size),), conns,
        tags=("sched", "twos")))
    return rows


def build_rows() -> tuple[Row, ...]:
    rows = (_dr_flow_rows() + _udp_rows() + _scheduling_rows() + _no_dest_rows() + _lookup_rows()
            + _tcp_flag_rows() + _l2_and_table_rows() + _deleted_dest_rows() + _bad_input_rows() + _icmp_rows()
            + _syn_retrans_rows() + _persistence_rows() + _port_zero_rows() + _fwmark_rows() + _timeout_rows() + _fnat_rows() + _tun_rows()
            + _icmp_translation_rows() + _sp_rows() + _overload_rows() + _list_sched_rows()
            + _locality_rows() + _hashing_rows() + _nat_rows() + _proxy_rows() + _frag_rows() + _fault_rows())
    ids = [r.id for r in rows]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate row ids: {duplicates}"
    return tuple(rows)


def rows_by_id() -> dict[str, Row]:
    return {row.id: row for row in build_rows()}


# ---- applying a row to an engine (imports the control-plane types lazily) ----------------


def service_key(ref: SvcRef):
    from lb.model import ServiceKey

    return ServiceKey(*ref)


def dest_spec(dest: DestSetup):
    from lb.model import DestSpec

    return DestSpec(dest.addr, dest.port, dest.fwd, dest.weight, dest.u_threshold, dest.l_threshold)


def fwd_state(dest: DestSetup):
    from lb.engine import FwdState

    if not dest.l2:
        return None
    return FwdState(ifindex=IFINDEX, dst_mac=dest.mac, src_mac=DIRECTOR_MAC, saddr=dest.saddr, mtu=dest.mtu)


def sp_conf(fields: tuple[tuple[str, object], ...]):
    from lb.model import SynproxyConf

    return SynproxyConf(**dict(fields))  # type: ignore[arg-type]


def install_setup(engine: object, setup: Setup) -> None:
    """Add the setup's services, local addresses and destinations (in order) and their forwarding state."""
    from lb.model import ServiceSpec

    if setup.timeouts is not None:
        engine.set_timeouts(*setup.timeouts)  # type: ignore[attr-defined]
    if setup.local_addrs:
        engine.set_local_addrs(setup.local_addrs)  # type: ignore[attr-defined]
    for svc in setup.services:
        key = service_key(svc.ref)
        engine.add_service(ServiceSpec(key, svc.sched, svc.persistent, svc.netmask, svc.toa,  # type: ignore[attr-defined]
                                       svc.synproxy, sched_flags=svc.sched_flags, ops=svc.ops,
                                       proxy_protocol=svc.proxy_protocol))
        if svc.sp_conf is not None:
            engine.set_synproxy(key, sp_conf(svc.sp_conf))  # type: ignore[attr-defined]
        for laddr in svc.laddrs:
            engine.add_laddr(key, laddr)  # type: ignore[attr-defined]
        for dest in svc.dests:
            engine.add_dest(key, dest_spec(dest))  # type: ignore[attr-defined]
            engine.set_fwd(key, dest.addr, dest.port, fwd_state(dest))  # type: ignore[attr-defined]


def apply_config_step(engine: object, step: ConfigStep) -> None:
    key = service_key(step.service)
    e = engine
    if step.op == "del_service":
        e.del_service(key)  # type: ignore[attr-defined]
        return
    if step.op == "expire":  # the adapter's periodic sweep: expiry and the schedulers' timers
        e.expire(step.now_ms)  # type: ignore[attr-defined]
        return
    dest = step.dest
    assert dest is not None, f"{step.op} needs a destination"
    if step.op == "add_dest":
        e.add_dest(key, dest_spec(dest))  # type: ignore[attr-defined]
    elif step.op == "edit_dest":
        e.edit_dest(key, dest_spec(dest))  # type: ignore[attr-defined]
    elif step.op == "del_dest":
        e.del_dest(key, dest.addr, dest.port)  # type: ignore[attr-defined]
    elif step.op == "set_fwd":
        e.set_fwd(key, dest.addr, dest.port, fwd_state(dest))  # type: ignore[attr-defined]
    else:
        raise ValueError(f"unknown config op {step.op!r}")


# ---- the engines under test --------------------------------------------------------------


@dataclass(frozen=True)
class EngineFactory:
    id: str
    make: object  # Callable[[int], Engine] taking conn_max (0 = default), or None when unavailable
    unavailable: str = ""  # why `make` is None


def engine_factories() -> list[EngineFactory]:
    """PyEngine always; CEngine when lb.fastpath imports (else a reason to skip). make(conn_max, **cfg) takes
    the other lb_config fields (hash_buckets, hash_seed, lport_min, lport_max); hash_seed defaults to HASH_SEED."""
    from lb.pyengine import PyEngine

    def make_py(conn_max: int = 0, **cfg: int) -> object:
        return PyEngine(conn_max=conn_max, **{"hash_seed": HASH_SEED, **cfg})

    factories = [EngineFactory("py", make_py)]
    try:
        from lb.fastpath import CEngine
    except Exception as exc:  # ImportError, or a build that fails to load
        factories.append(EngineFactory("c", None, f"C fast path not built: {type(exc).__name__}: {exc}"))
    else:
        def make_c(conn_max: int = 0, **cfg: int) -> object:
            return CEngine(conn_max=conn_max, **{"hash_seed": HASH_SEED, **cfg})

        factories.append(EngineFactory("c", make_c))
        factories.append(EngineFactory("c-inplace", make_c_inplace))
    return factories


def make_c_inplace(conn_max: int = 0, **cfg: int) -> object:
    """CEngine whose packets go through lb_process_inplace, as the NFQUEUE adapter sends them: on a
    writable copy, the lent bytes read back as the action's out when they changed (DR: TTL and checksum
    in place, out_len 0), so every row must give the same actions as through lb_process."""
    import dataclasses

    from lb._ffi import ffi, lib
    from lb.engine import Action
    from lb.fastpath import CEngine

    class InplaceCEngine(CEngine):
        def process(self, packet: bytes, now_ms: int, mark: int = 0, loopback: bool = False) -> Action:
            lent = ffi.new("uint8_t[]", packet or b"\0")
            flags = lib.LB_PKT_F_LOOPBACK if loopback else 0
            act = self._act
            rc = lib.lb_process_inplace(self._lb, lent, len(packet), mark, flags, now_ms, self._out, lib.LB_PKT_MAX, act)
            assert rc == 0, rc
            changed = bytes(ffi.buffer(lent, len(packet)))
            if changed == packet:
                return self._action()
            assert act.verdict == lib.LB_V_XMIT_L2 and act.out_len == 0, "lent bytes change only to be sent"
            return dataclasses.replace(self._action(), out=changed)

    return InplaceCEngine(conn_max=conn_max, **{"hash_seed": HASH_SEED, **cfg})


def make_engine(factory: EngineFactory, setup: Setup) -> object:
    return factory.make(setup.conn_max, lport_min=setup.lport_min, lport_max=setup.lport_max)  # type: ignore[operator]


def reason_counts(counters: dict) -> dict[str, int]:
    """Normalise an engine's counters() to {REASON_NAME: n} for the non-zero per-reason counts."""
    from lb.engine import Reason

    result: dict[str, int] = {}
    for key, value in counters.items():
        if isinstance(key, int):
            name = Reason(key).name
        else:
            name = str(key).upper()
            if name.startswith("R_"):
                name = name[2:]
            if name.startswith("LB_R_"):
                name = name[5:]
        if name in Reason.__members__ and value:
            result[name] = int(value)
    return result
