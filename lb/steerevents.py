"""lbd's steering watch driven by the kernel's nftables notifications instead of a tick (issue 19).

lb.steerwatch's SteeringWatch used to tick every 0.5 s (1 s under --packet-source afxdp): one
NFT_MSG_GETGEN request and, with iptables steering, an ip set header dump. On a host that is
~0.42 ms a tick and the largest part of an idle lbd's main-thread CPU; in an emulated guest, where
Python runs ~25x slower, far more. The kernel says when something changed instead: every committed
nf_tables transaction (iptables' nf_tables backend, `nft`, lbd's own `nft -f`) is announced to the
NETLINK_NETFILTER multicast group NFNLGRP_NFTABLES (include/uapi/linux/netfilter/nfnetlink.h) as
its rule/chain/set/element notifications followed by one NFT_MSG_NEWGEN carrying the new
generation id (net/netfilter/nf_tables_api.c: nf_tables_commit ends with nf_tables_gen_notify,
which sends that message alone in its datagram).

So lbd subscribes one socket to that group and registers it with its event loop (add_reader):
- a wake-up drains the socket and coalesces what it holds into one check: the generation of the
  last datagram when it is a NEWGEN, else "unknown" (a transaction still being announced, or a
  kernel that batches NEWGEN with others: the check then reads everything);
- the check (SteeringWatch.check) runs once the ruleset has been quiet for a fifth of the watch's
  period (0.1 s: an operator's change is often several commands, SETTLE_FRACTION), at the latest a
  period after the first notification, and not sooner than a period after the previous check:
  damage is repaired within the period as before (issue 16), and a firewall committing in a loop
  costs lbd no more checks than the tick did;
- lbd's own transactions are announced too: NftManager.damage still reads nothing when the
  generation is exactly the one its last write made (seen_gen/_intact_gen as with the tick);
- ENOBUFS (the kernel dropped notifications: a flush of thousands of set elements), a drain that
  does not end, or a check that failed: a full check (generation unknown); a socket error other
  than ENOBUFS: the socket is opened again, and while that fails the watch polls as it used to;
- a failed repair is retried every period until it succeeds (no notification may come).
With `--steering nftables` (set elements are nftables objects) nothing else runs: an idle lbd makes
no netfilter request at all. With iptables steering on the nf_tables backend the ip sets' element
counts are still read every period (ipset announces nothing), without the GETGEN request.
Where the generation cannot be read (legacy iptables, rules in another netns, no nf_tables) or the
subscription is refused, the watch ticks exactly as before.

Measured (2-core host, lbd idle 20 s with one service, its main thread's CPU from
/proc/<pid>/task/<pid>/schedstat, three paired rounds, tick -> notifications): --steering nftables
0.61, 0.63, 0.83 -> 0.33, 0.35, 0.45 ms/s (-45 %); iptables steering on iptables-nft 0.91, 1.05,
1.25 -> 0.87, 1.03, 1.23 ms/s (-2 to -5 %: the ip set header dump every 0.5 s, which stays, was most
of the tick there).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lb import periodic
from lb.steerwatch import (
    _NFGENMSG,
    _NLMSGHDR,
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFTA_GEN_ID,
    SteeringWatch,
    _attrs,
    generation_source,
    set_counts_source,
    watch_period_s,
)

log = logging.getLogger(__name__)

NFNLGRP_NFTABLES = 7  # include/uapi/linux/netfilter/nfnetlink.h
SOL_NETLINK = 270  # include/linux/socket.h
NETLINK_ADD_MEMBERSHIP = 1  # include/uapi/linux/netlink.h
NFT_MSG_NEWGEN = 15  # include/uapi/linux/netfilter/nf_tables.h
NEWGEN = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN
RECV_BYTES = 1 << 16  # a notification datagram is at most NLMSG_GOODSIZE (a page)
MAX_DATAGRAMS = 4096  # per wake-up; the rest is read at the next one (and the generation is unknown)
# A check waits until the ruleset has been quiet for this fraction of the period (0.1 s; 0.2 s under
# afxdp): an operator's change is often several transactions (`iptables -t raw -F; iptables -t raw -X;
# ipset destroy ...`, a firewall script), and a repair in the middle of them breaks the rest (the
# `ipset destroy` of a set lbd's repaired rules use again) and is reported for what was half done.
SETTLE_FRACTION = 0.2


def newgen_id(data: bytes) -> int | None:
    """The generation id of a datagram whose first message is an NFT_MSG_NEWGEN notification, else
    None (another notification, or anything malformed: bounds-checked)."""
    if len(data) < _NLMSGHDR.size + _NFGENMSG.size:
        return None
    length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data)
    if msg_type != NEWGEN or length > len(data) or length < _NLMSGHDR.size + _NFGENMSG.size:
        return None
    for atype, start, end in _attrs(data, _NLMSGHDR.size + _NFGENMSG.size, length):
        if atype == NFTA_GEN_ID and end - start >= 4:
            return int(struct.unpack_from(">I", data, start)[0])
    return None


def subscribed_socket() -> socket.socket:
    """A non-blocking NETLINK_NETFILTER socket in this netns, member of NFNLGRP_NFTABLES. Raises
    OSError (EPERM without CAP_NET_ADMIN; EINVAL/ENOENT where the group does not exist)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setblocking(False)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Drained:
    """What one drain of the socket found: whether anything was announced (or lost), and the
    generation it leaves the ruleset at, when known."""

    changed: bool
    gen: int | None


class NftEvents:
    """The subscribed socket. `opener` makes it (subscribed_socket; unit tests pass a socketpair's end)."""

    def __init__(self, opener: Callable[[], socket.socket] = subscribed_socket) -> None:
        self.opener = opener
        self.sock: socket.socket | None = None
        self.overruns = 0  # ENOBUFS seen (notifications the kernel dropped)

    def open(self) -> int:
        """Open (once) and return the descriptor to watch. Raises OSError."""
        if self.sock is None:
            self.sock = self.opener()
        return self.sock.fileno()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def drain(self) -> Drained:
        """Read everything queued (at most MAX_DATAGRAMS) without blocking. Raises OSError for a
        socket error other than ENOBUFS (the socket is then closed)."""
        if self.sock is None:
            raise OSError(errno.EBADF, "notification socket not open")
        changed = lost = False
        gen = None
        try:
            for _ in range(MAX_DATAGRAMS):
                try:
                    data = self.sock.recv(RECV_BYTES)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.overruns += 1
                    changed = lost = True  # the queued notifications are still there: read on
                    continue
                if not data:
                    raise OSError(errno.EPIPE, "notification socket closed")
                changed = True
                gen = newgen_id(data)  # the last datagram decides: a NEWGEN ends each transaction
            else:
                lost = True
        except OSError:
            self.close()
            raise
        return Drained(changed, None if lost else gen)


class EventWatch:
    """Runs a SteeringWatch when NftEvents says something committed (module doc); `period_s` is the
    watch's period: the least time between two checks, and the retry interval."""

    def __init__(self, watch: SteeringWatch, events: NftEvents, loop: asyncio.AbstractEventLoop,
                 period_s: float) -> None:
        self.watch = watch
        self.events = events
        self.loop = loop
        self.period_s = period_s
        self.fd: int | None = None  # the descriptor registered with the loop, while subscribed
        self.timer: asyncio.TimerHandle | None = None
        self.pending = False
        self.pending_gen: int | None = None
        self.first_pending = float("-inf")  # when the pending check was first asked for
        self.settle_s = period_s * SETTLE_FRACTION
        self.last_check = float("-inf")
        self.checks = 0

    def start(self) -> None:
        """Subscribe (raises OSError: the caller polls instead), then one check: a change between
        lbd's setup and the subscription is seen by it."""
        self._subscribe()
        self.last_check = self.loop.time()
        self.checks += 1
        ok = False
        try:
            self.watch.tick()  # asks for the generation once: later notifications are compared with it
            ok = not self.watch.failing
        except Exception:  # keep the daemon up; retried after a period
            log.exception("checking lbd's steering rules failed")
        if not ok:
            self._want(None, settle=False)

    def close(self) -> None:
        """Stop: the timer cancelled, the reader removed, the socket closed."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._unsubscribe()

    def check_sets(self) -> None:
        """The ip sets' tick (iptables steering: ipset announces nothing). Skipped while a check of
        everything is due, which reads the sets too: a set tick in the middle of `iptables -t raw -F;
        -X; ipset destroy` would repair it all and report only the set. Notifications not read yet
        count (the socket is drained first)."""
        if self.fd is not None:
            self._readable()
        if self.pending or self.fd is None:
            return
        self.watch.check_sets()

    def _subscribe(self) -> None:
        self.fd = self.events.open()
        self.loop.add_reader(self.fd, self._readable)

    def _unsubscribe(self) -> None:
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            self.fd = None
        self.events.close()

    def _readable(self) -> None:
        try:
            drained = self.events.drain()
        except OSError as exc:
            self._unsubscribe()
            try:
                self._subscribe()
                log.warning("steering notifications: %s; subscribed again, checking everything", exc)
            except OSError as again:
                log.warning("steering notifications: %s, and subscribing again failed (%s): checking every %g s "
                            "until it succeeds", exc, again, self.period_s)
            self._want(None, settle=False)
            return
        if drained.changed:
            self._want(drained.gen)

    def _want(self, gen: int | None, settle: bool = True) -> None:
        """A check at generation `gen` (None: unknown) is due: once the ruleset has been quiet for
        settle_s (`settle`: a notification) but at the latest a period after the first notification
        not yet checked, and not sooner than a period after the last check; what arrives meanwhile
        is merged into it."""
        now = self.loop.time()
        if self.pending:
            gen = None if self.pending_gen is None or gen is None else gen
        else:
            self.first_pending = now
        self.pending, self.pending_gen = True, gen
        due = max(self.last_check + self.period_s,
                  min(self.first_pending + self.period_s, now + (self.settle_s if settle else 0.0)))
        if self.timer is not None:
            if abs(self.timer.when() - due) < 1e-3:
                return
            self.timer.cancel()
            self.timer = None
        if due > now:
            self.timer = self.loop.call_at(due, self._fire)
        else:
            self._fire()

    def _fire(self) -> None:
        self.timer = None
        gen, self.pending = self.pending_gen, False
        if self.fd is None:  # lost the subscription: try again, poll meanwhile
            try:
                self._subscribe()
                log.info("steering notifications: subscribed again")
            except OSError:
                pass
        self.last_check = self.loop.time()
        self.checks += 1
        ok = False
        try:
            if self.fd is not None:
                self.watch.check(gen)
            else:
                self.watch.tick()
            ok = not self.watch.failing
        except Exception:  # keep the daemon up; retried after a period
            log.exception("checking lbd's steering rules failed")
        if not ok or self.fd is None:
            self._want(None, settle=False)


@dataclass
class Watching:
    """What watch_steering started: the periodic tasks to cancel at shutdown, then close()."""

    watch: SteeringWatch
    tasks: list[asyncio.Future[Any]]
    events: EventWatch | None

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None


def watch_steering(rules: Any, steering: Callable[[], Any], afxdp: bool,
                   opener: Callable[[], socket.socket] = subscribed_socket) -> Watching:
    """Start watching `rules` (lb.iptables.RuleManager or lb.nftsteer.NftManager) on the running loop:
    event-driven where the nftables generation can be read and the subscription is accepted, else
    the tick (module doc). `afxdp`: the rules are AF_XDP's NFQUEUE fallback (a 1 s period)."""
    loop = asyncio.get_running_loop()
    period = watch_period_s(afxdp)
    generation = generation_source(rules)
    watch = SteeringWatch(rules, steering, generation, set_counts=set_counts_source(rules), period_s=period)
    driver = None
    if generation is not None:
        driver = EventWatch(watch, NftEvents(opener), loop, period)
        try:
            driver.start()
        except OSError as exc:
            log.info("nftables notifications unavailable (%s): lbd's steering is checked every %g s", exc, period)
            driver.close()
            driver = None
    if driver is None:
        work: Callable[[], object] = watch.tick
    elif getattr(rules, "sets_in_generation", False):
        log.debug("lbd's steering is checked on nftables notifications only")
        return Watching(watch, [], driver)
    else:
        log.debug("lbd's rules are checked on nftables notifications, its ip sets every %g s", period)
        work = driver.check_sets
    task = asyncio.ensure_future(periodic.run_every(period, work, "checking lbd's steering rules", log))
    return Watching(watch, [task], driver)
