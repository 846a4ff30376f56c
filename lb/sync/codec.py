"""The kernel's IPVS connection sync protocol, version 1: encoding and decoding of datagrams.

Layout (net/netfilter/ipvs/ip_vs_sync.c, struct ip_vs_sync_mesg and struct ip_vs_sync_v4), all
fields in network byte order:

  message header, 8 bytes:  reserved (u8, 0: a version-0 receiver drops the datagram), syncid (u8),
                            size (u16: the whole datagram), nr_conns (u8), version (s8, 1),
                            spare (u16, 0)
  IPv4 record, 36 bytes:    type (u8, 0 = IPv4; bit 0 = IPv6), protocol (u8), ver_size (u16: version
                            in the top 4 bits, 0; the record's size with its options in the low 12),
                            flags (u32, IP_VS_CONN_F_*), state (u16), cport, vport, dport (u16),
                            fwmark (u32), timeout (u32, seconds), caddr, vaddr, daddr (4 bytes each)
  then options:             type (u8), length (u8, > 0), data; type 1 = sequence data (24 bytes:
                            in_seq and out_seq, each init_seq/delta/previous_delta u32); types
                            2/3 = persistence-engine data/name; a type with bit 0x40
                            (IPVS_OPT_F_PARAM) is optional, any other unknown type is mandatory
                            (the record is skipped). Records start on 4-byte boundaries.

The decoder is the backup's first line of defence: it never raises on bytes from the network, it
returns what it could read and a reason for whatever it dropped (reasons are the counters the
receiver keeps), following the kernel's ip_vs_process_message: a bad header or a record that runs
past the datagram drops the rest of the datagram; a record with an unknown mandatory option, an
unsupported protocol or an impossible state is skipped alone. IPv6 records are read past (lbd
balances IPv4 only) and counted.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

# From the kernel (ip_vs_sync.c, include/uapi/linux/ip_vs.h): never invented here.
SYNC_GROUP = "224.0.0.81"     # IP_VS_SYNC_GROUP
SYNC_PORT = 8848              # IP_VS_SYNC_PORT
SYNC_PROTO_VER = 1
HEADER = struct.Struct("!BBHBbH")            # struct ip_vs_sync_mesg
V4 = struct.Struct("!BBHIHHHHII4s4s4s")      # struct ip_vs_sync_v4
V6_SIZE = 4 + 4 + 2 + 2 * 3 + 4 + 4 + 16 * 3  # struct ip_vs_sync_v6
SEQ = struct.Struct("!IIIIII")               # struct ip_vs_sync_conn_options (two struct ip_vs_seq)
STYPE_F_INET6 = 1
SVER_SHIFT = 12
SVER_MASK = 0x0FFF
IPVS_OPT_SEQ_DATA = 1
IPVS_OPT_PE_DATA = 2
IPVS_OPT_PE_NAME = 3
IPVS_OPT_F_PARAM = 1 << (7 - 1)
IP_VS_PEDATA_MAXLEN = 255
IP_VS_PENAME_MAXLEN = 16
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

# IP_VS_CONN_F_* (linux/ip_vs.h)
F_FWD_MASK = 0x0007
F_MASQ = 0x0000
F_TUNNEL = 0x0002
F_DROUTE = 0x0003
F_SYNC = 0x0020
F_HASHED = 0x0040
F_NOOUTPUT = 0x0080
F_INACTIVE = 0x0100
F_SEQ_MASK = 0x0600
F_NO_CPORT = 0x0800
F_TEMPLATE = 0x1000
F_ONE_PACKET = 0x2000
F_BACKUP_MASK = F_FWD_MASK | F_NOOUTPUT | F_INACTIVE | F_SEQ_MASK | F_NO_CPORT | F_TEMPLATE

# Number of states per protocol (the kernel's pp->num_states): TCP IP_VS_TCP_S_LAST, UDP
# IP_VS_UDP_S_LAST, SCTP IP_VS_SCTP_S_LAST; templates IP_VS_CTPL_S_LAST.
NUM_STATES = {IPPROTO_TCP: 11, IPPROTO_UDP: 1, IPPROTO_SCTP: 10}
CTPL_S_LAST = 2  # IP_VS_CTPL_S_NONE, IP_VS_CTPL_S_ASSURED


@dataclass(frozen=True)
class SyncConn:
    """One IPv4 connection (or persistence template) as the sync protocol carries it."""

    protocol: int
    flags: int        # IP_VS_CONN_F_*
    state: int        # IP_VS_TCP_S_* / IP_VS_UDP_S_NORMAL / IP_VS_CTPL_S_*
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    fwmark: int = 0
    timeout_s: int = 0  # 0: the receiver picks the state's own timeout
    seq: tuple[int, int, int, int, int, int] | None = None  # in_seq, out_seq (IPVS_OPT_SEQ_DATA)

    @property
    def template(self) -> bool:
        return bool(self.flags & F_TEMPLATE)


@dataclass
class Decoded:
    """What one datagram held: the records read, and per reason what was dropped."""

    conns: list[SyncConn] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> records (or 1 for a datagram)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def pack_record(conn: SyncConn, options: bytes) -> bytes:
    """The IPv4 record of `conn` (struct ip_vs_sync_v4, its size counting `options`) and its options."""
    size = V4.size + len(options)
    return V4.pack(0, conn.protocol, size & SVER_MASK, conn.flags & ~F_HASHED & 0xFFFFFFFF, conn.state,
                   conn.cport, conn.vport, conn.dport, conn.fwmark, conn.timeout_s,
                   ipaddress.IPv4Address(conn.caddr).packed, ipaddress.IPv4Address(conn.vaddr).packed,
                   ipaddress.IPv4Address(conn.daddr).packed) + options


def _record(conn: SyncConn) -> bytes:
    options = b""
    if conn.seq is not None:
        options = bytes((IPVS_OPT_SEQ_DATA, SEQ.size)) + SEQ.pack(*conn.seq)
    return pack_record(conn, options)


def encode(conns: list[SyncConn], syncid: int, maxlen: int) -> list[bytes]:
    """Datagrams of at most `maxlen` bytes (the UDP payload; ipvsadm's --sync-maxlen) holding `conns`
    in order, at most 255 each (nr_conns is one byte), records padded to 4-byte boundaries as the
    kernel's ip_vs_sync_conn does."""
    return pack_datagrams((_record(conn) for conn in conns), syncid, maxlen)


def pack_datagrams(records: Iterable[bytes], syncid: int, maxlen: int, version: int = SYNC_PROTO_VER,
                   spare: int = 0) -> list[bytes]:
    """`records` in order in datagrams of at most `maxlen` bytes, at most 255 records each, each
    record on a 4-byte boundary, under the message header (`version` and `spare`: the kernel's 1
    and 0, or the extension's own)."""
    out: list[bytes] = []
    body = bytearray()
    count = 0

    def message() -> bytes:
        return HEADER.pack(0, syncid & 0xFF, HEADER.size + len(body), count, version, spare) + bytes(body)

    for rec in records:
        pad = (4 - len(body)) & 3  # HEADER.size is a multiple of 4: align within the body
        if count and (HEADER.size + len(body) + pad + len(rec) > maxlen or count == 255):
            out.append(message())
            body, count, pad = bytearray(), 0, 0
        body += bytes(pad) + rec
        count += 1
    if count:
        out.append(message())
    return out


def read_header(data: bytes, syncid: int, version: int, spare: int) -> tuple[int, str]:
    """The message header of `data` (at least HEADER.size bytes): (nr_conns, "") when its size is
    the datagram's length, its syncid taken (`syncid` 0 takes any), reserved 0 and version and
    spare those given (the kernel's 1 and 0, or the extension's); else (0, the reason:
    "bad_size", "syncid_mismatch" or "bad_version", checked in that order)."""
    reserved, msg_syncid, size, nr_conns, msg_version, msg_spare = HEADER.unpack_from(data)
    if size != len(data):
        return 0, "bad_size"
    if syncid and msg_syncid != syncid:
        return 0, "syncid_mismatch"
    if msg_version != version or reserved or msg_spare != spare:
        return 0, "bad_version"
    return nr_conns, ""


def decode(data: bytes, syncid: int = 0) -> Decoded:
    """Read one datagram; `syncid` 0 takes every sync id (the kernel's backup does the same)."""
    result = Decoded()
    if len(data) < 4:  # sizeof(struct ip_vs_sync_mesg_v0)
        result.drop("short")
        return result
    if len(data) < HEADER.size:
        result.drop("bad_version")  # a 4..7-byte version-0 message: lbd reads version 1 only
        return result
    nr_conns, reason = read_header(data, syncid, SYNC_PROTO_VER, 0)
    if reason:
        result.drop(reason)  # bad_version: version 0 (the old format) is not spoken by lbd
        return result
    pos = HEADER.size
    for i in range(nr_conns):
        if pos + V4.size > len(data):
            result.drop("truncated", nr_conns - i)
            return result
        ver_size = struct.unpack_from("!H", data, pos + 2)[0]
        rec_size = ver_size & SVER_MASK
        end = pos + rec_size
        if end > len(data):
            result.drop("truncated", nr_conns - i)
            return result
        if ver_size >> SVER_SHIFT:
            result.drop("bad_version", nr_conns - i)
            return result
        reason = _read_record(data, pos, end, result)
        if reason == "fatal":
            return result
        if reason:
            result.drop(reason)
        pos += (rec_size + 3) & ~3
    return result


def _read_record(data: bytes, pos: int, end: int, result: Decoded) -> str:
    """One record: "" when it was added to result.conns, else the reason it was skipped, or "fatal"
    when the rest of the datagram cannot be trusted (counted here)."""
    rtype = data[pos]
    if rtype & STYPE_F_INET6:
        fixed = V6_SIZE
    elif rtype == 0:
        fixed = V4.size
    else:
        result.drop("bad_record")
        return "fatal"
    if pos + fixed > end:
        result.drop("bad_record")
        return "fatal"
    p = pos + fixed
    seq: tuple[int, ...] | None = None
    have: set[int] = set()
    skip = ""
    while p < end:
        if p + 2 > end:
            result.drop("bad_option")
            return "fatal"
        ptype, plen = data[p], data[p + 1]
        p += 2
        if not plen or p + plen > end:
            result.drop("bad_option")
            return "fatal"
        kind = ptype & ~IPVS_OPT_F_PARAM
        if kind in have and kind in (IPVS_OPT_SEQ_DATA, IPVS_OPT_PE_DATA, IPVS_OPT_PE_NAME):
            result.drop("bad_option")  # "found twice"
            return "fatal"
        if kind == IPVS_OPT_SEQ_DATA:
            if plen != SEQ.size:
                result.drop("bad_option")
                return "fatal"
            seq = SEQ.unpack_from(data, p)
        elif kind == IPVS_OPT_PE_DATA and plen > IP_VS_PEDATA_MAXLEN or kind == IPVS_OPT_PE_NAME and plen > IP_VS_PENAME_MAXLEN:
            result.drop("bad_option")
            return "fatal"
        elif kind in (IPVS_OPT_PE_DATA, IPVS_OPT_PE_NAME):
            skip = skip or "pe_data"  # persistence engines (sip) are not in lbd
        elif not ptype & IPVS_OPT_F_PARAM:
            skip = skip or "unknown_option"  # an unknown mandatory parameter: this record only
        have.add(kind)
        p += plen
    if skip:
        return skip
    if rtype & STYPE_F_INET6:
        return "ipv6"
    (_t, proto, _vs, flags, state, cport, vport, dport, fwmark, timeout, caddr, vaddr, daddr) = V4.unpack_from(data, pos)
    flags = (flags & F_BACKUP_MASK) | F_SYNC
    if not flags & F_TEMPLATE:
        if proto not in NUM_STATES:
            return "bad_protocol"
        if state >= NUM_STATES[proto]:
            return "bad_state"
    elif state >= CTPL_S_LAST:
        return "bad_state"
    result.conns.append(SyncConn(
        protocol=proto, flags=flags, state=state, caddr=str(ipaddress.IPv4Address(caddr)), cport=cport,
        vaddr=str(ipaddress.IPv4Address(vaddr)), vport=vport, daddr=str(ipaddress.IPv4Address(daddr)),
        dport=dport, fwmark=fwmark, timeout_s=timeout,
        seq=tuple(seq) if seq is not None else None))  # type: ignore[arg-type]
    return ""
