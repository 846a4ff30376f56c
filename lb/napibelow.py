"""Receive work scheduled below lbd (lbd --overload-napi IFACE): no receive livelock.

On a director where lbd shares a core with the receive work of the interface clients' packets
arrive on, that work runs in softirq, ahead of every task. Offered more than lbd can forward, the
core spends itself receiving packets that lbd's full queue (or the overload guard) then drops, and
lbd delivers less than its zero-loss rate (issue 15 item 5; the drop floor in bench/scale/
dropfloor.py measures what each such packet costs: ~2 us on the bench, so at 2x at most ~0.8x).

With --overload-napi the interface's NAPI polls run in kernel threads (threaded NAPI,
/sys/class/net/IFACE/threaded, Linux 5.12+), and lbd makes those threads the scheduler's least
important (nice 19). While lbd has packets to forward it gets the core; the NAPI threads run when
lbd waits for packets. When lbd is saturated the threads wait, the interface's receive ring fills
and the NIC drops the excess before the kernel has spent anything on it: what lbd forwards stays at
what the core can do, however much more is offered (Mogul and Ramakrishnan's receive livelock,
solved the way they proposed: receive work paced by the consumer).

- The threads are found through the netdev generic netlink family (napi-get, which gives each NAPI
  instance's thread PID, Linux 6.9+) and, where the kernel has no such attribute, by their names
  (napi/IFACE-<id>): on such kernels an interface of the same name in another network namespace,
  also threaded, would have its threads lowered too.
- A NAPI instance created later (a driver reset, a new channel count) gets a thread at the default
  priority: `refresh` (every REFRESH_S, from lbd's event loop) lowers new threads and re-enables
  threading if someone turned it off.
- On exit the interface is left as found: the threads' niceness restored, and threading turned off
  again if lbd turned it on (the threads end with it on recent kernels, 6.18 here; older ones,
  Debian 12's 6.1 among them, keep them idle and use them again if threading comes back). What was
  found is also kept in a record beside lbd's control socket (napi-IFACE.json) while lbd runs: an
  lbd that was killed leaves it, and the next lbd (or `lbd --cleanup`) puts the interface back as
  the first one found it.
- The drops move to the interface: its rx_dropped, rx_missed_errors and rx_fifo_errors (since lbd
  started) are in lbd's `counters` (`napi`) and lbd_interface_rx_dropped_total.
- A veth has a NAPI instance only with GRO on or an XDP program (and its sender must not be doing
  TSO for it to be used): without one, threading is refused and lbd says so.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("lbd.napibelow")

NICE = 19  # the least important SCHED_OTHER priority: lbd (nice 0 or less) weighs ~70x more
REFRESH_S = 10.0
FIND_TIMEOUT_S = 2.0  # threads appear right after `threaded` is set; a driver may take a moment
COMM_MAX = 15  # TASK_COMM_LEN - 1: a kthread's name is cut there
DROP_COUNTERS = {"rx_dropped": "rx_dropped", "rx_missed": "rx_missed_errors", "rx_fifo": "rx_fifo_errors"}
SYS_NET = Path("/sys/class/net")
PROC = Path("/proc")

# netdev generic netlink family (include/uapi/linux/netdev.h)
NETDEV_CMD_NAPI_GET = 11


class NapiBelowError(OSError):
    """An interface's receive work could not be threaded, or its threads not found or lowered."""


def _netdev_genl() -> tuple[Any, Any]:
    """pyroute2's generic netlink socket bound to the netdev family, and its napi message class."""
    from pyroute2.netlink import genlmsg
    from pyroute2.netlink.generic import GenericNetlinkSocket

    class napimsg(genlmsg):  # noqa: N801 (pyroute2's naming)
        nla_map = (("NETDEV_A_NAPI_UNSPEC", "none"), ("NETDEV_A_NAPI_IFINDEX", "uint32"),
                   ("NETDEV_A_NAPI_ID", "uint32"), ("NETDEV_A_NAPI_IRQ", "uint32"), ("NETDEV_A_NAPI_PID", "uint32"))

    sock = GenericNetlinkSocket()
    try:
        sock.bind("netdev", napimsg)
    except Exception:
        sock.close()
        raise
    return sock, napimsg


def threads_by_genl(ifindex: int) -> list[int] | None:
    """PIDs of the NAPI threads of interface `ifindex` (napi-get), or None when the kernel cannot say
    (no netdev family, no napi-get, or instances without the PID attribute although threaded)."""
    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST

    try:
        sock, napimsg = _netdev_genl()
    except Exception as exc:
        log.debug("netdev generic netlink family unavailable: %s", exc)
        return None
    try:
        msg = napimsg()
        msg["cmd"] = NETDEV_CMD_NAPI_GET
        msg["version"] = 1
        msg["attrs"] = [("NETDEV_A_NAPI_IFINDEX", ifindex)]
        replies = sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
        found = [(r.get_attr("NETDEV_A_NAPI_IFINDEX"), r.get_attr("NETDEV_A_NAPI_PID")) for r in replies]
    except Exception as exc:
        log.debug("napi-get of interface %d failed: %s", ifindex, exc)
        return None
    finally:
        sock.close()
    mine = [pid for idx, pid in found if idx == ifindex]
    if not mine:
        return []
    if any(pid is None for pid in mine):
        return None  # instances without a thread (or a kernel before the PID attribute): ask by name
    return sorted(int(pid) for pid in mine)


def name_matches(ifname: str, tasks: Iterable[tuple[int, str]]) -> list[int]:
    """The (pid, comm) of `tasks` named napi/<ifname>-<id>, also when the name was cut at COMM_MAX."""
    want = f"napi/{ifname}-"
    return sorted(pid for pid, comm in tasks
                  if (comm.startswith(want) and comm[len(want):].isdigit())
                  or (len(comm) >= COMM_MAX and want.startswith(comm)))


def threads_by_name(ifname: str, proc: Path = PROC) -> list[int]:
    """PIDs of kernel threads named napi/<ifname>-<id> (kernels without napi-get's PID)."""
    tasks = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                tasks.append((int(entry.name), (entry / "comm").read_text().strip()))
            except OSError:
                continue
    return name_matches(ifname, tasks)


def find_threads(ifname: str, ifindex: int) -> list[int]:
    by_genl = threads_by_genl(ifindex)
    return by_genl if by_genl is not None else threads_by_name(ifname)


@dataclass
class _Interface:
    name: str
    ifindex: int
    was_threaded: bool
    drops_at_start: dict[str, int]
    niced: dict[int, int] = field(default_factory=dict)  # thread pid -> its niceness before lbd
    left_niced: dict[int, int] = field(default_factory=dict)  # the same, from a killed lbd's record


class NapiBelow:
    """The receive work of `interfaces` in NAPI threads at nice NICE (module doc)."""

    def __init__(self, interfaces: Sequence[str], record_dir: Path | None = None, nice: int = NICE,
                 sys_net: Path = SYS_NET, find: Callable[[str, int], list[int]] = find_threads,
                 ifindex: Callable[[str], int] = socket.if_nametoindex) -> None:
        self.names = list(dict.fromkeys(interfaces))
        self.record_dir = record_dir
        self.nice = nice
        self._sys_net = sys_net
        self._find = find
        self._ifindex = ifindex
        self._ifaces: list[_Interface] = []

    # ---------------------------------------------------------------- sysfs

    def _threaded_path(self, ifname: str) -> Path:
        return self._sys_net / ifname / "threaded"

    def _read_threaded(self, ifname: str) -> bool:
        path = self._threaded_path(ifname)
        try:
            return path.read_text().strip() not in ("0", "")
        except FileNotFoundError:
            if not (self._sys_net / ifname).exists():
                raise NapiBelowError(errno.ENODEV, f"--overload-napi {ifname}: no such interface") from None
            raise NapiBelowError(errno.EOPNOTSUPP, f"--overload-napi {ifname}: this kernel has no threaded NAPI "
                                 f"({path} is missing; Linux 5.12 or later)") from None

    def _write_threaded(self, ifname: str, on: bool) -> None:
        try:
            self._threaded_path(ifname).write_text("1" if on else "0")
        except OSError as exc:
            hint = (" (it has no NAPI instance: a veth has one only with GRO on or an XDP program)"
                    if on and exc.errno in (errno.EIO, errno.EOPNOTSUPP, errno.EINVAL) else "")
            raise NapiBelowError(exc.errno or errno.EIO, f"--overload-napi {ifname}: cannot "
                                 f"{'thread' if on else 'stop threading'} its receive work: "
                                 f"{exc.strerror or exc}{hint}") from exc

    def _drops(self, ifname: str) -> dict[str, int]:
        out = {}
        for key, name in DROP_COUNTERS.items():
            try:
                out[key] = int((self._sys_net / ifname / "statistics" / name).read_text())
            except (OSError, ValueError):
                out[key] = 0
        return out

    # ---------------------------------------------------------------- records

    def _record_path(self, ifname: str) -> Path | None:
        return self.record_dir / f"napi-{ifname}.json" if self.record_dir is not None else None

    def _read_record(self, ifname: str) -> dict[str, Any] | None:
        path = self._record_path(ifname)
        if path is None or not path.exists():
            return None
        try:
            rec = json.loads(path.read_text())
            return {"was_threaded": bool(rec["was_threaded"]),
                    "niced": {int(pid): int(n) for pid, n in dict(rec.get("niced") or {}).items()}}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("--overload-napi %s: ignoring the unreadable record %s: %s", ifname, path, exc)
            return None

    def _write_record(self, iface: _Interface) -> None:
        path = self._record_path(iface.name)
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"was_threaded": iface.was_threaded,
                                   "niced": {str(pid): n for pid, n in iface.niced.items()}}))
        os.replace(tmp, path)

    def _drop_record(self, ifname: str) -> None:
        path = self._record_path(ifname)
        if path is not None:
            path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- threads

    def _lower(self, iface: _Interface, pids: Iterable[int]) -> int:
        """Nice the threads of `pids` not lowered yet; forget the ones that are gone. Returns how many
        were lowered now."""
        pids = set(pids)
        for gone in set(iface.niced) - pids:
            del iface.niced[gone]
        lowered = 0
        for pid in sorted(pids - set(iface.niced)):
            try:
                before = os.getpriority(os.PRIO_PROCESS, pid)
                os.setpriority(os.PRIO_PROCESS, pid, self.nice)
            except ProcessLookupError:
                continue  # ended between the listing and now (a NAPI instance removed)
            except OSError as exc:
                raise NapiBelowError(exc.errno or errno.EPERM, f"--overload-napi {iface.name}: cannot lower "
                                     f"NAPI thread {pid} to nice {self.nice}: {exc.strerror or exc}") from exc
            iface.niced[pid] = iface.left_niced.pop(pid, before)  # a killed lbd's 19 is not what it found
            lowered += 1
        if lowered:
            self._write_record(iface)
        return lowered

    def _wait_threads(self, iface: _Interface) -> list[int]:
        deadline = time.monotonic() + FIND_TIMEOUT_S
        pids = self._find(iface.name, iface.ifindex)
        while not pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = self._find(iface.name, iface.ifindex)
        if not pids:
            raise NapiBelowError(errno.ESRCH, f"--overload-napi {iface.name}: threaded NAPI is on, but no "
                                 f"napi/{iface.name}-* thread appeared within {FIND_TIMEOUT_S:g} s")
        return pids

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Thread every interface's receive work and lower its threads: all or nothing."""
        if not self.names:
            raise ValueError("--overload-napi needs at least one interface")
        try:
            for name in self.names:
                was = self._read_threaded(name)
                try:
                    index = self._ifindex(name)
                except OSError:
                    raise NapiBelowError(errno.ENODEV, f"--overload-napi {name}: no such interface") from None
                iface = _Interface(name, index, was, self._drops(name))
                left = self._read_record(name)
                if left is not None:  # a previous lbd was killed before it put the interface back
                    iface.was_threaded, iface.left_niced = left["was_threaded"], left["niced"]
                    log.warning("--overload-napi %s: a previous lbd left it as it set it (killed?); on exit it is "
                                "put back as that lbd found it (threading %s)", name,
                                "on" if iface.was_threaded else "off")
                self._ifaces.append(iface)  # from here on stop() puts it back
                self._write_record(iface)
                if not was:
                    self._write_threaded(name, True)
                self._lower(iface, self._wait_threads(iface))
                log.info("receive work of %s in %d NAPI thread(s) at nice %d (--overload-napi)%s", name,
                         len(iface.niced), self.nice, "; it was threaded already" if iface.was_threaded else "")
        except Exception:
            self.stop()
            raise
        own = os.getpriority(os.PRIO_PROCESS, 0)
        if own < 0:
            log.warning("lbd runs at nice %d: with --overload-napi a raised priority keeps the NAPI threads "
                        "waiting below saturation too, and the zero-loss rate falls (bench scale's overload: "
                        "median 54k packets/s at nice -10, 104k at nice 0); run lbd at nice 0", own)

    def refresh(self) -> None:
        """Lower threads that appeared since (new NAPI instances); thread again an interface someone
        un-threaded. Errors are logged: the next refresh tries again."""
        for iface in self._ifaces:
            try:
                if not self._read_threaded(iface.name):
                    log.warning("%s: its NAPI threading was turned off while lbd runs; turning it on again "
                                "(--overload-napi)", iface.name)
                    self._write_threaded(iface.name, True)
                lowered = self._lower(iface, self._find(iface.name, iface.ifindex))
                if lowered:
                    log.info("%s: %d new NAPI thread(s) lowered to nice %d", iface.name, lowered, self.nice)
            except OSError as exc:
                log.warning("--overload-napi %s: %s", iface.name, exc)

    def stop(self) -> None:
        """Leave the interfaces as found (module doc); errors are logged (and the record kept)."""
        for iface in reversed(self._ifaces):
            if self._put_back(iface.name, iface.was_threaded, {**iface.left_niced, **iface.niced}):
                self._drop_record(iface.name)
        self._ifaces = []

    def _put_back(self, ifname: str, was_threaded: bool, niced: dict[int, int]) -> bool:
        try:
            # The niceness first, also when threading goes off: older kernels (Debian 12's 6.1) keep the
            # threads after `threaded` = 0 and use them again when it is turned on.
            for pid, before in niced.items():
                try:
                    os.setpriority(os.PRIO_PROCESS, pid, before)
                except ProcessLookupError:
                    pass
            if not was_threaded and self._read_threaded(ifname):
                self._write_threaded(ifname, False)
            return True
        except OSError as exc:
            log.warning("--overload-napi %s: could not put it back: %s", ifname, exc)
            return False

    def put_back_leftovers(self) -> list[str]:
        """lbd --cleanup: the interfaces a killed lbd left (their records), put back as that lbd found
        them. Returns their names."""
        if self.record_dir is None or not self.record_dir.is_dir():
            return []
        done = []
        for path in sorted(self.record_dir.glob("napi-*.json")):
            name = path.name[len("napi-"):-len(".json")]
            rec = self._read_record(name)
            if rec is not None and self._put_back(name, rec["was_threaded"], rec["niced"]):
                self._drop_record(name)
                done.append(name)
        return done

    def counters(self) -> list[dict[str, Any]]:
        """Per interface: its NAPI threads lowered, and what it dropped since lbd started (ring full)."""
        out = []
        for iface in self._ifaces:
            now = self._drops(iface.name)
            out.append({"interface": iface.name, "threads": len(iface.niced),
                        **{k: max(0, now[k] - iface.drops_at_start.get(k, 0)) for k in DROP_COUNTERS}})
        return out
