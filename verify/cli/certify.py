"""``verify certify``: attack, bound and solve the exact MIP; MMR-style lower and upper bounds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import click

from ..results import results_document
from .batch import print_summary, write_counterexamples
from .common import data_options, load_examples, load_model, make_ball, model_option, output_option, p_label, spec_options, write_rows

if TYPE_CHECKING:
    from ..batch.executor import ClusterOptions
    from ..certify import CertifyConfig
    from ..results import Summary, Verdict
    from ..network import Network
    from ..data import Examples


@click.command("certify")
@model_option
@spec_options
@data_options
@click.option("--solver", default="highs", type=click.Choice(["highs", "mipverify"]), help="MIP backend.")
@click.option("--timeout", default=120.0, type=click.FloatRange(min=0, min_open=True), help="Time limit of the complete stage per example (s).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads of HiGHS and of torch. One is best unless the machine is idle: the work is per "
                   "example, and torch's thread pool slows down 10x or more on cores another process is using (benchmarks/threads.py).")
@click.option("--methods", default="ibp,kw,crown", help="Bound methods tried before the MIP, cheap to tight.")
@click.option("--attack-steps", default=40, type=click.IntRange(min=0), help="PGD steps (0: no attack).")
@click.option("--attack-restarts", default=1, type=click.IntRange(min=1), help="PGD restarts.")
@click.option("--strong-attack-restarts", default=10, show_default=True, type=click.IntRange(min=0),
              help="Restarts of a 100-step PGD (step decay) on the examples the bounds leave open, before the MIP (0: none; not with --no-mip).")
@click.option("--mip-bounds", default="crown", show_default=True, type=click.Choice(["crown", "alpha-crown"]),
              help="Starting big-M bounds of the MIP: CROWN's, or CROWN's refined by alpha-CROWN per neuron "
                   "(at most a quarter of --timeout; fewer binaries in deeper layers, tighter target bounds).")
@click.option("--complete", default="auto", show_default=True, type=click.Choice(["auto", "bab", "mip"]),
              help="Complete engine for the examples the attacks and bounds leave open: the MIP (--solver), branch "
                   "and bound on the bound engine (beta-CROWN style; deep or non-robust nets), or auto: the MIP "
                   "where the bounds leave few unstable ReLUs, else branch and bound first, then the MIP.")
@click.option("--no-mip", is_flag=True, help="Stop after the bounds: undecided examples are unknown.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--shard", default=None, help="Run shard i of n (e.g. 2/3, for SLURM array jobs); merge with 'verify merge'.")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="Dask LocalCluster with N single-threaded worker processes.")
@click.option("--scheduler", default=None, help="Join an existing Dask cluster at this address (tcp://HOST:PORT).")
@click.option("--cluster", default=None, type=click.Choice(["slurm"]), help="Start Dask workers as SLURM jobs (dask-jobqueue).")
@click.option("--jobs", default=1, type=click.IntRange(min=1), help="With --cluster slurm: number of jobs.")
@click.option("--queue", default=None, help="With --cluster slurm: partition.")
@click.option("--account", default=None, help="With --cluster slurm: account.")
@click.option("--memory", default="4GB", help="With --cluster slurm: memory per job.")
@click.option("--walltime", default="01:00:00", help="With --cluster slurm: wall time per job.")
@click.option("--cores", default=1, type=click.IntRange(min=1), help="With --cluster slurm: cores (= workers) per job.")
@click.option("--counterexamples", "ce_path", default=None, type=click.Path(dir_okay=False),
              help="Also write every counterexample (float64 input, re-checked) to this .npz: index, label, x_adv, eps, p.")
@output_option
def certify(model_path: str, model_format: str | None, arch: str | None, p: str, eps: float, dataset: str | None,
            data_dir: str | None, n: int | None, indices: str | None, inputs_path: str | None, solver: Literal["highs", "mipverify"],
            timeout: float, threads: int, methods: str, attack_steps: int, attack_restarts: int,
            strong_attack_restarts: int, mip_bounds: Literal["crown", "alpha-crown"], complete: Literal["auto", "bab", "mip"], no_mip: bool, quiet: bool, shard: str | None, workers: int, scheduler: str | None, cluster: str | None, jobs: int,
            queue: str | None, account: str | None, memory: str, walltime: str, cores: int,
            ce_path: str | None, output: str | None) -> None:
    """Decide each example: misclassified, falsified (PGD or MIP), verified (bounds or MIP) or unknown.

    \b
    Examples:
      verify certify --model net.mat --p inf --eps 0.1 --dataset mnist -n 1000 --output res.json
      verify certify --model net.mat --p 2 --eps 0.3 --dataset fmnist --indices 0,5,9 --timeout 60
    \b
    Resumable batch runs (SQLite store; re-run the same command to resume, or
    with a larger -n to extend it: rows are kept per data-set index):
      verify certify ... -n 10000 --output run.sqlite --workers 2
      verify certify ... --output run.$SLURM_ARRAY_TASK_ID.sqlite --shard $SLURM_ARRAY_TASK_ID/8
      verify certify ... --output run.sqlite --cluster slurm --jobs 16 --queue short --walltime 04:00:00
    """
    from ..batch import parse_shard
    from ..batch.executor import ClusterOptions
    from ..certify import CertifyConfig, certify as run, summarize
    from ..errors import SpecError
    from ..spec import parse_p

    store = output is not None and output.endswith((".sqlite", ".db"))
    if output is not None and not (store or output.endswith(".json") or output.endswith(".csv")):
        raise SpecError(f"--output must end in .json, .csv or .sqlite, got {output!r}")
    if ce_path is not None and not ce_path.endswith(".npz"):
        raise SpecError(f"--counterexamples must end in .npz, got {ce_path!r}")
    shard_spec = parse_shard(shard)
    options = ClusterOptions(workers=workers, scheduler=scheduler, cluster=cluster, jobs=jobs, queue=queue,
                             account=account, memory=memory, walltime=walltime, cores=cores)
    if (options.distributed or shard_spec is not None) and not store:
        raise SpecError("--workers, --scheduler, --cluster and --shard need a results store: --output run.sqlite")
    config = CertifyConfig(p=parse_p(p), eps=eps, methods=tuple(m for m in methods.split(",") if m),
                           attack_steps=attack_steps, attack_restarts=attack_restarts,
                           strong_attack_restarts=strong_attack_restarts, timeout=timeout,
                           solver=solver, threads=threads, no_mip=no_mip,
                           mip_bounds=mip_bounds, complete=complete)
    import torch

    torch.set_num_threads(threads)
    net = load_model(model_path, model_format, arch)
    ex = load_examples(net, dataset, data_dir, n, indices, inputs_path)
    ball = make_ball(net, ex, p, eps)
    if store:
        assert output is not None  # store is set only for an --output name
        _run_store(net, model_path, ex, config, output, shard_spec, options, quiet, p, eps, solver, ce_path)
        return
    run_cfg = {**config.__dict__, "p": p_label(p), "methods": list(config.methods), "model_path": model_path,
               "data": ex.source}
    rows: list[dict[str, Any]] = []
    done: list[Verdict] = []

    def on_result(r: Verdict) -> None:
        done.append(r)
        rows.append(r.row())
        if output is not None:
            # rewritten atomically after every example: an interrupted run keeps every finished row
            _write(output, summarize(done), run_cfg, rows)

    results = run(net, ball, ex.y, ex.indices, config, progress=not quiet, on_result=on_result)
    s = summarize(results)
    print_summary(s, f"p {p_label(p)}   eps {eps:g}   complete {config.complete}   solver {solver}")
    final = [r.row() for r in results]
    if output is not None:  # the final file lists the examples in input order
        _write(output, s, run_cfg, final)
    if ce_path is not None:
        points = {r.index: r.counterexample.detach().cpu().double().numpy() for r in results
                  if r.counterexample is not None and r.index is not None}
        k = write_counterexamples(ce_path, points, final, run_cfg)
        click.echo(f"wrote {k} counterexamples to {ce_path}")


def _write(output: str, s: Summary, run_cfg: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    doc = results_document(s, run_cfg, rows)
    write_rows(output, {k: v for k, v in doc.items() if k != "examples"}, rows)


def _run_store(net: Network, model_path: str, ex: Examples, config: CertifyConfig, output: str,
               shard_spec: tuple[int, int] | None, options: ClusterOptions, quiet: bool, p: str, eps: float, solver: str,
               ce_path: str | None) -> None:
    from ..batch import ResultsStore
    from ..batch.run import run_to_store
    from ..results import summarize

    rows, skipped = run_to_store(net, model_path, ex.x, ex.y, ex.indices, ex.source, config, output,
                                 shard=shard_spec, options=options, progress=not quiet)
    if skipped:
        click.echo(f"resumed {output}: skipped {skipped} examples already in the store")
    shard_txt = "" if shard_spec is None else f"   shard {shard_spec[0]}/{shard_spec[1]}"
    print_summary(summarize(rows), f"p {p_label(p)}   eps {eps:g}   complete {config.complete}   solver {solver}{shard_txt}")
    if ce_path is not None:
        wanted = {int(r["index"]) for r in rows}
        with ResultsStore.open(output, create=False) as st:
            points = {i: v for i, v in st.counterexamples().items() if i in wanted}
            k = write_counterexamples(ce_path, points, rows, st.config)
        click.echo(f"wrote {k} counterexamples to {ce_path}")
