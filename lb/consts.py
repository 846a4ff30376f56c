"""The C contract's values, read from the header text: never retyped, never taken from the build.

native/include/lb_api.h is the one source of truth for every value C defines (limits, flags,
verdicts, reasons, states, errors, SYN-proxy defaults and limits, ...), and
native/include/lb_sched_list.h is the scheduler registry (one `LB_SCHED(name)` line per
scheduler, an X-macro the C registry expands). This module parses their TEXT, so the control
plane, lbadm and the pure-Python engine (lb.pyengine, the executable specification) get every
value without the compiled extension lb._fastpath. tests/unit/test_consts.py checks each parsed
value against cffi's `lib` whenever the extension is built.

Values are module attributes named as in C (`consts.LB_PKT_MAX`, `consts.LB_R_NO_DEST`): both
the header's integer #defines and its enum constants. Enums as a whole: `enum_members()`.

Where the headers are found (the first directory that has lb_api.h):
  1. native/include/ of the source tree this package sits in (the checkout, editable installs);
  2. lb/include/ next to this file: a built wheel ships native/include/*.h there (setup.py's
     build_py copies them), as an installed lb has no native/ beside it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping

from lb.records import NamedTuple

API_HEADER = "lb_api.h"
SCHED_LIST_HEADER = "lb_sched_list.h"

# os.path, not pathlib: lbadm imports this module on every command, and pathlib costs ~5 ms of it.
_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))
SEARCH_DIRS: tuple[str, ...] = (os.path.join(os.path.dirname(_PACKAGE_DIR), "native", "include"),
                                os.path.join(_PACKAGE_DIR, "include"))

# A C comment: /* to the first */ (unrolled, not `/\*.*?\*/`: ~5x faster over lb_api.h's 55 kB,
# mostly comments), or // to the end of the line.
_COMMENT = re.compile(r"/\*[^*]*\*+(?:[^/*][^*]*\*+)*/|//[^\n]*")
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(.*?)[ \t]*$", re.MULTILINE)
_INT_LITERAL = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]*\Z")
_ENUM = re.compile(r"\benum[ \t\n]+(\w+)[ \t\n]*\{([^}]*)\}")  # the body: up to the first }
_ENUMERATOR = re.compile(r"\A(\w+)(?:[ \t\n]*=[ \t\n]*(.+?))?\Z", re.DOTALL)
# The registry's only syntax (lb_sched_list.h): one scheduler per line, nothing else but comments.
SCHED_LINE = re.compile(r"^LB_SCHED\((\w+)\)", re.MULTILINE)


class HeaderError(ValueError):
    """A header is missing or holds something this parser (like cffi's cdef) cannot take."""


def strip_comments(text: str) -> str:
    return _COMMENT.sub(" ", text)


def _int_value(text: str, what: str) -> int:
    match = _INT_LITERAL.match(text.strip())
    if match is None:
        raise HeaderError(f"{what}: {text.strip()!r} is not an integer literal (lb_api.h holds integer "
                          "#defines only: cffi's cdef reads it verbatim)")
    sign, digits = match.groups()
    value = int(digits, 0) if digits.lower().startswith("0x") else int(digits, 10)
    return -value if sign == "-" else value


def parse_defines(text: str, source: str = API_HEADER) -> dict[str, int]:
    """The integer #defines of a header, in order."""
    return _defines(strip_comments(text), source)


def _defines(code: str, source: str) -> dict[str, int]:
    return {name: _int_value(value, f"{source}: #define {name}") for name, value in _DEFINE.findall(code)}


def parse_enums(text: str, source: str = API_HEADER) -> dict[str, dict[str, int]]:
    """Every `enum tag { A = 1, B, ... }` as {tag: {A: 1, B: 2, ...}} (C's implicit numbering)."""
    return _enums(strip_comments(text), source)


def _enums(code: str, source: str) -> dict[str, dict[str, int]]:
    enums: dict[str, dict[str, int]] = {}
    for tag, body in _ENUM.findall(code):
        members: dict[str, int] = {}
        following = 0
        for item in (part.strip() for part in body.split(",")):
            if not item:
                continue
            match = _ENUMERATOR.match(item)
            if match is None:
                raise HeaderError(f"{source}: enum {tag}: cannot read {item!r}")
            name, value = match.groups()
            members[name] = _int_value(value, f"{source}: enum {tag} {name}") if value else following
            following = members[name] + 1
        enums[tag] = members
    return enums


def parse_sched_list(text: str, source: str = SCHED_LIST_HEADER) -> tuple[str, ...]:
    """The scheduler names of the registry, in registry order; anything but comments and
    LB_SCHED(name) lines is an error (the C side expands the same lines)."""
    body = strip_comments(text)
    names = tuple(SCHED_LINE.findall(body))
    stray = [line.strip() for line in SCHED_LINE.sub("", body).splitlines() if line.strip()]
    if stray:
        raise HeaderError(f"{source}: only LB_SCHED(name) lines and comments belong here, found {stray[0]!r}")
    if not names:
        raise HeaderError(f"{source}: no LB_SCHED(name) line")
    if len(set(names)) != len(names):
        raise HeaderError(f"{source}: a scheduler is listed twice: {', '.join(names)}")
    return names


class Definitions(NamedTuple):
    """Everything read from one include directory."""

    include_dir: str
    defines: Mapping[str, int]
    enums: Mapping[str, Mapping[str, int]]
    schedulers: tuple[str, ...]
    constants: Mapping[str, int]  # every named integer: the #defines and each enum's constants


def find_include_dir() -> str:
    for directory in SEARCH_DIRS:
        if os.path.isfile(os.path.join(directory, API_HEADER)):
            return directory
    raise HeaderError(f"cannot find {API_HEADER}: looked in " + ", ".join(SEARCH_DIRS)
                      + " (an installed lvs-userspace ships the headers in lb/include/)")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def load(include_dir: str | os.PathLike[str] | None = None) -> Definitions:
    """Parse the contract headers of `include_dir` (default: find_include_dir())."""
    directory = os.fspath(include_dir) if include_dir is not None else find_include_dir()
    api = strip_comments(_read(os.path.join(directory, API_HEADER)))
    try:
        sched_text = _read(os.path.join(directory, SCHED_LIST_HEADER))
    except FileNotFoundError:
        raise HeaderError(f"{os.path.join(directory, SCHED_LIST_HEADER)} is missing (the scheduler registry)") from None
    defines = _defines(api, API_HEADER)
    enums = _enums(api, API_HEADER)
    constants = dict(defines)
    for members in enums.values():
        clashes = constants.keys() & members.keys()
        if clashes:
            raise HeaderError(f"{API_HEADER}: {', '.join(sorted(clashes))} defined twice")
        constants.update(members)
    return Definitions(directory, defines, enums, parse_sched_list(sched_text), constants)


@functools.cache
def definitions() -> Definitions:
    """The contract of this installation (parsed once)."""
    return load()


def enum_members(tag: str, prefix: str) -> dict[str, int]:
    """`enum <tag>`'s constants without their common prefix, e.g. enum_members("lb_fwd", "LB_FWD_")
    == {"ROUTE": 0, "TUNNEL": 1, ...}. KeyError names a missing enum."""
    members = definitions().enums.get(tag)
    if members is None:
        raise KeyError(f"{API_HEADER} has no enum {tag}")
    if any(not name.startswith(prefix) for name in members):
        raise KeyError(f"enum {tag}: not every constant starts with {prefix!r}")
    return {name.removeprefix(prefix): value for name, value in members.items()}


def __getattr__(name: str) -> int:
    """`consts.LB_X`: the value of #define LB_X or enum constant LB_X."""
    if name.startswith("LB_"):
        value = definitions().constants.get(name)
        if value is not None:
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (not in {API_HEADER})")


# The scheduler registry, in registry order (lb_sched_list.h).
SCHEDULERS: tuple[str, ...] = definitions().schedulers
