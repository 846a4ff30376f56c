"""lb.consts: the C contract's values read from native/include's text, equal to what C compiles.

The pure-Python engine must run where the compiled core is not built, so nothing Python needs
from C may come from lb._fastpath: it comes from the header text (lb.consts). These tests hold
the parser to cffi's view of the same header, the Python enums to the C enums, the schedulers
Python offers to the C registry (lb_sched_list.h), and run a packet through PyEngine in a
process where importing lb._fastpath is impossible.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lb import consts
from lb.engine import ERRNO_NAMES, FWD_IDS, ConnState, Reason, Verdict
from lb.model import FORWARD_NAMES, SCHEDULERS

REPO = Path(__file__).resolve().parents[2]


def _lib() -> object:
    try:
        from lb._ffi import lib
    except ImportError as exc:
        pytest.skip(f"the C extension lb._fastpath is not built ({exc}): nothing to compare with")
    return lib


# ---------------------------------------------------------------------------- the parser


def test_parser_reads_defines_and_enums_as_c_does() -> None:
    text = textwrap.dedent("""\
        /* a comment with #define LB_NOT_ME 1 inside */
        #define LB_A 14
        #define LB_HEX 0x4C420000   /* trailing comment */
        #  define LB_NEG -3
        #define LB_SUFFIX 7u
        enum e { E_A = -2, E_B, // line comment
                 E_C = 10, E_D };
        enum f { F_X };
        """)
    assert consts.parse_defines(text) == {"LB_A": 14, "LB_HEX": 0x4C420000, "LB_NEG": -3, "LB_SUFFIX": 7}
    assert consts.parse_enums(text) == {"e": {"E_A": -2, "E_B": -1, "E_C": 10, "E_D": 11}, "f": {"F_X": 0}}


def test_parser_refuses_what_cdef_would() -> None:
    with pytest.raises(consts.HeaderError, match="LB_EXPR"):
        consts.parse_defines("#define LB_EXPR (1 << 3)\n")


def test_sched_list_syntax() -> None:
    assert consts.parse_sched_list("/* registry */\nLB_SCHED(rr)\nLB_SCHED(wlc)\n") == ("rr", "wlc")
    with pytest.raises(consts.HeaderError, match="only LB_SCHED"):
        consts.parse_sched_list("LB_SCHED(rr)\n#include <x.h>\n")
    with pytest.raises(consts.HeaderError, match="twice"):
        consts.parse_sched_list("LB_SCHED(rr)\nLB_SCHED(rr)\n")
    with pytest.raises(consts.HeaderError, match="no LB_SCHED"):
        consts.parse_sched_list("/* empty */\n")


def test_headers_are_found_in_the_source_tree_or_the_package() -> None:
    found = consts.definitions().include_dir
    assert found in consts.SEARCH_DIRS
    assert os.path.isfile(os.path.join(found, consts.API_HEADER))
    assert os.path.isfile(os.path.join(found, consts.SCHED_LIST_HEADER))


@pytest.mark.parametrize("text", [
    "a /* one */ b", "/***/x", "/* ** */y", "/* a * / b */z", "/*/ still */w", "x // y /* z\n*/ q",
    "/* a // b */ c", "/* unterminated", "p/**/q/* r */s", "/* x **/ t */",
])
def test_comments_are_stripped_as_c_reads_them(text: str) -> None:
    assert consts.strip_comments(text) == re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.DOTALL)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="LB_NO_SUCH_THING"):
        consts.LB_NO_SUCH_THING  # noqa: B018


# ---------------------------------------------------------------------------- against the build


def test_every_parsed_value_equals_cffis() -> None:
    lib = _lib()
    parsed = consts.definitions().constants
    assert parsed, "nothing parsed from lb_api.h"
    for name, value in parsed.items():
        assert getattr(lib, name) == value, name
    # ... and nothing cffi knows as an integer constant is missing from the parse.
    compiled = {name for name in dir(lib) if name.startswith("LB_") and isinstance(getattr(lib, name), int)}
    assert compiled == set(parsed)


# ---------------------------------------------------------------------------- Python's views of the enums


@pytest.mark.parametrize(("py_enum", "tag", "prefix"), [
    (Verdict, "lb_verdict", "LB_V_"),
    (Reason, "lb_reason", "LB_R_"),
    (ConnState, "lb_conn_state", "LB_S_"),
])
def test_python_enums_mirror_the_c_enums(py_enum: type, tag: str, prefix: str) -> None:
    members = consts.enum_members(tag, prefix)
    members.pop("COUNT", None)  # the number of values, not a value
    assert {m.name: int(m.value) for m in py_enum} == members  # type: ignore[attr-defined]


def test_forwarding_methods_and_errnos_come_from_the_header() -> None:
    assert FWD_IDS == {"route": consts.LB_FWD_ROUTE, "tunnel": consts.LB_FWD_TUNNEL,
                       "masq": consts.LB_FWD_MASQ, "fullnat": consts.LB_FWD_FULLNAT}
    assert set(FORWARD_NAMES) == set(FWD_IDS)
    assert ERRNO_NAMES[consts.LB_ESRCH] == "ESRCH" and consts.LB_OK not in ERRNO_NAMES


# ---------------------------------------------------------------------------- the scheduler registry


def _registry_lines() -> tuple[str, ...]:
    text = (REPO / "native" / "include" / consts.SCHED_LIST_HEADER).read_text()
    return tuple(re.findall(r"^LB_SCHED\((\w+)\)", text, re.MULTILINE))


def test_python_offers_exactly_the_c_registry() -> None:
    assert SCHEDULERS == consts.SCHEDULERS == _registry_lines()


def test_pure_python_engine_has_exactly_the_registry_schedulers() -> None:
    from lb.pyengine.sched import schedulers

    assert sorted(schedulers()) == sorted(consts.SCHEDULERS)
    assert all(sched.name == name for name, sched in schedulers().items())


# ---------------------------------------------------------------------------- no compiled core needed

_WITHOUT_FASTPATH = """
import sys

sys.modules["lb._fastpath"] = None  # any `import lb._fastpath` now raises ImportError
try:
    import lb._fastpath  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("lb._fastpath is still importable")

from lb.engine import FwdState, Reason, Verdict
from lb.model import DestSpec, ServiceKey, ServiceSpec
from lb.pyengine import PyEngine

engine = PyEngine(hash_seed=1)
key = ServiceKey(6, "198.51.100.1", 80)
engine.add_service(ServiceSpec(key, sched="rr"))
engine.add_dest(key, DestSpec("203.0.113.21", 80))
engine.set_fwd(key, "203.0.113.21", 80, FwdState(ifindex=7, dst_mac=bytes(6), src_mac=bytes(6)))
syn = bytes.fromhex(sys.argv[1])
action = engine.process(syn, 1000)
assert (action.verdict, action.reason) == (Verdict.XMIT_L2, Reason.FORWARDED), action
assert [c.state for c in engine.connections(1000)] == ["SYN_RECV"]
assert "lb._ffi" not in sys.modules
print("ok")
"""


def test_pure_python_engine_runs_without_the_compiled_core() -> None:
    from scapy.layers.inet import IP, TCP

    syn = bytes(IP(src="192.0.2.10", dst="198.51.100.1") / TCP(sport=40000, dport=80, flags="S", seq=1000))
    done = subprocess.run([sys.executable, "-c", _WITHOUT_FASTPATH, syn.hex()], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
