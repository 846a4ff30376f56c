"""bash completion for lbadm and lbd (completion/*.bash): sourced into bash, driven as bash drives it."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

SAVED_RULES = """-A -t 10.0.0.1:80 -s rr
-a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1
-a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1
-A -u 10.0.0.1:53 -s wlc
-a -u 10.0.0.1:53 -r 10.0.0.13:53 -g -w 1
"""


def complete(script: str, words: list[str], func: str) -> list[str]:
    """COMPREPLY for the command line `words` (the last word is the one being completed)."""
    assert BASH is not None
    program = (f"source {shlex.quote(str(REPO / 'completion' / script))}\n"
               f"complete -p {func.lstrip('_')} >/dev/null || exit 3\n"
               f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               f"COMP_LINE={shlex.quote(' '.join(words))}\n"
               f"{func}\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = subprocess.run([BASH, "--norc", "--noprofile", "-c", program],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.fixture
def fake_lbadm(tmp_path: Path) -> str:
    """An `lbadm` whose -S -n prints a saved table, as a running lbd would answer."""
    path = tmp_path / "lbadm"
    path.write_text(f"#!/bin/sh\n[ \"$1 $2\" = '-S -n' ] && cat <<'RULES'\n{SAVED_RULES}RULES\n")
    path.chmod(0o755)
    return str(path)


def test_lbadm_commands_first() -> None:
    assert complete("lbadm.bash", ["lbadm", "d"], "_lbadm") == ["doctor"]
    offered = complete("lbadm.bash", ["lbadm", "--add-s"], "_lbadm")
    assert offered == ["--add-service", "--add-server"]


def test_lbadm_schedulers_and_synproxy() -> None:
    from lb import consts

    assert complete("lbadm.bash", ["lbadm", "-A", "-t", "10.0.0.1:80", "-s", ""], "_lbadm") == list(consts.SCHEDULERS)
    assert complete("lbadm.bash", ["lbadm", "-A", "-t", "10.0.0.1:80", "-s", "sh", "--sched-flags", "sh"],
                    "_lbadm") == ["sh-fallback", "sh-port"]
    assert complete("lbadm.bash", ["lbadm", "-E", "-t", "10.0.0.1:80", "-j", "e"], "_lbadm") == ["enable"]


def test_lbadm_services_and_real_servers_come_from_lbd(fake_lbadm: str) -> None:
    assert complete("lbadm.bash", [fake_lbadm, "-a", "-t", ""], "_lbadm") == ["10.0.0.1:80"]
    assert complete("lbadm.bash", [fake_lbadm, "-D", "-u", ""], "_lbadm") == ["10.0.0.1:53"]
    reals = complete("lbadm.bash", [fake_lbadm, "-d", "-t", "10.0.0.1:80", "-r", ""], "_lbadm")
    assert reals == ["10.0.0.11:80", "10.0.0.12:80"]


def test_lbadm_without_a_running_lbd_offers_nothing_quietly(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-lbadm"
    assert complete("lbadm.bash", [str(missing), "-a", "-t", ""], "_lbadm") == []


def test_lbadm_doctor_options() -> None:
    offered = complete("lbadm.bash", ["lbadm", "doctor", "--"], "_lbadm")
    assert offered == ["--json", "--window", "--queue-num", "--help"]


def _long_options(help_text: str) -> set[str]:
    """The options the help text defines: those that start one of its lines (indented by two)."""
    return set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z0-9-]+)", help_text, re.MULTILINE))


def test_every_lbadm_option_of_its_help_is_offered() -> None:
    helptext = subprocess.run([sys.executable, "-m", "lb.lbadm", "-h"], capture_output=True, text=True,
                              cwd=REPO, timeout=60, check=False)
    documented = _long_options(helptext.stdout + helptext.stderr)
    assert "--add-service" in documented, helptext
    offered = set(complete("lbadm.bash", ["lbadm", "--"], "_lbadm"))
    offered |= set(complete("lbadm.bash", ["lbadm", "-L", "--"], "_lbadm"))
    assert documented - offered == set()


def test_lbd_values_and_every_option_of_its_help() -> None:
    assert complete("lbd.bash", ["lbd", "--engine", ""], "_lbd") == ["c", "python"]
    assert complete("lbd.bash", ["lbd", "--log-format", "j"], "_lbd") == ["json"]
    assert complete("lbd.bash", ["lbd", "--down-policy", "c"], "_lbd") == ["closed"]
    helptext = subprocess.run([sys.executable, "-m", "lb.daemon", "--help"], capture_output=True, text=True,
                              cwd=REPO, timeout=60, check=False).stdout
    documented = _long_options(helptext)
    assert "--down-policy" in documented
    assert documented - set(complete("lbd.bash", ["lbd", "--"], "_lbd")) == set()
