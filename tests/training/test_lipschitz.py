"""Lipschitz penalty and J1 / J2 / Jinf perturbations: first-order behaviour, closed forms, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.regularizers.lipschitz import direction, input_gradient, lipschitz_penalty, lipschitz_penalty_from_logits, perturb
from verify.errors import DataError, SpecError


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def _data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, 1, 3, 4, generator=g, dtype=torch.float64)  # far from the box's faces
    return x, torch.randint(0, 4, (n,), generator=g)


def test_j2_first_order_change_is_eps_times_gradient_norm() -> None:
    model = _net()
    x, y = _data()
    g = input_gradient(model, x, y)
    gnorm = g.flatten(1).norm(dim=1)
    ce0 = F.cross_entropy(model(x), y, reduction="none").detach()
    errs = []
    for eps in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        xp = perturb(model, x, y, eps, "j2")
        assert torch.allclose((xp - x).flatten(1).norm(dim=1), torch.full((8,), eps, dtype=torch.float64), rtol=1e-12)
        quotient = (F.cross_entropy(model(xp), y, reduction="none").detach() - ce0) / eps
        errs.append(float(((quotient - gnorm).abs() / gnorm).max()))
    assert errs[-1] < 1e-6  # -> ||g||_2 as eps -> 0 (the error is O(eps): the CE's curvature)
    assert all(b < a for a, b in zip(errs, errs[1:]))


def test_j1_and_jinf_steps() -> None:
    model = _net(1)
    x, y = _data(seed=1)
    eps = 0.05
    g = input_gradient(model, x, y).flatten(1)
    d = g.shape[1]
    j1 = (perturb(model, x, y, eps, "j1") - x).flatten(1)
    assert torch.allclose(j1, eps * torch.sign(g) / math.sqrt(d), atol=1e-15)  # Tulip's FGSM: unit L2 length
    jinf = (perturb(model, x, y, eps, "jinf") - x).flatten(1)
    k = g.abs().argmax(1)
    rows = torch.arange(len(y))
    assert torch.allclose(jinf[rows, k], eps * torch.sign(g[rows, k]), atol=1e-15)
    assert ((jinf != 0).sum(1) == 1).all()
    # first order: the J1 step adds eps / sqrt(d) * ||g||_1
    tiny = 1e-6
    x1 = perturb(model, x, y, tiny, "j1")
    quotient = (F.cross_entropy(model(x1), y, reduction="none") - F.cross_entropy(model(x), y, reduction="none")).detach() / tiny
    assert torch.allclose(quotient, g.abs().sum(1) / math.sqrt(d), rtol=1e-4)


def test_perturb_clips_restores_mode_and_leaves_param_grads_alone() -> None:
    model = _net(2)
    model.train()
    x, y = _data(seed=2)
    xp = perturb(model, x, y, 5.0, "j2", input_range=(0.0, 1.0))
    assert float(xp.min()) >= 0.0 and float(xp.max()) <= 1.0
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert not xp.requires_grad
    assert torch.equal(direction(torch.zeros(2, 3), "j2"), torch.zeros(2, 3))


def test_penalty_matches_the_closed_form_on_a_linear_model() -> None:
    torch.manual_seed(3)
    lin = nn.Linear(5, 3).double()
    x = torch.rand(6, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    pen = lipschitz_penalty(lin, x, y)
    soft = torch.softmax(lin(x), 1).detach()
    onehot = F.one_hot(y, 3).to(torch.float64)
    grads = (soft - onehot) @ lin.weight.detach()  # grad_x CE = W^T (softmax - onehot)
    assert float(pen.detach()) == pytest.approx(float(grads.norm(dim=1).max()), rel=1e-12)
    xg = x.clone().requires_grad_(True)
    shared = lipschitz_penalty_from_logits(lin(xg), xg, y)  # one forward pass for the loss and the penalty
    assert float(shared.detach()) == pytest.approx(float(pen.detach()), rel=1e-14)
    with pytest.raises(DataError):
        lipschitz_penalty_from_logits(lin(x), x, y)


def test_penalty_gradient_is_finite_and_a_step_along_it_lowers_the_penalty() -> None:
    model = _net(4)
    x, y = _data(16, seed=4)
    pen = lipschitz_penalty(model, x, y)
    params = list(model.parameters())
    grads = torch.autograd.grad(pen, params)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= 1e-3 * g
    assert float(lipschitz_penalty(model, x, y).detach()) < float(pen.detach())


def test_bad_inputs() -> None:
    model = _net()
    x, y = _data()
    with pytest.raises(SpecError):
        perturb(model, x, y, 0.1, "j3")  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        perturb(model, x, y, -0.1, "j1")
    with pytest.raises(SpecError):
        perturb(model, x, y, 0.1, "j1", input_range=(1.0, 0.0))
    with pytest.raises(DataError):
        lipschitz_penalty(model, x, y[:3])
