"""NAT replies taken at ingress (`lbd --nat-replies ingress`, docs/firewall.md "NAT replies").

With `--steer-hook input` lbd takes NAT replies (real server -> client, routed by the director) in a
chain at the forward hook, the only netfilter hook that can queue a routed packet; any rule there
costs every routed packet ~8 % on the testbed (bench/results/2026-12-06-routed-forward-hook-split.md).
This mode takes them before routing instead, on the real servers' interfaces only:

    table netdev lbd-q<N> {
        set natrip, nattcp0, natudp0 { type ipv4_addr }   set nat { RIP . proto . rport }
        chain rs {  type filter hook ingress devices = { <the NAT real servers' interfaces> } priority -500
            ip saddr != @natrip return                  (everything else on those interfaces leaves here)
            fib daddr type local return                 (the director's own connections to them)
            ip frag-off & 16383 != 0 fwd to "lbnr<N>"   (0x3fff: fragments, reassembled by lbd's socket)
            ip saddr . meta l4proto . th sport @nat fwd to "lbnr<N>"   ... (lb.nftlayout's NAT rules)
        }
        chain sink { type filter hook ingress device "lbnr<N>p" priority -500; policy drop; }
    }

`fwd to` hands the packet to the veth `lbnr<N>`; its peer `lbnr<N>p` receives it, where lbd's
packet socket (native/src/natrx.c) reads it before the peer's ingress chain drops it. Traffic that
arrives on any other interface (routed client traffic) meets no hook of lbd's. The interfaces are
where the kernel routes each NAT real server (a route lookup per address, cached, redone when the
routing tables change: lbd's network monitor calls `routes_changed`).

The table, the pair and lbd's reader exist only while NAT real servers do (a director without NAT
services has none of them): created with the first, removed with the last, like the forward chain
of `--nat-replies forward`.

This module holds the names and the text (pure), the veth pair and route lookups (I/O through
pyroute2) and the table's life (NetdevTable); lb.nftsteer writes its lines with the ip table's, in
the same transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from lb import ipsets as ips
from lb.iptlayout import _check_queue
from lb.nftlayout import parse_listing, set_decl, to_nft

log = logging.getLogger(__name__)

FAMILY = "netdev"
RS, SINK = "rs", "sink"
PRIORITY = -500  # before any ingress chain of the operator's (nft prints -500 as-is)
KINDS: tuple[ips.SetKind, ...] = (ips.NAT, ips.NATRIP, ips.NATTCP0, ips.NATUDP0)
MODES = ("forward", "ingress")
# Interfaces never bound: loopback and lbd's own pairs (a real server is never behind them).
NEVER = ("lo",)
IPR_TIMEOUT_S = 30.0  # a batch of route lookups (thousands of addresses: well under a second each)
T = TypeVar("T")
# lb.nftsteer's nft runner: (arguments, ok_missing) -> its output (None: the object does not exist)
Exec = Callable[[list[str], bool], "str | None"]


def pair_names(queue_num: int) -> tuple[str, str]:
    """(the veth `fwd to` sends to, its peer lbd reads): at most 10 characters (IFNAMSIZ 16)."""
    q = _check_queue(queue_num)
    return f"lbnr{q}", f"lbnr{q}p"


def is_own_pair(name: str) -> bool:
    return name.startswith("lbnr")


def rs_rules(tx: str) -> list[str]:
    """`rs`'s rules as `nft list` prints them (the fragment test and the NAT-reply tests)."""
    fwd = f'fwd to "{tx}"'
    return ["ip saddr != @natrip return",
            "fib daddr type local return",
            f"ip frag-off & 16383 != 0 {fwd}",  # 0x3fff: MF or an offset (nft prints it in decimal)
            f"ip saddr . meta l4proto . th sport @nat {fwd}",
            f"meta l4proto icmp {fwd}",
            f"meta l4proto tcp ip saddr @nattcp0 {fwd}",
            f"meta l4proto udp ip saddr @natudp0 {fwd}"]


def hook_line(devices: Iterable[str]) -> str:
    devs = ", ".join(f'"{d}"' for d in sorted(devices))
    return f"type filter hook ingress devices = {{ {devs} }} priority {PRIORITY}; policy accept;"


def sink_line(peer: str) -> str:
    return f'type filter hook ingress device "{peer}" priority {PRIORITY}; policy drop;'


def table_lines(table: str, peer: str, elements: dict[ips.SetKind, set[str]] | None = None) -> list[str]:
    """Delete any netdev table of lbd's of that name, create it with the sink chain and its sets,
    filled with `elements`' NAT kinds (`rs` comes with its interfaces: chain_lines)."""
    t = f"{FAMILY} {table}"
    return [f"add table {t}", f"delete table {t}", f"add table {t}",
            *[f"add {set_decl(k).replace('set ', f'set {t} ', 1)}" for k in KINDS],
            *[f"add element {t} {k.suffix} {{ {', '.join(to_nft(e) for e in sorted(elements[k]))} }}"
              for k in KINDS if elements and elements.get(k)],
            f"add chain {t} {SINK} {{ {sink_line(peer)} }}"]


def chain_lines(table: str, tx: str, devices: set[str], exists: bool) -> list[str]:
    """Replace `rs` by one bound to `devices` (none: no chain). A base chain's devices cannot be
    changed in place on every kernel lbd supports, so it is deleted and added in one transaction."""
    t = f"{FAMILY} {table}"
    lines = [f"flush chain {t} {RS}", f"delete chain {t} {RS}"] if exists else []
    if devices:
        lines += [f"add chain {t} {RS} {{ {hook_line(devices)} }}",
                  *[f"add rule {t} {RS} {r}" for r in rs_rules(tx)]]
    return lines


# ---------------------------------------------------------------- I/O: the veth pair, routes

def _with_ipr(netns: str | None, func: Callable[[Any], T]) -> T:
    """func(an IPRoute) in a thread of its own: pyroute2 0.9's synchronous IPRoute runs its own
    asyncio loop and cannot be called from lbd's running one (lb/netlink.py explains)."""
    def work() -> T:
        from pyroute2 import IPRoute

        loop = asyncio.SelectorEventLoop()
        try:
            ipr = IPRoute(netns=netns, flags=0, groups=0, use_event_loop=loop)
            try:
                return func(ipr)
            finally:
                ipr.close()
        finally:
            loop.close()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lb-natingress") as pool:
        return pool.submit(work).result(timeout=IPR_TIMEOUT_S)


class NatIngress:
    """The veth pair of queue N and the interfaces its `rs` chain is bound to."""

    def __init__(self, queue_num: int, netns: str | None = None,
                 route_devs: Callable[[list[str]], dict[str, str | None]] | None = None) -> None:
        self.tx, self.peer = pair_names(queue_num)
        self.netns = netns
        self._route_devs = route_devs or self._lookup_devs
        self._devs: dict[str, str | None] = {}  # NAT real-server address -> interface (None: no route)

    # -- the pair
    def ensure_pair(self) -> int:
        """Create the veth pair (or keep a previous lbd's), up, IPv6 off on both ends (no neighbour
        discovery chatter on them); returns the peer's ifindex."""
        def work(ipr: Any) -> int:
            if not ipr.link_lookup(ifname=self.peer) or not ipr.link_lookup(ifname=self.tx):
                for name in (self.tx, self.peer):
                    for idx in ipr.link_lookup(ifname=name):
                        ipr.link("del", index=idx)
                ipr.link("add", ifname=self.tx, kind="veth", peer=self.peer)
                log.info("NAT replies at ingress: veth pair %s/%s created", self.tx, self.peer)
            for name in (self.tx, self.peer):
                self._sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            return int(ipr.link_lookup(ifname=self.peer)[0])

        return _with_ipr(self.netns, work)

    def _sysctl(self, key: str, value: str) -> None:
        if self.netns:
            return  # tests driving another netns: IPv6 chatter is harmless (the socket ignores it)
        path = Path("/proc/sys") / key
        with contextlib.suppress(OSError):
            if path.exists():
                path.write_text(value)

    def remove_pair(self) -> None:
        def work(ipr: Any) -> None:
            for idx in ipr.link_lookup(ifname=self.tx):
                ipr.link("del", index=idx)
                log.info("NAT replies at ingress: veth pair %s/%s removed", self.tx, self.peer)

        _with_ipr(self.netns, work)

    def pair_exists(self) -> bool:
        return _with_ipr(self.netns, lambda ipr: bool(ipr.link_lookup(ifname=self.tx))
                         and bool(ipr.link_lookup(ifname=self.peer)))

    # -- interfaces
    def _lookup_devs(self, addrs: list[str]) -> dict[str, str | None]:
        """The interface the kernel routes each address through (None: no route), one socket for all."""
        def work(ipr: Any) -> dict[str, str | None]:
            names: dict[int, str | None] = {}
            out: dict[str, str | None] = {}
            for addr in addrs:
                try:
                    routes = ipr.route("get", dst=addr)
                    oif = routes[0].get_attr("RTA_OIF") if routes else None
                    if oif and oif not in names:
                        links = ipr.link("get", index=oif)
                        names[oif] = links[0].get_attr("IFLA_IFNAME") if links else None
                    out[addr] = names.get(oif) if oif else None
                except Exception as exc:  # pyroute2's NetlinkError (no route: ENETUNREACH)
                    log.debug("NAT replies at ingress: no route to %s: %s", addr, exc)
                    out[addr] = None
            return out

        return _with_ipr(self.netns, work)

    def devices(self, rips: set[str]) -> set[str]:
        """The interfaces the kernel routes `rips` through (looked up once per address)."""
        for gone in set(self._devs) - rips:
            del self._devs[gone]
        new = sorted(rips - set(self._devs))
        if new:
            self._devs.update(self._route_devs(new))
        missing = sorted(r for r in rips if self._devs.get(r) is None)
        if missing:
            log.warning("NAT replies at ingress: no route to %s: their replies cannot be taken until one exists",
                        ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return {d for d in self._devs.values() if d and d not in NEVER and not is_own_pair(d)}

    def forget_routes(self) -> None:
        """The routing tables changed: every address is looked up again at the next devices()."""
        self._devs.clear()


# ---------------------------------------------------------------- the table's life

def remove(table: str, exec_: Exec, ingress: NatIngress | None) -> None:
    """The netdev table and veth pair of an lbd of this queue with --nat-replies ingress (this one's
    at teardown; a killed one's at setup, whatever this lbd's mode: replies forwarded to a pair
    nobody reads would be lost). `ingress` None: the table only (unit tests' fakes)."""
    if exec_(["list", "table", FAMILY, table], True) is not None:
        exec_(["delete", "table", FAMILY, table], False)
        log.info("nftables: table %s %s removed", FAMILY, table)
    if ingress is not None:
        ingress.remove_pair()


class NetdevTable:
    """The netdev table `table` and the veth pair of `ingress` while NAT real servers exist. The
    lines it returns go into lb.nftsteer's transactions; `committed()` after each one that succeeded.
    `on_pair(ifindex)` is called when the peer lbd reads appears (0: it went away)."""

    def __init__(self, table: str, ingress: NatIngress, exec_: Exec, on_pair: Callable[[int], None]) -> None:
        self.table = table
        self.ingress = ingress
        self._exec = exec_
        self._on_pair = on_pair
        self.active = False  # lbd's table and pair exist (NAT real servers exist)
        self.devices: set[str] = set()  # what `rs` is bound to
        self.ifindex = 0  # the peer lbd reads (0: none)
        self._drop_pair = False  # the table's deletion is in the transaction: the pair follows it

    def _reader(self, index: int) -> None:
        if index != self.ifindex:
            self.ifindex = index
            self._on_pair(index)

    def remove(self) -> None:
        """Table and pair gone now (teardown, a killed lbd's leftovers)."""
        remove(self.table, self._exec, self.ingress)
        self._gone()

    def _gone(self) -> None:
        self.active = False
        self.devices = set()
        self._drop_pair = False
        self._reader(0)

    def _create(self, elements: dict[ips.SetKind, set[str]]) -> list[str]:
        """The pair (created, or a previous lbd's kept), then the table whole with `elements`' NAT kinds
        and `rs` on their interfaces."""
        self._reader(self.ingress.ensure_pair())
        devices = self.ingress.devices(elements[ips.NATRIP])
        lines = table_lines(self.table, self.ingress.peer, elements)
        lines += chain_lines(self.table, self.ingress.tx, devices, exists=False)
        if not self.active:
            log.info("nft %s %s: NAT replies taken at ingress of %s (pair %s/%s)", FAMILY, self.table,
                     ", ".join(sorted(devices)) or "no interface yet", self.ingress.tx, self.ingress.peer)
        self.devices = devices
        self.active = True
        return lines

    def _drop(self) -> list[str]:
        self._drop_pair = True
        return [f"delete table {FAMILY} {self.table}"]

    def _rebind(self, natrip: set[str]) -> list[str]:
        devices = self.ingress.devices(natrip)
        if devices == self.devices:
            return []
        lines = chain_lines(self.table, self.ingress.tx, devices, exists=bool(self.devices))
        log.info("nft %s %s: NAT replies taken at ingress of %s", FAMILY, self.table,
                 ", ".join(sorted(devices)) or "no interface")
        self.devices = devices
        return lines

    def sync_lines(self, want: dict[ips.SetKind, set[str]]) -> list[str]:
        """A full sync: re-created whole when NAT real servers exist, else deleted if it was there."""
        self._drop_pair = False
        if want[ips.NATRIP]:
            return self._create(want)
        return self._drop() if self.active else []

    def delta_lines(self, before: set[str], after: set[str],
                    elements: Callable[[], dict[ips.SetKind, set[str]]]) -> list[str]:
        """One change of the NAT real-server addresses (`before` -> `after`): the table comes with the
        first (whole: `elements()`), goes with the last, else `rs` follows their interfaces."""
        self._drop_pair = False
        if after and not self.active:
            return self._create(elements())
        if not after:
            return self._drop() if self.active else []
        return self._rebind(after) if after != before else []

    def mirrors(self, before: set[str], after: set[str]) -> bool:
        """Whether the NAT elements of this change are written into the netdev table too (it exists
        before and after; else delta_lines writes or deletes it whole)."""
        return self.active and bool(before) and bool(after)

    def committed(self) -> None:
        """The transaction holding the last lines went through."""
        if self._drop_pair:
            self.ingress.remove_pair()
            self._gone()

    def routes_changed(self, natrip: set[str]) -> list[str]:
        """Lines re-binding `rs` when a routing change moved the NAT real servers' interfaces."""
        if not self.active:
            return []
        self.ingress.forget_routes()
        return self._rebind(natrip)

    def damage(self, installed: dict[ips.SetKind, set[str]] | None) -> list[str]:
        """What is missing or altered of the table (sets, `sink`, `rs` as bound) and the pair."""
        if not self.active:
            return []
        t = f"{FAMILY} {self.table}"
        text = self._exec(["-a", "list", "table", FAMILY, self.table], True)
        if text is None:
            return [f"nft table {t} gone"]
        listing = parse_listing(text)
        found = [f"nft set {t} {k.suffix} gone" for k in KINDS if k.suffix not in listing.set_types]
        if installed is not None:
            found += [f"nft set {t} {k.suffix} holds {len(listing.elements.get(k.suffix, ()))} of its "
                      f"{len(installed[k])} elements" for k in KINDS
                      if k.suffix in listing.set_types and len(listing.elements.get(k.suffix, ())) != len(installed[k])]
        sink = listing.chains.get(SINK)
        if sink is None or sink.rules or "policy drop" not in sink.hook:
            found.append(f"nft chain {t} {SINK} gone or altered")
        rs = listing.chains.get(RS)
        if self.devices and (rs is None or rs.rules != rs_rules(self.ingress.tx)):
            found.append(f"nft chain {t} {RS} gone or altered")
        if not self.ingress.pair_exists():
            found.append(f"veth pair {self.ingress.tx}/{self.ingress.peer} gone")
        return found
