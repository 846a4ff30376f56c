"""Plots of the scale sections (PNG next to the report; where matplotlib is missing, the report says
so in place of each plot)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

# Set by bench.report before the sections render: where a report's plots go (the stem of its files).
STEM: Path | None = None
LEFT_OUT = ("(plot left out: matplotlib is not installed here; `make bench` installs the `bench` extra, "
            "then `python -m bench report --out RUN_DIR` redraws this report with its plots)")
matplotlib_missing = False  # set by line_plot when the import failed


def line_plot(name: str, title: str, xlabel: str, ylabel: str, series: Mapping[str, Sequence[tuple[float, float]]],
              logx: bool = False, hline: tuple[float, str] | None = None) -> str | None:
    """One PNG with a line per series; returns its file name (relative to the report), or None."""
    if STEM is None:
        return None
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        global matplotlib_missing  # noqa: PLW0603 - one flag for the report being written
        matplotlib_missing = True
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, pts in series.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle=":", linewidth=1, label=hline[1])
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path = STEM.with_name(f"{STEM.name}-scale-{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def image(name: str | None, alt: str) -> list[str]:
    if name:
        return [f"![{alt}]({name})", ""]
    return [f"{LEFT_OUT}: {alt}", ""] if matplotlib_missing else []
