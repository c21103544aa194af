"""Minimum adversarial distortion (verify.radius, verify.mip.closest) against independent oracles:
brute force over activation patterns (one LP per pattern and target with scipy's linprog), certify at eps on both sides of the bracket, and the saved counterexample."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from verify.certify import CertifyConfig, certify
from verify.network import Linear, Network, ReLU
from verify.radius import RadiusConfig, distances, minimum_distortion
from verify.spec import LpBall


def small_net(seed: int, d: int = 4, h: int = 8, k: int = 3) -> Network:
    g = torch.Generator().manual_seed(seed)
    return Network((Linear(torch.randn(h, d, generator=g), 0.3 * torch.randn(h, generator=g)), ReLU(),
                    Linear(torch.randn(k, h, generator=g), 0.3 * torch.randn(k, generator=g))), (d,), (0.0, 1.0))


def brute_force_radius(net: Network, c: np.ndarray, y: int, p: float, targets: list[int] | None = None) -> float:
    """min ||x - c||_p over the box with f_j(x) >= f_y(x) for some j, by one LP per activation pattern
    and target (the pattern's region is a polyhedron on which the network is affine)."""
    w1, b1 = (t.detach().double().numpy() for t in (net.layers[0].weight, net.layers[0].bias))
    w2, b2 = (t.detach().double().numpy() for t in (net.layers[2].weight, net.layers[2].bias))
    d, h, k = len(c), w1.shape[0], w2.shape[0]
    best = math.inf
    for pattern in itertools.product((0.0, 1.0), repeat=h):
        s = np.array(pattern)
        # region: s_i = 1 -> w1_i x + b1_i >= 0, s_i = 0 -> <= 0;  written as A x <= b
        sign = np.where(s > 0, -1.0, 1.0)
        a_reg, b_reg = sign[:, None] * w1, -sign * b1
        lin = w2 @ (s[:, None] * w1)
        off = w2 @ (s * b1) + b2
        for j in range(k) if targets is None else targets:
            if j == y:
                continue
            # f_y - f_j <= 0
            a_m, b_m = (lin[y] - lin[j])[None, :], np.array([off[j] - off[y]])
            if math.isinf(p):  # variables x (d), t
                cost = np.r_[np.zeros(d), 1.0]
                a_ub = np.vstack([np.c_[a_reg, np.zeros(h)], np.c_[a_m, [0.0]],
                                  np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)]])
                b_ub = np.r_[b_reg, b_m, c, -c]
                bounds = [(0.0, 1.0)] * d + [(0.0, None)]
            else:  # p = 1: variables x (d), u (d)
                cost = np.r_[np.zeros(d), np.ones(d)]
                a_ub = np.vstack([np.c_[a_reg, np.zeros((h, d))], np.c_[a_m, np.zeros((1, d))],
                                  np.c_[np.eye(d), -np.eye(d)], np.c_[-np.eye(d), -np.eye(d)]])
                b_ub = np.r_[b_reg, b_m, c, -c]
                bounds = [(0.0, 1.0)] * d + [(0.0, None)] * d
            r = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs-ds")
            if r.status == 0:
                best = min(best, float(r.fun))
    return best


def points(net: Network, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *net.input_shape, generator=g, dtype=torch.float64) * 0.6 + 0.2
    with torch.no_grad():
        y = net.forward(x).argmax(1)
    return x, y


@pytest.mark.parametrize("p", [math.inf, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_radius_matches_brute_force_over_activation_patterns(p: float, seed: int) -> None:
    net = small_net(seed)
    x, y = points(net, 4, seed + 10)
    res = minimum_distortion(net, x, y, list(range(4)), RadiusConfig(p=p, timeout=60), progress=False)
    for k, r in enumerate(res):
        want = brute_force_radius(net, x[k].numpy(), int(y[k]), p)
        assert r.status == "exact", r
        assert r.upper is not None and abs(r.upper - want) <= 1e-6, (r.upper, want)
        assert r.lower <= want + 1e-9 and want - r.lower <= 1e-5  # the proven end never passes the truth
        # the saved counterexample is what the upper end says: misclassified in float64, at that distance
        assert r.counterexample is not None
        out = net.forward(r.counterexample)[0]
        assert int(out.argmax()) != int(y[k]) or float(out.max()) == float(out[int(y[k])])
        assert abs(float(distances(x[k : k + 1], r.counterexample, p)[0]) - r.upper) <= 1e-12
        assert bool(((r.counterexample >= 0) & (r.counterexample <= 1)).all())


def test_targeted_radius_matches_brute_force_for_that_class() -> None:
    net = small_net(2, k=4)
    x, y = points(net, 6, 21)
    target = 2
    res = minimum_distortion(net, x, y, list(range(100, 106)), RadiusConfig(p=1.0, target=target), progress=False)
    keep = [k for k in range(6) if int(y[k]) != target]
    assert [r.index for r in res] == [100 + k for k in keep]  # examples labelled with the target are left out
    for k, r in zip(keep, res):
        want = brute_force_radius(net, x[k].numpy(), int(y[k]), 1.0, targets=[target])
        assert r.label == int(y[k]) and r.status == "exact" and r.target == target
        assert r.upper is not None and abs(r.upper - want) <= 1e-6 and r.lower <= want + 1e-9
        out = net.forward(r.counterexample)[0]
        assert float(out[target]) >= float(out[int(y[k])])
        # never closer than the untargeted radius
        assert r.upper >= brute_force_radius(net, x[k].numpy(), int(y[k]), 1.0) - 1e-9


def test_certify_agrees_on_both_sides_of_every_bracket() -> None:
    """certify (attack, bounds, complete engine) at eps up to the lower end says verified and just
    above the upper end says falsified, on a grid of eps around each radius. (At eps = upper exactly
    the worst point is a tie f_j = f_y, which certify's MIP may report as 'numerics'.)"""
    net = small_net(3, d=6, h=12, k=4)
    x, y = points(net, 5, 7)
    res = minimum_distortion(net, x, y, list(range(5)), RadiusConfig(p=math.inf, timeout=60), progress=False)
    for k, r in enumerate(res):
        assert r.status in ("exact", "misclassified")
        if r.status == "misclassified":
            continue
        assert r.upper is not None
        for eps, want in ((r.lower * 0.5, "verified"), (r.lower * (1 - 1e-4), "verified"), (r.lower, "verified"),
                          (r.upper * (1 + 1e-5), "falsified"), (r.upper * 1.01, "falsified"), (min(1.0, r.upper * 2), "falsified")):
            ball = LpBall.make(x[k : k + 1], eps, "inf", (0.0, 1.0))
            got = certify(net, ball, y[k : k + 1], [k], CertifyConfig(p=math.inf, eps=eps, timeout=60), progress=False)[0]
            assert got.status == want, (k, eps, r.lower, r.upper, got)


def test_l2_bracket_is_consistent_and_tight() -> None:
    net = small_net(5)
    x, y = points(net, 3, 11)
    res = minimum_distortion(net, x, y, list(range(3)), RadiusConfig(p=2.0, timeout=60), progress=False)
    for k, r in enumerate(res):
        assert r.upper is not None and r.lower <= r.upper
        assert r.upper - r.lower <= 1e-3, r  # tangent cuts close the L2 gap on a 4-input net
        assert abs(float(distances(x[k : k + 1], r.counterexample, 2.0)[0]) - r.upper) <= 1e-12
        # no sampled point strictly inside the lower end is misclassified
        g = torch.Generator().manual_seed(k)
        d = torch.randn(20000, 4, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True) * r.lower * torch.rand(20000, 1, generator=g, dtype=torch.float64)
        pts = (x[k] + d).clamp(0, 1)
        assert bool((net.forward(pts).argmax(1) == y[k]).all())


def test_max_eps_gives_beyond_and_misclassified_centres_radius_zero() -> None:
    net = small_net(0)
    x, y = points(net, 4, 10)
    radii = [brute_force_radius(net, x[k].numpy(), int(y[k]), math.inf) for k in range(4)]
    cap = float(np.median(radii))
    wrong = (y + 1) % 3  # every label wrong: each centre is misclassified
    res = minimum_distortion(net, x, y, list(range(4)), RadiusConfig(p=math.inf, max_eps=cap, timeout=60),
                             progress=False)
    for r, want in zip(res, radii):
        if want > cap * (1 + 1e-6):
            assert r.status == "beyond" and r.upper is None and r.lower <= want
            assert r.lower >= cap * (1 - 2e-5) - 2e-6
        else:
            assert r.status == "exact" and abs((r.upper or 0) - want) <= 1e-6
    mis = minimum_distortion(net, x, wrong, list(range(4)), RadiusConfig(p=math.inf), progress=False)
    assert all(r.status == "misclassified" and r.lower == 0 and r.upper == 0 for r in mis)


# ---- the command line


def _one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err


@pytest.fixture()
def small_files(tmp_path):
    from verify.formats import save_model

    net = small_net(0)
    x, y = points(net, 4, 10)
    x = x.float().double()  # the data loader reads points as float32: the same centres here
    save_model(net, tmp_path / "net.pt", format="pt")
    np.savez(tmp_path / "pts.npz", x=x.numpy(), y=y.numpy())
    return net, x, y, tmp_path


def test_radius_command_json_store_resume_and_curve(small_files, capsys) -> None:
    import json
    import sqlite3

    from cli_util import run_captured

    net, x, y, tmp = small_files
    base = ["radius", "--model", str(tmp / "net.pt"), "--inputs", str(tmp / "pts.npz"), "--p", "inf", "-q"]
    code, out, err = run_captured(base + ["--output", str(tmp / "r.json"), "--counterexamples", str(tmp / "ce.npz")],
                                  capsys)
    assert code == 0, err
    doc = json.loads((tmp / "r.json").read_text())
    assert doc["config"]["command"] == "radius" and doc["config"]["p"] == "inf"
    rows = doc["examples"]
    for k, r in enumerate(rows):
        assert r["status"] == "exact"
        assert abs(r["upper"] - brute_force_radius(net, x[k].numpy(), int(y[k]), math.inf)) <= 1e-6
    ce = np.load(tmp / "ce.npz")
    d = np.abs(ce["x_adv"].reshape(4, -1) - x.numpy()[ce["index"]]).max(1)
    assert np.allclose(d, [rows[i]["upper"] for i in ce["index"]], rtol=0, atol=1e-12)
    assert "exact radius (within tol)           4" in out

    # a results store: a second run resumes (nothing recomputed), verify curve reads it
    store = str(tmp / "r.sqlite")
    code, out, err = run_captured(base + ["--output", store, "--indices", "0,1"], capsys)
    assert code == 0, err
    code, out, err = run_captured(base + ["--output", store], capsys)
    assert code == 0, err
    assert "skipped 2 examples already in the store" in out
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 4
    code, out, err = run_captured(["curve", store, "--grid", "0,1", "--csv", str(tmp / "c.csv")], capsys)
    assert code == 0, err
    assert (tmp / "c.csv").read_text().splitlines()[1:] == ["0.0,0.0,0.0,0.0,0.0,0.0", "1.0,0.0,1.0,1.0,1.0,1.0"]


@pytest.mark.parametrize("extra, words", [
    (["--p", "3"], ["unknown norm"]),
    (["--p", "inf", "--max-eps", "-0.1"], ["--max-eps"]),
    (["--p", "inf", "--output", "r.txt"], ["--output"]),
    (["--p", "inf", "--counterexamples", "c.csv"], ["--counterexamples"]),
    (["--p", "inf", "--tol", "0"], ["--tol"]),
])
def test_radius_command_bad_input_is_one_line(small_files, capsys, extra, words) -> None:
    from cli_util import run_captured

    _, _, _, tmp = small_files
    code, _, err = run_captured(["radius", "--model", str(tmp / "net.pt"), "--inputs", str(tmp / "pts.npz")] + extra,
                                capsys)
    _one_line_error(code, err, *words)


def test_radius_shards_merge_to_the_single_run(small_files, capsys) -> None:
    import json

    from cli_util import run_captured

    _, _, _, tmp = small_files
    base = ["radius", "--model", str(tmp / "net.pt"), "--inputs", str(tmp / "pts.npz"), "--p", "1", "-q"]
    for i in (1, 2):
        code, out, err = run_captured(base + ["--output", str(tmp / f"s{i}.sqlite"), "--shard", f"{i}/2"], capsys)
        assert code == 0, err
        assert f"shard {i}/2: 2 of 4 examples" in out
    code, out, err = run_captured(["merge", str(tmp / "s1.sqlite"), str(tmp / "s2.sqlite"), "--out", str(tmp / "m.sqlite")],
                                  capsys)
    assert code == 0, err
    code, out, err = run_captured(base + ["--output", str(tmp / "one.json")], capsys)
    assert code == 0, err
    code, out, err = run_captured(["summary", str(tmp / "m.sqlite"), "--json", str(tmp / "m.json")], capsys)
    assert code == 0, err
    merged = {r["index"]: r for r in json.loads((tmp / "m.json").read_text())["examples"]}
    single = {r["index"]: r for r in json.loads((tmp / "one.json").read_text())["examples"]}
    assert sorted(merged) == sorted(single) == [0, 1, 2, 3]
    for i, r in single.items():  # the same exact radii, whichever process computed them
        assert merged[i]["status"] == r["status"] == "exact"
        assert abs(merged[i]["upper"] - r["upper"]) <= 1e-6
    code, _, err = run_captured(base + ["--shard", "1/2"], capsys)
    _one_line_error(code, err, "--shard")
