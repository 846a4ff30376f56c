"""The overload guard's shedding in XDP (lbd --overload-xdp IFACE, with the NFQUEUE packet source).

lb.overload arms a token bucket while the kernel drops packets at lbd's full queue. By default the
bucket is a rule at the first nftables hook (lb.nftguard): a shed packet has still cost the
director its receive path (an skb, RPS, ip_rcv, the hook) before the rule drops it, and on a busy
director that work runs on the CPU lbd needs (issue 15 item 5: ~0.9x of the zero-loss rate
delivered at 2x it). With --overload-xdp the bucket is in an XDP program on the interfaces clients'
packets arrive on (native/bpf/lb_xdp.bpf.c lb_xdp_shed): a shed packet is dropped where the driver
sees it first, before any of that work, as a NIC drops what its ring cannot hold in front of
kernel IPVS.

- The program drops only packets lbd owns (the same keys as the AF_XDP source's program: services,
  NAT and FULLNAT replies, ICMP errors about them), above the guard's rate, and passes everything
  else to the kernel's stack, where lbd's steering queues it. Disarmed (rate 0) a packet costs the
  program one array lookup. One bucket serves every interface (the map is shared): the rate is lbd's.
- The keys are written when the guard arms and refreshed on its ticks while the configuration
  changed (Director.config_generation): a change of the service table costs nothing here while the
  guard is disarmed, and a director with 10,000 services does not pay for them per command.
- Packets that arrive on other interfaces are not shed (name every interface clients' packets
  arrive on). fwmark services cannot be matched before the firewall marks them: not shed.
- The programs are attached through bpf_links held by lbd's descriptors: they leave the interfaces
  when lbd exits or dies, as the AF_XDP source's.

Drops are counted in the program (lb_stats ST_SHED): the guard's `dropped` (`overload` in lbd's
`counters`, lbd_overload_guard_dropped_total) sums them over the interfaces.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lb._ffi import ffi, lib
from lb.afxdp import BPF_OBJECT, MODES, ProgramKeys, attach_program, steering_keys
from lb.ipsets import Steering
from lb.nftguard import Limit

log = logging.getLogger("lbd.xdpshed")


class XdpShedError(OSError):
    """The shedding program could not be attached, or a key or the rate could not be written."""


@dataclass
class _Program:
    ifname: str
    handle: Any  # lb_xdp_t *
    mode: str


class XdpShed:
    """lb.overload's GuardWriter: the guard's bucket in lb_xdp_shed on `interfaces`."""

    def __init__(self, interfaces: Sequence[str], steering: Callable[[], Steering], generation: Callable[[], int],
                 mode: str = "auto", bpf_object: Path = BPF_OBJECT) -> None:
        if mode not in MODES:
            raise ValueError(f"XDP mode {mode!r}: one of {', '.join(MODES)}")
        if not interfaces:
            raise ValueError("--overload-xdp needs at least one interface")
        self.interfaces = list(interfaces)
        self.mode = mode
        self.bpf_object = bpf_object
        self._steering = steering
        self._generation = generation
        self._programs: list[_Program] = []
        self._maps = ProgramKeys(XdpShedError, "the overload guard's XDP key")
        self._keys_generation: int | None = None  # of the keys written (None: none yet)
        self.guard: Limit | None = None
        self.refreshes = 0

    @property
    def table(self) -> str:
        """Where the guard lives, for its log lines."""
        return "XDP on " + ", ".join(self.interfaces)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Attach to every interface, all or nothing."""
        if not self.bpf_object.exists():
            raise XdpShedError(2, f"the XDP program {self.bpf_object} is missing (`make build` compiles it)")
        try:
            for ifname in self.interfaces:
                self._attach(ifname)
        except BaseException:
            self.stop()
            raise

    def _attach(self, ifname: str) -> None:
        share = self._programs[0].handle if self._programs else ffi.NULL
        handle, used, native_err = attach_program(
            ifname, "--overload-xdp", "the overload guard's XDP program", self.mode, XdpShedError,
            lambda ifindex, mode, nerr, err: lib.lb_xdp_attach_shed(os.fsencode(self.bpf_object), ifindex,
                                                                    MODES[self.mode], share, mode, nerr, err))
        prog = _Program(ifname, handle, used)
        self._programs.append(prog)
        self._maps.add(ifname, handle)
        if prog.mode == "generic" and self.mode != "generic":
            log.warning("%s: overload guard's XDP program in generic (skb) mode: the driver refused native mode "
                        "(%s); a shed packet then costs an skb first", ifname,
                        os.strerror(-native_err) if native_err else "no reason given")
        else:
            log.info("%s: overload guard's XDP program attached (%s mode): while the guard is armed, the excess of "
                     "lbd's packets is dropped there", ifname, prog.mode)

    def stop(self) -> None:
        """Detach every program (the bucket goes with the last)."""
        while self._programs:
            prog = self._programs.pop()
            lib.lb_xdp_detach(prog.handle)
            log.info("%s: overload guard's XDP program detached", prog.ifname)
        self._maps.programs.clear()
        self.guard = None
        self._keys_generation = None

    # ------------------------------------------------------------ GuardWriter
    def write_guard(self, limit: Limit | None) -> None:
        """Arm (or re-rate) the bucket, the keys brought up to date first; None: disarm."""
        if limit is not None:
            self.refresh()
        if self._programs:
            r = lib.lb_xdp_shed_set(self._programs[0].handle, limit.rate if limit else 0, limit.burst if limit else 0)
            if r < 0:
                raise XdpShedError(-r, f"{self.table}: cannot write the shedding rate: {os.strerror(-r)}")
        self.guard = limit

    def guard_dropped(self) -> int | None:
        return self.program_stats().get("shed", 0)

    def refresh(self) -> None:
        """Make the programs' keys lbd's current steering, when the configuration changed since they
        were written (the guard calls this on its armed ticks)."""
        generation = self._generation()
        if generation == self._keys_generation:
            return
        self._maps.set_keys(steering_keys(dataclasses.replace(self._steering(), fwmarks=set())))
        self._keys_generation = generation
        self.refreshes += 1

    def set_local_addrs(self, addrs: Sequence[str]) -> None:
        """The director's own addresses: a NAT reply key does not match packets to them (as the
        NFQUEUE rules' `-m addrtype ! --dst-type LOCAL`)."""
        self._maps.set_local(addrs)

    # ------------------------------------------------------------ counters
    def program_stats(self) -> dict[str, int]:
        """The programs' counters summed (struct lb_xdp_stats: `shed` is what they dropped)."""
        total: dict[str, int] = {}
        for prog in self._programs:
            st = ffi.new("struct lb_xdp_stats *")
            lib.lb_xdp_get_stats(prog.handle, st)
            for name, _ in ffi.typeof("struct lb_xdp_stats").fields:
                total[name] = total.get(name, 0) + getattr(st, name)
        return total

    def status(self) -> list[dict[str, Any]]:
        return [{"ifname": p.ifname, "mode": p.mode} for p in self._programs]
