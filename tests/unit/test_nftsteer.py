"""lb.nftsteer and lb.nftqueue without privileges: the table's text, the element conversion, the
listing parser, the scripts NftManager sends (nft faked), and the netlink bytes of the queue rule."""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from lb import ipsets as ips
from lb import iptlayout as iptl
from lb import nftqueue as nq
from lb import nftsteer as ns
from lb.ipsets import Steering
from lb.steerwatch import _attrs

TCP, UDP = 6, 17

# what nft 1.0.6 printed for a table lbd made (netns test run), trimmed to what matters
LISTING = """table ip lbd-q3 { # handle 7
\tset addr { # handle 1
\t\ttype ipv4_addr
\t\tsize 1048576
\t\telements = { 10.0.0.1, 10.0.0.2,
\t\t\t     10.2.0.1 }
\t}
\tset svc { # handle 2
\t\ttype ipv4_addr . inet_proto . inet_service
\t\tsize 1048576
\t\telements = { 10.0.0.1 . udp . 53,
\t\t\t     10.0.0.1 . tcp . http }
\t}
\tset fnat { # handle 5
\t\ttype ipv4_addr . inet_proto . inet_service . ipv4_addr
\t\tsize 1048576
\t\telements = { 10.1.0.1 . 6 . 80 . 10.2.0.1 }
\t}
\tchain go { # handle 12
\t\tnotrack # handle 20
\t\tqueue num 3 bypass comment "lbd q3 queue 3 bypass" # handle 23
\t\tmeta l4proto tcp tproxy to 127.0.0.1:1 comment "lbd q3 defrag: never reached" # handle 21
\t}
\tchain pre { # handle 13
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr != @addr ip saddr != @natrip return # handle 30
\t}
}
"""


# ---------------------------------------------------------------- text


def test_elements_convert_both_ways() -> None:
    assert ns.to_nft("10.0.0.1") == "10.0.0.1"
    assert ns.to_nft("10.0.0.1,tcp:80") == "10.0.0.1 . tcp . 80"
    assert ns.to_nft("10.1.0.1,udp:53,10.2.0.1") == "10.1.0.1 . udp . 53 . 10.2.0.1"
    for e in ("10.0.0.1", "10.0.0.1,tcp:80", "10.1.0.1,udp:53,10.2.0.1"):
        assert ns.from_nft(ns.to_nft(e)) == e
    # other nft versions print service names and protocol numbers
    assert ns.from_nft("10.0.0.1 . tcp . http") == "10.0.0.1,tcp:80"
    assert ns.from_nft("10.0.0.1 . 17 . 53") == "10.0.0.1,udp:53"


def test_every_set_kind_has_an_nft_type_of_the_same_fields() -> None:
    for kind in ips.KINDS:
        fields = ns.SET_TYPES[kind.type].split(" . ")
        assert len(fields) == {"hash:ip": 1, "hash:ip,port": 3, "hash:ip,port,ip": 4}[kind.type]
        assert f"set {kind.suffix} {{ type {ns.SET_TYPES[kind.type]};" in ns.set_decl(kind)


def test_chain_rules_are_lb_iptables_rules_in_nft_words() -> None:
    """Same order, same sets, the same `addrtype ! LOCAL` rules; the first rule lets routed traffic go."""
    nft, xt = ns.chain_rules(), iptl.chain_rules(0)
    assert len(nft) == len(xt) == 13
    assert nft[0] == "ip daddr != @addr ip saddr != @natrip return"
    for a, b in zip(nft, xt, strict=True):
        assert [w[1:] for w in a.split() if w.startswith("@")] == \
            [w.split("-", 2)[2] for w in b.split() if w.startswith("lbd-q0-")]
        assert ("fib daddr type != local" in a) == ("--dst-type LOCAL" in b)
        assert a.endswith("return") == b.endswith("RETURN")
        for proto in ("tcp", "udp", "icmp"):
            assert (f"meta l4proto {proto} " in a) == (f"-p {proto} " in b)


def test_go_and_out_rules() -> None:
    assert ns.go_rules(3, track=False) == ["notrack", ns.QUEUE_KEY, ns.defrag_rule(3)]
    assert ns.go_rules(3, track=True) == [ns.QUEUE_KEY, ns.defrag_rule(3)]
    assert ns.out_rules(3, track=False) == ["meta mark 0x4c420003 notrack"]
    assert ns.out_rules(3, track=True) == []
    assert "tproxy" in ns.defrag_rule(3)  # nft_tproxy turns on nf_defrag_ipv4; nft_socket does not


def test_listing_parsed() -> None:
    got = ns.parse_listing(LISTING)
    assert got.exists
    assert got.elements["addr"] == {"10.0.0.1", "10.0.0.2", "10.2.0.1"}
    assert got.elements["svc"] == {"10.0.0.1,udp:53", "10.0.0.1,tcp:80"}
    assert got.elements["fnat"] == {"10.1.0.1,tcp:80,10.2.0.1"}
    assert got.set_types["fnat"] == ns.SET_TYPES["hash:ip,port,ip"]
    assert got.chains["go"].rules[1] == 'queue num 3 bypass comment "lbd q3 queue 3 bypass"'
    assert got.chains["go"].handles == [20, 23, 21]
    assert got.chains["pre"].hook == ns.HOOK_LINES["pre"]
    assert got.chains["pre"].rules == ["ip daddr != @addr ip saddr != @natrip return"]


# ---------------------------------------------------------------- the queue rule's bytes


def messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, off = [], 0
    while off < len(data):
        length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        out.append((mtype, flags, seq, data[off + 16:off + length]))
        off += (length + 3) & ~3
    return out


def attr_map(data: bytes, start: int = 0) -> dict[int, bytes]:
    return {t: data[a:b] for t, a, b in _attrs(data, start, len(data))}


def test_xt_nfqueue_rule_bytes() -> None:
    spec = nq.spec_of(3, None, bypass=True, cpu_fanout=False)
    batch = nq.rule_batch("lbd-q3", "go", spec, spec.comment(3), native=False, before_handle=21, seq=7)
    msgs = messages(batch)
    assert [m[0] for m in msgs] == [nq.NFNL_MSG_BATCH_BEGIN, (10 << 8) | nq.NFT_MSG_NEWRULE, nq.NFNL_MSG_BATCH_END]
    assert [m[2] for m in msgs] == [7, 8, 9]
    assert struct.unpack_from("=BBH", msgs[0][3]) == (socket.AF_UNSPEC, 0, socket.htons(10))
    mtype, flags, _seq, body = msgs[1]
    assert flags == nq.NLM_F_REQUEST | nq.NLM_F_CREATE | nq.NLM_F_ACK  # inserted, not appended
    assert body[0] == nq.NFPROTO_IPV4
    attrs = attr_map(body, 4)
    assert attrs[nq.NFTA_RULE_TABLE] == b"lbd-q3\0" and attrs[nq.NFTA_RULE_CHAIN] == b"go\0"
    assert struct.unpack(">Q", attrs[nq.NFTA_RULE_POSITION]) == (21,)
    assert attrs[nq.NFTA_RULE_USERDATA][:2] == bytes([0, len(b"lbd q3 queue 3 bypass") + 1])
    elem = attr_map(attr_map(attrs[nq.NFTA_RULE_EXPRESSIONS])[nq.NFTA_LIST_ELEM])
    assert elem[nq.NFTA_EXPR_NAME] == b"target\0"
    data = attr_map(elem[nq.NFTA_EXPR_DATA])
    assert data[nq.NFTA_TARGET_NAME] == b"NFQUEUE\0"
    assert struct.unpack(">I", data[nq.NFTA_TARGET_REV]) == (3,)
    # struct xt_NFQ_info_v3 {u16 queuenum, queues_total, flags}, host order, XT_ALIGNed to 8
    assert data[nq.NFTA_TARGET_INFO] == struct.pack("=HHH", 3, 1, nq.NFQ_FLAG_BYPASS) + b"\0\0"


def test_native_queue_rule_bytes_and_flags() -> None:
    spec = nq.spec_of(4, (4, 7), bypass=False, cpu_fanout=True)
    assert (spec.num, spec.total, spec.flags) == (4, 4, nq.NFQ_FLAG_CPU_FANOUT)
    assert spec.comment(4) == "lbd q4 queues 4-7 fanout"
    batch = nq.rule_batch("lbd-q4", "go", spec, spec.comment(4), native=True)
    _t, flags, _s, body = messages(batch)[1]
    assert flags & nq.NLM_F_APPEND
    attrs = attr_map(body, 4)
    assert nq.NFTA_RULE_POSITION not in attrs
    elem = attr_map(attr_map(attrs[nq.NFTA_RULE_EXPRESSIONS])[nq.NFTA_LIST_ELEM])
    assert elem[nq.NFTA_EXPR_NAME] == b"queue\0"
    data = attr_map(elem[nq.NFTA_EXPR_DATA])
    assert [struct.unpack(">H", data[k][:2])[0] for k in (1, 2, 3)] == [4, 4, nq.NFQ_FLAG_CPU_FANOUT]


def test_queue_spec_validation_matches_iptables() -> None:
    with pytest.raises(ValueError):
        nq.spec_of(0, None, True, cpu_fanout=True)
    with pytest.raises(ValueError):
        nq.spec_of(0, (5, 4), True, False)
    assert nq.spec_of(2, None, True, False).flags == nq.NFQ_FLAG_BYPASS


def test_ack_errno() -> None:
    ok = struct.pack("=IHHII", 36, nq.NLMSG_ERROR, 0, 8, 0) + struct.pack("=i", 0) + b"\0" * 16
    refused = struct.pack("=IHHII", 36, nq.NLMSG_ERROR, 0, 8, 0) + struct.pack("=i", -2) + b"\0" * 16
    assert nq.ack_errno(ok, 8) == 0
    assert nq.ack_errno(refused, 8) == 2
    assert nq.ack_errno(ok, 9) is None  # another message's acknowledgement
    assert nq.ack_errno(ok[:10], 8) is None  # truncated: bounds-checked


# ---------------------------------------------------------------- the manager with nft faked


class FakeNft:
    """nft's behaviour for lbd's table: the listing is what the test sets; scripts are recorded."""

    def __init__(self) -> None:
        self.listing: str | None = None
        self.netdev_listing: str | None = None  # lbd's netdev table (--nat-replies ingress)
        self.calls: list[tuple[list[str], str | None]] = []
        self.queue_rules: list[dict[str, Any]] = []
        self.fail_scripts = False  # `nft -f` refuses every transaction

    def __call__(self, cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        cmd = list(cmd)
        self.calls.append((cmd, stdin))
        if cmd[0] == "nft" and "list" in cmd:
            listing = self.netdev_listing if "netdev" in cmd else self.listing
            if listing is None:
                return subprocess.CompletedProcess(cmd, 1, "", "Error: No such file or directory\n")
            return subprocess.CompletedProcess(cmd, 0, listing, "")
        if self.fail_scripts and cmd[:2] == ["nft", "-f"]:
            return subprocess.CompletedProcess(cmd, 1, "", "Error: Could not process rule: No buffer space available\n")
        if cmd[0] == "iptables" and "-S" in cmd:
            return subprocess.CompletedProcess(cmd, 0, "-P PREROUTING ACCEPT\n", "")
        if cmd[0] == "ipset":
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def queue_writer(self, table: str, chain: str, spec: nq.QueueSpec, comment: str, **kw: Any) -> None:
        self.queue_rules.append({"table": table, "chain": chain, "spec": spec, "comment": comment, **kw})

    def scripts(self) -> list[str]:
        return [stdin for cmd, stdin in self.calls if cmd[:2] == ["nft", "-f"] and stdin]


def manager(fake: FakeNft, **kw: Any) -> ns.NftManager:
    return ns.NftManager(3, runner=fake, queue_writer=fake.queue_writer, **kw)


def healthy_listing(m: ns.NftManager, elements: dict[str, list[str]] | None = None) -> str:
    """What nft would list for lbd's table in good health."""
    lines = [f"table ip {m.table} {{"]
    for kind in ips.KINDS:
        lines += [f"\tset {kind.suffix} {{", f"\t\ttype {ns.SET_TYPES[kind.type]}", "\t\tsize 1048576"]
        el = (elements or {}).get(kind.suffix)
        if el:
            lines.append("\t\telements = { " + ", ".join(ns.to_nft(e) for e in el) + " }")
        lines.append("\t}")
    queue = f'queue num 3 bypass comment "{m.spec.comment(3)}"'
    for name, want in m._want(bool((elements or {}).get("natrip"))).items():
        rules = [queue if r == ns.QUEUE_KEY else r for r in want]
        lines.append(f"\tchain {name} {{")
        if name in ns.HOOK_LINES:
            lines.append(f"\t\t{ns.HOOK_LINES[name]}")
        lines += [f"\t\t{r} # handle {i + 10}" for i, r in enumerate(rules)]
        lines.append("\t}")
    return "\n".join([*lines, "}"]) + "\n"


def test_setup_creates_the_table_in_one_script_then_inserts_the_queue_rule() -> None:
    fake = FakeNft()
    m = manager(fake)
    m.ipt_available = lambda: False  # type: ignore[method-assign]
    fake.listing = healthy_listing(m)  # what the read-back after the script shows
    m.setup()
    (script,) = fake.scripts()
    lines = script.splitlines()
    assert lines[:3] == ["add table ip lbd-q3", "delete table ip lbd-q3", "add table ip lbd-q3"]  # leftovers go
    assert sum(1 for line in lines if line.startswith("add set ")) == len(ips.KINDS)
    assert "add chain ip lbd-q3 pre { type filter hook prerouting priority raw; policy accept; }" in lines
    assert "add rule ip lbd-q3 pre ip daddr != @addr ip saddr != @natrip return" in lines
    assert "add rule ip lbd-q3 out meta mark 0x4c420003 notrack" in lines
    assert not any("queue" in line for line in lines)  # the queue rule goes over netlink
    (rule,) = fake.queue_rules
    assert rule["chain"] == "go" and rule["before_handle"] == 12  # the defrag rule's handle (third rule listed)
    assert rule["native"] is True and rule["spec"].flags == nq.NFQ_FLAG_BYPASS


def test_setup_falls_back_to_the_xtables_target_without_nft_queue() -> None:
    fake = FakeNft()
    m = manager(fake, bypass=False)
    m.ipt_available = lambda: False  # type: ignore[method-assign]
    fake.listing = healthy_listing(m)
    tried: list[bool] = []

    def writer(*args: Any, native: bool, **kw: Any) -> None:
        tried.append(native)
        if native:
            raise nq.NetlinkError(2, "no nft_queue")

    m._queue_writer = writer
    m.setup()
    assert tried == [True, False] and m.native_queue is False


def test_sync_sends_the_difference_and_heals_nothing_that_is_intact() -> None:
    fake = FakeNft()
    m = manager(fake)
    fake.listing = healthy_listing(m, {"addr": ["10.0.0.9"], "svc": ["10.0.0.9,tcp:80"]})
    st = Steering(services={(TCP, "10.0.0.1", 80)}, nat_replies={(UDP, "10.3.0.2", 0)})
    plan = m.sync(st)
    (script,) = fake.scripts()
    assert script.splitlines() == [
        "add element ip lbd-q3 addr { 10.0.0.1 }",
        "add element ip lbd-q3 svc { 10.0.0.1 . tcp . 80 }",
        "add element ip lbd-q3 natrip { 10.3.0.2 }",
        "add element ip lbd-q3 natudp0 { 10.3.0.2 }",
        "delete element ip lbd-q3 svc { 10.0.0.9 . tcp . 80 }",
        "delete element ip lbd-q3 addr { 10.0.0.9 }",
    ]
    assert (plan.added, plan.deleted, plan.rewritten) == (4, 2, [])
    assert fake.queue_rules == []


def test_apply_of_a_delta_sends_only_the_delta_while_the_generation_is_lbds() -> None:
    fake = FakeNft()
    m = manager(fake)
    fake.listing = healthy_listing(m)
    gen = [100]
    m._generation = lambda: gen[0]
    m.sync(Steering())  # nothing to send: the table is intact at generation 100
    assert m._intact_gen == 100
    fake.calls.clear()
    delta = ips.SetDelta()
    delta.added[ips.SVC].add("10.0.0.1,tcp:80")
    delta.added[ips.ADDR].add("10.0.0.1")

    def elements() -> dict[ips.SetKind, set[str]]:
        raise AssertionError("the whole content must not be needed for a delta")

    gen[0] = 100

    def script(lines: list[str]) -> None:  # nft -f: one transaction, the generation moves by one
        fake.calls.append((["nft", "-f", "-"], "\n".join(lines)))
        gen[0] += 1

    m._script = script  # type: ignore[method-assign]
    plan = m.apply(delta, elements, set())
    assert (plan.added, plan.deleted) == (2, 0)
    assert [c for c, _ in fake.calls if "list" in c] == []  # the table was not read
    assert fake.scripts() == ["add element ip lbd-q3 addr { 10.0.0.1 }\nadd element ip lbd-q3 svc { 10.0.0.1 . tcp . 80 }"]
    assert m._intact_gen == 101  # only lbd's own transaction happened
    assert m.damage() == []  # nothing read either


def test_damage_names_what_is_missing_and_repair_rewrites_it() -> None:
    fake = FakeNft()
    m = manager(fake)
    fake.listing = healthy_listing(m, {"svc": ["10.0.0.1,tcp:80"], "addr": ["10.0.0.1"]})
    m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    assert m.damage() == []
    broken = healthy_listing(m, {"addr": ["10.0.0.1"]}).replace(
        "\t\tip daddr != @addr ip saddr != @natrip return # handle 10\n", "")
    fake.listing = broken
    found = m.damage()
    assert found == ["nft lbd-q3 pre holds 12 rules, not lbd's 13", "nft set lbd-q3 svc holds 0 of its 1 elements"]
    fake.calls.clear()
    plan = m.repair(Steering(services={(TCP, "10.0.0.1", 80)}))
    (script,) = fake.scripts()
    assert "flush chain ip lbd-q3 pre" in script and "add element ip lbd-q3 svc { 10.0.0.1 . tcp . 80 }" in script
    assert plan.rewritten == ["pre"] and fake.queue_rules == []  # go was intact: its queue rule stays
    fake.listing = None
    assert m.damage() == ["nft table ip lbd-q3 gone"]


def test_a_missing_table_is_recreated_whole_by_repair() -> None:
    fake = FakeNft()
    m = manager(fake)
    fake.listing = None
    listings = iter([None])

    def runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        if "list" in cmd:
            fake.listing = next(listings, healthy_listing(m))
        return fake(cmd, stdin)

    m._runner = runner
    plan = m.repair(Steering(services={(TCP, "10.0.0.1", 80)}))
    (script,) = fake.scripts()
    assert script.startswith("add table ip lbd-q3\ndelete table ip lbd-q3\n")
    assert "add element ip lbd-q3 svc { 10.0.0.1 . tcp . 80 }" in script
    assert plan.rewritten == ["go", "pre", "out"] and len(fake.queue_rules) == 1


def test_a_queue_rule_with_other_parameters_is_damage() -> None:
    """The comment names the queue and its flags: an adopted table of a bypass lbd is rewritten
    by a --down-policy closed one."""
    fake = FakeNft()
    m = manager(fake, bypass=False)
    fake.listing = healthy_listing(ns.NftManager(3, runner=fake))  # written with bypass
    assert m.damage() == ["nft lbd-q3 go holds 3 rules, not lbd's 3"]


def test_teardown_deletes_the_table_only() -> None:
    fake = FakeNft()
    m = manager(fake)
    m.ipt_available = lambda: False  # type: ignore[method-assign]
    fake.listing = healthy_listing(m)
    m.teardown()
    assert [c for c, _ in fake.calls if "delete" in c] == [["nft", "delete", "table", "ip", "lbd-q3"]]
    fake.calls.clear()
    fake.listing = None
    m.teardown()  # idempotent
    assert [c for c, _ in fake.calls if "delete" in c] == []


def test_track_leaves_out_notrack_and_the_output_chain() -> None:
    fake = FakeNft()
    m = manager(fake, track=True)
    script = "\n".join(m._create_lines())
    assert "notrack" not in script and " out " not in script
    assert not m.adoptable() or fake.listing is not None


def test_steerwatch_uses_the_generation_for_sets_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from lb import steerwatch

    monkeypatch.setattr(steerwatch, "nft_generation", lambda: 5)
    monkeypatch.setattr(steerwatch, "ipset_counts", lambda: {})
    m = ns.NftManager(0)
    assert steerwatch.generation_source(m) is steerwatch.nft_generation
    assert steerwatch.set_counts_source(m) is None
    assert m.set_damage(None) == []


def test_the_option_chooses_the_manager() -> None:
    from lb import daemon
    from lb.iptables import RuleManager

    # The default: lbd's own table at the input hook, where kernel IPVS takes packets (issue 15 item 1).
    args = daemon.parse_args([])
    assert (args.steering, args.steer_hook) == ("nftables", "input")
    rules = daemon.make_rules(args)
    assert isinstance(rules, ns.NftManager) and rules.hook == "input" and rules.spec.bypass
    args = daemon.parse_args(["--steering", "iptables"])
    assert args.steer_hook == "prerouting" and isinstance(daemon.make_rules(args), RuleManager)
    args = daemon.parse_args(["--steering", "nftables", "--steer-hook", "prerouting", "--down-policy", "closed",
                              "--queue-num", "2"])
    rules = daemon.make_rules(args)
    assert isinstance(rules, ns.NftManager) and rules.table == "lbd-q2" and not rules.spec.bypass
    assert rules.hook == "prerouting"
    assert isinstance(daemon.make_rules(args, cleanup=True), ns.NftManager)


def test_a_hook_iptables_steering_cannot_have_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from lb import daemon

    with pytest.raises(SystemExit) as exc:
        daemon.parse_args(["--steering", "iptables", "--steer-hook", "input"])
    assert exc.value.code == 2
    assert "--steer-hook input needs --steering nftables" in capsys.readouterr().err
    assert daemon.parse_args(["--steering", "iptables", "--steer-hook", "prerouting"]).steer_hook == "prerouting"


def test_without_iptables_only_fwmark_services_are_refused() -> None:
    fake = FakeNft()
    m = manager(fake)
    m.ipt_available = lambda: False  # type: ignore[method-assign]
    fake.listing = healthy_listing(m)
    m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    assert not [c for c, _ in fake.calls if c[0] in ("iptables", "ipset")]
    with pytest.raises(ns.NftError, match="fwmark services are queued from iptables"):
        m.sync(Steering(fwmarks={7}))


def test_an_empty_iptables_raw_hook_is_deleted_one_with_rules_or_a_drop_policy_kept() -> None:
    def listing(chain: str, body: str) -> str:
        return f"table ip raw {{\n\tchain {chain} {{\n{body}\t}}\n}}\n"

    chains = {"PREROUTING": listing("PREROUTING", "\t\ttype filter hook prerouting priority raw; policy accept;\n"),
              "OUTPUT": listing("OUTPUT", "\t\ttype filter hook output priority raw; policy drop;\n")}
    deleted: list[list[str]] = []

    def runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        cmd = list(cmd)
        if cmd[1] == "list":
            return subprocess.CompletedProcess(cmd, 0, chains[cmd[-1]], "")
        deleted.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    ns.NftManager(0, runner=runner)._drop_empty_raw_hooks()
    assert deleted == [["nft", "delete", "chain", "ip", "raw", "PREROUTING"]]
    chains["PREROUTING"] = listing("PREROUTING", "\t\ttype filter hook prerouting priority raw; policy accept;\n"
                                                 "\t\tcounter packets 0 bytes 0 drop\n")
    deleted.clear()
    ns.NftManager(0, runner=runner)._drop_empty_raw_hooks()
    assert deleted == []


def test_only_the_first_rules_sets_are_fixed_size_hashes() -> None:
    """A sized set's buckets are allocated at creation (16 MiB per set at 1,048,576: ~190 MiB for lbd's
    table); only addr and natrip, which every packet through the director meets, are sized."""
    decls = {k.suffix: ns.set_decl(k) for k in ips.KINDS}
    sized = {name for name, d in decls.items() if " size " in d}
    assert sized == {"addr", "natrip"}
    assert f"size {ns.FAST_SET_SIZE};" in decls["addr"] and ns.FAST_SET_SIZE <= 1 << 16
    assert decls["svc"] == "set svc { type ipv4_addr . inet_proto . inet_service; }"


# ---------------------------------------------------------------- --steer-hook input


def test_input_layout_has_no_hook_on_the_routed_path_without_nat() -> None:
    """Packets for lbd are taken where kernel IPVS takes them (input, but before the firewall's rules); with
    no NAT real server nothing of lbd's is on the forward path, and nothing at prerouting."""
    fake = FakeNft()
    m = manager(fake, hook="input")
    m.ipt_available = lambda: False  # type: ignore[method-assign]
    fake.listing = healthy_listing(m)
    m.setup()
    (script,) = fake.scripts()
    assert "add chain ip lbd-q3 input { type filter hook input priority mangle - 1; policy accept; }" in script
    assert "prerouting" not in script and "forward" not in script and "tproxy" not in script
    assert "add rule ip lbd-q3 input ip daddr != @addr return" in script
    assert "notrack" not in script.split("add chain ip lbd-q3 out")[0]  # at input conntrack has seen the packet
    (queue,) = fake.queue_rules
    assert queue["chain"] == "go" and queue["before_handle"] is None  # appended: go holds nothing else
    assert m.damage() == []


def test_input_layout_rules_cover_the_prerouting_rules() -> None:
    """Every rule of `pre` is in `input` (local destinations) or `forward` (NAT replies), same sets."""
    def sets(rule: str) -> list[str]:
        return [w for w in rule.split() if w.startswith("@") and w != "@natrip"]  # forward's first rule tests it

    pre = [sets(r) for r in ns.chain_rules()[1:] if "return" not in r]
    split = [sets(r) for r in ns.input_rules()[1:] + ns.forward_rules()[1:]]
    assert sorted(map(tuple, pre)) == sorted(map(tuple, split))
    assert ns.input_rules()[0] == "ip daddr != @addr return"
    assert ns.forward_rules()[0] == "ip saddr != @natrip return"
    assert not any("fib" in r for r in ns.input_rules() + ns.forward_rules())  # the hook says local or not


def nat_steering() -> Steering:
    return Steering(services={(TCP, "10.0.0.1", 80)}, nat_replies={(TCP, "10.9.0.5", 8080)})


def test_input_layout_forward_chain_comes_and_goes_with_nat_real_servers() -> None:
    fake = FakeNft()
    m = manager(fake, hook="input")
    m.ipt_available = lambda: False  # type: ignore[method-assign]
    fake.listing = healthy_listing(m)
    m.setup()
    fake.calls.clear()
    m._generation = lambda: 5  # nothing but lbd wrote: the delta path
    m._intact_gen = 5
    with_nat = nat_steering().elements()
    delta = ips.SetDelta(added={k: set(v) for k, v in with_nat.items()})
    plan = m.apply(delta, lambda: with_nat, set())
    (script,) = fake.scripts()
    assert "add chain ip lbd-q3 forward { type filter hook forward priority mangle - 1; policy accept; }" in script
    assert "add rule ip lbd-q3 forward ip saddr != @natrip return" in script
    assert 'add rule ip lbd-q3 defrag meta l4proto tcp tproxy' in script  # fragments of NAT replies reassembled
    assert "forward" in plan.rewritten and "defrag" in plan.rewritten
    fake.calls.clear()
    m._intact_gen = 5
    delta = ips.SetDelta(removed={k: set(v) for k, v in with_nat.items() if k is not ips.ADDR and k is not ips.SVC})
    m.apply(delta, lambda: Steering(services={(TCP, "10.0.0.1", 80)}).elements(), set())
    (script,) = fake.scripts()
    assert "flush chain ip lbd-q3 forward\ndelete chain ip lbd-q3 forward" in script
    assert "delete chain ip lbd-q3 defrag" in script


def test_input_layout_damage_names_chains_of_the_other_layout() -> None:
    fake = FakeNft()
    pre = manager(fake)
    fake.listing = healthy_listing(pre)  # a table a prerouting lbd left (--down-policy closed)
    m = manager(fake, hook="input")
    m.installed = {k: set() for k in ips.KINDS}
    problems = m.damage()
    assert any("pre is not one of lbd's with --steer-hook input" in p for p in problems)
    assert any("input gone" in p for p in problems)
    fake.listing = healthy_listing(m, {"natrip": ["10.9.0.5"]})  # NAT chains left after the last NAT dest went
    assert any("forward is not one of lbd's" in p and "no NAT real server" in p for p in m.damage())
    m.installed[ips.NATRIP] = {"10.9.0.5"}
    assert m.damage() == []


def test_steer_hook_is_checked() -> None:
    with pytest.raises(ValueError, match="steering hook"):
        ns.NftManager(0, hook="forward")
