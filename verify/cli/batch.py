"""``verify summary`` and ``verify merge``: read results stores written by ``verify certify --output X.sqlite``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import write_rows

if TYPE_CHECKING:
    from ..results import Summary


def load_results(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(configuration, rows) of a results store (.sqlite / .db) or of the JSON that ``--output X.json`` writes."""
    from ..results import order_row

    if path.endswith(".json"):
        import json

        from ..batch import StoreError

        try:
            with open(path) as fh:
                data = json.load(fh)
            rows = data["examples"]
            config = dict(data.get("config") or {})
        except FileNotFoundError:
            raise StoreError(f"no results file at {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{path} is not a relu-verify results JSON ({type(e).__name__}: {e})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "status" in r for r in rows):
            raise StoreError(f"{path} is not a relu-verify results JSON (its examples have no status)")
        return _ordered(config, [order_row(r) for r in rows])
    from ..batch import ResultsStore

    with ResultsStore.open(path, create=False) as s:
        return _ordered(s.config, s.rows())


def _ordered(config: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Radius rows with their own columns first (RADIUS_FIELDS), certify rows as they come."""
    from ..curve import is_radius_results, order_radius_row

    if is_radius_results(config, rows):
        rows = [order_radius_row(r) for r in rows]
    return config, rows


def format_seconds(v: float) -> str:
    """Three significant digits whatever the size (a median of 0.0004 s is not '0.000')."""
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def print_summary(s: Summary, title: str) -> None:
    click.echo(title)
    click.echo(f"n {s.n}")
    click.echo(f"clean error (TE)               {100 * s.clean_error:6.2f}%")
    click.echo(f"PGD lower bound                {100 * s.pgd_lb:6.2f}%")
    click.echo(f"bound-only upper bound         {100 * s.bound_ub:6.2f}%")
    click.echo(f"PGD+complete lower bound LB    {100 * s.lb:6.2f}%")
    click.echo(f"bounds+complete upper bound UB {100 * s.ub:6.2f}%")
    click.echo(f"unknown                        {s.unknown}")
    click.echo(f"seconds per example            median {format_seconds(s.median_seconds)}   total {format_seconds(s.total_seconds)}")


def plot_store(rows: list[dict[str, Any]], out_png: str) -> None:
    """Two panels, coloured by status: seconds per example, and each example's margin interval.

    The interval runs from the best proven lower bound on the worst-case margin (bounds, MIP)
    to the best upper bound (the smallest margin seen at a concrete point: centre, attack, MIP).
    An example is verified when the lower end is above 0 and falsified when the upper end is below.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"verified": "tab:green", "falsified": "tab:red", "misclassified": "tab:gray", "unknown": "tab:orange"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for status, c in colors.items():
        sel = [r for r in rows if r["status"] == status]
        if not sel:
            continue
        a.scatter([r["index"] for r in sel], [max(float(r.get("seconds") or 0), 1e-5) for r in sel], s=8, c=c,
                  label=f"{status} ({len(sel)})")
        lo = [(r["index"], r.get("margin_lb")) for r in sel if isinstance(r.get("margin_lb"), (int, float))]
        hi = [(r["index"], r.get("margin_ub")) for r in sel if isinstance(r.get("margin_ub"), (int, float))]
        both = [r for r in sel if isinstance(r.get("margin_lb"), (int, float)) and isinstance(r.get("margin_ub"), (int, float))]
        if both:
            b.vlines([r["index"] for r in both], [r["margin_lb"] for r in both], [r["margin_ub"] for r in both],
                     colors=c, lw=0.8, alpha=0.6)
        if lo:
            b.scatter(*zip(*lo), s=10, c=c, marker="^")
        if hi:
            b.scatter(*zip(*hi), s=10, c=c, marker="v")
    a.set_yscale("log")
    a.set_xlabel("example index")
    a.set_ylabel("seconds (this example's share of the run)")
    a.set_title("time per example")
    b.axhline(0, color="k", lw=0.8)
    b.set_yscale("symlog", linthresh=1e-2)
    b.set_xlabel("example index")
    b.set_ylabel("worst-case margin f_y - max_j f_j")
    b.set_title("margin interval per example (> 0: robust)")
    b.scatter([], [], s=10, c="k", marker="^", label="proven lower bound (bounds, MIP)")
    b.scatter([], [], s=10, c="k", marker="v", label="upper bound: margin at a point (centre, PGD, MIP)")
    b.legend(fontsize=7, loc="best")
    b.margins(y=0.08)
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def write_counterexamples(path: str, points: dict[int, Any], rows: list[dict[str, Any]], config: dict[str, Any]) -> int:
    """The counterexamples as an .npz (index, label, x_adv in float64, and eps and p of the run), atomically."""
    import numpy as np

    from ..atomic import write_atomic_with
    from ..errors import SpecError

    if not path.endswith(".npz"):
        raise SpecError(f"--counterexamples must end in .npz, got {path!r}")
    label = {int(r["index"]): int(r["label"]) for r in rows}
    idx = sorted(i for i in points if i in label)
    # each point is stored as (1, *input_shape), as the pipeline's counterexamples are
    x = np.concatenate([np.asarray(points[i], dtype=np.float64) for i in idx]) if idx else np.zeros((0,))
    arrays: dict[str, Any] = {"index": np.asarray(idx, dtype=np.int64), "label": np.asarray([label[i] for i in idx], dtype=np.int64),
              "x_adv": x, "eps": np.float64(config.get("eps", np.nan)), "p": np.str_(config.get("p", ""))}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a temporary name
            np.savez_compressed(fh, **arrays)

    write_atomic_with(path, write)
    return len(idx)


def print_radius_summary(r: dict[str, Any], title: str) -> None:
    """The radius run's numbers: n, clean error, how many radii are exact / bracketed / beyond max_eps, time."""

    def count(key: str, fraction: str | None = None) -> str:
        return f"{r['n_' + key]:>6}  ({100 * r[fraction or key]:6.2f}%)"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    click.echo(title)
    click.echo(f"n {r['n']}")
    click.echo(f"clean error (misclassified)    {count('misclassified', 'clean_error')}")
    click.echo(f"exact radius (within tol)      {count('exact')}   radius mean {num(r['mean_radius'])}  "
               f"median {num(r['median_radius'])}")
    click.echo(f"bracketed (time limit)         {count('bracketed')}")
    click.echo(f"beyond max_eps (proven robust) {count('beyond')}")
    click.echo(f"seconds per example            mean {format_seconds(r['mean_seconds'] or 0.0)}   "
               f"median {format_seconds(r['median_seconds'] or 0.0)}   total {format_seconds(r['total_seconds'])}")


def examples_png_path(results: str, png: str | None) -> str:
    """--examples-png, or RESULTS with its ending replaced: run.sqlite -> run.examples.png."""
    return png if png is not None else str(Path(results).with_suffix(".examples.png"))


def check_examples_options(results: str, png: str) -> None:
    from ..curve import check_figure_path
    from ..errors import SpecError

    if results.endswith(".json"):
        raise SpecError("--examples needs a results store (.sqlite): a JSON file holds no points; "
                        "run 'verify radius' or 'verify certify' with --output RUN.sqlite")
    check_figure_path(png, "--examples-png")


def draw_examples(results: str, rows: list[dict[str, Any]], config: dict[str, Any], k: int, png: str,
                  dataset: str | None, data_dir: str | None) -> None:
    """A PNG of the first K stored counterexamples (by data-set index; misclassified centres left out) beside
    their originals, reloaded from the run's data set (test split, or --dataset / --data-dir)."""
    import numpy as np

    from ..batch import ResultsStore
    from ..curve import lp_distance, plot_examples
    from ..errors import DataError, SpecError

    check_examples_options(results, png)
    with ResultsStore.open(results, create=False) as st:
        points = st.counterexamples()
    by_index = {int(r["index"]): r for r in rows}
    chosen = [i for i in sorted(points) if i in by_index and by_index[i]["status"] != "misclassified"][:k]
    if not chosen:
        click.echo(f"{results} holds no counterexamples (misclassified centres aside): no --examples image written")
        return
    name = dataset or config.get("dataset") or config.get("data")
    if not name:
        raise SpecError(f"{results} does not say which data set its examples come from: give --dataset")
    from ..data import load_dataset

    ds = load_dataset(str(name), split="test", data_dir=data_dir or config.get("data_dir"))
    p = str(config.get("p", "inf"))
    originals, adversarials, labels, predicted, distances = [], [], [], [], []
    for i in chosen:
        if not 0 <= i < len(ds):
            raise DataError(f"example {i} is out of range: {ds.name} has {len(ds)} points (another --dataset?)")
        x0 = ds.x[i].double().numpy()
        x1 = np.asarray(points[i], dtype=np.float64)
        if x1.size != x0.size:
            raise DataError(f"example {i}: the stored point has {x1.size} values, {ds.name}'s image {x0.size} "
                            "(another --dataset?)")
        x1 = x1.reshape(x0.shape)
        row = by_index[i]
        target = row.get("target")
        originals.append(x0)
        adversarials.append(x1)
        labels.append(int(row["label"]))
        predicted.append(None if target is None else int(target))
        distances.append(lp_distance(x1, x0, p))
        click.echo(f"example {i}: label {row['label']} -> class {'?' if target is None else target} "
                   f"at distance {distances[-1]:.6g} (p {p})")
    plot_examples(originals, adversarials, labels, predicted, distances, png, p)
    click.echo(f"wrote {len(chosen)} counterexamples to {png}")


@click.command("summary")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False), help="Write per-example rows as CSV.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write summary + rows as JSON.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG: time per example and each example's margin interval (certify), or the robust "
                   "error curves against eps (radius, as 'verify curve --plot').")
@click.option("--counterexamples", "ce_path", default=None, type=click.Path(dir_okay=False),
              help="Write the stored counterexamples (float64 inputs, re-checkable) to an .npz (stores only).")
@click.option("--examples", "examples_k", default=None, type=click.IntRange(min=1),
              help="Draw the first K stored counterexamples (original, perturbation, adversarial) in a PNG "
                   "(stores only; the originals are reloaded from the run's data set).")
@click.option("--examples-png", "examples_png", default=None, type=click.Path(dir_okay=False),
              help="Where --examples draws. Default: RESULTS with the ending .examples.png.")
@click.option("--dataset", default=None,
              help="For --examples: the data set of the run (default: the one its configuration names).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="For --examples: the folder holding that data set (default: the run's, then the usual places).")
def summary(results: str, csv_path: str | None, json_path: str | None, plot_path: str | None, ce_path: str | None,
            examples_k: int | None, examples_png: str | None, dataset: str | None, data_dir: str | None) -> None:
    """Print the MMR-style table (TE, LB, UB, unknown, time) of a results store or a certify JSON.

    For the results of 'verify radius' it prints the radius summary instead: clean error, how many
    radii are exact (mean and median), bracketed by the time limit or beyond max_eps, and time;
    --plot then draws the robust error curves against eps (see 'verify curve').

    --examples K draws the first K stored counterexamples (by data-set index; misclassified centres
    left out), one row each: the original with its label, the perturbation (its norm in the run's p)
    and the adversarial input with its class (a radius row's target; '?' for a certify row). It needs
    a store; the originals come from the test split of the data set the run names (or --dataset).

    \b
    Examples:
      verify certify --model net.mat --p inf --eps 0.1 --dataset mnist -n 1000 --output run.sqlite
      verify summary run.sqlite --csv run.csv --plot run.png --counterexamples run.npz
      verify summary out/certify.json
      verify summary radius.sqlite --plot curves.png --examples 8          # writes radius.examples.png
      verify summary run.sqlite --examples 4 --examples-png ce.png --data-dir /data/mnist
    """
    from ..curve import curves, grid_top, is_radius_results, plot_curves, plot_grid, radius_summary
    from ..errors import SpecError
    from ..results import results_document, summarize

    if examples_k is not None:  # wrong options: one line before anything is read or printed
        check_examples_options(results, examples_png_path(results, examples_png))
    config, rows = load_results(results)
    radius = is_radius_results(config, rows)
    if radius:
        r = radius_summary(rows)
        title = (f"{results}: radius  p {config.get('p')}  max_eps {config.get('max_eps')}  tol {config.get('tol')}  "
                 f"model {config.get('model_path', '?')}")
        print_radius_summary(r, title)
        header: dict[str, Any] = {**r, "config": config}
    else:
        s = summarize(rows)
        print_summary(s, f"{results}: p {config.get('p')}  eps {config.get('eps')}  model {config.get('model_path', '?')}")
        header = {k: v for k, v in results_document(s, config, rows).items() if k != "examples"}
    if csv_path:
        write_rows(csv_path, {}, rows)
    if json_path:
        write_rows(json_path, header, rows)
    if plot_path:
        if radius:
            plot_curves(curves(rows, plot_grid(rows, grid_top(rows, config))), plot_path, title, p=config.get("p"))
        else:
            plot_store(rows, plot_path)
        click.echo(f"wrote {plot_path}")
    if ce_path:
        if results.endswith(".json"):
            raise SpecError("--counterexamples needs a results store (.sqlite): a JSON file holds no points; "
                            "use 'verify certify --counterexamples FILE.npz' for a JSON run")
        from ..batch import ResultsStore

        with ResultsStore.open(results, create=False) as st:
            k = write_counterexamples(ce_path, st.counterexamples(), rows, config)
        click.echo(f"wrote {k} counterexamples to {ce_path}")
    if examples_k is not None:
        draw_examples(results, rows, config, examples_k, examples_png_path(results, examples_png), dataset, data_dir)


@click.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The merged results store.")
def merge(shards: tuple[str, ...], out: str) -> None:
    """Merge sharded results stores (same configuration) into one.

    \b
    Example (SLURM array job with --shard $SLURM_ARRAY_TASK_ID/3):
      verify merge run.1.sqlite run.2.sqlite run.3.sqlite --out run.sqlite
    """
    from ..batch import StoreError, merge_stores

    if Path(out).exists():
        raise StoreError(f"{out} exists already; merge into a new file")
    with merge_stores(shards, out) as m:
        n = len(m)
    click.echo(f"merged {len(shards)} stores, {n} examples -> {out}")
