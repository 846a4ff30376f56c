"""DPVS syntax in lbadm (-P/-Q/-G, -z, -j, --toa) and SYN-proxy settings in lbd (TOML, set_synproxy).

Against a real Director (C engine, no queue) behind the daemon's request dispatch on a Unix
socket, driven by lbadm's main(): what the engine does must be reachable with DPVS's words, and
`lbadm -S | lbadm -R` must bring a FULLNAT + SYN-proxy service back whole.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lb.config import SERVICE_SYNPROXY_KEYS, SYNPROXY_KEYS, ConfigErrors, TomlLines, parse_config
from lb.director import Director
from lb.engine import EngineError
from lb.ipvsadm_fmt import format_laddrs
from lb.lbadm import LEGAL_OPTIONS, Action, Opt, UsageError, parse_args
from lb.model import ServiceKey, SynproxyConf
from lb.reconcile import SYNPROXY_NEEDS_FULLNAT, SetSynproxy, State, plan
from line_server import lbadm, served_director  # tests/unit helpers

REPO = Path(__file__).resolve().parents[2]
VIP = "10.0.0.1"
SVC = {"proto": "tcp", "addr": VIP, "port": 443}
KEY443 = ServiceKey(6, VIP, 443)


def c_engine() -> Any:
    from lb.fastpath import CEngine

    return CEngine(conn_max=1024)


@pytest.fixture
def served() -> Iterator[tuple[str, Director]]:
    with served_director(c_engine()) as (path, d):
        yield path, d


def ok(path: str, *argv: str, stdin: str = "") -> str:
    rc, out, err = lbadm(path, *argv, stdin=stdin)
    assert (rc, err) == (0, ""), f"lbadm {' '.join(argv)}: {rc} {err}"
    return out


# ---------------------------------------------------------------------------- parsing


def test_laddr_commands_parse_to_requests() -> None:
    inv = parse_args(["-P", "-t", f"{VIP}:443", "-z", "10.0.1.2"], env={})
    assert (inv.action, inv.request.op, inv.request.args) == (  # type: ignore[union-attr]
        Action.CHANGE, "add_laddr", {"service": SVC, "addr": "10.0.1.2"})
    inv = parse_args(["--del-laddr", "-t", f"{VIP}:443", "--laddr", "10.0.1.2", "-F", "dpdk0"], env={})
    assert (inv.request.op, inv.request.args) == ("del_laddr", {"service": SVC, "addr": "10.0.1.2"})  # type: ignore[union-attr]
    inv = parse_args(["-G"], env={})
    assert (inv.action, inv.request.op, inv.request.args) == (Action.LIST_LADDRS, "list", {"brief": True})  # type: ignore[union-attr]
    inv = parse_args(["-G", "-t", f"{VIP}:443"], env={})
    assert inv.request.args == {"service": SVC, "brief": True}  # type: ignore[union-attr]


def test_synproxy_and_toa_on_add_and_edit() -> None:
    for cmd, op in (("-A", "add_service"), ("-E", "edit_service")):
        inv = parse_args([cmd, "-t", f"{VIP}:443", "-s", "rr", "-j", "enable", "--toa"], env={})
        assert inv.request.op == op  # type: ignore[union-attr]
        assert inv.request.args["synproxy"] is True and inv.request.args["toa"] is True  # type: ignore[union-attr]
    inv = parse_args(["-E", "-t", f"{VIP}:443", "--synproxy=disable"], env={})
    assert "synproxy" not in inv.request.args and "toa" not in inv.request.args  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-P", "-t", f"{VIP}:443"], "You need to supply the 'local-address' option for the 'add-laddr' command"),
        (["-Q", "-z", "10.0.1.2"], "You need to supply the 'service-address' option for the 'del-laddr' command"),
        (["-P", "-t", f"{VIP}:443", "-z", "nowhere!"], "illegal local address"),
        (["-P", "-t", f"{VIP}:443", "-z", "10.0.1.2", "-s", "rr"], "Illegal 'scheduler' option with the 'add-laddr' command"),
        (["-A", "-t", f"{VIP}:443", "-j", "maybe"], "synproxy switch must be enable or disable\n"),
        (["-A", "-t", f"{VIP}:443", "-z", "10.0.1.2"], "Illegal 'local-address' option with the 'add-service' command"),
        (["-a", "-t", f"{VIP}:443", "-r", "10.0.0.2", "-j", "enable"], "Illegal 'synproxy' option with the 'add-server' command"),
        (["-a", "-t", f"{VIP}:443", "-r", "10.0.0.2", "--toa"], "Illegal 'toa' option with the 'add-server' command"),
        (["-G", "-n"], "Illegal 'numeric' option with the 'get-laddr' command"),
        (["-A", "-t", f"{VIP}:443", "-j", "enable", "-j", "disable"], "multiple 'synproxy' options specified"),
    ],
)
def test_dpvs_option_errors_use_ipvsadm_wording(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_args(argv, env={})
    assert (info.value.message, info.value.status) == (message, 2)


def test_option_table_rows_cover_every_column() -> None:
    assert all(len(row) == len(Opt) for row in LEGAL_OPTIONS.values())


# ---------------------------------------------------------------------------- -G output


def test_get_laddr_prints_dpvs_table() -> None:
    result = {"services": [
        {"proto": "tcp", "addr": VIP, "port": 443, "laddrs": [{"addr": "10.0.1.2", "conns": 3},
                                                             {"addr": "10.0.1.3", "conns": 0}]},
        {"proto": "udp", "addr": VIP, "port": 53, "laddrs": []},
    ]}
    assert format_laddrs(result) == (
        "VIP:VPORT            TOTAL    SNAT_IP              CONFLICTS  CONNS     \n"
        "10.0.0.1:443         2        \n"
        "                              10.0.1.2             0          3         \n"
        "                              10.0.1.3             0          0         \n"
        "10.0.0.1:53          0        \n"
    )
    assert format_laddrs({"services": []}) == ""


# ---------------------------------------------------------------------------- against a director


FULLNAT_RULES = textwrap.dedent(f"""\
    -A -t {VIP}:443 -s rr -j enable --toa
    -P -t {VIP}:443 -z 10.0.1.2
    -P -t {VIP}:443 -z 10.0.1.3
    -a -t {VIP}:443 -r 10.0.2.11:8443 -b -w 1
    -a -t {VIP}:443 -r 10.0.2.12:8443 -b -w 2
    -A -t {VIP}:80 -s wlc
    -a -t {VIP}:80 -r 10.0.2.11:80 -g -w 1
    """)


def test_save_restore_round_trip_keeps_laddrs_toa_synproxy(served: tuple[str, Director]) -> None:
    path, d = served
    ok(path, "-R", stdin=FULLNAT_RULES)
    saved = ok(path, "-S", "-n")
    assert saved == (
        f"-A -t {VIP}:80 -s wlc\n"
        f"-a -t {VIP}:80 -r 10.0.2.11:80 -g -w 1\n"
        f"-A -t {VIP}:443 -s rr -j enable --toa\n"
        f"-P -t {VIP}:443 -z 10.0.1.2\n"
        f"-P -t {VIP}:443 -z 10.0.1.3\n"
        f"-a -t {VIP}:443 -r 10.0.2.11:8443 -b -w 1\n"
        f"-a -t {VIP}:443 -r 10.0.2.12:8443 -b -w 2\n"
    )
    spec = next(s.spec for s in d.engine.services() if s.spec.key.port == 443)
    assert spec.synproxy and spec.toa
    ok(path, "-C")
    assert ok(path, "-S", "-n") == ""
    ok(path, "-R", stdin=saved)
    assert ok(path, "-S", "-n") == saved
    # The same text is a configuration file.
    config = parse_config(saved, "saved")
    assert not plan(d.running_state(), config.state())


def test_listing_flags_and_get_laddr(served: tuple[str, Director]) -> None:
    path, _ = served
    ok(path, "-R", stdin=FULLNAT_RULES)
    out = ok(path, "-Ln")
    assert f"TCP  {VIP}:443 rr synproxy toa\n" in out
    assert f"TCP  {VIP}:80 wlc\n" in out
    got = ok(path, "-G")
    assert got.splitlines()[0].split() == ["VIP:VPORT", "TOTAL", "SNAT_IP", "CONFLICTS", "CONNS"]
    assert "%-20s %-8u \n" % (f"{VIP}:443", 2) in got and "%-20s %-8u \n" % (f"{VIP}:80", 0) in got
    one = ok(path, "-G", "-t", f"{VIP}:443")
    assert one.splitlines()[1:] == ["%-20s %-8u " % (f"{VIP}:443", 2),
                                    "                              10.0.1.2             0          0         ",
                                    "                              10.0.1.3             0          0         "]
    assert lbadm(path, "-G", "-t", f"{VIP}:444") == (1, "", "No such service\n")
    ok(path, "-Q", "-t", f"{VIP}:443", "-z", "10.0.1.3")
    assert "10.0.1.3" not in ok(path, "-G", "-t", f"{VIP}:443")
    rc, _, err = lbadm(path, "-Q", "-t", f"{VIP}:443", "-z", "10.0.1.3")
    assert (rc, err) == (255, "No such Local address\n")  # DPVS's libipvs wording
    assert lbadm(path, "-P", "-t", f"{VIP}:443", "-z", "10.0.1.2")[1:] == ("", "Local address already exists\n")
    assert lbadm(path, "-P", "-t", f"{VIP}:9", "-z", "10.0.1.2")[1:] == ("", "Service not defined\n")


def test_synproxy_refused_on_dr_destinations(served: tuple[str, Director]) -> None:
    path, d = served
    ok(path, "-A", "-t", f"{VIP}:80", "-s", "rr")
    ok(path, "-a", "-t", f"{VIP}:80", "-r", "10.0.2.11", "-g")
    rc, out, err = lbadm(path, "-E", "-t", f"{VIP}:80", "-s", "rr", "-j", "enable")
    assert (rc, out) == (255, "")
    assert err.startswith(SYNPROXY_NEEDS_FULLNAT) and "10.0.2.11:80 forwards with -g" in err
    assert err.startswith("SYN-proxy needs FULLNAT destinations (-b): DR and tunnel traffic cannot be proxied")
    assert not next(iter(d.engine.services())).spec.synproxy
    ok(path, "-A", "-t", f"{VIP}:81", "-s", "rr", "-j", "enable")
    rc, _, err = lbadm(path, "-a", "-t", f"{VIP}:81", "-r", "10.0.2.11", "-i")
    assert rc == 255 and err.startswith(SYNPROXY_NEEDS_FULLNAT)
    rc, _, err = lbadm(path, "-A", "-u", f"{VIP}:53", "-j", "enable")
    assert rc == 255 and "TCP services only" in err
    ok(path, "-a", "-t", f"{VIP}:81", "-r", "10.0.2.11:8081", "-b")
    # A restore whose -A -j enable meets a DR destination is refused whole.
    rc, _, err = lbadm(path, "-R", stdin=f"-A -t {VIP}:82 -j enable\n-a -t {VIP}:82 -r 10.0.2.11 -g\n")
    assert rc == 255 and "command 2 failed; nothing was changed" in err
    assert all(s.spec.key.port != 82 for s in d.engine.services())


def test_counters_include_synproxy_stats(served: tuple[str, Director]) -> None:
    _, d = served
    result = d.handle("counters", {})
    assert {"cookies_sent", "cookies_valid", "syn_retransmits", "give_ups"} <= set(result["synproxy"])


# ---------------------------------------------------------------------------- TOML settings


SP_TOML = textwrap.dedent(f"""\
    [synproxy]
    init_rto_ms = 100
    max_retries = 5

    [[service]]
    proto = "tcp"
    addr = "{VIP}"
    port = 443
    laddrs = ["10.0.1.2"]

      [service.synproxy]
      max_rto_ms = 800
      sack = false

      [[service.dest]]
      addr = "10.0.2.11"
      fwd = "fullnat"

    [[service]]
    proto = "tcp"
    addr = "{VIP}"
    port = 444
    synproxy = true
    laddrs = ["10.0.1.2"]

      [[service.dest]]
      addr = "10.0.2.12"
      fwd = "fullnat"
    """)


class SpSpy:
    """The C engine, recording set_synproxy calls."""

    def __init__(self) -> None:
        self.inner = c_engine()
        self.name = "c"
        self.calls: list[tuple[Any, Any]] = []

    def set_synproxy(self, key: Any, conf: Any) -> None:
        self.calls.append((key, conf))
        self.inner.set_synproxy(key, conf)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_toml_synproxy_settings_are_applied_and_reloaded_minimally(tmp_path: Path) -> None:
    conf = tmp_path / "lbd.toml"
    conf.write_text(SP_TOML)
    eng = SpSpy()
    d = Director(eng, rules=None, resolver=None, config_path=str(conf))
    d.handle("reload", {})
    default = SynproxyConf(init_rto_ms=100, max_retries=5)
    own = SynproxyConf(init_rto_ms=100, max_retries=5, max_rto_ms=800, sack=False)
    assert eng.calls == [(None, default), (KEY443, own)]
    listing = d.handle("list", {})
    assert listing["synproxy_default"]["init_rto_ms"] == 100
    by_port = {s["port"]: s for s in listing["services"]}
    assert by_port[443]["synproxy"] is True and by_port[443]["synproxy_conf"]["max_rto_ms"] == 800
    assert by_port[444]["synproxy"] is True and by_port[444]["synproxy_conf"] is None
    # Same file: nothing to do. One changed key: one set_synproxy, nothing else.
    eng.calls.clear()
    assert d.handle("reload", {})["applied"] == 0
    conf.write_text(SP_TOML.replace("max_rto_ms = 800", "max_rto_ms = 1600"))
    result = d.handle("reload", {})
    assert result["applied"] == 1 and eng.calls == [(KEY443, SynproxyConf(init_rto_ms=100, max_retries=5,
                                                                           max_rto_ms=1600, sack=False))]
    assert result["plan"] == [f"# synproxy -t {VIP}:443: init_rto_ms=100 max_rto_ms=1600 max_retries=5 sack=False"]
    # The override removed: back to the default (conf None).
    eng.calls.clear()
    conf.write_text(SP_TOML.replace("  [service.synproxy]\n  max_rto_ms = 800\n  sack = false\n", "  synproxy = true\n"))
    d.handle("reload", {})
    assert eng.calls == [(KEY443, None)]
    assert d.handle("list", {"service": SVC})["services"][0]["synproxy_conf"] is None


def test_deleting_a_service_forgets_its_synproxy_settings_and_undo_restores_them() -> None:
    d = Director(c_engine(), rules=None, resolver=None)
    d.apply_config(parse_config(SP_TOML, "sp.toml"))
    assert KEY443 in d.synproxy_confs
    with pytest.raises(EngineError):
        d.handle("batch", {"requests": [{"op": "del_service", "args": SVC},
                                        {"op": "del_service", "args": SVC}]})
    assert KEY443 in d.synproxy_confs  # refused batch: nothing changed
    d.handle("del_service", SVC)
    assert KEY443 not in d.synproxy_confs
    d.handle("add_service", {**SVC, "sched": "rr"})
    assert d.handle("list", {"service": SVC})["services"][0]["synproxy_conf"] is None


def test_set_synproxy_request_validation() -> None:
    d = Director(c_engine(), rules=None, resolver=None)
    with pytest.raises(EngineError) as info:
        d.handle("set_synproxy", {"conf": {"wscale": 7}})
    assert info.value.errno_name == "EINVAL" and "window scaling" in str(info.value)
    with pytest.raises(EngineError) as info:
        d.handle("set_synproxy", {"conf": {"nosuch": 1}})
    assert "unknown SYN-proxy setting" in str(info.value)
    with pytest.raises(EngineError) as info:
        d.handle("set_synproxy", {"service": SVC, "conf": {"mss": 1400}})
    assert info.value.errno_name == "ESRCH"
    d.handle("set_synproxy", {"conf": {"mss": 1400}})
    assert d.synproxy_default == SynproxyConf(mss=1400)


@pytest.mark.parametrize(
    ("snippet", "line", "reason"),
    [
        ("[synproxy]\nwscale = 7\n", 2, "'wscale' must be 0: SYN-proxy supports no window scaling"),
        ("[synproxy]\ntimestamps = true\n", 2, "'timestamps' must be false"),
        ("[synproxy]\nmax_retries = 99\n", 2, "'max_retries' 99 out of range 0..15"),
        ("[synproxy]\nsack = 1\n", 2, "'sack' must be a boolean"),
        ("[synproxy]\ninit_rto_ms = 5000\n", 2, "init_rto_ms 5000 is higher than max_rto_ms 3000"),
        ("[synproxy]\nbogus = 1\n", 2, "unknown key 'bogus' in [synproxy]"),
        (f'[[service]]\nproto = "tcp"\naddr = "{VIP}"\nport = 1\n  [service.synproxy]\n  mss = 100\n', 6,
         "'mss' 100 out of range 536..9000"),
        (f'[[service]]\nproto = "udp"\naddr = "{VIP}"\nport = 1\n  [service.synproxy]\n  mss = 1400\n', 5,
         "'synproxy' only applies to TCP services"),
    ],
)
def test_toml_synproxy_errors_have_lines(snippet: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config(snippet, "f.toml")
    texts = [str(i) for i in info.value.issues]
    assert any(t.startswith(f"f.toml:{line}: ") and reason in t for t in texts), texts


def test_service_synproxy_table_can_be_disabled() -> None:
    text = SP_TOML.replace("  [service.synproxy]\n", "  [service.synproxy]\n  enabled = false\n")
    svc = parse_config(text, "f.toml").services[0]
    assert not svc.spec.synproxy and svc.synproxy_conf is not None and svc.synproxy_conf.max_rto_ms == 800


def test_reference_documents_every_synproxy_key() -> None:
    text = (REPO / "configs" / "reference.toml").read_text()
    lines = TomlLines(text)
    for key in SYNPROXY_KEYS:
        assert (("synproxy",), key) in lines.keys, f"reference.toml lacks [synproxy] key {key}"
    physical = text.splitlines()
    for key in SYNPROXY_KEYS:
        doc = physical[lines.keys[(("synproxy",), key)] - 1]
        assert "default" in doc or "only" in doc, doc
    assert "enabled" in SERVICE_SYNPROXY_KEYS
    config = parse_config(text, "reference.toml")
    assert config.synproxy_default == SynproxyConf()
    sp = [s for s in config.services if s.synproxy_conf is not None]
    assert len(sp) == 1 and sp[0].synproxy_conf == SynproxyConf(init_rto_ms=100, max_retries=4)


def test_plan_orders_a_synproxy_switch_around_dr_destinations() -> None:
    from lb.model import DestSpec, ServiceSpec
    from lb.reconcile import ServiceState

    key = ServiceKey(6, VIP, 80)
    plain = ServiceSpec(key, sched="rr")
    proxied = ServiceSpec(key, sched="rr", synproxy=True)
    dr = DestSpec("10.0.2.11", 80, fwd="route")
    fnat = DestSpec("10.0.2.11", 80, fwd="fullnat")
    running = State({key: ServiceState(plain, {("10.0.2.11", 80): dr}, {"10.0.1.2": None})})
    desired = State({key: ServiceState(proxied, {("10.0.2.11", 80): fnat}, {"10.0.1.2": None})})
    steps = plan(running, desired)
    assert [s.op for s in steps] == ["edit_dest", "edit_service"]
    assert running.copy().apply_all(steps) == desired
    back = plan(desired, running)
    assert [s.op for s in back] == ["edit_service", "edit_dest"]
    assert desired.copy().apply_all(back) == running
    assert isinstance(SetSynproxy(None, SynproxyConf()).describe(), str)
