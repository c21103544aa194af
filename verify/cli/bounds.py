"""``verify bounds``: certify with bound propagation (ibp, kw, crown, alpha-crown, lp)."""

from __future__ import annotations

import time

import click
import torch

from ..bounds import METHODS
from ..mip.lp_bound import certify_with_method
from ..spec import check_eps, parse_p
from .common import (chunked, data_options, load_examples, load_model, make_ball, model_option, output_option, p_label,
                     quiet_option, spec_options, write_rows)


@click.command("bounds")
@model_option
@data_options
@spec_options
@click.option("--method", type=click.Choice(list(METHODS)), default="crown", show_default=True,
              help="Bound method: ibp, kw (Wong & Kolter), crown, alpha-crown, lp (triangle LP, HiGHS).")
@click.option("--alpha-steps", type=click.IntRange(min=0), default=20, show_default=True, help="alpha-crown: optimisation steps on the margins (examples CROWN leaves uncertified; their intermediate layers get 10 steps of their own first).")
@click.option("--alpha-lr", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True, help="alpha-crown: Adam step size.")
@click.option("--chunk", type=click.IntRange(min=1), default=250, show_default=True,
              help="Examples bounded at once: bounds memory, and the step of the progress bar.")
@quiet_option
@output_option
def bounds(model_path: str, model_format: str | None, arch: str | None, dataset: str | None, data_dir: str | None,
           n: int | None, indices: str | None, inputs_path: str | None, p: str, eps: float, method: str,
           alpha_steps: int, alpha_lr: float, chunk: int, quiet: bool, output: str | None) -> None:
    """Certify test points with a bound method; misclassified points are never certified.

    A certificate is decided in float64 with a safety margin (see verify/bounds/certify.py),
    so float rounding cannot turn an uncertified point into a certified one.

    \b
    Examples:
      verify bounds --model models/mnist_cnn_small_kw.mat --p inf --eps 0.1 --dataset mnist -n 1000 --method kw
      verify bounds --model net.mat --p 2 --eps 0.3 --dataset fmnist -n 200 --method alpha-crown --output b.csv
      verify bounds --model net.onnx --p inf --eps 0.02 --inputs points.npz --method lp
    """
    parse_p(p)  # reject a bad norm or radius before any file is read
    check_eps(eps)
    net = load_model(model_path, model_format, arch)
    ex = load_examples(net, dataset, data_dir, n, indices, inputs_path)
    ball = make_ball(net, ex, p, eps)
    t0 = time.perf_counter()
    pred = net.predict(ex.x)
    parts = []
    for sl in chunked(len(ex.indices), chunk, f"bounds {method}", not quiet):
        with torch.no_grad():
            idx = list(range(sl.start, sl.stop))
            parts.append(certify_with_method(net, ball.select(idx), ex.y[sl], method=method,  # type: ignore[arg-type]
                                             alpha_steps=alpha_steps, alpha_lr=alpha_lr))
    seconds = time.perf_counter() - t0
    correct = pred == ex.y
    res_certified = torch.cat([r.certified for r in parts]) if parts else torch.zeros(0, dtype=torch.bool)
    margin_lb = torch.cat([r.margin_lb for r in parts]) if parts else torch.zeros(0, dtype=torch.float64)
    certified = res_certified & correct
    count = len(ex.indices)
    finite = margin_lb[torch.isfinite(margin_lb)]
    mean_lb = float(finite.mean()) if finite.numel() else float("nan")
    click.echo(f"n={count}  clean accuracy={float(correct.float().mean()):.4f}  "
               f"certified={float(certified.float().mean()):.4f} ({int(certified.sum())}/{count})  "
               f"mean margin bound={mean_lb:.4g}  method={method}  p={p_label(p)}  eps={eps:g}  seconds={seconds:.2f}")
    if output:
        rows = [{"index": i, "label": int(ex.y[k]), "prediction": int(pred[k]), "certified": bool(certified[k]),
                 "margin_lb": float(margin_lb[k])} for k, i in enumerate(ex.indices)]
        header = {"model": model_path, "source": ex.source, "p": p_label(p), "eps": eps, "method": method, "n": count,
                  "clean_accuracy": float(correct.float().mean()), "certified_fraction": float(certified.float().mean()),
                  "mean_margin_lb": mean_lb, "seconds": seconds}
        write_rows(output, header, rows)
