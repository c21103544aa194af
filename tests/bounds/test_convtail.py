"""The batched conv stem (verify.bounds.convtail) gives the generic engine's bounds.

Oracle: the generic backward engine (itself checked against sampling, the LP and linear-net
closed forms elsewhere) on the same rows, with the stem switched off.
"""

from __future__ import annotations

import pytest
import torch

from verify.bounds import convtail
from verify.bounds.backward import backward_bound, backward_range
from verify.bounds.intermediate import linear_intermediate
from verify.bounds.relax import relu_relaxation
from verify.bounds.slopes import crown_slopes
from verify.network import ChannelAffine, Conv2d, Flatten, Linear, Network, ReLU, same_padding
from verify.spec import LpBall

from .nets import _w, conv_net


def normalised_net(seed: int = 0) -> Network:
    """Normalisation, conv 3@3x3 s1 asymmetric pad, conv 4@4x4 s2 SAME, fc 20, fc 4: 2 input channels."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.2  # noqa: E731
    c2 = Conv2d(_w(g, 4, 3, 4, 4, scale=1.5), rnd(4), 2, same_padding((7, 7), (4, 4), (2, 2)))
    return Network([ChannelAffine.normalize([0.4, 0.5], [0.3, 0.2]), Conv2d(_w(g, 3, 2, 3, 3, scale=1.5), rnd(3), 1, (0, 1, 1, 0)),
                    ReLU(), c2, ReLU(), Flatten("NHWC"), Linear(_w(g, 20, 64, scale=1.5), rnd(20)), ReLU(),
                    Linear(_w(g, 4, 20, scale=1.5), rnd(4))], (2, 8, 8), name="normalised")


NETS = {"conv": conv_net, "normalised": normalised_net}


def _both(monkeypatch, fn):
    monkeypatch.setattr(convtail, "TAIL_MIN_ROWS", 1)
    fast = fn()
    monkeypatch.setattr(convtail, "TAIL_MIN_ROWS", 10**9)
    return fast, fn()


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("p", ["inf", "2", "1"])
def test_stem_equals_generic_engine(monkeypatch, name, p):
    net = NETS[name](2)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((5, *net.input_shape), generator=g, dtype=torch.float64)
    pset = LpBall.make(x, {"inf": 0.06, "2": 0.5, "1": 1.5}[p], p, net.input_range)
    bounds = linear_intermediate(net, pset, rule="kw", dtype=torch.float64)
    assert convtail.tail_plan(net, net.graph[-1].index) is not None
    unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for i, (lo, hi) in bounds.items() if i in (1, 2, 3, 4))
    assert unstable > 0  # the CROWN / alpha correction on unstable neurons is exercised
    root = net.graph[-1].index
    a = torch.randn((5, 7, *net.graph[root].shape), generator=g, dtype=torch.float64)
    c = torch.randn((5, 7), generator=g, dtype=torch.float64)
    alpha = {i: torch.rand(t.shape, generator=g, dtype=torch.float64) for i, t in crown_slopes(net, bounds, 7).items()}
    rels = {j: relu_relaxation(*bounds[j], "kw") for j in bounds}
    for rule in ("kw", "crown"):
        fast, slow = _both(monkeypatch, lambda: backward_bound(net, pset, root, a, bounds, rule=rule, const=c))
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    fast, slow = _both(monkeypatch, lambda: backward_bound(net, pset, root, a, bounds, rule="alpha", const=c, alpha=alpha))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    fast, slow = _both(monkeypatch, lambda: torch.stack(backward_range(net, pset, root, a, rels, const=c)))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rule", ["kw", "crown"])
def test_all_rows_intermediate_equals_pairs(monkeypatch, rule):
    """Dense-layer bounds with every neuron as a row through the stem == the per-(example, neuron) pairs."""
    net = normalised_net(4)
    g = torch.Generator().manual_seed(3)
    x = torch.rand((6, *net.input_shape), generator=g, dtype=torch.float64)
    pset = LpBall.make(x, 0.05, "inf", net.input_range)
    fast, slow = _both(monkeypatch, lambda: linear_intermediate(net, pset, rule=rule, dtype=torch.float64))
    for i in slow:
        torch.testing.assert_close(fast[i][0], slow[i][0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(fast[i][1], slow[i][1], rtol=1e-9, atol=1e-9)


def test_stem_in_float32_matches_float64_within_1e5(monkeypatch):
    """On the float32 path the stem stays within 1e-5 (relative to the logit scale) of the generic float64 engine."""
    net = normalised_net(5)
    g = torch.Generator().manual_seed(5)
    x = torch.rand((8, *net.input_shape), generator=g, dtype=torch.float64)
    pset = LpBall.make(x, 0.05, "inf", net.input_range)
    monkeypatch.setattr(convtail, "TAIL_MIN_ROWS", 1)
    b32 = linear_intermediate(net, pset, rule="crown", dtype=torch.float32)
    monkeypatch.setattr(convtail, "TAIL_MIN_ROWS", 10**9)
    b64 = linear_intermediate(net, pset, rule="crown", dtype=torch.float64)
    for i in b64:
        scale = float(b64[i][1].abs().max()) + 1.0
        assert float((b32[i][0].double() - b64[i][0]).abs().max()) < 1e-5 * scale
