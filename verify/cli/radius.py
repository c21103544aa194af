"""``verify radius``: the minimum adversarial distortion of each example (MIPVerify's ``closest``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .common import data_options, load_examples, load_model, model_option, output_option, p_label, write_rows

if TYPE_CHECKING:
    from ..radius import RadiusResult


@click.command("radius")
@model_option
@data_options
@click.option("--p", "p", required=True, help="Norm of the distortion: 1, 2 or inf.")
@click.option("--max-eps", default=None, type=float,
              help="Search no further than this distance: an example with no misclassified point that close "
                   "is 'beyond' (fast: bounds usually prove it). Default: as far as the input box reaches.")
@click.option("--target", default=None, type=click.IntRange(min=0),
              help="The distortion needed to reach this class (MIPVerify's target selection); examples labelled "
                   "with it are left out. Default: any class other than the label.")
@click.option("--method", default="crown", show_default=True, type=click.Choice(["ibp", "kw", "crown", "alpha-crown"]),
              help="Bound method bisected for the certified radius (the lower end before the MIP).")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="The MIP's time limit per example (s); when it hits, the example keeps a certified bracket.")
@click.option("--tol", default=1e-5, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="An example is exact when upper - lower <= tol * max(1, upper).")
@click.option("--attack-steps", default=40, show_default=True, type=click.IntRange(min=0), help="PGD steps (0: no attack).")
@click.option("--no-mip", is_flag=True, help="Stop after attacks and bounds: report the bracket they give.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="Threads of HiGHS and torch.")
@click.option("--counterexamples", "ce_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the closest counterexamples found (float64 inputs, re-checked) to this .npz.")
@click.option("--shard", default=None,
              help="Run shard i of n (e.g. 2/3, for SLURM array jobs) into a store; merge with 'verify merge'.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@output_option
def radius(model_path: str, model_format: str | None, arch: str | None, dataset: str | None, data_dir: str | None,
           n: int | None, indices: str | None, inputs_path: str | None, p: str, max_eps: float | None,
           target: int | None, method: str,
           timeout: float, tol: float, attack_steps: int, no_mip: bool, threads: int, ce_path: str | None,
           shard: str | None, quiet: bool, output: str | None) -> None:
    """Per example, the smallest perturbation (in the p-norm, inside the input box) that changes
    the prediction: exact (MIP), or a certified bracket [lower, upper] when the time limit hits.

    \b
    lower: the example is proven robust at every eps <= lower (bound propagation, MIP dual bound).
    upper: a counterexample at that distance exists; it is re-checked in float64 and saved.
    Robust-error curves for every eps come from one such run: 'verify curve RESULTS'.
    \b
    Examples:
      verify radius --model net.mat --dataset mnist -n 100 --p inf --output radii.json
      verify radius --model net.mat --dataset mnist -n 100 --p inf --max-eps 0.1 --output radii.sqlite
      verify radius --model net.mat --dataset mnist -n 20 --p 1 --target 3 --timeout 60
      verify curve radii.sqlite --plot curve.png --csv curve.csv
      verify summary radii.sqlite --examples 8
    \b
    Results stores (.sqlite) are resumable: re-run the same command to continue where it stopped.
    On a cluster, one shard per array task, then merge:
      verify radius ... --output radii.$SLURM_ARRAY_TASK_ID.sqlite --shard $SLURM_ARRAY_TASK_ID/8
      verify merge radii.*.sqlite --out radii.sqlite
    """
    import torch

    from ..errors import SpecError
    from ..radius import RadiusConfig, config_dict, minimum_distortion
    from ..spec import parse_p

    from ..batch import parse_shard, shard_indices

    shard_spec = parse_shard(shard)
    store = output is not None and output.endswith((".sqlite", ".db"))
    if shard_spec is not None and not store:
        raise SpecError("--shard needs a results store: --output radii.sqlite")
    if output is not None and not (store or output.endswith((".json", ".csv"))):
        raise SpecError(f"--output must end in .json, .csv or .sqlite, got {output!r}")
    if ce_path is not None and not ce_path.endswith(".npz"):
        raise SpecError(f"--counterexamples must end in .npz, got {ce_path!r}")
    config = RadiusConfig(p=parse_p(p), max_eps=max_eps, target=target, method=method, timeout=timeout, tol=tol,
                          attack_steps=attack_steps, threads=threads, no_mip=no_mip)
    torch.set_num_threads(threads)
    net = load_model(model_path, model_format, arch)
    ex = load_examples(net, dataset, data_dir, n, indices, inputs_path)
    run_cfg = {**config_dict(config), "model_path": model_path, "data": ex.source, "dataset": dataset,
               "data_dir": data_dir}
    rows: dict[int, dict[str, Any]] = {}
    points: dict[int, Any] = {}
    x, y, idx = ex.x, ex.y, list(ex.indices)
    st = None
    if store:
        from ..batch import ResultsStore
        from ..batch.run import run_config

        assert output is not None
        ident = run_config(model_path, ex.source, idx, config, shard_spec) | {"command": "radius", "dataset": dataset,
                                                                               "data_dir": data_dir}
        st = ResultsStore.open(output, ident)
        done = st.done()
        mine = set(shard_indices([int(i) for i in idx], shard_spec))
        if shard_spec is not None:
            click.echo(f"shard {shard_spec[0]}/{shard_spec[1]}: {len(mine)} of {len(idx)} examples")
        keep = [k for k, i in enumerate(idx) if int(i) not in done and int(i) in mine]
        if len(keep) < len(mine):
            click.echo(f"resumed {output}: skipped {len(mine) - len(keep)} examples already in the store")
        for r in st.iter_stored():
            if r.index in mine:
                rows[r.index] = r.row
                if r.counterexample is not None:
                    points[r.index] = r.counterexample
        x, y, idx = x[keep], y[keep], [idx[k] for k in keep]

    def on_result(r: RadiusResult) -> None:
        rows[r.index] = r.row()
        ce = r.counterexample.detach().cpu().double().numpy() if r.counterexample is not None else None
        if ce is not None and r.status != "misclassified":
            points[r.index] = ce
        if st is not None:
            st.add(r.row(), ce if r.status != "misclassified" else None)
        elif output is not None:  # rewritten atomically after every example
            write_rows(output, {"config": run_cfg}, [rows[i] for i in sorted(rows)])

    try:
        if idx:
            minimum_distortion(net, x, y, idx, config, progress=not quiet, on_result=on_result)
    finally:
        if st is not None:
            st.close()
    final = [rows[int(i)] for i in ex.indices if int(i) in rows]
    _print(final, f"p {p_label(p)}   max-eps {max_eps if max_eps is not None else 'box'}   method {method}   "
                  f"timeout {timeout:g} s")
    if output is not None and not store:
        write_rows(output, {"config": run_cfg}, final)
    if ce_path is not None:
        from .batch import write_counterexamples

        k = write_counterexamples(ce_path, points, final, run_cfg)
        click.echo(f"wrote {k} counterexamples to {ce_path}")


def _print(rows: list[dict[str, Any]], title: str) -> None:
    from ..curve import radius_summary
    from .batch import print_radius_summary

    print_radius_summary(radius_summary(rows), title)
