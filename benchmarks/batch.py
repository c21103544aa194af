"""Examples per second of `verify certify` in-process, and on Dask with 1 and 2 workers, on the same examples.

    python benchmarks/batch.py --n 100 --output out/bench_batch.json

Each configuration writes its own results store (fresh), and the verdicts of all runs are
compared: they must be identical. The ratio is against the 1-worker run of the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models" / "mnist_cnn_small_plain.mat"))
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--output", default="out/bench_batch.json")
    args = ap.parse_args()

    from verify.batch.executor import ClusterOptions
    from verify.batch.run import run_to_store
    from verify.certify import CertifyConfig
    from verify.data import load_dataset, fit_to_model
    from verify.formats import load_model

    net = load_model(args.model)
    ds = load_dataset("mnist", data_dir=args.data_dir)
    idx = list(range(args.n))
    x, y = fit_to_model(ds.x[idx], net, "mnist"), ds.y[idx]
    cfg = CertifyConfig(p=float("inf"), eps=args.eps, timeout=30.0)
    runs, verdicts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in [("inline", ClusterOptions()), ("dask_1", ClusterOptions(workers=1)), ("dask_2", ClusterOptions(workers=2))]:
            t = time.perf_counter()
            rows, _ = run_to_store(net, args.model, x, y, idx, "mnist", cfg, os.path.join(tmp, f"{name}.sqlite"),
                                   options=opts, progress=False)
            sec = time.perf_counter() - t
            runs[name] = {"seconds": round(sec, 3), "examples_per_second": round(args.n / sec, 3)}
            verdicts[name] = {r["index"]: r["status"] for r in rows}
            print(name, runs[name], flush=True)
    result = {
        "benchmark": "batch", "model": args.model, "n": args.n, "p": "inf", "eps": args.eps,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "runs": runs,
        "ratio_2_workers_vs_1": round(runs["dask_2"]["examples_per_second"] / runs["dask_1"]["examples_per_second"], 3),
        "ratio_1_worker_vs_inline": round(runs["dask_1"]["examples_per_second"] / runs["inline"]["examples_per_second"], 3),
        "identical_verdicts": verdicts["inline"] == verdicts["dask_1"] == verdicts["dask_2"],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
