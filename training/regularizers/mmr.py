"""The Maximum Margin Regulariser (MMR) of Croce, Andriushchenko & Hein, AISTATS 2019.

"Provable robustness of ReLU networks via maximization of linear regions": inside the
linear region Q(x) of a point x, the network is affine, so the Lp distance from x to the
hyperplane of a ReLU (its pre-activation z_i = 0) is |z_i(x)| / ||grad_x z_i||_q and the
distance to the decision boundary between the label y and a class j is
(f_y(x) - f_j(x)) / ||grad_x (f_y - f_j)||_q (q the dual norm of p). Both are exact as long as
the hyperplane is reached inside the region. MMR pushes the k_B closest ReLU hyperplanes beyond
gamma_B and the k_D closest decision boundaries beyond gamma_D:

    MMR(x) = lambda * ( sum_{k_B closest} max(0, 1 - d_B / gamma_B) / k_B
                      + sum_{k_D closest} max(0, 1 - d_D / gamma_D) / k_D ).

Following the authors' ``regularizers.py``, the decision-boundary distance is *signed* (negative
when x is misclassified, which makes its hinge larger than 1), the label column never counts,
and the sums are divided by k_B and k_D. Their warm-up (``train.py``) is in :class:`MMRSchedule`.

All gradients w.r.t. x are the rows of the region's affine map. They are computed for the whole
batch by one forward pass that propagates the Jacobian (d = input-dimension columns) through the
Network's graph with the activation pattern of each point fixed (:func:`region_jacobians`); the
layers' own ``linear`` rules do the work, so any affine layer of verify.network is supported.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.bounds.backward import backward_rows, margin_spec
from verify.bounds.intermediate import CHUNK_ELEMENTS
from verify.bounds.local import Frame, LocalBounds, fold_windows, local_plan
from verify.bounds.relax import ReluRelaxation
from verify.errors import SpecError, UnsupportedLayerError
from verify.network import AffineLayer, Add, Network, ReLU
from verify.spec import LpBall, dual_norm

# denominators are floored here: a ReLU whose pre-activation is constant inside the region
# (zero gradient) has no hyperplane there, and gets a huge distance instead of a division by 0
_MIN_NORM = 1e-12
# examples per pass of region_grad_norms: their windows and rows stay in the cache (cnn_lenet_small,
# F-MNIST batch of 128, one thread: 8, 16 and 32 per pass within 10 % of each other, all ~2x faster
# than one pass of 128)
EXAMPLES_PER_PASS = 16


@dataclass(frozen=True, eq=False)
class RegionDistances:
    """Distances from each point to the hyperplanes of its linear region, in the Lp norm.

    ``relu``: (N, n_relu), over all ReLUs of the network in graph order (each node's
    units in C order). ``decision``: (N, K) signed distances to the boundaries f_y = f_j,
    +inf in the label column, computed on first use (with deferred rows, after :meth:`closest`:
    together with the rows it recomputes). ``logits``: (N, K).
    """

    relu: Tensor
    decision_of: Callable[[], Tensor]
    logits: Tensor
    p: float
    # the k smallest of ``relu`` per example, differentiable; with deferred rows
    # (region_distances(..., defer=True)) those among them are recomputed with the autograd graph
    closest_relu: Callable[[int], Tensor] | None = None

    @functools.cached_property
    def decision(self) -> Tensor:
        return self.decision_of()

    def closest(self, k: int) -> Tensor:
        """(N, min(k, n_relu)): each example's k smallest ReLU distances, ascending."""
        if self.closest_relu is not None:
            return self.closest_relu(k)
        return torch.topk(self.relu, min(k, self.relu.shape[1]), dim=1, largest=False).values


@dataclass(frozen=True, eq=False)
class RegionJacobians:
    """Pre-activations of every ReLU and the logits, with their gradients w.r.t. the input.

    ``pre[i]``: (N, n_i); ``grads[i]``: (B, d, n_i) with B = 1 before the first ReLU (the map
    is the same for every point there) and N after it. ``logit_grads``: (B, d, K).
    """

    pre: tuple[Tensor, ...]
    grads: tuple[Tensor, ...]
    logits: Tensor
    logit_grads: Tensor


def region_jacobians(net: Network, x: Tensor) -> RegionJacobians:
    """One batched forward pass of values and input-Jacobians with the ReLU patterns fixed."""
    net.check_input(x)
    n, d = x.shape[0], net.input_dim
    eye = torch.eye(d, dtype=x.dtype, device=x.device).reshape(1, d, *net.input_shape)
    values: list[Tensor] = [x]
    jacs: list[Tensor] = [eye]  # (B, d, *node_shape)
    pre: list[Tensor] = []
    grads: list[Tensor] = []
    for node in net.graph[1:]:
        op = node.op
        if isinstance(op, Add):
            v = values[node.inputs[0]]
            j = jacs[node.inputs[0]]
            for k in node.inputs[1:]:
                v = v + values[k]
                j = j + jacs[k]
        elif isinstance(op, ReLU):
            z, jz = values[node.inputs[0]], jacs[node.inputs[0]]
            pre.append(z.reshape(n, -1))
            grads.append(jz.reshape(jz.shape[0], d, -1))
            v = torch.relu(z)
            j = jz * (z > 0).to(x.dtype).unsqueeze(1)
        elif isinstance(op, AffineLayer):
            src = node.inputs[0]
            v = op.forward(values[src])
            jin = jacs[src]
            b = jin.shape[0]
            in_shape = net.graph[src].shape
            j = op.linear(jin.reshape(b * d, *in_shape)).reshape(b, d, *node.shape)
        else:
            raise UnsupportedLayerError(f"MMR needs a piecewise-affine ReLU network; it cannot handle {op!r}")
        values.append(v)
        jacs.append(j)
    logits = values[-1]
    lj = jacs[-1]
    return RegionJacobians(tuple(pre), tuple(grads), logits, lj.reshape(lj.shape[0], d, -1))


def region_distances(net: Network, x: Tensor, labels: Tensor, *, p: float | str, defer: bool = False,
                     prune: bool = False) -> RegionDistances:
    """Lp distances to the ReLU hyperplanes and (signed) to the decision boundaries of each point's region.

    The gradient norms come from :func:`region_grad_norms` (receptive-field windows for conv
    neurons, reverse mode elsewhere); :func:`region_jacobians` is the plain forward-mode
    reference it is tested against.

    ``defer``: the windowed convs and the dense layers after them (rarely among a point's closest
    hyperplanes, and the dearest to differentiate) get their distances without the autograd
    graph; :meth:`RegionDistances.closest` recomputes with it the few that are among the k
    closest (a windowed conv's from its units' rows of the window gradients: differentiating all
    their norms is two more passes over those gradients in the backward). Values and the gradients
    of ``closest`` are the same either way; ``relu`` itself is then not differentiable in those
    columns.

    ``prune`` (with ``defer``): those deferred columns of ``relu`` hold *lower bounds* of the
    distances instead, from an upper bound of the gradient norm by the triangle inequality through
    the windowed conv (:func:`_bounded_norms`, one small matrix product); :meth:`RegionDistances.closest`
    computes exactly, with the autograd graph, only the units whose bound does not already exceed
    the k-th smallest exact distance of their example: the same k smallest values as without it.
    """
    pv = _p_value(p)
    q = dual_norm(pv)
    net.check_input(x)
    y = labels.to(torch.long).reshape(-1)
    g = region_grad_norms(net, x, y, q, defer=defer, prune=prune)
    relu_d = [z.abs() / nrm.clamp(min=_MIN_NORM) for z, nrm in zip(g.pre, g.relu_norms)]
    relu = torch.cat(relu_d, dim=1) if relu_d else x.new_zeros((x.shape[0], 0))

    def decision() -> Tensor:
        numer = g.logits.gather(1, y[:, None]) - g.logits
        is_label = torch.zeros_like(numer, dtype=torch.bool).scatter_(1, y[:, None], True)
        return torch.where(is_label, torch.full_like(numer, math.inf), numer / g.margin_norms().clamp(min=_MIN_NORM))

    if g.deferred and prune:
        closest: Callable[[int], Tensor] | None = lambda k: _closest_pruned(relu, g, k)
    elif g.deferred:
        closest = lambda k: _closest_recomputed(relu, g, k)
    else:
        closest = None
    return RegionDistances(relu, decision, g.logits, pv, closest)


def _closest_recomputed(relu: Tensor, g: "RegionGradNorms", k: int) -> Tensor:
    """The k smallest distances per example, the deferred ones among them recomputed with gradients."""
    vals, idx = torch.topk(relu, min(k, relu.shape[1]), dim=1, largest=False)
    offsets = [0]
    for nrm in g.relu_norms:
        offsets.append(offsets[-1] + nrm.shape[1])
    for d in g.deferred:
        c0, c1 = offsets[d.slot], offsets[d.slot + 1]
        e0, e1 = d.start, d.start + d.n
        sub = idx[e0:e1]
        inside = (sub >= c0) & (sub < c1)
        if not bool(inside.any()):
            continue
        r = int(inside.sum(1).max())
        order = torch.argsort((~inside).to(torch.int8), dim=1, stable=True)[:, :r]  # the deferred entries first
        units = (sub.gather(1, order) - c0).clamp(0, c1 - c0 - 1)  # (n, r); padding rows repeat a valid unit
        exact = g.pre[d.slot][e0:e1].gather(1, units).abs() / d.recompute(units).clamp(min=_MIN_NORM)
        block = vals[e0:e1]
        block = block.scatter(1, order, torch.where(inside.gather(1, order), exact, block.gather(1, order)))
        vals = torch.cat([vals[:e0], block, vals[e1:]])
    return vals


# the norm bounds of prune are inflated by this factor: a bound that is tight (one unit of the cut
# feeding the row, or for q = 1 units with disjoint windows) must stay >= the exact norm after
# rounding, or a unit could be pruned wrongly; float32 sums of ~1.6k terms can be off by ~1e-4
# in the worst case, and the bounds are usually several times the norms, so this costs nothing
_BOUND_SLACK = 1.0 + 1e-3


def _closest_pruned(relu: Tensor, g: "RegionGradNorms", k: int) -> Tensor:
    """The k smallest distances per example, when the deferred columns of ``relu`` are lower bounds.

    t = each example's k-th smallest distance among the exact columns bounds its k-th smallest
    over all columns from above; a deferred unit whose lower bound exceeds t is not among the k
    smallest. The others (candidates) get their exact distances without the autograd graph, every
    pruned unit counts as +inf (which changes no value among the k smallest), and
    :func:`_closest_recomputed` recomputes with the graph those that are among the k smallest.
    """
    m = relu.shape[1]
    kk = min(k, m)
    offsets = [0]
    for nrm in g.relu_norms:
        offsets.append(offsets[-1] + nrm.shape[1])
    bounded = [d for d in g.deferred if d.bound]
    bound = torch.zeros_like(relu, dtype=torch.bool)
    for d in bounded:
        bound[d.start : d.start + d.n, offsets[d.slot] : offsets[d.slot + 1]] = True
    full = relu.masked_fill(bound, math.inf)
    t = torch.topk(full.detach(), kk, dim=1, largest=False).values[:, -1:]  # +inf when too few exact columns
    for d in bounded:
        c0, c1 = offsets[d.slot], offsets[d.slot + 1]
        e0, e1 = d.start, d.start + d.n
        cand = relu[e0:e1, c0:c1].detach() <= t[e0:e1]
        if not bool(cand.any()):
            continue
        r = int(cand.sum(1).max())
        order = torch.argsort((~cand).to(torch.int8), dim=1, stable=True)[:, :r]  # candidates first, distinct units
        with torch.no_grad():
            exact = g.pre[d.slot][e0:e1].gather(1, order).abs() / d.recompute(order).clamp(min=_MIN_NORM)
            exact = torch.where(cand.gather(1, order), exact, torch.full_like(exact, math.inf))
            block = torch.full_like(relu[e0:e1, c0:c1], math.inf).scatter(1, order, exact)
        full = torch.cat([full[:e0], torch.cat([full[e0:e1, :c0], block, full[e0:e1, c1:]], dim=1), full[e1:]])
    return _closest_recomputed(full, g, k)


@dataclass(frozen=True, eq=False)
class RegionGradNorms:
    """``pre[i]`` (N, n_i) pre-activations of ReLU node i and ``relu_norms[i]`` (N, n_i) the q-norms of
    their input gradients; ``margin_norms()`` (N, K) those of f_y - f_j (0 in column y), computed on
    the first call (:class:`_Margins`); ``logits``."""

    pre: tuple[Tensor, ...]
    relu_norms: tuple[Tensor, ...]
    margin_norms: Callable[[], Tensor]
    logits: Tensor
    deferred: tuple["_Deferred", ...] = ()


@dataclass(frozen=True, eq=False)
class _Deferred:
    """``relu_norms[slot]`` of examples start .. start + n, computed without the autograd graph
    (``bound``: upper bounds of the norms, from prune); ``recompute(units)`` gives the norms with
    it for ``units`` (n, R): R unit indices per example."""

    slot: int
    start: int
    n: int
    recompute: Callable[[Tensor], Tensor]
    bound: bool = False


def region_grad_norms(net: Network, x: Tensor, labels: Tensor, q: float, *, defer: bool = False,
                      prune: bool = False, kernels: dict[int, Tensor] | None = None) -> RegionGradNorms:
    """q-norms of the input gradients of every ReLU's pre-activation and of every margin, in the
    linear region of each point, without forming the (N, d, n) Jacobians.

    The region's affine map is the network with each ReLU replaced by its 0/1 pattern, which is
    a relaxation of :mod:`verify.bounds` with both lines equal; gradients are pulled back with
    verify's backward engine (:func:`verify.bounds.backward.backward_rows`), and for a
    conv layer fed by a chain of convs on the receptive-field windows only
    (:class:`verify.bounds.local.LocalBounds`): a neuron of the second 4x4/stride-2 conv of
    cnn_lenet_small reads 100 of the 784 pixels. Layers after such a conv are pulled back to it
    and composed with its window gradients (:func:`_pulled_norms`) instead of going on through
    the convs' transposes. Layers before the first ReLU have the same map for every point and are
    pulled back once. Differentiable in the network's parameters.

    ``prune`` (with ``defer``): the deferred rows get upper bounds of their norms
    (:func:`_bounded_norms`) instead of the norms. ``kernels``: shared by the passes of a batch
    (:class:`LocalBounds`; ~5 ms per pass to build and differentiate on cnn_lenet_small).
    """
    n = x.shape[0]
    if n > EXAMPLES_PER_PASS:  # a few examples at a time: their windows and rows stay in the cache
        kernels = {} if kernels is None else kernels
        parts = [region_grad_norms(net, xs, ys, q, defer=defer, prune=prune, kernels=kernels)
                 for xs, ys in zip(torch.split(x, EXAMPLES_PER_PASS), torch.split(labels, EXAMPLES_PER_PASS))]
        deferred = tuple(_Deferred(d.slot, d.start + i * EXAMPLES_PER_PASS, d.n, d.recompute, d.bound)
                         for i, r in enumerate(parts) for d in r.deferred)
        return RegionGradNorms(tuple(torch.cat(t) for t in zip(*(r.pre for r in parts))),
                               tuple(torch.cat(t) for t in zip(*(r.relu_norms for r in parts))),
                               lambda: torch.cat([r.margin_norms() for r in parts]), torch.cat([r.logits for r in parts]),
                               deferred)
    values = net.forward(x, all_nodes=True)
    rels: dict[int, ReluRelaxation] = {}
    for node in net.relu_nodes:
        z = values[node.inputs[0]]
        m = (z > 0).to(z.dtype).detach()
        rels[node.inputs[0]] = ReluRelaxation(m, m, torch.zeros_like(m), torch.zeros_like(m, dtype=torch.bool))
    # a radius-0 Linf ball around the points: the window machinery's interface (only its centre,
    # shape and norm are read when pulling coefficients back)
    ball = LpBall(x.detach(), torch.zeros(n, dtype=torch.float64, device=x.device), math.inf, -math.inf, math.inf)
    pre, norms = [], []
    deferred: list[_Deferred] = []
    last = len(net.graph) - 1
    margins: _Margins | None = None  # the margins' norms, when deferred dense rows share their composition
    cut: _WindowCut | None = None  # the last conv whose input gradients are known on windows
    cut_norms: Tensor | None = None  # the q-norms of its units' window gradients (N, C*P)
    for node in net.relu_nodes:
        k = node.inputs[0]
        pre.append(values[k].reshape(n, -1))
        windowed = None if _shared(net, k) else _window_gradients(net, ball, k, rels, kernels)
        if windowed is not None:
            cut = windowed
            with torch.set_grad_enabled(torch.is_grad_enabled() and not defer):
                cut_norms = _window_norms(cut, q)
            norms.append(cut_norms)
            if defer:
                deferred.append(_Deferred(len(norms) - 1, 0, n, functools.partial(_window_unit_norms, cut, q)))
            continue
        if cut is not None and _separates(net, cut.node, k):
            with torch.set_grad_enabled(torch.is_grad_enabled() and not defer):
                if defer and prune:
                    assert cut_norms is not None
                    norms.append(_bounded_norms(net, k, rels, cut, cut_norms.detach()))
                else:
                    norms.append(_rows_norms(net, k, rels, cut, q))
            if defer:
                if margins is None and _separates(net, cut.node, last):
                    margins = _Margins(cut, q)
                deferred.append(_Deferred(len(norms) - 1, 0, n, functools.partial(_unit_norms, net, k, rels, cut, q,
                                                                                   margins), bound=prune))
            continue
        norms.append(_node_grad_norms(net, ball, k, rels, q))
    logits = values[-1]
    kk = logits.shape[1]
    spec = margin_spec(labels, kk, x.dtype)
    if margins is not None and margins.cut is cut and _separates(net, cut.node, last):
        # through the cut, with the deferred dense rows when closest() comes first
        margins.rows = functools.partial(_cut_rows, net, last, spec, rels, cut)
        return RegionGradNorms(tuple(pre), tuple(norms), margins, logits, tuple(deferred))
    if cut is not None and _separates(net, cut.node, last):
        margin_norms = _pulled_norms(net, last, spec, rels, cut, q)
    else:
        coef = backward_rows(net, last, spec, rels)
        margin_norms = torch.linalg.vector_norm(coef.reshape(n, kk, -1), ord=q, dim=2)
    return RegionGradNorms(tuple(pre), tuple(norms), lambda: margin_norms, logits, tuple(deferred))


@dataclass(frozen=True, eq=False)
class _WindowCut:
    """Input gradients of every unit of conv node ``node`` on its receptive-field windows:
    ``grads`` (P, N, C, T, T', c0, r, r'), position-major, for P positions (``grid``), N examples
    and C channels, windows in tiles (:meth:`LocalBounds.all_coefficients`); ``frame`` places
    the windows on the input (``input_shape``)."""

    node: int
    grads: Tensor
    frame: Frame
    grid: tuple[int, int]
    input_shape: tuple[int, ...]


def _window_gradients(net: Network, ball: LpBall, k: int, rels: dict[int, ReluRelaxation],
                      kernels: dict[int, Tensor] | None = None) -> _WindowCut | None:
    """Node k's input gradients on windows, when it is a conv fed by a chain of convs."""
    plan = local_plan(net, ball, k)
    if plan is None:
        return None
    local = LocalBounds(net, ball, k, plan, rels, coefficients_only=True, kernels=kernels)
    nk = math.prod(net.graph[k].shape)
    widest = max(net.graph[i].shape[0] * f.h * f.w for i, f in plan)  # one neuron's widest window
    chunk = max(1, CHUNK_ELEMENTS // (nk * widest))  # examples per pass
    grads = torch.cat([local.all_coefficients(e0, min(e0 + chunk, ball.n)) for e0 in range(0, ball.n, chunk)], dim=1)
    return _WindowCut(k, grads, plan[-1][1], local.grid, tuple(net.graph[0].shape))


def _window_norms(cut: _WindowCut, q: float) -> Tensor:
    nrm = torch.linalg.vector_norm(cut.grads.flatten(3), ord=q, dim=3)  # (P, N, C)
    return nrm.permute(1, 2, 0).reshape(nrm.shape[1], -1)  # units in C order: channel-major


def _window_unit_norms(cut: _WindowCut, q: float, units: Tensor) -> Tensor:
    """(N, R): :func:`_window_norms` of the cut's units ``units[i]`` (channel-major indices) on
    example i, from their rows of the window gradients alone."""
    p_n, n, c = cut.grads.shape[:3]
    example = torch.arange(n, device=units.device)[:, None]
    rows = ((units % p_n) * n + example) * c + units // p_n  # row (position, example, channel)
    g = cut.grads.reshape(p_n * n * c, -1).index_select(0, rows.reshape(-1))
    return torch.linalg.vector_norm(g, ord=q, dim=1).reshape(units.shape)


def _shared(net: Network, k: int) -> bool:
    """No ReLU before node k: its map is the same for every point."""
    return not any(isinstance(net.graph[i].op, ReLU) for i in net.ancestors(k))


def _separates(net: Network, j: int, k: int) -> bool:
    """Every path from the input to node k passes through node j (j < k)."""
    return all(min(net.graph[i].inputs) >= j for i in range(j + 1, k + 1))


def _relu_after(net: Network, j: int, k: int) -> int | None:
    """The ReLU node that reads node j, when it separates j from node k with no ReLU after it:
    then node k is an affine function of that ReLU's output, the same for every point."""
    readers = [n.index for n in net.graph if j in n.inputs]
    if len(readers) != 1 or not isinstance(net.graph[readers[0]].op, ReLU):
        return None
    r = readers[0]
    if not _separates(net, r, k) or any(isinstance(net.graph[i].op, ReLU) for i in range(r + 1, k + 1)):
        return None
    return r


def _pulled_norms(net: Network, k: int, a: Tensor, rels: dict[int, ReluRelaxation], cut: _WindowCut,
                  q: float) -> Tensor:
    """(N, S): q-norms of the input gradients of <a[:, s], node k>, through the cut's windows.

    The rows are pulled back to the cut, V (P, N, S, C) per position, and composed with the
    window gradients there: per (position, example) an (S x C) @ (C x window) product (rows
    first: ~2x faster than the transposed product when S is small, as for the margins), the
    windows then summed into the image (:func:`verify.bounds.local.fold_windows`). When ``a`` is the same for every
    point (batch 1) and node k is affine in the ReLU after the cut, V is that shared map times
    each point's pattern, and needs no per-point backward pass.
    """
    return _composed_norms(cut, _cut_rows(net, k, a, rels, cut), q)


def _cut_rows(net: Network, k: int, a: Tensor, rels: dict[int, ReluRelaxation], cut: _WindowCut) -> Tensor:
    """(P, N, S, C): the rows <a[:, s], node k> pulled back to the cut's value, per position."""
    p_n, n, c = cut.grads.shape[:3]
    s = a.shape[1]
    relu = _relu_after(net, cut.node, k) if a.shape[0] == 1 else None
    if relu is not None:
        coef = backward_rows(net, k, a, {}, stop=relu)  # (1, S, C, H, W), shared
        pattern = rels[cut.node].lam_up.reshape(n, 1, c, p_n)
        return (coef.reshape(1, s, c, p_n) * pattern).permute(3, 0, 1, 2)
    coef = backward_rows(net, k, a.expand(n, *a.shape[1:]), rels, stop=cut.node)  # (N, S, C, H, W)
    return coef.reshape(n, s, c, p_n).permute(3, 0, 1, 2)


def _composed_norms(cut: _WindowCut, v: Tensor, q: float) -> Tensor:
    """(N, S): the q-norms of the input gradients of the rows ``v`` (P, N, S, C) on the cut's value."""
    p_n, n, s, c = v.shape
    tiles = cut.grads.shape[3:]
    blocks = torch.bmm(v.reshape(p_n * n, s, c), cut.grads.reshape(p_n * n, c, -1))  # (P*N, S, K)
    img = fold_windows(blocks.reshape(p_n, n, s, *tiles), cut.grid, cut.frame)  # (N, S, c0, span_y, span_x)
    # canvas row r is input row r + oy: the norm over the part that lies on the image (the rest is padding)
    f, (_, hh, ww) = cut.frame, cut.input_shape
    y0, x0 = max(0, -f.oy), max(0, -f.ox)
    img = img[:, :, :, y0 : hh - f.oy, x0 : ww - f.ox]
    return torch.linalg.vector_norm(img, ord=q, dim=(2, 3, 4))


def _unit_norms(net: Network, k: int, rels: dict[int, ReluRelaxation], cut: _WindowCut, q: float,
                margins: "_Margins | None", units: Tensor) -> Tensor:
    """(N, R): the q-norms of the input gradients of node k's units ``units[i]`` on example i; with
    the autograd graph, the pending ``margins`` are composed in the same product."""
    shape = net.graph[k].shape
    a = F.one_hot(units, math.prod(shape)).to(cut.grads.dtype).reshape(*units.shape, *shape)
    v = _cut_rows(net, k, a, rels, cut)
    if margins is None or not torch.is_grad_enabled():
        return _composed_norms(cut, v, q)
    return margins.along(v)


class _Margins:
    """The margins' norms of a pass, through its cut: computed on the first call, or by
    :meth:`along` together with the rows closest() recomputes with the autograd graph (one product
    with S = K + R rows costs about what S = K alone does: ~0.07 s of an MMR step of ~0.68 s
    went to composing the recomputed rows apart, cnn_lenet_small, batch 128)."""

    def __init__(self, cut: _WindowCut, q: float) -> None:
        self.cut, self.q = cut, q
        self.rows: Callable[[], Tensor] | None = None  # (P, N, K, C), set once the margins are known
        self.norms: Tensor | None = None

    def __call__(self) -> Tensor:
        if self.norms is None:
            assert self.rows is not None
            self.norms = _composed_norms(self.cut, self.rows(), self.q)
        return self.norms

    def along(self, v: Tensor) -> Tensor:
        """The norms of the rows ``v`` (P, N, R, C), the margins' with them if still pending."""
        if self.norms is not None or self.rows is None:
            return _composed_norms(self.cut, v, self.q)
        vm = self.rows()
        both = _composed_norms(self.cut, torch.cat([vm, v], dim=2), self.q)
        self.norms = both[:, : vm.shape[2]]
        return both[:, vm.shape[2] :]


def _bounded_norms(net: Network, k: int, rels: dict[int, ReluRelaxation], cut: _WindowCut, cut_norms: Tensor) -> Tensor:
    """(N, n_k): upper bounds of the q-norms of the input gradients of node k's units.

    Row j's input gradient is sum_u c_ju g_u over the cut's units u (c: its coefficients on the
    cut's value, the ReLU pattern included; g_u: unit u's input gradient), so its q-norm is at most
    sum_u |c_ju| ||g_u||_q (triangle inequality; ||g_u||_q over u's whole window, padding included,
    is >= its norm on the image). Inflated by _BOUND_SLACK against rounding.
    """
    n = cut.grads.shape[1]
    shape = net.graph[k].shape
    nk = math.prod(shape)
    eye = torch.eye(nk, dtype=cut.grads.dtype, device=cut.grads.device).reshape(1, nk, *shape)
    relu = _relu_after(net, cut.node, k)
    if relu is not None:  # a map shared by every point, times each point's pattern
        coef = backward_rows(net, k, eye, {}, stop=relu)  # (1, n_k, C, H, W)
        w = cut_norms * rels[cut.node].lam_up.reshape(n, -1)  # (N, C*P)
        bound = w @ coef.reshape(nk, -1).abs().T
    else:
        coef = backward_rows(net, k, eye.expand(n, *eye.shape[1:]), rels, stop=cut.node)
        bound = torch.bmm(coef.reshape(n, nk, -1).abs(), cut_norms.unsqueeze(2)).squeeze(2)
    return bound * _BOUND_SLACK


def _rows_norms(net: Network, k: int, rels: dict[int, ReluRelaxation], cut: _WindowCut, q: float) -> Tensor:
    """(N, n_k): q-norms of the input gradients of node k's units, through the cut's windows."""
    n = cut.grads.shape[1]
    shape = net.graph[k].shape
    nk = math.prod(shape)
    rows = max(1, CHUNK_ELEMENTS // (n * max(math.prod(net.graph[cut.node].shape), 1)))
    eye = torch.eye(nk, dtype=cut.grads.dtype, device=cut.grads.device)
    out = [_pulled_norms(net, k, eye[r0 : r0 + rows].reshape(1, -1, *shape), rels, cut, q) for r0 in range(0, nk, rows)]
    return torch.cat(out, dim=1) if out else cut.grads.new_zeros((n, 0))


def _node_grad_norms(net: Network, ball: LpBall, k: int, rels: dict[int, ReluRelaxation], q: float) -> Tensor:
    """(N, n_k): q-norms of the input gradients of node k's units on each point's region."""
    n = ball.n
    shape = net.graph[k].shape
    nk = math.prod(shape)
    anc = net.ancestors(k)
    if _shared(net, k) and n > 1:  # pulled back once, on the first point, and shared
        one = LpBall(ball.center[:1], ball.eps[:1], ball.p, ball.lo, ball.hi)
        return _node_grad_norms(net, one, k, {}, q).expand(n, -1)
    cut = _window_gradients(net, ball, k, rels)
    if cut is not None:
        return _window_norms(cut, q)
    widest = max(math.prod(net.graph[i].shape) for i in anc)
    rows = max(1, CHUNK_ELEMENTS // (n * widest))
    eye = torch.eye(nk, dtype=ball.center.dtype, device=ball.center.device)
    out = []
    for r0 in range(0, nk, rows):
        a = eye[r0 : r0 + rows].reshape(1, -1, *shape).expand(n, -1, *shape)
        coef = backward_rows(net, k, a, rels)
        out.append(torch.linalg.vector_norm(coef.reshape(n, a.shape[1], -1), ord=q, dim=2))
    return torch.cat(out, dim=1) if out else ball.center.new_zeros((n, 0))


def hinge_closest(dist: Tensor, k: int, gamma: float) -> Tensor:
    """Per example: sum over the k smallest distances of max(0, 1 - d / gamma), divided by k."""
    if dist.shape[1] == 0 or k <= 0:
        return dist.new_zeros(dist.shape[0])
    return _hinge(torch.topk(dist, min(k, dist.shape[1]), dim=1, largest=False).values, k, gamma)


def _hinge(closest: Tensor, k: int, gamma: float) -> Tensor:
    """sum of max(0, 1 - d / gamma) over the given closest distances (N, <= k), divided by min(k, their number)."""
    if closest.shape[1] == 0 or k <= 0:
        return closest.new_zeros(closest.shape[0])
    return torch.clamp(1.0 - closest / gamma, min=0.0).sum(1) / closest.shape[1]


@dataclass(frozen=True, eq=False)
class MMRValue:
    """The two MMR terms (batch means, not yet weighted by lambda) and the logits they came with."""

    relu_term: Tensor
    decision_term: Tensor
    logits: Tensor


def mmr_terms(
    net: Network,
    x: Tensor,
    labels: Tensor,
    *,
    p: float | str,
    k_relu: int,
    k_decision: int,
    gamma_relu: float,
    gamma_decision: float,
) -> MMRValue:
    """Batch means of the ReLU-hyperplane and decision-boundary hinge terms (differentiable)."""
    if gamma_relu <= 0 or gamma_decision <= 0:
        raise SpecError(f"MMR gammas must be positive, got gamma_rb={gamma_relu:g}, gamma_db={gamma_decision:g}")
    dist = region_distances(net, x, labels, p=p, defer=True, prune=True)
    rb = _hinge(dist.closest(k_relu), k_relu, gamma_relu).mean()
    db = hinge_closest(dist.decision, k_decision, gamma_decision).mean()
    return MMRValue(rb, db, dist.logits)


@dataclass(frozen=True)
class MMRSchedule:
    """The authors' warm-up (train.py), by 1-based epoch.

    lambda ramps linearly to its value over ``lambda_warmup_epochs`` (10: epoch/10);
    k_B goes linearly from ``k_relu_start_frac`` (10%) to ``k_relu_end_frac`` (2%) of all
    ReLUs over the run; k_D is the number of classes. The authors keep the gammas constant;
    ``gamma_warmup_epochs`` > 0 ramps them linearly from 0 as an option.
    """

    lmbd: float
    gamma_relu: float
    gamma_decision: float
    epochs: int
    n_relus: int
    n_classes: int
    lambda_warmup_epochs: int = 10
    k_relu_start_frac: float = 0.10
    k_relu_end_frac: float = 0.02
    gamma_warmup_epochs: int = 0

    def frac(self, epoch: int) -> float:
        if self.lambda_warmup_epochs <= 0:
            return 1.0
        return min(epoch / self.lambda_warmup_epochs, 1.0)

    def weight(self, epoch: int) -> float:
        return self.lmbd * self.frac(epoch)

    def k_relu(self, epoch: int) -> int:
        start = int(self.k_relu_start_frac * self.n_relus)
        end = int(self.k_relu_end_frac * self.n_relus)
        return max(1, int((end - start) / max(self.epochs, 1) * epoch + start))

    def k_decision(self, epoch: int) -> int:
        return self.n_classes

    def gammas(self, epoch: int) -> tuple[float, float]:
        f = 1.0 if self.gamma_warmup_epochs <= 0 else min(epoch / self.gamma_warmup_epochs, 1.0)
        f = max(f, 1e-3)  # a gamma of 0 would divide by zero
        return self.gamma_relu * f, self.gamma_decision * f


def _p_value(p: float | str) -> float:
    from verify.spec import parse_p

    return parse_p(p)
