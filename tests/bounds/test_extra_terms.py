"""backward_bound's ``extra`` terms: <A, node start> + <E_j, node j> is bounded soundly, and no terms
(or zero terms) leave the bound unchanged."""

from __future__ import annotations

import pytest
import torch

from tests.bounds.nets import dense_net
from tests.bounds.sampling import sample_set
from verify.bounds import backward_bound, linear_intermediate
from verify.bounds.backward import relu_inputs
from verify.spec import LpBall


@pytest.mark.parametrize("p", ["inf", "2", "1"])
@pytest.mark.parametrize("rule", ["crown", "kw"])
def test_extra_terms_sound_and_neutral(p: str, rule: str) -> None:
    g = torch.Generator().manual_seed(3)
    net = dense_net(1)
    eps = {"inf": 0.1, "2": 0.3, "1": 0.8}[p]
    pset = LpBall.make(torch.rand(2, 6, generator=g, dtype=torch.float64), eps, p)
    bounds = linear_intermediate(net, pset, rule="crown", dtype=torch.float64)
    last = net.graph[-1].index
    A = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    base = backward_bound(net, pset, last, A, bounds, rule=rule)
    srcs = relu_inputs(net)
    zero = {j: torch.zeros(2, 3, *net.graph[j].shape, dtype=torch.float64) for j in srcs}
    assert torch.equal(backward_bound(net, pset, last, A, bounds, rule=rule, extra=zero), base)
    extra = {j: torch.randn(2, 3, *net.graph[j].shape, generator=g, dtype=torch.float64) for j in srcs}
    lb = backward_bound(net, pset, last, A, bounds, rule=rule, extra=extra)
    for b in range(2):
        vals = net.forward(sample_set(pset, b, 4000, g), all_nodes=True)
        true = vals[last] @ A[b].T
        for j, e in extra.items():
            true = true + vals[j].reshape(vals[j].shape[0], -1) @ e[b].reshape(3, -1).T
        assert bool((true.amin(0) >= lb[b] - 1e-9).all())


def test_extra_outside_range_rejected() -> None:
    net = dense_net(0)
    pset = LpBall.make(torch.full((1, 6), 0.5, dtype=torch.float64), 0.1, "inf")
    bounds = linear_intermediate(net, pset, rule="crown", dtype=torch.float64)
    first = relu_inputs(net)[0]
    A = torch.ones(1, 1, *net.graph[first].shape, dtype=torch.float64)
    with pytest.raises(ValueError):
        backward_bound(net, pset, first, A, bounds, rule="crown",
                       extra={net.graph[-1].index: torch.ones(1, 1, 4, dtype=torch.float64)})
