"""certify_rows: rigorous bounds on any rows c . f(x) - d, the one bound stage of robustness
(margin rows) and VNNLIB properties.

Oracles: the exact minimum of c . f over the box on networks whose ReLUs are all stable (f is
affine there: c . J x + const, minimised coordinate by coordinate in float64), sampling inside
the set, and the float64 bound of the same method.
"""

from __future__ import annotations

import pytest
import torch

from tests.bounds.nets import conv_net, dense_net
from tests.test_soundness_rounding import deep_dense, positive_conv
from verify.bounds import certify_rows, certify_with_bounds, compute_bounds, convtail
from verify.bounds.backward import margin_spec
from verify.bounds.compute import compute_rows
from verify.bounds.intermediate import linear_intermediate
from verify.network import Linear, Network
from verify.spec import LpBall

METHODS = ["ibp", "kw", "crown", "alpha-crown"]


def _exact_min(net: Network, pset: LpBall, c: torch.Tensor) -> torch.Tensor:
    """min over the box of c[r] . f(x) for a network affine on it (one example): (R,) float64."""
    x0 = pset.center[:1]
    jac = torch.autograd.functional.jacobian(lambda z: net.forward(z).reshape(-1), x0).reshape(net.n_classes, -1)
    lo, hi = (t.reshape(-1) for t in pset.box())
    lo, hi = lo[: x0.numel()], hi[: x0.numel()]
    g = c @ jac  # (R, n_in)
    base = c @ net.forward(x0).reshape(-1) - g @ x0.reshape(-1)
    return base + (g.clamp(min=0) * lo + g.clamp(max=0) * hi).sum(1)


def big_bias_affine() -> Network:
    """One affine layer with biases near 1e6: the float32 rounding of the bound (not the widened
    input box, as on the ReLU nets) is what the allowance must cover (with it zeroed, rows are
    proven wrongly here)."""
    g = torch.Generator().manual_seed(9)
    return Network([Linear(torch.randn(3, 30, generator=g, dtype=torch.float64) * 3,
                           torch.randn(3, generator=g, dtype=torch.float64) * 1e6)], (30,), name="big-bias")


@pytest.mark.parametrize("make", [lambda: deep_dense(3, positive=True, scale=6.0), lambda: positive_conv(5), big_bias_affine])
@pytest.mark.parametrize("method", METHODS)
def test_near_zero_rows_are_never_proven_wrongly(monkeypatch, make, method) -> None:
    """Rows with entries that are not float32 numbers, thresholds d put so the exact minimum of
    c . f - d is -1e-4 ... +1e-10 of the output scale: never proven; at +1e-2 they are."""
    monkeypatch.setattr(convtail, "TAIL_MIN_ROWS", 1)
    net = make()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, *net.input_shape, generator=g, dtype=torch.float64) * 0.6 + 0.2
    pset = LpBall.make(x, 0.02, "inf", net.input_range)
    if net.relu_nodes:
        lo, _ = linear_intermediate(net, pset, rule="crown", dtype=torch.float64)[net.relu_nodes[0].inputs[0]]
        assert bool((lo > 0).all())  # stable: f is affine on the set
    c = torch.randn(12, net.n_classes, generator=g, dtype=torch.float64) / 3
    assert not torch.equal(c, c.float().double())  # the float32 copy of the rows is not exact
    exact = _exact_min(net, pset, c)
    scale = float((c.abs().sum(1) * net.forward(x).abs().max()).max())
    for rel_gap in (-1e-4, -1e-7, -1e-10, 0.0, 1e-10):
        rows = certify_rows(net, pset, c, exact - rel_gap * scale, method=method)
        assert not bool(rows.proven.any()), (method, rel_gap, rows.lower)
    if method != "ibp":  # the interval bound is loose even on stable nets
        rows = certify_rows(net, pset, c, exact - 1e-2 * scale, method=method)
        assert bool(rows.proven.all()), (method, rows.lower)
        assert bool((rows.lower <= 1e-2 * scale).all())  # and the bound reported is below the exact one


@pytest.mark.parametrize("make", [lambda: dense_net(1), lambda: conv_net(2)])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", ["inf", "2"])
def test_rows_are_sound_and_agree_with_float64(make, method, p) -> None:
    """Random rows (per example) and thresholds: every reported bound of a proven row is below every
    sampled value of c . f - d, proven rows are proven by the float64 bound of the same method, and
    rows the float64 bound puts clearly above zero are proven (Linf: the guarded float32 pass)."""
    net = make()
    g = torch.Generator().manual_seed(7)
    n, r = 12, 5
    x = torch.rand(n, *net.input_shape, generator=g, dtype=torch.float64)
    eps = 0.03 if p == "inf" else 0.1
    pset = LpBall.make(x, eps, p, net.input_range)
    c = torch.randn(n, r, net.n_classes, generator=g, dtype=torch.float64)
    y0 = torch.einsum("nrk,nk->nr", c, net.forward(x))
    d = y0 - torch.rand(n, r, generator=g, dtype=torch.float64) * 2  # many rows hold, some do not
    d[:, -1] = -torch.inf  # a vacuous row
    rows = certify_rows(net, pset, c, d, method=method)
    assert bool(rows.proven[:, -1].all()) and bool(torch.isinf(rows.lower[:, -1]).all())
    xs = torch.stack([pset.project(x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * eps)
                      for _ in range(100)], 1)
    vals = torch.einsum("nrk,nsk->nsr", c, net.forward(xs.reshape(-1, *net.input_shape)).reshape(n, 100, -1)) - d.unsqueeze(1)
    proven = rows.proven[:, :-1]
    assert bool((vals.amin(1)[:, :-1][proven] > 0).all())
    assert bool((rows.lower[:, :-1][proven] <= vals.amin(1)[:, :-1][proven] + 1e-9).all())
    m64, _ = compute_rows(net, pset, c, method=method, dtype=torch.float64)
    low64 = (m64 - d)[:, :-1]
    assert bool((low64[proven] > 0).all())
    if p == "inf":
        clear = low64 > 1e-2 * (1 + y0.abs()[:, :-1])
        assert bool(proven[clear].all())


@pytest.mark.parametrize("method", METHODS)
def test_certify_with_bounds_is_the_margin_rows(method) -> None:
    """certify_with_bounds = certify_rows on the rows e_y - e_j > 0: the same decisions as the rows
    without row y, margin_lb their least bound (below every sampled margin), and no certificate
    the float64 margins deny."""
    net = conv_net(1)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(30, *net.input_shape, generator=g, dtype=torch.float64)
    y = net.predict(x)
    for eps in (0.01, 0.05):
        pset = LpBall.make(x, eps, "inf", net.input_range)
        res = certify_with_bounds(net, pset, y, method=method)
        spec = margin_spec(y, net.n_classes, torch.float64)
        keep = torch.ones(spec.shape[:2], dtype=torch.bool)
        keep[torch.arange(len(y)), y] = False
        rows = certify_rows(net, pset, spec[keep].reshape(len(y), -1, net.n_classes),
                            torch.zeros(len(y), net.n_classes - 1, dtype=torch.float64), method=method)
        assert torch.equal(res.certified, rows.proven.all(1))
        assert torch.allclose(res.margin_lb, rows.lower.amin(1), rtol=1e-5, atol=1e-6)
        m64 = compute_bounds(net, pset, y, method=method, dtype=torch.float64).margin_lb.amin(1)
        assert bool((m64[res.certified] > 0).all())
        xs = torch.cat([pset.project(x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * eps)
                        for _ in range(50)])
        out = net.forward(xs).reshape(50, len(y), -1)
        worst = (out.gather(2, y.reshape(1, -1, 1).expand(50, -1, 1)) - out).masked_fill(~keep.unsqueeze(0), torch.inf)
        assert bool((res.margin_lb[res.certified] <= worst.amin((0, 2))[res.certified]).all())


def test_disjunct_bounds_are_the_rows_of_its_disjuncts() -> None:
    """disjunct_bounds = certify_rows(float64) on the rows of all disjuncts: a disjunct is proven when
    one of its rows is; a disjunct without rows is never proven (and the node bounds still come back)."""
    import numpy as np

    from verify.complete import disjunct_bounds
    from verify.properties import OutputProperty
    from verify.query import Disjunct, Query

    net = conv_net(0)
    x = torch.rand(49, generator=torch.Generator().manual_seed(1), dtype=torch.float64).numpy()
    y = net.forward(torch.as_tensor(x).reshape(1, 1, 7, 7)).reshape(-1).numpy()
    far, near = np.array([y[0] - y[1] - 50.0]), np.array([y[0] - y[1] + 1.0])
    row = np.array([[1.0, -1.0, 0.0]])
    djs = (Disjunct(np.zeros((0, 3)), np.zeros(0)), Disjunct(row, far), Disjunct(np.concatenate([row, -row]), np.concatenate([near, far])),
           Disjunct(row, near))
    prop = OutputProperty(np.clip(x - 0.01, 0, 1), np.clip(x + 0.01, 0, 1), djs, 3)
    pb = disjunct_bounds(net, Query(prop.box(net), djs))
    assert pb.proven.tolist() == [False, True, True, False] and pb.method == "crown"  # 2: its second row
    rows = certify_rows(net, prop.box(net), torch.as_tensor(np.concatenate([row, row, -row, row])),  # type: ignore[arg-type]
                        torch.as_tensor(np.concatenate([far, near, far, near])), method="crown", float64=True)
    assert pb.violation_lb[1] == rows.lower[0, 0] and pb.violation_lb[3] == rows.lower[0, 3]
    assert pb.violation_lb[2] == max(rows.lower[0, 1], rows.lower[0, 2]) and pb.violation_lb[0] == -np.inf
    assert set(pb.intermediate) == set(range(len(net.graph)))
