"""lb_ip_fragment (native/src/frag.c) and its twin lb.pyengine.frag.fragment, checked with scapy,
and the xmit_failed accounting (lb_count_xmit_failed / count_xmit_failed) of both engines.

What leaves towards a real server as fragments must be what the kernel's ip_fragment would have
made: each fragment at most the MTU, payload cut at multiples of 8 bytes, offsets and MF right,
the identification kept, only copied options in later fragments, every header checksum valid,
and the fragments reassemble to the original datagram.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, IPOption, Raw, defragment, raw
from scapy.all import fragment as scapy_fragment

import packet_table as table
from lb.engine import Reason
from lb.pyengine.frag import fragment as py_fragment

try:
    from lb._ffi import ffi, lib
except ImportError as exc:  # pragma: no cover - the C build is part of `make build`
    pytest.skip(f"C fast path not built: {exc}", allow_module_level=True)

MAX_FRAGS = 8192
LB_EINVAL, LB_ENOSPC = -22, -28


def c_fragment(pkt: bytes, mtu: int, out_cap: int = 1 << 20, max_frags: int = MAX_FRAGS) -> int | list[bytes]:
    out = ffi.new("uint8_t[]", out_cap)
    lens = ffi.new("uint32_t[]", max_frags)
    k = lib.lb_ip_fragment(pkt, len(pkt), mtu, out, out_cap, lens, max_frags)
    if k <= 0:
        return int(k)
    pieces, at = [], 0
    for i in range(k):
        pieces.append(bytes(ffi.buffer(out + at, lens[i])))
        at += lens[i]
    return pieces


def datagram(size: int, *, flags: int = 0, options: list | None = None, ident: int = 777) -> bytes:
    payload = bytes(i & 0xFF for i in range(size - 28 - (4 * len(options) if options else 0)))
    ip = IP(src="192.0.2.10", dst="198.51.100.1", id=ident, flags=flags, ttl=61, options=options or [])
    return raw(ip / UDP(sport=50000, dport=53) / Raw(payload))


def header_ok(piece: bytes) -> bool:
    p = IP(piece)
    q = p.copy()
    del q.chksum
    return bool(IP(raw(q)).chksum == p.chksum)


@pytest.mark.parametrize("size", [1473 + 28, 3028, 8028, 65535])
@pytest.mark.parametrize("mtu", [576, 1280, 1500])
def test_like_scapy_and_reassembles(size: int, mtu: int) -> None:
    pkt = datagram(size)
    got = c_fragment(pkt, mtu)
    assert isinstance(got, list) and got == py_fragment(pkt, mtu)
    unit = (mtu - 20) // 8 * 8
    assert got == [raw(f) for f in scapy_fragment(IP(pkt), fragsize=unit)]  # scapy cuts as ip_fragment
    assert all(len(f) <= mtu and header_ok(f) and IP(f).id == 777 for f in got)
    assert [bool(IP(f).flags.MF) for f in got] == [True] * (len(got) - 1) + [False]
    assert raw(defragment([IP(f) for f in got])[0]) == pkt


def test_fits_is_one_copy_and_df_is_refused() -> None:
    pkt = datagram(1500)
    assert c_fragment(pkt, 1500) == [pkt] == py_fragment(pkt, 1500)
    df = datagram(3028, flags=2)
    assert c_fragment(df, 1500) == LB_EINVAL and py_fragment(df, 1500) is None
    assert c_fragment(datagram(3028), 27) == LB_EINVAL and py_fragment(datagram(3028), 27) is None  # no 8 bytes
    assert c_fragment(b"\x45" + b"\0" * 10, 1500) == LB_EINVAL and py_fragment(b"\x45" + b"\0" * 10, 1500) is None


def test_no_room_is_enospc() -> None:
    pkt = datagram(3028)
    assert c_fragment(pkt, 1500, max_frags=2) == LB_ENOSPC
    assert c_fragment(pkt, 1500, out_cap=3028) == LB_ENOSPC  # two more headers do not fit
    assert c_fragment(pkt, 1500, out_cap=3028 + 40) != LB_ENOSPC


def test_later_fragments_keep_only_copied_options() -> None:
    # Record Route (7, not copied) becomes NOPs after the first fragment; Security (130, copied) stays.
    rr = IPOption(b"\x07\x07\x04" + b"\0\0\0\0" + b"\0")  # RR + EOL-padding byte
    sec = IPOption(b"\x82\x0b" + b"\0" * 9 + b"\0")
    pkt = datagram(3028, options=[rr, sec])
    got = c_fragment(pkt, 1500)
    assert isinstance(got, list) and got == py_fragment(pkt, 1500)
    ihl = (pkt[0] & 0x0F) * 4
    assert got[0][20:ihl] == pkt[20:ihl]
    for later in got[1:]:
        opts = later[20:ihl]
        assert opts[:7] == b"\x01" * 7 and opts[7:] == pkt[27:ihl]
        assert header_ok(later) and (later[0] & 0x0F) * 4 == ihl
    assert raw(defragment([IP(f) for f in got])[0])[ihl:] == pkt[ihl:]


def test_a_fragment_is_cut_further() -> None:
    """A non-last fragment keeps MF on every piece; offsets continue from its own."""
    pkt = bytearray(datagram(3028))
    pkt[6:8] = (0x2000 | 100).to_bytes(2, "big")  # MF, offset 800 bytes
    pkt[10:12] = b"\0\0"
    pkt = bytearray(raw(IP(bytes(pkt))))  # scapy recomputes the checksum
    got = c_fragment(bytes(pkt), 1500)
    assert isinstance(got, list) and got == py_fragment(bytes(pkt), 1500)
    assert all(IP(f).flags.MF for f in got)
    assert [IP(f).frag for f in got] == [100, 100 + 185, 100 + 370]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=3000), mtu=st.integers(min_value=0, max_value=4000))
def test_engines_agree_on_any_bytes(data: bytes, mtu: int) -> None:
    got = c_fragment(data, mtu)
    py = py_fragment(data, mtu)
    assert (py is None) == (isinstance(got, int) and got < 0)
    if py is not None:
        assert got == py


@settings(max_examples=200, deadline=None)
@given(size=st.integers(min_value=28, max_value=9000), mtu=st.integers(min_value=68, max_value=9000),
       opts=st.integers(min_value=0, max_value=10))
def test_engines_agree_on_datagrams(size: int, mtu: int, opts: int) -> None:
    pkt = datagram(max(size, 28 + 4 * opts), options=[IPOption(b"\x01\x01\x01\x01")] * opts)
    got = c_fragment(pkt, mtu)
    assert got == (py_fragment(pkt, mtu) or LB_EINVAL)


@pytest.mark.parametrize("factory", table.engine_factories(), ids=lambda f: f.id)
def test_count_xmit_failed_moves_the_packet(factory: table.EngineFactory) -> None:
    if factory.make is None:
        pytest.skip(factory.unavailable)
    engine = factory.make()  # type: ignore[operator]
    engine.count_xmit_failed(Reason.FORWARDED)  # nothing counted yet: only xmit_failed grows
    counts = engine.counters()
    assert counts["xmit_failed"] == 1 and counts["forwarded"] == 0
