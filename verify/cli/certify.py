"""``verify certify``: attack, bound and solve the exact MIP; MMR-style lower and upper bounds."""

from __future__ import annotations

import click

from .common import data_options, load_examples, load_model, make_ball, model_option, output_option, p_label, spec_options, write_rows


@click.command("certify")
@model_option
@spec_options
@data_options
@click.option("--solver", default="highs", type=click.Choice(["highs", "mipverify"]), help="MIP backend.")
@click.option("--timeout", default=120.0, type=click.FloatRange(min=0, min_open=True), help="MIP time limit per example (s).")
@click.option("--threads", default=1, type=click.IntRange(min=1), help="Solver threads.")
@click.option("--methods", default="ibp,kw,crown", help="Bound methods tried before the MIP, cheap to tight.")
@click.option("--attack-steps", default=40, type=click.IntRange(min=0), help="PGD steps (0: no attack).")
@click.option("--attack-restarts", default=1, type=click.IntRange(min=1), help="PGD restarts.")
@click.option("--no-mip", is_flag=True, help="Stop after the bounds: undecided examples are unknown.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@output_option
def certify(model_path: str, model_format: str | None, arch: str | None, p: str, eps: float, dataset: str | None,
            data_dir: str | None, n: int | None, indices: str | None, inputs_path: str | None, solver: str,
            timeout: float, threads: int, methods: str, attack_steps: int, attack_restarts: int, no_mip: bool,
            quiet: bool, output: str | None) -> None:
    """Decide each example: misclassified, falsified (PGD or MIP), verified (bounds or MIP) or unknown."""
    from ..certify import CertifyConfig, certify as run, summarize
    from ..errors import SpecError
    from ..spec import parse_p

    if output is not None and not (output.endswith(".json") or output.endswith(".csv")):
        raise SpecError(f"--output must end in .json or .csv, got {output!r}")
    config = CertifyConfig(p=parse_p(p), eps=eps, methods=tuple(m for m in methods.split(",") if m),
                           attack_steps=attack_steps, attack_restarts=attack_restarts, timeout=timeout,
                           solver=solver, threads=threads, no_mip=no_mip)  # type: ignore[arg-type]
    net = load_model(model_path, model_format, arch)
    ex = load_examples(net, dataset, data_dir, n, indices, inputs_path)
    ball = make_ball(net, ex, p, eps)
    header = {"model": model_path, "dataset": ex.source, "config": {**config.__dict__, "p": p_label(p)}}
    rows: list[dict] = []
    done: list = []

    def on_result(r) -> None:
        done.append(r)
        rows.append(r.row())
        if output is not None:
            # rewritten atomically after every example: an interrupted run keeps every finished row
            write_rows(output, _header(header, summarize(done)), rows)

    results = run(net, ball, ex.y, ex.indices, config, progress=not quiet, on_result=on_result)
    s = summarize(results)
    click.echo(f"n {s.n}   p {p_label(p)}   eps {eps:g}   solver {solver}")
    click.echo(f"clean error (TE)        {100 * s.clean_error:6.2f}%")
    click.echo(f"PGD lower bound         {100 * s.pgd_lb:6.2f}%")
    click.echo(f"bound-only upper bound  {100 * s.bound_ub:6.2f}%")
    click.echo(f"PGD+MIP lower bound LB  {100 * s.lb:6.2f}%")
    click.echo(f"bounds+MIP upper bound UB {100 * s.ub:4.2f}%")
    click.echo(f"unknown                 {s.unknown}")
    click.echo(f"seconds per example     median {s.median_seconds:.3f}   total {s.total_seconds:.1f}")
    if output is not None:
        write_rows(output, _header(header, s), rows)


def _header(header: dict, s) -> dict:
    return {"n": s.n, "clean_error": s.clean_error, "pgd_lb": s.pgd_lb, "bound_ub": s.bound_ub, "lb": s.lb,
            "ub": s.ub, "unknown": s.unknown,
            "seconds": {"median": s.median_seconds, "total": s.total_seconds}, **header}
