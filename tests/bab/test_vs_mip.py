"""BaB against the HiGHS MIP (verify.mip): identical verdicts on generated instances.

Box inputs with random multi-row disjunctive properties, and robustness on Linf, L1 and L2 balls
(both through verify.mip.highs.solve_query). Instances are placed near the decision boundary (a random shift
of the property / a radius around the distance to the boundary) so that many need branching.
A bigger sweep is marked slow.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests.bab.oracle import box_confirm, near_boundary_property, random_net
from verify.attacks import pgd_attack
from verify.bounds import compute_bounds
from verify.bab import BabOptions, bab
from verify.mip.highs import solve_query
from verify.query import Query
from verify.spec import LpBall

TIMEOUT = 20.0


def _gap_eps(net, x: torch.Tensor, y: int, p: str, rg: np.random.Generator) -> float:
    """A radius between the largest CROWN certifies and the smallest PGD breaks (bisection on each):
    the instances that need branching."""
    lab = torch.tensor([y])

    def certified(e: float) -> bool:
        b = compute_bounds(net, LpBall.make(x, e, p), lab, method="crown", dtype=torch.float64)
        return bool(b.margin_lb.amin() > 0)

    def broken(e: float) -> bool:
        return bool(pgd_attack(net, LpBall.make(x, e, p), lab, steps=30, restarts=2).success.any())

    lo, hi = 0.0, 4.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if certified(mid) else (lo, mid)
    e_cert = lo
    lo, hi = e_cert, 4.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if broken(mid) else (mid, hi)
    return float(rg.uniform(e_cert, hi))


def _property_case(seed: int) -> tuple[str, str, int]:
    # the boundary moved close to the instance: the exact minimum becomes -u
    net, lo, hi, dis, _ = near_boundary_property(1000 + seed, (0.1, 0.4), 4)
    q, conf = box_confirm(net, torch.tensor(lo), torch.tensor(hi), dis)
    mip = solve_query(net, q, deadline=time.perf_counter() + TIMEOUT)
    mode = ["auto", "off"][seed % 2]
    r = bab(net, q, options=BabOptions(timeout=TIMEOUT, input_split=mode, seed=seed))  # type: ignore[arg-type]
    if r.status == "falsified":
        assert r.counterexample is not None and r.counterexample.dtype == torch.float64
        assert conf(r.counterexample) is not None
    if mip.status == "falsified":
        assert mip.counterexample is not None and conf(mip.counterexample) is not None
    return mip.status, r.status, r.domains


def _ball_case(seed: int, p: str) -> tuple[str, str, int]:
    rg = np.random.default_rng(2000 + seed)
    n_in = int(rg.integers(3, 9))
    k = 3
    net = random_net(2000 + seed, n_in, (int(rg.integers(4, 10)), int(rg.integers(4, 10))), k)
    x = torch.tensor(rg.uniform(0.1, 0.9, (1, n_in)))
    y = int(net.forward(x).argmax())
    eps = _gap_eps(net, x, y, p, rg)
    ball = LpBall.make(x, eps, p)
    m = solve_query(net, Query.robustness(ball, y, k), deadline=time.perf_counter() + TIMEOUT)
    r = bab(net, Query.robustness(ball, y, k), options=BabOptions(timeout=TIMEOUT, seed=seed))
    if r.status == "verified":
        assert r.margin_lb > 0
    return m.status, r.status, r.domains


def _check(pairs: list[tuple[str, str, int]], allow_unknown: bool = False) -> None:
    for i, (mip, ours, _) in enumerate(pairs):
        assert not {mip, ours} == {"verified", "falsified"}, f"case {i}: MIP {mip}, BaB {ours}"
        if mip in ("verified", "falsified") and not allow_unknown:
            assert ours == mip, f"case {i}: MIP {mip}, BaB {ours}"


def test_properties_vs_mip() -> None:
    pairs = [_property_case(s) for s in range(40)]
    _check(pairs)
    assert {"verified", "falsified"} <= {b for _, b, _ in pairs}
    assert sum(n > 1 for _, _, n in pairs) >= 5  # enough of them needed branching


@pytest.mark.parametrize("p", ["inf", "1", "2"])
def test_robustness_vs_mip(p: str) -> None:
    pairs = [_ball_case(s, p) for s in range(15)]
    _check(pairs)


@pytest.mark.slow
def test_sweep_vs_mip() -> None:
    pairs = [_property_case(s) for s in range(40, 240)]
    for p in ("inf", "1", "2"):
        pairs += [_ball_case(s, p) for s in range(15, 75)]
    _check(pairs)


def test_l2_leaves_are_decided_by_the_cut_loop() -> None:
    """Sweep case 15 on an L2 ball: every ReLU split, the leaf is a linear map over the ball; the LP
    over its bounding box plus tangent cuts decides it (it was 'unknown: incomplete: an L2 leaf')."""
    mip, ours, n = _ball_case(15, "2")
    assert mip == "verified" and ours == "verified" and n > 1
