"""Exact verification as a mixed-integer program (MIPVerify's formulation on HiGHS).

:mod:`formulation` turns a Network, a perturbation set and pre-activation bounds
into a HiGHS model (one binary per unstable ReLU); :mod:`tighten` makes the bounds
tighter before the binaries are encoded; :mod:`highs` answers any query (robustness or a
property), one disjunct at a time; :mod:`lp_bound` is bound method ``lp`` (the model relaxed);
:mod:`closest` the minimum-distortion MIP. Every backend (HiGHS here, MIPVerify.jl in
:mod:`mipverify`) reports a :class:`verify.results.Verdict`.
"""

from __future__ import annotations

# A disjunct's violation (robustness: the margin f_y - f_j) must be proven >= VERIFY_TOL (a dual bound)
# to certify, so that solver feasibility tolerances (1e-6 to 1e-7 in HiGHS) cannot turn a tiny violation into a proof.
VERIFY_TOL = 1e-6


__all__ = ["VERIFY_TOL"]
