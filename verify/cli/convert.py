"""``verify convert IN OUT``: read a model in one format, write it in another."""

from __future__ import annotations

import click

from .common import load_model

_FORMATS = ["mat", "mat-mmr", "mat-mipverify", "h5", "pt", "onnx"]


@click.command("convert")
@click.argument("in_path", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("out_path", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--format", "out_format", default=None, type=click.Choice(_FORMATS),
              help="Format of OUT; default: from its extension (.mat: MMR layout when the net fits it, else MIPVerify).")
@click.option("--in-format", default=None, type=click.Choice(_FORMATS), help="Format of IN; default: from its name and contents.")
@click.option("--arch", default=None, help="Architecture name when IN does not store conv strides (e.g. cnn_lenet_small).")
def convert(in_path: str, out_path: str, out_format: str | None, in_format: str | None, arch: str | None) -> None:
    """Convert a model between .mat (MMR / MIPVerify), .h5, .pt and .onnx.

    The output format follows the file name unless --format says otherwise; every format
    round-trips to the same network (same logits in float64).

    \b
    Examples:
      verify convert models/mnist_cnn_small_kw.mat out/kw.onnx
      verify convert models/mnist_cnn_small_kw.mat out/kw_mipverify.mat --format mat-mipverify
      verify convert checkpoint.pth out/net.h5 --arch cnn_lenet_small
    """
    from ..formats import save_format, save_model

    net = load_model(in_path, in_format, arch)
    fmt = save_format(net, out_path, out_format)
    save_model(net, out_path, format=fmt)
    click.echo(f"wrote {out_path} ({fmt}): {len(net.layers)} layers, {net.num_params()} parameters, "
               f"{net.num_relus()} ReLUs, input {net.input_shape} in [{net.input_range[0]:g}, {net.input_range[1]:g}]")
