"""Perturbation growth ratios: identity groups give 1, linear groups give ||W d|| / ||d|| (numpy oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.bounds.nets import conv_net, dense_net, residual_net
from verify.analysis import default_groups, growth_ratios, perturbation_growth
from verify.analysis.pgr import parse_groups, plot_pgr, top_level_nodes
from verify.errors import SpecError
from verify.network import Add, Conv2d, Flatten, Linear, Network, ReLU, Residual


def _identity_block_net(seed: int = 0) -> Network:
    """conv, ReLU, a residual block whose body outputs exactly 0 (out = in), flatten, fc."""
    g = torch.Generator().manual_seed(seed)
    zero_body = [Conv2d(torch.zeros(2, 2, 3, 3, dtype=torch.float64), None, 1, 1)]
    return Network([Conv2d(torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64), None, 1, 1), ReLU(),
                    Residual(zero_body), Flatten(), Linear(torch.randn(3, 2 * 5 * 5, generator=g, dtype=torch.float64))],
                   (1, 5, 5))


def test_identity_group_has_growth_ratio_one() -> None:
    net = _identity_block_net()
    groups = default_groups(net)
    assert len(groups) == 1 and isinstance(net.graph[groups[0][1]].op, Add)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 5, 5, generator=g)
    y = net.predict(x)
    res = perturbation_growth(net, x, y, eps=0.2, p="inf", steps=5)
    (grp,) = res.groups
    assert grp.points > 0
    assert grp.pgr_l1 == pytest.approx(1.0, abs=1e-12) and grp.pgr_l2 == pytest.approx(1.0, abs=1e-12)
    # a flatten (a permutation) and a node with itself are identities too
    flat = next(n.index for n in net.graph if isinstance(n.op, Flatten))
    r = growth_ratios(net, x, x + 0.01 * torch.randn(x.shape, generator=g), [(flat - 1, flat), (1, 1)])
    assert torch.allclose(r, torch.ones_like(r), atol=1e-12)


def test_linear_group_matches_numpy() -> None:
    g = torch.Generator().manual_seed(2)
    w1 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    w2 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    net = Network([Linear(w1, torch.randn(6, generator=g)), ReLU(), Linear(w2)], (4,))
    x = torch.rand(10, 4, generator=g, dtype=torch.float64)
    x_adv = x + 0.05 * torch.randn(10, 4, generator=g, dtype=torch.float64)
    r = growth_ratios(net, x, x_adv, [(0, 1), (2, 3)])
    d = (x_adv - x).numpy()
    wd = d @ w1.numpy().T
    for k, p in enumerate((1, 2)):
        expect = np.linalg.norm(wd, ord=p, axis=1) / np.linalg.norm(d, ord=p, axis=1)
        np.testing.assert_allclose(r[:, 0, k].numpy(), expect, rtol=1e-12)
    # the second group: the last Linear on the ReLU outputs' difference
    h = np.maximum(x.numpy() @ w1.numpy().T + net.layers[0].bias.numpy(), 0)
    h_adv = np.maximum(x_adv.numpy() @ w1.numpy().T + net.layers[0].bias.numpy(), 0)
    dh = h_adv - h
    ok = np.linalg.norm(dh, axis=1) > 0
    expect2 = np.linalg.norm(dh @ w2.numpy().T, axis=1)[ok] / np.linalg.norm(dh, axis=1)[ok]
    np.testing.assert_allclose(r[ok, 1, 1].numpy(), expect2, rtol=1e-12)
    assert torch.isnan(r[~torch.as_tensor(ok), 1]).all()


def test_pgr_mean_over_points_on_a_linear_net() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    net = Network([Linear(w)], (5,))
    x = torch.rand(12, 5, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    res = perturbation_growth(net, x, y, eps=0.1, p=2, groups=[(0, 1)], steps=5)
    (grp,) = res.groups
    assert grp.points == 12  # misclassified points (random labels) get a PGD point too
    sv = np.linalg.svd(w.numpy(), compute_uv=False)
    assert sv.min() * (1 - 1e-9) <= grp.pgr_l2 <= sv.max() * (1 + 1e-9)


def test_default_groups() -> None:
    res = residual_net(0)
    spans = top_level_nodes(res)
    assert len(spans) == len(res.layers) and spans[-1][1] == len(res.graph) - 1
    block = [i for i, l in enumerate(res.layers) if isinstance(l, Residual)][0]
    assert isinstance(res.graph[spans[block][1]].op, Add)
    assert default_groups(res) == [spans[block]]
    dense = dense_net(0)
    relus = [n.index for n in dense.relu_nodes]
    assert default_groups(dense) == [(0, relus[0]), (relus[0], relus[1]), (relus[1], len(dense.graph) - 1)]
    meta = conv_net(0)
    meta.metadata["groups"] = [[0, 2], [2, 4]]
    assert default_groups(meta) == [(0, 2), (2, 4)]


def test_bad_groups_raise() -> None:
    net = dense_net(0)
    x = torch.rand(2, 6)
    with pytest.raises(SpecError):
        growth_ratios(net, x, x, [(3, 1)])
    with pytest.raises(SpecError):
        growth_ratios(net, x, x, [(0, 99)])
    with pytest.raises(SpecError):
        parse_groups("0-3")
    assert parse_groups("0:3, 3:7") == [(0, 3), (3, 7)]
    with pytest.raises(SpecError):
        perturbation_growth(net, x, torch.zeros(2, dtype=torch.long), eps=0.0)


def test_plot(tmp_path) -> None:
    net = dense_net(1)
    x = torch.rand(6, 6)
    res = perturbation_growth(net, x, net.predict(x), eps=0.1, steps=3)
    assert all(math.isfinite(g.pgr_l1) for g in res.groups)
    plot_pgr(res, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
