"""``verify bounds``: certify with bound propagation (ibp, kw, crown, alpha-crown, lp)."""

from __future__ import annotations

import time

import click
import torch

from ..bounds import METHODS, certify_with_bounds
from ..spec import check_eps, parse_p
from .common import data_options, load_examples, load_model, make_ball, model_option, output_option, p_label, spec_options, write_rows


@click.command("bounds")
@model_option
@data_options
@spec_options
@click.option("--method", type=click.Choice(list(METHODS)), default="crown", show_default=True,
              help="Bound method: ibp, kw (Wong & Kolter), crown, alpha-crown, lp (triangle LP, HiGHS).")
@click.option("--alpha-steps", type=click.IntRange(min=0), default=20, show_default=True, help="alpha-crown: optimisation steps.")
@click.option("--alpha-lr", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True, help="alpha-crown: Adam step size.")
@output_option
def bounds(model_path: str, model_format: str | None, arch: str | None, dataset: str | None, data_dir: str | None,
           n: int | None, indices: str | None, inputs_path: str | None, p: str, eps: float, method: str,
           alpha_steps: int, alpha_lr: float, output: str | None) -> None:
    """Certify test points with a bound method; misclassified points are never certified."""
    parse_p(p)  # reject a bad norm or radius before any file is read
    check_eps(eps)
    net = load_model(model_path, model_format, arch)
    ex = load_examples(net, dataset, data_dir, n, indices, inputs_path)
    ball = make_ball(net, ex, p, eps)
    t0 = time.perf_counter()
    with torch.no_grad():
        pred = net.predict(ex.x)
        res = certify_with_bounds(net, ball, ex.y, method=method, alpha_steps=alpha_steps, alpha_lr=alpha_lr)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    correct = pred == ex.y
    certified = res.certified & correct
    count = len(ex.indices)
    finite = res.margin_lb[torch.isfinite(res.margin_lb)]
    mean_lb = float(finite.mean()) if finite.numel() else float("nan")
    click.echo(f"n={count}  clean accuracy={float(correct.float().mean()):.4f}  "
               f"certified={float(certified.float().mean()):.4f} ({int(certified.sum())}/{count})  "
               f"mean margin bound={mean_lb:.4g}  method={method}  p={p_label(p)}  eps={eps:g}  seconds={seconds:.2f}")
    if output:
        rows = [{"index": i, "label": int(ex.y[k]), "prediction": int(pred[k]), "certified": bool(certified[k]),
                 "margin_lb": float(res.margin_lb[k])} for k, i in enumerate(ex.indices)]
        header = {"model": model_path, "source": ex.source, "p": p_label(p), "eps": eps, "method": method, "n": count,
                  "clean_accuracy": float(correct.float().mean()), "certified_fraction": float(certified.float().mean()),
                  "mean_margin_lb": mean_lb, "seconds": seconds}
        write_rows(output, header, rows)
