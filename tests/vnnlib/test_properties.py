"""General output properties: the Box set, bounds on C rows, the attack, and the MIP over a disjunction.

Oracles: the LpBall (a uniform box is an Linf ball), dense sampling (bounds must lie below every
sampled value), and brute force over every ReLU activation pattern with one scipy LP each
(the exact minimum violation of a disjunct, written from the weights; no code shared with verify.mip).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from verify.complete import disjunct_bounds
from verify.mip.highs import HighsOptions, solve_query
from verify.network import Linear, Network, ReLU
from verify.properties import (Box, Disjunct, OutputProperty, VerifyOptions, attack_property,
                               representable_point, verify_property)
from verify.query import Query, outputs_f64
from verify.spec import LpBall


def tiny_net(seed: int, d: int = 3, h1: int = 5, h2: int = 4, k: int = 3) -> Network:
    g = torch.Generator().manual_seed(seed)
    return Network((Linear(torch.randn(h1, d, generator=g), 0.3 * torch.randn(h1, generator=g)), ReLU(),
                    Linear(torch.randn(h2, h1, generator=g), 0.3 * torch.randn(h2, generator=g)), ReLU(),
                    Linear(torch.randn(k, h2, generator=g), 0.3 * torch.randn(k, generator=g))), (d,))


def random_property(seed: int, n_in: int = 3, n_out: int = 3, n_disj: int = 3, rows: int = 2) -> OutputProperty:
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0.5, n_in)
    hi = lo + rng.uniform(0.1, 1.0, n_in)
    dis = tuple(Disjunct(rng.standard_normal((rows, n_out)), rng.standard_normal(rows) * 0.5) for _ in range(n_disj))
    return OutputProperty(lo, hi, dis, n_out)


def brute_min_violation(net: Network, lo: np.ndarray, hi: np.ndarray, dj: Disjunct) -> float:
    """min over the box of max_i (C_i f(x) - d_i): one LP per activation pattern, variables (x, t)."""
    (w1, b1), (w2, b2), (w3, b3) = [(l.weight.numpy(), l.bias.numpy()) for l in net.layers if isinstance(l, Linear)]
    d, h1, h2 = len(lo), len(b1), len(b2)
    best = math.inf
    for s1 in itertools.product([0, 1], repeat=h1):
        D1 = np.diag(s1)
        for s2 in itertools.product([0, 1], repeat=h2):
            D2 = np.diag(s2)
            A = w3 @ D2 @ w2 @ D1 @ w1  # with a fixed pattern f(x) = A x + a
            a = w3 @ D2 @ (w2 @ D1 @ b1 + b2) + b3
            rows, rhs = [], []
            for (W, b), s in (((w1, b1), s1), ((w2 @ D1 @ w1, w2 @ D1 @ b1 + b2), s2)):
                for i, on in enumerate(s):
                    sign = -1.0 if on else 1.0
                    rows.append(np.append(sign * W[i], 0.0))
                    rhs.append(-sign * b[i])
            for ci, di in zip(dj.C, dj.d):  # C_i (A x + a) - d_i <= t
                rows.append(np.append(ci @ A, -1.0))
                rhs.append(di - ci @ a)
            res = linprog(np.append(np.zeros(d), 1.0), A_ub=np.array(rows), b_ub=np.array(rhs),
                          bounds=[(l, h) for l, h in zip(lo, hi)] + [(None, None)], method="highs")
            if res.status == 0:
                best = min(best, res.fun)
    return best


def test_uniform_box_equals_linf_ball() -> None:
    torch.manual_seed(0)
    c = torch.rand(4, 2, 3, 3, dtype=torch.float64)
    ball = LpBall.make(c, 0.1, "inf")
    lo, hi = ball.box()
    box = Box.make(lo, hi)
    a = torch.randn(4, 5, 2, 3, 3, dtype=torch.float64)
    assert torch.equal(box.box()[0], lo) and torch.equal(box.box()[1], hi)
    torch.testing.assert_close(box.min_linear(a), ball.min_linear(a), rtol=0, atol=1e-12)
    sub = box.select([2, 0])
    assert torch.equal(sub.lower, lo[[2, 0]])
    x = torch.rand(4, 2, 3, 3, dtype=torch.float64) * 2 - 0.5
    assert torch.equal(box.contains(x), ball.contains(ball.project(x)) & box.contains(x))
    assert bool(box.contains(box.project(x)).all())


def test_float32_box_rounds_outwards() -> None:
    lo = torch.tensor([[0.1, -0.3, 1 / 3]], dtype=torch.float64)
    hi = lo + torch.tensor([[1e-9, 0.2, 0.0]], dtype=torch.float64)
    l32, h32 = Box.make(lo, hi).to(torch.float32).box()
    assert l32.dtype == torch.float32
    assert bool((l32.double() <= lo).all()) and bool((h32.double() >= hi).all())
    # no float32 lies in [0.1, 0.1 + 1e-9] or equals 1/3: the float64 point is kept, still inside
    box = Box.make(lo, hi)
    p = representable_point(box, box.center)
    assert bool(box.contains(p).all()) and torch.equal(p, box.center)
    # a float32-representable point inside the exact box, when one exists
    wide = Box.make(lo, lo + 0.2)
    p = representable_point(wide, wide.center)
    assert bool(wide.contains(p).all()) and torch.equal(p.float().double(), p)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_lie_below_sampled_violations(seed: int) -> None:
    net = tiny_net(seed)
    prop = random_property(seed)
    box = prop.box(net)
    pb = disjunct_bounds(net, Query(box, prop.disjuncts))
    g = torch.Generator().manual_seed(seed)
    xs = box.lower + (box.upper - box.lower) * torch.rand((20000, 3), generator=g, dtype=torch.float64)
    corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    xs = torch.cat([xs, box.lower + (box.upper - box.lower) * corners])
    y = net.forward(xs).numpy()
    for k, dj in enumerate(prop.disjuncts):
        sampled = (y @ dj.C.T - dj.d).max(1).min()
        assert pb.violation_lb[k] <= sampled + 1e-9
        if pb.proven[k]:
            assert sampled > 0


@pytest.mark.parametrize("seed", range(5))
def test_mip_is_exact_against_brute_force(seed: int) -> None:
    """Per disjunct: sat iff the brute-force minimum violation is <= 0 (margins away from 0 only)."""
    net = tiny_net(seed + 10, h1=4, h2=4)
    prop = random_property(seed + 10, n_disj=3, rows=2)
    box = prop.box(net)
    truth = [brute_min_violation(net, prop.lower, prop.upper, dj) for dj in prop.disjuncts]
    for k, dj in enumerate(prop.disjuncts):
        if abs(truth[k]) < 1e-4:
            continue
        single = OutputProperty(prop.lower, prop.upper, (dj,), prop.n_outputs)
        for mode in ("per-disjunct", "indicator"):
            r = solve_query(net, Query(box, (dj,)), deadline=math.inf, options=HighsOptions(mode=mode))
            assert r.status == ("falsified" if truth[k] < 0 else "verified"), (k, truth[k], mode)
            if r.status == "falsified":
                y = net.forward(r.counterexample).numpy()[0]
                assert bool(box.contains(r.counterexample).all()) and dj.violation(y) <= 0
        res = verify_property(net, single, VerifyOptions(timeout=60, attack_steps=0))
        assert res.status == ("falsified" if truth[k] < 0 else "verified")
    # the whole disjunction: sat iff some disjunct is
    if all(abs(t) >= 1e-4 for t in truth):
        want = "falsified" if min(truth) < 0 else "verified"
        for mode in ("per-disjunct", "indicator"):
            res = verify_property(net, prop, VerifyOptions(timeout=60, attack_steps=0, mode=mode))
            assert res.status == want
            if want == "falsified":
                y = net.forward(res.counterexample).numpy()[0]
                assert prop.disjuncts[res.disjunct].violation(y) <= 0
                assert bool(box.contains(res.counterexample.reshape(1, -1)).all())


def test_attack_finds_a_point_and_respects_the_box() -> None:
    net = tiny_net(3)
    rng = np.random.default_rng(1)
    lo = rng.uniform(-1, 0, 3)
    hi = lo + 0.8
    # unsafe: output 0 above the value it takes at some point of the box (so a counterexample exists)
    x0 = torch.tensor((lo + hi) / 2 + 0.3 * (hi - lo))[None]
    y0 = float(net.forward(x0)[0, 0])
    prop = OutputProperty(lo, hi, (Disjunct(np.array([[-1.0, 0.0, 0.0]]), np.array([-y0])),), 3)
    found, best = attack_property(net, Query(prop.box(net), prop.disjuncts), steps=50, restarts=3)
    assert found is not None
    x, k = found
    assert bool(prop.box(net).contains(x).all()) and outputs_f64(net, x)[0] >= y0 and k == 0
    assert best.shape == (1, 3)


def test_attack_over_many_disjuncts_in_chunks() -> None:
    """More disjuncts than one attack batch: the one satisfiable disjunct (the last) is still found."""
    net = tiny_net(0)
    never = [Disjunct(np.array([[1.0, 0.0, 0.0]]), np.array([-1e6])) for _ in range(149)]
    always = Disjunct(np.array([[0.0, 0.0, 1.0]]), np.array([1e6]))
    prop = OutputProperty(np.zeros(3), np.ones(3), tuple(never + [always]), 3)
    found, _ = attack_property(net, Query(prop.box(net), prop.disjuncts), steps=5)
    assert found is not None and found[1] == 149
    prop = OutputProperty(np.zeros(3), np.ones(3), tuple(never), 3)
    found, best = attack_property(net, Query(prop.box(net), prop.disjuncts), steps=5)
    assert found is None and best.shape == (149, 3)


def test_empty_disjunct_is_sat_and_no_disjunct_is_unsat() -> None:
    net = tiny_net(0)
    lo, hi = np.zeros(3), np.ones(3)
    r = verify_property(net, OutputProperty(lo, hi, (Disjunct(np.zeros((0, 3)), np.zeros(0)),), 3))
    assert r.status == "falsified" and r.decided_by == "attack"
    r = verify_property(net, OutputProperty(lo, hi, (), 3))
    assert r.status == "verified" and r.decided_by == "trivial"


def test_size_mismatch_is_a_spec_error() -> None:
    from verify.errors import SpecError

    net = tiny_net(0)
    with pytest.raises(SpecError, match="declares 4 inputs"):
        OutputProperty(np.zeros(4), np.ones(4), (), 3).box(net)
    with pytest.raises(SpecError, match="declares 2 outputs"):
        OutputProperty(np.zeros(3), np.ones(3), (), 2).box(net)
