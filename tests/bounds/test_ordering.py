"""Ordering of the methods on 100 examples, and KW against an independently solved LP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from tests.bounds.nets import dense_net
from tests.bounds.sampling import sample_set
from verify.bounds import compute_bounds, linear_intermediate, linear_margins
from verify.mip.lp_bound import lp_bounds
from verify.network import Linear
from verify.spec import LpBall

TOL = 1e-6
# The LP model comes from verify.mip.formulation, which widens handed-in bounds by BOUND_SLACK
# (1e-6 absolute + relative) so float32 bounds cannot cut off true points; that loosens the
# LP by about BOUND_SLACK times the sum of |coefficients| through the net, so KW <= LP holds
# up to this tolerance (observed excess: < 2e-6).
LP_TOL = 1e-5


def _examples(net, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *net.input_shape, generator=g, dtype=torch.float64)
    return x, net.predict(x)


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isinf(t), torch.zeros_like(t), t)


@pytest.mark.parametrize("p", ["inf", "1"])
def test_method_ordering_on_100_examples(p: str) -> None:
    """interval <= KW <= LP (LP with KW's intermediate bounds), CROWN <= alpha-CROWN, LP <= true min."""
    nets = [dense_net(s, sizes=(5, 10, 10, 3)) for s in range(4)]
    eps = 0.1 if p == "inf" else 0.4
    g = torch.Generator().manual_seed(11)
    n_total = 0
    for s, net in enumerate(nets):
        x, y = _examples(net, 25, s)
        pset = LpBall.make(x, eps, p)
        ibp = compute_bounds(net, pset, y, method="ibp", dtype=torch.float64).margin_lb
        kw = compute_bounds(net, pset, y, method="kw", dtype=torch.float64)
        crown = compute_bounds(net, pset, y, method="crown", dtype=torch.float64).margin_lb
        alpha = compute_bounds(net, pset, y, method="alpha-crown", dtype=torch.float64, alpha_steps=20).margin_lb
        lp = lp_bounds(net, pset, y, intermediate=kw.intermediate).margin_lb
        assert bool((_finite(ibp) <= _finite(kw.margin_lb) + TOL).all())
        assert bool((_finite(kw.margin_lb) <= _finite(lp) + LP_TOL).all()), float((kw.margin_lb - lp).nan_to_num().max())
        assert bool((_finite(crown) <= _finite(alpha) + TOL).all())
        assert bool((torch.isinf(lp) == torch.isinf(kw.margin_lb)).all())
        # the LP is below the true minimum: sampled points (and PGD's) can only be higher
        for i in range(pset.n):
            pts = sample_set(pset, i, 2000, g)
            logits = net.forward(pts)
            margins = logits[:, y[i] : y[i] + 1] - logits
            lb = lp[i].clone()
            lb[y[i]] = 0.0
            assert bool((margins.min(0).values >= lb - TOL).all())
        n_total += pset.n
    assert n_total == 100


def _parallel_relaxation_lp(net, x0: np.ndarray, eps: float, bounds, label: int, target: int) -> float:
    """min f_y - f_target over the Linf ball & [0,1] box with every unstable ReLU relaxed to
    (u/(u-l)) x <= z <= (u/(u-l)) (x - l) and stable ReLUs exact; pre-activations unbounded.

    Built from the weight matrices directly and solved with scipy's linprog (HiGHS via scipy,
    none of verify.bounds or verify.mip).
    """
    linears = [l for l in net.layers if isinstance(l, Linear)]
    sizes = [linears[0].in_features] + [l.out_features for l in linears]
    # variables: input, then for each hidden layer (pre x_k, post z_k), then the output
    offsets, n = [], 0
    offsets.append(n); n += sizes[0]
    for k in range(1, len(sizes) - 1):
        offsets.append(n); n += 2 * sizes[k]
    offsets.append(n); n += sizes[-1]
    a_eq, b_eq, a_ub, b_ub = [], [], [], []
    relu_inputs = [nd.inputs[0] for nd in net.relu_nodes]
    prev = list(range(offsets[0], offsets[0] + sizes[0]))
    for k, lin in enumerate(linears):
        w, b = lin.weight.numpy(), lin.bias.numpy()
        out_start = offsets[k + 1]
        for r in range(w.shape[0]):
            row = np.zeros(n)
            row[out_start + r] = 1.0
            row[prev] -= w[r]
            a_eq.append(row); b_eq.append(b[r])
        if k == len(linears) - 1:
            break
        lo, hi = (t[0].numpy() for t in bounds[relu_inputs[k]])
        z_start = out_start + sizes[k + 1]
        for r in range(w.shape[0]):
            xi, zi = out_start + r, z_start + r
            l, u = lo[r], hi[r]
            row = np.zeros(n)
            if l >= 0:
                row[zi], row[xi] = 1.0, -1.0
                a_eq.append(row); b_eq.append(0.0)
            elif u <= 0:
                row[zi] = 1.0
                a_eq.append(row); b_eq.append(0.0)
            else:
                lam = u / (u - l)
                row[zi], row[xi] = -1.0, lam  # lam x - z <= 0
                a_ub.append(row); b_ub.append(0.0)
                row2 = np.zeros(n)
                row2[zi], row2[xi] = 1.0, -lam  # z - lam x <= -lam l
                a_ub.append(row2); b_ub.append(-lam * l)
        prev = list(range(z_start, z_start + sizes[k + 1]))
    cost = np.zeros(n)
    cost[offsets[-1] + label] = 1.0
    cost[offsets[-1] + target] = -1.0
    var_bounds = [(None, None)] * n
    for i in range(sizes[0]):
        var_bounds[i] = (max(0.0, x0[i] - eps), min(1.0, x0[i] + eps))
    res = linprog(cost, A_ub=np.array(a_ub) if a_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                  A_eq=np.array(a_eq), b_eq=np.array(b_eq), bounds=var_bounds, method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


def test_kw_equals_independent_parallel_relaxation_lp() -> None:
    """Wong & Kolter's bound is the exact optimum of the LP with the *parallel* relaxation.

    This is the case where the two relaxations coincide: with the lower line parallel to the
    chord, the backward pass picks, per neuron, the line its coefficient's sign calls for,
    which is exactly what that LP does (pre-activations are not bounded in it, as in the dual).
    Identical intermediate bounds (KW's own) go into both.
    """
    eps = 0.08
    for seed in range(3):
        net = dense_net(seed, sizes=(5, 10, 10, 3))
        x, y = _examples(net, 4, 100 + seed)
        pset = LpBall.make(x, eps, "inf")
        inter = linear_intermediate(net, pset, rule="kw", dtype=torch.float64)
        kw = linear_margins(net, pset, y, inter, rule="kw")
        for i in range(pset.n):
            single = {k: (lo[i : i + 1], hi[i : i + 1]) for k, (lo, hi) in inter.items()}
            for j in range(net.n_classes):
                if j == int(y[i]):
                    continue
                ref = _parallel_relaxation_lp(net, x[i].numpy(), eps, single, int(y[i]), j)
                assert abs(float(kw[i, j]) - ref) <= 1e-6, (seed, i, j, float(kw[i, j]), ref)
