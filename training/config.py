"""The training configuration: one frozen dataclass, validated once, saved in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from verify.errors import DataError, SpecError, VerifyError
from verify.spec import p_name, parse_p

Method = Literal["plain", "at", "kw", "ibp", "crown-ibp", "mmr", "mmr+at", "norm-decay", "lipschitz", "j1", "j2",
                 "jinf", "fpd"]
METHODS: tuple[str, ...] = ("plain", "at", "kw", "ibp", "crown-ibp", "mmr", "mmr+at", "norm-decay", "lipschitz", "j1",
                            "j2", "jinf", "fpd")
# methods whose loss differentiates bounds through a parameter-sharing Network (no BatchNorm)
LIVE_NETWORK_METHODS: tuple[str, ...] = ("kw", "ibp", "crown-ibp", "mmr", "mmr+at")
DATASETS: tuple[str, ...] = ("mnist", "fmnist", "cifar10")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
LR_SCHEDULES: tuple[str, ...] = ("step", "cosine", "constant")

# The MMR repository's default radii (train.py eps_dict), used when --eps is not given.
DEFAULT_EPS: dict[tuple[str, str], float] = {
    ("mnist", "inf"): 0.1, ("fmnist", "inf"): 0.1, ("cifar10", "inf"): 2 / 255,
    ("mnist", "2"): 0.3, ("fmnist", "2"): 0.3, ("cifar10", "2"): 0.1,
}


class TrainConfigError(VerifyError):
    """A training option that makes no sense (one line, exit code 2)."""


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "mnist"
    arch: str = "cnn_lenet_small"
    method: str = "plain"
    p: str = "inf"
    eps: float | None = None  # None: the MMR repository's default for (dataset, p)
    lmbd: float = 0.5
    gamma_rb: float = 0.2
    gamma_db: float = 0.2
    ae_frac: float = 0.5  # used by at and mmr+at
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "step"  # step: lr / 10 from 90% of the epochs on (MMR's train.py)
    seed: int = 0
    deterministic: bool = True
    warmup_epochs: int = -1  # eps ramp for kw/ibp/crown-ibp, lambda ramp for mmr; -1: method default
    eps_start: float = 0.0
    kappa_end: float = 0.0
    attack: str = "pgd"
    pgd_steps: int = 40
    max_batches: int | None = None  # per epoch (benchmarks, tests)
    train_subset: int | None = None  # use only N training points (a seeded random subset)
    eval_test: bool = True
    data_dir: str | None = None
    # SSP architectures (ssp_mnist, ssp_cifar) and the FPD; None: the architecture's default
    block: str | None = None  # res, ssp2, ssp3, ark, midrk2
    blocks: int | None = None  # SSP blocks per group
    width: int | None = None  # channels of the first group (SSP) / first stage (FPD)
    norm_decay_lambda: float = 1e-3  # norm-decay: weight of the summed L1 / Linf operator norms
    bn_max_norm: float | None = None  # any method: project BatchNorm so |gamma / sqrt(var + eps)| <= this
    lipschitz_lambda: float = 0.1  # lipschitz: weight of max_batch ||grad_x CE||_2
    fpd_threshold: float = 0.02  # fpd: phase 2 once a batch's restoration MSE is <= this
    device: str = "cpu"  # torch device of the module and the batches: cpu, cuda, cuda:N, mps

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrainConfigError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        from .architectures import arch_spec

        spec = arch_spec(self.arch)
        self._check_arch(spec)
        name = self.dataset.lower().replace("-", "").replace("_", "")
        if name in ("fashionmnist",):
            name = "fmnist"
        if name not in DATASETS:
            raise DataError(f"unknown dataset {self.dataset!r}: use one of {', '.join(DATASETS)}")
        object.__setattr__(self, "dataset", name)
        pv = parse_p(self.p)
        object.__setattr__(self, "p", p_name(pv))
        for key in ("lmbd", "gamma_rb", "gamma_db", "lr", "weight_decay", "eps_start", "kappa_end", "norm_decay_lambda",
                    "lipschitz_lambda"):
            v = getattr(self, key)
            if not math.isfinite(v) or v < 0:
                raise TrainConfigError(f"{key} must be a finite number >= 0, got {v:g}")
        if self.eps is not None and (not math.isfinite(self.eps) or self.eps < 0):
            raise SpecError(f"eps must be a finite number >= 0, got {self.eps:g}")
        if self.method.startswith("mmr") and (self.gamma_rb <= 0 or self.gamma_db <= 0):
            raise TrainConfigError("MMR needs gamma_rb > 0 and gamma_db > 0")
        if not 0.0 <= self.ae_frac <= 1.0:
            raise TrainConfigError(f"ae_frac must lie in [0, 1], got {self.ae_frac:g}")
        if self.epochs < 1 or self.batch_size < 1 or self.pgd_steps < 1:
            raise TrainConfigError("epochs, batch size and PGD steps must be >= 1")
        if self.lr <= 0:
            raise TrainConfigError(f"the learning rate must be > 0, got {self.lr:g}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainConfigError(f"unknown optimizer {self.optimizer!r}: use adam or sgd")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainConfigError(f"unknown lr schedule {self.lr_schedule!r}: use step, cosine or constant")
        if self.attack not in ("pgd", "fgsm"):
            raise TrainConfigError(f"unknown attack {self.attack!r}: use pgd or fgsm")
        if self.needs_eps and self.eps is None and (self.dataset, self.p) not in DEFAULT_EPS:
            raise SpecError(f"give --eps: there is no default radius for {self.dataset} with p={self.p}")
        for key in ("max_batches", "train_subset"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise TrainConfigError(f"{key} must be >= 1, got {v}")
        if self.method == "norm-decay" and self.p == "2":
            raise TrainConfigError("norm decay uses the L1 or Linf operator norm: give --p 1 or --p inf")
        object.__setattr__(self, "device", check_device(self.device))
        for key in ("bn_max_norm", "fpd_threshold"):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise TrainConfigError(f"{key} must be a finite number > 0, got {v:g}")

    def _check_arch(self, spec: Any) -> None:
        """Architecture options and method/architecture pairs that cannot work."""
        from .ssp import BLOCKS

        for key in ("block", "blocks", "width"):
            if getattr(self, key) is not None and key not in spec.options:
                raise TrainConfigError(f"--{key} applies to {'/'.join(_takes(key))} only, not to {self.arch}")
        if self.block is not None and self.block not in BLOCKS:
            raise TrainConfigError(f"unknown SSP block {self.block!r}: use one of {', '.join(BLOCKS)}")
        for key in ("blocks", "width"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise TrainConfigError(f"{key} must be >= 1, got {v}")
        if self.method in LIVE_NETWORK_METHODS and spec.batchnorm:
            raise TrainConfigError(f"method {self.method} differentiates bounds through the network, which needs an "
                                   f"architecture without BatchNorm; {self.arch} has BatchNorm")
        if (self.method == "fpd") != (not spec.exports_network):
            raise TrainConfigError("method fpd trains the feature pyramid decoder: use it with --nn-type fpd_small, "
                                   "and fpd_small with --method fpd")

    # ---- derived values
    @property
    def needs_eps(self) -> bool:
        return self.method in ("at", "kw", "ibp", "crown-ibp", "mmr+at", "j1", "j2", "jinf", "fpd")

    @property
    def arch_options(self) -> dict[str, Any]:
        """Keyword options for ``architectures.build`` (None: the architecture's default)."""
        return {"block": self.block, "blocks": self.blocks, "width": self.width}

    @property
    def radius(self) -> float:
        """The training radius: --eps, or the MMR repository's default."""
        if self.eps is not None:
            return float(self.eps)
        return DEFAULT_EPS.get((self.dataset, self.p), 0.0)

    @property
    def adversarial_fraction(self) -> float:
        return self.ae_frac if self.method in ("at", "mmr+at") else 0.0

    @property
    def gammas(self) -> tuple[float, float]:
        """MMR's gammas; like the MMR repository, Linf gammas >= 1 are read in pixel units (/255)."""
        if self.p == "inf" and self.gamma_db >= 1.0:
            return self.gamma_rb / 255, self.gamma_db / 255
        return self.gamma_rb, self.gamma_db

    @property
    def warmup(self) -> int:
        if self.warmup_epochs >= 0:
            return self.warmup_epochs
        return 10 if self.method.startswith("mmr") else max(1, self.epochs // 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def same_run(self, other: "TrainConfig") -> list[str]:
        """Fields that differ in a way that makes resuming ``other`` from this run wrong."""
        free = {"data_dir", "eval_test", "device"}  # a run may move between machines
        return [f.name for f in fields(self) if f.name not in free and getattr(self, f.name) != getattr(other, f.name)]


def check_device(device: str) -> str:
    """The canonical name of a usable torch device, or a one-line error saying why it is not."""
    import torch

    try:
        dev = torch.device(str(device).strip().lower())
    except (RuntimeError, ValueError):
        raise TrainConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainConfigError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise TrainConfigError(f"device {device!r}: MPS is not available on this machine (use --device cpu)")
    elif dev.type != "cpu":
        raise TrainConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps")
    return str(dev)


def _takes(option: str) -> list[str]:
    from .architectures import ARCHITECTURES

    return [name for name, spec in ARCHITECTURES.items() if option in spec.options]
