"""What an operator installs besides the commands: man pages (linted), systemd units (verified by
systemd's own checker), and their agreement with the code (every lbd option documented, the units'
runtime directories where lb/paths.py puts the control socket)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lb import paths

REPO = Path(__file__).resolve().parents[2]
MAN_PAGES = sorted((REPO / "man").glob("*.8"))
UNITS = sorted((REPO / "systemd").glob("*.service"))
LBD_BIN = Path(sys.executable).parent / "lbd"


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (`make deps` installs it)")
    return found


def test_the_pages_and_units_exist() -> None:
    assert [p.name for p in MAN_PAGES] == ["lbadm.8", "lbd.8"]
    assert [u.name for u in UNITS] == ["lbd.service", "lbd@.service"]


@pytest.mark.parametrize("page", MAN_PAGES, ids=lambda p: p.name)
def test_man_page_lints_clean(page: Path) -> None:
    mandoc = subprocess.run([_need("mandoc"), "-Tlint", "-W", "warning", str(page)],
                            capture_output=True, text=True, check=False)
    assert mandoc.returncode == 0 and not mandoc.stdout + mandoc.stderr, mandoc.stdout + mandoc.stderr
    groff = subprocess.run([_need("groff"), "-ww", "-z", "-man", str(page)],
                           capture_output=True, text=True, check=False)
    assert groff.returncode == 0 and not groff.stderr, groff.stderr
    man = subprocess.run([_need("man"), "--warnings", "-l", str(page)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LANG": "C.UTF-8"}, check=False)
    assert man.returncode == 0 and not man.stderr, man.stderr
    assert "NAME" in man.stdout


def _sections(page: Path) -> list[str]:
    return [line[4:].strip('"') for line in page.read_text().splitlines() if line.startswith(".SH ")]


def test_lbadm_page_follows_ipvsadm() -> None:
    text = (REPO / "man" / "lbadm.8").read_text()
    assert _sections(REPO / "man" / "lbadm.8") == [
        "NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "PARAMETERS", "EXAMPLES", "FILES", "EXIT STATUS", "SEE ALSO"]
    # What lbd refuses is marked where the option is described.
    for option in (r"\-\-sctp\-service", r"\-6, \-\-ipv6", r'\-\-pe "'):
        start = text.index(option)
        assert "not implemented by lbd" in text[start:start + 300], option
    # Implemented since: NAT and fwmark services (issue 14), the sync daemon (issue 18).
    for option in (r"\-m, \-\-masquerading", r"\-f, \-\-fwmark\-service", r"\-\-start\-daemon"):
        start = text.index(option)
        assert "not implemented by lbd" not in text[start:start + 300], option


def test_lbd_page_documents_every_option() -> None:
    helptext = subprocess.run([sys.executable, "-m", "lb.daemon", "--help"], capture_output=True, text=True,
                              cwd=REPO, timeout=60, check=False).stdout
    options = set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z0-9-]+)", helptext, re.MULTILINE)) - {"--help"}
    assert "--log-format" in options
    page = (REPO / "man" / "lbd.8").read_text().replace("\\-", "-")
    assert not [o for o in sorted(options) if o not in page]


def _render(unit: Path, into: Path) -> Path:
    """The unit as `make install` writes it, with lbd where this test run has it."""
    out = into / unit.name
    out.write_text(unit.read_text().replace("@SBINDIR@", str(LBD_BIN.parent)))
    return out


def _man_tree(into: Path) -> Path:
    tree = into / "man" / "man8"
    tree.mkdir(parents=True)
    for page in MAN_PAGES:
        (tree / page.name).symlink_to(page)
    return tree.parent


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_verifies_the_unit(unit: Path, tmp_path: Path) -> None:
    analyze = _need("systemd-analyze")
    if not LBD_BIN.exists():
        pytest.skip(f"{LBD_BIN} does not exist (make build)")
    rendered = _render(unit, tmp_path)
    targets = [rendered]
    if unit.name.endswith("@.service"):  # the template and one instance of it
        instance = tmp_path / "lbd@director1.service"
        shutil.copy(rendered, instance)
        targets.append(instance)
    for target in targets:
        # MANPATH: Documentation=man:lbd(8) must resolve to these pages.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MANPATH": str(_man_tree(tmp_path / target.stem)),
               "SYSTEMD_LOG_COLOR": "0"}
        proc = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True, timeout=120,
                              env=env, check=False)
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
            f"systemd-analyze verify {target.name}:\n{proc.stdout}{proc.stderr}"


def _setting(unit: Path, key: str) -> str:
    values = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{unit.name}: {key}= {values}"
    return values[0]


def test_units_notify_reload_and_directories_match_lbd() -> None:
    plain, template = REPO / "systemd" / "lbd.service", REPO / "systemd" / "lbd@.service"
    for unit in (plain, template):
        assert _setting(unit, "Type") == "notify"
        assert _setting(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
        assert _setting(unit, "ExecStart").startswith("@SBINDIR@/lbd ")
        assert _setting(unit, "CapabilityBoundingSet") == "CAP_NET_ADMIN CAP_NET_RAW"
    assert _setting(template, "NetworkNamespacePath") == "/run/netns/%i"
    # RuntimeDirectory= is where lbd (and lbadm) look by default in that namespace.
    initial = paths.Netns("initial", 1)
    named = paths.Netns("named", 2, name="director1")
    assert Path("/run") / _setting(plain, "RuntimeDirectory") == paths.runtime_dir(initial)
    assert Path("/run") / _setting(template, "RuntimeDirectory").replace("%i", "director1") == paths.runtime_dir(named)
