"""Which NFQUEUE numbers lbd binds and on which CPUs their threads run.

    lbd --queue-num 3                          one queue, thread not pinned
    lbd --queue-balance 0:1                    queues 0 and 1 (iptables --queue-balance 0:1), thread i
                                               pinned to the i-th CPU lbd may run on
    lbd --queue-balance 0:3 --queue-cpus 2-5   queue 0 on CPU 2, ... queue 3 on CPU 5
    lbd --queue-balance 0:1 --queue-cpu-fanout the kernel picks the queue by the CPU that handles the
                                               packet (first + cpu % count), so thread i runs on CPU i
                                               and a packet stays on the CPU that received it

The first queue names the instance: its iptables chains, its state file and its raw socket's
mark, and its thread runs the expiry sweep and the SYN-proxy timers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_QUEUE = 65535
MAX_THREADS = 64  # queues per lbd: one fast-path thread each


class QueueSpecError(ValueError):
    """A --queue-balance / --queue-cpus value that cannot be used, with the reason."""


@dataclass(frozen=True)
class QueuePlan:
    queues: tuple[int, ...]
    cpus: tuple[int | None, ...]  # per queue; None = not pinned
    cpu_fanout: bool = False

    @property
    def first(self) -> int:
        return self.queues[0]

    @property
    def balance(self) -> tuple[int, int] | None:
        """(first, last) for iptables --queue-balance, None for a single queue."""
        return (self.queues[0], self.queues[-1]) if len(self.queues) > 1 else None

    def describe(self) -> str:
        qs = f"NFQUEUE {self.first}" if len(self.queues) == 1 else f"NFQUEUE {self.first}:{self.queues[-1]}"
        if any(c is not None for c in self.cpus):
            qs += " (" + ", ".join(f"{q} on CPU {c}" if c is not None else f"{q} unpinned"
                                   for q, c in zip(self.queues, self.cpus, strict=True)) + ")"
        return qs + (", CPU fanout" if self.cpu_fanout else "")


def parse_queue_range(text: str) -> tuple[int, int]:
    """'FIRST:LAST' as iptables' --queue-balance takes it."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise QueueSpecError(f"{text!r}: expected FIRST:LAST, e.g. 0:1")
    low, high = int(parts[0]), int(parts[1])
    if high > MAX_QUEUE:
        raise QueueSpecError(f"{text!r}: queue numbers are 0..{MAX_QUEUE}")
    if low >= high:
        raise QueueSpecError(f"{text!r}: FIRST must be below LAST (one queue: --queue-num)")
    return low, high


def parse_cpu_list(text: str) -> list[int]:
    """'0,2-3' -> [0, 2, 3], in the order given (the taskset -c / cpuset list syntax); a CPU may
    appear twice (two queues' threads on one CPU)."""
    cpus: list[int] = []
    for item in text.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise QueueSpecError(f"{text!r}: expected a CPU list such as 0,2-3")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise QueueSpecError(f"{text!r}: range {item} is empty")
        cpus.extend(range(first, last + 1))
    return cpus


def available_cpus(cpus: list[int | None], allowed: set[int] | None = None) -> None:
    """Refuse CPUs lbd may not run on (its affinity mask: taskset, systemd's CPUAffinity=)."""
    allowed = set(os.sched_getaffinity(0)) if allowed is None else allowed
    bad = sorted({c for c in cpus if c is not None and c not in allowed})
    if bad:
        raise QueueSpecError(f"CPU(s) {', '.join(map(str, bad))} not available to lbd "
                             f"(allowed: {', '.join(map(str, sorted(allowed)))})")


def afxdp_cpus(text: str | None, allowed: set[int] | None = None) -> list[int]:
    """--queue-cpus under --packet-source afxdp: the CPU of each AF_XDP socket's thread, in socket
    order (the --xdp-interface order, each interface's receive queues ascending). How many sockets
    there are is the interfaces' to say: lb.afxdp.AfxdpSource checks the count when it starts."""
    if text is None:
        return []
    cpus = parse_cpu_list(text)
    if len(cpus) > MAX_THREADS:
        raise QueueSpecError(f"--queue-cpus {text!r}: at most {MAX_THREADS} threads")
    available_cpus(list(cpus), allowed)
    return cpus


def plan(queue_num: int, balance: str | None, cpus: str | None, cpu_fanout: bool,
         allowed: set[int] | None = None) -> QueuePlan:
    """The queues and CPUs lbd's options ask for, checked against the CPUs lbd may run on."""
    allowed = set(os.sched_getaffinity(0)) if allowed is None else allowed
    if balance:
        low, high = parse_queue_range(balance)
        if high - low + 1 > MAX_THREADS:
            raise QueueSpecError(f"{balance!r}: at most {MAX_THREADS} queues (one thread each)")
        queues = list(range(low, high + 1))
    else:
        queues = [queue_num]
    if cpu_fanout and len(queues) == 1:
        raise QueueSpecError("--queue-cpu-fanout needs --queue-balance")
    pinned: list[int | None]
    if cpus is not None:
        wanted = parse_cpu_list(cpus)
        if len(wanted) != len(queues):
            raise QueueSpecError(f"--queue-cpus {cpus!r} lists {len(wanted)} CPU(s) for {len(queues)} queue(s)")
        pinned = list(wanted)
    elif cpu_fanout:
        pinned = list(range(len(queues)))  # the kernel sends CPU c's packets to queue first + c % count
    elif len(queues) > 1:
        order = sorted(allowed)
        pinned = [order[i % len(order)] for i in range(len(queues))]
    else:
        pinned = [None]
    available_cpus(pinned, allowed)
    return QueuePlan(tuple(queues), tuple(pinned), cpu_fanout)
