"""lb_tcp_segment, lb_tcp_gso_prepare and lb_csum_complete (native/src/gso.c), checked with scapy.

What lbd --gso does with the super-packets NFQA_CFG_F_GSO hands over must be what the kernel's
TCP segmentation would have produced: same headers, sequence numbers advanced, IP IDs
incremented, CWR on the first segment only, FIN/PSH on the last only, every checksum valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from scapy.all import IP, TCP, UDP, Raw, raw

import packet_table as table
from lb._ffi import ffi, lib

CLIENT, VIP = "192.0.2.7", "10.0.0.100"
SLOTS = 160


def segment(pkt: bytes, mtu: int, max_segs: int = SLOTS, slot: int | None = None) -> int | list[bytes]:
    slot = slot or mtu
    out = ffi.new("uint8_t[]", slot * max_segs)
    lens = ffi.new("uint32_t[]", max_segs)
    k = lib.lb_tcp_segment(pkt, len(pkt), mtu, out, slot, lens, max_segs)
    if k <= 0:
        return int(k)
    return [bytes(ffi.buffer(out + i * slot, lens[i])) for i in range(k)]


def checksums_ok(seg: bytes) -> bool:
    """scapy recomputes both checksums from scratch: equal to what is in the bytes."""
    p = IP(seg)
    q = p.copy()
    del q.chksum
    del q[TCP].chksum
    q = IP(raw(q))
    return bool(p.chksum == q.chksum and p[TCP].chksum == q[TCP].chksum)


@dataclass(frozen=True)
class Case:
    name: str
    payload: int
    mtu: int
    flags: str
    options: tuple[tuple[str, object], ...] = ()
    ip_flags: str = "DF"


TS = (("NOP", None), ("NOP", None), ("Timestamp", (7, 9)))
CASES = [
    Case("timestamps_1500", 64000, 1500, "PA", TS),
    Case("no_options_exact_multiple", 1460 * 4, 1500, "A"),
    Case("fin_psh_cwr_ece", 5000, 1500, "FPACE", TS),
    Case("small_mtu", 20000, 576, "PA", TS),
    Case("jumbo", 60000, 9000, "A"),
    Case("df_clear", 3000, 1500, "PA", (), ""),
    Case("fits_already", 1000, 1500, "PA", TS),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_segments_like_the_kernel(case: Case) -> None:
    data = bytes((i * 7 + 3) & 0xFF for i in range(case.payload))
    orig = IP(src=CLIENT, dst=VIP, id=0xFFFE, flags=case.ip_flags) / TCP(
        sport=40000, dport=80, seq=0xFFFFF000, ack=77, flags=case.flags, window=501,
        options=list(case.options)) / Raw(data)
    pkt = raw(orig)
    segs = segment(pkt, case.mtu)
    assert isinstance(segs, list)
    hlen = len(pkt) - case.payload
    mss = case.mtu - hlen
    assert len(segs) == -(-case.payload // mss)
    joined = b""
    for i, seg in enumerate(segs):
        p = IP(seg)
        last = i == len(segs) - 1
        assert len(seg) <= case.mtu and p.len == len(seg)
        assert checksums_ok(seg), f"segment {i}: bad checksum"
        assert p.id == (0xFFFE + i) & 0xFFFF
        assert p.flags == orig.flags and p.ttl == orig.ttl
        assert p[TCP].seq == (orig[TCP].seq + i * mss) & 0xFFFFFFFF  # wraps like TCP
        assert (p[TCP].ack, p[TCP].window, p[TCP].options) == (77, 501, orig[TCP].options)
        want = set(str(orig[TCP].flags))
        if i > 0:
            want.discard("C")
        if not last:
            want -= {"F", "P"}
        assert set(str(p[TCP].flags)) == want, f"segment {i} flags {p[TCP].flags}"
        joined += bytes(p[TCP].payload)
    assert joined == data


@pytest.mark.parametrize(("name", "pkt", "mtu", "max_segs", "slot", "expected"), [
    ("udp", raw(IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=80) / Raw(b"x" * 3000)), 1500, SLOTS, None, "EINVAL"),
    ("urg", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="UA", urgptr=5) / Raw(b"x" * 3000)), 1500, SLOTS, None, "EINVAL"),
    ("no_payload", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A")), 1500, SLOTS, None, "EINVAL"),
    ("truncated", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A") / Raw(b"x" * 3000))[:-1], 1500, SLOTS, None, "EINVAL"),
    ("fragment", raw(IP(src=CLIENT, dst=VIP, flags="MF") / TCP(flags="A") / Raw(b"x" * 3000)), 1500, SLOTS, None,
     "EINVAL"),
    ("mtu_below_headers", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A") / Raw(b"x" * 3000)), 40, SLOTS, 64, "EINVAL"),
    ("too_many_segments", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A") / Raw(b"x" * 3000)), 1500, 2, None, "ENOSPC"),
    ("slot_too_small", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A") / Raw(b"x" * 3000)), 1500, SLOTS, 1000, "ENOSPC"),
    ("ipv6", bytes([0x60]) + bytes(39), 1500, SLOTS, None, "EINVAL"),
])
def test_refusals(name: str, pkt: bytes, mtu: int, max_segs: int, slot: int | None, expected: str) -> None:
    assert segment(pkt, mtu, max_segs, slot) == getattr(lib, f"LB_{expected}")


def _partial(pkt: bytes, proto_off: int) -> bytes:
    """The packet as CHECKSUM_PARTIAL leaves it: the L4 checksum field holds the pseudo-header sum."""
    p = IP(pkt)
    l4len = len(pkt) - p.ihl * 4
    words = [int.from_bytes(pkt[12:14], "big"), int.from_bytes(pkt[14:16], "big"),
             int.from_bytes(pkt[16:18], "big"), int.from_bytes(pkt[18:20], "big"), p.proto, l4len]
    s = sum(words)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    off = p.ihl * 4 + proto_off
    return pkt[:off] + s.to_bytes(2, "big") + pkt[off + 2:]


@pytest.mark.parametrize(("name", "pkt", "field"), [
    ("tcp", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="PA", options=list(TS)) / Raw(b"hello world!")), 16),
    ("tcp_odd", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="PA") / Raw(b"odd")), 16),
    ("udp", raw(IP(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=80) / Raw(b"q" * 33)), 6),
])
def test_csum_complete(name: str, pkt: bytes, field: int) -> None:
    buf = ffi.new("uint8_t[]", _partial(pkt, field))
    assert lib.lb_csum_complete(buf, len(pkt)) == lib.LB_OK
    assert bytes(ffi.buffer(buf, len(pkt))) == pkt  # scapy computed the full checksum of the original


@pytest.mark.parametrize("pkt", [
    raw(IP(src=CLIENT, dst=VIP) / Raw(b"\x00" * 8)),  # protocol 0
    raw(IP(src=CLIENT, dst=VIP) / TCP())[:30],  # TCP header cut
    b"\x45",
])
def test_csum_complete_refuses(pkt: bytes) -> None:
    buf = ffi.new("uint8_t[]", pkt)
    assert lib.lb_csum_complete(buf, len(pkt)) == lib.LB_EINVAL


def _super_packet(case: Case, check: int | None = None) -> bytes:
    data = bytes((i * 5 + 1) & 0xFF for i in range(case.payload))
    tcp = TCP(sport=40000, dport=80, seq=123456, ack=77, flags=case.flags, options=list(case.options))
    if check is not None:
        tcp.chksum = check
    return raw(IP(src=CLIENT, dst=VIP, flags=case.ip_flags) / tcp / Raw(data))


WHOLE_CASES = [c for c in CASES if c.name != "fits_already"]


@pytest.mark.parametrize("stale", [None, 0x1234], ids=["full_checksum", "stale_gro_checksum"])
@pytest.mark.parametrize("case", WHOLE_CASES, ids=[c.name for c in WHOLE_CASES])
def test_gso_prepare_leaves_the_partial_checksum_and_the_cut(case: Case, stale: int | None) -> None:
    """A super-packet sent whole (DR): its checksum field must be the CHECKSUM_PARTIAL form, whatever
    it held (a GRO'd packet keeps its first segment's checksum), so the device's completion is right."""
    pkt = _super_packet(case, stale)
    buf = ffi.new("uint8_t[]", pkt)
    info = ffi.new("struct lb_gso_whole *")
    assert lib.lb_tcp_gso_prepare(buf, len(pkt), case.mtu, info) == lib.LB_OK
    prepared = bytes(ffi.buffer(buf, len(pkt)))
    assert prepared == _partial(_super_packet(case), 16)
    hlen = len(pkt) - case.payload
    assert (info.l4_off, info.hdr_len, info.mss) == (20, hlen, case.mtu - hlen)
    assert info.cwr == ("C" in case.flags)
    assert lib.lb_csum_complete(buf, len(pkt)) == lib.LB_OK  # what the device does with it
    assert bytes(ffi.buffer(buf, len(pkt))) == _super_packet(case)


@pytest.mark.parametrize(("name", "pkt", "mtu"), [
    ("fits_already", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A") / Raw(b"x" * 1000)), 1500),
    ("udp", raw(IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=80) / Raw(b"x" * 3000)), 1500),
    ("urg", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="UA", urgptr=5) / Raw(b"x" * 3000)), 1500),
    ("truncated", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A") / Raw(b"x" * 3000))[:-1], 1500),
    ("fragment", raw(IP(src=CLIENT, dst=VIP, flags="MF") / TCP(flags="A") / Raw(b"x" * 3000)), 1500),
    ("mtu_below_headers", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A") / Raw(b"x" * 3000)), 40),
    ("tcp_header_cut", raw(IP(src=CLIENT, dst=VIP) / TCP(flags="A"))[:30], 20),
])
def test_gso_prepare_refuses_and_leaves_the_bytes(name: str, pkt: bytes, mtu: int) -> None:
    buf = ffi.new("uint8_t[]", pkt)
    info = ffi.new("struct lb_gso_whole *")
    assert lib.lb_tcp_gso_prepare(buf, len(pkt), mtu, info) == lib.LB_EINVAL
    assert bytes(ffi.buffer(buf, len(pkt))) == pkt


# ---- lb_path_mtu: the cut size the adapter takes for a GSO packet of a connection ----


def _c_engine(setup: table.Setup) -> object:
    factory = next(f for f in table.engine_factories() if f.id == "c")
    if factory.make is None:
        pytest.skip(factory.unavailable)
    engine = table.make_engine(factory, setup)
    table.install_setup(engine, setup)
    return engine


def _dr_setup(mtu: int) -> table.Setup:
    return table.Setup((table.ServiceSetup(table.TCP80, "rr", (table.DestSetup(table.RS1, mtu=mtu),)),))


@pytest.mark.parametrize(("name", "setup", "expected"), [
    ("dr", _dr_setup(1500), 1500),
    ("dr_jumbo", _dr_setup(9000), 9000),
    ("tunnel_leaves_room_for_the_outer_header", table._tun_setup(), 1480),
    ("tunnel_small_path", table._tun_setup(mtu=600), 580),
    ("fullnat", table._fnat_setup(mtu=1400), 1400),
])
def test_path_mtu_of_a_connection(name: str, setup: table.Setup, expected: int) -> None:
    engine = _c_engine(setup)
    data = table.tcp(flags="PA", seq=1001, ack=5001, payload=b"d" * 3000)
    assert lib.lb_path_mtu(engine._lb, data, len(data), 0) == 0  # type: ignore[attr-defined]  # no connection yet
    syn = table.tcp(flags="S")
    assert engine.process(syn, 0).verdict.name == "XMIT_L2"  # type: ignore[attr-defined]
    before = (engine.counters(), engine.connections(0))  # type: ignore[attr-defined]
    assert lib.lb_path_mtu(engine._lb, data, len(data), 1) == expected  # type: ignore[attr-defined]
    # Read only: no counter, state or timer moved.
    assert (engine.counters(), engine.connections(0)) == before  # type: ignore[attr-defined]


def test_path_mtu_knows_no_reply_or_unparsable_packet() -> None:
    engine = _c_engine(_dr_setup(1500))
    engine.process(table.tcp(flags="S"), 0)  # type: ignore[attr-defined]
    reply = table.tcp(sport=80, dport=40000, flags="SA", src=table.VIP, dst=table.CLIENT1)
    assert lib.lb_path_mtu(engine._lb, reply, len(reply), 1) == 0  # type: ignore[attr-defined]
    assert lib.lb_path_mtu(engine._lb, b"\x45", 1, 1) == 0  # type: ignore[attr-defined]
