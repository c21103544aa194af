"""General output properties: an input box and a disjunction of linear output constraints.

A property describes an UNSAFE region (as VNNLIB does): some input in the box whose
outputs y satisfy every row of at least one :class:`Disjunct` ``C y <= d``. The answer is a
:class:`verify.results.Verdict` (VNN-COMP's words in brackets, :func:`verify.vnncomp.vnn_status`):

* ``falsified`` (sat) -- a counterexample: a point inside the box (checked in float64, exactly)
  whose float64 forward pass satisfies one disjunct (``C y <= d``: the boundary counts);
* ``verified`` (unsat) -- a proof that no such point exists: for every disjunct, some row has a
  lower bound on ``C_i y - d_i`` above a float safety margin (computed in float64 by the backward
  engine on the output node, spec A = the rows of C), or the complete stage proved the remaining
  disjuncts empty (:func:`verify.complete.decide`);
* ``unknown`` with a reason otherwise (timeout: a reason starting with "timeout").

:class:`Box` is the per-coordinate input set. It offers the interface the bound engine,
the interval bounds and the MIP formulation read from a perturbation set (``box``,
``min_linear``, ``select``, ``to``, ``contains``, ``project``, ``center``, ``p``), so the
one implementation of bound propagation serves properties too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .attacks import confirm_best, descend
from .errors import SpecError, UnsupportedLayerError
from .complete import Engine, HighsBackend, check_engine, decide, disjunct_bounds
from .network import Network
from .query import Disjunct, Query, confirm_point, outputs_f64
from .results import Stage, Status, Verdict
from .spec import Box, LpBall, representable_point

MipMode = Literal["per-disjunct", "indicator"]
MIP_MODES: tuple[str, ...] = ("per-disjunct", "indicator")
ATTACK_CHUNK = 64  # disjuncts attacked in one batch


# --------------------------------------------------------------------------- the property


@dataclass(frozen=True, eq=False)
class OutputProperty:
    """An input box [lower, upper] (flattened, float64) and the unsafe disjuncts over the outputs."""

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: tuple[Disjunct, ...]
    n_outputs: int

    @property
    def n_inputs(self) -> int:
        return int(self.lower.shape[0])

    def check_network(self, net: Network) -> None:
        """The property's variables must match the network's flattened input and output."""
        n_in, n_out = int(np.prod(net.input_shape)), int(np.prod(net.output_shape))
        if self.n_inputs != n_in:
            raise SpecError(f"the property declares {self.n_inputs} inputs X_i, the network has {n_in} "
                            f"(input shape {tuple(net.input_shape)})")
        if self.n_outputs != n_out:
            raise SpecError(f"the property declares {self.n_outputs} outputs Y_j, the network has {n_out}")

    def box(self, net: Network) -> "Box":
        self.check_network(net)
        shape = (1, *net.input_shape)
        return Box.make(self.lower.reshape(shape), self.upper.reshape(shape))

    def satisfied_by(self, y: np.ndarray) -> int | None:
        """The first disjunct the float64 outputs ``y`` satisfy, or None."""
        return next((k for k, dj in enumerate(self.disjuncts) if dj.holds(y)), None)


# --------------------------------------------------------------------------- attack


def attack_property(
    net: Network,
    query: Query,
    *,
    steps: int = 50,
    restarts: int = 3,
    seed: int = 0,
    starts: Tensor | None = None,
    deadline: float = math.inf,
) -> tuple[tuple[Tensor, int] | None, Tensor]:
    """Projected sign-gradient descent on each disjunct's violation max_i (C_i y - d_i), in float64
    (:func:`verify.attacks.descend`, stopping at the first row that reaches 0), re-checked by
    :func:`verify.query.confirm_point` (:func:`verify.attacks.confirm_best`).

    Every disjunct gets ``restarts`` runs (the first from the set's centre, or from ``starts``
    when given; the rest from uniform random points of its box). Returns (a confirmed counterexample
    and its disjunct, or None; the best point found for each disjunct (K, *input_shape), complete when
    there is no counterexample) -- the best points warm start the MIP.
    """
    k = len(query.disjuncts)
    shape = tuple(net.input_shape)
    s = query.input_set.to(torch.float64)
    lo, hi = (t[0] for t in s.box())
    if k == 0:
        return None, torch.zeros((0, *shape), dtype=torch.float64)
    if k > ATTACK_CHUNK:  # many disjuncts: a chunk at a time keeps the batch (and memory) bounded
        bests = []
        for c0 in range(0, k, ATTACK_CHUNK):
            found, best = attack_property(net, Query(s, query.disjuncts[c0:c0 + ATTACK_CHUNK]), steps=steps,
                                          restarts=restarts, seed=seed, starts=starts, deadline=deadline)
            if found is not None:
                return (found[0], found[1] + c0), best
            bests.append(best)
        return None, torch.cat(bests)
    if any(len(dj.d) == 0 for dj in query.disjuncts):  # a disjunct without rows holds everywhere
        return confirm_point(net, query, s.center), s.center.expand(k, *shape).clone()
    C = torch.zeros((k, max(len(dj.d) for dj in query.disjuncts), query.disjuncts[0].C.shape[1]), dtype=torch.float64)
    d, mask = C.new_zeros(C.shape[:2]), torch.zeros(C.shape[:2], dtype=torch.bool)  # disjuncts padded to M rows
    for i, dj in enumerate(query.disjuncts):
        C[i, :len(dj.d)], d[i, :len(dj.d)], mask[i, :len(dj.d)] = torch.as_tensor(dj.C), torch.as_tensor(dj.d), True
    gen = torch.Generator().manual_seed(seed)
    r = max(1, restarts)
    x = lo + (hi - lo) * torch.rand((k, r, *shape), generator=gen, dtype=torch.float64)
    x[:, 0] = s.center[0] if starts is None else s.project(starts.reshape(-1, *shape)).expand(k, *shape)
    x = x.reshape(k * r, *shape)
    Cr, dr, mr = (t.repeat_interleave(r, 0) for t in (C, d, mask))

    def violation(y: Tensor) -> Tensor:
        v = torch.einsum("rmo,ro->rm", Cr, y) - dr
        return torch.where(mr, v, torch.full_like(v, -math.inf)).amax(1)

    pset = s.select([0] * (k * r)) if isinstance(s, LpBall) else s
    best_x, viol = descend(net, pset, x, violation, (hi - lo).expand_as(x), steps=steps, deadline=deadline)
    per = viol.reshape(k, r)
    best = best_x.reshape(k, r, *shape)[torch.arange(k), per.argmin(1)]
    found = confirm_best(best, per.min(1).values, lambda z: confirm_point(net, query, z), scale=d.abs().amax(1))
    return found, best


# --------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class VerifyOptions:
    """What :func:`verify_property` runs. ``timeout`` covers every stage (seconds)."""

    timeout: float = 120.0
    attack_steps: int = 50
    attack_restarts: int = 3
    mip: bool = True  # False: no complete stage (bounds only)
    mode: MipMode = "per-disjunct"
    complete: Engine = "auto"
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise SpecError(f"timeout must be positive, got {self.timeout}")
        check_engine(self.complete)
        if self.mode not in MIP_MODES:
            raise SpecError(f"unknown MIP mode {self.mode!r}: use {' or '.join(MIP_MODES)}")
        if self.attack_steps < 0 or self.attack_restarts < 1:
            raise SpecError("attack steps must be >= 0 and restarts >= 1")


def verify_property(net: Network, prop: OutputProperty, options: VerifyOptions = VerifyOptions()) -> Verdict:
    """Attack, then bounds, then the MIP over the open disjuncts; see the module docstring."""
    t0 = time.perf_counter()
    deadline = t0 + options.timeout
    box = prop.box(net)
    query = Query(box, prop.disjuncts)
    k = len(prop.disjuncts)
    sec: dict[str, float] = {}

    def done(status: Status, by: Stage | None, reason: str | None = None,
             found: tuple[Tensor, int] | None = None, open_disjuncts: int = 0, **kw: Any) -> Verdict:
        x, j = found if found is not None else (None, None)
        return Verdict(status, by, reason, x, seconds=sec, disjunct=j, outputs=None if x is None else outputs_f64(net, x),
                       n_disjuncts=k, open_disjuncts=open_disjuncts, **kw)

    if k == 0:
        return done("verified", "trivial", "no disjunct can hold (a constant comparison is false in each)")
    t = time.perf_counter()
    found, best = attack_property(net, query, steps=options.attack_steps, restarts=options.attack_restarts,
                                  seed=options.seed, deadline=deadline)
    sec["attack"] = time.perf_counter() - t
    if found is not None:
        return done("falsified", "attack", found=found)
    if time.perf_counter() > deadline:
        return done("unknown", None, "timeout in the attack")
    t = time.perf_counter()
    pb = disjunct_bounds(net, query)
    sec["bounds"] = time.perf_counter() - t
    open_k = [i for i in range(k) if not pb.proven[i]]
    if not open_k:
        return done("verified", pb.method)
    if time.perf_counter() > deadline:
        return done("unknown", None, "timeout in the bounds", open_disjuncts=len(open_k))
    if not options.mip:
        return done("unknown", None, "bounds inconclusive and the MIP is off", open_disjuncts=len(open_k))
    t = time.perf_counter()
    # closest to a counterexample first (by the attack's best point, which also warm-starts that MIP)
    with torch.no_grad():
        ys = net.forward(best.to(torch.float64)).reshape(len(best), -1).numpy()
    order = sorted(open_k, key=lambda i: prop.disjuncts[i].violation(ys[i]))
    sub = Query(box, tuple(prop.disjuncts[i] for i in order))
    try:
        res = decide(net, sub, engine=options.complete, deadline=deadline, bounds=pb.intermediate,
                     mip=HighsBackend(threads=options.threads, mode=options.mode), warm=best[order])
    except UnsupportedLayerError as e:
        sec["complete"] = time.perf_counter() - t
        return done("unknown", None, f"complete stage: {e}", open_disjuncts=len(open_k))
    sec.update(res.split(time.perf_counter() - t))
    extra: dict[str, Any] = {"open_disjuncts": len(open_k), "n_binaries": res.n_binaries, "domains": res.domains}
    if res.status == "falsified" and res.counterexample is not None:
        # polish: a few descent steps from the engine's point move it away from the boundary
        t = time.perf_counter()
        polished, _ = attack_property(net, query, steps=20, restarts=1, starts=res.counterexample, deadline=math.inf)
        sec["polish"] = time.perf_counter() - t
        x0 = confirm_point(net, query, res.counterexample)
        pick = polished or x0
        if polished is not None and x0 is not None:
            pick = min((polished, x0), key=lambda f: prop.disjuncts[f[1]].violation(outputs_f64(net, f[0])))
        if pick is not None:
            return done("falsified", res.decided_by, found=pick, **extra)
        return done("unknown", None, "numerics: the counterexample fails the float64 check", **extra)
    if res.status == "verified":
        return done("verified", res.decided_by, **extra)
    return done("unknown", None, res.reason, **extra)


__all__ = ["Box", "Disjunct", "MIP_MODES", "OutputProperty", "VerifyOptions", "attack_property", "outputs_f64",
           "representable_point", "verify_property"]
