"""ipvsadm's commands, its option columns and its table of legal command/option combinations
(generic_opt_check, tunnel_opt_check), extended with the DPVS and lbd columns."""

from __future__ import annotations

import enum
import functools

from lb.lbadm.errors import fail


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
    PROXY_PROTOCOL = 39  # lbd's --proxy-protocol
    SYNC_EXT_PORT = 40  # lbd's --sync-ext-port (the sync extension, docs/sync.md)


OPTION_NAMES = (
    "numeric", "connection", "service-address", "scheduler", "persistent", "netmask",
    "real-server", "forwarding-method", "weight", "u-threshold", "l-threshold",
    "mcast-interface", "timeout", "daemon", "stats", "rate", "thresholds",
    "persistent-conn", "nosort", "syncid", "exact", "ops", "pe", "sched-flags",
    "mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen", "tun-info", "tun-type",
    "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum", "json",
    "local-address", "synproxy", "toa", "ifname", "proxy-protocol", "sync-ext-port",
)  # fmt: skip

# One character per option column: '+' compulsory, 'x' illegal, '1' at most
# one of the '1's, ' ' optional. ipvsadm 1.31's table plus lbadm's json column.
# ipvsadm's 35 columns, then the DPVS/lbd ones: local-address, synproxy, toa, ifname, proxy-protocol.
_NO_DPVS = "xxxxx"
_ADD_ROW = "xx+   " + "x" * 15 + "   " + "x" * 10 + "x" + "x  x "
_ADDDEST_ROW = "xx+xxx+    " + "x" * 18 + "     " + "x" + _NO_DPVS
_LADDR_ROW = "xx+" + "x" * 32 + "+xx x"  # DPVS: -F compulsory; lbd needs no interface
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
# lbd's --sync-ext-port: with --start-daemon only.
LEGAL_OPTIONS = {cmd: row + (" " if cmd is Command.STARTDAEMON else "x") for cmd, row in LEGAL_OPTIONS.items()}
assert all(len(row) == len(Opt) for row in LEGAL_OPTIONS.values())

_TUNNEL_OPTS = (Opt.TUN_PORT, Opt.TUN_NOCSUM, Opt.TUN_CSUM, Opt.TUN_REMCSUM)
# Per tunnel type, the same codes for (tun-port, tun-nocsum, tun-csum, tun-remcsum).
LEGAL_TUNNEL_OPTIONS = {"ipip": "xxxx", "gue": "+111", "gre": "x11x"}



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
    _check_legality(_legality_rules(command), options, f"'{command.value}' command")


@functools.cache
def _legality_rules(command: Command) -> list[tuple[Opt, str]]:
    row = LEGAL_OPTIONS[command]
    return [(opt, row[opt]) for opt in Opt]


def check_tunnel_options(tun_type: str, options: set[Opt]) -> None:
    """ipvsadm's tunnel_opt_check."""
    row = LEGAL_TUNNEL_OPTIONS[tun_type]
    _check_legality([(opt, rule) for rule, opt in zip(row, _TUNNEL_OPTS, strict=True)], options,
                    f"'{tun_type}' tunnel type")
