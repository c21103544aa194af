"""A plain Adam for bound parameters (slopes, split multipliers), and projected ascent with it."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor


class Adam:
    """Adam (betas 0.9 / 0.999) on groups of leaf tensors with a learning rate each: torch.optim.Adam's
    update without its per-step bookkeeping (and without importing torch._dynamo, ~2 s, on first use)."""

    def __init__(self, groups: list[tuple[list[Tensor], float]]) -> None:
        self.groups = groups
        self.params = [p for ps, _ in groups for p in ps]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, loss: Tensor) -> None:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self.t += 1
        b1, b2 = 0.9, 0.999
        c1, c2 = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        k = 0
        with torch.no_grad():
            for ps, lr in self.groups:
                for p in ps:
                    g, m, v = grads[k], self.m[k], self.v[k]
                    k += 1
                    if g is None:
                        continue
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m, (v.sqrt() / c2).add_(1e-8), value=-lr / c1)


__all__ = ["Adam"]


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
