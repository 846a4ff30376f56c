"""The order ipvsadm 1.31 lists services and destinations in: libipvs's comparators
(ipvs_cmp_services, ipvs_cmp_dests) under glibc's qsort, i.e. its merge sort (msort_with_tmp).

libipvs compares addresses by subtracting them as unsigned 32-bit words and reading the
difference as an int, so two addresses more than 2^31 apart compare "wrapped" (192.168.x sorts
before 10.x) and the comparators are not transitive across the wrap: only the same algorithm gives
the same order in every case. lb.ipvsadm_fmt prints in this order.

Cost (issue 15: `lbadm -L` of 10,000 services): each entry's address is parsed once, into a sort
key, not in every comparison; and when no compared field of the listed entries spans 2^31 or more
(no difference can wrap), the comparator is a plain total order and Python's stable sort yields
what the stable merge sort would, ~50x faster. Otherwise the merge sort runs step for step.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Mapping, Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:  # lbadm imports this module: no typing at run time (lb/records.py)
    from typing import Any, TypeVar

    Json = Mapping[str, Any]
    T = TypeVar("T")

# Kernel constants used by libipvs's sort order (AF_INET < AF_INET6; protocol numbers).
AF_INET = 2
AF_INET6 = 10
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
_WRAP = 2**31  # a difference this large or larger reads as negative in C's int

# (family, 32-bit words of the address): one word for IPv4, four for IPv6.
AddrWords = tuple[int, tuple[int, ...]]
# fwmark, family, protocol number, address words, port: what ipvs_cmp_services compares, in order.
ServiceKey = tuple[int, int, int, tuple[int, ...], int]
# address family, address words, port: what ipvs_cmp_dests compares.
DestKey = tuple[int, tuple[int, ...], int]


def int32(value: int) -> int:
    """C's conversion of an unsigned 32-bit difference to int: libipvs compares
    addresses by subtraction, so addresses more than 2^31 apart wrap."""
    return ((value + _WRAP) % 2**32) - _WRAP


@functools.lru_cache(maxsize=1 << 16)
def addr_words(addr: str) -> AddrWords:
    """An address as libipvs holds it; what is not an address counts as IPv4 0.0.0.0.
    inet_pton (what ipvsadm itself parses with) instead of ipaddress: ~10x cheaper; cached, as a
    listing asks for each service's address three times (sort key, family, label)."""
    if not addr:
        return AF_INET, (0,)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        packed = socket.inet_pton(family, addr)
    except (OSError, ValueError):
        return _addr_words_slow(addr)
    if family == socket.AF_INET:
        return AF_INET, (int.from_bytes(packed, "big"),)
    return AF_INET6, tuple(int.from_bytes(packed[i:i + 4], "big") for i in range(0, 16, 4))


def _addr_words_slow(addr: str) -> AddrWords:
    """What inet_pton refuses but Python's ipaddress reads (an IPv6 scope, `fe80::1%eth0`)."""
    import ipaddress

    try:
        parsed = ipaddress.ip_address(addr)
    except ValueError:
        return AF_INET, (0,)
    if isinstance(parsed, ipaddress.IPv6Address):
        value = int(parsed)
        return AF_INET6, tuple((value >> shift) & 0xFFFFFFFF for shift in (96, 64, 32, 0))
    return AF_INET, (int(parsed),)


def cmp_addr(af: int, words_a: tuple[int, ...], words_b: tuple[int, ...]) -> int:
    if af != AF_INET6:
        return int32(words_a[0] - words_b[0])
    for word_a, word_b in zip(words_a, words_b, strict=True):
        result = int32(word_a - word_b)
        if result:
            return result
    return 0


def service_af(svc: Json) -> int:
    if svc.get("ipv6"):
        return AF_INET6
    return addr_words(str(svc.get("addr") or ""))[0]


def service_sort_key(svc: Json) -> ServiceKey:
    fwmark = int(svc.get("fwmark") or 0)
    if fwmark:  # a fwmark service has no protocol, address or port of its own
        return fwmark, service_af(svc), 0, (0,), 0
    proto = PROTO_NUMBERS.get(str(svc.get("proto") or "").lower(), 0)
    return 0, service_af(svc), proto, addr_words(str(svc.get("addr") or ""))[1], int(svc.get("port") or 0)


def compare_service_keys(a: ServiceKey, b: ServiceKey) -> int:
    """libipvs ipvs_cmp_services: fwmark, family, protocol, address, port."""
    result = int32(a[0] - b[0])
    if result:
        return result
    if a[1] != b[1]:
        return a[1] - b[1]
    result = a[2] - b[2]
    if result:
        return result
    result = cmp_addr(a[1], a[3], b[3])
    if result:
        return result
    return a[4] - b[4]


def compare_services(svc_a: Json, svc_b: Json) -> int:
    return compare_service_keys(service_sort_key(svc_a), service_sort_key(svc_b))


def dest_sort_key(dest: Json) -> DestKey:
    af, words = addr_words(str(dest["addr"]))
    return af, words, int(dest["port"])


def compare_dest_keys(a: DestKey, b: DestKey) -> int:
    """libipvs ipvs_cmp_dests: address (by the first one's family), then port."""
    af, words_a, words_b = a[0], a[1], b[1]
    if len(words_a) != len(words_b):
        af, words_a, words_b = AF_INET, words_a[:1], words_b[:1]
    result = cmp_addr(af, words_a, words_b)
    if result:
        return result
    return a[2] - b[2]


def compare_dests(dest_a: Json, dest_b: Json) -> int:
    return compare_dest_keys(dest_sort_key(dest_a), dest_sort_key(dest_b))


def glibc_merge_sort(items: Sequence[T], cmp: Callable[[T, T], int]) -> list[T]:
    """glibc qsort's merge sort (msort_with_tmp), step for step."""
    if len(items) <= 1:
        return list(items)
    if len(items) == 2:  # the merge of two single items, without the recursion (most services' dests)
        return list(items) if cmp(items[0], items[1]) <= 0 else [items[1], items[0]]
    half = len(items) // 2
    left = glibc_merge_sort(items[:half], cmp)
    right = glibc_merge_sort(items[half:], cmp)
    merged: list[T] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if cmp(left[i], right[j]) <= 0:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged


def _spans_below_wrap(values: Sequence[int]) -> bool:
    return not values or max(values) - min(values) < _WRAP


def _no_service_key_wraps(keys: Sequence[ServiceKey]) -> bool:
    """True when compare_service_keys is the plain lexicographic order of these keys: no fwmark or
    address word differences of 2^31 or more (the only ones C reads wrapped), and every family's
    addresses of one length (protocol numbers and ports are small; families are compared plainly)."""
    if not _spans_below_wrap([k[0] for k in keys]):
        return False
    if any(len(k[3]) != (4 if k[1] == AF_INET6 else 1) for k in keys):
        return False
    return all(_spans_below_wrap([k[3][i] for k in keys if len(k[3]) > i]) for i in range(4))


def sorted_services(services: Sequence[Json]) -> list[Json]:
    """Services in ipvsadm's listing order."""
    keys = [service_sort_key(svc) for svc in services]
    if _no_service_key_wraps(keys):
        # A stable sort by a total order has one result: the merge sort's.
        order = sorted(range(len(services)), key=keys.__getitem__)
    else:
        order = glibc_merge_sort(range(len(services)), lambda i, j: compare_service_keys(keys[i], keys[j]))
    return [services[i] for i in order]


def sorted_dests(dests: Sequence[Json]) -> list[Json]:
    """A service's destinations in ipvsadm's listing order (a few per service: the merge sort)."""
    if len(dests) <= 1:
        return list(dests)
    keys = [dest_sort_key(dest) for dest in dests]
    order = glibc_merge_sort(range(len(dests)), lambda i, j: compare_dest_keys(keys[i], keys[j]))
    return [dests[i] for i in order]
