"""Lipschitz statistics: estimates below the product bound, the product exact on one linear layer,
gradients against closed forms, product-certified points a subset of what CROWN proves on a linear net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.bounds.nets import conv_net, dense_net, residual_net
from verify.analysis import gradient_norms, lipschitz_product_bound, lipschitz_summary, output_factor
from verify.analysis.lipschitz import plot_gradient_norms
from verify.errors import DataError, SpecError
from verify.network import Linear, MaxPool2d, Network, ReLU
from verify.spec import dual_norm


@pytest.mark.parametrize("make", [dense_net, conv_net, residual_net])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_empirical_estimates_stay_below_the_product_bound(make, p) -> None:
    net = make(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, *net.input_shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, net.n_classes, (24,), generator=g)
    gl, gm = gradient_norms(net, x, y, p)
    bound = output_factor(p) * lipschitz_product_bound(net, p)
    assert float(gl.max()) <= bound and float(gm.max()) <= bound
    assert float(gl.max()) > 0


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_product_bound_is_the_exact_norm_of_one_linear_layer(p) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    net = Network([Linear(w)], (6,))
    exact = {1.0: np.abs(w.numpy()).sum(0).max(), 2.0: np.linalg.norm(w.numpy(), 2),
             math.inf: np.abs(w.numpy()).sum(1).max()}[p]
    assert lipschitz_product_bound(net, p) == pytest.approx(exact, rel=1e-8)
    assert lipschitz_product_bound(net, p) >= exact


def test_gradients_match_closed_forms_on_a_linear_net() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    net = Network([Linear(w, torch.randn(3, generator=g))], (5,))
    x = torch.rand(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=g)
    for p in (1.0, 2.0, math.inf):
        gl, gm = gradient_norms(net, x, y, p)
        q = dual_norm(p)
        logits = net.forward(x).detach()
        soft = torch.softmax(logits, 1)
        onehot = torch.nn.functional.one_hot(y, 3).to(torch.float64)
        ce_grad = (soft - onehot) @ w  # W^T (softmax - onehot)
        other = logits.clone()
        other[torch.arange(7), y] = -math.inf
        j = other.argmax(1)
        m_grad = w[y] - w[j]
        assert torch.allclose(gl, ce_grad.norm(p=q, dim=1), rtol=1e-12)
        assert torch.allclose(gm, m_grad.norm(p=q, dim=1), rtol=1e-12)


def test_maxpool_factor_keeps_the_bound_above_the_estimates() -> None:
    g = torch.Generator().manual_seed(3)
    from verify.network import Conv2d, Flatten

    net = Network([Conv2d(torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64), None, 1, 1), ReLU(),
                   MaxPool2d(3, 1), Flatten(), Linear(torch.randn(3, 2 * 4 * 4, generator=g, dtype=torch.float64))],
                  (1, 6, 6))
    x = torch.rand(16, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    for p in (1.0, 2.0, math.inf):
        gl, gm = gradient_norms(net, x, y, p)
        assert float(torch.maximum(gl, gm).max()) <= output_factor(p) * lipschitz_product_bound(net, p)


def test_summary_product_certificates_are_a_subset_of_crown_on_a_linear_net() -> None:
    # CROWN is exact on a linear network, so whatever the (sound) product bound certifies, CROWN does too
    g = torch.Generator().manual_seed(4)
    net = Network([Linear(torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.3)], (4,))
    x = torch.rand(40, 4, generator=g)
    y = net.predict(x)
    for p in ("inf", 2):
        s = lipschitz_summary(net, x, y, p=p, eps=0.05, method="crown", power_iters=50)
        assert s.certified_product is not None and s.certified_bounds is not None
        assert 0 < s.certified_product <= s.certified_bounds
        assert s.grad_margin_max <= s.loss_bound and s.clean_accuracy == 1.0
        assert s.product_estimate <= s.product_bound * (1 + 1e-9)
        assert [r.kind for r in s.layers] == ["linear"]


def test_summary_table_labels_and_plot(tmp_path) -> None:
    net = conv_net(0)
    x = torch.rand(8, *net.input_shape)
    y = net.predict(x)
    grads = gradient_norms(net, x, y, 2)
    s = lipschitz_summary(net, x, y, p=2, eps=0.01, grads=grads)
    text = "\n".join(k for k, _ in s.table())
    assert "loose upper bound" in text and "lower bound" in text and "not guaranteed" in text
    assert s.as_dict()["layers"][0]["kind"] == "conv2d"
    plot_gradient_norms(grads[0], grads[1], s, str(tmp_path / "l.png"))
    assert (tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs() -> None:
    net = dense_net(0)
    with pytest.raises(DataError):
        lipschitz_summary(net, torch.rand(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(SpecError):
        lipschitz_summary(net, torch.rand(3, 6), torch.zeros(3, dtype=torch.long), eps=-1.0)
    with pytest.raises(SpecError):
        lipschitz_summary(net, torch.rand(3, 6), torch.zeros(3, dtype=torch.long), eps=0.1, method="nope")
    with pytest.raises(SpecError):
        lipschitz_product_bound(net, 3)
