"""Linear relaxations of ReLU from bounds on its input.

For z = relu(x) with l <= x <= u the relaxation is  lam_lo * x <= z <= lam_up * x + mu_up.
Stable neurons are exact (identity or zero). For an unstable neuron (l < 0 < u) the upper
line is the chord u / (u - l) * (x - l); the lower slope is the rule's:

* ``kw``    u / (u - l), parallel to the chord: Wong & Kolter's dual bound (= Fast-Lin);
* ``crown`` 1 if u > -l else 0 (the adaptive choice of CROWN);
* ``alpha`` an optimisable slope in [0, 1] (alpha-CROWN); any value there is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Rule = Literal["kw", "crown", "alpha"]


@dataclass(frozen=True)
class ReluRelaxation:
    lam_lo: Tensor  # (B, *shape) lower slope (the rule's default for unstable neurons)
    lam_up: Tensor  # (B, *shape)
    mu_up: Tensor  # (B, *shape) upper intercept
    unstable: Tensor  # bool (B, *shape)


def relu_relaxation(lo: Tensor, hi: Tensor, rule: Rule) -> ReluRelaxation:
    unstable = (lo < 0) & (hi > 0)
    active = lo >= 0
    # the chord; denominators only matter where unstable (u - l > 0 there)
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    chord = torch.where(unstable, hi / width, active.to(hi.dtype))
    # the upper line must lie above relu at both ends for the *rounded* slope: lam l + mu >= 0 and
    # lam u + mu >= u; each candidate carries at most two roundings, so 4 ulps of margin make it
    # rigorous (docs/soundness.md); exact arithmetic would give -chord * lo for both
    tight = torch.maximum(-chord * lo, hi * (1 - chord)) * (1 + 4 * torch.finfo(hi.dtype).eps)
    mu_up = torch.where(unstable, tight, torch.zeros_like(lo))
    if rule == "kw":
        lam_lo = chord
    else:  # crown, and the starting point of alpha
        adaptive = (hi > -lo).to(hi.dtype)
        lam_lo = torch.where(unstable, adaptive, active.to(hi.dtype))
    return ReluRelaxation(lam_lo, chord, mu_up, unstable)


def wide_sum(t: Tensor, dim: int) -> Tensor:
    """Sum over ``dim`` accumulated in float64: a float32 term meets two roundings (the cast
    back and, negligibly, the float64 sum) instead of up to n, which keeps the rounding
    budget of long reductions (ReLU intercepts, biases over a whole layer) small."""
    if t.dtype != torch.float32:
        return t.sum(dim)
    return t.sum(dim, dtype=torch.float64).to(t.dtype)


def flat_sum(t: Tensor) -> Tensor:
    """(B, S, ...) -> (B, S): the sum over everything after the first two dimensions (wide_sum)."""
    return wide_sum(t.reshape(t.shape[0], t.shape[1], -1), -1)


def through_relu(a: Tensor, rel: ReluRelaxation, alpha: Tensor | None) -> tuple[Tensor, Tensor]:
    """Coefficients on the ReLU's input, and the constant, for a lower bound of <a, z> (the backward
    rule every bound engine shares: the generic one, the receptive-field and the conv-stem code)."""
    lam_lo = rel.lam_lo.unsqueeze(1)
    if alpha is not None:
        lam_lo = torch.where(rel.unstable.unsqueeze(1), alpha.clamp(0.0, 1.0), lam_lo)
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    a_in = pos * lam_lo + neg * rel.lam_up.unsqueeze(1)
    return a_in, flat_sum(neg * rel.mu_up.unsqueeze(1))
