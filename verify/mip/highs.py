"""The one HiGHS loop: is there a point of a query's input set in one of its unsafe disjuncts?

Robustness (disjuncts f_j > f_y, one per class j != y) and general properties (VNNLIB: each
disjunct rows ``C y <= d``) are the same question. The network is encoded once
(:func:`verify.mip.formulation.build_model`, tightened layer by layer, :mod:`verify.mip.tighten`);
then each open disjunct is one minimisation of its violation v = max_i (C_i y - d_i) on that model:

* one row (a robustness target: v = f_y - f_j): the row itself is the objective;
* several rows: a column t with rows t >= C_i y - d_i, objective t (rows added and removed).

A disjunct is empty -- proven -- when the minimum is at least VERIFY_TOL (beyond HiGHS's
feasibility tolerances): HiGHS's dual bound >= tol, or INFEASIBLE under ``objective_bound`` = tol
(no point has v < tol). Each MIP also stops at an incumbent with v < 0 (``objective_target``).
Disjuncts whose bound-propagation bound ``row_lb`` is > 0 are skipped; the others go
most-violated-first by that bound, so a counterexample ends the query early. There is no
separate LP pass: HiGHS's MIP presolve shrinks the model first (about 60% fewer nonzeros on conv
nets), so its root LP proves in about a second what the LP relaxation of the unpresolved model
takes 20-50 s to (measured on the MNIST CNNs).

An incumbent in the unsafe region by the solver's arithmetic (v < 0; v < tol for a non-strict
disjunct, whose boundary is unsafe) is a candidate: it counts only once
:func:`verify.query.confirm_point` accepts it in float64; one that fails is ``numerics``.

L2 balls are modelled by their bounding box plus tangent cuts added at each incumbent that lies
outside the ball, until an incumbent is inside, the disjunct is proven, or ``l2_max_rounds``.

``indicator`` mode (properties): one MIP with a selection binary b_k per disjunct (sum b_k = 1)
and rows ``C_ki y - d_ki - t <= M_ki (1 - b_k)``, big-M from interval bounds of the rows. Measured
with ``benchmarks/vnnlib.py`` (MNIST robustness properties, 9 disjuncts each): on a small MLP with
the attack off, the 22 instances that reach the MIP took 6.6 s in total per disjunct and 17.5 s
with the indicator MIP (same answers); on the CNN of ``models/`` both decide and time out on the
same instances in about the same time. Per disjunct is the default.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .. import highs_run
from ..network import Network
from ..query import Query, confirm_point
from ..results import Verdict
from ..spec import LpBall
from . import VERIFY_TOL
from .formulation import INF, KIND_VALUE, Expr, Formulation, NodeBounds
from .tighten import TightenConfig, build_tightened

_S = highspy.HighsModelStatus
Mode = Literal["per-disjunct", "indicator"]


@dataclass(frozen=True)
class HighsOptions:
    """Solver settings of one query (its time limit is the ``deadline`` of :func:`solve_query`)."""

    threads: int = 1
    tighten: TightenConfig = field(default_factory=TightenConfig)
    l2_max_rounds: int = 50
    tol: float = VERIFY_TOL
    mode: Mode = "per-disjunct"


@dataclass(frozen=True)
class HighsRun:
    """What one ``Highs.run()`` proved: status, incumbent objective, and a valid lower bound on the
    optimum (-inf if none; for a MIP at most the ``bound`` it was run with, see :func:`run_highs`)."""

    status: highspy.HighsModelStatus
    name: str
    objective: float | None  # None: no primal solution
    dual: float


# an upper estimate of HiGHS's MIP presolve time per nonzero of the model (run_highs)
PRESOLVE_S_PER_NONZERO = 3e-5


def run_highs(h: highspy.Highs, *, deadline: float, integer: bool, warm: np.ndarray | None = None,
              target: float = 0.0, bound: float = VERIFY_TOL) -> HighsRun | None:
    """One solve of the model in ``h`` within ``deadline``; None if the deadline has passed.

    A MIP stops early at ``target`` (an incumbent below it) or ``bound`` (a dual bound above it);
    an LP is solved to optimality (stopped at a bound it reports no usable dual bound).
    """
    left = deadline - time.perf_counter()
    if left <= 0:
        return None
    # a MIP's time limit counts from the start of its run, an LP's from the object's
    # accumulated run time (HiGHS): add that, or a later LP would stop at once
    h.setOptionValue("time_limit", max(left, 1e-3) + (0.0 if integer else h.getRunTime()))
    if integer:
        # HiGHS's MIP presolve does not look at the time limit (measured: 12.4 s on the 256x6 MLP's
        # 580,000-nonzero model with 2.7 s left, so `auto`'s MIP phase overran its deadline by 10 s):
        # with less time left than it may take, the MIP runs without it and the limit holds
        slow = left < PRESOLVE_S_PER_NONZERO * h.getNumNz()
        h.setOptionValue("presolve", "off" if slow else "choose")
    h.setOptionValue("objective_target", target if integer else -highspy.kHighsInf)
    h.setOptionValue("objective_bound", bound if integer else highspy.kHighsInf)
    if warm is not None and integer:
        h.setSolution(len(warm), np.arange(len(warm), dtype=np.int32), warm)
    highs_run.run(h)
    st = h.getModelStatus()
    info = h.getInfo()
    obj = info.objective_function_value if info.primal_solution_status == 2 else None
    if integer:
        # With objective_bound set, HiGHS prunes every node whose bound reaches it, and then reports
        # a "dual bound" that can exceed the true optimum (seen: 0.4944 reported, 0.4878 attained at
        # a point of the ball, the zoo KW CNN's test point 33 at Linf 0.1). What it proves is only
        # that the optimum is >= the cutoff, so a larger reported bound is cut down to it.
        dual = min(info.mip_dual_bound, bound)
    else:
        dual = obj if st == _S.kOptimal and obj is not None else -math.inf
    return HighsRun(st, h.modelStatusToString(st), obj, dual)


@dataclass
class _Outcome:
    status: str  # proven / violated / timeout / numerics / l2 / margin / error
    solver_status: str = ""
    bound: float | None = None  # proven lower bound on the violation
    found: tuple[Tensor, int] | None = None  # confirmed point and the disjunct it satisfies


class _Model:
    """The shared formulation, the disjuncts' rows over its columns, and (where needed) a violation column t."""

    def __init__(self, form: Formulation, query: Query, with_t: bool) -> None:
        self.form, self.h, self.query = form, form.highs, query
        e = form.output_expr()
        a = e.padded(form.n_cols)
        self.rows: list[tuple[sp.csr_matrix, np.ndarray]] = []  # per disjunct: (C A, d - C c) over the columns
        self.row_hi: list[np.ndarray] = []
        lows = []
        for dj in query.disjuncts:
            C = sp.csr_matrix(np.asarray(dj.C, dtype=np.float64))
            ca = sp.csr_matrix(C @ a)
            rhs = np.asarray(dj.d, dtype=np.float64) - C @ e.c
            self.rows.append((ca, rhs))
            if with_t:
                lo, hi = form.interval(Expr(ca, -rhs))  # bounds of C_i y - d_i
                lows.append(lo)
                self.row_hi.append(hi)
        self.t = -1
        self.t_lo = -math.inf
        if with_t:
            # every point has violation >= min_k max_i lo_ki: a finite lower bound for t keeps big-M finite
            tmin = min(float(lo.max()) for lo in lows)
            self.t_lo = tmin - 1.0 - 1e-6 * abs(tmin)
            self.t = int(form.add_cols(np.array([self.t_lo]), np.array([INF]), KIND_VALUE, 0, np.array([0]))[0])
        self._points: dict[int, np.ndarray] = {}

    def select(self, k: int) -> np.ndarray:
        """Make disjunct k's violation the objective; returns the rows added for it (to drop later)."""
        ca, rhs = self.rows[k]
        n = self.form.n_cols
        cost = np.zeros(n)
        if ca.shape[0] == 1:
            cost[: ca.shape[1]] = ca.toarray().ravel()
            self._objective(cost, -float(rhs[0]))
            return np.zeros(0, dtype=np.int32)
        cost[self.t] = 1.0
        self._objective(cost, 0.0)
        m = ca.shape[0]
        first = self.h.getNumRow()
        tcol = sp.csr_matrix((-np.ones(m), (np.arange(m), np.full(m, self.t))), shape=(m, n))
        self.form.add_rows(_pad(ca, n) + tcol, np.full(m, -INF), rhs)
        return np.arange(first, first + m, dtype=np.int32)

    def _objective(self, cost: np.ndarray, offset: float) -> None:
        self.h.changeColsCost(len(cost), np.arange(len(cost), dtype=np.int32), cost)
        self.h.changeObjectiveOffset(offset)

    def drop(self, rows: np.ndarray) -> None:
        if len(rows):
            self.h.deleteRows(len(rows), rows)

    def warm_point(self, warm: Tensor | None, k: int | None, extra: dict[int, float] | None = None) -> np.ndarray | None:
        """A full column vector from an input point: ``warm`` holds one point, or one per disjunct."""
        if warm is None or not len(self.form.binaries):
            return None
        row = k if warm.shape[0] == len(self.query.disjuncts) and k is not None else 0
        if row not in self._points:
            s = self.query.input_set
            x = s.project(warm[row : row + 1].to(torch.float64).reshape(s.center.shape))
            self._points[row] = self.form.primal_point(x[0])
        v = self._points[row].copy()
        if self.t >= 0:
            y = self.form.net.forward(self.form.input_value(v)).reshape(-1).detach().numpy()
            viol = [dj.violation(y) for dj in self.query.disjuncts]
            v[self.t] = max(viol[k] if k is not None else min(viol), self.t_lo)
        for col, val in (extra or {}).items():
            v[col] = val
        return v


def _pad(m: sp.csr_matrix, ncols: int) -> sp.csr_matrix:
    return sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], ncols))


def _minimise(model: _Model, *, deadline: float, warm: np.ndarray | None, limit: float, opts: HighsOptions,
              confirm: Callable[[Tensor], tuple[Tensor, int] | None]) -> _Outcome:
    """Minimise the selected violation: proven (>= tol), a confirmed point, or why neither.
    ``limit``: an incumbent below it is a candidate (0 for strict disjuncts, tol otherwise)."""
    form, h = model.form, model.h
    ball = model.query.input_set
    rounds = 0
    while True:
        run = run_highs(h, deadline=deadline, integer=len(form.binaries) > 0, warm=warm, bound=opts.tol)
        if run is None:
            return _Outcome("timeout", "time limit (before solve)")
        st, name, obj, dual = run.status, run.name, run.objective, run.dual
        if st == _S.kInfeasible:  # with objective_bound = tol: no point has violation < tol
            return _Outcome("proven", name, opts.tol)
        if st in (_S.kOptimal, _S.kObjectiveBound) and dual >= opts.tol:
            return _Outcome("proven", name, dual)
        if obj is not None and obj < opts.tol:
            x = form.input_value(np.asarray(h.getSolution().col_value))
            if isinstance(ball, LpBall) and ball.p == 2.0:
                d = (x - ball.center).reshape(-1)
                norm = float(d.norm())
                if norm > float(ball.eps[0]) * (1 + 1e-9):
                    found = confirm(x) if obj < limit else None  # its projection onto the ball may be one
                    if found is not None:
                        return _Outcome("violated", name, found=found)
                    if rounds >= opts.l2_max_rounds:
                        return _Outcome("l2", name)
                    _add_l2_cut(form, ball, d / norm)
                    rounds += 1
                    continue
            if obj < limit:
                found = confirm(x)
                return _Outcome("violated" if found is not None else "numerics", name, found=found)
        if st == _S.kTimeLimit:
            return _Outcome("timeout", name)
        if st == _S.kOptimal:  # optimum in [limit, tol): neither a counterexample nor a proof
            return _Outcome("margin", name)
        return _Outcome("error", name)


def _add_l2_cut(form: Formulation, ball: LpBall, g: Tensor) -> None:
    """g . (x - c) <= eps with ||g|| = 1: a tangent plane of the ball, valid for all its points."""
    c = ball.center.reshape(-1).to(torch.float64).numpy()
    gv = g.reshape(-1).numpy()
    row = sp.csr_matrix((gv, (np.zeros(len(gv), dtype=int), form.input_cols)), shape=(1, form.n_cols))
    form.add_rows(row, np.array([-INF]), np.array([float(ball.eps[0]) + float(gv @ c)]))


_REASONS = {"timeout": "timeout", "l2": "l2 cut rounds", "margin": "margin within tolerance", "numerics": "numerics"}


def solve_query(
    net: Network,
    query: Query,
    *,
    deadline: float,
    bounds: NodeBounds | None = None,
    row_lb: np.ndarray | None = None,
    warm: Tensor | None = None,
    options: HighsOptions = HighsOptions(),
) -> Verdict:
    """Decide ``query`` (one example) before ``deadline`` (``time.perf_counter()`` seconds).

    ``bounds``: float64 bounds on the example's nodes (big-M values; tightened further here);
    ``row_lb``: proven lower bounds on each disjunct's violation (> 0: skipped); ``warm``: an input
    point, or one per disjunct, to warm-start from (e.g. the attack's best). A verified Verdict's
    ``margin_lb`` is the smallest proven lower bound on a disjunct's violation.
    """
    t0 = time.perf_counter()
    form = build_tightened(net, query.input_set, bounds, config=options.tighten, deadline=deadline,  # type: ignore[arg-type]
                           threads=options.threads)
    n_bin = len(form.binaries)
    n_dis = len(query.disjuncts)
    open_k = [k for k in range(n_dis) if row_lb is None or not row_lb[k] > 0]
    # proven lower bound on each disjunct's violation (None: not proven)
    lower: list[float | None] = [None if k in open_k else float(row_lb[k]) for k in range(n_dis)]  # type: ignore[index]
    remaining = sorted(open_k, key=lambda k: -math.inf if row_lb is None else float(row_lb[k]))
    indicator = options.mode == "indicator" and len(remaining) > 1
    model = _Model(form, query, with_t=indicator or any(len(query.disjuncts[k].d) != 1 for k in remaining))
    if remaining and n_bin:
        form.set_integer(True)

    def confirm(x: Tensor) -> tuple[Tensor, int] | None:
        return confirm_point(net, query, x)

    def outcomes() -> Iterator[tuple[list[int], _Outcome]]:
        if indicator:
            yield remaining, _indicator(model, remaining, deadline=deadline, warm=warm, opts=options, confirm=confirm)
            return
        for k in remaining:
            rows = model.select(k)
            limit = 0.0 if query.disjuncts[k].strict else options.tol
            yield [k], _minimise(model, deadline=deadline, warm=model.warm_point(warm, k), limit=limit, opts=options,
                                 confirm=confirm)
            model.drop(rows)

    n_total = n_bin + (len(remaining) if indicator else 0)
    reasons: list[str] = []
    last_status = "bounds" if not remaining else ""
    for ks, out in outcomes():
        last_status = out.solver_status
        if out.status == "proven":
            for k in ks:
                lower[k] = out.bound
            continue
        if out.found is not None:
            return Verdict("falsified", "mip", counterexample=out.found[0], disjunct=out.found[1],
                           seconds={"mip": time.perf_counter() - t0}, solver_status=out.solver_status,
                           n_binaries=n_total)
        reasons.append(_REASONS.get(out.status, f"solver status {out.solver_status}"))
        if out.status == "timeout":
            break  # the deadline is shared: later disjuncts cannot run either
    seconds = {"mip": time.perf_counter() - t0}
    if not reasons and time.perf_counter() > deadline:
        reasons.append("timeout")  # a proof that finished past the time limit is not reported as one
    if not reasons and all(b is not None for b in lower):
        # every disjunct proven: by its propagated bound (> 0, re-checked in float64 upstream), by the
        # root LP or the MIP (dual bound >= tol, or INFEASIBLE under objective_bound = tol)
        lb = min((b for b in lower if b is not None), default=math.inf)
        return Verdict("verified", "mip", margin_lb=lb, seconds=seconds, solver_status=last_status or "lp",
                       n_binaries=n_total)
    return Verdict("unknown", reason=reasons[0] if reasons else "timeout", seconds=seconds,
                   solver_status=last_status, n_binaries=n_total)


def _indicator(model: _Model, remaining: list[int], *, deadline: float, warm: Tensor | None, opts: HighsOptions,
               confirm: Callable[[Tensor], tuple[Tensor, int] | None]) -> _Outcome:
    """One MIP over the remaining disjuncts: a selection binary each, big-M rows, min t."""
    form, h = model.form, model.h
    r = len(remaining)
    b = form.add_cols(np.zeros(r), np.ones(r), KIND_VALUE, 0, np.zeros(r, dtype=np.int64))
    kind = highspy.HighsVarType.kInteger
    h.changeColsIntegrality(r, b.astype(np.int32), np.full(r, int(kind.value) if hasattr(kind, "value") else int(kind),
                                                           dtype=np.uint8))
    form.binaries = np.concatenate([form.binaries, b]).astype(np.int32)  # the model is integer from here on
    n = form.n_cols
    cost = np.zeros(n)
    cost[model.t] = 1.0
    model._objective(cost, 0.0)
    # sum_k b_k = 1
    form.add_rows(sp.csr_matrix((np.ones(r), (np.zeros(r, dtype=int), b)), shape=(1, n)), np.ones(1), np.ones(1))
    for pos, k in enumerate(remaining):
        ca, rhs = model.rows[k]
        m = ca.shape[0]
        # C y - d - t <= M (1 - b): M = upper bound of C y - d minus the lower bound of t
        big = np.maximum(model.row_hi[k] - model.t_lo, 0.0) * (1 + 1e-6) + 1e-6
        extra = sp.csr_matrix((np.concatenate([-np.ones(m), big]),
                               (np.concatenate([np.arange(m), np.arange(m)]), np.concatenate([np.full(m, model.t), np.full(m, b[pos])]))),
                              shape=(m, n))
        form.add_rows(_pad(ca, n) + extra, np.full(m, -INF), rhs + big)
    start = None
    if warm is not None:
        pts = [model.warm_point(warm, k) for k in remaining]
        if all(p is not None for p in pts):
            pick = int(np.argmin([float(p[model.t]) for p in pts]))  # type: ignore[index]
            start = model.warm_point(warm, remaining[pick], {int(b[i]): float(i == pick) for i in range(r)})
    limit = 0.0 if all(model.query.disjuncts[k].strict for k in remaining) else opts.tol
    return _minimise(model, deadline=deadline, warm=start, limit=limit, opts=opts, confirm=confirm)


__all__ = ["HighsOptions", "HighsRun", "run_highs", "solve_query"]
