"""Where lbd keeps its control socket and state file by default: one directory per network namespace.

Kernel IPVS tables are per network namespace, and so is lbd (its NFQUEUE numbers and iptables
rules are). Two lbds in two namespaces must therefore never share a default socket or state
file: the second would find the first's socket, or restore the first's services and install
rules for VIPs it does not own. lbd, lbadm and `lbadm doctor` all call `runtime_dir()`, so a
command run in a namespace finds the lbd of that namespace and no other:

- the initial namespace (the one PID 1 runs in):  /run/lbd/                    (unchanged)
- a named namespace (`ip netns add NAME`, i.e. bound at /run/netns/NAME, as `ip netns identify`
  finds it):                                       /run/lbd/netns/NAME/
- an unnamed namespace (unshare, a container):    /run/lbd/netns-unnamed/INODE-COOKIE/
  INODE is what `lsns -t net` and `readlink /proc/PID/ns/net` show; the kernel reuses it once
  the namespace is gone, so the namespace's cookie (SO_NETNS_COOKIE, never reused while the
  machine runs) is part of the name: a new namespace never restores an old one's state, and
  such a state directory does not survive the namespace being re-created.

The state file lives beside the socket (lbd --state-dir's default is the socket's directory), in
/run on purpose: it carries lbd's tables across restarts of lbd, and like kernel IPVS's tables it
does not survive a reboot (a configuration that must: lbd --config FILE). Explicit --socket,
$LBD_SOCKET and --state-dir always win over these defaults.
"""

from __future__ import annotations

import os
import socket
import sys

from lb.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # lbadm's every command reads these paths: os.path, not pathlib (~5 ms to import)
    from pathlib import Path

    StrPath = str | os.PathLike[str]

RUN_ROOT = "/run/lbd"
SOCKET_NAME = "lbd.sock"
NETNS_NAMES_DIR = "/run/netns"  # where `ip netns` binds the namespaces it names
SELF_NETNS = "/proc/self/ns/net"
# PID 1's namespace is the initial one; when PID 1 is not dumpable its link cannot be read even by
# root, and kthreadd's (PID 2: kernel threads always run in the initial namespace) stands in.
INITIAL_NETNS = ("/proc/1/ns/net", "/proc/2/ns/net")
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)  # Linux >= 5.14; not in Python's socket module


class Netns(NamedTuple):
    """The network namespace a process runs in, as lbd names it."""

    kind: str  # "initial", "named" or "unnamed"
    inode: int
    name: str | None = None  # named: the /run/netns entry
    cookie: int | None = None  # unnamed: SO_NETNS_COOKIE, when the kernel has it

    def describe(self) -> str:
        if self.kind == "named":
            return f"network namespace {self.name}"
        if self.kind == "initial":
            return "the initial network namespace"
        return f"unnamed network namespace net:[{self.inode}]"


def _identity(path: StrPath) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _netns_cookie() -> int | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    return int.from_bytes(raw, sys.byteorder)  # the kernel's u64, in host order


def _names_of(ident: tuple[int, int], names_dir: StrPath) -> list[str]:
    """`ip netns identify`: every /run/netns entry bound to this namespace."""
    try:
        entries = sorted(os.listdir(names_dir))
    except OSError:
        return []
    return [e for e in entries if e not in (".", "..") and _identity(os.path.join(names_dir, e)) == ident]


def current_netns(self_ns: StrPath = SELF_NETNS, initial_ns: tuple[StrPath, ...] = INITIAL_NETNS,
                  names_dir: StrPath = NETNS_NAMES_DIR) -> Netns:
    """Which network namespace this process runs in. The initial namespace wins over a name that
    is bound to it; of several names of one namespace, the first in sorted order.

    When the initial namespace cannot be read (a process without root's ptrace rights: lbd and lbadm
    then run as the same user, so both decide alike) and no name matches, it counts as the initial one.
    """
    ident = _identity(self_ns)
    if ident is None:  # no /proc: nothing to tell namespaces apart by
        return Netns("initial", 0)
    initial = next((i for i in map(_identity, initial_ns) if i is not None), None)
    if initial == ident:
        return Netns("initial", ident[1])
    names = _names_of(ident, names_dir)
    if names:
        return Netns("named", ident[1], name=names[0])
    if initial is None:
        return Netns("initial", ident[1])
    return Netns("unnamed", ident[1], cookie=_netns_cookie())


def runtime_dir(ns: Netns | None = None, root: StrPath = RUN_ROOT) -> Path:
    """lbd's default directory (control socket, state file) for namespace `ns` (default: ours)."""
    from pathlib import Path

    return Path(_runtime_dir(current_netns() if ns is None else ns, os.fspath(root)))


def _runtime_dir(ns: Netns, root: str) -> str:
    if ns.kind == "named":
        assert ns.name is not None
        return os.path.join(root, "netns", ns.name)
    if ns.kind == "unnamed":
        return os.path.join(root, "netns-unnamed", f"{ns.inode}-{ns.cookie}" if ns.cookie is not None else str(ns.inode))
    return root


def default_socket_path(ns: Netns | None = None) -> str:
    """The control socket lbd listens on, and lbadm connects to, when neither is told otherwise."""
    return os.path.join(_runtime_dir(current_netns() if ns is None else ns, RUN_ROOT), SOCKET_NAME)
