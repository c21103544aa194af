"""Float32 certificates under rounding: the a-priori error bound holds, and near-zero margins built
on purpose are never certified wrongly.

Oracles: the float64 evaluation of the same bound on the same float32 data (for the error
bound), and the exact LP in float64 (``method="lp"``) on networks whose ReLUs are all stable,
where the LP is the exact minimum of the margin over the set (for the decisions).
"""

from __future__ import annotations

import pytest
import torch

from tests.bounds.nets import _w, conv_net
from tests.bounds.test_convtail import normalised_net
from verify.bounds import certify_with_bounds, compute_bounds, convtail
from verify.mip.lp_bound import lp_bounds
from verify.bounds.backward import backward_bound, margin_spec
from verify.bounds.intermediate import linear_intermediate
from verify.bounds.relax import ReluRelaxation, relu_relaxation
from verify.bounds.rounding import RoundingGuard, outward_ball
from verify.network import Conv2d, Flatten, Linear, Network, ReLU
from verify.spec import LpBall


def deep_dense(seed: int, depth: int = 7, width: int = 12, scale: float = 4.0, positive: bool = False) -> Network:
    """Deep, wide-range weights (|W| up to ~scale^depth growth); ``positive``: every ReLU stably active."""
    g = torch.Generator().manual_seed(seed)
    layers: list = []
    sizes = [6] + [width] * depth + [3]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = _w(g, b, a, scale=scale)
        bias = torch.randn(b, generator=g, dtype=torch.float64)
        if positive:
            w, bias = w.abs(), bias.abs() + 0.1
        layers.append(Linear(w, bias))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Network(layers, (6,), name=f"deep{seed}")


def positive_conv(seed: int) -> Network:
    """The conv stem (conv-ReLU-conv-ReLU-fc) with positive weights and biases: stable ReLUs, large scale."""
    g = torch.Generator().manual_seed(seed)
    pos = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64) * 3 + 0.1  # noqa: E731
    return Network([Conv2d(pos(4, 1, 4, 4), pos(4), 2, 1), ReLU(), Conv2d(pos(5, 4, 3, 3), pos(5), 1, 1), ReLU(), Flatten("NHWC"),
                    Linear(pos(8, 5 * 4 * 4), pos(8)), ReLU(), Linear(torch.randn(3, 8, generator=g, dtype=torch.float64) * 5,
                                                                   torch.zeros(3, dtype=torch.float64))], (1, 8, 8), name="posconv")


@pytest.mark.parametrize("make", [lambda: deep_dense(1), lambda: deep_dense(2, scale=8.0), conv_net, normalised_net])
@pytest.mark.parametrize("rule", ["kw", "crown"])
def test_error_bound_covers_the_float32_error(monkeypatch, make, rule) -> None:
    """|float32 bound - the same bound in float64 on the same float32 data| <= the guard's allowance."""
    monkeypatch.setattr(convtail, "TAIL_MIN_ROWS", 1)  # the stem's regrouped arithmetic too
    net = make()
    g = torch.Generator().manual_seed(11)
    x = torch.rand(16, *net.input_shape, generator=g, dtype=torch.float64)
    y = net.predict(x)
    pset = LpBall.make(x, 0.05, "inf", net.input_range)
    p32 = outward_ball(pset)
    guard = RoundingGuard(net, torch.float32)
    with torch.no_grad():
        b32 = linear_intermediate(net, p32, rule=rule, dtype=torch.float32, guard=guard)
        rels32 = {j: relu_relaxation(*b32[j], rule) for j in b32 if j in {n.inputs[0] for n in net.relu_nodes}}
        rels64 = {j: ReluRelaxation(*(t.to(torch.float64) for t in (r.lam_lo, r.lam_up, r.mu_up)), r.unstable)
                  for j, r in rels32.items()}
        root = net.graph[-1].index
        spec = margin_spec(y, net.n_classes, torch.float64)
        m32 = backward_bound(net, p32, root, spec.float(), {}, rule=rule, relaxations=rels32).double()
        p64 = LpBall(p32.center.double(), p32.eps, p32.p, p32.lo, p32.hi)
        m64 = backward_bound(net, p64, root, spec, {}, rule=rule, relaxations=rels64)
    err = guard.row_error(spec)
    # the float64 box differs from the float32 one by the rounding of its edges (2 u |edge| each)
    box_slack = 2 * 2.0**-24 * 2 * (guard.mag[root].reshape(16, -1).amax(1, keepdim=True))
    off = torch.ones_like(err, dtype=torch.bool)
    off[torch.arange(16), y] = False
    gap = (m32 - m64).abs()[off]
    assert bool((gap <= err[off] + box_slack.expand_as(err)[off]).all()), float((gap - err[off]).max())
    assert bool((err[off] > 0).all())


def _shift_to_gap(net: Network, pset: LpBall, y: torch.Tensor, gap: float) -> Network:
    """The same network with class y's bias moved so that the exact min of the smallest margin is ``gap``."""
    exact = lp_bounds(net, pset, y).margin_lb.amin(1)  # stable ReLUs: the LP is exact
    layers = list(net.layers)
    last = layers[-1]
    bias = last.bias.clone()
    bias[int(y[0])] += gap - float(exact[0])
    layers[-1] = Linear(last.weight, bias)
    return Network(layers, net.input_shape, net.input_range, name=net.name + "-edge")


@pytest.mark.parametrize("make", [lambda: deep_dense(3, positive=True, scale=6.0), lambda: deep_dense(4, depth=4, positive=True),
                                  lambda: positive_conv(5)])
@pytest.mark.parametrize("method", ["ibp", "kw", "crown", "alpha-crown"])
def test_near_zero_margins_are_never_certified_wrongly(monkeypatch, make, method) -> None:
    monkeypatch.setattr(convtail, "TAIL_MIN_ROWS", 1)
    base = make()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, *base.input_shape, generator=g, dtype=torch.float64) * 0.6 + 0.2
    y = base.predict(x)
    pset = LpBall.make(x, 0.02, "inf", base.input_range)
    lo, hi = linear_intermediate(base, pset, rule="crown", dtype=torch.float64)[base.relu_nodes[0].inputs[0]]
    assert bool((lo > 0).all())  # stable: LP == exact minimum, and the linear bounds are tight
    scale = float(base.forward(x).abs().max())
    for rel_gap in (-1e-4, -1e-7, -1e-10, 0.0, 1e-10):
        net = _shift_to_gap(base, pset, y, rel_gap * scale)
        res = certify_with_bounds(net, pset, y, method=method)
        assert not bool(res.certified[0]), (method, rel_gap, float(res.margin_lb[0]))
    net = _shift_to_gap(base, pset, y, 1e-2 * scale)  # a clear margin is still certified
    if method != "ibp":  # the interval bound is loose even on stable nets
        assert bool(certify_with_bounds(net, pset, y, method=method).certified[0])


def test_rounding_guard_only_with_ieee_float32_on_the_cpu() -> None:
    """The a-priori bound assumes u = 2^-24 per product: with TF32 / bfloat16 matmuls allowed it does not
    hold, so the guard steps aside and every positive example goes through the float64 recheck."""
    from verify.bounds.rounding import guard_applies, ieee_context

    x = torch.rand(2, 1, 7, 7, dtype=torch.float64)
    ball = LpBall.make(x, 0.01, "inf")
    assert guard_applies(ball)
    assert not guard_applies(LpBall.make(x, 0.01, "2"))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not guard_applies(ball)
        # and the decision still holds up: same certified set as the float64 computation
        net = conv_net(3)
        y = net.predict(x)
        res = certify_with_bounds(net, ball, y, method="crown")
        ref = compute_bounds(net, ball, y, method="crown", dtype=torch.float64).margin_lb.amin(1)
        assert torch.equal(res.certified, ref > 1e-6 * net.forward(x).abs().amax(1).clamp(min=1))
    finally:
        torch.set_float32_matmul_precision(before)
    assert guard_applies(ball)
    with ieee_context():
        assert not torch._C._get_nnpack_enabled()  # NNPACK's Winograd convolutions are off in the guarded pass


def test_shared_layers_do_not_share_derived_matrices() -> None:
    """Regression (review): two networks built from the same layer objects, one with a Normalize in
    front. The conv stem's matrix was cached on the conv layer and served to the other network, which
    then certified points that PGD breaks. Now the result on B equals the result on a fresh copy of B."""
    import math

    from verify.network import ChannelAffine

    g = torch.Generator().manual_seed(0)

    def w(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g, dtype=torch.float64) * 1.5 / math.sqrt(math.prod(s[1:]))

    W = [w(4, 1, 3, 3), torch.randn(4, generator=g, dtype=torch.float64) * 0.2, w(4, 4, 3, 3),
         torch.randn(4, generator=g, dtype=torch.float64) * 0.2, w(80, 144), torch.randn(80, generator=g, dtype=torch.float64) * 0.2,
         w(3, 80), torch.randn(3, generator=g, dtype=torch.float64) * 0.2]

    def layers() -> list:
        return [Conv2d(W[0].clone(), W[1].clone(), 1, 1), ReLU(), Conv2d(W[2].clone(), W[3].clone(), 1, 1), ReLU(), Flatten(),
                Linear(W[4].clone(), W[5].clone()), ReLU(), Linear(W[6].clone(), W[7].clone())]

    shared = layers()
    a = Network([ChannelAffine.normalize([0.0], [0.01])] + shared, (1, 6, 6), name="A")
    b = Network(shared, (1, 6, 6), name="B")
    fresh = Network(layers(), (1, 6, 6), name="B fresh")
    x = torch.rand(60, 1, 6, 6, generator=g, dtype=torch.float64)
    y = fresh.forward(x).argmax(1)
    ball = LpBall.make(x, 0.04, "inf")
    want = certify_with_bounds(fresh, ball, y, method="crown")
    certify_with_bounds(a, LpBall.make(x * 0.01, 0.0004, "inf"), y, method="crown")
    got = certify_with_bounds(b, ball, y, method="crown")
    assert torch.equal(got.certified, want.certified)
    assert torch.allclose(got.margin_lb, want.margin_lb)


def test_in_place_weight_change_is_seen() -> None:
    """Regression (review): the float32 copy of a parameter was cached and outlived an in-place change
    of the float64 parameter; with the float32 pass deciding, a stale copy certified a misclassified point."""
    net = Network([Linear(torch.eye(2, dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64))], (2,))
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    ball = LpBall.make(x, 0.01, "inf")
    assert bool(certify_with_bounds(net, ball, torch.tensor([0]), method="crown").certified[0])
    with torch.no_grad():
        net.layers[0].bias[0] -= 2  # now f = (-0.5, 0.5): class 0 is wrong everywhere in the ball
    for method in ("ibp", "kw", "crown", "alpha-crown"):
        assert not bool(certify_with_bounds(net, ball, torch.tensor([0]), method=method).certified[0]), method


def test_subnormal_weights_do_not_fool_the_allowance() -> None:
    """Regression (review): weights that are subnormal in float32 round with an absolute, not a relative,
    error (2^-150), which a huge input magnifies. Exact margin -4.26e-16 everywhere: never certified."""
    q = 2.0**-149
    net = Network([Linear(torch.tensor([[10 * q - 0.49 * q], [10 * q + 0.49 * q]], dtype=torch.float64),
                          torch.tensor([0.5 * q * 2.0**99, 0.0], dtype=torch.float64))], (1,), input_range=(0.0, 2.0**100))
    x = torch.tensor([[2.0**99]], dtype=torch.float64)
    ball = LpBall.make(x, 2.0**80, "inf", input_range=(0.0, 2.0**100))
    for method in ("ibp", "kw", "crown", "alpha-crown"):
        assert not bool(certify_with_bounds(net, ball, torch.tensor([0]), method=method).certified[0]), method
