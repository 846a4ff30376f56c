"""lbd's sync extension: what the kernel's sync protocol cannot carry (issue 18 item 3).

FULLNAT connections (their local address and port) and SYN-proxied or PROXY-protocol connections
(their sequence translation) travel in datagrams of their own, to the sync group on a port of
their own (`--sync-ext-port`, by default the sync port + 1: 8849), so that a kernel backup, which
listens on the standard port only, never sees them. Were one fed to it anyway, it would drop the
whole datagram: the header's version is not 1 (ip_vs_process_message: "Unknown version"), and
every record also carries a mandatory option the kernel does not know (a kernel reading the
records would skip each one). An lbd backup's standard receiver drops them as `bad_version`.

Layout, network byte order (docs/sync.md "The extension"):

  header, 8 bytes:     reserved (u8, 0), syncid (u8), size (u16: the whole datagram), nr_conns (u8),
                       version (s8, EXT_VERSION = 76, 'L'), spare (u16, EXT_MAGIC = 0x4C42, "LB")
  record:              the kernel's IPv4 record (struct ip_vs_sync_v4, 36 bytes; its flags' method
                       bits 5 for FULLNAT, as Alibaba's IP_VS_CONN_F_FULLNAT), then options
                       (type, length, data; records 4-byte aligned, as the kernel's):
    OPT_LADDR (0x21, 8 bytes):  local address (4), local port (u16), reserved (u16, 0): FULLNAT
    OPT_SEQ (0x22, 20 bytes):   translations (u16: 1 SYN-proxy, 2 PROXY protocol), PROXY header
                                length (u16), PROXY marks (u8: 1 sent, 2 acknowledged, 4 version 2),
                                reserved (3 bytes, 0), the director's ISN towards the client, the
                                client's ISN, SYN-proxy's offset (real server ISN - director ISN)
  A record carries OPT_LADDR when its method is FULLNAT, OPT_SEQ when it translates sequence
  numbers, and at least one of them. Options with bit 0x40 are optional (ignored when unknown);
  an unknown mandatory one skips that record.

Decoding never raises on bytes from the network; what it drops is counted by reason (the
backup's counters get an `ext_` prefix).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from lb.sync import codec

EXT_VERSION = 76              # 'L': not the kernel's 1, so a kernel backup drops the datagram
EXT_MAGIC = 0x4C42            # "LB" in the kernel header's spare field
F_FULLNAT = 0x0005            # method bits of a FULLNAT record (Alibaba LVS's IP_VS_CONN_F_FULLNAT)
OPT_LADDR = 0x21
OPT_SEQ = 0x22
LADDR = struct.Struct("!4sHH")
SEQ = struct.Struct("!HHB3sIII")
SEQ_SYNPROXY = 1
SEQ_PROXY = 2
PX_SENT, PX_ACKED, PX_V2 = 1, 2, 4
PROXY_V1_LEN = (32, 56)       # shortest and longest v1 header over IPv4 (LB_PROXY_V1_MAX_LEN)
PROXY_V2_LEN = 28             # LB_PROXY_V2_LEN


@dataclass(frozen=True)
class SeqState:
    """A connection's sequence translation (struct lb_conn_seq)."""

    translations: int   # SEQ_SYNPROXY | SEQ_PROXY
    px_len: int = 0
    px_flags: int = 0
    cookie_isn: int = 0
    client_isn: int = 0
    d_in: int = 0

    def problem(self) -> str:
        """"" when consistent, else what is wrong (the C core refuses the same)."""
        if not self.translations or self.translations & ~(SEQ_SYNPROXY | SEQ_PROXY):
            return "translations"
        if self.px_flags & ~(PX_SENT | PX_ACKED | PX_V2):
            return "proxy marks"
        if not self.translations & SEQ_PROXY:
            return "" if self.px_len == 0 and self.px_flags == 0 else "proxy state without PROXY"
        if self.px_flags & PX_V2:
            return "" if self.px_len == PROXY_V2_LEN else "proxy v2 length"
        return "" if PROXY_V1_LEN[0] <= self.px_len <= PROXY_V1_LEN[1] else "proxy v1 length"


@dataclass(frozen=True)
class ExtConn:
    """One extension record: the kernel-format record plus what it cannot say."""

    conn: codec.SyncConn
    laddr: str | None = None    # FULLNAT: the local address and port
    lport: int = 0
    seq: SeqState | None = None


@dataclass
class ExtDecoded:
    conns: list[ExtConn] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def _record(ext: ExtConn) -> bytes:
    options = b""
    if ext.laddr is not None:
        options += bytes((OPT_LADDR, LADDR.size)) + LADDR.pack(ipaddress.IPv4Address(ext.laddr).packed, ext.lport, 0)
    if ext.seq is not None:
        s = ext.seq
        options += bytes((OPT_SEQ, SEQ.size)) + SEQ.pack(s.translations, s.px_len, s.px_flags, bytes(3),
                                                          s.cookie_isn, s.client_isn, s.d_in)
    return codec.pack_record(ext.conn, options)


def encode(conns: list[ExtConn], syncid: int, maxlen: int) -> list[bytes]:
    """Datagrams of at most `maxlen` bytes, at most 255 records each, records 4-byte aligned."""
    return codec.pack_datagrams((_record(ext) for ext in conns), syncid, maxlen, EXT_VERSION, EXT_MAGIC)


def decode(data: bytes, syncid: int = 0) -> ExtDecoded:
    """Read one extension datagram; `syncid` 0 takes every sync id."""
    result = ExtDecoded()
    if len(data) < codec.HEADER.size:
        result.drop("short")
        return result
    nr_conns, reason = codec.read_header(data, syncid, EXT_VERSION, EXT_MAGIC)
    if reason:
        result.drop(reason)
        return result
    pos = codec.HEADER.size
    for i in range(nr_conns):
        if pos + codec.V4.size > len(data):
            result.drop("truncated", nr_conns - i)
            return result
        ver_size = struct.unpack_from("!H", data, pos + 2)[0]
        end = pos + (ver_size & codec.SVER_MASK)
        if ver_size >> codec.SVER_SHIFT or data[pos] != 0 or end < pos + codec.V4.size or end > len(data):
            result.drop("bad_record", nr_conns - i)  # an IPv6 or unknown record type, or a bad size
            return result
        reason = _read_record(data, pos, end, result)
        if reason == "fatal":
            result.drop("bad_option", nr_conns - i)
            return result
        if reason:
            result.drop(reason)
        pos += (end - pos + 3) & ~3
    if pos < len(data) - 3:
        result.drop("trailing")  # bytes past the last record: counted, the records read stay
    return result


def _read_record(data: bytes, pos: int, end: int, result: ExtDecoded) -> str:
    """One record: "" when added, else why it was skipped, "fatal" when the options do not parse."""
    p = pos + codec.V4.size
    laddr: tuple[bytes, int, int] | None = None
    seq: tuple[int, int, int, bytes, int, int, int] | None = None
    skip = ""
    while p < end:
        if p + 2 > end:
            return "fatal"
        ptype, plen = data[p], data[p + 1]
        p += 2
        if not plen or p + plen > end:
            return "fatal"
        kind = ptype & ~codec.IPVS_OPT_F_PARAM
        if kind == OPT_LADDR:
            if plen != LADDR.size or laddr is not None:
                return "fatal"
            laddr = LADDR.unpack_from(data, p)
        elif kind == OPT_SEQ:
            if plen != SEQ.size or seq is not None:
                return "fatal"
            seq = SEQ.unpack_from(data, p)
        elif not ptype & codec.IPVS_OPT_F_PARAM:
            skip = skip or "unknown_option"
        p += plen
    if skip:
        return skip
    (_t, proto, _vs, flags, state, cport, vport, dport, fwmark, timeout, caddr, vaddr, daddr) = codec.V4.unpack_from(data, pos)
    if proto != codec.IPPROTO_TCP and (seq is not None or proto != codec.IPPROTO_UDP) or flags & codec.F_TEMPLATE:
        return "bad_protocol"  # FULLNAT TCP/UDP connections, SYN-proxy/PROXY TCP; no templates here
    if state >= codec.NUM_STATES[proto]:
        return "bad_state"
    fullnat = flags & codec.F_FWD_MASK == F_FULLNAT
    if laddr is None and seq is None or fullnat != (laddr is not None):
        return "bad_record"  # nothing the kernel record could not have said, or a method mismatch
    ext_laddr: str | None = None
    lport = 0
    if laddr is not None:
        addr, lport, reserved = laddr
        ip = ipaddress.IPv4Address(addr)
        if reserved or not lport or ip.is_unspecified or ip.is_multicast or int(ip) == 0xFFFFFFFF:
            return "bad_laddr"
        ext_laddr = str(ip)
    state_seq: SeqState | None = None
    if seq is not None:
        translations, px_len, px_flags, pad, cookie_isn, client_isn, d_in = seq
        state_seq = SeqState(translations, px_len, px_flags, cookie_isn, client_isn, d_in)
        if any(pad) or state_seq.problem():
            return "bad_seq"
    flags = (flags & (codec.F_FWD_MASK | codec.F_INACTIVE | codec.F_NOOUTPUT)) | codec.F_SYNC
    conn = codec.SyncConn(protocol=proto, flags=flags, state=state, caddr=str(ipaddress.IPv4Address(caddr)),
                          cport=cport, vaddr=str(ipaddress.IPv4Address(vaddr)), vport=vport,
                          daddr=str(ipaddress.IPv4Address(daddr)), dport=dport, fwmark=fwmark, timeout_s=timeout)
    result.conns.append(ExtConn(conn, ext_laddr, lport, state_seq))
    return ""
