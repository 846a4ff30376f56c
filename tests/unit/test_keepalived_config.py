"""configs/keepalived.conf, the example in docs/keepalived.md, is a configuration that Debian's
keepalived 2.2.7 accepts (`keepalived --config-test`, no privileges needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEEPALIVED = REPO / "build" / "tools" / "keepalived"
EXAMPLE = REPO / "configs" / "keepalived.conf"


def test_example_configuration_passes_keepalived_config_test() -> None:
    if not KEEPALIVED.exists():
        pytest.skip(f"{KEEPALIVED} is missing: `make build/tools/keepalived` (part of `make test`)")
    ldd = subprocess.run(["ldd", str(KEEPALIVED)], capture_output=True, text=True, check=False)
    missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
    if missing:
        pytest.skip(f"{KEEPALIVED} needs shared libraries that are not installed: {', '.join(missing)}")
    proc = subprocess.run([str(KEEPALIVED), "--config-test", "-f", str(EXAMPLE)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")

