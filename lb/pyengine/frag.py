"""IPv4 fragmentation of what leaves towards real servers: native/src/frag.c's twin.

The kernel reassembles before the queue (lbd's rules turn on nf_defrag_ipv4 in its namespace,
docs/fastpath.md "Fragments"), so the engine sees whole datagrams. What it sends may be larger
than the destination's path MTU: with DF set the client gets ICMP fragmentation needed (the
engine's path-MTU check), with DF clear the packet leaves as fragments (`Action.frag_mtu`) cut
here as the kernel's ip_fragment cuts them: the first keeps the whole header, later ones only the
options whose copied flag is set (the others become NOPs, ip_options_fragment), offsets in 8-byte
units, MF on all but the last (and on the last when the packet was a non-last fragment itself),
header checksums computed in full.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lb.engine import Action, Reason, Verdict
from lb.pyengine.csum import internet_checksum
from lb.pyengine.icmp import frag_needed
from lb.pyengine.parse import ParsedPacket

if TYPE_CHECKING:
    from lb.pyengine.conn import Destination

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET_MASK = 0x1FFF
IPOPT_COPIED = 0x80
IPOPT_END = 0
IPOPT_NOOP = 1
DEFAULT_MTU = 1500  # forwarding state without an MTU (the C core's default)


def _options_fragment(header: bytearray) -> None:
    """Later fragments' header: options without the copied flag become NOPs (same length)."""
    i, ihl = 20, len(header)
    while i < ihl:
        kind = header[i]
        if kind == IPOPT_END:
            return
        if kind == IPOPT_NOOP:
            i += 1
            continue
        if i + 1 >= ihl:
            return
        olen = header[i + 1]
        if olen < 2 or olen > ihl - i:
            return
        if not kind & IPOPT_COPIED:
            header[i : i + olen] = bytes([IPOPT_NOOP]) * olen
        i += olen


def fragment(packet: bytes, mtu: int) -> list[bytes] | None:
    """`packet` as fragments of at most `mtu` bytes ([packet] when it fits), or None when it cannot
    be cut: not a complete IPv4 packet, DF set, or no room for 8 payload bytes after the header."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    if ihl < 20 or total < ihl or total > len(packet):
        return None
    if total <= mtu:
        return [bytes(packet[:total])]
    word = int.from_bytes(packet[6:8], "big")
    if word & IP_DF or mtu < ihl + 8:
        return None
    unit = (mtu - ihl) & ~7
    data = packet[ihl:total]
    base = (word & IP_OFFSET_MASK) * 8
    if base + len(data) > 0xFFFF:
        return None
    later_header = bytearray(packet[:ihl])
    _options_fragment(later_header)
    out = []
    for off in range(0, len(data), unit):
        chunk = data[off : off + unit]
        last = off + unit >= len(data)
        header = bytearray(packet[:ihl]) if off == 0 else bytearray(later_header)
        more = IP_MF if (not last or word & IP_MF) else 0
        header[2:4] = (ihl + len(chunk)).to_bytes(2, "big")
        header[6:8] = ((word & ~(IP_OFFSET_MASK | IP_MF)) | ((base + off) // 8) | more).to_bytes(2, "big")
        header[10:12] = b"\0\0"
        header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
        out.append(bytes(header) + chunk)
    return out


def fit_path_mtu(action: Action, dest: Destination, packet: bytes, parsed: ParsedPacket) -> Action:
    """ensure_mtu_is_adequate (core.c's fit_path_mtu) for what a method sends towards its real server
    on L2: larger than the destination's path MTU with DF set, ICMP fragmentation needed to the client;
    with DF clear, the adapter sends it as fragments of that MTU (`frag_mtu`). IPIP checked DF against
    the MTU less its header itself; its outer packet (DF clear) is fragmented here."""
    if action.verdict != Verdict.XMIT_L2 or dest.fwd is None:
        return action
    mtu = dest.fwd.mtu or DEFAULT_MTU
    sent = action.out or packet[: parsed.total_length]
    if len(sent) <= mtu:
        return action
    if sent[6] & 0x40:
        answer = frag_needed(packet, parsed.ip_header_len, parsed.total_length, min(mtu, 0xFFFF))
        return Action(Verdict.ANSWER, Reason.FRAG_NEEDED, out=answer)
    return replace(action, frag_mtu=mtu)
