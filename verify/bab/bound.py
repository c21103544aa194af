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

    def min_linear(self, a: Tensor) -> Tensor:
        self.last = a.detach()
        out: Tensor = self.inner.min_linear(a)
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
) -> Bounded:
    """Optimise alpha / beta / theta for ``steps`` Adam steps; every evaluation is a sound bound.

    ``signs`` (ReLU input node -> (B, *shape), +1 / -1 / 0) are the split decisions; ``beta`` has one
    entry per such node. ``weights`` (B, R') pick the rows whose sum is maximised (the others are
    still bounded, at their starting parameters' quality). With ``scores`` a last pass takes the
    gradient of the weighted bound w.r.t. the upper intercepts of the relaxations: -grad * mu is
    BaBSR's estimate of what splitting each unstable neuron gains.
    """
    last_node = net.graph[-1].index
    out_shape = net.graph[-1].shape
    rels = relaxations(net, bounds)
    alpha = {i: t.detach().to(torch.float64).clone().clamp_(0, 1) for i, t in alpha.items()}
    beta = {i: t.detach().to(torch.float64).clone().clamp_(min=0) for i, t in beta.items() if i in signs}
    theta = theta.detach().clone()
    sgn = {i: s.to(torch.float64).unsqueeze(1) for i, s in signs.items()}
    params: list[dict[str, Any]] = []
    if steps > 0:
        a_list = [t.requires_grad_() for t in alpha.values()]
        if a_list:
            params.append({"params": a_list, "lr": lr_alpha})
        b_list = [t.requires_grad_() for t in beta.values()]
        if theta.numel():
            b_list.append(theta.requires_grad_())
        if b_list:
            params.append({"params": b_list, "lr": lr_beta})
    opt = torch.optim.Adam(params) if params else None
    rec = Recorder(pset)

    def evaluate(rels_: dict[int, ReluRelaxation]) -> Tensor:
        A, d = rows.spec(theta)
        A = A.reshape(A.shape[0], A.shape[1], *out_shape)
        extra = {i: -sgn[i] * beta[i].clamp(min=0) for i in beta}
        val = backward_bound(net, cast(LpBall, rec), last_node, A, {}, rule="alpha", alpha=alpha,
                             relaxations=rels_, extra=extra or None)
        return torch.nan_to_num(val - d, nan=-math.inf)

    best: Tensor | None = None
    best_alpha = {i: t.detach().clone() for i, t in alpha.items()}
    best_beta = {i: t.detach().clone() for i, t in beta.items()}
    best_theta = theta.detach().clone()
    for it in range(steps + 1):
        final = opt is None or it == steps or time.perf_counter() >= deadline
        with torch.set_grad_enabled(not final):
            val = evaluate(rels)
        with torch.no_grad():
            cur = val.detach()
            better = torch.ones_like(cur, dtype=torch.bool) if best is None else cur > best
            best = cur if best is None else torch.where(better, cur, best)
            for i, t in alpha.items():
                m = better.reshape(*better.shape, *([1] * (t.ndim - 2)))
                best_alpha[i] = torch.where(m, t.detach(), best_alpha[i])
            for i, t in beta.items():
                m = better.reshape(*better.shape, *([1] * (t.ndim - 2)))
                best_beta[i] = torch.where(m, t.detach().clamp(min=0), best_beta[i])
            if theta.numel():
                nr = rows.n_rows
                m = better[:, nr:].unsqueeze(-1)
                best_theta = torch.where(m, theta.detach(), best_theta)
        if final:
            break
        assert opt is not None
        loss = -(torch.where(weights > 0, val, torch.zeros_like(val)) * weights).sum()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        with torch.no_grad():
            for t in alpha.values():
                t.clamp_(0.0, 1.0)
            for t in beta.values():
                t.clamp_(min=0.0)
    assert best is not None
    out_scores: dict[int, Tensor] = {}
    alpha, beta, theta = best_alpha, best_beta, best_theta
    if scores:
        live = {i: ReluRelaxation(r.lam_lo, r.lam_up, r.mu_up.clone().requires_grad_(), r.unstable) for i, r in rels.items()}
        with torch.enable_grad():
            val = evaluate(live)
            w = torch.where(torch.isfinite(val), weights, torch.zeros_like(weights))
            obj = (torch.nan_to_num(val, neginf=0.0) * w).sum()
            mus = [r.mu_up for r in live.values()]
            grads = torch.autograd.grad(obj, mus, allow_unused=True)
        for (i, r), g in zip(live.items(), grads):
            gain = torch.zeros_like(r.mu_up) if g is None else (-g * r.mu_up.detach()).clamp(min=0)
            out_scores[i] = torch.where(r.unstable, gain, torch.full_like(gain, -1.0))
        best = torch.maximum(best, val.detach())
    else:
        with torch.no_grad():
            best = torch.maximum(best, evaluate(rels))
    return Bounded(best, best_alpha, best_beta, best_theta, rec.last, out_scores)
