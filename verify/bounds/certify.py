"""The certification decision from bounds, rechecked in float64."""

from __future__ import annotations

import torch
from torch import Tensor

from ..network import Network
from ..spec import LpBall
from .compute import check_labels, compute_bounds
from .final import alpha_margins, interval_margins
from .intermediate import linear_intermediate
from .types import CertifiedBounds, Method

# A certificate needs the float64 margin bound to exceed SAFETY_REL * max(1, max |logit at the
# centre|). The float64 bound is computed with a few thousand to a few million roundings of
# relative size 2^-53 ~ 1.1e-16 on terms of logit scale, so its rounding error is far below
# 1e-9 of that scale; 1e-6 leaves three orders of magnitude of room and is still negligible
# against the margins that matter (>= 1e-3 of the logit scale in practice).
SAFETY_REL = 1e-6


def safety_threshold(net: Network, pset: LpBall) -> Tensor:
    """Per example: the float64 margin bound must be strictly above this (see SAFETY_REL)."""
    with torch.no_grad():
        logits = net.forward(pset.center.to(torch.float64))
    scale = logits.abs().amax(1).clamp(min=1.0)
    return SAFETY_REL * scale


def certify_with_bounds(
    net: Network,
    pset: LpBall,
    labels: Tensor,
    *,
    method: Method,
    alpha_steps: int = 20,
    alpha_lr: float = 0.25,
) -> CertifiedBounds:
    """Which examples a bound method certifies, decided in float64.

    Screening runs in float32 (``lp``: float64 throughout). Every example whose float32
    margin bound is positive is recomputed from scratch in float64 -- intermediate and
    final bounds -- (alpha-crown: float64 CROWN intermediate bounds and the final bound at
    the slopes found in float32, which are valid slopes whatever precision found them),
    and is certified only if that float64 bound exceeds
    ``SAFETY_REL * max(1, max_j |f_j(centre)|)`` (relative to the logit scale, SAFETY_REL = 1e-6).
    ``margin_lb`` is the float64 bound for rechecked examples, the screening bound otherwise.
    """
    y = check_labels(net, pset, labels)
    screen_dtype = torch.float64 if method == "lp" else torch.float32
    best_alpha: dict[int, Tensor] | None = None
    if method == "alpha-crown":
        p32 = pset.to(torch.float32)
        b32 = linear_intermediate(net, p32, rule="crown", dtype=torch.float32)
        ibp32 = interval_margins(net, b32, y)
        lin32, best_alpha = alpha_margins(net, p32, y, b32, steps=alpha_steps, lr=alpha_lr)
        screen = torch.maximum(lin32, ibp32)
    else:
        screen = compute_bounds(net, pset, y, method=method, dtype=screen_dtype).margin_lb
    margin = screen.to(torch.float64).amin(1) if screen.shape[1] else torch.full((pset.n,), float("inf"), dtype=torch.float64, device=screen.device)
    cand = (margin > 0).nonzero().reshape(-1)
    certified = torch.zeros(pset.n, dtype=torch.bool, device=margin.device)
    if cand.numel() == 0:
        return CertifiedBounds(certified, margin, method)
    sub = pset.select(cand).to(torch.float64)
    ys = y[cand]
    if method == "lp":
        m64 = screen[cand].to(torch.float64)
    elif method == "alpha-crown":
        assert best_alpha is not None
        b64 = linear_intermediate(net, sub, rule="crown", dtype=torch.float64)
        init = {i: t[cand].to(torch.float64) for i, t in best_alpha.items()}
        lin64, _ = alpha_margins(net, sub, ys, b64, steps=0, init=init)
        m64 = torch.maximum(lin64, interval_margins(net, b64, ys))
    else:
        m64 = compute_bounds(net, sub, ys, method=method, dtype=torch.float64).margin_lb
    m64 = m64.amin(1)
    margin[cand] = m64
    certified[cand] = m64 > safety_threshold(net, sub)
    return CertifiedBounds(certified, margin, method)
