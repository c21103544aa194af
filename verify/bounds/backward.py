"""The backward (linear relaxation) engine on ``net.graph``.

Given a linear specification ``A`` on node k (shape (B, S, *shape_k)), it returns lower
bounds on <A[b, s], value_k> over the perturbation set, for every b and s. The spec is
pulled back through affine layers with ``linear_t`` (no dense matrices), through ReLUs
with a linear relaxation built from the bounds of their inputs, and through Add nodes by
sending the same coefficients to every input. Coefficients reaching a node from several
consumers are summed; nodes are visited in reverse topological order, so a node's
coefficients are complete when it is visited. At the input node the bound is finished
exactly over the Lp ball intersected with the box (:meth:`LpBall.min_linear`).
Upper bounds are lower bounds of the negated spec.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..errors import UnsupportedLayerError
from ..network import Add, AffineLayer, MaxPool2d, Network, ReLU
from ..spec import LpBall
from .convtail import TAIL_MIN_ROWS, tail_finish, tail_plan
from .relax import ReluRelaxation, Rule, flat_sum, relu_relaxation, through_relu
from .types import NodeBounds


def backward_bound(
    net: Network,
    pset: LpBall,
    start: int,
    A: Tensor,
    bounds: NodeBounds,
    *,
    rule: Rule,
    const: Tensor | None = None,
    alpha: dict[int, Tensor] | None = None,
    relaxations: Mapping[int, ReluRelaxation] | None = None,
    extra: Mapping[int, Tensor] | None = None,
) -> Tensor:
    """min over the set of <A[b, s], value of node ``start``> + const[b, s]; returns (B, S).

    ``bounds`` must hold, for the same B rows, the bounds of every ReLU input between the
    input and ``start`` -- or ``relaxations`` their precomputed relaxations (keyed by the
    ReLU's input node), which spares recomputing them per call. ``alpha`` (rule "alpha")
    maps a ReLU node to lower slopes of shape (B, S, *shape), used on its unstable neurons.
    ``extra`` maps a node j (below ``start``) to coefficients (B, S, *shape_j): the bound is then of
    <A, node start> + <extra[j], node j> summed over j (each term added to node j's coefficients
    when the pass reaches it). beta-CROWN's Lagrangian terms of split constraints are such terms.
    """
    lower, _ = _backward(net, pset, start, A, bounds, rule=rule, const=const, alpha=alpha,
                         relaxations=relaxations, two_sided=False, extra=extra)
    return lower


def backward_range(
    net: Network,
    pset: LpBall,
    start: int,
    A: Tensor,
    relaxations: Mapping[int, ReluRelaxation],
    *,
    const: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(min, max) over the set of <A[b, s], node ``start``> + const with one backward pass.

    Only for relaxations whose lower and upper lines are parallel (rule ``kw``): the
    relaxation is then one linear map plus a one-sided constant, so the coefficients of
    the negated spec are exactly the negated coefficients and both bounds come from the
    same pass (as in Wong & Kolter's dual network), at half the cost of two passes.
    """
    lower, upper = _backward(net, pset, start, A, {}, rule="kw", const=const, alpha=None,
                             relaxations=relaxations, two_sided=True)
    assert upper is not None
    return lower, upper


def backward_coefficients(net: Network, start: int, A: Tensor, relaxations: Mapping[int, ReluRelaxation], *,
                          stop: int = 0) -> tuple[Tensor, Tensor]:
    """<A[b, s], node ``start``> as an affine function of the input: (coefficients (B, S, *input_shape), constant (B, S)).

    Exact for relaxations whose two lines coincide with zero intercept (a fixed activation
    pattern, ``lam_lo == lam_up``, ``mu_up == 0``): the rows of the network's affine map on a
    linear region, i.e. gradients w.r.t. the input, pulled back without any dense Jacobian.
    With ``stop`` > 0, an affine function of node ``stop``'s value instead (coefficients
    (B, S, *shape of stop)); every path from ``start`` down must pass through ``stop``.
    """
    a0, total, _ = _pull_back(net, start, A, {}, rule="kw", const=None, alpha=None, relaxations=relaxations,
                              two_sided=True, stop=stop)
    return a0, total


def backward_rows(net: Network, start: int, A: Tensor, relaxations: Mapping[int, ReluRelaxation], *,
                  stop: int = 0) -> Tensor:
    """The coefficients of :func:`backward_coefficients` alone (the same tensor), without the
    reductions that build its constant (float64 sums over every row at every layer): for input
    gradients, where the constant is not read (MMR's forward on cnn_lenet_small, F-MNIST batch of
    128: 0.357 -> 0.302 s)."""
    a0, _, _ = _pull_back(net, start, A, {}, rule="kw", const=None, alpha=None, relaxations=relaxations,
                          two_sided=True, stop=stop, constants=False)
    return a0


def _backward(net: Network, pset: LpBall, start: int, A: Tensor, bounds: NodeBounds, *, rule: Rule,
              const: Tensor | None, alpha: dict[int, Tensor] | None,
              relaxations: Mapping[int, ReluRelaxation] | None, two_sided: bool,
              extra: Mapping[int, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
    # the conv-stem shortcut pulls the stem back in one piece: no extra terms there
    plan = tail_plan(net, start) if A.shape[1] >= TAIL_MIN_ROWS and not extra else None
    if plan is not None:
        # many rows per example below a conv stem: the batched stem (verify.bounds.convtail)
        a2, total, total_up = _pull_back(net, start, A, bounds, rule=rule, const=const, alpha=alpha,
                                         relaxations=relaxations, two_sided=two_sided, stop=plan.r2)
        rels = [_relaxation(n, bounds, relaxations, rule, a2.dtype) for n in (plan.c1, plan.c2)]
        al = [None if alpha is None else alpha.get(n) for n in (plan.r1, plan.r2)]
        return tail_finish(net, plan, pset, a2, total, total_up, rels[0], rels[1], al[0], al[1])
    a0, total, total_up = _pull_back(net, start, A, bounds, rule=rule, const=const, alpha=alpha,
                                     relaxations=relaxations, two_sided=two_sided, extra=extra)
    if total_up is None:  # not two_sided
        return total + pset.min_linear(a0), None
    return total + pset.min_linear(a0), total_up - pset.min_linear(-a0)


def _pull_back(net: Network, start: int, A: Tensor, bounds: NodeBounds, *, rule: Rule,
               const: Tensor | None, alpha: dict[int, Tensor] | None,
               relaxations: Mapping[int, ReluRelaxation] | None,
               two_sided: bool, stop: int = 0,
               extra: Mapping[int, Tensor] | None = None,
               constants: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Coefficients on the input (node ``stop``) and the constants (lower; upper when two-sided) of the spec
    (``constants=False``, two-sided only: the constants are left at their start, the coefficients are the same)."""
    assert constants or two_sided, "the one-sided rule's coefficients come with its constants"
    graph = net.graph
    b, s = A.shape[:2]
    total = torch.zeros((b, s), dtype=A.dtype, device=A.device) if const is None else const.clone()
    total_up = total.clone() if two_sided else None
    acc: dict[int, Tensor] = {start: A}
    if extra:
        bad = [j for j in extra if not stop < j <= start]
        if bad:
            raise ValueError(f"extra terms on nodes {bad} outside ({stop}, {start}]")
    for idx in range(start, stop, -1):
        a = acc.pop(idx, None)
        if extra is not None and idx in extra:
            a = extra[idx] if a is None else a + extra[idx]
        if a is None:
            continue
        node = graph[idx]
        op = node.op
        if isinstance(op, Add):
            for j in node.inputs:
                acc[j] = acc[j] + a if j in acc else a
            continue
        src = node.inputs[0]
        if isinstance(op, ReLU):
            rel = _relaxation(src, bounds, relaxations, rule, a.dtype)
            if total_up is not None:  # two_sided
                # parallel lines: z in [lam x, lam x + mu]; the max takes mu where a > 0
                a_in = a * rel.lam_up.unsqueeze(1)
                if constants:
                    mu = rel.mu_up.unsqueeze(1)
                    c_all = flat_sum(a * mu)
                    c_neg = flat_sum(a.clamp(max=0) * mu)
                    total = total + c_neg
                    total_up = total_up + (c_all - c_neg)
            else:
                a_in, c = through_relu(a, rel, None if alpha is None else alpha.get(idx))
                total = total + c
        elif isinstance(op, MaxPool2d):
            raise UnsupportedLayerError(f"{op.describe()} is not supported by linear bounds (use method ibp)")
        else:
            in_shape = graph[src].shape
            aff = node.op_as(AffineLayer)  # every other layer is affine
            if constants:
                # offset() wants a batch-shaped tensor as its dtype/device template
                like = a.new_zeros((1,) * (len(in_shape) + 1))
                off = flat_sum(a * aff.offset(in_shape, like))
                total = total + off
                if total_up is not None:  # two_sided
                    total_up = total_up + off
            a_in = aff.linear_t(a.reshape(b * s, *node.shape), in_shape).reshape(b, s, *in_shape)
        acc[src] = acc[src] + a_in if src in acc else a_in
    a_stop = acc.pop(stop)
    if acc:
        raise ValueError(f"node {stop} does not separate node {start} from the input (paths reach nodes {sorted(acc)})")
    return a_stop, total, total_up


def _relaxation(src: int, bounds: NodeBounds, relaxations: Mapping[int, ReluRelaxation] | None, rule: Rule,
                dtype: torch.dtype) -> ReluRelaxation:
    """The relaxation of the ReLU fed by node ``src``: precomputed, or from its bounds."""
    if relaxations is not None and src in relaxations:
        return relaxations[src]
    lo, hi = bounds[src]
    return relu_relaxation(lo.to(dtype), hi.to(dtype), "crown" if rule == "alpha" else rule)


def margin_spec(labels: Tensor, n_classes: int, dtype: torch.dtype) -> Tensor:
    """(N, K, K): row j is e_y - e_j (row y is zero)."""
    n = labels.shape[0]
    y = labels.to(torch.long).reshape(-1)
    spec = -torch.eye(n_classes, dtype=dtype, device=y.device).expand(n, n_classes, n_classes).clone()
    spec[torch.arange(n, device=y.device), :, y] += 1.0
    return spec


def relu_inputs(net: Network) -> list[int]:
    """Indices of nodes that feed a ReLU, in topological order."""
    return sorted({n.inputs[0] for n in net.relu_nodes})


def check_supported(net: Network, method: str) -> None:
    for node in net.graph:
        if isinstance(node.op, MaxPool2d):
            raise UnsupportedLayerError(f"method {method} does not support {node.op.describe()} (node {node.index}); use ibp")
