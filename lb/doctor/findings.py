"""Findings of `lbadm doctor` and their text / JSON rendering."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

SEVERITIES = ("error", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning" | "info"
    check: str
    summary: str
    evidence: str = ""
    fix: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not one of {SEVERITIES}")

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; stable within a severity."""
    return sorted(findings, key=lambda f: _RANK[f.severity])


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def _count(findings: Sequence[Finding], severity: str) -> int:
    return sum(1 for f in findings if f.severity == severity)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def format_text(findings: Sequence[Finding], window_s: float | None = None) -> str:
    """Human output: a summary line, then one block per finding (severity, check, summary,
    indented evidence and fix)."""
    head = "lbadm doctor: " + ", ".join([
        plural(_count(findings, "error"), "error"),
        plural(_count(findings, "warning"), "warning"),
        f"{_count(findings, 'info')} info",
    ])
    if window_s is not None:
        head += f" (sampled lbd over {window_s:g} s)"
    out = [head]
    for f in sort_findings(findings):
        out.append("")
        out.append(f"[{f.severity.upper()}] {f.check}: {f.summary}")
        for label, text in (("evidence", f.evidence), ("fix", f.fix)):
            if not text:
                continue
            lines = text.splitlines()
            out.append(f"    {label}: {lines[0]}")
            pad = " " * (len(label) + 6)
            out.extend(pad + line for line in lines[1:])
    return "\n".join(out) + "\n"


def format_json(findings: Sequence[Finding], window_s: float | None = None) -> str:
    doc = {
        "errors": _count(findings, "error"),
        "warnings": _count(findings, "warning"),
        "infos": _count(findings, "info"),
        "window_s": window_s,
        "findings": [f.to_json() for f in sort_findings(findings)],
    }
    return json.dumps(doc, indent=2) + "\n"
