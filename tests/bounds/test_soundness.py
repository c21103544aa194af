"""Soundness: no point of the set (10^4 samples per case, plus a PGD point) violates any bound.

Every method's intermediate bounds (every node) and final margin bounds are checked in
float64 on dense, convolutional (stride 2, asymmetric SAME padding) and residual
(ChannelAffine, AvgPool2d) networks, for p = 1, 2, inf, with centres on the box's faces.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.bounds.nets import conv_net, dense_net, residual_net
from tests.bounds.sampling import sample_set
from verify.bounds import compute_bounds
from verify.mip.lp_bound import lp_bounds
from verify.spec import LpBall

NETS = {"dense": dense_net, "conv": conv_net, "residual": residual_net}
EPS = {"inf": 0.08, "2": 0.4, "1": 1.0}
TOL = 1e-9


def _centres(net, n: int, g: torch.Generator) -> torch.Tensor:
    x = torch.rand(n, *net.input_shape, generator=g, dtype=torch.float64)
    flat = x.reshape(n, -1)
    flat[:, ::5] = 0.0  # some coordinates on the box faces: the intersection matters
    flat[:, 1::7] = 1.0
    return x


def _pgd_points(net, pset: LpBall, labels: torch.Tensor) -> torch.Tensor | None:
    try:
        from verify.attacks import pgd_attack
    except ImportError:
        return None
    res = pgd_attack(net, pset.to(torch.float32), labels, steps=30, restarts=1)
    # a float32 point can sit 1e-8 outside the float64 set: project it back in float64
    x = pset.project(res.x_adv.to(torch.float64))
    if math.isinf(pset.p):
        lo, hi = pset.box()
        x = torch.maximum(torch.minimum(x, hi), lo)
    return x


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("p", ["inf", "2", "1"])
def test_no_sample_violates_any_bound(name: str, p: str) -> None:
    net = NETS[name](1)
    g = torch.Generator().manual_seed(7)
    x = _centres(net, 2, g)
    y = net.predict(x)
    pset = LpBall.make(x, EPS[p], p)
    methods = ["ibp", "kw", "crown", "alpha-crown"] + ([] if p == "2" else ["lp"])
    results = {m: lp_bounds(net, pset, y) if m == "lp" else compute_bounds(net, pset, y, method=m, dtype=torch.float64, alpha_steps=10)
               for m in methods}
    adv = _pgd_points(net, pset, y)
    checked_unstable = 0
    for i in range(pset.n):
        pts = sample_set(pset, i, 5000, g)
        if adv is not None:
            pts = torch.cat([pts, adv[i : i + 1]])
        with torch.no_grad():
            values = net.forward(pts, all_nodes=True)
        logits = values[-1]
        margins = logits[:, y[i] : y[i] + 1] - logits
        for m, res in results.items():
            for k, (lo, hi) in res.intermediate.items():
                v = values[k]
                assert bool((v >= lo[i] - TOL).all()), f"{m}: node {k} below its lower bound"
                assert bool((v <= hi[i] + TOL).all()), f"{m}: node {k} above its upper bound"
            lb = res.margin_lb[i].clone()
            lb[y[i]] = 0.0  # column y is +inf by convention (f_y - f_y = 0)
            assert bool((margins >= lb - TOL).all()), f"{m}: a sample beats the margin bound"
        lo, hi = results["crown"].intermediate[net.relu_nodes[-1].inputs[0]]
        checked_unstable += int(((lo[i] < 0) & (hi[i] > 0)).sum())
    assert checked_unstable > 0  # the case is not trivially stable


def _linear_nets() -> list:
    from verify.network import Flatten, Linear, Network

    g = torch.Generator().manual_seed(3)
    w1 = torch.randn(5, 6, generator=g, dtype=torch.float64)
    b1 = torch.randn(5, generator=g, dtype=torch.float64)
    w2 = torch.randn(4, 12, generator=g, dtype=torch.float64)
    b2 = torch.randn(4, generator=g, dtype=torch.float64)
    return [
        (Network([Linear(w1, b1)], (6,), (-1e3, 1e3)), w1, b1),
        (Network([Flatten("NHWC"), Linear(w2, b2)], (3, 2, 2), (-1e3, 1e3)), None, b2),
    ]


@pytest.mark.parametrize("p", ["inf", "2", "1"])
def test_linear_network_bounds_are_exact(p: str) -> None:
    """On an affine network every method gives W x + b -/+ eps ||W_i||_q (q the dual norm) exactly."""
    from verify.bounds import backward_bound
    from verify.network import Flatten

    q = {"inf": 1.0, "2": 2.0, "1": math.inf}[p]
    eps = 0.3
    for net, w, b in _linear_nets():
        if w is None:  # Flatten(NHWC) + Linear: the effective W permutes the input
            lin = net.layers[1]
            eye = torch.eye(net.input_dim, dtype=torch.float64).reshape(-1, *net.input_shape)
            w = lin.weight @ Flatten("NHWC").forward(eye).T
        x = torch.rand(3, *net.input_shape, dtype=torch.float64) * 4 - 2
        pset = LpBall.make(x, eps, p, net.input_range)
        center = x.reshape(3, -1) @ w.T + b
        radius = eps * w.norm(p=q, dim=1)
        out = net.graph[-1].index
        k = net.n_classes
        eye = torch.eye(k, dtype=torch.float64).expand(3, k, k)
        lower = backward_bound(net, pset, out, eye, {}, rule="crown")
        upper = -backward_bound(net, pset, out, -eye, {}, rule="crown")
        torch.testing.assert_close(lower, center - radius, rtol=0, atol=1e-9)
        torch.testing.assert_close(upper, center + radius, rtol=0, atol=1e-9)
        y = torch.tensor([0, 1, 2])
        diff = w[y][:, None, :] - w[None, :, :]  # (N, K, d): w_y - w_j
        exact = (center.gather(1, y[:, None]) - center) - eps * diff.norm(p=q, dim=-1)
        exact[torch.arange(3), y] = math.inf
        methods = ["kw", "crown", "alpha-crown"] + (["ibp"] if p == "inf" else []) + ([] if p == "2" else ["lp"])
        for m in methods:
            got = (lp_bounds(net, pset, y) if m == "lp" else compute_bounds(net, pset, y, method=m, dtype=torch.float64)).margin_lb
            torch.testing.assert_close(got, exact, rtol=0, atol=1e-7 if m == "lp" else 1e-9, msg=m)
