"""Complete verification against alpha-beta-CROWN on a CPU, per VNN-COMP instance (issue #25).

    python benchmarks/peers_complete.py --nets fc_256x2,fc_256x4 --eps 0.02 --n 10 --timeout 30 \\
        --data-dir /work/shared/datasets --abcrown-path /tmp/abcrown --peer-python /tmp/peers/bin/python \\
        --output peers_complete.json
    python benchmarks/peers_complete.py --instances mnistfc/instances.csv --timeout 30 --abcrown-path ...

Instances: either VNN-COMP style ones built here from zoo nets (``--nets``, names and files as in
benchmarks/complete.py; each net exported to ONNX with ``verify.formats.save_model``, one Linf
robustness property per (first-N MNIST test point, eps) written as VNNLIB by the same helper as
benchmarks/vnnlib.py, plus an instances.csv, in a temp dir or ``--instances-dir``), or an
external VNN-COMP ``--instances instances.csv`` (rows onnx,vnnlib,timeout; paths relative to it).

Per instance, interleaved, every tool in a fresh process with one thread and the same time limit:
ours (``verify vnnlib --complete bab`` and ``--complete auto``, ``--threads 1``; ``--ours``) and
alpha-beta-CROWN (``abcrown.py --onnx_path --vnnlib_path --timeout``, device cpu, its beta-CROWN
BaB, no Gurobi: the config ABCROWN_CONFIG below, or ``--abcrown-config``). Recorded per run:
result (sat / unsat / timeout / unknown / error), wall seconds of the process (start-up and imports
included) and the tool's own seconds (from loading the instance: ours ``seconds=``, abCROWN's
``Time:``); ours: decided_by, the branch-and-bound subdomains; abCROWN: from its log, the initial
CROWN and alpha-CROWN (root) lower bounds, the PGD attack's seconds, BaB rounds, domains visited
and BaB seconds, so domains per second can be compared. A sat from one tool and unsat from
another on the same instance is a DISAGREEMENT: printed loudly and listed in the JSON.

Summary per tool: counts, solved, median seconds over its solved instances; per pair (abCROWN
against each of ours): instances only one of them decides, and the median ratio of seconds
(abCROWN / ours, wall and tool) on instances both decide (> 1: ours faster).

alpha-beta-CROWN is never a project dependency: it runs from its own checkout (``--abcrown-path``,
the repository root with its auto_LiRPA submodule checked out) under ``--peer-python``. This script
writes a small launcher into the temp dir that (1) puts import-only stand-ins for ``gurobipy`` and
``torchvision`` first on sys.path (abCROWN imports gurobipy at module level even without MIP, and
onnx2pytorch imports torchvision.ops for NMS/RoI operators that these nets lack; any call fails
loudly), (2) drops onnx2pytorch's ``quirks`` keyword when empty (PyPI's onnx2pytorch 0.4.1 lacks
it; abCROWN's fork has it), (3) sets torch to one thread, then runs abcrown.py unchanged. When
abcrown.py or its imports are missing, the peer is skipped and the JSON says why.

Setting up the peer (what docs/bab.md's numbers used): clone alpha-beta-CROWN, check out its auto_LiRPA
submodule at the commit it pins; make a venv with --system-site-packages (it then sees our torch, CPU
build) and add only what is missing with ``pip install --no-deps`` (pandas, onnxoptimizer, skl2onnx,
scikit-learn, narwhals, threadpoolctl, termcolor, pytz, tzdata, onnx2pytorch==0.4.1), never letting pip
pull another torch. No Gurobi: the config's complete verifier is ``bab``, not ``bab-refine``.
Results and their reading: docs/bab.md, "Against alpha-beta-CROWN on a CPU".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("bab", "auto")
STATUSES = ("sat", "unsat", "timeout", "unknown", "error")

# alpha-beta-CROWN's VNN-COMP 2021 mnistfc settings (exp_configs/vnncomp21/mnistfc.yaml), with
# complete_verifier bab (beta-CROWN BaB) for bab-refine (which needs Gurobi's MIP), device cpu,
# and no input_shape override (that was for the MIP).
ABCROWN_CONFIG = """\
general:
  device: cpu
  complete_verifier: bab
solver:
  batch_size: 4096
  beta-crown:
    iteration: 20
    lr_beta: 0.03
    enable_opt_interm_bounds: False
bab:
  branching:
    candidates: 5
    reduceop: max
attack:
  attack_mode: diversed_PGD
  pgd_restarts: 100
"""

_GUROBI_STUB = '''"""Import-only stand-in for gurobipy (no Gurobi here): any use fails loudly."""


class _Missing:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return _Missing(self._name + "." + attr)

    def __call__(self, *a, **k):
        raise RuntimeError("gurobipy stand-in: %s called, but Gurobi is not installed" % self._name)


def __getattr__(attr):
    return _Missing("gurobipy." + attr)
'''
_TORCHVISION_STUB = '''"""Import-only stand-in for torchvision (onnx2pytorch's NMS/RoI ops, abCROWN's own datasets)."""


class _Fail:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        def _fail(*a, **k):
            raise RuntimeError("torchvision stand-in: %s.%s called" % (self._name, attr))
        return _fail


ops = _Fail("ops")
'''
_LAUNCHER = '''"""Run alpha-beta-CROWN's abcrown.py unchanged on CPU, one thread, without Gurobi (see peers_complete.py)."""
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "stubs"))
cv = os.path.abspath(sys.argv[1])
sys.path.insert(0, cv)
import torch  # noqa: E402
torch.set_num_threads(1)
torch.set_num_interop_threads(1)
if sys.argv[2:3] == ["--probe"]:
    import importlib
    for m in ("yaml", "onnx", "onnxruntime", "onnx2pytorch", "onnxoptimizer", "pandas", "sortedcontainers",
              "skl2onnx.helpers.onnx_helper", "auto_LiRPA"):
        importlib.import_module(m)
    import auto_LiRPA
    print("auto_LiRPA", auto_LiRPA.__version__, "torch", torch.__version__)
    sys.exit(0)
import onnx2pytorch  # noqa: E402
_convert = onnx2pytorch.ConvertModel


def _convert_no_quirks(*a, quirks=None, **k):
    if quirks:
        raise RuntimeError("this onnx2pytorch has no quirks support, asked for %r" % (quirks,))
    return _convert(*a, **k)


onnx2pytorch.ConvertModel = _convert_no_quirks
os.chdir(cv)
sys.argv = [os.path.join(cv, "abcrown.py")] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def write_launcher(folder: Path) -> Path:
    """The launcher and its import stand-ins (module docstring); returns the launcher's path."""
    stubs = folder / "stubs"
    (stubs / "gurobipy").mkdir(parents=True, exist_ok=True)
    (stubs / "torchvision").mkdir(parents=True, exist_ok=True)
    (stubs / "gurobipy" / "__init__.py").write_text(_GUROBI_STUB)
    (stubs / "torchvision" / "__init__.py").write_text(_TORCHVISION_STUB)
    for sub in ("datasets", "transforms"):
        (stubs / "torchvision" / f"{sub}.py").write_text(
            f'"""Import-only stand-in."""\n\n\ndef __getattr__(attr):\n    raise RuntimeError("torchvision stand-in: {sub}." + attr)\n')
    launcher = folder / "run_abcrown.py"
    launcher.write_text(_LAUNCHER)
    return launcher


def abcrown_dir(path: str) -> Path | None:
    """complete_verifier/ of an alpha-beta-CROWN checkout (given its root or that folder), or None."""
    if not path:
        return None
    for cand in (Path(path) / "complete_verifier", Path(path)):
        if (cand / "abcrown.py").is_file():
            return cand.resolve()
    return None


def _env(threads: int = 1, pythonpath: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    return env


def probe_abcrown(python: str, cv: Path | None, launcher: Path) -> tuple[str | None, str | None]:
    """(why it is skipped or None, its versions line)."""
    if cv is None:
        return "no alpha-beta-CROWN checkout (--abcrown-path without complete_verifier/abcrown.py)", None
    try:
        p = subprocess.run([python, str(launcher), str(cv), "--probe"], capture_output=True, text=True,
                           env=_env(), timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {python}: {e}", None
    if p.returncode != 0:
        return "imports fail under --peer-python: " + ((p.stderr or p.stdout).strip().splitlines() or ["?"])[-1], None
    return None, p.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------- running one instance


def run_ours(onnx: Path, vnnlib: Path, engine: str, timeout: float, grace: float) -> dict:
    cmd = [sys.executable, "-m", "verify", "vnnlib", "--onnx", str(onnx), "--vnnlib", str(vnnlib),
           "--timeout", f"{timeout:g}", "--complete", engine, "--threads", "1"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=_env(pythonpath=str(ROOT)), timeout=timeout + grace)
    except subprocess.TimeoutExpired:
        return {"tool": f"ours-{engine}", "result": "timeout", "wall_seconds": time.perf_counter() - t0,
                "note": f"killed after {timeout + grace:.0f} s"}
    wall = time.perf_counter() - t0
    line = next((ln for ln in p.stdout.splitlines() if ln.split("  ")[0] in ("sat", "unsat", "timeout", "unknown")), None)
    row: dict = {"tool": f"ours-{engine}", "wall_seconds": wall}
    if p.returncode != 0 or line is None:
        return {**row, "result": "error", "note": (p.stderr or p.stdout)[-800:]}
    fields = dict(f.split("=", 1) for f in line.split("  ")[1:] if "=" in f)
    row.update({"result": line.split("  ")[0], "seconds": float(fields["seconds"]), "decided_by": fields.get("decided_by"),
                "domains": int(fields["domains"]) if "domains" in fields else None, "reason": fields.get("reason"),
                "open_after_bounds": int(fields["open_after_bounds"]) if "open_after_bounds" in fields else None,
                "line": line})
    return row


_NUM = r"(-?[0-9.]+(?:e-?[0-9]+)?|-?inf|nan)"


def parse_abcrown_log(log: str) -> dict:
    """What abCROWN's log says about the root bounds, the attack and its BaB."""
    out: dict = {}

    def last(pattern: str, conv=float):  # type: ignore[no-untyped-def]
        m = re.findall(pattern, log)
        return conv(m[-1]) if m else None

    def first_list(pattern: str):  # type: ignore[no-untyped-def]
        m = re.search(pattern + r"\s*\[([^\]]*)\]", log)
        return [float(v) for v in m.group(1).split(",") if v.strip()] if m else None

    crown = first_list(r"initial CROWN bounds \(first 10 items\):")
    alpha = first_list(r"initial alpha-crown bounds \(first 10 items\):")
    out["root_crown_lb_min"] = min(crown) if crown else None
    out["root_alpha_crown_lbs"] = alpha
    out["root_alpha_crown_lb_min"] = min(alpha) if alpha else None
    out["global_lower_bound"] = last(r"Global lower bound: " + _NUM)
    out["attack_seconds"] = last(r"Attack finished in " + _NUM + " seconds")
    out["attack_succeeded"] = True if "PGD attack succeeded" in log else (False if "PGD attack failed" in log else None)
    out["bab_rounds"] = last(r"BaB round (\d+)", int)
    out["domains_visited"] = last(r"(\d+) domains visited", int)
    # "Cumulative time" follows a round's "domains visited" except after the last round (timeout): pair them
    pairs = re.findall(r"(\d+) domains visited\n(?:(?!domains visited).)*?Cumulative time: " + _NUM, log, re.S)
    out["bab_seconds"] = float(pairs[-1][1]) if pairs else None
    out["domains_timed"] = int(pairs[-1][0]) if pairs else None
    out["worst_lb_last"] = last(r"Current \(lb-rhs\): " + _NUM)
    out["result_line"] = last(r"Result: (\w+)", str)
    out["time"] = last(r"\nTime: " + _NUM)
    if out["domains_timed"] and out["bab_seconds"]:
        out["domains_per_second"] = out["domains_timed"] / out["bab_seconds"]
    return out


def run_abcrown(python: str, launcher: Path, cv: Path, config: Path, onnx: Path, vnnlib: Path, timeout: float,
                grace: float, work: Path, log_dir: Path | None, extra: list[str] = []) -> dict:
    res_file = work / "abcrown_result.txt"
    res_file.unlink(missing_ok=True)
    cmd = [python, str(launcher), str(cv), "--config", str(config), "--onnx_path", str(onnx.resolve()),
           "--vnnlib_path", str(vnnlib.resolve()), "--timeout", f"{timeout:g}", "--results_file", str(res_file), *extra]
    t0 = time.perf_counter()
    row: dict = {"tool": "abcrown"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout + grace)
        log, rc = p.stdout + "\n" + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        log = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, row["note"] = None, f"killed after {timeout + grace:.0f} s"
    row["wall_seconds"] = time.perf_counter() - t0
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        # the net's folder too: built instances share the name net.onnx
        (log_dir / f"abcrown__{onnx.parent.name}__{onnx.stem}__{vnnlib.name}.log").write_text(log)
    row.update(parse_abcrown_log(log))
    text = res_file.read_text().strip() if res_file.is_file() else ""
    result = text.split("\n", 1)[0].strip() if text else None
    if result in ("sat", "unsat", "timeout", "unknown"):
        row["result"] = result
    elif rc is None:
        row["result"] = "timeout"
    else:
        row["result"] = "error"
        row["note"] = log[-800:]
    row["seconds"] = row.pop("time", None)
    return row


def our_root_bounds(onnx: Path, vnnlib: Path) -> dict:
    """Untimed, in this process: our CROWN and alpha-CROWN (20 steps) root lower bounds of each disjunct's
    violation (``verify.properties.property_bounds``'s rows; for a robustness property, y_label - y_j, the
    same quantity as abCROWN's "initial CROWN / alpha-crown bounds"). > 0: that disjunct is empty."""
    import numpy as np
    import torch

    from verify.bounds import certify_rows
    from verify.vnncomp import load_instance

    net, prop = load_instance(onnx, vnnlib)
    box = prop.box(net)
    dj = [x for x in prop.disjuncts if len(x.d)]
    if not dj:
        return {}
    C = torch.as_tensor(np.concatenate([x.C for x in dj]), dtype=torch.float64).unsqueeze(0)
    d = torch.as_tensor(np.concatenate([x.d for x in dj]), dtype=torch.float64).unsqueeze(0)
    out: dict = {}
    for method in ("crown", "alpha-crown"):
        with torch.no_grad() if method == "crown" else torch.enable_grad():
            lower = certify_rows(net, box, C, d, method=method, float64=True).lower[0].detach().numpy()  # type: ignore[arg-type]
        per, pos = [], 0
        for x in dj:
            per.append(float(lower[pos:pos + len(x.d)].max()))
            pos += len(x.d)
        key = method.replace("-", "_")
        out[f"root_{key}_lbs"], out[f"root_{key}_lb_min"] = per, min(per)
    return out


# ---------------------------------------------------------------- instances


def build_instances(nets: list[str], eps_list: list[float], n: int, data_dir: str, timeout: float, root: Path) -> list[dict]:
    """Zoo nets -> ONNX + VNNLIB + instances.csv under root/<net>/ (benchmarks/vnnlib.py's writer)."""
    import importlib.util

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.vnnlib.nets import write_instances  # benchmarks/vnnlib.py's writer

    spec = importlib.util.spec_from_file_location("bench_complete", ROOT / "benchmarks" / "complete.py")
    assert spec is not None and spec.loader is not None
    bench_complete = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_complete)
    NETS = bench_complete.NETS  # name -> (model file under models/, radii, n)

    from verify.data import load_dataset
    from verify.formats import load_model, save_model

    ds = load_dataset("mnist", split="test", data_dir=data_dir)
    x, y = ds.x[:n], ds.y[:n]
    out = []
    for name in nets:
        if name not in NETS:
            raise SystemExit(f"unknown net {name!r}: use {', '.join(NETS)}")
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        net = load_model(ROOT / "models" / NETS[name][0])
        save_model(net, folder / "net.onnx", format="onnx")
        for inst in write_instances(folder, "net.onnx", x, y, list(range(n)), eps_list, timeout):
            out.append({"id": f"{name}/{inst['vnnlib']}", "net": name, "model": f"models/{NETS[name][0]}",
                        "onnx": folder / "net.onnx", "vnnlib": folder / inst["vnnlib"], "index": inst["index"],
                        "eps": inst["eps"], "label": inst["label"]})
    return out


def read_csv_instances(path: str) -> list[dict]:
    from verify.vnncomp import read_instances

    rows = read_instances(path)
    ids = [f"{i.onnx.name}/{i.vnnlib.name}" for i in rows]
    if len(set(ids)) < len(ids):  # the same file names in several folders: name the folders too
        ids = [f"{i.onnx.parent.name}/{i.onnx.name}/{i.vnnlib.parent.name}/{i.vnnlib.name}" for i in rows]
    return [{"id": k, "onnx": i.onnx, "vnnlib": i.vnnlib, "csv_timeout": i.timeout} for k, i in zip(ids, rows)]


# ---------------------------------------------------------------- summary


def summarise(rows: list[dict], tools: list[str]) -> dict:
    solved = {t: {r["id"] for r in rows if r["runs"].get(t, {}).get("result") in ("sat", "unsat")} for t in tools}
    out: dict = {"tools": {}, "pairs": {}}
    for t in tools:
        runs = [r["runs"][t] for r in rows if t in r["runs"]]
        dec = [x for x in runs if x["result"] in ("sat", "unsat")]
        s: dict = {k: sum(x["result"] == k for x in runs) for k in STATUSES}
        s.update({"instances": len(runs), "solved": len(dec),
                  "median_wall_seconds_solved": statistics.median(x["wall_seconds"] for x in dec) if dec else None,
                  "median_seconds_solved": statistics.median(x["seconds"] for x in dec if x.get("seconds") is not None)
                  if any(x.get("seconds") is not None for x in dec) else None})
        if t.startswith("ours"):
            s["decided_by"] = {}
            for x in runs:
                k = str(x.get("decided_by"))
                s["decided_by"][k] = s["decided_by"].get(k, 0) + 1
            dps = [x["domains"] / x["seconds"] for x in runs if x.get("domains") and x.get("seconds")]
            dom = [x["domains"] for x in runs if x.get("domains")]
            s["median_domains"] = statistics.median(dom) if dom else None
        else:
            dps = [x["domains_per_second"] for x in runs if x.get("domains_per_second")]
            vis = [x["domains_visited"] for x in runs if x.get("domains_visited")]
            s["median_domains"] = statistics.median(vis) if vis else None
        s["median_domains_per_second"] = statistics.median(dps) if dps else None
        out["tools"][t] = s
    peer = [t for t in tools if not t.startswith("ours")]
    for p in peer:
        for o in [t for t in tools if t.startswith("ours")]:
            both = sorted(solved[p] & solved[o])
            by_id = {r["id"]: r["runs"] for r in rows}

            def ratio(key: str) -> float | None:
                v = [by_id[i][p][key] / by_id[i][o][key] for i in both
                     if by_id[i][p].get(key) and by_id[i][o].get(key)]
                return statistics.median(v) if v else None

            out["pairs"][f"{p} vs {o}"] = {"both_solve": len(both), f"only_{p}": sorted(solved[p] - solved[o]),
                                           f"only_{o}": sorted(solved[o] - solved[p]),
                                           "median_wall_ratio_peer_over_ours": ratio("wall_seconds"),
                                           "median_tool_seconds_ratio_peer_over_ours": ratio("seconds")}
    out["disagreements"] = [r["id"] for r in rows if r.get("disagreement")]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default=None, help="an external VNN-COMP instances.csv (instead of --nets)")
    ap.add_argument("--nets", default="fc_256x2", help="zoo nets (benchmarks/complete.py's names), comma-separated")
    ap.add_argument("--eps", default="0.02", help="Linf radii, comma-separated (every net)")
    ap.add_argument("--n", type=int, default=10, help="the first N MNIST test points")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"), help="where MNIST is (verify.data)")
    ap.add_argument("--instances-dir", default=None, help="keep the built ONNX / VNNLIB / instances.csv here")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per instance, every tool (the CSV's ignored)")
    ap.add_argument("--grace", type=float, default=60.0, help="extra seconds before a process is killed")
    ap.add_argument("--ours", default=",".join(OURS), help="our --complete engines, comma-separated (empty: none)")
    ap.add_argument("--abcrown-path", default="", help="alpha-beta-CROWN checkout (root or complete_verifier/)")
    ap.add_argument("--peer-python", default=sys.executable, help="the Python with abCROWN's dependencies")
    ap.add_argument("--abcrown-config", default=None, help="abCROWN YAML (default: ABCROWN_CONFIG in this file)")
    ap.add_argument("--abcrown-args", default="", help="more abcrown.py options, e.g. '--pgd_restarts 3 --pgd_steps 50' "
                    "(ours' attack budget; the config's 100 restarts take 6-9 s on one core)")
    ap.add_argument("--log-dir", default=None, help="keep abCROWN's full logs here")
    ap.add_argument("--no-root-bounds", dest="root_bounds", action="store_false",
                    help="skip our untimed CROWN / alpha-CROWN root bounds per instance")
    ap.add_argument("--limit", type=int, default=None, help="only the first K instances")
    ap.add_argument("--output", default="peers_complete.json", help="the JSON (rewritten after every instance)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)

    tmp = tempfile.TemporaryDirectory(prefix="peers_complete_")
    work = Path(tmp.name)
    launcher = write_launcher(work / "abcrown_launcher")
    cv = abcrown_dir(a.abcrown_path)
    skipped, versions = probe_abcrown(a.peer_python, cv, launcher)
    config = Path(a.abcrown_config) if a.abcrown_config else work / "abcrown_config.yaml"
    if not a.abcrown_config:
        config.write_text(ABCROWN_CONFIG)
    commit = None
    if cv is not None:
        g = subprocess.run(["git", "-C", str(cv), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = g.stdout.strip() or None
    ours = [e for e in a.ours.split(",") if e]
    tools = [f"ours-{e}" for e in ours] + ([] if skipped else ["abcrown"])
    if a.instances:
        instances = read_csv_instances(a.instances)
        source: dict = {"instances_csv": a.instances}
    else:
        root = Path(a.instances_dir) if a.instances_dir else work / "instances"
        nets, eps = [v for v in a.nets.split(",") if v], [float(v) for v in a.eps.split(",") if v]
        instances = build_instances(nets, eps, a.n, a.data_dir, a.timeout, root)
        source = {"nets": nets, "eps": eps, "n": a.n}
    if a.limit is not None:
        instances = instances[: a.limit]
    ours_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    out: dict = {"benchmark": "peers_complete", **source, "timeout": a.timeout, "threads": 1, "python": platform.python_version(),
                 "cpu_count": os.cpu_count(), "ours_commit": ours_commit, "ours_engines": ours,
                 "abcrown": {"skipped": skipped, "path": str(cv) if cv else None, "commit": commit, "versions": versions,
                             "config": Path(config).read_text(), "extra_args": a.abcrown_args, "peer_python": a.peer_python,
                             "launcher": "stand-ins for gurobipy/torchvision, onnx2pytorch without quirks, 1 thread"},
                 "rows": []}
    if skipped:
        print(f"alpha-beta-CROWN skipped: {skipped}", flush=True)
    for k, inst in enumerate(instances):
        row = {k2: (str(v) if isinstance(v, Path) else v) for k2, v in inst.items()}
        row["runs"] = {}
        if a.root_bounds:
            try:
                row["ours_root"] = our_root_bounds(inst["onnx"], inst["vnnlib"])
            except Exception as e:  # informational only: never stop the benchmark
                row["ours_root"] = {"error": f"{type(e).__name__}: {e}"}
        for e in ours:
            row["runs"][f"ours-{e}"] = run_ours(inst["onnx"], inst["vnnlib"], e, a.timeout, a.grace)
        if not skipped:
            assert cv is not None
            row["runs"]["abcrown"] = run_abcrown(a.peer_python, launcher, cv, config, inst["onnx"], inst["vnnlib"],
                                                 a.timeout, a.grace, work, Path(a.log_dir) if a.log_dir else None,
                                                 a.abcrown_args.split())
        results = {t: r["result"] for t, r in row["runs"].items()}
        row["disagreement"] = "sat" in results.values() and "unsat" in results.values()
        out["rows"].append(row)
        desc = "  ".join(f"{t}={r['result']} {r.get('seconds') or r['wall_seconds']:.1f}s"
                         + (f" dom={r['domains']}" if r.get("domains") else "")
                         + (f" dom={r['domains_visited']}" if r.get("domains_visited") else "")
                         for t, r in row["runs"].items())
        print(f"[{k + 1}/{len(instances)}] {row['id']}: {desc}", flush=True)
        if row["disagreement"]:
            print(f"!!! DISAGREEMENT on {row['id']}: {results}", file=sys.stderr, flush=True)
        out["summary"] = summarise(out["rows"], tools)
        Path(a.output).write_text(json.dumps(out, indent=1) + "\n")  # partial results survive a kill
    out["summary"] = summarise(out["rows"], tools)
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"], indent=1), flush=True)
    if out["summary"]["disagreements"]:
        print(f"!!! DISAGREEMENTS (sat vs unsat): {out['summary']['disagreements']}", file=sys.stderr, flush=True)
    tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
