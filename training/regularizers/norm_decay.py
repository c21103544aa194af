"""Norm decay (Liang et al., "Large Norms of CNN Layers Do Not Hurt Adversarial Robustness", AAAI 2021).

The penalty is the sum over the Conv2d, Linear and BatchNorm layers of a module of their
exact L1 or Linf operator norms (:mod:`verify.analysis.norms`: max column / row absolute
sum; for a conv computed from the kernel with its stride and padding, no dense matrix),
differentiable in the weights, so ``loss + beta * norm_decay_penalty(model, p, input_shape=...)``
decays the norms. Its gradient is Liang et al.'s: the sign of the weights in the maximising
column / row (for BatchNorm, of the maximising channel's gamma / sqrt(var + eps)).
Liang et al. project BatchNorm instead of decaying it: :func:`project_batchnorm`, after the
optimiser step, rescales every gamma so that |gamma / sqrt(running_var + eps)| <= max_norm
(``include_batchnorm=False`` leaves BatchNorm out of the penalty).

Input shapes. A conv's operator norm depends on its input's height and width (border
pixels see fewer taps). Give ``input_shape`` (C, H, W) of the *model's* input: the shape
each layer sees is found once by a forward pass of a zero batch of size 1 in eval mode
(BatchNorm statistics untouched) and cached per (module, input_shape); a ZeroPad2d feeding
a conv is folded into its padding. Networks without convolutions need no ``input_shape``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from verify.analysis.norms import LayerNorms, entry_norm, module_entries, module_norms
from verify.errors import SpecError
from verify.spec import parse_p


def norm_decay_penalty(
    module: nn.Module,
    p: float | str,
    *,
    input_shape: Sequence[int] | None = None,
    include_batchnorm: bool = True,
) -> Tensor:
    """Sum of the exact p-norms (p = 1 or inf) of the module's Conv2d, Linear and BatchNorm layers.

    Differentiable in their weights (BatchNorm: in gamma, through gamma / sqrt(running_var + eps)).
    """
    pv = parse_p(p)
    if pv == 2.0:
        raise SpecError("norm decay uses the L1 or Linf operator norm: p must be 1 or inf")
    entries = module_entries(module, input_shape)
    terms = [entry_norm(e, pv) for e in entries
             if e.kind in ("conv2d", "linear") or (include_batchnorm and e.kind == "batchnorm")]
    if not terms:
        p0 = next(iter(module.parameters()), None)
        if p0 is None:
            return torch.zeros((), dtype=torch.float32, device="cpu")
        return p0.new_zeros(())
    return torch.stack([t.to(terms[0].dtype) for t in terms]).sum()


@torch.no_grad()
def project_batchnorm(module: nn.Module, max_norm: float) -> None:
    """In place: rescale each BatchNorm gamma so that |gamma / sqrt(running_var + eps)| <= max_norm.

    The bound holds in float64 arithmetic on the stored (possibly float32) values.

    Channels already within the bound are untouched; BatchNorm layers without an affine weight
    (nothing to rescale) or without running statistics are left as they are.
    """
    if not (isinstance(max_norm, (int, float)) and math.isfinite(max_norm) and max_norm > 0):
        raise SpecError(f"max_norm must be a positive finite number, got {max_norm!r}")
    for m in module.modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.weight is None or m.running_var is None:
            continue
        # decided in float64 on the stored values, so the bound holds exactly for them whatever their dtype
        denom = torch.sqrt(m.running_var.to(torch.float64) + m.eps)
        over = (m.weight.to(torch.float64) / denom).abs() > max_norm
        if not over.any():
            continue
        target = (torch.sign(m.weight.to(torch.float64)) * max_norm * denom).to(m.weight.dtype)
        w = torch.where(over, target, m.weight)
        for _ in range(8):  # rounding can leave |gamma| / denom an ulp above max_norm: step towards zero
            still = (w.to(torch.float64) / denom).abs() > max_norm
            if not still.any():
                break
            w = torch.where(still, torch.nextafter(w, torch.zeros_like(w)), w)
        m.weight.copy_(w)


def bn_norms(module: nn.Module) -> list[float]:
    """max |gamma / sqrt(running_var + eps)| of every BatchNorm layer, in float64 (for logs and tests)."""
    return [float((m.weight.detach().to(torch.float64) / torch.sqrt(m.running_var.to(torch.float64) + m.eps)).abs().max())
            if m.weight is not None else float((1 / torch.sqrt(m.running_var.to(torch.float64) + m.eps)).max())
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None]


def norm_record(module: nn.Module, input_shape: Sequence[int], *, power_iters: int = 30) -> list[LayerNorms]:
    """Per-layer operator norms (L1, Linf exact; L2 by power iteration) of a torch module, in forward order.

    One list per call (e.g. per epoch); plot a sequence of them with
    :func:`verify.analysis.norms.plot_norm_history`, one snapshot with ``plot_norms``.
    """
    return module_norms(module, input_shape, power_iters=power_iters)
