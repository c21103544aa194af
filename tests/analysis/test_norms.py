"""Operator norms: every value against the explicit dense matrix of the layer (``layer.matrix``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.bounds.nets import conv_net, residual_net
from verify.analysis import conv_operator_norm, layer_norms, module_norms, network_norms, operator_norm, spectral_norm_estimate
from verify.analysis.norms import conv_spectral_upper, plot_norm_history, plot_norms
from verify.errors import ModelError, SpecError, UnsupportedLayerError
from verify.network import AvgPool2d, ChannelAffine, Conv2d, Flatten, Linear, ReLU
from verify.torch_modules import network_from_torch


def _dense_norms(layer, in_shape) -> tuple[float, float, float]:
    m = layer.matrix(in_shape).toarray()
    a = np.abs(m)
    return float(a.sum(0).max()), float(a.sum(1).max()), float(np.linalg.norm(m, 2))


def _conv_cases() -> list[tuple]:
    """(in_ch, out_ch, kernel, stride, (C, H, W) input, padding): odd and even sizes, symmetric and asymmetric padding."""
    cases = []
    for (c, o), k, s, (h, w), pad in itertools.product(
            [(1, 2), (3, 4)], [(1, 1), (2, 2), (3, 3), (4, 4), (3, 2)], [1, 2], [(5, 5), (7, 6), (8, 9)],
            [0, 1, (2, 1), (0, 1, 2, 0), (1, 2, 1, 2)]):
        try:
            Conv2d(torch.zeros(o, c, *k), None, s, pad).out_shape((c, h, w))
        except ModelError:
            continue
        cases.append((c, o, k, s, (c, h, w), pad))
    return cases


CONV_CASES = _conv_cases()


@pytest.mark.parametrize("c,o,k,s,shape,pad", CONV_CASES[::3])
def test_conv_l1_linf_equal_dense_column_and_row_sums(c, o, k, s, shape, pad) -> None:
    g = torch.Generator().manual_seed(hash((c, o, k, s, shape, str(pad))) % 2**31)
    conv = Conv2d(torch.randn(o, c, *k, generator=g, dtype=torch.float64), None, s, pad)
    l1, linf, _ = _dense_norms(conv, shape)
    assert math.isclose(operator_norm(conv, shape, 1), l1, rel_tol=1e-12)
    assert math.isclose(operator_norm(conv, shape, "inf"), linf, rel_tol=1e-12)


def test_border_matters_when_no_output_sees_every_tap() -> None:
    # 3x3 kernel on a 2x2 input with padding 1: every output row loses taps to the padding,
    # so the row sums are below the full kernel's abs sum (Liang et al.'s interior value)
    g = torch.Generator().manual_seed(1)
    conv = Conv2d(torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64), None, 1, 1)
    exact = operator_norm(conv, (1, 2, 2), "inf")
    assert math.isclose(exact, _dense_norms(conv, (1, 2, 2))[1], rel_tol=1e-12)
    assert exact < float(conv.weight.abs().sum((1, 2, 3)).max()) - 1e-6


def test_stride_two_splits_taps_into_classes() -> None:
    # 4x4 kernel, stride 2, big input: each interior pixel is reached by exactly 2x2 taps (one parity class)
    w = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    w[0, 0, 0::2, 0::2] = 1.0  # the (even, even) class: 4 taps
    w[0, 0, 1, 1] = 10.0  # a lone tap of the (odd, odd) class
    conv = Conv2d(w, None, 2, 1)
    assert operator_norm(conv, (1, 12, 12), 1) == pytest.approx(10.0 + 0.0)  # classes never add up
    assert operator_norm(conv, (1, 12, 12), 1) == pytest.approx(_dense_norms(conv, (1, 12, 12))[0])


@pytest.mark.parametrize("pool,shape", [(AvgPool2d(2), (2, 6, 6)), (AvgPool2d(3, 2, 1), (3, 7, 7)), (AvgPool2d(3, 1, (0, 1, 1, 0)), (1, 5, 6))])
def test_avgpool_norms_equal_dense(pool, shape) -> None:
    l1, linf, l2 = _dense_norms(pool, shape)
    r = layer_norms(pool, shape, power_iters=500)
    assert r.l1 == pytest.approx(l1, rel=1e-12)
    assert r.linf == pytest.approx(linf, rel=1e-12)
    assert r.l2 <= l2 * (1 + 1e-12) and r.l2 == pytest.approx(l2, rel=1e-6)
    assert r.l2_upper >= l2


def test_linear_norms() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    lin = Linear(w)
    r = layer_norms(lin, (5,))
    a = w.abs().numpy()
    assert r.l1 == pytest.approx(a.sum(0).max(), rel=1e-14) and r.linf == pytest.approx(a.sum(1).max(), rel=1e-14)
    assert r.l2 == pytest.approx(np.linalg.norm(w.numpy(), 2), rel=1e-12)
    assert r.l2_upper >= np.linalg.norm(w.numpy(), 2)


def test_batchnorm_norm_is_max_abs_gamma_over_sqrt_var_plus_eps() -> None:
    gamma = torch.tensor([0.5, -3.0, 1.0], dtype=torch.float64)
    var = torch.tensor([0.25, 4.0, 0.01], dtype=torch.float64)
    eps = 1e-3
    bn = ChannelAffine.batchnorm(torch.zeros(3), var, gamma, torch.zeros(3), eps)
    formula = float((gamma.abs() / torch.sqrt(var + eps)).max())
    shape = (3, 2, 2)
    l1, linf, l2 = _dense_norms(bn, shape)
    r = layer_norms(bn, shape)
    assert r.l1 == pytest.approx(formula, rel=1e-14) and r.linf == pytest.approx(formula, rel=1e-14)
    assert l1 == pytest.approx(formula, rel=1e-14) and linf == pytest.approx(formula, rel=1e-14)
    assert r.l2 == r.l2_upper == pytest.approx(l2, rel=1e-14)


@pytest.mark.parametrize("k,s,shape,pad", [(3, 1, (2, 6, 6), 1), (4, 2, (3, 9, 8), (1, 2, 1, 2)), (2, 2, (1, 7, 7), 0), (3, 2, (2, 5, 7), 1)])
def test_power_iteration_below_and_close_to_the_exact_spectral_norm(k, s, shape, pad) -> None:
    g = torch.Generator().manual_seed(k * 10 + s)
    conv = Conv2d(torch.randn(3, shape[0], k, k, generator=g, dtype=torch.float64), None, s, pad)
    exact = _dense_norms(conv, shape)[2]
    est = spectral_norm_estimate(conv, shape, iters=1000, tol=1e-14)
    assert est <= exact * (1 + 1e-12)
    assert est == pytest.approx(exact, rel=1e-4)
    r = layer_norms(conv, shape, power_iters=1000)
    assert exact <= r.l2_upper <= math.sqrt(r.l1 * r.linf) * (1 + 1e-9)


def test_tap_spectral_bound_is_an_upper_bound_on_many_convs() -> None:
    g = torch.Generator().manual_seed(3)
    for c, o, k, s, shape, pad in CONV_CASES[::5]:
        w = torch.randn(o, c, *k, generator=g, dtype=torch.float64)
        conv = Conv2d(w, None, s, pad)
        exact = _dense_norms(conv, shape)[2]
        assert conv_spectral_upper(w, shape[1:], conv.stride, conv.padding) >= exact


def test_conv_norm_is_differentiable_with_the_sign_pattern_as_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    n = conv_operator_norm(w, (6, 6), (1, 1), (1, 1, 1, 1), "inf")
    (grad,) = torch.autograd.grad(n, w)
    # the interior row of the largest output channel sees every tap: gradient = sign(w) there, 0 elsewhere
    o = int(w.detach().abs().sum((1, 2, 3)).argmax())
    expect = torch.zeros_like(w)
    expect[o] = torch.sign(w.detach()[o])
    assert torch.equal(grad, expect)


def test_network_records_follow_the_graph_and_skip_flatten() -> None:
    net = residual_net(0)
    recs = network_norms(net, power_iters=50)
    affine = [n for n in net.graph[1:] if getattr(n.op, "affine", False) and not isinstance(n.op, Flatten)]
    assert [r.index for r in recs] == [n.index for n in affine]
    for r, node in zip(recs, affine):
        l1, linf, _ = _dense_norms(node.op, r.in_shape)
        assert r.l1 == pytest.approx(l1, rel=1e-12) and r.linf == pytest.approx(linf, rel=1e-12)
        assert r.out_shape == node.shape


def _torch_net() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(1, 3, 3, stride=2), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 4, 2, stride=1, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5),
    ).double()
    m(torch.rand(4, 1, 7, 8, dtype=torch.float64))  # materialise the lazy layer, fill BN statistics
    with torch.no_grad():
        m[2].weight.uniform_(-2, 2)
    return m.eval()


def test_torch_module_norms_equal_network_layer_norms() -> None:
    m = _torch_net()
    mods = module_norms(m, (1, 7, 8), power_iters=300)
    nets = network_norms(network_from_torch(m, (1, 7, 8)), power_iters=300)
    assert [r.kind for r in mods] == ["conv2d", "batchnorm", "conv2d", "linear"]
    assert [r.kind for r in nets] == ["conv2d", "channel_affine", "conv2d", "linear"]
    for a, b in zip(mods, nets):
        assert a.in_shape == b.in_shape and a.out_shape == b.out_shape
        for key in ("l1", "linf", "l2", "l2_upper"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-9), key


def test_bad_inputs_raise_verify_errors() -> None:
    conv = Conv2d(torch.ones(1, 1, 3, 3), None, 1, 0)
    with pytest.raises(SpecError):
        operator_norm(conv, (1, 5, 5), 2)
    with pytest.raises(ModelError):
        operator_norm(conv, (1, 2, 2), 1)  # kernel larger than the input
    with pytest.raises(UnsupportedLayerError):
        layer_norms(ReLU(), (3,))
    with pytest.raises(ModelError):
        module_norms(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), (1, 5, 5))  # 2*3*3 != 8
    with pytest.raises(UnsupportedLayerError):
        module_norms(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), (2, 5, 5))


def test_plots_are_png(tmp_path) -> None:
    recs = network_norms(conv_net(0), power_iters=20)
    plot_norms(recs, str(tmp_path / "n.png"))
    plot_norm_history([recs, recs], str(tmp_path / "h.png"), p=1)
    for f in ("n.png", "h.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
