"""Minimum adversarial distortion per example: exact, or a certified bracket [lower, upper].

The radius r* of an example (centre c, label y) is the smallest ||x - c||_p over points x of
the input box that the network does not classify as y (a tie counts: f_j(x) >= f_y(x)). Stages,
batched over the examples where they can be:

1. clean: a misclassified centre has radius 0;
2. PGD at ``max_eps``, then shrinking: a line search along the ray to each counterexample and
   a bisection of PGD's radius; every point is re-checked in float64, its distance is an upper end;
3. bound propagation (``method``, sound under rounding: :func:`verify.bounds.certify_with_bounds`)
   bisected on eps below the upper end: the largest certified eps is a lower end (the
   *certified radius*);
4. the MIP (:func:`verify.mip.closest.closest`, MIPVerify.jl's ``closest`` objective) over the
   ball of the upper end, for the time left: its dual bound raises the lower end, its
   confirmed solutions lower the upper end; ``exact`` once they meet within ``tol``.

Reading a result: the example is proven robust at every eps <= ``lower`` (a bound certificate of
that closed ball, or a MIP dual bound less its slack, which leaves room below the bound), and a
saved, float64-confirmed counterexample lies at distance ``upper``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from .attacks import pgd_attack
from .bounds import certify_with_bounds
from .certify import CertifyConfig, complete_inputs
from .complete import HighsBackend, decide, disjunct_bounds
from .errors import SpecError, UnsupportedLayerError
from .mip.closest import closest, sound_lower
from .network import Linear, Network
from .query import Query
from .spec import LpBall, distances, margins_f64, p_name

RadiusStatus = Literal["exact", "bracketed", "beyond", "misclassified"]
RADIUS_METHODS = ("ibp", "kw", "crown", "alpha-crown")
# an example with no counterexample up to max_eps first goes to the complete stage at max_eps for
# at most this share of its time limit (it usually decides in seconds); the distance MIP gets the rest
DECIDE_SHARE = 0.5


@dataclass(frozen=True)
class RadiusConfig:
    """What ``verify radius`` runs. ``max_eps`` None: as far as the input box reaches from the centre."""

    p: float
    max_eps: float | None = None
    target: int | None = None  # the distortion to reach this class (None: any other class)
    method: str = "crown"
    bisect_steps: int = 14  # bound bisection: the certified radius to 2^-14 of the upper end
    attack_steps: int = 40
    attack_restarts: int = 1
    attack_bisect_steps: int = 6
    timeout: float = 120.0  # the MIP's time per example
    tol: float = 1e-5  # exact: upper - lower <= tol * max(1, upper)
    threads: int = 1
    no_mip: bool = False

    def __post_init__(self) -> None:
        if self.method not in RADIUS_METHODS:
            raise SpecError(f"unknown bound method {self.method!r}: use {', '.join(RADIUS_METHODS)}")
        if self.max_eps is not None and not (math.isfinite(self.max_eps) and self.max_eps > 0):
            raise SpecError(f"--max-eps must be a positive number, got {self.max_eps}")
        if not self.timeout > 0:
            raise SpecError(f"--timeout must be positive, got {self.timeout}")
        if not self.tol > 0:
            raise SpecError(f"--tol must be positive, got {self.tol}")
        if self.target is not None and self.target < 0:
            raise SpecError(f"--target must be a class index >= 0, got {self.target}")


@dataclass(frozen=True)
class RadiusResult:
    """One example's minimum distortion (see the module docstring for what lower and upper prove)."""

    index: int
    label: int
    prediction: int
    status: RadiusStatus
    lower: float
    upper: float | None
    lower_bounds: float  # the part of ``lower`` bound propagation proved (the certified radius)
    upper_pgd: float | None  # the distance of PGD's best counterexample (None: none up to max_eps)
    lower_by: str  # clean, bounds, mip (a distance MIP's dual bound or the MIP at max_eps) or bab
    upper_by: str | None  # clean, pgd, mip or bab (None: no counterexample up to max_eps)
    target: int | None  # the class of the counterexample at ``upper``
    seconds: dict[str, float]
    reason: str | None = None
    counterexample: Tensor | None = None  # (1, *input_shape) float64, at distance ``upper``
    n_binaries: int | None = None

    def row(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "prediction": self.prediction, "status": self.status,
                "lower": self.lower, "upper": self.upper, "lower_bounds": self.lower_bounds,
                "upper_pgd": self.upper_pgd, "lower_by": self.lower_by, "upper_by": self.upper_by,
                "target": self.target, "seconds": round(sum(self.seconds.values()), 6), "reason": self.reason,
                "n_binaries": self.n_binaries}


def domain_reach(center: Tensor, p: float, input_range: tuple[float, float]) -> Tensor:
    """Per example: the largest distance from the centre to a point of the input box (float64)."""
    c = center.to(torch.float64).reshape(center.shape[0], -1)
    far = torch.maximum(c - input_range[0], input_range[1] - c)
    out: Tensor = far.amax(1) if math.isinf(p) else far.norm(p=p, dim=1)
    return out


@dataclass
class _Open:
    pos: int
    reach: float  # max_eps for this example
    lower: float = 0.0
    lower_by: str = "bounds"
    upper: float | None = None
    upper_by: str | None = None
    x: Tensor | None = None
    target: int | None = None
    upper_pgd: float | None = None
    lower_bounds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    def offer(self, x: Tensor, d: float, target: int, by: str) -> None:
        if self.upper is None or d < self.upper:
            self.upper, self.x, self.target, self.upper_by = d, x.detach().to(torch.float64).clone(), target, by


def _closed(lower: float, upper: float | None, tol: float) -> bool:
    """Is the bracket exact: upper - lower <= tol * max(1, upper)?"""
    return upper is not None and upper - lower <= tol * max(1.0, upper)


def _charge(items: Sequence[_Open], stage: str, t0: float) -> float:
    now = time.perf_counter()
    if items:
        share = (now - t0) / len(items)
        for o in items:
            o.seconds[stage] = o.seconds.get(stage, 0.0) + share
    return now


def _confirmed(net: Network, c: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(confirmed (N,), the class reached (N,)) for points x: the rule of
    :func:`verify.spec.check_counterexample` -- strictly misclassified in float64 -- with the input
    box as the set (a radius is not bounded by a ball)."""
    x64 = x.to(torch.float64)
    lo, hi = net.input_range
    inside = ((x64 >= lo) & (x64 <= hi)).reshape(x.shape[0], -1).all(1)
    with torch.no_grad():
        other = net.forward(x64).scatter(1, y.reshape(-1, 1), -math.inf)
    return inside & (margins_f64(net, x64, y) > 0), other.argmax(1)


def _attack_stage(net: Network, c: Tensor, y: Tensor, items: list[_Open], eps: Tensor, p: float,
                  config: RadiusConfig, keys: Sequence[int]) -> None:
    """PGD at radius eps (per item); confirmed points become upper ends (after a ray search)."""
    if not items or config.attack_steps <= 0:
        return
    pos = [o.pos for o in items]
    ball = LpBall.make(c[pos], eps, p, net.input_range, check_inside=False)
    att = pgd_attack(net, ball, y[pos], steps=config.attack_steps, restarts=config.attack_restarts, keys=keys)
    ok = att.success.nonzero().reshape(-1).tolist()
    if not ok:
        return
    found = _offer(net, c, y, [items[k] for k in ok], att.x_adv[torch.as_tensor(ok)], p, "pgd")
    for k, d in zip(ok, found):
        if d is not None:
            o = items[k]
            o.upper_pgd = d if o.upper_pgd is None else min(o.upper_pgd, d)


def _offer(net: Network, c: Tensor, y: Tensor, items: list[_Open], x: Tensor, p: float, by: str) -> list[float | None]:
    """Counterexample candidates x (one per item) moved along their rays to the decision boundary and
    re-checked (:func:`_confirmed`); each confirmed point is offered as its item's upper end. Returns
    the distances of the confirmed points (None where a point failed the check)."""
    pos = [o.pos for o in items]
    xs = _ray_search(net, c[pos], y[pos], x.to(torch.float64).reshape(len(items), *net.input_shape))
    good, cls = _confirmed(net, c[pos], xs, y[pos])
    d = distances(c[pos], xs, p)
    out: list[float | None] = []
    for m, o in enumerate(items):
        out.append(float(d[m]) if bool(good[m]) else None)
        if bool(good[m]):
            o.offer(xs[m : m + 1], float(d[m]), int(cls[m]), by)
    return out

def _ray_search(net: Network, c: Tensor, y: Tensor, x: Tensor, steps: int = 30) -> Tensor:
    """Per point: the closest point c + s (x - c), s in (0, 1], still misclassified (bisection on s;
    an attack's point usually lies well beyond the decision boundary; s = 1, the point itself, when
    no closer one is)."""
    c = c.to(torch.float64)
    lo = torch.zeros(x.shape[0], dtype=torch.float64)
    hi = torch.ones(x.shape[0], dtype=torch.float64)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(steps):
        mid = (lo + hi) / 2
        bad, _ = _confirmed(net, c, c + mid.reshape(shape) * (x - c), y)
        hi = torch.where(bad, mid, hi)
        lo = torch.where(bad, lo, mid)
    return c + hi.reshape(shape) * (x - c)


def _bound_stage(net: Network, c: Tensor, y: Tensor, items: list[_Open], p: float, config: RadiusConfig) -> None:
    """Bisection of the certified radius between 0 and each item's upper end (or reach)."""
    if not items:
        return
    pos = [o.pos for o in items]
    lo = torch.zeros(len(items), dtype=torch.float64)
    hi = torch.tensor([o.upper if o.upper is not None else o.reach for o in items], dtype=torch.float64)
    # first: is the whole reach certified? (an example with no counterexample up to max_eps)
    top = [k for k, o in enumerate(items) if o.upper is None]
    if top:
        sel = [pos[k] for k in top]
        cb = certify_with_bounds(net, LpBall.make(c[sel], hi[top], p, net.input_range, check_inside=False), y[sel],
                                 method=config.method)  # type: ignore[arg-type]
        for m, k in enumerate(top):
            if bool(cb.certified[m]):
                lo[k] = hi[k]
    for _ in range(config.bisect_steps):
        todo = [k for k in range(len(items)) if float(hi[k] - lo[k]) > config.tol / 4]
        if not todo:
            break
        mid = (lo[todo] + hi[todo]) / 2
        sel = [pos[k] for k in todo]
        cb = certify_with_bounds(net, LpBall.make(c[sel], mid, p, net.input_range, check_inside=False), y[sel],
                                 method=config.method)  # type: ignore[arg-type]
        for m, k in enumerate(todo):
            if bool(cb.certified[m]):
                lo[k] = mid[m]
            else:
                hi[k] = mid[m]
    for k, o in enumerate(items):
        o.lower, o.lower_by, o.lower_bounds = float(lo[k]), "bounds", float(lo[k])


def _decide_stage(net: Network, c: Tensor, y: Tensor, o: _Open, p: float, config: RadiusConfig,
                  deadline: float) -> None:
    """No counterexample up to max_eps yet: decide robustness at max_eps with the complete stage
    (:func:`verify.complete.decide`, auto: branch and bound and/or the MIP) before any distance MIP.
    Verified: the example is beyond max_eps (a closed-ball proof); falsified: its counterexample,
    moved along its ray as close as it stays misclassified, is the first upper end."""
    t0 = time.perf_counter()
    i = o.pos
    query = Query.robustness(LpBall.make(c[i : i + 1], o.reach, p, net.input_range, check_inside=False), int(y[i]),
                             net.n_classes)
    cc = CertifyConfig(p=p, eps=o.reach, timeout=max(deadline - t0, 1e-3), threads=config.threads)
    try:
        bounds, row_lb = complete_inputs(net, query, cc, deadline)
        out = decide(net, query, engine="auto", deadline=deadline, mip=HighsBackend(threads=config.threads),
                     bounds=bounds, row_lb=row_lb)
    except UnsupportedLayerError:  # a layer the bound engine or the MIP lacks: the distance MIP will say so
        o.seconds["complete"] = o.seconds.get("complete", 0.0) + time.perf_counter() - t0
        return
    if out.status == "verified":
        o.lower, o.lower_by = o.reach, str(out.decided_by)
    elif out.status == "falsified" and out.counterexample is not None:
        _offer(net, c, y, [o], out.counterexample, p, str(out.decided_by))
    o.seconds["complete"] = o.seconds.get("complete", 0.0) + time.perf_counter() - t0


def _mip_stage(net: Network, c: Tensor, y: Tensor, o: _Open, p: float, config: RadiusConfig,
               deadline: float) -> tuple[str | None, int | None]:
    """The distance MIP for one item; returns (reason if undecided, binaries)."""
    t0 = time.perf_counter()
    i = o.pos
    radius = o.upper if o.upper is not None else o.reach
    ball = LpBall.make(c[i : i + 1], radius, p, net.input_range, check_inside=False)
    try:
        query = Query.robustness(ball, int(y[i]), net.n_classes)
        db = disjunct_bounds(net, query)
        # a target whose margin is provably positive over the ball cannot be reached inside it
        targets = [j for j, ok in zip(query.targets(), db.proven) if not ok]
        res = closest(net, c[i], int(y[i]), p, upper=radius, lower=o.lower, targets=targets,
                      first_target=o.target, bounds=db.intermediate, deadline=deadline, threads=config.threads,
                      tol=config.tol * max(1.0, radius))
    except UnsupportedLayerError as e:  # e.g. MaxPool: the bracket of attacks and bounds stands
        o.seconds["mip"] = o.seconds.get("mip", 0.0) + time.perf_counter() - t0
        return f"mip: {e}", None
    if res.lower > o.lower:
        o.lower, o.lower_by = res.lower, "mip"
    if res.x is not None and res.upper is not None and res.target is not None:
        o.offer(res.x, res.upper, res.target, "mip")
    o.seconds["mip"] = o.seconds.get("mip", 0.0) + time.perf_counter() - t0
    return (None if res.status == "optimal" else {"timeout": "timeout", "numerics": "numerics",
                                                   "l2": "l2 cut rounds"}[res.status]), res.n_binaries


def minimum_distortion(
    net: Network,
    centers: Tensor,
    labels: Tensor,
    indices: Sequence[int],
    config: RadiusConfig,
    *,
    progress: bool = True,
    on_result: Callable[[RadiusResult], None] | None = None,
) -> list[RadiusResult]:
    """The radius of every example (``centers`` (N, *input_shape), ``indices`` their data-set indices).

    With ``config.target`` J: the distance to a point where f_J >= f_y, for the examples whose label
    is not J (those with label J are left out of the results).
    """
    if config.target is not None:
        return _targeted(net, centers, labels, indices, config, progress=progress, on_result=on_result)
    p = config.p
    c = centers.to(torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    n = c.shape[0]
    if len(indices) != n or y.numel() != n:
        raise SpecError(f"{n} examples but {len(indices)} indices and {y.numel()} labels")
    results: dict[int, RadiusResult] = {}
    t = time.perf_counter()
    with torch.no_grad():
        pred = net.predict(c)
    reach = domain_reach(c, p, net.input_range)
    if config.max_eps is not None:
        reach = torch.clamp(reach, max=config.max_eps)
    m = margins_f64(net, c, y)

    def done(o: _Open, status: RadiusStatus, reason: str | None = None, n_bin: int | None = None) -> None:
        r = RadiusResult(int(indices[o.pos]), int(y[o.pos]), int(pred[o.pos]), status, o.lower, o.upper,
                         o.lower_bounds, o.upper_pgd, o.lower_by, o.upper_by, o.target, dict(o.seconds), reason,
                         o.x, n_bin)
        results[o.pos] = r
        if on_result is not None:
            on_result(r)

    items = [_Open(k, float(reach[k])) for k in range(n)]
    t = _charge(items, "clean", t)
    open_: list[_Open] = []
    for o in items:
        if m[o.pos] >= 0:
            o.lower, o.lower_by, o.upper, o.upper_by, o.upper_pgd = 0.0, "clean", 0.0, "clean", 0.0
            o.x, o.target = c[o.pos : o.pos + 1].clone(), int(pred[o.pos])
            done(o, "misclassified")
        else:
            open_.append(o)

    keys = [int(indices[o.pos]) for o in open_]
    _attack_stage(net, c, y, open_, torch.tensor([o.reach for o in open_], dtype=torch.float64), p, config, keys)
    t = _charge(open_, "pgd", t)
    _bound_stage(net, c, y, open_, p, config)
    t = _charge(open_, config.method, t)
    # shrink PGD's radius towards the certified one: a smaller ball makes a smaller MIP
    for _ in range(config.attack_bisect_steps):
        todo = [o for o in open_ if o.upper is not None and not _closed(o.lower, o.upper, config.tol)]
        if not todo:
            break
        eps = torch.tensor([(o.lower + (o.upper or 0.0)) / 2 for o in todo], dtype=torch.float64)
        _attack_stage(net, c, y, todo, eps, p, config, [int(indices[o.pos]) for o in todo])
    t = _charge(open_, "pgd", t)

    bar = _bar(len(open_), progress)
    for o in open_:
        reason, n_bin = None, None
        start = time.perf_counter()
        if o.upper is None and o.lower < o.reach and not config.no_mip:
            _decide_stage(net, c, y, o, p, config, start + DECIDE_SHARE * config.timeout)
        if o.upper is None and o.lower >= o.reach:
            done(o, "beyond", n_bin=None)
            bar.update(1)
            continue
        if not _closed(o.lower, o.upper, config.tol):
            if config.no_mip:
                reason = "no mip"
            else:
                reason, n_bin = _mip_stage(net, c, y, o, p, config, start + config.timeout)
        if o.upper is None:
            # a distance MIP proves max_eps only up to its slack (verify.mip.closest.sound_lower)
            full = o.lower >= sound_lower(o.reach)
            status: RadiusStatus = "beyond" if reason is None and full else "bracketed"
        else:
            status = "exact" if _closed(o.lower, o.upper, config.tol) else "bracketed"
            if status == "bracketed" and reason is None:
                reason = "gap above tolerance"
        done(o, status, None if status == "exact" or status == "beyond" else reason, n_bin)
        bar.update(1)
    bar.close()
    return [results[k] for k in range(n)]


def two_class(net: Network, label: int, target: int) -> Network:
    """The network with one more affine layer: outputs (f_label, f_target). Its robustness for label 0
    is robustness against the target alone, so every stage runs on it unchanged."""
    sel = torch.zeros(2, net.n_classes, dtype=torch.float64)
    sel[0, label] = sel[1, target] = 1.0
    return Network(net.layers + (Linear(sel, torch.zeros(2, dtype=torch.float64)),), net.input_shape, net.input_range,
                   name=f"{net.name}[{label} vs {target}]")


def _targeted(net: Network, centers: Tensor, labels: Tensor, indices: Sequence[int], config: RadiusConfig, *,
              progress: bool, on_result: Callable[[RadiusResult], None] | None) -> list[RadiusResult]:
    """Per label group, the untargeted run on the two-output network; rows keep the real label and prediction."""
    import dataclasses

    j = config.target
    assert j is not None
    if j >= net.n_classes:
        raise SpecError(f"--target {j} is not a class of this model (it has {net.n_classes})")
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    with torch.no_grad():
        pred = net.predict(centers.to(torch.float64))
    inner = dataclasses.replace(config, target=None)
    out: dict[int, RadiusResult] = {}
    for label in sorted({int(v) for v in y.tolist()} - {j}):
        pos = (y == label).nonzero().reshape(-1).tolist()

        def fix(r: RadiusResult, _pos: list[int] = pos, _label: int = label) -> RadiusResult:
            k = _pos[[int(indices[q]) for q in _pos].index(r.index)]
            return dataclasses.replace(r, label=_label, prediction=int(pred[k]), target=j if r.upper is not None else None)

        def sink(r: RadiusResult, _fix: Callable[[RadiusResult], RadiusResult] = fix) -> None:
            if on_result is not None:
                on_result(_fix(r))

        res = minimum_distortion(two_class(net, label, j), centers[pos], torch.zeros(len(pos), dtype=torch.long),
                                 [indices[q] for q in pos], inner, progress=progress, on_result=sink)
        for q, r in zip(pos, res):
            out[q] = fix(r)
    return [out[q] for q in range(len(y)) if q in out]


class _NoBar:
    def update(self, k: int) -> None: ...

    def close(self) -> None: ...


def _bar(n: int, enabled: bool) -> Any:
    if not enabled or n == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=n, unit="ex", leave=False, desc="minimum distortion")


def config_dict(config: RadiusConfig) -> dict[str, Any]:
    d = dict(config.__dict__)
    d["p"] = p_name(config.p)
    return {"command": "radius", **d}


__all__ = ["RADIUS_METHODS", "RadiusConfig", "RadiusResult", "config_dict", "distances", "domain_reach",
           "minimum_distortion"]
