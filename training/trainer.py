"""The training loop: plain, adversarial (at), certified (kw, ibp, crown-ibp), MMR and MMR+at, and
the other seeds' methods (norm-decay, lipschitz, j1 / j2 / jinf, fpd: training/methods.py).

Every epoch ends with an atomic checkpoint (model, optimizer, epoch, log rows, config), the CSV
log and, at the end, a PNG of the curves. Resuming restarts the interrupted epoch from the last
checkpoint. The run is a pure function of (config, epoch, batch): the shuffling order of epoch e
comes from a generator seeded with (seed, e), the attack of batch b from (seed, e, b), and the
learning rate from the epoch alone, so a resumed run repeats exactly what the uninterrupted one
does; with ``deterministic`` set the two end with identical weights.

``config.device`` (``train-mmr --device cuda``) holds the module and each batch; the data stay
on the CPU and move one batch at a time. The initial weights are drawn on the CPU, so a seed
gives the same starting network on every device, and the trained module comes back on the
CPU (checkpoints load on any machine).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verify.network import Network

from .adversarial import AdversarialConfig, mix_adversarial
from .architectures import arch_spec, build, to_network
from .config import LIVE_NETWORK_METHODS, TrainConfig, TrainConfigError
from .history import load_checkpoint, plot_curves, save_checkpoint, write_log
from .methods import EXTRA_METHODS, after_step, extra_loss
from .regularizers.kw import RobustSchedule, robust_loss
from .regularizers.mmr import MMRSchedule, mmr_terms

BatchHook = Callable[[int, int], None]  # (epoch, batch index) after each optimizer step


@dataclass(frozen=True)
class TrainData:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor | None
    y_test: Tensor | None
    name: str


@dataclass(frozen=True, eq=False)
class TrainResult:
    module: nn.Module
    network: Network | None  # detached float64 copy of the trained module; None for the FPD (not piecewise linear)
    history: tuple[dict[str, Any], ...]
    seconds: float  # wall time of the epochs run in this call
    run_dir: Path
    input_shape: tuple[int, ...] = ()


def load_data(config: TrainConfig) -> TrainData:
    from verify.data import load_dataset
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MNIST 10k-subset fallback is documented in the model cards
        train = load_dataset(config.dataset, split="train", data_dir=config.data_dir)
    test = load_dataset(config.dataset, split="test", data_dir=config.data_dir) if config.eval_test else None
    x, y = train.x, train.y
    if config.train_subset is not None:
        # a seeded random subset: the MNIST 10k subset is stored grouped by class
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed), device="cpu")[: config.train_subset]
        x, y = x[keep], y[keep]
    return TrainData(x, y, None if test is None else test.x, None if test is None else test.y, train.name)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of 1-based ``epoch``: stateless, so resuming needs no scheduler state."""
    if config.lr_schedule == "step":  # MMR: lr / 10 from 90% of the epochs on
        return config.lr / 10 if epoch >= 0.9 * config.epochs and config.epochs > 1 else config.lr
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1 + math.cos(math.pi * (epoch - 1) / config.epochs))
    return config.lr


def _optimizer(config: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(module.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _seed(config: TrainConfig, epoch: int, batch: int = -1) -> int:
    return (config.seed * 1_000_003 + epoch * 10_007 + batch + 1) % (2**31 - 1)


class _Step:
    """The loss of one batch for the configured method, with its logged terms."""

    def __init__(self, config: TrainConfig, module: nn.Sequential, input_shape: tuple[int, ...], n_classes: int):
        self.config = config
        self.module = module
        self.input_shape = input_shape
        # a parameter-sharing Network only where bounds are differentiated (no BatchNorm there)
        self.live = to_network(module, input_shape, share_parameters=True) if config.method in LIVE_NETWORK_METHODS else None
        self.adv = AdversarialConfig(attack=config.attack, eps=config.radius, p=config.p, steps=config.pgd_steps,
                                     ae_frac=config.adversarial_fraction) if config.adversarial_fraction > 0 else None
        g_rb, g_db = config.gammas
        self.mmr = MMRSchedule(config.lmbd, g_rb, g_db, config.epochs, self.live.num_relus(), n_classes,
                               lambda_warmup_epochs=config.warmup) if self.live is not None else None
        method = {"kw": "kw", "ibp": "ibp", "crown-ibp": "crown-ibp"}.get(config.method, "kw")
        self.robust = RobustSchedule(config.radius, config.warmup, config.eps_start, config.kappa_end, method)  # type: ignore[arg-type]
        self.n_batches = 1  # set by train(): batches per epoch, for the per-batch ramps

    def __call__(self, x: Tensor, y: Tensor, epoch: int, batch: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        c = self.config
        if self.adv is not None:
            x = mix_adversarial(self.module, self.input_shape, x, y, config=self.adv, seed=_seed(c, epoch, batch))
        if c.method in ("plain", "at"):
            logits = self.module(x)
            loss = F.cross_entropy(logits, y)
            return loss, logits, {"ce": loss.item()}
        if c.method in EXTRA_METHODS:
            return extra_loss(c, self.module, self.input_shape, x, y, seed=_seed(c, epoch, batch))
        if c.method.startswith("mmr"):
            g_rb, g_db = self.mmr.gammas(epoch)
            v = mmr_terms(self.live, x, y, p=c.p, k_relu=self.mmr.k_relu(epoch), k_decision=self.mmr.k_decision(epoch),
                          gamma_relu=g_rb, gamma_decision=g_db)
            ce = F.cross_entropy(v.logits, y)
            w = self.mmr.weight(epoch)
            rb, db = w * v.relu_term, w * v.decision_term
            return ce + rb + db, v.logits, {"ce": ce.item(), "reg_rb": rb.item(), "reg_db": db.item()}
        frac = batch / max(self.n_batches, 1)  # ramps move every batch (see RobustSchedule)
        eps = self.robust.eps_at(epoch, frac)
        r = robust_loss(self.live, x, y, eps=eps, p=c.p, method=self.robust.method,
                        kappa=self.robust.kappa_at(epoch, frac), beta=self.robust.beta_at(epoch, frac))
        return r.loss, r.logits, {"ce": r.clean_ce.item(), "robust_ce": r.robust_ce.item(), "eps": eps}


def test_error(module: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    dev = next(module.parameters()).device
    with torch.no_grad():
        wrong = sum(int((module(x[i : i + batch_size].to(dev)).argmax(1).cpu() != y[i : i + batch_size]).sum())
                    for i in range(0, len(y), batch_size))
    return wrong / max(len(y), 1)


def train(
    config: TrainConfig,
    *,
    run_dir: str | Path,
    resume: bool = False,
    data: TrainData | None = None,
    progress: bool = True,
    on_batch: BatchHook | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) a run whose checkpoint, CSV log and PNG live in ``run_dir``.

    ``stop_after`` ends the run after that epoch of the ``config.epochs`` schedule (the learning
    rate and the eps / lambda ramps stay those of the full run), so a later ``resume`` without it
    continues exactly where the uninterrupted run would be.
    """
    if stop_after is not None and stop_after < 1:
        raise TrainConfigError(f"--stop-after must be an epoch >= 1, got {stop_after}")
    run = Path(run_dir)
    ckpt_path, log_path, png_path = run / "checkpoint.pt", run / "log.csv", run / "curves.png"
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = data if data is not None else load_data(config)
    input_shape = tuple(int(s) for s in data.x_train.shape[1:])
    n_classes = int(max(int(data.y_train.max()), int(data.y_test.max()) if data.y_test is not None else 0)) + 1
    with torch.device("cpu"):  # the same initial weights on every device
        module = build(config.arch, input_shape=input_shape, n_classes=max(n_classes, 2), seed=config.seed,
                       **config.arch_options)
    module.to(config.device)
    opt = _optimizer(config, module)
    rows: list[dict[str, Any]] = []
    start = 1
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state["config"])
        diff = saved.same_run(config)
        if diff:
            raise TrainConfigError(f"--resume with different settings than the checkpoint: {', '.join(diff)}")
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rows = list(state["history"])
        start = int(state["epoch"]) + 1
    step = _Step(config, module, input_shape, n_classes)
    n = len(data.y_train)
    n_batches = math.ceil(n / config.batch_size)
    if config.max_batches is not None:
        n_batches = min(n_batches, config.max_batches)
    step.n_batches = n_batches
    t_all = time.perf_counter()
    last = config.epochs if stop_after is None else min(stop_after, config.epochs)
    for epoch in range(start, last + 1):
        rows.append(_run_epoch(config, step, module, opt, data, epoch, n_batches, progress, on_batch))
        save_checkpoint(ckpt_path, {"model": module.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                                    "history": rows, "config": config.to_dict()})
        write_log(log_path, rows)
    seconds = time.perf_counter() - t_all
    plot_curves(png_path, rows, f"{config.arch} {config.method} on {data.name}")
    module.eval()
    module.cpu()
    net = to_network(module, input_shape, name=f"{config.arch}_{config.method}") if arch_spec(config.arch).exports_network else None
    return TrainResult(module, net, tuple(rows), seconds, run, input_shape)


def _run_epoch(config: TrainConfig, step: _Step, module: nn.Module, opt: torch.optim.Optimizer, data: TrainData,
               epoch: int, n_batches: int, progress: bool, on_batch: BatchHook | None) -> dict[str, Any]:
    from tqdm import tqdm

    lr = lr_at(config, epoch)
    for g in opt.param_groups:
        g["lr"] = lr
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(_seed(config, epoch)), device="cpu")
    sums: dict[str, float] = {}
    correct = seen = 0
    t0 = time.perf_counter()
    bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
    module.train()
    for b in bar:
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]
        x, y = data.x_train[idx].to(config.device), data.y_train[idx].to(config.device)
        loss, logits, terms = step(x, y, epoch, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        after_step(config, module)
        k = len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += k
        terms = {"loss": loss.item(), **terms}
        for key, v in terms.items():
            sums[key] = sums.get(key, 0.0) + v * k
        bar.set_postfix({"acc": f"{correct / seen:.3f}", **{key: f"{v:.3g}" for key, v in terms.items()}})
        if on_batch is not None:
            on_batch(epoch, b)
    bar.close()
    row: dict[str, Any] = {"epoch": epoch, "lr": lr, "seconds": time.perf_counter() - t0, "batches": n_batches}
    row.update({key: v / max(seen, 1) for key, v in sums.items()})
    row["train_err"] = 1.0 - correct / max(seen, 1)
    if data.x_test is not None and data.y_test is not None:
        module.eval()
        row["test_err"] = test_error(module, data.x_test, data.y_test)
    if progress:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        print(shown, flush=True)
    return row
