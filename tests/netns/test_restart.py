"""lbd restarted under load loses nothing it had saved (issue 8).

DR topology of conftest (`topo`: client, director, rs1..rs3). The real servers run an echo
server on ECHO_PORT (greeting "HELLO <name>", then every byte back); the director balances
VIP:ECHO_PORT over the three (rr, DR). N long-lived connections each send a numbered line every
LINE_EVERY_S and check its echo byte for byte, for as long as the test runs (bounded).

(i)   SIGTERM, then start again, with --down-policy closed: lbd saves its state on exit and
      leaves its NFQUEUE rules in place without --queue-bypass, so while it is down the kernel
      drops the VIP's packets and clients retransmit; the new lbd restores configuration and
      connection table from the state file before it binds the queue. Expected: all N survive.
(ii)  SIGKILL, then start, --down-policy closed: nothing is saved at the kill; the state file is
      the last periodic save (every 2 s: the snapshot and the journal of what changed since). Connections established before it survive (all
      N_EARLY expected); LATE connections opened just after a snapshot and killed before the
      next are not in it: their figure is reported (a segment without an entry is handed to the
      director's own stack, which resets it).
(iii) SIGTERM with --down-policy open (the default): lbd removes its rules, the director's own
      stack answers the VIP while it is down and resets the flows; the configuration still comes
      back. Expected: none of N survives; the rules are gone during the downtime.

The figures are printed (pytest -s) as `RESTART-FIGURES ...` lines.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LBD, QUEUE_NUM, Lbd, flush_iptables, iptables_leftovers
from steering import elements, queue_bypasses, queue_rules

from lb.testbed.echo import EchoStream, servers
from lb.testbed.topology import Topology

ECHO_PORT = 8201  # test_reload uses 8001..8005 and 9001..9004
N = 20
N_EARLY, N_LATE = 16, 4
LINE_EVERY_S = 0.05
STREAM_MAX_S = 180.0  # every stream stops by itself after this
SOCK_TIMEOUT_S = 30.0  # a stream waiting this long for its echo has failed
DOWN_S = 1.0  # lbd stays down this long
RECOVER_TIMEOUT_S = 25.0  # after the restart, until every surviving stream has progressed

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def echo(topo: Topology) -> Iterator[int]:
    with servers(topo, [ECHO_PORT]):
        yield ECHO_PORT


class RestartLbd(Lbd):
    """conftest's Lbd with --down-policy and the state file in its own directory (the default:
    the socket's directory), restarted in place."""

    def __init__(self, topo: Topology, policy: str) -> None:
        super().__init__(topo, "c", args=["--down-policy", policy])
        self.policy = policy
        self.state_file = self.dir / f"lbd-q{QUEUE_NUM}.state"

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("lbd-*.log")))


@contextlib.contextmanager
def restart_lbd(topo: Topology, policy: str) -> Iterator[RestartLbd]:
    d = RestartLbd(topo, policy)
    try:
        yield d
    finally:
        if d.running():
            d.stop(signal.SIGTERM)
        # --down-policy closed leaves the rules on purpose: `lbd --cleanup` is how they go.
        proc = topo.director.exec([str(LBD), "--cleanup", "--queue-num", str(QUEUE_NUM)], check=False)
        leftovers = iptables_leftovers(topo.director)
        if leftovers:
            flush_iptables(topo.director)
        d.cleanup()
        assert proc.returncode == 0, f"lbd --cleanup: {proc.stderr}"
        assert not leftovers, f"rules left after lbd --cleanup: {leftovers}"


def configure(lbd: RestartLbd, topo: Topology) -> None:
    svc = f"{topo.vip}:{ECHO_PORT}"
    lbd.lbadm("-A", "-t", svc, "-s", "rr")
    for rs in topo.reals:
        lbd.lbadm("-a", "-t", svc, "-r", rs.addr, "-g")
    lbd.wait_resolved()


# --------------------------------------------------------------------------- streams


def open_stream(netns: str, vip: str, n: int) -> EchoStream:
    return EchoStream(netns, vip, ECHO_PORT, n, timeout_s=SOCK_TIMEOUT_S, every_s=LINE_EVERY_S,
                      max_s=STREAM_MAX_S, pad=100)


@contextlib.contextmanager
def streams(topo: Topology, count: int, first: int = 0) -> Iterator[list[EchoStream]]:
    opened: list[EchoStream] = []
    try:
        for i in range(count):
            opened.append(open_stream(topo.client.netns, topo.vip, first + i))
        yield opened
    finally:
        for s in opened:
            s.close()


def wait_all_progress(group: list[EchoStream], timeout: float = 10.0) -> None:
    since = {s.n: s.echoed for s in group}
    deadline = time.monotonic() + timeout
    while not all(s.echoed > since[s.n] for s in group):
        broken = [f"{s.n}: {s.error}" for s in group if s.error]
        assert not broken, f"connections failed before the restart: {broken}"
        assert time.monotonic() < deadline, "no progress before the restart"
        time.sleep(0.02)


def survivors(group: list[EchoStream], since: dict[int, int], timeout: float) -> tuple[list[EchoStream], float]:
    """Streams that progressed past `since` without error; waits until every stream has either
    progressed or failed, or `timeout`. Returns them and the seconds waited."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if all(s.error or s.echoed > since[s.n] + 2 for s in group):
            break
        time.sleep(0.05)
    return [s for s in group if not s.error and s.echoed > since[s.n]], time.monotonic() - t0


def restore_line(lbd: RestartLbd) -> str:
    m = re.findall(r"restore from \S+ \(saved [^)]*\): connections [^\n]*", lbd.all_logs())
    return m[-1] if m else "(no restore line)"


def nfqueue_rules(topo: Topology) -> list[str]:
    return queue_rules(topo.director)


def saved_marker(lbd: RestartLbd) -> tuple[int, ...]:
    """What changes whenever lbd saves something: the snapshot's and the journal's times and sizes."""
    journal = lbd.state_file.with_suffix(".journal")
    return tuple(x for f in (lbd.state_file, journal) if f.exists() for x in (f.stat().st_mtime_ns, f.stat().st_size))


def steered(topo: Topology) -> list[str]:
    """The service elements of lbd's set (what its rules look up); none when the set is gone."""
    return sorted(elements(topo.director, "svc", missing_ok=True))


def report(name: str, **figures: Any) -> None:
    print(f"\nRESTART-FIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


# --------------------------------------------------------------------------- tests


def test_sigterm_with_down_policy_closed_keeps_every_connection(topo: Topology, echo: int) -> None:
    with restart_lbd(topo, "closed") as lbd:
        lbd.start()
        configure(lbd, topo)
        with streams(topo, N) as group:
            wait_all_progress(group)
            servers = {s.n: s.server for s in group}
            t_stop = time.monotonic()
            rc = lbd.stop(signal.SIGTERM)
            assert rc == 0, lbd.log_tail()
            rules = nfqueue_rules(topo)
            assert rules and not any(queue_bypasses(r) for r in rules), rules
            assert steered(topo) == [f"{topo.vip},tcp:{ECHO_PORT}"]  # the sets stay with the rules
            assert lbd.state_file.exists()
            since = {s.n: s.echoed for s in group}
            time.sleep(DOWN_S)
            lbd.start()
            down_s = time.monotonic() - t_stop
            alive, waited = survivors(group, since, RECOVER_TIMEOUT_S)
            listed = lbd.ok("list")["services"]
            assert [(s["port"], len(s["dests"])) for s in listed] == [(ECHO_PORT, len(topo.reals))]
            errors = [f"{s.n}: {s.error}" for s in group if s.error]
            report("sigterm-closed", connections=N, survived=len(alive), down_s=f"{down_s:.2f}",
                   recovered_in_s=f"{waited:.2f}", restore=restore_line(lbd))
            assert len(alive) == N, f"{len(alive)}/{N} survived; errors {errors}\n{lbd.log_tail()}"
            assert all(servers[s.n] == s.server for s in alive)


def test_sigkill_with_down_policy_closed_recovers_from_the_last_snapshot(topo: Topology, echo: int) -> None:
    with restart_lbd(topo, "closed") as lbd:
        lbd.start()
        configure(lbd, topo)
        with streams(topo, N_EARLY) as early:
            wait_all_progress(early)
            # Wait for a save that holds the early connections, then for the next one: the late
            # connections are opened right after it and the kill comes before the one after. A save
            # writes only what changed (the snapshot, or a journal segment): a harmless timeout
            # change (lbadm --set) makes sure each tick has something to write.
            for i in range(2):
                before = saved_marker(lbd)
                lbd.lbadm("--set", str(900 + i), "0", "0")
                deadline = time.monotonic() + 10
                while saved_marker(lbd) == before:
                    assert time.monotonic() < deadline, "no periodic save within 10 s"
                    time.sleep(0.01)
            t_saved = time.monotonic()
            with streams(topo, N_LATE, first=N_EARLY) as late:
                wait_all_progress(late, timeout=1.0)
                t_kill = time.monotonic()
                assert t_kill - t_saved < 1.8, "too slow to kill before the next snapshot"
                rc = lbd.stop(signal.SIGKILL)
                assert rc == -signal.SIGKILL
                rules = nfqueue_rules(topo)
                assert rules and not any(queue_bypasses(r) for r in rules), rules
                since = {s.n: s.echoed for s in early + late}
                time.sleep(DOWN_S)
                lbd.start()
                down_s = time.monotonic() - t_kill
                alive_early, waited = survivors(early, since, RECOVER_TIMEOUT_S)
                alive_late, _ = survivors(late, since, 5.0)
                listed = lbd.ok("list")["services"]
                assert [(s["port"], len(s["dests"])) for s in listed] == [(ECHO_PORT, len(topo.reals))]
                assert steered(topo) == [f"{topo.vip},tcp:{ECHO_PORT}"]
                report("sigkill-closed", early=N_EARLY, early_survived=len(alive_early), late=N_LATE,
                       late_survived=len(alive_late), snapshot_to_kill_s=f"{t_kill - t_saved:.2f}",
                       down_s=f"{down_s:.2f}", recovered_in_s=f"{waited:.2f}", restore=restore_line(lbd))
                errors = [f"{s.n}: {s.error}" for s in early if s.error]
                assert len(alive_early) == N_EARLY, f"{len(alive_early)}/{N_EARLY}; errors {errors}\n{lbd.log_tail()}"


def test_sigterm_with_down_policy_open_restores_configuration_not_flows(topo: Topology, echo: int) -> None:
    with restart_lbd(topo, "open") as lbd:
        lbd.start()
        configure(lbd, topo)
        with streams(topo, N) as group:
            wait_all_progress(group)
            t_stop = time.monotonic()
            assert lbd.stop(signal.SIGTERM) == 0, lbd.log_tail()
            assert iptables_leftovers(topo.director) == []  # open: the rules go with lbd
            since = {s.n: s.echoed for s in group}
            time.sleep(DOWN_S)
            lbd.start()
            down_s = time.monotonic() - t_stop
            alive, waited = survivors(group, since, 10.0)
            listed = lbd.ok("list")["services"]
            assert [(s["port"], len(s["dests"])) for s in listed] == [(ECHO_PORT, len(topo.reals))]
            report("sigterm-open", connections=N, survived=len(alive), down_s=f"{down_s:.2f}",
                   restore=restore_line(lbd))
            # While lbd was down the director's own stack answered the VIP: every flow that sent
            # data meanwhile was reset.
            assert not alive, f"{len(alive)} connections survived a fail-open downtime"
        # New connections are balanced again.
        with streams(topo, 3, first=100) as fresh:
            wait_all_progress(fresh)
