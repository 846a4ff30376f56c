"""Service and destination flag bits (include/uapi/linux/ip_vs.h, include/net/ip_vs.h) and
ipvsadm 1.31's names for the scheduler flags (`-b/--sched-flags`).

The kernel stores the scheduler flags as three anonymous bits, SCHED1..SCHED3, in the service's
flags; each scheduler gives them meaning. Only sh and mh read any: bit 1 = fallback, bit 2 =
port (same bits, different names). Every other scheduler ignores all three. The kernel accepts
any combination on any scheduler; only ipvsadm refuses `sh-*`/`mh-*` names on another scheduler.
"""

from __future__ import annotations

from typing import Final

# struct ip_vs_service.flags
IP_VS_SVC_F_PERSISTENT: Final = 0x0001
IP_VS_SVC_F_HASHED: Final = 0x0002
IP_VS_SVC_F_ONEPACKET: Final = 0x0004  # ipvsadm -o/--ops: UDP only, see model.Service
IP_VS_SVC_F_SCHED1: Final = 0x0008
IP_VS_SVC_F_SCHED2: Final = 0x0010
IP_VS_SVC_F_SCHED3: Final = 0x0020
IP_VS_SVC_F_SCHED_MASK: Final = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2 | IP_VS_SVC_F_SCHED3

IP_VS_SVC_F_SCHED_SH_FALLBACK: Final = IP_VS_SVC_F_SCHED1
IP_VS_SVC_F_SCHED_SH_PORT: Final = IP_VS_SVC_F_SCHED2
IP_VS_SVC_F_SCHED_MH_FALLBACK: Final = IP_VS_SVC_F_SCHED1  # defined in ip_vs_mh.c itself
IP_VS_SVC_F_SCHED_MH_PORT: Final = IP_VS_SVC_F_SCHED2

# struct ip_vs_dest.flags: the only bit is OVERLOAD (upper connection threshold reached).
IP_VS_DEST_F_OVERLOAD: Final = 0x0002

DEFAULT_SCHEDULER: Final = "wlc"  # ipvsadm's DEF_SCHED, used when -s is absent

# ipvsadm's flag words, and which scheduler each belongs to (None: any scheduler).
SCHED_FLAG_NAMES: Final[dict[str, tuple[int, str | None]]] = {
    "flag-1": (IP_VS_SVC_F_SCHED1, None),
    "flag-2": (IP_VS_SVC_F_SCHED2, None),
    "flag-3": (IP_VS_SVC_F_SCHED3, None),
    "sh-fallback": (IP_VS_SVC_F_SCHED_SH_FALLBACK, "sh"),
    "sh-port": (IP_VS_SVC_F_SCHED_SH_PORT, "sh"),
    "mh-fallback": (IP_VS_SVC_F_SCHED_MH_FALLBACK, "mh"),
    "mh-port": (IP_VS_SVC_F_SCHED_MH_PORT, "mh"),
}


class SchedFlagsError(ValueError):
    """ipvsadm's refusal of a -b value: `message` is its text, exit status 2."""

    exit_status = 2


def parse_sched_flags(scheduler: str | None, text: str) -> int:
    """ipvsadm's parse_sched_flags(): comma-separated words to SCHED1..3 bits.

    The scheduler is the one given with -s in the same command (ipvsadm's default "wlc" when
    none was), whatever the order of -s and -b on the line: ipvsadm parses -b after all options.
    Empty words are skipped (strtok); an unknown word or a word of another scheduler fails.
    """
    sched = scheduler or DEFAULT_SCHEDULER
    if text == "":
        # ipvsadm keeps -b's argument in a buffer and parses it only when it is non-empty:
        # `-b ''` leaves the flags untouched, i.e. no scheduler flag.
        return 0
    flags = 0
    words = [w for w in text.split(",") if w]
    if not words:
        # Only commas: strtok() finds no word and ipvsadm 1.31 then compares a NULL pointer
        # (it crashes). There is no kernel behaviour to follow; refuse it as invalid.
        raise SchedFlagsError(f"invalid scheduler flag `{text}'")
    for word in words:
        known = SCHED_FLAG_NAMES.get(word)
        if known is None:
            raise SchedFlagsError(f"invalid scheduler flag `{word}'")
        bit, owner = known
        flags |= bit
        if owner is not None and owner != sched:
            raise SchedFlagsError(f"incompatible scheduler flag `{word}'")
    return flags


def format_sched_flags(scheduler: str, flags: int) -> str:
    """ipvsadm's print_sched_flags(): how -L and -S show the bits (sh/mh by their own names,
    every other scheduler as flag-N); empty when no scheduler bit is set."""
    if scheduler == "sh":
        names = [("sh-fallback", IP_VS_SVC_F_SCHED1), ("sh-port", IP_VS_SVC_F_SCHED2)]
    elif scheduler == "mh":
        names = [("mh-fallback", IP_VS_SVC_F_SCHED1), ("mh-port", IP_VS_SVC_F_SCHED2)]
    else:
        names = [
            ("flag-1", IP_VS_SVC_F_SCHED1),
            ("flag-2", IP_VS_SVC_F_SCHED2),
            ("flag-3", IP_VS_SVC_F_SCHED3),
        ]
    return ",".join(name for name, bit in names if flags & bit)
