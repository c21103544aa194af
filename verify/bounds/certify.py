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
from .backward import check_supported, margin_spec
from .compute import ALPHA_INTERMEDIATE_STEPS, check_labels, compute_rows
from .final import alpha_rows, initial_alpha, interval_rows, linear_rows
from .intermediate import linear_intermediate
from .interval import interval_bounds
from .rounding import RoundingGuard, guard_applies, ieee_context, outward_ball
from .types import CertifiedBounds, Method, NodeBounds, RowBounds

# A float64 proof needs the bound on a row c . f - d to exceed SAFETY_REL * max(1, |c|_1 / 2 *
# max |logit at the centre|, |d|) (row_threshold; a margin row: max(1, max |logit|)). The float64
# bound is computed with a few thousand to a few million roundings of relative size 2^-53 ~ 1.1e-16
# on terms of logit scale, so its rounding error is far below 1e-9 of that scale; 1e-6 leaves three orders of magnitude of room and is still negligible
# against the margins that matter (>= 1e-3 of the logit scale in practice).
SAFETY_REL = 1e-6
# examples bounded together: every node's bounds, relaxations and slopes of a chunk are held at
# once (about 0.1 MB per example on the zoo's MNIST CNN, 1 MB with alpha-CROWN's slopes)
CERTIFY_CHUNK = 200
CERTIFY_CHUNK_ALPHA = 100  # alpha-CROWN also holds slopes, their best copy and Adam's moments per margin


def logit_scale(net: Network, pset: LpBall) -> Tensor:
    """Per example: max_j |f_j(centre)|, in float64."""
    with torch.no_grad():
        out = net.forward(pset.center.to(torch.float64))
    return out.reshape(out.shape[0], -1).abs().amax(1)


def safety_threshold(net: Network, pset: LpBall) -> Tensor:
    """Per example: the float64 margin bound must be strictly above this (see SAFETY_REL)."""
    return SAFETY_REL * logit_scale(net, pset).clamp(min=1.0)


def row_threshold(scale: Tensor, spec: Tensor, d: Tensor) -> Tensor:
    """(N, R): a float64 bound on the row spec[n, r] . f - d[n, r] must be strictly above
    SAFETY_REL * max(1, |c|_1 / 2 * scale[n], |d|) (scale: :func:`logit_scale`). |c|_1 / 2 * scale
    bounds |c . f| / 2 at the centre; for a margin row e_y - e_j it is the logit scale itself, so
    a margin's threshold is :func:`safety_threshold`. Rows with d = -inf (vacuous): 0."""
    dd = torch.where(torch.isneginf(d), torch.zeros_like(d), d.abs())
    one = torch.ones_like(dd)
    return SAFETY_REL * torch.maximum(torch.maximum(one, spec.abs().sum(-1) / 2 * scale.reshape(-1, 1)), dd)


def proven_rows(net: Network, pset: LpBall, spec: Tensor, d: Tensor, low: Tensor) -> Tensor:
    """(N, R): the decision on float64 row bounds ``low`` (on spec[n, r] . f - d[n, r]): proven when
    strictly above :func:`row_threshold`; rows with d = -inf are vacuous (proven)."""
    return (low > row_threshold(logit_scale(net, pset), spec, d)) | torch.isneginf(d)


def certify_with_bounds(
    net: Network,
    pset: LpBall,
    labels: Tensor,
    *,
    method: Method,
    alpha_steps: int = 20,
    alpha_lr: float = 0.25,
) -> CertifiedBounds:
    """Which examples a bound method certifies, soundly under rounding: :func:`certify_rows` on
    the margin rows e_y - e_j > 0 (row y vacuous), an example certified when all its rows are.
    ``margin_lb``: the least row bound (the bound that decided, or the screening bound).
    Method ``lp``: :func:`verify.mip.lp_bound.certify_with_method`.
    """
    if method == "lp":
        raise SpecError("method lp is the MIP's relaxation: verify.mip.lp_bound.certify_with_method")
    y = check_labels(net, pset, labels)
    spec = margin_spec(y, net.n_classes, torch.float64)
    d = torch.zeros(spec.shape[:2], dtype=torch.float64, device=spec.device)
    d[torch.arange(pset.n, device=d.device), y] = -math.inf
    rows = certify_rows(net, pset, spec, d, method=method, alpha_steps=alpha_steps, alpha_lr=alpha_lr)
    lower = rows.lower.amin(1) if rows.lower.shape[1] else torch.full((pset.n,), math.inf, dtype=torch.float64)
    return CertifiedBounds(rows.proven.all(1), lower, method)


def certify_rows(
    net: Network,
    pset: LpBall,
    spec: Tensor,
    d: Tensor,
    *,
    method: Literal["ibp", "kw", "crown", "alpha-crown"],
    float64: bool = False,
    alpha_steps: int = 20,
    alpha_lr: float = 0.25,
) -> RowBounds:
    """Which rows spec[n, r] . f(x) - d[n, r] > 0 hold over the whole set, soundly under rounding.

    ``spec`` (N, R, n_outputs), or (R, n_outputs) shared; ``d`` (N, R) or (R,); a row with
    d = -inf is vacuous (proven, bound +inf). Linf balls: one float32 pass whose every bound is
    widened by a rigorous a-priori bound on its rounding error (:mod:`verify.bounds.rounding`,
    docs/soundness.md); a row whose widened bound minus :meth:`RoundingGuard.row_error` exceeds
    d is proven. An example some row of which is not proven is recomputed from scratch in
    float64 -- intermediate and final bounds -- when its least row bound is within the largest
    allowance of zero (the question "are all rows proven?" of robustness; alpha-crown: float64
    CROWN intermediate bounds and the final bound at the slopes found in float32, which are
    valid slopes whatever precision found them; it optimises only the examples CROWN's bound
    leaves open); its rows are then decided by that bound alone, proven above
    :func:`row_threshold` (relative to the output scale, SAFETY_REL = 1e-6). L1 / L2 balls: the
    float32 pass screens and every example whose least row is positive is rechecked so.
    ``float64``: every example in float64 (no screen), and the float64 node bounds are returned
    (a single input set whose open rows go to the MIP, which needs them).
    ``lower``: per row the bound that decided (rigorous float32, float64) or the screening bound.
    """
    if spec.ndim == 2:
        spec = spec.expand(pset.n, *spec.shape)
    if d.ndim == 1:
        d = d.expand(pset.n, *d.shape)
    spec, d = spec.to(torch.float64), d.to(torch.float64)
    vacuous = torch.isneginf(d)
    if float64:
        sub = pset.to(torch.float64)
        m64, b64 = _rows64(net, sub, spec, method, None, alpha_lr, alpha_steps)
        low = m64 - d
        return RowBounds(low, proven_rows(net, sub, spec, d, low), method, b64)
    if not spec.shape[1]:
        return RowBounds(d.clone(), vacuous, method)
    chunk = CERTIFY_CHUNK_ALPHA if method == "alpha-crown" else CERTIFY_CHUNK
    if pset.n > chunk:  # examples are independent: bounded memory, whatever n
        parts = [certify_rows(net, pset.select(torch.arange(i, min(pset.n, i + chunk), device=pset.center.device)),
                              spec[i:i + chunk], d[i:i + chunk], method=method, alpha_steps=alpha_steps, alpha_lr=alpha_lr)
                 for i in range(0, pset.n, chunk)]
        return RowBounds(torch.cat([r.lower for r in parts]), torch.cat([r.proven for r in parts]), method)
    guarded = guard_applies(pset)
    p32 = outward_ball(pset) if guarded else pset.to(torch.float32)
    guard = RoundingGuard(net, torch.float32) if guarded else None
    with ieee_context() if guarded else contextlib.nullcontext():
        screen, err, best_alpha = _screen(net, p32, spec, d, method, guard, alpha_steps, alpha_lr)
    low = screen.to(torch.float64) - d
    if err is not None:
        sound = screen.to(torch.float64) - err
        # an overflow to +inf proves nothing; fl(s - err) > d implies s - err > d (rounding is monotone)
        proven = ((sound - d > 0) & torch.isfinite(sound)) | vacuous
        # near zero: the rounding allowance decided nothing, or the widened intermediate bounds
        # may have cost a certificate the float64 recheck would give (completeness, not soundness)
        recheck = ~proven.all(1) & (low.amin(1) > -err.amax(1))
        low = torch.where(proven, sound - d, low)
    else:
        proven = vacuous.clone()
        recheck = low.amin(1) > 0
    cand = recheck.nonzero().reshape(-1)
    if cand.numel() == 0:
        return RowBounds(low, proven, method)
    sub = pset.select(cand).to(torch.float64)
    alpha = None if best_alpha is None else {i: t[cand] for i, t in best_alpha.items()}
    m64, _ = _rows64(net, sub, spec[cand], method, alpha, alpha_lr, alpha_steps)
    low[cand] = m64 - d[cand]
    proven[cand] = proven_rows(net, sub, spec[cand], d[cand], low[cand])
    return RowBounds(low, proven, method)


def _rows64(net: Network, sub: LpBall, spec: Tensor, method: Literal["ibp", "kw", "crown", "alpha-crown"],
            alpha: dict[int, Tensor] | None, alpha_lr: float, alpha_steps: int) -> tuple[Tensor, NodeBounds]:
    """Float64 bounds on the rows from scratch; alpha-crown at the given slopes (``alpha``, found in
    float32), else with ``alpha_steps`` steps of its own."""
    if method == "alpha-crown" and alpha is not None:
        b64 = linear_intermediate(net, sub, rule="crown", dtype=torch.float64, alpha_steps=ALPHA_INTERMEDIATE_STEPS,
                                  alpha_lr=alpha_lr)
        init = {i: t.to(torch.float64) for i, t in alpha.items()}
        lin64, _ = alpha_rows(net, sub, spec, b64, steps=0, init=init)
        return torch.maximum(lin64, interval_rows(net, b64, spec)), b64
    return compute_rows(net, sub, spec, method=method, dtype=torch.float64, alpha_steps=alpha_steps, alpha_lr=alpha_lr)


def _screen(net: Network, p32: LpBall, spec: Tensor, d: Tensor, method: Literal["ibp", "kw", "crown", "alpha-crown"],
            guard: RoundingGuard | None, alpha_steps: int, alpha_lr: float
            ) -> tuple[Tensor, Tensor | None, dict[int, Tensor] | None]:
    """Float32 bounds on the rows (N, R), each widened node by node when ``guard`` is given, and
    the bound on their rounding error (N, R) (None without a guard)."""
    dtype = torch.float32
    if method == "ibp":
        bounds = interval_bounds(net, p32, dtype=dtype, guard=guard)
    else:
        check_supported(net, method)
        bounds = linear_intermediate(net, p32, rule="kw" if method == "kw" else "crown", dtype=dtype, guard=guard)
    ibp = interval_rows(net, bounds, spec)
    err = guard.row_error(spec) if guard is not None else None
    if method == "ibp":
        return ibp, err, None
    if method == "alpha-crown":
        return _alpha_where_needed(net, p32, spec, d, bounds, ibp, err, guard is not None, alpha_steps, alpha_lr)
    return torch.maximum(linear_rows(net, p32, spec, bounds, rule=method), ibp), err, None


def _alpha_where_needed(net: Network, p32: LpBall, spec: Tensor, d: Tensor, bounds: NodeBounds, ibp: Tensor,
                        err: Tensor | None, guarded: bool, steps: int, lr: float
                        ) -> tuple[Tensor, Tensor | None, dict[int, Tensor]]:
    """alpha-CROWN's rows, optimised only for the examples CROWN's bound (alpha's step 0)
    does not already prove: for the decision any sound bound > d will do, and on trained
    networks most examples are such (the optimisation is most of alpha-CROWN's cost). Those
    examples are bounded again from the input with alpha-CROWN's intermediate bounds, under a
    rounding guard of their own; each row keeps the better of the two rigorous bounds
    (bound minus its own rounding error), with that run's error."""
    crown = torch.maximum(linear_rows(net, p32, spec, bounds, rule="crown"), ibp)
    best_alpha = initial_alpha(net, bounds, spec.shape[1])
    zero = torch.zeros_like(crown, dtype=torch.float64)
    hard = ((crown.to(torch.float64) - (zero if err is None else err) - d).amin(1) <= 0).nonzero().reshape(-1)
    if hard.numel() == 0:
        return crown, err, best_alpha
    sub_set, sub_spec = p32.select(hard), spec[hard]
    guard = RoundingGuard(net, torch.float32) if guarded else None
    sub = linear_intermediate(net, sub_set, rule="crown", dtype=torch.float32, guard=guard,
                              alpha_steps=ALPHA_INTERMEDIATE_STEPS, alpha_lr=lr)
    lin, alpha = alpha_rows(net, sub_set, sub_spec, sub, steps=steps, lr=lr)
    new = torch.maximum(lin, interval_rows(net, sub, sub_spec))
    if err is None:
        take = new > crown[hard]
    else:
        new_err = guard.row_error(sub_spec) if guard is not None else zero[hard]
        take = new.to(torch.float64) - new_err > crown[hard].to(torch.float64) - err[hard]
        err[hard] = torch.where(take, new_err, err[hard])
    crown[hard] = torch.where(take, new, crown[hard])
    for i, t in alpha.items():
        best_alpha[i][hard] = t
    return crown, err, best_alpha
