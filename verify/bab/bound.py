"""Batched alpha-beta-CROWN bounds of the spec rows on B subdomains at once.

For a subdomain with split constraints s_j x_j >= 0 (s_j = +1: ReLU input j active, -1:
inactive) the bound of a row g(x) is the Lagrangian

    min over the relaxed set of  g(x) - sum_j beta_j s_j x_j,     beta_j >= 0,

which lower-bounds g on the subdomain for every beta >= 0 (there s_j x_j >= 0) and every alpha
in [0, 1] (beta-CROWN). The terms -beta_j s_j x_j enter the backward pass as ``extra``
coefficients on the ReLU inputs (:func:`verify.bounds.backward.backward_bound`). alpha, beta and
the combination weights of multi-row disjuncts (:mod:`verify.bab.spec`) are optimised with Adam,
one copy per (subdomain, row); the best bound seen per row is kept with its parameters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from ..bounds.adam import Adam, keep_best
from ..bounds.backward import backward_bound
from ..bounds.relax import ReluRelaxation, relu_relaxation
from ..bounds.types import NodeBounds
from ..network import Network
from ..spec import LpBall
from .spec import Rows


class Recorder:
    """An input set that remembers the last coefficients its ``min_linear`` was asked about
    (the backward pass's coefficients on the input: the attack's and input splitting's guide)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: Tensor | None = None
        self._boxes: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def min_linear(self, a: Tensor) -> Tensor:
        self.last = a.detach()
        inner = self.inner
        if isinstance(inner, LpBall) and math.isinf(inner.p):
            # the box's minimum as two batched mat-vec products (the same float64 products and sums as
            # LpBall.min_linear's clamp-multiply-sum, without its (N, K, n) temporaries)
            n, k = a.shape[:2]
            box = self._boxes.get(a.dtype)
            if box is None:
                lo, hi = inner.box()
                box = self._boxes[a.dtype] = (lo.reshape(lo.shape[0], -1, 1).to(a.dtype), hi.reshape(hi.shape[0], -1, 1).to(a.dtype))
            if box[0].shape[0] == n:
                a2 = a.reshape(n, k, -1)
                return (torch.bmm(a2.clamp(min=0), box[0]) + torch.bmm(a2.clamp(max=0), box[1])).squeeze(-1)
        out: Tensor = inner.min_linear(a)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Bounded:
    lb: Tensor  # (B, R') best lower bound of each row minus d
    alpha: dict[int, Tensor]  # ReLU node -> (B, R', *shape)
    beta: dict[int, Tensor]  # ReLU input node -> (B, R', *shape)
    theta: Tensor  # (B, K2, M)
    a0: Tensor | None  # (B, R', *input_shape): input coefficients at the best parameters
    scores: dict[int, Tensor]  # ReLU input node -> (B, *shape): estimated gain of splitting (BaBSR)


def relaxations(net: Network, bounds: NodeBounds) -> dict[int, ReluRelaxation]:
    """CROWN's relaxation of every ReLU from the bounds of its input (batched)."""
    return {n.inputs[0]: relu_relaxation(*bounds[n.inputs[0]], "crown") for n in net.relu_nodes}


def bound_rows(
    net: Network,
    pset: Any,  # LpBall or Box with B examples (the same set repeated, or B sub-boxes)
    rows: Rows,
    bounds: NodeBounds,
    alpha: dict[int, Tensor],
    beta: dict[int, Tensor],
    signs: dict[int, Tensor],
    theta: Tensor,
    weights: Tensor,
    *,
    steps: int,
    lr_alpha: float,
    lr_beta: float,
    deadline: float = math.inf,
    scores: bool = True,
    step_dtype: torch.dtype = torch.float64,
    estimate: bool = False,
) -> Bounded:
    """Optimise alpha / beta / theta for ``steps`` Adam steps, then bound every row in float64.

    ``signs`` (ReLU input node -> (B, *shape), +1 / -1 / 0) are the split decisions; ``beta`` has one
    entry per such node. ``weights`` (B, R') pick the rows whose sum is maximised (the others are
    still bounded, at their starting parameters' quality). The steps run in ``step_dtype`` (float32
    halves their cost) and only choose parameters: per (subdomain, row) the best seen; the returned
    bound is one float64 evaluation at those parameters (with ``estimate``, ``scores`` off: a float32 evaluation,
    only an estimate for choosing splits, never a bound) (alpha clipped to [0, 1], beta >= 0: sound
    whatever they are). With ``scores`` that evaluation also takes the gradient of the weighted
    bound w.r.t. the upper intercepts of the relaxations: -grad * mu is BaBSR's estimate of what
    splitting each unstable neuron gains.
    """
    last_node = net.graph[-1].index
    out_shape = net.graph[-1].shape
    rels64 = relaxations(net, bounds)
    rec = Recorder(pset)

    def evaluate(dt: torch.dtype, rels_: dict[int, ReluRelaxation], al: dict[int, Tensor], be: dict[int, Tensor],
                 th: Tensor, sg: dict[int, Tensor]) -> Tensor:
        A, d = rows.spec(th)
        A = A.reshape(A.shape[0], A.shape[1], *out_shape).to(dt)
        extra = {i: -sg[i] * be[i].clamp(min=0) for i in be}
        val = backward_bound(net, cast(LpBall, rec), last_node, A, {}, rule="alpha", alpha=al,
                             relaxations=rels_, extra=extra or None)
        return torch.nan_to_num(val.to(torch.float64) - d, nan=-math.inf)

    dt = step_dtype
    alpha = {i: t.detach().to(dt).clone().clamp_(0, 1) for i, t in alpha.items()}
    beta = {i: t.detach().to(dt).clone().clamp_(min=0) for i, t in beta.items() if i in signs}
    theta = theta.detach().to(torch.float64).clone()
    best_alpha = {i: t.detach().clone() for i, t in alpha.items()}
    best_beta = {i: t.detach().clone() for i, t in beta.items()}
    best_theta = theta.detach().clone()
    groups: list[tuple[list[Tensor], float]] = []
    if steps > 0:
        a_list = [t.requires_grad_() for t in alpha.values()] if lr_alpha > 0 else []  # lr 0: alpha held, no gradient
        if a_list:
            groups.append((a_list, lr_alpha))
        b_list = [t.requires_grad_() for t in beta.values()]
        if theta.numel():
            b_list.append(theta.requires_grad_())
        if b_list:
            groups.append((b_list, lr_beta))
    if groups:
        opt = Adam(groups)
        rels = rels64 if dt == torch.float64 else {
            i: ReluRelaxation(r.lam_lo.to(dt), r.lam_up.to(dt), r.mu_up.to(dt), r.unstable) for i, r in rels64.items()}
        sgn = {i: s.to(dt).unsqueeze(1) for i, s in signs.items()}
        best: Tensor | None = None
        for it in range(steps):
            val = evaluate(dt, rels, alpha, beta, theta, sgn)
            with torch.no_grad():
                best, better = keep_best(best, val.detach(), (alpha, best_alpha),
                                         ({i: t.clamp(min=0) for i, t in beta.items()}, best_beta))
                if theta.numel():
                    m = better[:, rows.n_rows:].unsqueeze(-1)
                    best_theta = torch.where(m, theta.detach(), best_theta)
            if it == steps - 1 or time.perf_counter() >= deadline:
                break
            loss = -(torch.where(weights > 0, val, torch.zeros_like(val)) * weights).sum()
            opt.step(loss)
            with torch.no_grad():
                for t in alpha.values():
                    t.clamp_(0.0, 1.0)
                for t in beta.values():
                    t.clamp_(min=0.0)
    # the sound bound: float64 at the chosen parameters
    al64 = {i: t.to(torch.float64).clamp(0.0, 1.0) for i, t in best_alpha.items()}
    be64 = {i: t.to(torch.float64).clamp(min=0.0) for i, t in best_beta.items()}
    sg64 = {i: s.to(torch.float64).unsqueeze(1) for i, s in signs.items()}
    out_scores: dict[int, Tensor] = {}
    if scores:
        live = {i: ReluRelaxation(r.lam_lo, r.lam_up, r.mu_up.clone().requires_grad_(), r.unstable) for i, r in rels64.items()}
        with torch.enable_grad():
            val = evaluate(torch.float64, live, al64, be64, best_theta, sg64)
            w = torch.where(torch.isfinite(val), weights, torch.zeros_like(weights))
            obj = (torch.nan_to_num(val, neginf=0.0) * w).sum()
            mus = [r.mu_up for r in live.values()]
            grads = torch.autograd.grad(obj, mus, allow_unused=True) if obj.requires_grad else [None] * len(mus)
        for (i, r), g in zip(live.items(), grads):
            gain = torch.zeros_like(r.mu_up) if g is None else (-g * r.mu_up.detach()).clamp(min=0)
            out_scores[i] = torch.where(r.unstable, gain, torch.full_like(gain, -1.0))
        val = val.detach()
    elif estimate:
        # an estimate for choosing (branching), not a bound: float32 arithmetic, no soundness claim
        f32 = {i: ReluRelaxation(r.lam_lo.float(), r.lam_up.float(), r.mu_up.float(), r.unstable) for i, r in rels64.items()}
        with torch.no_grad():
            val = evaluate(torch.float32, f32, {i: t.float() for i, t in al64.items()}, {i: t.float() for i, t in be64.items()},
                           best_theta, {i: t.float() for i, t in sg64.items()})
    else:
        with torch.no_grad():
            val = evaluate(torch.float64, rels64, al64, be64, best_theta, sg64)
    return Bounded(val, al64, be64, best_theta, rec.last, out_scores)
