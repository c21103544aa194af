"""``verify analyze norms|lipschitz|pgr MODEL``: operator norms, Lipschitz statistics, perturbation growth ratios."""

from __future__ import annotations

import math
from typing import Any

import click

from ..errors import SpecError
from ..spec import check_eps, parse_p
from .common import F, data_options, load_examples, load_model, write_rows


def _model_argument(f: F) -> F:
    f = click.option("--arch", default=None, help="Architecture name when a state dict is ambiguous (e.g. cnn_lenet_small).")(f)
    f = click.option("--format", "model_format", default=None,
                     type=click.Choice(["mat", "mat-mmr", "mat-mipverify", "h5", "pt", "onnx"]),
                     help="Model format; default: from the file name and its contents.")(f)
    return click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))(f)


def _outputs(f: F) -> F:
    f = click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="Write a PNG plot.")(f)
    return click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
                        help="Write the rows: .json (with a summary header) or .csv.")(f)


def _check_outputs(output: str | None, plot_path: str | None) -> None:
    """Reject bad output names before any work is done."""
    if output is not None and not output.endswith((".json", ".csv")):
        raise SpecError(f"--output must end in .json or .csv, got {output!r}")
    if plot_path is not None and not plot_path.endswith(".png"):
        raise SpecError(f"--plot must end in .png, got {plot_path!r}")


def _fmt(v: float) -> str:
    return f"{v:.5g}" if math.isfinite(v) else str(v)


@click.group("analyze", context_settings={"help_option_names": ["-h", "--help"]})
def analyze() -> None:
    """Analyse a model: operator norms, Lipschitz estimates and bounds, perturbation growth ratios.

    \b
    Examples:
      verify analyze norms models/net.h5 --plot norms.png --output norms.json
      verify analyze lipschitz models/net.h5 --dataset mnist -n 200 --p 2 --eps 0.5
      verify analyze pgr models/ssp.h5 --dataset mnist -n 100 --p inf --eps 0.1 --plot pgr.png
    """


@analyze.command("norms")
@_model_argument
@click.option("--power-iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="Power-iteration steps for the spectral-norm estimates of convolutions.")
@_outputs
def norms(model_path: str, model_format: str | None, arch: str | None, power_iters: int, output: str | None,
          plot_path: str | None) -> None:
    """Exact L1 and Linf operator norms of every affine layer, spectral norms, and their products.

    L1 is the largest column absolute sum, Linf the largest row absolute sum of the layer's
    matrix (convolutions: computed exactly from the kernel, stride and padding). L2 is the
    spectral norm: exact for dense and diagonal layers, a power-iteration estimate (never
    above the true value) for convolutions; 'L2 upper' is a guaranteed upper bound. The
    products bound the network's Lipschitz constant from above and are usually very loose.

    \b
    Example:
      verify analyze norms models/net.h5 --plot norms.png --output norms.csv
    """
    from ..analysis import lipschitz_product_bound, network_norms, plot_norms

    _check_outputs(output, plot_path)
    net = load_model(model_path, model_format, arch)
    records = network_norms(net, power_iters=power_iters)
    if not records:
        raise SpecError("the model has no affine layers to analyse")
    click.echo(f"{'node':>5}  {'layer':<14} {'in -> out':<28} {'L1':>11} {'Linf':>11} {'L2 (est.)':>11} {'L2 upper':>11}")
    for r in records:
        shapes = f"{'x'.join(map(str, r.in_shape))} -> {'x'.join(map(str, r.out_shape))}"
        click.echo(f"{r.index:>5}  {r.kind:<14} {shapes:<28} {_fmt(r.l1):>11} {_fmt(r.linf):>11} {_fmt(r.l2):>11} "
                   f"{_fmt(r.l2_upper):>11}")
    products = {p: lipschitz_product_bound(net, p) for p in ("1", "2", "inf")}
    click.echo("product of layer norms (residual blocks: body + shortcut) -- a loose upper bound on the Lipschitz "
               "constant of the logits:")
    click.echo("  " + "   ".join(f"L{p}: {_fmt(v)}" for p, v in products.items()))
    if output is not None:
        write_rows(output, {"model": model_path, "power_iters": power_iters, "product_upper_bounds": products},
                   [r.as_dict() for r in records] if output.endswith(".json") else [_flat(r.as_dict()) for r in records])
        click.echo(f"wrote {output}")
    if plot_path is not None:
        plot_norms(records, plot_path, title=f"operator norms per layer: {net.name}")
        click.echo(f"wrote {plot_path}")


def _finite(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN / inf values as null: strict JSON readers reject NaN."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {k: ("x".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in d.items()}


@analyze.command("lipschitz")
@_model_argument
@data_options
@click.option("--p", "p", default="2", show_default=True, help="Input norm: 1, 2 or inf (gradients in its dual norm).")
@click.option("--eps", type=float, default=None, help="Also report certified fractions at this radius.")
@click.option("--method", default="crown", show_default=True, help="Bound method for the certified fraction (ibp, kw, crown, ...).")
@click.option("--power-iters", type=click.IntRange(min=1), default=100, show_default=True, help="Power-iteration steps (p = 2 estimate).")
@_outputs
def lipschitz(model_path: str, model_format: str | None, arch: str | None, dataset: str | None, data_dir: str | None,
              n: int | None, indices: str | None, inputs_path: str | None, p: str, eps: float | None, method: str,
              power_iters: int, output: str | None, plot_path: str | None) -> None:
    """Empirical Lipschitz estimates on test points beside the product-of-norms bound and certified accuracy.

    The estimates (max / mean of ||grad_x loss|| over the points) are lower bounds on the local
    Lipschitz constant; the product of layer norms is an upper bound, usually far too loose to
    certify anything; the bound method's certified fraction is what verify can prove.

    \b
    Example:
      verify analyze lipschitz models/net.h5 --dataset mnist -n 200 --p 2 --eps 0.5 --plot lip.png
    """
    from ..analysis import gradient_norms, lipschitz_summary
    from ..analysis.lipschitz import plot_gradient_norms
    from ..bounds import METHODS

    pv = parse_p(p)
    if eps is not None:
        check_eps(eps)
    if method not in METHODS:
        raise SpecError(f"unknown bound method {method!r}: use one of {', '.join(METHODS)}")
    _check_outputs(output, plot_path)
    net = load_model(model_path, model_format, arch)
    ex = load_examples(net, dataset, data_dir, n, indices, inputs_path)
    grads = gradient_norms(net, ex.x, ex.y, pv)
    s = lipschitz_summary(net, ex.x, ex.y, p=pv, eps=eps, method=method, power_iters=power_iters, grads=grads)
    width = max(len(k) for k, _ in s.table())
    for k, v in s.table():
        click.echo(f"{k:<{width}}  {v}")
    if output is not None:
        rows = [{"index": i, "label": int(ex.y[k]), "grad_loss_norm": float(grads[0][k]),
                 "grad_margin_norm": float(grads[1][k])} for k, i in enumerate(ex.indices)]
        header = {"model": model_path, "source": ex.source, **s.as_dict()}
        write_rows(output, header, rows)
        click.echo(f"wrote {output}")
    if plot_path is not None:
        plot_gradient_norms(grads[0], grads[1], s, plot_path)
        click.echo(f"wrote {plot_path}")


@analyze.command("pgr")
@_model_argument
@data_options
@click.option("--p", "p", default="inf", show_default=True, help="Norm of the PGD ball: 1, 2 or inf.")
@click.option("--eps", type=float, required=True, help="Radius of the PGD ball (in input units).")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="PGD iterations.")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True, help="PGD restarts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of PGD's random start.")
@click.option("--groups", default=None,
              help="Groups as in_node:out_node pairs of graph nodes, e.g. 0:6,6:12 (default: the model's "
                   "metadata groups, else one per residual block, else one per ReLU layer).")
@_outputs
def pgr(model_path: str, model_format: str | None, arch: str | None, dataset: str | None, data_dir: str | None,
        n: int | None, indices: str | None, inputs_path: str | None, p: str, eps: float, steps: int, restarts: int,
        seed: int, groups: str | None, output: str | None, plot_path: str | None) -> None:
    """Perturbation growth ratio per group: mean ||out(x_adv) - out(x)|| / ||in(x_adv) - in(x)|| (L1, L2).

    x_adv is a PGD point in the (p, eps) ball around each test point (cross-entropy loss).

    \b
    Example:
      verify analyze pgr models/ssp3.h5 --dataset mnist -n 100 --p inf --eps 0.1 --plot pgr.png
    """
    from ..analysis.pgr import parse_groups, perturbation_growth, plot_pgr

    pv = parse_p(p)
    if float(check_eps(eps)[0]) <= 0:
        raise SpecError("--eps must be > 0: growth ratios need a perturbation")
    group_list = parse_groups(groups) if groups is not None else None
    _check_outputs(output, plot_path)
    net = load_model(model_path, model_format, arch)
    ex = load_examples(net, dataset, data_dir, n, indices, inputs_path)
    res = perturbation_growth(net, ex.x, ex.y, eps=eps, p=pv, groups=group_list, steps=steps, restarts=restarts, seed=seed)
    click.echo(f"n={res.n}  PGD L{res.p} eps={res.eps:g}  attack success rate={res.attack_success_rate:.4f}")
    click.echo(f"{'group':>5}  {'nodes (out op)':<24} {'PGR L1':>10} {'PGR L2':>10} {'points':>7}")
    for g in res.groups:
        click.echo(f"{g.group:>5}  {g.label:<24} {_fmt(g.pgr_l1):>10} {_fmt(g.pgr_l2):>10} {g.points:>7}")
    if output is not None:
        d = res.as_dict()
        rows = d.pop("groups")
        write_rows(output, {"model": model_path, "source": ex.source, **d}, _finite(rows))
        click.echo(f"wrote {output}")
    if plot_path is not None:
        plot_pgr(res, plot_path)
        click.echo(f"wrote {plot_path}")
