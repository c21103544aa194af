"""Progressive bound tightening on the model built so far (MIPVerify's scheme).

Before a ReLU layer is encoded, each of its still-unstable inputs can be bounded by
optimising its expression over the model of the layers before it: first the LP
relaxation ("lp"), then the MIP with a small per-neuron time limit ("mip"). Cheaper
levels (interval, KW, CROWN) arrive as the ``bounds`` of :func:`build_model`.

Soundness: a new bound comes only from a *dual* bound -- for an LP (only when its status is
optimal) one recomputed in float64 from HiGHS's row duals by weak duality
(:meth:`verify.mip.lp_bound.LpData.dual_bound`; the primal objective carries the solver's
tolerances), for a MIP its ``mip_dual_bound`` -- never an incumbent, and is widened by a small
slack. A failed or timed-out solve keeps the old bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import highspy
import numpy as np

from .. import highs_run
from ..network import Network
from ..spec import LpBall
from .formulation import Expr, Formulation, NodeBounds, build_model
from .lp_bound import LpData

Level = Literal["lp", "mip"]
_SLACK = 1e-7


@dataclass(frozen=True)
class TightenConfig:
    """Which solver levels run on ReLU inputs, and how long each may take per example.

    ``skip_first_linf``: for an Linf ball the interval bounds of the first ReLU layer
    are already exact, so optimising them is wasted time.
    """

    levels: tuple[Level, ...] = ("lp",)
    lp_budget_s: float = 2.0
    mip_budget_s: float = 10.0
    mip_neuron_time_s: float = 0.5
    skip_first_linf: bool = True

    def __post_init__(self) -> None:
        bad = [lv for lv in self.levels if lv not in ("lp", "mip")]
        if bad:
            raise ValueError(f"unknown tightening level {bad[0]!r}: use 'lp' or 'mip'")


def _status_ok(h: highspy.Highs) -> bool:
    return h.getModelStatus() == highspy.HighsModelStatus.kOptimal


class _Objective:
    """Sets sparse objectives on a Highs model, resetting the previous one's coefficients."""

    def __init__(self, h: highspy.Highs) -> None:
        self.h = h
        self.last = np.zeros(0, dtype=np.int32)

    def set(self, idx: np.ndarray, vals: np.ndarray, offset: float) -> None:
        if len(self.last):
            self.h.changeColsCost(len(self.last), self.last, np.zeros(len(self.last)))
        idx = idx.astype(np.int32)
        self.h.changeColsCost(len(idx), idx, vals.astype(np.float64))
        self.h.changeObjectiveOffset(float(offset))
        self.last = idx

    def clear(self) -> None:
        self.set(np.zeros(0, dtype=np.int32), np.zeros(0), 0.0)


def optimize_rows(
    form: Formulation,
    x: Expr,
    rows: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    deadline: float,
    mip: bool = False,
    neuron_time_s: float = math.inf,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Tighten lo/hi of ``rows`` of expression ``x`` by minimising and maximising each over ``form``.

    Returns the new (lo, hi) and the number of solves. The model's integrality is
    whatever ``form`` has; with ``mip=True`` the MIP dual bound is used.
    """
    h = form.highs
    a = x.padded(form.n_cols)
    obj = _Objective(h)
    lo, hi = lo.copy(), hi.copy()
    solves = 0
    data: LpData | None = None  # the LP's matrix and bounds: the objective alone changes between solves
    h.setOptionValue("time_limit", float(neuron_time_s) if mip else math.inf)
    for r in rows:
        for sense in (1.0, -1.0):
            if time.perf_counter() >= deadline:
                obj.clear()
                h.setOptionValue("time_limit", math.inf)
                return lo, hi, solves
            if lo[r] >= 0 or hi[r] <= 0:
                break  # already stable: the other side no longer matters for the encoding
            start, stop = a.indptr[r], a.indptr[r + 1]
            obj.set(a.indices[start:stop], sense * a.data[start:stop], sense * x.c[r])
            left = max(1e-3, deadline - time.perf_counter())
            if mip:  # a MIP's limit counts from the start of its run
                h.setOptionValue("time_limit", min(neuron_time_s, left))
            else:  # an LP's counts the object's accumulated run time: one LP can take minutes
                h.setOptionValue("time_limit", left + h.getRunTime())
            highs_run.run(h)
            solves += 1
            if mip:
                bound = h.getInfo().mip_dual_bound
                ok = h.getInfo().mip_node_count >= 0 and math.isfinite(bound)
                if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
                    ok = False
            else:
                ok = _status_ok(h)
                if ok:  # weak duality at HiGHS's row duals: its tolerances can only weaken the bound
                    data = data or LpData.of(h)
                    cost = np.zeros(form.n_cols)
                    cost[a.indices[start:stop]] = sense * a.data[start:stop]
                    bound = data.dual_bound(h, cost) + sense * x.c[r]
                    ok = math.isfinite(bound)
            if not ok:
                continue
            bound -= _SLACK * (1 + abs(bound))
            if sense > 0:
                lo[r] = max(lo[r], bound)
            else:
                hi[r] = min(hi[r], -bound)
    obj.clear()
    h.setOptionValue("time_limit", math.inf)
    return lo, hi, solves


@dataclass
class Tightener:
    """The ``refine`` hook for :func:`verify.mip.formulation.build_model`, with per-level budgets."""

    config: TightenConfig
    first_relu_input: int
    lp_deadline: float = 0.0
    mip_deadline: float = 0.0
    solves: int = 0
    seconds: float = 0.0

    def start(self, until: float = math.inf) -> "Tightener":
        now = time.perf_counter()
        self.lp_deadline = min(until, now + self.config.lp_budget_s)
        self.mip_deadline = min(until, now + self.config.lp_budget_s + self.config.mip_budget_s)
        return self

    def __call__(self, form: Formulation, node: int, x: Expr, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if node == self.first_relu_input and math.isinf(form.pset.p) and self.config.skip_first_linf:
            return lo, hi
        t0 = time.perf_counter()
        for level in self.config.levels:
            rows = np.flatnonzero((lo < 0) & (hi > 0))
            if not len(rows):
                break
            if level == "lp":
                lo, hi, n = optimize_rows(form, x, rows, lo, hi, deadline=self.lp_deadline)
            else:
                if not len(form.binaries):
                    continue
                form.set_integer(True)
                try:
                    lo, hi, n = optimize_rows(form, x, rows, lo, hi, deadline=self.mip_deadline, mip=True,
                                              neuron_time_s=self.config.mip_neuron_time_s)
                finally:
                    form.set_integer(False)
            self.solves += n
        self.seconds += time.perf_counter() - t0
        return lo, hi


def build_tightened(net: Network, pset: LpBall, bounds: NodeBounds | None, *, config: TightenConfig, deadline: float,
                    threads: int) -> Formulation:
    """The model of the single example of ``pset`` (binaries still continuous), every ReLU input's
    bounds tightened per ``config`` on the layers before it while it is built, until ``deadline``."""
    rins = [n.inputs[0] for n in net.relu_nodes]
    tight = Tightener(config, rins[0] if rins else -1).start(deadline)
    return build_model(net, pset, 0, bounds, integer=False, highs=highs_run.new(threads), refine=tight)


__all__ = ["Level", "TightenConfig", "Tightener", "build_tightened", "optimize_rows"]
