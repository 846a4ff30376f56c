"""The PROXY protocol (issue 14 item 5) proven against a real consumer: haproxy.

Topology: client and director on segment "lan", one real server f1 on segment "back" behind
the director (FULLNAT; its default route is the director's back address, the local address).
haproxy (Debian's, unpacked into build/tools by `make`) runs in f1 with its own configuration
file in a temporary directory, started and ended by PID here: it binds :80 with `accept-proxy`,
so it accepts a connection only with a valid PROXY header in front of the request, and answers
every request with what it parsed from the header (src:src_port and dst:dst_port) and the CRC32
and length of the request body it received.

Each case sends an HTTP POST of several segments through lbd (v1 and v2, with and without
SYN-proxy): haproxy must report the client's own address and port and the VIP:port, and the body
byte for byte, so the sequence translation after the header is right for every segment (and the
ACKs going back, or the client would stall retransmitting).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lbd, running_lbd

from lb.testbed import client
from lb.testbed.topology import Topology, fullnat_spec

REPO = Path(__file__).resolve().parents[2]
HAPROXY = REPO / "build" / "tools" / "haproxy"
PORT = 80
BODY_BYTES = 12_000  # ~9 segments at the lowered MSS; below haproxy's 16 KiB buffer (http-buffer-request)
READY_TIMEOUT_S = 10.0

HAPROXY_CFG = """\
global
    maxconn 64
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind :{port} accept-proxy
    option http-buffer-request
    http-request return status 200 content-type text/plain lf-string "{answer}\\n"
"""
# What haproxy parsed from the PROXY header (src, dst) and the body it received (length, CRC32).
HAPROXY_ANSWER = "%[src]:%[src_port] %[dst]:%[dst_port] %[req.body_len] %[req.body,crc32]"


def haproxy_problem() -> str | None:
    """Why haproxy cannot run here, or None."""
    if not HAPROXY.exists():
        return f"{HAPROXY} is missing: `make build/tools/haproxy` (part of `make test`) unpacks Debian's haproxy"
    ldd = subprocess.run(["ldd", str(HAPROXY)], capture_output=True, text=True, check=False)
    missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
    if missing:
        return f"{HAPROXY} needs shared libraries that are not installed: {', '.join(missing)} (DEB_PKGS in the Makefile)"
    return None


@pytest.fixture(scope="module")
def ptopo() -> Iterator[Topology]:
    problem = haproxy_problem()
    if problem:
        pytest.skip(problem)
    with Topology(fullnat_spec(1)) as t, tempfile.TemporaryDirectory(prefix="lbPXhap") as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(port=PORT, answer=HAPROXY_ANSWER))
        rs = t.host("f1")
        log = open(Path(tmp) / "haproxy.log", "w")  # noqa: SIM115 - closed below, after haproxy
        proc = rs.popen([str(HAPROXY), "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not rs.exec(["ss", "-Hltn", f"sport = :{PORT}"], check=False).stdout.strip():
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"haproxy did not listen in f1 (exit {proc.poll()}):\n"
                                f"{(Path(tmp) / 'haproxy.log').read_text()[-2000:]}")
                time.sleep(0.1)
            yield t
        finally:
            proc.terminate()  # ours, by PID
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            log.close()


def proxy_service(lbd: Lbd, t: Topology, version: str, synproxy: bool) -> None:
    """The service with lbadm, as an operator types it: -A ... --proxy-protocol, -P, -a ... -b."""
    words = ["-A", "-t", f"{t.vip}:{PORT}", "-s", "rr", "--proxy-protocol", version]
    if synproxy:
        words += ["-j", "enable"]
    lbd.lbadm(*words)
    lbd.lbadm("-P", "-t", f"{t.vip}:{PORT}", "-z", t.director.iface("back").addr)
    lbd.lbadm("-a", "-t", f"{t.vip}:{PORT}", "-r", f"{t.host('f1').addr}:{PORT}", "-b")
    lbd.wait_resolved()


def post(t: Topology, body: bytes) -> tuple[str, int, str]:
    """POST body to the VIP from the client: (client address, client port, haproxy's answer)."""
    conn = client.NetnsHTTPConnection(t.vip, PORT, netns=t.client.netns, timeout=10.0)
    try:
        conn.connect()
        assert conn.sock is not None
        caddr, cport = conn.sock.getsockname()
        conn.request("POST", "/upload", body=body, headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        text = resp.read().decode()
        assert resp.status == 200, (resp.status, text)
        return caddr, cport, text
    finally:
        conn.close()


@pytest.mark.parametrize("synproxy", [False, True], ids=["plain", "synproxy"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_reads_the_client_address(ptopo: Topology, engine: str, version: str, synproxy: bool) -> None:
    t = ptopo
    body = bytes((i * 7 + 3) & 0xFF for i in range(BODY_BYTES))
    with running_lbd(t, engine) as lbd:
        proxy_service(lbd, t, version, synproxy)
        saved = lbd.lbadm("-S", "-n").stdout
        assert f"--proxy-protocol {version}" in saved, saved
        for attempt in range(2):  # a second connection from another port: per-connection state
            caddr, cport, text = post(t, body)
            fields = text.split()
            assert fields[0] == f"{caddr}:{cport}", (attempt, text)
            assert caddr == t.client.addr
            assert fields[1] == f"{t.vip}:{PORT}", text
            assert int(fields[2]) == BODY_BYTES, f"haproxy received {fields[2]} body bytes of {BODY_BYTES}"
            assert int(fields[3]) == zlib.crc32(body), "the body arrived altered"
        reasons = lbd.ok("counters")["reasons"]
        assert reasons["proxy_cut"] == 0, f"the lowered MSS should leave room for the header: {reasons}"
        assert reasons["forwarded"] >= 2 * (BODY_BYTES // 1500), reasons


def test_without_the_option_haproxy_refuses(ptopo: Topology) -> None:
    """The control: a FULLNAT service without --proxy-protocol reaches haproxy without a header, which
    accept-proxy refuses (the connection is closed without an answer), so the answers above come from
    the header lbd inserted."""
    t = ptopo
    with running_lbd(t, "c") as lbd:
        lbd.lbadm("-A", "-t", f"{t.vip}:{PORT}", "-s", "rr")
        lbd.lbadm("-P", "-t", f"{t.vip}:{PORT}", "-z", t.director.iface("back").addr)
        lbd.lbadm("-a", "-t", f"{t.vip}:{PORT}", "-r", f"{t.host('f1').addr}:{PORT}", "-b")
        lbd.wait_resolved()
        with pytest.raises((ConnectionError, OSError, client.http.client.HTTPException)):
            post(t, b"x" * 100)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
