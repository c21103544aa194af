"""IBP on L1 / L2 balls: the first affine layer gets the ball's own (Hoelder) bound, intersected with
the box's. Oracles: the exact per-neuron optimum over the ball alone, sampled points, the box bound."""

from __future__ import annotations

import math

import pytest
import torch

from verify.bounds import interval_bounds
from verify.network import Flatten, Linear, Network
from verify.spec import LpBall

from .nets import conv_net, dense_net
from .sampling import sample_set


def _flat_net(seed: int) -> Network:
    """Flatten first, so the first Linear is reached from the input through a permutation."""
    g = torch.Generator().manual_seed(seed)
    return Network([Flatten("NHWC"), Linear(torch.randn(5, 12, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))],
                   (3, 2, 2), name="flat")


@pytest.mark.parametrize("p", ["1", "2"])
@pytest.mark.parametrize("make", [dense_net, conv_net, _flat_net])
def test_first_layer_ball_bound_is_sound_and_tighter(p: str, make) -> None:
    net = make(1)
    g = torch.Generator().manual_seed(7)
    x = torch.rand((3, *net.input_shape), generator=g, dtype=torch.float64) * 0.6 + 0.2
    ball = LpBall.make(x, 0.15, p)
    tight = interval_bounds(net, ball, dtype=torch.float64)
    box = LpBall.make(x, 0.15, "inf")  # the enclosing box of the ball: what IBP used before
    loose = interval_bounds(net, box, dtype=torch.float64)
    first = next(n.index for n in net.graph[1:] if not isinstance(n.op, Flatten))
    lo, hi = tight[first]
    blo, bhi = loose[first]
    assert bool((lo >= blo - 1e-12).all() and (hi <= bhi + 1e-12).all())
    assert float((hi - lo).sum()) < 0.9 * float((bhi - blo).sum())  # much tighter for a ball of 0.15
    for i in range(ball.n):  # sound: every sampled point of ball ∩ box lies inside every node's interval
        vals = {0: sample_set(ball, i, 400, g)}
        for node in net.graph[1:]:  # chains only here: each node reads one input
            h = vals[node.index] = node.op.forward(vals[node.inputs[0]])
            nlo, nhi = tight[node.index]
            assert bool((h >= nlo[i] - 1e-9).all() and (h <= nhi[i] + 1e-9).all()), node


@pytest.mark.parametrize("p,q", [("1", math.inf), ("2", 2.0)])
def test_ball_bound_is_hoelders_exactly_when_the_box_is_far(p: str, q: float) -> None:
    """Centre in the middle of the box and a small radius: the ball bound is exact, W x0 + b -+ eps ||W_k||_q."""
    net = dense_net(2)
    x = torch.full((1, 6), 0.5, dtype=torch.float64)
    eps = 0.01
    lo, hi = interval_bounds(net, LpBall.make(x, eps, p), dtype=torch.float64)[1]
    w, b = net.layers[0].weight, net.layers[0].bias
    c = x @ w.T + b
    r = eps * torch.linalg.vector_norm(w, ord=q, dim=1)
    assert torch.allclose(lo, c - r, atol=1e-12) and torch.allclose(hi, c + r, atol=1e-12)
