"""lbadm: the operator's command line, flag- and output-compatible with ipvsadm 1.31.

The command line is read the way ipvsadm reads it with popt (short options
cluster, `-s rr`/`-srr`/`--scheduler=rr`, `-p` takes an optional value, the
command must be the first option, non-option words are collected and only
`--set` consumes them), checked against ipvsadm's table of legal command and
option combinations, and turned into one JSON request for lbd
(docs/control-protocol.md). Errors use ipvsadm's wording and exit statuses:

    2    invalid command line (ipvsadm's fail(2, ...)); nothing is sent
    255  usage errors popt reports, and operations lbd refused (ipvsadm returns -1)
    1    a listing failed (ipvsadm's exit(1))
    2    lbd cannot be reached

Additions to ipvsadm: `--socket PATH` (else $LBD_SOCKET, else
/run/lbd/lbd.sock), `-b/--fullnat` (DPVS; ipvsadm's own -b, scheduler flags,
stays available as `--sched-flags`), `--json` for listings, `--reload`,
`lbadm doctor` (lb/doctor/cli.py).

From DPVS's ipvsadm (iqiyi/dpvs tools/ipvsadm/ipvsadm.c), for what lbd's engines do:
`-P/--add-laddr`, `-Q/--del-laddr` with `-z/--laddr LIP` (FULLNAT local addresses; DPVS's
compulsory `-F/--ifname` is accepted and ignored: lbd sends from the director's own stack),
`-G/--get-laddr [-t|-u VIP:PORT]` printing DPVS's table, and `-j/--synproxy enable|disable`
on -A/-E (SYN-proxy; lbd refuses it on a service with non-FULLNAT destinations). lbd's own:
`--toa` on -A/-E (FULLNAT passes the client address in TCP option 254). As ipvsadm's -E, an
-E replaces the whole service: options not given (-p, -j, --toa) return to their defaults.
`-S` writes `-j enable`, `--toa` and one `-P` line per local address, so `-S | -R` round-trips
(DPVS's own -S loses them).
"""

from __future__ import annotations

import enum
import errno as errno_codes
import ipaddress
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

from lb import __version__
from lb import consts as C
from lb.ctlclient import (
    ConnectError,
    ControlClient,
    ControlError,
    ProtocolError,
    resolve_socket_path,
)
from lb.model import DEFAULT_SCHEDULER, SCHEDULERS
from lb.ipvsadm_fmt import (
    ListFormat,
    NameDB,
    format_connections,
    format_daemons,
    format_laddrs,
    format_list,
    format_one_service,
    format_save,
    format_timeout,
)

PROG = "lbadm"

EXIT_OK = 0
EXIT_LIST_FAILED = 1
EXIT_BAD_ARGS = 2
EXIT_NO_DAEMON = 2
EXIT_OP_FAILED = 255

MAX_TIMEOUT_S = 86400 * 31  # ipvsadm's MAX_TIMEOUT: 31 days
DEFAULT_PERSISTENT_TIMEOUT_S = 300  # IPVS_SVC_PERSISTENT_TIMEOUT
DEFAULT_MCAST_IFN = "eth0"
INT_MAX = 2**31 - 1
UINT_MAX = 2**32 - 1
SCHED_NAME_MAX = C.LB_SCHED_NAME_MAX - 1  # as IP_VS_SCHEDNAME_MAXLEN - 1: the NUL
PE_NAME_MAX = 32  # IP_VS_PENAME_MAXLEN
IFNAME_MAX = 15  # IP_VS_IFNAME_MAXLEN - 1
SYNC_MAXLEN_MAX = 65535 - 20 - 8  # largest UDP payload in an IPv4 packet

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6


# --------------------------------------------------------------------------
# Errors


class UsageError(Exception):
    """Invalid command line: `message` goes to stderr, the process exits with `status`."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def fail(message: str) -> UsageError:
    """ipvsadm's fail(2, ...)."""
    return UsageError(message, EXIT_BAD_ARGS)


def tryhelp() -> UsageError:
    return UsageError(f"Try `{PROG} -h' or '{PROG} --help' for more information.", EXIT_OP_FAILED)


# libipvs ipvs_strerror(): the message depends on the operation.
_OP_ERRORS: dict[str, dict[str, str]] = {
    "add_service": {"EEXIST": "Service already exists", "ENOENT": "Scheduler or persistence engine not found"},
    "edit_service": {"ESRCH": "No such service", "ENOENT": "Scheduler or persistence engine not found"},
    "del_service": {"ESRCH": "No such service"},
    "zero": {"ESRCH": "No such service"},
    "add_dest": {"ESRCH": "Service not defined", "EEXIST": "Destination already exists"},
    "edit_dest": {"ESRCH": "Service not defined", "ENOENT": "No such destination"},
    "del_dest": {"ESRCH": "Service not defined", "ENOENT": "No such destination"},
    "start_daemon": {"EEXIST": "Daemon has already run"},
    "stop_daemon": {"ESRCH": "No daemon is running"},
    "list": {"ESRCH": "No such service"},
    # DPVS's libipvs
    "add_laddr": {"ESRCH": "Service not defined", "EEXIST": "Local address already exists"},
    "del_laddr": {"ESRCH": "Service not defined", "ENOENT": "No such Local address"},
}
_GENERIC_ERRORS = {
    "EPERM": "Permission denied (you must be root)",
    "ENOPROTOOPT": "Protocol not available",
    "ENOMEM": "Memory allocation problem",
    "EAFNOSUPPORT": "Operation not supported with specified address family",
    "EMSGSIZE": "Module is wrong version",
}
# For these libipvs has only a vague text ("Invalid operation.  Possibly wrong
# module version, ...", "Operation not supported with IPv6"); lbd's own reason
# says which argument or feature, so it is printed instead.
_ERRNOS_EXPLAINED_BY_LBD = frozenset({"EINVAL", "EOPNOTSUPP", "ENOTSUP"})


def ipvs_strerror(op: str, errno_name: str, lbd_message: str) -> str:
    """The message ipvsadm prints for `errno_name` after operation `op`."""
    specific = _OP_ERRORS.get(op, {}).get(errno_name)
    if specific is not None:
        return specific
    if errno_name in _ERRNOS_EXPLAINED_BY_LBD:
        return lbd_message
    generic = _GENERIC_ERRORS.get(errno_name)
    if generic is not None:
        return generic
    code = getattr(errno_codes, errno_name, None)
    if isinstance(code, int):
        return os.strerror(code)
    return lbd_message


# --------------------------------------------------------------------------
# popt-compatible option scanning


class ArgKind(enum.Enum):
    NONE = "none"
    REQUIRED = "required"
    OPTIONAL = "optional"


@dataclass(frozen=True)
class OptionSpec:
    key: str
    long: str | None
    short: str | None
    arg: ArgKind


def _spec(key: str, short: str | None = None, arg: ArgKind = ArgKind.NONE, long: str | None = "") -> OptionSpec:
    return OptionSpec(key=key, long=key if long == "" else long, short=short, arg=arg)


_REQ = ArgKind.REQUIRED
OPTION_SPECS: tuple[OptionSpec, ...] = (
    _spec("add-service", "A"),
    _spec("edit-service", "E"),
    _spec("delete-service", "D"),
    _spec("clear", "C"),
    _spec("list", "L"),
    _spec("list", "l", long=None),
    _spec("zero", "Z"),
    _spec("add-server", "a"),
    _spec("edit-server", "e"),
    _spec("delete-server", "d"),
    _spec("set"),
    _spec("help", "h"),
    _spec("version", "v"),
    _spec("restore", "R"),
    _spec("save", "S"),
    _spec("start-daemon", arg=_REQ),
    _spec("stop-daemon", arg=_REQ),
    _spec("tcp-service", "t", _REQ),
    _spec("udp-service", "u", _REQ),
    _spec("sctp-service", arg=_REQ),
    _spec("fwmark-service", "f", _REQ),
    _spec("scheduler", "s", _REQ),
    _spec("persistent", "p", ArgKind.OPTIONAL),
    _spec("netmask", "M", _REQ),
    _spec("real-server", "r", _REQ),
    _spec("masquerading", "m"),
    _spec("ipip", "i"),
    _spec("gatewaying", "g"),
    _spec("fullnat", "b"),
    _spec("weight", "w", _REQ),
    _spec("u-threshold", "x", _REQ),
    _spec("l-threshold", "y", _REQ),
    _spec("numeric", "n"),
    _spec("connection", "c"),
    _spec("mcast-interface", arg=_REQ),
    _spec("syncid", arg=_REQ),
    _spec("timeout"),
    _spec("daemon"),
    _spec("stats"),
    _spec("rate"),
    _spec("thresholds"),
    _spec("persistent-conn"),
    _spec("nosort"),
    _spec("sort"),
    _spec("exact", "X"),
    _spec("ipv6", "6"),
    _spec("ops", "o"),
    _spec("pe", arg=_REQ),
    _spec("sched-flags", arg=_REQ),
    _spec("mcast-group", arg=_REQ),
    _spec("mcast-port", arg=_REQ),
    _spec("mcast-ttl", arg=_REQ),
    _spec("sync-maxlen", arg=_REQ),
    _spec("tun-info"),
    _spec("tun-type", arg=_REQ),
    _spec("tun-port", arg=_REQ),
    _spec("tun-nocsum"),
    _spec("tun-csum"),
    _spec("tun-remcsum"),
    # lbadm's own
    _spec("socket", arg=_REQ),
    _spec("json"),
    _spec("reload"),
    # DPVS's
    _spec("add-laddr", "P"),
    _spec("del-laddr", "Q"),
    _spec("get-laddr", "G"),
    _spec("laddr", "z", _REQ),
    _spec("synproxy", "j", _REQ),
    _spec("ifname", "F", _REQ),
    # lbd's FULLNAT TOA option
    _spec("toa"),
)
_BY_LONG = {spec.long: spec for spec in OPTION_SPECS if spec.long}
_BY_SHORT = {spec.short: spec for spec in OPTION_SPECS if spec.short}

# Options that may appear anywhere, even before the command.
_POSITION_FREE_KEYS = frozenset({"socket", "json"})

POPT_UNKNOWN = "unknown option"
POPT_MISSING_ARG = "missing argument"
POPT_UNWANTED_ARG = "option does not take an argument"


@dataclass(frozen=True)
class OptionToken:
    key: str
    arg: str | None
    # The argv word popt's poptBadOption() would name: the last one consumed.
    text: str


@dataclass(frozen=True)
class PoptError:
    text: str
    reason: str


def scan_options(argv: Sequence[str], leftovers: list[str]) -> Iterator[OptionToken | PoptError]:
    """Yield options in order as popt returns them; stop after the first error.

    Non-option words (and everything after "--") are appended to `leftovers`.
    """
    index = 0
    rest_are_leftovers = False
    while index < len(argv):
        word = argv[index]
        index += 1
        if rest_are_leftovers or not word.startswith("-") or word == "-":
            leftovers.append(word)
        elif word == "--":
            rest_are_leftovers = True
        elif word.startswith("--"):
            token, index = _scan_long(argv, index, word)
            yield token
            if isinstance(token, PoptError):
                return
        else:
            cluster, index = _scan_short_cluster(argv, index, word)
            yield from cluster
            if cluster and isinstance(cluster[-1], PoptError):
                return


def _scan_long(argv: Sequence[str], index: int, word: str) -> tuple[OptionToken | PoptError, int]:
    name, has_inline, inline = word[2:].partition("=")
    spec = _BY_LONG.get(name)
    if spec is None:
        return PoptError(word, POPT_UNKNOWN), index
    if spec.arg is ArgKind.NONE:
        if has_inline:
            return PoptError(word, POPT_UNWANTED_ARG), index
        return OptionToken(spec.key, None, word), index
    if has_inline:
        return OptionToken(spec.key, inline, word), index
    return _take_next_word(argv, index, word, spec)


def _scan_short_cluster(argv: Sequence[str], index: int, word: str) -> tuple[list[OptionToken | PoptError], int]:
    """The options of one word ("-Ln", "-srr", "-w=3", "-t VIP") and where scanning goes on."""
    tokens: list[OptionToken | PoptError] = []
    chars = word[1:]
    for pos, char in enumerate(chars):
        spec = _BY_SHORT.get(char)
        if spec is None:
            tokens.append(PoptError(word, POPT_UNKNOWN))
            break
        rest = chars[pos + 1 :]
        if spec.arg is ArgKind.NONE:
            if rest.startswith("="):
                tokens.append(PoptError(word, POPT_UNWANTED_ARG))
                break
            tokens.append(OptionToken(spec.key, None, word))
            continue
        if rest:
            tokens.append(OptionToken(spec.key, rest.removeprefix("="), word))
        else:
            token, index = _take_next_word(argv, index, word, spec)
            tokens.append(token)
        break
    return tokens, index


def _take_next_word(
    argv: Sequence[str], index: int, word: str, spec: OptionSpec
) -> tuple[OptionToken | PoptError, int]:
    """popt: an option's value is the next word; an optional value never starts with '-'."""
    if index == len(argv):
        if spec.arg is ArgKind.OPTIONAL:
            return OptionToken(spec.key, None, word), index
        return PoptError(word, POPT_MISSING_ARG), index
    following = argv[index]
    if spec.arg is ArgKind.OPTIONAL and following.startswith("-"):
        return OptionToken(spec.key, None, word), index
    return OptionToken(spec.key, following, following), index + 1


# --------------------------------------------------------------------------
# ipvsadm's commands, options and their legal combinations


class Command(enum.Enum):
    """Values are ipvsadm's command names as they appear in its messages."""

    ADD = "add-service"
    EDIT = "edit-service"
    DEL = "delete-service"
    FLUSH = "flush"
    LIST = "list"
    ADDDEST = "add-server"
    DELDEST = "delete-server"
    EDITDEST = "edit-server"
    TIMEOUT = "set"
    STARTDAEMON = "start-daemon"
    STOPDAEMON = "stop-daemon"
    RESTORE = "restore"
    SAVE = "save"
    ZERO = "zero"
    RELOAD = "reload"
    ADDLADDR = "add-laddr"
    DELLADDR = "del-laddr"
    GETLADDR = "get-laddr"


_COMMAND_BY_KEY = {
    "add-service": Command.ADD,
    "edit-service": Command.EDIT,
    "delete-service": Command.DEL,
    "clear": Command.FLUSH,
    "list": Command.LIST,
    "add-server": Command.ADDDEST,
    "edit-server": Command.EDITDEST,
    "delete-server": Command.DELDEST,
    "set": Command.TIMEOUT,
    "restore": Command.RESTORE,
    "save": Command.SAVE,
    "zero": Command.ZERO,
    "reload": Command.RELOAD,
    "add-laddr": Command.ADDLADDR,
    "del-laddr": Command.DELLADDR,
    "get-laddr": Command.GETLADDR,
}


class Opt(enum.IntEnum):
    """ipvsadm's option columns, in its order (which decides which error wins)."""

    NUMERIC = 0
    CONNECTION = 1
    SERVICE = 2
    SCHEDULER = 3
    PERSISTENT = 4
    NETMASK = 5
    SERVER = 6
    FORWARD = 7
    WEIGHT = 8
    UTHRESHOLD = 9
    LTHRESHOLD = 10
    MCAST = 11
    TIMEOUT = 12
    DAEMON = 13
    STATS = 14
    RATE = 15
    THRESHOLDS = 16
    PERSISTENTCONN = 17
    NOSORT = 18
    SYNCID = 19
    EXACT = 20
    ONEPACKET = 21
    PERSISTENCE_ENGINE = 22
    SCHED_FLAGS = 23
    MCAST_GROUP = 24
    MCAST_PORT = 25
    MCAST_TTL = 26
    SYNC_MAXLEN = 27
    TUN_INFO = 28
    TUN_TYPE = 29
    TUN_PORT = 30
    TUN_NOCSUM = 31
    TUN_CSUM = 32
    TUN_REMCSUM = 33
    JSON = 34  # lbadm's own
    LADDR = 35  # DPVS's -z
    SYNPROXY = 36  # DPVS's -j
    TOA = 37  # lbd's --toa
    IFNAME = 38  # DPVS's -F (accepted, ignored)


OPTION_NAMES = (
    "numeric", "connection", "service-address", "scheduler", "persistent", "netmask",
    "real-server", "forwarding-method", "weight", "u-threshold", "l-threshold",
    "mcast-interface", "timeout", "daemon", "stats", "rate", "thresholds",
    "persistent-conn", "nosort", "syncid", "exact", "ops", "pe", "sched-flags",
    "mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen", "tun-info", "tun-type",
    "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum", "json",
    "local-address", "synproxy", "toa", "ifname",
)  # fmt: skip

# One character per option column: '+' compulsory, 'x' illegal, '1' at most
# one of the '1's, ' ' optional. ipvsadm 1.31's table plus lbadm's json column.
# ipvsadm's 35 columns, then the DPVS/lbd ones: local-address, synproxy, toa, ifname.
_NO_DPVS = "xxxx"
_ADD_ROW = "xx+   " + "x" * 15 + "   " + "x" * 10 + "x" + "x  x"
_ADDDEST_ROW = "xx+xxx+    " + "x" * 18 + "     " + "x" + _NO_DPVS
_LADDR_ROW = "xx+" + "x" * 32 + "+xx "  # DPVS: -F compulsory; lbd needs no interface
LEGAL_OPTIONS: dict[Command, str] = {
    Command.ADD: _ADD_ROW,
    Command.EDIT: _ADD_ROW,
    Command.DEL: "xx+" + "x" * 32 + _NO_DPVS,
    Command.FLUSH: "x" * 35 + _NO_DPVS,
    Command.LIST: " 11" + "x" * 9 + "11" + " " * 7 + "x" * 7 + " " + "x" * 5 + " " + _NO_DPVS,
    Command.ADDDEST: _ADDDEST_ROW,
    Command.DELDEST: "xx+xxx+" + "x" * 28 + _NO_DPVS,
    Command.EDITDEST: _ADDDEST_ROW,
    Command.TIMEOUT: "x" * 35 + _NO_DPVS,
    Command.STARTDAEMON: "x" * 11 + " " + "x" * 7 + " " + "x" * 4 + "    " + "x" * 7 + _NO_DPVS,
    Command.STOPDAEMON: "x" * 19 + " " + "x" * 15 + _NO_DPVS,
    Command.RESTORE: "x" * 35 + _NO_DPVS,
    Command.SAVE: " " + "x" * 34 + _NO_DPVS,
    Command.ZERO: "xx " + "x" * 32 + _NO_DPVS,
    Command.RELOAD: "x" * 35 + _NO_DPVS,
    Command.ADDLADDR: _LADDR_ROW,
    Command.DELLADDR: _LADDR_ROW,
    Command.GETLADDR: "xx " + "x" * 31 + " " + _NO_DPVS,
}
assert all(len(row) == len(Opt) for row in LEGAL_OPTIONS.values())

_TUNNEL_OPTS = (Opt.TUN_PORT, Opt.TUN_NOCSUM, Opt.TUN_CSUM, Opt.TUN_REMCSUM)
# Per tunnel type, the same codes for (tun-port, tun-nocsum, tun-csum, tun-remcsum).
LEGAL_TUNNEL_OPTIONS = {"ipip": "xxxx", "gue": "+111", "gre": "x11x"}

_SCHED_FLAG_OWNERS = {
    "flag-1": None, "flag-2": None, "flag-3": None,
    "sh-fallback": "sh", "sh-port": "sh", "mh-fallback": "mh", "mh-port": "mh",
}  # fmt: skip


def _check_legality(rules: list[tuple[Opt, str]], options: set[Opt], context: str) -> None:
    """ipvsadm's legality tables: '+' required, 'x' illegal, '1' mutually exclusive; the first
    offending column decides the message. `context` is e.g. "'add-service' command"."""
    first_exclusive: Opt | None = None
    for opt, rule in rules:
        if opt not in options:
            if rule == "+":
                raise fail(f"You need to supply the '{OPTION_NAMES[opt]}' option for the {context}")
            continue
        if rule == "x":
            raise fail(f"Illegal '{OPTION_NAMES[opt]}' option with the {context}")
        if rule == "1":
            if first_exclusive is None:
                first_exclusive = opt
                continue
            raise fail(
                f"The option '{OPTION_NAMES[opt]}' conflicts with the '{OPTION_NAMES[first_exclusive]}' "
                f"option in the {context}"
            )


def check_option_combination(command: Command, options: set[Opt]) -> None:
    """ipvsadm's generic_opt_check."""
    row = LEGAL_OPTIONS[command]
    _check_legality([(opt, row[opt]) for opt in Opt], options, f"'{command.value}' command")


def check_tunnel_options(tun_type: str, options: set[Opt]) -> None:
    """ipvsadm's tunnel_opt_check."""
    row = LEGAL_TUNNEL_OPTIONS[tun_type]
    _check_legality([(opt, rule) for rule, opt in zip(row, _TUNNEL_OPTS, strict=True)], options,
                    f"'{tun_type}' tunnel type")


# --------------------------------------------------------------------------
# Value parsers with C semantics (strtol, inet_aton, atoi)

_STRTOL_DECIMAL = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+\Z")
_ATOI_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_LONG_MAX = 2**63 - 1


def string_to_number(text: str, low: int, high: int) -> int | None:
    """ipvsadm's string_to_number: a whole decimal strtol() within [low, high]."""
    if not _STRTOL_DECIMAL.match(text):
        return None
    value = int(text)
    if abs(value) > _LONG_MAX or not low <= value <= high:
        return None
    return value


def _atoi(text: str) -> int:
    match = _ATOI_PREFIX.match(text)
    return int(match.group(1)) if match else 0


def inet_aton(text: str) -> str | None:
    """C inet_aton (accepts "10.1", "0x0a.0.0.1", ...), canonical dotted quad or None."""
    try:
        return socket.inet_ntoa(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


def inet_pton6(text: str) -> str | None:
    try:
        return socket.inet_ntop(AF_INET6, socket.inet_pton(AF_INET6, text))
    except (OSError, ValueError):
        return None


def _str_is_digit(text: str) -> bool:
    return all(ch.isdigit() and ch.isascii() for ch in text)


@dataclass(frozen=True)
class ParsedAddress:
    af: int
    addr: str
    port: int | None  # None: no port given


def parse_service_address(text: str, proto: str | None, names: NameDB) -> ParsedAddress | None:
    """ipvsadm's parse_service: host[:port], [ipv6]:port, names from /etc/hosts and /etc/services.

    None means ipvsadm's SERVICE_NONE (no usable address).
    """
    if _str_is_digit(text):
        return None
    host, port_text = text, None
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not after.startswith(":"):
            return None
        port_text = after[1:]
    ipv6 = inet_pton6(host)
    if ipv6 is not None:
        parsed_af, parsed_addr = AF_INET6, ipv6
    else:
        # ipvsadm looks for the port separator only in what is left after the
        # brackets were stripped, so "[1.2.3.4]:80" loses its port.
        if ":" in host:
            host, _, port_text = host.rpartition(":")
        else:
            port_text = None
        ipv4 = inet_aton(host) or names.ipv4_for_host(host)
        if ipv4 is None:
            return None
        parsed_af, parsed_addr = AF_INET, ipv4
    if port_text is None:
        return ParsedAddress(parsed_af, parsed_addr, None)
    port = string_to_number(port_text, 0, 65535)
    if port is None and proto is not None:
        port = names.port_for_service(port_text, proto)
    if port is None:
        return None
    return ParsedAddress(parsed_af, parsed_addr, port)


def parse_timeout(text: str | None, low: int, high: int) -> int:
    if text is None:
        return DEFAULT_PERSISTENT_TIMEOUT_S
    value = string_to_number(text, low, high)
    if value is None:
        raise fail(f"invalid timeout value `{text}' specified")
    return value


def parse_fwmark(text: str) -> int:
    if not _STRTOL_DECIMAL.match(text) or not 0 < int(text) <= UINT_MAX:
        raise fail(f"invalid fwmark value `{text}' specified")
    return int(text)


def parse_sched_flags(sched: str, text: str) -> list[str]:
    """ipvsadm's parse_sched_flags: comma-separated names valid for the scheduler."""
    sched = sched or DEFAULT_SCHEDULER
    flags: list[str] = []
    for flag in (part for part in text.split(",") if part):
        if flag not in _SCHED_FLAG_OWNERS:
            raise fail(f"invalid scheduler flag `{flag}'")
        owner = _SCHED_FLAG_OWNERS[flag]
        if owner is not None and owner != sched:
            raise fail(f"incompatible scheduler flag `{flag}'")
        if flag not in flags:
            flags.append(flag)
    return flags


# --------------------------------------------------------------------------
# What the command line asks for


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


@dataclass(frozen=True)
class Request:
    op: str
    args: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "args": self.args}


@dataclass(frozen=True)
class Invocation:
    action: Action
    request: Request | None = None
    fmt: ListFormat = field(default_factory=ListFormat)
    socket_path: str = ""
    json_output: bool = False


@dataclass
class _ServiceArgs:
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
    sched_flags: list[str] = field(default_factory=list)
    synproxy: bool = False  # DPVS -j enable
    toa: bool = False  # lbd --toa
    laddr: str | None = None  # DPVS -z (with -P/-Q)
    ifname: str | None = None  # DPVS -F: accepted, not used


@dataclass
class _DestArgs:
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


@dataclass
class _DaemonArgs:
    state: str = ""
    mcast_ifn: str = ""
    syncid: int | None = None
    mcast_group: str | None = None
    mcast_port: int | None = None
    mcast_ttl: int | None = None
    sync_maxlen: int | None = None


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
        self.dest.weight = self._bounded(Opt.WEIGHT, text, 0, 65535, "weight")

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
        "ipv6": _ipv6,
        "ops": _ops,
        "pe": _pe,
        "sched-flags": _sched_flags,
        "tun-type": _tun_type,
        "tun-port": _tun_port,
        "laddr": _laddr,
        "synproxy": _synproxy,
        "toa": _toa,
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
    try:
        addr = ipaddress.IPv6Address(text) if family == 6 else ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return addr.is_multicast


def _list_invocation(line: _CommandLine) -> tuple[Action, Request]:
    opts = line.options
    if Opt.CONNECTION in opts:
        return Action.LIST_CONNECTIONS, Request("connections", {})
    if Opt.SERVICE in opts:
        return Action.LIST_SERVICE, Request("list", {"service": line.service_key()})
    if Opt.TIMEOUT in opts:
        return Action.LIST_TIMEOUT, Request("get_timeout", {})
    if Opt.DAEMON in opts:
        return Action.LIST_DAEMON, Request("get_daemon", {})
    return Action.LIST_ALL, Request("list", {})


def _change_request(line: _CommandLine) -> Request:
    command = line.command
    if command is Command.ADD:
        return Request("add_service", line.service_spec())
    if command is Command.EDIT:
        return Request("edit_service", line.service_spec())
    if command is Command.DEL:
        return Request("del_service", line.service_key())
    if command in (Command.ADDDEST, Command.EDITDEST):
        op = "add_dest" if command is Command.ADDDEST else "edit_dest"
        return Request(op, {"service": line.service_key(), "dest": line.dest_spec()})
    if command is Command.DELDEST:
        dest = {"addr": line.dest.addr, "port": line.dest.port}
        return Request("del_dest", {"service": line.service_key(), "dest": dest})
    if command is Command.ZERO:
        return Request("zero", {"service": line.service_key()} if Opt.SERVICE in line.options else {})
    if command is Command.TIMEOUT:
        assert line.timeouts is not None
        tcp, tcpfin, udp = line.timeouts
        return Request("set_timeout", {"tcp": tcp, "tcpfin": tcpfin, "udp": udp})
    if command is Command.STARTDAEMON:
        return Request("start_daemon", line.daemon_args())
    if command is Command.STOPDAEMON:
        return Request("stop_daemon", line.daemon_args())
    if command is Command.RELOAD:
        return Request("reload", {})
    if command in (Command.ADDLADDR, Command.DELLADDR):
        op = "add_laddr" if command is Command.ADDLADDR else "del_laddr"
        return Request(op, {"service": line.service_key(), "addr": line.svc.laddr})
    return Request("clear", {})


def parse_args(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    names: NameDB | None = None,
    reading_stdin: bool = False,
) -> Invocation:
    """Turn an ipvsadm-style command line into what to ask lbd; raise UsageError if invalid."""
    line = _CommandLine(names or NameDB())
    leftovers: list[str] = []
    tokens = scan_options(argv, leftovers)
    first = _first_command_token(tokens, line)
    if first is None:
        if leftovers:
            raise tryhelp()
        # No command at all: ipvsadm lists the table (non-numeric).
        return _finish(line, Action.LIST_ALL, Request("list", {}), env)
    if isinstance(first, PoptError):
        raise tryhelp()
    early = line.set_command(first)
    if early is not None:
        return Invocation(early)
    for token in tokens:
        if isinstance(token, PoptError):
            raise UsageError(f"{token.text}: {token.reason}", EXIT_OP_FAILED)
        line.apply(token)
    line.take_leftovers(leftovers)
    line.check()
    return _invocation_for(line, env, reading_stdin)


def _first_command_token(
    tokens: Iterator[OptionToken | PoptError], line: _CommandLine
) -> OptionToken | PoptError | None:
    for token in tokens:
        if isinstance(token, OptionToken) and token.key in _POSITION_FREE_KEYS:
            line.apply_position_free(token)
            continue
        return token
    return None


def _invocation_for(line: _CommandLine, env: Mapping[str, str] | None, reading_stdin: bool) -> Invocation:
    command = line.command
    if command is Command.LIST:
        action, request = _list_invocation(line)
        return _finish(line, action, request, env)
    if command is Command.SAVE:
        return _finish(line, Action.SAVE, Request("list", {}), env)
    if command is Command.RESTORE:
        if reading_stdin:
            raise tryhelp()  # ipvsadm: no -R inside -R
        return _finish(line, Action.RESTORE, None, env)
    if command is Command.GETLADDR:
        args = {"service": line.service_key()} if Opt.SERVICE in line.options else {}
        return _finish(line, Action.LIST_LADDRS, Request("list", args), env)
    return _finish(line, Action.CHANGE, _change_request(line), env)


def _finish(line: _CommandLine, action: Action, request: Request | None, env: Mapping[str, str] | None) -> Invocation:
    return Invocation(
        action=action,
        request=request,
        fmt=line.list_format(),
        socket_path=resolve_socket_path(line.socket_path, env),
        json_output=Opt.JSON in line.options,
    )


# --------------------------------------------------------------------------
# -R: ipvsadm -S output on stdin, applied all-or-nothing


class RestoreError(Exception):
    def __init__(self, line_number: int, error: UsageError) -> None:
        super().__init__(error.message)
        self.line_number = line_number
        self.error = error


def rule_lines(text: str, names: NameDB) -> Iterator[tuple[int, str, Invocation | UsageError]]:
    """Each command line of an ipvsadm rules stream (`ipvsadm -S` output), parsed: (line number,
    the line, its invocation or why it is not one). Like ipvsadm, '#' starts a comment and the
    word "ipvsadm" (or "lbadm") is ignored; blank lines are skipped. Shared by -R and lbd's
    ipvsadm-save configuration files."""
    for number, raw_line in enumerate(text.splitlines(), start=1):
        words = [w for w in raw_line.split("#", 1)[0].split() if w not in ("ipvsadm", PROG)]
        if not words:
            continue
        try:
            yield number, raw_line, parse_args(words, env={}, names=names, reading_stdin=True)
        except UsageError as exc:
            yield number, raw_line, exc


def restore_requests(text: str, names: NameDB | None = None) -> list[Request]:
    """Parse every line of a restore stream into requests; nothing is sent if one is invalid.

    Only commands that change the table are accepted (see rule_lines for the line syntax).
    """
    requests = []
    for number, raw_line, invocation in rule_lines(text, names or NameDB()):
        if isinstance(invocation, UsageError):
            raise RestoreError(number, invocation) from invocation
        if invocation.action is not Action.CHANGE or invocation.request is None:
            raise RestoreError(number, fail(f"only commands that change the table can be restored: {raw_line.strip()}"))
        requests.append(invocation.request)
    return requests


# --------------------------------------------------------------------------
# Talking to lbd and printing

ClientFactory = Callable[[str], ControlClient]


@dataclass
class _Streams:
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO


def run(invocation: Invocation, connect: ClientFactory, streams: _Streams, names: NameDB) -> int:
    if invocation.action is Action.HELP:
        streams.stdout.write(usage_text())
        return EXIT_OK
    if invocation.action is Action.VERSION:
        streams.stdout.write(version_text())
        return EXIT_OK
    if invocation.action is Action.RESTORE:
        return _run_restore(invocation, connect, streams, names)
    assert invocation.request is not None
    try:
        result = _send(invocation.socket_path, invocation.request, connect)
    except ControlError as exc:
        streams.stderr.write(ipvs_strerror(exc.op, exc.errno_name, exc.message) + "\n")
        return EXIT_OP_FAILED if invocation.action is Action.CHANGE else EXIT_LIST_FAILED
    except (ConnectError, ProtocolError) as exc:
        streams.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_NO_DAEMON
    try:
        text = render(invocation, result, names)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        bad = ProtocolError(invocation.socket_path, f"{invocation.request.op} result lacks or mangles {exc!r}")
        streams.stderr.write(f"{PROG}: {bad}\n")
        return EXIT_NO_DAEMON
    streams.stdout.write(text)
    return EXIT_OK


def _send(socket_path: str, request: Request, connect: ClientFactory) -> Any:
    with connect(socket_path) as client:
        return client.request(request.op, request.args)


def _run_restore(invocation: Invocation, connect: ClientFactory, streams: _Streams, names: NameDB) -> int:
    try:
        requests = restore_requests(streams.stdin.read(), names)
    except RestoreError as exc:
        streams.stderr.write(exc.error.message + "\n")
        streams.stderr.write(f"{PROG}: restore: line {exc.line_number} is invalid; nothing was changed\n")
        return exc.error.status
    if not requests:
        return EXIT_OK
    batch = Request("batch", {"requests": [request.to_json() for request in requests]})
    try:
        _send(invocation.socket_path, batch, connect)
    except ControlError as exc:
        failed_op = _failed_batch_op(exc, requests)
        streams.stderr.write(ipvs_strerror(failed_op, exc.errno_name, exc.message) + "\n")
        streams.stderr.write(f"{PROG}: restore: {_failed_batch_where(exc)}nothing was changed\n")
        return EXIT_OP_FAILED
    except (ConnectError, ProtocolError) as exc:
        streams.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_NO_DAEMON
    return EXIT_OK


def _failed_batch_op(exc: ControlError, requests: list[Request]) -> str:
    index = exc.response.get("index")
    if isinstance(index, int) and 0 <= index < len(requests):
        return requests[index].op
    return str(exc.response.get("op") or exc.op)


def _failed_batch_where(exc: ControlError) -> str:
    index = exc.response.get("index")
    return f"command {index + 1} failed; " if isinstance(index, int) else ""


def render(invocation: Invocation, result: Any, names: NameDB) -> str:
    """The text a successful request prints (nothing for changes)."""
    action = invocation.action
    if action is Action.CHANGE:
        return ""
    if invocation.json_output:
        return json.dumps(result, indent=2) + "\n"
    fmt = invocation.fmt
    if action is Action.LIST_ALL:
        return format_list(result, fmt, names)
    if action is Action.LIST_SERVICE:
        return format_one_service(result, fmt, names)
    if action is Action.LIST_CONNECTIONS:
        return format_connections(result, fmt, names)
    if action is Action.LIST_TIMEOUT:
        return format_timeout(result)
    if action is Action.LIST_DAEMON:
        return format_daemons(result)
    if action is Action.LIST_LADDRS:
        return format_laddrs(result)
    return format_save(result, numeric=fmt.numeric, nosort=fmt.nosort, names=names)


def version_text() -> str:
    return f"{PROG} v{__version__} (ipvsadm v1.31 command line and output, IPVS v1.2.1 semantics, served by lbd)\n"


def usage_text() -> str:
    p = PROG
    return version_text() + f"""\
Usage:
  {p} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [--sched-flags flags]
        [-j enable|disable] [--toa]
  {p} -D virtual-service
  {p} -C
  {p} -R
  {p} -S [-n]
  {p} -a|e virtual-service -r server-address [options]
  {p} -d virtual-service -r server-address
  {p} -L|l [virtual-service] [options]
  {p} -Z [virtual-service]
  {p} -P|Q virtual-service -z local-address [-F ifname]
  {p} -G [virtual-service]
  {p} --set tcp tcpfin udp
  {p} --start-daemon {{master|backup}} [daemon-options]
  {p} --stop-daemon {{master|backup}}
  {p} --reload
  {p} doctor [--json] [--window SECONDS] [--queue-num N]
  {p} -h

Commands (long or short form; the command comes first):
  --add-service     -A        add a virtual service
  --edit-service    -E        change a virtual service (unset options return to defaults)
  --delete-service  -D        delete a virtual service and its real servers
  --clear           -C        delete every virtual service
  --restore         -R        read rules (ipvsadm -S / {p} -S output) from stdin, all or nothing
  --save            -S        print the rules in restorable form
  --add-server      -a        add a real server to a virtual service
  --edit-server     -e        change a real server (unset options return to defaults)
  --delete-server   -d        remove a real server
  --list            -L|-l     list the table
  --zero            -Z        zero the counters of one or all services
  --add-laddr       -P        add a FULLNAT local address to a virtual service (DPVS)
  --del-laddr       -Q        remove a FULLNAT local address (DPVS; its connections keep it)
  --get-laddr       -G        list the local addresses of one or all services (DPVS)
  --set tcp tcpfin udp        set connection timeouts in seconds (0 leaves one unchanged)
  --start-daemon              start the connection sync daemon
  --stop-daemon               stop the connection sync daemon
  --reload                    make lbd reload its configuration file (like SIGHUP)
  doctor                      diagnose the director: firewall rules meeting balanced traffic,
                              rp_filter, ip_forward, VIPs, lbd's NFQUEUE rules and queue drops,
                              tunnel MTU, stalled handshakes (read-only; docs/firewall.md)
  --help            -h        print this text

virtual-service:
  --tcp-service|-t  service-address   service-address is host[:port]
  --udp-service|-u  service-address   service-address is host[:port]
  --sctp-service    service-address   service-address is host[:port]
  --fwmark-service|-f fwmark          fwmark is an integer greater than zero

Options:
  --ipv6         -6                   the fwmark service is IPv6
  --scheduler    -s scheduler         {", ".join(SCHEDULERS)}; default {DEFAULT_SCHEDULER}
  --pe            engine              persistence engine (none by default)
  --persistent   -p [timeout]         persistent service, timeout in seconds (default {DEFAULT_PERSISTENT_TIMEOUT_S})
  --netmask      -M netmask           persistence granularity mask
  --real-server  -r server-address    server-address is host[:port]
  --gatewaying   -g                   direct routing (the default)
  --ipip         -i                   IPIP tunneling
  --masquerading -m                   NAT
  --fullnat      -b                   full NAT (DPVS extension; ipvsadm's -b is --sched-flags here)
  --tun-type      type                ipip, gue or gre; default ipip
  --tun-port      port                tunnel destination port
  --tun-nocsum                        tunnel without checksum
  --tun-csum                          tunnel with checksum
  --tun-remcsum                       tunnel with remote checksum
  --weight       -w weight            capacity of the real server, 0..65535 (default 1)
  --u-threshold  -x uthreshold        upper connection threshold
  --l-threshold  -y lthreshold        lower connection threshold
  --connection   -c                   list connection entries
  --timeout                           list timeouts (tcp tcpfin udp)
  --daemon                            list sync daemons
  --stats                             list cumulative counters
  --rate                              list rates (per second)
  --exact                             print exact numbers instead of K/M/G/T
  --thresholds                        list thresholds
  --persistent-conn                   list persistent connections
  --tun-info                          list tunnel details
  --nosort                            keep lbd's order instead of sorting
  --sort                              no effect (kept for compatibility)
  --ops          -o                   one-packet scheduling (UDP)
  --numeric      -n                   numeric addresses and ports
  --sched-flags   flags               scheduler flags, comma-separated
  --laddr        -z local-address     FULLNAT local address (IPv4), with -P/-Q (DPVS)
  --ifname       -F ifname            accepted for DPVS scripts, not needed by lbd
  --synproxy     -j enable|disable    SYN-proxy with -A/-E (DPVS): SYN cookies, then the real
                                      server's handshake; TCP with FULLNAT destinations only
  --toa                               with -A/-E: FULLNAT passes the client address to the real
                                      servers in TCP option 254 (lbd's; the TOA kernel module reads it)
                                      -E replaces the whole service: -p, -j, --toa not given are off

Daemon Options:
  --syncid sid                        sync id (0..255)
  --sync-maxlen length                largest sync message
  --mcast-interface interface         multicast interface for sync
  --mcast-group address               IPv4/IPv6 multicast group
  --mcast-port port                   UDP port
  --mcast-ttl ttl                     multicast TTL

{p} additions:
  --socket PATH                       lbd's control socket; else $LBD_SOCKET, else /run/lbd/lbd.sock
  --json                              listings as JSON, exactly as lbd reports them
  Names in addresses and ports come from /etc/hosts and /etc/services only, never DNS.
"""


def _connect(path: str) -> ControlClient:
    return ControlClient(path)


def main(
    argv: Sequence[str] | None = None,
    *,
    connect: ClientFactory | None = None,
    env: Mapping[str, str] | None = None,
    names: NameDB | None = None,
) -> int:
    """Console entry point. The keyword arguments exist for tests."""
    args = sys.argv[1:] if argv is None else list(argv)
    # `lbadm [--socket PATH] doctor ...` (issue 7): not an ipvsadm command line; "doctor" is no
    # ipvsadm word, so nothing ipvsadm accepts is taken away.
    if "doctor" in args:
        from lb.doctor import cli as doctor_cli

        inv = doctor_cli.doctor_invocation(args)
        if inv:
            sock, rest = inv
            return doctor_cli.main_doctor(rest, resolve_socket_path(sock, env))
    names = names or NameDB()
    streams = _Streams(sys.stdin, sys.stdout, sys.stderr)
    try:
        invocation = parse_args(args, env=env, names=names)
    except UsageError as exc:
        streams.stderr.write(exc.message + "\n")
        return exc.status
    try:
        status = run(invocation, connect or _connect, streams, names)
        streams.stdout.flush()
    except BrokenPipeError:
        # `lbadm -Ln | head`: the reader left; say nothing more, like ipvsadm.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_LIST_FAILED
    return status


if __name__ == "__main__":
    sys.exit(main())
