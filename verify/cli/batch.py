"""``verify summary`` and ``verify merge``: read results stores written by ``verify certify --output X.sqlite``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import write_rows


def _load(path: str):
    from ..batch import ResultsStore

    with ResultsStore.open(path, create=False) as s:
        return s.config, s.rows()


def rows_to_results(rows: list[dict]):
    """CertResults rebuilt from stored rows (enough for the summary: status, stage, seconds)."""
    from ..certify import CertResult

    return [
        CertResult(int(r["index"]), int(r["label"]), int(r["prediction"]), r["status"], r.get("decided_by"),
                   r.get("margin_lb"), None, {"total": float(r.get("seconds") or 0.0)},
                   r.get("solver_status"), r.get("gap"), r.get("reason"), r.get("n_binaries"))
        for r in rows
    ]


def print_summary(s, title: str) -> None:
    click.echo(title)
    click.echo(f"n {s.n}")
    click.echo(f"clean error (TE)          {100 * s.clean_error:6.2f}%")
    click.echo(f"PGD lower bound           {100 * s.pgd_lb:6.2f}%")
    click.echo(f"bound-only upper bound    {100 * s.bound_ub:6.2f}%")
    click.echo(f"PGD+MIP lower bound LB    {100 * s.lb:6.2f}%")
    click.echo(f"bounds+MIP upper bound UB {100 * s.ub:6.2f}%")
    click.echo(f"unknown                   {s.unknown}")
    click.echo(f"seconds per example       median {s.median_seconds:.3f}   total {s.total_seconds:.1f}")


def plot_store(rows: list[dict], out_png: str) -> None:
    """Two panels: seconds per example, and the certified margin lower bound, both coloured by status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"verified": "tab:green", "falsified": "tab:red", "misclassified": "tab:gray", "unknown": "tab:orange"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for status, c in colors.items():
        sel = [r for r in rows if r["status"] == status]
        if not sel:
            continue
        a.scatter([r["index"] for r in sel], [max(float(r.get("seconds") or 0), 1e-4) for r in sel], s=8, c=c, label=status)
        m = [r for r in sel if isinstance(r.get("margin_lb"), (int, float))]
        b.scatter([r["index"] for r in m], [r["margin_lb"] for r in m], s=8, c=c, label=status)
    a.set_yscale("log")
    a.set_xlabel("example index")
    a.set_ylabel("seconds")
    a.set_title("time per example")
    b.axhline(0, color="k", lw=0.8)
    b.set_xlabel("example index")
    b.set_ylabel("margin lower bound (> 0: certified by bounds)")
    b.set_title("bound gap: best margin lower bound")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


@click.command("summary")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False), help="Write per-example rows as CSV.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write summary + rows as JSON.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="Write a PNG: time per example and bound gap.")
def summary(results: str, csv_path: str | None, json_path: str | None, plot_path: str | None) -> None:
    """Print the MMR-style table (TE, LB, UB, unknown, time) of a results store.

    \b
    Example:
      verify certify --model net.mat --p inf --eps 0.1 --dataset mnist -n 1000 --output run.sqlite
      verify summary run.sqlite --csv run.csv --plot run.png
    """
    from ..certify import summarize

    config, rows = _load(results)
    s = summarize(rows_to_results(rows))
    print_summary(s, f"{results}: p {config.get('p')}  eps {config.get('eps')}  model {config.get('model_path', '?')}")
    if csv_path:
        write_rows(csv_path, {}, rows)
    if json_path:
        write_rows(json_path, {**s.as_dict(), "config": config}, rows)
    if plot_path:
        plot_store(rows, plot_path)
        click.echo(f"wrote {plot_path}")


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
