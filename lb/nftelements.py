"""Set elements of lbd's nftables table written over netlink (lb.nfnlbatch), not by `nft -f`.

A configuration change (one `lbadm -a`, `-D`, a reload's delta) changes a few elements of lbd's
sets. Through `nft -f` each one cost a process start, libnftables' cache of the table and the
parse: ~20 ms at 10,000 services, most of what `lbadm -D` takes. Here it is one batch of
NFT_MSG_NEWSETELEM / NFT_MSG_DELSETELEM messages, one commit (all or nothing, the nftables
generation moves by one, as with `nft -f`), well under a millisecond. lb.nftsteer sends small
deltas this way and keeps `nft -f` for everything else (the table, its chains, large syncs).

Keys are what nft itself sends: each field of a concatenation in its own 32-bit register
(include/net/netfilter/nf_tables.h NFT_REG32_SIZE): ipv4_addr 4 bytes, inet_proto 1 byte + 3 of
padding, inet_service 2 bytes (network order) + 2 of padding. Elements come in lb.ipsets' form:
"10.0.0.1", "10.0.0.1,tcp:80", "10.0.0.1,tcp:80,10.0.0.2".
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable

from lb.nfnlbatch import NFPROTO_IPV4, NFPROTO_NETDEV, NLM_F_CREATE, Request, attr, nest, string, transact

NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
# ipset types (lb.ipsets) -> the number of fields a key has: address, protocol and port, address
FIELDS = {"hash:ip": 1, "hash:ip,port": 3, "hash:ip,port,ip": 4}


def _address(text: str) -> bytes:
    """4 bytes of a dotted quad, b"" for anything else (strict: inet_aton would take "1" for
    0.0.0.1 and "010" as octal)."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        return b""


def key(set_type: str, element: str) -> bytes:
    """The key of `element` (lb.ipsets' form) in a set of lb.ipsets type `set_type`; ValueError
    naming the element when it does not fit the type."""
    fields = FIELDS.get(set_type)
    if fields is None:
        raise ValueError(f"set type {set_type!r}: not one of lbd's ({', '.join(FIELDS)})")
    parts = element.replace(":", ",").split(",")
    if len(parts) != fields:
        raise ValueError(f"element {element!r} is not a {set_type} element")
    out = _address(parts[0])
    if fields > 1:
        proto = PROTOCOLS.get(parts[1])
        port = int(parts[2]) if parts[2].isdigit() else -1
        if proto is None or not 0 <= port <= 0xFFFF:
            raise ValueError(f"element {element!r}: protocol {parts[1]!r} and port {parts[2]!r} expected "
                             f"as tcp|udp|sctp and 0-65535")
        out += struct.pack("=B3x", proto) + struct.pack(">H2x", port)
    if fields > 3:
        last = _address(parts[3])
        out = out + last if last else b""
    if len(out) != {1: 4, 3: 12, 4: 16}[fields]:
        raise ValueError(f"element {element!r}: not an IPv4 address where {set_type} has one")
    return out


def request(table: str, set_name: str, set_type: str, elements: Iterable[str], add: bool,
            family: int = NFPROTO_IPV4) -> Request:
    """One NEWSETELEM (add: an element already there is no error, as `nft add element`) or
    DELSETELEM (an element not there refuses the batch, as `nft delete element`)."""
    items = b"".join(nest(NFTA_LIST_ELEM, nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key(set_type, e))))
                     for e in sorted(elements))
    body = (string(NFTA_SET_ELEM_LIST_TABLE, table) + string(NFTA_SET_ELEM_LIST_SET, set_name)
            + nest(NFTA_SET_ELEM_LIST_ELEMENTS, items))
    return Request(NFT_MSG_NEWSETELEM if add else NFT_MSG_DELSETELEM, NLM_F_CREATE if add else 0, body, family)


SetChange = tuple[str, str, set[str]]  # set name, lb.ipsets type, elements


def write(table: str, adds: list[SetChange], dels: list[SetChange], netns: str | None = None,
          mirror: frozenset[str] = frozenset()) -> None:
    """Additions then deletions (in the order given), in one batch: one commit, or nothing when the
    kernel refuses any (lb.nfnlbatch.NetlinkError, naming the table). The sets named in `mirror`
    exist in the netdev table of the same name too (lb.natingress) and get the same change, in
    the same commit."""
    def both(name: str, stype: str, els: set[str], add: bool) -> list[Request]:
        out = [request(table, name, stype, els, add)]
        if name in mirror:
            out.append(request(table, name, stype, els, add, NFPROTO_NETDEV))
        return out

    reqs = [r for name, stype, els in adds if els for r in both(name, stype, els, True)]
    reqs += [r for name, stype, els in dels if els for r in both(name, stype, els, False)]
    transact(reqs, f"the set elements of ip {table}" + (f" (and netdev {table})" if mirror else ""), netns)
