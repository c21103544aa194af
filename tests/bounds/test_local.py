"""Receptive-field (window) bounds equal the generic backward engine's on every conv neuron."""

from __future__ import annotations

import pytest
import torch

from verify.bounds.backward import backward_bound
from verify.bounds.interval import interval_bounds
from verify.bounds.intermediate import linear_intermediate
from verify.bounds.local import LocalBounds, local_plan
from verify.bounds.relax import relu_relaxation
from verify.network import AvgPool2d, ChannelAffine, Conv2d, Flatten, Linear, Network, ReLU
from verify.spec import LpBall

from .nets import _w


def deep_conv(seed: int = 0) -> Network:
    """Normalize, conv s1 p1, conv s2 asymmetric padding, avgpool, BN, conv, fc: every windowed case."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.2  # noqa: E731
    layers = [
        ChannelAffine.normalize([0.4, 0.5], [0.3, 0.2]),
        Conv2d(_w(g, 3, 2, 3, 3, scale=1.5), rnd(3), 1, 1), ReLU(),
        Conv2d(_w(g, 4, 3, 3, 3, scale=1.5), rnd(4), 2, (0, 1, 1, 0)), ReLU(),
        AvgPool2d(2, 1), ChannelAffine(torch.rand(4, generator=g, dtype=torch.float64) + 0.5, rnd(4)),
        Conv2d(_w(g, 5, 4, 2, 2, scale=1.5), rnd(5), 1, 0), ReLU(),
        Flatten(), Linear(_w(g, 3, 5 * 6 * 6, scale=1.5), rnd(3)),
    ]
    return Network(layers, (2, 16, 16), name="deep_conv")


EPS = {"inf": 0.03, "2": 0.3, "1": 1.0}


@pytest.mark.parametrize("p", ["inf", "2", "1"])
@pytest.mark.parametrize("rule", ["kw", "crown"])
@pytest.mark.parametrize("box", [(0.0, 1.0), (0.2, 1.2)])
def test_windows_equal_full_backward(rule, p, box):
    """Also with an input box that excludes 0, the value of the windows' padding positions."""
    net = deep_conv()
    g = torch.Generator().manual_seed(1)
    x = box[0] + torch.rand((3, *net.input_shape), generator=g, dtype=torch.float64)
    x[:, :, :2] = box[0]  # a border on the box's face: the window's ball meets the box there
    pset = LpBall.make(x, [EPS[p], EPS[p] / 2, EPS[p] * 2], p, box)
    bounds = interval_bounds(net, pset, dtype=torch.float64)
    convs = [n.index for n in net.graph[1:] if isinstance(n.op, Conv2d) and n.index > 2]
    checked = 0
    for k in convs:
        plan = local_plan(net, pset, k)
        assert plan is not None, f"node {k} should use windows"
        rels = {j: relu_relaxation(*bounds[j], rule) for j in bounds}
        local = LocalBounds(net, pset, k, plan, rels)
        n_neurons = bounds[k][0][0].numel()
        ex = torch.arange(3).repeat_interleave(n_neurons)
        nb = torch.arange(n_neurons).repeat(3)
        lo, hi = local.range(ex, nb, two_sided=rule == "kw")
        shape = net.graph[k].shape
        eye = torch.eye(n_neurons, dtype=torch.float64).reshape(n_neurons, *shape)
        a = eye.unsqueeze(0).expand(3, *eye.shape)
        ref_lo = backward_bound(net, pset, k, a, bounds, rule=rule)
        ref_hi = -backward_bound(net, pset, k, -a, bounds, rule=rule)
        torch.testing.assert_close(lo.reshape(3, -1), ref_lo, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(hi.reshape(3, -1), ref_hi, rtol=1e-9, atol=1e-9)
        assert bool((lo < hi).all())
        checked += 1
    assert checked == 2


def test_plan_falls_back():
    net = deep_conv()
    x = torch.rand((1, *net.input_shape), dtype=torch.float64)
    convs = [n.index for n in net.graph[1:] if isinstance(n.op, Conv2d) and n.index > 2]
    for p in (2, 1, "inf"):  # every norm uses windows
        assert local_plan(net, LpBall.make(x, 0.03, p, net.input_range), convs[0]) is not None
    linear = [n.index for n in net.graph if isinstance(n.op, Linear)][0]
    assert local_plan(net, LpBall.make(x, 0.03, "inf", net.input_range), linear) is None


@pytest.mark.parametrize("p", ["inf", "2", "1"])
def test_intermediate_bounds_sound_by_sampling(p):
    from .sampling import sample_set

    net = deep_conv(seed=2)
    g = torch.Generator().manual_seed(3)
    x = torch.rand((2, *net.input_shape), generator=g, dtype=torch.float64)
    pset = LpBall.make(x, {"inf": 0.05, "2": 0.5, "1": 2.0}[p], p, net.input_range)
    bounds = linear_intermediate(net, pset, rule="kw", dtype=torch.float64)
    for _ in range(4):
        pts = torch.stack([sample_set(pset, i, 500, g) for i in range(2)], 1).reshape(-1, *net.input_shape)
        vals = [v.reshape(500, 2, *v.shape[1:]) for v in net.forward(pts, dtype=torch.float64, all_nodes=True)]
        vals = [v.transpose(0, 1) for v in vals]  # (2, 500, ...)
        for i, (lo, hi) in bounds.items():
            assert (vals[i] >= lo.unsqueeze(1) - 1e-9).all() and (vals[i] <= hi.unsqueeze(1) + 1e-9).all()


def test_wide_windows_use_the_transpose(monkeypatch):
    import verify.bounds.local as L

    monkeypatch.setattr(L, "WINDOW_MATRIX_MAX", 0)  # every conv through conv_transpose2d
    test_windows_equal_full_backward("kw", "inf", (0.0, 1.0))
    test_windows_equal_full_backward("crown", "2", (0.2, 1.2))
