"""Every scheduler of the registry (native/include/lb_sched_list.h) is named where an operator reads
about schedulers: lbadm -h and docs/fastpath.md's Schedulers section (README, configs/reference.toml
and man/lbadm.8: tests/unit/test_operator_files.py)."""

from __future__ import annotations

import re
from pathlib import Path

from lb import consts

REPO = Path(__file__).resolve().parents[2]


def test_lbadm_help_names_every_scheduler() -> None:
    from lb.lbadm.usage import usage_text

    line = next(line for line in usage_text().splitlines() if line.strip().startswith("--scheduler"))
    assert all(re.search(rf"\b{name}\b", line) for name in consts.SCHEDULERS), line


def test_fastpath_doc_describes_every_scheduler() -> None:
    text = (REPO / "docs" / "fastpath.md").read_text()
    section = text.split("## Schedulers", 1)[1].split("\n## ", 1)[0]
    described = [name for bullet in re.findall(r"^- ((?:`\w+`(?:, )?)+)", section, re.MULTILINE)
                 for name in re.findall(r"`(\w+)`", bullet)]
    assert sorted(described) == sorted(consts.SCHEDULERS), described
