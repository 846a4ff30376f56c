"""SYN-proxy for FULLNAT services, as native/src/synproxy.c (DPVS/Alibaba LVS conventions).

 1. Client SYN: answered (ANSWER, R_SP_COOKIE) with a SYN-ACK whose ISN is a SYN
    cookie: VIP:vport -> CIP:cport, ack = client ISN + 1, window 65535, options MSS
    (the service's, minus 8 with TOA) and SACK-permitted when both sides want it.
    No state is kept.
 2. Client ACK (ack - 1 is the cookie, seq - 1 the client's ISN): an invalid or
    expired cookie is DROP/R_SP_BAD_COOKIE; a valid one creates the connection
    entry (scheduling, FULLNAT allocation as for any new connection), state
    SYN_SENT, and sends the SYN to the real server (LIP:lport -> RIP:rport, seq =
    client ISN, the client's MSS and SACK from the cookie, the client's window)
    at once, or in defer mode when the client's first data arrives.
 3. Until the real server answers, client segments are held (the first data
    segment, up to data_max_bytes) or dropped (R_SP_HELD); more than
    ack_storm_max pure ACKs reset the client; a client RST/FIN forgets the entry.
    The SYN is retransmitted by `timers()` after init_rto, doubling up to
    max_rto, at most max_retries times; then the client gets a RST (give-up).
 4. The real server's SYN-ACK (acking client ISN + 1) is consumed: an ACK
    (carrying the held data with PSH, and TOA with the service's flag) completes
    its handshake (R_SP_HANDSHAKE), the entry becomes ESTABLISHED. Another ACK
    from the real server meanwhile gets a RST (seq = its ack); its RST resets the
    client and forgets the entry.
 5. Then FULLNAT rewriting plus sequence translation: d = rs_isn - cookie_isn is
    added to the client's ACK numbers and SACK edges and subtracted from the real
    server's sequence numbers (checksums updated incrementally).

Cookies, byte for byte as the C core's: cookie = H1 + client_isn + (minute << 24)
+ ((H2 + data) & 0xffffff) mod 2**32, data = MSS index (536, 1300, 1440, 1460) |
sack << 2, minute = now_ms // 60000; H1/H2 = the low 32 bits of SipHash-2-4 of the
16-byte tuple (saddr, daddr, sport, dport as in the packet, then a little-endian
uint32: 0 for H1, the minute for H2) under the per-epoch key (k, key1 ^ k) with
k = SipHash-2-4(master key, little-endian uint32 epoch (minute // 64) + uint32
which (0 or 1)). A cookie is valid for the minute it was made and the 2 after.
The master key derives from the engine's hash seed when one is given:
{seed0 ^ 0x5bd1e9955bd1e995, seed1 ^ 0x27d4eb2f165667c5}.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from dataclasses import dataclass

from lb.model import SynproxyConf
from lb.pyengine.csum import csum_fold, csum_partial, csum_replace4, put16
from lb.pyengine.parse import IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, ParsedPacket, tcp_options
from lb.pyengine.siphash import siphash24

M32 = 0xFFFFFFFF
COOKIE_MAX_AGE_MIN = 2
EPOCH_MIN = 64
SP_WINDOW = 65535  # window of the cookie SYN-ACK (unscaled)
MSSTAB = (536, 1300, 1440, 1460)
TCP_PSH = 0x08
KEY_SALT = (0x5BD1E9955BD1E995, 0x27D4EB2F165667C5)

PHASE_NONE = 0
PHASE_WAIT_DATA = 1  # defer mode: cookie valid, waiting for the client's first data
PHASE_SYN_SENT = 2  # SYN sent to the real server, waiting for its SYN-ACK
PHASE_DONE = 3  # both handshakes complete: translating sequence numbers

BUILTIN_CONF = SynproxyConf()
STAT_NAMES = ("cookies_sent", "cookies_valid", "cookies_invalid", "syns_to_rs", "syn_retransmits", "give_ups",
              "handshakes", "held_dropped", "rs_resets")


def master_key(seed0: int, seed1: int) -> tuple[int, int]:
    return seed0 ^ KEY_SALT[0], seed1 ^ KEY_SALT[1]


class Cookies:
    """SYN cookies under one master key (per-epoch keys cached)."""

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key
        self._epoch_keys: dict[tuple[int, int], tuple[int, int]] = {}

    def _hash(self, saddr: bytes, daddr: bytes, sport: int, dport: int, minute: int, which: int) -> int:
        epoch = minute // EPOCH_MIN
        ek = self._epoch_keys.get((epoch, which))
        if ek is None:
            k0 = siphash24(self.key[0], self.key[1], struct.pack("<II", epoch & M32, which))
            ek = self._epoch_keys[(epoch, which)] = (k0, self.key[1] ^ k0)
        extra = minute & M32 if which else 0
        data = saddr + daddr + struct.pack("!HH", sport, dport) + struct.pack("<I", extra)
        return siphash24(ek[0], ek[1], data) & M32

    def make(self, saddr: bytes, daddr: bytes, sport: int, dport: int, client_isn: int, minute: int,
             data: int) -> int:
        h1 = self._hash(saddr, daddr, sport, dport, minute, 0)
        h2 = self._hash(saddr, daddr, sport, dport, minute, 1)
        return (h1 + client_isn + ((minute << 24) & M32) + ((h2 + data) & 0xFFFFFF)) & M32

    def check(self, saddr: bytes, daddr: bytes, sport: int, dport: int, cookie: int, client_isn: int,
              now_min: int) -> int:
        """The data bits (0..7) of a valid cookie, or -1."""
        for age in range(COOKIE_MAX_AGE_MIN + 1):
            if now_min < age:
                break
            minute = now_min - age
            diff = (cookie - self._hash(saddr, daddr, sport, dport, minute, 0) - client_isn) & M32
            if (diff >> 24) != (minute & 0xFF):
                continue
            data = (diff - self._hash(saddr, daddr, sport, dport, minute, 1)) & 0xFFFFFF
            if data < 8:
                return data
        return -1


# ---------------------------------------------------------------- per-connection state


@dataclass(slots=True, eq=False)
class SynproxyState:
    cookie_isn: int  # our ISN towards the client
    client_isn: int
    mss: int  # the client's MSS (from the cookie)
    sack: bool
    client_win: int
    d_in: int = 0  # rs_isn - cookie_isn
    rto_ms: int = 0
    due_ms: int = 0  # next retransmission; 0 = none pending
    held: bytes = b""
    phase: int = PHASE_NONE
    retries: int = 0
    pure_acks: int = 0


class TimerHeap:
    """Retransmission deadlines (lazy deletion: an item is live while its entry is pending with that due)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, object]] = []
        self._seq = itertools.count()

    def push(self, due_ms: int, conn: object) -> None:
        heapq.heappush(self._heap, (due_ms, next(self._seq), conn))

    def _live(self, item: tuple[int, int, object]) -> bool:
        due, _, conn = item
        sp = conn.sp  # type: ignore[attr-defined]
        return (not conn.released and sp is not None  # type: ignore[attr-defined]
                and sp.phase == PHASE_SYN_SENT and sp.due_ms == due)

    def due(self) -> int | None:
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop(self) -> object:
        return heapq.heappop(self._heap)[2]


# ---------------------------------------------------------------- packets


def syn_options(mss: int, sack: bool) -> bytes:
    opts = bytes((2, 4)) + mss.to_bytes(2, "big")
    return opts + bytes((1, 1, 4, 2)) if sack else opts


def parse_syn_options(packet: bytes, ihl: int, doff: int) -> tuple[int, bool]:
    """The client's MSS (536 without the option) and SACK-permitted from its SYN."""
    th = ihl
    mss, sack = 536, False
    for kind, length, i in tcp_options(packet, th, doff):
        if kind == 2 and length == 4:
            mss = (packet[th + i + 2] << 8) | packet[th + i + 3]
        elif kind == 4 and length == 2:
            sack = True
    return mss, sack


def build_tcp(saddr: bytes, sport: int, daddr: bytes, dport: int, seq: int, ack: int, flags: int, win: int,
              opts: bytes = b"", payload: bytes = b"") -> bytes | None:
    """IPv4 (ID 0, DF, TTL 64) + TCP header + options + payload, checksums filled."""
    thl = 20 + len(opts)
    total = 20 + thl + len(payload)
    if total > 0xFFFF or len(opts) > 40 or len(opts) % 4:
        return None
    ip = bytearray(20)
    ip[0] = 0x45
    put16(ip, 2, total)
    ip[6] = 0x40
    ip[8] = 64
    ip[9] = 6
    ip[12:16] = saddr
    ip[16:20] = daddr
    put16(ip, 10, csum_fold(csum_partial(bytes(ip))))
    th = bytearray(thl)
    put16(th, 0, sport)
    put16(th, 2, dport)
    th[4:8] = (seq & M32).to_bytes(4, "big")
    th[8:12] = (ack & M32).to_bytes(4, "big")
    th[12] = (thl // 4) << 4
    th[13] = flags
    put16(th, 14, win & 0xFFFF)
    th[20:] = opts
    segment = bytes(th) + payload
    total_sum = csum_partial(bytes(ip[12:20])) + 6 + thl + len(payload)
    csum = csum_fold(csum_partial(segment, total_sum))
    return bytes(ip) + segment[:16] + csum.to_bytes(2, "big") + segment[18:]


def add32(o: bytearray, off: int, delta: int, csum_off: int) -> None:
    """Add delta to the 32-bit field at o[off:off+4], fixing the TCP checksum at csum_off."""
    old = bytes(o[off : off + 4])
    new = ((int.from_bytes(old, "big") + delta) & M32).to_bytes(4, "big")
    o[off : off + 4] = new
    csum_replace4(o, csum_off, old, new)


def sack_shift(o: bytearray, th: int, doff: int, delta: int) -> None:
    """Shift the SACK block edges in the TCP options of the segment at o[th:] by delta."""
    for kind, length, i in tcp_options(o, th, doff):
        if kind == 5 and length >= 10 and (length - 2) % 8 == 0:
            for e in range(i + 2, i + length - 3, 4):
                add32(o, th + e, delta, th + 16)


def first_flags(flags: int) -> int:
    return flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)


def tcp_checksum_ok(packet: bytes, parsed: ParsedPacket) -> bool:
    """The TCP checksum of the segment (pseudo-header, header and data up to the IP total length) is
    right: SYN-proxy terminates the client's handshake, and like the kernel's TCP it neither answers
    nor opens a connection for a corrupted segment (synproxy.c tcp_csum_ok)."""
    ihl, total = parsed.ip_header_len, parsed.total_length
    pseudo = csum_partial(packet[12:20], IPPROTO_TCP + total - ihl)
    return csum_fold(csum_partial(packet[ihl:total], pseudo)) == 0
