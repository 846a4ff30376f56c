"""lbd notices when its own steering disappears, and puts it back (issue 16 item 1).

Where the kernel announces nftables transactions to lbd's netns (lb.steerevents) the check runs on
those notifications instead of the tick described here: with `--steering nftables` nothing
periodic is left, with iptables-nft only the ip sets' element counts (below). The tick remains
where no generation can be read or the subscription is refused.

lbd's rules and sets (lb.iptables, lb.ipsets) are the only way packets reach it. A firewall
reload (`iptables-restore` of a file without lbd's jump, `firewall-cmd --reload`), an operator's
`iptables -t raw -F`, or `ipset flush` takes them away silently: new connections to the VIPs then
reach the director's own stack and are refused, while lbd itself sees nothing. So every
WATCH_TICK_S (WATCH_TICK_AFXDP_S when they are the AF_XDP source's NFQUEUE fallback) lbd checks that
everything it installed is still there, and when something is not, it logs one line saying what was
missing and restores it.

Cost (idle lbd must stay well below 1 % of a core, also at 10,000 services): no process is
started while nothing changed.
- With iptables' nf_tables backend (Debian's default) every rule change anywhere in the netns
  bumps the nftables generation id. One netlink request (NFT_MSG_GETGEN, ~10 us) says whether any
  rule changed since the last full check; only then is the raw table read (`iptables -S`, whose
  size does not depend on the number of services: lbd's chains are fixed).
- ip set contents are not part of that generation, so each tick also asks the kernel for the
  sets' headers over netlink (IPSET_CMD_LIST with IPSET_FLAG_LIST_HEADER: an element count per
  set, O(1) per set, ~0.05 ms) and compares them with what lbd put in them.
- With `lbd --steering nftables` (lb.nftsteer) set elements are nftables objects too, so the
  generation alone says whether anything changed; and a change that is lbd's own last write (the
  generation moved by exactly its transactions) is not re-read (NftManager.damage).
- Without either (legacy iptables, a kernel that does not answer) each tick runs `iptables -S`
  and `ipset list -t`. Forking them from lbd, a large process at 10,000 services, cost ~1 % of a
  core at two ticks a second, which is why the netlink path exists.
Measured with 10,000 services, lbd's idle CPU over 30 s (utime+stime of lbd and its children):
0.43 % without the watch, see the commit message for the figure with it; repairing a flushed
10,000-element set takes ~120 ms.

Both requests are built on plain netlink sockets (the ipset one with pyroute2's message class)
rather than through pyroute2's sockets: pyroute2 0.9's synchronous sockets run a private asyncio
loop and cannot be used from lbd's running event loop (lb/netlink.py explains).
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from lb.iptables import IptablesError
from lb.nfnlbatch import attr_spans as _attrs  # the attribute walker steerevents and tests use by this name

log = logging.getLogger(__name__)

WATCH_TICK_S = 0.5  # damage is noticed within one tick and repaired in the same one
# Under --packet-source afxdp the rules and sets are only the NFQUEUE fallback (fragments, director-local
# clients, fwmark services: docs/afxdp.md): the XDP program steers the services' traffic before them.
# Their watch ticks once a second, still within issue 16's second, on the same grid as the other
# periodic loops: the main thread then wakes once a second, not twice (host, 8 kpps fast-pathed:
# 1.2 -> 0.6 ms/s of its CPU idle; the watch was about half of it).
WATCH_TICK_AFXDP_S = 1.0


def watch_period_s(afxdp: bool) -> float:
    """How often the watch ticks: WATCH_TICK_AFXDP_S when the rules are AF_XDP's NFQUEUE fallback."""
    return WATCH_TICK_AFXDP_S if afxdp else WATCH_TICK_S
REPEAT_REPORT_S = 60.0  # the same damage recurring within this (a tool fighting lbd) is summarised

# include/uapi/linux/netlink.h, netfilter/nfnetlink.h, netfilter/nf_tables.h
NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLMSG_DONE = 3
NLMSG_ERROR = 2
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NFGENMSG = struct.Struct("=BBH")  # family, version, resource id (big endian, 0 here)
_NLATTR = struct.Struct("=HH")  # length, type
_BE32 = struct.Struct(">I")
NETLINK_TIMEOUT_S = 1.0


class NetfilterChannel:
    """One NETLINK_NETFILTER socket kept open for the watch's requests, in lbd's own netns.

    A socket per request cost socket+ioctl+bind+close, and Python's socket timeout a poll() before
    every send and every receive: 38 system calls per tick with lbd's sets, 15 now (send, then one
    receive per reply message). The socket blocks with SO_RCVTIMEO/SO_SNDTIMEO (no poll); replies
    are matched by sequence number, so a late reply to a request that timed out is skipped. Any
    error closes the socket (the next request opens a new one) and the caller gets None."""

    def __init__(self, timeout_s: float = NETLINK_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self.seq = 0

    def _socket(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            try:
                whole = int(self.timeout_s)
                tv = struct.pack("@ll", whole, int((self.timeout_s - whole) * 1e6))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
                sock.bind((0, 0))
            except OSError:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, request: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        """Send `request` (its sequence number replaced by a fresh one) and yield the replies to it as
        (message type, the datagram holding it, body start, message end); ends after a reply that is not part
        of a dump, or at NLMSG_DONE. Raises OSError (the socket is then closed)."""
        self.seq = self.seq % 0x7FFFFFFF + 1
        try:
            sock = self._socket()
            sock.send(request[:8] + struct.pack("=I", self.seq) + request[12:])
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    raise OSError("netlink socket closed")
                off = 0
                while off + _NLMSGHDR.size <= len(data):
                    length, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                    if length < _NLMSGHDR.size or off + length > len(data):
                        raise OSError("malformed netlink message")
                    if seq == self.seq:
                        yield msg_type, data, off + _NLMSGHDR.size, off + length
                        if msg_type in (NLMSG_DONE, NLMSG_ERROR) or not flags & NLM_F_MULTI:
                            return
                    off += (length + 3) & ~3
        except OSError:
            self.close()
            raise


_CHANNEL = NetfilterChannel()


def nft_generation() -> int | None:
    """The nftables ruleset generation id of this netns (changes with every committed rule
    change), or None when the kernel does not answer (no nf_tables)."""
    request = _NLMSGHDR.pack(_NLMSGHDR.size + _NFGENMSG.size, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                             NLM_F_REQUEST, 0, 0) + _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
    try:
        for msg_type, data, start, end in _CHANNEL.exchange(request):
            return _gen_from_reply(data[start - _NLMSGHDR.size:end]) if msg_type != NLMSG_ERROR else None
    except OSError:
        return None
    return None


def _gen_from_reply(data: bytes) -> int | None:
    """NFTA_GEN_ID from an NFT_MSG_NEWGEN reply (bounds-checked; None for anything else)."""
    if len(data) < _NLMSGHDR.size + _NFGENMSG.size:
        return None
    length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data)
    if msg_type == NLMSG_ERROR:
        return None
    for atype, start, end in _attrs(data, _NLMSGHDR.size + _NFGENMSG.size, length):
        if atype == NFTA_GEN_ID and end - start >= 4:
            return int(struct.unpack_from(">I", data, start)[0])
    return None


IPSET_PROTOCOL = 7  # include/uapi/linux/netfilter/ipset/ip_set.h; the kernel accepts 6..7
IPSET_ATTR_SETNAME = 2
IPSET_ATTR_DATA = 7
IPSET_ATTR_ELEMENTS = 24  # inside IPSET_ATTR_DATA of a header listing


@functools.cache
def _ipset_list_headers_request() -> bytes:
    """IPSET_CMD_LIST of every set, headers only (IPSET_FLAG_LIST_HEADER), as a dump: encoded once
    with pyroute2's message class."""
    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_IPSET
    from pyroute2.netlink.nfnetlink.ipset import IPSET_CMD_LIST, IPSET_FLAG_LIST_HEADER, ipset_msg

    msg = ipset_msg()
    msg["attrs"] = [["IPSET_ATTR_PROTOCOL", IPSET_PROTOCOL], ["IPSET_ATTR_FLAGS", IPSET_FLAG_LIST_HEADER]]
    msg["header"]["type"] = (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    msg["header"]["sequence_number"] = 1
    msg.encode()
    return bytes(msg.data)


def ipset_counts() -> dict[str, int] | None:
    """Every ip set of this netns -> its number of elements (headers only), or None when the kernel
    does not answer. The replies are read with struct, not decoded into pyroute2 objects: this
    runs twice a second (0.05 ms instead of 0.8 ms with 7 sets)."""
    counts: dict[str, int] = {}
    try:
        for msg_type, data, start, end in _CHANNEL.exchange(_ipset_list_headers_request()):
            if msg_type == NLMSG_DONE:
                return counts
            if msg_type == NLMSG_ERROR:
                return None
            name, elements = _set_header(data, start + _NFGENMSG.size, end)
            if name is not None and elements is not None:
                counts[name] = elements
    except (OSError, ImportError):
        return None
    return None


def _set_header(data: bytes, start: int, end: int) -> tuple[str | None, int | None]:
    """The set's name and element count from one header listing's attributes (data[start:end]),
    bounds-checked as _attrs; None for what is absent or cut short. Inline rather than through _attrs:
    this runs for every set twice a second, and the generator's frames were a third of the tick."""
    name = elements = None
    unpack = _NLATTR.unpack_from
    end = min(end, len(data))
    off = start
    while off + 4 <= end:
        alen, atype = unpack(data, off)
        if alen < 4 or off + alen > end:
            break
        atype &= 0x3FFF
        if atype == IPSET_ATTR_SETNAME:
            name = data[off + 4:off + alen].split(b"\0", 1)[0].decode("ascii", "replace")
        elif atype == IPSET_ATTR_DATA:
            c, d = off + 4, off + alen
            while c + 4 <= d:
                blen, btype = unpack(data, c)
                if blen < 4 or c + blen > d:
                    break
                if btype & 0x3FFF == IPSET_ATTR_ELEMENTS:
                    if blen >= 8:
                        elements = int(_BE32.unpack_from(data, c + 4)[0])
                    break
                c += (blen + 3) & ~3
        off += (alen + 3) & ~3
    return name, elements


def generation_source(rules: Any) -> Callable[[], int | None] | None:
    """nft_generation when `rules` (an lb.iptables.RuleManager) writes through iptables' nf_tables
    backend in lbd's own netns and the kernel answers; else None (check the rules every tick)."""
    if getattr(rules, "netns", None):
        return None
    if getattr(rules, "sets_in_generation", False):  # lb.nftsteer: a native table, nf_tables by definition
        return nft_generation if nft_generation() is not None else None
    try:
        proc = subprocess.run([rules.iptables, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if "nf_tables" not in proc.stdout or nft_generation() is None:
        return None
    return nft_generation


def set_counts_source(rules: Any) -> Callable[[], dict[str, int] | None] | None:
    """ipset_counts when lbd reads the ip sets of its own netns and the kernel answers, else None
    (also for lb.nftsteer's native sets: their elements are part of the nftables generation)."""
    if getattr(rules, "netns", None) or getattr(rules, "sets_in_generation", False) or ipset_counts() is None:
        return None
    return ipset_counts


class SteeringWatch:
    """One tick = make sure this queue's steering is intact; repair and report it when not.

    `rules`: the queue's lb.iptables.RuleManager; `steering`: what the sets must hold now
    (Director.steering); `generation`: nft_generation or None (generation_source())."""

    def __init__(self, rules: Any, steering: Callable[[], Any],
                 generation: Callable[[], int | None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 set_counts: Callable[[], dict[str, int] | None] | None = None,
                 period_s: float = WATCH_TICK_S) -> None:
        self.rules = rules
        self.period_s = period_s  # how often the caller ticks (watch_period_s): for the log only
        self.steering = steering
        self.generation = generation
        self.set_counts = set_counts  # ipset_counts or None (`ipset list -t` then)
        self.clock = clock
        self.seen_gen: int | None = None  # generation at the last check that found the rules intact
        self.failing = ""  # the error of a repair that failed (reported once), until one succeeds
        self.last_report: tuple[float, tuple[str, ...]] | None = None
        self.repeats = 0  # same damage again within REPEAT_REPORT_S, not yet reported
        self.repairs = 0

    def tick(self) -> list[str]:
        """Polling: check (cheaply when nothing changed), repair; returns what was found damaged."""
        return self.check(self.generation() if self.generation is not None else None)

    def check(self, gen: int | None) -> list[str]:
        """Check against nftables generation `gen` (None: unknown, read everything), repair; returns
        what was found damaged. lb.steerevents calls it with the generation of the last NEWGEN
        notification, tick() with the one it asked the kernel for."""
        return self._check(gen, whole=gen is None or gen != self.seen_gen)

    def check_sets(self) -> list[str]:
        """The ip sets' element counts only (lb.steerevents: rule changes arrive as notifications,
        ipset has none), repair; returns what was found damaged."""
        return self._check(self.seen_gen, whole=False)

    def _check(self, gen: int | None, whole: bool) -> list[str]:
        counts = self.set_counts() if self.set_counts is not None else None
        found = self.rules.damage(counts) if whole else self.rules.set_damage(counts)  # not whole: no rule changed
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
                          "(retrying every %g s): %s", self.rules.queue_num, "; ".join(found), self.period_s, exc)
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
