"""Option values parsed with ipvsadm's C semantics (strtol, inet_aton, atoi, getservbyname via
/etc/services), and the limits ipvsadm applies to them."""

from __future__ import annotations

import re
import socket

from lb import consts as C
from lb.lbadm.errors import fail
from lb.namedb import NameDB
from lb.records import NamedTuple
from lb.vocab import DEFAULT_SCHEDULER

MAX_TIMEOUT_S = 86400 * 31  # ipvsadm's MAX_TIMEOUT: 31 days
DEFAULT_PERSISTENT_TIMEOUT_S = 360  # ipvsadm's IPVS_SVC_PERSISTENT_TIMEOUT (6 minutes), for -p without a value
DEFAULT_MCAST_IFN = "eth0"
INT_MAX = 2**31 - 1
UINT_MAX = 2**32 - 1
SCHED_NAME_MAX = C.LB_SCHED_NAME_MAX - 1  # as IP_VS_SCHEDNAME_MAXLEN - 1: the NUL
PE_NAME_MAX = 32  # IP_VS_PENAME_MAXLEN
IFNAME_MAX = 15  # IP_VS_IFNAME_MAXLEN - 1
SYNC_MAXLEN_MAX = 65535 - 20 - 8  # largest UDP payload in an IPv4 packet

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6


_STRTOL_DECIMAL = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+\Z")
_ATOI_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_LONG_MAX = 2**63 - 1


def string_to_number(text: str, low: int, high: int) -> int | None:
    """ipvsadm's string_to_number: a whole decimal strtol() within [low, high]."""
    if not _STRTOL_DECIMAL.match(text):
        return None
    value = int(text)
    if abs(value) > _LONG_MAX or not low <= value <= high:
        return None
    return value


def _atoi(text: str) -> int:
    match = _ATOI_PREFIX.match(text)
    return int(match.group(1)) if match else 0


def inet_aton(text: str) -> str | None:
    """C inet_aton (accepts "10.1", "0x0a.0.0.1", ...), canonical dotted quad or None."""
    try:
        return socket.inet_ntoa(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


def inet_pton6(text: str) -> str | None:
    try:
        return socket.inet_ntop(AF_INET6, socket.inet_pton(AF_INET6, text))
    except (OSError, ValueError):
        return None


def _str_is_digit(text: str) -> bool:
    return all(ch.isdigit() and ch.isascii() for ch in text)


class ParsedAddress(NamedTuple):
    af: int
    addr: str
    port: int | None  # None: no port given


def parse_service_address(text: str, proto: str | None, names: NameDB) -> ParsedAddress | None:
    """ipvsadm's parse_service: host[:port], [ipv6]:port, names from /etc/hosts and /etc/services.

    None means ipvsadm's SERVICE_NONE (no usable address).
    """
    if _str_is_digit(text):
        return None
    host, port_text = text, None
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not after.startswith(":"):
            return None
        port_text = after[1:]
    ipv6 = inet_pton6(host)
    if ipv6 is not None:
        parsed_af, parsed_addr = AF_INET6, ipv6
    else:
        # ipvsadm looks for the port separator only in what is left after the
        # brackets were stripped, so "[1.2.3.4]:80" loses its port.
        if ":" in host:
            host, _, port_text = host.rpartition(":")
        else:
            port_text = None
        ipv4 = inet_aton(host) or names.ipv4_for_host(host)
        if ipv4 is None:
            return None
        parsed_af, parsed_addr = AF_INET, ipv4
    if port_text is None:
        return ParsedAddress(parsed_af, parsed_addr, None)
    port = string_to_number(port_text, 0, 65535)
    if port is None and proto is not None:
        port = names.port_for_service(port_text, proto)
    if port is None:
        return None
    return ParsedAddress(parsed_af, parsed_addr, port)


def parse_timeout(text: str | None, low: int, high: int) -> int:
    if text is None:
        return DEFAULT_PERSISTENT_TIMEOUT_S
    value = string_to_number(text, low, high)
    if value is None:
        raise fail(f"invalid timeout value `{text}' specified")
    return value


def parse_fwmark(text: str) -> int:
    if not _STRTOL_DECIMAL.match(text) or not 0 < int(text) <= UINT_MAX:
        raise fail(f"invalid fwmark value `{text}' specified")
    return int(text)


_SCHED_FLAG_OWNERS = {
    "flag-1": None, "flag-2": None, "flag-3": None,
    "sh-fallback": "sh", "sh-port": "sh", "mh-fallback": "mh", "mh-port": "mh",
}  # fmt: skip


def parse_sched_flags(sched: str, text: str) -> list[str]:
    """ipvsadm's parse_sched_flags: comma-separated names valid for the scheduler."""
    sched = sched or DEFAULT_SCHEDULER
    flags: list[str] = []
    for flag in (part for part in text.split(",") if part):
        if flag not in _SCHED_FLAG_OWNERS:
            raise fail(f"invalid scheduler flag `{flag}'")
        owner = _SCHED_FLAG_OWNERS[flag]
        if owner is not None and owner != sched:
            raise fail(f"incompatible scheduler flag `{flag}'")
        if flag not in flags:
            flags.append(flag)
    return flags
