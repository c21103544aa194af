"""The one-pass kw range (both bounds from one backward pass) equals two separate kw passes."""

from __future__ import annotations

import pytest
import torch

from verify.bounds.backward import backward_bound, backward_range
from verify.bounds.interval import interval_bounds
from verify.bounds.relax import relu_relaxation
from verify.spec import LpBall

from .nets import conv_net, dense_net, residual_net


@pytest.mark.parametrize("make", [dense_net, conv_net, residual_net])
@pytest.mark.parametrize("p", ["inf", 1, 2])
def test_range_equals_two_passes(make, p):
    net = make(seed=3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((4, *net.input_shape), generator=g, dtype=torch.float64)
    pset = LpBall.make(x, 0.05, p, net.input_range)
    bounds = interval_bounds(net, pset, dtype=torch.float64)
    root = net.graph[-1].index
    a = torch.randn((4, 3, *net.graph[root].shape), generator=g, dtype=torch.float64)
    c = torch.randn((4, 3), generator=g, dtype=torch.float64)
    rels = {j: relu_relaxation(*bounds[j], "kw") for j in bounds}
    lo, hi = backward_range(net, pset, root, a, rels, const=c)
    lo2 = backward_bound(net, pset, root, a, bounds, rule="kw", const=c)
    hi2 = -backward_bound(net, pset, root, -a, bounds, rule="kw", const=-c)
    torch.testing.assert_close(lo, lo2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hi, hi2, rtol=1e-10, atol=1e-10)
    assert (lo <= hi + 1e-12).all()
