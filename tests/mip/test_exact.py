"""The MIP is exact: its optimum equals brute force over all activation patterns.

The oracle enumerates every on/off pattern of the unstable ReLUs of a tiny network and
solves one LP per pattern with scipy's linprog (p = inf, 1) or cvxpy (p = 2), written
directly from the weights -- it shares no code with verify.mip.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from verify import highs_run
from verify.mip.formulation import build_model
from verify.mip.highs import HighsOptions, solve_query
from verify.mip.tighten import TightenConfig
from verify.network import Linear, Network, ReLU
from verify.query import Query
from verify.spec import LpBall


def tiny_net(seed: int, d: int = 3, h1: int = 5, h2: int = 4, k: int = 3) -> Network:
    g = torch.Generator().manual_seed(seed)
    return Network((Linear(torch.randn(h1, d, generator=g), 0.3 * torch.randn(h1, generator=g)), ReLU(),
                    Linear(torch.randn(h2, h1, generator=g), 0.3 * torch.randn(h2, generator=g)), ReLU(),
                    Linear(torch.randn(k, h2, generator=g), torch.zeros(k))), (d,))


def brute_force_min_margin(net: Network, c: np.ndarray, eps: float, p: float, y: int, j: int) -> float:
    """min over the set of f_y - f_j, by enumerating all 2^(h1+h2) ReLU patterns (one LP each)."""
    (w1, b1), (w2, b2), (w3, b3) = [(l.weight.numpy(), l.bias.numpy()) for l in net.layers if isinstance(l, Linear)]
    d, h1, h2 = len(c), len(b1), len(b2)
    lo, hi = np.maximum(c - eps, 0.0), np.minimum(c + eps, 1.0)
    best = math.inf
    for s1 in itertools.product([0, 1], repeat=h1):
        D1 = np.diag(s1)
        for s2 in itertools.product([0, 1], repeat=h2):
            D2 = np.diag(s2)
            # with a fixed pattern the network is affine: f(x) = A x + a
            A = w3 @ D2 @ w2 @ D1 @ w1
            a = w3 @ D2 @ (w2 @ D1 @ b1 + b2) + b3
            obj = A[y] - A[j]
            # pattern constraints: active pre-activations >= 0, inactive <= 0
            pre1 = (w1, b1)
            pre2 = (w2 @ D1 @ w1, w2 @ D1 @ b1 + b2)
            rows, rhs = [], []
            for (W, b), s in ((pre1, s1), (pre2, s2)):
                for i, on in enumerate(s):
                    sign = -1.0 if on else 1.0  # on: -(Wx+b) <= 0 ; off: Wx+b <= 0
                    rows.append(sign * W[i])
                    rhs.append(-sign * b[i])
            A_ub, b_ub = np.array(rows), np.array(rhs)
            if p == 1.0:
                # variables (x, t): |x - c| <= t, sum t <= eps
                eye = np.eye(d)
                A_ub = np.vstack([np.hstack([A_ub, np.zeros((len(rhs), d))]), np.hstack([eye, -eye]),
                                  np.hstack([-eye, -eye]), np.hstack([np.zeros(d), np.ones(d)])[None]])
                b_ub = np.concatenate([b_ub, c, -c, [eps]])
                res = linprog(np.concatenate([obj, np.zeros(d)]), A_ub=A_ub, b_ub=b_ub,
                              bounds=list(zip(lo, hi)) + [(0, None)] * d, method="highs")
            else:
                res = linprog(obj, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(lo, hi)), method="highs")
            if res.status == 0:
                best = min(best, res.fun + a[y] - a[j])
    return best


def mip_min_margin(net: Network, ball: LpBall, y: int, j: int) -> float:
    f = build_model(net, ball, 0, integer=True)
    cost, off = f.margin_expr(y, j)
    f.highs.changeColsCost(f.n_cols, np.arange(f.n_cols, dtype=np.int32), cost)
    f.highs.changeObjectiveOffset(off)
    f.highs.setOptionValue("mip_rel_gap", 0.0)
    f.highs.setOptionValue("mip_abs_gap", 0.0)
    highs_run.run(f.highs)  # not Highs.run(): it would pin HiGHS's scheduler to the default thread count
    return f.highs.getInfo().objective_function_value


@pytest.mark.parametrize("p", [math.inf, 1.0])
@pytest.mark.parametrize("seed", range(6))
def test_mip_optimum_equals_brute_force(seed: int, p: float) -> None:
    net = tiny_net(seed)
    c = torch.rand(1, 3, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    eps = 0.4 if math.isinf(p) else 0.8
    ball = LpBall.make(c, eps, p)
    y = int(net(c).argmax())
    for j in range(3):
        if j == y:
            continue
        want = brute_force_min_margin(net, c[0].numpy(), eps, p, y, j)
        got = mip_min_margin(net, ball, y, j)
        assert got == pytest.approx(want, abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("p", [math.inf, 1.0])
def test_verdict_matches_brute_force_with_tightening(p: float) -> None:
    """The full solve (tightening, early stops) agrees with the sign of the brute-force optimum."""
    agree = 0
    for seed in range(8):
        net = tiny_net(seed)
        c = torch.rand(1, 3, generator=torch.Generator().manual_seed(200 + seed), dtype=torch.float64)
        y = int(net(c).argmax())
        for eps in (0.05, 0.2, 0.5):
            ball = LpBall.make(c, eps, p)
            worst = min(brute_force_min_margin(net, c[0].numpy(), eps, p, y, j) for j in range(3) if j != y)
            if abs(worst) < 1e-4:
                continue  # too close to call for either side
            r = solve_query(net, Query.robustness(ball, y, 3), deadline=time.perf_counter() + 30,
                            options=HighsOptions(tighten=TightenConfig(levels=("lp", "mip"))))
            assert r.status == ("verified" if worst > 0 else "falsified"), (seed, eps, worst, r)
            if r.status == "falsified":
                assert r.counterexample is not None and ball.contains(r.counterexample).all()
            agree += 1
    assert agree >= 15


def brute_force_l2_verdict(net: Network, c: np.ndarray, eps: float, y: int) -> float:
    import cvxpy as cp

    (w1, b1), (w2, b2), (w3, b3) = [(l.weight.numpy(), l.bias.numpy()) for l in net.layers if isinstance(l, Linear)]
    best = math.inf
    for s1 in itertools.product([0, 1], repeat=len(b1)):
        D1 = np.diag(s1)
        for s2 in itertools.product([0, 1], repeat=len(b2)):
            D2 = np.diag(s2)
            A = w3 @ D2 @ w2 @ D1 @ w1
            a = w3 @ D2 @ (w2 @ D1 @ b1 + b2) + b3
            x = cp.Variable(len(c))
            sg1 = np.array([1.0 if s else -1.0 for s in s1])
            sg2 = np.array([1.0 if s else -1.0 for s in s2])
            cons = [cp.norm(x - c, 2) <= eps, x >= 0, x <= 1,
                    cp.multiply(sg1, w1 @ x + b1) >= 0,
                    cp.multiply(sg2, (w2 @ D1 @ w1) @ x + w2 @ D1 @ b1 + b2) >= 0]
            for j in range(len(a)):
                if j == y:
                    continue
                prob = cp.Problem(cp.Minimize((A[y] - A[j]) @ x + a[y] - a[j]), cons)
                prob.solve(solver=cp.CLARABEL)
                if prob.status == "optimal":
                    best = min(best, prob.value)
    return best


def test_l2_verdicts_match_socp_brute_force() -> None:
    checked = 0
    for seed in range(4):
        net = tiny_net(seed, h1=4, h2=3)
        c = torch.rand(1, 3, generator=torch.Generator().manual_seed(300 + seed), dtype=torch.float64)
        y = int(net(c).argmax())
        for eps in (0.1, 0.4):
            worst = brute_force_l2_verdict(net, c[0].numpy(), eps, y)
            if abs(worst) < 1e-3:
                continue
            r = solve_query(net, Query.robustness(LpBall.make(c, eps, 2), y, 3), deadline=time.perf_counter() + 30)
            assert r.status == ("verified" if worst > 0 else "falsified"), (seed, eps, worst, r)
            checked += 1
    assert checked >= 5


def test_tiny_timeout_gives_unknown_never_verified() -> None:
    torch.manual_seed(3)
    net = Network((Linear(torch.randn(40, 10), torch.randn(40) * 0.3), ReLU(), Linear(torch.randn(40, 40), torch.randn(40) * 0.3),
                   ReLU(), Linear(torch.randn(3, 40))), (10,))
    x = torch.rand(1, 10, dtype=torch.float64)
    y = int(net(x).argmax())
    r = solve_query(net, Query.robustness(LpBall.make(x, 0.3, 2), y, 3), deadline=time.perf_counter() + 0.05)
    assert r.status != "verified"
    if r.status == "unknown":
        assert r.reason is not None
