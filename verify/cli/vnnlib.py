"""``verify vnnlib``: VNN-COMP instances (ONNX network + VNNLIB property), one or a whole instances.csv."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..errors import SpecError, VerifyError
from ..properties import MIP_MODES, VerifyOptions
from ..results import Verdict
from ..vnncomp import vnn_status


@click.command("vnnlib")
@click.option("--onnx", "onnx_path", default=None, type=click.Path(dir_okay=False), help="The network (.onnx).")
@click.option("--vnnlib", "vnnlib_path", default=None, type=click.Path(dir_okay=False),
              help="The property (.vnnlib, or gzipped): an input box and the unsafe output region.")
@click.option("--instances", default=None, type=click.Path(dir_okay=False),
              help="Batch mode: an instances.csv with rows onnx,vnnlib,timeout (paths relative to it).")
@click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Seconds per instance, loading included (default 120; in batch mode the CSV's, unless given).")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Single instance: the VNN-COMP result file. Batch: per-instance rows as .csv or .json.")
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Batch mode: also write each instance's result file here.")
@click.option("--mode", default="per-disjunct", type=click.Choice(list(MIP_MODES)), show_default=True,
              help="MIP over the disjunction: one MIP per disjunct (faster on our MNIST benchmark), or one MIP with a "
                   "selection binary per disjunct.")
@click.option("--attack-steps", default=50, type=click.IntRange(min=0), show_default=True, help="PGD steps per restart (0: centre only).")
@click.option("--attack-restarts", default=3, type=click.IntRange(min=1), show_default=True, help="PGD restarts per disjunct.")
@click.option("--complete", default="auto", show_default=True, type=click.Choice(["auto", "bab", "mip"]),
              help="Complete engine for what the attack and bounds leave open: the HiGHS MIP, branch and bound on the "
                   "bound engine (input splitting for inputs of <= 5 features, else ReLU splitting), or auto (the MIP "
                   "where the bounds leave few unstable ReLUs, else branch and bound first, then the MIP).")
@click.option("--no-mip", is_flag=True, help="Stop after the bounds: undecided instances are unknown.")
@click.option("--threads", default=1, type=click.IntRange(min=1), show_default=True, help="Threads of HiGHS and of torch.")
@click.option("--check", is_flag=True, help="Only load the network and parse the property (prepare_instance.sh).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (batch mode).")
def vnnlib(onnx_path: str | None, vnnlib_path: str | None, instances: str | None, timeout: float | None,
           output: str | None, results_dir: str | None, mode: str, attack_steps: int, attack_restarts: int,
           complete: str, no_mip: bool, threads: int, check: bool, quiet: bool) -> None:
    """Verify VNN-COMP style instances: prints and writes unsat, sat (with the counterexample), timeout or unknown.

    The property describes the UNSAFE region: sat means an input in the box whose outputs
    satisfy one disjunct (a point on the boundary counts), re-checked by a float64 forward
    pass; unsat comes only from float64 bounds with a safety margin or an exact MIP.

    \b
    Examples:
      verify vnnlib --onnx net.onnx --vnnlib prop_0.vnnlib --timeout 120 --output result.txt
      verify vnnlib --instances benchmark/instances.csv --output summary.csv --results-dir results/
      verify vnnlib --onnx net.onnx --vnnlib prop_0.vnnlib --check
    """
    started = time.perf_counter()
    single = onnx_path is not None or vnnlib_path is not None
    if instances is not None and single:
        raise SpecError("give either --onnx and --vnnlib, or --instances, not both")
    if instances is None and (onnx_path is None or vnnlib_path is None):
        raise SpecError("give --onnx NET.onnx and --vnnlib PROP.vnnlib (or --instances instances.csv)")
    if instances is not None and output is not None and not output.endswith((".csv", ".json")):
        raise SpecError(f"--output must end in .csv or .json in batch mode, got {output!r}")
    if single and results_dir is not None:
        raise SpecError("--results-dir is for batch mode; use --output for one instance")
    import torch

    torch.set_num_threads(threads)
    options = VerifyOptions(timeout=timeout or 120.0, attack_steps=attack_steps, attack_restarts=attack_restarts,
                            mip=not no_mip, mode=mode, threads=threads, complete=complete)  # type: ignore[arg-type]
    if instances is None:
        assert onnx_path is not None and vnnlib_path is not None
        _single(onnx_path, vnnlib_path, options, output, check, started)
    else:
        _batch(instances, options, timeout, output, results_dir, check, quiet)


def _single(onnx_path: str, vnnlib_path: str, options: VerifyOptions, output: str | None, check: bool,
            started: float) -> None:
    from ..atomic import write_atomic
    from ..vnncomp import load_instance, result_text, run_instance

    if check:
        net, prop = load_instance(onnx_path, vnnlib_path)
        click.echo(f"ok: {prop.n_inputs} inputs, {prop.n_outputs} outputs, {len(prop.disjuncts)} disjuncts "
                   f"({net.name}, input shape {tuple(net.input_shape)})")
        return
    res = run_instance(onnx_path, vnnlib_path, options, started=started)
    text = result_text(res)
    if output is not None:
        write_atomic(output, text)
    click.echo(_line(res))
    if output is None and vnn_status(res) == "sat":
        click.echo(text.split("\n", 1)[1], nl=False)


def _line(res: Verdict) -> str:
    parts = [vnn_status(res), f"seconds={res.total_seconds:.2f}", f"disjuncts={res.n_disjuncts}"]
    if res.decided_by:
        parts.insert(1, f"decided_by={res.decided_by}")
    if res.open_disjuncts:
        parts.append(f"open_after_bounds={res.open_disjuncts}")
    if res.domains:
        parts.append(f"domains={res.domains}")
    if res.reason:
        parts.append(f"reason={res.reason}")
    return "  ".join(parts)


def _batch(instances: str, options: VerifyOptions, timeout: float | None, output: str | None,
           results_dir: str | None, check: bool, quiet: bool) -> None:
    from tqdm import tqdm

    from ..atomic import write_atomic
    from ..formats import load_model
    from ..vnncomp import read_instances, result_text, run_instance
    from .common import write_rows

    rows_in = read_instances(instances)
    nets: dict[Path, object] = {}
    rows: list[dict[str, Any]] = []
    counts = {"sat": 0, "unsat": 0, "timeout": 0, "unknown": 0, "error": 0}
    t_all = time.perf_counter()
    bar = tqdm(rows_in, disable=quiet, unit="instance", leave=False)
    for inst in bar:
        t0 = time.perf_counter()
        opts = VerifyOptions(**{**options.__dict__, "timeout": timeout or inst.timeout})
        row: dict[str, Any] = {"onnx": str(inst.onnx), "vnnlib": str(inst.vnnlib), "timeout": opts.timeout, "result": None,
                     "decided_by": None, "reason": None, "disjuncts": None, "open_after_bounds": None, "seconds": None}
        try:
            if inst.onnx not in nets:  # load each network once (its time is not charged to every instance)
                nets[inst.onnx] = load_model(inst.onnx, format="onnx")
            if check:
                from ..vnnlib import load_vnnlib

                load_vnnlib(inst.vnnlib).check_network(nets[inst.onnx])  # type: ignore[arg-type]
                status, res = "ok", None
            else:
                res = run_instance(inst.onnx, inst.vnnlib, opts, started=t0, net=nets[inst.onnx])  # type: ignore[arg-type]
                status = vnn_status(res)
        except VerifyError as e:
            status, res = "error", None
            row["reason"] = str(e)
        if res is not None:
            row.update({"result": status, "decided_by": res.decided_by, "reason": res.reason,
                        "disjuncts": res.n_disjuncts, "open_after_bounds": res.open_disjuncts,
                        "domains": res.domains})
            if results_dir is not None:
                name = f"{inst.onnx.stem}__{inst.vnnlib.name.removesuffix('.gz').removesuffix('.vnnlib')}.txt"
                Path(results_dir).mkdir(parents=True, exist_ok=True)
                write_atomic(Path(results_dir) / name, result_text(res))
        else:
            row["result"] = status
        row["seconds"] = round(time.perf_counter() - t0, 4)
        counts[status] = counts.get(status, 0) + 1
        rows.append(row)
        bar.set_postfix({k: v for k, v in counts.items() if v})
    bar.close()
    seconds = time.perf_counter() - t_all
    if check:
        click.echo(f"ok: {counts.get('ok', 0)} of {len(rows)} instances load and parse; {counts['error']} errors")
        for r in rows:
            if r["result"] == "error":
                click.echo(f"  {r['onnx']} {r['vnnlib']}: {r['reason']}")
        return
    header = ["instances", "sat", "unsat", "timeout", "unknown", "error", "seconds"]
    vals = [len(rows), counts["sat"], counts["unsat"], counts["timeout"], counts["unknown"], counts["error"], f"{seconds:.1f}"]
    widths = [max(len(h), len(str(v))) for h, v in zip(header, vals)]
    click.echo("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    click.echo("  ".join(str(v).rjust(w) for v, w in zip(vals, widths)))
    if output is not None:
        summary = {"instances": instances, "n": len(rows), **{k: counts[k] for k in counts}, "seconds": seconds,
                   "mode": options.mode}
        write_rows(output, summary, rows)
