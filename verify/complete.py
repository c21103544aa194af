"""The complete stage: one entry point that decides a :class:`verify.query.Query` exactly.

Engines (``--complete``):

* ``mip``  -- the MIP on HiGHS (:func:`verify.mip.highs.solve_query`, one loop over the disjuncts
  of any query) or on MIPVerify.jl (robustness only), behind the small :class:`MipBackend` protocol;
* ``bab``  -- branch and bound on the bound engine (:mod:`verify.bab`);
* ``auto`` -- a portfolio: the MIP alone where its model is small (few unstable ReLUs after
  the bounds, where HiGHS decides in well under a second) or has MaxPool, otherwise branch and
  bound first with three quarters of the time, then the MIP with what is left.

Each returns one :class:`verify.results.Verdict` (``margin_lb``: a proven lower bound on min over the
disjuncts of their violation max_i (C_i y - d_i) over the set -- robustness: on the worst margin --
when the engine has one; ``seconds``: per engine that ran, ``auto`` may run both); ``verified``
only from a sound proof (a MIP proof or branch-and-bound bounds above the safety margin),
``falsified`` only with a point that :func:`verify.query.confirm_point` accepted. The adapters
(``certify``, ``vnnlib``, the batch runner) build the Query and read the Verdict; nothing else
calls an engine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from .bab import BabOptions, bab
from .bounds import alpha_intermediate, certify_rows
from .bounds.certify import proven_rows
from .bounds.final import alpha_rows
from .bounds.types import NodeBounds
from .errors import SpecError, UnsupportedLayerError
from .mip.highs import HighsOptions, solve_query
from .network import MaxPool2d, Network
from .query import Query
from .results import Verdict

Engine = Literal["auto", "bab", "mip"]
ENGINES: tuple[str, ...] = ("auto", "bab", "mip")

# auto: the MIP alone when the bounds leave at most this many unstable ReLUs (its model then has
# at most that many binaries and HiGHS decides it in well under a second), else BaB first
AUTO_MIP_MAX_UNSTABLE = 40
# auto: the share of the time limit branch and bound gets before the MIP takes over the rest. Measured
# (benchmarks/complete.py, first 10 MNIST points, 20 s): on the plain 784-256x2 net at eps 0.02 and the
# certified 784-500-10 net at eps 0.1, branch and bound decided every complete-stage instance the MIP did, and
# more (in 0.4-14 s, vs the MIP's 8-19 s); the MIP keeps the last quarter for what branch and bound leaves
AUTO_BAB_SHARE = 0.75


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise SpecError(f"unknown complete engine {engine!r}: use {', '.join(ENGINES)}")


class MipBackend(Protocol):
    """An exact MIP solve of one query before ``deadline`` (``time.perf_counter()`` seconds).

    ``bounds``: float64 bounds on the query's single example (big-M values); ``row_lb``: proven
    lower bounds per disjunct (robustness: per target class) that let it skip proven ones;
    ``warm``: an input point to warm-start from (e.g. the attack's best)."""

    def __call__(self, net: Network, query: Query, *, deadline: float, bounds: NodeBounds | None,
                 row_lb: np.ndarray | None, warm: Tensor | None) -> Verdict: ...


@dataclass(frozen=True)
class HighsBackend:
    """The MIP on HiGHS: each open disjunct minimised on one model, or one indicator MIP over them."""

    threads: int = 1
    mode: Literal["per-disjunct", "indicator"] = "per-disjunct"

    def __call__(self, net: Network, query: Query, *, deadline: float, bounds: NodeBounds | None,
                 row_lb: np.ndarray | None, warm: Tensor | None) -> Verdict:
        return solve_query(net, query, deadline=deadline, bounds=bounds, row_lb=row_lb, warm=warm,
                           options=HighsOptions(threads=self.threads, mode=self.mode))


@dataclass(frozen=True)
class MipVerifyBackend:
    """MIPVerify.jl through juliacall (robustness queries only; it tightens its own bounds)."""

    threads: int = 1

    def __call__(self, net: Network, query: Query, *, deadline: float, bounds: NodeBounds | None,
                 row_lb: np.ndarray | None, warm: Tensor | None) -> Verdict:
        if query.label is None:
            raise UnsupportedLayerError("MIPVerify.jl decides robustness queries only; use the HiGHS MIP")
        from .mip import mipverify

        left = max(1e-3, deadline - time.perf_counter())
        return mipverify.solve(net, query.input_set, query.label, 0, time_limit=left, threads=self.threads)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DisjunctBounds:
    """The bound stage on a query, per disjunct: a lower bound on its violation max_i (C_i y - d_i)
    over the set (-inf for a disjunct without rows) and whether it is proven empty (some row's float64
    bound above :func:`verify.bounds.certify.row_threshold`); the float64 node bounds (1, *shape) the
    bounds used (the MIP's big-M values, branch and bound's start) and the method that gave them."""

    violation_lb: np.ndarray  # (K,) float64
    proven: np.ndarray  # (K,) bool
    intermediate: NodeBounds
    method: Literal["crown", "interval"]

    def row_lb(self) -> np.ndarray:
        """``row_lb`` for a :class:`MipBackend`: the bound where proven (> 0: skipped), else at most 0."""
        return np.where(self.proven, self.violation_lb, np.minimum(self.violation_lb, 0.0))


def disjunct_bounds(net: Network, query: Query, *, alpha_steps: int = 0, deadline: float = math.inf) -> DisjunctBounds:
    """Bounds on every row C_i y - d_i of every disjunct: :func:`verify.bounds.certify_rows` with CROWN
    (interval bounds where the network has MaxPool, which the backward engine does not take), in float64
    throughout (one input set, no float32 screen, and the complete stage needs the float64 node bounds).
    A disjunct is proven empty when one of its rows is. ``alpha_steps`` > 0 (CROWN only): the node bounds
    and then the rows tightened by alpha-CROWN until ``deadline``, each row keeping the better of the two
    sound bounds, decided again by the same rule (:func:`verify.bounds.certify.proven_rows`)."""
    method: Literal["crown", "ibp"] = "ibp" if any(isinstance(n.op, MaxPool2d) for n in net.graph) else "crown"
    s = query.input_set.to(torch.float64)
    C, d, owner = query.rows()
    if not len(d):  # no rows at all: one vacuous row (d = -inf), for the node bounds
        C, d = torch.zeros((1, net.n_classes), dtype=torch.float64), torch.full((1,), -math.inf, dtype=torch.float64)
    C, d = C.unsqueeze(0), d.unsqueeze(0)
    with torch.no_grad():  # a Box is an input set to the bound code, whose annotations name only LpBall
        rows = certify_rows(net, s, C, d, method=method, float64=True)  # type: ignore[arg-type]
    assert rows.intermediate is not None
    low, proven, bounds = rows.lower, rows.proven, rows.intermediate
    if alpha_steps > 0 and method == "crown":
        bounds = alpha_intermediate(net, s, bounds, steps=alpha_steps, deadline=deadline)  # type: ignore[arg-type]
        alpha, _ = alpha_rows(net, s, C, bounds, steps=alpha_steps, deadline=deadline)  # type: ignore[arg-type]
        low = torch.maximum(low, alpha.detach() - d)  # both sound
        proven = proven_rows(net, s, C, d, low)  # type: ignore[arg-type]
    k, own = len(query.disjuncts), owner.numpy()
    viol, ok = np.full(k, -math.inf), np.zeros(k, dtype=bool)
    np.maximum.at(viol, own, low[0, :len(own)].numpy())
    np.logical_or.at(ok, own, proven[0, :len(own)].numpy())
    return DisjunctBounds(viol, ok, bounds, "interval" if method == "ibp" else "crown")


def unstable_count(bounds: NodeBounds | None, net: Network) -> int | None:
    """ReLU inputs whose bounds straddle zero (the MIP's binaries before its own tightening)."""
    if bounds is None:
        return None
    total = 0
    for node in net.relu_nodes:
        b = bounds.get(node.inputs[0])
        if b is None:
            return None
        total += int(((b[0] < 0) & (b[1] > 0)).sum())
    return total


def decide(net: Network, query: Query, *, engine: Engine, deadline: float, mip: MipBackend,
           bounds: NodeBounds | None = None, row_lb: np.ndarray | None = None, warm: Tensor | None = None,
           bab_options: BabOptions | None = None, progress: Callable[[dict[str, Any]], None] | None = None) -> Verdict:
    """Decide ``query`` with ``engine`` before ``deadline`` (see the module docstring)."""
    check_engine(engine)
    if engine == "mip":
        return mip(net, query, deadline=deadline, bounds=bounds, row_lb=row_lb, warm=warm)
    if engine == "bab":
        return _bab(net, query, deadline=deadline, bounds=bounds, options=bab_options, progress=progress)
    n_unstable = unstable_count(bounds, net)
    if n_unstable is not None and n_unstable <= AUTO_MIP_MAX_UNSTABLE:
        return mip(net, query, deadline=deadline, bounds=bounds, row_lb=row_lb, warm=warm)
    if any(isinstance(n.op, MaxPool2d) for n in net.graph):  # branch and bound has no MaxPool splitting
        return mip(net, query, deadline=deadline, bounds=bounds, row_lb=row_lb, warm=warm)
    t0 = time.perf_counter()
    first = _bab(net, query, deadline=t0 + AUTO_BAB_SHARE * (deadline - t0), bounds=bounds, options=bab_options,
                 progress=progress)
    if first.status != "unknown" or time.perf_counter() >= deadline:
        return first
    try:
        second = mip(net, query, deadline=deadline, bounds=bounds, row_lb=row_lb, warm=warm)
    except UnsupportedLayerError:
        return first
    return replace(second, margin_lb=second.margin_lb if second.margin_lb is not None else first.margin_lb,
                   domains=first.domains, max_queue=first.max_queue, seconds={**first.seconds, **second.seconds})


def _bab(net: Network, query: Query, *, deadline: float, bounds: NodeBounds | None, options: BabOptions | None,
         progress: Callable[[dict[str, Any]], None] | None) -> Verdict:
    # the deadline is the limit: an options object's own timeout must not cut it shorter
    opts = replace(options if options is not None else BabOptions(), timeout=math.inf)
    try:
        return bab(net, query, options=opts, deadline=deadline, initial_bounds=bounds, progress=progress)
    except UnsupportedLayerError as e:  # e.g. MaxPool: no ReLU splitting through it
        return Verdict("unknown", reason=f"branch and bound: {e}", seconds={"bab": 0.0})

__all__ = ["AUTO_BAB_SHARE", "AUTO_MIP_MAX_UNSTABLE", "DisjunctBounds", "ENGINES", "Engine", "HighsBackend",
           "MipBackend", "MipVerifyBackend", "check_engine", "decide", "disjunct_bounds", "unstable_count"]
