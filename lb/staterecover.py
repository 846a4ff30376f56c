"""A damaged state file never keeps lbd down (issue 16 item 2).

The state file (lb/statefile.py) is an optimisation: without it lbd starts from its configuration
with an empty connection table, which is what a fresh director does anyway. So a snapshot that
cannot be used (empty, garbage, cut short in its header, bit flips, fields of the wrong type, a
configuration the engine refuses) is renamed to `<name>.damaged-<UTC time>` together with its
journal, kept for inspection, named in one log line with the reason, and lbd goes on. Before,
12 of 17 such corruptions made lbd exit 1 at every start (two with a traceback), and with
`--down-policy closed` the previous lbd's rules kept the VIPs a black hole until a person
deleted the file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lb.statefile import DamagedState, journal_path, restore_state

if TYPE_CHECKING:
    from lb.director import Director

log = logging.getLogger("lbd")


def set_aside(path: Path, reason: str, when: float | None = None) -> Path | None:
    """Rename a damaged state file and its journal to `<name>.damaged-<UTC time>` (kept for
    inspection; the next save starts afresh) and say so in one log line. Returns the new path of
    the snapshot (None if it could not be renamed: lbd starts empty all the same)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if when is None else when))
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    journal = journal_path(path)
    try:
        os.replace(path, aside)
        if journal.exists():
            os.replace(journal, journal.with_name(f"{journal.name}.damaged-{stamp}"))
    except OSError as exc:
        log.error("state file %s is damaged (%s) and could not be set aside (%s); starting from the "
                  "configuration with an empty connection table", path, reason, exc)
        return None
    log.error("state file %s is damaged (%s): set aside as %s; starting from the configuration with an "
              "empty connection table", path, reason, aside.name)
    return aside


def restore_or_set_aside(director: Director, path: Path) -> dict[str, Any] | None:
    """restore_state(), except that a damaged file never stops lbd: it is set aside and None is
    returned (the director unchanged: the configuration part is applied all or nothing)."""
    try:
        return restore_state(director, path)
    except DamagedState as exc:
        set_aside(path, exc.reason)
    except OSError as exc:  # unreadable: a directory, EACCES, EIO
        set_aside(path, f"cannot be read: {exc}")
    except Exception as exc:  # a damage nobody thought of: still no reason to stay down
        set_aside(path, f"{type(exc).__name__}: {exc}")
    return None
