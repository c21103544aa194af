"""``verify attack``: PGD (L1, L2, Linf) on test points; every success is a float64-confirmed counterexample."""

from __future__ import annotations

import time

import click
import torch

from ..attacks import PGD
from ..errors import SpecError
from ..exported import is_exported, load_exported
from ..network import Classifier
from ..spec import check_eps, parse_p
from .common import (chunked, data_options, load_examples, load_model, make_ball, model_option, output_option, p_label,
                     quiet_option, spec_options, write_rows)


@click.command("attack")
@model_option
@data_options
@spec_options
@click.option("--steps", type=int, default=40, show_default=True, help="PGD iterations per restart.")
@click.option("--restarts", type=int, default=1, show_default=True,
              help="Random restarts (later ones only for points not yet broken).")
@click.option("--step-size", type=float, default=None,
              help="Absolute step size. Default: 2.5 * eps / steps.")
@click.option("--loss", type=click.Choice(["margin", "ce"]), default="margin", show_default=True,
              help="Loss to ascend: the logit margin or cross-entropy.")
@click.option("--schedule", type=click.Choice(["constant", "decay"]), default="constant", show_default=True,
              help="Step size: constant, or halved after 50% and 75% of the steps.")
@click.option("--zero-start", is_flag=True, help="Start the first restart at the test point instead of a random point.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random starts.")
@click.option("--chunk", type=click.IntRange(min=1), default=500, show_default=True,
              help="Examples attacked at once (the step of the progress bar); results do not depend on it.")
@quiet_option
@output_option
def attack(model_path: str, model_format: str | None, arch: str | None, dataset: str | None, data_dir: str | None,
           n: int | None, indices: str | None, inputs_path: str | None, p: str, eps: float, steps: int, restarts: int,
           step_size: float | None, loss: str, schedule: str, zero_start: bool, seed: int, chunk: int, quiet: bool,
           output: str | None) -> None:
    """Attack test points with PGD and report clean accuracy, attack success rate and the robust accuracy upper bound.

    A point counts as adversarial when it is misclassified already, or when PGD finds a point
    inside the ball and the input box that a float64 forward pass misclassifies.

    Besides the model formats every command reads, `verify attack` takes attack-only .pt2
    programs (torch.export) of classifiers that are not piecewise linear, such as the
    feature pyramid decoder that `train-mmr --method fpd` writes (its pre-tanh logits).

    Each point's random starts are fixed by --seed and its index in the data set, so a point's
    result does not depend on -n, --indices or --chunk.

    \b
    Examples:
      verify attack --model models/mnist_cnn_small_plain.mat --p inf --eps 0.1 --dataset mnist -n 1000
      verify attack --model net.mat --p 2 --eps 1.5 --dataset mnist -n 500 --steps 100 --restarts 5 -o adv.csv
    """
    parse_p(p)  # reject a bad norm, radius or option (one line, exit 2) before any file is read
    check_eps(eps)
    if output is not None and not output.endswith((".json", ".csv")):
        raise SpecError(f"--output must end in .json or .csv, got {output!r}")
    pgd = PGD(steps=steps, restarts=restarts, step_size=step_size, random_start=not zero_start,
              loss=loss, schedule=schedule, seed=seed)  # type: ignore[arg-type]
    net: Classifier
    if is_exported(model_path):  # attack-only torch.export program (e.g. the FPD): no Network form
        if model_format is not None or arch is not None:
            raise SpecError("--format and --arch do not apply to a .pt2 program")
        net = load_exported(model_path)
    else:
        net = load_model(model_path, model_format, arch)
    ex = load_examples(net, dataset, data_dir, n, indices, inputs_path)
    ball = make_ball(net, ex, p, eps)
    t0 = time.perf_counter()
    pred = net.predict(ex.x)
    parts = [pgd(net, ball.select(list(range(sl.start, sl.stop))), ex.y[sl], keys=ex.indices[sl])
             for sl in chunked(len(ex.indices), chunk, "attack", not quiet)]
    success = torch.cat([r.success for r in parts]) if parts else torch.zeros(0, dtype=torch.bool)
    margin = torch.cat([r.margin for r in parts]) if parts else torch.zeros(0, dtype=torch.float64)
    seconds = time.perf_counter() - t0
    count = len(ex.indices)
    correct = pred == ex.y
    n_correct = int(correct.sum())
    broken = int((success & correct).sum())
    clean_acc = n_correct / count
    success_rate = broken / n_correct if n_correct else 0.0
    robust_ub = float((~success).sum()) / count
    click.echo(f"n={count}  clean accuracy={clean_acc:.4f}  attack success rate={success_rate:.4f} ({broken}/{n_correct} "
               f"correct points)  robust accuracy <= {robust_ub:.4f}  p={p_label(p)}  eps={eps:g}  steps={steps}  "
               f"restarts={restarts}  seconds={seconds:.2f}")
    if output:
        rows = [{"index": i, "label": int(ex.y[k]), "prediction": int(pred[k]), "adversarial": bool(success[k]),
                 "margin": float(margin[k])} for k, i in enumerate(ex.indices)]
        header = {"model": model_path, "source": ex.source, "p": p_label(p), "eps": eps, "steps": steps,
                  "restarts": restarts, "step_size": step_size, "loss": loss, "schedule": schedule, "seed": seed,
                  "n": count, "clean_accuracy": clean_acc, "attack_success_rate": success_rate,
                  "robust_accuracy_ub": robust_ub, "seconds": seconds}
        write_rows(output, header, rows)
