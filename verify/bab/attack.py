"""PGD on a disjunct's violation max_i (C_i y - d_i), from many starts at once, in float64.

Each start has its own disjunct and its own set (the input set, or an input-split sub-box of it);
the loop is :func:`verify.attacks.descend` (the one projected-gradient loop, :func:`verify.attacks.ascend`).
Candidates go to the caller's ``confirm``: nothing is reported that it does not accept.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..attacks import confirm_best, descend
from ..network import Network
from .spec import Rows


def disjunct_violation(rows: Rows, y: Tensor, which: Tensor) -> Tensor:
    """max over the rows of disjunct which[b] of C y - d, for outputs y (B, n_out): (B,)."""
    v = y @ rows.C.T - rows.d  # (B, R)
    mine = rows.owner.unsqueeze(0) == which.unsqueeze(1)
    return torch.where(mine, v, torch.full_like(v, -math.inf)).amax(1)


def pgd(
    net: Network,
    pset: Any,
    starts: Tensor,
    which: Tensor,
    rows: Rows,
    confirm: Callable[[Tensor], tuple[Tensor, int] | None],
    *,
    steps: int,
    deadline: float = math.inf,
) -> tuple[Tensor, int] | None:
    """Sign-gradient descent (:func:`verify.attacks.descend`) from ``starts`` (M, *input_shape) on the
    violation of disjunct which[m], inside ``pset`` (M rows of the input set, or boxes: the input set's, or
    input-split sub-boxes of it, (M, *input_shape)). Returns a confirmed counterexample or None."""
    lo, hi = (t.to(torch.float64) for t in pset.box())
    x0 = torch.maximum(torch.minimum(pset.project(starts.to(torch.float64)), hi), lo)
    best_x, best_v = descend(net, pset, x0, lambda y: disjunct_violation(rows, y, which),
                             (hi - lo).clamp(min=0).expand_as(x0), steps=steps, deadline=deadline)
    return confirm_best(best_x, best_v, confirm, limit=8)


def linear_minimiser(pset: Any, a: Tensor) -> Tensor:
    """A point of the (single-example) set minimising <a[m], x> (or near it), for each row a (M, *input_shape)."""
    m = a.shape[0]
    lo, hi = (t.to(torch.float64) for t in pset.box())
    lo, hi = lo.expand(m, *lo.shape[1:]), hi.expand(m, *hi.shape[1:])
    p = getattr(pset, "p", math.inf)
    if math.isinf(p):
        return torch.where(a > 0, lo, hi)
    c = pset.center.to(torch.float64).expand(m, *lo.shape[1:])
    eps = float(pset.eps[0])
    flat = a.reshape(m, -1)
    if p == 2.0:
        step = flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-30) * eps
    else:
        step = torch.zeros_like(flat)
        j = flat.abs().argmax(1)
        step[torch.arange(m), j] = flat[torch.arange(m), j].sign() * eps
    x = c - step.reshape(c.shape)
    return torch.maximum(torch.minimum(x, hi), lo)
