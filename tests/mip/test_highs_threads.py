"""HiGHS's thread scheduler is per process: models with different ``threads`` must all solve.

Before verify.highs_run, an LP run with HiGHS's default threads (bounds, tightening) made every
later MIP with threads=1 fail at once ("scheduler has already been initialized"), and certify
reported those examples unknown ("solver status Not Set")."""

from __future__ import annotations

import highspy
import numpy as np

from verify import highs_run


def _knapsack(threads: int, integer: bool) -> highspy.Highs:
    """max 5a + 4b + 3c s.t. 2a + 3b + c <= 5, 4a + b + 2c <= 11, 3a + 4b + 2c <= 8, 0 <= . <= 1 (integer: a, b, c binary)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", threads)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = 3, 3
    lp.col_cost_ = np.array([-5.0, -4.0, -3.0])
    lp.col_lower_, lp.col_upper_ = np.zeros(3), np.ones(3)
    lp.row_lower_, lp.row_upper_ = np.full(3, -highspy.kHighsInf), np.array([5.0, 11.0, 8.0])
    a = np.array([[2.0, 3.0, 1.0], [4.0, 1.0, 2.0], [3.0, 4.0, 2.0]])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.array([0, 3, 6, 9], dtype=np.int32)
    lp.a_matrix_.index_ = np.tile(np.arange(3, dtype=np.int32), 3)
    lp.a_matrix_.value_ = a.T.reshape(-1)
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * 3
    h.passModel(lp)
    return h


def test_models_with_other_thread_counts_solve_in_one_process() -> None:
    # brute force over the 8 binary points: the best is a = c = 1 (value 8, weights 3 / 6 / 5)
    best = max(5 * a + 4 * b + 3 * c for a in (0, 1) for b in (0, 1) for c in (0, 1)
               if 2 * a + 3 * b + c <= 5 and 4 * a + b + 2 * c <= 11 and 3 * a + 4 * b + 2 * c <= 8)
    for threads, integer in [(2, False), (1, True), (0, False), (1, True), (2, True)]:
        h = _knapsack(threads, integer)
        status = highs_run.run(h)
        assert status == highspy.HighsStatus.kOk, (threads, integer)
        assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
        if integer:
            assert abs(-h.getInfo().objective_function_value - best) < 1e-9


def test_new_models_print_nothing_on_stdout() -> None:
    # HiGHS writes a banner to file descriptor 1 at a process's first construction of a model;
    # verify's CSV/JSON on stdout must not contain it. A fresh process, since the banner is once.
    import subprocess
    import sys

    code = ("from verify import highs_run\n"
            "import highspy\n"
            "h = highs_run.new(1)\n"
            "h.addVar(0.0, 1.0); h.changeColCost(0, -1.0)\n"
            "assert highs_run.run(h) == highspy.HighsStatus.kOk\n"
            "print(h.getInfo().objective_function_value)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "-1.0"
    # the oracle: a plain highspy.Highs() in a fresh process does print the banner
    raw = subprocess.run([sys.executable, "-c", "import highspy; highspy.Highs()"], capture_output=True, text=True, check=True)
    assert "HiGHS" in raw.stdout
