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


def _two_convs(c0: int, k1: int, s1: int, pad1, k2: int, s2: int, pad2, size: int, normalize: bool, seed: int = 0) -> Network:
    g = torch.Generator().manual_seed(seed)
    layers = [ChannelAffine.normalize([0.4] * c0, [0.3 + 0.1 * i for i in range(c0)])] if normalize else []
    layers += [Conv2d(_w(g, 5, c0, k1, k1, scale=1.5), torch.randn(5, generator=g, dtype=torch.float64) * 0.2, s1, pad1),
               ReLU(), Conv2d(_w(g, 6, 5, k2, k2, scale=1.5), torch.randn(6, generator=g, dtype=torch.float64) * 0.2, s2, pad2),
               ReLU()]
    shape: tuple[int, ...] = (c0, size, size)
    for layer in layers:
        shape = layer.out_shape(shape) if hasattr(layer, "out_shape") else shape
    n = shape[0] * shape[1] * shape[2]
    layers += [Flatten(), Linear(_w(g, 3, n), torch.zeros(3, dtype=torch.float64))]
    return Network(layers, (c0, size, size), name="two_convs")


@pytest.mark.parametrize("shape", [
    (1, 4, 2, (1, 1, 1, 1), 4, 2, (1, 1, 1, 1), 28, False),  # cnn_lenet_small's two convs
    (2, 3, 1, 1, 3, 2, (0, 1, 1, 0), 9, True),  # stride 1, asymmetric padding, normalisation folded in
    (3, 3, 2, 0, 2, 1, 1, 11, False),  # conv1's kernel not a multiple of its stride
    (1, 5, 3, (2, 1, 0, 2), 3, 2, 2, 25, True),  # stride 3, a kernel larger than the stride
])
def test_composed_coefficients_equal_the_window_chain(shape, monkeypatch):
    """The batched two-kernel product (_composed_coefficients) == the chain of window transposes,
    and == autograd's input gradient of every conv2 neuron with the ReLU pattern fixed."""
    net = _two_convs(*shape)
    g = torch.Generator().manual_seed(4)
    x = torch.rand((3, *net.input_shape), generator=g, dtype=torch.float64)
    pset = LpBall.make(x, 0.0, "inf", net.input_range)
    k = [n.index for n in net.graph if isinstance(n.op, Conv2d)][-1]
    values = net.forward(x, all_nodes=True)
    relu_in = [n.inputs[0] for n in net.graph if isinstance(n.op, ReLU)][0]
    m = (values[relu_in] > 0).double()
    from verify.bounds.relax import ReluRelaxation

    rels = {relu_in: ReluRelaxation(m, m, torch.zeros_like(m), torch.zeros_like(m, dtype=torch.bool))}
    plan = local_plan(net, pset, k)
    local = LocalBounds(net, pset, k, plan, rels)
    assert local._conv_pair() is not None
    from verify.bounds.local import window_view

    full = window_view(local.all_coefficients(1, 3))
    fast = full[..., : plan[-1][1].h, : plan[-1][1].w]
    assert not full[..., plan[-1][1].h :, :].any() and not full[..., plan[-1][1].w :].any()  # beyond the window
    monkeypatch.setattr(LocalBounds, "_conv_pair", lambda self: None)
    slow = window_view(local.all_coefficients(1, 3))
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    # autograd: d(conv2 unit) / d(input) with the pattern fixed, placed on the unit's window
    f = plan[-1][1]
    c2, hh, ww = net.graph[k].shape
    for ex in (1, 2):
        xi = x[ex : ex + 1].clone().requires_grad_(True)
        z = xi
        for node in net.graph[1 : k + 1]:
            z = z * m[ex : ex + 1] if isinstance(node.op, ReLU) else node.op.forward(z)
        for unit in (0, 7, c2 * hh * ww - 1):
            (grad,) = torch.autograd.grad(z.reshape(-1)[unit], xi, retain_graph=True)
            ch, pos = divmod(unit, hh * ww)
            oy, ox = f.oy + (pos // ww) * f.sy, f.ox + (pos % ww) * f.sx
            padded = torch.nn.functional.pad(grad[0], (f.w, f.w, f.h, f.h))
            expect = padded[:, oy + f.h : oy + 2 * f.h, ox + f.w : ox + 2 * f.w]
            torch.testing.assert_close(fast[pos, ex - 1, ch], expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [
    (1, 4, 2, (1, 1, 1, 1), 4, 2, (1, 1, 1, 1), 28, False),
    (2, 3, 1, 1, 3, 2, (0, 1, 1, 0), 9, True),
    (3, 3, 2, 0, 2, 1, 1, 11, False),
    (1, 5, 3, (2, 1, 0, 2), 3, 2, 2, 25, True),
])
@pytest.mark.parametrize("box", [(0.0, 1.0), (0.2, 1.2)])
def test_all_ranges_equal_the_pairwise_windows(shape, box):
    """LocalBounds.all_ranges (convolutions plus weighted L1 norms of the composed window
    coefficients) == LocalBounds.range on every (example, neuron) pair, for Kolter-Wong's
    parallel relaxation; and None where it does not apply (crown's two slopes, an L2 ball)."""
    net = _two_convs(*shape)
    g = torch.Generator().manual_seed(7)
    x = box[0] + torch.rand((4, *net.input_shape), generator=g, dtype=torch.float64)
    x[:, :, :2] = box[0]  # on the box's face
    pset = LpBall.make(x, [0.05, 0.02, 0.1, 0.0], "inf", box)
    bounds = interval_bounds(net, pset, dtype=torch.float64)
    k = [n.index for n in net.graph if isinstance(n.op, Conv2d)][-1]
    relu_in = [n.inputs[0] for n in net.graph if isinstance(n.op, ReLU)][0]
    r = relu_relaxation(*bounds[relu_in], "kw")
    rels = {relu_in: type(r)(r.lam_up, r.lam_up, r.mu_up, r.unstable)}
    local = LocalBounds(net, pset, k, local_plan(net, pset, k), rels)
    lo, hi = local.all_ranges(examples_per_pass=3)
    n_neurons = lo[0].numel()
    ex = torch.arange(4).repeat_interleave(n_neurons)
    nb = torch.arange(n_neurons).repeat(4)
    ref_lo, ref_hi = local.range(ex, nb, two_sided=True)
    torch.testing.assert_close(lo.reshape(-1), ref_lo, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hi.reshape(-1), ref_hi, rtol=1e-10, atol=1e-10)
    crown = {relu_in: relu_relaxation(*bounds[relu_in], "crown")}
    assert LocalBounds(net, pset, k, local_plan(net, pset, k), crown).all_ranges() is None
    ball = LpBall.make(x, 0.1, 2, box)
    assert LocalBounds(net, ball, k, local_plan(net, ball, k), rels).all_ranges() is None


def test_kw_intermediate_bounds_the_same_with_all_at_once(monkeypatch):
    """linear_intermediate(rule kw) gives the same bounds whether a second conv layer's unstable
    neurons are bounded pairwise or all at once (LocalBounds.all_ranges)."""
    import verify.bounds.intermediate as I

    calls = []
    real = LocalBounds.all_ranges

    def counted(self, **kw):
        out = real(self, **kw)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(LocalBounds, "all_ranges", counted)
    for net in (deep_conv(seed=3), _two_convs(1, 4, 2, (1, 1, 1, 1), 4, 2, (1, 1, 1, 1), 28, True)):
        x = torch.rand((3, *net.input_shape), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        pset = LpBall.make(x, 0.05, "inf", net.input_range)
        results = []
        for fraction in (0.0, 2.0):  # 0: always all at once; 2: never
            monkeypatch.setattr(I, "ALL_AT_ONCE_FRACTION", fraction)
            results.append(linear_intermediate(net, pset, rule="kw", dtype=torch.float64))
        for i in results[0]:
            torch.testing.assert_close(results[0][i][0], results[1][i][0], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(results[0][i][1], results[1][i][1], rtol=1e-10, atol=1e-10)
    assert sum(calls) == 2  # bounded all at once: one conv pair per network, with the fraction 0
