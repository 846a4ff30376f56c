"""lbd --metrics on a live director: DR traffic, then a scrape from inside the director namespace.

The exposition must pass `promtool check metrics` (Debian's prometheus package), and, once the
traffic has stopped, say what lbadm says at the same moment: node_exporter's node_ipvs_* and
lbd's per service / real server counters against `lbadm -Ln --stats --exact`, the backend
gauges against `lbadm -Ln`, the connection table against `lbadm -Lnc`, the packet reasons and
the adapter's counters against lbd's `counters` answer. "The same moment" is a sandwich: lbadm,
scrape, lbadm again, accepted only when both lbadm reads agree (bounded retries).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from conftest import HTTP_PORT, parse_ln, running_lbd
from packet_source import AFXDP
from prometheus_client.parser import text_string_to_metric_families

from lb.testbed import tools
from lb.testbed.topology import Topology

if TYPE_CHECKING:
    from conftest import HttpHelper, Lbd

METRICS_ADDR = "127.0.0.1:9170"  # the director namespace's own loopback
REQUESTS = 12
STABLE_TRIES = 20  # sandwiches tried before giving up (traffic must have stopped)
SCRAPE_TIMEOUT_S = 20.0

STAT_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
SUFFIXES = ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes")

# Runs inside the director namespace: GET the endpoint, print the body (exit 1 on HTTP errors).
SCRAPER = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:\n"
    "    sys.stdout.write(r.read().decode())\n"
)


@pytest.fixture
def metrics_lbd(topo: Topology, engine: str) -> Any:
    with running_lbd(topo, engine, args=["--metrics", METRICS_ADDR]) as d:
        yield d


def scrape(lbd: Lbd) -> str:
    proc = lbd.director.exec([sys.executable, "-c", SCRAPER, f"http://{METRICS_ADDR}/metrics",
                              str(SCRAPE_TIMEOUT_S)], check=False, timeout=SCRAPE_TIMEOUT_S + 10)
    assert proc.returncode == 0, f"scrape failed: {proc.stderr}\nlbd log:\n{lbd.log_tail()}"
    return proc.stdout


def parse_stats(text: str) -> dict[tuple[str, ...], dict[str, int]]:
    """`lbadm -Ln --stats --exact`: {("TCP", vip, port): stats, ("TCP", vip, port, rip, rport): stats}."""
    lines = text.splitlines()
    assert lines[1].split() == ["Prot", "LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"]
    assert lines[2].strip() == "-> RemoteAddress:Port"
    out: dict[tuple[str, ...], dict[str, int]] = {}
    service: tuple[str, ...] = ()
    for line in lines[3:]:
        fields = line.split()
        if fields[0] == "->":
            addr, port = fields[1].rsplit(":", 1)
            out[(*service, addr, port)] = dict(zip(STAT_FIELDS, map(int, fields[2:]), strict=True))
        else:
            addr, port = fields[1].rsplit(":", 1)
            service = (fields[0], addr, port)
            out[service] = dict(zip(STAT_FIELDS, map(int, fields[2:]), strict=True))
    return out


def lbadm_state(lbd: Lbd) -> dict[str, Any]:
    counters = lbd.ok("counters")
    return {
        "stats": parse_stats(lbd.lbadm("-Ln", "--stats", "--exact").stdout),
        "ln": parse_ln(lbd.lbadm("-Ln").stdout),
        "conns": len(lbd.lbadm("-Lnc").stdout.splitlines()) - 2,  # less the two header lines
        "reasons": counters["reasons"],
        "nfq": counters.get("nfq_queues") or [counters["nfq"]],
    }


def stable_sandwich(lbd: Lbd) -> tuple[dict[str, Any], str]:
    """(lbadm's view, exposition text) read at one moment: lbadm before and after the scrape agree."""
    before = lbadm_state(lbd)
    for _ in range(STABLE_TRIES):
        text = scrape(lbd)
        after = lbadm_state(lbd)
        if after == before:
            return after, text
        before = after
        time.sleep(0.5)  # a late FIN/ACK or an expiring entry: read again
    raise AssertionError(f"lbadm's view kept changing over {STABLE_TRIES} scrapes; last: {before}")


def samples(families: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} of metric `name` (the parser names a counter's family without _total)."""
    family = families[name.removesuffix("_total")] if name.endswith("_total") else families[name]
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def svc_labels(vip: str, port: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"local_address": vip, "local_port": port, "proto": "TCP", "local_mark": ""}.items()))


def backend_labels(vip: str, port: str, rip: str, rport: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"local_address": vip, "local_port": port, "proto": "TCP", "local_mark": "",
                         "remote_address": rip, "remote_port": rport}.items()))


def test_live_metrics_pass_promtool_and_match_lbadm(metrics_lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    promtool = tools.promtool()
    if promtool is None:
        pytest.skip("promtool not found on PATH nor in build/tools "
                    "(`make test-netns` unpacks it from Debian's prometheus package)")
    lbd = metrics_lbd
    vip = topo.vip
    lbd.lbadm("-A", "-t", f"{vip}:{HTTP_PORT}", "-s", "rr")
    for i, rs in enumerate(topo.reals):
        lbd.lbadm("-a", "-t", f"{vip}:{HTTP_PORT}", "-r", f"{rs.addr}:{HTTP_PORT}", "-g", "-w", str(i + 1))
    lbd.wait_resolved()

    replies = http.gets(REQUESTS)
    assert all(r.ok for r in replies), [r for r in replies if not r.ok]
    view, text = stable_sandwich(lbd)

    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"
    assert not (check.stdout + check.stderr).strip(), f"promtool lint:\n{check.stdout}{check.stderr}"

    families = {f.name: f for f in text_string_to_metric_families(text)}
    port = str(HTTP_PORT)
    svc_stats = view["stats"][("TCP", vip, port)]
    assert svc_stats["conns"] == REQUESTS  # each GET on a connection of its own: the traffic was counted
    assert svc_stats["outpkts"] == 0  # DR: replies do not cross the director

    # node_exporter's totals: the only service's counters (nothing was deleted or zeroed).
    for field, suffix in zip(STAT_FIELDS, SUFFIXES, strict=True):
        [sample] = families[f"node_ipvs_{suffix}"].samples
        assert (sample.name, sample.labels, sample.value) == (f"node_ipvs_{suffix}_total", {}, svc_stats[field])

    # Per service and real server: lbadm -Ln --stats --exact, line for line.
    for field, suffix in zip(STAT_FIELDS, SUFFIXES, strict=True):
        assert samples(families, f"lbd_service_{suffix}_total") == {svc_labels(vip, port): svc_stats[field]}
        want = {backend_labels(vip, port, key[3], key[4]): stats[field]
                for key, stats in view["stats"].items() if len(key) == 5}
        assert len(want) == len(topo.reals)
        assert samples(families, f"lbd_backend_{suffix}_total") == want, suffix

    # node_exporter's backend gauges: lbadm -Ln's Weight, ActiveConn, InActConn columns.
    [svc] = view["ln"]
    for name, column in (("node_ipvs_backend_weight", "weight"), ("node_ipvs_backend_connections_active", "active"),
                         ("node_ipvs_backend_connections_inactive", "inactive")):
        want = {backend_labels(vip, port, d.addr, str(d.port)): getattr(d, column) for d in svc.dests}
        assert samples(families, name) == want, name
    assert sum(d.inactive + d.active for d in svc.dests) > 0

    # lbd's own: the table, every packet reason, the adapter of queue 0.
    assert families["lbd_connection_table_entries"].samples[0].value == view["conns"]
    assert samples(families, "lbd_packets_total") == {(("reason", r),): v for r, v in view["reasons"].items()}
    assert view["reasons"]["forwarded"] >= svc_stats["inpkts"]
    if AFXDP:  # the programs' and sockets' counters (lbd_afxdp_*); the queue below is the NFQUEUE fallback's
        redirected = samples(families, "lbd_afxdp_program_packets_total")[(("action", "redirected"),)]
        assert redirected > 0, samples(families, "lbd_afxdp_program_packets_total")
    [queue_stats] = view["nfq"]
    assert samples(families, "lbd_nfqueue_packets_total") == {(("queue", "0"),): queue_stats["packets"]}
    assert samples(families, "lbd_nfqueue_verdicts_total") == {(("queue", "0"),): queue_stats["verdicts"]}
    assert samples(families, "lbd_nfqueue_sent_total") == {
        (("queue", "0"), ("socket", "packet")): queue_stats["xmit_l2"],
        (("queue", "0"), ("socket", "raw")): queue_stats["answers"]}
    [build] = families["lbd_build_info"].samples
    assert build.labels["version"] == lbd.ok("ping")["version"]
