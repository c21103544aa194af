"""alpha-CROWN's optimiser: projected Adam ascent on ReLU lower slopes, best bound per spec row kept.

Shared by the final margins (:func:`verify.bounds.final.alpha_margins`) and the intermediate
bounds (:func:`verify.bounds.intermediate.alpha_intermediate`). Any slopes in [0, 1] give a
sound bound, so stopping early (``steps`` or ``deadline``) only costs tightness.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor

from ..network import Network
from ..spec import LpBall
from .adam import Adam
from .backward import backward_bound
from .convtail import reuse_matrices
from .relax import relu_relaxation
from .types import NodeBounds


def crown_slopes(net: Network, bounds: NodeBounds, n_specs: int, nodes: list[int] | None = None) -> dict[int, Tensor]:
    """CROWN's lower slopes, one copy per spec row: (N, S, *shape) per ReLU node (all, or ``nodes``)."""
    out: dict[int, Tensor] = {}
    for node in net.relu_nodes:
        if nodes is not None and node.index not in nodes:
            continue
        lam = relu_relaxation(*bounds[node.inputs[0]], "crown").lam_lo
        out[node.index] = lam.unsqueeze(1).expand(lam.shape[0], n_specs, *lam.shape[1:]).clone()
    return out


def keep_best(best: Tensor | None, cur: Tensor, *pairs: tuple[dict[int, Tensor], dict[int, Tensor]]
              ) -> tuple[Tensor, Tensor]:
    """The better of ``best`` and ``cur`` per (B, S) entry, and the mask where ``cur`` won; for each
    (params, kept) pair, ``kept[i]`` (B, S, ...) takes ``params[i]``'s values there (in the dict)."""
    better = torch.ones_like(cur, dtype=torch.bool) if best is None else cur > best
    for params, kept in pairs:
        for i, t in params.items():
            mask = better.reshape(*better.shape, *([1] * (t.ndim - 2)))
            kept[i] = torch.where(mask, t.detach(), kept[i])
    return (cur if best is None else torch.where(better, cur, best)), better


def optimise_slopes(
    net: Network,
    pset: LpBall,
    start: int,
    spec: Tensor,
    bounds: NodeBounds,
    alpha: dict[int, Tensor],
    *,
    steps: int,
    lr: float,
    deadline: float = math.inf,
) -> tuple[Tensor, dict[int, Tensor]]:
    """max over slopes of the lower bound of <spec, node ``start``>: (best bound (B, S), its slopes).

    ``alpha`` gives the starting slopes (B, S, *shape) per ReLU node; see :func:`ascend_slopes`.
    """
    with reuse_matrices():  # the network's parameters do not change during the steps
        return ascend_slopes(lambda al: backward_bound(net, pset, start, spec, bounds, rule="alpha", alpha=al),
                             alpha, steps=steps, lr=lr, deadline=deadline)


def ascend_slopes(bound: Callable[[dict[int, Tensor]], Tensor], alpha: dict[int, Tensor], *, steps: int, lr: float,
                  deadline: float = math.inf) -> tuple[Tensor, dict[int, Tensor]]:
    """max over slopes of ``bound(slopes)`` (B, S), each entry on its own: (best bound, its slopes).

    ``alpha`` gives the starting slopes (B, S, ...) per ReLU node (any layout ``bound`` reads);
    step 0 evaluates them, so the result is never below their bound. Projected Adam ascent on
    the summed bound, slopes clipped to [0, 1] after every step, the best bound per (B, S) entry
    kept with its slopes. Works under an outer ``no_grad``; gradients go to the slopes only.
    """
    alpha = {i: t.detach().clone() for i, t in alpha.items()}
    best_alpha = {i: t.clone() for i, t in alpha.items()}
    params = [t.requires_grad_(steps > 0) for t in alpha.values()]
    opt = Adam([(params, lr)]) if steps > 0 and params else None
    best: Tensor | None = None
    for it in range(steps + 1):
        last = opt is None or it == steps or time.perf_counter() >= deadline
        with torch.set_grad_enabled(not last):  # also under an outer no_grad
            val = bound(alpha)
            loss = -val.sum()
        with torch.no_grad():
            # val belongs to the current (already projected) slopes: keep the best per entry
            best, _ = keep_best(best, val.detach(), (alpha, best_alpha))
        if last:
            break
        assert opt is not None
        # a slope on a layer without unstable neurons may not reach the bound (the conv stem skips it)
        opt.step(loss)
        with torch.no_grad():
            for t in params:
                t.clamp_(0.0, 1.0)
    assert best is not None
    return best, best_alpha
