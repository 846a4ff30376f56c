"""lbd under systemd's Type=notify protocol (issue 12, item 4), with the notification socket owned here.

systemd calls a Type=notify service started when READY=1 arrives, and orders everything that
comes `After=` it on that. So READY=1 must mean "the tables are loaded and the steering (lbd's
nftables table, or its iptables rules) is in place": when it arrives, lbd is frozen (SIGSTOP, by
PID) and its namespace's steering and services are read. RELOADING=1 ... READY=1 frame a SIGHUP reload (the new rule exists at the second
READY=1); STOPPING=1 comes on SIGTERM.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LBADM, LBD, READY_TIMEOUT_S, STOP_TIMEOUT_S, iptables_leftovers, steering_args
from steering import dump, elements, queue_rules

from lb.testbed.topology import Topology

PORT = 80
PORT2 = 8080


def _config(topo: Topology, ports: tuple[int, ...]) -> str:
    text = ""
    for port in ports:
        text += (f'[[service]]\nproto = "tcp"\naddr = "{topo.vip}"\nport = {port}\nsched = "rr"\n'
                 f'  [[service.dest]]\n  addr = "{topo.reals[0].addr}"\n  fwd = "route"\n  weight = 1\n')
    return text


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()


def _next(sock: socket.socket, proc: subprocess.Popen[Any], log: Path, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(0.2)
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            assert proc.poll() is None or timeout == STOP_TIMEOUT_S, \
                f"lbd exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            continue
        return dict(line.split("=", 1) for line in data.split("\n") if line)
    raise AssertionError(f"no notification within {timeout}s:\n{log.read_text()[-3000:]}")


def test_ready_only_once_rules_are_installed(topo: Topology, notify_socket: tuple[socket.socket, str],
                                            tmp_path: Path) -> None:
    sock, path = notify_socket
    config, log, ctl = tmp_path / "lbd.toml", tmp_path / "lbd.log", str(tmp_path / "lbd.sock")
    config.write_text(_config(topo, (PORT,)))
    env_cmd = ["env", f"NOTIFY_SOCKET={path}"]
    with open(log, "w") as out:
        proc = topo.director.popen([*env_cmd, str(LBD), "--socket", ctl, "--config", str(config), "-v",
                                    *steering_args()], stdout=out, stderr=subprocess.STDOUT)
    try:
        ready = _next(sock, proc, log, READY_TIMEOUT_S)
        proc.send_signal(signal.SIGSTOP)  # freeze lbd where READY=1 left it
        try:
            services, queued = elements(topo.director, "svc", missing_ok=True), queue_rules(topo.director)
        finally:
            proc.send_signal(signal.SIGCONT)
        assert ready.get("READY") == "1", ready
        assert "queue 0" in ready.get("STATUS", "") and ctl in ready["STATUS"], ready
        assert f"{topo.vip},tcp:{PORT}" in services and queued, dump(topo.director)
        listed = topo.director.exec([str(LBADM), "--socket", ctl, "-Ln"]).stdout
        assert f"TCP  {topo.vip}:{PORT} rr" in listed and topo.reals[0].addr in listed, listed

        # SIGHUP (the unit's ExecReload): RELOADING=1, then READY=1 once the new rule is in.
        config.write_text(_config(topo, (PORT, PORT2)))
        proc.send_signal(signal.SIGHUP)
        reloading = _next(sock, proc, log, READY_TIMEOUT_S)
        assert reloading.get("RELOADING") == "1" and int(reloading["MONOTONIC_USEC"]) > 0, reloading
        again = _next(sock, proc, log, READY_TIMEOUT_S)
        assert again.get("READY") == "1" and "reloaded" in again.get("STATUS", ""), again
        assert f"{topo.vip},tcp:{PORT2}" in elements(topo.director, "svc"), dump(topo.director)

        proc.send_signal(signal.SIGTERM)
        assert _next(sock, proc, log, STOP_TIMEOUT_S).get("STOPPING") == "1"
        assert topo.stop_process(proc, timeout=STOP_TIMEOUT_S) == 0, log.read_text()[-3000:]
        assert not iptables_leftovers(topo.director)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            topo.stop_process(proc, timeout=STOP_TIMEOUT_S)


def _unit_capabilities() -> list[str]:
    unit = Path(__file__).resolve().parents[2] / "systemd" / "lbd.service"
    line = next(x for x in unit.read_text().splitlines() if x.startswith("CapabilityBoundingSet="))
    return [c.lower().removeprefix("cap_") for c in line.split("=", 1)[1].split()]


def test_lbd_serves_with_only_the_units_capabilities(topo: Topology, notify_socket: tuple[socket.socket, str],
                                                    tmp_path: Path, http: Any) -> None:
    """The unit's CapabilityBoundingSet= and NoNewPrivileges=, applied by setpriv as systemd would:
    lbd binds its queue, installs its rules, resolves the real servers and balances real requests."""
    caps = _unit_capabilities()
    assert caps == ["net_admin", "net_raw"]
    sock, path = notify_socket
    config, log, ctl = tmp_path / "lbd.toml", tmp_path / "lbd.log", str(tmp_path / "lbd.sock")
    config.write_text(f'[[service]]\nproto = "tcp"\naddr = "{topo.vip}"\nport = {PORT}\nsched = "rr"\n' + "".join(
        f'  [[service.dest]]\n  addr = "{rs.addr}"\n  fwd = "route"\n  weight = 1\n' for rs in topo.reals))
    bounded = ["setpriv", "--bounding-set", ",".join(["-all", *(f"+{c}" for c in caps)]),
               "--inh-caps", "-all", "--no-new-privs"]
    with open(log, "w") as out:
        proc = topo.director.popen([*bounded, "env", f"NOTIFY_SOCKET={path}", str(LBD), "--socket", ctl,
                                    "--config", str(config), *steering_args()], stdout=out, stderr=subprocess.STDOUT)
    try:
        assert _next(sock, proc, log, READY_TIMEOUT_S).get("READY") == "1"
        status = Path(f"/proc/{proc.pid}/status").read_text()
        eff = int(re.search(r"^CapEff:\s+([0-9a-f]+)", status, re.MULTILINE).group(1), 16)  # type: ignore[union-attr]
        assert eff == (1 << 12) | (1 << 13), f"CapEff {eff:#x}: expected CAP_NET_ADMIN|CAP_NET_RAW only"
        deadline = time.monotonic() + 10.0
        while True:
            listed = topo.director.exec([str(LBADM), "--socket", ctl, "--json", "-Ln"]).stdout
            if listed.count('"resolved"') >= len(topo.reals) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        replies = http.gets(len(topo.reals) * 2)
        assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
        assert {r.server for r in replies} == {rs.name for rs in topo.reals}
        proc.send_signal(signal.SIGTERM)
        assert topo.stop_process(proc, timeout=STOP_TIMEOUT_S) == 0, log.read_text()[-3000:]
        assert not iptables_leftovers(topo.director)
    finally:
        if proc.poll() is None:
            topo.stop_process(proc, timeout=STOP_TIMEOUT_S)
