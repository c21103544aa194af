"""verify.query: robustness is one kind of Query, and confirm_point is the one re-check."""

from __future__ import annotations

import math

import numpy as np
import torch

from verify.network import Linear, Network, ReLU
from verify.query import Disjunct, Query, confirm_point, outputs_f64
from verify.spec import Box, LpBall, check_counterexample, margins_f64


def _net(seed: int = 0) -> Network:
    g = torch.Generator().manual_seed(seed)
    return Network((Linear(torch.randn(8, 4, generator=g), 0.3 * torch.randn(8, generator=g)), ReLU(),
                    Linear(torch.randn(8, 8, generator=g), 0.3 * torch.randn(8, generator=g)), ReLU(),
                    Linear(torch.randn(3, 8, generator=g), 0.3 * torch.randn(3, generator=g))), (4,))


def test_robustness_query_agrees_with_the_margin_rule() -> None:
    """A point satisfies a robustness disjunct iff some other class strictly wins (margins_f64 > 0)."""
    net = _net()
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand((200, 4), generator=gen, dtype=torch.float64)
    logits = net.forward(xs)
    for x, lg in zip(xs, logits):
        for label in range(3):
            q = Query.robustness(LpBall.make(x[None], 0.0, "inf"), label, 3)
            hit = q.satisfied_by(lg.numpy())
            strict = float(margins_f64(net, x[None], torch.tensor([label]))[0]) > 0
            assert (hit is not None) == strict
            if hit is not None:
                assert q.targets()[hit] != label and lg[q.targets()[hit]] > lg[label]


def test_a_tie_is_no_robustness_counterexample_but_counts_for_a_property() -> None:
    y = np.array([1.0, 1.0, 0.0])
    ball = LpBall.make(torch.zeros(1, 3), 0.1, "inf")
    assert Query.robustness(ball, 0, 3).satisfied_by(y) is None
    prop = Query(ball, (Disjunct(np.array([[1.0, -1.0, 0.0]]), np.zeros(1)),))
    assert prop.satisfied_by(y) == 0


def test_confirm_point_returns_points_inside_that_violate() -> None:
    """Every confirmed point lies in the set exactly and is misclassified in float64; points
    outside the set are projected in first (the brute check: check_counterexample)."""
    net = _net(1)
    gen = torch.Generator().manual_seed(1)
    confirmed = 0
    for t in range(60):
        c = torch.rand((1, 4), generator=gen, dtype=torch.float64) * 0.6 + 0.2
        label = int(net.forward(c).argmax())
        for p in ("inf", "2", "1"):
            ball = LpBall.make(c, 0.3, p)
            q = Query.robustness(ball, label, 3)
            x = c + (torch.rand((1, 4), generator=gen, dtype=torch.float64) - 0.5) * 1.5  # often outside
            found = confirm_point(net, q, x)
            if found is not None:
                confirmed += 1
                pt, k = found
                assert bool(check_counterexample(net, ball, torch.tensor([label]), pt)[0])
                assert outputs_f64(net, pt)[q.targets()[k]] > outputs_f64(net, pt)[label]
            else:  # then the projection itself is no counterexample
                proj = ball.project(x)
                assert not bool(check_counterexample(net, ball, torch.tensor([label]), proj)[0])
    assert confirmed > 10


def test_confirm_point_on_a_box_prefers_a_float32_representable_point() -> None:
    net = _net(2)
    lo = torch.full((1, 4), 0.1, dtype=torch.float64)
    hi = torch.full((1, 4), 0.7, dtype=torch.float64)
    box = Box.make(lo, hi)
    y = outputs_f64(net, (lo + hi) / 2)
    q = Query(box, (Disjunct(np.eye(3)[:1], np.array([y[0] + 10.0])),))  # holds everywhere near the centre
    pt, k = confirm_point(net, q, torch.full((1, 4), 0.3, dtype=torch.float64) + 1e-12) or (None, None)
    assert pt is not None and k == 0
    assert torch.equal(pt.to(torch.float32).to(torch.float64), pt)
    assert bool(box.contains(pt).all())


def test_rows_stack_every_disjunct() -> None:
    ball = LpBall.make(torch.zeros(1, 3), 0.1, "inf")
    q = Query(ball, (Disjunct(np.ones((2, 3)), np.array([1.0, 2.0])), Disjunct(np.zeros((0, 3)), np.zeros(0)),
                     Disjunct(-np.ones((1, 3)), np.array([3.0]))))
    C, d, owner = q.rows()
    assert C.shape == (3, 3) and d.tolist() == [1.0, 2.0, 3.0] and owner.tolist() == [0, 0, 2]
    assert q.satisfied_by(np.zeros(3)) == 0  # rows 0 <= 1, 0 <= 2
    assert q.disjuncts[1].violation(np.zeros(3)) == -math.inf
