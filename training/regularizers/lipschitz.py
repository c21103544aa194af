"""Lipschitz regularisation of the loss and J1 / J2 / Jinf training perturbations
(Finlay, Oberman & Abbasi, "Improved robustness to adversarial examples using Lipschitz
regularization of the loss", arXiv:1810.00953; their code: Tulip).

* :func:`lipschitz_penalty` -- max over the batch of ||grad_x CE(model(x_i), y_i)||_2, by double
  backpropagation (``create_graph=True``), so ``loss + lam * penalty`` can be minimised: an
  estimate of the loss's Lipschitz constant taken over the mini-batch, as in Tulip's ``--lip``.
* :func:`perturb` -- one gradient step on the input, the training points of Tulip's
  ``--J1 / --J2 / --Jinf``. Tulip measures every step by its Euclidean length eps ("a maximum
  Euclidean perturbation distance epsilon"), so the three directions are scaled to L2 norm eps
  (before clipping to the input range), with g = grad_x CE and d the input dimension:

  - ``j1``:   eps * sign(g) / sqrt(d)  -- FGSM; to first order it adds eps / sqrt(d) * ||g||_1
  - ``j2``:   eps * g / ||g||_2        -- adds eps * ||g||_2 (a zero gradient gives no step)
  - ``jinf``: eps * sign(g_k) e_k, k = argmax |g_k| -- one pixel; adds eps * ||g||_inf

  so training on CE(x + perturbation) penalises the average 1-, 2- or inf-norm of the loss
  gradient. (FGSM with an Linf radius r is ``j1`` with eps = r * sqrt(d).)

As in Tulip the perturbation is computed with the model in eval mode (BatchNorm uses its
running statistics and they are not updated); the mode is restored afterwards, and no
gradient reaches the parameters' ``.grad``.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verify.errors import DataError, SpecError

Kind = Literal["j1", "j2", "jinf"]
KINDS: tuple[str, ...] = ("j1", "j2", "jinf")


def _check_batch(x: Tensor, y: Tensor) -> None:
    if x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise DataError(f"{tuple(x.shape)} inputs and {tuple(y.shape)} labels: give a batch (N, ...) and N labels")


def lipschitz_penalty(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """max_i ||grad_x CE(model(x_i), y_i)||_2 over the batch, differentiable in the model's parameters."""
    _check_batch(x, y)
    xg = x.detach().requires_grad_(True)
    return lipschitz_penalty_from_logits(model(xg), xg, y)


def lipschitz_penalty_from_logits(logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The same penalty from a forward pass already made on ``x`` (which must require grad).

    Lets a training step share one forward pass between its loss and the penalty, as Tulip does
    (and, with BatchNorm in train mode, update the running statistics once per step)::

        x.requires_grad_(True); logits = model(x)
        loss = F.cross_entropy(logits, y) + lam * lipschitz_penalty_from_logits(logits, x, y)
    """
    _check_batch(x, y)
    if not x.requires_grad:
        raise DataError("x must require grad and the logits must be computed from it")
    # summed over the batch: the gradient w.r.t. x_i is that of point i's own loss
    loss = F.cross_entropy(logits, y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    return g.flatten(1).norm(dim=1).max()


def input_gradient(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """grad_x CE(model(x_i), y_i) per point, detached (the parameters' .grad is untouched)."""
    _check_batch(x, y)
    xg = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    return g.detach()


def direction(g: Tensor, kind: Kind) -> Tensor:
    """The unit-L2 step direction of ``kind`` for gradients g (N, ...); zero where g is zero."""
    n = g.shape[0]
    flat = g.reshape(n, -1)
    d = flat.shape[1]
    if kind == "j1":
        out = torch.sign(flat) / math.sqrt(d)
    elif kind == "j2":
        norm = flat.norm(dim=1, keepdim=True)
        out = torch.where(norm > 0, flat / norm.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    elif kind == "jinf":
        k = flat.abs().argmax(1)
        out = torch.zeros_like(flat)
        rows = torch.arange(n, device=flat.device)
        out[rows, k] = torch.sign(flat[rows, k])
    else:
        raise SpecError(f"unknown perturbation kind {kind!r}: use one of {', '.join(KINDS)}")
    return out.reshape(g.shape)


def perturb(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    eps: float,
    kind: Kind,
    input_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """x + eps * direction(grad_x CE, kind), clipped to ``input_range``; detached (see the module docstring)."""
    if kind not in KINDS:
        raise SpecError(f"unknown perturbation kind {kind!r}: use one of {', '.join(KINDS)}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise SpecError(f"eps must be a finite number >= 0, got {eps!r}")
    lo, hi = (float(v) for v in input_range)
    if not lo < hi:
        raise SpecError(f"input range must have lo < hi, got {input_range!r}")
    module = model if isinstance(model, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        g = input_gradient(model, x, y)
    finally:
        if module is not None:
            module.train(was_training)
    return (x.detach() + eps * direction(g, kind)).clamp(lo, hi)
