"""VNN-COMP style MNIST instances: solved, wrong answers and time for `verify vnnlib`.

Two networks, each exported to ONNX with one Linf robustness property per (test point, eps)
written as VNNLIB, plus instances.csv: the plain MNIST CNN shipped in models/
(mnist_cnn_small_plain.mat) and a small MLP trained here (784-24-16-10, seconds). Every
instance runs with each MIP mode (one MIP per disjunct; one MIP with a selection binary per
disjunct); on the MLP also with the attack off, so that the MIP has to find every counterexample.
The baseline in the same run is `verify certify` on the same points and radii (same time
limit); it is also the reference for wrong answers:

* wrong = `sat` where certify verified, `unsat` where certify found a counterexample (or the
  point is misclassified), or a `sat` whose counterexample onnxruntime does not confirm
  (outside the box, not float32-exact, or no class j != label with y_j >= y_label in float32);
* `unsat` where certify is unknown cannot be cross-checked and is counted separately.

    python benchmarks/vnnlib.py --n 20 --timeout 60 --output benchmarks/vnnlib.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def certify_baseline(net, x: torch.Tensor, y: torch.Tensor, eps_list: list[float], timeout: float) -> tuple[dict, float]:
    from verify.certify import CertifyConfig, certify
    from verify.spec import LpBall

    status: dict[tuple[int, float], str] = {}
    t0 = time.perf_counter()
    for eps in eps_list:
        ball = LpBall.make(x.to(torch.float64), eps, "inf")
        res = certify(net, ball, y, list(range(len(y))), CertifyConfig(p=math.inf, eps=eps, timeout=timeout), progress=False)
        for r in res:
            status[(r.index, eps)] = r.status
    return status, time.perf_counter() - t0


def ort_confirms(onnx_path: Path, prop, x: np.ndarray, label: int) -> bool:
    import onnxruntime as ort

    if not (np.all(x >= prop.lower) and np.all(x <= prop.upper)):
        return False
    x32 = x.astype(np.float32)
    if not np.array_equal(x32.astype(np.float64), x):
        return False
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    out = sess.run(None, {sess.get_inputs()[0].name: x32.reshape(shape)})[0].reshape(-1)
    return bool(np.delete(out, label).max() >= out[label])


def run_mode(folder: Path, instances: list[dict], cert: dict, mode: str, timeout: float, attack_steps: int) -> dict:
    from verify.formats import load_model
    from verify.properties import VerifyOptions
    from verify.vnncomp import run_instance, vnn_status
    from verify.vnnlib import load_vnnlib

    onnx_path = folder / "net.onnx"
    net = load_model(onnx_path)
    rows = []
    t_all = time.perf_counter()
    for inst in instances:
        t0 = time.perf_counter()
        res = run_instance(onnx_path, folder / inst["vnnlib"], VerifyOptions(timeout=timeout, mode=mode,
                                                                             attack_steps=attack_steps), net=net)
        seconds = time.perf_counter() - t0
        c = cert[(inst["index"], inst["eps"])]
        wrong, why, status = False, None, vnn_status(res)
        if status == "sat":
            prop = load_vnnlib(folder / inst["vnnlib"])
            if not ort_confirms(onnx_path, prop, res.counterexample.reshape(-1).numpy(), inst["label"]):
                wrong, why = True, "onnxruntime does not confirm the counterexample"
            elif c == "verified":
                wrong, why = True, "certify verified it"
        elif status == "unsat" and c in ("falsified", "misclassified"):
            wrong, why = True, f"certify: {c}"
        rows.append({**inst, "result": status, "decided_by": res.decided_by, "reason": res.reason,
                     "certify": c, "wrong": wrong, "why_wrong": why, "seconds": seconds,
                     "mip_seconds": res.seconds.get("mip"), "open_after_bounds": res.open_disjuncts,
                     "n_binaries": res.n_binaries})
    wall = time.perf_counter() - t_all
    solved = [r for r in rows if r["result"] in ("sat", "unsat")]
    mip_rows = [r for r in rows if r["mip_seconds"] is not None]
    by_eps = {}
    for eps in sorted({r["eps"] for r in rows}):
        sub = [r for r in rows if r["eps"] == eps]
        by_eps[str(eps)] = {k: sum(r["result"] == k for r in sub) for k in ("sat", "unsat", "timeout", "unknown")}
    return {
        "mode": mode,
        "instances": len(rows),
        "solved": len(solved),
        "sat": sum(r["result"] == "sat" for r in rows),
        "unsat": sum(r["result"] == "unsat" for r in rows),
        "timeout": sum(r["result"] == "timeout" for r in rows),
        "unknown": sum(r["result"] == "unknown" for r in rows),
        "wrong": sum(r["wrong"] for r in rows),
        "unsat_where_certify_unknown": sum(r["result"] == "unsat" and r["certify"] == "unknown" for r in rows),
        "solved_where_certify_unknown": sum(r["result"] in ("sat", "unsat") and r["certify"] == "unknown" for r in rows),
        "wall_seconds": wall,
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "decided_by": {k: sum(r["decided_by"] == k for r in rows) for k in sorted({str(r["decided_by"]) for r in rows})},
        "mip_instances": len(mip_rows),
        "mip_seconds_total": sum(r["mip_seconds"] for r in mip_rows),
        "by_eps": by_eps,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="MNIST test points (the first N)")
    ap.add_argument("--cnn-eps", default="0.005,0.01,0.02", help="Linf radii for the CNN")
    ap.add_argument("--mlp-eps", default="0.02,0.04,0.06", help="Linf radii for the MLP")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per instance (and per certify example)")
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--modes", default="per-disjunct,indicator")
    ap.add_argument("--instances-dir", default=None, help="keep the generated ONNX / VNNLIB / instances.csv here")
    ap.add_argument("--output", default=str(REPO / "benchmarks" / "vnnlib.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from conftest import shared_datasets_dir
    from tests.vnnlib.nets import train_fc, write_instances
    from verify.atomic import write_atomic
    from verify.data import load_dataset
    from verify.formats import load_model, save_model

    shared = shared_datasets_dir()
    ds = load_dataset("mnist", split="test", data_dir=shared)
    x, y = ds.x[: args.n], ds.y[: args.n]
    tmp = None if args.instances_dir else tempfile.TemporaryDirectory()
    root = Path(args.instances_dir or tmp.name)  # type: ignore[union-attr]
    out: dict = {"n_points": args.n, "timeout": args.timeout, "threads": 1, "benchmarks": {}}
    for name in [m for m in args.models.split(",") if m]:
        if name == "cnn":
            net, eps_csv, attack = load_model(REPO / "models" / "mnist_cnn_small_plain.mat"), args.cnn_eps, [50]
        elif name == "mlp":
            net, eps_csv, attack = train_fc(shared), args.mlp_eps, [50, 0]
        else:
            raise SystemExit(f"unknown model {name!r}: cnn or mlp")
        eps_list = [float(e) for e in eps_csv.split(",") if e]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        save_model(net, folder / "net.onnx", format="onnx")
        instances = write_instances(folder, "net.onnx", x, y, list(range(len(y))), eps_list, args.timeout)
        cert, cert_seconds = certify_baseline(net, x, y, eps_list, args.timeout)
        bench: dict = {"network": net.name, "eps": eps_list, "instances": len(instances),
                       "certify": {"seconds": cert_seconds,
                                   "counts": {k: sum(v == k for v in cert.values()) for k in sorted(set(cert.values()))}},
                       "runs": {}}
        out["benchmarks"][name] = bench
        for steps in attack:
            for mode in [m for m in args.modes.split(",") if m]:
                r = run_mode(folder, instances, cert, mode, args.timeout, steps)
                r["attack_steps"] = steps
                r["seconds_ratio_vs_certify"] = r["wall_seconds"] / cert_seconds if cert_seconds else None
                bench["runs"][f"{mode}, attack {steps}"] = r
                print(f"{name} {mode:>13} attack {steps:>2}: {r['solved']}/{r['instances']} solved (sat {r['sat']}, "
                      f"unsat {r['unsat']}, timeout {r['timeout']}, unknown {r['unknown']}), wrong {r['wrong']}, "
                      f"{r['wall_seconds']:.1f} s (certify {cert_seconds:.1f} s); MIP on {r['mip_instances']} "
                      f"instances, {r['mip_seconds_total']:.1f} s", flush=True)
                write_atomic(args.output, json.dumps(out, indent=1) + "\n")  # partial results survive
        print(f"{name} certify: {bench['certify']['counts']} in {cert_seconds:.1f} s", flush=True)
    write_atomic(args.output, json.dumps(out, indent=1) + "\n")
    print(f"-> {args.output}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
