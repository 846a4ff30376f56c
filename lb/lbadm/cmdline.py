"""What one command line asks for: the state ipvsadm's process_options builds, option by option,
its cross-option checks, and the request for lbd it becomes."""

from __future__ import annotations

import enum
from collections.abc import Callable

from lb import unimplemented
from lb.ipvsadm_fmt import ListFormat
from lb.lbadm.errors import fail, tryhelp
from lb.lbadm.legality import (
    _COMMAND_BY_KEY,
    _TUNNEL_OPTS,
    LEGAL_TUNNEL_OPTIONS,
    OPTION_NAMES,
    Command,
    Opt,
    check_option_combination,
    check_tunnel_options,
)
from lb.lbadm.scanner import _POSITION_FREE_KEYS, OptionToken
from lb.lbadm.values import (
    AF_INET,
    AF_INET6,
    DEFAULT_MCAST_IFN,
    IFNAME_MAX,
    INT_MAX,
    MAX_TIMEOUT_S,
    PE_NAME_MAX,
    SCHED_NAME_MAX,
    SYNC_MAXLEN_MAX,
    _atoi,
    inet_aton,
    parse_fwmark,
    parse_sched_flags,
    parse_service_address,
    parse_timeout,
    string_to_number,
)
from lb.namedb import NameDB
from lb.records import NamedTuple
from lb.vocab import DEFAULT_SCHEDULER, SCHEDULERS, unknown_scheduler

TYPE_CHECKING = False
if TYPE_CHECKING:  # lbadm imports this module: no typing at run time (lb/records.py)
    from typing import Any, ClassVar


class Action(enum.Enum):
    HELP = "help"
    VERSION = "version"
    CHANGE = "change"  # one request that changes state; prints nothing on success
    LIST_ALL = "list_all"
    LIST_SERVICE = "list_service"
    LIST_CONNECTIONS = "list_connections"
    LIST_TIMEOUT = "list_timeout"
    LIST_DAEMON = "list_daemon"
    LIST_LADDRS = "list_laddrs"  # DPVS -G
    SAVE = "save"
    RESTORE = "restore"


class Request(NamedTuple):
    op: str
    args: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "args": self.args}


class Invocation(NamedTuple):
    action: Action
    request: Request | None = None
    fmt: ListFormat = ListFormat()
    socket_path: str = ""
    json_output: bool = False
    # Why lbd cannot do what the line asks (a feature it lacks, an unknown scheduler): lbadm then
    # refuses it without asking lbd. Parsing itself stays ipvsadm's.
    refusal: str | None = None


class _ServiceArgs:
    """What the command line says of the service (class attributes: ipvsadm's defaults)."""

    af: int = 0
    proto: str | None = None
    addr: str | None = None
    port: int = 0
    fwmark: int = 0
    sched: str = ""
    persistent: bool = False
    timeout: int = 0
    netmask: str | int = "255.255.255.255"
    ops: bool = False
    pe: str | None = None
    sched_flags_text: str | None = None
    synproxy: bool = False  # DPVS -j enable
    toa: bool = False  # lbd --toa
    proxy_protocol: str | None = None  # lbd --proxy-protocol v1|v2
    laddr: str | None = None  # DPVS -z (with -P/-Q)
    ifname: str | None = None  # DPVS -F: accepted, not used

    def __init__(self) -> None:
        self.sched_flags: list[str] = []


class _DestArgs:
    """What the command line says of the real server (class attributes: ipvsadm's defaults)."""

    af: int = 0
    addr: str | None = None
    port: int = 0
    fwd: str = "route"  # ipvsadm's default, -g
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: str = "ipip"
    tun_port: int = 0
    tun_flags: str = "nocsum"


class _DaemonArgs:
    """What the command line says of the sync daemon (class attributes: the defaults)."""

    state: str = ""
    mcast_ifn: str = ""
    syncid: int | None = None
    mcast_group: str | None = None
    mcast_port: int | None = None
    mcast_ttl: int | None = None
    sync_maxlen: int | None = None
    sync_ext_port: int | None = None


_FORWARD_BY_KEY = {"gatewaying": "route", "ipip": "tunnel", "masquerading": "masq", "fullnat": "fullnat"}
_PROTO_BY_KEY = {"tcp-service": "tcp", "udp-service": "udp", "sctp-service": "sctp"}
_FORMAT_FLAGS = {
    "stats": Opt.STATS,
    "rate": Opt.RATE,
    "thresholds": Opt.THRESHOLDS,
    "persistent-conn": Opt.PERSISTENTCONN,
    "nosort": Opt.NOSORT,
    "exact": Opt.EXACT,
    "tun-info": Opt.TUN_INFO,
    "timeout": Opt.TIMEOUT,
    "daemon": Opt.DAEMON,
    "connection": Opt.CONNECTION,
    "numeric": Opt.NUMERIC,
}
_TUN_FLAG_KEYS = {"tun-nocsum": (Opt.TUN_NOCSUM, "nocsum"), "tun-csum": (Opt.TUN_CSUM, "csum"),
                  "tun-remcsum": (Opt.TUN_REMCSUM, "remcsum")}  # fmt: skip


class _CommandLine:
    """The state ipvsadm's process_options builds, filled option by option."""

    def __init__(self, names: NameDB) -> None:
        self.names = names
        self.command: Command | None = None
        self.options: set[Opt] = set()
        self.svc = _ServiceArgs()
        self.dest = _DestArgs()
        self.daemon = _DaemonArgs()
        self.timeouts: tuple[int, int, int] | None = None
        self.socket_path: str | None = None
        self.used: list[tuple[str, str | None]] = []  # (option key, value) in command-line order

    def set_option(self, opt: Opt) -> None:
        if opt in self.options:
            raise fail(f"multiple '{OPTION_NAMES[opt]}' options specified")
        self.options.add(opt)

    # -- position-free options -------------------------------------------

    def apply_position_free(self, token: OptionToken) -> None:
        if token.key == "socket":
            self.socket_path = token.arg
        else:
            self.set_option(Opt.JSON)

    # -- the command (first option) ---------------------------------------

    def set_command(self, token: OptionToken) -> Action | None:
        """Record the command; return HELP/VERSION when ipvsadm would stop right here."""
        if token.key == "help":
            return Action.HELP
        if token.key == "version":
            return Action.VERSION
        if token.key in ("start-daemon", "stop-daemon"):
            self.used.append((token.key, token.arg))
            self._set_daemon_command(token)
            return None
        command = _COMMAND_BY_KEY.get(token.key)
        if command is None:
            raise tryhelp()
        self.command = command
        return None

    def _set_daemon_command(self, token: OptionToken) -> None:
        starting = token.key == "start-daemon"
        self.command = Command.STARTDAEMON if starting else Command.STOPDAEMON
        if token.arg not in ("master", "backup"):
            # Both texts are ipvsadm's, including the odd second one.
            raise fail("illegal start-daemon parameter specified" if starting else "illegal start_daemon specified")
        self.daemon.state = token.arg

    # -- the other options --------------------------------------------------

    def apply(self, token: OptionToken) -> None:
        key = token.key
        self.used.append((key, token.arg))
        if key in _POSITION_FREE_KEYS:
            self.apply_position_free(token)
        elif key in _PROTO_BY_KEY:
            self._virtual_service(_PROTO_BY_KEY[key], token.arg or "")
        elif key in _FORWARD_BY_KEY:
            self.set_option(Opt.FORWARD)
            self.dest.fwd = _FORWARD_BY_KEY[key]
        elif key in _FORMAT_FLAGS:
            self.set_option(_FORMAT_FLAGS[key])
        elif key in _TUN_FLAG_KEYS:
            opt, flag = _TUN_FLAG_KEYS[key]
            self.set_option(opt)
            self.dest.tun_flags = flag
        elif key == "sort":
            pass  # sorting is the default; accepted for compatibility
        else:
            handler = self._VALUE_HANDLERS.get(key)
            if handler is None:
                raise fail(f"invalid option `{token.text}'")
            handler(self, token.arg)

    def _virtual_service(self, proto: str, text: str) -> None:
        self.set_option(Opt.SERVICE)
        self.svc.proto = proto
        parsed = parse_service_address(text, proto, self.names)
        if parsed is None:
            raise fail("illegal virtual server address[:port] specified")
        self.svc.af, self.svc.addr = parsed.af, parsed.addr
        if parsed.af == AF_INET6:
            self.svc.netmask = 128
        if parsed.port is not None:
            self.svc.port = parsed.port

    def _fwmark(self, text: str | None) -> None:
        self.set_option(Opt.SERVICE)
        self.svc.af, self.svc.proto = AF_INET, "tcp"  # ipvsadm: sane values, unused for fwmark
        self.svc.fwmark = parse_fwmark(text or "")

    def _scheduler(self, text: str | None) -> None:
        self.set_option(Opt.SCHEDULER)
        self.svc.sched = (text or "")[:SCHED_NAME_MAX]

    def _persistent(self, text: str | None) -> None:
        self.set_option(Opt.PERSISTENT)
        self.svc.persistent = True
        self.svc.timeout = parse_timeout(text, 1, MAX_TIMEOUT_S)

    def _netmask(self, text: str | None) -> None:
        self.set_option(Opt.NETMASK)
        text = text or ""
        if self.svc.af != AF_INET6:
            mask = inet_aton(text) or self.names.ipv4_for_host(text)
            if mask is None:
                raise fail("illegal virtual server persistent mask specified")
            self.svc.netmask = mask
            return
        prefix = _atoi(text)
        if not 1 <= prefix <= 128:
            raise fail("illegal ipv6 netmask specified")
        self.svc.netmask = prefix

    def _real_server(self, text: str | None) -> None:
        self.set_option(Opt.SERVER)
        parsed = parse_service_address(text or "", self.svc.proto, self.names)
        if parsed is None:
            raise fail("illegal real server address[:port] specified")
        self.dest.af, self.dest.addr = parsed.af, parsed.addr
        # Without a port the real server takes the virtual service's port (as known so far).
        self.dest.port = self.svc.port if parsed.port is None else parsed.port

    def _bounded(self, opt: Opt, text: str | None, low: int, high: int, what: str) -> int:
        self.set_option(opt)
        value = string_to_number(text or "", low, high)
        if value is None:
            raise fail(f"illegal {what} specified")
        return value

    def _weight(self, text: str | None) -> None:
        self.dest.weight = self._bounded(Opt.WEIGHT, text, 0, INT_MAX, "weight")  # ipvsadm 1.31 (Debian), the kernel

    def _u_threshold(self, text: str | None) -> None:
        self.dest.u_threshold = self._bounded(Opt.UTHRESHOLD, text, 0, INT_MAX, "u_threshold")

    def _l_threshold(self, text: str | None) -> None:
        self.dest.l_threshold = self._bounded(Opt.LTHRESHOLD, text, 0, INT_MAX, "l_threshold")

    def _syncid(self, text: str | None) -> None:
        self.daemon.syncid = self._bounded(Opt.SYNCID, text, 0, 255, "syncid")

    def _mcast_port(self, text: str | None) -> None:
        self.daemon.mcast_port = self._bounded(Opt.MCAST_PORT, text, 1, 65535, "mcast-port")

    def _mcast_ttl(self, text: str | None) -> None:
        self.daemon.mcast_ttl = self._bounded(Opt.MCAST_TTL, text, 1, 255, "mcast-ttl")

    def _sync_maxlen(self, text: str | None) -> None:
        self.daemon.sync_maxlen = self._bounded(Opt.SYNC_MAXLEN, text, 1, SYNC_MAXLEN_MAX, "sync-maxlen")

    def _sync_ext_port(self, text: str | None) -> None:
        self.daemon.sync_ext_port = self._bounded(Opt.SYNC_EXT_PORT, text, 0, 65535, "sync-ext-port")

    def _tun_port(self, text: str | None) -> None:
        self.dest.tun_port = self._bounded(Opt.TUN_PORT, text, 1, 65535, "tunnel port")

    def _mcast_interface(self, text: str | None) -> None:
        self.set_option(Opt.MCAST)
        self.daemon.mcast_ifn = (text or "")[:IFNAME_MAX]

    def _mcast_group(self, text: str | None) -> None:
        self.set_option(Opt.MCAST_GROUP)
        text = text or ""
        family = 6 if ":" in text else 4
        if not _is_multicast(text, family):
            raise fail(f"invalid IPv{family} mcast-group `{text}'")
        self.daemon.mcast_group = text

    def _ipv6(self, _text: str | None) -> None:
        if not self.svc.fwmark:
            raise fail("-6 used before -f\n")
        self.svc.af, self.svc.netmask = AF_INET6, 128

    def _ops(self, _text: str | None) -> None:
        self.set_option(Opt.ONEPACKET)
        self.svc.ops = True

    def _pe(self, text: str | None) -> None:
        self.set_option(Opt.PERSISTENCE_ENGINE)
        self.svc.pe = (text or "")[:PE_NAME_MAX]

    def _sched_flags(self, text: str | None) -> None:
        self.set_option(Opt.SCHED_FLAGS)
        self.svc.sched_flags_text = text or ""

    def _laddr(self, text: str | None) -> None:
        """DPVS's -z: parsed as a service address (a port is accepted and ignored)."""
        self.set_option(Opt.LADDR)
        parsed = parse_service_address(text or "", None, self.names)
        if parsed is None:
            raise fail("illegal local address")
        if parsed.af != AF_INET:
            raise fail("illegal local address (lbd's local addresses are IPv4)")
        self.svc.laddr = parsed.addr

    def _synproxy(self, text: str | None) -> None:
        """DPVS's -j: "enable" or "disable", compared as DPVS does (by prefix)."""
        self.set_option(Opt.SYNPROXY)
        text = text or ""
        if text.startswith("enable"):
            self.svc.synproxy = True
        elif text.startswith("disable"):
            self.svc.synproxy = False
        else:
            raise fail("synproxy switch must be enable or disable\n")

    def _toa(self, _text: str | None) -> None:
        self.set_option(Opt.TOA)
        self.svc.toa = True

    def _proxy_protocol(self, text: str | None) -> None:
        """lbd's --proxy-protocol: v1 or v2 (a PROXY header before the client's data), or disable."""
        self.set_option(Opt.PROXY_PROTOCOL)
        text = (text or "").lower()
        if text in ("v1", "v2"):
            self.svc.proxy_protocol = text
        elif text in ("disable", "off"):
            self.svc.proxy_protocol = None
        else:
            raise fail("proxy-protocol must be v1, v2 or disable\n")

    def _ifname(self, text: str | None) -> None:
        self.set_option(Opt.IFNAME)
        self.svc.ifname = (text or "")[:IFNAME_MAX]

    def _tun_type(self, text: str | None) -> None:
        self.set_option(Opt.TUN_TYPE)
        if text not in LEGAL_TUNNEL_OPTIONS:
            raise fail("illegal tunnel type specified")
        self.dest.tun_type = text

    _VALUE_HANDLERS: ClassVar[dict[str, Callable[[_CommandLine, str | None], None]]] = {
        "fwmark-service": _fwmark,
        "scheduler": _scheduler,
        "persistent": _persistent,
        "netmask": _netmask,
        "real-server": _real_server,
        "weight": _weight,
        "u-threshold": _u_threshold,
        "l-threshold": _l_threshold,
        "syncid": _syncid,
        "mcast-interface": _mcast_interface,
        "mcast-group": _mcast_group,
        "mcast-port": _mcast_port,
        "mcast-ttl": _mcast_ttl,
        "sync-maxlen": _sync_maxlen,
        "sync-ext-port": _sync_ext_port,
        "ipv6": _ipv6,
        "ops": _ops,
        "pe": _pe,
        "sched-flags": _sched_flags,
        "tun-type": _tun_type,
        "tun-port": _tun_port,
        "laddr": _laddr,
        "synproxy": _synproxy,
        "toa": _toa,
        "proxy-protocol": _proxy_protocol,
        "ifname": _ifname,
    }

    # -- after all options: leftovers and cross-option checks ---------------

    def take_leftovers(self, leftovers: list[str]) -> None:
        words = list(leftovers)
        if self.command is Command.TIMEOUT:
            if len(words) < 3:
                raise fail("--set option requires 3 timeout values")
            tcp, tcpfin, udp = (parse_timeout(word, 0, MAX_TIMEOUT_S) for word in words[:3])
            self.timeouts = (tcp, tcpfin, udp)
            words = words[3:]
        if words:
            raise fail(f"unexpected argument {words[0]}")

    def refusal(self) -> str | None:
        """What of this (valid) command line lbd cannot do: the first option lb.unimplemented lists,
        an IPv6 address, or a scheduler the C registry lacks."""
        for key, value in self.used:
            missing = unimplemented.refusal(key, value)
            if missing is not None:
                return missing.message
        if AF_INET6 in (self.svc.af, self.dest.af):
            return unimplemented.entry("ipv6").message
        if self.command in (Command.ADD, Command.EDIT) and self.svc.sched not in SCHEDULERS:
            return unknown_scheduler(self.svc.sched)
        return None

    def check(self) -> None:
        assert self.command is not None
        if self.svc.sched_flags_text is not None:
            self.svc.sched_flags = parse_sched_flags(self.svc.sched, self.svc.sched_flags_text)
        check_option_combination(self.command, self.options)
        if self.command in (Command.ADD, Command.EDIT):
            self._check_service()
        if self.command is Command.STARTDAEMON and not self.daemon.mcast_ifn:
            self.daemon.mcast_ifn = DEFAULT_MCAST_IFN
        if self.command in (Command.ADDDEST, Command.EDITDEST):
            self._check_dest()
        if self.command is Command.LIST:
            self._check_list()

    def _check_service(self) -> None:
        if not self.svc.fwmark and not self.svc.port and not self.svc.persistent:
            raise fail("Zero port specified for non-persistent service")
        if self.svc.ops and not self.svc.fwmark and self.svc.proto != "udp":
            raise fail("One-Packet Scheduling is only for UDP virtual services")
        if not self.svc.sched:
            self.svc.sched = DEFAULT_SCHEDULER

    def _check_dest(self) -> None:
        # DR and tunneling cannot change the port: the real server gets the service's.
        if not self.svc.fwmark and self.dest.fwd in ("tunnel", "route"):
            self.dest.port = self.svc.port
        if self.dest.af != self.svc.af and self.dest.fwd != "tunnel":
            raise fail("Different address family is allowed only for tunneling servers")
        tunnel_opts = {Opt.TUN_TYPE, *_TUNNEL_OPTS}
        if self.options & tunnel_opts and self.dest.fwd != "tunnel":
            raise fail("Tunnel options conflict with forward method")
        check_tunnel_options(self.dest.tun_type, self.options)

    def _check_list(self) -> None:
        opts = self.options
        if (opts & {Opt.CONNECTION, Opt.TIMEOUT, Opt.DAEMON} and opts & {Opt.STATS, Opt.RATE, Opt.THRESHOLDS}) or (
            opts & {Opt.TIMEOUT, Opt.DAEMON} and Opt.PERSISTENTCONN in opts
        ):
            raise fail("options conflicts in the list command")

    # -- requests -------------------------------------------------------------

    def service_key(self) -> dict[str, Any]:
        if self.svc.fwmark:
            key: dict[str, Any] = {"fwmark": self.svc.fwmark}
            if self.svc.af == AF_INET6:
                key["ipv6"] = True
            return key
        return {"proto": self.svc.proto, "addr": self.svc.addr, "port": self.svc.port}

    def service_spec(self) -> dict[str, Any]:
        spec = {
            **self.service_key(),
            "sched": self.svc.sched,
            "persistent": self.svc.timeout if self.svc.persistent else None,
            "netmask": self.svc.netmask,
        }
        if self.svc.ops:
            spec["ops"] = True
        if self.svc.pe:
            spec["pe"] = self.svc.pe
        if self.svc.sched_flags:
            spec["sched_flags"] = list(self.svc.sched_flags)
        if self.svc.toa:
            spec["toa"] = True
        if self.svc.synproxy:
            spec["synproxy"] = True
        if self.svc.proxy_protocol:
            spec["proxy_protocol"] = self.svc.proxy_protocol
        return spec

    def dest_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "addr": self.dest.addr,
            "port": self.dest.port,
            "fwd": self.dest.fwd,
            "weight": self.dest.weight,
            "u_threshold": self.dest.u_threshold,
            "l_threshold": self.dest.l_threshold,
        }
        if self.options & {Opt.TUN_TYPE, *_TUNNEL_OPTS}:
            spec["tun_type"] = self.dest.tun_type
            if self.dest.tun_type == "gue":
                spec["tun_port"] = self.dest.tun_port
            if self.dest.tun_type != "ipip":
                spec["tun_flags"] = self.dest.tun_flags
        return spec

    def daemon_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"state": self.daemon.state}
        if self.command is Command.STARTDAEMON:
            args["mcast_ifn"] = self.daemon.mcast_ifn
        optional = {
            "syncid": self.daemon.syncid,
            "mcast_group": self.daemon.mcast_group,
            "mcast_port": self.daemon.mcast_port,
            "mcast_ttl": self.daemon.mcast_ttl,
            "sync_maxlen": self.daemon.sync_maxlen,
            "sync_ext_port": self.daemon.sync_ext_port,
        }
        args.update({name: value for name, value in optional.items() if value is not None})
        return args

    def list_format(self) -> ListFormat:
        opts = self.options
        return ListFormat(
            numeric=Opt.NUMERIC in opts,
            stats=Opt.STATS in opts,
            rate=Opt.RATE in opts,
            thresholds=Opt.THRESHOLDS in opts,
            persistent_conn=Opt.PERSISTENTCONN in opts,
            tun_info=Opt.TUN_INFO in opts,
            nosort=Opt.NOSORT in opts,
            exact=Opt.EXACT in opts,
        )


def _is_multicast(text: str, family: int) -> bool:
    import ipaddress  # only the sync daemon's --mcast-group: not on every command's import path (~3 ms)

    try:
        addr = ipaddress.IPv6Address(text) if family == 6 else ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return addr.is_multicast
