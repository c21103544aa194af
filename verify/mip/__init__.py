"""Exact verification as a mixed-integer program (MIPVerify's formulation on HiGHS).

:mod:`formulation` turns a Network, a perturbation set and pre-activation bounds
into a HiGHS model (one binary per unstable ReLU); :mod:`tighten` makes the bounds
tighter before the binaries are encoded; :mod:`highs` answers any query (robustness or a
property), one disjunct at a time; :mod:`lp_bound` is bound method ``lp`` (the model relaxed);
:mod:`closest` the minimum-distortion MIP. Every backend (HiGHS here, MIPVerify.jl in
:mod:`mipverify`) reports a :class:`MipResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

MipStatus = Literal["verified", "falsified", "unknown"]

# A disjunct's violation (robustness: the margin f_y - f_j) must be proven >= VERIFY_TOL (a dual bound)
# to certify, so that solver feasibility tolerances (1e-6 to 1e-7 in HiGHS) cannot turn a tiny violation into a proof.
VERIFY_TOL = 1e-6


@dataclass(frozen=True)
class MipResult:
    """The verdict of one exact solve for one query.

    ``objective`` is the best incumbent's negated violation (robustness: max_j f_j(x) - f_y(x);
    > 0: a counterexample), ``dual_bound`` an upper bound on it proven by the solver
    (<= -VERIFY_TOL: verified). ``counterexample`` is set only for ``falsified`` and has
    passed :func:`verify.query.confirm_point` in float64.
    """

    status: MipStatus
    reason: str | None
    objective: float | None
    dual_bound: float | None
    counterexample: Tensor | None
    solver_status: str
    gap: float | None
    seconds: float
    n_binaries: int
    backend: str = "highs"


__all__ = ["MipResult", "MipStatus", "VERIFY_TOL"]
