"""Intermediate bounds for the linear methods, layer by layer.

One forward sweep over the graph: every node first gets interval bounds from the
(already tightened) bounds of its inputs; a node that feeds a ReLU is then tightened
with the backward engine, but only on the neurons the interval bounds leave unstable
(stable neurons need no better bound: their relaxation is already exact). Each such
neuron is one row of a batch of (example, neuron) pairs, processed in chunks so that
memory stays bounded. New bounds are intersected with the interval ones. CROWN's rows go
only to the neurons that a KW pass (one two-sided row each, where it pays: ``_kw_first``) leaves
unstable; both are sound, so their intersection is.
"""

from __future__ import annotations

import math
import time
from typing import cast

import torch
from torch import Tensor

from ..network import AffineLayer, Flatten, Network
from ..spec import LpBall
from .backward import backward_bound, backward_range, relu_inputs
from .convtail import reuse_matrices, tail_plan
from .interval import node_interval
from .local import LocalBounds, local_plan
from .relax import ReluRelaxation, Rule, relu_relaxation
from .rounding import RoundingGuard
from .slopes import crown_slopes, optimise_slopes
from .types import NodeBounds

# elements of the largest coefficient tensor per chunk (float64: 8 bytes each)
CHUNK_ELEMENTS = 1 << 23
# unstable share of a conv layer's neurons above which LocalBounds.all_ranges bounds them all
ALL_AT_ONCE_FRACTION = 0.25
# CROWN's KW first pass (_kw_first): judged on this many examples, kept if it leaves at most this
# share of their unstable neurons unstable
KW_PROBE = 16
KW_FIRST_SHARE = 0.5


def _interval_is_exact(net: Network, pset: LpBall, k: int) -> bool:
    """Linf ball and one mixing affine map from the input: the interval is the exact range."""
    if not math.isinf(pset.p):
        return False
    anc = net.ancestors(k) - {0}
    ops = [net.graph[i].op for i in anc]
    if any(not getattr(op, "affine", False) for op in ops):
        return False
    return sum(not isinstance(op, Flatten) for op in ops) <= 1 and all(len(net.graph[i].inputs) == 1 for i in anc)


def linear_intermediate(
    net: Network,
    pset: LpBall,
    *,
    rule: Rule,
    dtype: torch.dtype = torch.float32,
    start: NodeBounds | None = None,
    intersect_interval: bool = True,
    guard: RoundingGuard | None = None,
    alpha_steps: int = 0,
    alpha_lr: float = 0.25,
) -> NodeBounds:
    """Bounds on every node; those feeding a ReLU tightened by backward bounds with ``rule``.

    ``start`` optionally gives known bounds (e.g. from a cheaper method) to intersect with.
    ``intersect_interval=False`` gives the pure method (every neuron bounded by the backward
    pass alone, as in Wong & Kolter's and CROWN's papers), for comparisons with their code.
    ``guard`` widens every node's bounds by a rigorous bound on their rounding error before
    later nodes use them (:mod:`verify.bounds.rounding`). ``alpha_steps`` > 0 (rule crown):
    alpha-CROWN's intermediate bounds -- the neurons CROWN leaves unstable are then bounded with
    slopes of their own, optimised for that many steps (:func:`_alpha_tighten`; those bounds are
    detached), before the guard and the later nodes see them.
    """
    with reuse_matrices():  # the parameters do not change while the layers are bounded
        return _linear_intermediate(net, pset, rule, dtype, start, intersect_interval, guard, alpha_steps, alpha_lr)


def _linear_intermediate(net: Network, pset: LpBall, rule: Rule, dtype: torch.dtype, start: NodeBounds | None,
                         intersect_interval: bool, guard: RoundingGuard | None, alpha_steps: int = 0,
                         alpha_lr: float = 0.25) -> NodeBounds:
    pset = pset.to(dtype)
    feeds = set(relu_inputs(net))
    lo0, hi0 = pset.box()
    bounds: NodeBounds = {0: (lo0, hi0)}
    if guard is not None:
        guard.start(lo0, hi0)
    for node in net.graph[1:]:  # differentiable: training uses these bounds
        lo, hi = node_interval(node, bounds)
        if start is not None and node.index in start:
            lo = torch.maximum(lo, start[node.index][0].to(dtype))
            hi = torch.minimum(hi, start[node.index][1].to(dtype))
        if node.index in feeds and not _interval_is_exact(net, pset, node.index):
            if not intersect_interval:
                lo, hi = torch.full_like(lo, -torch.inf), torch.full_like(hi, torch.inf)
            if rule == "crown" and intersect_interval:  # the pure method: CROWN's rows alone
                lo, hi = _kw_first(net, pset, node.index, lo, hi, bounds)
            lo, hi = _tighten(net, pset, node.index, lo, hi, bounds, rule)
            if alpha_steps > 0 and rule == "crown":
                a_lo, a_hi = _alpha_tighten(net, pset, node.index, lo, hi, bounds, steps=alpha_steps, lr=alpha_lr)
                lo, hi = torch.maximum(lo, a_lo), torch.minimum(hi, a_hi)  # keeps CROWN's gradient where it wins
        if guard is not None:
            lo, hi = guard.node(node, lo, hi, bounds)
        bounds[node.index] = (lo, hi)
    return bounds


def _kw_first(net: Network, pset: LpBall, k: int, lo: Tensor, hi: Tensor, bounds: NodeBounds) -> tuple[Tensor, Tensor]:
    """CROWN's intermediate bounds, first pass: KW's bounds where they stabilise most neurons.

    KW's relaxation (the lower line parallel to the upper one) is one of CROWN's family, so its
    bounds are as sound as CROWN's, and one two-sided row per neuron gives both ends on the
    batched paths, at about half the cost of CROWN's two one-sided rows. On certifiably trained
    networks it leaves few neurons unstable (the zoo's KW CNN at eps 0.1: 826 -> 134 of the second
    conv layer's 1568, 93 -> 3.3 of the dense layer's 100 per example), and CROWN then only bounds
    those, where the result is both bounds intersected. On networks where it stabilises little
    (plain ones), the pass would be wasted: it is judged on the first ``KW_PROBE`` examples and
    run on the rest only if it leaves at most ``KW_FIRST_SHARE`` of their unstable neurons.
    """
    n = lo.shape[0]
    if not bool(((lo < 0) & (hi > 0)).any()):
        return lo, hi
    m = min(n, KW_PROBE)
    head = torch.arange(m, device=lo.device)

    def part(idx: Tensor) -> tuple[LpBall, NodeBounds]:
        return pset.select(idx), {i: (b[0].index_select(0, idx), b[1].index_select(0, idx)) for i, b in bounds.items()}

    sub, sub_bounds = part(head)
    plo, phi = _tighten(net, sub, k, lo[:m], hi[:m], sub_bounds, "kw")
    if m == n:
        return plo, phi
    probe_before = int(((lo[:m] < 0) & (hi[:m] > 0)).sum())
    left = int(((plo < 0) & (phi > 0)).sum())
    if left > KW_FIRST_SHARE * probe_before:
        return torch.cat([plo, lo[m:]]), torch.cat([phi, hi[m:]])
    tail = torch.arange(m, n, device=lo.device)
    sub, sub_bounds = part(tail)
    rlo, rhi = _tighten(net, sub, k, lo[m:], hi[m:], sub_bounds, "kw")
    return torch.cat([plo, rlo]), torch.cat([phi, rhi])


def _select(rel: ReluRelaxation, ex: Tensor) -> ReluRelaxation:
    # index_select, not t[ex]: its backward is an index_add, much faster than advanced
    # indexing's accumulating index_put on CPU
    lam_lo = rel.lam_lo.index_select(0, ex)
    lam_up = lam_lo if rel.lam_up is rel.lam_lo else rel.lam_up.index_select(0, ex)
    return ReluRelaxation(lam_lo, lam_up, rel.mu_up.index_select(0, ex), rel.unstable.index_select(0, ex))


def _tighten(net: Network, pset: LpBall, k: int, lo: Tensor, hi: Tensor, bounds: NodeBounds,
             rule: Rule) -> tuple[Tensor, Tensor]:
    n = lo.shape[0]
    shape = net.graph[k].shape
    lo_f, hi_f = lo.reshape(n, -1).clone(), hi.reshape(n, -1).clone()
    pairs = ((lo_f < 0) & (hi_f > 0)).nonzero().detach()
    if pairs.numel() == 0:
        return lo, hi
    anc = net.ancestors(k)
    need = [j for j in relu_inputs(net) if j in anc and j != k]
    # relaxations once per example, gathered per (example, neuron) pair below
    rels = {j: relu_relaxation(bounds[j][0], bounds[j][1], rule) for j in need}
    if rule == "kw":
        for j, r in rels.items():  # parallel lines: one slope tensor, gathered once
            rels[j] = ReluRelaxation(r.lam_up, r.lam_up, r.mu_up, r.unstable)
    op = net.graph[k].op
    # Node k's own affine layer is the same for every example: pull each distinct neuron's
    # row back through it once (not once per (example, neuron) pair) and start one node down.
    node = net.graph[k]
    first_affine = getattr(op, "affine", False) and len(node.inputs) == 1
    begin = node.inputs[0] if first_affine else k
    plan = local_plan(net, pset, k)
    local = LocalBounds(net, pset, k, plan, rels) if plan is not None else None
    # a second conv layer over a box: every neuron at once, layer-wise -- when enough of them are
    # unstable (measured on the zoo's F-MNIST CNNs, 50 points, kw: as fast as the pairs below at
    # 45 % unstable, 1.6x faster at 97-99 %)
    many = pairs.shape[0] >= ALL_AT_ONCE_FRACTION * lo_f.numel()
    both = local.all_ranges() if local is not None and rule == "kw" and many else None
    if both is not None:
        unstable = (lo_f < 0) & (hi_f > 0)
        lo_f = torch.where(unstable, torch.maximum(lo_f, both[0].reshape(n, -1)), lo_f)
        hi_f = torch.where(unstable, torch.minimum(hi_f, both[1].reshape(n, -1)), hi_f)
        return lo_f.reshape(n, *shape), hi_f.reshape(n, *shape)
    if many and first_affine and tail_plan(net, k) is not None:
        # below a conv stem: every neuron of node k at once, a block of examples at a time
        return _tighten_all_rows(net, pset, k, lo_f, hi_f, rels, rule)
    if plan is not None:  # receptive-field windows: coefficients live on windows only
        widest = max(net.graph[i].shape[0] * f.h * f.w for i, f in plan)
    else:
        widest = max(math.prod(net.graph[i].shape) for i in anc)
    # kw: one spec row per pair gives both bounds (backward_range); otherwise +e and -e rows
    rows_per_pair = 1 if rule == "kw" else 2
    chunk = max(1, CHUNK_ELEMENTS // (rows_per_pair * widest))
    for c0 in range(0, pairs.shape[0], chunk):
        ex, nb = pairs[c0 : c0 + chunk, 0], pairs[c0 : c0 + chunk, 1]
        p = ex.shape[0]
        if local is not None:
            v_lo, v_hi = local.range(ex, nb, two_sided=rule == "kw")
            lo_f[ex, nb] = torch.maximum(lo_f[ex, nb], v_lo)
            hi_f[ex, nb] = torch.minimum(hi_f[ex, nb], v_hi)
            continue
        sub = pset.select(ex)
        sub_rels = {j: _select(r, ex) for j, r in rels.items()}
        if first_affine:
            uniq, inv = torch.unique(nb, return_inverse=True)
            _, rows, bias = neuron_rows(net, k, uniq, lo)
            w, b = rows.index_select(0, inv).unsqueeze(1), bias.index_select(0, inv).unsqueeze(1)
        else:
            w = lo.new_zeros((p, 1, lo_f.shape[1]))
            w[torch.arange(p, device=lo.device), 0, nb] = 1.0
            w = w.reshape(p, 1, *shape)
            b = lo.new_zeros((p, 1))
        if rule == "kw":
            v_lo, v_hi = backward_range(net, sub, begin, w, sub_rels, const=b)
            v_lo, v_hi = v_lo[:, 0], v_hi[:, 0]
        else:
            val = backward_bound(net, sub, begin, torch.cat([w, -w], 1), {}, rule=rule,
                                 const=torch.cat([b, -b], 1), relaxations=sub_rels)
            v_lo, v_hi = val[:, 0], -val[:, 1]
        lo_f[ex, nb] = torch.maximum(lo_f[ex, nb], v_lo)
        hi_f[ex, nb] = torch.minimum(hi_f[ex, nb], v_hi)
    return lo_f.reshape(n, *shape), hi_f.reshape(n, *shape)


def neuron_rows(net: Network, k: int, neurons: Tensor, like: Tensor) -> tuple[int, Tensor, Tensor]:
    """Spec rows selecting ``neurons`` (flat indices) of node k, and their constants: (node the rows
    start at, rows (m, *its shape), constants (m,)). When node k is one affine layer on one input, the
    rows are pulled back through it here, once for every example (its offset in the constants), and
    start at that input; otherwise they are unit rows on node k itself."""
    node = net.graph[k]
    m = neurons.numel()
    onehot = like.new_zeros((m, math.prod(node.shape)))
    onehot[torch.arange(m, device=like.device), neurons] = 1.0
    if not (getattr(node.op, "affine", False) and len(node.inputs) == 1):
        return k, onehot.reshape(m, *node.shape), like.new_zeros(m)
    begin = node.inputs[0]
    in_shape = net.graph[begin].shape
    aff = cast(AffineLayer, node.op)  # chosen by the layer's affine flag, not isinstance
    rows = aff.linear_t(onehot.reshape(m, *node.shape), in_shape)
    bias = aff.offset(in_shape, like.new_zeros((1,) * (len(in_shape) + 1))).reshape(-1)[neurons]
    return begin, rows, bias


def _tighten_all_rows(net: Network, pset: LpBall, k: int, lo_f: Tensor, hi_f: Tensor,
                      rels: dict[int, ReluRelaxation], rule: Rule) -> tuple[Tensor, Tensor]:
    """Backward bounds on every neuron of affine node k for every example, intersected with
    (lo_f, hi_f) on the unstable ones: one spec row per neuron, shared by all examples (the
    rows of node k's own layer), so the batched stem below (verify.bounds.convtail) serves
    many rows per example."""
    node = net.graph[k]
    n, m = lo_f.shape
    begin, rows, bias = neuron_rows(net, k, torch.arange(m, device=lo_f.device), lo_f)
    in_shape = net.graph[begin].shape
    chunk = max(1, CHUNK_ELEMENTS // (2 * m * math.prod(in_shape)))
    unstable = (lo_f < 0) & (hi_f > 0)
    los, his = [], []
    for e0 in range(0, n, chunk):
        sl = slice(e0, min(n, e0 + chunk))
        e = sl.stop - e0
        sub = pset.select(torch.arange(e0, sl.stop, device=lo_f.device))
        sub_rels = {j: ReluRelaxation(r.lam_lo[sl], r.lam_up[sl], r.mu_up[sl], r.unstable[sl]) for j, r in rels.items()}
        a = rows.expand(e, *rows.shape)
        c = bias.expand(e, m)
        if rule == "kw":
            v_lo, v_hi = backward_range(net, sub, begin, a, sub_rels, const=c)
        else:
            val = backward_bound(net, sub, begin, torch.cat([a, -a], 1), {}, rule=rule, const=torch.cat([c, -c], 1),
                                 relaxations=sub_rels)
            v_lo, v_hi = val[:, :m], -val[:, m:]
        u = unstable[sl]
        los.append(torch.where(u, torch.maximum(lo_f[sl], v_lo), lo_f[sl]))
        his.append(torch.where(u, torch.minimum(hi_f[sl], v_hi), hi_f[sl]))
    return torch.cat(los).reshape(n, *node.shape), torch.cat(his).reshape(n, *node.shape)


def alpha_intermediate(
    net: Network,
    pset: LpBall,
    bounds: NodeBounds,
    *,
    steps: int = 20,
    lr: float = 0.25,
    deadline: float = math.inf,
) -> NodeBounds:
    """alpha-CROWN on the intermediate bounds of ``bounds``: optimised lower slopes per unstable neuron.

    For every ReLU input after the first (in topological order), each still-unstable
    neuron's lower and upper bound is one spec row of its own, with its own slopes on every
    earlier ReLU (starting at CROWN's, clipped to [0, 1], best bound per row kept, so the
    result is never looser than ``bounds``). Later layers use the tightened earlier ones.
    With one hidden ReLU layer in front, the optimum is the triangle LP's (the Lagrangian
    dual of that LP has exactly these slopes as its variables), so this approaches the
    MIP's LP tightening at a fraction of its cost. The result is detached (not differentiable
    in the network's parameters): it is meant for the MIP's big-M values and final bounds.
    ``deadline`` (``time.perf_counter()``) stops optimising; bounds found so far are kept (any
    slopes give sound bounds). :func:`linear_intermediate` with ``alpha_steps`` does the same
    inside its own sweep (and so under its rounding guard).
    """
    dtype = bounds[0][0].dtype
    pset = pset.to(dtype)
    out: NodeBounds = {i: (lo.detach().clone(), hi.detach().clone()) for i, (lo, hi) in bounds.items()}
    for k in relu_inputs(net)[1:]:
        if time.perf_counter() >= deadline:
            break
        out[k] = _alpha_tighten(net, pset, k, *out[k], out, steps=steps, lr=lr, deadline=deadline)
    return out


def _alpha_tighten(net: Network, pset: LpBall, k: int, lo: Tensor, hi: Tensor, bounds: NodeBounds, *,
                   steps: int, lr: float, deadline: float = math.inf) -> tuple[Tensor, Tensor]:
    """Node k's unstable neurons bounded by alpha-CROWN (two one-sided rows each, slopes of their
    own on every earlier ReLU), intersected with (lo, hi); detached. Conv neurons over windows
    (:meth:`LocalBounds.optimise`: slopes on the receptive field only, all examples' pairs in one
    batch); others one batch of examples at a time, each example's neurons padded to the most any
    of them has (padding rows are zero and bound nothing)."""
    n = lo.shape[0]
    shape = net.graph[k].shape
    lo_f, hi_f = lo.detach().reshape(n, -1).clone(), hi.detach().reshape(n, -1).clone()
    unstable = (lo_f < 0) & (hi_f > 0)
    anc = net.ancestors(k)
    relus = [node.index for node in net.relu_nodes if node.index in anc]
    if steps <= 0 or not relus or not bool(unstable.any()):
        return lo_f.reshape(n, *shape), hi_f.reshape(n, *shape)
    bounds = {i: (b[0].detach(), b[1].detach()) for i, b in bounds.items() if i in anc}
    plan = local_plan(net, pset, k)
    if plan is not None:
        need = [j for j in relu_inputs(net) if j in anc and j != k]
        rels = {j: relu_relaxation(bounds[j][0], bounds[j][1], "crown") for j in need}
        local = LocalBounds(net, pset, k, plan, rels)
        pairs = unstable.nonzero()
        # rows of two (the +/- row), slopes and Adam's moments and the best copy on each window
        chunk = max(1, CHUNK_ELEMENTS // (8 * max(net.graph[i].shape[0] * f.h * f.w for i, f in plan)))
        for c0 in range(0, pairs.shape[0], chunk):
            ex, nb = pairs[c0 : c0 + chunk, 0], pairs[c0 : c0 + chunk, 1]
            v_lo, v_hi = local.optimise(ex, nb, steps=steps, lr=lr, deadline=deadline)
            lo_f[ex, nb] = torch.maximum(lo_f[ex, nb], v_lo)
            hi_f[ex, nb] = torch.minimum(hi_f[ex, nb], v_hi)
        return lo_f.reshape(n, *shape), hi_f.reshape(n, *shape)
    counts = unstable.sum(1)
    m = int(counts.max())
    # the j-th unstable neuron of each example (padding: neuron 0 with a zero row)
    rank = torch.cumsum(unstable.to(torch.long), 1) - 1
    slots = torch.zeros((n, m), dtype=torch.long, device=lo.device)
    ex_all, nb_all = unstable.nonzero().unbind(1)
    slots[ex_all, rank[ex_all, nb_all]] = nb_all
    live = torch.arange(m, device=lo.device)[None, :] < counts[:, None]
    chunk = max(1, CHUNK_ELEMENTS // (8 * m * sum(math.prod(net.graph[i].shape) for i in relus)))
    for e0 in range(0, n, chunk):
        idx = torch.arange(e0, min(n, e0 + chunk), device=lo.device)
        e = idx.numel()
        spec = lo_f.new_zeros((e, m, lo_f.shape[1]))
        spec.scatter_(2, slots[idx].unsqueeze(2), live[idx].unsqueeze(2).to(spec.dtype))
        spec = torch.cat([spec, -spec], 1).reshape(e, 2 * m, *shape)
        sub_bounds = {i: (b[0].index_select(0, idx), b[1].index_select(0, idx)) for i, b in bounds.items()}
        alpha = crown_slopes(net, sub_bounds, 2 * m, relus)
        best, _ = optimise_slopes(net, pset.select(idx), k, spec, sub_bounds, alpha, steps=steps, lr=lr,
                                  deadline=deadline)
        oe, oj = live[idx].nonzero().unbind(1)
        ex, nb = idx[oe], slots[idx][oe, oj]
        lo_f[ex, nb] = torch.maximum(lo_f[ex, nb], best[oe, oj])
        hi_f[ex, nb] = torch.minimum(hi_f[ex, nb], -best[oe, m + oj])
    return lo_f.reshape(n, *shape), hi_f.reshape(n, *shape)
