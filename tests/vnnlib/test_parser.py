"""The VNNLIB parser on hand-written files: every construct, and bad files with the line of the error."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from verify.errors import SpecError
from verify.vnnlib import format_result, load_vnnlib, parse_result, parse_vnnlib, robustness_vnnlib

FILES = Path(__file__).parent / "files"


def _rows(prop) -> list[set[tuple]]:
    """Each disjunct as a set of (row, d) tuples, order-free."""
    return [{(tuple(r), float(v)) for r, v in zip(dj.C, dj.d)} for dj in prop.disjuncts]


def test_every_construct() -> None:
    prop = load_vnnlib(FILES / "every_construct.vnnlib")
    # input box: both sides, reversed operands, a scaled bound (2 X_2 <= 1 is exactly X_2 <= 0.5), tightest of repeats
    np.testing.assert_array_equal(prop.lower, [-0.5, 0.25, -0.1])
    np.testing.assert_array_equal(prop.upper, [0.5, 1.5, 0.5])
    assert prop.n_outputs == 3 and prop.n_inputs == 3
    cap = ((0.0, 0.0, 1.0), 10.0)  # the second top-level assert, Y_2 <= 10, joins every disjunct
    want = [
        {((-1.0, 1.0, 0.0), 0.0), ((1.0, 0.0, -1.0), -0.5), cap},  # Y_0 >= Y_1 and Y_0 - Y_2 + 0.5 <= 0
        {((0.0, -1.0, 1.0), 2.5), cap},  # Y_2 - Y_1 < 2.5 (strict read as <=)
        {((0.25, -1.0, 0.0), 0.0), cap},  # Y_1 > Y_0 / 4
        {((-1.0, 0.0, 0.0), 3.0), cap},  # -Y_0 <= 3
    ]
    assert _rows(prop) == want


def test_semantics_on_points() -> None:
    """The disjunction the parser builds holds exactly where the formula does (checked by hand)."""
    prop = load_vnnlib(FILES / "every_construct.vnnlib")
    for y, expect in [((1.0, 0.5, 2.0), 0), ((0.0, 1.0, 2.0), 1), ((0.0, 1.0, 5.0), 2), ((-2.0, -1.0, 5.0), 3),
                      ((1.0, 0.5, 12.0), None), ((-8.0, -4.0, 0.0), None)]:
        assert prop.satisfied_by(np.array(y)) == expect, y
    # the boundary counts as unsafe: Y_2 - Y_1 = 2.5 exactly
    assert prop.satisfied_by(np.array([-10.0, 0.0, 2.5])) == 1


def test_and_over_or_multiplies_out() -> None:
    text = "\n".join([
        "(declare-const X_0 Real)", "(declare-const Y_0 Real)", "(declare-const Y_1 Real)",
        "(assert (and (>= X_0 0) (<= X_0 1)))",
        "(assert (and (or (<= Y_0 1) (<= Y_1 2)) (or (>= Y_0 3) (>= Y_1 4))))",
    ])
    prop = parse_vnnlib(text)
    assert len(prop.disjuncts) == 4
    got = sorted(sorted(s) for s in _rows(prop))
    want = sorted(sorted(s) for s in [
        {((1.0, 0.0), 1.0), ((-1.0, 0.0), -3.0)}, {((1.0, 0.0), 1.0), ((0.0, -1.0), -4.0)},
        {((0.0, 1.0), 2.0), ((-1.0, 0.0), -3.0)}, {((0.0, 1.0), 2.0), ((0.0, -1.0), -4.0)}])
    assert got == want


def test_equality_and_same_inputs_in_every_disjunct() -> None:
    prop = load_vnnlib(FILES / "input_in_or_same.vnnlib")
    np.testing.assert_array_equal(prop.lower, [0.0])
    np.testing.assert_array_equal(prop.upper, [1.0])
    assert _rows(prop) == [{((1.0, 0.0), 0.0)}, {((0.0, 1.0), 0.0)}]
    eq = parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (= X_0 0.5))(assert (= Y_0 2))")
    assert eq.lower[0] == eq.upper[0] == 0.5
    assert _rows(eq) == [{((1.0,), 2.0), ((-1.0,), -2.0)}]


def test_inexact_scaled_bound_rounds_outwards() -> None:
    prop = parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= (* 3 X_0) 1))"
                        "(assert (>= (* 3 X_0) -1))(assert (<= Y_0 0))")
    assert prop.upper[0] >= 1 / 3 and 3 * prop.upper[0] >= 1
    assert prop.lower[0] <= -1 / 3 and 3 * prop.lower[0] <= -1


def test_constant_comparisons() -> None:
    base = "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
    assert len(parse_vnnlib(base + "(assert (or (and (<= 2 1) (<= Y_0 0)) (and (<= Y_0 5))))").disjuncts) == 1
    allways = parse_vnnlib(base + "(assert (<= 1 2))")  # no output constraint: every point is unsafe
    assert len(allways.disjuncts) == 1 and allways.disjuncts[0].C.shape == (0, 1)


def test_gzip_file(tmp_path: Path) -> None:
    p = tmp_path / "prop.vnnlib.gz"
    p.write_bytes(gzip.compress((FILES / "every_construct.vnnlib").read_bytes()))
    assert _rows(load_vnnlib(p)) == _rows(load_vnnlib(FILES / "every_construct.vnnlib"))


@pytest.mark.parametrize("name,line,words", [
    ("unbalanced_open.vnnlib", 4, "never closed"),
    ("unbalanced_close.vnnlib", 4, "unexpected ')'"),
    ("unknown_variable.vnnlib", 6, "unknown variable 'Y_1'"),
    ("nonlinear.vnnlib", 7, "non-linear"),
    ("nonlinear_div.vnnlib", 6, "non-linear"),
    ("missing_bound.vnnlib", 2, "X_1 has no lower bound"),
    ("mixed.vnnlib", 5, "mixes inputs and outputs"),
    ("input_in_or.vnnlib", 5, "input bounds differ"),
])
def test_bad_files_name_the_line(name: str, line: int, words: str) -> None:
    path = FILES / name
    with pytest.raises(SpecError) as e:
        load_vnnlib(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert words in msg and "\n" not in msg


@pytest.mark.parametrize("text,line,words", [
    ("(declare-const X_0 Real)\n(declare-const Y_0 Int)", 2, "only Real"),
    ("(declare-const X_0 Real)\n(declare-const X_0 Real)", 2, "declared twice"),
    ("(declare-const X_0 Real)\n(declare-const Z_0 Real)", 2, "cannot declare 'Z_0'"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (not (<= Y_0 0)))", 5, "'not'"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= Y_0 1 2))", 5, "two arguments"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(define-fun f () Real 1)", 3, "unsupported command"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 2))\n(assert (<= Y_0 0))", 1, "lower bound"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 nan))", 3, "finite"),
    ("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)", 1, "X_1 is not declared"),
    ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
     "(assert (<= (+ X_0 X_1) 1))", 4, "several X_"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (exp Y_0) 1))", 3, "unknown operator 'exp'"),
    ("X_0", 1, "outside parentheses"),
])
def test_bad_text_names_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_vnnlib(text, source="p.vnnlib")
    msg = str(e.value)
    assert msg.startswith(f"p.vnnlib:{line}: "), msg
    assert words in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such VNNLIB file"):
        load_vnnlib(tmp_path / "nope.vnnlib")
    bad = tmp_path / "bin.vnnlib"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="cannot read"):
        load_vnnlib(bad)


def test_robustness_writer_round_trips() -> None:
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 0.5, 12)
    hi = lo + rng.uniform(0, 0.1, 12)
    prop = parse_vnnlib(robustness_vnnlib(lo, hi, 3, 5, comment="test\ntwo lines"))
    np.testing.assert_array_equal(prop.lower, lo)  # repr() round-trips float64 exactly
    np.testing.assert_array_equal(prop.upper, hi)
    want = []
    for j in (0, 1, 2, 4):
        row = np.zeros(5)
        row[3], row[j] = 1.0, -1.0  # Y_j >= Y_3  <=>  Y_3 - Y_j <= 0
        want.append({(tuple(row), 0.0)})
    assert _rows(prop) == want


def test_result_format_round_trips() -> None:
    assert format_result("unsat") == "unsat\n"
    assert format_result("timeout") == "timeout\n"
    text = format_result("sat", [0.1, 1 / 3], [2.5, -1e-20])
    assert text.startswith("sat\n((X_0 0.1)\n (X_1 0.3333333333333333)\n (Y_0 2.5)\n (Y_1 -1e-20))")
    status, x, y = parse_result(text)
    assert status == "sat" and x.tolist() == [0.1, 1 / 3] and y.tolist() == [2.5, -1e-20]
