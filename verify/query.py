"""Queries: the one question every stage answers, and the one re-check of counterexamples.

A :class:`Query` is an input set (an :class:`InputSet`: an Lp ball intersected with the
input domain, or a plain box) and an UNSAFE region over the network's outputs, a
disjunction of :class:`Disjunct` s, each a conjunction of linear rows ``C y <= d``. The answer
is *falsified* (a point of the set whose float64 outputs lie in the unsafe region), *verified*
(no such point) or unknown. Robustness of example x with label y is the Query over the ball
around x whose disjuncts are ``f_j > f_y`` for j != y (:meth:`Query.robustness`; strict: a
tie is not a misclassification here, as in :func:`verify.spec.check_counterexample`); a
VNNLIB property is the Query over its box (boundary points count as unsafe).

Every stage -- attacks, bound methods, the MIP on HiGHS or MIPVerify.jl, branch and bound
-- reads the input set through the :class:`InputSet` protocol, and every counterexample
any of them proposes goes through :func:`confirm_point` before it is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from .network import Classifier
from .spec import Box, LpBall, representable_point


class InputSet(Protocol):
    """A batch of input sets (N examples) as the bound code, the attacks and the MIP read it."""

    p: float

    @property
    def n(self) -> int: ...

    @property
    def center(self) -> Tensor: ...

    def box(self) -> tuple[Tensor, Tensor]: ...

    def min_linear(self, a: Tensor) -> Tensor: ...

    def contains(self, x: Tensor) -> Tensor: ...

    def project(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True, eq=False)
class Disjunct:
    """Rows ``C y <= d`` (C: (m, n_outputs), d: (m,), float64); m = 0 holds everywhere.

    ``strict``: the rows are ``C y < d`` (a robustness target: the other class must win).
    """

    C: np.ndarray
    d: np.ndarray
    strict: bool = False

    def violation(self, y: np.ndarray) -> float:
        """max_i (C_i y - d_i) in float64: <= 0 iff y satisfies every row (-inf for no rows)."""
        if len(self.d) == 0:
            return -math.inf
        return float(np.max(self.C @ np.asarray(y, dtype=np.float64).reshape(-1) - self.d))

    def holds(self, y: np.ndarray) -> bool:
        """Do the float64 outputs ``y`` satisfy every row?"""
        v = self.violation(y)
        return v < 0 if self.strict else v <= 0


@dataclass(frozen=True, eq=False)
class Query:
    """One input set (``input_set.n == 1``) and the unsafe disjuncts over the outputs.

    ``label`` is set for robustness queries (disjunct k is the k-th class other than the label).
    """

    input_set: LpBall | Box
    disjuncts: tuple[Disjunct, ...]
    label: int | None = None

    @classmethod
    def robustness(cls, ball: LpBall | Box, label: int, n_classes: int) -> "Query":
        """Is some point of ``ball`` classified as a class j != label (f_j > f_label)?"""
        rows = []
        for j in range(n_classes):
            if j != label:
                c = np.zeros((1, n_classes))
                c[0, label], c[0, j] = 1.0, -1.0
                rows.append(Disjunct(c, np.zeros(1), strict=True))
        return cls(ball, tuple(rows), int(label))

    def targets(self) -> list[int]:
        """For a robustness query: the class of each disjunct."""
        assert self.label is not None
        return [j for j in range(len(self.disjuncts) + 1) if j != self.label]

    def satisfied_by(self, y: np.ndarray) -> int | None:
        """The first disjunct the float64 outputs ``y`` satisfy, or None."""
        for k, dj in enumerate(self.disjuncts):
            if dj.holds(y):
                return k
        return None

    def rows(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
        """Every row of every disjunct stacked: C (R, n_out), d (R,), and each row's disjunct (R,)."""
        cs = [dj.C for dj in self.disjuncts if len(dj.d)]
        n_out = self.disjuncts[0].C.shape[1] if self.disjuncts else 0
        C = torch.as_tensor(np.concatenate(cs) if cs else np.zeros((0, n_out)), dtype=dtype)
        d = torch.as_tensor(np.concatenate([dj.d for dj in self.disjuncts]) if self.disjuncts else np.zeros(0), dtype=dtype)
        owner = torch.as_tensor(np.concatenate([np.full(len(dj.d), k) for k, dj in enumerate(self.disjuncts)])
                                if self.disjuncts else np.zeros(0), dtype=torch.long)
        return C, d, owner


def outputs_f64(net: Classifier, x: Tensor) -> np.ndarray:
    """The flattened float64 outputs for one input x."""
    with torch.no_grad():
        return net.forward(x.to(torch.float64).reshape(1, *net.input_shape)).reshape(-1).numpy()


def nearby_points(s: LpBall | Box, x: Tensor, push: Sequence[float]) -> list[Tensor]:
    """Points of the set near x to re-check. Solver points sit on the boundary of the set (the
    worst violation is at a corner) and of the decision region: each is projected, made float32-
    representable where the set is a box (the same input to a float32 runtime), and shrunk a hair
    towards the centre (c + (1 - s)(x - c) stays in the set, which is convex); ``push`` first moves
    the perturbation a little past where it is (for minimum-distortion points, which sit on a tie)."""
    x = x.to(torch.float64).reshape(s.center.shape)
    c = s.center.to(torch.float64)
    bases = [x] + [c + f * (x - c) for f in push]
    out: list[Tensor] = []
    for b in bases:
        p = s.project(b)
        if isinstance(s, Box):
            out.append(representable_point(s, p))
        out.append(p)
        out += [c + (1 - shrink) * (p - c) for shrink in (1e-12, 1e-9, 1e-7)]
    return out


def confirm_point(net: Classifier, query: Query, x: Tensor, *, push: Sequence[float] = ()) -> tuple[Tensor, int] | None:
    """THE re-check of a counterexample: (a point of the input set near x, exactly inside in
    float64, whose float64 outputs satisfy a disjunct; that disjunct's index), or None."""
    s = query.input_set.to(torch.float64)
    for cand in nearby_points(s, x, push):
        if not bool(s.contains(cand).all()):
            continue
        k = query.satisfied_by(outputs_f64(net, cand))
        if k is not None:
            return cand, k
    return None


__all__ = ["Disjunct", "InputSet", "Query", "confirm_point", "nearby_points", "outputs_f64"]
