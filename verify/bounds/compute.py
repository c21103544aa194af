"""compute_bounds: one entry point for every bound method."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import DataError, SpecError
from ..network import Network
from ..spec import LpBall
from .backward import check_supported
from .final import alpha_margins, interval_margins, linear_margins
from .intermediate import linear_intermediate
from .interval import interval_bounds
from .types import METHODS, BoundResult, Method, NodeBounds


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
) -> BoundResult:
    """Lower bounds on every margin f_y - f_j over the set (N, K), +inf in column y.

    Intermediate bounds: ``ibp`` interval; ``kw`` and ``crown`` layer-by-layer backward
    bounds with their own relaxation; ``alpha-crown`` CROWN's (only the final bound is
    optimised). If ``intermediate`` is given it is used instead (intersected with interval
    bounds, which also fill in any missing node).

    The kw / crown / alpha-crown margins are the maximum of the method's bound and the
    interval bound with the same intermediate bounds: both are sound, so the maximum is,
    and a linear bound can be looser than the interval one on some networks. Every method
    is differentiable with respect to the network's parameters (for training regularisers).
    Method ``lp`` solves the MIP's model relaxed and lives with it: :func:`verify.mip.lp_bound.lp_bounds`.
    """
    if method not in METHODS:
        raise SpecError(f"unknown bound method {method!r}: use one of {', '.join(METHODS)}")
    if method == "lp":
        raise SpecError("method lp is the MIP's relaxation: verify.mip.lp_bound.lp_bounds")
    y = check_labels(net, pset, labels)
    if method != "ibp":
        check_supported(net, method)
    pset = pset.to(dtype)
    if intermediate is not None:
        bounds = interval_bounds(net, pset, dtype=dtype, start=intermediate)
    elif method == "ibp":
        bounds = interval_bounds(net, pset, dtype=dtype)
    else:
        bounds = linear_intermediate(net, pset, rule="kw" if method == "kw" else "crown", dtype=dtype)
    ibp = interval_margins(net, bounds, y)
    if method == "ibp":
        return BoundResult(ibp, bounds, method)
    if method == "kw" or method == "crown":  # narrows method to a Rule (`in` narrows only on newer mypy)
        lin = linear_margins(net, pset, y, bounds, rule=method)
    else:
        lin, _ = alpha_margins(net, pset, y, bounds, steps=alpha_steps, lr=alpha_lr)
    return BoundResult(torch.maximum(lin, ibp), bounds, method)
