"""Every Python package under lb/ ships in the wheel: pyproject.toml lists packages one by one, and a
new subpackage missing there installs a director that fails at import (lb.sync once did, caught only
by the fresh-root CI's install tests). lb/testbed is the one package kept out of the wheel on purpose
(the sdist carries it through MANIFEST.in)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOT_SHIPPED = {"lb.testbed"}


def test_every_lb_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "lb").rglob("__init__.py")}
    found -= {p for p in found if any(p == n or p.startswith(n + ".") for n in NOT_SHIPPED)}
    assert found - listed == set(), f"packages missing from pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject.toml lists packages that do not exist: {sorted(listed - found)}"
