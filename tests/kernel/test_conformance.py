"""Kernel IPVS and lbd, same rules, same client flows: identical choices, listings and messages.

Every scenario of tests/kernel/scenarios is played on kernel IPVS (Debian's 6.1 kernel and
ipvsadm 1.31, in a qemu guest) and on lbd + lbadm, in one guest boot (conftest.py). Per scenario:
- test_kernel_run_is_sound: kernel IPVS's run completed, every flow got an answer or a RST, and
  where the scenario states the kernel's known counts, they hold. A failure here is a problem
  of the harness or the guest, not of lbd.
- test_lbd_matches_kernel: lbd's record (sequence of chosen real servers, every listing,
  exit status and message) equals the kernel's, after compare.py's normalisation; the
  failure message is a unified diff, kernel first.
A scenario the guest's kernel cannot play (Scenario.kernel_lacks: twos, which Debian does not
build) checks instead that the kernel refused its rules and that lbd served every flow within the
scenario's bounds; the difference is reported as a KernelLacks warning with its diff.
A difference confined to the inbound counters of --stats listings, where the clients sent one
system more packets than the other (a retransmission in the slow guest), is reported as a
ClientsRetransmitted warning with its diff (compare.stats_explained_by_clients).
How to run, what it needs, how to add a scenario: tests/kernel/README.md.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import pytest

from conformance import compare
from conformance.model import Connect, Hold, Scenario, Udp
from conformance.scenarios import ALL

pytestmark = pytest.mark.kernel

REAL = ("rs1", "rs2", "rs3", "rs4")


class ClientsRetransmitted(UserWarning):
    """The clients sent one system more packets than the other (compare.stats_explained_by_clients):
    the --stats inbound counters differ by exactly that, everything else is identical."""


class KernelLacks(UserWarning):
    """lbd does what the guest's kernel cannot (Scenario.kernel_lacks): a difference on record."""


def _entry(data: dict[str, Any], scn: Scenario, system: str) -> dict[str, Any]:
    scns = data["scenarios"]
    assert scn.name in scns, f"the guest did not play {scn.name}: {data.get('errors')}"
    entry = scns[scn.name].get(system)
    assert entry is not None, f"{scn.name}: no {system} run ({data.get('lbd_start')})"
    return entry


def _context(entry: dict[str, Any]) -> str:
    notes = "\n".join(entry.get("notes", []))
    sent = f"\nthe clients sent {entry['client_sent']} packets in lbd's play" if entry.get("client_sent") else ""
    return (f"\nnotes of this run:\n{notes}" if notes else "") + sent


def test_guest_has_kernel_ipvs(conformance: dict[str, Any]) -> None:
    assert conformance["kernel"].startswith("6.1."), conformance["kernel"]
    assert "ipvsadm v1.31" in conformance.get("ipvsadm_version", ""), conformance.get("ipvsadm_version")
    assert not conformance["errors"], conformance["errors"]


@pytest.mark.parametrize("scn", ALL, ids=[s.name for s in ALL])
def test_kernel_run_is_sound(conformance: dict[str, Any], scn: Scenario) -> None:
    entry = _entry(conformance, scn, "kernel")
    assert "error" not in entry, entry["error"]
    records = entry["records"]
    expected_records = (2 if scn.rules else 1) + len(scn.steps)
    assert len(records) == expected_records, f"{len(records)} records for {expected_records} steps"
    steps = scn.steps
    if scn.kernel_lacks:
        rules = records[1]
        assert rules["what"] == "ADMIN -R < rules" and rules["rc"] != 0, (
            f"kernel IPVS accepted the rules although it lacks {scn.kernel_lacks}: make {scn.name} an "
            f"ordinary scenario. {rules}")
        return
    for step, rec in zip(steps, records[-len(steps):], strict=True):
        if not isinstance(step, (Connect, Hold, Udp)):
            continue
        seq = compare.sequence(rec)
        # refused:none: no real server was available (weight 0, deleted, overloaded; the hashing
        # schedulers without fallback), which the director answers with ICMP port unreachable.
        # A datagram with a TTL (Udp(ttl=)) is answered "rsN ttl=M", or with ICMP time exceeded; one
        # with a size "rsN whole" (or says what arrived); an answer from elsewhere "rsN from nrsN:P".
        names = [o if o.startswith("icmp:") else o.split(" ")[0] for o in seq]
        unanswered = [o for o in names if o not in (*REAL, "refused:none") and not o.startswith("refused:rs")
                      and not (isinstance(step, Udp) and step.ttl and o.startswith("icmp:11/0 from "))]
        assert not unanswered, f"{rec['what']}: kernel IPVS flows without an answer: {seq}"
        if isinstance(step, Udp) and step.size:
            cut = [o for o, name in zip(seq, names, strict=True) if name in REAL and " whole" not in o]
            assert not cut, f"{rec['what']}: kernel IPVS delivered datagrams (or answers) not whole: {cut}"
        if step.kernel_counts is not None:
            assert dict(Counter(seq)) == step.kernel_counts, (
                f"{rec['what']}: kernel IPVS chose {seq}; the scenario expects the counts {step.kernel_counts}")


@pytest.mark.parametrize("scn", ALL, ids=[s.name for s in ALL])
def test_lbd_matches_kernel(conformance: dict[str, Any], scn: Scenario) -> None:
    kernel, lbd = _entry(conformance, scn, "kernel"), _entry(conformance, scn, "lbd")
    assert "error" not in kernel, f"kernel IPVS run failed: {kernel['error']}"
    assert "error" not in lbd, f"lbd run failed: {lbd['error']}{_context(lbd)}"
    tool = str(conformance.get("lbd_tool", "lbadm"))
    k, b = compare.render(kernel["records"], "kernel", tool), compare.render(lbd["records"], "lbd", tool)
    if scn.kernel_lacks:
        _check_lbd_alone(scn, lbd["records"])
        assert k != b, f"{scn.name}: identical records although the kernel lacks {scn.kernel_lacks}"
        warnings.warn(KernelLacks(f"{scn.name}: kernel IPVS lacks {scn.kernel_lacks}; lbd does it "
                                  f"({scn.why})\n{compare.diff(k, b, tool)}"), stacklevel=1)
        return
    if k != b:
        why = compare.stats_explained_by_clients(kernel["records"], lbd["records"], kernel.get("client_sent"),
                                                 lbd.get("client_sent"))
        if why is not None:
            warnings.warn(ClientsRetransmitted(f"{scn.name}: {why}\n{compare.diff(k, b, tool)}"), stacklevel=1)
            return
        pytest.fail(f"{scn.name} ({scn.why}): lbd differs from kernel IPVS\n"
                    f"{compare.diff(k, b, tool)}{_context(lbd)}", pytrace=False)


def _check_lbd_alone(scn: Scenario, records: list[dict[str, Any]]) -> None:
    """lbd's own run of a scenario the kernel cannot play: its rules taken, every flow answered by a
    real server, each server's count within the step's lbd_counts."""
    rules = records[1]
    assert rules["what"] == "ADMIN -R < rules" and rules["rc"] == 0, rules
    for step, rec in zip(scn.steps, records[-len(scn.steps):], strict=True):
        if not isinstance(step, (Connect, Hold, Udp)):
            continue
        seq = compare.sequence(rec)
        assert all(o in REAL for o in seq), f"{rec['what']}: lbd flows without an answer: {seq}"
        counts = Counter(seq)
        for server, (low, high) in (step.lbd_counts or {}).items():
            assert low <= counts[server] <= high, f"{rec['what']}: lbd chose {dict(counts)}; bounds {step.lbd_counts}"
