"""lbadm's ipvsadm 1.31 command line: requests it builds, errors it reports, and an
end-to-end run against a fake lbd on a temporary Unix socket.

Expected error texts and exit statuses are ipvsadm's (fail(2, ...) -> 2; popt
errors and refused operations -> 255; failed listings -> 1).
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lb.ctlclient import ControlClient, ControlError, ProtocolError, request_once
from lb.ipvsadm_fmt import format_save
from lb.lbadm import (
    Action,
    RestoreError,
    UsageError,
    ipvs_strerror,
    main,
    parse_args,
    restore_requests,
)
from lb.namedb import NameDB, NumericNames
from line_server import LineServer  # noqa: E402  (tests/unit helper)

TRYHELP = "Try `lbadm -h' or 'lbadm --help' for more information."
VIP = {"proto": "tcp", "addr": "10.0.0.1", "port": 80}


@pytest.fixture()
def names(tmp_path: Path) -> NameDB:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 vip.example vip\n10.0.0.2 web2\n")
    services = tmp_path / "services"
    services.write_text("http\t\t80/tcp\t\twww\ndomain\t\t53/udp\n")
    return NameDB(hosts_path=str(hosts), services_path=str(services))


def request_of(argv: list[str], names: NameDB) -> dict[str, Any]:
    invocation = parse_args(argv, env={}, names=names)
    assert invocation.request is not None
    return invocation.request.to_json()


def svc_spec(sched: str = "wlc", persistent: int | None = None, netmask: str = "255.255.255.255", **key: Any) -> dict[str, Any]:
    return {**(key or VIP), "sched": sched, "persistent": persistent, "netmask": netmask}


def dest_spec(addr: str, port: int, fwd: str = "route", weight: int = 1, upper: int = 0, lower: int = 0) -> dict[str, Any]:
    return {"addr": addr, "port": port, "fwd": fwd, "weight": weight, "u_threshold": upper, "l_threshold": lower}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-A", "-t", "10.0.0.1:80", "-s", "rr"], {"op": "add_service", "args": svc_spec("rr")}),
        (["-A", "-t", "10.0.0.1:80"], {"op": "add_service", "args": svc_spec("wlc")}),
        # -p without a value: ipvsadm's IPVS_SVC_PERSISTENT_TIMEOUT, 360 s
        (["-At", "10.0.0.1:80", "-srr", "-p"], {"op": "add_service", "args": svc_spec("rr", 360)}),
        (
            ["--add-service", "--tcp-service=10.0.0.1:80", "--scheduler=rr", "--persistent=600", "--netmask", "255.255.255.0"],
            {"op": "add_service", "args": svc_spec("rr", 600, "255.255.255.0")},
        ),
        (
            ["-A", "-u", "10.0.0.1:53", "-p", "60", "-M", "255.255.0.0"],
            {"op": "add_service", "args": svc_spec("wlc", 60, "255.255.0.0", proto="udp", addr="10.0.0.1", port=53)},
        ),
        (["-A", "-t", "vip:http"], {"op": "add_service", "args": svc_spec("wlc")}),
        (["-A", "-t", "10.1:80"], {"op": "add_service", "args": svc_spec("wlc")}),
        (["-A", "-t", "10.0.0.1", "-p", "30"], {"op": "add_service", "args": svc_spec("wlc", 30, port=0, proto="tcp", addr="10.0.0.1")}),
        (["-E", "-t", "10.0.0.1:80", "-s", "rr"], {"op": "edit_service", "args": svc_spec("rr")}),
        (["-D", "-t", "10.0.0.1:80"], {"op": "del_service", "args": VIP}),
        (["-A", "-f", "7", "-s", "rr"], {"op": "add_service", "args": svc_spec("rr", fwmark=7)}),
        (
            ["-A", "-t", "[2001:db8::1]:80"],
            {"op": "add_service",
             "args": {"proto": "tcp", "addr": "2001:db8::1", "port": 80, "sched": "wlc", "persistent": None, "netmask": 128}},
        ),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2"], {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 80)}}),
        # DR and tunneling force the service's port, as ipvsadm does.
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2:8080", "-g"],
         {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 80)}}),
        (
            ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2:8080", "-i", "-x", "100", "-y", "50"],
            {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 80, "tunnel", 1, 100, 50)}},
        ),
        (
            ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2:8080", "-m", "-w", "0"],
            {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 8080, "masq", 0)}},
        ),
        (
            ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2:8080", "-b", "-w", "5"],
            {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 8080, "fullnat", 5)}},
        ),
        (
            ["--add-server", "-t", "10.0.0.1:80", "--real-server=web2:8080", "--fullnat", "--weight=65535"],
            {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 8080, "fullnat", 65535)}},
        ),
        (["-a", "-f", "7", "-r", "10.0.0.2"], {"op": "add_dest", "args": {"service": {"fwmark": 7}, "dest": dest_spec("10.0.0.2", 0)}}),
        (
            ["-a", "-f", "7", "-r", "10.0.0.2:8080", "-m"],
            {"op": "add_dest", "args": {"service": {"fwmark": 7}, "dest": dest_spec("10.0.0.2", 8080, "masq")}},
        ),
        (["-e", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-w", "3"],
         {"op": "edit_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 80, weight=3)}}),
        (["-d", "-t", "10.0.0.1:80", "-r", "10.0.0.2"],
         {"op": "del_dest", "args": {"service": VIP, "dest": {"addr": "10.0.0.2", "port": 80}}}),
        (["-C"], {"op": "clear", "args": {}}),
        (["-Z"], {"op": "zero", "args": {}}),
        (["-Z", "-t", "10.0.0.1:80"], {"op": "zero", "args": {"service": VIP}}),
        (["--set", "900", "120", "300"], {"op": "set_timeout", "args": {"tcp": 900, "tcpfin": 120, "udp": 300}}),
        (["--reload"], {"op": "reload", "args": {}}),
        (["--start-daemon", "master"], {"op": "start_daemon", "args": {"state": "master", "mcast_ifn": "eth0"}}),
        (["--start-daemon", "backup", "--sync-ext-port", "0"],
         {"op": "start_daemon", "args": {"state": "backup", "mcast_ifn": "eth0", "sync_ext_port": 0}}),
        (
            ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-i", "--tun-type", "gue", "--tun-port", "6080", "--tun-csum"],
            {"op": "add_dest", "args": {"service": VIP, "dest": {**dest_spec("10.0.0.2", 80, "tunnel"), "tun_type": "gue",
                                                                 "tun_port": 6080, "tun_flags": "csum"}}},
        ),
    ],
)
def test_change_commands_become_requests(argv: list[str], expected: dict[str, Any], names: NameDB) -> None:
    assert request_of(argv, names) == expected


@pytest.mark.parametrize(
    ("argv", "action", "op", "fmt_flags"),
    [
        ([], Action.LIST_ALL, "list", {"numeric": False}),
        (["-Ln"], Action.LIST_ALL, "list", {"numeric": True}),
        (["-l", "-n", "--stats", "--exact", "--sort"], Action.LIST_ALL, "list", {"numeric": True, "stats": True, "exact": True}),
        (["-L", "--rate", "--nosort"], Action.LIST_ALL, "list", {"rate": True, "nosort": True}),
        (["-Lnc"], Action.LIST_CONNECTIONS, "connections", {"numeric": True}),
        (["-L", "--timeout"], Action.LIST_TIMEOUT, "get_timeout", {}),
        (["-L", "--daemon"], Action.LIST_DAEMON, "get_daemon", {}),
        (["-S", "-n"], Action.SAVE, "list", {"numeric": True}),
    ],
)
def test_listing_commands(argv: list[str], action: Action, op: str, fmt_flags: dict[str, bool], names: NameDB) -> None:
    invocation = parse_args(argv, env={}, names=names)
    assert invocation.action is action
    assert invocation.request is not None and invocation.request.op == op
    for flag, value in fmt_flags.items():
        assert getattr(invocation.fmt, flag) is value


def test_list_one_service(names: NameDB) -> None:
    invocation = parse_args(["-L", "-n", "-t", "10.0.0.1:80"], env={}, names=names)
    assert invocation.action is Action.LIST_SERVICE
    assert invocation.request is not None and invocation.request.to_json() == {"op": "list", "args": {"service": VIP, "brief": True}}


def test_socket_path_precedence(names: NameDB) -> None:
    assert parse_args(["-Ln"], env={}, names=names).socket_path == "/run/lbd/lbd.sock"
    assert parse_args(["-Ln"], env={"LBD_SOCKET": "/env.sock"}, names=names).socket_path == "/env.sock"
    flag = parse_args(["--socket", "/flag.sock", "-Ln"], env={"LBD_SOCKET": "/env.sock"}, names=names)
    assert flag.socket_path == "/flag.sock"
    after = parse_args(["-Ln", "--socket=/after.sock"], env={}, names=names)
    assert after.socket_path == "/after.sock"


def test_json_may_come_first_and_only_lists_accept_it(names: NameDB) -> None:
    assert parse_args(["--json", "-Lnc"], env={}, names=names).json_output is True
    with pytest.raises(UsageError, match="Illegal 'json' option with the 'add-service' command"):
        parse_args(["-A", "-t", "10.0.0.1:80", "--json"], env={}, names=names)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--bogus"], 255, TRYHELP),
        (["-n", "-L"], 255, TRYHELP),  # ipvsadm: the command must be the first option
        (["10.0.0.1"], 255, TRYHELP),
        (["-L", "--bogus"], 255, "--bogus: unknown option"),
        (["-Lq"], 255, "-Lq: unknown option"),
        (["-A", "-t"], 255, "-t: missing argument"),
        (["-L", "--numeric=1"], 255, "--numeric=1: option does not take an argument"),
        (["-L", "-L"], 2, "invalid option `-L'"),
        (["-A", "-t", "10.0.0.256:80"], 2, "illegal virtual server address[:port] specified"),
        (["-A", "-t", "80"], 2, "illegal virtual server address[:port] specified"),
        (["-A", "-t", "10.0.0.1:65536"], 2, "illegal virtual server address[:port] specified"),
        (["-A", "-t", "10.0.0.1:nosuchport"], 2, "illegal virtual server address[:port] specified"),
        (["-A", "-t", "no.such.host:80"], 2, "illegal virtual server address[:port] specified"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.x"], 2, "illegal real server address[:port] specified"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-w", "2147483648"], 2, "illegal weight specified"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-w", "-1"], 2, "illegal weight specified"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-w", "1x"], 2, "illegal weight specified"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-x", "many"], 2, "illegal u_threshold specified"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-y", "2147483648"], 2, "illegal l_threshold specified"),
        (["-A", "-s", "rr"], 2, "You need to supply the 'service-address' option for the 'add-service' command"),
        (["-a", "-t", "10.0.0.1:80"], 2, "You need to supply the 'real-server' option for the 'add-server' command"),
        (["-d", "-r", "10.0.0.2"], 2, "You need to supply the 'service-address' option for the 'delete-server' command"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-s", "rr"], 2, "Illegal 'scheduler' option with the 'add-server' command"),
        (["-A", "-t", "10.0.0.1:80", "-w", "1"], 2, "Illegal 'weight' option with the 'add-service' command"),
        (["-d", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-m"], 2, "Illegal 'forwarding-method' option with the 'delete-server' command"),
        (["-C", "-n"], 2, "Illegal 'numeric' option with the 'flush' command"),
        (["-A", "-t", "10.0.0.1:80", "-t", "10.0.0.1:81"], 2, "multiple 'service-address' options specified"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-g", "-b"], 2, "multiple 'forwarding-method' options specified"),
        (["-A", "-t", "10.0.0.1"], 2, "Zero port specified for non-persistent service"),
        (["-A", "-t", "10.0.0.1:80", "-p", "0"], 2, "invalid timeout value `0' specified"),
        (["-A", "-t", "10.0.0.1:80", "-p", "2678401"], 2, "invalid timeout value `2678401' specified"),
        (["-A", "-t", "10.0.0.1:80", "-M", "255.255.255.x"], 2, "illegal virtual server persistent mask specified"),
        (["-A", "-f", "0"], 2, "invalid fwmark value `0' specified"),
        (["-A", "-t", "10.0.0.1:80", "-6"], 2, "-6 used before -f\n"),
        (["-A", "-t", "10.0.0.1:80", "-o"], 2, "One-Packet Scheduling is only for UDP virtual services"),
        (["-A", "-t", "10.0.0.1:80", "--sched-flags", "sh-port"], 2, "incompatible scheduler flag `sh-port'"),
        (["-A", "-t", "10.0.0.1:80", "--sched-flags", "flag-9"], 2, "invalid scheduler flag `flag-9'"),
        (["--set", "900", "120"], 2, "--set option requires 3 timeout values"),
        (["--set", "900", "120", "x"], 2, "invalid timeout value `x' specified"),
        (["-L", "extra"], 2, "unexpected argument extra"),
        (["-L", "-c", "--stats"], 2, "options conflicts in the list command"),
        (["-L", "--timeout", "--daemon"], 2, "The option 'daemon' conflicts with the 'timeout' option in the 'list' command"),
        (["-Lc", "-t", "10.0.0.1:80"], 2, "The option 'service-address' conflicts with the 'connection' option in the 'list' command"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "--tun-type", "gre"], 2, "Tunnel options conflict with forward method"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-i", "--tun-type", "gue"], 2,
         "You need to supply the 'tun-port' option for the 'gue' tunnel type"),
        (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-i", "--tun-type", "vxlan"], 2, "illegal tunnel type specified"),
        (["-a", "-t", "10.0.0.1:80", "-r", "[2001:db8::2]:80"], 2, "Different address family is allowed only for tunneling servers"),
        (["--start-daemon", "primary"], 2, "illegal start-daemon parameter specified"),
        (["--start-daemon", "master", "--sync-ext-port", "65536"], 2, "illegal sync-ext-port specified"),
        (["-L", "--sync-ext-port", "8849"], 2, "Illegal 'sync-ext-port' option with the 'list' command"),
        (["-S", "--json"], 2, "Illegal 'json' option with the 'save' command"),
    ],
)
def test_invalid_command_lines_send_nothing(
    argv: list[str], status: int, message: str, names: NameDB, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_connect(path: str) -> ControlClient:
        raise AssertionError(f"lbadm connected to {path} for an invalid command line")

    assert main(argv, connect=must_not_connect, env={}, names=names) == status
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert captured.out == ""


def test_help_prints_usage_with_lbadm_additions_and_sends_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    def must_not_connect(path: str) -> ControlClient:
        raise AssertionError("help must not talk to lbd")

    assert main(["--help", "--ignored-after-help"], connect=must_not_connect, env={}) == 0
    out = capsys.readouterr().out
    assert out.startswith("lbadm v")
    for needle in ("Usage:", "-A|E virtual-service", "--fullnat      -b", "--socket PATH", "--json", "default wlc"):
        assert needle in out
    assert main(["-v"], connect=must_not_connect, env={}) == 0
    assert "ipvsadm v1.31" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("op", "errno_name", "expected"),
    [
        ("add_dest", "ESRCH", "Service not defined"),
        ("add_dest", "EEXIST", "Destination already exists"),
        ("del_service", "ESRCH", "No such service"),
        ("edit_service", "ESRCH", "No such service"),
        ("add_service", "EEXIST", "Service already exists"),
        ("edit_dest", "ENOENT", "No such destination"),
        ("del_dest", "ENOENT", "No such destination"),
        # libipvs's "Scheduler or persistence engine not found" reads as "module not loaded":
        # lbd's reason (the schedulers it has) is printed instead (issue 12 item 8).
        ("add_service", "ENOENT", "lbd's reason"),
        ("edit_service", "ENOENT", "lbd's reason"),
        ("zero", "ESRCH", "No such service"),
        ("clear", "EPERM", "Permission denied (you must be root)"),
        ("add_dest", "EINVAL", "lbd's reason"),
        ("add_service", "EOPNOTSUPP", "lbd's reason"),
        ("clear", "ENOENT", "No such file or directory"),
        ("clear", "EWHATEVER", "lbd's reason"),
    ],
)
def test_errors_print_ipvsadm_messages(op: str, errno_name: str, expected: str) -> None:
    assert ipvs_strerror(op, errno_name, "lbd's reason") == expected


# --------------------------------------------------------------------------
# -S output restores with -R

SAVED_TABLE = {
    "version": "1.2.1",
    "conn_tab_size": 4096,
    "services": [
        {"proto": "tcp", "addr": "10.0.0.1", "port": 80, "sched": "rr", "persistent": None,
         "netmask": "255.255.255.255", "stats": {},
         "dests": [{"addr": "10.0.0.3", "port": 80, "fwd": "route", "weight": 2},
                   {"addr": "10.0.0.2", "port": 80, "fwd": "tunnel", "weight": 0}]},
        {"proto": "udp", "addr": "10.0.0.1", "port": 53, "sched": "wlc", "persistent": 360,
         "netmask": "255.255.255.0", "stats": {},
         "dests": [{"addr": "10.0.0.5", "port": 5353, "fwd": "masq", "weight": 1},
                   {"addr": "10.0.0.6", "port": 53, "fwd": "fullnat", "weight": 4}]},
    ],
}  # fmt: skip


def test_save_output_restores_into_the_same_requests() -> None:
    saved = format_save(SAVED_TABLE, numeric=True, names=NumericNames())
    requests = [r.to_json() for r in restore_requests("# saved by lbadm -S\n" + saved + "\n", NumericNames())]
    udp_key = {"proto": "udp", "addr": "10.0.0.1", "port": 53}
    assert requests == [
        {"op": "add_service", "args": svc_spec("rr")},
        {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 80, "tunnel", 0) | {"tun_type": "ipip"}}},
        {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.3", 80, "route", 2)}},
        {"op": "add_service", "args": svc_spec("wlc", 360, "255.255.255.0", **udp_key)},
        {"op": "add_dest", "args": {"service": udp_key, "dest": dest_spec("10.0.0.5", 5353, "masq", 1)}},
        {"op": "add_dest", "args": {"service": udp_key, "dest": dest_spec("10.0.0.6", 53, "fullnat", 4)}},
    ]


def test_restore_accepts_ipvsadm_prefixed_lines_and_rejects_the_whole_input_on_one_bad_line() -> None:
    ok = restore_requests("ipvsadm -A -t 10.0.0.1:80 -s rr\n\n   \n", NumericNames())
    assert [r.op for r in ok] == ["add_service"]
    with pytest.raises(RestoreError) as bad:
        restore_requests("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 10.0.0.2 -w 2147483648\n", NumericNames())
    assert bad.value.line_number == 2
    assert bad.value.error.message == "illegal weight specified"
    with pytest.raises(RestoreError, match="only commands that change the table"):
        restore_requests("-Ln\n", NumericNames())
    with pytest.raises(RestoreError) as nested:
        restore_requests("-R\n", NumericNames())
    assert nested.value.error.message == TRYHELP


# --------------------------------------------------------------------------
# End to end: lb.lbadm.main against a fake lbd on a temporary Unix socket

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]


class FakeLbd(LineServer):
    """Answers newline-delimited JSON requests with `handler(op, args)`; records every request."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        super().__init__(path, self._answer)

    def _answer(self, line: bytes) -> dict[str, Any]:
        request = json.loads(line)
        self.requests.append(request)
        return self.handler(request["op"], request.get("args", {}))


@pytest.fixture()
def socket_dir() -> Iterator[str]:
    # A short directory: Unix socket paths are limited to 107 bytes.
    directory = tempfile.mkdtemp(prefix="lbadm-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


ONE_SERVICE = {
    "version": "1.2.1",
    "conn_tab_size": 4096,
    "services": [
        {"proto": "tcp", "addr": "10.0.0.1", "port": 80, "sched": "rr", "persistent": None,
         "netmask": "255.255.255.255", "stats": {},
         "dests": [{"addr": "10.0.0.3", "port": 80, "fwd": "route", "weight": 1, "u_threshold": 0,
                    "l_threshold": 0, "active": 2, "inactive": 1, "persist": 0, "stats": {}},
                   {"addr": "10.0.0.2", "port": 80, "fwd": "route", "weight": 1, "u_threshold": 0,
                    "l_threshold": 0, "active": 0, "inactive": 0, "persist": 0, "stats": {}}]},
    ],
}  # fmt: skip


def fake_lbd_handler(op: str, args: dict[str, Any]) -> dict[str, Any]:
    if op == "list" and "service" in args and args["service"]["port"] != 80:
        return {"ok": False, "errno": "ESRCH", "error": f"no service {args['service']}"}
    if op == "list":
        return {"ok": True, "result": ONE_SERVICE}
    if op == "add_dest":
        return {"ok": False, "errno": "EEXIST", "error": "destination 10.0.0.2:80 exists"}
    if op == "set_timeout":
        return {"ok": False, "errno": "EOPNOTSUPP", "error": "--set is not supported by lbd yet"}
    if op == "batch":
        return {"ok": False, "errno": "ESRCH", "error": "service not found", "index": 1}
    return {"ok": True, "result": None}


def test_end_to_end_add_service_then_list(socket_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{socket_dir}/lbd.sock"
    with FakeLbd(path, fake_lbd_handler) as lbd:
        assert main(["--socket", path, "-A", "-t", "10.0.0.1:80", "-s", "rr"], env={}, names=NumericNames()) == 0
        assert capsys.readouterr().out == ""
        assert main(["-Ln"], env={"LBD_SOCKET": path}, names=NumericNames()) == 0
        assert capsys.readouterr().out == (
            "IP Virtual Server version 1.2.1 (size=4096)\n"
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            "TCP  10.0.0.1:80 rr\n"
            "  -> 10.0.0.2:80                  Route   1      0          0         \n"
            "  -> 10.0.0.3:80                  Route   1      2          1         \n"
        )
    assert lbd.requests == [
        {"op": "add_service", "args": svc_spec("rr")},
        {"op": "list", "args": {"brief": True}},
    ]


def test_end_to_end_errors_use_ipvsadm_wording_and_status(socket_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{socket_dir}/lbd.sock"
    env = {"LBD_SOCKET": path}
    with FakeLbd(path, fake_lbd_handler):
        assert main(["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2"], env=env, names=NumericNames()) == 255
        assert capsys.readouterr().err == "Destination already exists\n"
        assert main(["-L", "-n", "-t", "10.0.0.1:81"], env=env, names=NumericNames()) == 1
        assert capsys.readouterr().err == "No such service\n"
        assert main(["--set", "1", "2", "3"], env=env, names=NumericNames()) == 255
        assert capsys.readouterr().err == "--set is not supported by lbd yet\n"


def test_end_to_end_json_listing(socket_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{socket_dir}/lbd.sock"
    with FakeLbd(path, fake_lbd_handler):
        assert main(["-Ln", "--json", "--socket", path], env={}, names=NumericNames()) == 0
    assert json.loads(capsys.readouterr().out) == ONE_SERVICE


def test_end_to_end_restore_sends_one_atomic_batch(
    socket_dir: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"{socket_dir}/lbd.sock"
    monkeypatch.setattr(sys, "stdin", io.StringIO("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2 -w 2\n"))
    with FakeLbd(path, fake_lbd_handler) as lbd:
        assert main(["-R"], env={"LBD_SOCKET": path}, names=NumericNames()) == 255
    assert lbd.requests == [
        {"op": "batch", "args": {"requests": [
            {"op": "add_service", "args": svc_spec("rr")},
            {"op": "add_dest", "args": {"service": VIP, "dest": dest_spec("10.0.0.2", 80, weight=2)}},
        ]}},
    ]  # fmt: skip
    # lbd named the second request: its op decides ipvsadm's message.
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Service not defined"
    assert err[1] == "lbadm: restore: command 2 failed; nothing was changed"


def test_end_to_end_restore_with_a_bad_line_sends_nothing(
    socket_dir: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"{socket_dir}/lbd.sock"
    monkeypatch.setattr(sys, "stdin", io.StringIO("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r nowhere\n"))
    with FakeLbd(path, fake_lbd_handler) as lbd:
        assert main(["-R"], env={"LBD_SOCKET": path}, names=NumericNames()) == 2
    assert lbd.requests == []
    assert capsys.readouterr().err == (
        "illegal real server address[:port] specified\nlbadm: restore: line 2 is invalid; nothing was changed\n"
    )


def test_missing_daemon_is_reported_clearly(socket_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{socket_dir}/absent.sock"
    assert main(["-Ln"], env={"LBD_SOCKET": path}, names=NumericNames()) == 2
    assert capsys.readouterr().err == (
        f"lbadm: cannot connect to lbd at {path}: No such file or directory; is lbd running?\n"
    )


def test_refused_connection_is_reported_clearly(socket_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{socket_dir}/stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound but never listening: like a socket left by a dead lbd
    try:
        assert main(["-C"], env={"LBD_SOCKET": path}, names=NumericNames()) == 2
    finally:
        stale.close()
    assert capsys.readouterr().err == f"lbadm: cannot connect to lbd at {path}: Connection refused; is lbd running?\n"


def test_client_raises_typed_error_with_errno_and_message(socket_dir: str) -> None:
    path = f"{socket_dir}/lbd.sock"
    with FakeLbd(path, fake_lbd_handler), ControlClient(path) as client:
        assert client.request("list")["conn_tab_size"] == 4096
        with pytest.raises(ControlError) as refused:
            client.request("add_dest", {"service": VIP, "dest": {"addr": "10.0.0.2", "port": 80}})
    assert (refused.value.op, refused.value.errno_name) == ("add_dest", "EEXIST")
    assert refused.value.message == "destination 10.0.0.2:80 exists"


def test_malformed_list_result_is_reported_not_a_traceback(socket_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{socket_dir}/lbd.sock"
    broken = {"version": "1.2.1", "conn_tab_size": 4096, "services": [{"proto": "tcp", "sched": "rr"}]}
    with FakeLbd(path, lambda op, args: {"ok": True, "result": broken}):
        assert main(["-Ln"], env={"LBD_SOCKET": path}, names=NumericNames()) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lbadm: bad response from lbd at {path}: list result lacks or mangles KeyError('addr')")


def test_request_once_returns_the_whole_answer_refusals_included(socket_dir: str) -> None:
    """What the netns tests, the demo and the bench use: one request, the answer as lbd sent it."""
    path = f"{socket_dir}/lbd.sock"
    with FakeLbd(path, lambda op, args: {"ok": True, "result": {"op": op}} if op == "ping"
                 else {"ok": False, "errno": "ESRCH", "error": "No such service"}):
        assert request_once(path, "ping") == {"ok": True, "result": {"op": "ping"}}
        assert request_once(path, "del_service", {"port": 1}) == {"ok": False, "errno": "ESRCH",
                                                                  "error": "No such service"}
    with FakeLbd(path + "2", lambda op, args: {"no": "ok field"}), pytest.raises(ProtocolError):
        request_once(path + "2", "ping")
