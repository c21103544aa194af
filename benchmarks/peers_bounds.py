"""Our bound methods against convex_adversarial 0.4.4 (KW) and auto_LiRPA (CROWN, alpha-CROWN).

    python benchmarks/peers_bounds.py --data-dir /work/shared/datasets --n 1000 --threads 1,2 \\
        --peer-python /tmp/peers/bin/python --lirpa-path /tmp/alirpa --output peers_bounds.json

Same points (the first n MNIST / F-MNIST test images), same eps (0.1 Linf), same network for
every tool: each zoo model (``models/*.mat``, loaded with ``verify.formats``) rewritten to the
equivalent NCHW-flatten network that the peers' PyTorch modules need (the Linear layer's columns
permuted; the function is the same). Every run is a fresh process (its own peak RSS), runs are
interleaved (ours, then each peer, per method and thread count), and each records seconds,
certified count, mean margin lower bound and peak RSS; ratios are peer seconds / our seconds (wall, and CPU time)
within the same benchmark run.

Certified counts, fairly: ours are rigorous decisions (``certify_with_bounds``; float32 bounds
widened by a rounding-error allowance, docs/soundness.md); the peers' are "float32 lower bound > 0".
Bounds: ``mean_margin_lb`` is the bound each tool decided with (ours: widened, or float64 near
zero); ``mean_margin_lb_float32`` is our plain float32 bound (untimed), the one to compare with
the peers' float32 bounds. Method ``alpha-crown-bounds`` times the bound itself: ours
``compute_bounds(method="alpha-crown")`` in float32 on every point (every margin optimised,
intermediate layers included, as auto_LiRPA's alpha-CROWN does), against the same auto_LiRPA run
as ``alpha-crown``; certified there is "float32 bound > 0" for both.
convex_adversarial's default DualNetwork ignores the [0, 1] input box; it has an option
(``bounded_input=True``) that models it. Both are run: ``kw-nobox`` compares its default with
our KW on the same box-free ball (input range widened to +-1e4), ``kw`` compares the boxed ones.
auto_LiRPA gets the box through ``PerturbationLpNorm(x_L, x_U)``, the same set as ours.
Peers absent from ``--peer-python`` are skipped and say so in the JSON. No peer code is vendored.
Every worker imports ``verify`` (for the network conversion), so by default the peers run under
the same allocator settings as ours (:mod:`verify.runtime`; ``allocator_tuned`` in each row): the
ratios compare the algorithms, not glibc's defaults; ``--peer-malloc default`` runs them with
glibc's defaults instead, as their own users do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPS = 0.1


def _equivalent_nchw(net):  # type: ignore[no-untyped-def]
    """The same function with every NHWC Flatten -> Linear rewritten as NCHW Flatten -> Linear."""
    import torch

    from verify.network import Flatten, Linear, Network

    layers = list(net.layers)
    out = []
    shape = net.input_shape
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, Flatten) and layer.order == "NHWC" and i + 1 < len(layers) and isinstance(layers[i + 1], Linear):
            c, h, w = shape
            lin = layers[i + 1]
            # NCHW column (c, h, w) reads the NHWC column (h, w, c)
            idx = torch.arange(c * h * w).reshape(h, w, c).permute(2, 0, 1).reshape(-1)
            out += [Flatten("NCHW"), Linear(lin.weight[:, idx], lin.bias)]
            shape = lin.out_shape(layer.out_shape(shape))
            i += 2
            continue
        out.append(layer)
        shape = layer.out_shape(shape)
        i += 1
    return Network(out, net.input_shape, net.input_range, name=net.name)


PEER_METHOD = {"alpha-crown-bounds": "alpha-crown"}  # the peer's run for each of our methods, where it differs


def _load(model: str, n: int, data_dir: str):  # type: ignore[no-untyped-def]
    import torch

    from verify.data import load_dataset
    from verify.formats import load_model

    path = ROOT / "models" / model
    net = _equivalent_nchw(load_model(path if path.exists() or path.suffix else path.with_suffix(".mat")))
    ds = load_dataset("fashion-mnist" if model.startswith("fmnist") else "mnist", split="test", data_dir=data_dir)
    x = ds.x[:n].to(torch.float32).reshape(n, *net.input_shape)
    return net, x, ds.y[:n].to(torch.long)


def _spec(y, k: int):  # type: ignore[no-untyped-def]
    """(N, K-1, K): rows e_y - e_j for j != y."""
    import torch

    eye = torch.eye(k)
    rows = [torch.stack([eye[int(t)] - eye[j] for j in range(k) if j != int(t)]) for t in y]
    return torch.stack(rows)


def _worker(tool: str, method: str, model: str, n: int, threads: int, data_dir: str, lirpa_steps: int) -> dict:
    import torch

    from verify.runtime import keep_freed_memory
    from verify.torch_modules import network_to_torch

    torch.set_num_threads(threads)
    net, x, y = _load(model, n, data_dir)
    box = method != "kw-nobox"
    base = _rss_mb()
    c0 = _cpu_s()
    t0 = time.perf_counter()
    with torch.no_grad() if tool != "auto_lirpa" else torch.enable_grad():
        if tool == "ours" and method == "alpha-crown-bounds":
            from verify.bounds import compute_bounds
            from verify.spec import LpBall

            # the bound itself, every margin of every point optimised, in float32 as the peers'
            pset = LpBall.make(x, EPS, "inf", net.input_range)
            lb = torch.cat([compute_bounds(net, pset.select(list(range(i, min(n, i + 100)))), y[i : i + 100],
                                           method="alpha-crown").margin_lb.amin(1) for i in range(0, n, 100)])
            lb = lb.to(torch.float64)
            cert = lb > 0
        elif tool == "ours":
            from verify.bounds import certify_with_bounds
            from verify.spec import LpBall

            pset = LpBall.make(x, EPS, "inf", net.input_range if box else (-1e4, 1e4))
            res = certify_with_bounds(net, pset, y, method="kw" if method == "kw-nobox" else method)  # type: ignore[arg-type]
            cert, lb = res.certified, res.margin_lb
        elif tool == "convex_adversarial":
            from convex_adversarial import DualNetwork

            seq = network_to_torch(net, torch.float32).eval()
            c = _spec(y, net.n_classes)
            parts = []
            for i in range(0, n, 50):  # their own examples use batches of 50
                dual = DualNetwork(seq, x[i : i + 50], EPS, bounded_input=box)
                parts.append(dual(c[i : i + 50]))
            lb = torch.cat(parts).amin(1).to(torch.float64)
            cert = lb > 0
        else:
            from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

            seq = network_to_torch(net, torch.float32).eval()
            c = _spec(y, net.n_classes)
            opts = {"optimize_bound_args": {"iteration": lirpa_steps}}
            model_b = BoundedModule(seq, torch.zeros(1, *net.input_shape), bound_opts=opts, device="cpu", verbose=0)
            parts = []
            for i in range(0, n, 100):
                xb = x[i : i + 100]
                ptb = PerturbationLpNorm(norm=float("inf"), eps=EPS, x_L=(xb - EPS).clamp(min=0), x_U=(xb + EPS).clamp(max=1))
                lo, _ = model_b.compute_bounds(x=(BoundedTensor(xb, ptb),), C=c[i : i + 100],
                                               method="CROWN" if method == "crown" else "alpha-CROWN", bound_upper=False)
                parts.append(lo.detach())
            lb = torch.cat(parts).amin(1).to(torch.float64)
            cert = lb > 0
    secs = time.perf_counter() - t0
    cpu = _cpu_s() - c0
    peak = _rss_mb()
    finite = lb[torch.isfinite(lb)]
    out = {"tool": tool, "method": method, "model": model, "n": n, "threads": threads, "seconds": secs, "cpu_seconds": cpu,
           "certified": int(cert.sum()), "mean_margin_lb": float(finite.mean()) if finite.numel() else None,
           "peak_rss_mb": peak, "peak_rss_mb_over_loaded": peak - base, "allocator_tuned": keep_freed_memory()}
    if tool == "ours" and method != "alpha-crown-bounds":
        # untimed: the plain float32 bound (no rounding allowance), comparable with the peers' float32 bounds
        from verify.bounds import compute_bounds

        with torch.no_grad():
            raw = compute_bounds(net, pset, y, method="kw" if method == "kw-nobox" else method).margin_lb.amin(1)  # type: ignore[arg-type]
        out["mean_margin_lb_float32"] = float(raw[torch.isfinite(raw)].mean())
    return out


def _cpu_s() -> float:
    """This process's CPU time (user + system, all threads): on a machine shared with other jobs it
    varies far less than wall time, so ratios are also given on it."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run(python: str, env_path: str, args: list[str], timeout: float, malloc: str = "tuned") -> dict:
    env = dict(os.environ, PYTHONPATH=env_path, OMP_NUM_THREADS=args[args.index("--threads") + 1],
               RELU_VERIFY_MALLOPT="1" if malloc == "tuned" else "0")
    try:
        p = subprocess.run([python, str(Path(__file__).resolve()), "--worker", *args], capture_output=True, text=True,
                           env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr or p.stdout)[-1500:]}
    return json.loads(lines[-1])


def _peer_available(python: str, env_path: str, module: str) -> str | None:
    p = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=env_path))
    return None if p.returncode == 0 else (p.stderr.strip().splitlines() or ["import failed"])[-1]


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # one run in this fresh process
        w = argparse.ArgumentParser()
        for k in ("--tool", "--method", "--model", "--data-dir"):
            w.add_argument(k)
        for k in ("--n", "--threads", "--lirpa-steps"):
            w.add_argument(k, type=int)
        o = w.parse_args(sys.argv[2:])
        print(json.dumps(_worker(o.tool, o.method, o.model, o.n, o.threads, o.data_dir, o.lirpa_steps)), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mnist_cnn_small_kw.mat")
    ap.add_argument("--methods", default="kw,kw-nobox,crown,alpha-crown")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--data-dir", default=str(ROOT / "datasets"))
    ap.add_argument("--peer-python", default=sys.executable)
    ap.add_argument("--lirpa-path", default="", help="a checkout of auto_LiRPA to put on the peers' PYTHONPATH")
    ap.add_argument("--lirpa-steps", type=int, default=20, help="alpha-CROWN iterations (ours: 20)")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--output", default="peers_bounds.json")
    ap.add_argument("--peer-malloc", choices=("tuned", "default"), default="tuned",
                    help="the peers' allocator: ours (verify.runtime; compares the algorithms) or glibc's defaults "
                         "(what the peers' users get)")
    a = ap.parse_args()
    ours_path = str(ROOT)
    peer_path = os.pathsep.join(p for p in (str(ROOT), a.lirpa_path) if p)
    missing = {"convex_adversarial": _peer_available(a.peer_python, peer_path, "convex_adversarial"),
               "auto_lirpa": _peer_available(a.peer_python, peer_path, "auto_LiRPA")}
    tools_for = {"kw": ["convex_adversarial"], "kw-nobox": ["convex_adversarial"], "crown": ["auto_lirpa"],
                 "alpha-crown": ["auto_lirpa"], "alpha-crown-bounds": ["auto_lirpa"]}
    out: dict = {"benchmark": "peers_bounds", "eps": EPS, "p": "inf", "n": a.n, "python": platform.python_version(),
                 "machine": platform.machine(), "cpu_count": os.cpu_count(), "peers_skipped": {k: v for k, v in missing.items() if v},
                 "fair_counts": __doc__.split("Certified counts, fairly:")[1].split("No peer code")[0].strip(), "runs": [], "ratios": []}
    peer_runs: dict[tuple[str, str, str, int], dict] = {}
    for model in a.models.split(","):
        for threads in (int(t) for t in a.threads.split(",")):
            for method in a.methods.split(","):
                args = ["--model", model, "--method", method, "--n", str(a.n), "--threads", str(threads),
                        "--data-dir", a.data_dir, "--lirpa-steps", str(a.lirpa_steps)]
                ours = _run(sys.executable, ours_path, ["--tool", "ours", *args], a.timeout)
                print(json.dumps(ours), flush=True)
                out["runs"].append(ours)
                for peer in tools_for[method]:
                    if missing[peer]:
                        continue
                    # alpha-crown and alpha-crown-bounds ask auto_LiRPA the same thing: run it once
                    key = (peer, PEER_METHOD.get(method, method), model, threads)
                    if key not in peer_runs:
                        peer_runs[key] = _run(a.peer_python, peer_path, ["--tool", peer, *args], a.timeout, a.peer_malloc)
                        print(json.dumps(peer_runs[key]), flush=True)
                        out["runs"].append(peer_runs[key])
                    theirs = peer_runs[key]
                    if "seconds" in ours and "seconds" in theirs:
                        out["ratios"].append({"model": model, "method": method, "threads": threads, "peer": peer,
                                              "speedup_ours": theirs["seconds"] / ours["seconds"],
                                              "speedup_ours_cpu": theirs["cpu_seconds"] / ours["cpu_seconds"],
                                              "certified_ours": ours["certified"], "certified_peer": theirs["certified"],
                                              "mean_lb_ours": ours["mean_margin_lb"], "mean_lb_peer": theirs["mean_margin_lb"],
                                              "mean_lb_ours_float32": ours.get("mean_margin_lb_float32"),
                                              "peak_rss_mb_ours": ours["peak_rss_mb"], "peak_rss_mb_peer": theirs["peak_rss_mb"]})
                        print(json.dumps(out["ratios"][-1]), flush=True)
                Path(a.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
