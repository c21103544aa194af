"""Final margin bounds: interval, linear (kw / crown) and optimised-slope (alpha-crown)."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from ..network import AffineLayer, Network
from ..spec import LpBall
from .backward import backward_bound, margin_spec
from .relax import Rule
from .slopes import crown_slopes, optimise_slopes
from .types import NodeBounds


def _finish(margins: Tensor, labels: Tensor) -> Tensor:
    out = margins.clone()
    out[torch.arange(out.shape[0], device=out.device), labels.to(device=out.device, dtype=torch.long)] = math.inf
    return out


def interval_margins(net: Network, bounds: NodeBounds, labels: Tensor) -> Tensor:
    """Margins from interval bounds (N, K); +inf in column y (:func:`interval_rows` on the margin rows)."""
    return _finish(interval_rows(net, bounds, margin_spec(labels, net.n_classes, bounds[0][0].dtype)), labels)


def interval_rows(net: Network, bounds: NodeBounds, spec: Tensor) -> Tensor:
    """Lower bounds (N, R) on the rows spec[n, r] . f(x) from interval bounds, with the spec folded
    into the last affine layer.

    Folding a row c (a margin: e_y - e_j) into the last layer bounds c^T (W z + b) over z's box
    exactly, which is much tighter than from the output box.
    """
    last = net.graph[-1]
    lo_out, hi_out = bounds[last.index]
    spec = spec.to(lo_out.dtype)
    if getattr(last.op, "affine", False):
        # cast, not isinstance: the branch is chosen by the layer's affine flag, as before
        op = cast(AffineLayer, last.op)
        src = last.inputs[0]
        lo, hi = bounds[src]
        n, k = spec.shape[:2]
        in_shape = net.graph[src].shape
        a = op.linear_t(spec.reshape(n * k, -1), in_shape).reshape(n, k, *in_shape)
        lo_v, hi_v = lo.unsqueeze(1), hi.unsqueeze(1)
        val = (a.clamp(min=0) * lo_v + a.clamp(max=0) * hi_v).reshape(n, k, -1).sum(-1)
        off = op.offset(in_shape, lo[:1])
        return val + (spec * off).sum(-1)
    return (spec.clamp(min=0) * lo_out.unsqueeze(1) + spec.clamp(max=0) * hi_out.unsqueeze(1)).sum(-1)


def linear_margins(net: Network, pset: LpBall, labels: Tensor, bounds: NodeBounds, *, rule: Rule,
                   alpha: dict[int, Tensor] | None = None) -> Tensor:
    """Backward bounds on all margins at once (N, K); +inf in column y. No interval max here."""
    return _finish(linear_rows(net, pset, margin_spec(labels, net.n_classes, bounds[0][0].dtype), bounds,
                               rule=rule, alpha=alpha), labels)


def linear_rows(net: Network, pset: LpBall, spec: Tensor, bounds: NodeBounds, *, rule: Rule,
                alpha: dict[int, Tensor] | None = None) -> Tensor:
    """Backward bounds (N, R) on the rows spec[n, r] . f(x) (spec (N, R, n_outputs))."""
    dtype = bounds[0][0].dtype
    return backward_bound(net, pset.to(dtype), net.graph[-1].index, spec.to(dtype), bounds, rule=rule, alpha=alpha)


def initial_alpha(net: Network, bounds: NodeBounds, n_specs: int) -> dict[int, Tensor]:
    """CROWN's lower slopes, one copy per row: (N, S, *shape) per ReLU node."""
    return crown_slopes(net, bounds, n_specs)


def alpha_margins(net: Network, pset: LpBall, labels: Tensor, bounds: NodeBounds, *, steps: int = 20,
                  lr: float = 0.25, init: dict[int, Tensor] | None = None, deadline: float = math.inf,
                  ) -> tuple[Tensor, dict[int, Tensor]]:
    """alpha-CROWN on the final margins (:func:`alpha_rows` on the margin rows): (margins (N, K)
    with +inf in column y, the best slopes)."""
    spec = margin_spec(labels, net.n_classes, bounds[0][0].dtype)
    best, best_alpha = alpha_rows(net, pset, spec, bounds, steps=steps, lr=lr, init=init, deadline=deadline)
    return _finish(best, labels), best_alpha


def alpha_rows(
    net: Network,
    pset: LpBall,
    spec: Tensor,
    bounds: NodeBounds,
    *,
    steps: int = 20,
    lr: float = 0.25,
    init: dict[int, Tensor] | None = None,
    deadline: float = math.inf,
) -> tuple[Tensor, dict[int, Tensor]]:
    """alpha-CROWN on the rows spec[n, r] . f(x): projected Adam ascent on the lower ReLU slopes.

    Slopes are separate per example, per row and per neuron, start at CROWN's (or
    ``init``), are clipped to [0, 1] after every step, and the best bound seen for every
    (example, row) is kept together with its slopes, so the result is never below
    CROWN's bound with the same intermediate bounds (step 0 *is* CROWN's bound).
    ``deadline`` (``time.perf_counter()``) ends the optimisation early.
    Returns (bounds (N, R), the best slopes).
    """
    dtype = bounds[0][0].dtype
    pset = pset.to(dtype)
    spec = spec.to(dtype)
    start = {i: t.to(dtype) for i, t in (init or initial_alpha(net, bounds, spec.shape[1])).items()}
    root = net.graph[-1].index
    live = bounds
    bounds = {i: (lo.detach(), hi.detach()) for i, (lo, hi) in bounds.items()}
    best, best_alpha = optimise_slopes(net, pset, root, spec, bounds, start, steps=steps, lr=lr, deadline=deadline)
    if torch.is_grad_enabled() and any(lo.requires_grad or hi.requires_grad for lo, hi in live.values()):
        # the same bound at the best slopes, differentiable in the network's parameters
        best = backward_bound(net, pset, root, spec, live, rule="alpha", alpha=best_alpha)
    return best, best_alpha
