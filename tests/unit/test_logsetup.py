"""lbd --log-format json: one JSON object per line with time, level, logger, message and extras."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from lb import daemon, logsetup


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("lbd").level, logging.getLogger("lb").level)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    logging.getLogger("lbd").setLevel(saved[2])
    logging.getLogger("lb").setLevel(saved[3])


def test_json_lines_with_extra_fields(restore_logging: None) -> None:
    out = io.StringIO()
    logsetup.configure("json", verbose=0, stream=out)
    log = logging.getLogger("lbd")
    log.info("ready: queue %d", 3, extra={"queue": 3, "vip": "192.0.2.1"})
    log.debug("not shown at the default level")
    logging.getLogger("pyroute2").info("libraries stay at WARNING")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("lb.director").exception("reload failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # the traceback stays inside its line
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "ready: queue 3" and first["level"] == "INFO" and first["logger"] == "lbd"
    assert first["queue"] == 3 and first["vip"] == "192.0.2.1" and isinstance(first["pid"], int)
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None  # RFC 3339, with its zone
    assert second["level"] == "ERROR" and second["logger"] == "lb.director"
    assert "ValueError: bad\nthing" in second["exc_info"]


def test_text_stays_the_default(restore_logging: None) -> None:
    assert daemon.parse_args([]).log_format == "text"
    assert daemon.parse_args(["--log-format", "json"]).log_format == "json"
    out = io.StringIO()
    logsetup.configure("text", verbose=1, stream=out)
    logging.getLogger("lbd").debug("resolving %s", "10.0.0.1")
    assert out.getvalue().startswith("lbd[") and out.getvalue().endswith("DEBUG resolving 10.0.0.1\n")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="one of text, json"):
        logsetup.configure("yaml", verbose=0)
    with pytest.raises(SystemExit):
        daemon.parse_args(["--log-format", "yaml"])
