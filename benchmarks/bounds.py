"""Bound methods: examples per second and peak memory on MMR-style MNIST networks.

    python benchmarks/bounds.py --n 1000 --n-lp 5 --output bounds.json

Networks (random weights, He-style scale; speed does not depend on training, the
certified fractions do and are reported only as a sanity check): cnn_lenet_small
(conv 16@4x4 s2 SAME, conv 32@4x4 s2 SAME, fc 100, fc 10) and fc1 (784-1024-10).
Every (network, method) runs in a fresh spawned process so that its peak resident
memory (ru_maxrss, minus the process's baseline after loading data) is its own.

If ``convex_adversarial`` (Wong & Kolter's code, not a dependency) imports, its KW dual
bound is computed on the same networks and examples (Linf ball without the [0, 1] box,
which it does not model) and compared with ours: max |difference| and the time ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verify.network import Conv2d, Flatten, Linear, Network, ReLU, same_padding  # noqa: E402
from verify.torch_modules import network_to_torch  # noqa: E402

EPS = 0.1


def cnn_lenet_small(seed: int = 0, flatten: str = "NHWC") -> Network:
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return torch.randn(*shape, generator=g) * (2.0 / fan_in) ** 0.5

    return Network([
        Conv2d(w(16, 1, 4, 4), torch.zeros(16), 2, same_padding((28, 28), (4, 4), (2, 2))), ReLU(),
        Conv2d(w(32, 16, 4, 4), torch.zeros(32), 2, same_padding((14, 14), (4, 4), (2, 2))), ReLU(),
        Flatten(flatten), Linear(w(100, 32 * 7 * 7), torch.zeros(100)), ReLU(), Linear(w(10, 100), torch.zeros(10)),
    ], (1, 28, 28), name="cnn_lenet_small")


def fc1(seed: int = 0) -> Network:
    g = torch.Generator().manual_seed(seed)
    return Network([Linear(torch.randn(1024, 784, generator=g) * (2 / 784) ** 0.5, torch.zeros(1024)), ReLU(),
                    Linear(torch.randn(10, 1024, generator=g) * (2 / 1024) ** 0.5, torch.zeros(10))], (784,), name="fc1")


NETS = {"cnn_lenet_small": cnn_lenet_small, "fc1": fc1}


def load_mnist(n: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    from verify.data import load_dataset

    ds = load_dataset("mnist", split="test", data_dir=data_dir)
    return ds.x[:n].to(torch.float32), ds.y[:n]


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(net_name: str, method: str, n: int, data_dir: str | None, threads: int, queue) -> None:
    try:
        torch.set_num_threads(threads)
        from verify.mip.lp_bound import certify_with_method
        from verify.spec import LpBall

        net = NETS[net_name]()
        x, y = load_mnist(n, data_dir)
        x = x.reshape(n, *net.input_shape)
        pset = LpBall.make(x, EPS, "inf", net.input_range)
        base = _maxrss_mb()
        t0 = time.perf_counter()
        with torch.no_grad():
            res = certify_with_method(net, pset, y, method=method)  # type: ignore[arg-type]
        secs = time.perf_counter() - t0
        queue.put({"network": net_name, "method": method, "n": n, "seconds": secs, "examples_per_second": n / secs,
                   "peak_rss_mb_over_baseline": _maxrss_mb() - base, "peak_rss_mb": _maxrss_mb(),
                   "certified_fraction": float(res.certified.float().mean()),
                   "mean_margin_lb": float(res.margin_lb[torch.isfinite(res.margin_lb)].mean())})
    except Exception as e:  # recorded in the JSON, not hidden
        queue.put({"network": net_name, "method": method, "n": n, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()[-2000:]})


def run_isolated(net_name: str, method: str, n: int, data_dir: str | None, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(net_name, method, n, data_dir, threads, q))
    p.start()
    out = q.get()
    p.join()
    return out


def compare_convex_adversarial(net_name: str, n: int, data_dir: str | None) -> dict:
    """Our KW bound vs convex_adversarial's DualNetwork on the same weights (box-free Linf ball)."""
    try:
        import convex_adversarial
        from convex_adversarial import DualNetwork
    except Exception as e:
        return {"available": False, "why": f"import failed: {type(e).__name__}: {e}"}
    from verify.bounds.final import linear_margins
    from verify.bounds.intermediate import linear_intermediate
    from verify.spec import LpBall

    # convex_adversarial flattens in PyTorch order: use an NCHW Flatten for this comparison
    net = cnn_lenet_small(flatten="NCHW") if net_name == "cnn_lenet_small" else fc1()
    x, y = load_mnist(n, data_dir)
    x = x.reshape(n, *net.input_shape)
    try:
        seq = network_to_torch(net, torch.float32).eval()
        if net_name == "fc1":
            seq = torch.nn.Sequential(torch.nn.Flatten(), *seq)
            xin = x.reshape(n, 1, 28, 28)
        else:
            xin = x
        t0 = time.perf_counter()
        with torch.no_grad():
            k = 10
            c = torch.eye(k)[y].unsqueeze(1) - torch.eye(k).unsqueeze(0)  # (N, K, K): e_y - e_j
            theirs = []
            for i in range(0, n, 50):
                dual = DualNetwork(seq, xin[i : i + 50], EPS)
                theirs.append(dual(c[i : i + 50]))
            theirs_t = torch.cat(theirs).to(torch.float64)
        t_theirs = time.perf_counter() - t0
    except Exception as e:
        return {"available": False, "version": getattr(convex_adversarial, "__version__", "0.4.4"),
                "why": f"runs but fails on torch {torch.__version__}: {type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-1500:]}
    # the same set as theirs: the Linf ball without the [0, 1] box (a huge input range)
    pset = LpBall.make(x, EPS, "inf", (-1e4, 1e4))
    t0 = time.perf_counter()
    with torch.no_grad():
        b = linear_intermediate(net, pset, rule="kw", dtype=torch.float32, intersect_interval=False)
        ours = linear_margins(net, pset, y, b, rule="kw").to(torch.float64)
    t_ours = time.perf_counter() - t0
    mask = ~torch.isinf(ours)
    diff = (ours[mask] - theirs_t[mask]).abs()
    scale = theirs_t[mask].abs().max()
    return {"available": True, "version": "0.4.4", "n": n, "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(diff.max() / scale), "ours_seconds": t_ours, "theirs_seconds": t_theirs,
            "speed_ratio_ours_over_theirs": t_theirs / t_ours,
            "note": "float32 both; their bound ignores the input box, so ours is run without it too"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-lp", type=int, default=5)
    ap.add_argument("--n-compare", type=int, default=100)
    ap.add_argument("--methods", default="ibp,kw,crown,alpha-crown,lp")
    ap.add_argument("--nets", default="cnn_lenet_small,fc1")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--output", default="bounds_benchmark.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"benchmark": "bounds", "eps": EPS, "p": "inf", "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": args.threads, "weights": "random (He init, seed 0)", "runs": [],
           "convex_adversarial": {}, "auto_lirpa": "not attempted (optional; time)"}
    for net_name in args.nets.split(","):
        for method in args.methods.split(","):
            n = args.n_lp if method == "lp" else args.n
            r = run_isolated(net_name, method, n, args.data_dir, args.threads)
            print(json.dumps({k: v for k, v in r.items() if k != "traceback"}), flush=True)
            out["runs"].append(r)
        out["convex_adversarial"][net_name] = compare_convex_adversarial(net_name, args.n_compare, args.data_dir)
        print(net_name, json.dumps({k: v for k, v in out["convex_adversarial"][net_name].items() if k != "traceback"}), flush=True)
    from verify.cli.common import write_atomic

    write_atomic(args.output, json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
