"""lbd --packet-source afxdp: what parse_args refuses, and the XDP steering keys (no privileges)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lb import afxdp, daemon
from lb.afxdp import AfxdpError, AfxdpRefusal, AfxdpWithFallback, steering_keys, xdp_link_prog_ids
from lb.ipsets import Steering

AFXDP = ["--packet-source", "afxdp", "--xdp-interface", "eth0"]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        daemon.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_nfqueue_stays_the_default() -> None:
    args = daemon.parse_args([])
    assert args.packet_source == "nfqueue" and args.xdp_interface == []


def test_afxdp_accepts_interfaces_mode_and_copy() -> None:
    args = daemon.parse_args([*AFXDP, "--xdp-interface", "eth1", "--xdp-mode", "generic", "--xdp-copy"])
    assert args.xdp_interface == ["eth0", "eth1"] and args.xdp_mode == "generic" and args.xdp_copy


@pytest.mark.parametrize("extra, words", [
    (["--gso"], "--gso does not go with --packet-source afxdp"),
    (["--fail-open"], "--fail-open does not go with"),
    (["--queue-maxlen", "512"], "--queue-maxlen does not go with"),
    (["--queue-balance", "0:1"], "--queue-balance does not go with"),
    (["--conntrack"], "--conntrack does not go with"),
    (["--down-policy", "closed"], "--down-policy closed does not go with"),
    (["--engine", "python"], "needs the C engine"),
])
def test_afxdp_refuses_what_cannot_work(extra: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert words in refused([*AFXDP, *extra], capsys)


@pytest.mark.parametrize("hook", ["prerouting", "input"])
def test_afxdp_takes_nftables_steering_for_its_fallback(hook: str) -> None:
    # The NFQUEUE fallback as lbd's own nftables table (lb.nftsteer), at either hook.
    args = daemon.parse_args([*AFXDP, "--steering", "nftables", "--steer-hook", hook])
    assert args.packet_source == "afxdp" and args.steering == "nftables" and args.steer_hook == hook
    rules = daemon.make_rules(args)
    assert type(rules).__name__ == "NftManager" and rules.hook == hook and rules.bypass and not rules.track


def test_afxdp_takes_queue_cpus_for_its_sockets_and_qdisc_bypass() -> None:
    cpu = min(os.sched_getaffinity(0))
    args = daemon.parse_args([*AFXDP, "--queue-cpus", f"{cpu},{cpu}", "--qdisc-bypass"])
    # The AF_XDP sockets' threads, however many queues the interface has (checked at start); the
    # NFQUEUE fallback's single queue stays unpinned.
    assert args.xdp_cpus == [cpu, cpu] and args.queues.cpus == (None,) and args.qdisc_bypass
    assert daemon.parse_args(AFXDP).xdp_cpus == []
    assert daemon.parse_args(["--queue-cpus", str(cpu)]).xdp_cpus == []  # NFQUEUE: args.queues has them


def test_afxdp_queue_cpus_refuses_cpus_lbd_may_not_use(capsys: pytest.CaptureFixture[str]) -> None:
    outside = max(os.sched_getaffinity(0)) + 1
    assert f"CPU(s) {outside} not available to lbd" in refused([*AFXDP, "--queue-cpus", str(outside)], capsys)
    assert "expected a CPU list" in refused([*AFXDP, "--queue-cpus", "x"], capsys)


def test_afxdp_queue_cpus_must_name_one_cpu_per_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bpf = tmp_path / "lb_xdp.bpf.o"
    bpf.write_bytes(b"")
    monkeypatch.setattr(afxdp, "rx_queue_count", lambda ifname: {"eth0": 2, "eth1": 1}[ifname])
    attached: list[str] = []
    monkeypatch.setattr(afxdp.AfxdpSource, "_attach", lambda self, ifname: attached.append(ifname))
    src = afxdp.AfxdpSource(None, ["eth0", "eth1"], cpus=[0, 1], bpf_object=bpf)
    with pytest.raises(afxdp.AfxdpError, match=r"--queue-cpus lists 2 CPU\(s\) for 3 AF_XDP socket\(s\), one per "
                       r"receive queue \(eth0: 2, eth1: 1\)"):
        src.start()
    assert attached == []  # refused before anything was attached
    afxdp.AfxdpSource(None, ["eth0", "eth1"], cpus=[0, 1, 1], bpf_object=bpf).start()
    afxdp.AfxdpSource(None, ["eth0", "eth1"], bpf_object=bpf).start()  # not pinned: no count to match
    assert attached == ["eth0", "eth1", "eth0", "eth1"]


def test_xdp_fastpath_is_off_by_default_and_taken_with_one_interface() -> None:
    assert not daemon.parse_args(AFXDP).xdp_fastpath
    assert daemon.parse_args([*AFXDP, "--xdp-fastpath"]).xdp_fastpath


def test_xdp_fastpath_needs_afxdp_and_one_interface(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--xdp-fastpath goes with --packet-source afxdp" in refused(["--xdp-fastpath"], capsys)
    assert "--xdp-fastpath works on one --xdp-interface" in refused(
        [*AFXDP, "--xdp-interface", "eth1", "--xdp-fastpath"], capsys)
    # The source itself refuses it too (it is also built by the bench and tests, not only by lbd).
    with pytest.raises(AfxdpError, match="--xdp-fastpath works on one --xdp-interface, not 2"):
        afxdp.AfxdpSource(None, ["eth0", "eth1"], fastpath=True)


def test_afxdp_needs_an_interface(capsys: pytest.CaptureFixture[str]) -> None:
    assert "needs at least one --xdp-interface" in refused(["--packet-source", "afxdp"], capsys)


@pytest.mark.parametrize("flag", [["--xdp-interface", "eth0"], ["--xdp-copy"], ["--xdp-mode", "native"]])
def test_xdp_options_need_the_afxdp_source(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "goes with --packet-source afxdp" in refused(flag, capsys)


def test_steering_keys_cover_services_and_replies() -> None:
    st = Steering()
    st.services.update({(6, "10.0.0.100", 80), (17, "10.0.0.100", 0)})
    st.fnat_replies.add((6, "10.0.1.11", 8080, "10.0.1.2"))
    st.nat_replies.add((17, "10.0.1.12", 53))
    assert steering_keys(st) == {
        (0, 0x0A000064, 0, 80, 6),               # service VIP:port
        (0, 0x0A000064, 0, 0, 17),               # port-0 service: any port of the VIP
        (0x0A00010B, 0x0A000102, 8080, 0, 6),    # FULLNAT reply RIP:RPORT -> LIP
        (0x0A00010C, 0, 53, 0, 17),              # NAT reply from RIP:RPORT
    }


def test_steering_keys_refuse_fwmark_services() -> None:
    st = Steering()
    st.fwmarks.add(7)
    with pytest.raises(AfxdpError, match="fwmark services need the NFQUEUE packet source"):
        steering_keys(st)


def test_afxdp_takes_no_iptables_to_mean_no_nfqueue_fallback() -> None:
    args = daemon.parse_args([*AFXDP, "--no-iptables"])
    assert args.packet_source == "afxdp" and args.no_iptables


class FakeXdp:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.synced: list[Steering] = []

    def sync(self, steering: Steering) -> None:
        if self.refuse:
            raise AfxdpRefusal(0, "fwmark services need the NFQUEUE packet source")
        self.synced.append(steering)


class FakeRules:
    def __init__(self) -> None:
        self.synced: list[tuple[Steering, bool]] = []

    def sync(self, steering: Steering, verify_sets: bool = False) -> None:
        self.synced.append((steering, verify_sets))


def test_the_fallback_syncs_the_program_then_the_nfqueue_rules() -> None:
    xdp, rules = FakeXdp(), FakeRules()
    both = AfxdpWithFallback(xdp, rules)  # type: ignore[arg-type]
    st = Steering()
    both.sync(st, verify_sets=True)
    assert xdp.synced == [st] and rules.synced == [(st, True)]
    # What the program refuses changes no NFQUEUE rule either (the Director rolls the change back).
    refusing = AfxdpWithFallback(FakeXdp(refuse=True), rules)  # type: ignore[arg-type]
    with pytest.raises(AfxdpRefusal):
        refusing.sync(st)
    assert len(rules.synced) == 1
    # fwmark services are the fallback's alone: the program never sees their marks (its keys refuse them).
    marked = Steering()
    marked.fwmarks.add(7)
    both.sync(marked)
    assert xdp.synced[-1].fwmarks == set() and rules.synced[-1][0].fwmarks == {7}


def test_the_fallback_reports_its_steering_layer() -> None:
    # `ping` says which layer the fallback's rules are in, so that lbadm doctor reads that one.
    class Nft(FakeRules):
        steering_kind = "nftables"
        hook = "input"

    both = AfxdpWithFallback(FakeXdp(), Nft())  # type: ignore[arg-type]
    assert both.steering_kind == "nftables"
    assert AfxdpWithFallback(FakeXdp(), FakeRules()).steering_kind is None  # type: ignore[arg-type]


def test_xdp_link_prog_ids_from_fdinfo(tmp_path: Path) -> None:
    d = tmp_path
    (d / "3").write_text("pos:\t0\nflags:\t02000002\nlink_type:\txdp\nlink_id:\t9\nprog_tag:\tab\nprog_id:\t3696\n"
                         "ifindex:\t4\n")
    (d / "4").write_text("pos:\t0\nlink_type:\ttracing\nprog_id:\t12\n")  # another kind of link
    (d / "5").write_text("pos:\t0\nmap_type:\t1\nmap_id:\t77\n")  # a map
    assert xdp_link_prog_ids(str(d)) == {4: 3696}
