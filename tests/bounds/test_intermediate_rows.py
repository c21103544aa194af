"""linear_intermediate bounds every unstable neuron of a dense layer as one spec row per
(example, neuron), padded per example; the same numbers as one backward pass per pair."""

from __future__ import annotations

import pytest
import torch

from verify.bounds.backward import backward_bound, backward_range
from verify.bounds.intermediate import linear_intermediate
from verify.bounds.interval import node_interval
from verify.bounds.relax import ReluRelaxation, relu_relaxation
from verify.spec import LpBall

from .nets import conv_net, dense_net, residual_net


@pytest.mark.parametrize("make", [dense_net, conv_net, residual_net])
@pytest.mark.parametrize("rule", ["kw", "crown"])
@pytest.mark.parametrize("p", ["inf", "2"])
def test_rows_equal_one_pass_per_pair(make, rule, p):
    net = make(1)
    g = torch.Generator().manual_seed(2)
    x = torch.rand((5, *net.input_shape), generator=g, dtype=torch.float64)
    pset = LpBall.make(x, [0.1, 0.02, 0.3, 0.0, 0.15] if p == "inf" else [0.6, 0.1, 1.0, 0.0, 0.4], p, net.input_range)
    bounds = linear_intermediate(net, pset, rule=rule, dtype=torch.float64)
    checked = 0
    relu_in = [node.inputs[0] for node in net.relu_nodes]
    # each node's interval bounds from its inputs' final bounds: what linear_intermediate tightens
    interval = {node.index: node_interval(node, bounds) for node in net.graph[1:]}
    for k in relu_in[1:]:
        shape = net.graph[k].shape
        rels = {}
        for j in relu_in:
            if j < k:
                r = relu_relaxation(*bounds[j], rule)
                rels[j] = ReluRelaxation(r.lam_up, r.lam_up, r.mu_up, r.unstable) if rule == "kw" else r
        for e in range(5):
            sub = pset.select([e])
            sub_rels = {j: ReluRelaxation(r.lam_lo[e : e + 1], r.lam_up[e : e + 1], r.mu_up[e : e + 1], r.unstable[e : e + 1])
                        for j, r in rels.items()}
            for neuron in range(bounds[k][0][0].numel()):
                lo, hi = bounds[k][0][e].reshape(-1)[neuron], bounds[k][1][e].reshape(-1)[neuron]
                spec = torch.zeros((1, 1, *shape), dtype=torch.float64)
                spec.reshape(-1)[neuron] = 1.0
                if rule == "kw":
                    ref_lo, ref_hi = (t[0, 0] for t in backward_range(net, sub, k, spec, sub_rels))
                else:
                    val = backward_bound(net, sub, k, torch.cat([spec, -spec], 1), {}, rule=rule, relaxations=sub_rels)
                    ref_lo, ref_hi = val[0, 0], -val[0, 1]
                i_lo, i_hi = (t[e].reshape(-1)[neuron] for t in interval[k])
                if not i_lo < 0 < i_hi:
                    continue  # stable under the interval bounds: left as they are
                checked += 1
                torch.testing.assert_close(lo, torch.maximum(i_lo, ref_lo), rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(hi, torch.minimum(i_hi, ref_hi), rtol=1e-9, atol=1e-9)
    assert checked > 10
