"""lb.doctor without privileges: every check fed with fake inputs (iptables-save text, sysctl
values, /proc content, lbd `list`/`counters` results)."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest

from lb import doctor
from lb import iptlayout as iptl
from lb.doctor import (
    DoctorContext,
    Finding,
    LbdRefused,
    LbdUnavailable,
    Probe,
    format_json,
    format_text,
    parse_iptables_save,
    parse_nfnetlink_queue,
    run_checks,
    walk,
    walk_path,
)
from lb.doctor import cli as doctor_cli
from lb.doctor import runner as doctor_runner
from lb.testbed.seeds import FIELD_REPORT_001_FILTER

VIP = "10.0.0.100"
DIP = "10.0.0.2"
RIPS = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
MARK0 = iptl.socket_mark(0)

RAW_OK = "\n".join([
    "*raw",
    ":PREROUTING ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":LBD-Q0 - [0:0]",
    ":LBD-Q0-GO - [0:0]",
    ":LBD-Q0-OUT - [0:0]",
    '-A PREROUTING -m comment --comment "lbd q0" -j LBD-Q0',
    '-A OUTPUT -m comment --comment "lbd q0 out" -j LBD-Q0-OUT',
    *iptl.chain_rules(0),
    "-A LBD-Q0-GO -j CT --notrack",
    "-A LBD-Q0-GO -j NFQUEUE --queue-num 0 --queue-bypass",
    f"-A LBD-Q0-OUT -m mark --mark {MARK0:#x} -j CT --notrack",
    "COMMIT",
])
SETS_OK = "\n".join([
    "create lbd-q0-addr hash:ip family inet hashsize 1024 maxelem 1048576",
    f"add lbd-q0-addr {VIP}",
    "create lbd-q0-svc hash:ip,port family inet hashsize 1024 maxelem 1048576",
    f"add lbd-q0-svc {VIP},tcp:80",
    "create lbd-q0-tcp0 hash:ip family inet hashsize 1024 maxelem 1048576",
    "create lbd-q0-udp0 hash:ip family inet hashsize 1024 maxelem 1048576",
    "create lbd-q0-fnat hash:ip,port,ip family inet hashsize 1024 maxelem 1048576",
])
FILTER_EMPTY = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT"

SEED_FILTER = FIELD_REPORT_001_FILTER.rstrip("\n")  # the field report's ruleset (seed 001)

NFQ_LINE = "    0  31337     0 2 65531     0     0      120  1\n"


def ifaces(vip_dev: str = "eth0", up: bool = True, mtu: int = 1500) -> list[dict[str, Any]]:
    eth0: dict[str, Any] = {"ifname": "eth0", "mtu": mtu, "flags": ["BROADCAST", "UP", "LOWER_UP"] if up else ["BROADCAST"],
            "operstate": "UP" if up else "DOWN",
            "addr_info": [{"family": "inet", "local": DIP, "prefixlen": 24}]}
    lo: dict[str, Any] = {"ifname": "lo", "mtu": 65536, "flags": ["LOOPBACK", "UP"], "operstate": "UNKNOWN",
          "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]}
    if vip_dev:
        (eth0 if vip_dev == "eth0" else lo)["addr_info"].append({"family": "inet", "local": VIP, "prefixlen": 32})
    return [lo, eth0]


def dest(addr: str, fwd: str = "route", conns: int = 0, syn_retrans: int | None = 0, handshakes: int = 0,
         l2: dict[str, Any] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "addr": addr, "port": 80, "fwd": fwd, "weight": 1, "u_threshold": 0, "l_threshold": 0,
        "active": 0, "inactive": 0, "persist": 0,
        "stats": {"conns": conns, "inpkts": 0, "outpkts": 0, "inbytes": 0, "outbytes": 0},
        "l2": l2 or {"state": "resolved", "ifname": "eth0", "mac": "02:00:00:00:00:11", "reason": ""},
    }
    if syn_retrans is not None:
        d["syn_retrans"] = syn_retrans
        d["handshakes"] = handshakes
    return d


def listing(dests: list[dict[str, Any]], port: int = 80) -> dict[str, Any]:
    return {"version": "1.2.1", "conn_tab_size": 4096, "services": [{
        "proto": "tcp", "addr": VIP, "port": port, "sched": "rr", "persistent": None,
        "netmask": "255.255.255.255", "stats": {}, "dests": dests}]}


def counters(**reasons: int) -> dict[str, Any]:
    base = {name: 0 for name in ("forwarded", "no_l2", "table_full", "dest_unavailable", "no_dest", "malformed")}
    base.update(reasons)
    return {"reasons": base, "nfq": {"packets": 0, "recv_err": 0, "xmit_l2_err": 0, "answer_err": 0}}


class FakeContext(DoctorContext):
    """Inputs from dicts. `samples` are what lbd and /proc show at the first and second sample."""

    def __init__(self, *, save: str | None = RAW_OK + "\n" + FILTER_EMPTY, sysctls: dict[str, str] | None = None,
                 interfaces: list[dict[str, Any]] | None = None, routes: dict[str, dict[str, Any]] | None = None,
                 samples: list[dict[str, Any]] | None = None, ping: dict[str, Any] | None = None,
                 lbd_down: bool = False, window_s: float = 10.0, queue_num: int | None = None,
                 nft: str | None = None, version: str = "iptables v1.8.9 (nf_tables)",
                 sets: str | None = SETS_OK) -> None:
        self.save = save
        self.sets = sets
        self.sysctls = {"net/ipv4/ip_forward": "0", "net/ipv4/conf/all/rp_filter": "0",
                        "net/ipv4/conf/default/rp_filter": "0", "net/ipv4/conf/eth0/rp_filter": "0",
                        **(sysctls or {})}
        self.ifs = ifaces() if interfaces is None else interfaces
        self.routes = routes or {}
        one = {"list": listing([dest(r) for r in RIPS]), "counters": counters(), "nfq": NFQ_LINE}
        self.samples = samples or [one, copy.deepcopy(one)]
        self.ping_result = ping or {"version": "0.1", "engine": "c"}
        self.lbd_down = lbd_down
        self.window_s = window_s
        self.queue_num = queue_num
        self.nft = nft
        self.version = version
        self.socket_path = "/run/lbd/test.sock"
        self.phase = 0
        self.t = 100.0
        self.slept: list[float] = []
        self.requests: list[str] = []

    def iptables_save(self) -> str | None:
        return self.save

    def iptables_version(self) -> str:
        return self.version

    def ipset_save(self) -> str | None:
        return self.sets

    def nft_ruleset(self) -> str | None:
        return self.nft

    def read_file(self, path: str) -> str | None:
        if path == "/proc/net/netfilter/nfnetlink_queue":
            return self.samples[self.phase].get("nfq")
        return None

    def sysctl(self, path: str) -> str | None:
        return self.sysctls.get(path)

    def interfaces(self) -> list[dict[str, Any]]:
        return self.ifs

    def route_get(self, addr: str) -> dict[str, Any] | None:
        return self.routes.get(addr)

    def lbd(self, op: str, args: dict[str, Any] | None = None) -> Any:
        self.requests.append(op)
        if self.lbd_down:
            raise LbdUnavailable("cannot connect to lbd at /run/lbd/test.sock: No such file or directory")
        if op == "ping":
            return self.ping_result
        sample = self.samples[self.phase]
        if op not in sample:
            raise LbdRefused(f"{op}: EINVAL: unknown operation {op!r}")
        return sample[op]

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        self.phase = min(self.phase + 1, len(self.samples) - 1)

    def monotonic(self) -> float:
        return self.t


def by(findings: list[Finding], check: str, severity: str | None = None) -> list[Finding]:
    return [f for f in findings if f.check == check and (severity is None or f.severity == severity)]


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity != "info"]


# =========================================================================== basics


def test_finding_severity_is_checked_and_sorting_puts_errors_first() -> None:
    with pytest.raises(ValueError):
        Finding("fatal", "x", "y")
    fs = [Finding("info", "a", "1"), Finding("error", "b", "2"), Finding("warning", "c", "3")]
    assert [f.severity for f in doctor.sort_findings(fs)] == ["error", "warning", "info"]
    assert doctor.has_errors(fs) and not doctor.has_errors(fs[:1])


def test_formatters() -> None:
    fs = [Finding("error", "handshakes", "destination 1.2.3.4:80: stalled", evidence="line one\nline two", fix="do x"),
          Finding("info", "vip", "VIP ok")]
    text = format_text(fs, 2.0)
    assert text.startswith("lbadm doctor: 1 error, 0 warnings, 1 info (sampled lbd over 2 s)\n")
    assert "[ERROR] handshakes: destination 1.2.3.4:80: stalled\n    evidence: line one\n              line two\n    fix: do x\n" in text
    doc = json.loads(format_json(fs, 2.0))
    assert doc["errors"] == 1 and doc["warnings"] == 0 and doc["window_s"] == 2.0
    assert doc["findings"][0] == {"severity": "error", "check": "handshakes", "summary": "destination 1.2.3.4:80: stalled",
                                  "evidence": "line one\nline two", "fix": "do x"}


def test_parse_nfnetlink_queue() -> None:
    text = "    0  31337     5 2 65531     7     3      120  1\n   12  999 0 2 65531 0 0 0 1\ngarbage\n"
    qs = parse_nfnetlink_queue(text)
    assert set(qs) == {0, 12}
    assert (qs[0].portid, qs[0].waiting, qs[0].queue_dropped, qs[0].user_dropped, qs[0].id_sequence) == (31337, 5, 7, 3, 120)


# =========================================================================== rule evaluation


def test_parse_iptables_save_rules_and_negation() -> None:
    tables = parse_iptables_save(SEED_FILTER + "\n*mangle\n:PREROUTING ACCEPT [0:0]\n"
                                 "-A PREROUTING ! -s 10.0.0.0/8 -m conntrack ! --ctstate NEW -j MARK --set-xmark 0x1/0xffffffff\nCOMMIT")
    rh = tables["filter"]["RH-Firewall-1-INPUT"]
    assert rh.policy is None and tables["filter"]["INPUT"].policy == "ACCEPT"
    assert [r.target for r in rh.rules] == ["ACCEPT", "ACCEPT", "ACCEPT", "ACCEPT", "REJECT"]
    assert rh.rules[4].target_args == ["--reject-with", "icmp-host-prohibited"]
    assert ("--state", ["NEW"], False) in rh.rules[3].opts and ("--dport", ["80"], False) in rh.rules[3].opts
    m = tables["mangle"]["PREROUTING"].rules[0]
    assert ("-s", ["10.0.0.0/8"], True) in m.opts and ("--ctstate", ["NEW"], True) in m.opts


def test_seed_ruleset_rejects_untracked_and_accepts_tracked() -> None:
    tables = parse_iptables_save(SEED_FILTER)
    untracked = Probe("tcp", daddr=VIP, dport=80, iif="eth0", tcp_flags=frozenset({"ACK", "FIN"}))
    res = walk_path(tables, doctor.HANDBACK_PATH, untracked)
    assert res.blocked and res.final is not None
    assert res.final.verdict == "REJECT" and res.final.reject_with == "icmp-host-prohibited"
    assert res.final.chain == "RH-Firewall-1-INPUT" and res.final.rule is not None and res.final.rule.num == 5
    for states in ({"NEW"}, {"ESTABLISHED"}, {"RELATED"}):
        ok = walk_path(tables, doctor.HANDBACK_PATH, Probe("tcp", daddr=VIP, dport=80, iif="eth0", states=frozenset(states)))
        assert not ok.blocked, states
    assert walk_path(tables, doctor.HANDBACK_PATH, Probe("icmp", daddr=VIP, iif="eth0")).final is None  # icmp any: ACCEPT
    assert not walk_path(tables, doctor.HANDBACK_PATH, Probe("tcp", daddr=VIP, dport=80, iif="lo")).blocked


def test_walk_unknown_match_is_maybe_and_return_and_policies() -> None:
    tables = parse_iptables_save("""*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SUB - [0:0]
-A INPUT -m recent --rcheck --seconds 60 -j DROP
-A INPUT -j SUB
-A INPUT -p tcp -m multiport --dports 22,80:90 -j ACCEPT
-A SUB -p udp -j RETURN
-A SUB -m conntrack --ctstate INVALID -j DROP
COMMIT""")
    decisions, ended = walk(tables, "filter", "INPUT", Probe("tcp", dport=85))
    assert ended
    assert [(d.verdict, d.certain) for d in decisions] == [("DROP", False), ("ACCEPT", True)]
    decisions, ended = walk(tables, "filter", "INPUT", Probe("udp", dport=85))
    assert decisions[-1].rule is None and decisions[-1].verdict == "DROP"  # the policy
    res = walk_path(tables, [("filter", "INPUT")], Probe("tcp", dport=85, states=frozenset({"INVALID"})))
    assert res.blocked and res.final is not None and res.final.chain == "SUB"


# =========================================================================== whole runs


def test_healthy_director_has_no_problems_and_samples_over_the_window() -> None:
    ctx = FakeContext(window_s=2.5)
    fs = run_checks(ctx)
    assert problems(fs) == [], format_text(fs)
    assert ctx.slept == [2.5]
    assert ctx.requests == ["ping", "list", "counters", "list", "counters", "stall_history"]
    assert any("set lookups steer every service (1)" in f.summary for f in by(fs, "nfqueue-rules"))
    assert any("no drops" in f.summary for f in by(fs, "nfqueue"))
    assert any("net.ipv4.ip_forward = 0" in f.summary for f in by(fs, "sysctl"))
    assert by(fs, "vip")[0].summary == f"VIP {VIP} is configured on eth0"


def test_window_zero_takes_one_sample() -> None:
    ctx = FakeContext(window_s=0)
    fs = run_checks(ctx)
    assert ctx.slept == [] and problems(fs) == []


def test_seed_ruleset_on_director_explained() -> None:
    ctx = FakeContext(save=RAW_OK + "\n" + SEED_FILTER)
    fs = run_checks(ctx)
    warn = by(fs, "firewall", "warning")
    assert len(warn) == 1, format_text(fs)
    w = warn[0]
    assert w.summary.startswith(f"TCP {VIP}:80: segments lbd hands back to the kernel are UNTRACKED and hit REJECT")
    assert w.summary.endswith("clients get icmp-host-prohibited (ICMP type 3 code 10), the field report's symptom")
    assert "-A RH-Firewall-1-INPUT -j REJECT --reject-with icmp-host-prohibited" in w.evidence
    assert f"iptables -I INPUT -d {VIP} -p tcp --dport 80 -m conntrack --ctstate UNTRACKED -j ACCEPT" in w.fix
    info = [f for f in by(fs, "firewall", "info") if "firewall rule" in f.summary][0]
    assert "-m state --state RELATED,ESTABLISHED -j ACCEPT\n    never matches lbd's packets (UNTRACKED)\n" in info.evidence
    assert "from FORWARD: never met by lbd's traffic" in info.evidence  # FORWARD jumps into the same chain
    assert "from INPUT: met only by packets lbd hands back" in info.evidence
    assert "rejects with icmp-host-prohibited" in info.evidence
    # ip_forward=0: the FORWARD side is not a warning
    assert not any("FORWARD" in f.summary for f in warn)


def test_forward_reject_matters_only_when_forwarding() -> None:
    fs = run_checks(FakeContext(save=RAW_OK + "\n" + SEED_FILTER, sysctls={"net/ipv4/ip_forward": "1"}))
    fwd = [f for f in by(fs, "firewall", "warning") if "FORWARD" in f.summary]
    assert len(fwd) == 1 and all(r in fwd[0].evidence for r in RIPS)


def test_invalid_drop_rule_is_harmless_and_said_so() -> None:
    filt = FILTER_EMPTY.replace("COMMIT", "-A INPUT -m conntrack --ctstate INVALID -j DROP\nCOMMIT")
    fs = run_checks(FakeContext(save=RAW_OK + "\n" + filt))
    assert problems(fs) == []
    info = [f for f in by(fs, "firewall") if "firewall rule" in f.summary][0]
    assert "UNTRACKED is not INVALID" in info.evidence


def test_output_rule_dropping_untracked_hits_lbd_raw_socket() -> None:
    filt = FILTER_EMPTY.replace("COMMIT", "-A OUTPUT -m state --state INVALID,UNTRACKED -j DROP\nCOMMIT")
    fs = run_checks(FakeContext(save=RAW_OK + "\n" + filt))
    w = by(fs, "firewall", "warning")
    assert len(w) == 1 and "ICMP answers" in w[0].summary and f"--mark {MARK0:#x} -j ACCEPT" in w[0].fix
    fn = {"list": listing([dest(r, fwd="fullnat") for r in RIPS]), "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(save=RAW_OK + "\n" + filt, samples=[fn, fn]))
    e = by(fs, "firewall", "error")
    assert len(e) == 1 and "FULLNAT replies" in e[0].summary


def test_raw_rule_before_lbd_jump() -> None:
    drop = RAW_OK.replace('-A PREROUTING -m comment', f"-A PREROUTING -d {VIP}/32 -j DROP\n-A PREROUTING -m comment")
    fs = run_checks(FakeContext(save=drop + "\n" + FILTER_EMPTY))
    e = by(fs, "firewall", "error")
    assert len(e) == 1 and "dropped before lbd sees them" in e[0].summary and f"-d {VIP}/32 -j DROP" in e[0].evidence
    maybe = RAW_OK.replace('-A PREROUTING -m comment', "-A PREROUTING -m set --match-set blocklist src -j DROP\n-A PREROUTING -m comment")
    fs = run_checks(FakeContext(save=maybe + "\n" + FILTER_EMPTY))
    assert [f.summary for f in by(fs, "firewall", "warning")] == [
        f"service TCP {VIP}:80: raw PREROUTING rules before lbd's jump may decide some of its packets first"]


def test_nfqueue_rule_health() -> None:
    # a second service lbd reports but the sets lack
    two = listing([dest(r) for r in RIPS])
    two["services"].append({**two["services"][0], "port": 443})
    s = {"list": two, "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(samples=[s, s]))
    e = by(fs, "nfqueue-rules", "error")
    assert len(e) == 1 and e[0].summary.startswith(f"service TCP {VIP}:443: not in lbd's ip sets")
    # jump missing
    fs = run_checks(FakeContext(save=RAW_OK.replace('-A PREROUTING -m comment --comment "lbd q0" -j LBD-Q0\n', "") + "\n" + FILTER_EMPTY))
    assert any("does not jump to LBD-Q0" in f.summary for f in by(fs, "nfqueue-rules", "error"))
    # chain missing altogether
    fs = run_checks(FakeContext(save=FILTER_EMPTY, queue_num=0))
    assert any("chain LBD-Q0 is missing" in f.summary for f in by(fs, "nfqueue-rules", "error"))
    # the chain flushed by hand: the set lookups are gone
    flushed = "\n".join(line for line in RAW_OK.splitlines() if not line.startswith("-A LBD-Q0 "))
    fs = run_checks(FakeContext(save=flushed + "\n" + FILTER_EMPTY))
    assert any("does not hold lbd's set lookups" in f.summary for f in by(fs, "nfqueue-rules", "error"))
    # no --queue-bypass; elements lbd did not ask for are only reported
    nob = RAW_OK.replace(" --queue-bypass", "") + "\n" + FILTER_EMPTY
    fs = run_checks(FakeContext(save=nob, sets=SETS_OK + "\nadd lbd-q0-svc 192.0.2.99,udp:53"))
    assert any("without --queue-bypass" in f.summary for f in by(fs, "nfqueue-rules", "warning"))
    extra = [f for f in by(fs, "nfqueue-rules", "info") if "did not ask for" in f.summary]
    assert len(extra) == 1 and extra[0].evidence == "lbd-q0-svc 192.0.2.99,udp:53"
    # ip sets unreadable: said, not guessed
    fs = run_checks(FakeContext(sets=None))
    assert any("cannot read the ip sets" in f.summary for f in by(fs, "nfqueue-rules", "warning"))


def test_services_named_by_the_sets_when_lbd_is_down() -> None:
    fs = run_checks(FakeContext(lbd_down=True, sets=SETS_OK + "\ncreate x hash:ip\nadd lbd-q0-udp0 10.0.0.101"))
    (e,) = by(fs, "lbd", "error")
    assert f"TCP {VIP}:80" in e.evidence and "UDP 10.0.0.101:0" in e.evidence


def test_out_chain_missing_and_track_opt_in() -> None:
    no_out = "\n".join(line for line in RAW_OK.splitlines() if "LBD-Q0-OUT" not in line)
    fs = run_checks(FakeContext(save=no_out + "\n" + FILTER_EMPTY))
    w = by(fs, "nfqueue-rules", "warning")
    assert len(w) == 1 and "LBD-Q0-OUT" in w[0].summary and iptl.out_jump_rule(0) in w[0].evidence
    tracked = "\n".join(line for line in no_out.splitlines() if "CT --notrack" not in line)
    fs = run_checks(FakeContext(save=tracked + "\n" + SEED_FILTER))
    assert any("conntrack opt-in is on" in f.summary for f in by(fs, "conntrack"))
    assert not by(fs, "nfqueue-rules", "warning")
    # with tracking, handed-back segments are NEW/INVALID: the seed's `--state NEW --dport 80` rule
    # may accept some, INVALID ones are still rejected
    (only_warning,) = by(fs, "firewall", "warning")
    assert "are INVALID/NEW and hit REJECT" in only_warning.summary and "rules accepting NEW may let some through" in only_warning.evidence
    info = [f for f in by(fs, "firewall", "info") if "firewall rule" in f.summary][0]
    assert "--dport 80 --state NEW -j ACCEPT\n    matches some of lbd's handed-back packets" in info.evidence


def test_queue_listener_backlog_and_drops() -> None:
    fs = run_checks(FakeContext(samples=[{**FakeContext().samples[0], "nfq": ""}] * 2))
    assert any("nobody listens on NFQUEUE 0" in f.summary for f in by(fs, "nfqueue", "error"))
    s0 = {**FakeContext().samples[0], "nfq": "0 31337 0 2 65531 10 2 500 1\n"}
    s1 = {**FakeContext().samples[0], "nfq": "0 31337 2000 2 65531 25 9 900 1\n"}
    ctx = FakeContext(samples=[s0, s1])
    fs = run_checks(ctx)
    e = by(fs, "nfqueue", "error")
    assert len(e) == 1 and e[0].summary == "queue 0 dropped 22 packets in 10.0 s (queue full: 15, netlink buffer overrun: 7)"
    fs = run_checks(FakeContext(samples=[s0, s0]))
    assert any("dropped packets earlier" in f.summary for f in by(fs, "nfqueue", "info"))
    fs = run_checks(FakeContext(samples=[s1, s1]))
    assert any("2000 packets wait in queue 0" in f.summary for f in by(fs, "nfqueue", "warning"))


STALL_TEXT = ("handshakes stalled in 10 s; frames leave the director but no client ACK returns. Likely causes: "
              "anti-spoofing on the hypervisor (libvirt nwfilter clean-traffic / no-ip-spoofing, cloud "
              "source/destination checks), VIP not configured on the real server's loopback, "
              "arp_ignore/arp_announce, the real server's firewall")


def test_stalled_handshakes_all_destinations_points_at_the_director() -> None:
    s0 = {"list": listing([dest(r, conns=5, syn_retrans=2, handshakes=40) for r in RIPS]), "counters": counters(), "nfq": NFQ_LINE}
    s1 = {"list": listing([dest(r, conns=9, syn_retrans=14, handshakes=40) for r in RIPS]), "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(samples=[s0, s1]))
    e = by(fs, "handshakes", "error")
    assert [f.summary for f in e] == [f"destination {r}:80: 4 {STALL_TEXT}" for r in RIPS]
    assert "all 3 destinations of the service stall" in e[0].evidence and "anti-spoofing" in e[0].evidence
    assert "syn_retrans +12 (total 14), handshakes +0 (total 40), new connections +4\n" in e[0].evidence
    assert "libvirt" in e[0].fix and f"ip addr add {VIP}/32 dev lo" in e[0].fix


def test_stalled_handshakes_one_destination_and_recovery() -> None:
    d0 = [dest(RIPS[0], conns=3, syn_retrans=0, handshakes=0), dest(RIPS[1], conns=3, syn_retrans=0, handshakes=3)]
    d1 = [dest(RIPS[0], conns=3, syn_retrans=6, handshakes=0), dest(RIPS[1], conns=6, syn_retrans=1, handshakes=6)]
    s0 = {"list": listing(d0), "counters": counters(), "nfq": NFQ_LINE}
    s1 = {"list": listing(d1), "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(samples=[s0, s1], window_s=3))
    e = by(fs, "handshakes", "error")
    assert len(e) == 1
    assert e[0].summary.startswith(f"destination {RIPS[0]}:80: 6 handshakes stalled in 3 s;")  # no new conns: N = retransmissions
    assert "1 of 2 destinations stall" in e[0].evidence
    # lbd lists the connections still waiting for the client's ACK: that is the count
    conn = {"proto": "tcp", "caddr": "10.9.9.9", "cport": 1000, "vaddr": VIP, "vport": 80, "daddr": RIPS[0],
            "dport": 80, "state": "SYN_RECV", "expires_ms": 50000}
    s1c = {**s1, "connections": {"connections": [conn, {**conn, "cport": 1001}, {**conn, "state": "ESTABLISHED"}]}}
    fs = run_checks(FakeContext(samples=[s0, s1c], window_s=3))
    (only_error,) = by(fs, "handshakes", "error")
    assert only_error.summary.startswith(f"destination {RIPS[0]}:80: 2 handshakes stalled in 3 s;")
    assert "connections in SYN_RECV now 2" in only_error.evidence
    # retransmissions while handshakes complete (loss, not a stall), or nothing at all: no finding
    fs = run_checks(FakeContext(samples=[s1, s1]))
    assert by(fs, "handshakes") == []


def test_stalled_handshakes_unavailable_without_counters() -> None:
    s = {"list": listing([dest(r, syn_retrans=None) for r in RIPS]), "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(samples=[s, s]))
    assert [f.severity for f in by(fs, "handshakes")] == ["info"]
    assert "does not report syn_retrans" in by(fs, "handshakes")[0].summary


def test_unresolved_destination() -> None:
    l2 = {"state": "unresolved", "ifname": "eth0", "mac": "", "reason": "neighbour 10.0.0.13 on eth0 FAILED"}
    s = {"list": listing([dest(RIPS[0]), dest(RIPS[2], l2=l2)]), "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(samples=[s, s]))
    e = by(fs, "destinations", "error")
    assert len(e) == 1
    assert e[0].summary == (f"destination {RIPS[2]}:80 of TCP {VIP}:80: forwarding state unresolved: "
                            "neighbour 10.0.0.13 on eth0 FAILED; its packets are dropped (no_l2)")


def test_counters_growth() -> None:
    s0 = {**FakeContext().samples[0], "counters": counters(no_l2=5, table_full=0, dest_unavailable=7)}
    s1 = {**FakeContext().samples[0], "counters": counters(no_l2=9, table_full=3, dest_unavailable=7)}
    s1["counters"]["nfq"]["xmit_l2_err"] = 2
    fs = run_checks(FakeContext(samples=[s0, s1]))
    errors = {f.summary.split(" ")[0] for f in by(fs, "counters", "error")}
    assert errors == {"no_l2", "table_full", "xmit_l2_err"}
    assert any(f.summary.startswith("dest_unavailable = 7 since lbd started") for f in by(fs, "counters", "info"))


def test_the_overload_guards_drops_are_a_warning_while_they_grow() -> None:
    s0 = {**FakeContext().samples[0], "counters": {**counters(), "overload": {"armed": 0, "dropped": 100}}}
    s1 = {**FakeContext().samples[0], "counters": {**counters(), "overload": {"armed": 1, "dropped": 90_100}}}
    (f,) = by(run_checks(FakeContext(samples=[s0, s1])), "counters", "warning")
    assert f.summary.startswith("dropped +90000 in") and "overload guard shed packets" in f.summary
    assert "--queue-balance" in f.fix and f.evidence == "overload.dropped: 100 -> 90100"
    (f,) = by(run_checks(FakeContext(samples=[s0, s0])), "counters", "info")
    assert f.summary.startswith("dropped = 100 since lbd started (not growing now)")


def test_rp_filter_effective_value() -> None:
    fs = run_checks(FakeContext(sysctls={"net/ipv4/conf/all/rp_filter": "1", "net/ipv4/conf/eth0/rp_filter": "2"}))
    (f,) = by(fs, "rp_filter")
    assert f.severity == "info" and "before the routing decision" in f.summary
    assert "eth0 (VIP 10.0.0.100): rp_filter 2, all 1 -> effective 2 (loose)" in f.evidence
    fs = run_checks(FakeContext(sysctls={"net/ipv4/conf/all/rp_filter": "1"}))
    assert "strict mode on eth0" in by(fs, "rp_filter")[0].summary


def test_vip_presence() -> None:
    fs = run_checks(FakeContext(interfaces=ifaces(vip_dev="")))
    e = by(fs, "vip", "error")
    assert len(e) == 1 and "not configured on any interface" in e[0].summary and f"ip addr add {VIP}/32" in e[0].fix
    fs = run_checks(FakeContext(interfaces=ifaces(up=False)))
    assert any("which is down" in f.summary for f in by(fs, "vip", "error"))
    fs = run_checks(FakeContext(interfaces=ifaces(vip_dev="lo"), sysctls={"net/ipv4/conf/all/arp_ignore": "1"}))
    assert any("only on lo and arp_ignore >= 1" in f.summary for f in by(fs, "vip", "error"))
    fs = run_checks(FakeContext(interfaces=ifaces(vip_dev="lo")))
    assert [f.severity for f in by(fs, "vip")] == ["info"]


def test_tunnel_mtu() -> None:
    s = {"list": listing([dest(RIPS[0], fwd="tunnel"), dest(RIPS[1], fwd="tunnel")]), "counters": counters(), "nfq": NFQ_LINE}
    routes: dict[str, dict[str, Any]] = {RIPS[0]: {"dst": RIPS[0], "dev": "eth0"},
              RIPS[1]: {"dst": RIPS[1], "dev": "eth0", "metrics": [{"mtu": 1400}]}}
    fs = run_checks(FakeContext(samples=[s, s], routes=routes))
    w = by(fs, "mtu", "warning")
    assert [f.summary for f in w] == [
        f"destination {RIPS[0]}:80 (IPIP): 1500-byte client packets do not fit the tunnel (1500 - 20 = 1480)",
        f"destination {RIPS[1]}:80 (IPIP): 1500-byte client packets do not fit the tunnel (1400 - 20 = 1380)",
    ]
    assert "route MTU 1400" in w[1].evidence and "--set-mss 1340" in w[1].fix
    fs = run_checks(FakeContext(samples=[s, s], routes=routes, interfaces=ifaces(mtu=1520)))
    assert [(f.severity, f.summary.split(":")[0]) for f in by(fs, "mtu")] == [
        ("warning", f"destination {RIPS[1]}"), ("info", f"destination {RIPS[0]}")]
    assert "rp_filter to 0 or 2 on the tunnel interface" in by(fs, "rp_filter")[0].fix


FIREWALLD = """table inet firewalld {
	chain filter_INPUT {
		type filter hook input priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat accept
		iifname "lo" accept
		ct state invalid drop
		jump filter_INPUT_ZONES
		reject with icmpx admin-prohibited
	}
	chain filter_FORWARD {
		type filter hook forward priority filter + 10; policy accept;
		ct state { established, related } accept
		reject with icmpx admin-prohibited
	}
}
table ip filter {
	chain INPUT {
		type filter hook input priority filter; policy accept;
		ct state established,related counter packets 0 bytes 0 accept
		counter packets 0 bytes 0 reject
	}
}
"""


def test_native_nftables_chains() -> None:
    fs = run_checks(FakeContext(nft=FIREWALLD))
    w = by(fs, "firewall", "warning")
    assert len(w) == 1 and w[0].summary.startswith("nftables chain inet firewalld filter_INPUT (hook input)")
    assert "reject with icmpx admin-prohibited" in w[0].evidence
    assert f"ip daddr {{ {VIP} }} ct state untracked accept" in w[0].fix
    assert any("filter_FORWARD" in f.summary for f in by(fs, "firewall", "info"))
    # the iptables-nft table `ip filter` is covered by iptables-save, not reported twice ...
    assert not any("ip filter INPUT" in f.summary for f in fs)
    # ... unless iptables is the legacy backend (then `ip filter` is a native nft table)
    fs = run_checks(FakeContext(nft=FIREWALLD, version="iptables v1.8.9 (legacy)"))
    assert any("nftables chain ip filter INPUT" in f.summary for f in by(fs, "firewall", "warning"))


def test_lbd_unreachable_still_checks_the_host() -> None:
    ctx = FakeContext(lbd_down=True, save=RAW_OK + "\n" + SEED_FILTER)
    fs = run_checks(ctx)
    e = by(fs, "lbd", "error")
    assert len(e) == 1 and "lbd is not reachable" in e[0].summary
    assert f"services taken from its leftover queue rules: TCP {VIP}:80" in e[0].evidence
    assert ctx.slept == []  # nothing to sample
    assert any("hit REJECT" in f.summary for f in by(fs, "firewall", "warning"))  # from the leftover rules' VIP
    assert by(fs, "vip")  # VIPs known from the rules as well


def test_a_failing_check_does_not_hide_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(run: Any) -> list[Finding]:
        raise KeyError("surprise")

    boom.__name__ = "check_mtu"
    monkeypatch.setattr(doctor_runner, "STATIC_CHECKS", (*doctor_runner.STATIC_CHECKS[:-2], boom, doctor_runner.STATIC_CHECKS[-1]))
    fs = run_checks(FakeContext())
    assert [f.summary for f in by(fs, "mtu")] == ["check failed: KeyError: 'surprise'"]
    assert by(fs, "vip")


# =========================================================================== command line


def test_main_doctor_exit_status_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    def fake_live(socket_path: str, **kw: Any) -> FakeContext:
        made.append({"socket": socket_path, **kw})
        return FakeContext(window_s=kw["window_s"], queue_num=kw["queue_num"], interfaces=fake_live.ifaces)  # type: ignore[attr-defined]

    fake_live.ifaces = ifaces()  # type: ignore[attr-defined]
    monkeypatch.setattr(doctor_cli, "LiveContext", fake_live)
    out, err = io.StringIO(), io.StringIO()
    assert doctor_cli.main_doctor(["--window", "0.5", "--json"], "/tmp/x.sock", stdout=out, stderr=err) == 0
    assert made[-1] == {"socket": "/tmp/x.sock", "window_s": 0.5, "queue_num": None}
    doc = json.loads(out.getvalue())
    assert doc["errors"] == 0 and doc["window_s"] == 0.5
    fake_live.ifaces = ifaces(vip_dev="")  # type: ignore[attr-defined]
    out = io.StringIO()
    assert doctor_cli.main_doctor(["--window", "0", "--queue-num", "0"], "/tmp/x.sock", stdout=out, stderr=err) == 1
    assert out.getvalue().startswith("lbadm doctor: 1 error")
    assert "[ERROR] vip:" in out.getvalue()
    for bad in (["--window", "-1"], ["--window", "x"], ["--window", "601"], ["--queue-num", "70000"], ["--bogus"]):
        assert doctor_cli.main_doctor(bad, "/tmp/x.sock", stdout=io.StringIO(), stderr=io.StringIO()) == 2, bad


def test_doctor_invocation_for_lbadm() -> None:
    assert doctor_cli.doctor_invocation(["doctor"]) == (None, [])
    assert doctor_cli.doctor_invocation(["--socket", "/s", "doctor", "--json"]) == ("/s", ["--json"])
    assert doctor_cli.doctor_invocation(["--socket=/s", "doctor", "--window", "2"]) == ("/s", ["--window", "2"])
    for other in (["-Ln"], ["--socket", "/s", "-Ln"], [], ["-A", "-t", "doctor:80"]):
        assert doctor_cli.doctor_invocation(other) is None


def test_fwmark_service_needs_its_mangle_rule() -> None:
    two = listing([dest(r) for r in RIPS])
    two["services"].append({**two["services"][0], "fwmark": 7, "addr": "0.0.0.0", "port": 0})
    s = {"list": two, "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(samples=[s, s]))
    (e,) = [f for f in by(fs, "nfqueue-rules", "error") if "FWM 7" in f.summary]
    assert "does not queue its mark" in e.summary
    mangle = ("*mangle\n:PREROUTING ACCEPT [0:0]\n:LBD-Q0-MARK - [0:0]\n"
              '-A PREROUTING -m comment --comment "lbd q0 mark" -j LBD-Q0-MARK\n'
              "-A LBD-Q0-MARK -m mark --mark 0x7 -j NFQUEUE --queue-num 0 --queue-bypass\nCOMMIT")
    fs = run_checks(FakeContext(samples=[s, s], save=RAW_OK + "\n" + mangle + "\n" + FILTER_EMPTY))
    assert not [f for f in by(fs, "nfqueue-rules", "error") if "FWM" in f.summary]
    assert not problems([f for f in fs if f.check == "nfqueue-rules"])


def _nft_table(queue: int = 0, svc: list[str] | None = None, bypass: bool = True, drop_first: bool = False) -> str:
    """`nft list ruleset` of an lbd --steering nftables (lb.nftsteer's table as nft prints it)."""
    from lb import nftsteer as ns

    lines = [f"table ip lbd-q{queue} {{"]
    for kind in ns.ips.KINDS:
        lines += [f"\tset {kind.suffix} {{", f"\t\ttype {ns.SET_TYPES[kind.type]}"]
        el = {"addr": [VIP], "svc": [f"{VIP} . tcp . 80"] if svc is None else svc}.get(kind.suffix)
        if el:
            lines.append("\t\telements = { " + ", ".join(el) + " }")
        lines.append("\t}")
    queue_rule = f'queue num {queue}{" bypass" if bypass else ""} comment "lbd q{queue} queue {queue}' \
                 f'{" bypass" if bypass else ""}"'
    pre = ns.chain_rules()[1:] if drop_first else ns.chain_rules()
    for name, hook, rules in (("go", "", [r if r != ns.QUEUE_KEY else queue_rule for r in ns.go_rules(queue, False)]),
                              ("pre", ns.HOOK_LINES["pre"], pre), ("out", ns.HOOK_LINES["out"], ns.out_rules(queue, False))):
        lines += [f"\tchain {name} {{", *([f"\t\t{hook}"] if hook else []), *[f"\t\t{r}" for r in rules], "\t}"]
    return "\n".join([*lines, "}"]) + "\n"


def test_nftables_steering_is_read_from_lbds_table() -> None:
    ping = {"version": "0.1", "engine": "c", "queue_num": 0, "steering": "nftables", "down_policy": "open"}
    fs = run_checks(FakeContext(save=FILTER_EMPTY, sets="", nft=_nft_table(), ping=ping))
    assert not problems(by(fs, "nfqueue-rules")), by(fs, "nfqueue-rules")
    assert any("table ip lbd-q0 (lbd --steering nftables)" in f.summary for f in by(fs, "nfqueue-rules", "info"))
    # the first rule gone, the service's element gone, the table gone
    fs = run_checks(FakeContext(save=FILTER_EMPTY, sets="", nft=_nft_table(drop_first=True, svc=[]), ping=ping))
    errors = [f.summary for f in by(fs, "nfqueue-rules", "error")]
    assert any("does not hold lbd's chains" in e for e in errors), errors
    assert any("1 set element lbd's services need is not in table ip lbd-q0" in e for e in errors), errors
    fs = run_checks(FakeContext(save=FILTER_EMPTY, sets="", nft="", ping=ping))
    assert any("table ip lbd-q0 is missing" in f.summary for f in by(fs, "nfqueue-rules", "error"))
    # --down-policy closed: a queue rule without bypass is lbd's own
    closed = {**ping, "down_policy": "closed"}
    fs = run_checks(FakeContext(save=FILTER_EMPTY, sets="", nft=_nft_table(bypass=False), ping=closed))
    assert not problems(by(fs, "nfqueue-rules")), by(fs, "nfqueue-rules")
    # --queue-balance (which ping does not report): its queue rule is lbd's too
    balanced = _nft_table().replace('queue num 0 bypass comment "lbd q0 queue 0 bypass"',
                                    'queue num 0-3 bypass comment "lbd q0 queues 0-3 bypass"')
    fs = run_checks(FakeContext(save=FILTER_EMPTY, sets="", nft=balanced, ping=ping))
    assert not problems(by(fs, "nfqueue-rules")), by(fs, "nfqueue-rules")


def _nft_input_tables(netdev: str | None) -> str:
    """`nft list ruleset` of an lbd with its default steering (input hook, NAT replies at ingress):
    the ip table with one NAT destination's elements, and `netdev` (None: no netdev table)."""
    from lb import natingress as ni
    from lb import nftsteer as ns

    rip = RIPS[0]
    el = {"addr": [VIP], "svc": [f"{VIP} . tcp . 80"], "nat": [f"{rip} . tcp . 80"], "natrip": [rip]}
    lines = ["table ip lbd-q0 {"]
    for kind in ns.ips.KINDS:
        lines += [f"\tset {kind.suffix} {{", f"\t\ttype {ns.SET_TYPES[kind.type]}"]
        if kind.suffix in el:
            lines.append("\t\telements = { " + ", ".join(el[kind.suffix]) + " }")
        lines.append("\t}")
    m = ns.NftManager(0, runner=lambda *a: None, hook="input", nat_replies="ingress")  # type: ignore[arg-type]
    for name, rules in m._want(True).items():
        rules = ['queue num 0 bypass comment "lbd q0 queue 0 bypass"' if r == ns.QUEUE_KEY else r for r in rules]
        hook = ns.HOOK_LINES.get(name)
        lines += [f"\tchain {name} {{", *([f"\t\t{hook}"] if hook else []), *[f"\t\t{r}" for r in rules], "\t}"]
    lines.append("}")
    if netdev is not None:
        lines += ["table netdev lbd-q0 {", f"\tset natrip {{\n\t\ttype ipv4_addr\n\t\telements = {{ {netdev} }}\n\t}}",
                  "\tchain rs {", '\t\ttype filter hook ingress device "eth1" priority -500; policy accept;',
                  *[f"\t\t{r}" for r in ni.rs_rules("lbnr0")], "\t}", "}"]
    return "\n".join(lines) + "\n"


def test_nat_replies_at_ingress_are_read_from_lbds_netdev_table() -> None:
    ping = {"version": "0.1", "engine": "c", "queue_num": 0, "steering": "nftables", "steering_hook": "input",
            "nat_replies": "ingress", "down_policy": "open"}
    s = {"list": listing([{**dest(RIPS[0], "masq")}]), "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(save=FILTER_EMPTY, sets="", nft=_nft_input_tables(RIPS[0]), ping=ping, samples=[s, s]))
    assert not problems(by(fs, "nfqueue-rules")), by(fs, "nfqueue-rules")
    assert any("NAT replies taken at ingress" in f.summary for f in by(fs, "nfqueue-rules", "info"))
    fs = run_checks(FakeContext(save=FILTER_EMPTY, sets="", nft=_nft_input_tables(None), ping=ping, samples=[s, s]))
    assert any("table netdev lbd-q0 is missing" in f.summary for f in by(fs, "nfqueue-rules", "error"))
    fs = run_checks(FakeContext(save=FILTER_EMPTY, sets="", nft=_nft_input_tables(RIPS[1]), ping=ping, samples=[s, s]))
    assert any("1 address missing" in f.summary for f in by(fs, "nfqueue-rules", "error")), by(fs, "nfqueue-rules")
