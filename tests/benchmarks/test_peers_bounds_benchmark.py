"""benchmarks/peers_bounds.py without the peers installed: it says they were skipped and records our
runs, whose certified counts are the bound engine's own (the oracle: the same calls made here)."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def test_ours_only_run_records_the_engines_counts(tmp_path: Path, shared_data: Path) -> None:
    # a Python that can import neither peer: a bare venv (the peers are never a dependency)
    env = tmp_path / "bare"
    venv.create(env, with_pip=False)
    bare = env / "bin" / "python"
    out = tmp_path / "peers.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "peers_bounds.py"), "--data-dir", str(shared_data),
                    "--models", "mnist_cnn_small_kw", "--methods", "kw,alpha-crown-bounds", "--n", "12", "--threads", "1",
                    "--peer-python", str(bare), "--output", str(out)], check=True, capture_output=True, text=True,
                   timeout=600)
    d = json.loads(out.read_text())
    assert set(d["peers_skipped"]) == {"convex_adversarial", "auto_lirpa"}
    assert d["ratios"] == []
    runs = {r["method"]: r for r in d["runs"]}
    assert set(runs) == {"kw", "alpha-crown-bounds"} and all(r["tool"] == "ours" for r in runs.values())

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from peers_bounds import EPS, _load
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from verify.bounds import certify_with_bounds, compute_bounds
    from verify.spec import LpBall

    net, x, y = _load("mnist_cnn_small_kw", 12, str(shared_data))
    pset = LpBall.make(x, EPS, "inf", net.input_range)
    with torch.no_grad():
        kw = certify_with_bounds(net, pset, y, method="kw")
        alpha = compute_bounds(net, pset, y, method="alpha-crown").margin_lb.amin(1)
    assert runs["kw"]["certified"] == int(kw.certified.sum())
    assert runs["alpha-crown-bounds"]["certified"] == int((alpha > 0).sum())
    assert abs(runs["alpha-crown-bounds"]["mean_margin_lb"] - float(alpha.to(torch.float64).mean())) < 1e-4
