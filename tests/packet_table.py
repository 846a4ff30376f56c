"""THE packet table: what each engine must do with each packet (docs/fastpath.md).

`build_rows()` returns a list of self-contained `Row`s. A row names the tables to
install (`Setup`), then a sequence of steps (`PacketStep`: an IPv4 packet at a
time with the expected action; `ConfigStep`: a table change between packets), then
the state expected afterwards (per-destination counts and stats in kernel list
order, per-service stats, live connections). Per-reason packet counters are
expected to equal the reasons of the row's packet steps.

Inputs and expected outputs are built with scapy, independently of the engines:
XMIT_L2 rows carry the full frame Ether(dst=real server, src=director)/packet,
ANSWER rows the complete ICMP port-unreachable packet (format: lb/pyengine/icmp.py).
Nothing here imports an engine, and rows are plain data (bytes, ints, strings), so
the C microbenchmark can replay them; scapy is needed only to build the table.

Addresses come from the documentation ranges (RFC 5737) and never leave the process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Union

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

# Timeouts from docs/fastpath.md, milliseconds (stated here, not read from an engine).
T_NONE, T_ES, T_SR, T_FW, T_TW, T_CL, T_UDP = 2_000, 900_000, 60_000, 120_000, 120_000, 10_000, 300_000

SvcRef = tuple[int, str, int]  # (proto, vaddr, vport)
TCP80: SvcRef = (PROTO_TCP, VIP, 80)
UDP53: SvcRef = (PROTO_UDP, VIP, 53)


# ---- row data types ------------------------------------------------------------------


@dataclass(frozen=True)
class DestSetup:
    addr: str
    port: int = 80
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    l2: bool = True  # install forwarding state (ifindex IFINDEX, RS_MACS[addr], DIRECTOR_MAC)

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


@dataclass(frozen=True)
class Setup:
    services: tuple[ServiceSetup, ...]
    conn_max: int = 0  # 0 = the engine's default
    timeouts: tuple[int, int, int] | None = None  # set_timeouts(tcp, tcpfin, udp) seconds, None = defaults


@dataclass(frozen=True)
class PacketStep:
    packet: bytes
    now_ms: int
    verdict: str  # lb.engine.Verdict member name
    reason: str  # lb.engine.Reason member name
    out: bytes = b""  # MANGLE/ANSWER bytes
    ifindex: int = 0  # XMIT_L2
    l2hdr: bytes = b""  # XMIT_L2
    frame: bytes = b""  # XMIT_L2: the whole frame that must leave (l2hdr + packet)
    note: str = ""


@dataclass(frozen=True)
class ConfigStep:
    op: str  # add_dest | edit_dest | del_dest | set_fwd | del_service
    service: SvcRef
    dest: DestSetup | None = None
    now_ms: int = 0


Step = Union[PacketStep, ConfigStep]


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


@dataclass(frozen=True)
class ServiceExpect:
    ref: SvcRef
    conns: int = 0
    inpkts: int = 0
    inbytes: int = 0


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

    @property
    def packet_steps(self) -> tuple[PacketStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, PacketStep))


# ---- packet builders (scapy) --------------------------------------------------------


def _scapy():  # type: ignore[no-untyped-def]
    import scapy.all as scapy  # imported lazily: only table building needs it

    return scapy


def ip_header(**kw: object):  # type: ignore[no-untyped-def]
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


def expected_port_unreachable(packet: bytes) -> bytes:
    """IPv4 (TOS 0, id 0, DF clear, TTL 64) from the VIP to the client, ICMP 3/3 quoting
    the original header (with options) and the first 8 payload bytes."""
    s = _scapy()
    original = s.IP(packet)
    quote = packet[: original.ihl * 4 + 8]
    answer = s.IP(src=original.dst, dst=original.src, tos=0, id=0, flags=0, frag=0, ttl=64, proto=1) / s.ICMP(
        type=3, code=3
    ) / s.Raw(quote)
    return bytes(answer)


def fwd(packet: bytes, now_ms: int, dest: str, note: str = "") -> PacketStep:
    frame = expected_frame(dest, packet)
    return PacketStep(packet, now_ms, "XMIT_L2", "FORWARDED", ifindex=IFINDEX, l2hdr=frame[:14],
                      frame=frame, note=note or f"forwarded to {dest}")


def verdict(packet: bytes, now_ms: int, verdict_name: str, reason: str, note: str = "") -> PacketStep:
    return PacketStep(packet, now_ms, verdict_name, reason, note=note)


def answer(packet: bytes, now_ms: int, note: str = "ICMP port unreachable") -> PacketStep:
    return PacketStep(packet, now_ms, "ANSWER", "NO_DEST", out=expected_port_unreachable(packet), note=note)


def conn(state: str, expires_ms: int, dest: str, *, cport: int = 40000, caddr: str = CLIENT1,
         svc: SvcRef = TCP80, dport: int = 80) -> ConnExpect:
    return ConnExpect(svc[0], caddr, cport, svc[1], svc[2], dest, dport, state, expires_ms)


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

    def row(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int, active: int,
            names: tuple[str, ...]) -> Row:
        inbytes = sum(n[x] for x in names)
        last = steps[-1].now_ms
        return Row(
            row_id, description, setup, steps,
            (DestExpect(TCP80, RS1, active=active, inactive=1 - active, conns=1, inpkts=len(names), inbytes=inbytes,
                        handshakes=int("ack" in names)),
             udp_dest),
            (ServiceExpect(TCP80, 1, len(names), inbytes), udp_svc),
            (conn(state, timeout, RS1),), check_ms=last, tags=("dr",))

    return [
        row("dr-syn", "SYN to the VIP creates an entry (SYN_RECV) and leaves unchanged with the real server's MAC",
            (fwd(syn, 0, RS1),), "SYN_RECV", T_SR, 0, ("syn",)),
        row("dr-ack", "the handshake's ACK makes the entry ESTABLISHED (active) and is forwarded unchanged",
            (fwd(syn, 0, RS1), fwd(ack, 10, RS1)), "ESTABLISHED", T_ES, 1, ("syn", "ack")),
        row("dr-data", "data on an established flow is forwarded unchanged; inbytes counts IP total length",
            (fwd(syn, 0, RS1), fwd(ack, 10, RS1), fwd(data, 20, RS1)), "ESTABLISHED", T_ES, 1, ("syn", "ack", "data")),
        row("dr-fin", "the client's FIN moves ESTABLISHED to FIN_WAIT (INPUT-ONLY) and makes it inactive",
            (fwd(syn, 0, RS1), fwd(ack, 10, RS1), fwd(data, 20, RS1), fwd(fin, 30, RS1)), "FIN_WAIT", T_FW, 0,
            ("syn", "ack", "data", "fin")),
        row("dr-rst", "the client's RST moves ESTABLISHED to CLOSE and is still forwarded",
            (fwd(syn, 0, RS1), fwd(ack, 10, RS1), fwd(rst, 20, RS1)), "CLOSE", T_CL, 0, ("syn", "ack", "rst")),
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
        setup, tuple(fwd(p, i, d) for i, (p, d) in enumerate(zip(syns, order))),
        (DestExpect(TCP80, RS3, inactive=2, conns=2, inpkts=2, inbytes=2 * size),
         DestExpect(TCP80, RS2, inactive=1, conns=1, inpkts=1, inbytes=size),
         DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=size)),
        (ServiceExpect(TCP80, 4, 4, 4 * size),),
        tuple(conn("SYN_RECV", T_SR - (3 - i), d, cport=41000 + i) for i, d in enumerate(order)), check_ms=3,
        tags=("sched",)))

    # wlc with RS1 weight 1, RS2 weight 3 (list RS2, RS1): RS2, RS1, RS2, RS2, RS2, RS1.
    setup = Setup((ServiceSetup(TCP80, "wlc", (DestSetup(RS1, weight=1), DestSetup(RS2, weight=3))),))
    syns = [tcp(sport=42000 + i) for i in range(6)]
    order = [RS2, RS1, RS2, RS2, RS2, RS1]
    rows.append(Row(
        "wlc-weights", "wlc: overhead/weight by cross-multiplication, ties keep the earlier destination",
        setup, tuple(fwd(p, 0, d) for p, d in zip(syns, order)),
        (DestExpect(TCP80, RS2, inactive=4, conns=4, inpkts=4, inbytes=4 * size),
         DestExpect(TCP80, RS1, inactive=2, conns=2, inpkts=2, inbytes=2 * size)),
        (ServiceExpect(TCP80, 6, 6, 6 * size),),
        tuple(conn("SYN_RECV", T_SR, d, cport=42000 + i) for i, d in enumerate(order)), check_ms=0,
        tags=("sched",)))

    # wlc: an active connection weighs 256 inactive ones.
    setup = Setup((ServiceSetup(TCP80, "wlc", (DestSetup(RS1), DestSetup(RS2))),))
    s1, a1 = tcp(sport=43000), tcp(sport=43000, flags="A", seq=1001, ack=1)
    s2, s3 = tcp(sport=43001), tcp(sport=43002)
    rows.append(Row(
        "wlc-active-weighs-more", "wlc: RS2 with one active entry loses to RS1 with one inactive entry",
        setup, (fwd(s1, 0, RS2), fwd(a1, 1, RS2), fwd(s2, 2, RS1), fwd(s3, 3, RS1)),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),
         DestExpect(TCP80, RS1, inactive=2, conns=2, inpkts=2, inbytes=2 * size)),
        (ServiceExpect(TCP80, 3, 4, 4 * size),),
        (conn("ESTABLISHED", T_ES - 2, RS2, cport=43000), conn("SYN_RECV", T_SR - 1, RS1, cport=43001),
         conn("SYN_RECV", T_SR, RS1, cport=43002)), check_ms=3, tags=("sched",)))

    # weight 0: never chosen; alone, it means no destination.
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2, weight=0))),))
    syns = [tcp(sport=44000 + i) for i in range(3)]
    rows.append(Row(
        "weight0-skipped", "rr never picks a weight-0 destination (RS2 is first in the list)",
        setup, tuple(fwd(p, i, RS1) for i, p in enumerate(syns)),
        (DestExpect(TCP80, RS2), DestExpect(TCP80, RS1, inactive=3, conns=3, inpkts=3, inbytes=3 * size)),
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
        (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=size),),
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
                    active: int, conns: int = 1, tags: tuple[str, ...] = ()) -> Row:
        pkts = [s for s in steps if isinstance(s, PacketStep)]
        inbytes = sum(ip_total_length(p.packet) for p in pkts)
        last = pkts[-1].now_ms
        return Row(row_id, description, setup, steps,
                   (DestExpect(TCP80, RS1, active=active, inactive=1 - active, conns=conns, inpkts=len(pkts),
                               inbytes=inbytes, handshakes=active), DestExpect(UDP53, RS1, 53)),
                   (ServiceExpect(TCP80, conns, len(pkts), inbytes), ServiceExpect(UDP53)),
                   (conn(state, timeout, RS1),), check_ms=last, tags=("tcp-state",) + tags)

    rows.append(single_conn("synack-creates", "a SYN+ACK without an entry has SYN: it is scheduled (syn event)",
                            (fwd(tcp(flags="SA", ack=1), 0, RS1),), "SYN_RECV", T_SR, 0))
    rows.append(single_conn("synrst-creates", "a SYN+RST without an entry has SYN: scheduled, rst event NONE -> CLOSE",
                            (fwd(tcp(flags="SR"), 0, RS1),), "CLOSE", T_CL, 0))
    rows.append(single_conn("synfin-creates", "a SYN+FIN without an entry: syn wins over fin -> SYN_RECV",
                            (fwd(tcp(flags="SF"), 0, RS1),), "SYN_RECV", T_SR, 0))
    ack = tcp(flags="A", seq=1001, ack=1)
    rows.append(single_conn("syn-on-established", "a SYN on an ESTABLISHED entry keeps it (no reuse), same server",
                            (fwd(syn, 0, RS1), fwd(ack, 1, RS1), fwd(syn, 2, RS1)), "ESTABLISHED", T_ES, 1))
    rows.append(single_conn("noflags-keeps-state", "a TCP segment without SYN/FIN/ACK/RST changes no state but "
                            "restarts the timer", (fwd(syn, 0, RS1), fwd(ack, 1, RS1),
                                                   fwd(tcp(flags="", seq=1001), 5000, RS1)), "ESTABLISHED", T_ES, 1))
    rows.append(single_conn("expiry-boundary-alive", "an entry is alive 1 ms before its expiry time",
                            (fwd(syn, 0, RS1), fwd(ack, T_SR - 1, RS1)), "ESTABLISHED", T_ES, 1, tags=("expiry",)))
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
             DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=size)),
            (ServiceExpect(TCP80, 2, old + 1, (old + 1) * size),), (conn("SYN_RECV", T_SR, RS1),),
            check_ms=new_syn.now_ms, tags=("tcp-state", "reuse")))
    synack = tcp(flags="SA", ack=1)
    rows.append(Row(
        "no-reuse-synack", "a SYN+ACK on a TIME_WAIT entry is not a new connection: syn event TIME_WAIT -> SYN_RECV",
        setup2, (fwd(syn, 0, RS2), fwd(fin, 1, RS2), fwd(synack, 2, RS2)),
        (DestExpect(TCP80, RS2, inactive=1, conns=1, inpkts=3, inbytes=3 * size), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 3, 3 * size),), (conn("SYN_RECV", T_SR, RS2),), check_ms=2,
        tags=("tcp-state", "reuse")))
    return rows


def _l2_and_table_rows() -> list[Row]:
    rows = []
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, l2=False),)),))
    syn = tcp()
    size = ip_total_length(syn)
    rows.append(Row(
        "no-l2", "a destination without forwarding state: the entry is made and counted, the packet dropped",
        setup, (verdict(syn, 0, "DROP", "NO_L2"),),
        (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 1, 1, size),),
        (conn("SYN_RECV", T_SR, RS1),), tags=("l2",)))
    rows.append(Row(
        "no-l2-then-resolved", "once forwarding state is installed the same entry's packets are forwarded",
        setup, (verdict(syn, 0, "DROP", "NO_L2"), ConfigStep("set_fwd", TCP80, DestSetup(RS1), 1),
                fwd(tcp(flags="A", seq=1001, ack=1), 2, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (conn("ESTABLISHED", T_ES, RS1),), check_ms=2, tags=("l2",)))
    rows.append(Row(
        "l2-invalidated", "invalidating a destination's forwarding state drops its packets with NO_L2",
        Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),)),
        (fwd(syn, 0, RS1), ConfigStep("set_fwd", TCP80, DestSetup(RS1, l2=False), 1),
         verdict(tcp(flags="A", seq=1001, ack=1), 2, "DROP", "NO_L2")),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (conn("ESTABLISHED", T_ES, RS1),), check_ms=2, tags=("l2",)))

    full = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),), conn_max=1)
    a, b = tcp(sport=46000), tcp(sport=46001)
    rows.append(Row(
        "table-full", "with conn_max=1 a second connection is dropped; after the first expires it gets in",
        full, (fwd(a, 0, RS1), verdict(b, 1000, "DROP", "TABLE_FULL"), fwd(b, T_SR + 1, RS1)),
        (DestExpect(TCP80, RS1, inactive=1, conns=2, inpkts=2, inbytes=2 * size),), (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (conn("SYN_RECV", T_SR, RS1, cport=46001),), check_ms=T_SR + 1, tags=("table-full",)))
    rows.append(Row(
        "table-full-existing-flow", "a full table still forwards packets of existing entries",
        full, (fwd(a, 0, RS1), verdict(b, 1, "DROP", "TABLE_FULL"), fwd(tcp(sport=46000, flags="A", seq=1001, ack=1), 2, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (conn("ESTABLISHED", T_ES, RS1, cport=46000),), check_ms=2, tags=("table-full",)))
    full_rr = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),), conn_max=1)
    c = tcp(sport=46002)
    rows.append(Row(
        "table-full-advances-rr", "scheduling happens before the table-full check, so a dropped SYN still moved "
        "the rr cursor (RS2, [RS1 dropped], RS2)",
        full_rr, (fwd(a, 0, RS2), verdict(b, 1, "DROP", "TABLE_FULL"), fwd(c, T_SR + 1, RS2)),
        (DestExpect(TCP80, RS2, inactive=1, conns=2, inpkts=2, inbytes=2 * size), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 2, 2, 2 * size),), (conn("SYN_RECV", T_SR, RS2, cport=46002),), check_ms=T_SR + 1,
        tags=("table-full", "sched")))
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
        (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 2, 3, 3 * size),),
        (conn("ESTABLISHED", T_ES - 2, RS2), conn("SYN_RECV", T_SR, RS1, cport=40001)), check_ms=3,
        tags=("deleted",)))
    rst = tcp(flags="R", seq=1001)
    rows.append(Row(
        "deleted-dest-reuse", "a new SYN on a CLOSE entry of a deleted destination expires it and is scheduled "
        "to a listed destination (reuse is checked before availability)",
        setup, established + (fwd(rst, 2, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 3), fwd(syn, 4, RS1)),
        (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 2, 4, 4 * size),),
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
                   (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=total), DestExpect(UDP53, RS1, 53)),
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


def icmp_error(quote: bytes, icmp_type: int = 3, code: int = 4, *, src: str = CLIENT1, **icmp: object) -> bytes:
    """An ICMP error from the client's side (src) to the VIP quoting `quote`."""
    s = _scapy()
    return bytes(ip_header(src=src) / s.ICMP(type=icmp_type, code=code, **icmp) / s.Raw(quote))


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
        frame = expected_frame(RS1, packet)
        return PacketStep(packet, 20, "XMIT_L2", "ICMP", ifindex=IFINDEX, l2hdr=frame[:14], frame=frame,
                          note="ICMP error forwarded unchanged to the entry's real server")

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
    frame = expected_frame(RS1, udp_error)
    qsize, esize = ip_total_length(query), ip_total_length(udp_error)
    rows.append(Row("icmp-udp-flow", "an ICMP port unreachable about a UDP flow's reply goes to its real server",
                    udp_setup, (fwd(query, 0, RS1), PacketStep(udp_error, 5, "XMIT_L2", "ICMP", ifindex=IFINDEX,
                                                                 l2hdr=frame[:14], frame=frame)),
                    (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2,
                                                        inbytes=qsize + esize)),
                    (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 2, qsize + esize)),
                    (conn("UDP", T_UDP - 5, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=5, tags=("icmp",)))

    no_l2 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, l2=False),)),))
    rows.append(Row("icmp-no-l2", "an ICMP error about an entry whose destination has no forwarding state is dropped "
                    "(and counted)", no_l2, (verdict(syn, 0, "DROP", "NO_L2"), verdict(frag_needed, 20, "DROP", "NO_L2")),
                    (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=2, inbytes=size + ip_total_length(frag_needed)),),
                    (ServiceExpect(TCP80, 1, 2, size + ip_total_length(frag_needed)),),
                    (conn("SYN_RECV", T_SR - 20, RS1),), check_ms=20, tags=("icmp", "l2")))
    two = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    error_frame = expected_frame(RS2, frag_needed)
    rows.append(Row("icmp-deleted-dest", "an ICMP error about an entry of a deleted destination still follows the "
                    "entry (no availability check for ICMP)", two,
                    (fwd(syn, 0, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 1),
                     PacketStep(frag_needed, 20, "XMIT_L2", "ICMP", ifindex=IFINDEX, l2hdr=error_frame[:14],
                                frame=error_frame)),
                    (DestExpect(TCP80, RS1),), (ServiceExpect(TCP80, 1, 2, size + ip_total_length(frag_needed)),),
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
        (DestExpect(TCP80, RS2, inactive=3, conns=3, inpkts=3, inbytes=3 * size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 3, 3, 3 * size),),
        (conn("SYN_RECV", T_SR - 2000, RS2, cport=47000), conn("SYN_RECV", T_SR - 1000, RS2, cport=47001),
         conn("SYN_RECV", T_SR, RS2, cport=47002, caddr=CLIENT2), template24), check_ms=2000, tags=("persist",)))

    net32 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300),))
    rows.append(Row(
        "persist-per-address", "with netmask /32 another client gets its own template (and rr moves on)",
        net32, (fwd(a, 0, RS2), fwd(b, 1, RS2), fwd(c, 2, RS1)),
        (DestExpect(TCP80, RS2, inactive=2, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=size, persist=1)),
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
        (DestExpect(TCP80, RS2, inactive=2, conns=2, inpkts=2, inbytes=2 * size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (conn("SYN_RECV", T_SR - 2, RS2, cport=47000), conn("SYN_RECV", T_SR, RS2, cport=47001),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000)), check_ms=2, tags=("persist",)))

    rows.append(Row(
        "persist-dest-deleted", "a template whose destination was deleted stops matching (kept while it controls a "
        "connection, timer not restarted); the next connection is scheduled afresh with a new template",
        net32, (fwd(a, 0, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 1), fwd(b, 2, RS1)),
        (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=1, inbytes=size, persist=1),),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (conn("SYN_RECV", T_SR - 2, RS2, cport=47000), conn("SYN_RECV", T_SR, RS1, cport=47001),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 2),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS1, 80, "NONE", 300_000)), check_ms=2, tags=("persist", "deleted")))

    full = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300),), conn_max=2)
    rows.append(Row(
        "persist-table-full", "templates take table slots: with conn_max 2 the template and the first connection "
        "fill it; the next connection and a new template are refused",
        full, (fwd(a, 0, RS2), verdict(b, 1, "DROP", "TABLE_FULL", "template found, no slot for the connection"),
               verdict(c, 2, "DROP", "TABLE_FULL", "no slot for the template")),
        (DestExpect(TCP80, RS2, inactive=1, conns=1, inpkts=1, inbytes=size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 1, size),),
        (conn("SYN_RECV", T_SR - 2, RS2, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 1)), check_ms=2,
        tags=("persist", "table-full")))

    short = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),), persistent=10),))
    rows.append(Row(
        "persist-template-rearmed", "a template whose time is up while its connection lives is re-armed for another "
        "period (at its expiry time), then released after the connection",
        short, (fwd(a, 0, RS1), fwd(tcp(sport=47000, flags="A", seq=1001, ack=1), 0, RS1),
                fwd(tcp(sport=47000, flags="R", seq=1001), 25_000, RS1)),
        (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=3, inbytes=3 * size, persist=1, handshakes=1),),
        (ServiceExpect(TCP80, 1, 3, 3 * size),),
        (conn("CLOSE", T_CL, RS1, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS1, 80, "NONE", 30_000 - 25_000)), check_ms=25_000,
        tags=("persist", "expiry")))
    return rows


def _timeout_rows() -> list[Row]:
    setup = Setup(one_dest().services, timeouts=(100, 7, 30))
    syn, ack, fin = tcp(), tcp(flags="A", seq=1001, ack=1), tcp(flags="FA", seq=1001, ack=1)
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


@functools.cache
def build_rows() -> tuple[Row, ...]:
    rows = (_dr_flow_rows() + _udp_rows() + _scheduling_rows() + _no_dest_rows() + _lookup_rows()
            + _tcp_flag_rows() + _l2_and_table_rows() + _deleted_dest_rows() + _bad_input_rows() + _icmp_rows()
            + _syn_retrans_rows() + _persistence_rows() + _timeout_rows())
    ids = [r.id for r in rows]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate row ids: {duplicates}"
    return tuple(rows)


def rows_by_id() -> dict[str, Row]:
    return {row.id: row for row in build_rows()}


# ---- applying a row to an engine (imports the control-plane types lazily) ----------------


def service_key(ref: SvcRef):  # type: ignore[no-untyped-def]
    from lb.model import ServiceKey

    return ServiceKey(*ref)


def dest_spec(dest: DestSetup):  # type: ignore[no-untyped-def]
    from lb.model import DestSpec

    return DestSpec(dest.addr, dest.port, "route", dest.weight, dest.u_threshold, dest.l_threshold)


def fwd_state(dest: DestSetup):  # type: ignore[no-untyped-def]
    from lb.engine import FwdState

    return FwdState(ifindex=IFINDEX, dst_mac=dest.mac, src_mac=DIRECTOR_MAC) if dest.l2 else None


def install_setup(engine: object, setup: Setup) -> None:
    """Add the setup's services and destinations (in order) and their forwarding state."""
    from lb.model import ServiceSpec

    if setup.timeouts is not None:
        engine.set_timeouts(*setup.timeouts)  # type: ignore[attr-defined]
    for svc in setup.services:
        key = service_key(svc.ref)
        engine.add_service(ServiceSpec(key, svc.sched, svc.persistent, svc.netmask))  # type: ignore[attr-defined]
        for dest in svc.dests:
            engine.add_dest(key, dest_spec(dest))  # type: ignore[attr-defined]
            engine.set_fwd(key, dest.addr, dest.port, fwd_state(dest))  # type: ignore[attr-defined]


def apply_config_step(engine: object, step: ConfigStep) -> None:
    key = service_key(step.service)
    e = engine
    if step.op == "del_service":
        e.del_service(key)  # type: ignore[attr-defined]
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
    """PyEngine always; CEngine when lb.fastpath imports (else a reason to skip)."""
    from lb.pyengine import PyEngine

    factories = [EngineFactory("py", lambda conn_max=0: PyEngine(conn_max=conn_max))]
    try:
        from lb.fastpath import CEngine
    except Exception as exc:  # ImportError, or a build that fails to load
        factories.append(EngineFactory("c", None, f"C fast path not built: {type(exc).__name__}: {exc}"))
    else:
        factories.append(EngineFactory("c", lambda conn_max=0: CEngine(conn_max=conn_max, hash_seed=1)))
    return factories


def reason_counts(counters: dict) -> dict[str, int]:  # type: ignore[type-arg]
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
