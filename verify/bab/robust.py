"""confirm() for robustness queries, with :func:`verify.spec.check_counterexample`'s semantics."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..network import Network
from ..spec import LpBall, check_counterexample


def robustness_confirm(net: Network, ball: LpBall, label: int) -> Callable[[Tensor], tuple[Tensor, int] | None]:
    """(x in the ball, index into :func:`verify.bab.robustness_disjuncts`'s list) when x, projected
    onto the ball in float64, is misclassified in a float64 forward pass; else None."""
    y = torch.tensor([label])

    def check(x: Tensor) -> tuple[Tensor, int] | None:
        x64 = inside(ball, x)
        if not bool(check_counterexample(net, ball, y, x64)[0]):
            return None
        with torch.no_grad():
            logits = net.forward(x64)[0].clone()
        logits[label] = -torch.inf
        j = int(logits.argmax())
        return x64, j - (j > label)

    return check


def inside(ball: LpBall, x: Tensor) -> Tensor:
    """ball.project(x), pulled towards the centre by a few ulps when rounding left it a hair outside
    (c + clamp(x - c) can round past the radius at a corner of an Linf ball)."""
    c = ball.center.to(torch.float64)
    x64 = ball.project(x.to(torch.float64).reshape(c.shape))
    for shrink in (4, 64, 4096):
        if bool(ball.contains(x64).all()):
            return x64
        x64 = (c + (x64 - c) * (1 - shrink * torch.finfo(torch.float64).eps)).clamp(ball.lo, ball.hi)
    return x64
