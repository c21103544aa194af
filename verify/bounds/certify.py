"""The certification decision from bounds, sound under rounding."""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
from torch import Tensor

from ..errors import SpecError
from ..network import Network
from ..spec import LpBall
from .backward import check_supported
from .compute import ALPHA_INTERMEDIATE_STEPS, check_labels, compute_bounds
from .final import alpha_margins, initial_alpha, interval_margins, linear_margins
from .intermediate import linear_intermediate
from .interval import interval_bounds
from .rounding import RoundingGuard, guard_applies, ieee_context, outward_ball
from .types import CertifiedBounds, Method, NodeBounds

# A certificate needs the float64 margin bound to exceed SAFETY_REL * max(1, max |logit at the
# centre|). The float64 bound is computed with a few thousand to a few million roundings of
# relative size 2^-53 ~ 1.1e-16 on terms of logit scale, so its rounding error is far below
# 1e-9 of that scale; 1e-6 leaves three orders of magnitude of room and is still negligible
# against the margins that matter (>= 1e-3 of the logit scale in practice).
SAFETY_REL = 1e-6
# examples bounded together: every node's bounds, relaxations and slopes of a chunk are held at
# once (about 0.1 MB per example on the zoo's MNIST CNN, 1 MB with alpha-CROWN's slopes)
CERTIFY_CHUNK = 200
CERTIFY_CHUNK_ALPHA = 100  # alpha-CROWN also holds slopes, their best copy and Adam's moments per margin


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
    """Which examples a bound method certifies, soundly under rounding.

    Linf balls (methods ibp, kw, crown, alpha-crown): one float32 pass whose every bound is
    widened by a rigorous a-priori bound on its rounding error (:mod:`verify.bounds.rounding`,
    docs/soundness.md); an example whose widened margin bound is > 0 is certified. Only
    examples whose float32 margin is positive but too close to zero for that (or barely
    negative, where the widening may have cost them the certificate) are recomputed from
    scratch in float64 -- intermediate and final bounds -- (alpha-crown: float64 CROWN
    intermediate bounds and the final bound at the slopes found in float32, which are valid
    slopes whatever precision found them; it optimises only the examples CROWN's bound leaves
    uncertified), and are certified only if that float64 bound exceeds
    ``SAFETY_REL * max(1, max_j |f_j(centre)|)`` (relative to the logit scale, SAFETY_REL = 1e-6).
    L1 / L2 balls: the float32 pass screens and every positive example is rechecked so.
    ``margin_lb``: the bound that decided (rigorous float32, float64) or the screening bound.
    Method ``lp``: :func:`verify.mip.lp_bound.certify_with_method`.
    """
    if method == "lp":
        raise SpecError("method lp is the MIP's relaxation: verify.mip.lp_bound.certify_with_method")
    y = check_labels(net, pset, labels)
    chunk = CERTIFY_CHUNK_ALPHA if method == "alpha-crown" else CERTIFY_CHUNK
    if pset.n > chunk:  # examples are independent: bounded memory, whatever n
        parts = [certify_with_bounds(net, pset.select(torch.arange(i, min(pset.n, i + chunk), device=pset.center.device)),
                                     y[i : i + chunk], method=method, alpha_steps=alpha_steps, alpha_lr=alpha_lr)
                 for i in range(0, pset.n, chunk)]
        return CertifiedBounds(torch.cat([r.certified for r in parts]), torch.cat([r.margin_lb for r in parts]), method)
    guarded = guard_applies(pset)
    p32 = outward_ball(pset) if guarded else pset.to(torch.float32)
    guard = RoundingGuard(net, torch.float32) if guarded else None
    best_alpha: dict[int, Tensor] | None = None
    with ieee_context() if guarded else contextlib.nullcontext():
        screen, err, best_alpha = _screen(net, p32, y, method, guard, alpha_steps, alpha_lr)
    n = pset.n
    if not screen.shape[1]:
        dev = pset.center.device
        return CertifiedBounds(torch.ones(n, dtype=torch.bool, device=dev), torch.full((n,), math.inf, dtype=torch.float64, device=dev), method)
    margin = screen.to(torch.float64).amin(1)
    certified = torch.zeros(n, dtype=torch.bool, device=margin.device)
    if err is not None:
        sound = (screen.to(torch.float64) - err).amin(1)
        certified = (sound > 0) & torch.isfinite(sound)  # an overflow to +inf proves nothing
        # near zero: the rounding allowance decided nothing, or the widened intermediate bounds
        # may have cost a certificate the float64 recheck would give (completeness, not soundness)
        recheck = ~certified & (margin > -err.amax(1))
        margin = torch.where(certified, sound, margin)
    else:
        recheck = margin > 0
    cand = recheck.nonzero().reshape(-1)
    if cand.numel() == 0:
        return CertifiedBounds(certified, margin, method)
    sub = pset.select(cand).to(torch.float64)
    ys = y[cand]
    if method == "alpha-crown":
        assert best_alpha is not None
        b64 = linear_intermediate(net, sub, rule="crown", dtype=torch.float64, alpha_steps=ALPHA_INTERMEDIATE_STEPS,
                                  alpha_lr=alpha_lr)
        init = {i: t[cand].to(torch.float64) for i, t in best_alpha.items()}
        lin64, _ = alpha_margins(net, sub, ys, b64, steps=0, init=init)
        m64 = torch.maximum(lin64, interval_margins(net, b64, ys))
    else:
        m64 = compute_bounds(net, sub, ys, method=method, dtype=torch.float64).margin_lb
    m64 = m64.amin(1)
    margin[cand] = m64
    certified[cand] = m64 > safety_threshold(net, sub)
    return CertifiedBounds(certified, margin, method)


def _screen(net: Network, p32: LpBall, y: Tensor, method: Literal["ibp", "kw", "crown", "alpha-crown"],
            guard: RoundingGuard | None, alpha_steps: int, alpha_lr: float
            ) -> tuple[Tensor, Tensor | None, dict[int, Tensor] | None]:
    """Float32 margin bounds (N, K), each widened node by node when ``guard`` is given, and
    the bound on their rounding error (N, K) (None without a guard)."""
    dtype = torch.float32
    if method == "ibp":
        bounds = interval_bounds(net, p32, dtype=dtype, guard=guard)
    else:
        check_supported(net, method)
        bounds = linear_intermediate(net, p32, rule="kw" if method == "kw" else "crown", dtype=dtype, guard=guard)
    ibp = interval_margins(net, bounds, y)
    err = guard.margin_error(y) if guard is not None else None
    if method == "ibp":
        return ibp, err, None
    if method == "alpha-crown":
        return _alpha_where_needed(net, p32, y, bounds, ibp, err, guard is not None, alpha_steps, alpha_lr)
    return torch.maximum(linear_margins(net, p32, y, bounds, rule=method), ibp), err, None


def _alpha_where_needed(net: Network, p32: LpBall, y: Tensor, bounds: NodeBounds, ibp: Tensor, err: Tensor | None,
                        guarded: bool, steps: int, lr: float) -> tuple[Tensor, Tensor | None, dict[int, Tensor]]:
    """alpha-CROWN's margins, optimised only for the examples CROWN's bound (alpha's step 0)
    does not already certify: for the decision any sound bound > 0 will do, and on trained
    networks most examples are such (the optimisation is most of alpha-CROWN's cost). Those
    examples are bounded again from the input with alpha-CROWN's intermediate bounds, under a
    rounding guard of their own; each margin keeps the better of the two rigorous bounds
    (bound minus its own rounding error), with that run's error."""
    crown = torch.maximum(linear_margins(net, p32, y, bounds, rule="crown"), ibp)
    best_alpha = initial_alpha(net, bounds, net.n_classes)
    zero = torch.zeros_like(crown, dtype=torch.float64)
    hard = ((crown.to(torch.float64) - (zero if err is None else err)).amin(1) <= 0).nonzero().reshape(-1)
    if hard.numel() == 0:
        return crown, err, best_alpha
    sub_set, ys = p32.select(hard), y[hard]
    guard = RoundingGuard(net, torch.float32) if guarded else None
    sub = linear_intermediate(net, sub_set, rule="crown", dtype=torch.float32, guard=guard,
                              alpha_steps=ALPHA_INTERMEDIATE_STEPS, alpha_lr=lr)
    lin, alpha = alpha_margins(net, sub_set, ys, sub, steps=steps, lr=lr)
    new = torch.maximum(lin, interval_margins(net, sub, ys))
    if err is None:
        take = new > crown[hard]
    else:
        new_err = guard.margin_error(ys) if guard is not None else zero[hard]
        take = new.to(torch.float64) - new_err > crown[hard].to(torch.float64) - err[hard]
        err[hard] = torch.where(take, new_err, err[hard])
    crown[hard] = torch.where(take, new, crown[hard])
    for i, t in alpha.items():
        best_alpha[i][hard] = t
    return crown, err, best_alpha
