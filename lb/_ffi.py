"""The one place that imports the compiled cffi module.

Every constant Python needs from C is read here from `lib` (never retyped), so
native/include/lb_api.h stays the single source of truth.
"""

from __future__ import annotations

try:
    from lb._fastpath import ffi, lib  # type: ignore[import-not-found]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "lb._fastpath is not built: run `make build` (or `pip install -e .`) to compile native/"
    ) from exc

__all__ = ["ffi", "lib"]
