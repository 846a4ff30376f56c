"""A small client for lbd's control socket (docs/control-protocol.md).

One request is one JSON object on one line; the answer is one JSON object on
one line. `{"ok": false, ...}` answers become ControlError, which carries the
symbolic errno so that callers (lbadm) can print ipvsadm's message for it.
Nothing here formats output for humans beyond the exception texts.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping

from lb import paths

TYPE_CHECKING = False
if TYPE_CHECKING:  # lbadm imports this module: no typing at run time (lb/records.py)
    from typing import Any, Self

# In the initial network namespace; elsewhere the default is per namespace (lb/paths.py).
DEFAULT_SOCKET_PATH = "/run/lbd/lbd.sock"
SOCKET_ENV_VAR = "LBD_SOCKET"

# Generous: a `connections` dump of a busy director is large, and a failed
# request must still end instead of hanging the operator's shell forever.
DEFAULT_TIMEOUT_S = 60.0

# One answer line may hold a full connection table dump.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


class ControlClientError(Exception):
    """Base class of everything this module raises."""


class ConnectError(ControlClientError):
    """lbd's socket is missing, refuses connections, or is not a socket."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot connect to lbd at {path}: {reason}; is lbd running?")
        self.path = path
        self.reason = reason


class ProtocolError(ControlClientError):
    """lbd answered something that is not a valid response line."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"bad response from lbd at {path}: {reason}")
        self.path = path
        self.reason = reason


class ControlError(ControlClientError):
    """lbd refused a request: `{"ok": false, "errno": ..., "error": ...}`.

    `op` is the request's op; `errno_name` the symbolic errno (e.g. "ESRCH");
    `message` lbd's own text; `response` the whole answer, which may carry
    extra fields (e.g. `index` of the failing request inside a `batch`).
    """

    def __init__(self, op: str, errno_name: str, message: str, response: Mapping[str, Any]) -> None:
        super().__init__(f"{op}: {errno_name}: {message}")
        self.op = op
        self.errno_name = errno_name
        self.message = message
        self.response = dict(response)


def resolve_socket_path(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """--socket PATH wins, then $LBD_SOCKET, then this network namespace's default (lb/paths.py:
    /run/lbd/lbd.sock in the initial namespace, /run/lbd/netns/NAME/lbd.sock in a named one)."""
    if explicit:
        return explicit
    environ = os.environ if env is None else env
    return environ.get(SOCKET_ENV_VAR) or paths.default_socket_path()


def _describe_os_error(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ControlClient:
    """One connection to lbd; send requests in order with `request()`."""

    def __init__(self, path: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise ConnectError(path, _describe_os_error(exc)) from exc
        self._reader = self._sock.makefile("rb")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def request(self, op: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its `result`; raise ControlError on `ok: false`."""
        response = self.exchange(op, args)
        if response["ok"]:
            return response.get("result")
        return self._raise_refusal(op, response)

    def exchange(self, op: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return the whole answer, `ok` true or false (for callers that
        show or check refusals themselves); ProtocolError when it is not a valid answer."""
        line = json.dumps({"op": op, "args": dict(args or {})}, separators=(",", ":")) + "\n"
        try:
            self._sock.sendall(line.encode())
            raw = self._reader.readline(MAX_RESPONSE_BYTES)
        except OSError as exc:
            raise ProtocolError(self.path, f"{op}: {_describe_os_error(exc)}") from exc
        return self._decode(op, raw)

    def _decode(self, op: str, raw: bytes) -> dict[str, Any]:
        if not raw:
            raise ProtocolError(self.path, f"{op}: connection closed without an answer")
        if not raw.endswith(b"\n"):
            raise ProtocolError(self.path, f"{op}: answer is not one complete line")
        try:
            response = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError(self.path, f"{op}: answer is not JSON ({exc})") from exc
        if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
            raise ProtocolError(self.path, f"{op}: answer has no boolean 'ok'")
        return response

    @staticmethod
    def _raise_refusal(op: str, response: Mapping[str, Any]) -> Any:
        errno_name = str(response.get("errno") or "EINVAL")
        message = str(response.get("error") or errno_name)
        raise ControlError(op, errno_name, message, response)


def request_once(path: str, op: str, args: Mapping[str, Any] | None = None, *,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """One request on a connection of its own; the whole answer, `ok` true or false."""
    with ControlClient(path, timeout_s) as client:
        return client.exchange(op, args)
