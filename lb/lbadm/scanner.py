"""Reading the command line as ipvsadm does with popt: short options cluster (`-Ln`, `-srr`),
`--opt=value`, an optional value (`-p [timeout]`) never starts with '-', non-option words are
collected as leftovers, and the first error stops the scan."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence

from lb.records import NamedTuple


class ArgKind(enum.Enum):
    NONE = "none"
    REQUIRED = "required"
    OPTIONAL = "optional"


class OptionSpec(NamedTuple):
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
    _spec("sync-ext-port", arg=_REQ),
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
    # lbd's FULLNAT TOA and PROXY protocol options
    _spec("toa"),
    _spec("proxy-protocol", arg=_REQ),
)
_BY_LONG = {spec.long: spec for spec in OPTION_SPECS if spec.long}
_BY_SHORT = {spec.short: spec for spec in OPTION_SPECS if spec.short}

# Options that may appear anywhere, even before the command.
_POSITION_FREE_KEYS = frozenset({"socket", "json"})

POPT_UNKNOWN = "unknown option"
POPT_MISSING_ARG = "missing argument"
POPT_UNWANTED_ARG = "option does not take an argument"


class OptionToken(NamedTuple):
    key: str
    arg: str | None
    # The argv word popt's poptBadOption() would name: the last one consumed.
    text: str


class PoptError(NamedTuple):
    text: str
    reason: str


# `-b` has two meanings, told apart by the command (the first option): ipvsadm's --sched-flags
# (with a value) on -A/-E, DPVS's --fullnat (without one) on -a/-e and elsewhere. So
# `ipvsadm -S` output with scheduler flags restores, and DPVS's FULLNAT lines too.
_SCHED_FLAGS_B = OptionSpec(key="sched-flags", long="sched-flags", short="b", arg=ArgKind.REQUIRED)
_SERVICE_COMMANDS = frozenset({"add-service", "edit-service"})


def _short_spec(char: str, command: str | None) -> OptionSpec | None:
    if char == "b" and command in _SERVICE_COMMANDS:
        return _SCHED_FLAGS_B
    return _BY_SHORT.get(char)


def scan_options(argv: Sequence[str], leftovers: list[str]) -> Iterator[OptionToken | PoptError]:
    """Yield options in order as popt returns them; stop after the first error.

    Non-option words (and everything after "--") are appended to `leftovers`.
    """
    index = 0
    rest_are_leftovers = False
    command: list[str] = []  # the first option's key, once seen (it decides what -b means)
    while index < len(argv):
        word = argv[index]
        index += 1
        if rest_are_leftovers or not word.startswith("-") or word == "-":
            leftovers.append(word)
        elif word == "--":
            rest_are_leftovers = True
        elif word.startswith("--"):
            token, index = _scan_long(argv, index, word)
            _note_command(token, command)
            yield token
            if isinstance(token, PoptError):
                return
        else:
            cluster, index = _scan_short_cluster(argv, index, word, command)
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


def _note_command(token: OptionToken | PoptError, command: list[str]) -> None:
    if not command and isinstance(token, OptionToken) and token.key not in _POSITION_FREE_KEYS:
        command.append(token.key)


def _scan_short_cluster(
    argv: Sequence[str], index: int, word: str, command: list[str]
) -> tuple[list[OptionToken | PoptError], int]:
    """The options of one word ("-Ln", "-srr", "-w=3", "-t VIP") and where scanning goes on."""
    tokens: list[OptionToken | PoptError] = []
    chars = word[1:]
    for pos, char in enumerate(chars):
        if tokens:
            _note_command(tokens[-1], command)
        spec = _short_spec(char, command[0] if command else None)
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
    if tokens:
        _note_command(tokens[-1], command)
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
