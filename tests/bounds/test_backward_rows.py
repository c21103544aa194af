"""backward_rows: the coefficients of backward_coefficients without its constant, the same tensor."""

from __future__ import annotations

import pytest
import torch

from verify.bounds.backward import backward_coefficients, backward_rows, margin_spec
from verify.bounds.relax import ReluRelaxation

from .nets import conv_net, dense_net, residual_net


@pytest.mark.parametrize("make", [dense_net, conv_net, residual_net])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_equal_the_coefficients(make, dtype) -> None:
    net = make(0)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, *net.input_shape, generator=g, dtype=torch.float64).to(dtype)
    values = net.forward(x, all_nodes=True)
    rels = {}
    for node in net.relu_nodes:
        m = (values[node.inputs[0]] > 0).to(dtype)
        rels[node.inputs[0]] = ReluRelaxation(m, m, torch.zeros_like(m), torch.zeros_like(m, dtype=torch.bool))
    last = len(net.graph) - 1
    k = values[-1].shape[1]
    spec = margin_spec(torch.arange(5) % k, k, dtype)
    coef, _ = backward_coefficients(net, last, spec, rels)
    assert torch.equal(backward_rows(net, last, spec, rels), coef)
    relu = net.relu_nodes[-1].index
    coef, _ = backward_coefficients(net, last, spec, rels, stop=relu)
    assert torch.equal(backward_rows(net, last, spec, rels, stop=relu), coef)
