"""Where each table and key of a TOML document is: tomllib reports positions only for syntax
errors, so configuration errors get their line from here.

One pass over the text that tracks strings (including multi-line ones) and bracket depth, so that
only real statements - `[table]`, `[[array.of.tables]]`, `key = ...` - are indexed, by the path
tomllib gives the value (("service", 2, "dest", 0), "weight").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

Path_ = tuple[Any, ...]  # a value's path in the parsed document: ("service", 0, "dest", 1)

_HEADER = re.compile(r"^\s*(\[\[|\[)\s*(.*?)\s*(\]\]|\])\s*(#.*)?$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _split_dotted(text: str) -> list[str]:
    """TOML dotted key -> parts (bare, "basic" or 'literal' parts)."""
    parts, i = [], 0
    while i < len(text):
        c = text[i]
        if c in " \t.":
            i += 1
            continue
        if c in "\"'":
            j = text.find(c, i + 1)
            j = len(text) if j < 0 else j
            parts.append(text[i + 1:j])
            i = j + 1
            continue
        m = _BARE_KEY.match(text, i)
        if not m:
            break
        parts.append(m.group(0))
        i = m.end()
    return parts


def _statements(text: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line that starts a statement (not inside a string or array)."""
    depth = 0
    in_ml: str | None = None  # the closing delimiter of an open multi-line string
    for number, line in enumerate(text.splitlines(), start=1):
        if depth == 0 and in_ml is None:
            yield number, line
        i = 0
        while i < len(line):
            if in_ml is not None:
                j = line.find(in_ml, i)
                if j < 0:
                    break
                i, in_ml = j + 3, None
                continue
            c = line[i]
            if c == "#":
                break
            if line.startswith('"""', i) or line.startswith("'''", i):
                in_ml = line[i:i + 3]
                i += 3
            elif c == '"':
                i += 1
                while i < len(line) and line[i] != '"':
                    i += 2 if line[i] == "\\" else 1
                i += 1
            elif c == "'":
                j = line.find("'", i + 1)
                i = len(line) if j < 0 else j + 1
            elif c in "[{":
                depth += 1
                i += 1
            elif c in "]}":
                depth = max(0, depth - 1)
                i += 1
            else:
                i += 1


class TomlLines:
    """Line numbers of the tables and keys of a TOML text, addressed like the parsed document."""

    def __init__(self, text: str) -> None:
        self.headers: dict[Path_, int] = {}
        self.keys: dict[tuple[Path_, str], int] = {}
        counts: dict[Path_, int] = {}  # array-of-tables path (with indexes) -> elements seen
        current: Path_ = ()
        for number, line in _statements(text):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            m = _HEADER.match(line)
            if m and stripped.startswith("["):
                names = _split_dotted(m.group(2))
                current = self._resolve(names, counts, array=m.group(1) == "[[")
                self.headers.setdefault(current, number)
                continue
            if "=" in stripped:
                parts = _split_dotted(stripped.split("=", 1)[0])
                if parts:
                    self.keys.setdefault((current, parts[0]), number)

    @staticmethod
    def _resolve(names: list[str], counts: dict[Path_, int], array: bool) -> Path_:
        path: Path_ = ()
        for depth, name in enumerate(names):
            path = (*path, name)
            last = depth == len(names) - 1
            if last and array:
                index = counts.get(path, 0)
                counts[path] = index + 1
                # A new element starts fresh sub-arrays (its own [[x.dest]] count from 0).
                for p in [p for p in counts if len(p) > len(path) and p[:len(path)] == path]:
                    del counts[p]
                return (*path, index)
            if not last and path in counts:  # [[service]] ... [[service.dest]]: the latest element
                path = (*path, counts[path] - 1)
        return path

    def line(self, path: Path_, key: str | None = None) -> int:
        """Best line for `key` in the table at `path` (or the table itself): never 0 for a real path."""
        if key is not None:
            if (path, key) in self.keys:
                return self.keys[(path, key)]
            for table in ((*path, key), (*path, key, 0)):  # key names a [table] / [[array]]
                if table in self.headers:
                    return self.headers[table]
        probe = path
        while probe:
            if probe in self.headers:
                return self.headers[probe]
            # An inline table/array element: the line of the key that holds it.
            parent, last = probe[:-1], probe[-1]
            if isinstance(last, int):
                parent, last = parent[:-1], parent[-1] if parent else last
            if isinstance(last, str) and (parent, last) in self.keys:
                return self.keys[(parent, last)]
            probe = probe[:-1]
        return 1
