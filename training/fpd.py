"""Feature pyramid decoder (Li, Ding, Luo & Liu, CVPR 2020, "Enhancing Intrinsic Adversarial
Robustness via Feature Pyramid Decoder"), at the scale of a small Fashion-MNIST CNN.

The FPD-enhanced classifier, as in the authors' ``resnet.py``:

* a parameter-free **denoising block** after the first two stages of the backbone:
  D(X) = X + G X / (H W) with G = X X^T the channel Gram matrix of X (C x C, summed over the
  H W positions), a non-local mean with a dot-product kernel and no learned embedding;
* a **restoration decoder** (feature pyramid: 1x1 lateral convolutions, nearest upsampling and
  addition from coarse to fine, a 3x3 smoothing convolution and a 1x1 convolution back to the
  image channels) that rebuilds the clean image from the backbone's features of the noisy one;
* the **classifier** runs the same backbone (shared weights, denoising blocks included) on
  r + G(x) x / (H W), the restored image plus the image-level denoising term of the input,
  then global average pooling and a linear layer; the paper squashes the logits with tanh
  (its Lipschitz-constrained classification layer) before the cross-entropy.

Two-phase training (the authors' ``train.py``): inputs are noisy images x + U(-eps, eps)
(clipped to the input box); while a batch's restoration error MSE(r, x) is above the threshold
T only the restoration loss is minimised (phase 1, the classification layer gets no gradient);
below it the loss is MSE + CE on the noisy images plus MSE + CE of a second pass on the
restored images (phase 2, self-supervision). The authors take two optimizer steps in phase 2;
here both terms go into one step.

Export: D is cubic in its input, so the FPD is not a piecewise-linear function and has no
:class:`verify.network.Network` form; bounds, ``verify certify`` and the MIP do not apply. What
verify evaluates is the whole forward pass x -> pre-tanh logits, saved as a ``torch.export``
program (``.pt2``) that ``verify attack`` loads as a :class:`verify.exported.ExportedClassifier`
and attacks with the same PGD code as every Network. Attacking the pre-tanh logits matters:
tanh saturates, so gradients of squashed logits vanish and would make PGD look weaker than it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verify.errors import ModelError


def gram_term(x: Tensor) -> Tensor:
    """G x / (H W) with G = x x^T over the positions: the channel-mixing part of the denoising block."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    gram = flat @ flat.transpose(1, 2)  # (n, c, c), symmetric
    return (gram @ flat).reshape(n, c, h, w) / (h * w)


def denoise(x: Tensor) -> Tensor:
    """The parameter-free denoising block D(x) = x + G x / (H W)."""
    return x + gram_term(x)


class Denoise(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return denoise(x)


def _stage(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.BatchNorm2d(c_out), nn.ReLU())


class FPDNet(nn.Module):
    """Backbone (3 stages, denoising after the first two), pyramid decoder, pooled linear head.

    ``forward`` returns the pre-tanh logits of the FPD classifier (what attacks should target);
    :meth:`restore_and_classify` also returns the restored image.
    """

    def __init__(self, in_shape: Sequence[int], n_classes: int, width: int) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ModelError(f"the FPD needs a (C, H, W) input shape, got {tuple(in_shape)}")
        if width < 1:
            raise ModelError(f"the FPD width must be >= 1, got {width}")
        c = int(in_shape[0])
        w1, w2, w3, pyr = width, 2 * width, 4 * width, 2 * width
        self.width = width
        self.stages = nn.ModuleList([_stage(c, w1, 3, 1, 1), _stage(w1, w2, 4, 2, 1), _stage(w2, w3, 4, 2, 1)])
        self.denoise = Denoise()
        self.lateral = nn.ModuleList([nn.Conv2d(w1, pyr, 1), nn.Conv2d(w2, pyr, 1), nn.Conv2d(w3, pyr, 1)])
        self.smooth = nn.Conv2d(pyr, pyr, 3, 1, 1)
        self.to_image = nn.Conv2d(pyr, c, 1)
        self.fc = nn.Linear(w3, n_classes)

    def features(self, x: Tensor) -> list[Tensor]:
        """The backbone's three feature maps; denoising between stages (not after the last)."""
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out.append(x)
            if i < len(self.stages) - 1:
                x = self.denoise(x)
        return out

    def decode(self, feats: list[Tensor]) -> Tensor:
        p = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            p = F.interpolate(p, size=f.shape[-2:], mode="nearest") + lat(f)
        return self.to_image(torch.relu(self.smooth(p)))

    def restore_and_classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(restored image, pre-tanh logits)."""
        restored = self.decode(self.features(x))
        z = self.features(restored + gram_term(x))[-1]
        return restored, self.fc(z.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.restore_and_classify(x)[1]


def fpd_small(in_shape: Sequence[int] = (1, 28, 28), n_classes: int = 10, *, width: int = 16) -> FPDNet:
    """A small FPD for 28x28 images: backbone widths width, 2 width, 4 width at 28, 14 and 7 pixels."""
    return FPDNet(in_shape, n_classes, width)


# --------------------------------------------------------------------------- two-phase training


@dataclass(frozen=True, eq=False)
class FPDLoss:
    loss: Tensor
    logits: Tensor  # pre-tanh logits on the noisy batch
    phase: int  # 1: restoration only, 2: restoration + classification + second pass
    terms: dict[str, float]


def fpd_loss(module: FPDNet, x: Tensor, y: Tensor, *, noise: float, threshold: float, generator: torch.Generator,
             input_range: tuple[float, float] = (0.0, 1.0)) -> FPDLoss:
    """One batch of the two-phase FPD training on eps-neighbourhood noisy images."""
    lo, hi = input_range
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)  # same noise on any device
    noisy = (x + noise * (2 * u - 1)).clamp(lo, hi)
    restored, z = module.restore_and_classify(noisy)
    mse = F.mse_loss(restored, x)
    if mse.item() > threshold:
        return FPDLoss(mse, z, 1, {"mse": mse.item(), "phase2": 0.0})
    ce = F.cross_entropy(torch.tanh(z), y)
    restored2, z2 = module.restore_and_classify(restored)
    mse2 = F.mse_loss(restored2, x)
    ce2 = F.cross_entropy(torch.tanh(z2), y)
    terms = {"mse": mse.item(), "ce": ce.item(), "mse2": mse2.item(), "ce2": ce2.item(), "phase2": 1.0}
    return FPDLoss(mse + ce + mse2 + ce2, z, 2, terms)


def export_classifier(module: FPDNet, path: str | Path, *, input_shape: Sequence[int],
                      input_range: tuple[float, float] = (0.0, 1.0), name: str = "fpd", metadata: dict | None = None) -> None:
    """Write the eval-mode x -> pre-tanh logits program for ``verify attack`` (a ``.pt2`` file)."""
    from verify.exported import save_exported

    meta = {"arch": "fpd_small", "width": module.width, "output": "pre-tanh logits",
            "source": "Li et al. 2020, feature pyramid decoder (training/fpd.py)", **(metadata or {})}
    save_exported(module, path, input_shape=tuple(input_shape), input_range=input_range, name=name, metadata=meta)
