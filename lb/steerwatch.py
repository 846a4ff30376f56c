"""lbd notices when its own steering disappears, and puts it back (issue 16 item 1).

lbd's rules and sets (lb.iptables, lb.ipsets) are the only way packets reach it. A firewall
reload (`iptables-restore` of a file without lbd's jump, `firewall-cmd --reload`), an operator's
`iptables -t raw -F`, or `ipset flush` takes them away silently: new connections to the VIPs then
reach the director's own stack and are refused, while lbd itself sees nothing. So every
WATCH_TICK_S lbd checks that everything it installed is still there, and when something is not,
it logs one line saying what was missing and restores it.

Cost (idle lbd must stay well below 1 % of a core, also at 10,000 services):
- With iptables' nf_tables backend (Debian's default) every rule change anywhere in the netns
  bumps the nftables generation id. One netlink request (NFT_MSG_GETGEN, microseconds) says
  whether any rule changed since the last full check; only then is the raw table read
  (`iptables -S`, whose size does not depend on the number of services: lbd's chains are fixed).
- ip set contents are not part of that generation, so each tick also runs `ipset list -t`:
  headers only, an element count per set (O(1) per set), compared with what lbd put in them.
- With the legacy backend (no generation id) each tick reads the raw table as well.
Measured on this machine with 10,000 services (os.times, lbd plus its children): a tick that
finds nothing changed costs ~1.5 ms of CPU (~0.3 % of a core at two ticks a second), a full
check ~4.5 ms (only after some rule changed), repairing a flushed 10,000-element set ~120 ms.

The generation request is a hand-built 20-byte netlink message on a plain socket rather than
pyroute2's NFTSocket: pyroute2 0.9's synchronous sockets run a private asyncio loop and cannot be
used from lbd's running event loop (lb/netlink.py explains), and this is one request, one reply.
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

from lb.iptables import IptablesError

log = logging.getLogger(__name__)

WATCH_TICK_S = 0.5  # damage is noticed within one tick and repaired in the same one
REPEAT_REPORT_S = 60.0  # the same damage recurring within this (a tool fighting lbd) is summarised

# include/uapi/linux/netlink.h, netfilter/nfnetlink.h, netfilter/nf_tables.h
NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NFGENMSG = struct.Struct("=BBH")  # family, version, resource id (big endian, 0 here)
_NLATTR = struct.Struct("=HH")  # length, type
NETLINK_TIMEOUT_S = 1.0


def nft_generation() -> int | None:
    """The nftables ruleset generation id of this netns (changes with every committed rule
    change), or None when the kernel does not answer (no nf_tables)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
            sock.settimeout(NETLINK_TIMEOUT_S)
            sock.bind((0, 0))
            request = _NLMSGHDR.pack(_NLMSGHDR.size + _NFGENMSG.size, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                                     NLM_F_REQUEST, 1, 0) + _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
            sock.send(request)
            data = sock.recv(4096)
    except OSError:
        return None
    return _gen_from_reply(data)


def _gen_from_reply(data: bytes) -> int | None:
    """NFTA_GEN_ID from an NFT_MSG_NEWGEN reply (bounds-checked; None for anything else)."""
    if len(data) < _NLMSGHDR.size + _NFGENMSG.size:
        return None
    length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data)
    if msg_type == NLMSG_ERROR:
        return None
    end = min(length, len(data))
    off = _NLMSGHDR.size + _NFGENMSG.size
    while off + _NLATTR.size <= end:
        alen, atype = _NLATTR.unpack_from(data, off)
        if alen < _NLATTR.size:
            return None
        if atype & 0x3FFF == NFTA_GEN_ID and alen >= _NLATTR.size + 4 and off + 8 <= end:
            return int(struct.unpack_from(">I", data, off + _NLATTR.size)[0])
        off += (alen + 3) & ~3
    return None


def generation_source(rules: Any) -> Callable[[], int | None] | None:
    """nft_generation when `rules` (an lb.iptables.RuleManager) writes through iptables' nf_tables
    backend in lbd's own netns and the kernel answers; else None (check the rules every tick)."""
    if getattr(rules, "netns", None):
        return None
    try:
        proc = subprocess.run([rules.iptables, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if "nf_tables" not in proc.stdout or nft_generation() is None:
        return None
    return nft_generation


class SteeringWatch:
    """One tick = make sure this queue's steering is intact; repair and report it when not.

    `rules`: the queue's lb.iptables.RuleManager; `steering`: what the sets must hold now
    (Director.steering); `generation`: nft_generation or None (generation_source())."""

    def __init__(self, rules: Any, steering: Callable[[], Any],
                 generation: Callable[[], int | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self.steering = steering
        self.generation = generation
        self.clock = clock
        self.seen_gen: int | None = None  # generation at the last check that found the rules intact
        self.failing = ""  # the error of a repair that failed (reported once), until one succeeds
        self.last_report: tuple[float, tuple[str, ...]] | None = None
        self.repeats = 0  # same damage again within REPEAT_REPORT_S, not yet reported
        self.repairs = 0

    def tick(self) -> list[str]:
        """Check (cheaply when nothing changed), repair; returns what was found damaged."""
        gen = self.generation() if self.generation is not None else None
        if gen is not None and gen == self.seen_gen:
            found = self.rules.set_damage()  # no rule changed: only the sets can have
        else:
            found = self.rules.damage()
        if not found:
            if self.failing:
                log.info("queue %d: lbd's steering is complete again", self.rules.queue_num)
                self.failing = ""
            self.seen_gen = gen  # read before the check: a change during it is seen next tick
            return found
        self.seen_gen = None  # our own repair changes the generation: check fully next tick
        started = time.monotonic()
        try:
            self.rules.repair(self.steering())
        except IptablesError as exc:
            if str(exc) != self.failing:
                log.error("queue %d: lbd's steering is damaged (%s) and could not be restored "
                          "(retrying every %g s): %s", self.rules.queue_num, "; ".join(found), WATCH_TICK_S, exc)
            self.failing = str(exc)
            return found
        self.repairs += 1
        self._report(found, (time.monotonic() - started) * 1000.0)
        return found

    def _report(self, found: list[str], took_ms: float) -> None:
        now, key = self.clock(), tuple(found)
        if self.last_report is not None and self.last_report[1] == key and now - self.last_report[0] < REPEAT_REPORT_S:
            self.repeats += 1  # something keeps removing the same thing: one line a minute, counted
            return
        again = f" (the same damage was repaired {self.repeats} more times since the last report)" if self.repeats else ""
        log.warning("queue %d: lbd's steering had been removed behind its back: %s; restored in %.0f ms "
                    "(meanwhile new connections to the VIPs reached this host's own stack)%s",
                    self.rules.queue_num, "; ".join(found), took_ms, again)
        self.last_report, self.repeats = (now, key), 0
