"""A subdomain without unstable ReLUs: the network is one affine map on it, so each disjunct is an LP.

The region of the activation pattern P (every ReLU input's sign fixed: active where its lower
bound is >= 0, inactive where its upper bound is <= 0) contains the subdomain, and on it the
network equals the affine map of P (pre-activations from :func:`verify.bounds.backward.backward_coefficients`
with P's exact relaxation). A disjunct is ruled out on the subdomain when

    min t  s.t.  C_i y(x) - d_i <= t,  x in the input set,  the sign constraints of P

is at least VERIFY_TOL, or infeasible -- the rule by which :mod:`verify.mip` accepts HiGHS's
answers. Otherwise the LP's point is a candidate for the caller's ``confirm``. Linf / L1 balls and
boxes are polyhedra; an L2 ball is replaced by its bounding box plus tangent cuts
g.(x - c) <= eps (||g|| = 1: valid for every point of the ball, so the LP's set contains the
ball's and a proof over it is a proof), one added at each LP point outside the ball, until the
point is inside (a candidate), the LP proves the disjunct, or L2_CUT_ROUNDS is reached (undecided).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import numpy as np
import torch
from scipy.optimize import linprog
from torch import Tensor

from ..bounds.backward import backward_coefficients
from ..bounds.relax import ReluRelaxation
from ..bounds.types import NodeBounds
from ..mip import VERIFY_TOL
from ..network import Network
from .spec import Rows

LeafVerdict = Literal["proven", "candidate", "undecided"]
L2_CUT_ROUNDS = 50


def _pattern(net: Network, bounds: NodeBounds) -> dict[int, ReluRelaxation]:
    out = {}
    for n in net.relu_nodes:
        lo, hi = bounds[n.inputs[0]]
        act = (lo >= 0).to(torch.float64)
        out[n.inputs[0]] = ReluRelaxation(act, act, torch.zeros_like(act), torch.zeros_like(act, dtype=torch.bool))
    return out


def leaf_lp(net: Network, pset: Any, rows: Rows, bounds: NodeBounds, open_k: list[int],
            confirm: Callable[[Tensor], tuple[Tensor, int] | None]) -> tuple[LeafVerdict, tuple[Tensor, int] | float | None]:
    """Decide the open disjuncts on a leaf: ("proven", the least LP value (inf: the pattern's region
    misses the set)), ("candidate", a confirmed point) or ("undecided", None)."""
    p = getattr(pset, "p", math.inf)
    least = math.inf
    rels = _pattern(net, bounds)
    lo_in, hi_in = (t.to(torch.float64).reshape(-1).numpy() for t in pset.box())
    n = lo_in.size
    a_ub: list[np.ndarray] = []
    b_ub: list[np.ndarray] = []
    for node in net.relu_nodes:
        j = node.inputs[0]
        shape = net.graph[j].shape
        m = int(np.prod(shape))
        eye = torch.eye(m, dtype=torch.float64).reshape(1, m, *shape)
        coef, const = backward_coefficients(net, j, eye, rels)
        W, b = coef.reshape(m, n).numpy(), const.reshape(m).numpy()
        act = (bounds[j][0] >= 0).reshape(-1).numpy()
        s = np.where(act, -1.0, 1.0)  # active: -v <= 0; inactive: v <= 0
        a_ub.append(s[:, None] * W)
        b_ub.append(-s * b)
    last = net.graph[-1].index
    out_shape = net.graph[-1].shape
    C = rows.C.reshape(1, -1, *out_shape)
    coefC, constC = backward_coefficients(net, last, C, rels)
    WC, bC = coefC.reshape(-1, n).numpy(), constC.reshape(-1).numpy()
    l1 = p == 1.0
    nv = n + (2 * n if l1 else 0) + 1  # x, (u, w for |x - c| = u + w), t
    base_a = [np.hstack([a, np.zeros((a.shape[0], nv - n))]) for a in a_ub]
    base_b = list(b_ub)
    a_eq = b_eq = None
    if l1:
        c = pset.center.to(torch.float64).reshape(-1).numpy()
        eps = float(pset.eps[0])
        a_eq = np.hstack([np.eye(n), -np.eye(n), np.eye(n), np.zeros((n, 1))])  # x - u + w = c
        b_eq = c
        base_a.append(np.hstack([np.zeros((1, n)), np.ones((1, 2 * n)), np.zeros((1, 1))]))
        base_b.append(np.array([eps]))
    var_bounds = [(float(lo_in[i]), float(hi_in[i])) for i in range(n)] + [(0.0, None)] * (2 * n if l1 else 0) + [(None, None)]
    cost = np.zeros(nv)
    cost[-1] = 1.0
    owner = rows.owner.numpy()
    for k in open_k:
        idx = np.nonzero(owner == k)[0]
        if idx.size == 0:
            return "undecided", None
        rk = np.hstack([WC[idx], np.zeros((idx.size, nv - n - 1)), -np.ones((idx.size, 1))])
        A = np.vstack(base_a + [rk])
        bvec = np.concatenate(base_b + [rows.d.numpy()[idx] - bC[idx]])
        for _ in range(L2_CUT_ROUNDS if p == 2.0 else 1):
            res = linprog(cost, A_ub=A, b_ub=bvec, A_eq=a_eq, b_eq=b_eq, bounds=var_bounds, method="highs")
            if res.status == 2:  # infeasible: the pattern's region misses the set
                return "proven", math.inf
            if res.status != 0:
                return "undecided", None
            if res.fun >= VERIFY_TOL:
                break
            xv = res.x[:n]
            if p == 2.0:
                c2 = pset.center.to(torch.float64).reshape(-1).numpy()
                eps2 = float(pset.eps[0])
                dist = float(np.linalg.norm(xv - c2))
                if dist > eps2 * (1 + 1e-9):  # outside the ball: cut it off and solve again
                    g = (xv - c2) / dist
                    A = np.vstack([A, np.concatenate([g, np.zeros(nv - n)])[None]])
                    # a hair of slack: the rounded cut must not cut off points of the ball
                    bvec = np.concatenate([bvec, [eps2 * (1 + 1e-12) + float(g @ c2) + 1e-12 * float(np.abs(g @ c2))]])
                    continue
            x = torch.as_tensor(xv, dtype=torch.float64).reshape(1, *net.input_shape)
            found = confirm(x)
            return ("candidate", found) if found is not None else ("undecided", None)
        else:
            return "undecided", None  # L2: the cut rounds ran out
        least = min(least, float(res.fun))
    return "proven", least
