"""Adversarial training's points (training/adversarial.py): inside the ball and the box, stronger
than the centre for every point -- also for those the network already misclassifies, which
Madry et al.'s and MMR's training attack too."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.adversarial import AdversarialConfig, adversarial_points, mix_adversarial
from training.architectures import to_network


def _net_and_batch():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(36, 20), nn.ReLU(), nn.Linear(20, 3))
    x = torch.rand(40, 1, 6, 6)
    y = torch.randint(0, 3, (40,))
    return module, to_network(module, (1, 6, 6)), x, y


@pytest.mark.parametrize("attack, p, eps", [("pgd", "inf", 0.1), ("pgd", "2", 0.5), ("fgsm", "inf", 0.1)])
def test_every_point_is_attacked_misclassified_ones_too(attack: str, p: str, eps: float) -> None:
    module, net, x, y = _net_and_batch()
    cfg = AdversarialConfig(attack=attack, eps=eps, p=p, steps=10)  # type: ignore[arg-type]
    xa = adversarial_points(net, x, y, config=cfg, seed=1)
    assert xa.shape == x.shape and xa.dtype == x.dtype
    # inside the ball and the box (float64 check)
    d = (xa.double() - x.double()).flatten(1)
    norm = d.abs().max(1).values if p == "inf" else d.norm(dim=1)
    assert (norm <= eps * (1 + 1e-6)).all() and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        wrong = module(x).argmax(1) != y
        ce0 = F.cross_entropy(module(x), y, reduction="none")
        ce1 = F.cross_entropy(module(xa), y, reduction="none")
    assert wrong.any() and (~wrong).any()  # the untrained net gets some points right and some wrong
    moved = norm > 0.5 * eps
    assert moved[wrong].all(), "misclassified points must be perturbed too"
    assert (ce1[wrong] > ce0[wrong]).all()
    assert (ce1 >= ce0 - 1e-6).float().mean() > 0.9


def test_mix_replaces_the_first_fraction_only() -> None:
    module, _, x, y = _net_and_batch()
    cfg = AdversarialConfig(eps=0.1, p="inf", steps=5, ae_frac=0.25)
    xm = mix_adversarial(module, (1, 6, 6), x, y, config=cfg, seed=3)
    assert torch.equal(xm[10:], x[10:])
    assert not torch.equal(xm[:10], x[:10])
    assert math.isclose(float((xm[:10] - x[:10]).abs().max()), 0.1, rel_tol=1e-5)
