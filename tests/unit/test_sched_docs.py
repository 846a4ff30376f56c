"""Every scheduler of the registry (native/include/lb_sched_list.h), and nothing else, is named
wherever an operator reads about schedulers, so none can land undocumented or linger after it goes:
README's "Schedulers", configs/reference.toml's `sched`, lbadm(8)'s -s and lbadm -h, each in the
registry's order, and docs/fastpath.md's Schedulers section (grouped bullets, so as a set). Each
place is checked here and only here; bash completion offers the registry's names
(tests/unit/test_completion.py)."""

from __future__ import annotations

import re
from pathlib import Path

from lb import consts

REPO = Path(__file__).resolve().parents[2]


def _section(text: str, heading: str) -> str:
    section = text[text.index(heading):]
    return section[:section.index("\n## ", len(heading))]


def test_readme_lists_every_scheduler() -> None:
    section = _section((REPO / "README.md").read_text(), "\n## Schedulers\n")
    assert tuple(re.findall(r"^- `(\w+)`: ", section, re.MULTILINE)) == consts.SCHEDULERS


def test_reference_config_lists_every_scheduler() -> None:
    lines = (REPO / "configs" / "reference.toml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sched = "))
    names = []
    for line in lines[start + 1:]:
        found = re.match(r'^\s+#\s+"(\w+)"\s', line)
        if not found:
            break
        names.append(found.group(1))
    assert tuple(names) == consts.SCHEDULERS


def test_man_page_lists_every_scheduler_under_s() -> None:
    text = (REPO / "man" / "lbadm.8").read_text()
    block = text[text.index('.BI "\\-s, \\-\\-scheduler " scheduler'):]
    block = block[block.index(".RS\n"):block.index(".RE\n")]
    assert tuple(re.findall(r"^\.B (\w+)$", block, re.MULTILINE)) == consts.SCHEDULERS


def test_lbadm_help_names_every_scheduler() -> None:
    from lb.lbadm.usage import usage_text

    line = next(line for line in usage_text().splitlines() if line.strip().startswith("--scheduler"))
    assert line.split("scheduler", 2)[2].split(";")[0].strip() == ", ".join(consts.SCHEDULERS), line


def test_fastpath_doc_describes_every_scheduler() -> None:
    section = _section((REPO / "docs" / "fastpath.md").read_text(), "## Schedulers")
    described = [name for bullet in re.findall(r"^- ((?:`\w+`(?:, )?)+)", section, re.MULTILINE)
                 for name in re.findall(r"`(\w+)`", bullet)]
    assert sorted(described) == sorted(consts.SCHEDULERS), described
