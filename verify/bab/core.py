"""Branch and bound over ReLU splits (beta-CROWN style) or input splits, with a batched bound engine.

A subdomain is the input set restricted by split decisions: ReLU inputs fixed to a sign, or a
sub-box of the input box. The unsafe region is the OR of disjuncts C_k y <= d_k; a subdomain is
closed once every disjunct has a row (or a convex combination of its rows) with a sound float64
lower bound above the row's safety threshold (:func:`verify.bab.spec.make_rows`). Each round pops
the ``batch`` open subdomains with the lowest bound, splits each in two and bounds all children
in one batched pass (:func:`verify.bab.bound.bound_rows`), warm-started from the parent's slopes,
multipliers and combination weights. A child inherits its parent's row bounds (its set is a
subset) and the parent's intermediate bounds with the split neuron's clamped (optionally re-tightened
by CROWN, ``BabOptions.retighten``).
``verified`` only when no subdomain is open before the deadline; ``falsified`` only with a point
``confirm`` accepted.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from ..bounds.backward import relu_inputs
from ..bounds.certify import SAFETY_REL
from ..bounds.intermediate import alpha_intermediate, linear_intermediate
from ..bounds.slopes import crown_slopes
from ..bounds.types import NodeBounds
from ..errors import UnsupportedLayerError
from ..network import MaxPool2d, Network
from ..query import Disjunct, Query, confirm_point
from ..results import Verdict
from ..spec import Box
from .attack import linear_minimiser, pgd
from .bound import Bounded, bound_rows
from .leaf import leaf_lp
from .retighten import retighten_after
from .spec import Rows, make_rows

Progress = Callable[[dict[str, Any]], None]


# auto: input splitting only on very low-dimensional inputs (ACAS Xu has 5): bisection needs ~2^d boxes per
# halving of the width; a 7-feature robustness instance stayed open after 60k boxes in 20 s where ReLU splitting
# decided it with 69 subdomains in 0.4 s (tests/bab/test_vs_mip.py's sweep, case 15 on an Linf ball)
INPUT_SPLIT_MAX_DIM = 5
# a search per disjunct (BabOptions.per_disjunct) splits up to this many times more parents per round
MAX_BATCH_GROWTH = 4
# a child "stalled": its value rose by at most this fraction of (1 + |parent's value|) over its parent's
STALL_GAIN = 1e-3


@dataclass(frozen=True)
class BabOptions:
    timeout: float = 60.0  # seconds (bab() also takes an absolute ``deadline``)
    batch: int = 64  # subdomains split per round (each gives two children, bounded in one pass)
    max_domains: int = 100_000  # cap on the open queue -> 'unknown', reason 'memory'
    alpha_steps: int = 20  # alpha-CROWN steps at the root
    # alpha-CROWN steps on the root's intermediate bounds (every unstable neuron a spec row of its own: on deep nets
    # and CNNs the dearest part of the root; 0 keeps CROWN's), within this share of the time left (layers and
    # neurons not reached keep CROWN's bounds; measured: 17 s for 20 steps on the zoo's small MNIST CNN at eps 0.1)
    intermediate_alpha_steps: int = 5
    intermediate_alpha_share: float = 0.1
    beta_steps: int = 5  # joint alpha / beta steps on every batch of children (warm-started from the parent)
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    branching: Literal["babsr", "fsb"] = "babsr"
    attack: bool = True  # PGD at the root and from the worst subdomains
    input_split: Literal["auto", "on", "off"] = "auto"  # auto: input splitting when <= INPUT_SPLIT_MAX_DIM input features
    seed: int = 0
    # re-tighten the children's intermediate bounds with CROWN every ``retighten``-th round (0: never; True: every
    # round): only the ReLU inputs after each child's shallowest split not yet propagated (verify.bab.retighten), in
    # one batched pass per layer, stopping at the deadline. Off by default: children keep the parent's bounds with the
    # split neuron's clamped at 0, and the split enters the final bound through beta. Measured on the zoo's
    # 784-256x4 / x6 MLPs (20-60 s, docs/bab.md): BaBSR splits mostly last-layer neurons (nothing to re-tighten),
    # and where it does re-tighten the gain per child does not pay for the ~6x cost per child.
    retighten: int = 0
    fsb_candidates: int = 3
    # children whose bound the split did not raise get this many more steps (_Search.unstall) at these learning
    # rates (measured on a VNN-COMP mnistfc instance, docs/bab.md "Stalled subdomains")
    stall_steps: int = 50
    stall_lr_alpha: float = 0.1
    stall_lr_beta: float = 0.2
    # a search per disjunct still open at the root (robustness: per target class), see _per_disjunct. Measured on the
    # zoo's 784-256x6 MLP at Linf 0.01, image #9: 1525 subdomains of one row each instead of 5829 of nine rows
    per_disjunct: bool = True
    # fsb judges candidates by a float32 evaluation (only a choice; the children's bounds are float64 as always)
    fsb_float32: bool = True
    # alpha / beta steps in float32 (about twice as fast on CPU); they only choose the parameters, the bounds that
    # decide are float64 evaluations at the chosen ones
    float32_steps: bool = True


def _verdict(status: Literal["verified", "falsified", "unknown"], reason: str | None,
             found: tuple[Tensor, int] | None, lb: float, domains: int, max_queue: int, t0: float,
             input_shape: tuple[int, ...]) -> Verdict:
    """The search's answer as the one :class:`verify.results.Verdict`: ``margin_lb`` the proven lower bound
    of min_k max_i (C_ki y - d_ki) (> 0 iff verified; None when -inf), ``counterexample`` float64
    (1, *input_shape), accepted by confirm, ``disjunct`` the one it satisfies; ``seconds`` {"bab": wall time}."""
    return Verdict(status, "bab" if status != "unknown" else None, reason,
                   None if found is None else found[0].to(torch.float64).reshape(1, *input_shape),
                   lb if math.isfinite(lb) else None, seconds={"bab": time.perf_counter() - t0},
                   domains=domains, max_queue=max_queue, disjunct=None if found is None else found[1])


@dataclass
class _Domain:
    lb: Tensor  # (R',) row bounds minus d
    proven: Tensor  # (K,) bool
    value: float
    depth: int
    alpha: dict[int, Tensor]  # (1, R', *shape) float32
    theta: Tensor  # (1, K2, M)
    a0: Tensor | None  # (1, R', *input_shape) float32
    # ReLU splitting
    bounds: NodeBounds = field(default_factory=dict)  # ReLU inputs only, (1, *shape)
    signs: dict[int, Tensor] = field(default_factory=dict)  # (1, *shape) int8
    beta: dict[int, Tensor] = field(default_factory=dict)  # (1, R', *shape) float32
    scores: dict[int, Tensor] = field(default_factory=dict)  # (1, *shape) float32
    # input splitting
    lo: Tensor | None = None
    hi: Tensor | None = None
    # position (in relu_inputs order) of the shallowest split whose effect the bounds of later ReLU
    # inputs do not include yet (no re-tightening since): those later layers may tighten
    stale: int = 1 << 30


class _Search:
    def __init__(self, net: Network, pset: Any, rows: Rows, options: BabOptions, deadline: float,
                 confirm: Callable[[Tensor], tuple[Tensor, int] | None], progress: Progress | None, t0: float) -> None:
        self.net, self.pset, self.rows, self.o = net, pset, rows, options
        self.deadline, self.confirm, self.progress, self.t0 = deadline, confirm, progress, t0
        self.heap: list[tuple[float, int, _Domain]] = []
        self.counter = itertools.count()
        self.domains = 0
        self.max_queue = 0
        self.proven_min = math.inf
        self.stuck: list[_Domain] = []
        self.stuck_reason = ""
        self.found: tuple[Tensor, int] | None = None
        self.srcs = relu_inputs(net)
        self.rounds = 0
        self.step_dtype = torch.float32 if options.float32_steps else torch.float64

    # ---- bookkeeping
    def weights(self, proven: Tensor) -> Tensor:
        """(B, R'): 1 on the rows of still-open disjuncts."""
        return (~proven)[:, self.rows.owner_all].to(torch.float64)

    def value(self, lb: Tensor, proven: Tensor) -> Tensor:
        v = self.rows.value(lb)  # (B, K)
        open_v = torch.where(proven, torch.full_like(v, math.inf), v).amin(1)
        return torch.where(proven.all(1), v.amin(1), open_v)

    def close(self, value: float) -> None:
        self.proven_min = min(self.proven_min, value)

    def push(self, d: _Domain) -> None:
        heapq.heappush(self.heap, (d.value, next(self.counter), d))
        self.max_queue = max(self.max_queue, len(self.heap))

    def global_lb(self) -> float:
        vals = [self.proven_min] + [h[0] for h in self.heap[:1]] + [d.value for d in self.stuck]
        return min(vals)

    def report(self) -> None:
        if self.progress is not None:
            self.progress({"domains": self.domains, "open": len(self.heap), "lower_bound": self.global_lb(),
                           "seconds": time.perf_counter() - self.t0, "rounds": self.rounds})

    # ---- attacks
    def attack_children(self, doms: list[_Domain], steps: int = 20) -> None:
        """PGD from the input minimisers of the worst open rows of the worst few subdomains."""
        if not self.o.attack or not doms or self.found is not None:
            return
        worst = sorted(range(len(doms)), key=lambda i: doms[i].value)[:8]
        starts, which, los, his = [], [], [], []
        plo, phi = (t.to(torch.float64) for t in self.pset.box())
        for i in worst:
            d = doms[i]
            v = self.rows.value(d.lb.unsqueeze(0))[0]
            v = torch.where(d.proven, torch.full_like(v, math.inf), v)
            k = int(v.argmin())
            mine = (self.rows.owner_all == k).nonzero().reshape(-1)
            if mine.numel() == 0:
                continue
            r = int(mine[d.lb[mine].argmax()])
            blo = d.lo if d.lo is not None else plo
            bhi = d.hi if d.hi is not None else phi
            if d.a0 is not None:
                box = Box(blo, bhi) if d.lo is not None else self.pset
                starts.append(linear_minimiser(box, d.a0[:, r].to(torch.float64)))
            else:
                starts.append((blo + bhi) / 2)
            if d.lo is not None:
                starts.append((blo + bhi) / 2)
                which.append(k)
                los.append(blo)
                his.append(bhi)
            which.append(k)
            los.append(blo)
            his.append(bhi)
        if not starts:
            return
        x0 = torch.cat(starts)
        pset = Box(torch.cat(los), torch.cat(his)) if doms[0].lo is not None else self.pset.select([0] * x0.shape[0])
        found = pgd(self.net, pset, x0, torch.tensor(which), self.rows, self.confirm, steps=steps,
                    deadline=self.deadline)
        if found is not None:
            self.found = found

    def attack_root(self) -> None:
        if self.found is not None:
            return
        c = self.pset.center.to(torch.float64).reshape(1, *self.net.input_shape)
        got = self.confirm(c)
        if got is not None:
            self.found = got
            return
        if not self.o.attack:
            return
        ks = sorted(set(self.rows.owner.tolist()))
        if not ks:
            return
        restarts = 3
        lo, hi = (t.to(torch.float64) for t in self.pset.box())
        g = torch.Generator().manual_seed(self.o.seed)
        m = len(ks) * restarts
        x0 = lo + (hi - lo) * torch.rand((m, *lo.shape[1:]), generator=g, dtype=torch.float64)
        x0[::restarts] = c
        which = torch.tensor(ks).repeat_interleave(restarts)
        found = pgd(self.net, self.pset.select([0] * m), x0, which, self.rows, self.confirm, steps=50, deadline=self.deadline)
        if found is not None:
            self.found = found

    # ---- ReLU splitting
    def choose(self, d: _Domain) -> tuple[int, int] | None:
        """(ReLU input node, flat neuron) with the best BaBSR score among unstable neurons, or None."""
        best: tuple[float, int, int] | None = None
        for j in self.srcs:
            lo, hi = d.bounds[j]
            unstable = ((lo < 0) & (hi > 0)).reshape(-1)
            if not bool(unstable.any()):
                continue
            s = d.scores.get(j)
            sc = s.reshape(-1).to(torch.float64) if s is not None else torch.zeros(unstable.shape, dtype=torch.float64)
            # ties (no intercept gain anywhere): the neuron with the widest min(u, -l)
            tie = torch.minimum(hi.reshape(-1), -lo.reshape(-1)).clamp(min=0)
            key = torch.where(unstable, sc + 1e-6 * tie / (1.0 + tie), torch.full_like(sc, -math.inf))
            i = int(key.argmax())
            v = float(key[i])
            if best is None or v > best[0]:
                best = (v, j, i)
        return None if best is None else (best[1], best[2])

    def fsb_choose(self, doms: list[_Domain]) -> list[tuple[int, int] | None]:
        """Filtered smart branching: the top BaBSR candidates of each domain, each judged by the
        worse of its two children's CROWN bound (parent slopes, no re-tightening); the best wins."""
        picks: list[tuple[int, int] | None] = []
        cand_all: list[tuple[int, int, int]] = []  # (domain, node, neuron)
        for di, d in enumerate(doms):
            cands: list[tuple[float, int, int]] = []
            for j in self.srcs:
                lo, hi = d.bounds[j]
                unstable = ((lo < 0) & (hi > 0)).reshape(-1)
                s = d.scores.get(j)
                if s is None or not bool(unstable.any()):
                    continue
                sc = torch.where(unstable, s.reshape(-1).to(torch.float64), torch.full(unstable.shape, -math.inf, dtype=torch.float64))
                top = torch.topk(sc, min(self.o.fsb_candidates, int(unstable.sum())))
                cands += [(float(v), j, int(i)) for v, i in zip(top.values, top.indices)]
            cands.sort(reverse=True)
            if not cands:
                picks.append(self.choose(d))
                continue
            for _, j, i in cands[: self.o.fsb_candidates]:
                cand_all.append((di, j, i))
            picks.append(None)
        if not cand_all:
            return picks
        parents = [doms[di] for di, _, _ in cand_all]
        splits = [(j, i) for _, j, i in cand_all]
        kids = self.children_inputs(parents, splits, retighten=False)
        if kids is None:
            return [p if p is not None else self.choose(d) for p, d in zip(picks, doms)]
        bounds, signs, alpha, beta, theta, infeasible, _, _ = kids
        res = bound_rows(self.net, self.many(bounds), self.rows, bounds, alpha, beta, signs, theta,
                         torch.zeros((theta.shape[0], self.rows.n_all), dtype=torch.float64),
                         steps=0, lr_alpha=0, lr_beta=0, scores=False, estimate=self.o.fsb_float32)
        prov = torch.stack([d.proven for d in parents]).repeat_interleave(2, 0)
        lb = torch.maximum(res.lb, torch.stack([d.lb for d in parents]).repeat_interleave(2, 0))
        val = self.value(lb, prov | self.rows.decide(lb))
        val = torch.where(infeasible, torch.full_like(val, math.inf), val).reshape(-1, 2).amin(1)
        best: dict[int, tuple[float, tuple[int, int]]] = {}
        for c, (di, j, i) in enumerate(cand_all):
            v = float(val[c])
            if di not in best or v > best[di][0]:
                best[di] = (v, (j, i))
        return [best[di][1] if di in best else p for di, p in enumerate(picks)]

    def many(self, bounds: NodeBounds) -> Any:
        b = next(iter(bounds.values()))[0].shape[0] if bounds else 1
        return self.pset.select([0] * b)

    def children_inputs(self, parents: list[_Domain], splits: list[tuple[int, int]], *, retighten: bool) -> Any:
        """Stacked bounds, signs, warm-start parameters of the two children of each parent (inactive first)."""
        n = 2 * len(parents)
        bounds: NodeBounds = {}
        signs: dict[int, Tensor] = {}
        for j in self.srcs:
            lo = torch.cat([p.bounds[j][0] for p in parents]).repeat_interleave(2, 0).clone()
            hi = torch.cat([p.bounds[j][1] for p in parents]).repeat_interleave(2, 0).clone()
            sg = torch.cat([p.signs[j] if j in p.signs else torch.zeros_like(p.bounds[j][0], dtype=torch.int8)
                            for p in parents]).repeat_interleave(2, 0).clone()
            bounds[j] = (lo, hi)
            signs[j] = sg
        for c, (j, i) in enumerate(splits):
            lo, hi = bounds[j]
            lo.reshape(n, -1)[2 * c + 1, i] = 0.0  # active child: x >= 0
            hi.reshape(n, -1)[2 * c, i] = 0.0  # inactive child: x <= 0
            signs[j].reshape(n, -1)[2 * c, i] = -1
            signs[j].reshape(n, -1)[2 * c + 1, i] = 1
        pos = {j: q for q, j in enumerate(self.srcs)}
        stale = torch.tensor([min(p.stale, pos[j]) for p, (j, _) in zip(parents, splits)]).repeat_interleave(2)
        if retighten:
            if time.perf_counter() >= self.deadline:
                return None
            bounds = retighten_after(self.net, self.many(bounds), bounds, self.srcs, stale, deadline=self.deadline)
            stale = torch.full_like(stale, 1 << 30)
        infeasible = torch.zeros(n, dtype=torch.bool)
        for j in self.srcs:
            lo, hi = bounds[j]
            tol = SAFETY_REL * torch.maximum(torch.ones_like(lo), torch.maximum(lo.abs(), hi.abs()))
            infeasible |= (lo - hi > tol).reshape(n, -1).any(1)
        alpha = {i: torch.cat([p.alpha[i] for p in parents]).repeat_interleave(2, 0).to(torch.float64) for i in parents[0].alpha}
        beta: dict[int, Tensor] = {}
        r = self.rows.n_all
        for j in self.srcs:
            if not bool((signs[j] != 0).any()):
                continue
            shape = self.net.graph[j].shape
            parts = [p.beta[j] if j in p.beta else torch.zeros((1, r, *shape), dtype=torch.float32) for p in parents]
            beta[j] = torch.cat(parts).repeat_interleave(2, 0).to(torch.float64)
        theta = torch.cat([p.theta for p in parents]).repeat_interleave(2, 0)
        signs_f = {j: s.to(torch.float64) for j, s in signs.items() if bool((s != 0).any())}
        return bounds, signs_f, alpha, beta, theta, infeasible, signs, stale

    def relu_round(self, parents: list[_Domain]) -> None:
        splits: list[tuple[int, int] | None]
        if self.o.branching == "fsb":
            splits = self.fsb_choose(parents)
        else:
            splits = [self.choose(d) for d in parents]
        live = []
        for d, s in zip(parents, splits):
            if s is None:
                self.leaf(d)
            else:
                live.append((d, s))
        if not live or self.found is not None:
            return
        ps = [d for d, _ in live]
        k = int(self.o.retighten)
        kids = self.children_inputs(ps, [s for _, s in live], retighten=k > 0 and self.rounds % k == 0)
        if kids is None:
            for d in ps:
                self.push(d)
            return
        bounds, signs, alpha, beta, theta, infeasible, signs8, stale = kids
        n = 2 * len(ps)
        plb = torch.stack([d.lb for d in ps]).repeat_interleave(2, 0)
        pprov = torch.stack([d.proven for d in ps]).repeat_interleave(2, 0)
        res = bound_rows(self.net, self.many(bounds), self.rows, bounds, alpha, beta, signs, theta,
                         self.weights(pprov), steps=self.o.beta_steps, lr_alpha=self.o.lr_alpha,
                         lr_beta=self.o.lr_beta, deadline=self.deadline,
                         step_dtype=self.step_dtype)
        self.domains += n
        lb = torch.maximum(plb, res.lb)
        proven = pprov | self.rows.decide(lb) | infeasible.unsqueeze(1)
        val = self.value(lb, proven)
        if self.o.stall_steps > 0:
            pval = torch.tensor([d.value for d in ps], dtype=torch.float64).repeat_interleave(2)
            stalled = ~proven.all(1) & (val <= pval + STALL_GAIN * (1.0 + pval.abs()))
            if bool(stalled.any()) and time.perf_counter() < self.deadline:
                res, lb = self.unstall(stalled.nonzero().reshape(-1), res, lb, bounds, signs, pprov)
                proven = pprov | self.rows.decide(lb) | infeasible.unsqueeze(1)
                val = self.value(lb, proven)
        kids_out = []
        for c in range(n):
            if bool(proven[c].all()):
                self.close(math.inf if bool(infeasible[c]) else float(val[c]))
                continue
            d = _Domain(lb[c], proven[c], float(val[c]), ps[c // 2].depth + 1,
                        {i: t[c : c + 1].to(torch.float32) for i, t in res.alpha.items()},
                        res.theta[c : c + 1],
                        None if res.a0 is None else res.a0[c : c + 1].to(torch.float32),
                        bounds={j: (bounds[j][0][c : c + 1], bounds[j][1][c : c + 1]) for j in self.srcs},
                        signs={j: s[c : c + 1] for j, s in signs8.items() if bool((s[c] != 0).any())},
                        beta={i: t[c : c + 1].to(torch.float32) for i, t in res.beta.items()},
                        scores={i: t[c : c + 1].to(torch.float32) for i, t in res.scores.items()},
                        stale=int(stale[c]))
            kids_out.append(d)
            self.push(d)
        self.attack_children(kids_out)

    def unstall(self, idx: Tensor, res: Bounded, lb: Tensor, bounds: NodeBounds, signs: dict[int, Tensor],
                pprov: Tensor) -> tuple[Bounded, Tensor]:
        """``stall_steps`` more alpha / beta steps on the children ``idx`` whose bound the split did not raise.

        Deep in a stalled branch the children are often infeasible (their split constraints contradict
        each other), which only a large beta shows; a few steps per round, warm-started or not, do not
        get there (docs/bab.md, "Stalled subdomains"). Those children, and only those, get
        more steps, from where the first pass left them; every row keeps the better of the two float64 bounds."""
        def take(t: Tensor) -> Tensor:
            return t.index_select(0, idx)

        more = bound_rows(self.net, self.many({j: (take(b[0]), take(b[1])) for j, b in bounds.items()}), self.rows,
                          {j: (take(b[0]), take(b[1])) for j, b in bounds.items()},
                          {i: take(t) for i, t in res.alpha.items()}, {i: take(t) for i, t in res.beta.items()},
                          {i: take(t) for i, t in signs.items()}, take(res.theta), self.weights(take(pprov)),
                          steps=self.o.stall_steps, lr_alpha=self.o.stall_lr_alpha, lr_beta=self.o.stall_lr_beta,
                          deadline=self.deadline, step_dtype=self.step_dtype)
        better = more.lb.amin(1) >= res.lb.index_select(0, idx).amin(1)  # per child: the whole parameter set

        def merge(old: Tensor, new: Tensor) -> Tensor:
            out = old.clone()
            pick = better.reshape(-1, *([1] * (new.ndim - 1)))
            out[idx] = torch.where(pick, new.to(old.dtype), old.index_select(0, idx))
            return out

        lb = lb.clone()
        lb[idx] = torch.maximum(lb.index_select(0, idx), more.lb)
        merged = Bounded(lb, {i: merge(t, more.alpha[i]) for i, t in res.alpha.items()},
                         {i: merge(t, more.beta[i]) for i, t in res.beta.items()}, merge(res.theta, more.theta),
                         None if res.a0 is None or more.a0 is None else merge(res.a0, more.a0),
                         {i: merge(t, more.scores[i]) for i, t in res.scores.items() if i in more.scores})
        return merged, lb

    def leaf(self, d: _Domain) -> None:
        """No unstable ReLU left: decide the open disjuncts by LP on the activation pattern."""
        open_k = [k for k in range(self.rows.n_disjuncts) if not bool(d.proven[k])]
        verdict, out = leaf_lp(self.net, self.pset, self.rows, d.bounds, open_k, self.confirm)
        if verdict == "proven" and isinstance(out, float):
            # the open disjuncts by the LP (HiGHS, VERIFY_TOL), the others by the float64 bounds
            v = self.rows.value(d.lb.unsqueeze(0))[0]
            closed = float(v[d.proven].min()) if bool(d.proven.any()) else math.inf
            self.close(min(closed, out) if out < math.inf else closed)
            return
        if verdict == "candidate" and isinstance(out, tuple):
            self.close(d.value)  # its bound still counts towards the global lower bound
            self.found = out
            return
        self.stuck.append(d)
        self.stuck_reason = "incomplete: an L2 leaf" if getattr(self.pset, "p", math.inf) == 2.0 else "numerics"

    # ---- input splitting
    def input_round(self, parents: list[_Domain]) -> None:
        los, his = [], []
        for d in parents:
            assert d.lo is not None and d.hi is not None
            width = (d.hi - d.lo).reshape(-1)
            if d.a0 is not None:
                w = self.weights(d.proven.unsqueeze(0))[0].to(torch.float32)
                coef = (d.a0[0].reshape(d.a0.shape[1], -1).abs() * w.unsqueeze(1)).sum(0).to(torch.float64)
                key = width * (coef + 1e-9 * coef.max().clamp(min=1e-30))
                if not bool((key > 0).any()):
                    key = width
            else:
                key = width
            i = int(key.argmax())
            mid = (d.lo.reshape(-1)[i] + d.hi.reshape(-1)[i]) / 2
            left_hi = d.hi.clone()
            left_hi.reshape(-1)[i] = mid
            right_lo = d.lo.clone()
            right_lo.reshape(-1)[i] = mid
            los += [d.lo, right_lo]
            his += [left_hi, d.hi]
        lo, hi = torch.cat(los), torch.cat(his)
        n = lo.shape[0]
        boxes = Box(lo, hi)
        with torch.no_grad():
            bounds = linear_intermediate(self.net, boxes, rule="crown", dtype=torch.float64)  # type: ignore[arg-type]
        alpha = {i: torch.cat([p.alpha[i] for p in parents]).repeat_interleave(2, 0).to(torch.float64) for i in parents[0].alpha}
        theta = torch.cat([p.theta for p in parents]).repeat_interleave(2, 0)
        plb = torch.stack([d.lb for d in parents]).repeat_interleave(2, 0)
        pprov = torch.stack([d.proven for d in parents]).repeat_interleave(2, 0)
        res = bound_rows(self.net, boxes, self.rows, bounds, alpha, {}, {}, theta, self.weights(pprov),
                         steps=self.o.beta_steps, lr_alpha=self.o.lr_alpha, lr_beta=self.o.lr_beta,
                         deadline=self.deadline, scores=False)
        self.domains += n
        lb = torch.maximum(plb, res.lb)
        proven = pprov | self.rows.decide(lb)
        val = self.value(lb, proven)
        kids = []
        for c in range(n):
            if bool(proven[c].all()):
                self.close(float(val[c]))
                continue
            d = _Domain(lb[c], proven[c], float(val[c]), parents[c // 2].depth + 1,
                        {i: t[c : c + 1].to(torch.float32) for i, t in res.alpha.items()}, res.theta[c : c + 1],
                        None if res.a0 is None else res.a0[c : c + 1].to(torch.float32), lo=lo[c : c + 1], hi=hi[c : c + 1])
            kids.append(d)
            self.push(d)
        self.attack_children(kids)

    # ---- the loop
    def run(self, root: _Domain, input_mode: bool) -> tuple[str, str | None]:
        self.push(root)
        while self.heap:
            if self.found is not None:
                return "falsified", None
            if time.perf_counter() >= self.deadline:
                return "unknown", "timeout"
            if len(self.heap) > self.o.max_domains:
                return "unknown", "memory"
            parents = [heapq.heappop(self.heap)[2] for _ in range(min(self.o.batch, len(self.heap)))]
            self.rounds += 1
            if input_mode:
                self.input_round(parents)
            else:
                self.relu_round(parents)
            self.report()
        if self.found is not None:
            return "falsified", None
        if self.stuck:
            return "unknown", self.stuck_reason
        if time.perf_counter() >= self.deadline:
            return "unknown", "timeout"  # never verify past the deadline
        return "verified", None


def _input_mode(net: Network, pset: Any, option: str) -> bool:
    boxy = isinstance(pset, Box) or math.isinf(getattr(pset, "p", 2.0))
    if option == "on":
        if not boxy:
            raise UnsupportedLayerError("input splitting needs a box or an Linf ball")
        return True
    if option == "off":
        return False
    return boxy and net.input_dim <= INPUT_SPLIT_MAX_DIM


def bab(net: Network, query: Query, *, options: BabOptions = BabOptions(), deadline: float | None = None,
        confirm: Callable[[Tensor], tuple[Tensor, int] | None] | None = None, initial_bounds: NodeBounds | None = None,
        progress: Progress | None = None) -> Verdict:
    """Decide whether some point of the query's input set (one example: an LpBall or a Box) reaches a
    disjunct C_k y <= d_k; see the module docstring. ``confirm``: the re-check of candidate points
    (default :func:`verify.query.confirm_point` on the query). ``initial_bounds`` (valid intermediate
    bounds on the set, e.g. from a previous pass) are intersected with the root's."""
    input_set, disjuncts = query.input_set, query.disjuncts
    check = confirm if confirm is not None else (lambda x: confirm_point(net, query, x))
    t0 = time.perf_counter()
    end = t0 + options.timeout
    if deadline is not None:
        end = min(end, deadline)
    if input_set.n != 1:
        raise ValueError(f"bab() takes one example, got {input_set.n}")
    if any(isinstance(n.op, MaxPool2d) for n in net.graph):
        raise UnsupportedLayerError("branch and bound does not split through MaxPool2d; use --complete mip")
    pset: Any = input_set.to(torch.float64)  # LpBall | Box: the bound code names only LpBall
    with torch.no_grad():
        y0 = net.forward(pset.center.to(torch.float64).reshape(1, *net.input_shape))
    scale = max(1.0, float(y0.abs().max()))
    rows = make_rows(disjuncts, net.n_classes, scale)

    def result(status: Literal["verified", "falsified", "unknown"], reason: str | None, s: _Search | None,
               lb: float) -> Verdict:
        found = s.found if s is not None and status == "falsified" else None
        return _verdict(status, reason, found, lb, 0 if s is None else s.domains, 0 if s is None else s.max_queue, t0,
                        net.input_shape)

    if rows.n_disjuncts == 0:
        return result("verified", None, None, math.inf)
    s = _Search(net, pset, rows, options, end, check, progress, t0)
    s.attack_root()
    if s.found is not None:
        return result("falsified", None, s, -math.inf)
    input_mode = _input_mode(net, pset, options.input_split)
    with torch.no_grad():
        bounds = linear_intermediate(net, pset, rule="crown", dtype=torch.float64, start=initial_bounds)
    if options.intermediate_alpha_steps > 0 and not input_mode and time.perf_counter() < end:
        now = time.perf_counter()
        bounds = alpha_intermediate(net, pset, bounds, steps=options.intermediate_alpha_steps,
                                    deadline=min(end, now + options.intermediate_alpha_share * (end - now)))
    alpha0 = crown_slopes(net, bounds, rows.n_all)
    theta0 = rows.theta0(1)
    res = bound_rows(net, pset, rows, bounds, alpha0, {}, {}, theta0, torch.ones((1, rows.n_all), dtype=torch.float64),
                     steps=options.alpha_steps, lr_alpha=options.lr_alpha, lr_beta=options.lr_beta, deadline=end,
                     step_dtype=s.step_dtype,
                     scores=not input_mode)
    s.domains = 1
    proven = rows.decide(res.lb)
    val = float(s.value(res.lb, proven)[0])
    if bool(proven.all()):
        if time.perf_counter() >= end:
            return result("unknown", "timeout", s, min(val, 0.0))
        return result("verified", None, s, val)
    root = _Domain(res.lb[0], proven[0], val, 0, {i: t.to(torch.float32) for i, t in res.alpha.items()}, res.theta,
                   None if res.a0 is None else res.a0.to(torch.float32))
    if input_mode:
        lo, hi = (t.to(torch.float64) for t in pset.box())
        root.lo, root.hi = lo.reshape(1, *net.input_shape), hi.reshape(1, *net.input_shape)
    else:
        root.bounds = {j: bounds[j] for j in s.srcs}
        root.scores = {i: t.to(torch.float32) for i, t in res.scores.items()}
    s.attack_children([root], steps=50)
    open_k = [k for k in range(rows.n_disjuncts) if not bool(proven[0, k])]
    if options.per_disjunct and len(open_k) >= 2 and s.found is None:
        return _per_disjunct(net, pset, disjuncts, rows, scale, bounds, res, proven, root, open_k, options, end,
                             check, progress, t0, s, input_mode)
    status, reason = s.run(root, input_mode)
    lb = s.global_lb() if status != "falsified" else min(s.global_lb(), 0.0)
    if status != "verified":
        lb = min(lb, 0.0)
    return result(status, reason, s, lb)  # type: ignore[arg-type]


def _per_disjunct(net: Network, pset: Any, disjuncts: Sequence[Disjunct], rows: Rows, scale: float,
                  bounds: NodeBounds, res: Bounded, proven: Tensor, root: _Domain, open_k: list[int], options: BabOptions, end: float,
                  confirm: Callable[[Tensor], tuple[Tensor, int] | None], progress: Progress | None, t0: float,
                  s: _Search, input_mode: bool) -> Verdict:
    """One search per disjunct still open at the root, hardest (lowest root bound) first, each on that
    disjunct's rows alone (``BabOptions.per_disjunct``), from the root's intermediate bounds and slopes.

    Every subdomain of the joint search pays for all open rows and is split for their sum; a search
    per disjunct bounds one row (plus a combination row) per subdomain and splits for it alone. The
    query is verified when every disjunct's search is; a point ``confirm`` accepts (for any disjunct)
    falsifies it. Hardest first: the likeliest to be violated, and when time runs out on it the easier ones could
    not have made the query verified anyway, while the bound reported is then the searched one's, not its root's."""
    values = rows.value(res.lb)[0]
    best = [float(v) for v in values]  # per disjunct: its root bound, then its search's
    domains, max_queue = s.domains, s.max_queue
    owner_all = rows.owner_all
    for k in sorted(open_k, key=lambda k: float(values[k])):
        sub_rows = make_rows([disjuncts[k]], net.n_classes, scale)
        idx = (owner_all == k).nonzero().reshape(-1)  # the disjunct's rows, then its combination row
        m = sub_rows.combo_d.shape[1]
        theta = res.theta[:, (rows.combo_owner == k).nonzero().reshape(-1), :m]
        alpha = {i: t[:, idx] for i, t in res.alpha.items()}
        # fewer rows per subdomain: more subdomains per batched pass (the same tree when the search completes; measured
        # on the 784-256x4 MLP at Linf 0.01, image #2: verified in 26.4 s with 256 parents per round, 33.3 s with 64)
        grow = max(1, min(MAX_BATCH_GROWTH, rows.n_all // max(1, sub_rows.n_all)))
        def report(info: dict[str, Any], k: int = k) -> None:  # the query's bound: the other disjuncts' count too
            if progress is not None:
                progress({**info, "lower_bound": min([info["lower_bound"]] + [b for q, b in enumerate(best) if q != k])})

        sub = _Search(net, pset, sub_rows, replace(options, batch=options.batch * grow), end, confirm, report, t0)
        sub.domains = domains
        r = bound_rows(net, pset, sub_rows, bounds, alpha, {}, {},
                       theta, torch.ones((1, sub_rows.n_all), dtype=torch.float64), steps=0, lr_alpha=0.0,
                       lr_beta=0.0, deadline=end, scores=not input_mode)
        sub_proven = sub_rows.decide(r.lb)
        val = float(sub.value(r.lb, sub_proven)[0])
        if bool(sub_proven.all()):
            best[k] = max(best[k], val)
            continue
        d = _Domain(r.lb[0], sub_proven[0], val, 0, {i: t.to(torch.float32) for i, t in r.alpha.items()}, r.theta,
                    None if r.a0 is None else r.a0.to(torch.float32), bounds=root.bounds, lo=root.lo, hi=root.hi)
        d.scores = {i: t.to(torch.float32) for i, t in r.scores.items()}
        status, reason = sub.run(d, input_mode)
        domains, max_queue = sub.domains, max(max_queue, sub.max_queue)
        best[k] = max(best[k], sub.global_lb())
        lb = min(best)
        if status != "verified":
            found = sub.found if status == "falsified" else None
            return _verdict(status, reason, found, min(lb, 0.0), domains, max_queue, t0,  # type: ignore[arg-type]
                            net.input_shape)
    lb = min(best)
    if time.perf_counter() >= end:
        return _verdict("unknown", "timeout", None, min(lb, 0.0), domains, max_queue, t0, net.input_shape)
    return _verdict("verified", None, None, lb, domains, max_queue, t0, net.input_shape)
