"""``train-mmr``: train a ReLU network (plain, adversarial, KW / IBP / CROWN-IBP, MMR, MMR+at, norm decay,
Lipschitz penalty, J1 / J2 / Jinf, SSP architectures, the feature pyramid decoder) and export it.

Flag names mirror the MMR repository's train.py (--nn-type, --lmbd, --gamma-rb, --gamma-db,
--ae-frac, --p), with dashes for the repository's underscores.
"""

from __future__ import annotations

from pathlib import Path

import click

from verify.cli import run_click


from .config import LR_SCHEDULES, METHODS, OPTIMIZERS, TrainConfig, TrainConfigError

FORMATS = ("mat", "mat-mmr", "mat-mipverify", "h5", "pt", "onnx")


def _opt(*names: str, **kw):  # type: ignore[no-untyped-def]
    return click.option(*names, **kw)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_opt("--dataset", default="mnist", show_default=True, help="mnist (the 10k training subset here), fmnist or cifar10.")
@_opt("--nn-type", "arch", default="cnn_lenet_small", show_default=True,
      help="fc1, fc10, fc_256x2, fc_256x4, fc_256x6, fc_500, cnn_lenet_small, cnn_lenet_large, kw_small, kw_large; ssp_mnist, ssp_cifar (SSP "
           "networks: --block, --blocks, --width); fpd_small (with --method fpd).")
@_opt("--method", default="plain", show_default=True, help=f"One of: {', '.join(METHODS)}.")
@_opt("--p", "p", default="inf", show_default=True, help="Norm of the threat model: 1, 2 or inf.")
@_opt("--eps", type=float, default=None,
      help="Training radius (at, kw, ibp, crown-ibp, mmr+at); the Euclidean step length of j1/j2/jinf; the "
           "uniform noise radius of fpd. Default: MMR's (0.1 Linf, 0.3 L2 on MNIST).")
@_opt("--lmbd", type=float, default=0.5, show_default=True, help="MMR weight lambda.")
@_opt("--gamma-rb", type=float, default=0.2, show_default=True, help="MMR gamma for ReLU (region) boundaries; Linf values >= 1 are /255.")
@_opt("--gamma-db", type=float, default=0.2, show_default=True, help="MMR gamma for decision boundaries.")
@_opt("--ae-frac", type=float, default=0.5, show_default=True, help="Fraction of each batch replaced by PGD points (at, mmr+at).")
@_opt("--epochs", "--n-epochs", "epochs", type=int, default=10, show_default=True)
@_opt("--lr", type=float, default=1e-3, show_default=True)
@_opt("--batch-size", type=int, default=128, show_default=True)
@_opt("--optimizer", type=click.Choice(OPTIMIZERS), default="adam", show_default=True)
@_opt("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="step", show_default=True,
      help="step: lr/10 for the last 10% of epochs (MMR); cosine; constant.")
@_opt("--warmup-epochs", type=click.IntRange(min=-1), default=-1,
      help="Length in epochs of the linear ramp of eps (kw/ibp/crown-ibp: from 0 at the first batch "
           "to --eps at the end of epoch N, moving every batch) or of lambda (mmr). 0: no ramp; 1: ramp over "
           "the first epoch. Default: epochs/2 (at least 1), MMR 10.")
@_opt("--pgd-steps", type=int, default=40, show_default=True, help="PGD iterations for at / mmr+at (step 2 eps / steps).")
@_opt("--attack", type=click.Choice(["pgd", "fgsm"]), default="pgd", show_default=True)
@_opt("--train-subset", type=int, default=None, help="Train on N training points only (a random subset, fixed by --seed).")
@_opt("--block", type=click.Choice(["res", "ssp2", "ssp3", "ark", "midrk2"]), default=None,
      help="SSP block: res (Euler), ssp2 (Heun), ssp3 (Shu-Osher RK3), ark (learned c2), midrk2 (midpoint). Default res.")
@_opt("--blocks", type=int, default=None, help="SSP blocks per group (default: ssp_mnist 3, ssp_cifar 6).")
@_opt("--width", type=int, default=None, help="Channels: SSP first group (default 64 / 16), FPD first stage (16).")
@_opt("--norm-decay-lambda", type=float, default=1e-3, show_default=True,
      help="norm-decay: weight of the summed L1 (--p 1) or Linf (--p inf) operator norms.")
@_opt("--bn-max-norm", type=float, default=None,
      help="Any method: after each step, project BatchNorm so |gamma / sqrt(var + eps)| <= this.")
@_opt("--lipschitz-lambda", type=float, default=0.1, show_default=True,
      help="lipschitz: weight of max over the batch of ||grad_x CE||_2.")
@_opt("--fpd-threshold", type=float, default=0.02, show_default=True,
      help="fpd: a batch trains restoration only while its restoration MSE is above this (phase 1).")
@_opt("--seed", type=int, default=0, show_default=True)
@_opt("--device", default="cpu", show_default=True,
      help="Torch device for the module and the batches: cpu, cuda, cuda:N or mps. The initial weights and "
           "the shuffling are drawn on the CPU, so a seed gives the same run's start on every device; the "
           "checkpoints and the exported model load anywhere.")
@click.option("--deterministic/--no-deterministic", default=True, show_default=True)
@_opt("--threads", type=click.IntRange(min=1), default=1, show_default=True,
      help="torch threads on the CPU. One by default: torch's thread pool slows down badly on cores another "
           "process is using (one thread per core ran 5-6x slower than one thread on a busy 2-core machine, "
           "benchmarks/threads.py); raise it on an idle machine or a node whose cores are all yours.")
@_opt("--resume", is_flag=True, help="Continue from the run directory's last epoch checkpoint.")
@_opt("--stop-after", type=int, default=None, metavar="EPOCH",
      help="Stop after this epoch of the --epochs schedule and export (the learning rate and the ramps stay "
           "those of the full run); --resume without it later continues the same run.")
@_opt("--data-dir", default=None, type=click.Path(file_okay=False), help="Folder with the dataset files.")
@_opt("--run-dir", default=None, type=click.Path(file_okay=False),
      help="Checkpoint, log.csv and curves.png; default: runs/<name of --out>.")
@_opt("--out", "-o", "out", required=True, type=click.Path(dir_okay=False), help="The trained model file.")
@_opt("--format", "fmt", type=click.Choice(FORMATS), default=None,
      help="Output format; default from the extension (.mat: MMR layout). --method fpd writes a .pt2 program.")
@_opt("--quiet", is_flag=True, help="No progress bar.")
def train_mmr(arch: str, out: str, fmt: str | None, run_dir: str | None, resume: bool, quiet: bool,  # type: ignore[no-untyped-def]
              threads: int, stop_after: int | None, **options) -> None:
    """Train a ReLU network and export it for `verify`.

    \b
    Examples:
      train-mmr --dataset mnist --nn-type cnn_lenet_small --epochs 3 --out models/plain.mat
      train-mmr --dataset mnist --nn-type cnn_lenet_small --p inf --lmbd 0.5 \\
                --gamma-rb 0.2 --gamma-db 0.2 --ae-frac 0.5 --method mmr+at --epochs 100 --out mmr_at.mat
      train-mmr --method kw --eps 0.1 --warmup-epochs 2 --epochs 4 --batch-size 32 --out kw.mat
      train-mmr --method at --eps 0.3 --p 2 --dataset fmnist --nn-type fc1 --out at.h5
      train-mmr ... --resume          # after an interruption: same flags, continues the last epoch
      train-mmr ... --stop-after 6    # export epoch 6 of the schedule; --resume later goes on
      train-mmr ... --device cuda     # on a GPU (a run may resume on another device)
      train-mmr --dataset fmnist --nn-type ssp_mnist --block ssp2 --blocks 2 --width 8 \\
                --method at --eps 0.1 --ae-frac 1 --pgd-steps 10 --out ssp2.h5
      train-mmr --dataset fmnist --method norm-decay --norm-decay-lambda 1e-3 --p inf --out nd.h5
      train-mmr --dataset fmnist --method lipschitz --lipschitz-lambda 0.1 --out lip.h5
      train-mmr --dataset fmnist --method j2 --eps 1.0 --out j2.h5
      train-mmr --dataset fmnist --nn-type fpd_small --method fpd --eps 0.1 --out fpd.pt2

    Methods: plain (cross-entropy), at (PGD adversarial training, Madry et al.), kw (Wong &
    Kolter's robust loss from verify.bounds' kw bounds, eps ramped up), ibp, crown-ibp,
    mmr (Croce et al.'s Maximum Margin Regulariser), mmr+at; norm-decay (Liang et al.: CE +
    lambda * sum of L1/Linf operator norms; with --bn-max-norm, BatchNorm projection), lipschitz
    (Finlay et al.: CE + lambda * max ||grad_x CE||_2 by double backprop), j1/j2/jinf (train on
    one input-gradient step of Euclidean length --eps), fpd (Li et al.'s feature pyramid decoder,
    two-phase training on noisy images). SSP networks (Kim et al.) are architectures: train them
    with any method without bound terms, e.g. at. Every epoch writes an atomic checkpoint and a
    CSV log to --run-dir; the curves go to curves.png at the end.

    \b
    Outputs: SSP networks are written with BatchNorm folded and residual blocks (.h5, .pt, .onnx;
    the .mat layouts have no residuals), so verify bounds / certify / analyze read them. The FPD
    is not piecewise linear: it is written as a torch.export program (.pt2) of x -> pre-tanh
    logits that only `verify attack` evaluates.
    """
    config = TrainConfig(arch=arch, **options)
    from verify.formats import save_model

    import torch

    torch.set_num_threads(threads)

    from .trainer import train

    run = Path(run_dir) if run_dir else Path("runs") / Path(out).stem
    if config.method == "fpd" and (fmt is not None or not out.endswith(".pt2")):
        raise TrainConfigError(f"--method fpd writes an attack-only .pt2 program, not {fmt or out!r}: use --out NAME.pt2")
    if config.arch.startswith("ssp") and (fmt or Path(out).suffix.lower().lstrip(".")).startswith("mat"):
        raise TrainConfigError("SSP networks have residual blocks, which the .mat layouts cannot hold: "
                               "write .h5, .pt or .onnx")
    result = train(config, run_dir=run, resume=resume, progress=not quiet, stop_after=stop_after)
    if result.network is None:
        from .fpd import export_classifier

        export_classifier(result.module, out, input_shape=result.input_shape, name=f"{config.arch}_{config.method}",
                          metadata={"method": config.method, "dataset": config.dataset})
    else:
        fmt_arg = "mat-mmr" if fmt == "mat" else fmt
        save_model(result.network, out, format=fmt_arg)
    last = result.history[-1] if result.history else {}
    err = f", test error {last['test_err']:.2%}" if "test_err" in last else ""
    click.echo(f"wrote {out} ({config.arch}, {config.method}, {len(result.history)} epochs{err}; log in {run})")


def main(argv: list[str] | None = None) -> None:
    run_click(train_mmr, argv, "train-mmr", "the last epoch checkpoint is kept (rerun with --resume)")
