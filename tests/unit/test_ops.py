"""-o/--ops (one-packet scheduling) and the scheduler flags through every door: both engines' tables,
lbadm against lbd's real dispatch, the control protocol, the TOML configuration.

The kernel (ip_vs_core.c) gives each datagram of a UDP service with IP_VS_SVC_F_ONEPACKET a
connection that is never hashed and is expired as soon as the packet is sent; on a TCP service the
flag is stored and listed but changes nothing; ipvsadm refuses -o on a TCP service itself. lbd
refuses FULLNAT destinations on a one-packet UDP service: FULLNAT must find the entry again to
translate the real server's replies (the packet behaviour is in tests/packet_rows_hashing.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import packet_table as table
from lb.config import ConfigErrors, parse_config
from lb.director import Director
from lb.engine import EngineError
from lb.model import DestSpec, ServiceKey, ServiceSpec
from lb.pyengine import PyEngine
from line_server import engine_of_kind, lbadm, served_director

FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
VIP = "10.0.0.1"
UDP = ServiceKey(17, table.VIP, 53)


@pytest.mark.parametrize("factory", FACTORIES)
def test_engines_refuse_fullnat_on_a_one_packet_udp_service(factory: table.EngineFactory) -> None:
    engine = factory.make(0)  # type: ignore[operator]
    engine.add_service(ServiceSpec(UDP, "rr", ops=True))
    engine.add_dest(UDP, DestSpec(table.RS1, 53, "route"))
    engine.add_dest(UDP, DestSpec(table.RS2, 53, "tunnel"))
    for change in (lambda: engine.add_dest(UDP, DestSpec(table.RS3, 53, "fullnat")),
                   lambda: engine.edit_dest(UDP, DestSpec(table.RS1, 53, "fullnat"))):
        with pytest.raises(EngineError) as refused:
            change()
        assert refused.value.errno_name == "EOPNOTSUPP"
    (svc,) = engine.services()
    assert svc.spec.ops and [(d.spec.addr, d.spec.fwd) for d in svc.dests] == [(table.RS2, "tunnel"), (table.RS1, "route")]
    # The other way round: a UDP service with a FULLNAT destination cannot become one-packet ...
    engine.edit_service(ServiceSpec(UDP, "rr"))
    engine.add_dest(UDP, DestSpec(table.RS3, 53, "fullnat"))
    with pytest.raises(EngineError) as refused:
        engine.edit_service(ServiceSpec(UDP, "sh", sched_flags=3, ops=True))
    assert refused.value.errno_name == "EOPNOTSUPP"
    assert engine.services()[0].spec == ServiceSpec(UDP, "rr")  # unchanged
    # ... and -o on TCP changes nothing, so FULLNAT is fine there (the kernel stores the flag).
    tcp = ServiceKey(6, table.VIP, 80)
    engine.add_service(ServiceSpec(tcp, "mh", sched_flags=1, ops=True))
    engine.add_dest(tcp, DestSpec(table.RS3, 80, "fullnat"))
    assert engine.services()[1].spec == ServiceSpec(tcp, "mh", sched_flags=1, ops=True)


@pytest.fixture(params=["c", "python"])
def lbd(request: pytest.FixtureRequest) -> Iterator[str]:
    with served_director(engine_of_kind(request.param)) as (path, _):
        yield path


# What ipvsadm 1.31 prints for these services (print_service_entry: flags in brackets after the
# scheduler, " ops" last; -S: " -o" then " -b ...").
RULES = (f"-A -u {VIP}:53 -s mh -o -b mh-fallback,mh-port\n"
         f"-a -u {VIP}:53 -r 10.0.0.2:53 -g -w 1\n"
         f"-A -u {VIP}:54 -s sh -b sh-port\n")


def test_lbadm_lists_and_saves_ops_and_flags_as_ipvsadm(lbd: str) -> None:
    assert lbadm(lbd, "-R", stdin=RULES) == (0, "", "")
    listing = lbadm(lbd, "-L", "-n")[1]
    assert f"UDP  {VIP}:53 mh (mh-fallback,mh-port) ops\n" in listing
    assert f"UDP  {VIP}:54 sh (sh-port)\n" in listing
    assert lbadm(lbd, "-S", "-n")[1] == RULES
    assert lbadm(lbd, "-A", "-t", f"{VIP}:80", "-o") == (2, "", "One-Packet Scheduling is only for UDP virtual services\n")


def test_lbadm_refuses_fullnat_on_a_one_packet_service(lbd: str) -> None:
    assert lbadm(lbd, "-A", "-u", f"{VIP}:53", "-s", "rr", "-o") == (0, "", "")
    rc, out, err = lbadm(lbd, "-a", "-u", f"{VIP}:53", "-r", "10.0.0.2", "-b")
    assert (rc, out) == (255, "")
    assert "one-packet scheduling (-o) keeps no connection entry, and FULLNAT (-b) needs one" in err
    assert lbadm(lbd, "-S", "-n")[1] == f"-A -u {VIP}:53 -s rr -o\n"  # nothing added


def test_control_protocol_takes_ops_on_tcp_as_the_kernel_does() -> None:
    """keepalived or any other client may send -o for a TCP service: the kernel keeps the flag."""
    d = Director(PyEngine(conn_max=16), rules=None, resolver=None)
    d.handle("add_service", {"proto": "tcp", "addr": VIP, "port": 80, "sched": "sh", "ops": True,
                             "sched_flags": ["sh-fallback", "flag-3"]})
    (svc,) = d.handle("list", {})["services"]
    assert svc["ops"] is True and svc["sched_flags"] == ["sh-fallback", "flag-3"]


def test_toml_sched_flags_and_ops() -> None:
    config = parse_config('[[service]]\nproto = "udp"\naddr = "10.0.0.1"\nport = 53\nsched = "mh"\n'
                          'sched_flags = ["mh-port", "mh-fallback"]\nops = true\n', "ok.toml")
    assert config.services[0].spec == ServiceSpec(ServiceKey(17, VIP, 53), "mh", sched_flags=3, ops=True)
    bad = ('[[service]]\nproto = "tcp"\naddr = "10.0.0.1"\nport = 80\nsched = "sh"\n'
           'sched_flags = ["mh-port"]\nops = true\n'
           '[[service]]\nproto = "udp"\naddr = "10.0.0.1"\nport = 53\nsched_flags = "flag-1"\nops = 1\n'
           '[[service]]\nproto = "udp"\naddr = "10.0.0.1"\nport = 54\nsched_flags = ["flag-9"]\nops = true\n'
           'laddrs = ["10.0.0.9"]\n  [[service.dest]]\n  addr = "10.0.0.3"\n  fwd = "fullnat"\n')
    with pytest.raises(ConfigErrors) as errors:
        parse_config(bad, "f.toml")
    assert [str(issue) for issue in errors.value.issues] == [
        "f.toml:6: scheduler flag 'mh-port' does not go with scheduler 'sh' (flags: flag-1, flag-2, flag-3, "
        "sh-fallback, sh-port, mh-fallback, mh-port; sh-* only with sched = \"sh\", mh-* only with sched = \"mh\")",
        "f.toml:7: 'ops' (one-packet scheduling, ipvsadm -o) is only for UDP services",
        "f.toml:12: 'sched_flags' must be an array of flag names (e.g. [\"sh-fallback\", \"sh-port\"]), got string "
        "'flag-1'",
        "f.toml:13: 'ops' must be a boolean (true/false), got integer 1",
        "f.toml:18: invalid scheduler flag 'flag-9' (flags: flag-1, flag-2, flag-3, sh-fallback, sh-port, "
        "mh-fallback, mh-port; sh-* only with sched = \"sh\", mh-* only with sched = \"mh\")",
        "f.toml:21: a one-packet service (ops = true) keeps no connection entry, and fwd = \"fullnat\" needs one "
        "for the replies",
    ]
