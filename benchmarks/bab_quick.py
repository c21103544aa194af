"""BaB (verify.bab) against the HiGHS MIP (verify.mip.highs.solve_query) on a plainly trained
MNIST MLP (784-256-256-10, trained here in a few seconds on mnist-train-10k; not saved), Linf eps
on the first N test images. Writes JSON: per image both verdicts and times, solved counts, medians.

    PYTHONPATH=. python3 benchmarks/bab_quick.py --n 10 --eps 0.02 --output /tmp/bab_quick.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

def train(epochs: int, seed: int, data_dir: str) -> torch.nn.Sequential:
    from verify.data import load_dataset

    torch.manual_seed(seed)
    ds = load_dataset("mnist-train-10k", split="train", data_dir=data_dir)
    x, y = ds.x.reshape(len(ds.y), -1).float(), ds.y.long()
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--bab-timeout", type=float, default=30.0)
    ap.add_argument("--mip-timeout", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--branching", default="babsr")
    ap.add_argument("--no-mip", action="store_true")
    ap.add_argument("--output", default=None)
    ap.add_argument("--data-dir", default=str(DATA))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from verify.bab import BabOptions, bab
    from verify.data import load_dataset
    from verify.mip.highs import HighsOptions, solve_query
    from verify.query import Query
    from verify.spec import LpBall
    from verify.torch_modules import network_from_torch

    t = time.perf_counter()
    model = train(args.epochs, 0, args.data_dir)
    net = network_from_torch(model.eval(), (784,), (0.0, 1.0), "mnist-mlp-256x2")
    train_s = time.perf_counter() - t
    test = load_dataset("mnist", split="test", data_dir=args.data_dir)
    xs, ys = test.x[: args.n].reshape(args.n, -1).to(torch.float64), test.y[: args.n].long()
    rows = []
    for i in range(args.n):
        x, y = xs[i : i + 1], int(ys[i])
        ball = LpBall.make(x, args.eps, "inf")
        pred = int(net.forward(x).argmax())
        row: dict = {"index": i, "label": y, "correct": pred == y}
        if pred != y:
            row.update(bab="falsified", mip="falsified", bab_s=0.0, mip_s=0.0)
            rows.append(row)
            continue
        r = bab(net, Query.robustness(ball, y, 10), options=BabOptions(timeout=args.bab_timeout, branching=args.branching))
        row.update(bab=r.status, bab_reason=r.reason, bab_s=r.total_seconds, bab_domains=r.domains, bab_lb=r.margin_lb)
        if not args.no_mip:
            t = time.perf_counter()
            m = solve_query(net, Query.robustness(ball, y, 10), deadline=t + args.mip_timeout, options=HighsOptions(threads=1))
            row.update(mip=m.status, mip_reason=m.reason, mip_s=time.perf_counter() - t)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def summary(key: str) -> dict:
        done = [r for r in rows if r.get(key) in ("verified", "falsified")]
        times = [r[key + "_s"] for r in rows if key + "_s" in r and r["correct"]]
        return {"verified": sum(r.get(key) == "verified" for r in rows),
                "falsified": sum(r.get(key) == "falsified" for r in rows),
                "solved": len(done), "median_s": statistics.median(times) if times else None,
                "total_s": sum(times)}

    agree = None if args.no_mip else all(r.get("bab") == r.get("mip") or "unknown" in (r.get("bab"), r.get("mip")) for r in rows)
    out = {"model": net.name, "train_s": train_s, "eps": args.eps, "n": args.n, "threads": args.threads,
           "bab_timeout": args.bab_timeout, "mip_timeout": args.mip_timeout, "bab": summary("bab"),
           "mip": summary("mip") if not args.no_mip else None, "no_conflicts": agree, "rows": rows}
    text = json.dumps(out, indent=1)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
