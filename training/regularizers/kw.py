"""Certified-training losses from bound propagation: Kolter-Wong (kw), IBP, CROWN-IBP.

The robust loss of Wong & Kolter (2018) is the cross-entropy of the *negated margin lower
bounds*: with m_j <= min over the set of f_y - f_j, the logits z_j = -m_j (z_y = 0) upper-bound
the worst-case logit differences, so CE(z, y) upper-bounds the worst-case cross-entropy. The
bounds come from :func:`verify.bounds.compute_bounds` -- one implementation, shared with
certification -- run on a Network that holds the module's live parameters
(``network_from_torch(..., share_parameters=True)``) so the loss is differentiable w.r.t. them.

Schedules: eps ramps linearly over the first epochs (Wong et al.'s ``starting_epsilon`` ->
``epsilon`` over ``schedule_length``); for IBP / CROWN-IBP the clean-loss weight kappa goes
1 -> kappa_end and CROWN-IBP's beta (weight of the CROWN bound) 1 -> 0 over the ramp
(Zhang et al. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.errors import SpecError
from verify.network import Network
from verify.spec import LpBall

RobustMethod = Literal["kw", "ibp", "crown", "crown-ibp"]
ROBUST_METHODS: tuple[str, ...] = ("kw", "ibp", "crown", "crown-ibp")


def margin_lower_bounds(net: Network, x: Tensor, labels: Tensor, *, eps: float, p: float | str,
                        method: str) -> Tensor:
    """(N, K) lower bounds on f_y - f_j over the Lp ball of radius eps (inside the input box); +inf at y."""
    from verify.bounds import compute_bounds

    if method not in ("kw", "ibp", "crown"):
        raise SpecError(f"unknown bound method {method!r} for training: use kw, ibp or crown")
    pset = LpBall.make(x, eps, p, net.input_range)
    res = compute_bounds(net, pset, labels, method=method, dtype=x.dtype)  # type: ignore[arg-type]
    m = res.margin_lb
    if not m.requires_grad and torch.is_grad_enabled() and _has_live_params(net):
        raise SpecError(
            f"verify.bounds.compute_bounds(method={method!r}) returned bounds without gradients: "
            "certified training needs it to keep the autograd graph (no torch.no_grad inside)"
        )
    return m


def _has_live_params(net: Network) -> bool:
    return any(getattr(l, "weight", None) is not None and l.weight.requires_grad for l in net.walk())


def robust_ce(margin_lb: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of the logits z_j = -margin_lb_j, z_y = 0 (Wong & Kolter's robust loss)."""
    y = labels.to(torch.long).reshape(-1)
    z = -margin_lb
    z = z.scatter(1, y[:, None], 0.0)  # the label column holds +inf; its logit is 0 by definition
    return F.cross_entropy(z, y)


@dataclass(frozen=True)
class RobustSchedule:
    """eps / kappa / beta by 1-based epoch and the fraction of it done: linear ramps over
    ``warmup_epochs`` epochs (0: none).

    A ramp of N epochs starts at the first batch of epoch 1 (eps = ``eps_start``) and ends at
    the last batch of epoch N (eps reached), moving every batch: ``--warmup-epochs 1`` ramps
    over the first epoch. ``frac`` (batch / batches per epoch) makes the ramps move every batch
    rather than jump once per epoch: a sudden step in eps is what collapses certified training
    (IBP especially), so the trainer always passes it.
    """

    eps: float
    warmup_epochs: int = 0
    eps_start: float = 0.0
    kappa_end: float = 0.0
    method: RobustMethod = "kw"

    def ramp(self, epoch: int, frac: float = 0.0) -> float:
        """How far the ramps have gone, in [0, 1], at ``frac`` of 1-based ``epoch``."""
        if self.warmup_epochs <= 0:
            return 1.0
        return min(max(epoch - 1 + frac, 0.0) / self.warmup_epochs, 1.0)

    def eps_at(self, epoch: int, frac: float = 0.0) -> float:
        return self.eps_start + self.ramp(epoch, frac) * (self.eps - self.eps_start)

    def kappa_at(self, epoch: int, frac: float = 0.0) -> float:
        """Weight of the clean loss: KW trains on the robust loss alone (kappa 0)."""
        if self.method in ("kw", "crown"):
            return 0.0
        return 1.0 - self.ramp(epoch, frac) * (1.0 - self.kappa_end)

    def beta_at(self, epoch: int, frac: float = 0.0) -> float:
        """CROWN-IBP's weight of the CROWN bound (1 -> 0 over the ramp)."""
        return 1.0 - self.ramp(epoch, frac) if self.method == "crown-ibp" else 0.0


@dataclass(frozen=True, eq=False)
class RobustLossValue:
    loss: Tensor  # kappa * clean CE + (1 - kappa) * robust CE
    robust_ce: Tensor
    clean_ce: Tensor
    logits: Tensor


def robust_loss(net: Network, x: Tensor, labels: Tensor, *, eps: float, p: float | str,
                method: RobustMethod = "kw", kappa: float = 0.0, beta: float = 0.0) -> RobustLossValue:
    """The certified-training loss for one batch (differentiable w.r.t. the net's live parameters)."""
    if method not in ROBUST_METHODS:
        raise SpecError(f"unknown certified-training method {method!r}: use one of {', '.join(ROBUST_METHODS)}")
    if eps < 0:
        raise SpecError(f"eps must be >= 0, got {eps:g}")
    logits = net.forward(x)
    clean = F.cross_entropy(logits, labels)
    if method == "crown-ibp":
        # Zhang et al.: IBP bounds on every layer, CROWN only for the final margins (on top of
        # the IBP intermediates: cheap, one backward pass from the K outputs)
        from verify.bounds import compute_bounds, interval_bounds

        pset = LpBall.make(x, eps, p, net.input_range)
        ib = interval_bounds(net, pset, dtype=x.dtype)
        m = compute_bounds(net, pset, labels, method="ibp", dtype=x.dtype, intermediate=ib).margin_lb
        if beta > 0:
            mc = compute_bounds(net, pset, labels, method="crown", dtype=x.dtype, intermediate=ib).margin_lb
            m = beta * mc + (1 - beta) * m
    else:
        m = margin_lower_bounds(net, x, labels, eps=eps, p=p, method=method)
    rce = robust_ce(m, labels)
    loss = kappa * clean + (1 - kappa) * rce if kappa > 0 else rce
    return RobustLossValue(loss, rce, clean, logits)
