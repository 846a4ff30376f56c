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

The rows live in tests/packet_rows_*.py, one module per group (DR basics, the tables' edges, malformed
input, ICMP, persistence, scheduling, FULLNAT, IPIP, SYN-proxy, hashing, NAT, PROXY, fragments,
faults), which build on this module's types, builders, shared setups and reference computations;
`build_rows()` gathers them in a fixed order.

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


# ---- more packet builders, shared by several row modules -----------------------------------


def _router_alert() -> list:
    return [_scapy().IPOption_Router_Alert()]


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


def _marked(step: PacketStep, mark: int) -> PacketStep:
    return PacketStep(step.packet, step.now_ms, step.verdict, step.reason, step.out, step.ifindex, step.l2hdr,
                      step.frame, step.note, mark)


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


# ---- setups and constants shared by several row modules (FULLNAT, IPIP, SYN-proxy) ------------------


def _fnat_setup(*, toa: bool = False, laddrs: tuple[str, ...] = (LIP1,), l2: bool = True, mtu: int = 1500,
                lport_min: int = LPORT_MIN, lport_max: int = LPORT_MAX, dests: tuple[str, ...] = (RS1,)) -> Setup:
    return Setup((ServiceSetup(TCP80, "rr", tuple(DestSetup(d, fwd="fullnat", l2=l2, mtu=mtu) for d in dests),
                               toa=toa, laddrs=laddrs),
                  ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd="fullnat"),), laddrs=laddrs)),
                 lport_min=lport_min, lport_max=lport_max)


def _tun_setup(*, saddr: str = TUN_SRC, mtu: int = 1500, l2: bool = True) -> Setup:
    return Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, fwd="tunnel", saddr=saddr, mtu=mtu, l2=l2),)),
                  ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd="tunnel", saddr=saddr),))))


SP_ISN = 1000  # the client's ISN in the SYN-proxy rows
RS_ISN = 7000  # the real server's
SYN_OPTS = [("MSS", 1460), ("SAckOK", b"")]
SP_SYN_OPTS = [("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b"")]  # as the director writes them


def _sp_setup(*, toa: bool = False, conf: tuple[tuple[str, object], ...] | None = None, l2: bool = True) -> Setup:
    return Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, fwd="fullnat", l2=l2),), toa=toa, synproxy=True,
                               laddrs=(LIP1,), sp_conf=conf),))


# ---- the rows: tests/packet_rows_*.py, one module per group, each building on this one -------------------


def build_rows() -> tuple[Row, ...]:
    # The row modules import this one: they are imported here, when the table is built.
    import packet_rows_dr
    import packet_rows_faults
    import packet_rows_fnat
    import packet_rows_frag
    import packet_rows_hashing
    import packet_rows_icmp
    import packet_rows_malformed
    import packet_rows_nat
    import packet_rows_persist
    import packet_rows_proxy
    import packet_rows_sched
    import packet_rows_synproxy
    import packet_rows_tables
    import packet_rows_tun

    rows = (packet_rows_dr.dr_flow_rows() + packet_rows_dr.udp_rows() + packet_rows_sched.scheduling_rows()
            + packet_rows_dr.no_dest_rows() + packet_rows_dr.lookup_rows() + packet_rows_dr.tcp_flag_rows()
            + packet_rows_tables.l2_and_table_rows() + packet_rows_tables.deleted_dest_rows()
            + packet_rows_malformed.rows() + packet_rows_icmp.icmp_rows() + packet_rows_dr.syn_retrans_rows()
            + packet_rows_persist.persistence_rows() + packet_rows_persist.port_zero_rows()
            + packet_rows_persist.fwmark_rows() + packet_rows_dr.timeout_rows() + packet_rows_fnat.rows()
            + packet_rows_tun.rows() + packet_rows_icmp.translation_rows() + packet_rows_synproxy.rows()
            + packet_rows_sched.overload_rows() + packet_rows_sched.list_sched_rows()
            + packet_rows_sched.locality_rows() + packet_rows_hashing.rows() + packet_rows_nat.rows()
            + packet_rows_proxy.rows() + packet_rows_frag.rows() + packet_rows_faults.rows())
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
