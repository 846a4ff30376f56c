"""lbd --packet-source afxdp: what parse_args refuses, and the XDP steering keys (no privileges)."""

from __future__ import annotations

import pytest

from lb import daemon
from lb.afxdp import AfxdpError, steering_keys
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
    (["--no-iptables"], "--no-iptables does not go with"),
    (["--qdisc-bypass"], "--qdisc-bypass does not go with"),
    (["--down-policy", "closed"], "--down-policy closed does not go with"),
    (["--engine", "python"], "needs the C engine"),
])
def test_afxdp_refuses_what_cannot_work(extra: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert words in refused([*AFXDP, *extra], capsys)


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
