"""The certification decision: rigorous float32 bounds, the float64 recheck near zero, the safety margin."""

from __future__ import annotations

import math

import pytest
import torch

from verify.bounds import SAFETY_REL, certify_with_bounds, compute_bounds
from verify.errors import SpecError
from verify.mip.lp_bound import certify_with_method
from verify.network import Linear, Network
from verify.spec import LpBall


def _edge_net(gap: float) -> tuple[Network, LpBall, torch.Tensor, float]:
    """f_0 - f_1 = <w, x> + b with min over the Linf ball exactly ``gap`` (in float64)."""
    g = torch.Generator().manual_seed(5)
    w = torch.rand(20, generator=g, dtype=torch.float64) * 0.3 + 0.1
    x0 = torch.full((1, 20), 0.5, dtype=torch.float64)
    eps = 0.1
    exact_min = float(w @ (x0[0] - eps))  # all weights positive: the minimiser is x0 - eps
    b = gap - exact_min
    weight = torch.stack([w, torch.zeros(20, dtype=torch.float64)])
    bias = torch.tensor([b, 0.0], dtype=torch.float64)
    net = Network([Linear(weight, bias)], (20,))
    return net, LpBall.make(x0, eps, "inf"), torch.tensor([0]), exact_min + b


def test_float64_bound_on_the_edge_is_not_certified() -> None:
    threshold = SAFETY_REL  # logits here are below 1 in magnitude: threshold = SAFETY_REL * 1
    for gap in (-1e-9, 0.0, 1e-9, 1e-8, 5e-7, 0.9 * threshold):
        net, pset, y, true_gap = _edge_net(gap)
        for method in ("ibp", "kw", "crown", "alpha-crown", "lp"):
            res = certify_with_method(net, pset, y, method=method)
            assert not bool(res.certified[0]), (gap, method, float(res.margin_lb[0]))
    # and a bound that float32 screening alone would have passed is still refused
    refused_after_screen = 0
    for k in range(40):
        gap = (k - 20) * 2e-9
        net, pset, y, _ = _edge_net(gap)
        f32 = compute_bounds(net, pset, y, method="crown", dtype=torch.float32).margin_lb[0, 1]
        res = certify_with_bounds(net, pset, y, method="crown")
        assert not bool(res.certified[0])
        if float(f32) > 0:  # rechecked: the reported bound is the float64 one
            assert abs(float(res.margin_lb[0]) - gap) < 1e-12
        refused_after_screen += int(float(f32) > 0)
    assert refused_after_screen > 0


def test_clear_margin_is_certified_with_a_rigorous_bound() -> None:
    """A clear margin is certified by the widened float32 bound (no float64 recompute); the
    reported bound is below the exact margin by at most the rounding allowance (lp: float64)."""
    net, pset, y, true_gap = _edge_net(1e-3)
    for method in ("ibp", "kw", "crown", "alpha-crown", "lp"):
        res = certify_with_method(net, pset, y, method=method)
        assert bool(res.certified[0]), method
        assert res.margin_lb.dtype == torch.float64
        assert float(res.margin_lb[0]) <= 1e-3 + 1e-12
        assert 1e-3 - float(res.margin_lb[0]) < (1e-9 if method == "lp" else 2e-4)  # the rounding allowance: ~5e-5 here


def test_certified_implies_positive_float64_bound_on_random_nets() -> None:
    from tests.bounds.nets import dense_net

    net = dense_net(2, sizes=(5, 10, 10, 3))
    x = torch.rand(60, 5, dtype=torch.float64)
    y = net.predict(x)
    pset = LpBall.make(x, 0.03, "inf")
    for method in ("kw", "crown", "alpha-crown"):
        with torch.no_grad():  # as the CLI calls it: alpha-crown must still optimise
            res = certify_with_bounds(net, pset, y, method=method)
        ref = compute_bounds(net, pset, y, method="crown" if method == "alpha-crown" else method,
                             dtype=torch.float64).margin_lb.amin(1)
        assert bool(res.certified.any())
        # every certificate has a float64 bound above the safety margin
        assert bool((res.margin_lb[res.certified] > SAFETY_REL).all())
        if method != "alpha-crown":
            assert bool((ref[res.certified] > SAFETY_REL).all())
        assert not bool((res.certified & (net.predict(x) != y)).any())
        assert math.isfinite(float(res.margin_lb.min()))


def test_method_lp_is_the_mips_not_the_bound_engines() -> None:
    """verify.bounds does not import the MIP: its entry points refuse lp and name where it lives."""
    net, pset, y, _ = _edge_net(1e-3)
    for call in (certify_with_bounds, compute_bounds):
        with pytest.raises(SpecError, match="verify.mip.lp_bound"):
            call(net, pset, y, method="lp")
