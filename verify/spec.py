"""Perturbation sets: an Lp ball (p = 1, 2, inf) around each input, intersected with the input box.

:class:`LpBall` is the one place that knows the geometry of the set. Bound methods
ask it for coordinate-wise bounds (:meth:`LpBall.box`) and for the minimum of a
linear function over the set (:meth:`LpBall.min_linear`), attacks ask it for
projections, and every counterexample goes through :func:`check_counterexample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import DataError, SpecError

if TYPE_CHECKING:
    from .network import Classifier

P_VALUES = (1.0, 2.0, math.inf)


def parse_p(p: str | float | int) -> float:
    """'inf', 'linf', 2, '1' ... -> 1.0, 2.0 or inf; anything else is a SpecError."""
    s = str(p).strip().lower()
    table = {"inf": math.inf, "linf": math.inf, "infinity": math.inf, "1": 1.0, "l1": 1.0, "2": 2.0, "l2": 2.0,
             "1.0": 1.0, "2.0": 2.0}
    if s not in table:
        raise SpecError(f"unknown norm p={p!r}: use 1, 2 or inf")
    return table[s]


def dual_norm(p: float) -> float:
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]


def p_name(p: float) -> str:
    return "inf" if math.isinf(p) else str(int(p))


def check_eps(eps: float | Sequence[float] | Tensor | np.ndarray) -> Tensor:
    """The radii as a float64 CPU tensor (N,) after checking them; callers move it to their device."""
    if isinstance(eps, Tensor):
        t = eps.detach().to("cpu", torch.float64).reshape(-1)
    else:
        t = torch.as_tensor(np.asarray(eps, dtype=np.float64), device="cpu").reshape(-1)
    if torch.isnan(t).any():
        raise SpecError("eps is NaN")
    if torch.isinf(t).any():
        raise SpecError("eps is infinite")
    if (t < 0).any():
        raise SpecError(f"eps must be >= 0, got {float(t.min()):g}")
    return t


@dataclass(frozen=True, eq=False)
class LpBall:
    """{x : ||x - center||_p <= eps, lo <= x <= hi}, one ball per example.

    ``center`` has shape (N, *input_shape); ``eps`` is a float or one value per example.
    """

    center: Tensor
    eps: Tensor
    p: float
    lo: float = 0.0
    hi: float = 1.0

    @classmethod
    def make(
        cls,
        center: Tensor | np.ndarray,
        eps: float | Sequence[float] | Tensor,
        p: str | float,
        input_range: tuple[float, float] = (0.0, 1.0),
        check_inside: bool = True,
    ) -> "LpBall":
        pv = parse_p(p)
        c = torch.as_tensor(np.asarray(center), device="cpu") if not isinstance(center, Tensor) else center
        if not c.is_floating_point():
            raise DataError("inputs must be floating point")
        if not torch.isfinite(c).all():
            raise DataError("inputs contain NaN or infinite values")
        # float64 always: a float32 radius can round up, and a counterexample must lie in the asked ball
        e = check_eps(eps).to(c.device)
        n = c.shape[0]
        if e.numel() == 1:
            e = e.expand(n).clone()
        elif e.numel() != n:
            raise SpecError(f"{e.numel()} eps values for {n} examples")
        lo, hi = input_range
        if check_inside and n > 0:
            below, above = float(c.min()), float(c.max())
            if below < lo - 1e-6 or above > hi + 1e-6:
                raise DataError(
                    f"inputs lie in [{below:g}, {above:g}], outside the model's input range [{lo:g}, {hi:g}]"
                )
            c = c.clamp(lo, hi)
        return cls(c, e, pv, float(lo), float(hi))

    # ---- basic facts
    @property
    def n(self) -> int:
        return int(self.center.shape[0])

    def to(self, dtype: torch.dtype) -> "LpBall":
        return LpBall(self.center.to(dtype), self.eps, self.p, self.lo, self.hi)  # eps stays float64

    def select(self, idx: Tensor | Sequence[int]) -> "LpBall":
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.center.device)
        return LpBall(self.center[idx], self.eps[idx], self.p, self.lo, self.hi)

    def _eps_view(self, like: Tensor) -> Tensor:
        return self.eps.to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))

    def box(self) -> tuple[Tensor, Tensor]:
        """Coordinate-wise bounds of the set (exact for p = inf, the bounding box otherwise)."""
        e = self._eps_view(self.center)
        return (self.center - e).clamp(min=self.lo), (self.center + e).clamp(max=self.hi)

    def min_linear(self, a: Tensor) -> Tensor:
        """min over the set of <a[n, k], x> for a of shape (N, K, *input_shape); returns (N, K).

        Exact for p = inf (a box) and p = 1 (a fractional knapsack, solved greedily).
        For p = 2 it returns a Lagrangian-dual lower bound that is tight to solver
        precision: max(ball-only bound, box-only bound, dual function at the bisected
        multiplier); every candidate is a valid lower bound, so the result is sound.
        """
        n, k = a.shape[:2]
        a2 = a.reshape(n, k, -1)
        x0 = self.center.reshape(n, 1, -1).to(a.dtype)
        lo_box, hi_box = (t.reshape(n, 1, -1).to(a.dtype) for t in self.box())
        if math.isinf(self.p):
            return (a2.clamp(min=0) * lo_box + a2.clamp(max=0) * hi_box).sum(-1)
        eps = self.eps.to(a.dtype).reshape(n, 1, 1)
        base = (a2 * x0).sum(-1)
        if self.p == 1.0:
            return base + _l1_box_min(a2, x0, eps, self.lo, self.hi)
        return base + _l2_box_min(a2, x0, eps, self.lo, self.hi)

    def contains(self, x: Tensor, rtol: float = 0.0) -> Tensor:
        """Float64 membership test per example (no slack beyond ``rtol`` * eps)."""
        d = (x.to(torch.float64) - self.center.to(torch.float64)).reshape(self.n, -1)
        norm: Tensor = d.norm(p=self.p, dim=1)
        eps = self.eps.to(torch.float64) * (1 + rtol)
        xs = x.to(torch.float64).reshape(self.n, -1)
        in_box = (xs >= self.lo).all(1) & (xs <= self.hi).all(1)
        return (norm <= eps) & in_box

    def project(self, x: Tensor) -> Tensor:
        """A point of the set near x: projection onto the ball, then clipping to the box.

        Clipping to the box never leaves the ball (it moves every coordinate towards the
        centre, which lies in the box), so the result is always inside the set.
        """
        d = (x - self.center).reshape(self.n, -1)
        eps = self.eps.to(x.dtype).reshape(-1, 1)
        if math.isinf(self.p):
            d = torch.maximum(torch.minimum(d, eps), -eps)
        elif self.p == 2.0:
            norm = d.norm(dim=1, keepdim=True)
            d = d * torch.clamp(eps / norm.clamp(min=1e-30), max=1.0)
        else:
            d = _project_l1(d, eps)
        out = self.center + d.reshape(self.center.shape)
        return out.clamp(self.lo, self.hi)


def _l1_box_min(a: Tensor, x0: Tensor, eps: Tensor, lo: float, hi: float) -> Tensor:
    """min <a, d> s.t. ||d||_1 <= eps, lo <= x0 + d <= hi: spend the budget on the largest |a_i| first."""
    room = torch.where(a > 0, x0 - lo, hi - x0).clamp(min=0).expand_as(a)  # how far each coordinate may move
    gain = a.abs()
    order = torch.argsort(gain, dim=-1, descending=True)
    g = torch.gather(gain, -1, order)
    r = torch.gather(room, -1, order)
    before = torch.cumsum(r, -1) - r  # budget used by better coordinates
    take = torch.minimum(r, (eps - before).clamp(min=0))
    return -(g * take).sum(-1)


def _l2_box_min(a: Tensor, x0: Tensor, eps: Tensor, lo: float, hi: float, iters: int = 60) -> Tensor:
    """Lower bound on min <a, d> s.t. ||d||_2 <= eps, lo <= x0 + d <= hi (see LpBall.min_linear)."""
    d_lo, d_hi = lo - x0, hi - x0
    eps = eps[..., 0]  # (N, 1)
    ball_only = -eps * a.norm(dim=-1)
    box_only = (a.clamp(min=0) * d_lo + a.clamp(max=0) * d_hi).sum(-1)
    corner = torch.where(a > 0, d_lo, d_hi).expand_as(a)
    corner_inside = (corner * (a != 0)).norm(dim=-1) <= eps  # the box minimiser is in the ball: box bound exact

    def dual(t: Tensor) -> Tensor:
        # For mu = 1/t > 0: min over the box of <a,d> + mu/2 (||d||^2 - eps^2), separable.
        d = torch.maximum(torch.minimum(-t[..., None] * a, d_hi), d_lo)
        mu = 1.0 / t
        return (a * d).sum(-1) + 0.5 * mu * ((d * d).sum(-1) - eps * eps)

    anorm = a.norm(dim=-1).clamp(min=1e-30)
    t_lo = torch.zeros_like(anorm)
    t_hi = eps / anorm * 4.0 + 1e-30
    # grow t_hi until the clipped step leaves the ball (or give up: then the box bound is exact)
    for _ in range(60):
        d = torch.maximum(torch.minimum(-t_hi[..., None] * a, d_hi), d_lo)
        outside = d.norm(dim=-1) > eps
        if bool(outside.all()) or bool((outside | corner_inside).all()):
            break
        t_hi = torch.where(outside | corner_inside, t_hi, t_hi * 4)
    best = torch.maximum(ball_only, box_only)
    for _ in range(iters):
        t = 0.5 * (t_lo + t_hi)
        d = torch.maximum(torch.minimum(-t[..., None] * a, d_hi), d_lo)
        outside = d.norm(dim=-1) > eps
        t_hi = torch.where(outside, t, t_hi)
        t_lo = torch.where(outside, t_lo, t)
    for t in (t_lo, t_hi):
        val = dual(t.clamp(min=1e-30))
        best = torch.maximum(best, torch.nan_to_num(val, nan=-math.inf, neginf=-math.inf))
    best = torch.where(corner_inside, box_only, best)
    zero = (a == 0).all(-1)
    return torch.where(zero, torch.zeros_like(best), best)


def _project_l1(d: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of each row of d onto the L1 ball of radius eps (Duchi et al. 2008)."""
    absd = d.abs()
    inside = absd.sum(1, keepdim=True) <= eps
    mu, _ = torch.sort(absd, dim=1, descending=True)
    cums = torch.cumsum(mu, 1)
    ar = torch.arange(1, d.shape[1] + 1, device=d.device, dtype=d.dtype)
    cond = mu - (cums - eps) / ar > 0
    rho = cond.to(d.dtype).cumsum(1).argmax(1, keepdim=True)  # last index where cond holds
    theta = (torch.gather(cums, 1, rho) - eps) / (rho + 1).to(d.dtype)
    proj = torch.sign(d) * (absd - theta).clamp(min=0)
    return torch.where(inside, d, proj)


# --------------------------------------------------------------------------- a plain box (VNNLIB input sets)


def _outward(t64: Tensor, dtype: torch.dtype, direction: float) -> Tensor:
    """t64 cast to dtype, rounded towards ``direction`` (-inf for lower bounds, +inf for upper)."""
    t = t64.to(dtype)
    if dtype == torch.float64:
        return t
    back = t.to(torch.float64)
    wrong = back > t64 if direction < 0 else back < t64
    return torch.where(wrong, torch.nextafter(t, torch.full_like(t, direction)), t)


@dataclass(frozen=True, eq=False)
class Box:
    """{x : lower <= x <= upper} per example; bounds kept exactly in float64.

    ``dtype`` is the precision the bound code works in: :meth:`box` casts the bounds to it
    rounding outwards, so a float32 screen never sees a smaller set than the true one.
    """

    lower: Tensor  # (N, *input_shape) float64
    upper: Tensor
    dtype: torch.dtype = torch.float64
    p: float = math.inf  # read by code that specialises on Linf sets (a box is one)

    @classmethod
    def make(cls, lower: Tensor | np.ndarray, upper: Tensor | np.ndarray) -> "Box":
        lo = torch.as_tensor(np.asarray(lower, dtype=np.float64))
        hi = torch.as_tensor(np.asarray(upper, dtype=np.float64))
        if lo.shape != hi.shape:
            raise SpecError(f"box bounds have shapes {tuple(lo.shape)} and {tuple(hi.shape)}")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise SpecError("box bounds must be finite")
        if (lo > hi).any():
            raise SpecError("box has a lower bound above its upper bound")
        return cls(lo, hi)

    @property
    def n(self) -> int:
        return int(self.lower.shape[0])

    @property
    def center(self) -> Tensor:
        return ((self.lower + self.upper) / 2).to(self.dtype)

    def to(self, dtype: torch.dtype) -> "Box":
        return Box(self.lower, self.upper, dtype)

    def select(self, idx: Tensor | Sequence[int]) -> "Box":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Box(self.lower[idx], self.upper[idx], self.dtype)

    def box(self) -> tuple[Tensor, Tensor]:
        return _outward(self.lower, self.dtype, -math.inf), _outward(self.upper, self.dtype, math.inf)

    def min_linear(self, a: Tensor) -> Tensor:
        """min over the box of <a[n, k], x> for a of shape (N, K, *input_shape): exact, (N, K)."""
        n, k = a.shape[:2]
        a2 = a.reshape(n, k, -1)
        lo, hi = (_outward(t, a.dtype, s).reshape(n, 1, -1) for t, s in ((self.lower, -math.inf), (self.upper, math.inf)))
        return (a2.clamp(min=0) * lo + a2.clamp(max=0) * hi).sum(-1)

    def contains(self, x: Tensor) -> Tensor:
        """Exact float64 membership per example."""
        x64 = x.to(torch.float64).reshape(self.n, -1)
        return (x64 >= self.lower.reshape(self.n, -1)).all(1) & (x64 <= self.upper.reshape(self.n, -1)).all(1)

    def project(self, x: Tensor) -> Tensor:
        """Clip to the box, in float64 (the result is inside exactly)."""
        return torch.maximum(torch.minimum(x.to(torch.float64), self.upper), self.lower)


def representable_point(box: Box, x: Tensor) -> Tensor:
    """A float32-representable point of the (single-example) box near x, as float64; x clipped if none.

    A counterexample that is exact in float32 means the same input to onnxruntime (which
    runs in float32) as to our float64 check.
    """
    x64 = box.project(x)
    x32 = x64.to(torch.float32)
    back = x32.to(torch.float64)
    x32 = torch.where(back < box.lower, torch.nextafter(x32, torch.full_like(x32, math.inf)), x32)
    back = x32.to(torch.float64)
    x32 = torch.where(back > box.upper, torch.nextafter(x32, torch.full_like(x32, -math.inf)), x32)
    cand = x32.to(torch.float64)
    return cand if bool(box.contains(cand).all()) else x64


def distances(center: Tensor, x: Tensor, p: float) -> Tensor:
    """Per row, ||x - center||_p in float64 (center and x of shape (N, *input_shape))."""
    d = (x.to(torch.float64) - center.to(torch.float64)).reshape(center.shape[0], -1)
    out: Tensor = d.abs().amax(1) if math.isinf(p) else d.norm(p=p, dim=1)
    return out


def margins_f64(net: Classifier, x: Tensor, labels: Tensor) -> Tensor:
    """max_{j != y} f_j(x) - f_y(x) in float64 (positive: misclassified)."""
    with torch.no_grad():
        logits = net.forward(x.to(torch.float64))
    y = labels.to(torch.long).reshape(-1)
    fy = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other.scatter_(1, y[:, None], -math.inf)
    return other.max(1).values - fy


def check_counterexample(net: Classifier, pset: LpBall, labels: Tensor, x_adv: Tensor) -> Tensor:
    """For each example: is x_adv inside the set (float64) and strictly misclassified (float64)?"""
    x64 = x_adv.to(torch.float64)
    inside = pset.contains(x64)
    return inside & (margins_f64(net, x64, labels) > 0)
