"""alpha-CROWN intermediate bounds: sound (sampling), never looser than CROWN's, never tighter
than the triangle LP (scipy's HiGHS on an LP written out in the test), and, with one hidden layer in front, converging to that LP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.bounds.nets import conv_net, dense_net, residual_net
from tests.bounds.sampling import sample_set
from verify.bounds import alpha_intermediate, compute_bounds
from verify.bounds.backward import relu_inputs
from verify.spec import LpBall

NETS = {"dense": lambda: dense_net(2, sizes=(6, 16, 16, 12, 4)), "conv": lambda: conv_net(1),
        "residual": lambda: residual_net(1)}
EPS = {"inf": 0.1, "2": 0.5, "1": 1.2}
TOL = 1e-9


def _setup(net, p: str, n: int = 2, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *net.input_shape, generator=g, dtype=torch.float64)
    y = net.predict(x)
    pset = LpBall.make(x, EPS[p], p)
    crown = compute_bounds(net, pset, y, method="crown", dtype=torch.float64).intermediate
    return pset, crown, g


def _width(b, k: int) -> float:
    lo, hi = b[k]
    return float((hi - lo).sum())


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("p", ["inf", "2", "1"])
def test_sound_and_inside_crown(name: str, p: str) -> None:
    net = NETS[name]()
    pset, crown, g = _setup(net, p)
    with torch.no_grad():  # as the MIP's caller may run it: the slopes must still be optimised
        tight = alpha_intermediate(net, pset, crown, steps=15)
    feeds = relu_inputs(net)
    gained = 0.0
    for k in feeds:
        lo, hi = tight[k]
        assert bool((lo >= crown[k][0] - TOL).all()) and bool((hi <= crown[k][1] + TOL).all())
        gained += _width(crown, k) - _width(tight, k)
    for i in range(pset.n):
        pts = sample_set(pset, i, 4000, g)
        with torch.no_grad():
            values = net.forward(pts, all_nodes=True)
        for k in feeds:
            lo, hi = tight[k]
            assert bool((values[k] >= lo[i] - TOL).all()), f"node {k} below its alpha-CROWN lower bound"
            assert bool((values[k] <= hi[i] + TOL).all()), f"node {k} above its alpha-CROWN upper bound"
    if name == "dense":
        assert gained > 1e-3  # the optimisation did something on a net with two hidden layers in front


def _triangle_lp(net, pset: LpBall, crown, i: int, k: int, n: int, sense: float) -> float:
    """min sense * z2_n over the set, z1 = W1 x + b1, a1 in the triangle relaxation of z1 (scipy/HiGHS).

    An independent oracle, written out here: variables (x, d+, d-, a1); for p = 1 the
    perturbation is d+ - d- with sum(d+ + d-) <= eps.
    """
    from scipy.optimize import linprog

    lin1, lin2 = net.layers[0], net.layers[2]
    w1, b1 = lin1.weight.numpy(), lin1.bias.numpy()
    w2, b2 = lin2.weight.numpy(), lin2.bias.numpy()
    l1, u1 = (t[i].numpy() for t in crown[relu_inputs(net)[0]])
    c = pset.center[i].reshape(-1).numpy()
    eps = float(pset.eps[i])
    d, h = w1.shape[1], w1.shape[0]
    nv = 3 * d + h  # x, d+, d-, a1
    cost = np.zeros(nv)
    cost[3 * d:] = sense * w2[n]
    rows, rhs, eq_rows, eq_rhs = [], [], [], []
    bounds = [(0.0, 1.0)] * d + [(0.0, None)] * (2 * d) + [(0.0, None)] * h
    if math.isinf(pset.p):
        bounds[:d] = [(max(0.0, ci - eps), min(1.0, ci + eps)) for ci in c]
        bounds[d : 3 * d] = [(0.0, 0.0)] * (2 * d)
    else:
        for j in range(d):  # x_j - d+_j + d-_j = c_j
            r = np.zeros(nv)
            r[j], r[d + j], r[2 * d + j] = 1.0, -1.0, 1.0
            eq_rows.append(r)
            eq_rhs.append(c[j])
        r = np.zeros(nv)
        r[d : 3 * d] = 1.0
        rows.append(r)
        rhs.append(eps)
    for j in range(h):
        a = np.zeros(nv)
        a[3 * d + j] = 1.0
        z = np.zeros(nv)
        z[:d] = w1[j]
        if l1[j] >= 0:  # a = z
            eq_rows.append(a - z)
            eq_rhs.append(b1[j])
        elif u1[j] <= 0:  # a = 0
            eq_rows.append(a)
            eq_rhs.append(0.0)
        else:  # a >= z, a <= u (z - l) / (u - l)
            rows.append(z - a)
            rhs.append(-b1[j])
            s = u1[j] / (u1[j] - l1[j])
            rows.append(a - s * z)
            rhs.append(s * (b1[j] - l1[j]))
    res = linprog(cost, A_ub=np.array(rows), b_ub=np.array(rhs), A_eq=np.array(eq_rows), b_eq=np.array(eq_rhs),
                  bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return sense * (res.fun + sense * b2[n])


@pytest.mark.parametrize("p", ["inf", "1"])
def test_one_hidden_layer_reaches_the_lp(p: str) -> None:
    """With one ReLU layer in front (fixed first-layer bounds), the best slopes are the LP's dual."""
    net = dense_net(4, sizes=(5, 14, 10, 3))
    pset, crown, _ = _setup(net, p, n=2)
    k = relu_inputs(net)[1]
    tight = alpha_intermediate(net, pset, crown, steps=300, lr=0.05)
    closed, nontrivial = [], 0
    for i in range(pset.n):
        lo, hi = tight[k][0][i].numpy(), tight[k][1][i].numpy()
        c_lo, c_hi = crown[k][0][i].numpy(), crown[k][1][i].numpy()
        unstable = np.flatnonzero((c_lo < 0) & (c_hi > 0))
        assert len(unstable) >= 2
        for n in unstable:
            lp_lo, lp_hi = _triangle_lp(net, pset, crown, i, k, n, 1.0), _triangle_lp(net, pset, crown, i, k, n, -1.0)
            # the LP is the best any slopes can do: alpha-CROWN never beats it (up to the LP's tolerance)
            assert lo[n] <= lp_lo + 1e-6 and hi[n] >= lp_hi - 1e-6
            assert c_lo[n] <= lp_lo + 1e-6 and c_hi[n] >= lp_hi - 1e-6
            # ... and reaches it: 99% of the gap between CROWN and the LP is closed
            for got, start, best in ((lo[n], c_lo[n], lp_lo), (-hi[n], -c_hi[n], -lp_hi)):
                closed.append((got - start) / (best - start) if best - start > 1e-6 else 1.0)
                nontrivial += best - start > 1e-2
    assert min(closed) > 0.99, closed
    assert nontrivial >= 3  # CROWN's slopes were measurably off the LP's on several bounds


def test_deadline_keeps_starting_bounds() -> None:
    net = NETS["dense"]()
    pset, crown, _ = _setup(net, "inf")
    out = alpha_intermediate(net, pset, crown, steps=50, deadline=-math.inf)
    for k, (lo, hi) in crown.items():
        assert torch.equal(out[k][0], lo) and torch.equal(out[k][1], hi)


@pytest.mark.parametrize("name,p", [("conv", "inf"), ("conv", "2"), ("deep_conv", "inf"), ("deep_conv", "1")])
def test_window_path_equals_the_full_one(name: str, p: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Conv neurons' slopes optimised on their receptive-field windows (LocalBounds.optimise) give
    the bounds the generic engine gives with slopes over the whole layer: outside the window a slope
    gets no gradient, so Adam never moves it, and both runs follow the same trajectory. deep_conv:
    normalisation, padding, average pooling and two ReLU layers in front of its last conv. (The
    generic engine's conv-stem shortcut is off: it regroups the sums, and at CROWN's starting slopes,
    0 or 1, an entry that is exactly 0 in one grouping and 1e-17 in the other gets a different
    subgradient, which Adam's first, sign-like step turns into a different trajectory: equally
    sound bounds, not equal ones.)"""
    import verify.bounds.backward as backward
    import verify.bounds.intermediate as inter
    from tests.bounds.test_local import deep_conv
    from verify.bounds.local import local_plan

    net = deep_conv() if name == "deep_conv" else NETS[name]()
    pset, crown, g = _setup(net, p, n=3)
    monkeypatch.setattr(backward, "TAIL_MIN_ROWS", 10**9)
    checked = 0
    for k in relu_inputs(net)[1:]:
        if local_plan(net, pset, k, any_size=True) is None:
            continue
        got = {}
        for way, plan in (("window", lambda n, s, k: local_plan(n, s, k, any_size=True)), ("full", lambda n, s, k: None)):
            monkeypatch.setattr(inter, "local_plan", plan)
            got[way] = inter._alpha_tighten(net, pset, k, *crown[k], crown, steps=10, lr=0.25)
        for a, b in zip(got["window"], got["full"]):
            assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)
        lo, hi = got["window"]
        assert float((hi - lo).sum()) < float((crown[k][1] - crown[k][0]).sum()) - 1e-3  # it tightened something
        for i in range(pset.n):
            with torch.no_grad():
                values = net.forward(sample_set(pset, i, 4000, g), all_nodes=True)[k]
            assert bool((values >= lo[i] - TOL).all()) and bool((values <= hi[i] + TOL).all())
        checked += 1
    assert checked == (1 if name == "conv" else 2)


def test_certify_alpha_crown_with_intermediate_slopes_on_windows() -> None:
    """certify_with_bounds' alpha-crown bounds the examples CROWN leaves open again, with optimised
    intermediate slopes (on windows here) under a rounding guard of its own: it certifies every
    example CROWN does and more, and no certified example has a sampled point with a negative margin."""
    from tests.bounds.test_local import deep_conv
    from verify.bounds import certify_with_bounds

    net = deep_conv()
    g = torch.Generator().manual_seed(7)
    x = torch.rand(40, *net.input_shape, generator=g, dtype=torch.float64)
    y = net.predict(x)
    pset = LpBall.make(x, 0.012, "inf", net.input_range)
    crown = certify_with_bounds(net, pset, y, method="crown")
    alpha = certify_with_bounds(net, pset, y, method="alpha-crown")
    assert bool((alpha.certified | ~crown.certified).all())
    assert int(alpha.certified.sum()) > int(crown.certified.sum())
    for i in alpha.certified.nonzero().reshape(-1).tolist():
        pts = sample_set(pset, i, 2000, g)
        with torch.no_grad():
            logits = net.forward(pts)
        assert bool((logits.argmax(1) == y[i]).all())


def test_examples_batched_with_padding_equal_one_at_a_time() -> None:
    """The generic path pads every example's unstable neurons to the most any has: each example's
    bounds are those it gets alone (the zero padding rows bound nothing and share nothing)."""
    import verify.bounds.intermediate as inter

    net = NETS["dense"]()
    pset, crown, _ = _setup(net, "inf", n=4)
    k = relu_inputs(net)[2]
    counts = ((crown[k][0] < 0) & (crown[k][1] > 0)).sum(1)
    assert int(counts.min()) < int(counts.max())  # padding happens
    lo, hi = inter._alpha_tighten(net, pset, k, *crown[k], crown, steps=8, lr=0.25)
    for i in range(pset.n):
        one = {j: (b[0][i : i + 1], b[1][i : i + 1]) for j, b in crown.items()}
        lo1, hi1 = inter._alpha_tighten(net, pset.select([i]), k, *one[k], one, steps=8, lr=0.25)
        assert torch.allclose(lo[i : i + 1], lo1, atol=1e-12) and torch.allclose(hi[i : i + 1], hi1, atol=1e-12)


def test_alpha_crown_method_never_below_crown_and_beats_it_with_intermediate_slopes() -> None:
    """compute_bounds' alpha-crown (intermediate slopes optimised, then the final ones) is >= CROWN on
    every margin, and its intermediate steps tighten the margins beyond alpha on the final layer alone."""
    net = NETS["dense"]()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, *net.input_shape, generator=g, dtype=torch.float64)
    y = net.predict(x)
    pset = LpBall.make(x, 0.1, "inf")
    crown = compute_bounds(net, pset, y, method="crown", dtype=torch.float64).margin_lb
    final_only = compute_bounds(net, pset, y, method="alpha-crown", dtype=torch.float64,
                                alpha_intermediate_steps=0).margin_lb
    full = compute_bounds(net, pset, y, method="alpha-crown", dtype=torch.float64).margin_lb
    fin = torch.isfinite(crown)
    assert bool((full[fin] >= crown[fin] - 1e-12).all())
    assert float((full[fin] - final_only[fin]).sum()) > 1e-3
