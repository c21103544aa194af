"""linear_intermediate bounds every unstable neuron of a dense layer as one spec row per
(example, neuron), padded per example; the same numbers as one backward pass per pair.
CROWN's bounds are KW's first (one two-sided pass per pair), then CROWN's on the neurons KW's
leave unstable, intersected (``intermediate._kw_first``; with 5 examples KW's pass always runs)."""

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
        rels, kw_rels = {}, {}
        for j in relu_in:
            if j < k:
                r = relu_relaxation(*bounds[j], rule)
                kw = relu_relaxation(*bounds[j], "kw")
                kw_rels[j] = ReluRelaxation(kw.lam_up, kw.lam_up, kw.mu_up, kw.unstable)
                rels[j] = kw_rels[j] if rule == "kw" else r
        for e in range(5):
            sub = pset.select([e])
            def one(rs):
                return {j: ReluRelaxation(r.lam_lo[e : e + 1], r.lam_up[e : e + 1], r.mu_up[e : e + 1], r.unstable[e : e + 1])
                        for j, r in rs.items()}

            sub_rels, sub_kw = one(rels), one(kw_rels)
            for neuron in range(bounds[k][0][0].numel()):
                lo, hi = bounds[k][0][e].reshape(-1)[neuron], bounds[k][1][e].reshape(-1)[neuron]
                spec = torch.zeros((1, 1, *shape), dtype=torch.float64)
                spec.reshape(-1)[neuron] = 1.0
                kw_lo, kw_hi = (t[0, 0] for t in backward_range(net, sub, k, spec, sub_kw))
                i_lo, i_hi = (t[e].reshape(-1)[neuron] for t in interval[k])
                if not i_lo < 0 < i_hi:
                    continue  # stable under the interval bounds: left as they are
                checked += 1
                ref_lo, ref_hi = torch.maximum(i_lo, kw_lo), torch.minimum(i_hi, kw_hi)
                if rule == "crown" and ref_lo < 0 < ref_hi:  # left unstable by KW: CROWN's rows too
                    val = backward_bound(net, sub, k, torch.cat([spec, -spec], 1), {}, rule=rule, relaxations=sub_rels)
                    ref_lo, ref_hi = torch.maximum(ref_lo, val[0, 0]), torch.minimum(ref_hi, -val[0, 1])
                torch.testing.assert_close(lo, ref_lo, rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(hi, ref_hi, rtol=1e-9, atol=1e-9)
    assert checked > 10
