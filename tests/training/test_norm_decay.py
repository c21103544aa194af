"""Norm decay: the penalty is the sum of exact norms (dense-matrix oracle), differentiable and decreasing
along its negative gradient; BatchNorm projection respects its bound; records match verify.analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from training.regularizers.norm_decay import bn_norms, norm_decay_penalty, norm_record, project_batchnorm
from verify.analysis import network_norms
from verify.errors import ModelError, SpecError
from verify.network import AffineLayer, Flatten
from verify.torch_modules import network_from_torch


def _module(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=1, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 10),
    ).double()
    m.train()
    m(torch.rand(16, 1, 7, 7, dtype=torch.float64))  # BatchNorm running statistics
    with torch.no_grad():
        m[2].weight.uniform_(-3, 3)
    return m


def _dense_sum(m: nn.Module, shape, p: float) -> float:
    """Sum over the affine layers (BN folded) of the norms of their explicit dense matrices."""
    net = network_from_torch(m.eval(), shape)
    total = 0.0
    for node in net.graph[1:]:
        if isinstance(node.op, AffineLayer) and not isinstance(node.op, Flatten):
            a = np.abs(node.op.matrix(net.graph[node.inputs[0]].shape).toarray())
            total += a.sum(1).max() if math.isinf(p) else a.sum(0).max()
    return total


@pytest.mark.parametrize("p", [1, "inf"])
def test_penalty_is_the_sum_of_exact_norms(p) -> None:
    m = _module()
    pen = norm_decay_penalty(m, p, input_shape=(1, 7, 7))
    pv = math.inf if p == "inf" else 1.0
    assert float(pen.detach()) == pytest.approx(_dense_sum(m, (1, 7, 7), pv), rel=1e-10)
    without_bn = norm_decay_penalty(m, p, input_shape=(1, 7, 7), include_batchnorm=False)
    assert float((pen - without_bn).detach()) == pytest.approx(max(bn_norms(m)), rel=1e-12)


def test_penalty_leaves_the_module_state_alone() -> None:
    m = _module()
    m.train()
    mean = m[2].running_mean.clone()
    batches = int(m[2].num_batches_tracked)
    norm_decay_penalty(m, 1, input_shape=(1, 7, 7))
    assert m.training and m[2].training
    assert torch.equal(m[2].running_mean, mean) and int(m[2].num_batches_tracked) == batches


@pytest.mark.parametrize("p", [1, "inf"])
def test_penalty_gradient_is_finite_and_a_step_lowers_it(p) -> None:
    m = _module(1)
    pen = norm_decay_penalty(m, p, input_shape=(1, 7, 7))
    params = [q for q in m.parameters()]
    grads = torch.autograd.grad(pen, params, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert grads[0] is not None and grads[0].abs().sum() > 0  # the first conv's weight
    with torch.no_grad():
        for q, g in zip(params, grads):
            if g is not None:
                q -= 1e-3 * g
    assert float(norm_decay_penalty(m, p, input_shape=(1, 7, 7)).detach()) < float(pen.detach())


def test_penalty_on_a_dense_module_needs_no_shape_but_a_conv_does() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    w1, w2 = mlp[1].weight.detach(), mlp[3].weight.detach()
    expect = float(w1.abs().sum(0).max() + w2.abs().sum(0).max())
    assert float(norm_decay_penalty(mlp, 1).detach()) == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ModelError):
        norm_decay_penalty(_module(), 1)
    with pytest.raises(SpecError):
        norm_decay_penalty(mlp, 2)


def test_project_batchnorm_respects_the_bound() -> None:
    m = _module(2)
    bn = m[2]
    before = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().abs()
    assert before.max() > 1.0
    w0 = bn.weight.detach().clone()
    project_batchnorm(m, 1.0)
    after = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().abs()
    assert (after <= 1.0).all()
    over = before > 1.0
    assert torch.allclose(after[over], torch.ones_like(after[over]), rtol=1e-12)
    assert torch.equal(bn.weight.detach()[~over], w0[~over])  # channels within the bound are untouched
    assert torch.equal(torch.sign(bn.weight.detach()), torch.sign(w0))
    f = nn.BatchNorm1d(3).float()
    f.running_var.fill_(1e-6)
    project_batchnorm(f, 0.3)  # float32: rounding must not leave it an ulp above
    assert max(bn_norms(f)) <= 0.3
    with pytest.raises(SpecError):
        project_batchnorm(m, 0.0)
    with pytest.raises(SpecError):
        project_batchnorm(m, float("nan"))


def test_norm_record_matches_the_network_records() -> None:
    m = _module(3).eval()
    rec = norm_record(m, (1, 7, 7), power_iters=200)
    ref = network_norms(network_from_torch(m, (1, 7, 7)), power_iters=200)
    assert [r.kind for r in rec] == ["conv2d", "batchnorm", "conv2d", "linear"]
    for a, b in zip(rec, ref):
        assert a.l1 == pytest.approx(b.l1, rel=1e-9) and a.linf == pytest.approx(b.linf, rel=1e-9)
        assert a.l2 == pytest.approx(b.l2, rel=1e-6)
