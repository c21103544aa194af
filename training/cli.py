"""``train-mmr``: train a ReLU network (plain, adversarial, KW / IBP / CROWN-IBP, MMR, MMR+at) and export it.

Flag names mirror the MMR repository's train.py (--nn-type, --lmbd, --gamma-rb, --gamma-db,
--ae-frac, --p), with dashes for the repository's underscores.
"""

from __future__ import annotations

from pathlib import Path

import click

from verify.cli import run_click


from .config import LR_SCHEDULES, METHODS, OPTIMIZERS, TrainConfig

FORMATS = ("mat", "mat-mmr", "mat-mipverify", "h5", "pt", "onnx")


def _opt(*names: str, **kw):  # type: ignore[no-untyped-def]
    return click.option(*names, **kw)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_opt("--dataset", default="mnist", show_default=True, help="mnist (the 10k training subset here), fmnist or cifar10.")
@_opt("--nn-type", "arch", default="cnn_lenet_small", show_default=True,
      help="fc1, fc10, cnn_lenet_small, cnn_lenet_large, kw_small, kw_large.")
@_opt("--method", default="plain", show_default=True, help=f"One of: {', '.join(METHODS)}.")
@_opt("--p", "p", default="inf", show_default=True, help="Norm of the threat model: 1, 2 or inf.")
@_opt("--eps", type=float, default=None, help="Training radius (at, kw, ibp, crown-ibp, mmr+at); default: MMR's (0.1 Linf, 0.3 L2 on MNIST).")
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
@_opt("--warmup-epochs", type=int, default=-1, help="eps ramp (kw/ibp/crown-ibp) or lambda ramp (mmr); default: epochs/2, MMR 10.")
@_opt("--pgd-steps", type=int, default=40, show_default=True, help="PGD iterations for at / mmr+at (step 2 eps / steps).")
@_opt("--attack", type=click.Choice(["pgd", "fgsm"]), default="pgd", show_default=True)
@_opt("--train-subset", type=int, default=None, help="Train on N training points only (a random subset, fixed by --seed).")
@_opt("--seed", type=int, default=0, show_default=True)
@click.option("--deterministic/--no-deterministic", default=True, show_default=True)
@_opt("--resume", is_flag=True, help="Continue from the run directory's last epoch checkpoint.")
@_opt("--data-dir", default=None, type=click.Path(file_okay=False), help="Folder with the dataset files.")
@_opt("--run-dir", default=None, type=click.Path(file_okay=False),
      help="Checkpoint, log.csv and curves.png; default: runs/<name of --out>.")
@_opt("--out", "-o", "out", required=True, type=click.Path(dir_okay=False), help="The trained model file.")
@_opt("--format", "fmt", type=click.Choice(FORMATS), default=None,
      help="Output format; default from the extension (.mat: MMR layout).")
@_opt("--quiet", is_flag=True, help="No progress bar.")
def train_mmr(arch: str, out: str, fmt: str | None, run_dir: str | None, resume: bool, quiet: bool, **options) -> None:  # type: ignore[no-untyped-def]
    """Train a ReLU network and export it for `verify`.

    \b
    Examples:
      train-mmr --dataset mnist --nn-type cnn_lenet_small --epochs 3 --out models/plain.mat
      train-mmr --dataset mnist --nn-type cnn_lenet_small --p inf --lmbd 0.5 \\
                --gamma-rb 0.2 --gamma-db 0.2 --ae-frac 0.5 --method mmr+at --epochs 100 --out mmr_at.mat
      train-mmr --method kw --eps 0.1 --warmup-epochs 2 --epochs 4 --batch-size 32 --out kw.mat
      train-mmr --method at --eps 0.3 --p 2 --dataset fmnist --nn-type fc1 --out at.h5
      train-mmr ... --resume          # after an interruption: same flags, continues the last epoch

    Methods: plain (cross-entropy), at (PGD adversarial training, Madry et al.), kw (Wong &
    Kolter's robust loss from verify.bounds' kw bounds, eps ramped up), ibp, crown-ibp,
    mmr (Croce et al.'s Maximum Margin Regulariser), mmr+at. Every epoch writes an atomic
    checkpoint and a CSV log to --run-dir; the curves go to curves.png at the end.
    """
    config = TrainConfig(arch=arch, **options)
    from verify.formats import save_model

    from .trainer import train

    run = Path(run_dir) if run_dir else Path("runs") / Path(out).stem
    result = train(config, run_dir=run, resume=resume, progress=not quiet)
    fmt_arg = "mat-mmr" if fmt == "mat" else fmt
    save_model(result.network, out, format=fmt_arg)
    last = result.history[-1] if result.history else {}
    err = f", test error {last['test_err']:.2%}" if "test_err" in last else ""
    click.echo(f"wrote {out} ({config.arch}, {config.method}, {len(result.history)} epochs{err}; log in {run})")


def main(argv: list[str] | None = None) -> None:
    run_click(train_mmr, argv, "train-mmr", "the last epoch checkpoint is kept (rerun with --resume)")
