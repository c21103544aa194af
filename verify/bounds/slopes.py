"""alpha-CROWN's optimiser: projected Adam ascent on ReLU lower slopes, best bound per spec row kept.

Shared by the final margins (:func:`verify.bounds.final.alpha_margins`) and the intermediate
bounds (:func:`verify.bounds.intermediate.alpha_intermediate`). Any slopes in [0, 1] give a
sound bound, so stopping early (``steps`` or ``deadline``) only costs tightness.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..network import Network
from ..spec import LpBall
from .adam import ascend_slopes
from .backward import backward_bound
from .convtail import reuse_matrices
from .relax import relu_relaxation
from .types import NodeBounds


def crown_slopes(net: Network, bounds: NodeBounds, n_specs: int, nodes: list[int] | None = None) -> dict[int, Tensor]:
    """CROWN's lower slopes, one copy per spec row: (N, S, *shape) per ReLU node (all, or ``nodes``)."""
    out: dict[int, Tensor] = {}
    for node in net.relu_nodes:
        if nodes is not None and node.index not in nodes:
            continue
        lam = relu_relaxation(*bounds[node.inputs[0]], "crown").lam_lo
        out[node.index] = lam.unsqueeze(1).expand(lam.shape[0], n_specs, *lam.shape[1:]).clone()
    return out


def optimise_slopes(
    net: Network,
    pset: LpBall,
    start: int,
    spec: Tensor,
    bounds: NodeBounds,
    alpha: dict[int, Tensor],
    *,
    steps: int,
    lr: float,
    deadline: float = math.inf,
) -> tuple[Tensor, dict[int, Tensor]]:
    """max over slopes of the lower bound of <spec, node ``start``>: (best bound (B, S), its slopes).

    ``alpha`` gives the starting slopes (B, S, *shape) per ReLU node; see :func:`verify.bounds.adam.ascend_slopes`.
    """
    with reuse_matrices():  # the network's parameters do not change during the steps
        return ascend_slopes(lambda al: backward_bound(net, pset, start, spec, bounds, rule="alpha", alpha=al),
                             alpha, steps=steps, lr=lr, deadline=deadline)


