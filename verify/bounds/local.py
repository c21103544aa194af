"""Backward bounds for conv neurons on their receptive fields only.

A neuron of a convolutional layer depends on a small window of every earlier layer (its
receptive field): a 4x4 kernel of stride 2 after another one reads a 10x10 patch of a 28x28
image. The generic engine (:mod:`verify.bounds.backward`) carries coefficients over the whole
of every layer, mostly zeros; here they are carried over the window alone, which makes the
intermediate bounds of conv layers (the bulk of Kolter-Wong / CROWN on conv nets, and of KW
training) several times cheaper in time and memory. The arithmetic is the same -- the ReLU
relaxations of :mod:`verify.bounds.relax`, the layers' own transposed maps
(:meth:`Conv2d.linear_t_window`), the box at the input -- only restricted to windows.

Windows are laid out in padded coordinates: a window may hang over the border of a layer,
where the layer's value is the conv's zero padding, a constant 0. Every tensor read through
a window (ReLU slopes, the input box) is padded with zeros there, and coefficients on such
positions are masked to zero before an affine layer's offset is added, so padding positions
contribute nothing, exactly as in the full computation.

Used for chains input -> (ChannelAffine | Conv2d | AvgPool2d | ReLU)* -> Conv2d, for p = inf, 2
and 1. For p = 2 and 1 the input coefficients vanish outside the window, so the minimum over the
ball (intersected with the box) is the minimum over the window's coordinates of the ball of the
same radius there: setting the other coordinates to the centre's (inside the box) costs nothing.
The window's padding positions carry no coefficient (masked) and so no share of the radius.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..network import AffineLayer, ChannelAffine, Conv2d, Network, ReLU, _ConvLike
from ..spec import LpBall
from .adam import ascend_slopes
from .relax import ReluRelaxation, flat_sum, through_relu, wide_sum


# windows with more entries than this use conv_transpose2d instead of a dense window matrix
WINDOW_MATRIX_MAX = 4096


@dataclass(frozen=True)
class Frame:
    """Windows on one node: size (h, w); the window of neuron position (i, j) starts at
    (oy + i * sy, ox + j * sx) in the node's coordinates (negative: over the top / left border)."""

    h: int
    w: int
    sy: int
    sx: int
    oy: int
    ox: int

    def through(self, op: _ConvLike) -> "Frame":
        """The frame on the conv's input that covers this frame on its output."""
        kh, kw = op.kernel_size
        s0, s1 = op.stride
        top, _, left, _ = op.padding
        return Frame((self.h - 1) * s0 + kh, (self.w - 1) * s1 + kw, self.sy * s0, self.sx * s1,
                     self.oy * s0 - top, self.ox * s1 - left)


def _chain(net: Network, begin: int) -> list[int] | None:
    """Nodes begin, begin-1, ..., 1 if they form a chain of windowable 3-D layers, else None."""
    out = []
    for idx in range(begin, 0, -1):
        node = net.graph[idx]
        if node.inputs != (idx - 1,) and list(node.inputs) != [idx - 1]:
            return None
        if not isinstance(node.op, (ReLU, ChannelAffine, _ConvLike)) or len(node.shape) != 3:
            return None
        out.append(idx)
    return out if len(net.graph[0].shape) == 3 else None


def local_plan(net: Network, pset: LpBall, k: int, *, any_size: bool = False) -> list[tuple[int, Frame]] | None:
    """(node, frame on its value) from node k's input down to the input, or None if the
    window method does not apply or would not save much (windows over half the input;
    ``any_size``: whatever their size)."""
    node = net.graph[k]
    if pset.p not in (1.0, 2.0, math.inf) or not isinstance(node.op, Conv2d) or len(node.inputs) != 1:
        return None
    begin = node.inputs[0]
    chain = _chain(net, begin)
    if chain is None:
        return None
    kh, kw = node.op.kernel_size
    top, _, left, _ = node.op.padding
    frame = Frame(kh, kw, node.op.stride[0], node.op.stride[1], -top, -left)
    plan = []
    for idx in chain:
        plan.append((idx, frame))
        op = net.graph[idx].op
        if isinstance(op, _ConvLike):
            frame = frame.through(op)
    plan.append((0, frame))
    _, h, w = net.graph[0].shape
    if frame.h * frame.w > 0.5 * h * w and not any_size:
        return None
    return plan


def windows(t: Tensor, f: Frame, grid: tuple[int, int]) -> Tensor:
    """(N, C, H, W) -> (N * L, C, h, w): every neuron position's window, zero outside the node."""
    n, c, hh, ww = t.shape
    ny, nx = grid
    span_y, span_x = (ny - 1) * f.sy + f.h, (nx - 1) * f.sx + f.w
    top, left = max(0, -f.oy), max(0, -f.ox)
    bottom, right = max(0, f.oy + span_y - hh), max(0, f.ox + span_x - ww)
    tp = F.pad(t, (left, right, top, bottom))
    tp = tp[:, :, f.oy + top : f.oy + top + span_y, f.ox + left : f.ox + left + span_x]
    u = F.unfold(tp, (f.h, f.w), stride=(f.sy, f.sx))  # (N, C*h*w, L)
    return u.transpose(1, 2).reshape(n * ny * nx, c, f.h, f.w)


class LocalBounds:
    """Bounds on (example, neuron) pairs of conv node k, with every window read once per batch."""

    def __init__(self, net: Network, pset: LpBall, k: int, plan: list[tuple[int, Frame]],
                 relaxations: dict[int, ReluRelaxation], *, coefficients_only: bool = False,
                 kernels: dict[int, Tensor] | None = None) -> None:
        """``coefficients_only``: read only what :meth:`all_coefficients` needs (the ReLUs' upper
        slopes, the padding masks), not the set nor the other relaxation lines, which
        :meth:`range` and :meth:`all_ranges` need (they refuse to run then).

        ``kernels``: a dict shared by the instances of one network with unchanged parameters (the
        passes of a batch), keyed by node: the conv pair's composed kernel is built once and read
        by all of them (with live parameters, differentiated once)."""
        node = net.graph[k]
        self.conv = node.op_as(Conv2d)  # node k's layer
        self.net, self.k, self.plan = net, k, plan
        self.grid = (node.shape[1], node.shape[2])
        self.n_pos = self.grid[0] * self.grid[1]
        self.like = pset.center.new_zeros(())
        self.ball: LpBall | None = None  # p = 1, 2: one ball per (example, position) row, on its input window
        self.relu: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.frames: dict[int, Frame] = {}
        self.unstable: dict[int, Tensor] = {}  # ReLU windows' unstable neurons, built when slopes are optimised
        self.slopes: dict[int, Tensor] = {}  # the upper slopes of self.relu, all that all_coefficients reads
        self.valid: dict[int, Tensor] = {}
        self.window_t: dict[int, tuple[Tensor, tuple[int, ...]]] = {}
        self.relaxations = relaxations
        self.kernels = kernels
        self.input_box: tuple[Tensor, Tensor] | None = None  # Linf: the box itself
        self.coefficients_only = coefficients_only
        window_t = not coefficients_only or self._conv_pair() is None  # the pair's product needs no window transposes
        for idx, frame in plan:
            if idx == 0:
                ones = torch.ones((1, *net.graph[0].shape), dtype=pset.center.dtype, device=pset.center.device)
                self.valid[0] = windows(ones, frame, self.grid)  # input positions that are not padding
                if coefficients_only:
                    continue
                if math.isinf(pset.p):  # the set is a box: its windows are all the input stage reads
                    lo, hi = pset.box()
                    self.input_box = (lo, hi)
                    self.box = (windows(lo, frame, self.grid), windows(hi, frame, self.grid))
                else:
                    # padding positions get a centre inside the box (they carry no coefficient;
                    # a centre outside the box would make the box constraint spend radius there)
                    c0 = min(max(0.0, pset.lo), pset.hi)
                    center = windows(pset.center - c0, frame, self.grid) + c0
                    self.ball = LpBall(center, pset.eps.repeat_interleave(self.n_pos), pset.p, pset.lo, pset.hi)
                continue
            op = net.graph[idx].op
            if isinstance(op, ReLU):
                rel = relaxations[net.graph[idx].inputs[0]]
                self.frames[idx] = frame
                if coefficients_only:
                    self.slopes[idx] = windows(rel.lam_up, frame, self.grid)
                    continue
                lam_lo, lam_up, mu_up = (windows(t, frame, self.grid) for t in (rel.lam_lo, rel.lam_up, rel.mu_up))
                self.relu[idx] = (lam_lo, lam_up, mu_up)
                self.slopes[idx] = lam_up
            else:
                ones = torch.ones((1, *net.graph[idx].shape), dtype=pset.center.dtype, device=pset.center.device)
                self.valid[idx] = windows(ones, frame, self.grid)
                c = net.graph[idx].shape[0]
                if window_t and isinstance(op, _ConvLike) and c * frame.h * frame.w <= WINDOW_MATRIX_MAX:
                    # the transpose on one window as a small dense matrix: a batched matmul is
                    # ~10x faster on CPU than conv_transpose2d over many tiny windows
                    eye = torch.eye(c * frame.h * frame.w, dtype=pset.center.dtype, device=pset.center.device)
                    m = op.linear_t_window(eye.reshape(-1, c, frame.h, frame.w))
                    self.window_t[idx] = (m.reshape(eye.shape[0], -1), tuple(m.shape[1:]))

    def range(self, ex: Tensor, neuron: Tensor, *, two_sided: bool) -> tuple[Tensor, Tensor]:
        """(lower, upper) on neuron ``neuron[i]`` (flat index into node k) of example ``ex[i]``.

        ``two_sided`` needs parallel-line relaxations (rule kw): one row gives both bounds;
        otherwise the lower bounds of +row and -row, two rows of one pass (the windows they
        read are gathered once).
        """
        op = self.conv
        ch, pos = neuron // self.n_pos, neuron % self.n_pos
        row = ex * self.n_pos + pos  # (example, position) row of every windows() tensor
        w = op.param("weight", self.like).index_select(0, ch)  # (P, C, kh, kw): the neuron's row of the conv
        b = op.param("bias", self.like).index_select(0, ch)
        if two_sided:
            lo, hi = self._pass(row, pos, w.unsqueeze(1), b.unsqueeze(1), two_sided=True)
            assert hi is not None
            return lo[:, 0], hi[:, 0]
        lo, _ = self._pass(row, pos, torch.stack([w, -w], 1), torch.stack([b, -b], 1), two_sided=False)
        return lo[:, 0], -lo[:, 1]

    def optimise(self, ex: Tensor, neuron: Tensor, *, steps: int, lr: float, deadline: float = math.inf
                 ) -> tuple[Tensor, Tensor]:
        """:meth:`range`'s two one-sided bounds with alpha-CROWN's slopes: every row (the neuron's
        +row and -row of each pair) has its own lower slopes on its windows of every ReLU,
        starting at the relaxation's and optimised by :func:`verify.bounds.adam.ascend_slopes`
        (any slopes in [0, 1] give sound bounds, so the result is never looser than at the start)."""
        op = self.conv
        ch, pos = neuron // self.n_pos, neuron % self.n_pos
        row = ex * self.n_pos + pos
        w = op.param("weight", self.like).index_select(0, ch)
        b = op.param("bias", self.like).index_select(0, ch)
        a, const = torch.stack([w, -w], 1), torch.stack([b, -b], 1)
        for idx in self.relu:
            if idx not in self.unstable:
                rel = self.relaxations[self.net.graph[idx].inputs[0]]
                self.unstable[idx] = windows(rel.unstable.to(self.like.dtype), self.frames[idx], self.grid) > 0
        start = {idx: t[0].index_select(0, row).unsqueeze(1).expand(-1, 2, *t[0].shape[1:]).clone()
                 for idx, t in self.relu.items()}
        best, _ = ascend_slopes(lambda al: self._pass(row, pos, a, const, two_sided=False, alpha=al)[0], start,
                                steps=steps, lr=lr, deadline=deadline)
        return best[:, 0], -best[:, 1]

    def all_coefficients(self, start: int, stop: int) -> Tensor:
        """Every neuron's coefficients on its input window for examples ``start:stop``:
        (P, E, C, T, T', c0, r, r'), position-major (P positions, E examples, C channels of node
        k, c0 input channels), the window split into T x T' tiles of r x r' pixels: window pixel
        (t * r + i, t' * r' + j) is entry [..., t, t', :, i, j] (:func:`window_view` gives the
        plain (P, E, C, c0, T * r, T' * r') view); pixels beyond the window's h x w are 0.

        The coefficients :meth:`_pass` carries to the input window (through r1's upper slopes;
        with fixed-pattern relaxations the neuron's input gradient on its receptive field), over
        all (example, neuron) pairs, with the channels of a position kept together: they share that position's windows, which are then
        read by slicing and broadcasting instead of a gather per (example, neuron) pair.
        """
        graph = self.net.graph
        e, n_pos = stop - start, self.n_pos
        rows = slice(start * n_pos, stop * n_pos)
        pair = self._conv_pair()
        if pair is not None:
            return self._composed_coefficients(pair, rows, e)
        w = self.conv.param("weight", self.like)  # (C, c, kh, kw)
        a = w.expand(e * n_pos, *w.shape)  # (E*P, C, c, kh, kw)
        for idx, _ in self.plan:
            if idx == 0:
                break
            op = graph[idx].op
            if isinstance(op, ReLU):
                a = a * self.slopes[idx][rows].unsqueeze(1)  # lam_up == lam_lo for fixed patterns
                continue
            valid = self.valid[idx]  # (P, c, h, w), the same for every example
            a = (a.reshape(e, n_pos, *a.shape[1:]) * valid[None, :, None]).reshape(a.shape)
            g = a.shape[1]
            flat = a.reshape(-1, *a.shape[2:])
            if isinstance(op, ChannelAffine):
                flat = op.linear_t(flat, graph[idx].shape)
            elif idx in self.window_t:
                m, shape = self.window_t[idx]
                flat = (flat.reshape(flat.shape[0], -1) @ m).reshape(-1, *shape)
            else:
                flat = graph[idx].op_as(_ConvLike).linear_t_window(flat)  # the chain's other layers
            a = flat.reshape(e * n_pos, g, *flat.shape[1:])
        a = a.reshape(e, n_pos, *a.shape[1:]) * self.valid[0][None, :, None]  # nothing on the input window's padding
        return a.permute(1, 0, 2, 4, 5, 3).unsqueeze(-1).unsqueeze(-1).contiguous()  # tiles of 1 x 1 pixels

    def all_ranges(self, examples_per_pass: int = 16) -> tuple[Tensor, Tensor] | None:
        """(lower, upper) on every neuron of node k for every example, (N, C, H, W) each: the same
        numbers as :meth:`range` with ``two_sided=True`` on all (example, neuron) pairs, computed
        layer-wise. None unless node k is a second conv layer (:meth:`_conv_pair`), the set is a
        box (Linf) and the ReLU's relaxation has parallel lines (rule kw, ``lam_lo is lam_up``).

        Over the box [lo, hi] = mid -+ rad, the relaxed network's affine lines give

            lower, upper = conv2(lam * conv1(mid)) + conv2_{W2 < 0 | W2 > 0}(mu) -+ <|A|, rad>

        (conv1 with the input normalisation before it): everything but the last term is a
        convolution of the whole batch; only the weighted L1 norms of the input coefficients A
        need the window coefficients (:meth:`all_coefficients`, a few examples per pass).
        """
        if self.coefficients_only:
            raise ValueError("LocalBounds(coefficients_only=True) has no set to bound over")
        pair = self._conv_pair()
        if pair is None or self.input_box is None:
            return None
        graph = self.net.graph
        relu_idx, conv_idx, affines = pair
        rel = self.relaxations[graph[relu_idx].inputs[0]]
        if rel.lam_lo is not rel.lam_up:
            return None
        op2 = self.conv

        def conv1(t: Tensor) -> Tensor:  # the affine map from the input to conv1's output
            for i in (*affines, conv_idx):
                t = graph[i].op_as(AffineLayer).forward(t)
            return t

        lo, hi = self.input_box
        center = op2.forward(rel.lam_up * conv1((lo + hi) / 2))
        w2 = op2.param("weight", self.like)
        xp, pad = op2._pad(rel.mu_up)
        mu_lo = F.conv2d(xp, w2.clamp(max=0), None, op2.stride, pad)
        mu_hi = F.conv2d(xp, w2.clamp(min=0), None, op2.stride, pad)
        rad = windows((hi - lo) / 2, self.plan[-1][1], self.grid)  # (N*P, c0, h, w)
        n, c2 = lo.shape[0], w2.shape[0]
        spread = []
        for e0 in range(0, n, examples_per_pass):
            e1 = min(n, e0 + examples_per_pass)
            a = self.all_coefficients(e0, e1)  # (P, E, C2, T, T', c0, r, r')
            r = _tiles(rad[e0 * self.n_pos : e1 * self.n_pos], a.shape[3:], e1 - e0, self.n_pos)
            spread.append(wide_sum((a.abs() * r.unsqueeze(2)).flatten(3), 3))  # (P, E, C2)
        dev = torch.cat(spread, dim=1).permute(1, 2, 0).reshape(n, c2, *self.grid)
        return center + mu_lo - dev, center + mu_hi + dev

    def _conv_pair(self) -> tuple[int, int, tuple[int, ...]] | None:
        """(ReLU node, conv node, ChannelAffine nodes before it) when node k's chain is
        input -> ChannelAffine* -> Conv2d -> ReLU -> node k: a second conv layer, whose window
        coefficients :meth:`_composed_coefficients` computes as one batched product."""
        graph = self.net.graph
        idx = [i for i, _ in self.plan]
        if len(idx) < 3 or not isinstance(graph[idx[0]].op, ReLU) or type(graph[idx[1]].op) is not Conv2d:
            return None
        if not all(isinstance(graph[i].op, ChannelAffine) for i in idx[2:-1]):
            return None
        return idx[0], idx[1], tuple(idx[2:-1])

    def _composed_coefficients(self, pair: tuple[int, int, tuple[int, ...]], rows: slice, e: int) -> Tensor:
        """:meth:`all_coefficients` for conv2(slopes * conv1(x)): the same numbers, computed as

            coef[u, v] = sum_{c1, a, b} W2[c2, c1, a, b] * slope[c1, a, b] * W1[c1, c0, u - s a, v - s b]

        (s: conv1's stride; a, b run over conv2's taps, u, v over the input window). Splitting
        u = s * t + r, the taps that reach pixel (t, r) are a = t - j with r + s * j < kh1, a
        handful of j; so for each tile (t, t') it is one product of the slopes gathered to
        (positions * examples) x (J * J * C1) with a (J * J * C1) x (C2 * c0 * s * s) matrix built
        from the two kernels: a batched matmul in place of (examples * positions * C2) window
        transposes, and the kernels' zero taps are skipped.
        """
        graph = self.net.graph
        relu_idx, conv_idx, affines = pair
        op1, op2 = graph[conv_idx].op_as(Conv2d), self.conv
        w1 = op1.param("weight", self.like)  # (C1, c0, kh1, kw1)
        for i in affines:  # input normalisation: y = scale * x + shift scales the input gradient
            w1 = w1 * graph[i].op_as(ChannelAffine).param("scale", self.like)[None, :, None, None]
        w2 = op2.param("weight", self.like)  # (C2, C1, kh2, kw2)
        c2, c1, kh2, kw2 = w2.shape
        c0, kh1, kw1 = w1.shape[1:]
        frame = self.plan[-1][1]
        ty, ay, ky = _taps(kh2, kh1, op1.stride[0], frame.h, w2.device)
        tx, ax, kx = _taps(kw2, kw1, op1.stride[1], frame.w, w2.device)
        jy, jx = ay.shape[1], ax.shape[1]
        sy, sx = op1.stride
        kern = None if self.kernels is None else self.kernels.get(self.k)
        if kern is None:
            # kernel: (t, t', C2, c0, r, r', C1, j, j'); an index of -1 (no such tap) reads the zero pad
            w2g = F.pad(w2, (0, 1, 0, 1))[:, :, ay][:, :, :, :, ax]  # (C2, C1, T, J, T', J')
            w1g = F.pad(w1, (0, 1, 0, 1))[:, :, ky][:, :, :, :, kx]  # (C1, c0, r, J, r', J')
            kern = torch.einsum("dctjuk,cesjrk->tudesrjkc", w2g, w1g).reshape(ty * tx, c2 * c0 * sy * sx, jy * jx * c1)
            if self.kernels is not None:
                self.kernels[self.k] = kern
        slope = self.slopes[relu_idx][rows]  # (E*P, C1, kh2, kw2): lam_up == lam_lo for fixed patterns
        # (kh2 + 1) * (kw2 + 1) taps (the last ones the zero pad) x (P, E, C1), position-major
        taps = F.pad(slope, (0, 1, 0, 1)).reshape(e, self.n_pos, c1, -1).permute(3, 1, 0, 2)
        tap = (ay.reshape(ty, 1, jy, 1) % (kh2 + 1)) * (kw2 + 1) + ax.reshape(1, tx, 1, jx) % (kw2 + 1)
        sg = taps.index_select(0, tap.reshape(-1)).reshape(ty, tx, jy, jx, self.n_pos * e, c1)  # (T, T', J, J', P*E, C1)
        sg = sg.permute(0, 1, 4, 2, 3, 5).reshape(ty * tx, self.n_pos * e, jy * jx * c1)
        out = torch.bmm(sg, kern.transpose(1, 2))  # (T*T', P*E, C2*c0*r*r')
        out = _permute_runs(out.reshape(ty, tx, self.n_pos, e, c2, c0, sy, sx), (2, 3, 4, 0, 1, 5, 6, 7), 3)
        # nothing on the input window's padding (the mask's entries are the last, contiguous dims)
        valid = F.pad(self.valid[0], (0, tx * sx - frame.w, 0, ty * sy - frame.h))  # (P, c0, T*r, T'*r')
        valid = valid.reshape(self.n_pos, c0, ty, sy, tx, sx).permute(0, 2, 4, 1, 3, 5).contiguous()
        return out * valid[:, None, None]  # (P, E, C2, T, T', c0, r, r')

    def _pass(self, row: Tensor, pos: Tensor, a: Tensor, const: Tensor, *, two_sided: bool,
              alpha: dict[int, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """(lower, upper if ``two_sided``) of the rows ``a`` (P, S, C, h, w) plus ``const`` (P, S);
        ``alpha`` (one-sided only): lower slopes (P, S, C', h', w') per ReLU node on its windows."""
        if self.coefficients_only:
            raise ValueError("LocalBounds(coefficients_only=True) has no set to bound over")
        graph = self.net.graph
        p, s = a.shape[:2]
        total = const
        total_up = const if two_sided else None
        for idx, _ in self.plan:
            if idx == 0:
                if self.ball is not None:
                    a = a * self.valid[0].index_select(0, pos).unsqueeze(1)
                    ball = self.ball.select(row)
                    total = total + ball.min_linear(a)
                    if total_up is not None:
                        total_up = total_up - ball.min_linear(-a)
                    break
                lo_box, hi_box = (t.index_select(0, row).unsqueeze(1) for t in self.box)
                plus, minus = a.clamp(min=0), a.clamp(max=0)
                total = total + flat_sum(plus * lo_box + minus * hi_box)
                if total_up is not None:
                    total_up = total_up + flat_sum(plus * hi_box + minus * lo_box)
                break
            op = graph[idx].op
            if isinstance(op, ReLU):
                lam_lo, lam_up, mu = (t.index_select(0, row) for t in self.relu[idx])
                if total_up is not None:
                    mu1 = mu.unsqueeze(1)
                    c_all, c_neg = flat_sum(a * mu1), flat_sum(a.clamp(max=0) * mu1)
                    total, total_up = total + c_neg, total_up + (c_all - c_neg)
                    a = a * lam_up.unsqueeze(1)
                else:
                    slopes = None if alpha is None else alpha.get(idx)
                    unstable = (self.unstable[idx].index_select(0, row) if slopes is not None
                                else torch.zeros((), dtype=torch.bool, device=mu.device))
                    a, c = through_relu(a, ReluRelaxation(lam_lo, lam_up, mu, unstable), slopes)
                    total = total + c
                continue
            # affine: coefficients on positions outside the node (a later conv's zero padding)
            # must neither pick up this layer's offset nor flow further back
            a = a * self.valid[idx].index_select(0, pos).unsqueeze(1)
            per_channel = (op.param("shift", self.like) if isinstance(op, ChannelAffine)
                           else op.param("bias", self.like) if isinstance(op, Conv2d) else None)  # AvgPool2d: none
            if per_channel is not None:
                off = flat_sum(a * per_channel[None, None, :, None, None])
                total = total + off
                if total_up is not None:
                    total_up = total_up + off
            flat = a.reshape(p * s, *a.shape[2:])
            if isinstance(op, ChannelAffine):
                flat = op.linear_t(flat, graph[idx].shape)
            elif idx in self.window_t:
                m, shape = self.window_t[idx]
                flat = (flat.reshape(flat.shape[0], -1) @ m).reshape(-1, *shape)
            else:  # a wide window: the dense matrix would be too large
                flat = graph[idx].op_as(_ConvLike).linear_t_window(flat)
            a = flat.reshape(p, s, *flat.shape[1:])
        return total, total_up


class _PermuteRuns(torch.autograd.Function):
    """``t.permute(perm).contiguous()`` for a ``perm`` that keeps t's last ``inner`` dims last and
    in order, differentiable. Their contiguous runs (c0 * r * r' window pixels here) are moved as
    whole complex128 values when they span a multiple of 16 bytes: a bit-exact copy that measured
    3x faster than torch's element-wise one for float32 runs of 4 (4.8 -> 1.6 ms per 10 MB in
    the backward's direction, 2.5 -> 1.2 ms in the forward's)."""

    @staticmethod
    def move(t: Tensor, perm: tuple[int, ...], inner: int) -> Tensor:
        lead = t.dim() - inner
        run = math.prod(t.shape[lead:])
        if not (t.is_floating_point() and t.is_contiguous() and run * t.element_size() % 16 == 0):
            return t.permute(perm).contiguous()
        wide = t.reshape(*t.shape[:lead], run).view(torch.complex128)
        moved = wide.permute(*perm[:lead], lead).contiguous().view(t.dtype)
        return moved.reshape([t.shape[d] for d in perm])

    @staticmethod
    def forward(ctx: Any, t: Tensor, perm: tuple[int, ...], inner: int) -> Tensor:
        ctx.perm, ctx.inner = perm, inner
        return _PermuteRuns.move(t, perm, inner)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        inverse = tuple(sorted(range(len(ctx.perm)), key=lambda d: ctx.perm[d]))
        return _PermuteRuns.move(grad, inverse, ctx.inner), None, None


def _permute_runs(t: Tensor, perm: tuple[int, ...], inner: int) -> Tensor:
    return cast(Tensor, _PermuteRuns.apply(t, perm, inner))  # type: ignore[no-untyped-call]


class FoldWindows(torch.autograd.Function):
    """Sum per-position window blocks (P, N, S, T, T', c0, r, r'), tiled as the cut's gradients,
    into one canvas (N, S, c0, span_y, span_x) with the frame's strides: F.fold's sum, in a layout
    it cannot take (positions outermost). The sum is taken on a canvas in the same tiles
    (N, S, Ty, Tx, c0, r, r'), where every window is a block of whole tiles (the frame's strides
    are multiples of the tile: r = the first conv's stride), so blocks are added as contiguous
    runs of T' * c0 * r * r' values; only the small canvas is then put in pixel order."""

    @staticmethod
    def _window(canvas: Tensor, p: int, grid: tuple[int, int], frame: Frame, tiles: tuple[int, ...]) -> Tensor:
        """Position p's window of the tiled canvas, (N, S, T, T', c0, r, r'): a view."""
        ty, tx, _, ry, rx = tiles
        y, x = (p // grid[1]) * (frame.sy // ry), (p % grid[1]) * (frame.sx // rx)
        return canvas[:, :, y : y + ty, x : x + tx]

    @staticmethod
    def forward(ctx: Any, blocks: Tensor, grid: tuple[int, int], frame: Frame) -> Tensor:
        ny, nx = grid
        p_n, n, s, ty, tx, c0, ry, rx = blocks.shape
        tiles = (ty, tx, c0, ry, rx)
        assert frame.sy % ry == 0 and frame.sx % rx == 0, "windows must start on whole tiles"
        canvas = blocks.new_zeros((n, s, (ny - 1) * (frame.sy // ry) + ty, (nx - 1) * (frame.sx // rx) + tx, c0, ry, rx))
        for p in range(p_n):
            FoldWindows._window(canvas, p, grid, frame, tiles).add_(blocks[p])
        ctx.geometry = (grid, frame, tiles)
        return canvas.permute(0, 1, 4, 2, 5, 3, 6).reshape(n, s, c0, canvas.shape[2] * ry, canvas.shape[3] * rx)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grid, frame, tiles = ctx.geometry
        _, _, c0, ry, rx = tiles
        n, s, _, hy, hx = grad.shape
        tiled = grad.reshape(n, s, c0, hy // ry, ry, hx // rx, rx).permute(0, 1, 3, 5, 2, 4, 6).contiguous()
        return torch.stack([FoldWindows._window(tiled, p, grid, frame, tiles) for p in range(grid[0] * grid[1])]), None, None


def fold_windows(blocks: Tensor, grid: tuple[int, int], frame: Frame) -> Tensor:
    """Per-position window blocks (P, N, S, T, T', c0, r, r') summed into (N, S, c0, Ty * r, Tx * r')
    (:class:`FoldWindows`; canvas pixel (i, j) is the frame's node pixel (i + oy, j + ox))."""
    return cast(Tensor, FoldWindows.apply(blocks, grid, frame))  # type: ignore[no-untyped-call]



def _tiles(win: Tensor, tiles: tuple[int, ...], e: int, n_pos: int) -> Tensor:
    """Windows (E * P, c0, h, w), example-major, -> (P, E, T, T', c0, r, r') in the tiles of
    :meth:`LocalBounds.all_coefficients`, zero beyond h x w."""
    ty, tx, c0, ry, rx = tiles
    h, w = win.shape[2:]
    t = F.pad(win, (0, tx * rx - w, 0, ty * ry - h)).reshape(e, n_pos, c0, ty, ry, tx, rx)
    return t.permute(1, 0, 3, 5, 2, 4, 6)


def window_view(t: Tensor) -> Tensor:
    """(..., T, T', c0, r, r') tiles -> (..., c0, T * r, T' * r') window pixels (a copy)."""
    *lead, ty, tx, c0, ry, rx = t.shape
    n = len(lead)
    return t.permute(*range(n), n + 2, n, n + 3, n + 1, n + 4).reshape(*lead, c0, ty * ry, tx * rx)


def _taps(k2: int, k1: int, s: int, size: int, device: torch.device) -> tuple[int, Tensor, Tensor]:
    """Along one axis of conv2(conv1(.)) (kernels k2 and k1, conv1's stride s, input window
    ``size``): window pixel u = s * t + r gets conv2's taps a = t - j through conv1's taps
    r + s * j, for j < J = ceil(k1 / s). Returns T, a[t, j] and kh[r, j]; -1 where there is
    no such tap (it indexes the zero padding appended to the kernels)."""
    t_n, j_n = -(-size // s), -(-k1 // s)
    t = torch.arange(t_n, device=device)[:, None]
    r = torch.arange(s, device=device)[:, None]
    j = torch.arange(j_n, device=device)[None, :]
    a = t - j
    a = torch.where((a >= 0) & (a < k2), a, -1)
    kh = r + s * j
    kh = torch.where(kh < k1, kh, -1)
    return t_n, a, kh

