"""What the checks read, behind one interface: DoctorContext (tests fake it), LiveContext (this host)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from typing import Any

DEFAULT_WINDOW_S = 10.0  # seconds between the two samples of lbd's counters
MAX_WINDOW_S = 600.0
COMMAND_TIMEOUT_S = 15.0  # one iptables-save / nft / ip invocation
LBD_TIMEOUT_S = 10.0  # one control request


class LbdUnavailable(Exception):
    """lbd's control socket cannot be reached, or it answered something unusable."""


class LbdRefused(Exception):
    """lbd answered `ok: false` for a request."""


class DoctorContext:
    """Everything the checks read, behind methods that tests replace.

    Every method returns None (or an empty list) when its source is unavailable; the checks
    then say what they could not check instead of failing. Subclass it for fakes.
    """

    window_s: float = DEFAULT_WINDOW_S
    queue_num: int | None = None  # lbd's NFQUEUE number; None: ask lbd / find LBD-Q<N>
    socket_path: str = ""

    def iptables_save(self) -> str | None:
        """`iptables-save` output (all tables), or None."""
        return None

    def iptables_version(self) -> str:
        """`iptables --version`, e.g. "iptables v1.8.9 (nf_tables)"."""
        return ""

    def ipset_save(self) -> str | None:
        """`ipset save` output (every ip set and its elements), or None."""
        return None

    def nft_ruleset(self) -> str | None:
        """`nft list ruleset`, or None when nft is absent."""
        return None

    def read_file(self, path: str) -> str | None:
        return None

    def sysctl(self, path: str) -> str | None:
        """A /proc/sys value by its path below /proc/sys ("net/ipv4/conf/eth0/rp_filter")."""
        text = self.read_file("/proc/sys/" + path)
        return None if text is None else text.strip()

    def interfaces(self) -> list[dict[str, Any]]:
        """`ip -j addr show`."""
        return []

    def route_get(self, addr: str) -> dict[str, Any] | None:
        """The first object of `ip -j route get ADDR`, or None."""
        return None

    def lbd(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """One control request; raises LbdUnavailable or LbdRefused."""
        raise LbdUnavailable("no control socket configured")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()


class LiveContext(DoctorContext):
    """Reads the director this process runs on (or namespace `netns`, via `ip netns exec`)."""

    def __init__(
        self,
        socket_path: str,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        queue_num: int | None = None,
        netns: str | None = None,
        iptables: str = "iptables",
    ) -> None:
        self.socket_path = socket_path
        self.window_s = window_s
        self.queue_num = queue_num
        self.netns = netns
        self.iptables = iptables
        self.problems: list[str] = []  # commands that failed, for the "inputs" finding

    def _run(self, argv: list[str], what: str) -> str | None:
        full = (["ip", "netns", "exec", self.netns] if self.netns else []) + argv
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            self.problems.append(f"{what}: {shlex.join(full)}: {exc}")
            return None
        if proc.returncode != 0:
            err = " / ".join(proc.stderr.strip().splitlines()[-3:])
            self.problems.append(f"{what}: {shlex.join(full)}: exit {proc.returncode}: {err}")
            return None
        return proc.stdout

    def _have(self, binary: str) -> bool:
        return shutil.which(binary) is not None

    def iptables_save(self) -> str | None:
        if not self._have(f"{self.iptables}-save"):
            self.problems.append(f"{self.iptables}-save not found in PATH")
            return None
        return self._run([f"{self.iptables}-save"], "firewall rules")

    def iptables_version(self) -> str:
        return (self._run([self.iptables, "--version"], "iptables version") or "").strip()

    def ipset_save(self) -> str | None:
        if not self._have("ipset"):
            self.problems.append("ipset not found in PATH")
            return None
        return self._run(["ipset", "save"], "ip sets")

    def nft_ruleset(self) -> str | None:
        if not self._have("nft"):
            return None
        return self._run(["nft", "list", "ruleset"], "nftables rules")

    def read_file(self, path: str) -> str | None:
        if self.netns:
            return self._run(["cat", path], f"reading {path}")
        try:
            with open(path) as f:
                return f.read()
        except OSError as exc:
            if not path.startswith("/proc/sys/"):
                self.problems.append(f"reading {path}: {exc.strerror or exc}")
            return None

    def interfaces(self) -> list[dict[str, Any]]:
        text = self._run(["ip", "-j", "addr", "show"], "interfaces")
        try:
            return list(json.loads(text)) if text else []
        except ValueError:
            return []

    def route_get(self, addr: str) -> dict[str, Any] | None:
        text = self._run(["ip", "-j", "route", "get", addr], f"route to {addr}")
        try:
            routes = json.loads(text) if text else []
        except ValueError:
            return None
        return routes[0] if routes else None

    def lbd(self, op: str, args: dict[str, Any] | None = None) -> Any:
        from lb.ctlclient import ControlClient, ControlClientError, ControlError

        try:
            with ControlClient(self.socket_path, timeout_s=LBD_TIMEOUT_S) as client:
                return client.request(op, args or {})
        except ControlError as exc:
            raise LbdRefused(f"{op}: {exc.errno_name}: {exc.message}") from exc
        except (ControlClientError, OSError) as exc:
            raise LbdUnavailable(str(exc)) from exc
