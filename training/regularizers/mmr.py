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

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from verify.errors import SpecError, UnsupportedLayerError
from verify.network import AffineLayer, Add, Network, ReLU
from verify.spec import dual_norm

# denominators are floored here: a ReLU whose pre-activation is constant inside the region
# (zero gradient) has no hyperplane there, and gets a huge distance instead of a division by 0
_MIN_NORM = 1e-12


@dataclass(frozen=True, eq=False)
class RegionDistances:
    """Distances from each point to the hyperplanes of its linear region, in the Lp norm.

    ``relu``: (N, n_relu), over all ReLUs of the network in graph order (each node's
    units in C order). ``decision``: (N, K) signed distances to the boundaries f_y = f_j,
    +inf in the label column. ``logits``: (N, K).
    """

    relu: Tensor
    decision: Tensor
    logits: Tensor
    p: float


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


def region_distances(net: Network, x: Tensor, labels: Tensor, *, p: float | str) -> RegionDistances:
    """Lp distances to the ReLU hyperplanes and (signed) to the decision boundaries of each point's region."""
    pv = _p_value(p)
    q = dual_norm(pv)
    rj = region_jacobians(net, x)
    y = labels.to(torch.long).reshape(-1)
    relu_d = [z.abs() / torch.linalg.vector_norm(g, ord=q, dim=1).clamp(min=_MIN_NORM) for z, g in zip(rj.pre, rj.grads)]
    relu = torch.cat(relu_d, dim=1) if relu_d else x.new_zeros((x.shape[0], 0))
    lg = rj.logit_grads.expand(x.shape[0], -1, -1)  # (N, d, K)
    g_y = lg.gather(2, y[:, None, None].expand(-1, lg.shape[1], 1))  # (N, d, 1)
    denom = torch.linalg.vector_norm(g_y - lg, ord=q, dim=1).clamp(min=_MIN_NORM)  # (N, K)
    f_y = rj.logits.gather(1, y[:, None])
    numer = f_y - rj.logits
    is_label = torch.zeros_like(numer, dtype=torch.bool).scatter_(1, y[:, None], True)
    decision = torch.where(is_label, torch.full_like(numer, math.inf), numer / denom)
    return RegionDistances(relu, decision, rj.logits, pv)


def hinge_closest(dist: Tensor, k: int, gamma: float) -> Tensor:
    """Per example: sum over the k smallest distances of max(0, 1 - d / gamma), divided by k."""
    if dist.shape[1] == 0 or k <= 0:
        return dist.new_zeros(dist.shape[0])
    k = min(k, dist.shape[1])
    closest = torch.topk(dist, k, dim=1, largest=False).values
    return torch.clamp(1.0 - closest / gamma, min=0.0).sum(1) / k


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
    dist = region_distances(net, x, labels, p=p)
    rb = hinge_closest(dist.relu, k_relu, gamma_relu).mean()
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
