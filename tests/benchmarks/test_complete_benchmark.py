"""benchmarks/complete.py: a smoke run on one net and one engine writes JSON whose counts add up.

No wall-clock assertions: the numbers depend on the machine; only their consistency is checked.
An engine this checkout does not offer (here a made-up one) is skipped with a note, not an error.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_complete", REPO / "benchmarks" / "complete.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_counts_are_consistent(tmp_path, shared_data) -> None:
    bench = _load_benchmark()
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
