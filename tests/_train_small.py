"""Tiny MNIST training helpers for the certify tests (to be replaced by training/).

Two small CNNs trained on the shared 10k MNIST training subset in well under a minute
on 2 cores: one with an interval-bound robust loss (certified training, eps ramped to
0.1), one with PGD adversarial training. Cached per test session by the fixtures.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

from verify.network import Network


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist(shared: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "train":
        d, pre = shared / "mnist-train-10k", "train"
    else:
        d, pre = shared / "mnist", "t10k"
    x = torch.tensor(read_idx(d / f"{pre}-images-idx3-ubyte.gz"), dtype=torch.float32)[:, None] / 255.0
    y = torch.tensor(read_idx(d / f"{pre}-labels-idx1-ubyte.gz"), dtype=torch.long)
    return x, y


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def _interval_logits(model: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            mid = m(mid)
            w = m.weight.abs()
            rad = nn.functional.conv2d(rad, w, None, m.stride, m.padding) if isinstance(m, nn.Conv2d) else rad @ w.T
            lo, hi = mid - rad, mid + rad
        else:
            lo, hi = m(lo), m(hi)
    return lo, hi


def _robust_ce(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    lo, hi = _interval_logits(model, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
    # worst case logits: the true class at its lower bound, the others at their upper bounds
    worst = torch.where(nn.functional.one_hot(y, 10).bool(), lo, hi)
    return nn.functional.cross_entropy(worst, y)


def _pgd(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 7) -> torch.Tensor:
    d = (torch.rand_like(x) * 2 - 1) * eps
    for _ in range(steps):
        d.requires_grad_(True)
        loss = nn.functional.cross_entropy(model((x + d).clamp(0, 1)), y)
        (g,) = torch.autograd.grad(loss, d)
        d = (d.detach() + 2.5 * eps / steps * g.sign()).clamp(-eps, eps)
    return (x + d).clamp(0, 1).detach()


def train(shared: Path, kind: str, *, eps: float = 0.1, epochs: int = 3, seed: int = 0) -> Network:
    """kind: 'robust' (interval-bound loss, eps ramped over 80% of the steps) or 'pgd'."""
    torch.manual_seed(seed)
    x, y = mnist(shared, "train")
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n, bs = len(x), 50
    steps = epochs * (n // bs)
    t = 0
    for _ in range(epochs):
        perm = torch.randperm(n)
        for s in range(0, n, bs):
            b = perm[s : s + bs]
            xb, yb = x[b], y[b]
            ramp = min(1.0, t / (0.8 * steps))
            if kind == "robust":
                kappa = 1.0 - 0.5 * ramp  # weight of the clean loss, as in IBP training
                loss = kappa * nn.functional.cross_entropy(model(xb), yb) + (1 - kappa) * _robust_ce(model, xb, yb, eps * ramp)
            else:
                loss = nn.functional.cross_entropy(model(_pgd(model, xb, yb, eps * ramp)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t += 1
    model.eval()
    return Network.from_torch(model, (1, 28, 28), name=f"small_cnn_{kind}")
