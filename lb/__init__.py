"""lvs-userspace: a userspace Linux Virtual Server director."""

from importlib.metadata import PackageNotFoundError, version

# pyproject.toml holds the version; this reads what pip installed from it (editable too).
try:
    __version__ = version("lvs-userspace")
except PackageNotFoundError:  # a source tree that was never installed (`make build` installs it)
    __version__ = "0+unknown"
