"""PGD on a disjunct's violation max_i (C_i y - d_i), from many starts at once, in float64.

Each start has its own disjunct and its own box (the input set's box, or an input-split
sub-box); points are projected onto the input set (``project``) and clipped to their box.
Candidates go to the caller's ``confirm``: nothing is reported that it does not accept.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import Tensor

from ..network import Network
from .spec import Rows


def disjunct_violation(rows: Rows, y: Tensor, which: Tensor) -> Tensor:
    """max over the rows of disjunct which[b] of C y - d, for outputs y (B, n_out): (B,)."""
    v = y @ rows.C.T - rows.d  # (B, R)
    mine = rows.owner.unsqueeze(0) == which.unsqueeze(1)
    return torch.where(mine, v, torch.full_like(v, -math.inf)).amax(1)


def pgd(
    net: Network,
    project: Callable[[Tensor], Tensor],
    lo: Tensor,
    hi: Tensor,
    starts: Tensor,
    which: Tensor,
    rows: Rows,
    confirm: Callable[[Tensor], tuple[Tensor, int] | None],
    *,
    steps: int,
    deadline: float = math.inf,
) -> tuple[tuple[Tensor, int] | None, Tensor]:
    """Sign-gradient descent from ``starts`` (M, *input_shape) on the violation of disjunct which[m],
    inside [lo, hi] (M, *input_shape) and the set (``project``). Returns (a confirmed counterexample
    or None, the best violation per start)."""
    x = torch.maximum(torch.minimum(project(starts.to(torch.float64)), hi), lo)
    width = (hi - lo).clamp(min=0)
    best_v = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    best_x = x.clone()
    for t in range(steps + 1):
        z = x.clone().requires_grad_(True)
        with torch.enable_grad():
            v = disjunct_violation(rows, net.forward(z).reshape(z.shape[0], -1), which)
            g = torch.autograd.grad(v.sum(), z)[0] if t < steps else None
        with torch.no_grad():
            better = v.detach() < best_v
            best_v = torch.where(better, v.detach(), best_v)
            best_x[better] = x[better]
        if g is None or bool((best_v <= 0).any()) or time.perf_counter() > deadline:
            break
        step = 1.25 * width / max(1, steps) * (0.5 if t > 0.75 * steps else 1.0)
        with torch.no_grad():
            x = torch.maximum(torch.minimum(project(x - step * g.sign()), hi), lo)
    found = check_points(best_x, best_v, confirm)
    return found, best_v


def check_points(x: Tensor, v: Tensor, confirm: Callable[[Tensor], tuple[Tensor, int] | None],
                 limit: int = 8) -> tuple[Tensor, int] | None:
    """confirm() the most violating points whose violation is (nearly) non-positive."""
    order = torch.argsort(v)
    for i in order[:limit].tolist():
        if not float(v[i]) <= 1e-9 * (1.0 + abs(float(v[i]))):
            break
        found = confirm(x[i : i + 1].detach().clone())
        if found is not None:
            return found
    return None


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


def set_projector(pset: Any, m: int) -> Callable[[Tensor], Tensor]:
    """project() of the single-example set, applied to M points at once."""
    if hasattr(pset, "eps"):
        many = pset.select([0] * m)
        return lambda x: many.project(x)  # type: ignore[no-any-return,unused-ignore]
    return lambda x: pset.project(x)  # type: ignore[no-any-return,unused-ignore]


def timed_out(deadline: float) -> bool:
    return time.perf_counter() >= deadline
