"""lb.iptables without privileges: rule text, normalisation, the diff, and the transactions sent."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from lb import iptables as ipt
from lb.iptables import (
    ChainMissingError,
    IptablesError,
    RuleManager,
    parse_table,
    plan_sync,
    rule_key,
    rule_pair,
)

TCP, UDP = 6, 17
CHAIN = "LBD-Q3"
QUEUE = "-j NFQUEUE --queue-num 3 --queue-bypass"


def pair(match: str) -> ipt.RulePair:
    return rule_pair(CHAIN, match, QUEUE)


def lines(*pairs: ipt.RulePair) -> list[str]:
    out: list[str] = []
    for p in pairs:
        out += p.lines
    return out


JUMP3 = '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3'
OUT_JUMP3 = '-A OUTPUT -m comment --comment "lbd q3 out" -j LBD-Q3-OUT'
OUT_RULE3 = "-A LBD-Q3-OUT -m mark --mark 0x4c420003 -j CT --notrack"
OUT_OK = ["-N LBD-Q3-OUT", OUT_JUMP3, OUT_RULE3]  # a healthy LBD-Q3-OUT as `-S` prints it


A = pair(ipt.service_match(TCP, "10.0.0.1", 80))
B = pair(ipt.service_match(UDP, "10.0.0.1", 53))
C = pair(ipt.service_match(TCP, "10.0.0.2", 443))


# ---------------------------------------------------------------- rule text


def test_names_and_jump_rule() -> None:
    assert ipt.chain_name(3) == "LBD-Q3"
    assert ipt.jump_rule(3) == '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3'


def test_service_rules_in_iptables_S_form() -> None:
    p = rule_pair(CHAIN, ipt.service_match(TCP, "10.0.0.1", 80), ipt.queue_target(3, None))
    assert p.notrack == "-A LBD-Q3 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j CT --notrack"
    assert p.queue == "-A LBD-Q3 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j NFQUEUE --queue-num 3 --queue-bypass"


def test_udp_and_port_zero_means_all_ports() -> None:
    assert ipt.service_match(UDP, "10.0.0.1", 53) == "-d 10.0.0.1/32 -p udp -m udp --dport 53"
    assert ipt.service_match(TCP, "10.0.0.1", 0) == "-d 10.0.0.1/32 -p tcp"


def test_reply_match_for_fullnat() -> None:
    assert ipt.reply_match(TCP, "10.1.1.1", 8080, "10.2.2.2") == (
        "-s 10.1.1.1/32 -d 10.2.2.2/32 -p tcp -m tcp --sport 8080"
    )


def test_queue_balance_target() -> None:
    assert ipt.queue_target(0, (2, 3)) == "-j NFQUEUE --queue-balance 2:3 --queue-bypass"
    with pytest.raises(ValueError, match="empty"):
        ipt.queue_target(0, (3, 2))


@pytest.mark.parametrize(
    "call",
    [
        lambda: ipt.service_match(1, "10.0.0.1", 80),
        lambda: ipt.service_match(TCP, "10.0.0.256", 80),
        lambda: ipt.service_match(TCP, "::1", 80),
        lambda: ipt.service_match(TCP, "10.0.0.1", 65536),
        lambda: ipt.service_match(TCP, "10.0.0.1", -1),
        lambda: ipt.chain_name(65536),
        lambda: ipt.chain_name(-1),
        lambda: RuleManager(70000),
        lambda: RuleManager(0, (5, 1)),
    ],
)
def test_invalid_values_rejected(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    "match",
    ["-p tcp\n-A PREROUTING -j DROP", "-p tcp -j ACCEPT", "-p tcp --goto X", "", "-p 'tcp"],
)
def test_match_cannot_escape_the_rule(match: str) -> None:
    with pytest.raises(ValueError):
        rule_pair(CHAIN, match, QUEUE)


# ---------------------------------------------------------------- normalisation


def test_rule_key_equates_spellings() -> None:
    canonical = "-A LBD-Q3 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j CT --notrack"
    assert rule_key(canonical) == rule_key("-A LBD-Q3 -p tcp -d 10.0.0.1 --dport 80 -j CT --notrack")
    assert rule_key(canonical) != rule_key(canonical.replace("80", "81"))
    assert rule_key(canonical) != rule_key(canonical.replace("-d 10.0.0.1/32", "! -d 10.0.0.1/32"))


def test_parse_table_finds_only_our_chain_and_jumps() -> None:
    text = "\n".join([
        "-P PREROUTING ACCEPT",
        "-P OUTPUT ACCEPT",
        "-N LBD-Q3",
        "-N LBD-Q31",
        '-A PREROUTING -s 10.9.9.9/32 -m comment --comment "foreign" -j CT --notrack',
        '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3',
        '-A PREROUTING -m comment --comment "lbd q31" -j LBD-Q31',
        "-A PREROUTING -j LBD-Q3",
        *A.lines,
        "-A LBD-Q31 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j CT --notrack",
    ])
    state = parse_table(text, CHAIN)
    assert state.chain_exists
    assert state.rules == [A.notrack, A.queue]
    assert state.jumps == ['-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3', "-A PREROUTING -j LBD-Q3"]
    assert not parse_table("-P PREROUTING ACCEPT\n", CHAIN).chain_exists


# ---------------------------------------------------------------- diff


def test_empty_chain_gets_pairs_in_order() -> None:
    plan = plan_sync([], [A, B])
    assert plan.delete == []
    assert plan.add == lines(A, B)


def test_in_sync_is_empty_plan() -> None:
    assert plan_sync(lines(A, B), [A, B]).empty
    assert plan_sync(lines(A, B), [B, A]).empty  # order between services does not matter


def test_minimal_add_and_delete_leave_others_in_place() -> None:
    plan = plan_sync(lines(A, B, C), [A, C, pair(ipt.service_match(UDP, "10.0.0.3", 5000))])
    assert plan.delete == [4, 3]  # B's two rules, highest number first
    assert plan.deleted_rules == [B.notrack, B.queue]
    assert plan.add == lines(pair(ipt.service_match(UDP, "10.0.0.3", 5000)))


def test_everything_removed() -> None:
    plan = plan_sync(lines(A, B), [])
    assert plan.delete == [4, 3, 2, 1] and plan.add == []


def test_half_pair_is_rewritten() -> None:
    # queue rule present but its notrack missing: appending notrack after it would never run
    plan = plan_sync([A.queue, *lines(B)], [A, B])
    assert plan.delete == [1]
    assert plan.add == lines(A)


def test_wrong_order_within_pair_is_rewritten() -> None:
    plan = plan_sync(A.lines[::-1], [A])
    assert plan.delete == [2, 1]
    assert plan.add == lines(A)


def test_duplicates_deleted_by_number() -> None:
    plan = plan_sync(A.lines * 2, [A])
    assert plan.delete == [4, 3] and plan.add == []


def test_foreign_rule_inside_our_chain_is_removed() -> None:
    plan = plan_sync([A.lines[0], "-A LBD-Q3 -j ACCEPT", A.lines[1]], [A])
    assert plan.delete == [2] and plan.add == []


def test_same_match_twice_is_one_pair() -> None:
    assert plan_sync([], [A, A]).add == lines(A)


def test_queue_target_change_rewrites_queue_rules() -> None:
    other = rule_pair(CHAIN, A.match, "-j NFQUEUE --queue-balance 0:1 --queue-bypass")
    plan = plan_sync(lines(A), [other])
    assert plan.delete == [2, 1] and plan.add == lines(other)


# ---------------------------------------------------------------- transactions (fake iptables)


class FakeIptables:
    """Records commands; serves a canned `-S` listing; applies nothing."""

    def __init__(self, listing: str = "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n", fail_restore: str = "") -> None:
        self.listing = listing
        self.fail_restore = fail_restore
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        cmd = list(cmd)
        self.calls.append((cmd, stdin))
        if "-S" in cmd:
            return subprocess.CompletedProcess(cmd, 0, self.listing, "")
        if _is_restore(cmd) and self.fail_restore:
            return subprocess.CompletedProcess(cmd, 1, "", self.fail_restore)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def scripts(self) -> list[str]:
        return [stdin for cmd, stdin in self.calls if _is_restore(cmd) and stdin]


def _is_restore(cmd: Sequence[str]) -> bool:
    return any(part.endswith("-restore") for part in cmd)


def test_setup_clears_leftovers_in_one_transaction() -> None:
    fake = FakeIptables("\n".join([
        "-P PREROUTING ACCEPT", "-N LBD-Q3",
        '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3', *lines(A),
    ]))
    RuleManager(3, runner=fake).setup()
    assert fake.scripts() == [
        "*raw\n"
        '-D PREROUTING -m comment --comment "lbd q3" -j LBD-Q3\n'
        ":LBD-Q3 - [0:0]\n"
        '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3\n'
        ":LBD-Q3-OUT - [0:0]\n"
        "-A LBD-Q3-OUT -m mark --mark 0x4c420003 -j CT --notrack\n"
        '-A OUTPUT -m comment --comment "lbd q3 out" -j LBD-Q3-OUT\n'
        "COMMIT\n"
    ]
    restore_cmd = [c for c, _ in fake.calls if c[0].endswith("-restore")][0]
    assert restore_cmd == ["iptables-restore", "-w", "5", "--noflush"]


def test_sync_sends_numbered_deletes_then_appends() -> None:
    fake = FakeIptables("\n".join([
        "-N LBD-Q3", '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3', *lines(A, B), *OUT_OK,
    ]))
    plan = RuleManager(3, runner=fake).sync([(TCP, "10.0.0.1", 80), (TCP, "10.0.0.2", 443)])
    assert str(plan) == "2 to add, 2 to delete"
    assert fake.scripts() == ["*raw\n-D LBD-Q3 4\n-D LBD-Q3 3\n" + "\n".join(lines(C)) + "\nCOMMIT\n"]


def test_sync_in_sync_sends_nothing() -> None:
    fake = FakeIptables("\n".join(["-N LBD-Q3", '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3', *lines(A),
                                    *OUT_OK]))
    assert RuleManager(3, runner=fake).sync([(TCP, "10.0.0.1", 80)]).empty
    assert fake.scripts() == []


def test_sync_restores_a_missing_jump() -> None:
    fake = FakeIptables("\n".join(["-N LBD-Q3", *lines(A), *OUT_OK]))
    plan = RuleManager(3, runner=fake).sync([(TCP, "10.0.0.1", 80)])
    assert plan.jump_added
    assert fake.scripts() == ['*raw\n-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3\nCOMMIT\n']


def test_sync_extra_matches_for_fullnat_replies() -> None:
    fake = FakeIptables("-N LBD-Q3\n" '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3\n')
    RuleManager(3, runner=fake).sync([], extra=[ipt.reply_match(TCP, "10.1.1.1", 8080, "10.2.2.2")])
    assert "-A LBD-Q3 -s 10.1.1.1/32 -d 10.2.2.2/32 -p tcp -m tcp --sport 8080 -j CT --notrack" in fake.scripts()[0]


def test_sync_without_chain_raises() -> None:
    with pytest.raises(ChainMissingError, match="call setup"):
        RuleManager(3, runner=FakeIptables()).sync([(TCP, "10.0.0.1", 80)])


def test_teardown_removes_only_ours_and_is_idempotent() -> None:
    fake = FakeIptables("\n".join([
        "-N LBD-Q3", "-N LBD-Q4",
        '-A PREROUTING -s 10.9.9.9/32 -j CT --notrack',
        '-A PREROUTING -m comment --comment "lbd q3" -j LBD-Q3',
        '-A PREROUTING -m comment --comment "lbd q4" -j LBD-Q4',
        *lines(A),
    ]))
    RuleManager(3, runner=fake).teardown()
    assert fake.scripts() == [
        '*raw\n-D PREROUTING -m comment --comment "lbd q3" -j LBD-Q3\n-F LBD-Q3\n-X LBD-Q3\nCOMMIT\n'
    ]
    empty = FakeIptables()
    RuleManager(3, runner=empty).teardown()
    assert empty.scripts() == []


def test_errors_carry_command_status_and_stderr() -> None:
    fake = FakeIptables("-N LBD-Q3\n", fail_restore="iptables-restore: line 2 failed")
    with pytest.raises(IptablesError) as info:
        RuleManager(3, runner=fake, netns="lbDx").sync([(TCP, "10.0.0.1", 80)])
    err = info.value
    assert err.returncode == 1
    assert err.cmd[:5] == ["ip", "netns", "exec", "lbDx", "iptables-restore"]
    assert "line 2 failed" in str(err) and "exit status 1" in str(err)
    assert "-A LBD-Q3 -d 10.0.0.1/32" in str(err)  # the failed script is quoted for context


def test_missing_binary_is_an_iptables_error() -> None:
    def runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file", cmd[0])

    with pytest.raises(IptablesError, match="not found"):
        RuleManager(0, iptables="/nonexistent/iptables", runner=runner).rules()


def test_detect_reports_missing_binary() -> None:
    reason = ipt.detect("/nonexistent/iptables")
    assert reason is not None and "not found" in reason


def test_detect_reports_kernel_refusal() -> None:
    def runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        if stdin:
            return subprocess.CompletedProcess(list(cmd), 4, "", "RULE_APPEND failed (No such file or directory)")
        return subprocess.CompletedProcess(list(cmd), 0, "", "")

    reason = ipt.detect("iptables", netns="lbDx", runner=runner)
    assert reason is not None and "NFQUEUE" in reason and "RULE_APPEND failed" in reason


# ---------------------------------------------------------------- raw OUTPUT: lbd's own packets


def test_out_chain_names_mark_and_rule_text() -> None:
    assert ipt.SOCKET_MARK_BASE == 0x4C420000
    assert ipt.socket_mark(3) == 0x4C420003 and ipt.socket_mark(65535) == 0x4C42FFFF
    assert ipt.out_chain_name(3) == "LBD-Q3-OUT"
    assert ipt.out_jump_rule(3) == OUT_JUMP3
    assert ipt.out_rules(3) == [OUT_RULE3]
    assert ipt.out_rules(3, track=True) == []
    with pytest.raises(ValueError):
        ipt.socket_mark(65536)


def test_icmp_match_for_vips_and_lips() -> None:
    assert ipt.icmp_match("10.0.0.1") == "-d 10.0.0.1/32 -p icmp"
    p = rule_pair(CHAIN, ipt.icmp_match("10.0.0.1"), QUEUE)
    assert p.notrack == "-A LBD-Q3 -d 10.0.0.1/32 -p icmp -j CT --notrack"
    assert rule_key(p.queue) == rule_key("-A LBD-Q3 -p icmp -d 10.0.0.1 -j NFQUEUE --queue-num 3 --queue-bypass")
    with pytest.raises(ValueError):
        ipt.icmp_match("10.0.0.300")


def test_parse_table_reads_iptables_save_and_jumps_from_any_chain() -> None:
    text = "\n".join([
        "*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":LBD-Q3 - [0:0]", ":LBD-Q3-OUT - [0:0]",
        JUMP3, OUT_JUMP3, OUT_RULE3, "COMMIT",
    ])
    out = parse_table(text, "LBD-Q3-OUT")
    assert out.chain_exists and out.rules == [OUT_RULE3] and out.jumps == [OUT_JUMP3]
    pre = parse_table(text, CHAIN)
    assert pre.chain_exists and pre.rules == [] and pre.jumps == [JUMP3]


def test_sync_extra_icmp_and_reply_matches_in_one_transaction() -> None:
    fake = FakeIptables("\n".join(["-N LBD-Q3", JUMP3, *OUT_OK]))
    extra = [ipt.reply_match(TCP, "10.1.1.1", 8080, "10.2.2.2"), ipt.icmp_match("10.0.0.1"), ipt.icmp_match("10.2.2.2")]
    plan = RuleManager(3, runner=fake).sync([(TCP, "10.0.0.1", 80)], extra=extra)
    assert len(plan.add) == 8 and not plan.out_repaired
    (script,) = fake.scripts()
    assert "-A LBD-Q3 -d 10.0.0.1/32 -p icmp -j CT --notrack\n-A LBD-Q3 -d 10.0.0.1/32 -p icmp -j NFQUEUE" in script
    assert "-A LBD-Q3 -d 10.2.2.2/32 -p icmp -j CT --notrack" in script


def test_setup_removes_leftovers_of_both_chains() -> None:
    fake = FakeIptables("\n".join(["-N LBD-Q3", "-N LBD-Q3-OUT", JUMP3, OUT_JUMP3, OUT_JUMP3, *lines(A), OUT_RULE3]))
    RuleManager(3, runner=fake).setup()
    (script,) = fake.scripts()
    body = script.splitlines()[1:-1]
    assert body == [
        "-D" + JUMP3[2:], "-D" + OUT_JUMP3[2:], "-D" + OUT_JUMP3[2:],
        ":LBD-Q3 - [0:0]", JUMP3, ":LBD-Q3-OUT - [0:0]", OUT_RULE3, OUT_JUMP3,
    ]


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
    fake = FakeIptables("\n".join(["-N LBD-Q3", JUMP3, *lines(A), *out_state]))
    plan = RuleManager(3, runner=fake).sync([(TCP, "10.0.0.1", 80)])
    assert plan.out_repaired == want
    assert plan.empty == (not want)
    if want:
        assert fake.scripts() == ["*raw\n" + "\n".join(want) + "\nCOMMIT\n"]
    else:
        assert fake.scripts() == []


def test_track_opt_in_omits_every_notrack_rule() -> None:
    fake = FakeIptables("\n".join(["-N LBD-Q3-OUT", OUT_JUMP3, OUT_RULE3]))  # left by an untracked run
    m = RuleManager(3, track=True, runner=fake)
    m.setup()
    assert fake.scripts() == ["*raw\n" + "\n".join([
        "-D" + OUT_JUMP3[2:], ":LBD-Q3 - [0:0]", JUMP3, "-F LBD-Q3-OUT", "-X LBD-Q3-OUT",
    ]) + "\nCOMMIT\n"]
    tracked = rule_pair(CHAIN, A.match, QUEUE, track=True)
    assert tracked.notrack is None and tracked.lines == [A.queue]
    fake2 = FakeIptables("\n".join(["-N LBD-Q3", JUMP3]))
    plan = RuleManager(3, track=True, runner=fake2).sync([(TCP, "10.0.0.1", 80)])
    assert plan.add == [A.queue] and not plan.out_repaired
    assert "notrack" not in fake2.scripts()[0]


def test_plan_sync_track_mode_and_switching_modes() -> None:
    tracked_a = rule_pair(CHAIN, A.match, QUEUE, track=True)
    assert plan_sync([A.queue], [tracked_a]).empty
    # switching the opt-in on: the notrack rule goes, the queue rule stays (counters survive)
    plan = plan_sync(lines(A), [tracked_a])
    assert plan.delete == [1] and plan.add == []
    # and off again: the pair is rewritten, notrack first
    plan = plan_sync([A.queue], [A])
    assert plan.delete == [1] and plan.add == lines(A)


def test_teardown_removes_both_chains() -> None:
    fake = FakeIptables("\n".join(["-N LBD-Q3", "-N LBD-Q3-OUT", "-N LBD-Q4-OUT", JUMP3, OUT_JUMP3,
                                   '-A OUTPUT -m comment --comment "lbd q4 out" -j LBD-Q4-OUT',
                                   *lines(A), OUT_RULE3]))
    RuleManager(3, runner=fake).teardown()
    assert fake.scripts() == ["*raw\n" + "\n".join([
        "-D" + JUMP3[2:], "-D" + OUT_JUMP3[2:], "-F LBD-Q3", "-X LBD-Q3", "-F LBD-Q3-OUT", "-X LBD-Q3-OUT",
    ]) + "\nCOMMIT\n"]


def test_detect_probes_the_mark_match_too() -> None:
    scripts: list[str] = []

    def runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        if stdin:
            scripts.append(stdin)
        return subprocess.CompletedProcess(list(cmd), 0, "", "")

    assert ipt.detect("iptables", netns="lbDx", runner=runner) is None
    assert "-m mark --mark 0x4c420000 -j CT --notrack" in scripts[0]
