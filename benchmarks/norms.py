"""Exact conv operator norms (L1, Linf from the kernel's tap classes) against power iteration and the matrix.

    python benchmarks/norms.py --output norms.json

Layers: the convolutions of cnn_lenet_small (MMR) and kw_large (Wong et al.) on MNIST-sized
inputs, with their architectures' initial weights (seed 0; the timings do not depend on the
weights). Per layer, in one process and one thread:

* ``exact``: L1 and Linf by :func:`verify.analysis.conv_operator_norm` (tap sets cached per
  shape, as in training; ``exact_cold_s`` includes building them);
* ``power``: the spectral-norm estimate by power iteration (``--iters`` steps; what norm
  regularisers usually compute for a conv), and the guaranteed spectral upper bound from the taps;
* ``matrix``: the baseline -- build the sparse matrix (``Conv2d.matrix``), take its column /
  row absolute sums (the same L1 / Linf values, checked) and its largest singular value (scipy svds).

Timings are the median of ``--repeat`` runs; ratios are against ``exact`` in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.architectures import build  # noqa: E402
from verify.analysis.norms import _MASK_CACHE, conv_operator_norm, conv_spectral_upper, module_entries, spectral_norm_estimate  # noqa: E402
from verify.network import Conv2d  # noqa: E402


def _median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_layer(name: str, entry, iters: int, repeat: int, with_matrix: bool) -> dict:
    m = entry.module
    w = m.weight.detach().to(torch.float64)
    hw = (entry.in_shape[1], entry.in_shape[2])
    stride = tuple(m.stride)
    pad = entry.padding

    def exact() -> tuple[float, float]:
        return float(conv_operator_norm(w, hw, stride, pad, 1)), float(conv_operator_norm(w, hw, stride, pad, "inf"))

    _MASK_CACHE.clear()
    t0 = time.perf_counter()
    exact()
    cold = time.perf_counter() - t0
    t_exact, (l1, linf) = _median_time(exact, repeat)
    layer = Conv2d(w, None, stride, pad)
    t_power, l2 = _median_time(lambda: spectral_norm_estimate(layer, entry.in_shape, iters=iters, tol=0.0), repeat)
    t_upper, l2_up = _median_time(lambda: conv_spectral_upper(w, hw, stride, pad), repeat)
    row = {
        "layer": name, "in_shape": list(entry.in_shape), "out_shape": list(entry.out_shape),
        "kernel": list(w.shape), "stride": list(stride), "padding": list(pad),
        "l1": l1, "linf": linf, "l2_power": l2, "l2_upper": l2_up,
        "l1_full_kernel_bound": float(w.abs().sum((0, 2, 3)).max()),  # every tap on every pixel: an upper bound
        "linf_full_kernel_bound": float(w.abs().sum((1, 2, 3)).max()),
        "exact_s": t_exact, "exact_cold_s": cold, "power_s": t_power, "power_iters": iters, "l2_upper_s": t_upper,
        "power_over_exact": t_power / t_exact,
    }
    if with_matrix:
        from scipy.sparse.linalg import svds

        def matrix() -> tuple[float, float]:
            layer._matrix_cache = None  # type: ignore[attr-defined]
            a = abs(layer.matrix(entry.in_shape))
            return float(a.sum(0).max()), float(a.sum(1).max())

        t_matrix, (m1, minf) = _median_time(matrix, max(1, repeat // 5))
        t0 = time.perf_counter()
        sv = float(svds(layer.matrix(entry.in_shape), k=1, return_singular_vectors=False, tol=1e-10)[0])
        t_svd = time.perf_counter() - t0
        row.update({
            "matrix_l1": m1, "matrix_linf": minf, "matrix_s": t_matrix, "matrix_over_exact": t_matrix / t_exact,
            "values_agree": math.isclose(m1, l1, rel_tol=1e-9) and math.isclose(minf, linf, rel_tol=1e-9),
            "l2_svds": sv, "svds_s": t_svd, "power_rel_error": (sv - l2) / sv,
        })
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default="norms.json")
    ap.add_argument("--iters", type=int, default=50, help="power-iteration steps")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-matrix", action="store_true", help="skip the sparse-matrix baseline")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for arch in ("cnn_lenet_small", "kw_large"):
        module = build(arch, input_shape=(1, 28, 28), seed=0)
        convs = [e for e in module_entries(module, (1, 28, 28)) if e.kind == "conv2d"]
        for e in convs:
            row = bench_layer(f"{arch}/{e.name}", e, args.iters, args.repeat, not args.no_matrix)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("layer", "l1", "linf", "l2_power", "l2_upper", "exact_s", "power_s",
                                                 "power_over_exact") + (("matrix_over_exact", "values_agree")
                                                                        if "matrix_s" in row else ())}), flush=True)
    doc = {"benchmark": "conv operator norms", "python": platform.python_version(), "torch": torch.__version__,
           "machine": platform.machine(), "threads": 1, "layers": rows}
    Path(args.output).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
