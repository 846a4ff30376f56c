"""lb.iptables and lb.ipsets without privileges: rule text, set elements, the incremental set
diff, and the transactions sent (iptables and ipset faked)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from lb import ipsets as ips
from lb import iptables as ipt
from lb import iptlayout as iptl
from lb.ipsets import Steering
from lb.iptables import ChainMissingError, IptablesError, RuleManager
from lb.iptrules import parse_table, rule_key

TCP, UDP = 6, 17
CHAIN = "LBD-Q3"
QUEUE = "-j NFQUEUE --queue-num 3 --queue-bypass"
JUMP3 = "-A PREROUTING -j LBD-Q3"
OUT_JUMP3 = '-A OUTPUT -m comment --comment "lbd q3 out" -j LBD-Q3-OUT'
OUT_RULE3 = "-A LBD-Q3-OUT -m mark --mark 0x4c420003 -j CT --notrack"
OUT_OK = ["-N LBD-Q3-OUT", OUT_JUMP3, OUT_RULE3]  # a healthy LBD-Q3-OUT as `-S` prints it
DEFRAG3 = '-A LBD-Q3-GO -m socket --transparent -m comment --comment "lbd q3 defrag" -j RETURN'
GO3 = ["-A LBD-Q3-GO -j CT --notrack", f"-A LBD-Q3-GO {QUEUE}", DEFRAG3]
HEALTHY = ["-N LBD-Q3", "-N LBD-Q3-GO", JUMP3, *iptl.chain_rules(3), *GO3, *OUT_OK]


# ---------------------------------------------------------------- rule text and set elements


def test_names_jump_and_fixed_rules() -> None:
    assert iptl.chain_name(3) == "LBD-Q3" and iptl.go_chain_name(3) == "LBD-Q3-GO"
    assert iptl.jump_rule(3) == JUMP3
    assert iptl.chain_rules(3) == [
        "-A LBD-Q3 -m set ! --match-set lbd-q3-addr dst -m set ! --match-set lbd-q3-natrip src -j RETURN",
        "-A LBD-Q3 -m set --match-set lbd-q3-nat src,src -m addrtype ! --dst-type LOCAL -j LBD-Q3-GO",
        "-A LBD-Q3 -p icmp -m set --match-set lbd-q3-natrip src -m addrtype ! --dst-type LOCAL -j LBD-Q3-GO",
        "-A LBD-Q3 -p tcp -m set --match-set lbd-q3-nattcp0 src -m addrtype ! --dst-type LOCAL -j LBD-Q3-GO",
        "-A LBD-Q3 -p udp -m set --match-set lbd-q3-natudp0 src -m addrtype ! --dst-type LOCAL -j LBD-Q3-GO",
        "-A LBD-Q3 -m set ! --match-set lbd-q3-addr dst -j RETURN",
        "-A LBD-Q3 -m set --match-set lbd-q3-svc dst,dst -j LBD-Q3-GO",
        "-A LBD-Q3 -p tcp -m set --match-set lbd-q3-tcp0 dst -j LBD-Q3-GO",
        "-A LBD-Q3 -p udp -m set --match-set lbd-q3-udp0 dst -j LBD-Q3-GO",
        "-A LBD-Q3 -p icmp -j LBD-Q3-GO",
        "-A LBD-Q3 -m set --match-set lbd-q3-fnat src,src,dst -j LBD-Q3-GO",
        "-A LBD-Q3 -p tcp -m set --match-set lbd-q3-fnattcp0 src -j LBD-Q3-GO",
        "-A LBD-Q3 -p udp -m set --match-set lbd-q3-fnatudp0 src -j LBD-Q3-GO",
    ]
    assert iptl.go_rules(3, QUEUE) == GO3
    assert iptl.go_rules(3, QUEUE, track=True) == [GO3[1], DEFRAG3]
    # the reassembly rule is never reached: it comes after the terminal NFQUEUE rule
    assert iptl.go_rules(3, QUEUE)[-1] == iptl.defrag_rule(3)


def test_steering_elements_in_ipset_save_form() -> None:
    st = Steering(services={(TCP, "10.0.0.1", 80), (UDP, "10.0.0.1", 53), (TCP, "10.0.0.2", 0), (UDP, "10.0.0.3", 0)},
                  fnat_replies={(TCP, "10.1.1.1", 8080, "10.2.2.2")}, addrs={"10.2.2.3"})
    el = st.elements()
    assert el[ips.SVC] == {"10.0.0.1,tcp:80", "10.0.0.1,udp:53"}
    assert el[ips.TCP0] == {"10.0.0.2"} and el[ips.UDP0] == {"10.0.0.3"}
    assert el[ips.FNAT] == {"10.1.1.1,tcp:8080,10.2.2.2"}
    assert el[ips.ADDR] == {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.2.2.2", "10.2.2.3"}


@pytest.mark.parametrize(
    "st",
    [
        Steering(services={(1, "10.0.0.1", 80)}),
        Steering(services={(TCP, "10.0.0.256", 80)}),
        Steering(services={(TCP, "::1", 80)}),
        Steering(services={(TCP, "10.0.0.1", 65536)}),
        Steering(fnat_replies={(TCP, "10.0.0.1", -1, "10.0.0.2")}),
    ],
)
def test_invalid_elements_rejected(st: Steering) -> None:
    with pytest.raises(ValueError):
        st.elements()


def test_queue_balance_target() -> None:
    assert iptl.queue_target(0, (2, 3)) == "-j NFQUEUE --queue-balance 2:3 --queue-bypass"
    with pytest.raises(ValueError, match="empty"):
        iptl.queue_target(0, (3, 2))


@pytest.mark.parametrize(
    "call",
    [lambda: iptl.chain_name(65536), lambda: iptl.chain_name(-1), lambda: RuleManager(70000), lambda: RuleManager(0, (5, 1))],
)
def test_invalid_values_rejected(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call()


def test_rule_key_equates_spellings() -> None:
    canonical = "-A LBD-Q3 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j CT --notrack"
    assert rule_key(canonical) == rule_key("-A LBD-Q3 -p tcp -d 10.0.0.1 --dport 80 -j CT --notrack")
    assert rule_key(canonical) != rule_key(canonical.replace("80", "81"))
    assert rule_key(canonical) != rule_key(canonical.replace("-d 10.0.0.1/32", "! -d 10.0.0.1/32"))
    prefilter = next(r for r in iptl.chain_rules(3) if "-addr" in r and "-natrip" not in r)
    assert rule_key(prefilter) != rule_key(prefilter.replace("! --match-set", "--match-set"))


def test_parse_table_finds_only_our_chain_and_jumps() -> None:
    text = "\n".join([
        "-P PREROUTING ACCEPT", "-N LBD-Q3", "-N LBD-Q31",
        '-A PREROUTING -s 10.9.9.9/32 -m comment --comment "foreign" -j CT --notrack',
        JUMP3, '-A PREROUTING -m comment --comment "lbd q31" -j LBD-Q31', "-A PREROUTING -j LBD-Q3",
        *iptl.chain_rules(3), "-A LBD-Q31 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j CT --notrack",
    ])
    state = parse_table(text, CHAIN)
    assert state.chain_exists and state.rules == iptl.chain_rules(3)
    assert state.jumps == [JUMP3, "-A PREROUTING -j LBD-Q3"]
    assert not parse_table("-P PREROUTING ACCEPT\n", CHAIN).chain_exists


def test_parse_ipset_save_and_headers() -> None:
    types, members = ips.parse_save("create lbd-q3-svc hash:ip,port family inet hashsize 1024 maxelem 1048576\n"
                                    "add lbd-q3-svc 10.0.0.1,tcp:80\n")
    assert types == {"lbd-q3-svc": "hash:ip,port"} and members == {"lbd-q3-svc": {"10.0.0.1,tcp:80"}}
    assert ips.parse_headers("Name: a\nType: hash:ip\nNumber of entries: 2\nName: b\nNumber of entries: 0\n") == {
        "a": 2, "b": 0}


# ---------------------------------------------------------------- transactions (fake iptables, fake ipset)


class Fake:
    """Records commands; serves a canned `iptables -S` listing; keeps ip sets like the kernel."""

    def __init__(self, listing: str = "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n", fail_restore: str = "") -> None:
        self.listing = listing
        self.fail_restore = fail_restore
        self.calls: list[tuple[list[str], str | None]] = []
        self.sets: dict[str, tuple[str, set[str]]] = {}

    def __call__(self, cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        cmd = list(cmd)
        self.calls.append((cmd, stdin))
        if "ipset" in cmd:
            return self._ipset(cmd[cmd.index("ipset") + 1:], stdin)
        if "-S" in cmd:
            return subprocess.CompletedProcess(cmd, 0, self.listing, "")
        if _is_restore(cmd) and self.fail_restore:
            return subprocess.CompletedProcess(cmd, 1, "", self.fail_restore)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def _ipset(self, args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        out = ""
        if args[:2] == ["list", "-t"]:
            out = "".join(f"Name: {n}\nType: {t}\nNumber of entries: {len(m)}\n" for n, (t, m) in self.sets.items())
        elif args[0] == "save":
            t, m = self.sets[args[1]]
            out = f"create {args[1]} {t} family inet\n" + "".join(f"add {args[1]} {e}\n" for e in sorted(m))
        elif args[0] == "restore":
            for line in (stdin or "").splitlines():
                w = line.split()
                if w[0] == "create":
                    self.sets.setdefault(w[1], (w[2], set()))
                elif w[0] == "destroy":
                    self.sets.pop(w[1], None)
                elif w[0] == "add":
                    self.sets[w[1]][1].add(w[2])
                elif w[0] == "del":
                    self.sets[w[1]][1].discard(w[2])
        elif args[0] == "destroy":
            self.sets.pop(args[1], None)
        return subprocess.CompletedProcess(args, 0, out, "")

    def scripts(self) -> list[str]:
        return [stdin for cmd, stdin in self.calls if _is_restore(cmd) and "ipset" not in cmd and stdin]

    def set_scripts(self) -> list[str]:
        return [stdin for cmd, stdin in self.calls if "ipset" in cmd and "restore" in cmd and stdin]


def _is_restore(cmd: Sequence[str]) -> bool:
    return any(part.endswith("-restore") for part in cmd)


def test_setup_clears_leftovers_creates_sets_then_rules() -> None:
    fake = Fake("\n".join(["-P PREROUTING ACCEPT", "-N LBD-Q3", JUMP3,
                           "-A LBD-Q3 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j CT --notrack"]))
    RuleManager(3, runner=fake).setup()
    removal, creation = fake.scripts()
    assert removal == f"*raw\n-D{JUMP3[2:]}\n-F LBD-Q3\n-X LBD-Q3\nCOMMIT\n"
    assert creation.splitlines()[1:-1] == [
        ":LBD-Q3-GO - [0:0]", ":LBD-Q3 - [0:0]", *GO3, *iptl.chain_rules(3), JUMP3,
        ":LBD-Q3-OUT - [0:0]", OUT_RULE3, OUT_JUMP3,
    ]
    assert sorted(fake.sets) == sorted(ips.set_name(3, k) for k in ips.KINDS)
    # the sets exist before the rules referring to them are written
    order = [("ipset" in c and "restore" in c, _is_restore(c) and "ipset" not in c and s is not None and ":LBD-Q3-GO" in s)
             for c, s in fake.calls]
    assert order.index((True, False)) < order.index((False, True))


def test_sync_sends_only_the_difference() -> None:
    fake = Fake("\n".join(HEALTHY))
    m = RuleManager(3, runner=fake)
    plan = m.sync(Steering(services={(TCP, "10.0.0.1", 80), (UDP, "10.0.0.1", 53)}))
    assert (plan.added, plan.deleted) == (3, 0) and not plan.rewritten
    assert fake.set_scripts()[-1] == ("add lbd-q3-addr 10.0.0.1\n"
                                      "add lbd-q3-svc 10.0.0.1,tcp:80\nadd lbd-q3-svc 10.0.0.1,udp:53\n")
    plan = m.sync(Steering(services={(TCP, "10.0.0.1", 80), (TCP, "10.0.0.2", 443)}))
    assert (plan.added, plan.deleted) == (2, 1)
    # additions to the pre-filter first; deletions last
    assert fake.set_scripts()[-1] == ("add lbd-q3-addr 10.0.0.2\nadd lbd-q3-svc 10.0.0.2,tcp:443\n"
                                      "del lbd-q3-svc 10.0.0.1,udp:53\n")
    n = len(fake.calls)
    assert m.sync(Steering(services={(TCP, "10.0.0.1", 80), (TCP, "10.0.0.2", 443)})).empty
    assert fake.scripts() == [] and not [c for c, s in fake.calls[n:] if "save" in c]  # no re-read, no restore


def test_a_flushed_set_is_reread_and_refilled_by_a_verifying_sync() -> None:
    fake = Fake("\n".join(HEALTHY))
    m = RuleManager(3, runner=fake)
    st = Steering(services={(TCP, "10.0.0.1", 80)})
    m.sync(st)
    fake.sets["lbd-q3-svc"][1].clear()
    n = len(fake.calls)
    assert m.sync(st).empty  # a configuration change trusts the cache: no `ipset list`, nothing sent
    assert not [c for c, _ in fake.calls[n:] if "ipset" in c]
    assert m.sync(st, verify_sets=True).added == 1
    assert fake.sets["lbd-q3-svc"][1] == {"10.0.0.1,tcp:80"}


def test_a_change_costs_one_ipset_command_and_a_failed_one_rereads_the_kernel() -> None:
    fake = Fake("\n".join(HEALTHY))
    m = RuleManager(3, runner=fake)
    m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    n = len(fake.calls)
    m.sync(Steering(services={(TCP, "10.0.0.1", 80), (TCP, "10.0.0.1", 81)}))
    assert [c[c.index("ipset") + 1] for c, _ in fake.calls[n:] if "ipset" in c] == ["restore"]
    # a restore that fails (maybe half applied): the cache is dropped, the next sync re-reads the sets
    fake.sets.pop("lbd-q3-svc")  # restore into a set that is gone fails
    real = fake._ipset

    def failing(args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        text = stdin or ""
        if args[0] == "restore" and "add lbd-q3-svc" in text and "create lbd-q3-svc" not in text \
                and "lbd-q3-svc" not in fake.sets:
            return subprocess.CompletedProcess(args, 1, "", "The set with the given name does not exist")
        return real(args, stdin)

    fake._ipset = failing  # type: ignore[method-assign]
    with pytest.raises(ipt.IptablesError):
        m.sync(Steering(services={(TCP, "10.0.0.1", 80), (TCP, "10.0.0.1", 82)}))
    assert m.sets.installed is None
    plan = m.sync(Steering(services={(TCP, "10.0.0.1", 80), (TCP, "10.0.0.1", 81)}))
    assert plan.added == 2 and fake.sets["lbd-q3-svc"][1] == {"10.0.0.1,tcp:80", "10.0.0.1,tcp:81"}


def test_adopting_a_previous_lbds_sets_reads_them_once() -> None:
    fake = Fake("\n".join(HEALTHY))
    RuleManager(3, runner=fake).sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    restarted = RuleManager(3, runner=fake)
    plan = restarted.sync(Steering(services={(TCP, "10.0.0.1", 80), (TCP, "10.0.0.1", 81)}))
    assert (plan.added, plan.deleted) == (1, 0)


def test_sync_restores_a_missing_jump_and_rewrites_a_foreign_chain() -> None:
    fake = Fake("\n".join(["-N LBD-Q3", "-N LBD-Q3-GO", *iptl.chain_rules(3), *GO3, *OUT_OK]))
    plan = RuleManager(3, runner=fake).sync(Steering())
    assert plan.jump_added and not plan.rewritten
    assert fake.scripts() == [f"*raw\n{JUMP3}\nCOMMIT\n"]
    old = "-A LBD-Q3 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j NFQUEUE --queue-num 3 --queue-bypass"
    fake = Fake("\n".join(["-N LBD-Q3", JUMP3, old, *OUT_OK]))  # the per-service layout of older lbd's
    plan = RuleManager(3, runner=fake).sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    assert plan.rewritten == ["LBD-Q3", "LBD-Q3-GO"] and plan.added == 2
    (script,) = fake.scripts()
    assert script.splitlines()[1:3] == [":LBD-Q3-GO - [0:0]", ":LBD-Q3 - [0:0]"]  # declaring flushes: one transaction


def test_the_previous_twelve_rule_chain_is_rewritten_in_one_transaction_on_adoption() -> None:
    """An lbd before the routed-traffic first rule left LBD-Q<N> without it (--down-policy closed):
    the adopting lbd's sync fills the sets, then rewrites both chains in one restore (never empty)."""
    previous = iptl.chain_rules(3)[1:]
    fake = Fake("\n".join(["-N LBD-Q3", "-N LBD-Q3-GO", JUMP3, *previous, *GO3, *OUT_OK]))
    m = RuleManager(3, runner=fake)
    assert m.damage() == ["raw LBD-Q3 holds 12 rules, not lbd's 13", *m.set_damage()]
    plan = m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    assert plan.rewritten == ["LBD-Q3", "LBD-Q3-GO"] and plan.added == 2 and not plan.jump_added
    (script,) = fake.scripts()
    assert script.splitlines()[1:-1] == [":LBD-Q3-GO - [0:0]", ":LBD-Q3 - [0:0]", *GO3, *iptl.chain_rules(3)]
    # the jump those lbd's made carried a comment: still lbd's jump, adopted as it is (no second jump)
    commented = '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3'
    fake = Fake("\n".join(["-N LBD-Q3", "-N LBD-Q3-GO", commented, *iptl.chain_rules(3), *GO3, *OUT_OK]))
    m = RuleManager(3, runner=fake)
    assert m.jumps() == [commented] and m.damage() == m.set_damage()
    plan = m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    assert not plan.jump_added and not plan.rewritten and fake.scripts() == []


def test_sync_without_chain_raises() -> None:
    with pytest.raises(ChainMissingError, match="call setup"):
        RuleManager(3, runner=Fake()).sync(Steering())


def test_teardown_removes_only_ours_and_is_idempotent() -> None:
    fake = Fake("\n".join([
        "-N LBD-Q3", "-N LBD-Q3-GO", "-N LBD-Q4", "-N LBD-Q3-OUT", "-N LBD-Q4-OUT",
        "-A PREROUTING -s 10.9.9.9/32 -j CT --notrack", JUMP3,
        '-A PREROUTING -m comment --comment "lbd q4" -j LBD-Q4', OUT_JUMP3,
        '-A OUTPUT -m comment --comment "lbd q4 out" -j LBD-Q4-OUT', *iptl.chain_rules(3), *GO3, OUT_RULE3,
    ]))
    fake.sets = {"lbd-q3-svc": ("hash:ip,port", {"10.0.0.1,tcp:80"}), "lbd-q4-svc": ("hash:ip,port", set()),
                 "lbd-q3-addr": ("hash:ip", set())}
    RuleManager(3, runner=fake).teardown()
    assert fake.scripts() == ["*raw\n" + "\n".join([
        "-D" + JUMP3[2:], "-D" + OUT_JUMP3[2:], "-F LBD-Q3", "-F LBD-Q3-GO", "-F LBD-Q3-OUT",
        "-X LBD-Q3", "-X LBD-Q3-GO", "-X LBD-Q3-OUT",
    ]) + "\nCOMMIT\n"]
    assert list(fake.sets) == ["lbd-q4-svc"]
    empty = Fake()
    RuleManager(3, runner=empty).teardown()
    assert empty.scripts() == [] and empty.set_scripts() == []


def test_errors_carry_command_status_and_stderr() -> None:
    fake = Fake("\n".join(["-N LBD-Q3", JUMP3]), fail_restore="iptables-restore: line 2 failed")
    with pytest.raises(IptablesError) as info:
        RuleManager(3, runner=fake, netns="lbDx").sync(Steering())
    err = info.value
    assert err.returncode == 1
    assert err.cmd[:5] == ["ip", "netns", "exec", "lbDx", "iptables-restore"]
    assert "line 2 failed" in str(err) and "exit status 1" in str(err)
    assert "-A LBD-Q3 -m set" in str(err)  # the failed script is quoted for context


def test_missing_binary_is_an_iptables_error() -> None:
    def runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file", cmd[0])

    with pytest.raises(IptablesError, match="not found"):
        RuleManager(0, iptables="/nonexistent/iptables", runner=runner).rules()


def test_detect_reports_missing_binary() -> None:
    reason = ipt.detect("/nonexistent/iptables")
    assert reason is not None and "not found" in reason


def test_detect_reports_kernel_refusal_and_removes_its_probe_set() -> None:
    calls: list[list[str]] = []

    def runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        if stdin and "*raw" in stdin:
            return subprocess.CompletedProcess(list(cmd), 4, "", "RULE_APPEND failed (No such file or directory)")
        return subprocess.CompletedProcess(list(cmd), 0, "", "")

    reason = ipt.detect("iptables", netns="lbDx", runner=runner)
    assert reason is not None and "NFQUEUE" in reason and "RULE_APPEND failed" in reason
    assert calls[-1][-2] == "destroy" and calls[-1][-1].startswith("lbd-probe-")


def test_detect_probes_the_mark_and_set_matches_too() -> None:
    scripts: list[str] = []

    def runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        if stdin:
            scripts.append(stdin)
        return subprocess.CompletedProcess(list(cmd), 0, "", "")

    assert ipt.detect("iptables", netns="lbDx", runner=runner) is None
    assert "-m mark --mark 0x4c420000 -j CT --notrack" in scripts[1]
    assert "-m set --match-set lbd-probe-" in scripts[1]


# ---------------------------------------------------------------- raw OUTPUT: lbd's own packets


def test_out_chain_names_mark_and_rule_text() -> None:
    assert iptl.SOCKET_MARK_BASE == 0x4C420000
    assert iptl.socket_mark(3) == 0x4C420003 and iptl.socket_mark(65535) == 0x4C42FFFF
    assert iptl.out_chain_name(3) == "LBD-Q3-OUT"
    assert iptl.out_jump_rule(3) == OUT_JUMP3
    assert iptl.out_rules(3) == [OUT_RULE3]
    assert iptl.out_rules(3, track=True) == []
    with pytest.raises(ValueError):
        iptl.socket_mark(65536)


@pytest.mark.parametrize(
    "out_state, want",
    [
        (["-N LBD-Q3-OUT", OUT_JUMP3, OUT_RULE3], []),
        ([], [":LBD-Q3-OUT - [0:0]", OUT_RULE3, OUT_JUMP3]),  # chain deleted by hand
        (["-N LBD-Q3-OUT", OUT_RULE3], [OUT_JUMP3]),  # `iptables -t raw -F OUTPUT`
        (["-N LBD-Q3-OUT", OUT_JUMP3], ["-F LBD-Q3-OUT", OUT_RULE3]),  # chain flushed
        (["-N LBD-Q3-OUT", OUT_JUMP3, OUT_RULE3, "-A LBD-Q3-OUT -j ACCEPT"], ["-F LBD-Q3-OUT", OUT_RULE3]),
        (["-N LBD-Q3-OUT", OUT_JUMP3, OUT_RULE3.replace("0x4c420003", "0x4c420004")], ["-F LBD-Q3-OUT", OUT_RULE3]),
    ],
)
def test_sync_heals_the_out_chain(out_state: list[str], want: list[str]) -> None:
    fake = Fake("\n".join(["-N LBD-Q3", "-N LBD-Q3-GO", JUMP3, *iptl.chain_rules(3), *GO3, *out_state]))
    plan = RuleManager(3, runner=fake).sync(Steering())
    assert plan.out_repaired == want
    assert plan.empty == (not want)
    assert fake.scripts() == (["*raw\n" + "\n".join(want) + "\nCOMMIT\n"] if want else [])


def test_track_opt_in_omits_every_notrack_rule() -> None:
    fake = Fake("\n".join(["-N LBD-Q3-OUT", OUT_JUMP3, OUT_RULE3]))  # left by an untracked run
    m = RuleManager(3, track=True, runner=fake)
    m.setup()
    removal, creation = fake.scripts()
    assert removal == "*raw\n" + "\n".join(["-D" + OUT_JUMP3[2:], "-F LBD-Q3-OUT", "-X LBD-Q3-OUT"]) + "\nCOMMIT\n"
    assert "notrack" not in creation and "LBD-Q3-OUT" not in creation
    fake2 = Fake("\n".join(["-N LBD-Q3", "-N LBD-Q3-GO", JUMP3, *iptl.chain_rules(3), *GO3]))
    plan = RuleManager(3, track=True, runner=fake2).sync(Steering())
    assert plan.rewritten and not plan.out_repaired  # switching the opt-in on rewrites LBD-Q3-GO
    assert "notrack" not in fake2.scripts()[0]
