"""lbd's queue options: --queue-balance, --queue-cpus, --queue-cpu-fanout."""

from __future__ import annotations

import os

import pytest

from lb.queues import QueueSpecError, afxdp_cpus, parse_cpu_list, parse_queue_range, plan


@pytest.mark.parametrize(("text", "expected"), [("0:1", (0, 1)), ("4:7", (4, 7)), ("0:65535", (0, 65535))])
def test_queue_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_queue_range(text) == expected


@pytest.mark.parametrize("text", ["1", "1:1", "3:2", "a:b", "0:65536", "-1:2", "0:1:2", ""])
def test_queue_range_rejects(text: str) -> None:
    with pytest.raises(QueueSpecError):
        parse_queue_range(text)


@pytest.mark.parametrize(("text", "expected"), [("0", [0]), ("0,2-3", [0, 2, 3]), ("3,1", [3, 1]), (" 1 , 2 ", [1, 2])])
def test_cpu_list(text: str, expected: list[int]) -> None:
    assert parse_cpu_list(text) == expected


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-1", "0,,1"])
def test_cpu_list_rejects(text: str) -> None:
    with pytest.raises(QueueSpecError):
        parse_cpu_list(text)


def test_single_queue_unpinned() -> None:
    p = plan(5, None, None, False, allowed={0, 1})
    assert (p.queues, p.cpus, p.balance, p.first) == ((5,), (None,), None, 5)


def test_balance_pins_round_robin_over_allowed_cpus() -> None:
    p = plan(0, "2:5", None, False, allowed={1, 3})
    assert p.queues == (2, 3, 4, 5) and p.cpus == (1, 3, 1, 3) and p.balance == (2, 5) and p.first == 2
    assert "2 on CPU 1" in p.describe()


def test_explicit_cpus_in_order() -> None:
    assert plan(0, "0:1", "1,0", False, allowed={0, 1}).cpus == (1, 0)
    assert plan(7, None, "1", False, allowed={0, 1}).cpus == (1,)


def test_fanout_pins_queue_i_to_cpu_i() -> None:
    p = plan(0, "10:11", None, True, allowed={0, 1})
    assert p.cpus == (0, 1) and p.cpu_fanout


@pytest.mark.parametrize(("balance", "cpus", "fanout", "why"), [
    ("0:1", "0", False, "lists 1 CPU(s) for 2 queue(s)"),
    ("0:1", "0,5", False, "CPU(s) 5 not available"),
    (None, None, True, "needs --queue-balance"),
    ("0:2", None, True, "CPU(s) 2 not available"),
    ("0:64", None, False, "at most 64 queues"),
])
def test_plan_rejects_with_reason(balance: str | None, cpus: str | None, fanout: bool, why: str) -> None:
    with pytest.raises(QueueSpecError, match=why.replace("(", r"\(").replace(")", r"\)")):
        plan(0, balance, cpus, fanout, allowed={0, 1})


def test_lbd_options_become_a_plan() -> None:
    from lb.daemon import parse_args

    cpu = min(os.sched_getaffinity(0))
    args = parse_args(["--queue-balance", "4:5", "--queue-cpus", f"{cpu},{cpu}", "--gso", "--gso-mtu", "9000"])
    assert args.queue_num == 4 and args.queues.queues == (4, 5) and args.queues.cpus == (cpu, cpu)
    assert args.gso and args.gso_mtu == 9000
    single = parse_args([])
    assert single.queue_num == 0 and single.queues.queues == (0,) and single.queues.cpus == (None,)


@pytest.mark.parametrize(("argv", "why"), [
    (["--queue-num", "1", "--queue-balance", "1:2"], "either --queue-num or --queue-balance"),
    (["--engine", "python", "--queue-balance", "0:1"], "--queue-balance needs the C engine"),
    (["--gso", "--gso-mtu", "575"], "--gso-mtu 575 out of range"),
    (["--queue-balance", "2:1"], "FIRST must be below LAST"),
])
def test_lbd_refuses_queue_options(argv: list[str], why: str, capsys: pytest.CaptureFixture[str]) -> None:
    from lb.daemon import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and why in capsys.readouterr().err


def test_afxdp_cpus_parse_in_socket_order_and_check_availability() -> None:
    assert afxdp_cpus(None, allowed={0, 1}) == []
    assert afxdp_cpus("1,0-1", allowed={0, 1}) == [1, 0, 1]  # the count is the sockets' (AfxdpSource.start)
    with pytest.raises(QueueSpecError, match=r"CPU\(s\) 2 not available to lbd \(allowed: 0, 1\)"):
        afxdp_cpus("0,2", allowed={0, 1})
    with pytest.raises(QueueSpecError, match="at most 64 threads"):
        afxdp_cpus("0-64", allowed=set(range(65)))
