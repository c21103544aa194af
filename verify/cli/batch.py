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
            raise StoreError(f"{path} is not a relu-verify certify results JSON (its examples have no status)")
        return config, [order_row(r) for r in rows]
    from ..batch import ResultsStore

    with ResultsStore.open(path, create=False) as s:
        return s.config, s.rows()


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


@click.command("summary")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False), help="Write per-example rows as CSV.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write summary + rows as JSON.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG: time per example, and each example's margin interval (lower to upper bound).")
@click.option("--counterexamples", "ce_path", default=None, type=click.Path(dir_okay=False),
              help="Write the stored counterexamples (float64 inputs, re-checkable) to an .npz (stores only).")
def summary(results: str, csv_path: str | None, json_path: str | None, plot_path: str | None, ce_path: str | None) -> None:
    """Print the MMR-style table (TE, LB, UB, unknown, time) of a results store or a certify JSON.

    \b
    Examples:
      verify certify --model net.mat --p inf --eps 0.1 --dataset mnist -n 1000 --output run.sqlite
      verify summary run.sqlite --csv run.csv --plot run.png --counterexamples run.npz
      verify summary out/certify.json
    """
    from ..errors import SpecError
    from ..results import results_document, summarize

    config, rows = load_results(results)
    s = summarize(rows)
    print_summary(s, f"{results}: p {config.get('p')}  eps {config.get('eps')}  model {config.get('model_path', '?')}")
    if csv_path:
        write_rows(csv_path, {}, rows)
    if json_path:
        write_rows(json_path, {k: v for k, v in results_document(s, config, rows).items() if k != "examples"}, rows)
    if plot_path:
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
