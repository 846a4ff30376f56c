"""lbd --overload-napi in a real kernel (issue 15 item 5; lb/napibelow.py).

1. The director's client-facing veth (GRO on: a veth has a NAPI instance only then) gets threaded
   NAPI, its kthreads nice 19, lbd's counters name them; traffic through lbd is answered; after lbd
   the interface is as found: threading off, the kthreads gone.
2. Killed (SIGKILL), lbd leaves the interface threaded and its record beside the control socket;
   `lbd --cleanup` puts the interface back as that lbd found it and removes the record.
3. Without a NAPI instance (GRO off) lbd refuses to start, says why, and leaves the interface alone.
4. Overloaded for real: the Python engine with a 16-packet queue and its NAPI kthread on one CPU, a
   UDP sender at what it can (4 s, at most 400,000 datagrams). The excess is dropped at the veth's
   ring on the sender's side (the bridge port's tx_dropped: a veth counts what its ring refused on
   the sending side, so the director's own rx counters in lbd's `napi` stay 0 here; a NIC's are its
   rx_missed_errors), not at lbd's queue: the queue's drops are a small part of the ring's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from conftest import LBD, QUEUE_NUM, Lbd, LbdError, running_lbd
from netns_traffic import UDP_FLOOD
from packet_source import AFXDP

from lb.napibelow import threads_by_name
from lb.testbed.topology import Topology
from lb.testbed.vethnapi import receiving_through_napi

pytestmark = pytest.mark.skipif(AFXDP, reason="the overload half floods lbd's NFQUEUE; the AF_XDP source has none "
                                "(--overload-napi itself works with it)")

UDP_PORT = 5353
SEND_S = 4.0
SEND_MAX = 400_000
SENDER = UDP_FLOOD


def lan(topo: Topology) -> str:
    return topo.director.iface("lan").ifname


def threaded(topo: Topology) -> str:
    return topo.director.exec(["cat", f"/sys/class/net/{lan(topo)}/threaded"]).stdout.strip()


def napi_ready(topo: Topology) -> AbstractContextManager[None]:
    """The director's lan veth receiving through its NAPI (lb/testbed/vethnapi.py)."""
    return receiving_through_napi(topo.director.netns, lan(topo), topo.switch_ns("lan"),
                                  topo.switch_port("director", "lan"))


def udp_service(d: Lbd, topo: Topology) -> None:
    svc = f"{topo.vip}:{UDP_PORT}"
    d.lbadm("-A", "-u", svc, "-s", "rr")
    d.lbadm("-a", "-u", svc, "-r", topo.reals[0].addr, "-g")
    d.wait_resolved()


def test_napi_threaded_below_lbd_and_put_back_after(topo: Topology) -> None:
    assert threaded(topo) == "0"
    with napi_ready(topo):
        with running_lbd(topo, "c", args=["--overload-napi", lan(topo)]) as d:
            udp_service(d, topo)
            assert threaded(topo) == "1"
            pids = threads_by_name(lan(topo))
            assert pids, "no napi kthread of the director's lan veth"
            assert all(os.getpriority(os.PRIO_PROCESS, pid) == 19 for pid in pids)
            napi = d.ok("counters")["napi"]
            assert napi == [{"interface": lan(topo), "threads": len(pids), "rx_dropped": 0, "rx_missed": 0,
                             "rx_fifo": 0}], napi
            sent = topo.client.exec([sys.executable, "-c", SENDER, topo.vip, str(UDP_PORT), "1.0", "200"])
            assert sent.stdout.strip() == "200"
            svc = d.ok("list")["services"][0]
            assert svc["stats"]["inpkts"] >= 190, svc  # through the threaded NAPI, queued, forwarded
            assert "NAPI thread(s) at nice 19" in d.log_tail()
        assert threaded(topo) == "0"
        deadline = time.monotonic() + 3.0
        while threads_by_name(lan(topo)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not threads_by_name(lan(topo)), "the napi kthreads outlived lbd"


def test_a_killed_lbd_leaves_a_record_that_lbd_cleanup_puts_back(topo: Topology) -> None:
    with napi_ready(topo):
        d = Lbd(topo, "c", None, ["--overload-napi", lan(topo)])
        try:
            d.start()
            assert threaded(topo) == "1"
            d.stop(signal.SIGKILL)
            assert threaded(topo) == "1"  # killed: nothing put it back
            record = Path(d.socket).parent / f"napi-{lan(topo)}.json"
            assert json.loads(record.read_text())["was_threaded"] is False
            proc = topo.director.exec([str(LBD), "--cleanup", "--socket", d.socket, "--queue-num", str(QUEUE_NUM)],
                                      check=False)
            assert proc.returncode == 0, proc.stderr
            assert f"{lan(topo)}: its NAPI threading put back" in proc.stderr + proc.stdout
            assert threaded(topo) == "0" and not record.exists()
        finally:
            if d.running():
                d.stop(signal.SIGKILL)
            topo.director.exec([str(LBD), "--cleanup", "--queue-num", str(QUEUE_NUM)], check=False)


def test_refused_without_a_napi_instance(topo: Topology) -> None:
    topo.director.exec(["ethtool", "-K", lan(topo), "gro", "off"])
    d = Lbd(topo, "c", None, ["--overload-napi", lan(topo)])
    try:
        with pytest.raises(LbdError) as exc:
            d.start()
        assert f"--overload-napi {lan(topo)}: cannot thread its receive work" in str(exc.value), exc.value
        assert "a veth has one only with GRO on" in str(exc.value)
    finally:
        if d.running():
            d.stop()
    assert threaded(topo) == "0"


def bridge_port_dropped(topo: Topology) -> int:
    """What the bridge port could not hand to the director's veth (its ring full)."""
    port = topo.switch_port("director", "lan")
    return int(topo.switch_host("lan").exec(["cat", f"/sys/class/net/{port}/statistics/tx_dropped"]).stdout)


def flood(topo: Topology, d: Lbd) -> dict[str, int]:
    q0, r0 = d.ok("counters")["nfq"]["kernel_queue_dropped"], bridge_port_dropped(topo)
    out = topo.client.exec([sys.executable, "-c", SENDER, topo.vip, str(UDP_PORT), str(SEND_S), str(SEND_MAX)],
                           timeout=SEND_S + 20).stdout.strip()
    time.sleep(0.5)
    c = d.ok("counters")
    inpkts = d.ok("list")["services"][0]["stats"]["inpkts"]
    return {"sent": int(out), "queue_dropped": c["nfq"]["kernel_queue_dropped"] - q0,
            "ring_dropped": bridge_port_dropped(topo) - r0, "forwarded": inpkts}


def pin(pids: list[int], cpu: int) -> None:
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), {cpu})
            except ProcessLookupError:
                continue


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="lbd and its NAPI thread on one CPU, the sender on another")
def test_overloaded_the_excess_is_dropped_at_the_ring_not_at_lbds_queue(topo: Topology) -> None:
    cpu = (os.cpu_count() or 2) - 1
    with napi_ready(topo):
        with running_lbd(topo, "python", args=["--queue-maxlen", "16", "--overload-guard", "off",
                                               "--overload-napi", lan(topo)]) as d:
            udp_service(d, topo)
            assert d.proc is not None
            pin([d.proc.pid, *threads_by_name(lan(topo))], cpu)
            got = flood(topo, d)
            napi = d.ok("counters")["napi"][0]
        print(f"\nNAPI-FIGURES {got} interface counters {napi}")
        assert got["sent"] > 10_000 and got["forwarded"] > 1000, got
        assert got["ring_dropped"] > got["sent"] // 10, got  # overloaded: the excess went somewhere
        # where the excess went: the ring (free for the director's CPU), hardly lbd's queue
        assert got["queue_dropped"] * 10 < got["ring_dropped"], got
