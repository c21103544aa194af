"""Robust error curves from radius results (verify/curve.py), ``verify curve`` and ``verify summary`` on
radius stores, and the counterexample image grid. Oracles: counts worked out by hand on five handcrafted
rows, MNIST pixels read straight from the IDX file, norms computed here with numpy."""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest

from tests.cli_util import run_captured
from verify.batch import ResultsStore
from verify.curve import (RADIUS_FIELDS, curves, default_grid, is_radius_results, parse_grid, plot_curves, plot_examples,
                          radius_summary)
from verify.errors import SpecError

# five examples, one of each kind; (status, lower, upper, lower_bounds, upper_pgd)
KINDS = [
    ("misclassified", 0.0, 0.0, 0.0, 0.0),
    ("exact", 0.05, 0.05, 0.02, 0.07),
    ("bracketed", 0.03, 0.08, 0.01, None),
    ("beyond", 0.1, None, 0.04, None),  # max_eps 0.1: nothing found within it
    ("exact", 0.06, 0.0605, 0.06, 0.0605),  # bounds alone proved it; PGD found the closest point
]
SECONDS = [1.0, 2.0, 3.0, 4.0, 10.0]
# the grid hits every radius above exactly (e == upper, e == lower, e == lower_bounds, e == upper_pgd)
GRID = [0.0, 0.01, 0.02, 0.03, 0.05, 0.06, 0.0605, 0.07, 0.08, 0.1, 0.2]
# counts of the five rows at each eps of GRID, by hand from the table above (misclassified counts everywhere)
EXPECTED = {
    "clean":     [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "pgd":       [1, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3],  # upper_pgd <= e: 0.0605, 0.07
    "certified": [1, 1, 2, 3, 4, 4, 5, 5, 5, 5, 5],  # lower_bounds < e: 0.01, 0.02, 0.04, 0.06
    "lb":        [1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4],  # upper <= e: 0.05, 0.0605, 0.08 (beyond never)
    "ub":        [1, 1, 1, 1, 2, 3, 4, 4, 4, 4, 5],  # lower < e: 0.03, 0.05, 0.06, 0.1
}
CONFIG = {"command": "radius", "p": "inf", "max_eps": 0.1, "tol": 1e-3, "model_path": "net.mat", "dataset": "mnist",
          "data_dir": None, "data": "mnist"}


def radius_row(i: int, label: int, kind: tuple[str, float, float | None, float, float | None]) -> dict[str, Any]:
    status, lower, upper, lower_bounds, upper_pgd = kind
    mis = status == "misclassified"
    return {"index": i, "label": label, "prediction": (label + 1) % 10 if mis else label, "status": status,
            "lower": lower, "upper": upper, "lower_bounds": lower_bounds, "upper_pgd": upper_pgd,
            "lower_by": "clean" if mis else "mip", "upper_by": None if upper is None else ("clean" if mis else "mip"),
            "target": None if upper is None else (label + 3) % 10, "seconds": SECONDS[i % 5],
            "reason": "time limit" if status == "bracketed" else None}


def hand_rows() -> list[dict[str, Any]]:
    return [radius_row(i, i, k) for i, k in enumerate(KINDS)]


# ----------------------------------------------------------------------------- the curves and the summary


def test_curves_match_the_counts_by_hand() -> None:
    c = curves(hand_rows(), GRID)
    assert list(c) == ["eps", "clean", "pgd", "certified", "lb", "ub"]
    assert c["eps"].tolist() == GRID
    for key, counts in EXPECTED.items():
        assert c[key].tolist() == [k / 5 for k in counts], key


def test_curves_are_ordered_and_misclassified_counts_whatever_it_holds() -> None:
    rows = hand_rows()
    # a misclassified row with its numbers missing still counts in every curve from eps 0 on
    rows[0].update(lower=None, upper=None, lower_bounds=None, upper_pgd=None)
    c = curves(rows, np.linspace(0, 0.2, 81))
    assert (c["pgd"] <= c["lb"]).all() and (c["lb"] <= c["ub"]).all() and (c["ub"] <= c["certified"]).all()
    assert (c["clean"] <= c["pgd"]).all() and (c["clean"] == 0.2).all() and c["ub"][0] == 0.2
    for key in ("pgd", "certified", "lb", "ub"):
        assert (np.diff(c[key]) >= 0).all()
    empty = curves([], [0.0, 0.1])
    assert all(empty[k].tolist() == [0.0, 0.0] for k in ("clean", "pgd", "certified", "lb", "ub"))


def test_curves_refuse_bad_grids_and_certify_rows() -> None:
    for bad in ([-0.01, 0.1], [float("nan")], [float("inf")], []):
        with pytest.raises(SpecError):
            curves(hand_rows(), bad)
    with pytest.raises(SpecError, match="not a radius status"):
        curves([{"index": 0, "status": "verified", "lower": 0.1, "upper": None}], [0.0])


def test_radius_summary() -> None:
    s = radius_summary(hand_rows())
    assert s["n"] == 5 and s["clean_error"] == pytest.approx(0.2)
    assert (s["n_exact"], s["n_bracketed"], s["n_beyond"], s["n_misclassified"]) == (2, 1, 1, 1)
    assert (s["exact"], s["bracketed"], s["beyond"]) == (0.4, 0.2, 0.2)
    assert s["mean_radius"] == pytest.approx((0.05 + 0.0605) / 2) and s["median_radius"] == pytest.approx(0.05525)
    assert (s["mean_seconds"], s["median_seconds"], s["total_seconds"]) == (4.0, 3.0, 20.0)
    none = radius_summary([radius_row(0, 0, KINDS[3])])
    assert none["mean_radius"] is None and none["beyond"] == 1.0


def test_is_radius_results() -> None:
    assert is_radius_results({"command": "radius"}, [])
    assert is_radius_results({}, hand_rows())
    assert not is_radius_results({"eps": 0.1}, [{"index": 0, "status": "verified", "margin_lb": 0.2}])
    assert not is_radius_results({}, [])


def test_grids() -> None:
    g = default_grid(hand_rows(), CONFIG)
    assert len(g) == 51 and g[0] == 0.0 and g[-1] == 0.1 and (np.diff(g) > 0).all()
    assert g[5] == pytest.approx(0.01)
    # without max_eps: a round number above every radius (largest 0.07 -> 0.08)
    assert default_grid([radius_row(1, 1, KINDS[1])], {})[-1] == 0.08
    assert parse_grid("0:0.1:0.05").tolist() == [0.0, 0.05, 0.1]
    assert parse_grid("0:0.3:0.1").tolist() == [0.0, 0.1, 0.2, 0.3]  # STOP included despite 0.1 * 3 > 0.3
    assert parse_grid(" 0.1, 0 ,0.05,0.05").tolist() == [0.0, 0.05, 0.1]
    for bad in ("a:b:c", "0:1", "0:0.1:0", "0.1:0:0.01", "-0.1,0.2", "x", "", "nan", "0:inf:1"):
        with pytest.raises(SpecError):
            parse_grid(bad)


def test_plots_have_the_expected_size(tmp_path: Path) -> None:
    c = curves(hand_rows(), np.linspace(0, 0.1, 101))
    plot_curves(c, str(tmp_path / "c.png"), "five examples", p="2")
    assert mpimg.imread(tmp_path / "c.png").shape == (540, 840, 4)
    rng = np.random.default_rng(0)
    # three-channel 32 x 32 (C, H, W) and one-channel inputs, flat or not
    x = rng.uniform(0.1, 0.9, size=(2, 3, 32, 32))
    adv = x + rng.uniform(-0.03, 0.03, size=x.shape)
    plot_examples(list(x), list(adv), [3, 5], [1, None], [0.03, 0.029], str(tmp_path / "rgb.png"), "inf")
    assert mpimg.imread(tmp_path / "rgb.png").shape == (500, 750, 4)
    g = rng.uniform(size=(1, 784))
    plot_examples([g.reshape(1, 28, 28)], [g + 0.01], [7], [2], [0.28], str(tmp_path / "g.png"), "2")
    assert mpimg.imread(tmp_path / "g.png").shape == (250, 750, 4)
    with pytest.raises(SpecError):
        plot_examples([g], [g[:, :700]], [7], [2], [0.1], str(tmp_path / "bad.png"), "2")


# ----------------------------------------------------------------------------- the commands on real MNIST points


def mnist_test(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 16 MNIST test images (16, 28, 28) in [0, 1] and their labels, read from the IDX files."""
    with gzip.open(shared / "mnist" / "t10k-images-idx3-ubyte.gz") as fh:
        raw = fh.read(16 + 16 * 784)
    with gzip.open(shared / "mnist" / "t10k-labels-idx1-ubyte.gz") as fh:
        lab = fh.read(8 + 16)
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(16, 28, 28).astype(np.float64) / 255
    return x, np.frombuffer(lab, np.uint8, offset=8).astype(np.int64)


def away_from_the_box(x: np.ndarray, r: float, p: str) -> np.ndarray:
    """A perturbation of norm r (p inf: every pixel by r; p 2: spread evenly) pointing into [0, 1]."""
    sign = np.where(x <= 0.5, 1.0, -1.0)
    return sign * (r if p == "inf" else r / np.sqrt(x.size))


@pytest.fixture()
def radius_store(tmp_path: Path, shared_data: Path) -> tuple[Path, list[dict[str, Any]], np.ndarray]:
    """Five radius rows on MNIST test points 0..4 (labels real), counterexamples at distance exactly `upper`."""
    x, y = mnist_test(shared_data)
    path = tmp_path / "radius.sqlite"
    rows = [radius_row(i, int(y[i]), k) for i, k in enumerate(KINDS)]
    with ResultsStore.open(path, {**CONFIG, "data_dir": str(shared_data / "mnist")}) as st:
        for i, r in reversed(list(enumerate(rows))):
            point = None
            if r["upper"] is not None:  # the misclassified centre stores itself (distance 0)
                point = (x[i] + away_from_the_box(x[i], r["upper"], "inf"))[None, None]
            # stored in an order other than by index: the outputs are by data-set index
            st.add(r, point)
    return path, rows, x


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err


def test_curve_command_writes_the_hand_counts(radius_store, tmp_path: Path, capsys) -> None:
    path, rows, _ = radius_store
    grid = ",".join(repr(e) for e in GRID)
    code, out, err = run_captured(["curve", str(path), "--grid", grid, "--csv", str(tmp_path / "c.csv"),
                                   "--plot", str(tmp_path / "c.png")], capsys)
    assert code == 0, err
    table = read_csv(tmp_path / "c.csv")
    assert list(table[0]) == ["eps", "clean", "pgd", "certified", "lb", "ub"]
    assert [float(r["eps"]) for r in table] == GRID
    for key, counts in EXPECTED.items():
        assert [float(r[key]) for r in table] == [k / 5 for k in counts], key
    # the printed table: eps then clean, PGD, certified, LB, UB in %; at eps 0.06: 20, 20, 80, 40, 60
    assert re.search(r"^\s*0\.06\s+20\.00%\s+20\.00%\s+80\.00%\s+40\.00%\s+60\.00%$", out, re.M), out
    assert mpimg.imread(tmp_path / "c.png").shape == (540, 840, 4)
    # the same rows as a radius JSON (what 'verify radius --output X.json' writes) give the same curves
    (tmp_path / "r.json").write_text(json.dumps({"config": CONFIG, "examples": rows}))
    code, out, err = run_captured(["curve", str(tmp_path / "r.json"), "--grid", grid, "--csv", str(tmp_path / "j.csv")],
                                  capsys)
    assert code == 0, err
    assert (tmp_path / "j.csv").read_text() == (tmp_path / "c.csv").read_text()


def test_curve_command_default_and_range_grids(radius_store, tmp_path: Path, capsys) -> None:
    path, _, _ = radius_store
    code, out, err = run_captured(["curve", str(path), "--csv", str(tmp_path / "d.csv")], capsys)
    assert code == 0, err
    eps = [float(r["eps"]) for r in read_csv(tmp_path / "d.csv")]
    assert len(eps) == 51 and eps[0] == 0.0 and eps[-1] == 0.1  # the run's max_eps
    assert "11 of 51 grid points shown" in out
    code, out, err = run_captured(["curve", str(path), "--grid", "0:0.1:0.05", "--csv", str(tmp_path / "r.csv")], capsys)
    assert code == 0, err
    table = read_csv(tmp_path / "r.csv")
    assert [float(r["eps"]) for r in table] == [0.0, 0.05, 0.1]
    assert [float(r["ub"]) for r in table] == [0.2, 0.4, 0.8]  # lower < e: misclassified; 0.03; 0.05, 0.06
    assert [float(r["lb"]) for r in table] == [0.2, 0.4, 0.8]  # upper <= 0.05: 0, 0.05; then 0.0605 and 0.08


def test_curve_command_errors_are_one_line(radius_store, tmp_path: Path, capsys) -> None:
    path, _, _ = radius_store
    for grid, word in (("a:b", "--grid"), ("-0.1,0.2", ">= 0"), ("0:0.1:0", "STEP"), ("0:0.1:-0.01", "STEP")):
        one_line_error(*run_captured(["curve", str(path), "--grid", grid], capsys)[::2], word)
    one_line_error(*run_captured(["curve", str(path), "--csv", str(tmp_path / "c.txt")], capsys)[::2], ".csv")
    one_line_error(*run_captured(["curve", str(path), "--plot", str(tmp_path / "c.gif")], capsys)[::2], "--plot")
    one_line_error(*run_captured(["curve", str(tmp_path / "missing.sqlite")], capsys)[::2], "no results store")
    certify = tmp_path / "certify.json"
    certify.write_text(json.dumps({"config": {"p": "inf", "eps": 0.1},
                                   "examples": [{"index": 0, "label": 7, "prediction": 7, "status": "verified",
                                                 "decided_by": "kw", "seconds": 0.1}]}))
    one_line_error(*run_captured(["curve", str(certify)], capsys)[::2], "no radius results", "verify summary")


def test_summary_of_a_radius_store(radius_store, tmp_path: Path, capsys) -> None:
    path, rows, x = radius_store
    code, out, err = run_captured(["summary", str(path), "--csv", str(tmp_path / "s.csv"), "--json",
                                   str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png"), "--counterexamples",
                                   str(tmp_path / "ce.npz"), "--examples", "10"], capsys)
    assert code == 0, err
    assert re.search(r"exact radius.*\s2\s+\(\s*40\.00%\).*mean 0\.05525\s+median 0\.05525", out), out
    assert re.search(r"clean error.*\s1\s+\(\s*20\.00%\)", out) and re.search(r"beyond.*\s1\s+\(\s*20\.00%\)", out)
    assert "PGD lower bound" not in out  # not the certify table
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].split(",") == list(RADIUS_FIELDS) and len(lines) == 6
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["n"] == 5 and doc["mean_radius"] == pytest.approx(0.05525) and doc["config"]["command"] == "radius"
    assert [list(r) for r in doc["examples"]] == [list(RADIUS_FIELDS)] * 5 and doc["examples"][2] == rows[2]
    assert mpimg.imread(tmp_path / "s.png").shape == (540, 840, 4)
    with np.load(tmp_path / "ce.npz") as ce:
        assert ce["index"].tolist() == [0, 1, 2, 4]
    # --examples: the stored counterexamples but the misclassified centre (rows 1, 2, 4), in a PNG by default
    # beside the store; each line's distance is the Linf norm of what was stored against the IDX pixels
    shown = re.findall(r"^example (\d+): label (\d+) -> class (\d+) at distance (\S+) \(p inf\)$", out, re.M)
    assert [int(s[0]) for s in shown] == [1, 2, 4]
    with ResultsStore.open(path, create=False) as st:
        points = st.counterexamples()
    for i, label, cls, dist in shown:
        i = int(i)
        assert (int(label), int(cls)) == (rows[i]["label"], rows[i]["target"])
        want = float(np.abs(points[i].reshape(28, 28) - x[i]).max())
        assert float(dist) == pytest.approx(want, rel=1e-5) and want == pytest.approx(rows[i]["upper"], rel=1e-9)
    assert mpimg.imread(tmp_path / "radius.examples.png").shape == (750, 750, 4)
    code, out, err = run_captured(["summary", str(path), "--examples", "1", "--examples-png", str(tmp_path / "one.png")],
                                  capsys)
    assert code == 0 and "wrote 1 counterexamples" in out, err
    assert mpimg.imread(tmp_path / "one.png").shape == (250, 750, 4)


def test_examples_of_a_certify_store(tmp_path: Path, shared_data: Path, capsys) -> None:
    """A certify store has no radius: the distance comes from the points (in the run's p), the class is '?'.
    Its configuration names the data only as 'data' (the source), with no folder: --data-dir finds it."""
    x, y = mnist_test(shared_data)
    path = tmp_path / "certify.sqlite"
    config = {"p": "2", "eps": 1.0, "methods": ["kw"], "model_path": "net.mat", "data": "mnist"}
    radii = {3: 0.7, 5: 0.9, 6: 0.4}
    with ResultsStore.open(path, config) as st:
        for i in range(8):
            falsified = i in radii
            row = {"index": i, "label": int(y[i]), "prediction": int(y[i]), "status": "falsified" if falsified else "verified",
                   "decided_by": "pgd" if falsified else "kw", "margin_lb": None if falsified else 0.3,
                   "margin_ub": -0.2 if falsified else 1.0, "gap": None, "seconds": 0.1, "reason": None}
            point = (x[i] + away_from_the_box(x[i], radii[i], "2")).reshape(1, 784) if falsified else None  # an FC net's shape
            st.add(row, point)
    png = tmp_path / "ce.png"
    code, out, err = run_captured(["summary", str(path), "--examples", "2", "--examples-png", str(png),
                                   "--data-dir", str(shared_data / "mnist")], capsys)
    assert code == 0, err
    assert "PGD lower bound" in out  # the certify table
    shown = re.findall(r"^example (\d+): label (\d+) -> class \? at distance (\S+) \(p 2\)$", out, re.M)
    assert [int(s[0]) for s in shown] == [3, 5]
    for i, label, dist in shown:
        assert int(label) == y[int(i)] and float(dist) == pytest.approx(radii[int(i)], rel=1e-5)
    assert mpimg.imread(png).shape == (500, 750, 4)
    # a data set that is not there, or not one at all: one line
    one_line_error(*run_captured(["summary", str(path), "--examples", "2", "--examples-png", str(png),
                                  "--dataset", "no-such-set"], capsys)[::2], "unknown dataset")


def test_summary_examples_errors_are_one_line(radius_store, tmp_path: Path, capsys) -> None:
    path, rows, _ = radius_store
    js = tmp_path / "r.json"
    js.write_text(json.dumps({"config": CONFIG, "examples": rows}))
    one_line_error(*run_captured(["summary", str(js), "--examples", "2"], capsys)[::2], "results store")
    one_line_error(*run_captured(["summary", str(path), "--examples", "0"], capsys)[::2], "--examples")
    one_line_error(*run_captured(["summary", str(path), "--examples", "2", "--examples-png", str(tmp_path / "x.jpg")],
                                 capsys)[::2], "--examples-png")
    # the radius JSON itself is read (summary, curves) like the store
    code, out, err = run_captured(["summary", str(js), "--plot", str(tmp_path / "j.png")], capsys)
    assert code == 0 and "exact radius" in out, err


def test_help_teaches(capsys) -> None:
    code, out, err = run_captured(["curve", "--help"], capsys)
    assert code == 0 and "Examples:" in out and "--grid" in out and "upper_pgd <= eps" in out
    code, out, err = run_captured(["summary", "--help"], capsys)
    assert code == 0 and "--examples" in out and "--examples-png" in out and "--data-dir" in out
    code, out, err = run_captured(["--help"], capsys)
    assert code == 0 and re.search(r"^\s+curve\s+Robust error against eps", out, re.M)
