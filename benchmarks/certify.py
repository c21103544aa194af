"""Seconds per example by stage, and binaries after tightening, for `verify certify`.

Runs the pipeline on every model in models/ (if any) and on a certifiably trained
small MNIST CNN (trained here with tests/_train_small.py, or --model PATH), at Linf eps,
on the first N MNIST test points; writes JSON.

    python benchmarks/certify.py --n 100 --eps 0.1 --output benchmarks/certify.json

Reference: MIPVerify.jl with HiGHS takes about 1.9 s/example on the Wong & Kolter MNIST
CNN at eps 0.1; the goal here is < 0.5 s/example on 2 cores with identical verdicts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def bench(net, x, y, eps: float, timeout: float) -> dict:
    from verify.certify import CertifyConfig, certify, summarize
    from verify.spec import LpBall

    ball = LpBall.make(x.to(torch.float64), eps, "inf")
    t0 = time.perf_counter()
    res = certify(net, ball, y, list(range(len(y))), CertifyConfig(p=math.inf, eps=eps, timeout=timeout), progress=False)
    wall = time.perf_counter() - t0
    stages: dict[str, float] = {}
    for r in res:
        for k, v in r.seconds.items():
            stages[k] = stages.get(k, 0.0) + v
    mip = [r for r in res if "mip" in r.seconds]
    s = summarize(res)
    return {
        "summary": s.as_dict(),
        "wall_seconds": wall,
        "seconds_per_example": wall / max(1, len(res)),
        "median_seconds_per_example": s.median_seconds,
        "stage_seconds_total": stages,
        "decided_by": {k: sum(r.decided_by == k for r in res) for k in {r.decided_by or "none" for r in res}},
        "mip_examples": len(mip),
        "mip_seconds": [r.seconds["mip"] for r in mip],
        "mip_binaries": [r.n_binaries for r in mip],
        "median_mip_binaries": statistics.median([r.n_binaries or 0 for r in mip]) if mip else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--model", default=None, help="a certifiably trained MNIST CNN; default: train one here")
    ap.add_argument("--output", default=str(REPO / "benchmarks" / "certify.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    import _train_small
    from conftest import shared_datasets_dir
    from verify.formats import load_model

    shared = shared_datasets_dir()
    x, y = _train_small.mnist(shared, "test")
    x, y = x[: args.n], y[: args.n]
    out: dict = {"n": args.n, "eps": args.eps, "timeout": args.timeout, "threads": 1, "models": {}}
    if args.model:
        nets = {Path(args.model).name: load_model(args.model)}
    else:
        t0 = time.perf_counter()
        nets = {"small_cnn_ibp_trained": _train_small.train(shared, "robust")}
        out["train_seconds"] = time.perf_counter() - t0
    for p in sorted((REPO / "models").glob("*")) if (REPO / "models").is_dir() else []:
        if p.suffix in (".mat", ".pt", ".pth", ".h5", ".onnx"):
            try:
                nets[p.name] = load_model(p)
            except Exception as e:  # report, do not stop the benchmark
                out["models"][p.name] = {"error": str(e)}
    for name, net in nets.items():
        if net.input_shape != (1, 28, 28):
            out["models"][name] = {"skipped": f"input shape {net.input_shape}"}
            continue
        out["models"][name] = bench(net, x, y, args.eps, args.timeout)
        print(name, json.dumps(out["models"][name]["summary"]), flush=True)
        Path(args.output).write_text(json.dumps(out, indent=1) + "\n")  # after each model: a killed run keeps it
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
