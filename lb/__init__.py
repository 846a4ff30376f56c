"""lvs-userspace: a userspace Linux Virtual Server director."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Lazy (PEP 562): importlib.metadata costs ~25 ms, a third of lbadm's start-up, and every
    # lbadm command pays its start-up (issue 15: one command under 0.1 s).
    if name != "__version__":
        raise AttributeError(f"module 'lb' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    # pyproject.toml holds the version; this reads what pip installed from it (editable too).
    try:
        value = version("lvs-userspace")
    except PackageNotFoundError:  # a source tree that was never installed (`make build` installs it)
        value = "0+unknown"
    globals()["__version__"] = value
    return value
