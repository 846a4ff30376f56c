"""lbd's logging: text lines for people (the default) or one JSON object per line for log shippers.

`lbd --log-format json` writes, per record, an object with `time` (RFC 3339, UTC), `level`,
`logger`, `pid`, `message`, every `extra={...}` field the call passed, and `exc_info` (the
traceback as text) when there is one. python-json-logger does the encoding: it keeps extra
fields, never emits a record as more than one line, and handles values JSON cannot hold.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "lbd[%(process)d] %(levelname)s %(message)s"


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(["levelname", "name", "process", "message"], timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger", "process": "pid"})


def configure(log_format: str, verbose: int, stream: TextIO | None = None) -> None:
    """Root handler on `stream` (stderr): INFO for lbd's own loggers, DEBUG with -v; libraries WARNING."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("lbd", "lb"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
