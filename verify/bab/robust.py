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
        x64 = ball.project(x.to(torch.float64).reshape(ball.center.shape))
        if not bool(check_counterexample(net, ball, y, x64)[0]):
            return None
        with torch.no_grad():
            logits = net.forward(x64)[0].clone()
        logits[label] = -torch.inf
        j = int(logits.argmax())
        return x64, j - (j > label)

    return check
