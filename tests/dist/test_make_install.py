"""`make install` / `make uninstall` staged in a DESTDIR, as a packager (or an admin with
DESTDIR=) runs them: where every file lands, that the staged venv runs, and that uninstall
removes exactly what install put there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/usr/local"
LIBDIR = f"{PREFIX}/lib/lvs-userspace"
DOCDIR = f"{PREFIX}/share/doc/lvs-userspace"
MAKE_TIMEOUT_S = 900

EXPECTED = {  # outside the venv and the examples: file -> symlink target (None: a regular file)
    f"{PREFIX}/sbin/lbd": f"{LIBDIR}/bin/lbd",
    f"{PREFIX}/sbin/lbadm": f"{LIBDIR}/bin/lbadm",
    f"{PREFIX}/sbin/lbd-exec": f"{LIBDIR}/bin/lbd-exec",
    f"{PREFIX}/share/man/man8/lbd.8": None,
    f"{PREFIX}/share/man/man8/lbadm.8": None,
    f"{PREFIX}/share/bash-completion/completions/lbd": None,
    f"{PREFIX}/share/bash-completion/completions/lbadm": None,
    f"{PREFIX}/lib/systemd/system/lbd.service": None,
    f"{PREFIX}/lib/systemd/system/lbd@.service": None,
}


def _make(target: str, destdir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", target, f"DESTDIR={destdir}", f"PREFIX={PREFIX}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=MAKE_TIMEOUT_S, check=False)


def _files(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_install_then_uninstall_in_a_destdir(tmp_path: Path, index_problem: str | None) -> None:
    if index_problem:
        pytest.skip(f"the package index is unreachable, so the venv cannot get lbd's dependencies: {index_problem}")
    root = tmp_path / "stage"
    installed = _make("install", root)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    files = _files(root)
    outside = {f for f in files if not f.startswith((LIBDIR + "/", DOCDIR + "/"))}
    assert outside == set(EXPECTED), f"unexpected: {outside - set(EXPECTED)}, missing: {set(EXPECTED) - outside}"
    for path, target in EXPECTED.items():
        staged = root / path.lstrip("/")
        if target is None:
            assert staged.is_file() and not staged.is_symlink(), path
        else:
            assert os.readlink(staged) == target, path
    assert (root / DOCDIR.lstrip("/") / "examples" / "dr.toml").is_file()
    assert (root / "usr/local/share/man/man8/lbadm.8").read_text() == (REPO / "man/lbadm.8").read_text()
    unit = (root / "usr/local/lib/systemd/system/lbd@.service").read_text()
    assert f"ExecStart={PREFIX}/sbin/lbd $LBD_OPTS" in unit and "@SBINDIR@" not in unit

    # Nothing staged may point back into the staging directory (shebangs, pyvenv.cfg, bytecode).
    staged_path = str(root).encode()
    leaks = [f for f in files if not (root / f.lstrip("/")).is_symlink()
             and staged_path in (root / f.lstrip("/")).read_bytes()]
    assert not leaks, leaks[:10]
    assert (root / LIBDIR.lstrip("/") / "bin" / "lbd").read_text().startswith(f"#!{LIBDIR}/bin/python")

    # The staged venv runs where it is (a venv finds itself from its python's location).
    python = str(root / LIBDIR.lstrip("/") / "bin" / "python")
    version = subprocess.run([python, "-m", "lb.daemon", "--version"], cwd=tmp_path, capture_output=True, text=True,
                             check=False)
    assert version.returncode == 0 and version.stdout.startswith("lbd "), version
    check = subprocess.run([python, "-m", "lb.daemon", "--check", str(REPO / "configs/fnat.toml")],
                           cwd=tmp_path, capture_output=True, text=True, check=False)
    assert check.returncode == 0 and ": OK" in check.stdout, check
    helptext = subprocess.run([python, "-m", "lb.lbadm", "-h"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert helptext.returncode == 0 and "--add-service" in helptext.stdout + helptext.stderr

    # lbd-exec finds the IPVS preload library inside the installed package
    library = subprocess.run([python, "-m", "lb.ipvsabi.launcher", "--print-library"], cwd=tmp_path,
                             capture_output=True, text=True, check=False)
    assert library.returncode == 0 and library.stdout.strip().startswith(str(root / LIBDIR.lstrip("/"))), library
    assert Path(library.stdout.strip()).is_file()

    removed = _make("uninstall", root)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert _files(root) == set(), sorted(_files(root))[:20]
