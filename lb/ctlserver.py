"""lbd's control socket: newline-delimited JSON over a Unix socket (docs/control-protocol.md),
one Director behind it. Only root or lbd's own user may connect (SO_PEERCRED)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

from lb.director import BatchError, BatchSession, Director
from lb.engine import EngineError
from lb.model import ConfigError

log = logging.getLogger("lbd")

MAX_REQUEST_BYTES = 1 << 20


class ControlServer:
    """Newline-delimited JSON over a Unix socket; one Director behind it."""

    def __init__(self, director: Director, path: str) -> None:
        self.director = director
        self.path = path
        self.server: asyncio.AbstractServer | None = None

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

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if not _peer_allowed(sock):
            writer.write(_encode({"ok": False, "errno": "EPERM", "error": "Permission denied (you must be root)"}))
            await writer.drain()
            writer.close()
            return
        session = BatchSession()  # a chunked batch lives as long as its connection (docs/control-protocol.md)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(_encode({"ok": False, "errno": "EINVAL", "error": "request too large"}))
                    break
                if not line:
                    break
                writer.write(_encode(self._dispatch(line, session)))
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
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
