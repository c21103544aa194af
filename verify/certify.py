"""The per-example certification pipeline: clean -> PGD -> bounds (cheap to tight) -> complete stage.

The cheap stages run batched over all examples; the complete stage (:func:`verify.complete.decide`:
the MIP, branch and bound, or both) runs per example on the rest, each example as a
:meth:`verify.query.Query.robustness`. Each example ends with exactly one status (see
:class:`verify.results.Verdict`), and the summary follows the MMR paper's Table 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from .attacks import pgd_attack
from .complete import Engine, HighsBackend, MipBackend, MipVerifyBackend, check_engine, decide, disjunct_bounds
from .errors import SolverUnavailableError, SpecError
from .mip.lp_bound import certify_with_method
from .network import Network
from .query import Query
from .results import BOUND_METHODS, ROW_FIELDS, Stage, Status, Summary, Verdict, order_row, summarize
from .spec import LpBall, margins_f64


@dataclass(frozen=True)
class CertifyConfig:
    """What the pipeline runs. ``timeout`` is the MIP's limit per example in seconds."""

    p: float
    eps: float
    methods: tuple[str, ...] = ("ibp", "kw", "crown")
    attack_steps: int = 40
    attack_restarts: int = 1
    # before the MIP: a stronger PGD (more restarts and steps, step-size decay) on the few
    # examples the bounds left open; far cheaper than a MIP that has to find the same point
    strong_attack_restarts: int = 10
    strong_attack_steps: int = 100
    timeout: float = 120.0
    solver: Literal["highs", "mipverify"] = "highs"
    threads: int = 1
    no_mip: bool = False
    # bounds handed to the MIP as its starting big-M values: "crown", or "alpha-crown" (CROWN's
    # refined by optimised slopes per neuron, intermediate and final, with at most
    # mip_alpha_share of the example's MIP time limit). crown is the default: on the zoo's KW CNN
    # alpha-crown removes ~15% of the second layer's binaries but only ~3% of all (the first
    # layer's interval bounds are exact), costs ~4 s and made no MIP faster (examples 52/58/75)
    mip_bounds: Literal["crown", "alpha-crown"] = "crown"
    mip_alpha_steps: int = 20
    mip_alpha_share: float = 0.25
    # the complete stage (verify.complete): the MIP, branch and bound, or their portfolio
    complete: Engine = "auto"

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in BOUND_METHODS]
        if bad:
            raise SpecError(f"unknown bound method {bad[0]!r}: use {', '.join(BOUND_METHODS)}")
        if self.solver not in ("highs", "mipverify"):
            raise SpecError(f"unknown solver {self.solver!r}: use highs or mipverify")
        if not self.timeout > 0:
            raise SpecError(f"--timeout must be positive, got {self.timeout}")
        check_engine(self.complete)
        if self.mip_bounds not in ("crown", "alpha-crown"):
            raise SpecError(f"unknown MIP starting bounds {self.mip_bounds!r}: use crown or alpha-crown")


@dataclass
class _Pending:
    pos: int
    seconds: dict[str, float] = field(default_factory=dict)
    margin_lb: float | None = None
    margin_ub: float | None = None

    def lower(self, v: float | None) -> None:
        if v is not None and math.isfinite(v):
            self.margin_lb = v if self.margin_lb is None else max(self.margin_lb, v)

    def upper(self, v: float | None) -> None:
        if v is not None and not math.isnan(v):
            self.margin_ub = v if self.margin_ub is None else min(self.margin_ub, v)


class _Clock:
    """Per-example wall time: consecutive segments of the run, each split among the examples open in it.

    Every second from the start of :func:`certify` to the last verdict lands in exactly one
    segment, so the examples' times add up to the run's wall time. A batched stage is split
    by work (PGD: by the gradient steps each example ran; a bound method: equally, as every
    example costs the same there); a MIP segment belongs to its one example. Bookkeeping
    between stages (writing finished rows, the progress bar) is charged to the examples still open.
    """

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def charge(self, stage: str, open_: Sequence[_Pending], weights: Sequence[float] | None = None) -> None:
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        if not open_:
            return
        w = [float(v) for v in weights] if weights is not None else [1.0] * len(open_)
        total = sum(w)
        if not total > 0:
            w, total = [1.0] * len(open_), float(len(open_))
        for pp, wi in zip(open_, w):
            pp.seconds[stage] = pp.seconds.get(stage, 0.0) + dt * wi / total

    def split(self, pp: _Pending, out: Verdict) -> None:
        """One example's complete-stage segment, divided among the engines that ran (auto may run two)."""
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        for stage, v in out.split(dt).items():
            pp.seconds[stage] = pp.seconds.get(stage, 0.0) + v


def _mip_backend(config: CertifyConfig) -> MipBackend:
    if config.solver == "highs":
        return HighsBackend(threads=config.threads)
    try:
        from .mip import mipverify
    except ImportError as e:
        raise SolverUnavailableError(f"the mipverify backend is not available: {e}") from None
    ok, why = mipverify.available()  # fail before any work, not when the first example reaches the MIP
    if not ok:
        raise SolverUnavailableError(why)
    return MipVerifyBackend(threads=config.threads)


def certify(
    net: Network,
    pset: LpBall,
    labels: Tensor,
    indices: Sequence[int],
    config: CertifyConfig,
    *,
    progress: bool = True,
    on_result: Callable[[Verdict], None] | None = None,
) -> list[Verdict]:
    """Decide every example of ``pset``; ``indices`` are their positions in the data set (for reporting).

    Results are returned in the order of ``indices``; ``on_result`` sees each as soon as it
    is final (batched stages first, then MIP examples one by one). The examples' ``seconds``
    add up to this call's wall time (see :class:`_Clock` for how batched stages are split).
    """
    clock = _Clock()
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    n = pset.n
    if len(indices) != n or labels.numel() != n:
        raise SpecError(f"{n} examples but {len(indices)} indices and {labels.numel()} labels")
    solve = None if config.no_mip else _mip_backend(config)
    results: dict[int, Verdict] = {}
    pending = [_Pending(i) for i in range(n)]
    bar = _Bar(n, progress)

    def finish(pp: _Pending, status: Status, by: Stage | None, pred: int, **kw: Any) -> None:
        r = Verdict(status, by, margin_lb=pp.margin_lb, margin_ub=pp.margin_ub, seconds=dict(pp.seconds),
                    index=int(indices[pp.pos]), label=int(labels[pp.pos]), prediction=pred, **kw)
        results[pp.pos] = r
        bar.update(r)
        if on_result is not None:
            on_result(r)

    with torch.no_grad():
        preds = net.predict(pset.center.to(torch.float64))
    m = margins_f64(net, pset.center, labels)
    clock.charge("clean", pending)
    rest = []
    for pp in pending:
        pp.upper(-float(m[pp.pos]))
        # clean misclassification (or a tie) in float64: the centre itself is no proof of anything
        if m[pp.pos] >= 0:
            finish(pp, "misclassified", "clean", int(preds[pp.pos]))
        else:
            rest.append(pp)
    pending = rest

    warm: dict[int, Tensor] = {}

    def attack_stage(todo: list[_Pending], steps: int, restarts: int, schedule: str, seed: int) -> list[_Pending]:
        """PGD on the open examples: float64-confirmed counterexamples finish them, best points warm the MIP."""
        if not todo or steps <= 0 or restarts <= 0 or not float(pset.eps.max()) > 0:
            return todo
        idx = [pp.pos for pp in todo]
        # keyed by data-set index: an example's random starts, and so its verdict, do not depend on
        # the batch it came in (-n, --shard, --workers and --indices runs agree)
        att = pgd_attack(net, pset.select(idx), labels[idx], steps=steps, restarts=restarts,
                         schedule=schedule, seed=seed, keys=[int(indices[i]) for i in idx])  # type: ignore[arg-type]
        # each example's share: one forward pass per step it ran, plus the final check
        clock.charge("pgd", todo, [float(s) + 1.0 for s in att.example_steps.tolist()])
        left = []
        for k, pp in enumerate(todo):
            warm[pp.pos] = att.x_adv[k : k + 1]
            pp.upper(-float(att.margin[k]))
            if bool(att.success[k]):
                finish(pp, "falsified", "pgd", int(preds[pp.pos]), counterexample=att.x_adv[k : k + 1])
            else:
                left.append(pp)
        return left

    pending = attack_stage(pending, config.attack_steps, config.attack_restarts, "constant", 0)

    for method in config.methods:
        if not pending:
            break
        idx = [pp.pos for pp in pending]
        cb = certify_with_method(net, pset.select(idx), labels[idx], method=method)  # type: ignore[arg-type]
        clock.charge(method, pending)
        rest = []
        for k, pp in enumerate(pending):
            pp.lower(float(cb.margin_lb[k]))
            if bool(cb.certified[k]):
                finish(pp, "verified", method, int(preds[pp.pos]))  # type: ignore[arg-type]
            else:
                rest.append(pp)
        pending = rest

    if solve is not None and config.attack_steps > 0:  # a pre-MIP stage; attack_steps 0 switches every attack off
        pending = attack_stage(pending, config.strong_attack_steps, config.strong_attack_restarts, "decay", 1)

    for pp in pending:
        if solve is None:
            finish(pp, "unknown", None, int(preds[pp.pos]), reason="no mip")
            continue
        i = pp.pos
        t0 = time.perf_counter()
        query = Query.robustness(pset.select([i]).to(torch.float64), int(labels[i]), net.n_classes)
        bounds, row_lb = complete_inputs(net, query, config, t0 + config.timeout)
        out = decide(net, query, engine=config.complete, deadline=t0 + config.timeout, mip=solve, bounds=bounds,
                     row_lb=row_lb, warm=warm.get(i))
        clock.split(pp, out)
        if out.margin_lb is not None:
            pp.lower(out.margin_lb)  # the engine's proven bound on the worst margin (also when undecided)
        if out.counterexample is not None:  # (an incumbent's objective is the model's value, not a forward pass)
            pp.upper(-float(margins_f64(net, out.counterexample, labels[i : i + 1])[0]))
        finish(pp, out.status, out.decided_by, int(preds[i]), counterexample=out.counterexample,
               solver_status=out.solver_status, reason=out.reason, n_binaries=out.n_binaries, domains=out.domains)
    bar.close()
    return [results[i] for i in range(n)]


def complete_inputs(net: Network, query: Query, config: CertifyConfig, deadline: float
                    ) -> tuple[dict[int, tuple[Tensor, Tensor]] | None, np.ndarray | None]:
    """Starting bounds (float64) and per-target margin bounds (``row_lb``) for the complete stage of one
    example: :func:`verify.complete.disjunct_bounds` on its robustness query (CROWN; with
    ``mip_bounds="alpha-crown"`` refined by alpha-CROWN within ``mip_alpha_share`` of the time limit).

    The time spent here counts against the example's time limit. MIPVerify.jl tightens its own.
    """
    if config.solver != "highs" and config.complete == "mip":
        return None, None
    stop = min(deadline, time.perf_counter() + config.mip_alpha_share * config.timeout)
    db = disjunct_bounds(net, query, alpha_steps=config.mip_alpha_steps if config.mip_bounds == "alpha-crown" else 0,
                         deadline=stop)
    return db.intermediate, db.row_lb()


class _Bar:
    def __init__(self, n: int, enabled: bool) -> None:
        self.counts = {"verified": 0, "falsified": 0, "misclassified": 0, "unknown": 0}
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=n, unit="ex", leave=False)

    def update(self, r: Verdict) -> None:
        self.counts[r.status] += 1
        if self.bar is not None:
            c = self.counts
            self.bar.set_postfix_str(f"verified {c['verified']} falsified {c['falsified'] + c['misclassified']} "
                                     f"unknown {c['unknown']}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["BOUND_METHODS", "CertifyConfig", "ROW_FIELDS", "Stage", "Status", "Summary", "Verdict", "certify",
           "complete_inputs", "order_row", "summarize"]
