"""benchmarks/radius.py: a smoke run writes JSON whose counts add up and whose radius brackets agree
with certify at every grid eps (the consistency check is an oracle; no wall-clock assertions)."""

from __future__ import annotations

import json

from tests.benchmarks.load import load_benchmark


def test_quick_run_is_consistent_with_certify(tmp_path, shared_data) -> None:
    bench = load_benchmark("radius")
    out = tmp_path / "radius.json"
    bench.main(["--quick", "--n", "4", "--timeout", "5", "--grid", "0.02,0.1", "--data-dir", str(shared_data),
                "--out", str(out)])
    d = json.loads(out.read_text())
    r = d["radius"]
    assert d["n"] == 4 == len(r["examples"]) == sum(r["counts"].values())
    for row in r["examples"]:
        assert row["lower"] <= (row["upper"] if row["upper"] is not None else d["max_eps"])
        assert row["lower_bounds"] <= row["lower"]
    c = d["certify_per_eps"]
    assert c["grid"] == [0.02, 0.1] and c["disagreements"] == []
    assert all(v["verified"] + v["falsified"] + v["unknown"] == 4 for v in c["runs"].values())
