"""The PROXY protocol option (issue 14 item 5) end to end without packets on the wire: lbadm's
--proxy-protocol, the TOML key, `-S`/`-L` output and `-S | -R`, and the refusals each layer gives
(the model, both engines, the configuration file) with the same errno. The bytes are the packet
table's (tests/packet_rows_proxy.py); this file also checks the headers both engines build for
addresses of every length against the spec.
"""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import packet_rows_proxy
import packet_table as t
from lb.config import ConfigErrors, parse_config
from lb.director import Director
from lb.engine import EngineError, FwdState, Verdict
from lb.lbadm import UsageError, parse_args
from lb.model import ConfigError, DestSpec, ServiceKey, ServiceSpec
from lb.reconcile import PROXY_NEEDS_FULLNAT, AddDest, AddService, EditService, State, StateError
from line_server import lbadm, served_director

VIP = "10.0.0.1"
KEY = ServiceKey(6, VIP, 80)


def engines() -> list[tuple[str, Any]]:
    from lb.pyengine import PyEngine

    found: list[tuple[str, Any]] = [("py", PyEngine)]
    try:
        from lb.fastpath import CEngine
    except ImportError:  # pragma: no cover - the C core is built by `make build`
        return found
    return [*found, ("c", CEngine)]


@pytest.fixture(params=[name for name, _ in engines()])
def engine(request: pytest.FixtureRequest) -> Any:
    return dict(engines())[request.param](conn_max=64, hash_seed=1)


# ---------------------------------------------------------------------------- refusals


def test_model_refuses_what_the_engines_refuse(engine: Any) -> None:
    cases: list[tuple[list[Any], str]] = [
        ([AddService(ServiceSpec(ServiceKey(17, VIP, 53), proxy_protocol="v1"))], "EINVAL"),
        ([AddService(ServiceSpec(KEY, toa=True, proxy_protocol="v2"))], "EINVAL"),
        ([AddService(ServiceSpec(ServiceKey.for_fwmark(3), proxy_protocol="v2"))], "EINVAL"),
        ([AddService(ServiceSpec(KEY, proxy_protocol="v1")), AddDest(KEY, DestSpec("10.0.2.1", 80, "route"))],
         "EOPNOTSUPP"),
        ([AddService(ServiceSpec(KEY)), AddDest(KEY, DestSpec("10.0.2.1", 80, "masq")),
          EditService(ServiceSpec(KEY, proxy_protocol="v2"))], "EOPNOTSUPP"),
    ]
    for cmds, errno_name in cases:
        state = State()
        with pytest.raises(StateError) as model:
            state.apply_all(cmds)
        assert model.value.errno_name == errno_name, cmds
        fresh = type(engine)(conn_max=64, hash_seed=1)
        with pytest.raises(EngineError) as refused:
            for cmd in cmds:
                if isinstance(cmd, AddService):
                    fresh.add_service(cmd.spec)
                elif isinstance(cmd, EditService):
                    fresh.edit_service(cmd.spec)
                else:
                    fresh.add_dest(cmd.key, cmd.dest)
        assert refused.value.errno_name == errno_name, cmds
    with pytest.raises(StateError, match="PROXY protocol needs FULLNAT"):
        State().apply_all([AddService(ServiceSpec(KEY, proxy_protocol="v1")),
                           AddDest(KEY, DestSpec("10.0.2.1", 80, "tunnel"))])
    assert "FULLNAT" in PROXY_NEEDS_FULLNAT


def test_unknown_version_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="v1, v2"):
        ServiceSpec(KEY, proxy_protocol="v3")


def test_engines_keep_the_version(engine: Any) -> None:
    engine.add_service(ServiceSpec(KEY, proxy_protocol="v2"))
    engine.add_dest(KEY, DestSpec("10.0.2.1", 80, "fullnat"))
    assert [s.spec.proxy_protocol for s in engine.services()] == ["v2"]
    engine.edit_service(ServiceSpec(KEY, proxy_protocol="v1"))
    assert [s.spec.proxy_protocol for s in engine.services()] == ["v1"]
    engine.edit_service(ServiceSpec(KEY))
    assert [s.spec.proxy_protocol for s in engine.services()] == [None]


# ---------------------------------------------------------------------------- headers


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("client", "cport", "vip", "vport"), [
    ("1.2.3.4", 1, "5.6.7.8", 9),
    ("255.255.255.254", 65535, "255.255.255.253", 65534),
])
def test_header_bytes_follow_the_spec(version: str, client: str, cport: int, vip: str, vport: int) -> None:
    """The handshake ACK of each engine carries exactly the spec's header (v1 up to its 56-byte maximum)."""
    key = ServiceKey(6, vip, vport)
    laddr, rs = "10.9.0.1", "10.9.0.2"
    scapy = t._scapy()
    syn = bytes(scapy.IP(src=client, dst=vip, ttl=64) / scapy.TCP(sport=cport, dport=vport, flags="S", seq=100))
    ack = bytes(scapy.IP(src=client, dst=vip, ttl=64) / scapy.TCP(sport=cport, dport=vport, flags="A", seq=101,
                                                                   ack=1))
    expected = packet_rows_proxy.proxy_header(version, client, cport, vip, vport)
    if client.startswith("255"):
        assert len(expected) == (56 if version == "v1" else 28)
    payloads = []
    for _, make in engines():
        e = make(conn_max=64, hash_seed=1)
        e.add_service(ServiceSpec(key, proxy_protocol=version))
        e.add_laddr(key, laddr)
        e.add_dest(key, DestSpec(rs, 80, "fullnat"))
        e.set_fwd(key, rs, 80, FwdState(ifindex=3, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6, saddr="0.0.0.0",
                                        mtu=1500))
        assert e.process(syn, 0).verdict == Verdict.XMIT_L2
        out = e.process(ack, 1)
        assert out.verdict == Verdict.XMIT_L2
        payloads.append(bytes(scapy.IP(out.out)[scapy.TCP].payload))
    assert payloads == [expected] * len(payloads)


# ---------------------------------------------------------------------------- lbadm, TOML


def test_lbadm_option_parses_and_refuses() -> None:
    inv = parse_args(["-A", "-t", f"{VIP}:80", "-s", "rr", "--proxy-protocol", "v2"], env={})
    assert inv.request.args["proxy_protocol"] == "v2"  # type: ignore[union-attr]
    inv = parse_args(["-E", "-t", f"{VIP}:80", "--proxy-protocol=disable"], env={})
    assert "proxy_protocol" not in inv.request.args  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="v1, v2 or disable"):
        parse_args(["-A", "-t", f"{VIP}:80", "--proxy-protocol", "v3"], env={})
    with pytest.raises(UsageError, match="Illegal 'proxy-protocol' option"):
        parse_args(["-a", "-t", f"{VIP}:80", "-r", "10.0.2.1", "--proxy-protocol", "v1"], env={})


@pytest.fixture
def served() -> Iterator[tuple[str, Director]]:
    from lb.fastpath import CEngine

    with served_director(CEngine(conn_max=1024)) as (path, d):
        yield path, d


RULES = (f"-A -t {VIP}:80 -s rr --proxy-protocol v1\n"
         f"-P -t {VIP}:80 -z 10.0.1.2\n"
         f"-a -t {VIP}:80 -r 10.0.2.11:8080 -b -w 1\n"
         f"-A -t {VIP}:443 -s wlc -j enable --proxy-protocol v2\n"
         f"-P -t {VIP}:443 -z 10.0.1.2\n"
         f"-a -t {VIP}:443 -r 10.0.2.11:8443 -b -w 1\n")


def test_save_restore_and_listing(served: tuple[str, Director]) -> None:
    path, d = served
    assert lbadm(path, "-R", stdin=RULES)[0] == 0
    rc, saved, err = lbadm(path, "-S", "-n")
    assert (rc, err) == (0, "")
    assert saved == RULES
    listing = lbadm(path, "-Ln")[1]
    assert f"TCP  {VIP}:80 rr proxy-protocol v1\n" in listing
    assert f"TCP  {VIP}:443 wlc synproxy proxy-protocol v2\n" in listing
    assert lbadm(path, "-C")[0] == 0
    assert lbadm(path, "-R", stdin=saved)[0] == 0
    assert lbadm(path, "-S", "-n")[1] == saved
    rc, _, err = lbadm(path, "-a", "-t", f"{VIP}:80", "-r", "10.0.2.12", "-g")
    assert rc != 0 and "PROXY protocol needs FULLNAT" in err
    rc, _, err = lbadm(path, "-E", "-t", f"{VIP}:80", "-s", "rr", "--toa", "--proxy-protocol", "v1")
    assert rc != 0 and "choose one" in err
    spec = next(s.spec for s in d.engine.services() if s.spec.key.port == 443)
    assert (spec.synproxy, spec.proxy_protocol) == (True, "v2")


def _errors(text: str) -> list[str]:
    try:
        parse_config(textwrap.dedent(text), "p.toml")
    except ConfigErrors as exc:
        return [str(i) for i in exc.issues]
    return []


def test_toml_key_and_its_errors() -> None:
    config = parse_config(textwrap.dedent("""\
        [[service]]
        proto = "tcp"
        addr = "10.0.0.1"
        port = 80
        proxy_protocol = "v2"
        laddrs = ["10.0.1.2"]
          [[service.dest]]
          addr = "10.0.2.1"
          fwd = "fullnat"
        """), "p.toml")
    assert config.services[0].spec.proxy_protocol == "v2"
    found = _errors("""\
        [[service]]
        proto = "udp"
        addr = "10.0.0.1"
        port = 53
        proxy_protocol = "v1"
        [[service]]
        proto = "tcp"
        addr = "10.0.0.1"
        port = 80
        toa = true
        proxy_protocol = "v1"
        [[service]]
        proto = "tcp"
        addr = "10.0.0.1"
        port = 81
        proxy_protocol = "v9"
        [[service]]
        proto = "tcp"
        addr = "10.0.0.1"
        port = 82
        proxy_protocol = "v2"
          [[service.dest]]
          addr = "10.0.2.1"
        """)
    assert found == [
        "p.toml:5: 'proxy_protocol' only applies to TCP services (FULLNAT)",
        "p.toml:11: 'proxy_protocol' and 'toa' both pass the client's address to the real servers: choose one",
        "p.toml:16: 'proxy_protocol' must be one of off, v1, v2, got 'v9'",
        "p.toml:22: a PROXY protocol service (proxy_protocol = 'v2') only forwards with fwd = \"fullnat\", not 'route'",
    ]


def test_header_constants_match_the_spec() -> None:
    from lb import consts as C

    longest = packet_rows_proxy.proxy_header("v1", "255.255.255.255", 65535, "255.255.255.255", 65535)
    assert (C.LB_PROXY_V1_MAX_LEN, C.LB_PROXY_V2_LEN) == (len(longest), len(packet_rows_proxy.proxy_header("v2")))
    assert socket.inet_aton("1.2.3.4") in packet_rows_proxy.proxy_header("v2", "1.2.3.4")


def test_restart_does_not_restore_proxy_entries() -> None:
    """Their sequence translation is not in a dump (as SYN-proxy's): lb_conn_restore refuses them."""
    try:
        from lb.fastpath import CEngine
    except ImportError:  # pragma: no cover
        pytest.skip("C fast path not built")
    scapy = t._scapy()
    syn = bytes(scapy.IP(src="192.0.2.9", dst=VIP, ttl=64) / scapy.TCP(sport=4000, dport=80, flags="S", seq=7))
    engines_made = []
    for _ in range(2):
        e = CEngine(conn_max=64, hash_seed=1)
        e.add_service(ServiceSpec(KEY, proxy_protocol="v1"))
        e.add_laddr(KEY, "10.9.0.1")
        e.add_dest(KEY, DestSpec("10.9.0.2", 80, "fullnat"))
        e.set_fwd(KEY, "10.9.0.2", 80, FwdState(ifindex=3, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6,
                                                  saddr="0.0.0.0", mtu=1500))
        engines_made.append(e)
    assert engines_made[0].process(syn, 0).verdict == Verdict.XMIT_L2
    blob = engines_made[0].dump_connections_raw(1)
    assert engines_made[1].restore_connections_raw(blob, 1) == {"EOPNOTSUPP": 1}


def test_gso_cut_size_leaves_room_until_the_header_is_acknowledged() -> None:
    """lb_path_mtu (the NFQUEUE adapter's GSO cut size) is the path MTU less the header while the
    header may still have to be inserted, the whole MTU once the real server acknowledged it."""
    try:
        from lb._ffi import lib
    except ImportError:  # pragma: no cover
        pytest.skip("C fast path not built")
    factory = next(f for f in t.engine_factories() if f.id == "c")
    setup = packet_rows_proxy._setup("v1")
    engine: Any = t.make_engine(factory, setup)
    t.install_setup(engine, setup)
    lp = t.local_port(t.LIP1)
    hdr = packet_rows_proxy.proxy_header("v1")
    data = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"d" * 3000)
    assert engine.process(t.tcp(flags="S", seq=1000), 0).verdict == Verdict.XMIT_L2
    assert lib.lb_path_mtu(engine._lb, data, len(data), 1) == 1500 - len(hdr)
    acked = t.tcp(sport=80, dport=lp, src=t.RS1, dst=t.LIP1, flags="A", seq=5001, ack=1001 + len(hdr))
    assert engine.process(acked, 2).verdict == Verdict.ANSWER
    assert lib.lb_path_mtu(engine._lb, data, len(data), 3) == 1500
