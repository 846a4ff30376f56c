"""lbd --metrics ADDR:PORT: the director's state in Prometheus text exposition.

Two kinds of metrics (docs/metrics.md lists them all):

- node_exporter's IPVS collector, name for name and label for label (`node_ipvs_*`): the
  totals of /proc/net/ip_vs_stats, and per (virtual service, real server) the active and
  inactive connections and the weight of /proc/net/ip_vs. A dashboard or alert written for
  kernel IPVS reads lbd unchanged.
- lbd's own under `lbd_`: per service and per real server counters (node_exporter has none;
  the same label names), every packet reason, the NFQUEUE adapter per queue, SYN-proxy, the
  connection table, build and instance information; and the process_* metrics of
  prometheus_client.

How a scrape reads the director. prometheus_client serves HTTP from threads of its own; the
director's tables and bookkeeping belong to lbd's event loop (lbadm commands change them
there). So a scrape never touches them from its thread: it asks the loop to take one snapshot
(`take_snapshot`: the `list` and `counters` answers lbadm gets, and the table fill) and waits
for it. The loop spends one batched read on a scrape, the same work as one `lbadm -Ln`;
building the text happens in the HTTP thread. The packet path is never involved: the engines'
counters are what it already keeps. A scrape that the loop cannot serve within
SNAPSHOT_TIMEOUT_S fails (HTTP 500, Prometheus' `up` is 0) instead of showing stale numbers.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lb import __version__
from lb.model import Stats
from lb.totals import STAT_FIELDS

if TYPE_CHECKING:
    import asyncio
    from wsgiref.simple_server import WSGIServer

    from lb.director import Director

log = logging.getLogger("lbd")

SNAPSHOT_TIMEOUT_S = 5.0  # a scrape waits this long for the event loop (Prometheus' default timeout: 10 s)

# node_exporter collector/ipvs_linux.go: the labels of its per-backend gauges, in its order.
IPVS_BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark")
# lbd's per-service counters: the same names, without the real server.
IPVS_SERVICE_LABELS = ("local_address", "local_port", "proto", "local_mark")

# Stats field -> (node_exporter's name for the total, lbd's suffix per service / real server, help).
_STAT_METRICS: dict[str, tuple[str, str, str]] = {
    "conns": ("node_ipvs_connections_total", "connections_total", "Connections scheduled"),
    "inpkts": ("node_ipvs_incoming_packets_total", "incoming_packets_total",
               "Packets from clients forwarded to real servers"),
    "outpkts": ("node_ipvs_outgoing_packets_total", "outgoing_packets_total",
                "Packets from real servers forwarded to clients (NAT/FULLNAT; 0 with DR and tunnels)"),
    "inbytes": ("node_ipvs_incoming_bytes_total", "incoming_bytes_total",
                "Bytes (IP packets) from clients forwarded to real servers"),
    "outbytes": ("node_ipvs_outgoing_bytes_total", "outgoing_bytes_total",
                 "Bytes (IP packets) from real servers forwarded to clients"),
}
assert tuple(_STAT_METRICS) == STAT_FIELDS


@dataclass(frozen=True)
class CounterField:
    """Where one field of an engine's stats struct goes: a counter name and fixed labels."""

    name: str  # with _total
    help: str
    labels: tuple[tuple[str, str], ...] = ()


# struct lb_nfq_stats (lb_api.h). Timer sends are a part of the sends, not more of them.
NFQ_FIELDS: dict[str, CounterField] = {
    "packets": CounterField("lbd_nfqueue_packets_total", "Packets received from the queue"),
    "batches": CounterField("lbd_nfqueue_batches_total", "Receive batches processed"),
    "verdicts": CounterField("lbd_nfqueue_verdicts_total", "Verdicts sent to the kernel"),
    "xmit_l2": CounterField("lbd_nfqueue_sent_total", "Packets sent by lbd itself, by socket",
                            (("socket", "packet"),)),
    "answers": CounterField("lbd_nfqueue_sent_total", "", (("socket", "raw"),)),
    "xmit_l2_err": CounterField("lbd_nfqueue_send_errors_total", "Sends that failed, by socket",
                                (("socket", "packet"),)),
    "answer_err": CounterField("lbd_nfqueue_send_errors_total", "", (("socket", "raw"),)),
    "timer_frames": CounterField("lbd_nfqueue_timer_sent_total",
                                 "Of lbd_nfqueue_sent_total, the packets timers generated (SYN-proxy "
                                 "retransmissions to real servers, give-up resets)", (("socket", "packet"),)),
    "timer_answers": CounterField("lbd_nfqueue_timer_sent_total", "", (("socket", "raw"),)),
    "recv_err": CounterField("lbd_nfqueue_receive_errors_total",
                             "Receive errors other than EAGAIN (ENOBUFS: the kernel dropped queued packets)"),
    "gso_packets": CounterField("lbd_nfqueue_gso_packets_total", "GSO packets received (lbd --gso)"),
    "gso_segments": CounterField("lbd_nfqueue_gso_segments_total", "Segments GSO packets were cut into"),
    "gso_whole": CounterField("lbd_nfqueue_gso_whole_total", "GSO packets sent on whole (DR)"),
    "gso_errors": CounterField("lbd_nfqueue_gso_errors_total", "GSO packets that could not be cut: dropped"),
    "csum_completed": CounterField("lbd_nfqueue_checksums_completed_total",
                                   "Packets whose partial L4 checksum lbd completed"),
    "kernel_queue_dropped": CounterField("lbd_nfqueue_kernel_dropped_total",
                                         "Packets the kernel dropped for the queue before lbd saw them, by cause "
                                         "(/proc/net/netfilter/nfnetlink_queue): queue_full = lbd --queue-maxlen "
                                         "reached (overload), socket_full = lbd's socket buffer full",
                                         (("cause", "queue_full"),)),
    "kernel_user_dropped": CounterField("lbd_nfqueue_kernel_dropped_total", "", (("cause", "socket_full"),)),
    "frag_packets": CounterField("lbd_nfqueue_fragmented_packets_total",
                                 "Packets larger than their path MTU that lbd sent as IP fragments"),
    "frag_out": CounterField("lbd_nfqueue_fragments_sent_total", "IP fragments those packets were cut into"),
    "own_passed": CounterField("lbd_nfqueue_own_packets_passed_total",
                               "Packets lbd sent itself (its raw socket's mark) that came back to the queue through "
                               "lo: accepted without processing them again"),
    "overload_signals": CounterField("lbd_nfqueue_overload_signals_total",
                                     "Runs of full receive batches (16 in a row) the queue's thread signalled to "
                                     "lbd's overload guard"),
}

# struct lb_synproxy_stats (lb_api.h).
SYNPROXY_FIELDS: dict[str, CounterField] = {
    "cookies_sent": CounterField("lbd_synproxy_cookies_sent_total", "SYN-ACKs with a cookie sent to clients"),
    "cookies_valid": CounterField("lbd_synproxy_cookie_checks_total", "Client ACKs whose cookie was checked, "
                                  "by result", (("result", "valid"),)),
    "cookies_invalid": CounterField("lbd_synproxy_cookie_checks_total", "", (("result", "invalid"),)),
    "syns_to_rs": CounterField("lbd_synproxy_backend_syns_total", "SYNs sent to real servers, by attempt",
                               (("attempt", "first"),)),
    "syn_retransmits": CounterField("lbd_synproxy_backend_syns_total", "", (("attempt", "retransmit"),)),
    "give_ups": CounterField("lbd_synproxy_give_ups_total",
                             "Connections reset after the real server did not answer max_retries SYNs"),
    "handshakes": CounterField("lbd_synproxy_backend_handshakes_total", "Handshakes with real servers completed"),
    "held_dropped": CounterField("lbd_synproxy_held_segments_dropped_total",
                                 "Client segments dropped while the real server's handshake was pending"),
    "rs_resets": CounterField("lbd_synproxy_backend_resets_total",
                              "Real servers that answered lbd's SYN with a RST (passed on to the client)"),
}


# lbd --packet-source afxdp (lb/afxdp.py, docs/afxdp.md): struct lb_xdp_stats, the XDP programs'
# decisions summed over the interfaces, and struct lb_xsk_stats, per AF_XDP socket.
XDP_FIELDS: dict[str, CounterField] = {
    "redirected": CounterField("lbd_afxdp_program_packets_total",
                               "Packets lbd's XDP programs decided, by action: redirected to lbd's AF_XDP sockets; "
                               "passed to the kernel (not lbd's); fragment_passed (IP fragments, left to the "
                               "kernel's reassembly and then lbd's NFQUEUE fallback); no_socket (lbd's, but no "
                               "socket on their receive queue: passed to the kernel)", (("action", "redirected"),)),
    "passed": CounterField("lbd_afxdp_program_packets_total", "", (("action", "passed"),)),
    "fragments_passed": CounterField("lbd_afxdp_program_packets_total", "", (("action", "fragment_passed"),)),
    "no_socket": CounterField("lbd_afxdp_program_packets_total", "", (("action", "no_socket"),)),
    "fastpath": CounterField("lbd_afxdp_program_packets_total", "", (("action", "fastpath"),)),
    "fp_report_lost": CounterField("lbd_afxdp_fastpath_reports_lost_total",
                                   "Activity reports of fast-pathed flows the XDP program could not queue (ring "
                                   "full; their packets are credited later)"),
    "fp_installed": CounterField("lbd_afxdp_fastpath_flows_total", "Established DR flows the XDP fast path took "
                                 "(--xdp-fastpath), by event: installed (or re-installed), removed, refused "
                                 "(no room: lbd forwards them), stale (found without their connection)",
                                 (("event", "installed"),)),
    "fp_removed": CounterField("lbd_afxdp_fastpath_flows_total", "", (("event", "removed"),)),
    "fp_refused": CounterField("lbd_afxdp_fastpath_flows_total", "", (("event", "refused"),)),
    "fp_stale": CounterField("lbd_afxdp_fastpath_flows_total", "", (("event", "stale"),)),
    "fp_credited": CounterField("lbd_afxdp_fastpath_credited_packets_total",
                                "Fast-pathed packets credited to the connections' statistics"),
}
XSK_FIELDS: dict[str, CounterField] = {
    "packets": CounterField("lbd_afxdp_packets_total", "Frames received on the AF_XDP socket"),
    "batches": CounterField("lbd_afxdp_batches_total", "Receive batches processed"),
    "xmit_xsk": CounterField("lbd_afxdp_sent_total", "Packets sent by lbd itself, by socket: xsk (the AF_XDP "
                             "TX ring, no copy), packet (AF_PACKET: another interface), raw (IP packets such as "
                             "ICMP and FULLNAT replies)", (("socket", "xsk"),)),
    "xmit_l2": CounterField("lbd_afxdp_sent_total", "", (("socket", "packet"),)),
    "answers": CounterField("lbd_afxdp_sent_total", "", (("socket", "raw"),)),
    "xmit_l2_err": CounterField("lbd_afxdp_send_errors_total", "Sends that failed, by socket",
                                (("socket", "packet"),)),
    "answer_err": CounterField("lbd_afxdp_send_errors_total", "", (("socket", "raw"),)),
    "passed": CounterField("lbd_afxdp_reinjected_total", "Packets the engine handed back to the kernel (no "
                           "connection, not balanced), re-injected on the raw socket, by result",
                           (("result", "ok"),)),
    "pass_err": CounterField("lbd_afxdp_reinjected_total", "", (("result", "error"),)),
    "timer_frames": CounterField("lbd_afxdp_timer_sent_total", "Packets timers generated (SYN-proxy "
                                 "retransmissions to real servers, give-up resets)"),
    "bad_frames": CounterField("lbd_afxdp_bad_frames_total", "Frames that were not untagged IPv4: dropped"),
    "fill_lost": CounterField("lbd_afxdp_fill_ring_lost_total", "Frames that could not go back to the fill ring"),
    "kernel_rx_dropped": CounterField("lbd_afxdp_kernel_dropped_total", "Frames the kernel dropped for the socket "
                                      "(XDP_STATISTICS), by cause: rx_dropped (e.g. too large), rx_ring_full "
                                      "(lbd did not keep up)", (("cause", "rx_dropped"),)),
    "kernel_rx_ring_full": CounterField("lbd_afxdp_kernel_dropped_total", "", (("cause", "rx_ring_full"),)),
    "kernel_fill_empty": CounterField("lbd_afxdp_fill_ring_empty_total", "Times the kernel found the fill ring "
                                      "empty (no free frame to receive into; XDP_STATISTICS)"),
    "frag_packets": CounterField("lbd_afxdp_fragmented_packets_total",
                                 "Packets larger than their path MTU that lbd sent as IP fragments"),
    "frag_out": CounterField("lbd_afxdp_fragments_sent_total", "IP fragments those packets were cut into"),
    "xmit_l2_calls": CounterField("lbd_afxdp_packet_socket_calls_total", "sendmmsg() calls on the AF_PACKET "
                                  "socket (frames sent there per call: how well they are batched)"),
    "xmit_l2_waits": CounterField("lbd_afxdp_packet_socket_waits_total", "Times the AF_PACKET socket or the "
                                  "device queue was full and the thread waited for room (bounded; frames still "
                                  "refused after it count as send errors)"),
}
XSK_NOT_COUNTERS = ("zerocopy_err",)  # an errno, shown by lbd_afxdp_socket_info


def afxdp_families(counters: Mapping[str, Any]) -> Iterator[Metric]:
    """lbd --packet-source afxdp: the programs' decisions, each socket's counters and mode. Absent
    (no sample) under the NFQUEUE source, as the lbd_nfqueue_* are absent under afxdp without
    its NFQUEUE fallback."""
    afxdp = counters.get("afxdp")
    if not afxdp:
        return
    yield from _field_families(XDP_FIELDS, "lbd_afxdp_program", (), [([], afxdp.get("program", {}))])
    sockets = afxdp.get("sockets", [])
    names = afxdp.get("socket_names") or [{"interface": "", "queue": i} for i in range(len(sockets))]
    rows = [([str(n["interface"]), str(n["queue"])], {k: v for k, v in st.items() if k not in XSK_NOT_COUNTERS})
            for n, st in zip(names, sockets, strict=False)]
    yield from _field_families(XSK_FIELDS, "lbd_afxdp", ("interface", "queue"), rows)
    info = GaugeMetricFamily("lbd_afxdp_socket_info", "An AF_XDP socket of lbd; zerocopy 1: bound in zero-copy "
                             "mode, 0: copy mode; value 1", labels=("interface", "queue", "zerocopy"))
    for n, st in zip(names, sockets, strict=False):
        info.add_metric([str(n["interface"]), str(n["queue"]), "0" if st.get("zerocopy_err") else "1"], 1)
    yield info


# The kernel's reassembly before the queue (lb/reassembly.py): counters, then gauges.
REASSEMBLY_FIELDS: dict[str, CounterField] = {
    "reasm_reqds": CounterField("lbd_ip_reassembly_fragments_total",
                                "Fragments the kernel reassembled before the queue (lbd's namespace)"),
    "reasm_oks": CounterField("lbd_ip_reassembly_datagrams_total", "Datagrams reassembled, or not, by result",
                              (("result", "ok"),)),
    "reasm_fails": CounterField("lbd_ip_reassembly_datagrams_total", "", (("result", "failed"),)),
    "reasm_timeouts": CounterField("lbd_ip_reassembly_failures_total", "Of the failures: incomplete after "
                                   "ipfrag_time, or overlapping fragments (dropped whole)", (("cause", "timeout"),)),
    "reasm_overlaps": CounterField("lbd_ip_reassembly_failures_total", "", (("cause", "overlap"),)),
}
REASSEMBLY_GAUGES: dict[str, tuple[str, str]] = {
    "pending": ("lbd_ip_reassembly_pending", "Datagrams being reassembled now"),
    "memory_bytes": ("lbd_ip_reassembly_memory_bytes", "Memory the pending fragments hold"),
    "high_thresh_bytes": ("lbd_ip_reassembly_memory_limit_bytes",
                          "net.ipv4.ipfrag_high_thresh: fragments beyond it are dropped"),
}


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, read at one moment on the event loop."""

    info: Mapping[str, Any]  # the `ping` answer: version, engine, queue_num, conntrack, down_policy
    listing: Mapping[str, Any]  # the `list` answer (what lbadm -Ln shows)
    counters: Mapping[str, Any]  # the `counters` answer: reasons, nfq_queues, synproxy
    totals: Stats  # IPVS's tot_stats (lb/totals.py)
    queues: Sequence[int]  # NFQUEUE numbers, in the order of counters["nfq_queues"]
    conn_entries: int | None
    conn_limit: int | None
    hash_buckets: int | None
    read_seconds: float
    daemons: Sequence[Mapping[str, Any]] = ()  # the `get_daemon` answer's daemons (lb/sync, docs/sync.md)


def take_snapshot(director: Director, queues: Sequence[int] = ()) -> Snapshot:
    """One batched read of the director (call it on the thread that owns it: lbd's loop)."""
    started = time.perf_counter()
    listing = director.handle("list", {})
    counters = director.handle("counters", {})
    info = director.handle("ping", {})
    live = (Stats(**{f: svc["stats"][f] for f in STAT_FIELDS}) for svc in listing["services"])
    totals = director.totals.total(live)
    engine = director.engine
    return Snapshot(info=info, listing=listing, counters=counters, totals=totals, queues=tuple(queues),
                    conn_entries=engine.conn_count(), conn_limit=engine.conn_max(),
                    hash_buckets=engine.table_size(), read_seconds=time.perf_counter() - started,
                    daemons=director.handle("get_daemon", {})["daemons"])


# ------------------------------------------------------------------ metric families


def _service_labels(svc: Mapping[str, Any]) -> list[str]:
    # /proc/net/ip_vs prints TCP/UDP; local_mark is the fwmark of FWM services only ("" here:
    # lbd has no fwmark services).
    return [str(svc["addr"]), str(svc["port"]), str(svc["proto"]).upper(), ""]


def _backend_labels(svc: Mapping[str, Any], dest: Mapping[str, Any]) -> list[str]:
    local_address, local_port, proto, local_mark = _service_labels(svc)
    return [local_address, local_port, str(dest["addr"]), str(dest["port"]), proto, local_mark]


def ipvs_families(snap: Snapshot) -> Iterator[Metric]:
    """node_exporter's IPVS collector: the totals, and three gauges per (service, real server)."""
    for field, (name, _, help_text) in _STAT_METRICS.items():
        family = CounterMetricFamily(name, f"{help_text}, over every virtual service (IPVS totals)")
        family.add_metric([], getattr(snap.totals, field))
        yield family
    # node_exporter sums backends whose label values coincide (it can be told to drop labels);
    # with the full label set each (service, real server) is one series, summed the same way.
    sums: dict[tuple[str, ...], list[int]] = {}
    for svc in snap.listing["services"]:
        for dest in svc["dests"]:
            row = sums.setdefault(tuple(_backend_labels(svc, dest)), [0, 0, 0])
            row[0] += int(dest["active"])
            row[1] += int(dest["inactive"])
            row[2] += int(dest["weight"])
    gauges = [
        GaugeMetricFamily("node_ipvs_backend_connections_active",
                          "Connections in state ESTABLISHED (TCP), per virtual service and real server",
                          labels=IPVS_BACKEND_LABELS),
        GaugeMetricFamily("node_ipvs_backend_connections_inactive",
                          "Connections in any other state (and UDP), per virtual service and real server",
                          labels=IPVS_BACKEND_LABELS),
        GaugeMetricFamily("node_ipvs_backend_weight", "Weight of the real server in the virtual service",
                          labels=IPVS_BACKEND_LABELS),
    ]
    for labels, values in sums.items():
        for gauge, value in zip(gauges, values, strict=True):
            gauge.add_metric(list(labels), value)
    yield from gauges


def service_families(snap: Snapshot) -> Iterator[Metric]:
    """lbd's per-service and per-real-server counters and state, with node_exporter's label names."""
    services = snap.listing["services"]
    for field, (_, suffix, help_text) in _STAT_METRICS.items():
        per_service = CounterMetricFamily(f"lbd_service_{suffix}", f"{help_text}, per virtual service "
                                          "(since it was added or zeroed: lbadm -Ln --stats)",
                                          labels=IPVS_SERVICE_LABELS)
        per_backend = CounterMetricFamily(f"lbd_backend_{suffix}", f"{help_text}, per virtual service and "
                                          "real server (lbadm -Ln --stats)", labels=IPVS_BACKEND_LABELS)
        for svc in services:
            per_service.add_metric(_service_labels(svc), svc["stats"][field])
            for dest in svc["dests"]:
                per_backend.add_metric(_backend_labels(svc, dest), dest["stats"][field])
        yield per_service
        yield per_backend

    info = GaugeMetricFamily("lbd_service_info", "Virtual service configuration; value 1",
                             labels=(*IPVS_SERVICE_LABELS, "scheduler"))
    backend_info = GaugeMetricFamily("lbd_backend_info", "Real server configuration; value 1",
                                     labels=(*IPVS_BACKEND_LABELS, "forward"))
    persistent = GaugeMetricFamily("lbd_backend_connections_persistent",
                                   "Persistence templates pointing at the real server", labels=IPVS_BACKEND_LABELS)
    resolved = GaugeMetricFamily("lbd_backend_forwarding_resolved",
                                 "1 when lbd has the real server's forwarding state (route, MAC); 0: its packets "
                                 "are dropped with reason no_l2", labels=IPVS_BACKEND_LABELS)
    syn_retrans = CounterMetricFamily("lbd_backend_syn_retransmits_total",
                                      "Client SYNs repeated on connections already sent to the real server",
                                      labels=IPVS_BACKEND_LABELS)
    handshakes = CounterMetricFamily("lbd_backend_handshakes_total",
                                     "Connections to the real server whose handshake completed (client ACK seen)",
                                     labels=IPVS_BACKEND_LABELS)
    stalled = GaugeMetricFamily("lbd_backend_handshakes_stalled",
                                "1 while handshakes to the real server stall (lbadm doctor explains)",
                                labels=IPVS_BACKEND_LABELS)
    laddr = GaugeMetricFamily("lbd_fullnat_local_address_connections",
                              "Connections using a FULLNAT local address of the virtual service",
                              labels=(*IPVS_SERVICE_LABELS, "fullnat_address"))
    for svc in services:
        labels = _service_labels(svc)
        info.add_metric([*labels, str(svc["sched"])], 1)
        for la in svc.get("laddrs") or ():
            laddr.add_metric([*labels, str(la["addr"])], la["conns"])
        for dest in svc["dests"]:
            blabels = _backend_labels(svc, dest)
            backend_info.add_metric([*blabels, str(dest["fwd"])], 1)
            persistent.add_metric(blabels, dest.get("persist", 0))
            resolved.add_metric(blabels, 1 if dest.get("l2", {}).get("state") == "resolved" else 0)
            syn_retrans.add_metric(blabels, dest.get("syn_retrans", 0))
            handshakes.add_metric(blabels, dest.get("handshakes", 0))
            stalled.add_metric(blabels, 1 if dest.get("stalled") else 0)
    yield from (info, backend_info, persistent, resolved, syn_retrans, handshakes, stalled)
    if laddr.samples:  # FULLNAT services only
        yield laddr


def _field_families(table: Mapping[str, CounterField], fallback: str, label_names: Sequence[str],
                    rows: Iterable[tuple[Sequence[str], Mapping[str, int]]]) -> Iterator[Metric]:
    """Counters from stats structs: one family per name, fixed labels after `label_names`.

    A field not in `table` (added to the C struct later) still shows, as `fallback_<field>_total`.
    """
    families: dict[str, CounterMetricFamily] = {}
    for values, stats in rows:
        for field, value in stats.items():
            spec = table.get(field) or CounterField(f"{fallback}_{field}_total", f"{field} (lb_api.h)")
            family = families.get(spec.name)
            if family is None:
                help_text = spec.help or next(f.help for f in table.values() if f.name == spec.name and f.help)
                family = families[spec.name] = CounterMetricFamily(
                    spec.name, help_text, labels=(*label_names, *(k for k, _ in spec.labels)))
            family.add_metric([*values, *(v for _, v in spec.labels)], value)
    yield from families.values()


def lbd_families(snap: Snapshot) -> Iterator[Metric]:
    """lbd's own: identity, packet reasons, the NFQUEUE adapter, SYN-proxy, the connection table."""
    build = GaugeMetricFamily("lbd_build_info", "lbd's version; value 1", labels=("version",))
    build.add_metric([__version__], 1)
    yield build
    info = snap.info
    instance = GaugeMetricFamily("lbd_instance_info", "This lbd's engine, first NFQUEUE, --down-policy, "
                                 "--conntrack and --packet-source; value 1",
                                 labels=("engine", "queue", "down_policy", "conntrack", "packet_source"))
    queue = info.get("queue_num")
    instance.add_metric([str(info.get("engine")), "" if queue is None else str(queue), str(info.get("down_policy")),
                         "1" if info.get("conntrack") else "0", str(info.get("packet_source") or "nfqueue")], 1)
    yield instance

    reasons = CounterMetricFamily("lbd_packets_total", "Packets the engine handled, by the one reason each was "
                                  "counted under (forwarded, drops, passes: docs/metrics.md)", labels=("reason",))
    for reason, value in snap.counters.get("reasons", {}).items():
        reasons.add_metric([reason], value)
    yield reasons

    per_queue = snap.counters.get("nfq_queues")
    if per_queue is None and snap.counters.get("nfq"):
        per_queue = [snap.counters["nfq"]]
    per_queue = per_queue or []
    names = [str(q) for q in snap.queues] if len(snap.queues) == len(per_queue) else \
        [str(i) for i in range(len(per_queue))]
    yield from _field_families(NFQ_FIELDS, "lbd_nfqueue", ("queue",), zip(([n] for n in names), per_queue, strict=True))
    yield from afxdp_families(snap.counters)
    synproxy = snap.counters.get("synproxy")
    if synproxy is not None:
        yield from _field_families(SYNPROXY_FIELDS, "lbd_synproxy", (), [([], synproxy)])

    table = {
        "lbd_connection_table_entries": (
            "Entries in the connection table (connections and persistence templates)", snap.conn_entries),
        "lbd_connection_table_entries_limit": (
            "Size of the connection table (lbd --conn-max): new connections beyond it are refused",
            snap.conn_limit),
        "lbd_connection_table_buckets": (
            "Hash buckets of the connection table (ipvsadm's size=)", snap.hash_buckets),
    }
    for name, (help_text, value) in table.items():
        if value is not None:
            yield GaugeMetricFamily(name, help_text, value=value)
    reasm = snap.counters.get("reassembly")
    if reasm is not None:
        yield from _field_families(REASSEMBLY_FIELDS, "lbd_ip_reassembly", (),
                                   [([], {k: v for k, v in reasm.items() if k in REASSEMBLY_FIELDS})])
        for key, (name, help_text) in REASSEMBLY_GAUGES.items():
            yield GaugeMetricFamily(name, help_text, value=reasm.get(key, 0))
    early_drops = (snap.counters.get("table") or {}).get("early_drops")
    if early_drops is not None:
        yield CounterMetricFamily("lbd_connection_table_early_drops", "Half-open or finished TCP entries released "
                                  "to make room in a full table (early drop, docs/fastpath.md)", value=early_drops)
    guard = snap.counters.get("overload")
    if guard is not None:
        yield CounterMetricFamily("lbd_overload_guard_dropped", "Packets the overload guard dropped before the queue "
                                  "(lbd --overload-guard): the excess while the kernel dropped at lbd's full queue",
                                  value=guard.get("dropped", 0))
        yield GaugeMetricFamily("lbd_overload_guard_rate_pps", "The overload guard's rate while it is armed, packets "
                                "per second to lbd's queue (0: not armed)", value=guard.get("rate_pps", 0))
    napi = snap.counters.get("napi")
    if napi is not None:
        nics = CounterMetricFamily("lbd_interface_rx_dropped", "What an interface of lbd --overload-napi dropped "
                                   "since lbd started, by its counter (rx_dropped, rx_missed, rx_fifo): the excess "
                                   "of an overload, dropped at the ring", labels=["interface", "counter"])
        for nic in napi:
            for key in ("rx_dropped", "rx_missed", "rx_fifo"):
                nics.add_metric([str(nic["interface"]), key], nic.get(key, 0))
        yield nics
    yield GaugeMetricFamily("lbd_metrics_read_duration_seconds", "Time this scrape's read of the director "
                            "took on lbd's event loop", value=snap.read_seconds)


def sync_families(snap: Snapshot) -> Iterator[Metric]:
    """The connection sync daemons (docs/sync.md): which run, and their counters by name (what was
    sent, installed, and dropped by reason)."""
    info = GaugeMetricFamily("lbd_sync_daemon_info", "A running sync daemon (lbadm --start-daemon); value 1",
                             labels=("state", "mcast_ifn", "syncid"))
    events = CounterMetricFamily("lbd_sync_events", "Sync daemon counters by name: datagrams and records sent "
                                 "and received, records installed or updated, dropped_<reason> (docs/sync.md)",
                                 labels=("state", "counter"))
    for daemon in snap.daemons:
        state = str(daemon.get("state"))
        info.add_metric([state, str(daemon.get("mcast_ifn")), str(daemon.get("syncid"))], 1)
        for name, value in sorted((daemon.get("counters") or {}).items()):
            events.add_metric([state, str(name)], value)
    yield info
    yield events


def _families(snap: Snapshot) -> Iterator[Metric]:
    yield from ipvs_families(snap)
    yield from service_families(snap)
    yield from lbd_families(snap)
    yield from sync_families(snap)


def _one_of_everything() -> Snapshot:
    """A snapshot in which every family has a sample: what `describe` shows the registry."""
    zero = {f: 0 for f in STAT_FIELDS}
    dest = {"addr": "0.0.0.0", "port": 0, "fwd": "", "weight": 0, "active": 0, "inactive": 0, "stats": zero}
    svc = {"addr": "0.0.0.0", "port": 0, "proto": "tcp", "sched": "", "stats": zero, "dests": [dest],
           "laddrs": [{"addr": "0.0.0.0", "conns": 0}]}
    counters = {"reasons": {}, "nfq_queues": [dict.fromkeys(NFQ_FIELDS, 0)],
                "synproxy": dict.fromkeys(SYNPROXY_FIELDS, 0), "table": {"early_drops": 0},
                "overload": {"dropped": 0, "rate_pps": 0},
                "napi": [{"interface": "", "threads": 0, "rx_dropped": 0, "rx_missed": 0, "rx_fifo": 0}],
                "reassembly": dict.fromkeys([*REASSEMBLY_FIELDS, *REASSEMBLY_GAUGES], 0),
                "afxdp": {"program": dict.fromkeys(XDP_FIELDS, 0), "sockets": [dict.fromkeys(XSK_FIELDS, 0)],
                          "socket_names": [{"interface": "", "queue": 0}]}}
    return Snapshot(info={}, listing={"services": [svc]}, counters=counters, totals=Stats(), queues=(0,),
                    conn_entries=0, conn_limit=0, hash_buckets=0, read_seconds=0.0,
                    daemons=[{"state": "backup", "mcast_ifn": "", "syncid": 0, "counters": {"datagrams_received": 0}}])


class DirectorCollector(Collector):
    """All of lbd's metrics from one snapshot per scrape."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self.read = read

    def describe(self) -> Iterator[Metric]:
        # The registry learns the names from this at registration (its ?name[]= filter needs them)
        # without reading the director: the event loop that owns it may be the caller.
        yield from _families(_one_of_everything())

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.read())


# ------------------------------------------------------------------ serving


class LoopReader:
    """Takes snapshots on the event loop for threads that are not the loop's (HTTP handlers)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, take: Callable[[], Snapshot],
                 timeout_s: float = SNAPSHOT_TIMEOUT_S) -> None:
        self.loop = loop
        self.take = take
        self.timeout_s = timeout_s

    def __call__(self) -> Snapshot:
        future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def on_loop() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the scrape gave up waiting
            try:
                future.set_result(self.take())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(on_loop)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("metrics: the event loop did not answer a scrape within %.0f s", self.timeout_s)
            raise


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT, [IPv6]:PORT or :PORT (every IPv4 address) -> (address, port). ValueError if not."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r}: expected ADDR:PORT (e.g. 127.0.0.1:9170, :9170, [::1]:9170)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} out of range 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, port


class MetricsServer:
    """The HTTP endpoint: prometheus_client's threaded WSGI server on a registry of our own."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(DirectorCollector(read))
        ProcessCollector(registry=self.registry)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, addr: str, port: int) -> tuple[str, int]:
        """Listen (OSError with the address if it cannot); returns the address bound."""
        try:
            self._httpd, self._thread = start_http_server(port, addr, registry=self.registry)
        except OSError as exc:
            raise OSError(f"metrics: cannot listen on {addr}:{port}: {exc.strerror or exc}") from exc
        bound = self._httpd.server_address
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def start_metrics(listen: tuple[str, int], director: Director, loop: asyncio.AbstractEventLoop,
                  queues: Sequence[int] = ()) -> MetricsServer:
    """lbd --metrics: serve `director` on `listen`, reading it on `loop`."""
    server = MetricsServer(LoopReader(loop, lambda: take_snapshot(director, queues)))
    addr, port = server.start(*listen)
    log.info("metrics: Prometheus text on http://%s/metrics (node_exporter's node_ipvs_* and lbd_*)",
             f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}")
    return server
