"""Options and helpers shared by the ``verify`` commands.

Every command that runs on data uses :func:`data_options` and :func:`load_examples`;
every command that takes a perturbation uses :func:`spec_options` and :func:`make_ball`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterator, TypeVar

import click
from torch import Tensor

from ..atomic import write_atomic
from ..data import Examples
from ..errors import DataError, SpecError
from ..network import Classifier, Network
from ..spec import LpBall, check_eps, p_name, parse_p

F = TypeVar("F", bound=Callable[..., Any])  # a click command function, returned with the option added


def model_option(f: F) -> F:
    f = click.option("--arch", default=None, help="Architecture name when a state dict is ambiguous (e.g. cnn_lenet_small).")(f)
    f = click.option("--format", "model_format", default=None,
                     type=click.Choice(["mat", "mat-mmr", "mat-mipverify", "h5", "pt", "onnx"]),
                     help="Model format; default: from the file name and its contents.")(f)
    f = click.option("--model", "-m", "model_path", required=True, type=click.Path(dir_okay=False),
                     help="Model file: .mat (MMR or MIPVerify layout), .h5, .pt/.pth or .onnx.")(f)
    return f


def data_options(f: F) -> F:
    f = click.option("--inputs", "inputs_path", default=None, type=click.Path(dir_okay=False),
                     help="An .npz with arrays x (in the model's input range) and y, instead of --dataset.")(f)
    f = click.option("--indices", default=None, help="Comma-separated test-set indices, e.g. 0,5,9 (overrides -n).")(f)
    f = click.option("-n", "n", default=None, type=click.IntRange(min=1),
                     help="Use the first N test points (the MMR protocol uses 1000). Default: all (10,000 for MNIST).")(f)
    f = click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                     help="Folder holding the dataset files (else $RELU_VERIFY_DATA, ./datasets, /usr/share/datasets, cache).")(f)
    f = click.option("--dataset", default=None, help="mnist, fmnist (fashion-mnist), cifar10, or a MMR-style .mat dataset file.")(f)
    return f


def spec_options(f: F) -> F:
    f = click.option("--eps", required=True, type=float, help="Radius of the perturbation ball (in input units, e.g. 0.1 on [0,1] pixels).")(f)
    f = click.option("--p", "p", required=True, help="Norm of the ball: 1, 2 or inf.")(f)
    return f


def output_option(f: F) -> F:
    return click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
                        help="Write per-example results: .json or .csv.")(f)


def parse_indices(text: str | None) -> list[int] | None:
    """--indices 0,5,9 as a list (None when not given)."""
    if text is None:
        return None
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise DataError(f"--indices must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 0:
        raise DataError(f"--indices must be non-negative integers, got {text!r}")
    return out


def load_model(path: str, model_format: str | None = None, arch: str | None = None) -> Network:
    from ..formats import load_model as _load

    return _load(path, format=model_format, arch=arch)


def load_examples(
    net: Classifier,
    dataset: str | None,
    data_dir: str | None,
    n: int | None,
    indices: str | None,
    inputs_path: str | None,
) -> Examples:
    """The test points a command runs on (:func:`verify.data.load_examples` with the CLI's options)."""
    from ..data import load_examples as _load

    ex = _load(net, dataset=dataset, data_dir=data_dir, n=n, indices=parse_indices(indices), inputs_path=inputs_path)
    if n is None and indices is None and len(ex.indices) > 1000:
        click.echo(f"note: no -n given: running on all {len(ex.indices)} points of {ex.source} "
                   "(-n 1000 is the MMR protocol)", err=True)
    return ex


def chunked(n: int, size: int, desc: str, enabled: bool = True) -> Iterator[slice]:
    """Slices of range(n) of at most ``size``, with a progress bar on stderr (examples done, rate, ETA).

    The bar appears once the first chunk is done, so bad input found by the first chunk is a
    single error line, not a bar followed by the error."""
    from tqdm import tqdm

    bar = None
    try:
        for start in range(0, n, size):
            stop = min(n, start + size)
            yield slice(start, stop)
            if bar is None:
                bar = tqdm(total=n, desc=desc, unit="ex", disable=not enabled, leave=False, dynamic_ncols=True)
            bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()


def quiet_option(f: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(f)


def make_ball(net: Classifier, ex: Examples, p: str, eps: float) -> LpBall:
    parse_p(p)
    check_eps(eps)
    return LpBall.make(ex.x, eps, p, net.input_range)


def p_label(p: str) -> str:
    """The norm as the results name it ('inf', '1', '2'), from what the user typed."""
    return p_name(parse_p(p))


def write_rows(path: str, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Per-example rows as JSON ({**header, "examples": rows}) or CSV (rows only), atomically."""
    if path.endswith(".csv"):
        import csv
        import io

        buf = io.StringIO()
        keys = list(rows[0].keys()) if rows else ["index"]
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
        write_atomic(path, buf.getvalue())
    elif path.endswith(".json"):
        write_atomic(path, json.dumps({**header, "examples": rows}, indent=1, default=_jsonable) + "\n")
    else:
        raise SpecError(f"--output must end in .json or .csv, got {path!r}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
