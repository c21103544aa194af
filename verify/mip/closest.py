"""Minimum adversarial distortion on HiGHS (MIPVerify.jl's ``closest`` objective).

For one example (centre c, label y) and a norm p, find

    r* = min ||x - c||_p  over x in the input box with f_j(x) >= f_y(x) for some j != y.

The network is encoded once (:func:`verify.mip.formulation.build_model`) over the ball of the
best known upper end ``U`` (a float64-confirmed counterexample at distance U exists), so its big-M
constants come from bounds at radius U, not over the whole box. One distance column carries
the objective:

* Linf: t with |x_i - c_i| <= t (two rows per input);
* L1: the formulation's |x_i - c_i| columns, objective their sum;
* L2: s with s >= |x_i - c_i| and tangent cuts s >= g.(x - c), ||g|| = 1, added at each
  solution whose true norm exceeds s (the same cut loop as the robustness MIP's L2 ball). The
  relaxed optimum is a lower end, the solution's true norm an upper end: an honest bracket.

Targets are solved one at a time (the row f_y - f_j <= 0 added and removed on the shared model),
the most promising first, each with HiGHS's ``objective_bound`` at the best distance so far:
a target that cannot beat it is pruned at once. A target whose propagated margin bound at
radius U is > 0 cannot be reached inside the ball and is skipped.

Soundness: the lower end is min over targets of the solver's *dual* bound (never an incumbent),
cut to the cutoff it ran with (see :func:`verify.mip.highs.run_highs`) and lowered by
:data:`LOWER_SLACK` so that solver tolerances cannot overstate it; the upper end is the float64
distance of a point that :func:`verify.query.confirm_point` confirmed as misclassified.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from ..network import Network
from ..query import Query, confirm_point
from ..spec import LpBall, distances
from .formulation import INF, KIND_ABS, KIND_VALUE, Formulation, NodeBounds
from .highs import run_highs
from .tighten import TightenConfig, build_tightened

_S = highspy.HighsModelStatus

# The lower end reported is the solver's dual bound d minus LOWER_SLACK_ABS + LOWER_SLACK_REL * d.
# HiGHS's feasibility and optimality tolerances (1e-6 .. 1e-7 on rows of unit scale) let a dual
# bound overstate the optimum: seen 5.6e-7 over a float64-confirmed counterexample's distance
# (0.04510586 vs 0.04510530, the zoo KW CNN's test point 8, Linf, presolve off): the absolute
# slack is about twice that, the relative one keeps it so for distances far above 1.
LOWER_SLACK_ABS = 1e-6
LOWER_SLACK_REL = 2e-6
# Solver points sit on the decision boundary (a tie f_j = f_y is no counterexample): the re-check
# also tries c + f (x - c) for these factors f, the smallest first.
PUSH = (1 + 1e-8, 1 + 1e-7, 1 + 1e-6, 1 + 1e-5, 1 + 1e-4, 1 + 1e-3)
L2_MAX_ROUNDS = 30


@dataclass(frozen=True)
class ClosestResult:
    """What the MIP proved about one example's minimum distortion.

    ``lower``: no misclassified point lies at distance <= lower (a solver dual bound, after the
    slack). ``upper``/``x``/``target``: the best float64-confirmed counterexample the MIP found
    (None: none better than the ``upper`` it was given). ``status`` "optimal" when every target
    ran to the end, else "timeout", "numerics" (a solution failed the re-check) or "l2" (cut rounds).
    """

    lower: float
    upper: float | None
    x: Tensor | None
    target: int | None
    status: Literal["optimal", "timeout", "numerics", "l2"]
    seconds: float
    n_binaries: int
    solver_status: str


def sound_lower(d: float) -> float:
    """What a solver dual bound d on the distance proves: d less the slack (LOWER_SLACK_*)."""
    return max(0.0, d - LOWER_SLACK_ABS - LOWER_SLACK_REL * abs(d))


class _Distance:
    """The distance objective on a formulation: its columns, rows, cuts and the value at a point."""

    def __init__(self, form: Formulation, center: np.ndarray, p: float, lower: float, upper: float) -> None:
        self.form, self.p, self.c = form, p, center
        d = len(center)
        n_sel = np.arange(d)
        if p == 1.0:
            self.cols = np.flatnonzero(np.concatenate(form.col_kind) == KIND_ABS).astype(np.int32)
            # sum |x_i - c_i| >= lower (valid: no counterexample is closer)
            form.add_rows(sp.csr_matrix((np.ones(d), (np.zeros(d, dtype=int), self.cols)), shape=(1, form.n_cols)),
                          np.array([lower]), np.array([INF]))
        else:
            t = form.add_cols(np.array([lower]), np.array([upper]), KIND_VALUE, 0, np.array([0]))
            self.cols = t
            x = form.input_cols
            sel_x = sp.csr_matrix((np.ones(d), (n_sel, x)), shape=(d, form.n_cols))
            sel_t = sp.csr_matrix((np.ones(d), (n_sel, np.full(d, t[0]))), shape=(d, form.n_cols))
            form.add_rows(sel_x - sel_t, np.full(d, -INF), center)  # x_i - t <= c_i
            form.add_rows(sel_x + sel_t, center, np.full(d, INF))  # x_i + t >= c_i
        n = form.n_cols
        cost = np.zeros(n)
        cost[self.cols] = 1.0
        form.highs.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
        form.highs.changeObjectiveOffset(0.0)

    def add_l2_cut(self, x: np.ndarray) -> None:
        """s >= g.(x - c) with g the unit direction of the solution: valid for every point."""
        diff = x - self.c
        g = diff / np.linalg.norm(diff)
        n = self.form.n_cols
        idx = np.concatenate([self.form.input_cols, self.cols])
        row = sp.csr_matrix((np.concatenate([g, [-1.0]]), (np.zeros(len(idx), dtype=int), idx)), shape=(1, n))
        self.form.add_rows(row, np.array([-INF]), np.array([float(g @ self.c)]))


def closest(
    net: Network,
    center: Tensor,
    label: int,
    p: float,
    *,
    upper: float,
    lower: float = 0.0,
    targets: list[int] | None = None,
    first_target: int | None = None,
    bounds: NodeBounds | None = None,
    deadline: float,
    threads: int = 1,
    tol: float = 1e-5,
    tighten: TightenConfig = TightenConfig(),
) -> ClosestResult:
    """The minimum distortion of one example, between ``lower`` (proven elsewhere) and ``upper`` (the
    distance of a confirmed counterexample the caller holds, or the largest distance of interest).

    ``bounds`` are pre-activation bounds over the ball of radius ``upper`` (e.g. CROWN's);
    ``targets`` the classes still reachable inside that ball (default: all but ``label``).
    ``tol``: each target's search stops when its incumbent and dual bound are within tol / 4.
    """
    t0 = time.perf_counter()
    c = center.to(torch.float64).reshape(1, *net.input_shape)
    lo_dom, hi_dom = net.input_range
    ball = LpBall.make(c, upper, p, (lo_dom, hi_dom), check_inside=False)
    form = build_tightened(net, ball, bounds, config=tighten, deadline=deadline, threads=threads)
    h = form.highs
    # stop a target's search once its incumbent and dual bound are within a quarter of ``tol``
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", tol / 4)
    n_bin = len(form.binaries)
    cvec = c.reshape(-1).numpy()
    dist = _Distance(form, cvec, p, lower, upper)
    if n_bin:
        form.set_integer(True)
    check = Query.robustness(LpBall.make(c, upper * (1 + 2e-3) + 1e-9, p, (lo_dom, hi_dom), check_inside=False),
                             label, net.n_classes)
    todo = [j for j in (targets if targets is not None else range(net.n_classes)) if j != label]
    if first_target is not None and first_target in todo:
        todo.remove(first_target)
        todo.insert(0, first_target)
    best, best_x, best_j = upper, None, None
    proven: list[float] = []  # per target: no counterexample of that target is closer than this
    status: Literal["optimal", "timeout", "numerics", "l2"] = "optimal"
    solver_status = ""
    # no warm start from the caller's counterexample: the cutoff (objective_bound = upper) already
    # holds its value, and handing HiGHS the point made it slower (the KW CNN's test points 8 and 18:
    # 42 -> 30 s and 106 -> 93 s, with up to twice the LP iterations)
    for j in todo:
        cost, offset = form.margin_expr(label, j)
        nz = np.flatnonzero(cost)
        first = h.getNumRow()
        form.add_rows(sp.csr_matrix((cost[nz], (np.zeros(len(nz), dtype=int), nz)), shape=(1, form.n_cols)),
                      np.array([-INF]), np.array([-offset]))  # f_y - f_j <= 0
        n_cuts = 0
        while True:
            run = run_highs(h, deadline=deadline, integer=n_bin > 0, target=-INF, bound=best)
            if run is None:
                status, solver_status = "timeout", "time limit (before solve)"
                proven.append(lower)
                break
            solver_status = run.name
            if run.status == _S.kInfeasible:  # nothing of target j closer than the cutoff
                proven.append(best)
                break
            if run.status not in (_S.kOptimal, _S.kObjectiveBound, _S.kTimeLimit):
                # a solver error proves nothing, not even the cutoff it ran with
                status = "numerics" if status == "optimal" else status
                proven.append(lower)
                break
            d_bound = run.dual if math.isfinite(run.dual) else lower
            if run.objective is not None and run.objective < best:
                col = np.asarray(h.getSolution().col_value)
                xs = form.input_value(col)
                found = confirm_point(net, check, xs, push=PUSH)
                if found is not None:
                    dx = float(distances(c, found[0], p)[0])
                    if dx < best:
                        best, best_x, best_j = dx, found[0], int(check.targets()[found[1]])
                elif status == "optimal":
                    status = "numerics"
                if p == 2.0 and run.status != _S.kTimeLimit:
                    norm = float(np.linalg.norm(col[form.input_cols] - cvec))
                    s_val = float(col[dist.cols[0]])
                    if norm > s_val * (1 + 1e-7) + 1e-9 and best > d_bound + 1e-7:
                        if n_cuts >= L2_MAX_ROUNDS:
                            status = "l2" if status == "optimal" else status
                            proven.append(min(d_bound, best))
                            break
                        # the relaxed optimum lies outside the L2 norm: cut it off (the cut is
                        # valid for every point, so it stays for the later targets)
                        dist.add_l2_cut(col[form.input_cols])
                        n_cuts += 1
                        continue
            if run.status == _S.kTimeLimit:
                status = "timeout"
            proven.append(min(d_bound, best))
            break
        h.deleteRows(1, np.array([first], dtype=np.int32))
        if status == "timeout":
            break
    if len(proven) < len(todo):
        status = "timeout"
        proven.append(lower)
    lo_end = max(lower, sound_lower(min([best] + proven)))
    return ClosestResult(min(lo_end, best), best if best_x is not None else None, best_x, best_j, status,
                         time.perf_counter() - t0, n_bin, solver_status)


__all__ = ["ClosestResult", "LOWER_SLACK_ABS", "LOWER_SLACK_REL", "closest", "sound_lower"]
