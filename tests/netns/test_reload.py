"""Reloads change exactly what differs: live connections survive 50 of them (issue 5, seed 003).

lbd runs with `--config FILE` in the DR topology (conftest `topo`: client, director, rs1..rs3).
Services 1, 2, 4 and 5 are VIP:8001, 8002, 8004, 8005, each balanced over the three real
servers, which run a small echo server on those ports (greeting "HELLO <name>", then echoing
every byte). One long-lived TCP connection per service keeps sending numbered lines and
checking their echo.

Then 50 reloads, 45 by SIGHUP with a rewritten file and 5 by `lbadm --reload`, each adding,
removing and editing other services from a pool - service 3 (VIP:8003, the seed's case) among
them - and editing services 2 and 4 in place (destination weights, scheduler). One more
reload, of an invalid file, must be rejected whole. After every reload the test waits until
`list` shows the new state and until every connection has echoed more lines than before it.

At the end: no connection saw a reset, an error or a wrong byte; each still talks to the
real server that greeted it; and lbd's log shows that no command ever deleted or re-created
services 1, 2, 4, 5 or their destinations.
"""

from __future__ import annotations

import os
import random
import re
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LBD, Lbd

from lb.testbed.echo import EchoStream, servers
from lb.testbed.topology import Topology

KEPT = (1, 2, 4, 5)  # services whose connections must survive
PORT_BASE = 8000  # service n listens on VIP:8000+n
POOL_PORTS = (8003, 9001, 9002, 9003, 9004)  # TCP services on the VIP added/removed/edited
N_RELOADS = 50
LBADM_RELOAD_EVERY = 10  # every 10th reload goes through `lbadm --reload` (5 of 50)
INVALID_AT = 25  # before this reload, an invalid file is rejected
SETTLE_TIMEOUT_S = 15.0  # bound for a reload to show in `list` / connections to progress
STREAM_MAX_S = 600.0  # the echo streams stop by themselves after this
LINE_PAD = 200  # bytes of payload per line

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def echo(topo: Topology) -> Iterator[list[int]]:
    """Echo servers on every real server, on the kept and the pool ports."""
    with servers(topo, [PORT_BASE + n for n in KEPT] + list(POOL_PORTS)) as ports:
        yield ports


class ConfigLbd(Lbd):
    """conftest's Lbd, started with --config FILE (the file a reload re-reads)."""

    def __init__(self, topo: Topology, engine: str, config: Path) -> None:
        super().__init__(topo, engine, args=["--config", str(config)])
        self.config = config

    def log_text(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def conf_lbd(topo: Topology, engine: str, echo: list[int]) -> Iterator[ConfigLbd]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{topo.prefix}-conf-"))
    config = workdir / "lbd.toml"
    d = ConfigLbd(topo, engine, config)
    try:
        yield d
        if d.running():
            rc = d.stop(signal.SIGTERM)
            assert rc == 0, f"lbd exited {rc} on SIGTERM\n{d.log_tail()}"
        assert d.iptables_leftovers() == []
    finally:
        if d.running():
            d.stop(signal.SIGKILL)
        d.cleanup()
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()


# --------------------------------------------------------------------------- configurations


Dests = dict[str, int]  # real-server address -> weight


def render(vip: str, services: dict[int, tuple[str, Dests]]) -> str:
    """TOML for {port: (sched, {rip: weight})}, services in port order, dests in dict order."""
    out = ["# written by tests/netns/test_reload.py\n"]
    for port, (sched, dests) in sorted(services.items()):
        out.append(f'[[service]]\nproto = "tcp"\naddr = "{vip}"\nport = {port}\nsched = "{sched}"\n')
        for rip, weight in dests.items():
            out.append(f'  [[service.dest]]\n  addr = "{rip}"\n  weight = {weight}\n')
    return "\n".join(out)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def kept_services(reals: list[str], step: int) -> dict[int, tuple[str, Dests]]:
    services = {PORT_BASE + n: ("rr", {rip: 1 for rip in reals}) for n in KEPT}
    # In-place edits of kept services: service 2's weights and service 4's scheduler change.
    services[PORT_BASE + 2] = ("rr", {rip: 1 + (step + i) % 3 for i, rip in enumerate(reals)})
    services[PORT_BASE + 4] = ("wlc" if step % 2 else "rr", {rip: 1 for rip in reals})
    return services


def random_others(rng: random.Random, reals: list[str]) -> dict[int, tuple[str, Dests]]:
    others = {}
    for port in rng.sample(POOL_PORTS, rng.randint(0, len(POOL_PORTS))):
        dests = {rip: rng.randint(0, 4) for rip in rng.sample(reals, rng.randint(0, len(reals)))}
        others[port] = (rng.choice(["rr", "wlc"]), dests)
    return others


def listed(lbd: Lbd) -> dict[int, tuple[str, Dests]]:
    resp = lbd.request("list")
    assert resp.get("ok"), resp
    return {s["port"]: (s["sched"], {d["addr"]: d["weight"] for d in s["dests"]})
            for s in resp["result"]["services"]}


def wait_listed(lbd: Lbd, expected: dict[int, tuple[str, Dests]], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        now = listed(lbd)
        if now == expected:
            return
        if time.monotonic() > deadline or not lbd.running():
            raise AssertionError(f"{what}: lbd lists {now}, expected {expected}\n{lbd.log_tail()}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- the connections


def open_stream(netns: str, vip: str, port: int) -> EchoStream:
    return EchoStream(netns, vip, port, port, timeout_s=5.0, every_s=0.01, max_s=STREAM_MAX_S, pad=LINE_PAD)


DROP_REASONS = ("no_service", "no_dest", "dest_unavailable", "no_l2")


def drop_counters(lbd: Lbd) -> dict[str, int]:
    reasons = lbd.request("counters")["result"]["reasons"]
    return {name: int(reasons.get(name, 0)) for name in DROP_REASONS}


def wait_progress(streams: list[EchoStream], since: dict[int, int], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        broken = [f"{s.port}: {s.error}" for s in streams if s.error]
        assert not broken, f"{what}: connection failed: {broken}"
        if all(s.echoed > since[s.port] for s in streams):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: no progress: " +
                                 ", ".join(f"{s.port}: {since[s.port]} -> {s.echoed}" for s in streams))
        time.sleep(0.02)


# --------------------------------------------------------------------------- the test


def test_connections_survive_50_reloads(topo: Topology, conf_lbd: ConfigLbd, engine: str) -> None:
    vip = topo.vip
    reals = [rs.addr for rs in topo.reals]
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    expected = kept_services(reals, 0)
    write_atomically(conf_lbd.config, render(vip, expected))
    result = conf_lbd.start()
    assert result.get("engine") == engine
    wait_listed(conf_lbd, expected, "start")

    streams = [open_stream(topo.client.netns, vip, PORT_BASE + n) for n in KEPT]
    try:
        since = {s.port: 0 for s in streams}
        wait_progress(streams, since, "before any reload")
        start_log = len(conf_lbd.log_text())
        greeted = {s.port: s.server for s in streams}
        drops_before = drop_counters(conf_lbd)

        for step in range(1, N_RELOADS + 1):
            if step == INVALID_AT:
                _invalid_reload_changes_nothing(conf_lbd, vip, expected)
            wanted = {**kept_services(reals, step), **random_others(rng, reals)}
            write_atomically(conf_lbd.config, render(vip, wanted))
            if step % LBADM_RELOAD_EVERY == 0:
                proc = conf_lbd.lbadm("--reload")
                assert proc.stdout == proc.stderr == ""
            else:
                assert conf_lbd.proc is not None
                conf_lbd.proc.send_signal(signal.SIGHUP)  # our lbd, by its Popen (PID)
            what = f"reload {step} (seed {seed})"
            wait_listed(conf_lbd, wanted, what)
            expected = wanted
            since = {s.port: s.echoed for s in streams}
            wait_progress(streams, since, what)

        conns = conf_lbd.request("connections")["result"]["connections"]
        drops_after = drop_counters(conf_lbd)
    finally:
        for s in streams:
            s.close()

    problems = [f"service {s.port}: {s.error}" for s in streams if s.error]
    assert not problems, f"seed {seed}: {problems}\n{conf_lbd.log_tail()}"
    assert {s.port: s.server for s in streams} == greeted
    # Not one packet of the kept connections met a missing service or destination: there was
    # no moment, however short, in which they were gone.
    assert drops_after == drops_before, f"seed {seed}: drops {drops_before} -> {drops_after}"
    for s in streams:
        assert s.echoed > N_RELOADS, (s.port, s.echoed)  # progress after every single reload
        entry = [c for c in conns if c["cport"] == s.local_port and c["vport"] == s.port]
        assert len(entry) == 1 and entry[0]["state"] == "ESTABLISHED", (s.port, entry)
        assert entry[0]["daddr"] == topo.host(s.server).addr

    # What lbd did to the kept services, from its log: edits only.
    applied = re.findall(r"applied: (.*)", conf_lbd.log_text()[start_log:])
    reloads = re.findall(r"reload of .*?: (\d+) change", conf_lbd.log_text()[start_log:])
    assert len(reloads) == N_RELOADS, f"{len(reloads)} reloads with changes logged"
    for n in KEPT:
        label = f"-t {vip}:{PORT_BASE + n}"
        bad = [a for a in applied if label in a and a.split()[0] in ("-A", "-D", "-a", "-d")]
        assert not bad, f"service {n} was deleted/re-created or lost destinations: {bad}"
    assert any(a.startswith(f"-E -t {vip}:{PORT_BASE + 4}") for a in applied)
    assert any(a.startswith(f"-e -t {vip}:{PORT_BASE + 2}") for a in applied)
    assert any(a.startswith(f"-A -t {vip}:8003") for a in applied)  # service 3 came and went
    assert any(a.startswith(f"-D -t {vip}:8003") for a in applied)


def _invalid_reload_changes_nothing(lbd: ConfigLbd, vip: str, expected: dict[int, tuple[str, Dests]]) -> None:
    text = render(vip, {}) + f'\n[[service]]\nproto = "tcp"\naddr = "{vip}"\nport = 8001\nsched = "nosuch"\n'
    write_atomically(lbd.config, text)
    proc = lbd.lbadm("--reload", check=False)
    assert proc.returncode != 0
    assert f"{lbd.config}:" in proc.stderr and "'sched' must be one of" in proc.stderr, proc.stderr
    assert listed(lbd) == expected  # rejected whole: nothing removed although the file has no service 1..5


def test_lbd_check_diff_against_the_running_lbd(topo: Topology, conf_lbd: ConfigLbd) -> None:
    vip = topo.vip
    reals = [rs.addr for rs in topo.reals]
    running = {PORT_BASE + n: ("rr", {rip: 1 for rip in reals}) for n in KEPT}
    write_atomically(conf_lbd.config, render(vip, running))
    conf_lbd.start()
    wanted = {**running, 8003: ("rr", {reals[0]: 1})}
    wanted[8005] = ("rr", {reals[0]: 3, reals[1]: 1, reals[2]: 1})
    other = conf_lbd.config.with_name("next.toml")
    write_atomically(other, render(vip, wanted))
    proc = conf_lbd.director.exec([str(LBD), "--check", "--diff", "--socket", conf_lbd.socket, str(other)],
                                  check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{other}: OK (toml): 5 services")
    assert [re.sub(r"\s+#.*", "", line) for line in lines[1:]] == [
        f"-A -t {vip}:8003 -s rr",
        f"-a -t {vip}:8003 -r {reals[0]}:8003 -g -w 1",
        f"-e -t {vip}:8005 -r {reals[0]}:8005 -g -w 3",
    ]
    assert listed(conf_lbd) == running  # --diff applied nothing
