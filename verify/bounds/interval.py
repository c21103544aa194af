"""Interval bound propagation (IBP): every node's value lies in [lower, upper].

Affine layers use the centre/radius form (centre through the layer, radius through
|L|), which is exact for a single affine layer over a box. ReLU and MaxPool2d are
monotone, so they map the bounds directly. An Add node sums its inputs' bounds.

For an L1 or L2 ball the first affine layer (reached from the input through Flatten
only) also gets the ball's own bound, L x0 + b -+ eps ||row of L||_q (q the dual norm,
Hoelder's inequality), intersected with the box bound: both are sound, and the ball's is
much tighter when eps is small against the box (the enclosing box of an L2 ball of
radius eps has half-width eps in every one of the 784 coordinates).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..network import Add, AffineLayer, Flatten, MaxPool2d, Network, Node, ReLU
from ..spec import LpBall, dual_norm
from .types import NodeBounds

if TYPE_CHECKING:
    from .rounding import RoundingGuard


def node_interval(node: Node, bounds: NodeBounds) -> tuple[Tensor, Tensor]:
    """The interval of ``node`` from the intervals of its inputs."""
    op = node.op
    if isinstance(op, Add):
        # sum() starts from the int 0; with at least one input the result is a Tensor
        lo = cast(Tensor, sum(bounds[i][0] for i in node.inputs))
        hi = cast(Tensor, sum(bounds[i][1] for i in node.inputs))
        return lo, hi
    lo, hi = bounds[node.inputs[0]]
    if isinstance(op, ReLU):
        return lo.clamp(min=0), hi.clamp(min=0)
    if isinstance(op, Flatten):  # a permutation: exact on each end (the centre/radius form would round)
        return op.forward(lo), op.forward(hi)
    if isinstance(op, MaxPool2d):
        # max is monotone in every argument; torch pads with -inf exactly as the layer's forward does
        return F.max_pool2d(lo, op.kernel, op.stride, op.padding), F.max_pool2d(hi, op.kernel, op.stride, op.padding)
    mid = (hi + lo) / 2
    rad = (hi - lo) / 2
    aff = node.op_as(AffineLayer)  # every other layer is affine
    c = aff.forward(mid)
    r = aff.abs_linear(rad)
    return c - r, c + r


def interval_bounds(net: Network, pset: LpBall, *, dtype: torch.dtype = torch.float32,
                    start: NodeBounds | None = None, guard: RoundingGuard | None = None) -> NodeBounds:
    """Interval bounds on every node of ``net.graph``.

    ``start`` may hold tighter bounds for some nodes (from another method); they
    are intersected with the interval ones and used for everything downstream.
    ``guard`` widens each node's bounds by a rigorous bound on their rounding error.
    """
    ball = pset.to(dtype)
    lo, hi = ball.box()
    bounds: NodeBounds = {0: (lo, hi)}
    # nodes that are the input up to Flatten (a permutation): the ball is still a ball there. (L1 / L2
    # only; the rounding guard serves Linf alone, so the two never meet: see rounding.guard_applies)
    centres: dict[int, Tensor] = {} if math.isinf(pset.p) else {0: ball.center}
    if guard is not None:
        guard.start(lo, hi)
    # no torch.no_grad here: training differentiates through these bounds
    for node in net.graph[1:]:
        lo, hi = node_interval(node, bounds)
        src = node.inputs[0] if len(node.inputs) == 1 else None
        if src in centres and isinstance(node.op, AffineLayer):
            c = node.op.forward(centres[src])
            if isinstance(node.op, Flatten):
                centres[node.index] = c
            else:
                norms = node.op.row_norms(tuple(centres[src].shape[1:]), dual_norm(pset.p), c)
                r = ball.eps.to(dtype).reshape((-1,) + (1,) * (c.ndim - 1)) * norms
                lo, hi = torch.maximum(lo, c - r), torch.minimum(hi, c + r)
        if start is not None and node.index in start:
            slo, shi = start[node.index]
            lo, hi = torch.maximum(lo, slo.to(dtype)), torch.minimum(hi, shi.to(dtype))
        if guard is not None:
            lo, hi = guard.node(node, lo, hi, bounds)
        bounds[node.index] = (lo, hi)
    return bounds
