"""bench/nat_replies.py's accounting: medians per mode, the ingress / forward ratio, errors summed."""

from __future__ import annotations

from bench import nat_replies as nr


def trial(mode: str, kind: str, rate: float, errors: int = 0) -> dict[str, object]:
    return {"rep": 0, "mode": mode, "kind": kind, "rate_rps": rate, "errors": errors, "p99_us": 100, "natrx": {}}


def test_summary_is_medians_and_their_ratio() -> None:
    trials = [trial("forward", "ka", r) for r in (100.0, 300.0, 200.0)] + \
             [trial("ingress", "ka", r) for r in (210.0, 190.0, 230.0)] + \
             [trial("forward", "close", 50.0, 1), trial("ingress", "close", 40.0, 2)]
    s = nr.summarize(trials)
    assert s["ka"] == {"forward": 200.0, "ingress": 210.0, "ratio": 1.05, "errors": {"forward": 0, "ingress": 0}}
    assert s["close"]["ratio"] == 0.8 and s["close"]["errors"] == {"forward": 1, "ingress": 2}


def test_report_names_both_modes_and_the_ratio() -> None:
    data = {"config": {"repeats": 1, "duration_s": 5.0, "connections": 32, "dut_cpu": 1}, "commit": "abc",
            "summary": nr.summarize([trial("forward", k, 100.0) for k in ("ka", "close")]
                                    + [trial("ingress", k, 110.0) for k in ("ka", "close")])}
    text = "\n".join(nr.report(data))
    assert "| keep-alive requests/s | 100 | 110 | 1.10x | 0 / 0 |" in text
    assert "| connections/s | 100 | 110 | 1.10x | 0 / 0 |" in text
