"""`lbd-exec COMMAND [ARGS...]`: run an unmodified IPVS tool (ipvsadm, keepalived) against lbd.

It puts lbd's preload library (lb/_ipvs_preload*.so, built from native/preload/) in LD_PRELOAD and
names lbd's control socket in LBD_SOCKET (--socket, else $LBD_SOCKET, else this network
namespace's default, as lbadm finds it), then execs the command: its IP_VS_SO_* sockopts and its
reads of /proc/net/ip_vs* are answered by lbd, everything else goes to the kernel as usual.
`lbd-exec --print-library` prints the library's path (for an LD_PRELOAD of one's own).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lb.ctlclient import SOCKET_ENV_VAR, resolve_socket_path

WAIT_ENV_VAR = "LBD_IPVS_WAIT_S"  # how long the library waits for lbd's socket (default 5 s)


def library_path() -> Path:
    """The preload library inside the installed package; FileNotFoundError if it was not built."""
    here = Path(__file__).resolve().parent.parent
    found = sorted(here.glob("_ipvs_preload*.so"))
    if not found:
        raise FileNotFoundError(f"lbd's preload library (_ipvs_preload*.so) is not in {here}: "
                                "build the package (make build) or install it (make install)")
    return found[0]


def child_environment(env: dict[str, str], library: Path, socket_path: str, wait_s: float | None) -> dict[str, str]:
    """`env` with the library first in LD_PRELOAD, the socket in LBD_SOCKET and the wait bound."""
    out = dict(env)
    others = [p for p in out.get("LD_PRELOAD", "").replace(":", " ").split() if p and Path(p).name != library.name]
    out["LD_PRELOAD"] = " ".join([str(library), *others])
    out[SOCKET_ENV_VAR] = socket_path
    if wait_s is not None:
        out[WAIT_ENV_VAR] = str(int(wait_s))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lbd-exec",
        description="Run an unmodified IPVS tool (ipvsadm, keepalived) against lbd instead of the kernel.",
        epilog="example: lbd-exec ipvsadm -Ln; lbd-exec keepalived -n -l -f /etc/keepalived/keepalived.conf")
    parser.add_argument("--socket", help="lbd's control socket (default: $LBD_SOCKET, else this namespace's)")
    parser.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                        help=f"how long the tool's first call waits for lbd's socket (${WAIT_ENV_VAR}, default 5)")
    parser.add_argument("--print-library", action="store_true", help="print the preload library's path and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    args = parser.parse_args(argv)
    try:
        library = library_path()
    except FileNotFoundError as exc:
        print(f"lbd-exec: {exc}", file=sys.stderr)
        return 1
    if args.print_library:
        print(library)
        return 0
    if not args.command:
        parser.error("a command to run is required (e.g. lbd-exec ipvsadm -Ln)")
    if args.wait is not None and not 0 <= args.wait <= 600:
        parser.error("--wait must be 0..600 seconds")
    env = child_environment(dict(os.environ), library, resolve_socket_path(args.socket), args.wait)
    try:
        os.execvpe(args.command[0], args.command, env)
    except OSError as exc:
        print(f"lbd-exec: cannot run {args.command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
