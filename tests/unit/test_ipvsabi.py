"""The IPVS sockopt ABI lbd serves to unmodified tools (lb/ipvsabi): struct layouts against the
system's linux/ip_vs.h (compiled, not retyped), the kernel's length checks and errnos, and the
answers of do_ip_vs_get_ctl, over a Director with the C engine (no privileges needed)."""

from __future__ import annotations

import asyncio
import errno
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from lb.director import Director
from lb.ipvsabi import procfs, structs
from lb.ipvsabi.handlers import ipvs_proc, ipvs_sockopt
from lb.ipvsabi.sockopt import Sockopt
from lb.ipvsabi.structs import (
    DAEMON_USER,
    DEST_ENTRY,
    DEST_USER,
    GET_DESTS,
    GET_SERVICES,
    GETINFO,
    SERVICE_ENTRY,
    SERVICE_USER,
    SO_GET,
    SO_SET,
    TIMEOUT_USER,
)

HEADER = Path("/usr/include/linux/ip_vs.h")


def _probe_source() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/ip_vs.h>", "int main(void) {"]
    for layout in structs.LAYOUTS:
        lines.append(f'printf("{layout.name} __sizeof__ %zu\\n", sizeof(struct {layout.name}));')
        for name in layout.offsets:
            # nested fields: offsetof(struct ip_vs_service_entry, stats.conns) (GNU C accepts the path)
            lines.append(f'printf("{layout.name} {name} %zu\\n", offsetof(struct {layout.name}, {name}));')
    for name in [f"IP_VS_SO_SET_{k}" for k in SO_SET] + [f"IP_VS_SO_GET_{k}" for k in SO_GET]:
        lines.append(f'printf("const {name} %d\\n", {name});')
    lines.append('printf("const IP_VS_VERSION_CODE %d\\n", IP_VS_VERSION_CODE);')
    lines.append("return 0; }")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is missing (Debian package linux-libc-dev)")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc) to read linux/ip_vs.h's sizes with")
    d = tmp_path_factory.mktemp("ipvs-probe")
    (d / "probe.c").write_text(_probe_source())
    subprocess.run([cc, "-std=gnu11", "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True, text=True).stdout
    facts = {}
    for line in out.splitlines():
        owner, field, value = line.split()
        facts[f"{owner}.{field}"] = int(value)
    return facts


@pytest.mark.parametrize("layout", structs.LAYOUTS, ids=lambda layout: layout.name)
def test_layout_matches_the_header(layout: structs.Layout, header_facts: dict[str, int]) -> None:
    assert layout.size == header_facts[f"{layout.name}.__sizeof__"]
    for name, offset in layout.offsets.items():
        assert offset == header_facts[f"{layout.name}.{name}"], name


def test_command_numbers_match_the_header(header_facts: dict[str, int]) -> None:
    for name, value in SO_SET.items():
        assert value == header_facts[f"const.IP_VS_SO_SET_{name}"]
    for name, value in SO_GET.items():
        assert value == header_facts[f"const.IP_VS_SO_GET_{name}"]
    assert structs.IP_VS_VERSION_CODE == header_facts["const.IP_VS_VERSION_CODE"]


# ---------------------------------------------------------------------------- semantics


@pytest.fixture
def director() -> Director:
    from lb.fastpath import CEngine

    return Director(CEngine(conn_max=64), rules=None, resolver=None)


def _svc(addr: str = "10.0.0.1", port: int = 80, proto: int = socket.IPPROTO_TCP, sched: str = "rr",
         flags: int = 0, timeout: int = 0, netmask: str = "255.255.255.255", fwmark: int = 0) -> bytes:
    return SERVICE_USER.pack(protocol=proto, addr=socket.inet_aton(addr), port=port.to_bytes(2, "big"), fwmark=fwmark,
                             sched_name=sched.encode(), flags=flags, timeout=timeout, netmask=socket.inet_aton(netmask))


def _dest(addr: str, port: int = 80, fwd: int = structs.IP_VS_CONN_F_DROUTE, weight: int = 1) -> bytes:
    return DEST_USER.pack(addr=socket.inet_aton(addr), port=port.to_bytes(2, "big"), conn_flags=fwd, weight=weight)


def test_set_lengths_are_the_kernels(director: Director) -> None:
    so = Sockopt(lambda op, a: director.handle(op, a))
    assert so.set(SO_SET["ADD"], _svc() + b"\0").errno == errno.EINVAL
    assert so.set(SO_SET["ADD"], _svc()[:-1]).errno == errno.EINVAL
    assert so.set(SO_SET["FLUSH"], b"\0").errno == errno.EINVAL
    assert so.set(SO_SET["ADDDEST"], _svc()).errno == errno.EINVAL
    assert so.set(structs.IP_VS_SO_SET_MAX + 1, b"").errno == errno.EINVAL
    assert so.set(SO_SET["ADD"], _svc(proto=1)).errno == errno.EFAULT  # "set_ctl: invalid protocol"
    assert so.set(SO_SET["ADD"], _svc(sched="")).errno == errno.ENOENT  # no scheduler of that name
    assert director.handle("list", {})["services"] == []


def test_add_edit_delete_and_their_errnos(director: Director) -> None:
    so = Sockopt(lambda op, a: director.handle(op, a))
    assert so.set(SO_SET["ADD"], _svc()).errno == 0
    assert so.set(SO_SET["ADD"], _svc()).errno == errno.EEXIST
    assert so.set(SO_SET["EDIT"], _svc(port=81)).errno == errno.ESRCH
    assert so.set(SO_SET["ADDDEST"], _svc() + _dest("10.0.1.2", weight=3)).errno == 0
    assert so.set(SO_SET["ADDDEST"], _svc() + _dest("10.0.1.2")).errno == errno.EEXIST
    assert so.set(SO_SET["ADDDEST"], _svc(port=81) + _dest("10.0.1.2")).errno == errno.ESRCH
    assert so.set(SO_SET["EDITDEST"], _svc() + _dest("10.0.1.9")).errno == errno.ENOENT
    assert so.set(SO_SET["ADDDEST"], _svc() + _dest("10.0.1.3", weight=-1)).errno == errno.ERANGE
    persistent = _svc(sched="wlc", flags=structs.IP_VS_SVC_F_PERSISTENT, timeout=60, netmask="255.255.255.0")
    assert so.set(SO_SET["EDIT"], persistent).errno == 0
    listed = director.handle("list", {})["services"][0]
    assert (listed["sched"], listed["persistent"], listed["netmask"]) == ("wlc", 60, "255.255.255.0")
    assert listed["dests"][0]["weight"] == 3 and listed["dests"][0]["fwd"] == "route"
    assert so.set(SO_SET["DELDEST"], _svc() + _dest("10.0.1.2")).errno == 0
    assert so.set(SO_SET["DEL"], _svc()).errno == 0
    assert so.set(SO_SET["DEL"], _svc()).errno == errno.ESRCH


def test_daemons_timeouts_zero_flush(director: Director) -> None:
    so = Sockopt(lambda op, a: director.handle(op, a))
    assert so.set(SO_SET["STOPDAEMON"], DAEMON_USER.pack(state=1)).errno == errno.ESRCH
    assert so.set(SO_SET["TIMEOUT"], TIMEOUT_USER.pack(tcp_timeout=100, tcp_fin_timeout=0, udp_timeout=7)).errno == 0
    answer = Sockopt(lambda op, a: director.handle(op, a)).get(SO_GET["TIMEOUT"], bytes(12), 12)
    assert TIMEOUT_USER.unpack(answer.data) == {"tcp_timeout": 100, "tcp_fin_timeout": 120, "udp_timeout": 7}
    assert so.set(SO_SET["ZERO"], bytes(SERVICE_USER.size)).errno == 0  # all services
    assert so.set(SO_SET["ZERO"], _svc()).errno == errno.ESRCH
    assert so.set(SO_SET["ADD"], _svc()).errno == 0
    assert so.set(SO_SET["FLUSH"], b"").errno == 0
    assert director.handle("list", {})["services"] == []


def test_get_answers_and_length_checks(director: Director) -> None:
    so = Sockopt(lambda op, a: director.handle(op, a))
    assert so.set(SO_SET["ADD"], _svc(sched="sh", flags=structs.IP_VS_SVC_F_SCHED1 << 1)).errno == 0  # sh-port
    assert so.set(SO_SET["ADDDEST"], _svc() + _dest("10.0.1.2", fwd=structs.IP_VS_CONN_F_TUNNEL, weight=2)).errno == 0
    info = so.get(SO_GET["INFO"], bytes(12), 12)
    assert info.errno == 0 and GETINFO.unpack(info.data)["num_services"] == 1 and info.length is None
    assert so.get(SO_GET["INFO"], bytes(11), 11).errno == errno.EINVAL
    version = so.get(SO_GET["VERSION"], bytes(64), 64)
    assert version.data.startswith(b"IP Virtual Server version 1.2.1 (size=") and version.length == len(version.data)
    # GET_SERVICES: exactly header + n entries, or EINVAL
    head = GET_SERVICES.pack(num_services=1)
    assert so.get(SO_GET["SERVICES"], head, GET_SERVICES.size + SERVICE_ENTRY.size + 8).errno == errno.EINVAL
    services = so.get(SO_GET["SERVICES"], head, GET_SERVICES.size + SERVICE_ENTRY.size)
    entry = SERVICE_ENTRY.unpack(services.data, GET_SERVICES.size)
    assert structs.cstring(entry["sched_name"]) == "sh" and entry["num_dests"] == 1
    assert entry["flags"] & (structs.IP_VS_SVC_F_SCHED1 << 1) and entry["flags"] & structs.IP_VS_SVC_F_HASHED
    # GET_DESTS: the same rule; an unknown service is ESRCH
    get = GET_DESTS.pack(protocol=socket.IPPROTO_TCP, addr=socket.inet_aton("10.0.0.1"), port=(80).to_bytes(2, "big"),
                         num_dests=1)
    dests = so.get(SO_GET["DESTS"], get, GET_DESTS.size + DEST_ENTRY.size)
    dest = DEST_ENTRY.unpack(dests.data, GET_DESTS.size)
    assert dest["weight"] == 2 and dest["conn_flags"] & structs.IP_VS_CONN_F_FWD_MASK == structs.IP_VS_CONN_F_TUNNEL
    assert so.get(SO_GET["DESTS"], get, GET_DESTS.size).errno == errno.EINVAL
    other = GET_DESTS.pack(protocol=socket.IPPROTO_UDP, addr=socket.inet_aton("10.0.0.1"), port=(80).to_bytes(2, "big"))
    assert so.get(SO_GET["DESTS"], other, GET_DESTS.size).errno == errno.ESRCH
    # GET_DAEMON: two ip_vs_daemon_user, never the (larger) length asked for
    daemon = so.get(SO_GET["DAEMON"], bytes(104), 104)
    assert daemon.data == bytes(2 * DAEMON_USER.size) and daemon.length is None
    assert so.get(SO_GET["DAEMON"], bytes(47), 47).errno == errno.EINVAL
    assert so.get(SO_GET["DEST"], b"", 0).errno == errno.EINVAL


def test_sync_daemons_start_list_stop(director: Director) -> None:
    """IP_VS_SO_SET_STARTDAEMON/STOPDAEMON and GET_DAEMON answer from lbd's sync daemons (lb/sync)."""
    so = Sockopt(lambda op, a: director.handle(op, a))

    async def run() -> None:
        assert so.set(SO_SET["STARTDAEMON"], DAEMON_USER.pack(state=2, mcast_ifn=b"nosuchif0")).errno == errno.ENODEV
        assert so.set(SO_SET["STARTDAEMON"], DAEMON_USER.pack(state=1, mcast_ifn=b"")).errno == errno.EINVAL
        assert so.set(SO_SET["STARTDAEMON"], DAEMON_USER.pack(state=1, mcast_ifn=b"lo", syncid=4)).errno == 0
        assert so.set(SO_SET["STARTDAEMON"], DAEMON_USER.pack(state=1, mcast_ifn=b"lo")).errno == errno.EEXIST
        answer = so.get(SO_GET["DAEMON"], bytes(104), 104)
        assert len(answer.data) == 2 * DAEMON_USER.size and answer.length is None
        master = DAEMON_USER.unpack(answer.data)
        assert (master["state"], master["mcast_ifn"].rstrip(b"\0"), master["syncid"]) == (1, b"lo", 4)
        assert answer.data[DAEMON_USER.size:] == bytes(DAEMON_USER.size)  # no backup
        assert so.set(SO_SET["STOPDAEMON"], DAEMON_USER.pack(state=2)).errno == errno.ESRCH
        assert so.set(SO_SET["STOPDAEMON"], DAEMON_USER.pack(state=1)).errno == 0
        assert so.get(SO_GET["DAEMON"], bytes(104), 104).data == bytes(2 * DAEMON_USER.size)

    asyncio.run(run())


def test_handlers_check_their_arguments(director: Director) -> None:
    from lb.engine import EngineError

    for bad in ({"dir": "get", "cmd": 1153, "len": 12, "data": "zz"}, {"dir": "up", "cmd": 1153},
                {"dir": "get", "cmd": "1153", "len": 12}, {"dir": "set", "cmd": 1154, "data": "00" * 5000}):
        with pytest.raises(EngineError):
            ipvs_sockopt(director, bad)
    assert ipvs_sockopt(director, {"dir": "get", "cmd": 1153, "len": 12, "data": "00" * 12})["errno"] == 0
    with pytest.raises(EngineError):
        ipvs_proc(director, {"name": "../../etc/passwd"})


def test_proc_texts_have_the_kernels_formats(director: Director) -> None:
    director.handle("add_service", {"proto": "tcp", "addr": "10.0.0.1", "port": 80, "sched": "rr"})
    director.handle("add_dest", {"service": {"proto": "tcp", "addr": "10.0.0.1", "port": 80},
                                 "dest": {"addr": "10.0.1.2", "port": 80, "fwd": "route", "weight": 1}})
    text = bytes.fromhex(ipvs_proc(director, {"name": "ip_vs"})["data"]).decode()
    assert text.splitlines()[3:] == ["TCP  0A000001:0050 rr  ",
                                     "  -> 0A000102:0050      Route   1      0          0         "]
    conn = procfs.ip_vs_conn({"connections": [{"proto": "tcp", "caddr": "10.0.2.1", "cport": 40000,
                                               "vaddr": "10.0.0.1", "vport": 80, "daddr": "10.0.1.2", "dport": 80,
                                               "state": "ESTABLISHED", "expires_ms": 899_999}]})
    assert conn.splitlines()[1] == "TCP 0A000201 9C40 0A000001 0050 0A000102 0050 ESTABLISHED     899"
    stats = bytes.fromhex(ipvs_proc(director, {"name": "ip_vs_stats"})["data"]).decode()
    assert stats.splitlines()[2] == f"{0:8X} {0:8X} {0:8X} {0:16X} {0:16X}"


def test_fullnat_real_servers_are_not_shown_and_the_tool_is_told(director: Director) -> None:
    key = {"proto": "tcp", "addr": "10.0.0.1", "port": 80}
    director.handle("add_service", {**key, "sched": "rr"})
    director.handle("add_dest", {"service": key, "dest": {"addr": "10.0.1.2", "port": 80, "fwd": "route"}})
    director.handle("add_dest", {"service": key, "dest": {"addr": "10.0.1.3", "port": 8080, "fwd": "fullnat"}})
    so = Sockopt(lambda op, a: director.handle(op, a))
    head = GET_SERVICES.pack(num_services=1)
    entry = SERVICE_ENTRY.unpack(so.get(SO_GET["SERVICES"], head, GET_SERVICES.size + SERVICE_ENTRY.size).data,
                                 GET_SERVICES.size)
    assert entry["num_dests"] == 1  # what GET_DESTS will carry, so ipvsadm's length check holds
    get = GET_DESTS.pack(protocol=socket.IPPROTO_TCP, addr=socket.inet_aton("10.0.0.1"), port=(80).to_bytes(2, "big"),
                         num_dests=1)
    dests = so.get(SO_GET["DESTS"], get, GET_DESTS.size + DEST_ENTRY.size)
    assert socket.inet_ntoa(DEST_ENTRY.unpack(dests.data, GET_DESTS.size)["addr"]) == "10.0.1.2"
    assert "1 FULLNAT real server(s)" in dests.note and "lbadm -L" in dests.note


def test_values_lbd_refuses_are_einval_with_lbds_reason(director: Director) -> None:
    so = Sockopt(lambda op, a: director.handle(op, a))
    assert so.set(SO_SET["ADD"], _svc()).errno == 0
    thresholds = DEST_USER.pack(addr=socket.inet_aton("10.0.1.2"), port=(80).to_bytes(2, "big"),
                                conn_flags=structs.IP_VS_CONN_F_DROUTE, weight=1, u_threshold=5, l_threshold=9)
    refused = so.set(SO_SET["ADDDEST"], _svc() + thresholds)
    assert refused.errno == errno.ERANGE and refused.note == ""  # ip_vs_add_dest: l_threshold above u_threshold
    assert director.handle("list", {})["services"][0]["dests"] == []
