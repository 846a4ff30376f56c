"""bench/pps.py's DUT CPU accounting (dut_fields: ticks and IPI counts per packet), bench/xdp_fwd.py's program,
bench/napi_thread.py's kthread matching and bench/idle_filler.py's spinner."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from bench import idle_filler, pps, xdp_fwd
from lb import napibelow


def test_dut_fields_add_the_napi_kthread_and_count_ipis_per_packet() -> None:
    us_per_tick = 1e6 / pps.CLK_TCK
    t = {"pkt_thread_user": 1, "pkt_thread_sys": 3, "softirq": 2, "busy": 100, "napi": 4, "ipi_in": 50,
         "ipi_out": 20}
    out = pps.dut_fields(t, 100)
    assert out["dut_us_per_pkt"] == pytest.approx(10 * us_per_tick / 100)  # thread + napi + softirq < busy
    assert out["napi_us_per_pkt"] == pytest.approx(4 * us_per_tick / 100)
    assert out["ipi_in_per_pkt"] == 0.5 and out["ipi_out_per_pkt"] == 0.2


def test_dut_fields_without_napi_or_ipis_stay_as_before() -> None:
    out = pps.dut_fields({"pkt_thread_user": 1, "pkt_thread_sys": 1, "softirq": 1, "busy": 2}, 10)
    assert out["dut_us_per_pkt"] == pytest.approx(2 * 1e6 / pps.CLK_TCK / 10)  # capped by busy
    assert "napi_us_per_pkt" not in out and "ipi_in_per_pkt" not in out


def test_ipi_counts_read_this_machine() -> None:
    res = pps.ipi_counts(0, 0)
    if not res:
        pytest.skip("/proc/interrupts has no CAL/RES lines here")
    assert res["ipi_dut"] == res["ipi_gen"] >= 0


def test_napi_matches_full_and_cut_names() -> None:
    tasks = [(1, "napi/lbBab12cd0-8193"), (2, "napi/lbBab12cd1-8194"), (3, "napi/lbBab12cd"),
             (4, "ksoftirqd/1"), (5, "napi/lbBab12cd0")]
    assert napibelow.name_matches("lbBab12cd0", tasks) == [1, 5]  # 3: too short to be a cut name of it
    assert napibelow.name_matches("veth0", [(7, "napi/veth0-12"), (8, "napi/veth01-3")]) == [7]


def test_idle_filler_spins_under_sched_idle_and_ends_with_the_block() -> None:
    with idle_filler.filler(0, max_s=30) as pid:
        assert pid is not None
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE and os.sched_getaffinity(pid) == {0}
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "sh"
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:  # reaped by init once orphaned
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    with idle_filler.filler(0, enabled=False) as none:
        assert none is None


def test_xdp_fwd_program_builds_for_a_topology(tmp_path: Path) -> None:
    if not shutil.which("clang"):
        pytest.skip("clang is not installed (the Makefile's deps list it for the XDP programs)")
    assert xdp_fwd._mac_bytes("02:00:0a:0b:0c:0d") == "0x02,0x00,0x0a,0x0b,0x0c,0x0d"
    obj = xdp_fwd.build(tmp_path / "xdp_fwd.o", 7, "02:00:00:00:00:11", "02:00:00:00:00:01")
    assert obj.read_bytes()[:4] == b"\x7fELF"


def test_thread_name_says_main_for_the_process_and_reads_other_threads_names() -> None:
    import threading

    pid = os.getpid()
    assert pps.thread_name(pid, str(pid)) == "main"
    seen: list[tuple[str, str]] = []

    def run() -> None:
        own = Path("/proc/thread-self/comm").read_text().strip()
        seen.append((own, pps.thread_name(pid, str(threading.get_native_id()))))

    t = threading.Thread(target=run)
    t.start()
    t.join(5)
    assert seen and seen[0][1] == seen[0][0] and seen[0][1] != "main"
    assert pps.thread_name(pid, "999999999") == "999999999"  # gone (or never was): its id


def test_dut_fields_count_every_lbd_thread_not_only_the_busiest() -> None:
    # Under the XDP fast path the busiest thread is the control plane's event loop; the packet and
    # timers threads' ticks are lbd's cost as well (they were left out before 2026-12-06).
    us_per_tick = 1e6 / pps.CLK_TCK
    t = {"pkt_thread_user": 8, "pkt_thread_sys": 3, "other_threads": 2, "softirq": 19, "busy": 81}
    out = pps.dut_fields(t, 40000)
    assert out["dut_us_per_pkt"] == pytest.approx(32 * us_per_tick / 40000)
    assert out["control_plane_us_per_pkt"] == pytest.approx(2 * us_per_tick / 40000)
