"""Clean, PGD and certified accuracy of small Fashion-MNIST models trained with each robustness method.

Every model is trained through the real trainer on the same seeded subset of the Fashion-MNIST
training set for a few epochs (defaults below: a demonstration scale that runs in about a quarter
of an hour on one core, NOT the papers' budgets), then evaluated on the first test points:

* clean accuracy on ``--n-clean`` points;
* PGD accuracy: Linf PGD at ``--eps`` (margin loss, ``--pgd-steps`` steps, one restart) on
  ``--n-pgd`` points; every success is a float64-confirmed counterexample;
* certified accuracy where the model is a piecewise-linear Network: ``verify.certify`` (PGD,
  then ibp / kw / crown bounds, then the exact MIP with a ``--timeout`` per example) at
  ``--eps`` and at the smaller ``--eps-small`` on ``--n-cert`` points; the fraction verified
  is a lower bound on the robust accuracy (unknowns count as not verified), the PGD+MIP
  accuracy an upper bound.

The FPD is not piecewise linear: it is attacked through its exported pre-tanh program and has
no certified column. Train seconds are the epoch loops' own clock, with the ratio to plain
training in the same run.

    OMP_NUM_THREADS=1 python benchmarks/methods_fmnist.py --data-dir ../shared/datasets --output bench_methods.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig  # noqa: E402
from training.trainer import TrainData, train  # noqa: E402

CNN = "kw_small"
SSP = {"arch": "ssp_mnist", "blocks": 2, "width": 8}
SSP_AT = {"method": "at", "eps": 0.1, "ae_frac": 1.0, "pgd_steps": 10, "lr": 5e-3}  # Kim et al. train on PGD points only
# name -> TrainConfig fields (dataset, epochs, subset and seed are added)
RUNS: dict[str, dict[str, Any]] = {
    "plain": {"arch": CNN, "method": "plain"},
    "at": {"arch": CNN, "method": "at", "eps": 0.1, "ae_frac": 0.5, "pgd_steps": 10},
    "norm-decay": {"arch": CNN, "method": "norm-decay", "p": "inf", "norm_decay_lambda": 1e-3},
    "norm-decay+bnproj (ssp res)": {**SSP, "block": "res", "method": "norm-decay", "p": "inf",
                                    "norm_decay_lambda": 1e-3, "bn_max_norm": 2.0, "lr": 5e-3},
    "lipschitz": {"arch": CNN, "method": "lipschitz", "lipschitz_lambda": 0.5},
    "j1": {"arch": CNN, "method": "j1", "eps": 1.0},
    "j2": {"arch": CNN, "method": "j2", "eps": 1.0},
    "jinf": {"arch": CNN, "method": "jinf", "eps": 1.0},
    "ssp res + at": {**SSP, "block": "res", **SSP_AT},
    "ssp ssp2 + at": {**SSP, "block": "ssp2", **SSP_AT},
    "ssp ssp3 + at": {**SSP, "block": "ssp3", **SSP_AT},
    "ssp ark + at": {**SSP, "block": "ark", **SSP_AT},
    "ssp midrk2 + at": {**SSP, "block": "midrk2", **SSP_AT},
    "fpd": {"arch": "fpd_small", "width": 8, "method": "fpd", "eps": 0.1, "fpd_threshold": 0.02, "lr": 5e-3},
}


def evaluate(model: Any, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    from verify.attacks import pgd_attack
    from verify.network import Network
    from verify.spec import LpBall

    out: dict[str, Any] = {}
    out["clean_acc"] = float((model.predict(x[: args.n_clean]) == y[: args.n_clean]).float().mean())
    xp, yp = x[: args.n_pgd], y[: args.n_pgd]
    t = time.perf_counter()
    res = pgd_attack(model, LpBall.make(xp, args.eps, "inf"), yp, steps=args.pgd_steps, seed=0)
    out["pgd_acc"] = float((~res.success).float().mean())
    out["pgd_seconds"] = time.perf_counter() - t
    if not isinstance(model, Network):
        out["certified_acc"] = None
        out["note"] = "not piecewise linear (Gram denoising): attack on the pre-tanh logits only"
        return out
    from verify.certify import CertifyConfig, certify

    for key, eps in (("", args.eps), ("_small_eps", args.eps_small)):
        xc, yc = x[: args.n_cert], y[: args.n_cert]
        t = time.perf_counter()
        results = certify(model, LpBall.make(xc, eps, "inf"), yc, list(range(args.n_cert)),
                          CertifyConfig(p=math.inf, eps=eps, timeout=args.timeout, attack_steps=args.pgd_steps),
                          progress=False)
        n = len(results)
        out[f"certified_acc{key}"] = sum(r.status == "verified" for r in results) / n
        out[f"pgd_mip_acc{key}"] = 1.0 - sum(r.status in ("misclassified", "falsified") for r in results) / n
        out[f"unknown{key}"] = sum(r.status == "unknown" for r in results)
        out[f"certify_seconds{key}"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-subset", type=int, default=4000, help="training points (a seeded random subset)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eps", type=float, default=0.1, help="Linf radius of the PGD and certified columns")
    ap.add_argument("--eps-small", type=float, default=0.02, help="a second, smaller radius for certification")
    ap.add_argument("--n-clean", type=int, default=2000)
    ap.add_argument("--n-pgd", type=int, default=500)
    ap.add_argument("--n-cert", type=int, default=20)
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=2.0, help="MIP seconds per example")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated names of RUNS")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=None, help="JSON file (default: stdout)")
    args = ap.parse_args()
    import warnings

    from training.fpd import export_classifier
    from verify.data import load_dataset
    from verify.exported import load_exported

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = load_dataset("fmnist", split="train", data_dir=args.data_dir)
        te = load_dataset("fmnist", split="test", data_dir=args.data_dir)
    keep = torch.randperm(len(tr.y), generator=torch.Generator().manual_seed(args.seed))[: args.train_subset]
    data = TrainData(tr.x[keep], tr.y[keep], None, None, tr.name)
    rows: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs.split(","):
            spec = dict(RUNS[name])
            cfg = TrainConfig(dataset="fmnist", epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                              lr_schedule="step", eval_test=False, **spec)
            res = train(cfg, run_dir=Path(tmp) / name.replace(" ", "_"), data=data, progress=False)
            if res.network is not None:
                model: Any = res.network
                size = {"relus": model.num_relus(), "params": model.num_params()}
            else:
                path = Path(tmp) / "fpd.pt2"
                export_classifier(res.module, path, input_shape=res.input_shape)
                model = load_exported(path)
                size = {"params": sum(p.numel() for p in res.module.parameters())}
            row: dict[str, Any] = {"config": {k: v for k, v in spec.items()}, **size,
                                   "train_seconds": sum(h["seconds"] for h in res.history),
                                   "last_epoch": {k: v for k, v in res.history[-1].items() if k != "seconds"}}
            row.update(evaluate(model, te.x, te.y, args))
            rows[name] = row
            print(f"{name:30s} clean {row['clean_acc']:.3f}  pgd {row['pgd_acc']:.3f}  "
                  f"cert {row.get('certified_acc')}  cert@{args.eps_small:g} {row.get('certified_acc_small_eps')}  "
                  f"train {row['train_seconds']:.0f}s", file=sys.stderr, flush=True)
    if "plain" in rows:
        base = rows["plain"]["train_seconds"]
        for r in rows.values():
            r["train_seconds_ratio_vs_plain"] = r["train_seconds"] / base if base > 0 else None
    out = {"benchmark": "robustness methods on small Fashion-MNIST models (demonstration scale)",
           "settings": {k: v for k, v in vars(args).items() if k not in ("output", "data_dir")},
           "note": "certified_acc: fraction verified (sound lower bound on robust accuracy); pgd_mip_acc: "
                   "1 - (misclassified + falsified) fraction (upper bound); unknowns are MIP timeouts",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "total_seconds": time.perf_counter() - t_all, "results": rows}
    text = json.dumps(out, indent=1) + "\n"
    if args.output:
        from verify.atomic import write_atomic

        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
