"""Configuration files: every error with file, line and reason; configs/*.toml valid; ipvsadm-save accepted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lb.config import ConfigErrors, TomlLines, load_config, parse_config
from lb.model import SCHEDULERS, DestSpec, ServiceKey
from lb.reconcile import DEFAULT_TIMEOUTS, State, Timeouts, plan

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(textwrap.dedent(text), "f.toml")
    return [str(i) for i in info.value.issues]


def test_every_shipped_config_is_valid() -> None:
    names = {p.name for p in CONFIGS}
    assert {"dr.toml", "tun.toml", "nat.toml", "fnat.toml", "synproxy.toml", "reference.toml"} <= names
    for path in CONFIGS:
        config = load_config(str(path))
        assert config.services, path


def test_fnat_config_has_local_addresses_and_toa() -> None:
    config = load_config(str(REPO / "configs" / "fnat.toml"))
    tcp = config.services[0]
    assert tcp.spec.toa is True
    assert tcp.laddrs == ("198.51.100.2", "198.51.100.3")
    assert {d.spec.fwd for d in tcp.dests} == {"fullnat"}
    assert [d.spec.port for d in tcp.dests] == [8080, 8080]


def test_reference_documents_every_key() -> None:
    from lb.config import DEST_KEYS, SERVICE_KEYS, TIMEOUT_KEYS

    text = (REPO / "configs" / "reference.toml").read_text()
    lines = TomlLines(text)
    for key in SERVICE_KEYS:
        if key == "fwmark":  # a service of its own (no proto/addr/port then)
            assert any(t[0] == "service" and len(t) == 2 and k == key for t, k in lines.keys), "reference.toml lacks fwmark"
        elif key != "dest":
            assert (("service", 0), key) in lines.keys, f"reference.toml lacks service key {key}"
    for key in DEST_KEYS:
        assert (("service", 0, "dest", 0), key) in lines.keys, f"reference.toml lacks dest key {key}"
    for key in TIMEOUT_KEYS:
        assert (("timeouts",), key) in lines.keys
    # Each documented key's line says its default (or that it is required) and, for numbers, a range.
    physical = text.splitlines()
    for (table, key), number in lines.keys.items():
        if table in (("service", 0), ("service", 0, "dest", 0), ("timeouts",)):
            doc = physical[number - 1]
            assert "default" in doc or "required" in doc, f"reference.toml:{number}: {doc}"
            if key in ("port", "weight", "u_threshold", "l_threshold", "persistent", *TIMEOUT_KEYS):
                assert ".." in doc, f"reference.toml:{number}: no range: {doc}"


def test_a_valid_file_parses_to_specs_with_lines() -> None:
    config = parse_config(textwrap.dedent("""\
        # comment
        [timeouts]
        tcp = 60

        [[service]]
        proto = "tcp"
        addr = "10.0.0.1"
        port = 80
        sched = "rr"
          [[service.dest]]
          addr = "10.0.0.2"
          weight = 0
          [[service.dest]]
          addr = "10.0.0.3"
        """), "f.toml")
    assert config.timeouts == Timeouts(60, DEFAULT_TIMEOUTS.tcpfin, DEFAULT_TIMEOUTS.udp)
    (svc,) = config.services
    assert svc.spec.key == ServiceKey(6, "10.0.0.1", 80)
    assert svc.line == 5
    assert [(d.spec, d.line) for d in svc.dests] == [
        (DestSpec(addr="10.0.0.2", port=80, weight=0), 10), (DestSpec(addr="10.0.0.3", port=80), 13)]
    state = config.state()
    assert state.lines[("dest", svc.spec.key, "10.0.0.3", 80)] == 13
    assert [s.line for s in plan(State(), state)] == [5, 10, 13, 2]


def test_every_error_is_reported_with_its_line() -> None:
    found = errors("""\
        bogus = 1                     # 1
        [timeouts]                    # 2
        tcp = "900"                   # 3
        [[service]]                   # 4
        proto = "tcp"                 # 5
        addr = "10.1.1.300"           # 6
        port = 80                     # 7
        sched = "xx"                  # 8
        weight = 2                    # 9
          [[service.dest]]            # 10
          addr = "10.1.1.11"          # 11
          weight = 2147483648         # 12
          [[service.dest]]            # 13
          addr = "10.1.1.12"          # 14
          port = 8080                 # 15
        [[service]]                   # 16
        proto = "udp"                 # 17
        addr = "10.1.1.1"             # 18
        port = 53                     # 19
          [[service.dest]]            # 20
          addr = "10.1.1.11"          # 21
          [[service.dest]]            # 22
          addr = "10.1.1.11"          # 23
          l_threshold = 5             # 24
          [[service.dest]]            # 25
          addr = "10.1.1.11"          # 26
          port = 53                   # 27
        [[service]]                   # 28
        proto = "udp"                 # 29
        addr = "10.1.1.1"             # 30
        port = 53                     # 31
        [[service]]                   # 32
        proto = "tcp"                 # 33
        addr = "10.1.1.3"             # 34
        toa = "yes"                   # 35
        laddrs = ["10.0.0.1", "x"]    # 36
        """)
    assert found == [
        "f.toml:1: unknown key 'bogus' in the top level (known: service, timeouts, synproxy)",
        "f.toml:3: 'tcp' must be an integer, got string '900'",
        "f.toml:6: bad service address '10.1.1.300': not an IPv4 address",
        f"f.toml:8: 'sched' must be one of {', '.join(SCHEDULERS)}, got 'xx'",
        "f.toml:9: unknown key 'weight' in [[service]] (known: proto, addr, port, fwmark, sched, sched_flags, ops, "
        "persistent, netmask, toa, synproxy, proxy_protocol, laddrs, dest)",
        "f.toml:12: 'weight' 2147483648 out of range 0..2147483647",
        "f.toml:15: fwd = \"route\" cannot change the port: the real server receives the service's port 80; "
        "omit 'port' or set it to 80",
        "f.toml:24: l_threshold 5 is higher than u_threshold 0",
        "f.toml:25: duplicate destination 10.1.1.11:53 in udp 10.1.1.1:53 (first at line 20)",
        "f.toml:28: duplicate service UDP 10.1.1.1:53 (first defined at line 16)",
        "f.toml:32: [[service]] needs 'port'",
        "f.toml:35: 'toa' must be a boolean (true/false), got string 'yes'",
        "f.toml:36: bad local address 'x' in 'laddrs': not an IPv4 address",
    ]


def test_fullnat_needs_local_addresses_and_toa_needs_fullnat() -> None:
    found = errors("""\
        [[service]]
        proto = "tcp"
        addr = "10.0.0.1"
        port = 80
        toa = true
        laddrs = ["10.0.0.5", "10.0.0.5"]
          [[service.dest]]
          addr = "10.0.0.2"
        [[service]]
        proto = "tcp"
        addr = "10.0.0.1"
        port = 81
          [[service.dest]]
          addr = "10.0.0.2"
          fwd = "fullnat"
        [[service]]
        proto = "udp"
        addr = "10.0.0.1"
        port = 82
        synproxy = true
        """)
    assert found == [
        "f.toml:5: 'toa' only applies to FULLNAT: no destination of this service has fwd = \"fullnat\"",
        "f.toml:6: local address 10.0.0.5 listed twice in 'laddrs'",
        "f.toml:13: fwd = \"fullnat\" needs local addresses: add laddrs = [\"...\"] to service tcp 10.0.0.1:81",
        "f.toml:20: 'synproxy' only applies to TCP services",
    ]


def test_wrong_types_and_ranges() -> None:
    found = errors("""\
        service = "x"
        timeouts = 5
        """)
    assert found == [
        "f.toml:1: 'service' must be an array of tables ([[service]]), got string",
        "f.toml:2: 'timeouts' must be a table ([timeouts]), got integer",
    ]
    found = errors("""\
        [[service]]
        proto = "sctp"
        addr = 10
        port = 70000
        persistent = 0
        netmask = "255.0.255.0"
        dest = 3
        """)
    assert found == [
        "f.toml:2: 'proto' must be one of tcp, udp, got 'sctp'",
        "f.toml:3: 'addr' must be a string, got integer 10",
        "f.toml:4: 'port' 70000 out of range 0..65535",
        "f.toml:5: 'persistent' 0 out of range 1..2678400",
        "f.toml:6: bad netmask '255.0.255.0': not a contiguous IPv4 netmask",
        "f.toml:7: 'dest' must be an array of tables ([[service.dest]]), got integer",
    ]


def test_inline_tables_and_multiline_arrays_keep_lines_right() -> None:
    found = errors('''\
        [[service]]
        proto = "tcp"
        laddrs = [
          "10.0.0.5",
          "port = 3",
        ]
        desc = """
        [[service]]
        addr = 1
        """
        addr = "10.0.0.1"
        port = 80
        dest = [
          { addr = "10.0.0.2" },
          { addr = "10.0.0.2", weight = -1 },
        ]
        ''')
    assert found == [
        "f.toml:3: bad local address 'port = 3' in 'laddrs': not an IPv4 address",
        "f.toml:7: unknown key 'desc' in [[service]] (known: proto, addr, port, fwmark, sched, sched_flags, ops, "
        "persistent, netmask, toa, synproxy, proxy_protocol, laddrs, dest)",
        "f.toml:13: 'weight' -1 out of range 0..2147483647",
    ]


def test_toml_syntax_error_has_its_line() -> None:
    assert errors('[[service]]\nproto = "tcp"\naddr = \n') == [
        "f.toml:3: TOML syntax: Invalid value (column 8)"]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config(str(tmp_path / "missing.toml"))
    assert "missing.toml:0: cannot read: No such file or directory" in str(info.value)


# ---------------------------------------------------------------------------- ipvsadm-save


SAVE = """\
-A -t 10.0.0.1:80 -s rr
-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 2
-a -t 10.0.0.1:80 -r 10.0.0.3:80 -i -w 1 -x 10 -y 5
-A -u 10.0.0.1:53 -s wlc
-a -u 10.0.0.1:53 -r 10.0.0.2:53 -g -w 1
"""


def test_ipvsadm_save_is_recognised_and_parsed() -> None:
    config = parse_config(SAVE, "rules.save")
    assert config.kind == "ipvsadm-save"
    assert [(s.spec.key, s.spec.sched, s.line) for s in config.services] == [
        (ServiceKey(6, "10.0.0.1", 80), "rr", 1), (ServiceKey(17, "10.0.0.1", 53), "wlc", 4)]
    assert [(d.spec, d.line) for d in config.services[0].dests] == [
        (DestSpec(addr="10.0.0.2", port=80, weight=2), 2),
        (DestSpec(addr="10.0.0.3", port=80, fwd="tunnel", u_threshold=10, l_threshold=5), 3)]
    assert config.timeouts is None


def test_ipvsadm_save_and_toml_describe_the_same_state() -> None:
    toml = """\
        [[service]]
        proto = "tcp"
        addr = "10.0.0.1"
        port = 80
        sched = "rr"
          [[service.dest]]
          addr = "10.0.0.2"
          weight = 2
          [[service.dest]]
          addr = "10.0.0.3"
          fwd = "tunnel"
          u_threshold = 10
          l_threshold = 5
        [[service]]
        proto = "udp"
        addr = "10.0.0.1"
        port = 53
          [[service.dest]]
          addr = "10.0.0.2"
        """
    assert parse_config(textwrap.dedent(toml)).state() == parse_config(SAVE).state()


def test_ipvsadm_save_errors_have_lines() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config("# saved\n" + SAVE + "-a -t 10.0.0.9:80 -r 10.0.0.2\n-a -t 10.0.0.1:80 -r 10.0.0.2 -w 2147483648\n"
                     "-A -t 10.0.0.1:80\n-D -t 10.0.0.1:80\n--set 10 20 30\n", "r.save")
    assert [str(i) for i in info.value.issues] == [
        "r.save:7: service TCP 10.0.0.9:80 is not defined (by an -A line above)",
        "r.save:8: illegal weight specified",
        "r.save:9: duplicate service TCP 10.0.0.1:80 (first defined at line 2)",
        "r.save:10: not a configuration command (only -A, -a, -P, --set): -D -t 10.0.0.1:80",
    ]


def test_ipvsadm_save_set_is_timeouts() -> None:
    config = parse_config("ipvsadm --set 10 0 30\n-A -t 10.0.0.1:80 -s rr\n")
    assert config.timeouts == Timeouts(10, 120, 30)


# ---------------------------------------------------------------------------- lbd --check


def lbd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lb.daemon", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_lbd_check_prints_every_error_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[service]]\nproto = "tcp"\naddr = "x"\nport = 80\nsched = "zz"\n')
    proc = lbd("--check", str(bad))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"{bad}:3: bad service address 'x': not an IPv4 address",
        f"{bad}:5: 'sched' must be one of {', '.join(SCHEDULERS)}, got 'zz'",
        f"{bad}: 2 error(s); nothing would be applied",
    ]
    assert proc.stdout == ""


def test_lbd_check_accepts_a_valid_file_and_nat_on_a_one_packet_service(tmp_path: Path) -> None:
    proc = lbd("--check", str(REPO / "configs" / "fnat.toml"))
    assert (proc.returncode, proc.stdout) == (
        0, f"{REPO / 'configs' / 'fnat.toml'}: OK (toml): 2 services, 4 destinations, 3 local addresses\n")
    masq = tmp_path / "masq.toml"  # NAT on a one-packet UDP service: the kernel accepts it, so do both engines
    masq.write_text('[[service]]\nproto = "udp"\naddr = "10.0.0.1"\nport = 53\nops = true\n'
                    '  [[service.dest]]\n  addr = "10.0.0.2"\n  fwd = "masq"\n')
    for engine in ("c", "python"):
        proc = lbd("--check", "--engine", engine, str(masq))
        assert (proc.returncode, proc.stderr) == (0, ""), proc


def test_lbd_check_usage_errors() -> None:
    assert lbd("--check").returncode == 2
    assert lbd("--diff", "x.toml").returncode == 2


# ---------------------------------------------------------------------------- both forms, one set of rules
# issue 16 item 5: an ipvsadm-save file with a FULLNAT destination and no local address passed
# `lbd --check` and then dropped every connection; the TOML form of the same mistake was refused.

SAVE_HOLES = [
    # (what, ipvsadm-save text, line and reason expected, the TOML form of the same mistake)
    ("fullnat without local address",
     "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:8080 -b -w 1\n",
     "2: -b (fullnat) needs local addresses: add a line -P -t 10.0.0.1:80 -z LOCAL-ADDRESS for TCP 10.0.0.1:80",
     'port = 80\n  [[service.dest]]\n  addr = "10.0.0.2"\n  port = 8080\n  fwd = "fullnat"\n'),
    ("local addresses without fullnat",
     "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\n-P -t 10.0.0.1:80 -z 10.0.0.5\n",
     "3: local addresses (-P) only apply to FULLNAT: no destination of TCP 10.0.0.1:80 has -b (fullnat)",
     'port = 80\nladdrs = ["10.0.0.5"]\n  [[service.dest]]\n  addr = "10.0.0.2"\n'),
    ("toa without fullnat",
     "-A -t 10.0.0.1:80 -s rr --toa\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\n",
     "1: --toa only applies to FULLNAT: no destination of TCP 10.0.0.1:80 has -b (fullnat)",
     'port = 80\ntoa = true\n  [[service.dest]]\n  addr = "10.0.0.2"\n'),
]


@pytest.mark.parametrize("what, save, expected, toml_tail", SAVE_HOLES, ids=[h[0] for h in SAVE_HOLES])
def test_ipvsadm_save_is_refused_where_toml_is(what: str, save: str, expected: str, toml_tail: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config(save, "r.save")
    assert [str(i) for i in info.value.issues] == [f"r.save:{expected}"]
    toml = f'[[service]]\nproto = "tcp"\naddr = "10.0.0.1"\n{toml_tail}'
    with pytest.raises(ConfigErrors):  # the same mistake in TOML: refused too
        parse_config(toml, "f.toml")


def test_ipvsadm_save_with_fullnat_and_local_address_is_accepted() -> None:
    config = parse_config("-A -t 10.0.0.1:80 -s rr\n-P -t 10.0.0.1:80 -z 10.0.0.5\n"
                          "-a -t 10.0.0.1:80 -r 10.0.0.2:8080 -b -w 1\n", "r.save")
    assert config.services[0].laddrs == ("10.0.0.5",)


def test_lbd_check_refuses_fullnat_without_local_address_in_ipvsadm_save(tmp_path: Path) -> None:
    save = tmp_path / "rules.save"
    save.write_text(SAVE_HOLES[0][1])
    proc = lbd("--check", str(save))
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.splitlines() == [f"{save}:{SAVE_HOLES[0][2]}", f"{save}: 1 error(s); nothing would be applied"]
