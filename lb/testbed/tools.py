"""Where the tests find tools that `make test` provides outside the system's PATH."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The Makefile unpacks promtool from Debian's prometheus package here (without installing the
# package, which would also start a Prometheus server).
PROMTOOL_BUILD = REPO / "build" / "tools" / "promtool"


def promtool() -> str | None:
    """promtool on PATH, else the one `make test` unpacked; None when neither exists."""
    found = shutil.which("promtool")
    if found:
        return found
    return str(PROMTOOL_BUILD) if PROMTOOL_BUILD.is_file() else None
