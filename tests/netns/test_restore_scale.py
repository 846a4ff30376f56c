"""`lbadm -R` of 10,000 services and 20,000 real servers (issue 15, item 2) in the DR topology.

The restore stream is several MiB of batch JSON, far over lbd's 1 MiB request line: before issue 15
it failed ("bad response from lbd ... batch: Broken pipe"); lbadm now sends it in chunks that lbd
applies all at once with the last one (docs/control-protocol.md, batch). Checked here against a
real lbd (C engine, its iptables rules, real namespaces):

- the whole stream applies: `list` holds every service and every real server;
- a stream with one bad line - one that lbadm cannot parse, or one that only lbd can refuse (a
  real server of a service no line defines, at the very end, after every chunk was queued) -
  changes nothing: `list` is exactly what it was, and lbd keeps serving.

No packet is sent: the 20,000 real-server addresses are never resolved (no such hosts); their
forwarding state stays unresolved, which `list` shows and this test does not care about.
"""

from __future__ import annotations

import signal
from typing import Any

from conftest import LBADM, Lbd, running_lbd

from lb.ctlclient import request_once
from lb.testbed.topology import Topology

N_SERVICES = 10_000
DESTS_PER_SERVICE = 2
RESTORE_TIMEOUT_S = 600.0  # a bound for a loaded machine, not a performance claim
STOP_TIMEOUT_S = 300.0
LIST_TIMEOUT_S = 300.0


def vip(i: int) -> str:
    return f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def rip(j: int) -> str:
    return f"172.30.{(j >> 8) & 255}.{j & 255}" if j < 65536 else f"172.31.{(j >> 8) & 255}.{j & 255}"


def rules(n: int) -> str:
    lines = []
    for i in range(n):
        lines.append(f"-A -t {vip(i)}:80 -s rr")
        for k in range(DESTS_PER_SERVICE):
            lines.append(f"-a -t {vip(i)}:80 -r {rip(i * DESTS_PER_SERVICE + k + 1)}:80 -g -w 1")
    return "\n".join(lines) + "\n"


def restore(lbd: Lbd, text: str) -> Any:
    return lbd.director.exec([str(LBADM), "--socket", lbd.socket, "-R"], check=False,
                             timeout=RESTORE_TIMEOUT_S, input=text)


def table(lbd: Lbd) -> list[tuple[str, int, list[tuple[str, int]]]]:
    # Listing 10,000 services takes seconds on a loaded machine: longer than conftest's bound.
    resp = request_once(lbd.socket, "list", timeout_s=LIST_TIMEOUT_S)
    assert resp["ok"], resp
    services = resp["result"]["services"]
    return [(s["addr"], s["port"], sorted((d["addr"], d["port"]) for d in s["dests"])) for s in services]


def test_restore_of_10000_services_applies_whole_and_a_bad_line_changes_nothing(topo: Topology) -> None:
    with running_lbd(topo, "c") as lbd:
        lbd.lbadm("-A", "-t", f"{topo.vip}:80", "-s", "wlc")
        lbd.lbadm("-a", "-t", f"{topo.vip}:80", "-r", f"{topo.reals[0].addr}:80", "-g")
        before = table(lbd)
        good = rules(N_SERVICES)

        # A line lbadm cannot parse, last: refused before anything is sent.
        proc = restore(lbd, good + f"-a -t {vip(0)}:80 -r {rip(99_999)}:80 -g -w heavy\n")
        assert proc.returncode != 0 and "nothing was changed" in proc.stderr, proc.stderr
        assert table(lbd) == before

        # A line only lbd can refuse, last: every chunk before it was queued, then all dropped.
        orphan = f"-a -t {vip(N_SERVICES + 5)}:80 -r {rip(99_999)}:80 -g -w 1\n"
        proc = restore(lbd, good + orphan)
        assert proc.returncode == 255, (proc.returncode, proc.stderr, lbd.log_tail())
        assert "Service not defined" in proc.stderr
        assert f"command {N_SERVICES * (1 + DESTS_PER_SERVICE) + 1} failed; nothing was changed" in proc.stderr
        assert table(lbd) == before

        # A duplicate real server in the middle: refused by lbd as a whole too.
        lines = good.splitlines(keepends=True)
        middle = len(lines) // 2
        dup = next(line for line in lines[middle:] if line.startswith("-a "))
        proc = restore(lbd, "".join(lines[:middle + 1] + [dup] + lines[middle + 1:]))
        assert proc.returncode == 255 and "nothing was changed" in proc.stderr, proc.stderr
        assert table(lbd) == before

        # The whole stream: every service and every real server.
        proc = restore(lbd, good)
        assert (proc.returncode, proc.stderr) == (0, ""), lbd.log_tail()
        after = table(lbd)
        assert len(after) == N_SERVICES + 1
        assert after[0] == before[0]  # what was there stays (restore adds to it, as ipvsadm -R)
        want = {(vip(i), 80): sorted((rip(i * DESTS_PER_SERVICE + k + 1), 80) for k in range(DESTS_PER_SERVICE))
                for i in range(N_SERVICES)}
        assert {(a, p): d for a, p, d in after[1:]} == want
        assert lbd.ok("ping")["engine"] == "c"  # still serving

        # Removing 10,000 services' rules on exit takes longer than the fixture's usual bound today
        # (issue 15 item 1 replaces them by a set): stop here with a generous one; the fixture then
        # checks that nothing was left behind.
        assert lbd.proc is not None
        rc = topo.stop_process(lbd.proc, signal.SIGTERM, timeout=STOP_TIMEOUT_S)
        assert rc == 0, lbd.log_tail()
