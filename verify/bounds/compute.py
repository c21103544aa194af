"""compute_bounds: one entry point for every bound method."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..errors import DataError, SpecError
from ..network import Network
from ..spec import LpBall
from .backward import check_supported, margin_spec
from .final import _finish, alpha_rows, interval_rows, linear_rows
from .intermediate import alpha_intermediate, linear_intermediate
from .interval import interval_bounds
from .types import METHODS, BoundResult, Method, NodeBounds

# alpha-CROWN's steps on the intermediate bounds. Measured on the zoo's KW CNN (first 20 MNIST points,
# Linf 0.1, one thread, final margins 20 steps): mean margin bound 4.2729 with CROWN's intermediate
# bounds, 4.2933 / 4.2984 / 4.2988 / 4.2990 with 3 / 5 / 10 / 20 steps on them (auto_LiRPA 0.7.1's
# alpha-CROWN, 20 iterations: 4.2982), at 1.8 / 2.0 / 2.4 / 3.4 s against auto_LiRPA's 31.4 s
ALPHA_INTERMEDIATE_STEPS = 10


def check_labels(net: Network, pset: LpBall, labels: Tensor) -> Tensor:
    y = (labels if isinstance(labels, Tensor) else torch.as_tensor(labels, device="cpu")).reshape(-1)
    if y.numel() != pset.n:
        raise DataError(f"{y.numel()} labels for {pset.n} examples")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise DataError("labels must be integers")
    y = y.to(torch.long)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= net.n_classes):
        raise DataError(f"labels must lie in [0, {net.n_classes - 1}], got {int(y.min())}..{int(y.max())}")
    return y.to(pset.center.device)


def compute_bounds(
    net: Network,
    pset: LpBall,
    labels: Tensor,
    *,
    method: Method,
    dtype: torch.dtype = torch.float32,
    intermediate: NodeBounds | None = None,
    alpha_steps: int = 20,
    alpha_lr: float = 0.25,
    alpha_intermediate_steps: int = ALPHA_INTERMEDIATE_STEPS,
) -> BoundResult:
    """Lower bounds on every margin f_y - f_j over the set (N, K), +inf in column y.

    Intermediate bounds: ``ibp`` interval; ``kw`` and ``crown`` layer-by-layer backward
    bounds with their own relaxation; ``alpha-crown`` CROWN's, with the neurons they leave
    unstable then bounded with optimised slopes of their own (``alpha_intermediate_steps``
    steps; 0: CROWN's alone) -- as auto_LiRPA's alpha-CROWN optimises its intermediate layers
    -- and the final margins optimised for ``alpha_steps``. If ``intermediate`` is given it is
    used instead (intersected with interval bounds, which also fill in any missing node).

    The kw / crown / alpha-crown margins are the maximum of the method's bound and the
    interval bound with the same intermediate bounds: both are sound, so the maximum is,
    and a linear bound can be looser than the interval one on some networks. Every method
    is differentiable with respect to the network's parameters (for training regularisers;
    alpha-crown through CROWN's bound and its final slopes' bound, not through the optimised
    intermediate bounds, which are detached).
    Method ``lp`` solves the MIP's model relaxed and lives with it: :func:`verify.mip.lp_bound.lp_bounds`.
    """
    if method not in METHODS:
        raise SpecError(f"unknown bound method {method!r}: use one of {', '.join(METHODS)}")
    if method == "lp":
        raise SpecError("method lp is the MIP's relaxation: verify.mip.lp_bound.lp_bounds")
    y = check_labels(net, pset, labels)
    rows, bounds = compute_rows(net, pset, margin_spec(y, net.n_classes, dtype), method=method, dtype=dtype,
                                intermediate=intermediate, alpha_steps=alpha_steps, alpha_lr=alpha_lr,
                                alpha_intermediate_steps=alpha_intermediate_steps)
    return BoundResult(_finish(rows, y), bounds, method)


def compute_rows(
    net: Network,
    pset: LpBall,
    spec: Tensor,
    *,
    method: Literal["ibp", "kw", "crown", "alpha-crown"],
    dtype: torch.dtype = torch.float32,
    intermediate: NodeBounds | None = None,
    alpha_steps: int = 20,
    alpha_lr: float = 0.25,
    alpha_intermediate_steps: int = ALPHA_INTERMEDIATE_STEPS,
) -> tuple[Tensor, NodeBounds]:
    """:func:`compute_bounds` on any rows: lower bounds (N, R) on spec[n, r] . f(x) over the set
    (spec (N, R, n_outputs)), and the intermediate bounds used."""
    if method != "ibp":
        check_supported(net, method)
    pset = pset.to(dtype)
    spec = spec.to(dtype)
    if intermediate is not None:
        bounds = interval_bounds(net, pset, dtype=dtype, start=intermediate)
    elif method == "ibp":
        bounds = interval_bounds(net, pset, dtype=dtype)
    else:
        bounds = linear_intermediate(net, pset, rule="kw" if method == "kw" else "crown", dtype=dtype)
    if method == "kw" or method == "crown":  # narrows method to a Rule (`in` narrows only on newer mypy)
        lin = linear_rows(net, pset, spec, bounds, rule=method)
    elif method == "alpha-crown":
        crown = None
        if intermediate is None and alpha_intermediate_steps > 0:
            # CROWN's bound first: with other intermediate bounds CROWN's slopes (alpha's start) can
            # give less (the bound is not monotone in them), and alpha-CROWN is never below CROWN
            crown = linear_rows(net, pset, spec, bounds, rule="crown")
            bounds = alpha_intermediate(net, pset, bounds, steps=alpha_intermediate_steps, lr=alpha_lr)
        lin, _ = alpha_rows(net, pset, spec, bounds, steps=alpha_steps, lr=alpha_lr)
        lin = lin if crown is None else torch.maximum(lin, crown)
    ibp = interval_rows(net, bounds, spec)
    if method == "ibp":
        return ibp, bounds
    return torch.maximum(lin, ibp), bounds
