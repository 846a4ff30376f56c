"""bench/scale/plots.py: a report written without matplotlib says where each plot was left out."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

from bench.scale import plots


def test_missing_matplotlib_is_said_in_place_of_the_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(plots, "STEM", tmp_path / "report")
    monkeypatch.setattr(plots, "matplotlib_missing", False)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    name = plots.line_plot("x", "t", "x", "y", {"s": [(1.0, 2.0)]})
    assert name is None
    lines = plots.image(name, "table cost vs entries")
    assert lines[0].startswith("(plot left out: matplotlib is not installed") and lines[0].endswith("table cost vs entries")
    assert list(tmp_path.iterdir()) == []


def test_no_report_stem_means_no_plot_and_no_remark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "STEM", None)
    monkeypatch.setattr(plots, "matplotlib_missing", False)
    assert plots.line_plot("x", "t", "x", "y", {"s": [(1.0, 2.0)]}) is None
    assert plots.image(None, "alt") == []


def test_a_drawn_plot_is_linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (the bench extra) is not installed in this venv")
    monkeypatch.setattr(plots, "STEM", tmp_path / "report")
    name = plots.line_plot("x", "t", "x", "y", {"s": [(1.0, 2.0), (10.0, 3.0)]}, logx=True, hline=(1.1, "target"))
    assert name == "report-scale-x.png" and (tmp_path / name).stat().st_size > 0
    assert plots.image(name, "alt") == ["![alt](report-scale-x.png)", ""]
