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
    """Margins from interval bounds, with the margin spec folded into the last affine layer.

    Folding c = e_y - e_j into the last layer bounds c^T (W z + b) over z's box exactly,
    which is much tighter than l_y - u_j.
    """
    last = net.graph[-1]
    lo_out, hi_out = bounds[last.index]
    spec = margin_spec(labels, net.n_classes, lo_out.dtype)
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
        val = val + (spec * off).sum(-1)
    else:
        val = (spec.clamp(min=0) * lo_out.unsqueeze(1) + spec.clamp(max=0) * hi_out.unsqueeze(1)).sum(-1)
    return _finish(val, labels)


def linear_margins(net: Network, pset: LpBall, labels: Tensor, bounds: NodeBounds, *, rule: Rule,
                   alpha: dict[int, Tensor] | None = None) -> Tensor:
    """Backward bounds on all margins at once (N, K); +inf in column y. No interval max here."""
    dtype = bounds[0][0].dtype
    spec = margin_spec(labels, net.n_classes, dtype)
    val = backward_bound(net, pset.to(dtype), net.graph[-1].index, spec, bounds, rule=rule, alpha=alpha)
    return _finish(val, labels)


def initial_alpha(net: Network, bounds: NodeBounds, n_specs: int) -> dict[int, Tensor]:
    """CROWN's lower slopes, one copy per margin: (N, K, *shape) per ReLU node."""
    return crown_slopes(net, bounds, n_specs)


def alpha_margins(
    net: Network,
    pset: LpBall,
    labels: Tensor,
    bounds: NodeBounds,
    *,
    steps: int = 20,
    lr: float = 0.25,
    init: dict[int, Tensor] | None = None,
    deadline: float = math.inf,
) -> tuple[Tensor, dict[int, Tensor]]:
    """alpha-CROWN on the final margins: projected Adam ascent on the lower ReLU slopes.

    Slopes are separate per example, per margin and per neuron, start at CROWN's (or
    ``init``), are clipped to [0, 1] after every step, and the best bound seen for every
    (example, margin) is kept together with its slopes, so the result is never below
    CROWN's bound with the same intermediate bounds (step 0 *is* CROWN's bound).
    ``deadline`` (``time.perf_counter()``) ends the optimisation early.
    Returns (margins (N, K) with +inf in column y, the best slopes).
    """
    dtype = bounds[0][0].dtype
    pset = pset.to(dtype)
    k = net.n_classes
    spec = margin_spec(labels, k, dtype)
    start = {i: t.to(dtype) for i, t in (init or initial_alpha(net, bounds, k)).items()}
    root = net.graph[-1].index
    live = bounds
    bounds = {i: (lo.detach(), hi.detach()) for i, (lo, hi) in bounds.items()}
    best, best_alpha = optimise_slopes(net, pset, root, spec, bounds, start, steps=steps, lr=lr, deadline=deadline)
    if torch.is_grad_enabled() and any(lo.requires_grad or hi.requires_grad for lo, hi in live.values()):
        # the same bound at the best slopes, differentiable in the network's parameters
        best = backward_bound(net, pset, root, spec, live, rule="alpha", alpha=best_alpha)
    return _finish(best, labels), best_alpha
