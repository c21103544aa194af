"""Bound method ``lp``: the triangle relaxation of every unstable ReLU, solved exactly by HiGHS.

It lives next to the MIP because its model is the MIP's (one implementation of the encoding for
both): :func:`verify.mip.formulation.build_model` with ``integer=False``, MIPVerify's ReLU encoding
with its indicator relaxed to [0, 1], whose projection onto (x, z) is exactly the triangle
z >= 0, z >= x, z <= u (x - l) / (u - l). Stable ReLUs are exact.

Soundness: the reported bound is not HiGHS's primal objective (which carries its
feasibility tolerances) but a dual bound recomputed in float64 from HiGHS's row duals
y: for min c^T x s.t. L <= A x <= U, l <= x <= u,

    c^T x >= sum_i min(y_i L_i, y_i U_i) + sum_c min(r_c l_c, r_c u_c),   r = c - A^T y,

which holds for *every* y (weak duality), so solver tolerances can only make it weaker.
Every column of the model has finite bounds, so the bound is finite.

Input sets: Linf (column bounds) and L1 (auxiliary |x - x0| columns) are polyhedra; the L2
ball is not, so method ``lp`` rejects p = 2 with a SpecError.

:mod:`verify.bounds` does not import this module (bounds sit below the MIP): callers that take
any method by name (``certify``, ``verify bounds``) go through :func:`certify_with_method`.
"""

from __future__ import annotations

import math

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .. import highs_run
from ..bounds import certify_with_bounds, interval_bounds, interval_margins, linear_intermediate
from ..bounds.backward import check_supported
from ..bounds.certify import CERTIFY_CHUNK, safety_threshold
from ..bounds.compute import check_labels
from ..bounds.types import BoundResult, CertifiedBounds, Method, NodeBounds
from ..errors import SpecError
from ..network import Network
from ..spec import LpBall
from .formulation import build_model


def safe_dual_bound(h: highspy.Highs, cost: np.ndarray) -> float:
    """A rigorous lower bound on min cost^T x over the model in ``h`` from its current row duals."""
    return LpData.of(h).dual_bound(h, cost)


class LpData:
    """The model's constraint matrix and bounds in float64, read once for many dual bounds of one
    model whose objective alone changes between solves (the tightener's LPs)."""

    def __init__(self, a: sp.csr_matrix | sp.csc_matrix, rl: np.ndarray, ru: np.ndarray, cl: np.ndarray,
                 cu: np.ndarray) -> None:
        self.a, self.rl, self.ru, self.cl, self.cu = a, rl, ru, cl, cu

    @classmethod
    def of(cls, h: highspy.Highs) -> "LpData":
        lp = h.getLp()
        m, n = lp.num_row_, lp.num_col_
        am = lp.a_matrix_
        starts, idx, val = np.asarray(am.start_), np.asarray(am.index_), np.asarray(am.value_)
        if am.format_ == highspy.MatrixFormat.kRowwise:
            a: sp.csr_matrix | sp.csc_matrix = sp.csr_matrix((val, idx, starts), shape=(m, n))
        else:
            a = sp.csc_matrix((val, idx, starts), shape=(m, n))
        f64 = np.float64
        return cls(a, np.asarray(lp.row_lower_, dtype=f64), np.asarray(lp.row_upper_, dtype=f64),
                   np.asarray(lp.col_lower_, dtype=f64), np.asarray(lp.col_upper_, dtype=f64))

    def dual_bound(self, h: highspy.Highs, cost: np.ndarray) -> float:
        """sum_i min(y_i L_i, y_i U_i) + sum_c min(r_c l_c, r_c u_c), r = cost - A^T y, at h's row duals y."""
        sol = h.getSolution()
        m = len(self.rl)
        y = np.asarray(sol.row_dual, dtype=np.float64) if sol.dual_valid and m else np.zeros(m)
        inf = highspy.kHighsInf
        # a multiplier on an infinite side gives -inf: drop it (any y is a valid multiplier)
        y = np.where((y > 0) & (self.rl <= -inf), 0.0, y)
        y = np.where((y < 0) & (self.ru >= inf), 0.0, y)
        r = cost - self.a.T @ y
        row_part = np.where(y > 0, y * np.where(y > 0, self.rl, 0.0), y * np.where(y < 0, self.ru, 0.0))
        col_part = np.where(r > 0, r * np.where(r > 0, self.cl, 0.0), r * np.where(r < 0, self.cu, 0.0))
        total = float(row_part.sum() + col_part.sum())
        return total if math.isfinite(total) else -math.inf


def lp_margins(net: Network, pset: LpBall, labels: Tensor, bounds: NodeBounds) -> Tensor:
    """LP lower bounds on f_y - f_j (N, K), +inf in column y, float64, with the given intermediate bounds."""
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


def lp_bounds(net: Network, pset: LpBall, labels: Tensor, *, intermediate: NodeBounds | None = None) -> BoundResult:
    """Method ``lp`` as :func:`verify.bounds.compute_bounds` reports a method: float64 CROWN intermediate
    bounds (or ``intermediate``, intersected with interval bounds), the margins the maximum of the LP's
    and the interval bound's."""
    y = check_labels(net, pset, labels)
    check_supported(net, "lp")
    if pset.p == 2.0:
        raise SpecError("method lp needs a polyhedral set: the L2 ball is not one (use crown or alpha-crown for p=2)")
    pset = pset.to(torch.float64)
    if intermediate is not None:
        bounds = interval_bounds(net, pset, dtype=torch.float64, start=intermediate)
    else:
        bounds = linear_intermediate(net, pset, rule="crown", dtype=torch.float64)
    lin = lp_margins(net, pset, y, bounds)
    return BoundResult(torch.maximum(lin, interval_margins(net, bounds, y)), bounds, "lp")


def certify_with_method(net: Network, pset: LpBall, labels: Tensor, *, method: Method, alpha_steps: int = 20,
                        alpha_lr: float = 0.25) -> CertifiedBounds:
    """:func:`verify.bounds.certify_with_bounds` for every method name, ``lp`` included: the LP runs in
    float64 throughout, and certifies where its bound exceeds the safety threshold."""
    if method != "lp":
        return certify_with_bounds(net, pset, labels, method=method, alpha_steps=alpha_steps, alpha_lr=alpha_lr)
    y = check_labels(net, pset, labels)
    margins = []
    for i in range(0, pset.n, CERTIFY_CHUNK):  # examples are independent: bounded memory, whatever n
        sub = pset.select(torch.arange(i, min(pset.n, i + CERTIFY_CHUNK), device=pset.center.device))
        screen = lp_bounds(net, sub, y[i : i + CERTIFY_CHUNK]).margin_lb
        margins.append(screen.amin(1) if screen.shape[1] else torch.full((sub.n,), math.inf, dtype=torch.float64))
    margin = torch.cat(margins) if margins else torch.zeros(0, dtype=torch.float64)
    certified = margin > safety_threshold(net, pset)
    return CertifiedBounds(certified, margin, method)


__all__ = ["LpData", "certify_with_method", "lp_bounds", "lp_margins", "safe_dual_bound"]
