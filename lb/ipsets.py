"""lbd's ip sets: what its raw-table rules look up, so that steering costs O(1) in services.

lbd's raw chain (lb/iptables.py) holds a fixed handful of rules whatever the configuration; what
changes with the configuration is the content of these sets, one family per queue number N:

    lbd-q<N>-addr   hash:ip          every VIP and FULLNAT local address: the pre-filter. A packet
                                     to any other address and not from a NAT real server (natrip)
                                     leaves lbd's chain at its first rule, after two hash lookups
                                     (routed traffic through the director costs one rule).
    lbd-q<N>-svc    hash:ip,port     VIP,proto:port of every service with a port  (dst,dst)
    lbd-q<N>-tcp0   hash:ip          VIPs of TCP port-0 ("all ports") services   (dst, -p tcp)
    lbd-q<N>-udp0   hash:ip          VIPs of UDP port-0 services                  (dst, -p udp)
    lbd-q<N>-fnat   hash:ip,port,ip  RIP,proto:rport,LIP of FULLNAT replies       (src,src,dst)
    lbd-q<N>-nat    hash:ip,port     RIP,proto:rport of NAT real servers: replies (src,src, to a
                                     destination that is not local)
    lbd-q<N>-natrip hash:ip          RIPs of NAT real servers: their ICMP errors   (src, -p icmp,
                                     to a destination that is not local); it holds every NAT
                                     destination's address, port-less ones too, so it is also
                                     what routed traffic is tested against (! src, first rule)
    lbd-q<N>-nattcp0 hash:ip         RIPs of port-less NAT destinations: TCP replies from any port
    lbd-q<N>-natudp0 hash:ip         the same for UDP                  (src, -p tcp/udp, not local)
    lbd-q<N>-fnattcp0 hash:ip        RIPs of port-less FULLNAT destinations: TCP replies from any
                                     port, to a VIP or local address (src, -p tcp, after the pre-filter)
    lbd-q<N>-fnatudp0 hash:ip        the same for UDP
                                     (a RIP,LIP pair would be exact, but hash:net,net is not in every
                                     kernel: this one refuses it)

A NAT destination is port-less when its connections reach the real server on the client's port
(nat_reply_port): a destination without a port, or any destination of a persistent port-zero or
fwmark service (the kernel's ip_vs_schedule / ip_vs_sched_persist). Its replies come from
RIP:<whatever port the client asked for>, which no RIP,proto:port element can name; the kernel's
ip_vs_out finds them by the reply tuple. These sets queue every TCP (UDP) packet such a real server
routes through the director to a non-local address: lbd translates those of its connections and
hands the others back (verdict accept, untracked: the real server's own connections through the
director are not masqueraded by the director's conntrack-based rules; see docs/fastpath.md).

Why ipset rather than nftables sets: this kernel has no nft `queue` statement, so the NFQUEUE
verdict must stay an xtables target, and only xtables rules can test ip sets (`-m set`); nft sets
are not visible to xtables rules. With ipset the rules stay iptables rules in the raw table
(priority -300, before conntrack), `CT --notrack` and `NFQUEUE --queue-bypass` keep their exact
semantics, and each set is changed element by element (`ipset add/del`, batched through one
`ipset restore`), which costs what changed, never what exists. `lbd --steering nftables`
(lb/nftsteer.py) is the opt-in other way: the same elements in native nft sets of a table of
lbd's own, whose queue verdict is the native queue statement or, on kernels without it, the
xtables NFQUEUE target written into that table over netlink (lb/nftqueue.py).

The sets are created and destroyed by lbd only: every set named `lbd-q<N>-*` of these names
belongs to the lbd of queue N, nothing else does. A set cannot be destroyed while a rule refers to
it, so teardown removes the rules first (lb/iptables.py does that order).

NAT (`-m`) replies are addressed to clients, not to the director, so their four rules come before
the address pre-filter (after the first rule, which lets pass what is neither to an address in
lbd-q<N>-addr nor from one in lbd-q<N>-natrip); `-m addrtype ! --dst-type LOCAL` keeps the
director's own traffic with a NAT real server (health checks, an operator's curl) out of the queue
and tracked.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SET_PREFIX = "lbd-q"
MAXELEM = 1 << 20  # elements per set: 1,048,576 services (or FULLNAT reply triples)
HASHSIZE = 1024  # initial buckets; the kernel grows hash:* sets as they fill
COMMAND_TIMEOUT_S = 30.0
PROTO_NAMES = {6: "tcp", 17: "udp"}

Runner = Callable[[Sequence[str], str | None], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True, eq=False)  # identity: the five KINDS are singletons, hashed often (cheaply)
class SetKind:
    suffix: str
    type: str
    what: str


ADDR = SetKind("addr", "hash:ip", "VIPs and local addresses")
SVC = SetKind("svc", "hash:ip,port", "services VIP,proto:port")
TCP0 = SetKind("tcp0", "hash:ip", "VIPs of TCP port-0 services")
UDP0 = SetKind("udp0", "hash:ip", "VIPs of UDP port-0 services")
FNAT = SetKind("fnat", "hash:ip,port,ip", "FULLNAT replies RIP,proto:rport,LIP")
NAT = SetKind("nat", "hash:ip,port", "NAT replies RIP,proto:rport")
NATRIP = SetKind("natrip", "hash:ip", "NAT real servers (their ICMP errors)")
NATTCP0 = SetKind("nattcp0", "hash:ip", "port-less NAT real servers (TCP replies from any port)")
NATUDP0 = SetKind("natudp0", "hash:ip", "port-less NAT real servers (UDP replies from any port)")
FNATTCP0 = SetKind("fnattcp0", "hash:ip", "port-less FULLNAT real servers (TCP replies from any port)")
FNATUDP0 = SetKind("fnatudp0", "hash:ip", "port-less FULLNAT real servers (UDP replies from any port)")
KINDS: tuple[SetKind, ...] = (ADDR, SVC, TCP0, UDP0, FNAT, NAT, NATRIP, NATTCP0, NATUDP0, FNATTCP0, FNATUDP0)


def nat_reply_port(service_port: int, persistent: bool, dest_port: int) -> int:
    """The port a NAT destination's replies come from, 0 when it is the client's (a port-less
    destination): the kernel's cp->dport is dest->port, or the client's port when the destination
    has none (ip_vs_schedule); every connection of a persistent port-zero or fwmark service (port 0)
    takes the client's (ip_vs_sched_persist). C: lb_dest_rport_is_client."""
    if not dest_port or (not service_port and persistent):
        return 0
    return dest_port


@dataclass
class SetDelta:
    """What a change does to the sets (lb.steeringcache): elements to add and to delete, per kind."""

    added: dict[SetKind, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})
    removed: dict[SetKind, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})

    @property
    def empty(self) -> bool:
        return not any(self.added.values()) and not any(self.removed.values())


def set_name(queue_num: int, kind: SetKind) -> str:
    return f"{SET_PREFIX}{queue_num}-{kind.suffix}"


class IpsetError(RuntimeError):
    def __init__(self, cmd: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr.strip()
        status = "timed out" if returncode is None else f"exit status {returncode}"
        super().__init__(f"{' '.join(self.cmd)}: {status}" + (f": {self.stderr}" if self.stderr else ""))


@dataclass
class Steering:
    """What lbd wants queued, as set elements (the rules themselves never change)."""

    services: set[tuple[int, str, int]] = field(default_factory=set)  # (proto, vip, port)
    # (proto, rip, rport, lip); rport 0: a port-less destination (nat_reply_port), replies from any port
    fnat_replies: set[tuple[int, str, int, str]] = field(default_factory=set)
    # (proto, rip, rport) of NAT dests; rport 0: port-less (nat_reply_port), replies from any port
    nat_replies: set[tuple[int, str, int]] = field(default_factory=set)
    addrs: set[str] = field(default_factory=set)  # VIPs and local addresses (extra ones: ICMP)
    fwmarks: set[int] = field(default_factory=set)  # fwmark services: queued from mangle (lb.iptables), not sets

    def elements(self) -> dict[SetKind, set[str]]:
        """Each set's content in the exact form `ipset save` prints it. O(N) in plain set operations
        (the element text of each tuple is computed once and cached): ~ms at 10,000 services."""
        out: dict[SetKind, set[str]] = {k: set() for k in KINDS}
        addrs = out[ADDR]
        for svc in self.services:
            kind, vip, element = _service_element(*svc)
            addrs.add(vip)
            out[kind].add(element)
        for reply in self.fnat_replies:
            kind, element, lip = _fnat_element(*reply)
            out[kind].add(element)
            addrs.add(lip)
        addrs.update(_addr(a) for a in self.addrs)
        for proto, rip, rport in self.nat_replies:
            kind, element = _nat_element(proto, rip, rport)
            out[kind].add(element)
            out[NATRIP].add(_addr(rip))
        return out


@functools.lru_cache(maxsize=1 << 18)
def _service_element(proto: int, vip: str, port: int) -> tuple[SetKind, str, str]:
    vip = _addr(vip)
    if port == 0:
        return (TCP0 if _proto(proto) == "tcp" else UDP0), vip, vip
    return SVC, vip, f"{vip},{_proto(proto)}:{_port(port)}"


@functools.lru_cache(maxsize=1 << 18)
def _nat_element(proto: int, rip: str, rport: int) -> tuple[SetKind, str]:
    """The element that steers a NAT destination's replies: RIP,proto:rport, or for a port-less one
    (rport 0) its RIP in the protocol's set of replies from any port."""
    kind, rip, element = _service_element(proto, rip, rport)
    if kind is SVC:
        return NAT, element
    return (NATTCP0 if kind is TCP0 else NATUDP0), rip


@functools.lru_cache(maxsize=1 << 18)
def _fnat_element(proto: int, rip: str, rport: int, lip: str) -> tuple[SetKind, str, str]:
    """(set kind, element, local address) that steers a FULLNAT destination's replies to `lip`:
    RIP,proto:rport,LIP, or for a port-less one (rport 0) its RIP in the protocol's set (the LIP is
    in the address pre-filter, which the rule comes after)."""
    if rport:
        element, lip_text = _reply_element(proto, rip, rport, lip)
        return FNAT, element, lip_text
    lip_text = _addr(lip)
    return (FNATTCP0 if _proto(proto) == "tcp" else FNATUDP0), _addr(rip), lip_text


@functools.lru_cache(maxsize=1 << 18)
def _reply_element(proto: int, rip: str, rport: int, lip: str) -> tuple[str, str]:
    return f"{_addr(rip)},{_proto(proto)}:{_port(rport)},{_addr(lip)}", _addr(lip)


@functools.lru_cache(maxsize=1 << 16)
def _addr(a: str) -> str:
    try:
        return str(ipaddress.IPv4Address(a))
    except ValueError as exc:
        raise ValueError(f"invalid IPv4 address {a!r}") from exc


def _proto(p: int) -> str:
    name = PROTO_NAMES.get(p)
    if name is None:
        raise ValueError(f"unsupported protocol {p!r} (tcp=6, udp=17)")
    return name


def _port(p: int) -> int:
    if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 65535:
        raise ValueError(f"port {p!r} out of range 0..65535")
    return p


def parse_save(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """`ipset save` text -> (set name -> type, set name -> elements)."""
    types: dict[str, str] = {}
    members: dict[str, set[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "create":
            types[words[1]] = words[2]
            members.setdefault(words[1], set())
        elif len(words) >= 3 and words[0] == "add":
            members.setdefault(words[1], set()).add(words[2])
    return types, members


def parse_headers(text: str) -> dict[str, int]:
    """`ipset list -t` text -> set name -> number of entries."""
    out: dict[str, int] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("Name: "):
            name = line[6:].strip()
        elif line.startswith("Number of entries: ") and name is not None:
            out[name] = int(line.split(":", 1)[1])
    return out


def _run(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), input=stdin, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, check=False)


class SetManager:
    """Owns queue N's sets: creates, fills incrementally, heals and destroys them.

    `installed` caches what the kernel holds (set kind -> elements); a sync computes the
    difference against it and sends only that, in one `ipset restore` (no command at all when
    nothing differs). The cache is (re)read from the kernel when it is unknown: at start, on
    adoption of a previous lbd's sets, and after a failed restore (which may have applied a
    part: the next sync, e.g. a rollback's, converges from what the kernel really holds). Only
    lbd changes its sets; what someone else does to them (a flushed set) is found by `check()`
    (`ipset list -t`: element counts, O(1) per set), which a sync does first with verify=True:
    the periodic or repairing sync, not every configuration change (a subprocess, 2-20 ms).
    """

    def __init__(self, queue_num: int, *, netns: str | None = None, runner: Runner | None = None,
                 ipset: str = "ipset") -> None:
        self.queue_num = queue_num
        self.names = {k: set_name(queue_num, k) for k in KINDS}
        self.netns = netns
        self.ipset = ipset
        self._runner: Runner = runner or _run
        self.installed: dict[SetKind, set[str]] | None = None

    def _exec(self, args: list[str], stdin: str | None = None, ok_codes: Iterable[int] = (0,)) -> str:
        full = (["ip", "netns", "exec", self.netns] if self.netns else []) + [self.ipset, *args]
        try:
            proc = self._runner(full, stdin)
        except FileNotFoundError as exc:
            raise IpsetError(full, 127, f"{exc.filename or self.ipset}: not found (install the ipset package)") from exc
        except subprocess.TimeoutExpired as exc:
            raise IpsetError(full, None, f"no answer within {COMMAND_TIMEOUT_S:g} s") from exc
        if proc.returncode not in tuple(ok_codes):
            raise IpsetError(full, proc.returncode, proc.stderr or "")
        return proc.stdout or ""

    def _create_line(self, kind: SetKind) -> str:
        return f"create {self.names[kind]} {kind.type} family inet hashsize {HASHSIZE} maxelem {MAXELEM}"

    def _restore(self, lines: list[str]) -> None:
        if lines:
            self._exec(["restore", "-exist"], "\n".join(lines) + "\n")

    def existing(self) -> tuple[dict[str, str], dict[str, set[str]]]:
        """Our sets as the kernel holds them now (one `ipset save` per existing set)."""
        types: dict[str, str] = {}
        members: dict[str, set[str]] = {}
        present = parse_headers(self._exec(["list", "-t"]))
        for name in self.names.values():
            if name in present:
                t, m = parse_save(self._exec(["save", name]))
                types.update(t)
                members.update(m)
        return types, members

    def create(self) -> None:
        """Create our sets empty (destroying leftovers first: the caller removed the rules)."""
        self.destroy()
        self._restore([self._create_line(k) for k in KINDS])
        self.installed = {k: set() for k in KINDS}

    def destroy(self) -> None:
        """Destroy our sets (those that exist). Rules referring to them must be gone first."""
        present = parse_headers(self._exec(["list", "-t"]))
        names = [n for n in self.names.values() if n in present]
        if names:
            self._restore([f"destroy {n}" for n in names])
            log.info("ip sets destroyed: %s", ", ".join(names))
        self.installed = None

    def load(self) -> None:
        """Adopt what exists: create missing sets, re-create sets of a wrong type only if unused
        (a rule still referring to one makes that fail loudly), and cache the content."""
        types, members = self.existing()
        lines: list[str] = []
        installed: dict[SetKind, set[str]] = {}
        for kind, name in self.names.items():
            if types.get(name) == kind.type:
                installed[kind] = members.get(name, set())
                continue
            if name in types:
                log.warning("ip set %s has type %s, not %s: re-creating it", name, types[name], kind.type)
                lines.append(f"destroy {name}")
            lines.append(self._create_line(kind))
            installed[kind] = set()
        self._restore(lines)
        self.installed = installed

    def check(self) -> None:
        """Drop the cache of any set whose element count differs from the kernel's (or that is gone)."""
        if self.installed is None:
            return
        present = parse_headers(self._exec(["list", "-t"]))
        for kind, name in self.names.items():
            if present.get(name) != len(self.installed.get(kind, ())):
                log.warning("ip set %s: kernel holds %s entries, lbd expected %d; re-reading it",
                            name, present.get(name, "no set and no"), len(self.installed.get(kind, ())))
                self.installed = None
                return

    def sync(self, steering: Steering, verify: bool = False) -> tuple[int, int]:
        """Make the sets hold exactly `steering`: only the difference is sent. Returns (added, deleted).
        verify: first check the kernel's element counts against the cache (check())."""
        if verify:
            self.check()
        return self.sync_elements(steering.elements())

    def sync_elements(self, want: dict[SetKind, set[str]]) -> tuple[int, int]:
        """sync() of an element listing (Steering.elements()'s form; the sets are kept, not copied)."""
        if self.installed is None:
            self.load()
        assert self.installed is not None
        lines: list[str] = []
        added = deleted = 0
        for kind in KINDS:
            have = self.installed[kind]
            new = want[kind]
            # deletions of addresses after the other sets' deletions, additions before: the
            # pre-filter never hides an element that is still wanted
            for e in sorted(new - have):
                lines.append(f"add {self.names[kind]} {e}")
                added += 1
        for kind in reversed(KINDS):
            for e in sorted(self.installed[kind] - want[kind]):
                lines.append(f"del {self.names[kind]} {e}")
                deleted += 1
        if lines:
            try:
                self._restore(lines)
            except IpsetError:
                self.installed = None  # a part may be applied: re-read the kernel's sets next time
                raise
            log.debug("ip sets of queue %d: %d added, %d deleted", self.queue_num, added, deleted)
        self.installed = want
        return added, deleted

    def apply(self, added: dict[SetKind, set[str]], removed: dict[SetKind, set[str]]) -> tuple[int, int]:
        """Add and delete just these elements (a change's delta, lb.steeringcache), in one
        `ipset restore`: no set is listed or diffed, so it costs what changed. Needs the cache
        of what the kernel holds (`installed`); an element already there is not added again, one
        not there is not deleted. Same order as sync(): additions (the address pre-filter first)
        before deletions (the pre-filter last). Returns (added, deleted)."""
        if self.installed is None:
            raise RuntimeError("SetManager.apply before the sets were loaded: sync first")
        installed = self.installed
        adds = {k: added.get(k, set()) - installed[k] for k in KINDS}
        dels = {k: removed.get(k, set()) & installed[k] for k in KINDS}
        lines = [f"add {self.names[k]} {e}" for k in KINDS for e in sorted(adds[k])]
        lines += [f"del {self.names[k]} {e}" for k in reversed(KINDS) for e in sorted(dels[k])]
        if not lines:
            return 0, 0
        try:
            self._restore(lines)
        except IpsetError:
            self.installed = None  # a part may be applied: re-read the kernel's sets next time
            raise
        for k in KINDS:
            installed[k] |= adds[k]
            installed[k] -= dels[k]
        n_add, n_del = sum(map(len, adds.values())), sum(map(len, dels.values()))
        log.debug("ip sets of queue %d: %d added, %d deleted (a change)", self.queue_num, n_add, n_del)
        return n_add, n_del
