"""The backward pass below two conv layers, batched over many spec rows per example.

Networks like convex_adversarial's small CNN start with input -> (ChannelAffine)* -> conv1 ->
ReLU r1 -> conv2 -> ReLU r2 -> ... . Every backward bound from a later node (the dense layers'
intermediate bounds, the final margins, every alpha-CROWN step) ends by pulling its rows back
through that stem, and the generic engine does it with two transposed convolutions per row over
mostly-stable ReLUs. Here the stem is written as

    coefficients on the input = K^T a3 + L1^T c,    a3 = the rows' coefficients on conv2's output,

where K (per example) composes conv1, r1's *upper* slopes and conv2 on each conv2 neuron's
receptive field (:meth:`LocalBounds.all_coefficients`, one batched product), and c is nonzero
only on r1's unstable neurons: there a lower bound may use a different (lower) slope than the
upper one (CROWN, alpha-CROWN), and c = (lower - upper slope) * max(a1, 0). a1 = conv2^T a3 is
needed only on r1's unstable neurons (their intercept term and c), a product with the gathered
columns of conv2's matrix. Stable neurons have equal slopes and no intercept, so this is the
generic engine's arithmetic exactly, term by term regrouped; offsets (biases, normalisation
shifts) are folded the same way: conv1's offset b1 meets the rows as a3 . conv2(upper slope * b1)
plus c . b1.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..network import AffineLayer, ChannelAffine, Conv2d, Network, ReLU
from ..spec import LpBall
from .local import LocalBounds, fold_windows, local_plan
from .relax import ReluRelaxation, flat_sum, through_relu, wide_sum

# elements of the largest per-chunk tensor of the tail (float32: 4 bytes each)
TAIL_CHUNK_ELEMENTS = 1 << 23
# fewer rows per example than this: building K and gathering conv2's columns per example does
# not pay off (measured on the zoo's MNIST KW CNN, 1 thread: 2x slower than the generic engine
# at 10 rows -- the final margins --, 1.2-1.4x faster at 100-200 -- a dense layer's neurons)
TAIL_MIN_ROWS = 64


@dataclass(frozen=True)
class TailPlan:
    """Node indices of the stem input -> affines -> c1 -> r1 -> c2 -> r2."""

    c1: int
    r1: int
    c2: int
    r2: int
    affines: tuple[int, ...]


def tail_plan(net: Network, start: int) -> TailPlan | None:
    """The stem below ``start`` if the network has one and every path from ``start`` crosses r2."""
    graph = net.graph
    if len(graph[0].shape) != 3:
        return None
    i = 1
    affines = []
    while i < len(graph) and isinstance(graph[i].op, ChannelAffine):
        affines.append(i)
        i += 1
    c1, r1, c2, r2 = i, i + 1, i + 2, i + 3
    if r2 > start or r2 >= len(graph):
        return None
    ops = [graph[j].op for j in (c1, r1, c2, r2)]
    if not (type(ops[0]) is Conv2d and isinstance(ops[1], ReLU) and type(ops[2]) is Conv2d and isinstance(ops[3], ReLU)):
        return None
    if any(graph[j].inputs != (j - 1,) and list(graph[j].inputs) != [j - 1] for j in range(1, r2 + 1)):
        return None
    # nothing above r2 may reach below it
    if any(min(graph[j].inputs) < r2 for j in range(r2 + 1, start + 1)):
        return None
    return TailPlan(c1, r1, c2, r2, tuple(affines))


def conv_matrix(op: Conv2d, in_shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The conv's linear part as a dense (out numel, in numel) matrix, differentiable in the weight.

    Built by placing kernel entries at the (output, input) pairs an unfolded index image
    names; padding positions read index 0, a column that is dropped.
    """
    c, h, w = in_shape
    index = torch.arange(1, c * h * w + 1, dtype=like.dtype, device=like.device).reshape(1, c, h, w)
    xp, pad = op._pad(index)
    cols = F.unfold(xp, op.kernel_size, padding=pad, stride=op.stride)[0].round().long()  # (c*kh*kw, L)
    weight = op.param("weight", like)  # (O, c, kh, kw)
    o, taps, n_pos = weight.shape[0], cols.shape[0], cols.shape[1]
    rows = (torch.arange(o, device=like.device)[:, None, None] * n_pos + torch.arange(n_pos, device=like.device)[None, None, :])
    rows = rows.expand(o, taps, n_pos)
    vals = weight.reshape(o, taps, 1).expand(o, taps, n_pos)
    m = like.new_zeros((o * n_pos, c * h * w + 1))
    m = m.index_put((rows.reshape(-1), cols.unsqueeze(0).expand(o, taps, n_pos).reshape(-1)), vals.reshape(-1), accumulate=True)
    return m[:, 1:]


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    """t (B, [S,] N) at idx (B, U) with index N meaning 0: (B, [S,] U)."""
    pad = F.pad(t, (0, 1))
    if t.ndim == 3:
        return pad.gather(2, idx.unsqueeze(1).expand(t.shape[0], t.shape[1], idx.shape[1]))
    return pad.gather(1, idx)


def _unstable_index(unstable: Tensor) -> Tensor:
    """(B, U): every example's unstable neurons (flat indices), padded with N (the zero slot)."""
    b, n = unstable.shape
    u = int(unstable.sum(1).max()) if b else 0
    order = torch.argsort((~unstable).to(torch.int8), dim=1, stable=True)[:, :u]
    keep = torch.arange(u, device=unstable.device)[None, :] < unstable.sum(1, keepdim=True)
    return torch.where(keep, order, torch.full_like(order, n))


def tail_finish(net: Network, plan: TailPlan, pset: LpBall, a: Tensor, total: Tensor, total_up: Tensor | None,
                rel1: ReluRelaxation, rel2: ReluRelaxation, alpha1: Tensor | None, alpha2: Tensor | None
                ) -> tuple[Tensor, Tensor | None]:
    """Finish the bounds of rows whose coefficients on r2's value are ``a`` (B, S, *shape of r2).

    ``total_up`` given: two-sided (parallel-line relaxations, rule kw), as :func:`backward_range`.
    Returns (lower, upper or None), each (B, S).
    """
    b, s = a.shape[:2]
    graph = net.graph
    n1 = math.prod(graph[plan.r1].shape)
    n3 = math.prod(graph[plan.c2].shape)
    widest = max(n3 * 4, math.prod(graph[0].shape) * 2, n1)
    chunk = max(1, TAIL_CHUNK_ELEMENTS // (s * widest))
    # conv2's transposed matrix and the stem's: built once per call (not per chunk), or once per
    # network within a reuse_matrices() block
    scope = getattr(_reuse, "memo", None)
    memo = _Memo({}, None if scope is None else scope.setdefault((id(net), plan, a.dtype, a.device), {}))
    if chunk >= b:
        return _tail_chunk(net, plan, pset, a, total, total_up, rel1, rel2, alpha1, alpha2, memo)
    lows: list[Tensor] = []
    ups: list[Tensor] = []  # filled only when two-sided (then every chunk has an upper bound)
    for e0 in range(0, b, chunk):
        sl = slice(e0, e0 + chunk)
        pick = torch.arange(e0, min(b, e0 + chunk), device=a.device)

        def cut(r: ReluRelaxation) -> ReluRelaxation:
            return ReluRelaxation(r.lam_lo[sl], r.lam_up[sl], r.mu_up[sl], r.unstable[sl])

        lo, up = _tail_chunk(net, plan, pset.select(pick), a[sl], total[sl], None if total_up is None else total_up[sl],
                             cut(rel1), cut(rel2), None if alpha1 is None else alpha1[sl],
                             None if alpha2 is None else alpha2[sl], memo)
        lows.append(lo)
        if up is not None:
            ups.append(up)
    return torch.cat(lows), (None if total_up is None else torch.cat(ups))


def _tail_chunk(net: Network, plan: TailPlan, pset: LpBall, a: Tensor, total: Tensor, total_up: Tensor | None,
                rel1: ReluRelaxation, rel2: ReluRelaxation, alpha1: Tensor | None, alpha2: Tensor | None,
                memo: _Memo) -> tuple[Tensor, Tensor | None]:
    graph = net.graph
    b, s = a.shape[:2]
    like = a.new_zeros(())
    # r2: the ReLU after conv2; total_up given: two-sided
    if total_up is not None:
        mu = rel2.mu_up.unsqueeze(1)
        c_neg = flat_sum(a.clamp(max=0) * mu)
        total, total_up = total + c_neg, total_up + (flat_sum(a * mu) - c_neg)
        a3 = a * rel2.lam_up.unsqueeze(1)
    else:
        a3, c = through_relu(a, rel2, alpha2)
        total = total + c
    op2 = graph[plan.c2].op_as(Conv2d)
    shape1 = graph[plan.r1].shape
    off = flat_sum(a3 * op2.offset(shape1, like))
    # conv1's offset (and the normalisation's), through r1's upper slopes and conv2
    beta1 = _stem_offset(net, plan, like)  # (C1, H1, W1)
    lam_up1 = rel1.lam_up
    v = op2.linear(lam_up1 * beta1)  # (B, C2, H2, W2)
    off = off + flat_sum(a3 * v.unsqueeze(1))
    total = total + off
    if total_up is not None:
        total_up = total_up + off
    # a1 on r1's unstable neurons only
    idx = _unstable_index(rel1.unstable.reshape(b, -1))  # (B, U)
    a3f = a3.reshape(b, s, -1)
    corr: Tensor | None = None
    if idx.shape[1]:
        m2t = memo.get("m2t", op2.weight.requires_grad, lambda: F.pad(conv_matrix(op2, shape1, like).t(), (0, 0, 0, 1)))
        cols = m2t.index_select(0, idx.reshape(-1)).reshape(b, idx.shape[1], -1)  # (B, U, N3): rows are contiguous
        a1 = torch.bmm(a3f, cols.transpose(1, 2))  # (B, S, U)
        mu1 = _gather(rel1.mu_up.reshape(b, -1), idx).unsqueeze(1)
        c_neg = wide_sum(a1.clamp(max=0) * mu1, -1)
        total = total + c_neg
        if total_up is not None:
            total_up = total_up + (wide_sum(a1 * mu1, -1) - c_neg)
        else:
            up1 = _gather(lam_up1.reshape(b, -1), idx).unsqueeze(1)
            if alpha1 is not None:
                lo1 = _gather(alpha1.reshape(b, s, -1), idx).clamp(0.0, 1.0)
            else:
                lo1 = _gather(rel1.lam_lo.reshape(b, -1), idx).unsqueeze(1)
            corr = (lo1 - up1) * a1.clamp(min=0)  # (B, S, U): zero on padding slots (a1 = 0 there)
            total = total + wide_sum(corr * _gather(beta1.reshape(1, -1).expand(b, -1), idx).unsqueeze(1), -1)
    # the input coefficients: composed kernels on windows, folded, plus the correction's conv1 rows
    a0 = _fold_linear(net, plan, pset, rel1, a3)  # (B, S, *input)
    if corr is not None:
        live = any(t.requires_grad for i in (*plan.affines, plan.c1) for t in vars(net.graph[i].op).values()
                   if isinstance(t, Tensor))
        stem = memo.get("stem", live, lambda: F.pad(_stem_matrix(net, plan, like), (0, 0, 0, 1)))
        rows = stem.index_select(0, idx.reshape(-1)).reshape(b, idx.shape[1], -1)  # (B, U, n0)
        a0 = a0 + torch.bmm(corr, rows).reshape(a0.shape)
    lower = total + pset.min_linear(a0)
    if total_up is None:
        return lower, None
    return lower, total_up - pset.min_linear(-a0)


_reuse = threading.local()


@contextlib.contextmanager
def reuse_matrices() -> Iterator[None]:
    """Within this block (per thread), :func:`tail_finish` builds the matrices derived from a
    network's parameters once per network and reuses them: for callers that bound one network
    many times with parameters that do not change meanwhile (the intermediate bounds, alpha-CROWN's
    steps). Matrices that carry gradients to the parameters are never reused across calls (a
    second backward through them would fail): only those built without gradients are kept."""
    outer = getattr(_reuse, "memo", None)
    if outer is None:
        _reuse.memo = {}
    try:
        yield
    finally:
        if outer is None:
            _reuse.memo = None


@dataclass(frozen=True)
class _Memo:
    """Derived matrices of one tail_finish call, and of its reuse_matrices() block if any."""

    call: dict[str, Tensor]
    scope: dict[str, Tensor] | None

    def get(self, key: str, live: bool, build: Callable[[], Tensor]) -> Tensor:
        """The matrix ``key``, built by ``build`` if absent; one with gradients (``live``) only for this call."""
        memo = self.call if live or self.scope is None else self.scope
        if key not in memo:
            memo[key] = _built(live, build)
        return memo[key]


def _built(live: bool, build: Callable[[], Tensor]) -> Tensor:
    """A matrix derived from parameters, built afresh on every call (with gradients only if ``live``).

    It used to be cached on the layer by (name, dtype, device), but the stem matrix also depends on
    the layers in front of it (a Normalize's scales) and the transposed conv matrix on the input
    shape: a layer object shared by two networks then served one network's matrix to the other and
    certified points with counterexamples (tests/test_soundness_rounding.py::test_shared_layers_...)."""
    if live:
        return build()
    with torch.no_grad():
        return build()


def _stem_offset(net: Network, plan: TailPlan, like: Tensor) -> Tensor:
    """conv1's value at input 0 (its bias through the normalisation's shift)."""
    t = like.new_zeros((1, *net.graph[0].shape))
    for i in (*plan.affines, plan.c1):
        t = net.graph[i].op_as(AffineLayer).forward(t)  # ChannelAffine* then Conv2d (tail_plan)
    return t[0]


def _stem_matrix(net: Network, plan: TailPlan, like: Tensor) -> Tensor:
    """The linear part of input -> conv1 as a dense (N1, n0) matrix."""
    graph = net.graph
    m = conv_matrix(graph[plan.c1].op_as(Conv2d), graph[0].shape, like)
    c0, h, w = graph[0].shape
    for i in plan.affines:
        scale = graph[i].op_as(ChannelAffine).param("scale", like)
        m = m * scale.reshape(c0, 1, 1).expand(c0, h, w).reshape(1, -1)
    return m


def _fold_linear(net: Network, plan: TailPlan, pset: LpBall, rel1: ReluRelaxation, a3: Tensor) -> Tensor:
    """sum over conv2 neurons q of a3[q] * K[q] (K: q's input-window coefficients at r1's upper slopes)."""
    graph = net.graph
    b, s = a3.shape[:2]
    steps = local_plan(net, pset, plan.c2, any_size=True)
    assert steps is not None
    local = LocalBounds(net, pset, plan.c2, steps, {plan.c1: rel1}, coefficients_only=True)
    k = local.all_coefficients(0, b)  # (P, B, C2, T, T', c0, r, r')
    p_n, _, c2 = k.shape[:3]
    a3p = a3.reshape(b, s, c2, p_n).permute(3, 0, 1, 2)  # (P, B, S, C2)
    win = torch.matmul(a3p, k.reshape(p_n, b, c2, -1))  # (P, B, S, T*T'*c0*r*r')
    frame = steps[-1][1]
    full = fold_windows(win.reshape(p_n, b, s, *k.shape[3:]), local.grid, frame)  # (B, S, c0, span_y, span_x)
    _, hh, ww = graph[0].shape
    span_y, span_x = full.shape[-2:]
    full = F.pad(full, (frame.ox, ww - frame.ox - span_x, frame.oy, hh - frame.oy - span_y))
    return full.reshape(b, s, full.shape[2], hh, ww)
