"""lbadm's start-up (issue 15: one command under 0.1 s): a command imports no module that only some
commands need. Each of these cost milliseconds of every command's start before (python -X
importtime): typing ~5 (lb/records.py), pathlib ~5 (lb.paths, lb.consts), ipaddress ~3 (names
and multicast checks only), dataclasses ~18 (lb.model), importlib.metadata ~25 (-v only), -h's text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

NOT_ON_A_COMMANDS_PATH = ("typing", "pathlib", "ipaddress", "dataclasses", "importlib.metadata", "lb.model",
                          "lb.lbadm.usage", "lb.doctor", "contextlib")

PROBE = """
import sys
from lb.lbadm import main
status = main(sys.argv[1:], env={})
heavy = [m for m in HEAVY if m in sys.modules]
print(status, ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [
    ["-A", "-t", "10.0.0.1:80", "-s", "rr"],
    ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2:80", "-m", "-w", "3"],
    ["-L", "-n"],
    ["-S", "-n"],
    ["-D", "-t", "10.0.0.1:80"],
])
def test_a_command_imports_only_what_it_needs(argv: list[str]) -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {NOT_ON_A_COMMANDS_PATH!r}\n" + PROBE, "--socket",
                           "/nonexistent/lbd.sock", *argv], env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[0] == "2 ", done.stdout + done.stderr  # 2: lbd cannot be reached; nothing heavy
