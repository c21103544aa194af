"""``verify curve``: robust error against eps from the radius brackets of a ``verify radius`` run."""

from __future__ import annotations

from pathlib import Path

import math
from typing import Any

import click
import numpy as np

from .batch import load_results

TABLE_ROWS = 21  # at most this many grid rows are printed; --csv has them all


def curve_title(results: str, config: dict[str, Any], n: int) -> str:
    model = Path(str(config.get("model_path", "?"))).name
    return f"{Path(results).name}: p {config.get('p')}  max_eps {config.get('max_eps')}  tol {config.get('tol')}  n {n}  model {model}"


def print_curve_table(c: dict[str, np.ndarray]) -> None:
    """eps against the five curves in %; a long grid is thinned to about TABLE_ROWS rows (the last kept)."""
    m = len(c["eps"])
    step = 1
    if m > TABLE_ROWS:  # a step that divides the grid evenly where one is near (51 points: every 5th)
        least = math.ceil((m - 1) / (TABLE_ROWS - 1))
        step = next((s for s in range(least, 2 * least) if (m - 1) % s == 0), least)
    show = list(range(0, m, step))
    if show[-1] != m - 1:
        show.append(m - 1)
    click.echo(f"{'eps':>10}  {'clean':>7}  {'PGD':>7}  {'certif.':>7}  {'LB':>7}  {'UB':>7}")
    for i in show:
        vals = "  ".join(f"{100 * float(c[k][i]):6.2f}%" for k in ("clean", "pgd", "certified", "lb", "ub"))
        click.echo(f"{float(c['eps'][i]):>10.6g}  {vals}")
    if len(show) < m:
        click.echo(f"({len(show)} of {m} grid points shown; --csv writes all)")


@click.command("curve")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--grid", "grid_text", default=None,
              help="The eps values: START:STOP:STEP (STOP included, e.g. 0:0.1:0.01) or a comma list (0,0.05,0.1). "
                   "Default: 51 points from 0 to the run's max_eps.")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False),
              help="Write the curves as CSV: eps, clean, pgd, certified, lb, ub (fractions of n, one row per eps).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Draw the curves (.png, .pdf or .svg): exact step curves from 0 to the grid's largest eps.")
def curve(results: str, grid_text: str | None, csv_path: str | None, plot_path: str | None) -> None:
    """Robust error against eps from a radius run (.sqlite store or .json), with no re-verification.

    Each example of a `verify radius` run carries a bracket lower <= r* <= upper on its minimum
    adversarial distortion r*. At each eps the table gives, in % of all examples:

    \b
      clean      misclassified centres (constant)
      PGD        PGD alone found a counterexample within eps (upper_pgd <= eps): robust error >= this
      certified  bound propagation alone does not prove robustness at eps (lower_bounds <= eps): >= robust error
      LB         a confirmed counterexample lies within eps (upper <= eps): robust error >= LB
      UB         not proven robust at eps (lower <= eps): robust error <= UB

    UB - LB is the fraction still bracketed at eps (0 where every example is decided there).
    A certify store (one eps) has no radii: use 'verify summary' for it.

    \b
    Examples:
      verify curve radius.sqlite
      verify curve radius.sqlite --grid 0:0.1:0.005 --csv curve.csv --plot curve.png
      verify curve out/radius.json --grid 0.01,0.02,0.05,0.1
    """
    from ..batch import StoreError
    from ..curve import (check_csv_path, check_figure_path, curves, default_grid, grid_top, is_radius_results, parse_grid,
                         plot_curves, plot_grid, write_curve_csv)

    grid = parse_grid(grid_text) if grid_text is not None else None  # bad text: one line before any file is read
    if csv_path is not None:
        check_csv_path(csv_path)
    if plot_path is not None:
        check_figure_path(plot_path, "--plot")
    config, rows = load_results(results)
    if not is_radius_results(config, rows):
        raise StoreError(f"{results} holds no radius results (command {config.get('command', 'certify')!r}): "
                         "'verify curve' reads the output of 'verify radius'; use 'verify summary' for it")
    if grid is None:
        grid = default_grid(rows, config)
    c = curves(rows, grid)
    click.echo(curve_title(results, config, len(rows)))
    print_curve_table(c)
    if csv_path:
        write_curve_csv(csv_path, c)
        click.echo(f"wrote {csv_path}")
    if plot_path:
        top = float(grid.max()) if grid.max() > 0 else grid_top(rows, config)
        plot_curves(curves(rows, plot_grid(rows, top)), plot_path, curve_title(results, config, len(rows)),
                    p=config.get("p"))
        click.echo(f"wrote {plot_path}")
