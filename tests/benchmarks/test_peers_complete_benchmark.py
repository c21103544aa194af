"""benchmarks/peers_complete.py without alpha-beta-CROWN: it says the peer was skipped, and our rows
are what `verify vnnlib` decides on the same instance files (the oracle: run_instance, called here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.benchmarks.load import REPO, load_benchmark


def test_ours_only_run_matches_verify_vnnlib(tmp_path: Path, shared_data: Path) -> None:
    out, inst = tmp_path / "peers.json", tmp_path / "instances"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "peers_complete.py"), "--nets", "fc_256x2", "--eps", "0.02",
                    "--n", "2", "--timeout", "20", "--ours", "bab", "--data-dir", str(shared_data),
                    "--abcrown-path", str(tmp_path / "no-abcrown"), "--instances-dir", str(inst), "--output", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    d = json.loads(out.read_text())
    assert d["abcrown"]["skipped"] and "no alpha-beta-CROWN" in d["abcrown"]["skipped"]
    assert d["ours_engines"] == ["bab"] and d["nets"] == ["fc_256x2"] and d["n"] == 2
    assert len(d["rows"]) == 2 and all(set(r["runs"]) == {"ours-bab"} for r in d["rows"])
    s = d["summary"]
    assert set(s["tools"]) == {"ours-bab"} and s["pairs"] == {} and s["disagreements"] == []
    t = s["tools"]["ours-bab"]
    assert t["instances"] == 2 == sum(t[k] for k in ("sat", "unsat", "timeout", "unknown", "error"))
    assert t["solved"] == t["sat"] + t["unsat"]

    from verify.properties import VerifyOptions
    from verify.vnncomp import run_instance, vnn_status

    assert (inst / "fc_256x2" / "instances.csv").is_file()
    for r in d["rows"]:
        assert Path(r["onnx"]) == inst / "fc_256x2" / "net.onnx"
        res = run_instance(r["onnx"], r["vnnlib"], VerifyOptions(timeout=20, complete="bab", threads=1))
        ours = r["runs"]["ours-bab"]
        assert ours["result"] == vnn_status(res) and ours["result"] in ("sat", "unsat")  # decided well within 20 s
        assert ours["decided_by"] == res.decided_by
        assert ours["wall_seconds"] >= ours["seconds"] > 0
        root = r["ours_root"]  # untimed CROWN / alpha-CROWN root bounds: alpha-CROWN is at least as tight
        assert len(root["root_crown_lbs"]) == 9 == len(root["root_alpha_crown_lbs"])
        assert root["root_alpha_crown_lb_min"] >= root["root_crown_lb_min"] - 1e-6


def test_parse_abcrown_log_on_a_made_up_log() -> None:
    bench = load_benchmark("peers_complete")
    log = """Attack finished in 6.4425 seconds.
PGD attack failed
initial CROWN bounds (first 10 items): [-3.5, -4.25]
initial alpha-crown bounds (first 10 items): [-0.5, -0.75]
Global lower bound: -0.75
BaB round 1
288 domains visited
Time: pickout 0.0036    decision 0.0279
Cumulative time: 0.5
BaB round 2
542 domains visited
Time out!!!!!!!!
Result: timeout
Time: 10.1
"""
    p = bench.parse_abcrown_log(log)
    assert p["root_crown_lb_min"] == -4.25 and p["root_alpha_crown_lb_min"] == -0.75 and p["global_lower_bound"] == -0.75
    assert p["attack_seconds"] == 6.4425 and p["attack_succeeded"] is False
    assert p["bab_rounds"] == 2 and p["domains_visited"] == 542
    # the last round has no "Cumulative time": throughput pairs 288 domains with 0.5 s
    assert p["domains_timed"] == 288 and p["bab_seconds"] == 0.5 and p["domains_per_second"] == 576.0
    assert p["result_line"] == "timeout" and p["time"] == 10.1


def test_summary_flags_disagreements_and_ratios() -> None:
    bench = load_benchmark("peers_complete")

    def run(result: str, wall: float) -> dict:
        return {"result": result, "wall_seconds": wall, "seconds": wall - 1}

    rows = [{"id": "a", "runs": {"ours-bab": run("unsat", 3), "abcrown": run("unsat", 9)}, "disagreement": False},
            {"id": "b", "runs": {"ours-bab": run("timeout", 31), "abcrown": run("sat", 5)}, "disagreement": False},
            {"id": "c", "runs": {"ours-bab": run("sat", 2), "abcrown": run("unsat", 4)}, "disagreement": True}]
    s = bench.summarise(rows, ["ours-bab", "abcrown"])
    assert s["disagreements"] == ["c"]
    pair = s["pairs"]["abcrown vs ours-bab"]
    assert pair["both_solve"] == 2 and pair["only_abcrown"] == ["b"] and pair["only_ours-bab"] == []
    assert pair["median_wall_ratio_peer_over_ours"] == (9 / 3 + 4 / 2) / 2
    assert s["tools"]["abcrown"]["solved"] == 3 and s["tools"]["ours-bab"]["timeout"] == 1
