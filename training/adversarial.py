"""Adversarial-training perturbations: thin wrappers over :mod:`verify.attacks`.

Madry et al.'s adversarial training (and MMR+at, as in the MMR repository's ``train.py``)
replaces the first ``ae_frac`` of every batch by PGD points: random start, ``steps``
iterations of step ``2 * eps / steps`` (40 on MNIST / Fashion-MNIST), cross-entropy loss.
The attack runs on a detached float64 copy of the network evaluated in the batch's dtype,
so it never touches the parameters' gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from verify.errors import SpecError
from verify.network import Network
from verify.spec import LpBall

AttackName = Literal["pgd", "fgsm"]


@dataclass(frozen=True)
class AdversarialConfig:
    attack: AttackName = "pgd"
    eps: float = 0.1
    p: float | str = "inf"
    steps: int = 40
    restarts: int = 1
    ae_frac: float = 0.5  # fraction of each batch replaced by adversarial points

    def __post_init__(self) -> None:
        if self.attack not in ("pgd", "fgsm"):
            raise SpecError(f"unknown training attack {self.attack!r}: use pgd or fgsm")
        if self.eps < 0:
            raise SpecError(f"eps must be >= 0, got {self.eps:g}")
        if not 0.0 <= self.ae_frac <= 1.0:
            raise SpecError(f"ae_frac must lie in [0, 1], got {self.ae_frac:g}")
        if self.steps < 1 or self.restarts < 1:
            raise SpecError("PGD needs steps >= 1 and restarts >= 1")


def adversarial_points(net: Network, x: Tensor, labels: Tensor, *, config: AdversarialConfig, seed: int) -> Tensor:
    """Adversarial versions of x (same shape and dtype) inside the eps-ball and the input box.

    Every point is attacked, also those the network already misclassifies (as in Madry et al.'s
    and MMR's training: their loss can still grow); :class:`verify.attacks.Attack` itself skips
    those, since for verification a misclassified centre is already its own counterexample.
    """
    from verify import attacks

    pset = LpBall.make(x.detach(), config.eps, config.p, net.input_range)
    if config.attack == "fgsm":
        attack: attacks.Attack = attacks.FGSM()
    else:
        attack = attacks.PGD(steps=config.steps, restarts=config.restarts, step_size=2.0 * config.eps / config.steps,
                             random_start=True, loss="ce", seed=seed)
    cand, _ = attack.run(net, pset.to(torch.float32), labels.to(torch.long).reshape(-1))
    return attacks.inside_set(pset, cand.detach()).to(x.dtype)


def mix_adversarial(module: nn.Module, input_shape: tuple[int, ...], x: Tensor, labels: Tensor, *,
                    config: AdversarialConfig, seed: int, input_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """The batch with its first ``ae_frac`` points replaced by adversarial ones (MMR's adv_train)."""
    n_adv = int(config.ae_frac * x.shape[0])
    if n_adv == 0 or config.eps == 0:
        return x
    from .architectures import to_network  # SSP networks convert themselves (BatchNorm folded, running stats)

    net = to_network(module, input_shape, input_range=input_range)
    with torch.enable_grad():
        x_adv = adversarial_points(net, x[:n_adv], labels[:n_adv], config=config, seed=seed)
    return torch.cat([x_adv, x[n_adv:]], dim=0)
