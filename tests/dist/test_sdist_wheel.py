"""The distribution artifacts as a user gets them (issue 12): `python -m build` makes an sdist and
then a wheel FROM that sdist (build's default), the wheel installs into a throwaway venv with its
declared dependencies, and the installed commands run outside the source tree.

Needs the package index (build isolation fetches setuptools/cffi/wheel, pip fetches the runtime
dependencies) and the C toolchain `make build` installs; without the index it skips and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PIP_TIMEOUT_S = 600
BUILD_TIMEOUT_S = 900


def _project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def _run(argv: list[str], cwd: Path, timeout: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory, index_problem: str | None) -> dict[str, Any]:
    pytest.importorskip("build", reason="the `build` package is not installed (it is in the test extra: make build)")
    work = tmp_path_factory.mktemp("dist")
    offline = index_problem
    if offline:
        pytest.skip(f"the package index is unreachable, so no isolated build or install can run: {offline}")
    out = work / "out"
    proc = _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], cwd=work, timeout=BUILD_TIMEOUT_S)
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    sdists = sorted(out.glob("*.tar.gz"))
    wheels = sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, f"expected one sdist and one wheel in {out}: {sorted(out.iterdir())}"
    return {"work": work, "sdist": sdists[0], "wheel": wheels[0], "log": proc.stdout + proc.stderr}


def test_the_wheel_is_built_from_the_sdist(dist: dict[str, Any]) -> None:
    # build's default: sdist first, then the wheel from the unpacked sdist (so a file the sdist
    # forgets breaks the wheel here, as it would for anyone building from the sdist).
    assert re.search(r"Building wheel from sdist", dist["log"]), dist["log"][-3000:]


def test_sdist_carries_what_a_build_and_the_operator_files_need(dist: dict[str, Any]) -> None:
    version = _project_version()
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = ["native/build_ffi.py", "native/include/lb_api.h", "native/include/lb_internal.h",
              "native/src/core.c", "native/src/nfq.c", "setup.py", "pyproject.toml", "Makefile",
              "configs/dr.toml", "configs/reference.toml", "man/lbd.8", "man/lbadm.8",
              "systemd/lbd.service", "systemd/lbd@.service", "completion/lbadm.bash", "completion/lbd.bash",
              "lb/testbed/topology.py", "tests/netns/conftest.py"]
    missing = [n for n in needed if n not in names]
    assert not missing, f"{dist['sdist'].name} (version {version}) lacks {missing}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".so")], "build products in the sdist"


def test_wheel_holds_the_runtime_package_only(dist: dict[str, Any]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = whl.namelist()
        metadata = next(whl.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert any(re.fullmatch(r"lb/_fastpath.*\.so", n) for n in names), "the compiled fast path is missing"
    assert "lb/daemon.py" in names and "lb/lbadm/__init__.py" in names and "lb/pyengine/engine.py" in names
    assert "lb/doctor/__init__.py" in names
    # lb.consts reads C's values from the headers' text: the wheel carries them as lb/include/ (setup.py).
    assert "lb/include/lb_api.h" in names and "lb/include/lb_sched_list.h" in names
    assert not [n for n in names if n.startswith("lb/testbed/")], "the test bed ships in the runtime wheel"
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    plain = [r for r in requires if "extra ==" not in r]
    # scapy (tests, bench) and NetfilterQueue (--engine python) are extras, never runtime requirements.
    assert not [r for r in plain if r.lower().startswith(("scapy", "netfilterqueue"))], plain
    assert any(r.startswith("pyroute2") and ">=0.9.1" in r for r in plain), plain
    assert any("netfilterqueue" in r.lower() and "python-engine" in r for r in requires), requires


@pytest.fixture(scope="module")
def venv(dist: dict[str, Any]) -> Path:
    """A throwaway venv (the interpreter the tests run on, without its packages) with the wheel installed."""
    base = getattr(sys, "_base_executable", sys.executable)
    path = dist["work"] / "venv"
    proc = _run([base, "-m", "venv", str(path)], cwd=dist["work"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = _run([str(path / "bin" / "pip"), "install", str(dist["wheel"])], cwd=dist["work"], timeout=PIP_TIMEOUT_S)
    assert proc.returncode == 0, f"pip install of the wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return path


def _clean_env() -> dict[str, str]:
    # Nothing from the source tree may leak in: no PYTHONPATH, and the commands run elsewhere.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LBD_SOCKET", "VIRTUAL_ENV")}


def test_installed_commands_run(dist: dict[str, Any], venv: Path) -> None:
    work, bindir = dist["work"], venv / "bin"
    with tarfile.open(dist["sdist"]) as tar:
        # filter= exists from Python 3.11.4 on (Debian 12 has 3.11.2); the archive is our own build.
        extract: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(work / "unpacked", **extract)
    config = next((work / "unpacked").glob("*/configs/dr.toml"))

    version = _run([str(bindir / "lbd"), "--version"], cwd=work, timeout=60, env=_clean_env())
    assert version.returncode == 0 and version.stdout.strip() == f"lbd {_project_version()}", version

    helptext = _run([str(bindir / "lbadm"), "-h"], cwd=work, timeout=60, env=_clean_env())
    assert helptext.returncode == 0, helptext
    assert "--add-service" in helptext.stdout + helptext.stderr

    checked = _run([str(bindir / "lbd"), "--check", str(config)], cwd=work, timeout=60, env=_clean_env())
    assert checked.returncode == 0, checked
    assert checked.stdout.startswith(f"{config}: OK"), checked.stdout
    assert "no dry run" not in checked.stderr, f"the wheel's C engine did not load: {checked.stderr}"


def test_installed_package_is_the_wheel_not_the_source_tree(dist: dict[str, Any], venv: Path) -> None:
    probe = ("import importlib.util as u, lb; "
             "print(lb.__file__); print(u.find_spec('lb.testbed')); print(u.find_spec('scapy'))")
    proc = _run([str(venv / "bin" / "python"), "-c", probe], cwd=dist["work"], timeout=60, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    where, testbed, scapy = proc.stdout.splitlines()
    assert Path(where).is_relative_to(venv), where
    assert testbed == "None" and scapy == "None", proc.stdout


def test_python_engine_without_its_extra_says_what_to_install(dist: dict[str, Any], venv: Path) -> None:
    """`lbd --engine python` on a plain install: a clear error naming the extra, exit 1."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1): lbd runs in a network namespace of its own")
    sock_dir = dist["work"] / "run"
    sock_dir.mkdir(exist_ok=True)
    # A new, empty network namespace; --no-iptables: lbd touches no rule, it stops at the engine.
    proc = _run(["unshare", "--net", str(venv / "bin" / "lbd"), "--engine", "python", "--no-iptables",
                 "--socket", str(sock_dir / "lbd.sock"), "--state-dir", ""],
                cwd=dist["work"], timeout=60, env=_clean_env())
    assert proc.returncode == 1, proc
    assert "pip install 'lvs-userspace[python-engine]'" in proc.stderr, proc.stderr
