"""The IPVS sync protocol v1 codec (lb/sync/codec.py) against the kernel's byte layout.

Sizes and offsets are those of the kernel's struct ip_vs_sync_mesg and struct ip_vs_sync_v4
(net/netfilter/ipvs/ip_vs_sync.c: every field naturally aligned, so no padding): header 8 bytes
(reserved@0 syncid@1 size@2 nr_conns@4 version@5 spare@6), record 36 bytes (type@0 protocol@1
ver_size@2 flags@4 state@8 cport@10 vport@12 dport@14 fwmark@16 timeout@20 caddr@24 vaddr@28
daddr@32). The IP_VS_CONN_F_* values are checked against the system's linux/ip_vs.h.
"""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import pytest

from lb.sync import codec
from lb.sync.codec import SyncConn

DR_CONN = SyncConn(protocol=6, flags=codec.F_DROUTE, state=1, caddr="10.9.0.5", cport=40000,
                   vaddr="10.0.0.100", vport=80, daddr="10.0.0.11", dport=8080, fwmark=0, timeout_s=900)

# A datagram as the kernel's ip_vs_sync_conn builds it for DR_CONN with syncid 7, written out by
# hand from the struct layout (not by the encoder).
KERNEL_DATAGRAM = bytes.fromhex(
    "00" "07" "002c" "01" "01" "0000"          # reserved, syncid 7, size 44, 1 conn, version 1, spare
    "00" "06" "0024"                           # type IPv4, TCP, version 0 / size 36
    "00000003"                                 # flags: IP_VS_CONN_F_DROUTE
    "0001" "9c40" "0050" "1f90"                # state ESTABLISHED, cport 40000, vport 80, dport 8080
    "00000000" "00000384"                      # fwmark 0, timeout 900 s
    "0a090005" "0a000064" "0a00000b")          # caddr, vaddr, daddr


def test_sizes_are_the_kernels() -> None:
    assert codec.HEADER.size == 8
    assert codec.V4.size == 36
    assert codec.V6_SIZE == 72
    assert codec.SEQ.size == 24  # struct ip_vs_sync_conn_options: two struct ip_vs_seq of 3 x u32


def test_encoding_matches_the_kernel_layout() -> None:
    assert codec.encode([DR_CONN], syncid=7, maxlen=1472) == [KERNEL_DATAGRAM]
    assert struct.unpack_from("!I", KERNEL_DATAGRAM, 8 + 4)[0] == codec.F_DROUTE  # flags @4
    assert struct.unpack_from("!I", KERNEL_DATAGRAM, 8 + 20)[0] == 900             # timeout @20
    assert KERNEL_DATAGRAM[8 + 32:8 + 36] == bytes([10, 0, 0, 11])                 # daddr @32


def test_kernel_datagram_decodes() -> None:
    decoded = codec.decode(KERNEL_DATAGRAM)
    assert decoded.dropped == {}
    assert decoded.conns == [SyncConn(**{**DR_CONN.__dict__, "flags": codec.F_DROUTE | codec.F_SYNC})]


@pytest.mark.skipif(not Path("/usr/include/linux/ip_vs.h").exists(), reason="no /usr/include/linux/ip_vs.h (linux-libc-dev)")
def test_flag_values_are_the_headers() -> None:
    text = Path("/usr/include/linux/ip_vs.h").read_text()
    defines = {m[0]: int(m[1], 16) for m in re.findall(r"#define\s+IP_VS_CONN_F_(\w+)\s+(0x[0-9a-fA-F]+)", text)}
    ours = {"FWD_MASK": codec.F_FWD_MASK, "MASQ": codec.F_MASQ, "TUNNEL": codec.F_TUNNEL, "DROUTE": codec.F_DROUTE,
            "SYNC": codec.F_SYNC, "HASHED": codec.F_HASHED, "NOOUTPUT": codec.F_NOOUTPUT,
            "INACTIVE": codec.F_INACTIVE, "SEQ_MASK": codec.F_SEQ_MASK, "NO_CPORT": codec.F_NO_CPORT,
            "TEMPLATE": codec.F_TEMPLATE, "ONE_PACKET": codec.F_ONE_PACKET}
    assert {name: defines[name] for name in ours} == ours


def test_options_are_padded_to_four_bytes_and_read_back() -> None:
    with_seq = SyncConn(**{**DR_CONN.__dict__, "seq": (1, 2, 3, 4, 5, 6)})
    (datagram,) = codec.encode([with_seq, DR_CONN], syncid=1, maxlen=1472)
    # 36 + 2 + 24 = 62 bytes, then 2 bytes of padding before the next record
    assert struct.unpack_from("!H", datagram, 8 + 2)[0] == 62
    assert len(datagram) == 8 + 64 + 36
    assert datagram[8 + 36:8 + 38] == bytes((codec.IPVS_OPT_SEQ_DATA, 24))
    decoded = codec.decode(datagram)
    assert [c.seq for c in decoded.conns] == [(1, 2, 3, 4, 5, 6), None]


def test_messages_respect_maxlen_and_255_records() -> None:
    conns = [SyncConn(**{**DR_CONN.__dict__, "cport": 1000 + i}) for i in range(600)]
    datagrams = codec.encode(conns, syncid=0, maxlen=8 + 36 * 10)
    assert all(len(d) <= 8 + 360 for d in datagrams) and len(datagrams) == 60
    big = codec.encode(conns, syncid=0, maxlen=65507)
    assert [d[4] for d in big] == [255, 255, 90]
    assert [c.cport for d in big for c in codec.decode(d).conns] == [c.cport for c in conns]


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda d: d[:3], "short"),
    (lambda d: d[:6], "bad_version"),
    (lambda d: d + b"\0", "bad_size"),
    (lambda d: d[:5] + b"\x00" + d[6:], "bad_version"),    # version 0
    (lambda d: b"\x01" + d[1:], "bad_version"),            # reserved byte set: a version-0 message
    (lambda d: d[:8 + 2] + b"\x10\x24" + d[8 + 4:], "bad_version"),  # record version 1
    (lambda d: d[:8 + 2] + b"\x00\x30" + d[8 + 4:], "truncated"),    # record longer than the datagram
    (lambda d: d[:8] + b"\x04" + d[9:], "bad_record"),     # unknown record type
    (lambda d: d[:8 + 8] + b"\x00\x0b" + d[8 + 10:], "bad_state"),   # TCP state 11
    (lambda d: d[:8 + 1] + b"\x2f" + d[8 + 2:], "bad_protocol"),     # GRE
])
def test_malformed_datagrams_are_dropped_and_counted(mutate: object, reason: str) -> None:
    data = bytes(mutate(bytes(KERNEL_DATAGRAM)))  # type: ignore[operator]
    decoded = codec.decode(data)
    assert decoded.conns == []
    assert reason in decoded.dropped


def test_a_record_missing_at_the_end_keeps_the_ones_before() -> None:
    data = KERNEL_DATAGRAM[:4] + b"\x02" + KERNEL_DATAGRAM[5:]  # 2 conns announced, 1 present
    decoded = codec.decode(data)
    assert len(decoded.conns) == 1 and decoded.dropped == {"truncated": 1}


def _with_option(ptype: int, payload: bytes) -> bytes:
    rec = codec.V4.pack(0, 6, 36 + 2 + len(payload), codec.F_DROUTE, 1, 1, 80, 80, 0, 60,
                        bytes([10, 9, 0, 5]), bytes([10, 0, 0, 100]), bytes([10, 0, 0, 11]))
    body = rec + bytes((ptype, len(payload))) + payload
    body += bytes((4 - len(body)) & 3)
    return codec.HEADER.pack(0, 0, 8 + len(body), 1, 1, 0) + body


def test_options_unknown_mandatory_skips_the_record_optional_is_ignored() -> None:
    assert codec.decode(_with_option(9, b"abcd")).dropped == {"unknown_option": 1}
    ok = codec.decode(_with_option(9 | codec.IPVS_OPT_F_PARAM, b"abcd"))
    assert len(ok.conns) == 1 and ok.dropped == {}
    assert codec.decode(_with_option(codec.IPVS_OPT_PE_NAME, b"sip")).dropped == {"pe_data": 1}
    assert codec.decode(_with_option(codec.IPVS_OPT_SEQ_DATA, b"x" * 23)).dropped == {"bad_option": 1}


def test_syncid_filter() -> None:
    assert codec.decode(KERNEL_DATAGRAM, syncid=8).dropped == {"syncid_mismatch": 1}
    assert len(codec.decode(KERNEL_DATAGRAM, syncid=7).conns) == 1
    assert len(codec.decode(KERNEL_DATAGRAM, syncid=0).conns) == 1  # backup syncid 0: any


def test_ipv6_records_are_read_past_and_counted() -> None:
    v6 = bytes([codec.STYPE_F_INET6, 6]) + struct.pack("!H", 72) + bytes(68)
    body = v6 + KERNEL_DATAGRAM[8:]
    data = codec.HEADER.pack(0, 0, 8 + len(body), 2, 1, 0) + body
    decoded = codec.decode(data)
    assert decoded.dropped == {"ipv6": 1} and len(decoded.conns) == 1


def test_fuzzed_input_never_raises_and_yields_only_valid_records() -> None:
    rng = random.Random(18)
    valid = codec.encode([SyncConn(**{**DR_CONN.__dict__, "cport": i, "seq": (i, 0, 0, 0, 0, 0) if i % 2 else None})
                          for i in range(20)], 0, 1472)[0]
    for n in range(20000):
        if n % 2:
            data = bytearray(valid)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if n % 5 == 0:
                data = data[:rng.randrange(len(data))]
        else:
            data = bytearray(rng.randbytes(rng.randrange(0, 200)))
            if len(data) >= 8 and n % 4 == 0:  # a plausible header, so the records get parsed
                data[0:8] = codec.HEADER.pack(0, 0, len(data), rng.randrange(256), 1, 0)
        decoded = codec.decode(bytes(data))
        for conn in decoded.conns:
            if not conn.template:
                assert conn.protocol in codec.NUM_STATES and conn.state < codec.NUM_STATES[conn.protocol]
            assert conn.flags & ~(codec.F_BACKUP_MASK | codec.F_SYNC) == 0
        assert all(v > 0 for v in decoded.dropped.values())
