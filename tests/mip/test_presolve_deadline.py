"""run_highs: a MIP with less time left than HiGHS's presolve may take (it does not look at the
time limit) runs without presolve, and still solves correctly; with time enough, presolve is HiGHS's
choice again (the option does not stick to the model)."""

from __future__ import annotations

import time

import highspy
import numpy as np

from verify import highs_run
from verify.mip import highs as mip_highs


def _model() -> highspy.Highs:
    """min x0 + 2 x1  s.t.  x0 + x1 >= 1.5, x binary: optimum 3 (both set)."""
    h = highs_run.new(threads=1)
    inf = highspy.kHighsInf
    h.addVars(2, np.zeros(2), np.ones(2))
    h.changeColsCost(2, np.arange(2, dtype=np.int32), np.array([1.0, 2.0]))
    h.changeColsIntegrality(2, np.arange(2, dtype=np.int32),
                            np.array([highspy.HighsVarType.kInteger] * 2))
    h.addRow(1.5, inf, 2, np.arange(2, dtype=np.int32), np.ones(2))
    return h


def _presolve(h: highspy.Highs) -> str:
    v = h.getOptionValue("presolve")
    return str(v[1] if isinstance(v, tuple) else v)


def test_short_deadline_turns_presolve_off_and_solves(monkeypatch) -> None:
    h = _model()
    monkeypatch.setattr(mip_highs, "PRESOLVE_S_PER_NONZERO", 1e6)  # any time left is too little
    run = mip_highs.run_highs(h, deadline=time.perf_counter() + 30, integer=True, target=-1e9, bound=1e9)
    assert run is not None and _presolve(h) == "off"
    assert run.objective == 3.0
    monkeypatch.setattr(mip_highs, "PRESOLVE_S_PER_NONZERO", 0.0)
    run = mip_highs.run_highs(h, deadline=time.perf_counter() + 30, integer=True, target=-1e9, bound=1e9)
    assert run is not None and _presolve(h) == "choose"
    assert run.objective == 3.0
