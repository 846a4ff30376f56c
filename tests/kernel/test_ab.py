"""Functional A/B against kernel IPVS: the same ipvsadm rules, the same client requests, the same
choice of real servers (issue 6).

This host's kernel has no ip_vs, so the comparison runs in a guest booting Debian's distribution
kernel under qemu (virtme-ng, software emulation): bench/ab.py boots it, bench/ab_guest.py runs
inside. In the guest both systems are configured from one rules file (`ipvsadm -R`, `lbadm -R`):

- rr, weights 1/1/1: 12 requests on fresh connections;
- wlc, weights 1/2/3: 12 connections opened one after another and held open.

The sequences of real servers must be identical, and must be what the schedulers promise
(rr: every server in turn; wlc with all connections active: 2/4/6).

Skipped, with the reason, where the guest cannot boot (missing packages, no unpacked kernel:
`python -m bench ab --functional-only` fetches it once). Takes ~3 minutes (boot ~30 s, lbd's
start-up ~1 minute under emulation).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import ab

GUEST_TIMEOUT_S = 600.0


def _problem() -> str | None:
    if os.environ.get("LB_SKIP_GUEST"):
        return "LB_SKIP_GUEST is set"
    return ab.environment_problem()


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> dict:
    problem = _problem()
    if problem:
        pytest.skip(f"kernel IPVS guest cannot boot here: {problem}")
    out = tmp_path_factory.mktemp("ab")
    data = ab.run_guest(Path(out), quick=True, functional_only=True, timeout=GUEST_TIMEOUT_S)
    if "guest" not in data:
        boot = data.get("boot", {})
        pytest.skip(f"kernel IPVS guest did not run: {data.get('error')} (boot: rc {boot.get('rc')})")
    return data["guest"]


def _seq(guest: dict, case: str, system: str) -> list[str]:
    f = guest.get("functional") or {}
    assert case in f, f"guest produced no {case} result: {guest.get('errors')}"
    r = f[case].get(system, {})
    assert "sequence" in r, f"{system} {case}: {r.get('error')}"
    return r["sequence"]


def test_guest_kernel_has_ipvs(guest: dict) -> None:
    assert guest["kernel"].startswith("6.1."), guest["kernel"]
    assert "ipvsadm" in guest.get("ipvsadm_version", ""), guest.get("ipvsadm_version")


@pytest.mark.parametrize("case", ["rr", "wlc"])
def test_same_distribution_as_kernel_ipvs(guest: dict, case: str) -> None:
    ipvs, lbd = _seq(guest, case, "ipvs"), _seq(guest, case, "lbd")
    assert ipvs == lbd, f"{case}: IPVS chose {ipvs}, lbd chose {lbd}"


def test_rr_takes_turns(guest: dict) -> None:
    seq = _seq(guest, "rr", "ipvs")
    assert sorted(seq.count(s) for s in set(seq)) == [4, 4, 4], seq
    assert all(seq[i] != seq[i + 1] for i in range(len(seq) - 1)), seq


def test_wlc_follows_weights(guest: dict) -> None:
    f = guest["functional"]
    names = f["names"]  # address -> name, in the order rs1, rs2, rs3 (weights 1, 2, 3)
    by_weight = [names[a] for a in sorted(names, key=lambda a: int(a.rsplit(".", 1)[1]))]
    seq = _seq(guest, "wlc", "lbd")
    assert [seq.count(n) for n in by_weight] == [2, 4, 6], seq
