"""bench/report.py: one part run alone writes its report but leaves the README's latest table alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import common, report

RECORDED = common.RESULTS / "runs" / "2026-11-22-cbb641dbf-dirty"  # a complete recorded run


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.MARK_BEGIN}\nold table\n{report.MARK_END}\noutro\n")
    monkeypatch.setattr(common, "RESULTS", results)
    monkeypatch.setattr(report, "README", readme)
    monkeypatch.setattr(report, "_plots", lambda parts, stem: [])  # no matplotlib work in a unit test
    return tmp_path


def _run_dir(sandbox: Path, parts: tuple[str, ...]) -> Path:
    run = sandbox / "results" / "runs" / "2026-11-22-test"
    run.mkdir()
    for name in parts:
        shutil.copy(RECORDED / f"{name}.json", run / f"{name}.json")
    return run


@pytest.mark.skipif(not RECORDED.is_dir(), reason=f"recorded run {RECORDED} not in this checkout")
def test_single_part_leaves_readme_block(sandbox: Path) -> None:
    md = report.write(_run_dir(sandbox, ("cost",)))
    assert md.exists() and "instructions" in md.read_text().lower()
    assert "old table" in (sandbox / "README.md").read_text()


@pytest.mark.skipif(not RECORDED.is_dir(), reason=f"recorded run {RECORDED} not in this checkout")
def test_complete_run_refreshes_readme_block(sandbox: Path) -> None:
    report.write(_run_dir(sandbox, report.PART_NAMES))
    text = (sandbox / "README.md").read_text()
    assert "old table" not in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "| c | dr | est |" in text
