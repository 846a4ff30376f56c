"""lbd's control socket: newline-delimited JSON over a Unix socket (docs/control-protocol.md),
one Director behind it. Only root or lbd's own user may connect (SO_PEERCRED).

Limits (issue 16 item 6: ~1,000 idle root connections under the usual 1,024-fd limit made lbadm
and the state snapshot fail with EMFILE):
- at most MAX_CLIENTS connections at once, so control connections can never take the file
  descriptors that lbd's own work (state files, netlink, iptables) needs;
- a connection idle for IDLE_TIMEOUT_S (no request) is closed; clients reconnect (lbadm and
  lbadm doctor open one connection per run anyway);
- the operator always gets in: a new connection at the cap closes the connection that has been
  idle longest (never one whose request is being served); only when every one of them is busy
  is the new one refused, with EBUSY. Said in the log at most once a minute, with a count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lb.director import BatchError, BatchSession, Director
from lb.engine import EngineError
from lb.model import ConfigError

log = logging.getLogger("lbd")

MAX_REQUEST_BYTES = 1 << 20
MAX_CLIENTS = 64  # concurrent control connections (lbd's fd limit is usually 1,024)
IDLE_TIMEOUT_S = 60.0  # a connection without a request this long is closed
REPORT_EVERY_S = 60.0  # evictions and refusals are logged at most this often


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    last_active: float  # loop time of the connection's start or its last answer
    busy: bool = False  # a request is being served: never evicted


class ControlServer:
    """Newline-delimited JSON over a Unix socket; one Director behind it."""

    def __init__(self, director: Director, path: str, max_clients: int = MAX_CLIENTS,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients {max_clients} must be at least 1")
        self.director = director
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self.clients: dict[asyncio.StreamWriter, _Client] = {}  # in the order they connected
        self.evicted = 0  # idle connections closed to let a new one in (since start)
        self.refused = 0  # new connections refused: every connection was busy
        self.timed_out = 0
        self._reported: tuple[float, int, int] = (float("-inf"), 0, 0)  # (when, evicted, refused) last logged

    async def start(self) -> None:
        sock_path = Path(self.path)
        sock_path.parent.mkdir(parents=True, exist_ok=True)
        if sock_path.exists() or sock_path.is_socket():
            if socket_alive(self.path):
                raise RuntimeError(f"another lbd is already listening on {self.path}")
            sock_path.unlink()
        old_umask = os.umask(0o177)  # the socket is created 0600: root's (or our user's) only
        try:
            self.server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _admit(self, now: float) -> bool:
        """Room for one more connection: at the cap, close the one idle longest. False: all busy."""
        if len(self.clients) < self.max_clients:
            return True
        idle = [c for c in self.clients.values() if not c.busy]
        if not idle:
            self.refused += 1
            self._report(now)
            return False
        victim = min(idle, key=lambda c: c.last_active)
        del self.clients[victim.writer]
        victim.writer.close()  # its reader sees end of file; its handler ends
        self.evicted += 1
        self._report(now)
        return True

    def _report(self, now: float) -> None:
        when, evicted, refused = self._reported
        if now - when < REPORT_EVERY_S:
            return
        log.warning("control socket at its cap of %d connections: %d idle connections closed to let new ones in, "
                    "%d new ones refused (all busy) since %s", self.max_clients, self.evicted - evicted,
                    self.refused - refused, "start" if when == float("-inf") else "the last report")
        self._reported = (now, self.evicted, self.refused)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if not _peer_allowed(sock):
            writer.write(_encode({"ok": False, "errno": "EPERM", "error": "Permission denied (you must be root)"}))
            await _close(writer)
            return
        loop = asyncio.get_running_loop()
        if not self._admit(loop.time()):
            writer.write(_encode({"ok": False, "errno": "EBUSY",
                                  "error": f"lbd is serving {self.max_clients} control connections; try again"}))
            await _close(writer)
            return
        client = self.clients[writer] = _Client(writer, loop.time())
        session = BatchSession()  # a chunked batch lives as long as its connection (docs/control-protocol.md)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), timeout=self.idle_timeout_s)
                except TimeoutError:
                    self.timed_out += 1
                    log.debug("control connection idle for %g s: closed", self.idle_timeout_s)
                    break
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(_encode({"ok": False, "errno": "EINVAL", "error": "request too large"}))
                    break
                if not line:
                    break
                client.busy = True
                writer.write(_encode(self._dispatch(line, session)))
                await writer.drain()
                client.busy, client.last_active = False, loop.time()
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            if self.clients.get(writer) is client:
                del self.clients[writer]
            writer.close()

    def _dispatch(self, line: bytes, session: BatchSession | None = None) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError("request must be an object with a string 'op'")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            return {"ok": False, "errno": "EINVAL", "error": f"malformed request: {exc}"}
        op = req["op"]
        try:
            return {"ok": True, "result": self.director.handle(op, args, session)}
        except BatchError as exc:
            return {"ok": False, "errno": exc.errno_name, "error": str(exc), "index": exc.index, "op": exc.op}
        except EngineError as exc:
            return {"ok": False, "errno": exc.errno_name, "error": str(exc)}
        except ConfigError as exc:
            return {"ok": False, "errno": "EINVAL", "error": str(exc)}
        except Exception as exc:  # never let one request stop the daemon
            log.exception("operation %s failed", op)
            return {"ok": False, "errno": "EIO", "error": f"{op} failed: {exc}"}


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass
    writer.close()


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def socket_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def _peer_allowed(sock: socket.socket | None) -> bool:
    """Only root or lbd's own user may drive the director (SO_PEERCRED)."""
    if sock is None:
        return False
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == 0 or uid == os.getuid()
