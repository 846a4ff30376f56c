"""The one place that imports the compiled cffi module (for lb.fastpath's CEngine).

Values C defines are not taken from here: lb.consts reads them from native/include's text,
so everything but the C engine works without the build (tests/unit/test_consts.py checks
that both agree).
"""

from __future__ import annotations

try:
    from lb._fastpath import ffi, lib  # type: ignore[import-not-found]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "lb._fastpath is not built: run `make build` (or `pip install -e .`) to compile native/"
    ) from exc

__all__ = ["ffi", "lib"]
