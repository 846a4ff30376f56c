"""Every scheduler of the registry (native/include/lb_sched_list.h) is named where an operator reads
about schedulers: the README's example line, man/lbadm.8's -s paragraph, lbadm -h, and
docs/fastpath.md's Schedulers section (configs/reference.toml: tests/unit/test_consts.py)."""

from __future__ import annotations

import re
from pathlib import Path

from lb import consts

REPO = Path(__file__).resolve().parents[2]


def test_readme_lists_every_scheduler() -> None:
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("lbadm -A") and "-s " in line)
    listed = line.split("schedulers:", 1)[1].split()
    assert tuple(listed) == consts.SCHEDULERS, line


def test_lbadm_man_page_names_every_scheduler() -> None:
    text = (REPO / "man" / "lbadm.8").read_text()
    paragraph = text.split('.BI "\\-s, \\-\\-scheduler " scheduler', 1)[1].split(".TP", 1)[0]
    assert tuple(re.findall(r"^\.B (\w+)$", paragraph, re.MULTILINE)) == consts.SCHEDULERS, paragraph


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
