"""Direct routing (ipvsadm -g): the IP packet leaves unchanged, framed for the real server.

The action is XMIT_L2 on the destination's interface with
l2hdr = real server's MAC (6) + director interface's MAC (6) + ethertype 0x0800,
and reason FORWARDED. No TTL decrement, no checksum change (IPVS DR does neither).
Without valid forwarding state (none installed, or ifindex 0) the packet is
dropped with R_NO_L2 rather than black-holed.
"""

from __future__ import annotations

from lb.engine import Action, FwdState, Reason, Verdict
from lb.pyengine.conn import Destination

ETHERTYPE_IPV4 = b"\x08\x00"
MAC_LEN = 6  # bytes

NO_L2 = Action(Verdict.DROP, Reason.NO_L2)


def fwd_is_valid(fwd: FwdState | None) -> bool:
    return fwd is not None and fwd.ifindex != 0


def l2_header(fwd: FwdState) -> bytes:
    """next-hop MAC + director MAC + 0x0800 (ValueError for MACs that are not 6 bytes)."""
    if len(fwd.dst_mac) != MAC_LEN or len(fwd.src_mac) != MAC_LEN:
        raise ValueError(f"MAC addresses must be {MAC_LEN} bytes: dst {fwd.dst_mac!r} src {fwd.src_mac!r}")
    return bytes(fwd.dst_mac) + bytes(fwd.src_mac) + ETHERTYPE_IPV4


def xmit_l2(dest: Destination, reason: Reason, out: bytes = b"") -> Action | None:
    """XMIT_L2 on the destination's L2 path, or None without valid forwarding state."""
    fwd = dest.fwd
    if fwd is None:
        return None
    return Action(Verdict.XMIT_L2, reason, out=out, ifindex=fwd.ifindex, l2hdr=dest.l2hdr)


def transmit_dr(dest: Destination) -> Action:
    action = xmit_l2(dest, Reason.FORWARDED)
    return NO_L2 if action is None else action
