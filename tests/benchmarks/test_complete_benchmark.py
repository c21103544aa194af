"""benchmarks/complete.py: a smoke run on one net and one engine writes JSON whose counts add up.

No wall-clock assertions: the numbers depend on the machine; only their consistency is checked.
An engine this checkout does not offer (here a made-up one) is skipped with a note, not an error.
"""

from __future__ import annotations

import json

from tests.benchmarks.load import load_benchmark


def test_quick_run_counts_are_consistent(tmp_path, shared_data) -> None:
    bench = load_benchmark("complete")
    out = tmp_path / "complete.json"
    bench.main(["--quick", "--n", "3", "--timeout", "2", "--nets", "fc_256x2", "--eps", "0.02",
                "--engines", "mip,no-such-engine", "--data-dir", str(shared_data), "--out", str(out)])
    d = json.loads(out.read_text())
    assert d["quick"] and d["n"] == 3 and d["timeout"] == 2.0
    assert d["engines"]["mip"]["supported"]
    assert not d["engines"]["no-such-engine"]["supported"] and d["engines"]["no-such-engine"]["note"]
    runs = d["nets"]["fc_256x2"]["eps"]["0.02"]
    assert set(runs["engines"]) == {"mip"}
    r = runs["engines"]["mip"]
    assert r["n"] == 3 == len(r["examples"]) == r["solved"] + r["unknown"]
    assert r["solved"] == r["verified"] + r["falsified"] + r["misclassified"]
    assert sum(r["decided_by"].values()) == 3 and r["decided_by"].get("none", 0) == r["unknown"]
    assert r["decided_by_complete_stage"] <= r["reached_complete_stage"] <= 3
    assert (r["median_seconds_decided"] is None) == (r["solved"] == 0)
    pw = runs["pairwise"]
    assert pw["engines"] == ["mip"] and pw["instances"] == 3
    assert pw["decided_by_any"] == r["solved"] and pw["decided_by_none"] == r["unknown"]
    assert pw["disagreements"] == []


def test_pairwise_numbers_on_made_up_rows() -> None:
    """The cross-engine numbers, on rows whose answers are known (no solver runs)."""
    bench = load_benchmark("complete")

    def rows(statuses: list[str], seconds: list[float], by: str) -> dict:
        return {"examples": [{"index": i, "status": s, "decided_by": None if s == "unknown" else by, "seconds": t}
                             for i, (s, t) in enumerate(zip(statuses, seconds))]}

    runs = {"mip": rows(["verified", "unknown", "falsified", "unknown", "misclassified"], [2, 10, 1, 10, 0.1], "mip"),
            "bab": rows(["verified", "verified", "falsified", "unknown", "misclassified"], [1, 3, 1, 10, 0.1], "bab"),
            "auto": rows(["verified", "verified", "verified", "falsified", "misclassified"], [1, 4, 2, 5, 0.1], "bab"),
            "gone": {"skipped": "SpecError: unknown engine"}}
    runs["mip"]["examples"][4]["decided_by"] = runs["bab"]["examples"][4]["decided_by"] = "clean"
    runs["auto"]["examples"][4]["decided_by"] = "clean"
    pw = bench.pairwise(runs)
    assert pw["engines"] == ["auto", "bab", "mip"] and pw["instances"] == 5
    assert pw["decided_by_any"] == 5 and pw["decided_by_none"] == 0
    assert pw["disagreements"] == [2]  # verified by auto, falsified by mip and bab
    assert pw["auto_share_of_decided_by_any"] == 1.0
    assert pw["both_auto_and_mip_decide"] == 3  # 0, 2, 4
    assert pw["median_time_ratio_auto_over_mip"] == 1.0  # 1/2, 2/1, 0.1/0.1
    assert pw["both_decide_in_complete_stage"] == 2  # not 4: the clean check decided it
    assert pw["median_time_ratio_auto_over_mip_complete_stage"] == 1.25
    assert pw["decided_by_bab_or_auto"] == 5 and pw["decided_by_mip"] == 3
    assert pw["ratio_bab_or_auto_vs_mip"] == 5 / 3
