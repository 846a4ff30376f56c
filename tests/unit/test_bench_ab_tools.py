"""bench/ab_tools.py: one rules file, one tool, both systems of the A/B (issue 17 item 4).

The commands the A/B runs against kernel IPVS and against lbd, and what its output says
configured each side. (tests/netns/test_bench_ab_tool.py runs them against a real lbd.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import ab, ab_guest, ab_tools, common, report

SOCK = "/run/lbB12345/lbd.sock"


def test_ipvsadm_is_the_default_tool_for_lbd() -> None:
    assert ab_tools.DEFAULT_LBD_TOOL == "ipvsadm"
    ap = argparse.ArgumentParser()
    ab.add_args(ap)
    assert ap.parse_args([]).lbd_tool == "ipvsadm"
    assert ap.parse_args(["--lbd-tool", "lbadm"]).lbd_tool == "lbadm"
    with pytest.raises(SystemExit):
        ap.parse_args(["--lbd-tool", "keepalived"])


def test_kernel_and_lbd_get_the_same_ipvsadm_arguments() -> None:
    for args in (["-C"], ["-R"], ["-S", "-n"], ["-A", "-t", "10.0.0.1:80", "-s", "rr"]):
        kernel = ab_tools.ipvs_command(args)
        lbd = ab_tools.lbd_command("ipvsadm", SOCK, args, lbd_exec=Path("/v/bin/lbd-exec"))
        assert kernel == ["ipvsadm", *args]
        assert lbd == ["/v/bin/lbd-exec", "--socket", SOCK, "ipvsadm", *args]
        assert lbd[lbd.index("ipvsadm"):] == kernel  # the same binary, the same arguments


def test_lbd_exec_defaults_to_the_venvs_launcher() -> None:
    argv = ab_tools.lbd_command("ipvsadm", SOCK, ["-R"])
    assert argv[0] == str(common.LBD_EXEC)
    assert Path(argv[0]).name == "lbd-exec"


def test_lbadm_remains_an_option() -> None:
    argv = ab_tools.lbd_command("lbadm", SOCK, ["-R"], lbadm=Path("/v/bin/lbadm"))
    assert argv == ["/v/bin/lbadm", "--socket", SOCK, "-R"]
    assert ab_tools.lbd_command("lbadm", SOCK, ["-C"])[0] == str(common.LBADM)


def test_an_unknown_tool_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="ipvsadm, lbadm"):
        ab_tools.lbd_command("keepalived", SOCK, ["-C"])
    with pytest.raises(ValueError, match="ipvsadm, lbadm"):
        ab_tools.configured_by("nft")


def test_output_says_which_tool_configured_each_side() -> None:
    by = ab_tools.configured_by("ipvsadm")
    assert by["tool"] == "ipvsadm"
    assert "ipvsadm -R" in by["ipvs"]
    assert "lbd-exec --socket SOCK ipvsadm -R" in by["lbd"]
    assert "lbadm -R" in ab_tools.configured_by("lbadm")["lbd"]


def test_rules_file_is_what_ipvsadm_restores() -> None:
    text = ab_guest.rules_text("10.0.0.100", "wlc", [("10.0.1.11", 1), ("10.0.1.12", 3)], "tunnel", port=80)
    assert text == ("-A -t 10.0.0.100:80 -s wlc\n"
                    "-a -t 10.0.0.100:80 -r 10.0.1.11:80 -i -w 1\n"
                    "-a -t 10.0.0.100:80 -r 10.0.1.12:80 -i -w 3\n")


def test_report_names_the_tools(tmp_path: Path) -> None:
    part = {"boot": {"command": "vng ...", "kernel_image": "/k/vmlinuz-6.1.0-9-amd64", "seconds": 300, "rc": 0},
            "guest": {}, "configured_by": ab_tools.configured_by("ipvsadm"), "summary": {}}
    text = "\n".join(report._ab({"ab": part}, []))
    assert "Kernel IPVS: ipvsadm: `ipvsadm -C`, `ipvsadm -R < rules`" in text
    assert "lbd: the same ipvsadm binary through lbd-exec" in text
