"""The exact LP bound: the triangle relaxation of every unstable ReLU, solved by HiGHS.

The model is :func:`verify.mip.formulation.build_model` with ``integer=False`` (one
implementation of the encoding for the LP and the MIP): MIPVerify's ReLU encoding with
its indicator relaxed to [0, 1], whose projection onto (x, z) is exactly the triangle
z >= 0, z >= x, z <= u (x - l) / (u - l). Stable ReLUs are exact.

Soundness: the reported bound is not HiGHS's primal objective (which carries its
feasibility tolerances) but a dual bound recomputed in float64 from HiGHS's row duals
y: for min c^T x s.t. L <= A x <= U, l <= x <= u,

    c^T x >= sum_i min(y_i L_i, y_i U_i) + sum_c min(r_c l_c, r_c u_c),   r = c - A^T y,

which holds for *every* y (weak duality), so solver tolerances can only make it weaker.
Every column of the model has finite bounds, so the bound is finite.

Input sets: Linf (column bounds) and L1 (auxiliary |x - x0| columns) are polyhedra; the L2
ball is not, so method ``lp`` rejects p = 2 with a SpecError.
"""

from __future__ import annotations

import math

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .. import highs_run
from ..errors import SpecError
from ..network import Network
from ..spec import LpBall
from .types import NodeBounds


def safe_dual_bound(h: highspy.Highs, cost: np.ndarray) -> float:
    """A rigorous lower bound on min cost^T x over the model in ``h`` from its current row duals."""
    lp = h.getLp()
    sol = h.getSolution()
    m = lp.num_row_
    n = lp.num_col_
    y = np.asarray(sol.row_dual, dtype=np.float64) if sol.dual_valid and m else np.zeros(m)
    rl = np.asarray(lp.row_lower_, dtype=np.float64)
    ru = np.asarray(lp.row_upper_, dtype=np.float64)
    cl = np.asarray(lp.col_lower_, dtype=np.float64)
    cu = np.asarray(lp.col_upper_, dtype=np.float64)
    inf = highspy.kHighsInf
    # a multiplier on an infinite side gives -inf: drop it (any y is a valid multiplier)
    y = np.where((y > 0) & (rl <= -inf), 0.0, y)
    y = np.where((y < 0) & (ru >= inf), 0.0, y)
    am = lp.a_matrix_
    starts = np.asarray(am.start_)
    idx = np.asarray(am.index_)
    val = np.asarray(am.value_)
    if am.format_ == highspy.MatrixFormat.kRowwise:
        a = sp.csr_matrix((val, idx, starts), shape=(m, n))
    else:
        a = sp.csc_matrix((val, idx, starts), shape=(m, n))
    r = cost - a.T @ y
    row_part = np.where(y > 0, y * np.where(y > 0, rl, 0.0), y * np.where(y < 0, ru, 0.0))
    col_part = np.where(r > 0, r * np.where(r > 0, cl, 0.0), r * np.where(r < 0, cu, 0.0))
    total = float(row_part.sum() + col_part.sum())
    return total if math.isfinite(total) else -math.inf


def lp_margins(net: Network, pset: LpBall, labels: Tensor, bounds: NodeBounds) -> Tensor:
    """LP lower bounds on f_y - f_j (N, K), +inf in column y, float64."""
    from ..mip.formulation import build_model

    if pset.p == 2.0:
        raise SpecError("method lp needs a polyhedral set: the L2 ball is not one (use crown or alpha-crown for p=2)")
    pset = pset.to(torch.float64)
    k = net.n_classes
    out = torch.full((pset.n, k), math.inf, dtype=torch.float64)
    for i in range(pset.n):
        form = build_model(net, pset, i, bounds, integer=False)
        h = form.highs
        y = int(labels[i])
        ncols = form.n_cols
        all_cols = np.arange(ncols, dtype=np.int32)
        for j in range(k):
            if j == y:
                continue
            cost, offset = form.margin_expr(y, j)
            h.changeColsCost(ncols, all_cols, cost.astype(np.float64))
            highs_run.run(h)  # warm-started from the previous margin's basis
            status = h.getModelStatus()
            if status == highspy.HighsModelStatus.kInfeasible:
                # the relaxation contains the true set, which is non-empty: cannot happen unless
                # the given bounds were wrong; report nothing provable
                out[i, j] = -math.inf
                continue
            out[i, j] = safe_dual_bound(h, cost) + offset
    return out
