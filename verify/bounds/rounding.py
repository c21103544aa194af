"""Rigorous a-priori bounds on the rounding error of float32 bounds (docs/soundness.md).

Every bound this package computes on a node k -- interval, KW / CROWN / alpha-CROWN backward,
the receptive-field and stem variants -- is, in exact arithmetic, a sum of *terms*, each a
product of data (weights, biases, ReLU slopes in [0, 1], ReLU intercepts, input-box corners)
along one path of the network. Whatever the order of evaluation, a float sum of products whose
every term meets at most K roundings is within gamma_K * sum |terms| of the exact sum
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 3.1 and Lemma 3.3/3.4;
gamma_K = K u / (1 - K u), u = 2^-24 in float32), and the ReLU rules max(a, 0) * l + min(a, 0) * u
are 1-Lipschitz in a, so sign choices made on computed coefficients add nothing beyond that
(the error recursion e_in <= |W^T| (e_out + gamma |a_out|) of the same lemma).

:class:`RoundingGuard` keeps, per node and neuron, M_k >= sum |terms| of any such bound:

    input:  M_0 = max(|lo|, |hi|) of the box;   affine: M = |L| M_in + |b|;
    ReLU:   M = M_in + mu (its upper intercept, >= 0);   Add: the sum;   MaxPool: max-pool of M_in;
    and M_k = max(M_k, |lo_k|, |hi_k|) once node k's bounds are known,

(computed in float64, a forward pass as cheap as interval bounds), and widens every float32
bound by 2 gamma_K M_k (the factor 2: the stem regroups lambda_up a + (lambda_lo - lambda_up) a,
whose term mass is at most twice that of lambda a) before later nodes use it. K is an upper
bound on the roundings any term meets (:func:`rounding_budget`); the float64 weights rounded to
float32 are one more relative rounding per layer, counted in K. Together with the outward-
rounded input box (:func:`outward_ball`) and ReLU upper lines that are valid for the rounded
slope (:func:`verify.bounds.relax.relu_relaxation`), every widened bound holds for the exact
float64 network over the exact set, so a margin whose widened float32 bound is > 0 is certified.
"""

from __future__ import annotations

import contextlib
import math
from typing import cast

import numpy as np
import torch
from torch import Tensor

from ..network import Add, AffineLayer, AvgPool2d, ChannelAffine, Conv2d, Flatten, Linear, MaxPool2d, Network, Node, ReLU
from ..spec import LpBall
from .relax import relu_relaxation
from .types import NodeBounds

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def _fans(op: object) -> tuple[int, int]:
    """(forward, transposed) terms of one sum of this layer's map, counting nonzero ones
    (exact zeros -- padding, masked window entries -- add exactly)."""
    if isinstance(op, Linear):
        return op.in_features, op.out_features
    if isinstance(op, Conv2d):
        o, i, kh, kw = op.weight.shape
        sh, sw = op.stride
        return i * kh * kw, o * math.ceil(kh / sh) * math.ceil(kw / sw)
    if isinstance(op, AvgPool2d):
        kh, kw = op.kernel_size
        return kh * kw, math.ceil(kh / op.stride[0]) * math.ceil(kw / op.stride[1])
    if isinstance(op, Add):
        return 2, 1
    return 1, 1  # ChannelAffine, ReLU: one product; Flatten, MaxPool2d: exact


def rounding_budget(net: Network, k: int) -> int:
    """An upper bound on the roundings one term of a bound on node k meets.

    Node k's own interval bound: its forward sum. A backward bound: per node on the path, one
    sum of the transposed map, a product with the node's data, the rounding of its float32
    weight and an addition to the running constant; conv layers may also be evaluated forward
    or composed (the receptive-field code, the stem), so their forward sums count as well.
    Reductions over a whole layer are accumulated in float64 (:func:`wide_sum`, two roundings),
    except the one over the input in :meth:`LpBall.min_linear`. Generous constants on top.
    """
    anc = net.ancestors(k) - {0}
    path = 0
    for i in anc:
        fwd, bwd = _fans(net.graph[i].op)
        path += bwd + 6 + (fwd if isinstance(net.graph[i].op, (Conv2d, AvgPool2d)) else 0)
    return _fans(net.graph[k].op)[0] + path + math.prod(net.graph[0].shape) + 32


# the largest absolute error of one rounding into the subnormal range (half the smallest subnormal)
UNDERFLOW = {torch.float32: 2.0**-150, torch.float64: 2.0**-1075}


def underflow_allowance(net: Network, dtype: torch.dtype) -> float:
    """A bound, per unit of the largest magnitude in play, on what underflow can add to any bound.

    The relative model fl(a op b) = (a op b)(1 + d), |d| <= u, fails below the normal range:
    there fl(a op b) = (a op b)(1 + d) + e with |e| <= ``UNDERFLOW`` (Higham, 2nd ed., eq. 2.8),
    and rounding a float64 weight that is subnormal in float32 is such an e too. Each e enters
    the computation once and is then multiplied by data: weights (at most the largest absolute
    row or column sum of any layer, per layer), ReLU slopes (<= 1) and box corners or intercepts
    (<= the largest magnitude M, the caller's factor). So all of them together add at most
    (number of roundings) * e * prod over layers of max(1, gain) * max(1, M). The number of
    roundings of every pass a certificate makes is bounded generously by
    10^4 * (parameters + neurons) * (neurons + 1); this is ~1e-25 on the zoo's MNIST CNNs and
    decides only networks with subnormal weights or huge magnitudes.
    """
    params = sum(layer.num_params() for layer in net.layers)
    neurons = sum(math.prod(node.shape) for node in net.graph)
    gain = 1.0
    for node in net.graph[1:]:
        op = node.op
        if isinstance(op, (Linear, Conv2d, AvgPool2d, ChannelAffine)):
            m = abs(op.matrix(tuple(net.graph[node.inputs[0]].shape)))
            rows = float(m.sum(axis=1).max()) if m.shape[0] else 0.0
            cols = float(m.sum(axis=0).max()) if m.shape[1] else 0.0
            gain *= max(1.0, rows, cols)
        elif isinstance(op, Add):
            gain *= len(node.inputs)
    return 1e4 * (params + neurons) * (neurons + 1) * UNDERFLOW[dtype] * gain


def gamma(k: int, dtype: torch.dtype) -> float:
    u = UNIT_ROUNDOFF[dtype]
    if k * u >= 0.5:
        return math.inf
    return k * u / (1 - k * u)


def round_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The largest ``dtype`` numbers <= x (x in float64)."""
    t = x.to(dtype)
    return torch.where(t.to(x.dtype) > x, torch.nextafter(t, torch.full_like(t, -math.inf)), t)


def round_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    return -round_down(-x, dtype)


def guard_applies(pset: LpBall) -> bool:
    """The float32 path is made rigorous for the Linf ball with a box representable in float32,
    on the CPU with IEEE float32 products (see :func:`ieee_float32_kernels`)."""
    return (math.isinf(pset.p) and all(float(np.float32(v)) == v for v in (pset.lo, pset.hi))
            and pset.center.device.type == "cpu" and ieee_float32_kernels())


def ieee_float32_kernels() -> bool:
    """Does torch compute float32 products in IEEE float32 here? The error bound assumes so.

    Not when float32 matrix products may use TF32 or bfloat16 (``torch.set_float32_matmul_precision``
    below "highest", oneDNN's ``fp32_precision`` set to bf16 / tf32): their unit roundoff is
    2^-11 or 2^-8, not 2^-24. GPUs are excluded by :func:`guard_applies` (cuDNN uses TF32 for
    float32 convolutions by default, and FFT / Winograd algorithms); on the CPU, NNPACK's
    Winograd / FFT convolutions are switched off around the guarded pass (:func:`ieee_context`).
    """
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mk = torch.backends.mkldnn
    for part in ("matmul", "conv"):
        if str(getattr(getattr(mk, part, None), "fp32_precision", "none")).lower() not in ("none", "ieee"):
            return False
    return True


def ieee_context() -> contextlib.AbstractContextManager[object]:
    """Convolutions as sums of products (oneDNN direct or im2col + GEMM), never NNPACK's Winograd / FFT."""
    return torch.backends.nnpack.flags(enabled=False)


def outward_ball(pset: LpBall, dtype: torch.dtype = torch.float32) -> LpBall:
    """The set in ``dtype`` with a radius widened so that its computed box contains the exact one.

    The box is clamp(c - e, lo), clamp(c + e, hi) in ``dtype``: rounding the centre, the radius
    and the difference moves an edge by at most 3 u (|c| + eps) (1 + u); a slack of
    16 u (1 + |c|max + eps) per example more than covers it (u: ``dtype``'s unit roundoff).
    """
    u = UNIT_ROUNDOFF[dtype]
    c = pset.center.to(torch.float64)
    cmax = c.reshape(c.shape[0], -1).abs().amax(1) if c.numel() else c.new_zeros((c.shape[0],))
    eps = pset.eps.to(torch.float64)
    wide = eps + 16 * u * (1 + cmax + eps)
    return LpBall(pset.center.to(dtype), wide, pset.p, pset.lo, pset.hi)


class RoundingGuard:
    """Widens float32 bounds, node by node, by a rigorous bound on their rounding error."""

    def __init__(self, net: Network, dtype: torch.dtype) -> None:
        self.net = net
        self.dtype = dtype
        self.mag: dict[int, Tensor] = {}
        self.top = torch.zeros(0, dtype=torch.float64)  # set by start()
        self.underflow = underflow_allowance(net, dtype)

    def _absolute(self, mag: Tensor) -> Tensor:
        """The underflow allowance at magnitude ``mag`` (per example: the largest magnitude so far)."""
        top = torch.maximum(self.top, mag.reshape(mag.shape[0], -1).amax(1))
        return self.underflow * top.clamp(min=1.0).reshape((-1,) + (1,) * (mag.ndim - 1))

    def _keep(self, index: int, mag: Tensor) -> None:
        self.mag[index] = mag
        self.top = torch.maximum(self.top, mag.reshape(mag.shape[0], -1).amax(1))

    def start(self, lo: Tensor, hi: Tensor) -> None:
        m0 = torch.maximum(lo.abs(), hi.abs()).detach().to(torch.float64)
        self.top = m0.reshape(m0.shape[0], -1).amax(1)  # per example, the largest magnitude so far
        self._keep(0, m0)

    def node(self, node: Node, lo: Tensor, hi: Tensor, bounds: NodeBounds) -> tuple[Tensor, Tensor]:
        """Node ``node``'s computed bounds, widened; ``bounds`` holds its (already widened) inputs."""
        op = node.op
        m_in = [self.mag[i] for i in node.inputs]
        exact = isinstance(op, (ReLU, MaxPool2d, Flatten))  # clamps, maxima and reshapes do not round
        with torch.no_grad():
            if isinstance(op, ReLU):
                blo, bhi = bounds[node.inputs[0]]
                mu = relu_relaxation(blo.detach(), bhi.detach(), "kw").mu_up.to(torch.float64)
                # an inactive neuron (hi <= 0) passes nothing: slope 0, output bounds [0, 0]
                mag = torch.where(bhi.detach() > 0, m_in[0], torch.zeros_like(m_in[0])) + mu
            elif isinstance(op, MaxPool2d):
                mag = torch.nn.functional.max_pool2d(m_in[0], op.kernel, op.stride, op.padding)
            elif isinstance(op, Add):
                mag = cast(Tensor, sum(m_in))  # sum() starts from the int 0; an Add has inputs
            else:
                in_shape = self.net.graph[node.inputs[0]].shape
                aff = node.op_as(AffineLayer)  # every other layer is affine
                off = aff.offset(in_shape, m_in[0]).abs()
                mag = aff.abs_linear(m_in[0]) + off
        if not exact:
            delta = 2 * gamma(rounding_budget(self.net, node.index), self.dtype) * mag * (1 + 1e-9) + self._absolute(mag)
            lo = round_down(lo.to(torch.float64) - delta, self.dtype) if not lo.requires_grad else lo - delta.to(lo.dtype)
            hi = round_up(hi.to(torch.float64) + delta, self.dtype) if not hi.requires_grad else hi + delta.to(hi.dtype)
        self._keep(node.index, torch.maximum(mag, torch.maximum(lo.detach().abs(), hi.detach().abs()).to(torch.float64)))
        return lo, hi

    def row_error(self, spec: Tensor) -> Tensor:
        """(N, R): a bound on the rounding error of the float32 bound on every row spec[n, r] . f
        (spec (N, R, n_out), float64; the bound is computed with its float32 copy c32).

        A bound on c32 . f is a sum of the output node's terms, each times |c32_j|, so its term
        mass is at most |c32| . M_out (one product more per term, within K's margin), hence
        2 gamma_K |c32| . M_out; the underflow allowance scales with |c32|_1; and
        |c - c32| . M_out bounds c . f - c32 . f, M_out being >= |f| over the set (0 for a row
        exact in float32, as margin rows e_y - e_j are, where this is 2 gamma_K (M_y + M_j)).
        """
        last = self.net.graph[-1].index
        mag = self.mag[last].reshape(spec.shape[0], 1, -1)
        c = spec.to(torch.float64)
        c32 = c.to(self.dtype).to(torch.float64)
        a = c32.abs()
        mass = (a * mag).sum(-1)
        err = (2 * gamma(rounding_budget(self.net, last), self.dtype) * mass * (1 + 1e-9)
               + a.sum(-1) * self._absolute(mag.reshape(spec.shape[0], -1)))
        exact = torch.equal(c, c32)
        err = err if exact else err + ((c - c32).abs() * mag).sum(-1) * (1 + 1e-9)
        return torch.nan_to_num(err, nan=math.inf)  # 0 * an infinite magnitude
