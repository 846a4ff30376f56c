"""IP_VS_SO_* get/setsockopt as the kernel answers them (net/netfilter/ipvs/ip_vs_ctl.c), served
from lbd's control operations.

`Sockopt.set(cmd, data)` and `Sockopt.get(cmd, data, length)` take the bytes a tool passed (the
preload library forwards them unchanged) and return the kernel's errno (0 on success) and, for a
get, exactly the bytes the kernel would write into the tool's buffer - never more than it would
(ipvsadm asks IP_VS_SO_GET_DAEMON with a larger length than its buffer) - plus the length it
reports back. The length checks come first, as in do_ip_vs_{set,get}_ctl: a set command's length
must be its set_arglen exactly, a get buffer at least its get_arglen, and GET_SERVICES/GET_DESTS
exactly header + n * entry. Refusals of lbd's own (features the ABI cannot carry, requests lbd
does not implement) come with a `note` for the tool's stderr: the errno alone would make ipvsadm
print a kernel text that means something else.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lb.engine import EngineError
from lb.ipvsabi.structs import (
    DAEMON_USER,
    DEST_ENTRY,
    DEST_USER,
    GET_ARGLEN,
    GET_DESTS,
    GET_SERVICES,
    GETINFO,
    IP_VS_BASE_CTL,
    IP_VS_CONN_F_DROUTE,
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_LOCALNODE,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_NOOUTPUT,
    IP_VS_CONN_F_TUNNEL,
    IP_VS_SO_GET_MAX,
    IP_VS_SO_SET_MAX,
    IP_VS_SVC_F_HASHED,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    IP_VS_VERSION_CODE,
    SCHED_FLAG_SHIFT,
    SERVICE_ENTRY,
    SERVICE_USER,
    SET_ARGLEN,
    SO_GET,
    SO_SET,
    STAT_NAMES,
    TIMEOUT_USER,
    cstring,
)
from lb.model import ConfigError, sched_flag_bits, sched_flag_names

IP_VS_STATE_MASTER = 1  # linux/ip_vs.h: the sync daemon states
IP_VS_STATE_BACKUP = 2

Request = Callable[[str, dict[str, Any]], Any]  # Director.handle without a batch session

_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_SCTP: "sctp"}
_PROTO_NUMBERS = {name: number for number, name in _PROTOCOLS.items()}
_FWD_BY_FLAG = {IP_VS_CONN_F_MASQ: "masq", IP_VS_CONN_F_LOCALNODE: "route", IP_VS_CONN_F_TUNNEL: "tunnel",
                IP_VS_CONN_F_DROUTE: "route"}
_FLAG_BY_FWD = {"masq": IP_VS_CONN_F_MASQ, "tunnel": IP_VS_CONN_F_TUNNEL, "route": IP_VS_CONN_F_DROUTE}
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


@dataclass
class Answer:
    """What the kernel does: `errno` (0: success), for a get the bytes written at the start of the
    tool's buffer and the length reported back (None: *optlen is left as it was)."""

    errno: int = 0
    data: bytes = b""
    length: int | None = None
    note: str = ""  # for the tool's stderr: what the errno cannot say

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"errno": self.errno, "data": self.data.hex()}
        if self.length is not None:
            out["len"] = self.length
        if self.note:
            out["note"] = self.note
        return out


def _fail(code: int, note: str = "") -> Answer:
    return Answer(errno=code, note=note)


def _reason(exc: EngineError) -> str:
    """lbd's text without the "op: " prefix Director.handle adds (lbadm prints it so too)."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    return rest if sep and head.isidentifier() and "_" in head else text


def _errno_of(exc: EngineError) -> int:
    return int(getattr(errno, exc.errno_name, errno.EINVAL))


def _ip(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def _port(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _key_args(svc: Mapping[str, Any]) -> dict[str, Any]:
    """A control-protocol service key from a decoded ip_vs_service_user/entry/get_dests."""
    if svc["fwmark"]:
        return {"fwmark": svc["fwmark"]}
    return {"proto": _PROTOCOLS.get(svc["protocol"], str(svc["protocol"])), "addr": _ip(svc["addr"]),
            "port": _port(svc["port"])}


def _same_key(listed: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
    if key.get("fwmark") or listed.get("fwmark"):
        return int(listed.get("fwmark") or 0) == int(key.get("fwmark") or 0)
    return (listed["proto"], listed["addr"], int(listed["port"])) == (key["proto"], key["addr"], int(key["port"]))


class Sockopt:
    """The IPVS sockopt ABI over lbd's control operations (`request`: Director.handle)."""

    def __init__(self, request: Request) -> None:
        self.request = request

    # ------------------------------------------------------------------ set
    def set(self, cmd: int, data: bytes) -> Answer:
        if cmd < IP_VS_BASE_CTL or cmd > IP_VS_SO_SET_MAX:
            return _fail(errno.EINVAL)
        if len(data) != SET_ARGLEN.get(cmd, 0):
            return _fail(errno.EINVAL)
        try:
            return self._set(cmd, data)
        except ConfigError as exc:  # a value lbd refuses (Director.handle passes these through)
            return _fail(errno.EINVAL, str(exc))
        except EngineError as exc:
            code = _errno_of(exc)
            # lbd's refusals of what it does not implement: ipvsadm would print a kernel text
            # ("Operation not supported with IPv6") that means something else, and for an unknown
            # scheduler one that names no scheduler; lbd's own text (lbadm's) says what and which.
            # (lbadm's rule, lb/lbadm/errors.py: EINVAL and EOPNOTSUPP, ENOENT after -A/-E.)
            own_words = code in (errno.EINVAL, errno.EOPNOTSUPP) or (
                code == errno.ENOENT and cmd in (SO_SET["ADD"], SO_SET["EDIT"]))
            return _fail(code, _reason(exc) if own_words else "")

    def _set(self, cmd: int, data: bytes) -> Answer:
        if cmd in (SO_SET["STARTDAEMON"], SO_SET["STOPDAEMON"]):
            return self._daemon(cmd, DAEMON_USER.unpack(data))
        if cmd == SO_SET["FLUSH"]:
            self.request("clear", {})
            return Answer()
        if cmd == SO_SET["TIMEOUT"]:
            t = TIMEOUT_USER.unpack(data)
            # the kernel multiplies by HZ and keeps non-zero values: negative ones are not refused,
            # but lbd's timeouts are seconds >= 0: refused as invalid rather than stored wrapped
            if min(t.values()) < 0:
                return _fail(errno.EINVAL)
            self.request("set_timeout", {"tcp": t["tcp_timeout"], "tcpfin": t["tcp_fin_timeout"],
                                         "udp": t["udp_timeout"]})
            return Answer()
        svc = SERVICE_USER.unpack(data)
        if cmd == SO_SET["ZERO"] and not svc["fwmark"] and svc["addr"] == b"\0" * 4 and svc["port"] == b"\0\0":
            self.request("zero", {})
            return Answer()
        if svc["protocol"] not in _PROTOCOLS:
            return _fail(errno.EFAULT)  # ip_vs_ctl.c: "set_ctl: invalid protocol" is EFAULT
        key = _key_args(svc)
        if cmd in (SO_SET["ADD"], SO_SET["EDIT"]) and not cstring(svc["sched_name"]):
            return _fail(errno.ENOENT)  # ip_vs_scheduler_get("") finds no scheduler (lbd would pick wlc)
        if cmd == SO_SET["ADD"]:
            self.request("add_service", self._spec(key, svc))
            return Answer()
        if cmd not in (SO_SET["EDIT"], SO_SET["DEL"], SO_SET["ZERO"], SO_SET["ADDDEST"], SO_SET["EDITDEST"],
                       SO_SET["DELDEST"]):
            return _fail(errno.EINVAL)
        if self._find(key) is None:
            return _fail(errno.ESRCH)  # every command but ADD looks the service up first
        if cmd == SO_SET["EDIT"]:
            self.request("edit_service", self._spec(key, svc))
        elif cmd == SO_SET["DEL"]:
            self.request("del_service", key)
        elif cmd == SO_SET["ZERO"]:
            self.request("zero", {"service": key})
        else:
            dest = DEST_USER.unpack(data, SERVICE_USER.size)
            target = {"addr": _ip(dest["addr"]), "port": _port(dest["port"])}
            if cmd == SO_SET["DELDEST"]:
                self.request("del_dest", {"service": key, "dest": target})
            else:
                op = "add_dest" if cmd == SO_SET["ADDDEST"] else "edit_dest"
                fwd = _FWD_BY_FLAG.get(dest["conn_flags"] & IP_VS_CONN_F_FWD_MASK)
                if fwd is None:
                    return _fail(errno.EINVAL)
                if dest["weight"] < 0:
                    return _fail(errno.ERANGE)  # ip_vs_add_dest/ip_vs_edit_dest: weight below zero
                self.request(op, {"service": key, "dest": {**target, "fwd": fwd, "weight": dest["weight"],
                                                           "u_threshold": dest["u_threshold"],
                                                           "l_threshold": dest["l_threshold"]}})
        return Answer()

    @staticmethod
    def _spec(key: dict[str, Any], svc: Mapping[str, Any]) -> dict[str, Any]:
        sched = cstring(svc["sched_name"])
        flags = int(svc["flags"])
        persistent = flags & IP_VS_SVC_F_PERSISTENT
        return {**key, "sched": sched,
                "persistent": int(svc["timeout"]) if persistent else None,
                "netmask": _ip(svc["netmask"]) if persistent else "255.255.255.255",
                "ops": bool(flags & IP_VS_SVC_F_ONEPACKET),
                "sched_flags": sched_flag_names(sched, (flags >> SCHED_FLAG_SHIFT) & 0x7)}

    def _daemon(self, cmd: int, daemon: Mapping[str, Any]) -> Answer:
        """IP_VS_SO_SET_STARTDAEMON / STOPDAEMON (do_ip_vs_set_ctl): the state names which daemon; the
        sockopt ABI carries only the interface and syncid, the rest takes the kernel's defaults."""
        state = {IP_VS_STATE_MASTER: "master", IP_VS_STATE_BACKUP: "backup"}.get(int(daemon["state"]))
        if state is None:
            return _fail(errno.EINVAL)
        if cmd == SO_SET["STOPDAEMON"]:
            self.request("stop_daemon", {"state": state})  # ESRCH: no such daemon is running
            return Answer()
        ifn = cstring(daemon["mcast_ifn"])
        if not ifn:
            return _fail(errno.EINVAL)  # strscpy of an empty name: the kernel's EINVAL
        self.request("start_daemon", {"state": state, "mcast_ifn": ifn, "syncid": int(daemon["syncid"]) & 0xFF})
        return Answer()

    # ------------------------------------------------------------------ get
    def get(self, cmd: int, data: bytes, length: int) -> Answer:
        if cmd < IP_VS_BASE_CTL or cmd > IP_VS_SO_GET_MAX:
            return _fail(errno.EINVAL)
        copylen = GET_ARGLEN.get(cmd, 0)
        if length < copylen or len(data) < copylen:
            return _fail(errno.EINVAL)
        try:
            return self._get(cmd, data[:copylen], length)
        except ConfigError as exc:
            return _fail(errno.EINVAL, str(exc))
        except EngineError as exc:
            return _fail(_errno_of(exc))

    def _get(self, cmd: int, arg: bytes, length: int) -> Answer:
        if cmd == SO_GET["DAEMON"]:
            # two ip_vs_daemon_user, master then backup, zeroed where none runs - exactly that
            # length, never the tool's
            running = {d["state"]: d for d in self.request("get_daemon", {})["daemons"]}
            parts = []
            for state, value in (("master", IP_VS_STATE_MASTER), ("backup", IP_VS_STATE_BACKUP)):
                d = running.get(state)
                parts.append(DAEMON_USER.pack(state=value, mcast_ifn=str(d["mcast_ifn"]).encode(),
                                              syncid=int(d["syncid"])) if d else bytes(DAEMON_USER.size))
            return Answer(data=b"".join(parts))
        if cmd == SO_GET["VERSION"]:
            listing = self.request("list", {})
            text = f"IP Virtual Server version 1.2.1 (size={int(listing['conn_tab_size'])})".encode() + b"\0"
            return Answer(data=text, length=len(text))
        if cmd == SO_GET["INFO"]:
            listing = self.request("list", {})
            return Answer(data=GETINFO.pack(version=IP_VS_VERSION_CODE, size=int(listing["conn_tab_size"]),
                                            num_services=len(listing["services"])))
        if cmd == SO_GET["SERVICES"]:
            wanted = GET_SERVICES.unpack(arg)["num_services"]
            if length != GET_SERVICES.size + SERVICE_ENTRY.size * wanted:
                return _fail(errno.EINVAL)
            services = self.request("list", {})["services"][:wanted]
            return Answer(data=arg[:GET_SERVICES.size] + b"".join(_service_entry(s) for s in services))
        if cmd == SO_GET["SERVICE"]:
            found = self._find(_key_args(SERVICE_ENTRY.unpack(arg)))
            if found is None:
                return _fail(errno.ESRCH)
            return Answer(data=_service_entry(found))
        if cmd == SO_GET["DESTS"]:
            get = GET_DESTS.unpack(arg)
            if length != GET_DESTS.size + DEST_ENTRY.size * get["num_dests"]:
                return _fail(errno.EINVAL)
            found = self._find(_key_args(get))
            if found is None:
                return _fail(errno.ESRCH)
            dests = _expressible(found)[:get["num_dests"]]
            return Answer(data=arg[:GET_DESTS.size] + b"".join(_dest_entry(d) for d in dests),
                          note=_hidden_note(found))
        if cmd == SO_GET["TIMEOUT"]:
            t = self.request("get_timeout", {})
            return Answer(data=TIMEOUT_USER.pack(tcp_timeout=int(t["tcp"]), tcp_fin_timeout=int(t["tcpfin"]),
                                                 udp_timeout=int(t["udp"])))
        return _fail(errno.EINVAL)  # GET_DEST ("not used now") and the holes of the table

    def _find(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The service as `list` shows it, or None (ESRCH and anything lbd cannot even look up,
        e.g. an SCTP key: the kernel finds no such service either)."""
        try:
            listing = self.request("list", {"service": dict(key)})
        except EngineError:
            return None
        found = [svc for svc in listing["services"] if _same_key(svc, key)]
        return dict(found[0]) if found else None


def _expressible(svc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The real servers the ABI can carry: FULLNAT has no forwarding flag there (lbadm shows them)."""
    return [d for d in svc.get("dests") or [] if d.get("fwd") in _FLAG_BY_FWD]


def _hidden_note(svc: Mapping[str, Any]) -> str:
    hidden = len(svc.get("dests") or []) - len(_expressible(svc))
    if not hidden:
        return ""
    where = f"FWM {svc['fwmark']}" if svc.get("fwmark") else f"{str(svc['proto']).upper()} {svc['addr']}:{svc['port']}"
    return (f"{where} has {hidden} FULLNAT real server(s) that the kernel's IPVS interface cannot carry: "
            "not shown here (lbadm -L shows them)")


def _stats_values(stats: Mapping[str, Any]) -> dict[str, int]:
    """ip_vs_export_stats_user: counters of 64 bits truncated to the ABI's widths."""
    out = {}
    for name in STAT_NAMES:
        mask = _U64 if name.endswith("bytes") and not name.endswith("bps") else _U32
        out[f"stats.{name}"] = int(stats.get(name) or 0) & mask
    return out


def _key_fields(svc: Mapping[str, Any]) -> dict[str, Any]:
    if svc.get("fwmark"):
        return {"protocol": _PROTO_NUMBERS.get(str(svc.get("proto")), socket.IPPROTO_TCP), "addr": bytes(4),
                "port": bytes(2), "fwmark": int(svc["fwmark"])}
    return {"protocol": _PROTO_NUMBERS[str(svc["proto"])], "addr": socket.inet_aton(str(svc["addr"])),
            "port": int(svc["port"]).to_bytes(2, "big"), "fwmark": 0}


def _service_entry(svc: Mapping[str, Any]) -> bytes:
    flags = IP_VS_SVC_F_HASHED  # every listed service is hashed (ip_vs_svc_hash)
    if svc.get("persistent") is not None:
        flags |= IP_VS_SVC_F_PERSISTENT
    if svc.get("ops"):
        flags |= IP_VS_SVC_F_ONEPACKET
    flags |= sched_flag_bits(str(svc["sched"]), list(svc.get("sched_flags") or [])) << SCHED_FLAG_SHIFT
    return SERVICE_ENTRY.pack(
        **_key_fields(svc),
        sched_name=str(svc["sched"]).encode()[:15],
        flags=flags,
        timeout=int(svc.get("persistent") or 0),
        netmask=socket.inet_aton(str(svc.get("netmask") or "255.255.255.255")),
        num_dests=len(_expressible(svc)),
        **_stats_values(svc.get("stats") or {}),
    )


def _dest_entry(dest: Mapping[str, Any]) -> bytes:
    # __ip_vs_update_dest: the method, INACTIVE, and NOOUTPUT for every method but NAT
    fwd_flag = _FLAG_BY_FWD[str(dest["fwd"])]
    conn_flags = fwd_flag | IP_VS_CONN_F_INACTIVE | (IP_VS_CONN_F_NOOUTPUT if fwd_flag != IP_VS_CONN_F_MASQ else 0)
    return DEST_ENTRY.pack(
        addr=socket.inet_aton(str(dest["addr"])),
        port=int(dest["port"]).to_bytes(2, "big"),
        conn_flags=conn_flags,
        weight=int(dest["weight"]),
        u_threshold=int(dest.get("u_threshold") or 0),
        l_threshold=int(dest.get("l_threshold") or 0),
        activeconns=int(dest.get("active") or 0) & _U32,
        inactconns=int(dest.get("inactive") or 0) & _U32,
        persistconns=int(dest.get("persist") or 0) & _U32,
        **_stats_values(dest.get("stats") or {}),
    )
