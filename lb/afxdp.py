"""lbd's AF_XDP packet source (lbd --packet-source afxdp, docs/afxdp.md).

An XDP program (native/bpf/lb_xdp.bpf.c, built into lb/lb_xdp.bpf.o) on each given interface
redirects the packets lbd owns to AF_XDP sockets, one per receive queue, each served by a C thread
around the same packet core as the NFQUEUE adapter (native/src/xsk.c). Everything else goes to the
kernel untouched. What lbd owns is a BPF hash map of keys this module keeps equal to the director's
steering (the same input as the iptables rules and ip sets of the NFQUEUE source): AfxdpSource is
the Director's `rules` object, so every change of the service table updates the map before the
change is acknowledged.

The program is attached through a bpf_link held only by lbd's file descriptor: when lbd exits or
is killed (kill -9 included) the kernel removes it from the interface, and the interface's packets
reach the kernel's own stack again.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lb._ffi import ffi, lib
from lb.ipsets import Steering

log = logging.getLogger("lbd.afxdp")

BPF_OBJECT = Path(__file__).resolve().parent / "lb_xdp.bpf.o"
MODES = {"auto": lib.LB_XDP_MODE_AUTO, "native": lib.LB_XDP_MODE_NATIVE, "generic": lib.LB_XDP_MODE_GENERIC}
MODE_NAMES = {lib.LB_XDP_MODE_NATIVE: "native", lib.LB_XDP_MODE_GENERIC: "generic"}
XSK_STAT_NAMES: tuple[str, ...] = tuple(name for name, _ in ffi.typeof("struct lb_xsk_stats").fields)
XDP_STAT_NAMES: tuple[str, ...] = tuple(name for name, _ in ffi.typeof("struct lb_xdp_stats").fields)

# (saddr, daddr, sport, dport, proto), host order: struct lb_xdp_key.
Key = tuple[int, int, int, int, int]


class AfxdpError(OSError):
    """The AF_XDP packet source could not start (or a steering key could not be set)."""


class AfxdpRefusal(AfxdpError):
    """A configuration the AF_XDP source cannot steer: the change is refused with this errno (lbadm
    prints lbd's reason for EOPNOTSUPP, not a bare "Input/output error")."""

    errno_name = "EOPNOTSUPP"

    def __str__(self) -> str:
        return str(self.strerror)  # the reason alone, not "[Errno 0] ..."


def steering_keys(steering: Steering) -> set[Key]:
    """The program's keys for `steering` (lb_api.h struct lb_xdp_key). fwmark services cannot be
    steered by XDP (no firewall mark exists before the kernel's stack): refused."""
    if steering.fwmarks:
        raise AfxdpRefusal(0, "fwmark services need the NFQUEUE packet source, or the AF_XDP source's NFQUEUE "
                         "fallback (lbd without --no-iptables): XDP runs before any firewall rule could mark a "
                         f"packet (marks {sorted(steering.fwmarks)})")
    ip = _ip
    keys: set[Key] = {(0, ip(vip), 0, port, proto) for proto, vip, port in steering.services}
    keys.update((ip(rip), ip(lip), rport, 0, proto) for proto, rip, rport, lip in steering.fnat_replies)
    keys.update((ip(rip), 0, rport, 0, proto) for proto, rip, rport in steering.nat_replies)
    return keys


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def rx_queue_count(ifname: str) -> int:
    """The interface's receive queues (ethtool -l's combined + rx, as sysfs lists them)."""
    try:
        n = sum(1 for e in os.listdir(f"/sys/class/net/{ifname}/queues") if e.startswith("rx-"))
    except OSError as exc:
        raise AfxdpError(exc.errno or 0, f"{ifname}: cannot list its receive queues: {exc}") from exc
    return max(n, 1)


def xdp_link_prog_ids(fdinfo_dir: str = "/proc/self/fdinfo") -> dict[int, int]:
    """ifindex -> id of the program of each XDP bpf_link this process holds (the links' fdinfo:
    link_type xdp, prog_id, ifindex)."""
    found: dict[int, int] = {}
    try:
        fds = os.listdir(fdinfo_dir)
    except OSError:
        return found
    for fd in fds:
        try:
            with open(os.path.join(fdinfo_dir, fd)) as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:  # closed meanwhile
            continue
        if fields.get("link_type", "").strip() != "xdp":
            continue
        try:
            found[int(fields["ifindex"])] = int(fields["prog_id"])
        except (KeyError, ValueError):
            continue
    return found


def attach_program(ifname: str, flag: str, what: str, mode: str, error: type[OSError],
                   attach: Callable[[int, Any, Any, Any], Any]) -> tuple[Any, str, int]:
    """Attach one of lb_xdp.bpf.o's programs to `ifname` by `attach(ifindex, mode, native_err, err)`
    (lb_xdp_attach or lb_xdp_attach_shed with the rest of their arguments bound): the handle, the
    mode used, and the native attempt's -errno when generic mode was used instead. Raises `error`
    naming `flag` and `what` when the interface or the attach fails."""
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError as exc:
        raise error(exc.errno or 0, f"{flag} {ifname}: no such interface") from exc
    used, native_err, err = ffi.new("int *"), ffi.new("int *"), ffi.new("int *")
    handle = attach(ifindex, used, native_err, err)
    if handle == ffi.NULL:
        code = -err[0]
        raise error(code, f"{ifname}: cannot attach {what} ({mode} mode): {os.strerror(code)}")
    return handle, MODE_NAMES.get(used[0], "?"), native_err[0]


class ProgramKeys:
    """What the programs of lb_xdp.bpf.o match, kept equal on each of them: the keys (lb_keys) and the
    director's own addresses (lb_local), only the difference written. The AF_XDP source's and the
    overload guard's (lb.xdpshed); `error` is the exception each raises, `what` names a key in it."""

    def __init__(self, error: type[OSError], what: str) -> None:
        self.programs: list[tuple[str, Any]] = []  # (interface, lb_xdp_t *)
        self.keys: set[Key] = set()
        self.local: set[int] = set()
        self._error = error
        self._what = what

    def add(self, ifname: str, handle: Any) -> None:
        """A newly attached program gets every key and address the others have."""
        self.programs.append((ifname, handle))
        for key in self.keys:
            self._key(ifname, handle, key, True)
        for addr in self.local:
            self._addr(ifname, handle, addr, True)

    def set_keys(self, want: set[Key]) -> None:
        for ifname, handle in self.programs:
            for key in want - self.keys:
                self._key(ifname, handle, key, True)
            for key in self.keys - want:
                self._key(ifname, handle, key, False)
        self.keys = want

    def set_local(self, addrs: Sequence[str]) -> None:
        """The director's own addresses (lbd's sync_local_addrs; IPv6 ones left out): NAT reply keys
        do not match packets to them, as the NFQUEUE rules' `-m addrtype ! --dst-type LOCAL`."""
        want = {_ip(a) for a in addrs if ":" not in a}
        for ifname, handle in self.programs:
            for addr in want - self.local:
                self._addr(ifname, handle, addr, True)
            for addr in self.local - want:
                self._addr(ifname, handle, addr, False)
        self.local = want

    def _key(self, ifname: str, handle: Any, key: Key, present: bool) -> None:
        k = ffi.new("struct lb_xdp_key *")
        k.saddr, k.daddr, k.sport, k.dport, k.proto = key
        r = lib.lb_xdp_key_set(handle, k, 1 if present else 0)
        if r < 0:
            raise self._error(-r, f"{ifname}: cannot {'add' if present else 'remove'} {self._what} {key}: "
                              f"{os.strerror(-r)}")

    def _addr(self, ifname: str, handle: Any, addr: int, present: bool) -> None:
        r = lib.lb_xdp_local_set(handle, addr, 1 if present else 0)
        if r < 0:
            raise self._error(-r, f"{ifname}: cannot {'add' if present else 'remove'} local address "
                              f"{ipaddress.IPv4Address(addr)}: {os.strerror(-r)}")


@dataclass
class _Attached:
    ifname: str
    handle: Any  # lb_xdp_t *
    mode: str
    sockets: list[Any]  # lb_xsk_t *, one per receive queue


class AfxdpSource:
    """The XDP program on `interfaces` and their AF_XDP sockets, on the engine's lb_t."""

    def __init__(self, lb_handle: Any, interfaces: Sequence[str], mode: str = "auto", copy: bool = False,
                 cpus: Sequence[int] | None = None, mark_queue: int = 0, bpf_object: Path = BPF_OBJECT,
                 timers: bool = True, qdisc_bypass: bool = False, fastpath: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"XDP mode {mode!r}: one of {', '.join(MODES)}")
        self._lb = lb_handle
        self.interfaces = list(interfaces)
        self.mode = mode
        self.copy = copy
        self.cpus = list(cpus or [])  # --queue-cpus: socket i's thread on cpus[i] (all or none pinned)
        self.qdisc_bypass = qdisc_bypass  # the AF_PACKET sockets' frames skip the qdisc
        self.mark_queue = mark_queue
        self.bpf_object = bpf_object
        self.timers = timers  # False: another thread (the NFQUEUE fallback's queue) runs the sweep and timers
        # --xdp-fastpath: the program forwards established DR TCP flows itself (docs/afxdp.md); one
        # interface only (a flow is installed in one program's map)
        self.fastpath = fastpath
        if fastpath and len(self.interfaces) != 1:
            raise AfxdpError(22, f"--xdp-fastpath works on one --xdp-interface, not {len(self.interfaces)}: an "
                             "established flow is installed in one interface's XDP program")
        self._attached: list[_Attached] = []
        self._maps = ProgramKeys(AfxdpError, "XDP steering key")

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Attach and bind every interface, all or nothing."""
        if not self.bpf_object.exists():
            raise AfxdpError(2, f"the XDP program {self.bpf_object} is missing (`make build` compiles it)")
        self._check_cpus()
        try:
            for ifname in self.interfaces:
                self._attach(ifname)
        except BaseException:
            self.stop()
            raise

    def _check_cpus(self) -> None:
        """--queue-cpus names one CPU per socket, in socket order (as one per queue under NFQUEUE):
        a list that does not match the interfaces' receive queues is refused before anything is
        attached."""
        if not self.cpus:
            return
        queues = [(ifname, rx_queue_count(ifname)) for ifname in self.interfaces]
        sockets = sum(n for _, n in queues)
        if len(self.cpus) != sockets:
            raise AfxdpError(22, f"--queue-cpus lists {len(self.cpus)} CPU(s) for {sockets} AF_XDP socket(s), one per "
                             "receive queue (" + ", ".join(f"{name}: {n}" for name, n in queues) + ")")

    def _attach(self, ifname: str) -> None:
        flows = lib.lb_conn_max(self._lb) if self.fastpath else 0  # room for every connection's flow
        handle, used, native_err = attach_program(
            ifname, "--xdp-interface", "the XDP program", self.mode, AfxdpError,
            lambda ifindex, mode, nerr, err: lib.lb_xdp_attach(os.fsencode(self.bpf_object), ifindex,
                                                               MODES[self.mode], flows, mode, nerr, err))
        att = _Attached(ifname, handle, used, [])
        self._attached.append(att)
        if self.fastpath:
            log.info("%s: XDP fast path on (--xdp-fastpath): established DR TCP flows are forwarded by the XDP "
                     "program, room for %d flows; their statistics and timers reach the engine within ~2 s; not "
                     "while the sync master runs (it decides per packet)", ifname, flows)
        if att.mode == "native":
            log.info("%s: XDP program attached in native (driver) mode", ifname)
        elif self.mode == "generic":
            log.info("%s: XDP program attached in generic (skb) mode, as asked", ifname)
        else:
            log.warning("%s: XDP program attached in generic (skb) mode: the driver refused native mode (%s)",
                        ifname, os.strerror(-native_err) if native_err else "no reason given")
        self._maps.add(ifname, handle)
        err = ffi.new("int *")
        for queue_id in range(rx_queue_count(ifname)):
            opts = ffi.new("struct lb_xsk_opts *")
            first = self.timers and len(self._attached) == 1 and queue_id == 0
            opts.flags = ((lib.LB_XSK_F_TIMERS if first else 0) | (lib.LB_XSK_F_COPY if self.copy else 0)
                          | (lib.LB_XSK_F_QDISC_BYPASS if self.qdisc_bypass else 0))
            n = sum(len(a.sockets) for a in self._attached)
            opts.cpu = self.cpus[n] if n < len(self.cpus) else -1
            opts.queue_id = queue_id
            opts.mark_queue = self.mark_queue
            q = lib.lb_xsk_start(self._lb, handle, opts, err)
            if q == ffi.NULL:
                code = -err[0]
                raise AfxdpError(code, f"{ifname} queue {queue_id}: cannot bind an AF_XDP socket: {os.strerror(code)}")
            att.sockets.append(q)
            pinned = f", thread on CPU {opts.cpu}" if opts.cpu >= 0 else ""
            if lib.lb_xsk_zerocopy(q):
                log.info("%s queue %d: AF_XDP socket in zero-copy mode%s", ifname, queue_id, pinned)
            else:
                st = ffi.new("struct lb_xsk_stats *")
                lib.lb_xsk_get_stats(q, st)
                why = ("--xdp-copy" if self.copy else
                       f"the driver refused zero-copy: {os.strerror(st.zerocopy_err)}" if st.zerocopy_err else "")
                log.info("%s queue %d: AF_XDP socket in copy mode%s%s", ifname, queue_id, f" ({why})" if why else "",
                         pinned)

    def stop(self) -> None:
        """Sockets first (their threads stop), then the programs: the interfaces are the kernel's again."""
        if self._attached:
            nonzero = [{k: v for k, v in st.items() if v} for st in self.socket_stats()]
            log.info("AF_XDP totals: program %s; sockets %s", self.program_stats(), nonzero)
        while self._attached:
            att = self._attached.pop()
            while att.sockets:
                lib.lb_xsk_stop(att.sockets.pop())
            lib.lb_xdp_detach(att.handle)
            log.info("%s: XDP program detached", att.ifname)
        self._maps.programs.clear()

    def describe(self) -> str:
        return ", ".join(f"{a.ifname} ({a.mode} XDP, {len(a.sockets)} AF_XDP socket{'s' if len(a.sockets) != 1 else ''})"
                         for a in self._attached)

    def afxdp_status(self) -> list[dict[str, Any]]:
        """What `ping` reports under "afxdp" (lbadm doctor compares it with the kernel's view): per
        interface its name and index, the XDP mode, the id of lbd's program (from its link's fdinfo),
        the receive queues the interface has and those lbd bound a socket to (in the xsk map)."""
        prog_ids = xdp_link_prog_ids()
        out = []
        for att in self._attached:
            try:
                ifindex = socket.if_nametoindex(att.ifname)
            except OSError:
                ifindex = 0
            try:
                rx_queues = rx_queue_count(att.ifname)
            except AfxdpError:
                rx_queues = 0
            out.append({"ifname": att.ifname, "ifindex": ifindex, "mode": att.mode, "prog_id": prog_ids.get(ifindex),
                        "rx_queues": rx_queues, "sockets": list(range(len(att.sockets))),
                        "zerocopy": [bool(lib.lb_xsk_zerocopy(q)) for q in att.sockets]})
        return out

    # ------------------------------------------------------------ steering (Director's `rules`)
    def sync(self, steering: Steering, verify_sets: bool = False) -> None:
        """Make every program redirect exactly what `steering` names (a Director change calls this
        before it is acknowledged; a failure here rolls the change back)."""
        self._maps.set_keys(steering_keys(steering))

    def set_local_addrs(self, addrs: Sequence[str]) -> None:
        """The director's own addresses (lbd's sync_local_addrs): NAT reply keys do not redirect
        packets to them, as the NFQUEUE rules' `-m addrtype ! --dst-type LOCAL`."""
        self._maps.set_local(addrs)

    # ------------------------------------------------------------ counters
    def socket_stats(self) -> list[dict[str, int]]:
        out = []
        for att in self._attached:
            for q in att.sockets:
                st = ffi.new("struct lb_xsk_stats *")
                lib.lb_xsk_get_stats(q, st)
                out.append({name: getattr(st, name) for name in XSK_STAT_NAMES})
        return out

    def socket_names(self) -> list[dict[str, Any]]:
        """(interface, receive queue) of each socket, in socket_stats' order."""
        return [{"interface": att.ifname, "queue": queue_id} for att in self._attached
                for queue_id in range(len(att.sockets))]

    def afxdp_counters(self) -> dict[str, Any]:
        """The `counters` control operation's "afxdp": the programs' counters summed, each socket's."""
        sockets = self.socket_stats()  # first: what they counted was redirected before the program's read
        return {"program": self.program_stats(), "sockets": sockets, "socket_names": self.socket_names()}

    def program_stats(self) -> dict[str, int]:
        total = dict.fromkeys(XDP_STAT_NAMES, 0)
        for att in self._attached:
            st = ffi.new("struct lb_xdp_stats *")
            lib.lb_xdp_get_stats(att.handle, st)
            for name in XDP_STAT_NAMES:
                total[name] += getattr(st, name)
        return total


class AfxdpWithFallback:
    """The Director's `rules` under afxdp with the NFQUEUE fallback (the default; lbd --no-iptables
    turns it off): the XDP program redirects what it can see whole, and the NFQUEUE source's own
    steering of lbd's --steering (lb.iptables.RuleManager's raw-table rules and ip sets, or
    lb.nftsteer.NftManager's table `ip lbd-q<N>`, at either --steer-hook; the same queue bound by
    the same engine) takes what reaches the kernel's stack instead: IP fragments the program
    passes, reassembled by nf_defrag_ipv4 before the raw table (at input: by local delivery), and
    packets that never cross an XDP hook, such as a director-local client's to a VIP (they enter
    PREROUTING on lo). docs/afxdp.md."""

    def __init__(self, xdp: AfxdpSource, nfq_rules: Any) -> None:
        self.xdp = xdp
        self.nfq_rules = nfq_rules

    @property
    def steering_kind(self) -> str | None:
        """The fallback's --steering (`ping` reports it: lbadm doctor reads that layer's rules)."""
        kind = getattr(self.nfq_rules, "steering_kind", None)
        return kind if isinstance(kind, str) else None

    def sync(self, steering: Steering, verify_sets: bool = False) -> None:
        # fwmark services are the fallback's alone: XDP runs before any rule could mark a packet, so
        # their packets pass the program, get their mark in mangle PREROUTING and are queued there
        # (under --steering nftables too: NftManager keeps them in iptables' mangle table).
        self.xdp.sync(dataclasses.replace(steering, fwmarks=set()))
        self.nfq_rules.sync(steering, verify_sets=verify_sets)

    def set_local_addrs(self, addrs: Sequence[str]) -> None:
        self.xdp.set_local_addrs(addrs)

    def afxdp_counters(self) -> dict[str, Any]:
        return self.xdp.afxdp_counters()

    def afxdp_status(self) -> list[dict[str, Any]]:
        return self.xdp.afxdp_status()
