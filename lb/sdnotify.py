"""systemd's service notification protocol (sd_notify(3)) for `Type=notify` units.

When systemd starts lbd it sets $NOTIFY_SOCKET to a Unix datagram socket (a path, or "@name" in
the abstract namespace); each notification is one datagram of newline-separated KEY=VALUE lines.
Without $NOTIFY_SOCKET (lbd started by hand, by tests, by the demo) every call does nothing.

Written out here instead of imported: systemd documents this protocol as stable and meant to be
reimplemented (systemd.io "NOTIFY" / sd_notify(3) NOTES), and it is one sendto(). The libraries
that offer it are either a C extension built against libsystemd-dev (systemd-python, an extra
system dependency for five lines) or unmaintained since 2017 (sdnotify).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("lbd")


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]  # abstract namespace
    if addr.startswith("/"):
        return addr
    if addr:  # e.g. vsock:..., used for VMs: lbd is not started that way
        log.warning("NOTIFY_SOCKET=%r: only Unix socket paths are supported; systemd is not notified", addr)
    return None


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send KEY=VALUE fields as one notification; True if sent. Never raises: a notification
    that cannot be delivered is logged, and lbd goes on serving."""
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, addr)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", addr.replace("\0", "@"), exc)
        return False
    return True


def ready(status: str) -> bool:
    """READY=1: lbd's tables are loaded and its rules installed; systemd's start job completes."""
    return notify("READY=1", f"STATUS={status}")


def reloading() -> bool:
    """RELOADING=1 with the monotonic time systemd (>= 253, Type=notify-reload) wants; READY=1 ends it."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")


def stopping() -> bool:
    return notify("STOPPING=1", "STATUS=stopping")
