"""Adversarial attacks: :func:`ascend`, the one projected-gradient loop (also behind :func:`descend`, the
descent on disjunct violations of :func:`verify.properties.attack_property` and of branch and bound), PGD for L1, L2 and Linf balls intersected with the input box, and FGSM.

As in Foolbox 3, :class:`Attack.__call__` validates the inputs, calls the subclass's
``run`` (which searches in float32), moves the points into the set in float64 arithmetic
and re-checks every claimed success with :func:`verify.spec.check_counterexample`:
a success in an :class:`AttackResult` is a counterexample a float64 forward pass confirms.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError, SpecError
from .network import Classifier
from .spec import P_VALUES, Box, LpBall, check_counterexample, check_eps, margins_f64

LossName = Literal["margin", "ce"]
Schedule = Literal["constant", "decay"]


@dataclass(frozen=True, eq=False)
class AttackResult:
    """Per example: the best point found, whether it is a confirmed counterexample, and its float64 margin."""

    x_adv: Tensor  # (N, *input_shape), the dtype of the ball's centre; always inside the set
    success: Tensor  # bool (N,): inside the set and misclassified, checked in float64
    margin: Tensor  # float64 (N,): max_{j != y} f_j - f_y at x_adv (> 0 iff misclassified)
    steps: int  # gradient steps run (over all restarts)
    example_steps: Tensor  # int64 (N,): gradient steps run on each example (0: misclassified, not searched)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else 0.0


class Attack:
    """Base class: subclasses implement :meth:`run`, returning candidate points (float32) and a step count."""

    def __call__(self, net: Classifier, pset: LpBall, labels: Tensor | Sequence[int] | np.ndarray, *,
                 keys: Tensor | Sequence[int] | np.ndarray | None = None) -> AttackResult:
        """``keys``: one integer per example (its index in the data set) that fixes its random draws,
        so an example's result does not depend on which other examples share the call; default:
        the positions 0..N-1."""
        y = validate_attack_inputs(net, pset, labels)
        n = pset.n
        keys_t = _keys(keys, n)
        if n == 0:
            empty = pset.center.new_zeros(0, dtype=torch.float64)
            return AttackResult(pset.center.clone(), pset.center.new_zeros(0, dtype=torch.bool), empty, 0,
                                torch.zeros(0, dtype=torch.long))
        center_margin = margins_f64(net, pset.center, y)
        todo = (center_margin <= 0).nonzero()[:, 0]  # misclassified points need no search
        x_adv = pset.center.detach().clone()
        per_example = torch.zeros(n, dtype=torch.long)
        if todo.numel():
            cand, ran = self.run(net, pset.select(todo).to(torch.float32), y[todo], keys_t[todo.cpu()])
            x_adv[todo] = inside_set(pset.select(todo), cand.detach())
            per_example[todo.cpu()] = ran.to("cpu", torch.long) if isinstance(ran, Tensor) else int(ran)
        success = check_counterexample(net, pset, y, x_adv)
        margin = margins_f64(net, x_adv, y)
        return AttackResult(x_adv, success, margin, int(per_example.max()) if n else 0, per_example)

    def run(self, net: Classifier, pset: LpBall, labels: Tensor, keys: Tensor | None = None) -> tuple[Tensor, int | Tensor]:
        """Candidates for the examples of ``pset``, and the gradient steps run (a count for all, or one
        per example); ``keys`` (CPU int64, one per example) seed their random draws."""
        raise NotImplementedError


def _keys(keys: Tensor | Sequence[int] | np.ndarray | None, n: int) -> Tensor:
    if keys is None:
        return torch.arange(n, device="cpu")
    k = keys.detach().to("cpu", torch.long) if isinstance(keys, Tensor) else torch.as_tensor(np.asarray(keys), dtype=torch.long, device="cpu")
    k = k.reshape(-1)
    if k.numel() != n:
        raise SpecError(f"{n} examples but {k.numel()} attack keys")
    return k


def example_generator(seed: int, key: int, restart: int) -> torch.Generator:
    """The CPU generator of one example's restart: a function of (seed, key, restart) only."""
    mixed = ((seed * 1_000_003 + key) * 1_000_033 + restart) % (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


def validate_attack_inputs(net: Classifier, pset: LpBall, labels: Tensor | Sequence[int] | np.ndarray) -> Tensor:
    """Labels as a long tensor, after checking the set, the data and the labels against the model."""
    if not isinstance(pset, LpBall):
        raise SpecError(f"attacks need a verify.spec.LpBall, got {type(pset).__name__}")
    if pset.p not in P_VALUES:
        raise SpecError(f"unknown norm p={pset.p!r}: use 1, 2 or inf")
    check_eps(pset.eps)
    c = pset.center
    if c.ndim < 1 or tuple(c.shape[1:]) != tuple(net.input_shape):
        raise DataError(f"inputs have shape {tuple(c.shape[1:])}, the model expects {tuple(net.input_shape)}")
    if pset.eps.numel() != pset.n:
        raise SpecError(f"{pset.eps.numel()} eps values for {pset.n} examples")
    if not c.is_floating_point() or not torch.isfinite(c).all():
        raise DataError("inputs must be finite floating-point values")
    lo, hi = net.input_range
    if pset.lo < lo or pset.hi > hi or not pset.lo < pset.hi:
        raise SpecError(f"the set's box [{pset.lo:g}, {pset.hi:g}] is not inside the model's input range [{lo:g}, {hi:g}]")
    if c.numel() and (float(c.min()) < pset.lo or float(c.max()) > pset.hi):
        raise DataError(f"inputs lie in [{float(c.min()):g}, {float(c.max()):g}], outside the input box [{pset.lo:g}, {pset.hi:g}]")
    y = torch.as_tensor(np.asarray(labels), device="cpu") if not isinstance(labels, Tensor) else labels
    if y.ndim != 1 or y.shape[0] != pset.n:
        raise DataError(f"{tuple(y.shape)} labels for {pset.n} examples: give one label per example")
    if y.is_floating_point():
        if not torch.isfinite(y).all() or not torch.equal(y, y.round()):
            raise DataError("labels must be integers")
    elif y.dtype == torch.bool or y.is_complex():
        raise DataError(f"labels must be integers, got {y.dtype}")
    y = y.to(torch.long)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= net.n_classes):
        raise DataError(f"labels must lie in 0..{net.n_classes - 1}, got {int(y.min())}..{int(y.max())}")
    return y.to(c.device)


# --------------------------------------------------------------------------- landing inside the set, exactly


def inside_set(pset: LpBall, x: Tensor) -> Tensor:
    """A point near x, in the centre's dtype, that ``pset.contains`` accepts (float64 arithmetic).

    Projecting and then rounding can overshoot the radius or the box by an ulp: offending
    coordinates are stepped one ulp towards the centre (exact for Linf and the box), L1/L2
    rows still outside are shrunk towards the centre, and as a last resort the centre is used.
    """
    dtype = pset.center.dtype
    p64 = pset.to(torch.float64) if pset.center.dtype != torch.float64 else pset
    c = pset.center
    x = p64.project(x.to(torch.float64)).to(dtype)
    for _ in range(4):
        bad = _bad_coordinates(p64, x)
        if not bad.any():
            break
        x = torch.where(bad, torch.nextafter(x, c), x)
    for shrink in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        out = ~p64.contains(x)
        if not out.any():
            return x
        d = x.to(torch.float64) - p64.center
        moved = p64.project(p64.center + d * (1 - shrink)).to(dtype)
        x = torch.where(out.reshape((-1,) + (1,) * (x.ndim - 1)), moved, x)
    out = ~p64.contains(x)
    return torch.where(out.reshape((-1,) + (1,) * (x.ndim - 1)), c, x)


def project(ball: LpBall | Box, x: Tensor) -> Tensor:
    """Euclidean projection onto the set; for p = 1 onto the L1 ball *intersected* with the box.

    ``LpBall.project`` clips after projecting onto the ball, which for L1 wastes the budget
    that clipping removes; here d_i = sign(z_i) min(max(|z_i| - theta, 0), room_i) with the
    soft threshold theta found by bisection on that piecewise-linear sum.
    """
    if isinstance(ball, Box) or ball.p != 1.0:
        return ball.project(x)
    n = ball.n
    c = ball.center.reshape(n, -1)
    z = (x - ball.center).reshape(n, -1)
    room = torch.where(z >= 0, ball.hi - c, c - ball.lo).clamp(min=0)
    a = z.abs()
    theta = _l1_box_threshold(a, room, ball.eps.to(x.dtype).reshape(n, 1))
    d = torch.sign(z) * torch.minimum((a - theta).clamp(min=0), room)
    return (c + d).reshape(x.shape).clamp(ball.lo, ball.hi)


def _l1_box_threshold(a: Tensor, room: Tensor, eps: Tensor, iters: int = 30) -> Tensor:
    """The theta >= 0 with sum_i min(max(a_i - theta, 0), room_i) = eps (0 if the sum at 0 is within eps).

    The sum falls piecewise linearly in theta; bisection (cheap elementwise passes, where a
    sort of the 2d breakpoints costs more on CPU) brackets theta, and the linear piece at the
    bracket's upper end gives it exactly unless a breakpoint lies inside the tiny bracket.
    """

    buf = torch.empty_like(a)  # reused: fresh allocations dominate the cost of these cheap passes

    def used(theta: Tensor) -> Tensor:
        torch.sub(a, theta, out=buf).clamp_(min=0)
        return torch.minimum(buf, room, out=buf).sum(1, keepdim=True)

    lo = torch.zeros_like(eps)
    hi = a.max(1, keepdim=True).values
    need = used(lo) > eps
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        over = used(mid) > eps
        lo = torch.where(over, mid, lo)
        hi = torch.where(over, hi, mid)
    moving = ((a > hi) & (a - room < hi)).sum(1, keepdim=True)  # slope of the sum just below hi
    exact = hi - (eps - used(hi)) / moving.clamp(min=1)
    theta = torch.where((moving > 0) & (exact >= lo) & (exact <= hi), exact, hi)  # the feasible end otherwise
    return torch.where(need, theta, torch.zeros_like(theta))


def _bad_coordinates(p64: LpBall, x: Tensor) -> Tensor:
    x64 = x.to(torch.float64)
    bad = (x64 < p64.lo) | (x64 > p64.hi)
    if math.isinf(p64.p):
        eps = p64.eps.reshape((-1,) + (1,) * (x.ndim - 1))
        bad |= (x64 - p64.center).abs() > eps
    return bad


# --------------------------------------------------------------------------- PGD


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    fy = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], -math.inf)
    return other.max(1).values - fy


def _flat_norm(g: Tensor, p: float) -> Tensor:
    norms: Tensor = g.reshape(g.shape[0], -1).norm(p=p, dim=1)
    return norms.reshape((-1,) + (1,) * (g.ndim - 1))


def ascent_direction(g: Tensor, x: Tensor, ball: LpBall | Box, l1_coordinates: int = 1) -> Tensor:
    """The steepest-ascent step of unit p-norm for gradient g at x (Linf: sign; L2: normalised;
    L1: the signs of the ``l1_coordinates`` largest |g_i| among coordinates the box lets move)."""
    if isinstance(ball, Box) or math.isinf(ball.p):
        return g.sign()
    if ball.p == 2.0:
        return g / _flat_norm(g, 2.0).clamp(min=1e-12)
    n = g.shape[0]
    gf, xf = g.reshape(n, -1), x.reshape(n, -1)
    # a coordinate pushed against the box cannot move: spending budget on it is wasted
    stuck = ((xf <= ball.lo) & (gf < 0)) | ((xf >= ball.hi) & (gf > 0))
    score = gf.abs().masked_fill(stuck, 0.0)
    k = min(max(1, l1_coordinates), gf.shape[1])
    top = score.topk(k, dim=1)
    e = torch.zeros_like(gf)
    e.scatter_(1, top.indices, torch.sign(gf.gather(1, top.indices)) * (top.values > 0))
    e = e / e.abs().sum(1, keepdim=True).clamp(min=1.0)
    return e.reshape(g.shape)


class Leg(NamedTuple):
    """One run of :func:`ascend` on some rows: starts, set (their rows of an LpBall, or a Box that
    broadcasts), objective (points -> (values to maximise (B,), the loss to differentiate)), step length."""

    x: Tensor
    pset: LpBall | Box
    objective: Callable[[Tensor], tuple[Tensor, Tensor]]
    size: Callable[[int], Tensor]  # step t -> (B, 1, ...) or broadcastable


def ascend(n: int, leg: Callable[[int, Tensor], Leg], success: Callable[[Tensor], Tensor], best_x: Tensor, *,
           steps: int, restarts: int = 1, l1_coordinates: int = 1, stop_on_success: bool = False,
           sign_steps: bool = False, deadline: float = math.inf) -> tuple[Tensor, Tensor, Tensor]:
    """The one projected-gradient loop: :func:`ascent_direction` steps (``sign_steps``: the gradient's sign
    whatever the set) projected into the set, keeping
    per row the point of largest objective over all steps and restarts (from ``best_x``). ``leg(r, rows)``
    sets up restart r (all rows, then those whose best value is no ``success``); ``stop_on_success``
    ends at the first. ``success`` sees values only: callers re-check reported points in float64.
    Returns the best points, their values and the steps run per row."""
    best_v = best_x.new_full((n,), -math.inf, dtype=best_x.dtype)
    ran = torch.zeros(n, dtype=torch.long)
    for r in range(restarts):
        idx = torch.arange(n, device=best_v.device) if r == 0 else (~success(best_v)).nonzero()[:, 0]
        if idx.numel() == 0:
            break
        run = leg(r, idx)
        x = run.x
        for t in range(steps + 1):
            if time.perf_counter() > deadline:
                break
            x = x.detach().requires_grad_(True)
            v, loss = run.objective(x)
            better = v.detach() > best_v[idx]
            best_v[idx[better]] = v.detach()[better]
            best_x[idx[better]] = x.detach()[better]
            if t == steps or (stop_on_success and bool(success(v.detach()).any())):
                break
            (g,) = torch.autograd.grad(loss, x)
            step = g.sign() if sign_steps else ascent_direction(g, x.detach(), run.pset, l1_coordinates)
            x = project(run.pset, x.detach() + run.size(t) * step)
            ran[idx.cpu()] += 1
    return best_x, best_v, ran


def descend(net: Classifier, pset: LpBall | Box, x0: Tensor, violation: Callable[[Tensor], Tensor], width: Tensor, *,
            steps: int, deadline: float = math.inf) -> tuple[Tensor, Tensor]:
    """Projected sign-gradient descent on ``violation`` of the flattened outputs (B,) -- per start a disjunct's
    max_i (C_i y - d_i) -- from ``x0`` (B, *input_shape) inside ``pset`` (its rows, or a box that broadcasts):
    :func:`ascend` on minus it, stopping at the first point where it is <= 0, with sign steps whatever the set
    and the usual PGD step (2.5 * half-width / steps: 1.25 * ``width`` / steps), halved for the last quarter.
    Returns the best point and its violation per start; :func:`confirm_best` re-checks them."""
    def leg(_: int, rows: Tensor) -> Leg:  # one leg: every start in one batch
        def objective(z: Tensor) -> tuple[Tensor, Tensor]:
            neg = -violation(net.forward(z).reshape(z.shape[0], -1))
            return neg, neg.sum()
        return Leg(x0, pset, objective, lambda t: 1.25 * width / max(1, steps) * (0.5 if t > 0.75 * steps else 1.0))

    with torch.enable_grad():
        best_x, neg, _ = ascend(x0.shape[0], leg, lambda v: v >= 0, x0.clone(), steps=steps, stop_on_success=True,
                                sign_steps=True, deadline=deadline)
    return best_x, -neg


def confirm_best(x: Tensor, v: Tensor, confirm: Callable[[Tensor], tuple[Tensor, int] | None], *,
                 limit: int | None = None, scale: Tensor | None = None) -> tuple[Tensor, int] | None:
    """The first of the points ``x`` (B, *input_shape), in order of violation ``v`` (B,), that ``confirm``
    (:func:`verify.query.confirm_point` on the caller's query) accepts, trying at most ``limit`` and only
    those whose violation is (nearly) non-positive: <= 1e-9 (1 + ``scale``), ``scale`` |v| by default."""
    tol = 1e-9 * (1.0 + (v.abs() if scale is None else scale))
    for i in torch.argsort(v)[:limit].tolist():
        if float(v[i]) <= float(tol[i]):
            found = confirm(x[i : i + 1].detach().clone())
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class PGD(Attack):
    """Projected gradient ascent on the margin (or cross-entropy) loss.

    Steps: sign of the gradient (Linf), the L2-normalised gradient (L2), or for L1 the
    signs of the ``l1_sparsity`` fraction of coordinates with the largest |gradient|,
    ignoring coordinates the box stops from moving, L1-normalised (the sparse steepest
    ascent of Tramer & Boneh 2019 and Croce & Hein 2021). ``step_size`` defaults to
    2.5 * eps / steps; ``schedule="decay"`` halves it after 50% and 75% of the steps.
    Keeps, per example, the point with the largest margin over all steps and restarts;
    restarts after the first only run on examples not yet misclassified.
    """

    steps: int = 40
    restarts: int = 1
    step_size: float | None = None  # absolute; None: 2.5 * eps / steps (per example)
    random_start: bool = True  # False: the first restart starts at the centre, later ones at random
    loss: LossName = "margin"
    schedule: Schedule = "constant"
    l1_sparsity: float = 0.01
    seed: int = 0
    batch_size: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise SpecError(f"PGD needs steps >= 1, got {self.steps!r}")
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise SpecError(f"PGD needs restarts >= 1, got {self.restarts!r}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size >= 0):
            raise SpecError(f"step size must be a finite number >= 0, got {self.step_size!r}")
        if self.loss not in ("margin", "ce"):
            raise SpecError(f"unknown attack loss {self.loss!r}: use margin or ce")
        if self.schedule not in ("constant", "decay"):
            raise SpecError(f"unknown step schedule {self.schedule!r}: use constant or decay")
        if not 0.0 < self.l1_sparsity <= 1.0:
            raise SpecError(f"l1_sparsity must lie in (0, 1], got {self.l1_sparsity!r}")
        if self.batch_size < 1:
            raise SpecError(f"batch_size must be >= 1, got {self.batch_size!r}")

    def run(self, net: Classifier, pset: LpBall, labels: Tensor, keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        keys, b = _keys(keys, pset.n), self.batch_size
        runs = [self._run_batch(net, pset.select(torch.arange(s, min(pset.n, s + b), device=pset.center.device)),
                                labels[s:s + b], keys[s:s + b]) for s in range(0, pset.n, b)]
        return torch.cat([x for x, _ in runs]), torch.cat([n for _, n in runs])

    def _run_batch(self, net: Classifier, ball: LpBall, y: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        def leg(r: int, idx: Tensor) -> Leg:
            sub, ys = ball.select(idx), y[idx]
            x = self._start(sub, keys[idx.cpu()], r, random=self.random_start or r > 0)
            step = x.new_full((sub.n,), self.step_size) if self.step_size is not None else 2.5 * sub.eps.to(x.dtype) / self.steps
            base = step.reshape((-1,) + (1,) * (x.ndim - 1))

            def objective(z: Tensor) -> tuple[Tensor, Tensor]:
                logits = net.forward(z)
                m = _margin(logits, ys)
                return m, m.sum() if self.loss == "margin" else F.cross_entropy(logits, ys, reduction="sum")
            return Leg(x, sub, objective, lambda t: (1.0 if self.schedule == "constant" or t < self.steps // 2
                                                     else 0.5 if t < (3 * self.steps) // 4 else 0.25) * base)

        k_l1 = int(round(self.l1_sparsity * math.prod(ball.center.shape[1:])))
        best_x, _, steps = ascend(ball.n, leg, lambda m: m > 0, ball.center.clone(), steps=self.steps,
                                  restarts=self.restarts, l1_coordinates=k_l1)
        return best_x, steps

    def _start(self, ball: LpBall, keys: Tensor, restart: int, random: bool) -> Tensor:
        c = ball.center
        if not random:
            return c.clone()
        # one CPU generator per example, seeded by (seed, key, restart), and moved: the same start
        # for an example whatever else is in the call, and on every device
        d = torch.stack([self._offset(c.shape[1:], example_generator(self.seed, int(k), restart), ball.p, c.dtype)
                         for k in keys.tolist()]).to(c.device) if c.shape[0] else torch.zeros_like(c)
        eps = ball.eps.to(c.dtype).reshape((-1,) + (1,) * (c.ndim - 1))
        return project(ball, c + d * eps)

    @staticmethod
    def _offset(shape: torch.Size, gen: torch.Generator, p: float, dtype: torch.dtype) -> Tensor:
        """A random point of the unit Lp ball: uniform in the box for Linf; a random radius in a
        random direction (Gaussian for L2, signed Laplace for L1) otherwise."""
        def rand(sh: torch.Size | tuple[int, ...], fn: Callable[..., Tensor] = torch.rand) -> Tensor:
            return fn(sh, generator=gen, dtype=dtype, device="cpu")

        radius = rand((1,))
        if math.isinf(p):
            return 2 * rand(shape) - 1
        if p == 2.0:
            d = rand(shape, torch.randn)
            norm: Tensor = torch.linalg.vector_norm(d)
            return d / norm.clamp(min=1e-12) * radius
        d = -rand(shape).clamp(min=1e-12).log()
        d = d * torch.sign(rand(shape) - 0.5)
        return d / d.abs().sum().clamp(min=1e-12) * radius


@dataclass(frozen=True)
class FGSM(Attack):
    """One full step from the centre: eps * sign(grad) for Linf (Goodfellow et al.), the normalised
    gradient for L2, and for L1 the single coordinate with the largest |gradient| (the L1 steepest ascent)."""

    loss: LossName = "ce"

    def run(self, net: Classifier, pset: LpBall, labels: Tensor, keys: Tensor | None = None) -> tuple[Tensor, int]:
        if self.loss not in ("margin", "ce"):
            raise SpecError(f"unknown attack loss {self.loss!r}: use margin or ce")
        x = pset.center.detach().clone().requires_grad_(True)
        logits = net.forward(x)
        loss = _margin(logits, labels).sum() if self.loss == "margin" else F.cross_entropy(logits, labels, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        step = ascent_direction(g, pset.center, pset, 1)
        eps = pset.eps.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return project(pset, pset.center + eps * step), 1


# --------------------------------------------------------------------------- functions


def pgd_attack(
    net: Classifier,
    pset: LpBall,
    labels: Tensor | Sequence[int] | np.ndarray,
    *,
    steps: int = 40,
    restarts: int = 1,
    step_size: float | None = None,
    random_start: bool = True,
    loss: LossName = "margin",
    seed: int = 0,
    schedule: Schedule = "constant",
    l1_sparsity: float = 0.01,
    keys: Tensor | Sequence[int] | np.ndarray | None = None,
) -> AttackResult:
    """PGD in the set ``pset`` (see :class:`PGD`); successes are float64-confirmed counterexamples.
    ``keys`` (one per example, e.g. its index in the data set) fix each example's random starts."""
    attack = PGD(steps=steps, restarts=restarts, step_size=step_size, random_start=random_start, loss=loss,
                 schedule=schedule, l1_sparsity=l1_sparsity, seed=seed)
    return attack(net, pset, labels, keys=keys)


def fgsm(net: Classifier, pset: LpBall, labels: Tensor | Sequence[int] | np.ndarray, *, loss: LossName = "ce") -> AttackResult:
    """One-step attack for adversarial training (see :class:`FGSM`)."""
    return FGSM(loss=loss)(net, pset, labels)
