"""Minimum adversarial distortion (``verify radius``) on the zoo's KW CNN, and robust-error curves
from one radius run against one ``certify`` run per eps, in the same run (issue #26).

For the first N MNIST test points (default 100), Linf, ``--max-eps`` 0.1 (the net's training
radius, as MIPVerify.jl's ``closest`` runs are capped by their perturbation family):

* the radius run: per example the status (exact / bracketed / beyond / misclassified), lower and
  upper end, seconds; mean and median seconds per example, the fractions exact / bracketed / beyond,
  the exact radii;
* the baseline: ``certify`` (default pipeline, complete engine auto) at each eps of ``--grid``,
  its total seconds, and the ratio (certify over the grid) / (radius run);
* a consistency check (an oracle, not a timing): at each grid eps, every example the radius run
  puts below its lower end must be verified by certify and every example whose upper end is <= eps
  must not be verified (and vice versa for certify's falsified). Any disagreement is listed.

    python benchmarks/radius.py --n 100 --timeout 120 --out radius.json --rows rows.json
    verify curve rows.json --plot docs/radius_curve.png
    python benchmarks/radius.py --quick          # n 10, timeout 20, grid 0.05,0.1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "mnist_cnn_small_kw.mat"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--grid", default=None, help="eps values of the certify baseline (default 0.02,0.04,...,0.1)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--no-baseline", action="store_true", help="Skip the certify-per-eps baseline.")
    ap.add_argument("--quick", action="store_true", help="Smoke run: n 10, timeout 20, grid 0.05,0.1.")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", default=None, help="Also write the radius rows as a radius results JSON (for 'verify curve').")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.timeout, a.grid = min(a.n, 10), min(a.timeout, 20.0), a.grid or "0.05,0.1"
    a.grid = a.grid or "0.02,0.04,0.06,0.08,0.1"
    torch.set_num_threads(1)

    from verify.certify import CertifyConfig, certify
    from verify.data import load_examples
    from verify.formats import load_model
    from verify.radius import RadiusConfig, minimum_distortion
    from verify.spec import LpBall

    net = load_model(a.model)
    ex = load_examples(net, dataset="mnist", data_dir=a.data_dir, n=a.n, indices=None, inputs_path=None)
    t0 = time.perf_counter()
    res = minimum_distortion(net, ex.x, ex.y, ex.indices, RadiusConfig(p=math.inf, max_eps=a.max_eps,
                                                                       timeout=a.timeout), progress=False)
    radius_s = time.perf_counter() - t0
    rows = [r.row() for r in res]
    secs = [r["seconds"] for r in rows]
    count = {s: sum(r["status"] == s for r in rows) for s in ("exact", "bracketed", "beyond", "misclassified")}
    out: dict[str, Any] = {
        "model": Path(a.model).name, "n": a.n, "p": "inf", "max_eps": a.max_eps, "timeout": a.timeout,
        "quick": a.quick, "torch_threads": 1,
        "radius": {
            "wall_seconds": radius_s, "mean_seconds": statistics.fmean(secs), "median_seconds": statistics.median(secs),
            "counts": count, "fraction_bracketed": count["bracketed"] / a.n,
            "exact_radii": {str(r["index"]): r["upper"] for r in rows if r["status"] == "exact"},
            "mip_seconds": {str(r.index): round(r.seconds.get("mip", 0.0), 3) for r in res if "mip" in r.seconds},
            "examples": rows,
        },
    }
    if not a.no_baseline:
        grid = [float(e) for e in a.grid.split(",") if e]
        base: dict[str, Any] = {}
        disagree: list[dict[str, Any]] = []
        total = 0.0
        for eps in grid:
            t = time.perf_counter()
            cres = certify(net, LpBall.make(ex.x, eps, "inf", net.input_range), ex.y, ex.indices,
                           CertifyConfig(p=math.inf, eps=eps, timeout=a.timeout), progress=False)
            dt = time.perf_counter() - t
            total += dt
            st = {c.index: c.status for c in cres}
            base[str(eps)] = {"seconds": dt, "verified": sum(s == "verified" for s in st.values()),
                              "falsified": sum(s in ("falsified", "misclassified") for s in st.values()),
                              "unknown": sum(s == "unknown" for s in st.values())}
            for r in rows:
                s = st[r["index"]]
                robust = r["status"] != "misclassified" and eps <= r["lower"]
                broken = r["upper"] is not None and r["upper"] <= eps
                if (robust and s in ("falsified", "misclassified")) or (broken and s == "verified"):
                    disagree.append({"index": r["index"], "eps": eps, "certify": s, "lower": r["lower"],
                                     "upper": r["upper"]})
        out["certify_per_eps"] = {"grid": grid, "runs": base, "total_seconds": total,
                                  "ratio_certify_grid_over_radius": total / radius_s if radius_s > 0 else None,
                                  "disagreements": disagree}
    if a.rows:
        from verify.cli.common import write_rows
        from verify.radius import config_dict

        cfg = {**config_dict(RadiusConfig(p=math.inf, max_eps=a.max_eps, timeout=a.timeout)), "model_path": a.model,
               "dataset": "mnist", "data_dir": a.data_dir, "data": ex.source}
        write_rows(a.rows, {"config": cfg}, rows)
    text = json.dumps(out, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    summary = {k: v for k, v in out["radius"].items() if k not in ("examples",)}
    print(json.dumps({"radius": summary, "certify_per_eps": {k: v for k, v in out.get("certify_per_eps", {}).items()
                                                              if k != "runs"}}, indent=1))
    return out


if __name__ == "__main__":
    main()
