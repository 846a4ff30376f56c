"""The operator's documents name every scheduler of the registry (native/include/lb_sched_list.h),
so a new scheduler cannot land undocumented: README's table, lbadm(8)'s -s list, lbadm -h.
(configs/reference.toml: tests/unit/test_consts.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from lb import consts
from lb.lbadm import usage

REPO = Path(__file__).resolve().parents[2]


def test_readme_table_has_a_row_per_scheduler() -> None:
    rows = re.findall(r"^\| `(\w+)` \|", (REPO / "README.md").read_text(), flags=re.MULTILINE)
    assert tuple(rows) == consts.SCHEDULERS


def test_man_page_lists_every_scheduler_under_s() -> None:
    text = (REPO / "man" / "lbadm.8").read_text()
    section = text.split(r'.BI "\-s, \-\-scheduler " scheduler', 1)[1].split(".RE", 1)[0]
    assert tuple(re.findall(r"^\.B (\w+)$", section, flags=re.MULTILINE)) == consts.SCHEDULERS


def test_lbadm_help_names_every_scheduler() -> None:
    line = next(line for line in usage.usage_text().splitlines() if line.startswith("  --scheduler"))
    assert line.split("scheduler", 2)[2].split(";")[0].strip() == ", ".join(consts.SCHEDULERS)
