"""lbd --metrics under --packet-source afxdp: the XDP programs' and the AF_XDP sockets' counters
(struct lb_xdp_stats, struct lb_xsk_stats) under lbd_afxdp_* with their labels; absent under the
NFQUEUE source, and the lbd_nfqueue_* absent (not zero) when lbd has no NFQUEUE at all."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lb.metrics import XDP_FIELDS, XSK_FIELDS, XSK_NOT_COUNTERS, DirectorCollector, Snapshot
from lb.testbed import tools


def snapshot(counters: dict[str, Any], packet_source: str = "afxdp") -> Snapshot:
    from lb.model import Stats

    return Snapshot(info={"engine": "c", "queue_num": 0, "packet_source": packet_source}, listing={"services": []},
                    counters=counters, totals=Stats(), queues=(0,), conn_entries=0, conn_limit=1, hash_buckets=1,
                    read_seconds=0.0)


def exposition(snap: Snapshot) -> tuple[str, dict[str, Any]]:
    registry = CollectorRegistry()
    registry.register(DirectorCollector(lambda: snap))
    text = generate_latest(registry).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: Any) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def afxdp_counters() -> dict[str, Any]:
    s0 = {**dict.fromkeys(XSK_FIELDS, 0), "packets": 10, "xmit_xsk": 8, "xmit_l2": 1, "answers": 1,
          "kernel_rx_ring_full": 3, "kernel_fill_empty": 2, "zerocopy_err": 95}
    s1 = {**dict.fromkeys(XSK_FIELDS, 0), "packets": 4, "passed": 4, "pass_err": 1, "zerocopy_err": 0}
    return {"reasons": {"forwarded": 9}, "nfq_queues": [],
            "afxdp": {"program": {"redirected": 14, "passed": 30, "fragments_passed": 6, "no_socket": 2},
                      "sockets": [s0, s1],
                      "socket_names": [{"interface": "eth0", "queue": 0}, {"interface": "eth0", "queue": 1}]}}


def test_every_xdp_and_socket_field_has_a_name() -> None:
    from lb._ffi import ffi

    # `shed` is the overload guard's program's (lbd --overload-xdp, NFQUEUE source): the AF_XDP source's
    # program never sheds, and the guard's drops are lbd_overload_guard_dropped_total
    assert {n for n, _ in ffi.typeof("struct lb_xdp_stats").fields} == set(XDP_FIELDS) | {"shed"}
    xsk = {n for n, _ in ffi.typeof("struct lb_xsk_stats").fields}
    assert xsk == set(XSK_FIELDS) | set(XSK_NOT_COUNTERS)
    assert all(f.name.endswith("_total") for f in (*XDP_FIELDS.values(), *XSK_FIELDS.values()))


def test_afxdp_counters_with_labels_and_no_nfqueue_series_without_a_queue() -> None:
    _, families = exposition(snapshot(afxdp_counters()))
    assert samples(families["lbd_afxdp_program_packets"]) == {
        labels(action="redirected"): 14, labels(action="passed"): 30, labels(action="fragment_passed"): 6,
        labels(action="no_socket"): 2}
    q0, q1 = {"interface": "eth0", "queue": "0"}, {"interface": "eth0", "queue": "1"}
    assert samples(families["lbd_afxdp_packets"]) == {labels(**q0): 10, labels(**q1): 4}
    sent = samples(families["lbd_afxdp_sent"])
    assert sent[labels(**q0, socket="xsk")] == 8 and sent[labels(**q0, socket="packet")] == 1
    assert sent[labels(**q0, socket="raw")] == 1
    assert samples(families["lbd_afxdp_reinjected"])[labels(**q1, result="error")] == 1
    assert samples(families["lbd_afxdp_kernel_dropped"])[labels(**q0, cause="rx_ring_full")] == 3
    assert samples(families["lbd_afxdp_fill_ring_empty"])[labels(**q0)] == 2
    assert samples(families["lbd_afxdp_socket_info"]) == {labels(**q0, zerocopy="0"): 1,
                                                           labels(**q1, zerocopy="1"): 1}
    assert not any(name.startswith("lbd_afxdp_zerocopy") for name in families)  # an errno, not a counter
    # No NFQUEUE at all (afxdp without its fallback): its families are absent, not zero.
    assert not any(name.startswith("lbd_nfqueue_") for name in families), sorted(families)
    [instance] = families["lbd_instance_info"].samples
    assert instance.labels["packet_source"] == "afxdp"
    assert samples(families["lbd_packets"]) == {labels(reason="forwarded"): 9}  # the same core's reasons


def test_nfqueue_source_has_no_afxdp_series() -> None:
    _, families = exposition(snapshot({"reasons": {}, "nfq_queues": [{"packets": 3}]}, packet_source="nfqueue"))
    assert not any(name.startswith("lbd_afxdp_") for name in families), sorted(families)
    assert samples(families["lbd_nfqueue_packets"]) == {labels(queue="0"): 3}
    assert families["lbd_instance_info"].samples[0].labels["packet_source"] == "nfqueue"


def test_promtool_accepts_the_afxdp_exposition() -> None:
    promtool = tools.promtool()
    if promtool is None:
        pytest.skip("promtool not found on PATH nor in build/tools "
                    "(`make test-unit` unpacks it from Debian's prometheus package)")
    text, _ = exposition(snapshot(afxdp_counters()))
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc
