"""Shared by the distribution tests: whether the package index can be reached at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PIP_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def index_problem(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    """None when pip can download from the configured index, else pip's own last words."""
    scratch: Path = tmp_path_factory.mktemp("index-probe")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(scratch),
                           "setuptools>=77"], cwd=scratch, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                          check=False)
    if proc.returncode == 0:
        return None
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"pip download exited {proc.returncode}"
