"""verify.attacks against oracles: closed-form optima on linear models, a trained MLP, set membership."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from verify.attacks import PGD, fgsm, inside_set, pgd_attack, project
from verify.data import load_dataset
from verify.network import Linear, Network
from verify.torch_modules import network_from_torch
from verify.spec import LpBall

# --------------------------------------------------------------------------- oracles written out here


def linear_pair(d: int, input_range: tuple[float, float], seed: int) -> tuple[Network, torch.Tensor, torch.Tensor]:
    """A two-class linear model: the worst-case margin a.x + b over a set is a closed-form optimum."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, d, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    return Network([Linear(w, b)], (d,), input_range), w, b


def worst_margin_linf_box(a: np.ndarray, off: np.ndarray, c: np.ndarray, eps: float, lo: float, hi: float) -> np.ndarray:
    lower = np.maximum(c - eps, lo)
    upper = np.minimum(c + eps, hi)
    return np.where(a > 0, a * upper, a * lower).sum(1) + off


def worst_margin_l2(a: np.ndarray, off: np.ndarray, c: np.ndarray, eps: float) -> np.ndarray:
    return (a * c).sum(1) + eps * np.linalg.norm(a, axis=1) + off


def worst_margin_l1_box(a: np.ndarray, off: np.ndarray, c: np.ndarray, eps: float, lo: float, hi: float) -> np.ndarray:
    """Greedy: spend the L1 budget on the coordinates with the largest |a_i|, each up to the box."""
    out = []
    for ai, ci, oi in zip(a, c, off):
        val, budget = float(ai @ ci + oi), eps
        for i in np.argsort(-np.abs(ai)):
            room = (hi - ci[i]) if ai[i] > 0 else (ci[i] - lo)
            move = min(room, budget)
            val += abs(ai[i]) * move
            budget -= move
        out.append(val)
    return np.array(out)


def margins_np(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    logits = x @ w.T + b
    other = logits.copy()
    other[np.arange(len(y)), y] = -np.inf
    return other.max(1) - logits[np.arange(len(y)), y]


def in_set(x: torch.Tensor, c: torch.Tensor, eps: float, p: float, lo: float, hi: float) -> torch.Tensor:
    """Membership in float64 with the radius as the Python float asked for (not a rounded copy)."""
    d = (x.double() - c.double()).reshape(len(x), -1)
    xs = x.double().reshape(len(x), -1)
    return (d.norm(p=p, dim=1) <= eps) & (xs >= lo).all(1) & (xs <= hi).all(1)


# --------------------------------------------------------------------------- linear models: exact optima


@pytest.mark.parametrize("random_start", [True, False])
def test_linf_finds_the_box_constrained_optimum(random_start):
    net, w, b = linear_pair(50, (0.0, 1.0), seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(32, 50, generator=g)
    x[:8] = (x[:8] > 0.5).float()  # some points on the box faces, where clipping decides
    y = net.predict(x)
    eps = 0.1
    res = pgd_attack(net, LpBall.make(x, eps, "inf"), y, steps=50, random_start=random_start)
    yn = y.numpy()
    a = (w[1 - yn] - w[yn]).numpy()
    off = (b[1 - yn] - b[yn]).numpy()
    opt = worst_margin_linf_box(a, off, x.double().numpy(), eps, 0.0, 1.0)
    assert np.abs(res.margin.numpy() - opt).max() < 1e-4
    assert torch.equal(res.success, torch.from_numpy(opt > 0)) and 0 < int(res.success.sum()) < 32
    assert in_set(res.x_adv, x, eps, math.inf, 0.0, 1.0).all()


def test_l2_finds_the_optimum_without_box():
    net, w, b = linear_pair(40, (-100.0, 100.0), seed=3)
    x = torch.randn(32, 40, generator=torch.Generator().manual_seed(4))
    y = net.predict(x)
    eps = 0.5
    res = pgd_attack(net, LpBall.make(x, eps, 2, (-100.0, 100.0)), y, steps=50, random_start=False)
    yn = y.numpy()
    opt = worst_margin_l2((w[1 - yn] - w[yn]).numpy(), (b[1 - yn] - b[yn]).numpy(), x.double().numpy(), eps)
    assert np.abs(res.margin.numpy() - opt).max() < 1e-4
    assert torch.equal(res.success, torch.from_numpy(opt > 0)) and 0 < int(res.success.sum()) < 32
    assert in_set(res.x_adv, x, eps, 2.0, -100.0, 100.0).all()
    # random starts approach the same optimum from inside and never exceed it
    rnd = pgd_attack(net, LpBall.make(x, eps, 2, (-100.0, 100.0)), y, steps=100, random_start=True)
    assert (rnd.margin.numpy() <= opt + 1e-5).all() and (opt - rnd.margin.numpy()).max() < 0.1


def test_l1_finds_the_box_constrained_optimum():
    net, w, b = linear_pair(30, (0.0, 1.0), seed=5)
    x = torch.rand(24, 30, generator=torch.Generator().manual_seed(6))
    y = net.predict(x)
    eps = 2.0
    res = pgd_attack(net, LpBall.make(x, eps, 1), y, steps=100, random_start=False, schedule="decay")
    yn = y.numpy()
    opt = worst_margin_l1_box((w[1 - yn] - w[yn]).numpy(), (b[1 - yn] - b[yn]).numpy(), x.double().numpy(), eps, 0.0, 1.0)
    # sparse steps of a fixed size end within about one step of the vertex; never beyond the optimum
    assert (res.margin.numpy() <= opt + 1e-6).all() and (opt - res.margin.numpy()).max() < 1e-2
    assert in_set(res.x_adv, x, eps, 1.0, 0.0, 1.0).all()


def test_fgsm_is_one_signed_step():
    net, w, b = linear_pair(20, (0.0, 1.0), seed=7)
    x = torch.rand(10, 20, generator=torch.Generator().manual_seed(8))
    y = net.predict(x)
    res = fgsm(net, LpBall.make(x, 0.05, "inf"), y, loss="margin")
    a = (w[1 - y] - w[y]).float()
    want = (x + 0.05 * a.sign()).clamp(0, 1)
    assert (res.x_adv - want).abs().max() <= 1e-7 and res.steps == 1
    assert in_set(res.x_adv, x, 0.05, math.inf, 0.0, 1.0).all()


# --------------------------------------------------------------------------- a trained MLP


@pytest.fixture(scope="session")
def mnist_mlp(shared_data):
    """784-100-10 trained for 2 epochs with Adam on the shared 10k MNIST training subset."""
    torch.manual_seed(0)
    train = load_dataset("mnist-train-10k", data_dir=shared_data)
    module = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), 50):
            idx = perm[i : i + 50]
            opt.zero_grad()
            nn.functional.cross_entropy(module(train.x[idx]), train.y[idx]).backward()
            opt.step()
    test = load_dataset("mnist", data_dir=shared_data)
    return module.eval(), network_from_torch(module, (1, 28, 28)), test.x[:200], test.y[:200]


def reference_margins(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float64 margins from the torch module itself (not the Network's forward)."""
    with torch.no_grad():
        logits = copy.deepcopy(module).double()(x.double())
    other = logits.clone()
    other[torch.arange(len(y)), y] = -math.inf
    return other.max(1).values - logits[torch.arange(len(y)), y]


@pytest.mark.parametrize("p, eps, floor", [("inf", 0.1, 0.8), ("2", 1.5, 0.6), ("1", 10.0, 0.6)])
def test_pgd_breaks_a_plain_mlp(mnist_mlp, p, eps, floor):
    module, net, x, y = mnist_mlp
    correct = net.predict(x) == y
    assert correct.float().mean() > 0.9
    res = pgd_attack(net, LpBall.make(x, eps, p), y, steps=40)
    rate = float((res.success & correct).sum()) / float(correct.sum())
    assert rate > floor, f"p={p}: {rate:.3f}"
    # every claimed success is inside the asked set and misclassified, by an independent float64 pass
    pv = {"inf": math.inf, "2": 2.0, "1": 1.0}[p]
    assert in_set(res.x_adv, x, eps, pv, 0.0, 1.0).all()
    ref = reference_margins(module, res.x_adv, y)
    assert (ref[res.success] > 0).all()
    assert torch.allclose(ref, res.margin, atol=1e-9)
    # misclassified test points are reported as they are
    wrong = ~correct
    assert torch.equal(res.x_adv[wrong], x[wrong]) and res.success[wrong].all()


def test_restarts_never_lose_and_seeds_reproduce(mnist_mlp):
    _, net, x, y = mnist_mlp
    ball = LpBall.make(x[:100], 0.06, "inf")
    one = pgd_attack(net, ball, y[:100], steps=20, seed=3)
    again = pgd_attack(net, ball, y[:100], steps=20, seed=3)
    assert torch.equal(one.x_adv, again.x_adv)
    other = pgd_attack(net, ball, y[:100], steps=20, seed=4)
    assert not torch.equal(one.x_adv, other.x_adv)
    three = pgd_attack(net, ball, y[:100], steps=20, restarts=3, seed=3)
    # the best point is chosen on float32 margins: float64 may reorder near-ties by ~1e-6
    assert (three.margin >= one.margin - 1e-4).all() and three.success.sum() >= one.success.sum()
    assert three.steps > one.steps == 20


@pytest.mark.parametrize("p, eps", [("inf", 0.06), ("2", 1.0), ("1", 6.0)])
def test_an_examples_result_does_not_depend_on_its_batch(mnist_mlp, p, eps):
    """Keyed by data-set index, an example gets the same random starts, and so the same point,
    alone, inside a larger call, at another position, or in another internal chunk."""
    _, net, x, y = mnist_mlp
    keys = torch.arange(100, 160)
    ball = LpBall.make(x[:60], eps, p)
    whole = pgd_attack(net, ball, y[:60], steps=5, restarts=2, keys=keys, seed=7)
    pick = torch.tensor([41, 3, 17])  # another order, a subset
    part = pgd_attack(net, ball.select(pick), y[pick], steps=5, restarts=2, keys=keys[pick], seed=7)
    torch.testing.assert_close(part.x_adv, whole.x_adv[pick], rtol=0, atol=1e-6)
    chunked = PGD(steps=5, restarts=2, seed=7, batch_size=7)(net, ball, y[:60], keys=keys)
    torch.testing.assert_close(chunked.x_adv, whole.x_adv, rtol=0, atol=1e-6)
    assert torch.equal(part.success, whole.success[pick])
    with pytest.raises(Exception, match="attack keys"):
        pgd_attack(net, ball, y[:60], keys=keys[:3])


def test_options_cross_entropy_and_decay(mnist_mlp):
    _, net, x, y = mnist_mlp
    correct = net.predict(x) == y
    for kw in ({"loss": "ce"}, {"schedule": "decay"}, {"random_start": False}):
        res = pgd_attack(net, LpBall.make(x, 0.1, "inf"), y, steps=40, **kw)
        assert float((res.success & correct).sum()) / float(correct.sum()) > 0.8, kw
        assert in_set(res.x_adv, x, 0.1, math.inf, 0.0, 1.0).all()


# --------------------------------------------------------------------------- never leaving the set


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
@pytest.mark.parametrize("eps", [0.7, 0.1, 0.3, 1e-3])  # 0.7 and 0.3 round down, 0.1 up, in float32
def test_returned_points_stay_in_the_set(mnist_mlp, p, eps):
    _, net, x, y = mnist_mlp
    x = x[:40]
    radius = eps * (10 if p == 1.0 else 3 if p == 2.0 else 1)
    ball = LpBall.make(x, radius, p)
    for kw in ({"steps": 10, "step_size": 10 * radius}, {"steps": 5, "restarts": 2}):
        res = pgd_attack(net, ball, y[:40], **kw)
        assert in_set(res.x_adv, x, radius, p, 0.0, 1.0).all()
        assert res.x_adv.dtype == torch.float32
    res = fgsm(net, ball, y[:40])
    assert in_set(res.x_adv, x, radius, p, 0.0, 1.0).all()


def test_inside_set_repairs_rounding_overshoot():
    """Points just outside (by float rounding, or further) come back inside, close to where they were."""
    g = torch.Generator().manual_seed(9)
    c = torch.rand(64, 100, generator=g)
    for p, eps in ((math.inf, 0.7), (2.0, 0.7), (1.0, 3.3)):
        ball = LpBall.make(c, eps, p)
        d = torch.randn(64, 100, generator=g, dtype=torch.float64)
        d = d / d.norm(p=p, dim=1, keepdim=True) * eps * 1.0000001  # a hair outside
        x = (c.double() + d).float()
        fixed = inside_set(ball, x)
        assert in_set(fixed, c, eps, p, 0.0, 1.0).all()
        assert (fixed - project(ball, x)).abs().max() < 1e-4


def test_l1_projection_is_the_euclidean_projection_onto_ball_and_box():
    """Against brute force: no point of the set found by random search is closer than the projection."""
    g = torch.Generator().manual_seed(10)
    c = torch.rand(1, 6, generator=g)
    ball = LpBall.make(c, 0.8, 1)
    z = c + 2 * torch.randn(1, 6, generator=g)
    pz = project(ball.to(torch.float64), z.double())
    assert in_set(pz, c, 0.8 + 1e-9, 1.0, 0.0, 1.0).all()
    best = (pz - z.double()).norm()
    cand = c.double() + torch.randn(200000, 6, generator=g, dtype=torch.float64) * 0.5
    ok = in_set(cand, c.expand(200000, 6), 0.8, 1.0, 0.0, 1.0)
    dist = (cand[ok] - z.double()).norm(dim=1)
    assert dist.min() >= best - 1e-9
