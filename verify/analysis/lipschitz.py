"""Lipschitz statistics of a Network: an empirical estimate on data, a product bound, certified robustness.

Three numbers of very different standing (Finlay, Oberman & Abbasi report the first two
side by side in Tulip's ``summary.py``; verify adds the third):

* **Empirical estimate** -- max and mean over data points of ||grad_x loss||_q (cross-entropy,
  and the logit margin f_y - f_j at the runner-up class j), with q the dual norm of the input
  norm p. It is a *lower* bound on the local Lipschitz constant of the loss: the largest slope
  seen at those points, nothing more.
* **Product bound** -- the product of the per-layer operator norms ||.||_{p->p} (ReLU is
  1-Lipschitz; a residual block contributes L(body) + L(shortcut)). A guaranteed *upper*
  bound on the Lipschitz constant of the logits from (R^d, ||.||_p) to (R^K, ||.||_p), but
  usually a very loose one: it ignores which ReLUs can be active together and the signs
  that cancel across layers. For p = 1 and inf the layer norms are exact; for p = 2 the
  guaranteed per-layer upper bound is used (see :mod:`verify.analysis.norms`). The loss and
  the margin gain a factor 2^(1/q) = ||e_y - e_j||_q (the CE gradient in the logits,
  softmax - onehot, has q-norm <= 2^(1/q) too).
* **Certified robustness** -- the fraction of points a bound method of :mod:`verify.bounds`
  certifies at radius eps (float64-rechecked), and beside it the fraction the product bound
  alone certifies (margin > 2^(1/q) * L * eps): the gap shows how loose the product is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError, SpecError, UnsupportedLayerError
from ..network import AffineLayer, Layer, MaxPool2d, Network, ReLU, Residual, Shape
from ..spec import LpBall, check_eps, dual_norm, p_name, parse_p
from .norms import LayerNorms, layer_norm_bound, layer_norms, network_norms

# Relative slack on the product bound before it certifies anything: it is a product of a few
# dozen float64 norms (each off by at most a few ulps), so 1e-6 leaves ample room.
SAFETY_REL = 1e-6


def output_factor(p: float) -> float:
    """||e_y - e_j||_q = 2^(1/q), q the dual of p: the margin's (and CE's) Lipschitz factor in the logits."""
    q = dual_norm(p)
    return 1.0 if math.isinf(q) else 2.0 ** (1.0 / q)


def _maxpool_factor(layer: MaxPool2d, p: float) -> float:
    """MaxPool is 1-Lipschitz in Linf; with overlapping windows an input reaches m windows:
    m in L1 and sqrt(m) in L2 (m = prod ceil(k / s))."""
    if math.isinf(p):
        return 1.0
    m = math.prod(math.ceil(k / s) for k, s in zip(layer.kernel, layer.stride))
    return float(m) if p == 1.0 else math.sqrt(m)


def lipschitz_product_bound(net: Network, p: float | str, *, spectral: Literal["upper", "estimate"] = "upper",
                            power_iters: int = 100) -> float:
    """Product of per-layer ||.||_{p->p} norms, summed over residual branches: an upper bound on the
    Lipschitz constant of the logits (loose; see the module docstring).

    ``spectral="estimate"`` (p = 2 only) uses power-iteration spectral norms instead of their
    guaranteed upper bounds: closer to what the product is, but no longer a guaranteed bound.
    """
    pv = parse_p(p)
    if spectral not in ("upper", "estimate"):
        raise SpecError(f"spectral must be 'upper' or 'estimate', got {spectral!r}")

    def chain(layers: Sequence[Layer], shape: Shape) -> tuple[float, Shape]:
        total = 1.0
        for layer in layers:
            if isinstance(layer, Residual):
                b, out = chain(layer.body, shape)
                s, _ = chain(layer.shortcut, shape)  # empty shortcut: the identity, factor 1
                total *= b + s
            elif isinstance(layer, AffineLayer):
                if spectral == "estimate" and pv == 2.0:
                    total *= layer_norms(layer, shape, power_iters=power_iters).l2
                else:
                    total *= layer_norm_bound(layer, shape, pv)
                out = layer.out_shape(shape)
            elif isinstance(layer, ReLU):
                out = shape
            elif isinstance(layer, MaxPool2d):
                total *= _maxpool_factor(layer, pv)
                out = layer.out_shape(shape)
            else:
                raise UnsupportedLayerError(f"no Lipschitz bound for {layer.describe()}")
            shape = out
        return total, shape

    return chain(net.layers, net.input_shape)[0]


def gradient_norms(net: Network, x: Tensor, y: Tensor, p: float | str, *, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Per point, in float64: (||grad_x CE||_q, ||grad_x (f_y - f_j)||_q) with j the runner-up class at x."""
    pv = parse_p(p)
    q = dual_norm(pv)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{x.shape[0]} points and {y.shape[0]} labels")
    loss_norms, margin_norms = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].detach().to(torch.float64).requires_grad_(True)
        yb = y[i : i + batch_size].to(torch.long)
        logits = net.forward(xb)
        # summed over the batch: the gradient w.r.t. x_i is that of point i's own loss
        (g_loss,) = torch.autograd.grad(F.cross_entropy(logits, yb, reduction="sum"), xb, retain_graph=True)
        other = logits.detach().clone()
        other[torch.arange(len(yb)), yb] = -math.inf
        j = other.argmax(1)
        ar = torch.arange(len(yb))
        (g_margin,) = torch.autograd.grad((logits[ar, yb] - logits[ar, j]).sum(), xb)
        loss_norms.append(g_loss.flatten(1).norm(p=q, dim=1))
        margin_norms.append(g_margin.flatten(1).norm(p=q, dim=1))
    empty = torch.zeros(0, dtype=torch.float64)
    return (torch.cat(loss_norms) if loss_norms else empty), (torch.cat(margin_norms) if margin_norms else empty)


@dataclass(frozen=True)
class LipschitzSummary:
    """Empirical Lipschitz estimates, the (loose) product bound and certified fractions at ``eps``."""

    p: str  # input norm; gradients are measured in its dual
    n: int
    clean_accuracy: float
    grad_loss_max: float  # max over points of ||grad_x CE||_q: an empirical estimate (a lower bound)
    grad_loss_mean: float
    grad_margin_max: float  # the same for the logit margin f_y - f_runner-up
    grad_margin_mean: float
    product_bound: float  # upper bound on the logits' Lipschitz constant (product of layer norms; loose)
    product_estimate: float  # p = 2: the same product with power-iteration spectral norms (not guaranteed); else = product_bound
    loss_bound: float  # output_factor * product_bound: bounds every gradient norm above
    eps: float | None
    certified_product: float | None  # fraction certified by margin > loss_bound * eps (correct points only)
    certified_bounds: float | None  # fraction certified by the bound method (float64-rechecked)
    method: str | None
    layers: tuple[LayerNorms, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [r.as_dict() for r in self.layers]
        return d

    def table(self) -> list[tuple[str, str]]:
        """(quantity, value) rows, each labelled with what kind of number it is."""
        q = p_name(dual_norm(parse_p(self.p)))
        rows = [
            ("points", str(self.n)),
            ("clean accuracy", f"{self.clean_accuracy:.4f}"),
            (f"max ||grad_x CE||_{q}       (empirical, a lower bound)", f"{self.grad_loss_max:.6g}"),
            (f"mean ||grad_x CE||_{q}      (empirical)", f"{self.grad_loss_mean:.6g}"),
            (f"max ||grad_x margin||_{q}   (empirical, a lower bound)", f"{self.grad_margin_max:.6g}"),
            (f"mean ||grad_x margin||_{q}  (empirical)", f"{self.grad_margin_mean:.6g}"),
            (f"product of layer L{self.p} norms (loose upper bound, logits)", f"{self.product_bound:.6g}"),
            (f"x {output_factor(parse_p(self.p)):.4g}: bound on every gradient above (loose)", f"{self.loss_bound:.6g}"),
        ]
        if self.p == "2":
            rows.append(("product of power-iteration spectral norms (an estimate, not guaranteed)", f"{self.product_estimate:.6g}"))
        if self.eps is not None:
            rows.append((f"certified at eps {self.eps:g} by the product bound", f"{self.certified_product:.4f}"))
            rows.append((f"certified at eps {self.eps:g} by {self.method} (float64-rechecked)", f"{self.certified_bounds:.4f}"))
        return rows


def lipschitz_summary(
    net: Network,
    x: Tensor,
    y: Tensor,
    *,
    p: float | str = 2,
    eps: float | None = None,
    method: str = "crown",
    power_iters: int = 100,
    grads: tuple[Tensor, Tensor] | None = None,
) -> LipschitzSummary:
    """Gradient-norm statistics on (x, y), the product bound, and (with ``eps``) certified fractions.

    ``grads``: the output of :func:`gradient_norms` for the same points and p, if already computed.
    """
    pv = parse_p(p)
    if eps is not None:
        eps = float(check_eps(eps)[0])
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(net.input_shape):
        raise DataError(f"inputs have shape {tuple(x.shape[1:])}, the model expects {tuple(net.input_shape)}")
    if x.shape[0] == 0:
        raise DataError("no points to analyse")
    y = y.to(torch.long)
    gl, gm = grads if grads is not None else gradient_norms(net, x, y, pv)
    with torch.no_grad():
        logits = net.forward(x.to(torch.float64))
    correct = logits.argmax(1) == y
    bound = lipschitz_product_bound(net, pv)
    estimate = lipschitz_product_bound(net, pv, spectral="estimate", power_iters=power_iters) if pv == 2.0 else bound
    factor = output_factor(pv)
    cert_prod = cert_bounds = None
    if eps is not None:
        other = logits.clone()
        other[torch.arange(len(y)), y] = -math.inf
        margin = logits[torch.arange(len(y)), y] - other.amax(1)
        cert_prod = float((correct & (margin > factor * bound * eps * (1 + SAFETY_REL))).float().mean())
        from ..bounds import METHODS
        from ..mip.lp_bound import certify_with_method

        if method not in METHODS:
            raise SpecError(f"unknown bound method {method!r}: use one of {', '.join(METHODS)}")
        ball = LpBall.make(x, eps, pv, net.input_range)
        with torch.no_grad():
            res = certify_with_method(net, ball, y, method=method)  # type: ignore[arg-type]
        cert_bounds = float((res.certified & correct).float().mean())
    return LipschitzSummary(
        p=p_name(pv), n=int(x.shape[0]), clean_accuracy=float(correct.float().mean()),
        grad_loss_max=float(gl.max()), grad_loss_mean=float(gl.mean()),
        grad_margin_max=float(gm.max()), grad_margin_mean=float(gm.mean()),
        product_bound=bound, product_estimate=estimate, loss_bound=factor * bound, eps=eps, certified_product=cert_prod,
        certified_bounds=cert_bounds, method=method if eps is not None else None,
        layers=tuple(network_norms(net, power_iters=power_iters)),
    )


def plot_gradient_norms(loss_norms: Tensor, margin_norms: Tensor, summary: LipschitzSummary, path: str) -> None:
    """Histograms of the per-point gradient norms, with the product bound marked (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..atomic import write_atomic_with

    q = p_name(dual_norm(parse_p(summary.p)))
    fig, ax = plt.subplots(figsize=(7, 4))
    vals = [v for v in (loss_norms, margin_norms) if v.numel()]
    lo = max(min(float(v[v > 0].min()) if (v > 0).any() else 1e-6 for v in vals), 1e-12)
    hi = max(summary.loss_bound, max(float(v.max()) for v in vals)) * 1.5
    bins = np.logspace(math.log10(lo), math.log10(hi), 40)
    # bins: matplotlib documents an array of edges; its stub says Sequence[float]
    ax.hist(loss_norms.numpy(), bins=bins, alpha=0.6, label=f"||grad_x CE||_{q}")  # type: ignore[arg-type]
    ax.hist(margin_norms.numpy(), bins=bins, alpha=0.6, label=f"||grad_x margin||_{q}")  # type: ignore[arg-type]
    ax.axvline(summary.loss_bound, color="k", ls="--", label=f"{output_factor(parse_p(summary.p)):.3g} x product of layer norms (loose upper bound)")
    ax.set_xscale("log")
    ax.set_xlabel("gradient norm")
    ax.set_ylabel("points")
    ax.set_title(f"empirical Lipschitz estimates vs the product bound (input norm L{summary.p})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
