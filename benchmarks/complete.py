"""Complete verification side by side: the MIP, branch and bound, and `auto`, per instance (issue #25).

For each network and Linf radius, `verify.certify.certify` decides the first N MNIST test points
once per complete engine (``CertifyConfig(complete=ENGINE)``: ``mip``, ``bab``, ``auto``), with
the same per-instance time limit, in the same run. The networks (models/, see MODELS.md):

* ``fc_256x2``, ``fc_256x4``, ``fc_256x6``: 784-256xK-10, plain training (VNN-COMP's "mnistfc"
  family), at eps 0.02, 0.03, 0.05, first 30 points;
* ``fc_500``: 784-500-10, certified (KW) training, the issue's "SDP-trained" net, at eps 0.1;
* ``cnn_small_plain``: the zoo's plain MNIST CNN (``cnn_lenet_small``) at eps 0.1, first 200.

Per (net, eps, engine): solved (verified + falsified, misclassified included), unknown, the
median seconds of the decided instances, and how many were decided by the complete stage (the
rest fall to the clean check, PGD or the bounds, which every engine shares). Per (net, eps),
over the engines that ran: instances decided by any engine, auto's share of them, the median
per-instance time ratio auto / mip on instances both decide (also on those only the complete
stage decided), the ratio of instances decided by bab or auto to those decided by mip, and any
disagreements (verified by one engine, falsified by another: a soundness bug).

Engine support is detected, not assumed: without a ``complete`` field in CertifyConfig only
``mip`` runs (the default pipeline's complete stage is the MIP); an engine that CertifyConfig
or certify rejects with a SpecError is skipped with a note in the JSON.

    python benchmarks/complete.py --engines mip --n 10 --timeout 20 --nets fc_256x2,fc_256x4

Baseline, the MIP alone (HiGHS, one thread; 2 shared CPU cores, before ``complete`` landed; the
command above, 755 s wall): solved / unknown of the first 10 points, eps 0.02 / 0.03 / 0.05 --
fc_256x2 8/2, 3/7, 5/5; fc_256x4 1/9, 2/8, 6/4. The MIP decided none of the 35 instances that
reached it (224-461 binaries after tightening on fc_256x2, 569-984 on fc_256x4): every decided
instance was decided by the clean check, PGD or the bounds. This is what bab / auto must beat.
    python benchmarks/complete.py --quick --nets fc_256x2 --eps 0.02   # smoke run: n 5, timeout 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (model file under models/, default radii, default number of test points)
NETS: dict[str, tuple[str, tuple[float, ...], int]] = {
    "fc_256x2": ("mnist_fc_256x2_plain.mat", (0.02, 0.03, 0.05), 30),
    "fc_256x4": ("mnist_fc_256x4_plain.mat", (0.02, 0.03, 0.05), 30),
    "fc_256x6": ("mnist_fc_256x6_plain.mat", (0.02, 0.03, 0.05), 30),
    "fc_500": ("mnist_fc_500_kw.mat", (0.1,), 30),
    "cnn_small_plain": ("mnist_cnn_small_plain.mat", (0.1,), 200),
}
ENGINES = ("mip", "bab", "auto")
EARLY_STAGES = ("clean", "pgd", "ibp", "kw", "crown", "alpha-crown", "lp")  # shared by every engine
DECIDED = ("verified", "falsified", "misclassified")


def engine_support(engine: str) -> tuple[bool, str | None]:
    """Whether this checkout's CertifyConfig takes ``complete=engine``; a note when it does not (or how it runs)."""
    from verify.certify import CertifyConfig
    from verify.errors import SpecError

    if "complete" not in {f.name for f in dataclasses.fields(CertifyConfig)}:
        if engine == "mip":
            return True, "CertifyConfig has no 'complete' field: the default pipeline, whose complete stage is the MIP"
        return False, "CertifyConfig has no 'complete' field: engine not available in this checkout"
    try:
        CertifyConfig(p=math.inf, eps=0.1, timeout=1.0, complete=engine)  # type: ignore[call-arg]
    except SpecError as e:
        return False, f"SpecError: {e}"
    except TypeError as e:  # a field of another type
        return False, f"TypeError: {e}"
    return True, None


def make_config(engine: str, eps: float, timeout: float, has_field: bool):
    from verify.certify import CertifyConfig

    kw = {"complete": engine} if has_field else {}
    return CertifyConfig(p=math.inf, eps=eps, timeout=timeout, **kw)


def run_engine(net, x: torch.Tensor, y: torch.Tensor, eps: float, timeout: float, engine: str, has_field: bool) -> dict:
    from verify.certify import certify, summarize
    from verify.errors import SpecError
    from verify.spec import LpBall

    ball = LpBall.make(x.to(torch.float64), eps, "inf")
    t0 = time.perf_counter()
    try:
        res = certify(net, ball, y, list(range(len(y))), make_config(engine, eps, timeout, has_field), progress=False)
    except SpecError as e:  # the engine is refused only when it runs (e.g. it does not take this network)
        return {"skipped": f"SpecError: {e}"}
    except Exception as e:  # report, do not stop the benchmark (the other engines and nets still run)
        return {"error": f"{type(e).__name__}: {e}"}
    wall = time.perf_counter() - t0
    rows = [{"index": r.index, "status": r.status, "decided_by": r.decided_by, "seconds": sum(r.seconds.values()),
             "n_binaries": r.n_binaries, "solver_status": r.solver_status, "margin_lb": r.row()["margin_lb"],
             "margin_ub": r.row()["margin_ub"], "domains": getattr(r, "domains", None),
             "stage_seconds": {k: round(v, 4) for k, v in r.seconds.items()}} for r in res]
    counts = {s: sum(r["status"] == s for r in rows) for s in (*DECIDED, "unknown")}
    decided = [r["seconds"] for r in rows if r["status"] in DECIDED]
    complete_rows = [r for r in rows if r["decided_by"] not in EARLY_STAGES]  # reached the complete stage
    complete_decided = [r["seconds"] for r in complete_rows if r["status"] in DECIDED]
    by: dict[str, int] = {}
    for r in rows:
        by[r["decided_by"] or "none"] = by.get(r["decided_by"] or "none", 0) + 1
    return {
        "n": len(rows),
        "solved": counts["verified"] + counts["falsified"] + counts["misclassified"],
        "unknown": counts["unknown"],
        **counts,
        "median_seconds_decided": statistics.median(decided) if decided else None,
        "reached_complete_stage": len(complete_rows),
        "decided_by_complete_stage": len(complete_decided),
        "median_seconds_complete_decided": statistics.median(complete_decided) if complete_decided else None,
        "decided_by": by,
        "wall_seconds": wall,
        "summary": summarize(res).as_dict(),
        "examples": rows,
    }


def _median_ratio(a: dict[int, dict], b: dict[int, dict], idx: list[int]) -> float | None:
    r = [a[i]["seconds"] / b[i]["seconds"] for i in idx if b[i]["seconds"] > 0]
    return statistics.median(r) if r else None


def pairwise(runs: dict[str, dict]) -> dict:
    """Cross-engine numbers for one (net, eps) over the engines that ran."""
    ran = {e: {r["index"]: r for r in v["examples"]} for e, v in runs.items() if "examples" in v}
    if not ran:
        return {"engines": []}
    idx = sorted(set.intersection(*(set(v) for v in ran.values())))
    dec = {e: {i for i in idx if v[i]["status"] in DECIDED} for e, v in ran.items()}
    any_dec = set.union(*dec.values())
    out: dict = {"engines": sorted(ran), "instances": len(idx), "decided_by_any": len(any_dec),
                 "decided_by_none": len(idx) - len(any_dec)}
    # a point verified by one engine and falsified (or misclassified) by another: one of them is unsound
    statuses = {i: {v[i]["status"] for v in ran.values()} for i in idx}
    out["disagreements"] = [i for i in idx if "verified" in statuses[i] and statuses[i] & {"falsified", "misclassified"}]
    if "auto" in ran:
        out["auto_share_of_decided_by_any"] = len(dec["auto"]) / len(any_dec) if any_dec else None
    if "auto" in ran and "mip" in ran:
        both = sorted(dec["auto"] & dec["mip"])
        hard = [i for i in both if ran["mip"][i]["decided_by"] not in EARLY_STAGES
                and ran["auto"][i]["decided_by"] not in EARLY_STAGES]
        out["both_auto_and_mip_decide"] = len(both)
        out["median_time_ratio_auto_over_mip"] = _median_ratio(ran["auto"], ran["mip"], both)
        out["both_decide_in_complete_stage"] = len(hard)
        out["median_time_ratio_auto_over_mip_complete_stage"] = _median_ratio(ran["auto"], ran["mip"], hard)
    if "mip" in ran and ({"bab", "auto"} & set(ran)):
        bab_or_auto = set.union(*(dec[e] for e in ("bab", "auto") if e in ran))
        out["decided_by_bab_or_auto"] = len(bab_or_auto)
        out["decided_by_mip"] = len(dec["mip"])
        out["ratio_bab_or_auto_vs_mip"] = len(bab_or_auto) / len(dec["mip"]) if dec["mip"] else None
    return out


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _names(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, of {', '.join(NETS)}")
    ap.add_argument("--eps", default=None, help="comma-separated radii for every net (default: each net's own)")
    ap.add_argument("--n", type=int, default=None, help="first N test points (default: 30, the CNN 200)")
    ap.add_argument("--timeout", type=float, default=None, help="per-instance time limit of the complete engine (s; default 60)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated complete engines")
    ap.add_argument("--quick", action="store_true", help="smoke run: --n 5 --timeout 10 (unless given)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "complete.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 5 if args.n is None else args.n
        args.timeout = 10.0 if args.timeout is None else args.timeout
    args.timeout = 60.0 if args.timeout is None else args.timeout
    nets = _names(args.nets)
    bad = [n for n in nets if n not in NETS]
    if bad:
        ap.error(f"unknown net {bad[0]!r}: use {', '.join(NETS)}")
    torch.set_num_threads(1)  # HiGHS runs on one thread too (CertifyConfig.threads)
    from verify.certify import CertifyConfig
    from verify.data import load_dataset
    from verify.formats import load_model

    has_field = "complete" in {f.name for f in dataclasses.fields(CertifyConfig)}
    engines: dict[str, dict] = {}
    for e in _names(args.engines):
        ok, note = engine_support(e)
        engines[e] = {"supported": ok, **({"note": note} if note else {})}
    usable = [e for e, v in engines.items() if v["supported"]]
    ds = load_dataset("mnist", split="test", data_dir=args.data_dir)
    out: dict = {"timeout": args.timeout, "n": args.n, "quick": args.quick, "torch_threads": 1, "mip_threads": 1,
                 "certify_config_has_complete": has_field, "engines": engines, "nets": {}}
    t_all = time.perf_counter()
    for name in nets:
        file, radii, n_default = NETS[name]
        n = args.n if args.n is not None else n_default
        net = load_model(REPO / "models" / file)
        x, y = ds.x[:n], ds.y[:n]
        entry: dict = {"model": f"models/{file}", "n": n, "eps": {}}
        out["nets"][name] = entry
        for eps in (_floats(args.eps) if args.eps else radii):
            runs: dict[str, dict] = {}
            for e in usable:
                runs[e] = run_engine(net, x, y, eps, args.timeout, e, has_field)
                if "skipped" in runs[e] or "error" in runs[e]:
                    what = "skipped" if "skipped" in runs[e] else "error"
                    engines[e].setdefault(f"{what}_at", []).append(f"{name} eps {eps}")
                    print(f"{name} eps {eps} {e}: {what} ({runs[e][what]})", flush=True)
                else:
                    r = runs[e]
                    print(f"{name} eps {eps} {e}: solved {r['solved']}/{r['n']} unknown {r['unknown']} "
                          f"(complete stage decided {r['decided_by_complete_stage']} of {r['reached_complete_stage']}), "
                          f"median decided {r['median_seconds_decided']}, wall {r['wall_seconds']:.1f} s", flush=True)
                entry["eps"][str(eps)] = {"engines": runs, "pairwise": pairwise(runs)}
                Path(args.out).write_text(json.dumps(out, indent=1) + "\n")  # after each run: a killed run keeps it
    out["wall_seconds"] = time.perf_counter() - t_all
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
