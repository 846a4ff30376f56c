"""bench/native/pktgen.c, the bench's packet generator, without a socket (--dry-run).

Built here with the project's warning flags and ASan/UBSan; its frames are parsed by scapy: every
IPv4 and TCP/UDP checksum must be what scapy computes, and the flows must vary as the header says
(sport = base + k % flows_per_addr, saddr = base + (k / flows_per_addr) % addrs). Templates that
would make it read outside the frame are refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

SRC = Path(__file__).resolve().parents[2] / "bench" / "native" / "pktgen.c"
CC = shutil.which("gcc") or shutil.which("cc")


@pytest.fixture(scope="module")
def pktgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if CC is None:
        pytest.skip("no C compiler (gcc or cc) on PATH")
    out = tmp_path_factory.mktemp("pktgen") / "pktgen"
    cmd = [CC, "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", "-o", str(out), str(SRC)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return out


def _template(tmp: Path, frame: bytes, name: str = "t.bin") -> Path:
    path = tmp / name
    path.write_bytes(frame + bytes(max(0, 60 - len(frame))))
    return path


def _tcp(flags: str = "A", sport: int = 20000) -> bytes:
    return raw(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
               / IP(src="10.9.0.150", dst="10.9.0.100", ttl=64, flags="DF")
               / TCP(sport=sport, dport=80, flags=flags, seq=1000, ack=1 if "A" in flags else 0, window=512))


def _run(pktgen: Path, template: Path, out: Path, count: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(pktgen), "--template", str(template), "--count", str(count), "--dry-run", str(out),
                           *extra], capture_output=True, text=True, timeout=60)


def _frames(path: Path, size: int) -> list[bytes]:
    data = path.read_bytes()
    assert len(data) % size == 0
    return [data[i:i + size] for i in range(0, len(data), size)]


def _checksums_ok(frame: bytes, l4: type) -> bool:
    pkt = Ether(frame)
    ip_sum, l4_sum = pkt[IP].chksum, pkt[l4].chksum
    del pkt[IP].chksum
    del pkt[l4].chksum
    again = Ether(raw(pkt))
    return bool(again[IP].chksum == ip_sum and again[l4].chksum == l4_sum)


def test_established_flows_cycle_with_valid_checksums(pktgen: Path, tmp_path: Path) -> None:
    tmpl = _template(tmp_path, _tcp("A"))
    proc = _run(pktgen, tmpl, tmp_path / "out.bin", 2100, "--flows", "1024", "--seq-start", "5")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["dry_run"] == 2100 and res["frame_len"] == 60
    assert res["next_seq"] == 5  # repeating flows: the next trial starts where this one did
    frames = _frames(tmp_path / "out.bin", 60)
    assert len(frames) == 2100
    sports = [Ether(f)[TCP].sport for f in frames]
    assert sports[:3] == [20005, 20006, 20007]
    assert sports[1024] == sports[0] and len(set(sports)) == 1024
    assert {Ether(f)[IP].src for f in frames} == {"10.9.0.150"}
    assert all(_checksums_ok(f, TCP) for f in frames)


def test_syn_tuples_never_repeat_across_addresses(pktgen: Path, tmp_path: Path) -> None:
    tmpl = _template(tmp_path, _tcp("S", sport=2000))
    proc = _run(pktgen, tmpl, tmp_path / "out.bin", 3000, "--flows", "0", "--flows-per-addr", "700", "--addrs",
                "100", "--seq-start", "100")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["next_seq"] == 3100  # the next trial continues with fresh tuples
    frames = [Ether(f) for f in _frames(tmp_path / "out.bin", 60)]
    tuples = [(p[IP].src, p[TCP].sport) for p in frames]
    assert len(set(tuples)) == 3000
    assert tuples[0] == ("10.9.0.150", 2100)
    assert tuples[600] == ("10.9.0.151", 2000)  # k = 700: the next address, the port base again
    assert all(p[TCP].flags == "S" for p in frames)
    assert all(_checksums_ok(raw(p), TCP) for p in frames)


def test_udp_checksum_never_zero_on_the_wire(pktgen: Path, tmp_path: Path) -> None:
    frame = raw(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
                / IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=1, dport=53) / b"abc")
    tmpl = _template(tmp_path, frame)
    proc = _run(pktgen, tmpl, tmp_path / "out.bin", 65535, "--flows", "0", "--flows-per-addr", "65535")
    assert proc.returncode == 0, proc.stderr
    frames = _frames(tmp_path / "out.bin", 60)
    sums = [int.from_bytes(f[40:42], "big") for f in frames]  # 14 Ethernet + 20 IPv4 + 6
    assert 0 not in sums  # 0 means "no checksum" for UDP: RFC 768 sends 0xffff instead
    assert 0xFFFF in sums  # the port that sums to zero is among the 65535
    assert all(_checksums_ok(f, UDP) for f in frames[::97])


@pytest.mark.parametrize(("why", "frame"), [
    ("not Ethernet/IPv4", raw(Ether(type=0x86DD)) + bytes(60)),
    ("IPv4 header length", raw(Ether() / IP(ihl=15, src="10.0.0.1", dst="10.0.0.2", proto=6)) + bytes(16)),
    ("consistent total length", raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", len=400) / TCP())),
    ("TCP header is truncated", raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=6) / b"12345678")),
    ("TCP or UDP", raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=1) / bytes(20))),
])
def test_unusable_templates_are_refused(pktgen: Path, tmp_path: Path, why: str, frame: bytes) -> None:
    tmpl = tmp_path / "bad.bin"
    tmpl.write_bytes(frame)
    proc = _run(pktgen, tmpl, tmp_path / "out.bin", 10)
    assert proc.returncode == 1
    assert why in proc.stderr


@pytest.mark.parametrize("extra", [["--batch", "0"], ["--batch", "1025"], ["--addrs", "0"], ["--max-seconds", "0"],
                                   ["--rate", "-1"], ["--rate", "1e30"], ["--rate", "nan"], ["--max-seconds", "nan"],
                                   ["--count"], ["--bogus", "1"]])
def test_bad_arguments_print_usage(pktgen: Path, tmp_path: Path, extra: list[str]) -> None:
    tmpl = _template(tmp_path, _tcp())
    proc = subprocess.run([str(pktgen), "--template", str(tmpl), "--dry-run", str(tmp_path / "o.bin"),
                           *(["--count", "5"] if extra != ["--count"] else []), *extra],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: pktgen")
