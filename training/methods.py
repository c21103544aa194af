"""Batch losses of the other seeds' methods, for the trainer's ``_Step``.

=========== =====================================================================================
method      loss of a batch (x, y)
=========== =====================================================================================
norm-decay  CE(f(x)) + lambda * sum of the L1 or Linf (``--p``) operator norms of the Conv2d,
            Linear and BatchNorm layers (Liang et al. 2021; regularizers/norm_decay.py)
lipschitz   CE(f(x)) + lambda * max_i ||grad_x CE(f(x_i), y_i)||_2, by double backpropagation
            (Finlay, Oberman & Abbasi; regularizers/lipschitz.py)
j1 j2 jinf  CE(f(x')) with x' = x plus one input-gradient step of Euclidean length eps in the
            sign / gradient / largest-coordinate direction (their J1 / J2 / Jinf training)
fpd         the feature pyramid decoder's two-phase loss on noisy images (training/fpd.py)
=========== =====================================================================================

``after_step`` runs after every optimizer step of every method: with ``bn_max_norm`` set it
projects BatchNorm (Liang et al.'s BatchNorm projection). SSP networks are an architecture, not
a method: they train with any of these, or with ``at`` (Kim et al. use PGD adversarial training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TrainConfig

EXTRA_METHODS: tuple[str, ...] = ("norm-decay", "lipschitz", "j1", "j2", "jinf", "fpd")

StepValue = tuple[Tensor, Tensor, dict[str, float]]  # loss, logits of the batch, logged terms


def extra_loss(config: TrainConfig, module: nn.Module, input_shape: tuple[int, ...], x: Tensor, y: Tensor, *,
               seed: int, input_range: tuple[float, float] = (0.0, 1.0)) -> StepValue:
    """The loss of one batch for a method of :data:`EXTRA_METHODS`."""
    m = config.method
    if m == "norm-decay":
        from .regularizers.norm_decay import norm_decay_penalty

        logits = module(x)
        ce = F.cross_entropy(logits, y)
        pen = norm_decay_penalty(module, config.p, input_shape=input_shape)
        return ce + config.norm_decay_lambda * pen, logits, {"ce": ce.item(), "norm_sum": pen.item()}
    if m == "lipschitz":
        from .regularizers.lipschitz import lipschitz_penalty

        logits = module(x)
        ce = F.cross_entropy(logits, y)
        pen = lipschitz_penalty(module, x, y)
        return ce + config.lipschitz_lambda * pen, logits, {"ce": ce.item(), "max_grad_l2": pen.item()}
    if m in ("j1", "j2", "jinf"):
        from .regularizers.lipschitz import perturb

        xp = perturb(module, x, y, config.radius, m, input_range)  # type: ignore[arg-type]
        logits = module(xp)
        ce = F.cross_entropy(logits, y)
        return ce, logits, {"ce": ce.item()}
    if m == "fpd":
        from .fpd import fpd_loss

        r = fpd_loss(module, x, y, noise=config.radius, threshold=config.fpd_threshold,  # type: ignore[arg-type]
                     generator=torch.Generator().manual_seed(seed), input_range=input_range)
        with torch.no_grad():
            ce = F.cross_entropy(torch.tanh(r.logits), y).item()
        return r.loss, r.logits, {"ce": ce, "mse": r.terms["mse"], "phase2": r.terms["phase2"]}  # ce: on tanh(logits)
    raise ValueError(f"not an extra method: {m!r}")


def after_step(config: TrainConfig, module: nn.Module) -> None:
    """Liang et al.'s BatchNorm projection after the optimizer step (when ``bn_max_norm`` is set)."""
    if config.bn_max_norm is not None:
        from .regularizers.norm_decay import project_batchnorm

        project_batchnorm(module, config.bn_max_norm)
