"""lvs-userspace: a userspace Linux Virtual Server director."""

__version__ = "0.1.0"
