"""``verify info MODEL``: layers, shapes, sizes and, with a dataset, clean accuracy."""

from __future__ import annotations

import click

from .common import load_examples, load_model


@click.command("info")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--format", "model_format", default=None,
              type=click.Choice(["mat", "mat-mmr", "mat-mipverify", "h5", "pt", "onnx"]),
              help="Model format; default: from the file name and its contents.")
@click.option("--arch", default=None, help="Architecture name when conv strides are not stored (e.g. cnn_lenet_small, kw_small).")
@click.option("--dataset", default=None, help="mnist, fmnist, cifar10 or a .mat/.npz file: also report clean accuracy.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Folder holding the dataset files.")
@click.option("-n", "n", default=None, type=click.IntRange(min=1), help="Use the first N test points (default: all).")
def info(model_path: str, model_format: str | None, arch: str | None, dataset: str | None,
         data_dir: str | None, n: int | None) -> None:
    """Show a model's layers, shapes, parameter and ReLU counts, input shape and range.

    \b
    Examples:
      verify info models/mnist_cnn_small_kw.mat
      verify info models/mnist_cnn_small_kw.mat --dataset mnist --data-dir ../shared/datasets -n 1000
      verify info net.onnx --format onnx
    """
    net = load_model(model_path, model_format, arch)
    click.echo(net.summary())
    if dataset is None:
        if data_dir is not None or n is not None:
            click.echo("(no --dataset given: -n and --data-dir are unused)", err=True)
        return
    ex = load_examples(net, dataset, data_dir, n, None, None)
    correct = int((net.predict(ex.x) == ex.y).sum())
    total = len(ex.y)
    click.echo(f"clean accuracy on the first {total} points of {ex.source}: {correct}/{total} = "
               f"{100.0 * correct / total:.2f}% (test error {100.0 * (total - correct) / total:.2f}%)")
