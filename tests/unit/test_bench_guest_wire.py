"""bench/guest_wire.py and its plumbing (`python -m bench ab --guest-wire virtio`): the NIC plan both
sides of the boot share, the qemu arguments, finding the NICs by MAC and their interrupts, and
what the option changes on the host side and for lbd (no root, no guest)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import ab, ab_guest, guest_wire
from bench import afxdp_report as xr
from lb.testbed import guest


def test_plan_has_two_nics_per_director_link_on_one_hub_each_with_distinct_macs() -> None:
    nics = guest_wire.plan()
    assert [(n.link, n.end) for n in nics] == [("lan", "director"), ("lan", "far"), ("back", "director"),
                                               ("back", "far")]
    assert len({n.mac for n in nics}) == 4 and len({n.netdev for n in nics}) == 4
    assert {n.hub for n in nics if n.link == "lan"} != {n.hub for n in nics if n.link == "back"}
    assert all(len({n.hub for n in nics if n.link == link}) == 1 for link in guest_wire.LINKS)
    assert nics[2].mac == "52:54:00:4c:01:00"
    with pytest.raises(ValueError):
        guest_wire.nic_mac(256, 0)


def test_qemu_options_give_each_nic_a_hub_port_and_a_virtio_device_with_its_mac() -> None:
    nics = guest_wire.plan()
    opts = guest_wire.qemu_opts(nics)
    assert opts[:4] == ["-netdev", "hubport,id=vwlan0,hubid=10",
                        "-device", "virtio-net-pci,netdev=vwlan0,mac=52:54:00:4c:00:00,tx=timer"]
    assert opts.count("-netdev") == opts.count("-device") == 4
    assert "hubport,id=vwback1,hubid=11" in opts
    assert ab.qemu_opts_for("virtio") == opts and ab.qemu_opts_for("veth") == []
    with pytest.raises(ValueError, match="tap"):
        ab.qemu_opts_for("tap")


def test_vng_gets_the_qemu_options_as_one_argument_before_the_command(tmp_path: Path) -> None:
    opts = guest_wire.qemu_opts(guest_wire.plan())
    argv = guest.vng_argv(Path("/v/vng"), Path("/k/vmlinuz"), tmp_path, "echo hi", opts)
    extra = [a for a in argv if a.startswith("--qemu-opts=")]
    assert extra == ["--qemu-opts=" + " ".join(opts)]
    assert argv.index(extra[0]) < argv.index("--exec") and argv[-1] == "echo hi"
    assert not any(a.startswith("--qemu-opts") for a in guest.vng_argv(Path("/v/vng"), Path("/k"), tmp_path, "x"))
    with pytest.raises(guest.GuestError, match="shell"):
        guest.vng_argv(Path("/v/vng"), Path("/k"), tmp_path, "x", ["-device", "a;reboot"])


def test_nics_are_found_by_mac_whatever_udev_named_them() -> None:
    nics = guest_wire.plan()
    have = {"lo": "00:00:00:00:00:00", "enp0s10": "52:54:00:4C:00:00", "enp0s11": "52:54:00:4c:00:01",
            "enp0s12": "52:54:00:4c:01:00", "enp0s13": "52:54:00:4c:01:01"}
    found = guest_wire.macs_to_ifnames(have, nics)
    assert [found[n] for n in nics] == ["enp0s10", "enp0s11", "enp0s12", "enp0s13"]
    del have["enp0s13"]
    with pytest.raises(ValueError, match="back/far 52:54:00:4c:01:01"):
        guest_wire.macs_to_ifnames(have, nics)


def test_a_nics_irqs_are_those_proc_interrupts_names_after_its_virtio_device() -> None:
    text = """           CPU0       CPU1
 40:          0          0   PCI-MSI 163840-edge      virtio8-config
 41:          5          0   PCI-MSI 163841-edge      virtio8-input.0
 42:          0          0   PCI-MSI 163842-edge      virtio8-output.0
 43:          0          0   PCI-MSI 180224-edge      virtio80-input.0
 NMI:          0          0   Non-maskable interrupts
"""
    assert guest_wire.irqs_of(text, "virtio8") == [40, 41, 42]
    assert guest_wire.irqs_of(text, "virtio9") == []


def _ab_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ab.add_args(ap)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    ab.finish_args(args)
    return args


def test_guest_wire_option_defaults_to_veth_and_reaches_the_guest_only_when_virtio() -> None:
    assert _ab_args([]).guest_wire == "veth"
    assert "--guest-wire" not in ab.guest_extra(_ab_args(["--afxdp"]))
    assert ab.guest_extra(_ab_args(["--afxdp", "--guest-wire", "virtio"]))[:3] == ["--afxdp", "--guest-wire", "virtio"]
    with pytest.raises(SystemExit):
        _ab_args(["--guest-wire", "tap"])


class _Bed:
    class director:  # noqa: N801 - stands in for the topology's director host
        @staticmethod
        def iface(segment: str) -> argparse.Namespace:
            return argparse.Namespace(ifname=f"lbXe{segment}")


def test_lbd_runs_xdp_natively_on_virtio_and_generically_on_veth() -> None:
    bed = _Bed()
    virtio = ab_guest.afxdp_extra(bed, "virtio")  # type: ignore[arg-type]
    veth = ab_guest.afxdp_extra(bed)  # type: ignore[arg-type]
    assert virtio[virtio.index("--xdp-mode") + 1] == "native"
    assert veth[veth.index("--xdp-mode") + 1] == "generic"
    assert virtio[virtio.index("--xdp-interface") + 1] == "lbXelan"
    args = argparse.Namespace(afxdp=True, afxdp_fast=True, guest_wire="virtio")
    systems = dict(ab_guest.afxdp_systems(args, bed))  # type: ignore[arg-type]
    assert systems["lbd-afxdp-fast"] == (*virtio, "--xdp-fastpath")


def test_report_names_the_wire_and_the_xdp_mode_it_gave_lbd() -> None:
    assert xr.guest_labels("virtio")["lbd-afxdp-fast"] == "lbd AF_XDP --xdp-fastpath (native XDP, virtio_net)"
    assert xr.guest_labels("veth")["lbd-afxdp"] == "lbd AF_XDP (generic XDP)"
    assert xr.guest_labels(None) is xr.GUEST_SYSTEMS
    r = {"rep": 0, "system": "lbd-afxdp-fast", "mode": "route", "traffic": "est", "zero_loss_pps": 1000.0,
         "generator_limited": True, "dut_us_per_pkt": 2.0}
    lines = xr.guest_section({"guest": {"wire": "virtio", "pps": {"results": [r]}}})
    text = "\n".join(lines)
    assert "virtio-net NICs joined by qemu hubs" in text and "(native XDP, virtio_net)" in text
    assert "generic XDP mode on the guest's veth" in "\n".join(xr.guest_section({"guest": {"pps": {"results": [r]}}}))


def test_profiled_systems_reach_the_guest_as_one_option() -> None:
    extra = ab.guest_extra(_ab_args(["--afxdp-fast", "--profile", "ipvs,lbd-afxdp-fast"]))
    assert extra[extra.index("--profile") + 1] == "ipvs,lbd-afxdp-fast"
    assert "--profile" not in ab.guest_extra(_ab_args(["--afxdp-fast"]))


def test_afxdp_steering_reaches_the_guest_and_the_afxdp_lbds_and_the_report_says_so() -> None:
    assert "--afxdp-steering" not in ab.guest_extra(_ab_args(["--afxdp-fast"]))  # lbd's default: nftables
    extra = ab.guest_extra(_ab_args(["--afxdp-fast", "--afxdp-steering", "iptables"]))
    assert extra[extra.index("--afxdp-steering") + 1] == "iptables"
    args = argparse.Namespace(afxdp=False, afxdp_fast=True, guest_wire="virtio", afxdp_steering="iptables")
    fast = dict(ab_guest.afxdp_systems(args, _Bed()))["lbd-afxdp-fast"]  # type: ignore[arg-type]
    assert fast[fast.index("--steering") + 1] == "iptables" and fast[-1] == "--xdp-fastpath"
    r = {"rep": 0, "system": "lbd-afxdp-fast", "mode": "route", "traffic": "est", "zero_loss_pps": 1000.0,
         "generator_limited": True, "dut_us_per_pkt": 2.0}
    text = "\n".join(xr.guest_section({"config": {"guest_args": extra}, "guest": {"pps": {"results": [r]}}}))
    assert "The AF_XDP lbd ran with --steering iptables" in text
