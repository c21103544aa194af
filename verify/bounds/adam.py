"""A plain Adam for bound parameters (slopes, split multipliers)."""

from __future__ import annotations

import math

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
