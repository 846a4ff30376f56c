"""bench/failover.py's report: one row per step and method from each test's figures, per-method
first replies, and runs recorded before FULLNAT was measured (one test, one first reply)."""

from __future__ import annotations

from bench import failover


def _step(survived: dict[str, int], first: dict[str, float | None]) -> dict[str, object]:
    return {"survived": survived, "first_reply_s": first}


def test_rows_of_both_tests_with_their_own_first_reply() -> None:
    dr = {"connections_per_method": 20, "a_table_back_s": 2.9,
          "to_b": _step({"DR": 20, "IPIP": 19}, {"DR": 0.01, "IPIP": 0.02}),
          "back_to_a": _step({"DR": 20, "IPIP": 20}, {"DR": 0.3, "IPIP": 0.31})}
    fnat = {"connections_per_method": 20, "a_table_back_s": 3.5,
            "to_b": _step({"FULLNAT": 20, "FULLNAT+SYN-proxy": 0}, {"FULLNAT": 0.05, "FULLNAT+SYN-proxy": None}),
            "back_to_a": _step({"FULLNAT": 20, "FULLNAT+SYN-proxy": 20}, {"FULLNAT": 0.4, "FULLNAT+SYN-proxy": 0.41})}
    data = {"runs": [{"test": failover.TESTS[0], "test_exit": 0, "figures": dr},
                     {"test": failover.TESTS[1], "test_exit": 1, "figures": fnat}]}
    text = "\n".join(failover.report(data))
    assert "| A -> B | IPIP | 19/20 | 0.02 s |" in text
    assert "| A -> B | FULLNAT+SYN-proxy | 0/20 | - |" in text
    assert "| B -> A | FULLNAT | 20/20 | 0.40 s |" in text
    assert "test_sync_fullnat.py 1" in text
    assert "(FULLNAT, FULLNAT+SYN-proxy) 3.5 s" in text
    assert text.index("| A -> B | FULLNAT |") < text.index("| B -> A | DR |")  # grouped by step


def test_run_recorded_before_fullnat() -> None:
    data = {"test": failover.TESTS[0], "test_exit": 0,
            "figures": {"connections_per_method": 20, "to_b": _step({"DR": 20}, {}) | {"first_reply_s": 0.01}}}
    assert "| A -> B | DR | 20/20 | 0.01 s |" in failover.report(data)


def test_no_figures_says_why() -> None:
    data = {"runs": [{"test": failover.TESTS[0], "test_exit": 2, "error": "boom"}], "error": "boom"}
    assert "No figures: boom" in failover.report(data)
