"""The words of a configuration: protocols, forwarding methods, schedulers, scheduler flags and
limits, and the error an invalid value raises. Plain values and functions with no import beyond
lb.consts, so that lbadm (whose every command starts an interpreter) can use them without the
value types of lb.model (dataclasses: ~1 ms each to create, and the dataclasses module itself).
lb.model re-exports every name."""

from __future__ import annotations

from lb import consts as C

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_NAMES = {PROTO_TCP: "TCP", PROTO_UDP: "UDP"}
PROTO_BY_NAME = {"tcp": PROTO_TCP, "udp": PROTO_UDP}
# ServiceKey.proto of a fwmark service (ipvsadm -f MARK): `addr` holds the mark (as an IPv4
# address's 32 bits), `port` is 0. The C core keys it the same way (lb_api.h LB_PROTO_FWMARK), so
# every engine call naming a service works unchanged for it.
FWMARK_PROTO = C.LB_PROTO_FWMARK
FWMARK_MAX = 0xFFFFFFFF

# Forwarding methods, named as in ipvsadm's -Ln output ("Route", "Tunnel",
# "Masq") plus DPVS's FULLNAT ("FullNat").
TYPE_CHECKING = False
if TYPE_CHECKING:  # lbadm imports this module: no typing at run time (lb/records.py)
    from typing import Literal

    Forward = Literal["route", "tunnel", "masq", "fullnat"]
FORWARD_NAMES: dict[str, str] = {
    "route": "Route",
    "tunnel": "Tunnel",
    "masq": "Masq",
    "fullnat": "FullNat",
}

# The schedulers lbd has: the C registry's list (native/include/lb_sched_list.h), never retyped.
SCHEDULERS: tuple[str, ...] = C.SCHEDULERS
DEFAULT_SCHEDULER = "wlc"  # ipvsadm's DEF_SCHED, when -s / sched is not given


def unknown_scheduler(name: str) -> str:
    """The refusal of a scheduler lbd does not have (lbadm's and lbd's, with the registry's names)."""
    return f"scheduler {name!r} is not implemented by lbd (lbd has: {', '.join(SCHEDULERS)})"

# ipvsadm/IPVS limits.
MAX_WEIGHT = C.LB_DEST_WEIGHT_MAX  # INT_MAX, as the kernel and ipvsadm 1.31 (Debian) accept
MAX_THRESHOLD = 2**31 - 1  # ipvsadm's INT_MAX for -x/-y

# Scheduler flags (ipvsadm -b/--sched-flags): the kernel's three IP_VS_SVC_F_SCHED bits, kept as
# bits 1, 2, 4 (flag-1, -2, -3). sh and mh name the first two after what they mean to them
# (fallback, port) and read them; every other scheduler ignores all three, as the kernel's do.
SCHED_FLAG_ALL = 7
_FLAG_BIT = {"flag-1": 1, "flag-2": 2, "flag-3": 4, "sh-fallback": 1, "sh-port": 2, "mh-fallback": 1, "mh-port": 2}
SCHED_FLAG_WORDS = tuple(_FLAG_BIT)  # every name ipvsadm's -b accepts


def _flag_names(sched: str) -> tuple[str, str, str]:
    return (f"{sched}-fallback", f"{sched}-port", "flag-3") if sched in ("sh", "mh") else ("flag-1", "flag-2", "flag-3")


def sched_flag_names(sched: str, bits: int) -> list[str]:
    """The names of `bits` for scheduler `sched`, each one that ipvsadm's -b accepts with it: sh and
    mh's own names for the first two, flag-N otherwise. (ipvsadm's listings print no name for the
    third bit of sh and mh: lb.ipvsadm_fmt.)"""
    if not bits:  # most services: every listing asks, once per service
        return []
    return [name for i, name in enumerate(_flag_names(sched)) if bits & (1 << i)]


def sched_flag_bits(sched: str, names: object) -> int:
    """The bits of a list of flag names; ConfigError for an unknown flag or one of another scheduler."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"scheduler flags must be a list of names, got {names!r}")
    bits = 0
    for name in names:
        if name not in _FLAG_BIT:
            raise ConfigError(f"invalid scheduler flag {name!r}")
        if not name.startswith("flag-") and name.split("-")[0] != sched:
            raise ConfigError(f"scheduler flag {name!r} does not go with scheduler {sched!r}")
        bits |= _FLAG_BIT[name]
    return bits


class ConfigError(ValueError):
    """A value an operator supplied is invalid. The message says why."""
