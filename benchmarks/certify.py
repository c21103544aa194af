"""Seconds per example by stage, and binaries after tightening, for `verify certify`.

Runs the pipeline on every MNIST model in models/ (the zoo, including the Kolter-Wong
trained CNN), or on --model PATH, at Linf eps, on the first N MNIST test points; writes JSON.

    python benchmarks/certify.py --n 100 --eps 0.1 --data-dir ../shared/datasets --output /tmp/certify.json

Reference: MIPVerify.jl with HiGHS takes about 1.9 s/example on the Wong & Kolter MNIST
CNN at eps 0.1; the goal here is < 0.5 s/example on 2 cores with identical verdicts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


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
        "examples": [{"index": r.index, "status": r.status, "decided_by": r.decided_by,
                      "seconds": sum(r.seconds.values()), "n_binaries": r.n_binaries} for r in res],
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
    ap.add_argument("--model", default=None, help="one model file; default: every model in models/")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the batched stages")
    ap.add_argument("--output", default=str(REPO / "benchmarks" / "certify.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from verify.data import load_dataset
    from verify.formats import load_model

    ds = load_dataset("mnist", split="test", data_dir=args.data_dir)
    x, y = ds.x[: args.n], ds.y[: args.n]
    out: dict = {"n": args.n, "eps": args.eps, "timeout": args.timeout, "torch_threads": args.threads,
                 "mip_threads": 1, "models": {}}
    paths = [Path(args.model)] if args.model else sorted((REPO / "models").glob("*"))
    nets = {}
    for p in paths:
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
