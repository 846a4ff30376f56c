"""lbd --metrics: the collectors against engines with known tables, and the HTTP endpoint.

The node_ipvs_* families must be node_exporter's (collector/ipvs_linux.go): the same names,
types and label names, local_mark "" for services that are not fwmark services, and the totals
with the kernel's tot_stats semantics (deleting or zeroing one service takes nothing away;
zeroing everything restarts them). lbd_* covers every packet reason, every field of the
adapter's and SYN-proxy's stats structs, and the connection table. The values are checked
against what was sent (DR: 40-byte SYNs) and against `list`, the answer `lbadm -Ln --stats`
prints.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.all import IP, TCP, raw

from lb.director import BatchError, Director
from lb.engine import FwdState, Reason
from lb.fwdstate import Resolution
from lb.metrics import (
    IPVS_BACKEND_LABELS,
    NFQ_FIELDS,
    SYNPROXY_FIELDS,
    DirectorCollector,
    LoopReader,
    MetricsServer,
    Snapshot,
    parse_listen,
    take_snapshot,
)
from lb.testbed import tools
from refusing_engine import REFUSED_RIP, refusing

VIP = "10.0.0.100"
LADDR = "10.0.1.2"
RS = ("10.0.0.11", "10.0.0.12")
CLIENT = "192.0.2.1"
SYN_BYTES = 40  # IPv4 + TCP headers, no options: what one SYN adds to inbytes
DR_SVC = {"proto": "tcp", "addr": VIP, "port": 80}
FNAT_SVC = {"proto": "tcp", "addr": VIP, "port": 8080}

# node_exporter's ipvs collector, checked against its source (collector/ipvs_linux.go).
NODE_IPVS_COUNTERS = ("node_ipvs_connections", "node_ipvs_incoming_packets", "node_ipvs_outgoing_packets",
                      "node_ipvs_incoming_bytes", "node_ipvs_outgoing_bytes")
NODE_IPVS_GAUGES = ("node_ipvs_backend_connections_active", "node_ipvs_backend_connections_inactive",
                    "node_ipvs_backend_weight")
NODE_BACKEND_LABELS = {"local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark"}


def make_engine(kind: str) -> Any:
    if kind == "python":
        from lb.pyengine import PyEngine

        return PyEngine(conn_max=64, hash_buckets=256)
    from lb.fastpath import CEngine

    return CEngine(conn_max=64, hash_buckets=256)


def resolver(addr: str) -> Resolution:
    return Resolution(FwdState(ifindex=2, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6, saddr=LADDR), ifname="eth0")


def dest(addr: str, port: int, fwd: str, weight: int) -> dict[str, Any]:
    return {"addr": addr, "port": port, "fwd": fwd, "weight": weight, "u_threshold": 0, "l_threshold": 0}


@pytest.fixture(params=["python", "c"])
def director(request: pytest.FixtureRequest) -> Director:
    """A DR service (two real servers, weights 3 and 5) and a FULLNAT service with a local address."""
    d = Director(make_engine(request.param), rules=None, resolver=resolver, queue_num=7)
    d.handle("add_service", {**DR_SVC, "sched": "rr"})
    for rs, weight in zip(RS, (3, 5), strict=True):
        d.handle("add_dest", {"service": DR_SVC, "dest": dest(rs, 80, "route", weight)})
    d.handle("add_service", {**FNAT_SVC, "sched": "rr"})
    d.handle("add_laddr", {"service": FNAT_SVC, "addr": LADDR})
    d.handle("add_dest", {"service": FNAT_SVC, "dest": dest(RS[0], 80, "fullnat", 1)})
    return d


def syn(sport: int, dport: int = 80) -> bytes:
    return raw(IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=dport, flags="S"))


def drive(d: Director, dr_syns: int) -> None:
    """`dr_syns` SYNs to the DR service (rr: alternating real servers), then one FULLNAT SYN and
    the real server's SYN-ACK back through the director (an outgoing packet)."""
    engine = d.engine
    for i in range(dr_syns):
        assert engine.process(syn(1000 + i), 1000).reason == Reason.FORWARDED
    assert engine.process(syn(2000, 8080), 1000).reason == Reason.FORWARDED
    [conn] = [c for c in engine.connections(1000) if c.vport == 8080]
    reply = raw(IP(src=RS[0], dst=conn.laddr) / TCP(sport=80, dport=conn.lport, flags="SA"))
    assert engine.process(reply, 1001).verdict.name != "DROP"


def scrape(d: Director, queues: tuple[int, ...] = (7,)) -> tuple[str, dict[str, Any]]:
    """(exposition text, {family name: family}) of one collection."""
    registry = CollectorRegistry()
    registry.register(DirectorCollector(lambda: take_snapshot(d, queues)))
    text = generate_latest(registry).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: Any) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def backend(local_port: int, remote: str) -> tuple[tuple[str, str], ...]:
    return labels(local_address=VIP, local_port=str(local_port), remote_address=remote, remote_port="80",
                  proto="TCP", local_mark="")


# ------------------------------------------------------------------ node_exporter's families


def test_node_ipvs_names_types_and_labels_are_node_exporters(director: Director) -> None:
    drive(director, 4)
    _, families = scrape(director)
    for name in NODE_IPVS_COUNTERS:
        family = families[name]
        assert family.type == "counter"
        assert [s.name for s in family.samples] == [f"{name}_total"]
        assert family.samples[0].labels == {}  # /proc/net/ip_vs_stats: one total, no labels
    assert set(IPVS_BACKEND_LABELS) == NODE_BACKEND_LABELS
    for name in NODE_IPVS_GAUGES:
        family = families[name]
        assert family.type == "gauge"
        assert len(family.samples) == 3  # (DR, rs1), (DR, rs2), (FULLNAT, rs1)
        assert all(set(s.labels) == NODE_BACKEND_LABELS for s in family.samples)
    assert not [n for n in families if n.startswith("node_") and n not in (*NODE_IPVS_COUNTERS, *NODE_IPVS_GAUGES)]


def test_node_ipvs_values(director: Director) -> None:
    drive(director, 4)  # rr: 2 SYNs to each DR real server
    _, families = scrape(director)
    listing = director.handle("list", {})
    totals = {f: sum(s["stats"][f] for s in listing["services"])
              for f in ("conns", "inpkts", "outpkts", "inbytes", "outbytes")}
    assert totals["conns"] == 5 and totals["outpkts"] == 1  # the oracle: what drive() sent
    assert families["node_ipvs_connections"].samples[0].value == totals["conns"]
    assert families["node_ipvs_incoming_packets"].samples[0].value == totals["inpkts"] == 5
    assert families["node_ipvs_outgoing_packets"].samples[0].value == 1
    assert families["node_ipvs_incoming_bytes"].samples[0].value == totals["inbytes"]
    assert families["node_ipvs_outgoing_bytes"].samples[0].value == totals["outbytes"] > 0
    # SYNs leave a connection in SYN_RECV: active, as kernel 6.1 counts it (tcp_state_active_table).
    assert samples(families["node_ipvs_backend_connections_active"]) == {
        backend(80, RS[0]): 2, backend(80, RS[1]): 2, backend(8080, RS[0]): 1}
    assert samples(families["node_ipvs_backend_connections_inactive"]) == {
        backend(80, RS[0]): 0, backend(80, RS[1]): 0, backend(8080, RS[0]): 0}
    assert samples(families["node_ipvs_backend_weight"]) == {
        backend(80, RS[0]): 3, backend(80, RS[1]): 5, backend(8080, RS[0]): 1}


def node_totals(d: Director) -> dict[str, float]:
    _, families = scrape(d)
    return {name: families[name].samples[0].value for name in NODE_IPVS_COUNTERS}


def test_totals_survive_deleting_and_zeroing_one_service_and_restart_on_zero_all(director: Director) -> None:
    drive(director, 4)
    before = node_totals(director)
    assert before["node_ipvs_connections"] == 5
    director.handle("zero", {"service": FNAT_SVC})
    assert node_totals(director) == before  # ipvsadm -Z -t: the kernel's tot_stats keep counting
    director.handle("del_service", DR_SVC)
    assert node_totals(director) == before  # ipvsadm -D: nothing taken away
    assert director.engine.process(syn(3000, 8080), 2000).reason == Reason.FORWARDED
    after = node_totals(director)
    assert after["node_ipvs_connections"] == 6
    assert after["node_ipvs_incoming_bytes"] == before["node_ipvs_incoming_bytes"] + SYN_BYTES
    director.handle("clear", {})
    assert node_totals(director) == after  # ipvsadm -C: flushing keeps them too
    director.handle("zero", {})
    assert set(node_totals(director).values()) == {0}  # ipvsadm -Z: the kernel zeroes tot_stats


def test_a_batch_rolled_back_after_a_delete_changes_no_total(director: Director) -> None:
    drive(director, 2)
    before = node_totals(director)
    # The engine (not the model: the test's engine refuses REFUSED_RIP) refuses the third request,
    # after the delete went through: the rollback re-creates the service with fresh counters.
    refusing(director.engine)
    ops_svc = {"proto": "udp", "addr": VIP, "port": 53}
    bad = [{"op": "del_service", "args": DR_SVC},
           {"op": "add_service", "args": {**ops_svc, "sched": "rr", "ops": True}},
           {"op": "add_dest", "args": {"service": ops_svc, "dest": dest(REFUSED_RIP, 53, "masq", 1)}}]
    with pytest.raises(BatchError):
        director.handle("batch", {"requests": bad})
    assert sorted(s["port"] for s in director.handle("list", {})["services"]) == [80, 8080]
    assert node_totals(director) == before


# ------------------------------------------------------------------ lbd's own families


def test_per_service_and_backend_counters_are_lbadm_stats(director: Director) -> None:
    drive(director, 4)
    _, families = scrape(director)
    listing = director.handle("list", {})
    for field, suffix in (("conns", "connections"), ("inpkts", "incoming_packets"),
                          ("outpkts", "outgoing_packets"), ("inbytes", "incoming_bytes"),
                          ("outbytes", "outgoing_bytes")):
        svc_family, dest_family = families[f"lbd_service_{suffix}"], families[f"lbd_backend_{suffix}"]
        assert svc_family.type == dest_family.type == "counter"
        want_svc, want_dest = {}, {}
        for s in listing["services"]:
            want_svc[labels(local_address=VIP, local_port=str(s["port"]), proto="TCP", local_mark="")] = \
                s["stats"][field]
            for d in s["dests"]:
                want_dest[backend(s["port"], d["addr"])] = d["stats"][field]
        assert samples(svc_family) == want_svc, field
        assert samples(dest_family) == want_dest, field
    assert samples(families["lbd_backend_incoming_bytes"])[backend(80, RS[0])] == 2 * SYN_BYTES
    info = {dict(k)["remote_address"] + ":" + dict(k)["local_port"]: dict(k)["forward"]
            for k in samples(families["lbd_backend_info"])}
    assert info == {f"{RS[0]}:80": "route", f"{RS[1]}:80": "route", f"{RS[0]}:8080": "fullnat"}
    assert set(samples(families["lbd_backend_forwarding_resolved"]).values()) == {1}
    laddr = samples(families["lbd_fullnat_local_address_connections"])
    assert laddr == {labels(local_address=VIP, local_port="8080", proto="TCP", local_mark="",
                            fullnat_address=LADDR): 1}


def test_every_reason_and_the_table_fill(director: Director) -> None:
    drive(director, 4)
    assert director.engine.process(raw(IP(src=CLIENT, dst="10.9.9.9") / TCP(dport=80)), 1000).reason \
        == Reason.NO_SERVICE
    _, families = scrape(director)
    reasons = samples(families["lbd_packets"])
    assert {dict(k)["reason"] for k in reasons} == {r.name.lower() for r in Reason}
    assert reasons[labels(reason="forwarded")] == 6  # 5 SYNs and the FULLNAT reply
    assert reasons[labels(reason="no_service")] == 1
    assert families["lbd_connection_table_entries"].samples[0].value == 5
    assert families["lbd_connection_table_entries_limit"].samples[0].value == 64
    assert families["lbd_connection_table_buckets"].samples[0].value == 256
    assert samples(families["lbd_build_info"]) == {labels(version=__import__("lb").__version__): 1}
    [instance] = families["lbd_instance_info"].samples
    assert instance.labels["engine"] == director.engine.name and instance.labels["queue"] == "7"


def test_every_adapter_and_synproxy_field_has_a_name() -> None:
    """Fields of the C structs (and the Python adapter's mirror) all map to a documented name."""
    from lb._ffi import ffi
    from lb.pyengine.nfq import NfqStats

    nfq = [name for name, _ in ffi.typeof("struct lb_nfq_stats").fields]
    assert set(nfq) == set(NFQ_FIELDS) == set(NfqStats().__dict__)
    synproxy = [name for name, _ in ffi.typeof("struct lb_synproxy_stats").fields]
    assert set(synproxy) == set(SYNPROXY_FIELDS)
    assert all(f.name.endswith("_total") for f in (*NFQ_FIELDS.values(), *SYNPROXY_FIELDS.values()))


def fake_snapshot(counters: dict[str, Any], queues: tuple[int, ...]) -> Snapshot:
    from lb.model import Stats

    return Snapshot(info={"engine": "c", "queue_num": queues[0]}, listing={"services": []}, counters=counters,
                    totals=Stats(), queues=queues, conn_entries=0, conn_limit=1, hash_buckets=1, read_seconds=0.0)


def test_adapter_counters_per_queue_with_labels() -> None:
    from lb.pyengine.nfq import NfqStats

    q3 = {**NfqStats().__dict__, "packets": 10, "xmit_l2": 7, "timer_frames": 2, "answers": 1, "answer_err": 4}
    q4 = {**NfqStats().__dict__, "packets": 5, "recv_err": 1, "future_field": 9}
    sp = {name: i for i, name in enumerate(SYNPROXY_FIELDS, start=1)}
    snap = fake_snapshot({"reasons": {}, "nfq_queues": [q3, q4], "synproxy": sp}, (3, 4))
    registry = CollectorRegistry()
    registry.register(DirectorCollector(lambda: snap))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert samples(families["lbd_nfqueue_packets"]) == {labels(queue="3"): 10, labels(queue="4"): 5}
    assert samples(families["lbd_nfqueue_sent"]) == {
        labels(queue="3", socket="packet"): 7, labels(queue="3", socket="raw"): 1,
        labels(queue="4", socket="packet"): 0, labels(queue="4", socket="raw"): 0}
    assert samples(families["lbd_nfqueue_timer_sent"])[labels(queue="3", socket="packet")] == 2
    assert samples(families["lbd_nfqueue_send_errors"])[labels(queue="3", socket="raw")] == 4
    assert samples(families["lbd_nfqueue_receive_errors"])[labels(queue="4")] == 1
    # A field the C struct gains later is not lost: it shows under a generic name until named.
    assert samples(families["lbd_nfqueue_future_field"]) == {labels(queue="4"): 9}
    assert samples(families["lbd_synproxy_cookie_checks"]) == {labels(result="valid"): 2,
                                                                labels(result="invalid"): 3}
    assert samples(families["lbd_synproxy_backend_syns"]) == {labels(attempt="first"): 4,
                                                               labels(attempt="retransmit"): 5}


def test_promtool_accepts_the_exposition(director: Director) -> None:
    promtool = tools.promtool()
    if promtool is None:
        pytest.skip("promtool not found on PATH nor in build/tools "
                    "(`make test-unit` unpacks it from Debian's prometheus package)")
    drive(director, 4)
    text, _ = scrape(director)
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc


# ------------------------------------------------------------------ serving


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:9170", ("127.0.0.1", 9170)),
    (":9170", ("0.0.0.0", 9170)),
    ("[::1]:9170", ("::1", 9170)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9170", "localhost:9170", "127.0.0.1:", "127.0.0.1:70000", "1.2.3.4:x"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="ADDR:PORT|out of range|not an IP address"):
        parse_listen(text)


def test_lbd_refuses_a_bad_metrics_address(capsys: pytest.CaptureFixture[str]) -> None:
    from lb.daemon import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--metrics", "localhost:9170"])
    assert exc.value.code == 2
    assert "--metrics" in capsys.readouterr().err
    assert parse_args(["--metrics", "127.0.0.1:9170"]).metrics == ("127.0.0.1", 9170)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_http_scrape_reads_the_director_on_the_event_loop(director: Director) -> None:
    """The HTTP thread never reads the director itself: the snapshot is taken on the loop's thread."""
    drive(director, 2)
    readers: list[int] = []

    def take() -> Snapshot:
        readers.append(threading.get_ident())
        return take_snapshot(director, (7,))

    async def main() -> tuple[int, str, int]:
        server = MetricsServer(LoopReader(asyncio.get_running_loop(), take))
        addr, port = server.start("127.0.0.1", 0)
        try:
            status, body = await asyncio.get_running_loop().run_in_executor(None, _get, f"http://{addr}:{port}/metrics")
        finally:
            server.stop()
        return status, body, threading.get_ident()

    status, body, loop_thread = asyncio.run(main())
    assert status == 200, body
    assert readers == [loop_thread]
    assert "node_ipvs_connections_total 3.0" in body.splitlines()
    assert "process_resident_memory_bytes" in body


def test_name_filter_of_the_endpoint(director: Director) -> None:
    """prometheus_client's ?name[]= filter: the registry knows every family name without a read."""
    drive(director, 1)

    async def main() -> tuple[int, str]:
        server = MetricsServer(LoopReader(asyncio.get_running_loop(), lambda: take_snapshot(director, (7,))))
        addr, port = server.start("127.0.0.1", 0)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, _get, f"http://{addr}:{port}/metrics?name[]=node_ipvs_connections_total"
                "&name[]=lbd_fullnat_local_address_connections")
        finally:
            server.stop()

    status, body = asyncio.run(main())
    assert status == 200, body
    families = {f.name for f in text_string_to_metric_families(body)}
    assert families == {"node_ipvs_connections", "lbd_fullnat_local_address_connections"}


def test_a_scrape_the_loop_cannot_serve_fails_instead_of_showing_stale_numbers() -> None:
    loop = asyncio.new_event_loop()  # never run: nothing answers the reader
    try:
        server = MetricsServer(LoopReader(loop, lambda: pytest.fail("the loop is not running"), timeout_s=0.2))
        addr, port = server.start("127.0.0.1", 0)
        try:
            status, _ = _get(f"http://{addr}:{port}/metrics")
        finally:
            server.stop()
    finally:
        loop.close()
    assert status == 500


def test_a_port_in_use_is_an_error_naming_the_address() -> None:
    first = MetricsServer(lambda: pytest.fail("not scraped"))
    _, port = first.start("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
            MetricsServer(lambda: pytest.fail("not scraped")).start("127.0.0.1", port)
    finally:
        first.stop()
