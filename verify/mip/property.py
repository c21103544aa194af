"""The MIP over a disjunction of linear output constraints (general properties, VNNLIB).

The network is encoded once by :func:`verify.mip.formulation.build_model` (MIPVerify's
encoding, with the usual LP tightening). A disjunct ``C y <= d`` is empty iff

    min t  s.t.  t >= C_i y - d_i  (every row i)

is above 0. Two ways to ask that for several disjuncts:

* ``per-disjunct``: one such MIP per disjunct, its rows added and removed on the shared model;
  each stops early at a candidate (t < 0) or a proof (INFEASIBLE under ``objective_bound``
  = VERIFY_TOL, or dual bound >= VERIFY_TOL);
* ``indicator``: one MIP with a selection binary b_k per disjunct (sum b_k = 1) and rows
  ``C_ki y - d_ki - t <= M_ki (1 - b_k)`` with big-M values from interval bounds of the rows.

There is no separate LP pass: the MIP's root relaxation with ``objective_bound`` proves what
the LP relaxation would, and HiGHS's presolve makes it much cheaper (on the MNIST CNN of
``models/``, one LP relaxation took 26-50 s, the MIP on the same disjunct proved it in 5 s).
Measured with ``benchmarks/vnnlib.py`` (MNIST robustness properties, 9 disjuncts each): on a small
MLP with the attack off, the 22 instances that reach the MIP took 6.6 s in total per disjunct and
17.5 s with the indicator MIP (same answers); on the CNN of ``models/`` both modes decide and
time out on the same instances in about the same time. Per disjunct is the default.

Every candidate goes through the caller's ``confirm`` (:func:`verify.properties.confirm`) (inside the box exactly, a
float64 forward pass satisfies a disjunct); one that fails is ``numerics``, never ``sat``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .. import highs_run
from ..network import Network
from . import VERIFY_TOL
from .formulation import INF, KIND_VALUE, Expr, Formulation, NodeBounds, build_model, relu_input_nodes
from .highs import run_highs
from .tighten import TightenConfig, Tightener

_S = highspy.HighsModelStatus


@dataclass(frozen=True)
class PropertyMipResult:
    """``sat`` (with a float64-confirmed point), ``unsat`` (every disjunct proven empty) or ``unknown``."""

    status: Literal["sat", "unsat", "unknown"]
    reason: str | None  # timeout / numerics / solver status ...
    counterexample: Tensor | None  # (1, *input_shape) float64
    disjunct: int | None  # index into the disjuncts given
    seconds: float
    n_binaries: int  # ReLU binaries after tightening (+ selection binaries in indicator mode)
    mode: str


class DisjunctRows(Protocol):
    """Rows ``C y <= d`` over the outputs: a :class:`verify.properties.Disjunct` (typing only; not
    imported, since :mod:`verify.properties` imports this module)."""

    @property
    def C(self) -> np.ndarray: ...

    @property
    def d(self) -> np.ndarray: ...

    def violation(self, y: np.ndarray) -> float: ...


@dataclass
class _Outcome:
    status: str  # proven / candidate / timeout / margin / error
    x: Tensor | None = None
    solver_status: str = ""


class _Model:
    """The shared formulation plus a violation column t (cost 1)."""

    def __init__(self, form: Formulation, disjuncts: Sequence[DisjunctRows], threads: int) -> None:
        self.form = form
        self.h = form.highs
        e = form.output_expr()
        a = e.padded(form.n_cols)
        self.rows: list[tuple[sp.csr_matrix, np.ndarray]] = []  # per disjunct: (C A, d - C c) over the columns
        lows, highs = [], []
        for dj in disjuncts:
            C = sp.csr_matrix(np.asarray(dj.C, dtype=np.float64))
            ca = sp.csr_matrix(C @ a)
            rhs = np.asarray(dj.d, dtype=np.float64) - C @ e.c
            self.rows.append((ca, rhs))
            lo, hi = form.interval(Expr(ca, -rhs))  # bounds of C_i y - d_i
            lows.append(lo)
            highs.append(hi)
        self.row_hi = highs
        # every point has violation >= min_k max_i lo_ki: a finite lower bound for t keeps big-M finite
        tmin = min(float(lo.max()) for lo in lows)
        self.t_lo = tmin - 1.0 - 1e-6 * abs(tmin)
        self.t = int(form.add_cols(np.array([self.t_lo]), np.array([INF]), KIND_VALUE, 0, np.array([0]))[0])
        n = form.n_cols
        self.h.changeColsCost(n, np.arange(n, dtype=np.int32), np.zeros(n))
        self.h.changeColCost(self.t, 1.0)
        self.h.changeObjectiveOffset(0.0)
        self.h.setOptionValue("threads", int(threads))

    def add_disjunct(self, k: int) -> np.ndarray:
        """Rows C_i y - t <= d_i for disjunct k; returns their indices (to delete them later)."""
        ca, rhs = self.rows[k]
        m = ca.shape[0]
        first = self.h.getNumRow()
        n = self.form.n_cols
        tcol = sp.csr_matrix((-np.ones(m), (np.arange(m), np.full(m, self.t))), shape=(m, n))
        self.form.add_rows(_pad(ca, n) + tcol, np.full(m, -INF), rhs)
        return np.arange(first, first + m, dtype=np.int32)

    def drop(self, rows: np.ndarray) -> None:
        self.h.deleteRows(len(rows), rows)

    def point(self, x: Tensor, extra: dict[int, float]) -> np.ndarray:
        v = self.form.primal_point(x.reshape(-1))
        for col, val in extra.items():
            v[col] = val
        return v

    def run(self, *, deadline: float, warm: np.ndarray | None, n_int: int) -> _Outcome:
        run = run_highs(self.h, deadline=deadline, integer=n_int > 0, warm=warm, bound=VERIFY_TOL)
        if run is None:
            return _Outcome("timeout", solver_status="time limit (before solve)")
        st, name, obj, dual = run.status, run.name, run.objective, run.dual
        has_sol = obj is not None
        if st == _S.kInfeasible:
            # with objective_bound = tol, INFEASIBLE means no point has violation < tol
            return _Outcome("proven", solver_status=name)
        if st in (_S.kOptimal, _S.kObjectiveBound) and dual is not None and dual >= VERIFY_TOL:
            return _Outcome("proven", solver_status=name)
        if has_sol and obj is not None and obj < VERIFY_TOL:
            # a candidate (also for an optimum in [0, tol): the boundary counts as unsafe, the
            # float64 check decides)
            x = self.form.input_value(np.asarray(self.h.getSolution().col_value))
            return _Outcome("candidate", x=x, solver_status=name)
        if st == _S.kTimeLimit:
            return _Outcome("timeout", solver_status=name)
        return _Outcome("error", solver_status=name)


def _pad(m: sp.csr_matrix, ncols: int) -> sp.csr_matrix:
    return sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], ncols))


def solve_property(
    net: Network,
    box: Any,  # a single-example verify.properties.Box (not imported, as above), read as an input set
    disjuncts: Sequence[DisjunctRows],
    *,
    confirm: Callable[[Tensor], tuple[Tensor, int] | None],
    bounds: NodeBounds | None = None,
    deadline: float,
    mode: Literal["per-disjunct", "indicator"] = "per-disjunct",
    threads: int = 1,
    tighten: TightenConfig = TightenConfig(),
    warm_starts: Tensor | None = None,
) -> PropertyMipResult:
    """Is some point of ``box`` (a single-example :class:`verify.properties.Box`) in a disjunct?

    ``warm_starts`` (K, *input_shape) are input points, one per disjunct (e.g. the attack's best).
    ``confirm(x)`` is the float64 re-check of a candidate: (the confirmed point, the index of a
    disjunct of ``disjuncts`` it satisfies), or None (:func:`verify.properties.disjunct_check`).
    """
    t0 = time.perf_counter()
    h = highs_run.new(threads)
    rins = relu_input_nodes(net)
    tight = Tightener(tighten, rins[0] if rins else -1).start(deadline)
    form = build_model(net, box, 0, bounds, integer=False, highs=h, refine=tight)
    model = _Model(form, disjuncts, threads)
    n_relu = len(form.binaries)

    def result(status: Literal["sat", "unsat", "unknown"], reason: str | None = None, x: Tensor | None = None,
               j: int | None = None, extra: int = 0) -> PropertyMipResult:
        return PropertyMipResult(status, reason, x, j, time.perf_counter() - t0, n_relu + extra, mode)

    def check(x: Tensor | None) -> tuple[Tensor, int] | None:
        return confirm(x) if x is not None else None

    def warm_for(k: int | None, x: Tensor | None, extra_cols: dict[int, float]) -> np.ndarray | None:
        if x is None:
            return None
        y = net.forward(x.reshape(1, *net.input_shape).to(torch.float64)).reshape(-1).detach().numpy()
        viol = [dj.violation(y) for dj in disjuncts]
        t = max(viol[k], model.t_lo) if k is not None else max(min(viol), model.t_lo)
        return model.point(x, {model.t: t, **extra_cols})

    if n_relu:
        form.set_integer(True)
    remaining = list(range(len(disjuncts)))
    if mode == "indicator" and len(remaining) > 1:
        return _indicator(model, remaining, disjuncts, warm_starts, deadline, check, warm_for, result)
    reasons: list[str] = []
    for k in remaining:
        rows = model.add_disjunct(k)
        warm = warm_for(k, warm_starts[k] if warm_starts is not None else None, {})
        out = model.run(deadline=deadline, warm=warm, n_int=n_relu)
        model.drop(rows)
        if out.status == "proven":
            continue
        if out.status == "candidate":
            found = check(out.x)
            if found is not None:
                return result("sat", x=found[0], j=found[1])
            reasons.append("numerics")
            continue
        reasons.append("timeout" if out.status == "timeout" else f"solver status {out.solver_status}")
        if out.status == "timeout":
            break  # the deadline is shared: later disjuncts cannot run either
    if not reasons and time.perf_counter() > deadline:
        reasons.append("timeout")  # a proof that finished past the limit is not reported as one
    if not reasons:
        return result("unsat")
    return result("unknown", reasons[0])


def _indicator(model: _Model, remaining: list[int], disjuncts: Sequence[DisjunctRows], warm_starts: Tensor | None,
               deadline: float, check: Callable[[Tensor | None], tuple[Tensor, int] | None],
               warm_for: Callable[[int | None, Tensor | None, dict[int, float]], np.ndarray | None],
               result: Callable[..., PropertyMipResult]) -> PropertyMipResult:
    """One MIP: a selection binary per remaining disjunct, big-M rows, min t."""
    form, h = model.form, model.h
    r = len(remaining)
    b = form.add_cols(np.zeros(r), np.ones(r), KIND_VALUE, 0, np.zeros(r, dtype=np.int64))
    kind = highspy.HighsVarType.kInteger
    h.changeColsIntegrality(r, b.astype(np.int32), np.full(r, int(kind.value) if hasattr(kind, "value") else int(kind),
                                                           dtype=np.uint8))
    n = form.n_cols
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
    warm = None
    if warm_starts is not None:
        ys = []
        for k in remaining:
            x = warm_starts[k]
            y = form.net.forward(x.reshape(1, *form.net.input_shape).to(torch.float64)).reshape(-1).detach().numpy()
            ys.append(disjuncts[k].violation(y))
        pick = int(np.argmin(ys))
        onehot = {int(b[i]): float(i == pick) for i in range(r)}
        warm = warm_for(remaining[pick], warm_starts[remaining[pick]], onehot)
    out = model.run(deadline=deadline, warm=warm, n_int=len(form.binaries) + r)
    if out.status == "proven":
        if time.perf_counter() > deadline:
            return result("unknown", "timeout", extra=r)
        return result("unsat", extra=r)
    if out.status == "candidate":
        found = check(out.x)
        if found is not None:
            return result("sat", x=found[0], j=found[1], extra=r)
        return result("unknown", "numerics", extra=r)
    return result("unknown", "timeout" if out.status == "timeout" else f"solver status {out.solver_status}",
                  extra=r)


__all__ = ["PropertyMipResult", "solve_property"]
