"""Sampled points never violate a verified property; beta multipliers tighten bounds and save
subdomains; the API's limits (timeout, memory cap, progress, deadline)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from tests.bab.oracle import box_confirm, exact_min, random_disjuncts, random_net
from tests.bounds.sampling import sample_set
from verify.bab import BabOptions, bab
from verify.bab.bound import bound_rows
from verify.bab.spec import make_rows
from verify.bounds import linear_intermediate
from verify.bounds.backward import relu_inputs
from verify.bounds.slopes import crown_slopes
from verify.query import Query
from verify.spec import LpBall


def _hard_ball(seed: int, p: str = "inf"):
    """A robustness query CROWN cannot decide: a net with 5 inputs and the radius doubled until the root bound fails."""
    g = torch.Generator().manual_seed(seed)
    net = random_net(seed, 5, (12, 12), 3)
    x = torch.rand(1, 5, generator=g, dtype=torch.float64) * 0.6 + 0.2
    y = int(net.forward(x).argmax())
    return net, x, y


def test_sampled_points_never_violate_verified_sets() -> None:
    g = torch.Generator().manual_seed(0)
    seen = 0
    for seed in range(12):
        net, x, y = _hard_ball(seed)
        for p, eps in (("inf", 0.1), ("2", 0.25), ("1", 0.4)):
            ball = LpBall.make(x, eps, p)
            r = bab(net, Query.robustness(ball, y, 3),
                    options=BabOptions(timeout=10, input_split="off"))
            if r.status != "verified":
                continue
            seen += 1
            pts = sample_set(ball, 0, 4000, g)
            logits = net.forward(pts)
            other = logits.clone()
            other[:, y] = -math.inf
            margin = logits[:, y] - other.amax(1)
            assert bool((margin >= r.margin_lb - 1e-9).all())
    assert seen >= 10


def _split_domain(net, ball, rows, bounds, n_splits: int):
    """Bounds of the subdomain 'the n first unstable neurons of the last hidden layer inactive'."""
    j = relu_inputs(net)[-1]
    lo, hi = (t.clone() for t in bounds[j])
    unstable = ((lo < 0) & (hi > 0)).reshape(-1).nonzero().reshape(-1)[:n_splits]
    hi.reshape(-1)[unstable] = 0.0
    sign = torch.zeros_like(lo)
    sign.reshape(-1)[unstable] = -1.0
    b2 = dict(bounds)
    b2[j] = (lo, hi)
    return b2, {j: sign}, j


def _split_case(seed: int):
    """A hard ball's robustness rows on a domain with 4 neurons split inactive, CROWN's slopes, zero beta
    and unit row weights: (net, ball, rows, bounds, signs, split node, alpha, beta, weights)."""
    net, x, y = _hard_ball(seed)
    ball = LpBall.make(x, 0.15, "inf")
    rows = make_rows(Query.robustness(ball, y, 3).disjuncts, 3, 1.0)
    bounds = linear_intermediate(net, ball, rule="crown", dtype=torch.float64)
    b2, signs, j = _split_domain(net, ball, rows, bounds, 4)
    alpha = crown_slopes(net, b2, rows.n_all)
    beta = {j: torch.zeros(1, rows.n_all, *net.graph[j].shape, dtype=torch.float64)}
    return net, ball, rows, b2, signs, j, alpha, beta, torch.ones(1, rows.n_all, dtype=torch.float64)


def _assert_sound_on_split(net, ball, rows, signs, j, lb, seed: int) -> None:  # type: ignore[no-untyped-def]
    """No sampled point of the ball with the split signs has a row value below ``lb``."""
    pts = sample_set(ball, 0, 20000, torch.Generator().manual_seed(seed))
    vals = net.forward(pts, all_nodes=True)
    keep = (vals[j].reshape(len(pts), -1)[:, signs[j].reshape(-1) < 0] <= 0).all(1)
    if bool(keep.any()):
        true = vals[-1][keep] @ rows.C.T - rows.d
        assert bool((true.amin(0) >= lb[0, : rows.n_rows] - 1e-9).all())


def test_beta_raises_the_bound_of_a_split_domain() -> None:
    gains = 0
    for seed in range(6):
        net, ball, rows, b2, signs, j, alpha, beta, w = _split_case(seed)
        kw = dict(steps=30, lr_alpha=0.1, scores=False)
        no_beta = bound_rows(net, ball, rows, b2, alpha, beta, signs, rows.theta0(1), w, lr_beta=0.0, **kw)
        with_beta = bound_rows(net, ball, rows, b2, alpha, beta, signs, rows.theta0(1), w, lr_beta=0.1, **kw)
        assert bool((with_beta.lb >= no_beta.lb - 1e-12).all())
        gains += bool((with_beta.lb > no_beta.lb + 1e-6).any())
        # every bound is sound on the split domain: sampled points with the split signs
        _assert_sound_on_split(net, ball, rows, signs, j, with_beta.lb, seed)
    assert gains >= 2


def test_beta_alone_holds_the_slopes_and_stays_sound() -> None:
    """lr_alpha = 0 (the stall escalation's option): the slopes come back as given, beta still raises
    the bound over no steps, and no sampled point of the split domain is below it."""
    for seed in range(4):
        net, ball, rows, b2, signs, j, alpha, beta, w = _split_case(seed)
        start = bound_rows(net, ball, rows, b2, alpha, beta, signs, rows.theta0(1), w, steps=0, lr_alpha=0.0,
                           lr_beta=0.0, scores=False)
        held = bound_rows(net, ball, rows, b2, alpha, beta, signs, rows.theta0(1), w, steps=30, lr_alpha=0.0,
                          lr_beta=0.5, scores=False)
        for i, t in alpha.items():
            assert torch.equal(held.alpha[i], t.clamp(0, 1))
        assert bool((held.lb >= start.lb - 1e-12).all())
        _assert_sound_on_split(net, ball, rows, signs, j, held.lb, seed)


def test_beta_saves_subdomains() -> None:
    fewer = 0
    for seed, eps in ((3, 0.2), (4, 0.2)):
        net, x, y = _hard_ball(seed)
        ball = LpBall.make(x, eps, "inf")
        res = {}
        for steps in (0, 10):
            r = bab(net, Query.robustness(ball, y, 3),
                    options=BabOptions(timeout=10, beta_steps=steps, input_split="off", attack=False, batch=4))
            res[steps] = r
        if res[0].status == res[10].status != "unknown" and res[10].domains < res[0].domains:
            fewer += 1
    assert fewer >= 1


def test_limits_and_progress() -> None:
    net, x, y = _hard_ball(3)
    ball = LpBall.make(x, 0.3, "inf")
    seen: list[dict] = []
    r = bab(net, Query.robustness(ball, y, 3), confirm=lambda z: None,
            options=BabOptions(timeout=0.5, attack=False, input_split="off", batch=1), progress=seen.append)
    assert r.status == "unknown" and r.reason in ("timeout", "numerics") and (r.margin_lb is None or r.margin_lb <= 0)
    r = bab(net, Query.robustness(ball, y, 3), confirm=lambda z: None,
            options=BabOptions(max_domains=2, attack=False, input_split="off", batch=1))
    assert r.status != "verified" or r.domains >= 1
    r = bab(net, Query.robustness(ball, y, 3), deadline=time.perf_counter() - 1.0)
    assert r.status != "verified"


def test_progress_is_reported() -> None:
    rg = np.random.default_rng(4)
    net = random_net(4, 3, (8, 8), 3)
    lo, hi = np.full(3, 0.2), np.full(3, 0.7)
    dis = random_disjuncts(rg, 3, 2, 2, 0.0)
    t0 = exact_min(net, lo, hi, dis)
    dis = [(C, d + t0 - 0.01) for C, d in dis]
    q, conf = box_confirm(net, torch.tensor(lo), torch.tensor(hi), dis)
    seen: list[dict] = []
    r = bab(net, q, options=BabOptions(timeout=10, input_split="on", batch=2), progress=seen.append)
    assert r.status == "verified"
    assert seen and {"domains", "open", "lower_bound"} <= set(seen[-1])
    assert seen[-1]["domains"] == r.domains and r.max_queue >= 1
