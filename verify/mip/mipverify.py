"""The robustness query on MIPVerify.jl (Tjeng, Xiao, Tedrake 2019), through juliacall.

The network is exported once per Network object to a temporary ``.mat`` in MIPVerify's layout
(``verify.formats`` ``mat-mipverify``); ``julia/src/RELUVerifyMIP.jl`` rebuilds it from
MIPVerify's own layers and runs ``find_adversarial_example`` with the Linf box of radius eps
(which contains the L1 and L2 balls):

* Linf: objective ``worst`` (maximise max_j f_j - f_y subject to it being >= 0);
* L1 / L2: objective ``closest`` (minimise the distance to an adversarial point in the box).

Verdicts, decided here in Python:

* ``verified`` only when the termination status is exactly ``INFEASIBLE``, or (closest
  objective) when the proven lower bound on the distance exceeds eps (eps^2 for L2, whose
  objective MIPVerify squares) by a safety margin;
* ``falsified`` only when a solver point, projected into the set, is misclassified in a float64
  forward pass (:func:`verify.query.confirm_point`); otherwise ``unknown("numerics")``;
* ``TIME_LIMIT`` and anything else: ``unknown`` with the reason.

juliacall is imported lazily, on the first solve: importing this module never starts Julia.
Note: juliacall warns that importing it after torch can crash (pytorch issue 78829); relu-verify
always has torch loaded, so if that happens run the Julia side alone (julia/README.md).
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import ModelError, SolverUnavailableError, SpecError
from ..network import Network
from ..query import Query, confirm_point, outputs_f64
from ..results import Status, Verdict
from ..spec import LpBall, margins_f64
from . import VERIFY_TOL

Objective = Literal["auto", "worst", "closest"]
Tightening = Literal["interval_arithmetic", "lp", "mip"]
Optimizer = Literal["highs", "gurobi"]

REPO = Path(__file__).resolve().parents[2]
# The distance bound must beat eps by this much (relative and absolute) to certify, so that
# solver tolerances (1e-6 and below in HiGHS and Gurobi) cannot turn a near-tie into a proof.
DISTANCE_SLACK = 1e-6

SETUP_HINT = (
    "install Julia >= 1.10 (juliacall 0.9 needs 1.10.3+), run `julia --project=. -e 'using Pkg; Pkg.instantiate()'` "
    "in the relu-verify checkout, `pip install relu-verify[julia]`, and put julia on PATH or set "
    "PYTHON_JULIACALL_EXE=/path/to/julia with PYTHON_JULIACALL_PROJECT=/path/to/relu-verify (see julia/README.md)"
)


@dataclass(frozen=True)
class MipVerifyOptions:
    """Per-example settings of the MIPVerify backend.

    ``time_limit`` bounds the main MIP solve; ``tightening_time_limit`` bounds each single
    bound-tightening solve (MIPVerify's ``tightening_options``), as in MIPVerify itself.
    """

    time_limit: float = 120.0
    tightening: Tightening = "lp"
    tightening_time_limit: float = 20.0
    optimizer: Optimizer = "highs"
    objective: Objective = "auto"

    def __post_init__(self) -> None:
        if not (self.time_limit > 0 and self.tightening_time_limit > 0):
            raise SpecError("MIPVerify time limits must be > 0")
        if self.tightening not in ("interval_arithmetic", "lp", "mip"):
            raise SpecError(f"unknown MIPVerify tightening {self.tightening!r}: use interval_arithmetic, lp or mip")
        if self.optimizer not in ("highs", "gurobi"):
            raise SpecError(f"unknown MIPVerify optimizer {self.optimizer!r}: use highs or gurobi")
        if self.objective not in ("auto", "worst", "closest"):
            raise SpecError(f"unknown MIPVerify objective {self.objective!r}: use auto, worst or closest")

    @classmethod
    def coerce(cls, options: Any) -> "MipVerifyOptions":
        """These options, or defaults taking the ``time_limit`` of another backend's options object."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        limit = getattr(options, "time_limit", None)
        return cls(time_limit=float(limit)) if limit is not None else cls()


@dataclass(frozen=True)
class RawAnswer:
    """What RELUVerifyMIP.verify_point returned, as plain Python values (NaN: not available)."""

    solved: bool
    termination: str
    infeasible: bool
    has_solution: bool
    objective: float
    dual_bound: float
    gap: float
    perturbed: np.ndarray  # flattened like the input (C order over (C, H, W)); empty without a solution
    predicted: int
    solve_time: float
    total_time: float
    n_binaries: int
    objective_kind: str
    norm_order: float


# --------------------------------------------------------------------------- availability


def _julia_exe() -> str | None:
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE"):
        if os.environ.get(var):
            return shutil.which(os.environ[var]) or (os.environ[var] if os.path.isfile(os.environ[var]) else None)
    return shutil.which("julia")


def _project_dir() -> Path:
    return Path(os.environ.get("RELU_VERIFY_JULIA_PROJECT", REPO))


def available() -> tuple[bool, str]:
    """(True, "") when juliacall, a julia binary and julia/src are all present; else (False, why + how)."""
    missing = []
    if importlib.util.find_spec("juliacall") is None:
        missing.append("juliacall is not installed")
    if _julia_exe() is None:
        missing.append("julia is not on PATH")
    src = _project_dir() / "julia" / "src" / "RELUVerifyMIP.jl"
    if not src.is_file() or not (_project_dir() / "Project.toml").is_file():
        missing.append(f"{src} or its Project.toml is missing (set RELU_VERIFY_JULIA_PROJECT to the relu-verify checkout)")
    if missing:
        return False, f"MIPVerify backend unavailable ({'; '.join(missing)}): {SETUP_HINT}"
    return True, ""


_LOCK = threading.Lock()
_MODULE: Any = None


def _julia_module() -> Any:
    """RELUVerifyMIP, loaded once per process (juliacall starts Julia on first import)."""
    global _MODULE
    with _LOCK:
        if _MODULE is not None:
            return _MODULE
        ok, why = available()
        if not ok:
            raise SolverUnavailableError(why)
        project = _project_dir()
        exe = _julia_exe()
        if not any(os.environ.get(v) for v in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT",
                                               "PYTHON_JULIAPKG_EXE", "PYTHON_JULIAPKG_PROJECT")):
            # Both together make juliacall use this Julia and this environment as they are,
            # without juliapkg (which would try to download).
            os.environ["PYTHON_JULIACALL_EXE"] = str(exe)
            os.environ["PYTHON_JULIACALL_PROJECT"] = str(project)
        try:
            import juliacall  # noqa: PLC0415  (lazy on purpose)

            mod = juliacall.newmodule("RELUVerifyBridge")
            src = (project / "julia" / "src" / "RELUVerifyMIP.jl").as_posix()
            mod.seval(f'include(raw"{src}")')
            _MODULE = (juliacall, mod.RELUVerifyMIP)
        except Exception as e:  # offline URL errors, missing packages, JuliaError: all mean "not set up"
            first = " ".join(str(e).split())[:240] or type(e).__name__
            raise SolverUnavailableError(f"MIPVerify backend failed to start ({type(e).__name__}: {first}): {SETUP_HINT}") from None
        return _MODULE


# --------------------------------------------------------------------------- export


_EXPORTS: "weakref.WeakKeyDictionary[Network, str]" = weakref.WeakKeyDictionary()
_EXPORT_DIR: str | None = None


def export_network(net: Network) -> str:
    """The network as a MIPVerify-layout .mat in a private temporary folder (written once per object)."""
    global _EXPORT_DIR
    from ..formats import save_model

    with _LOCK:
        path = _EXPORTS.get(net)
        if path is not None and os.path.exists(path):
            return path
        if _EXPORT_DIR is None:
            _EXPORT_DIR = tempfile.mkdtemp(prefix="relu-verify-mipverify-")
        path = os.path.join(_EXPORT_DIR, f"net{len(_EXPORTS)}_{id(net):x}.mat")
    save_model(net, path, format="mat-mipverify")  # atomic: temp file + rename
    with _LOCK:
        _EXPORTS[net] = path
        weakref.finalize(net, _remove_quietly, path)
    return path


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- the query


def solve_example(
    net: Network,
    pset: LpBall,
    label: int,
    example_index: int,
    *,
    bounds: Any = None,
    margin_lb: np.ndarray | None = None,
    warm_start: Tensor | None = None,
    options: MipVerifyOptions | Any = None,
    time_limit: float | None = None,
    threads: int | None = None,
) -> Verdict:
    """Decide robustness of example ``example_index`` of ``pset`` with MIPVerify.jl.

    ``bounds``, ``margin_lb`` and ``warm_start`` are accepted and not used: MIPVerify tightens its own bounds.
    ``time_limit`` overrides ``options.time_limit``; ``threads`` is accepted and not used (the
    solvers run with their own defaults).
    """
    opts = MipVerifyOptions.coerce(options)
    if time_limit is not None:
        opts = replace(opts, time_limit=float(time_limit))
    t0 = time.perf_counter()
    ball = pset.select([example_index]).to(torch.float64)
    _check_query(net, ball, opts)
    eps = float(ball.eps[0])
    if eps == 0.0:
        return _point_query(net, ball, label, t0)
    juliacall, jl = _julia_module()
    if not bool(jl.optimizer_available(opts.optimizer)):
        raise SolverUnavailableError(
            f"MIPVerify optimizer {opts.optimizer!r} is not installed in the Julia environment: "
            "julia --project=. -e 'using Pkg; Pkg.add(\"Gurobi\")' (needs a Gurobi licence)")
    path = export_network(net)
    x = ball.center[0].reshape(-1).tolist()
    x_jl = juliacall.convert(jl_vector_type(juliacall), x)
    try:
        res = jl.verify_point(
            path, x_jl, int(label), eps, p=float(ball.p), objective=opts.objective, tightening=opts.tightening,
            time_limit=float(opts.time_limit), tightening_time_limit=float(opts.tightening_time_limit),
            optimizer=opts.optimizer,
        )
        raw = _raw_answer(res)
    except Exception as e:  # a JuliaError inside the solve: report, keep a batch going
        first = " ".join(str(e).split())[:200] or type(e).__name__
        return Verdict("unknown", reason=f"mipverify error: {first}", seconds={"mip": time.perf_counter() - t0},
                       solver_status="ERROR", n_binaries=0)
    return map_answer(net, ball, label, raw, seconds=time.perf_counter() - t0)


solve = solve_example


def jl_vector_type(juliacall: Any) -> Any:
    return juliacall.Main.seval("Vector{Float64}")


def _check_query(net: Network, ball: LpBall, opts: MipVerifyOptions) -> None:
    if net.input_range != (0.0, 1.0) or (ball.lo, ball.hi) != (0.0, 1.0):
        raise ModelError(f"MIPVerify fixes the input box to [0, 1]; this model's input range is "
                         f"[{net.input_range[0]:g}, {net.input_range[1]:g}]")
    if ball.p == 2.0 and opts.optimizer == "highs":
        raise SolverUnavailableError("MIPVerify needs Gurobi for L2 balls (a mixed-integer QP); "
                                     "use --solver highs for L2, or install Gurobi.jl and pass optimizer='gurobi'")
    if opts.objective == "worst" and not math.isinf(ball.p):
        raise SpecError("the worst objective answers Linf queries only; use closest (or auto) for p = 1 or 2")


def _point_query(net: Network, ball: LpBall, label: int, t0: float) -> Verdict:
    """eps = 0: the set is one point; decide it by a float64 forward pass."""
    m = float(margins_f64(net, ball.center, torch.tensor([label]))[0])  # max_j f_j - f_y: minus the margin
    kw: dict[str, Any] = {"seconds": {"mip": time.perf_counter() - t0}, "solver_status": "POINT", "n_binaries": 0}
    if m < -VERIFY_TOL:
        return Verdict("verified", "mip", margin_lb=-m, **kw)
    if m > 0:
        k = Query.robustness(ball, label, net.n_classes).satisfied_by(outputs_f64(net, ball.center))
        return Verdict("falsified", "mip", counterexample=ball.center.clone(), disjunct=k, **kw)
    return Verdict("unknown", reason="margin within tolerance", **kw)


def _raw_answer(res: Any) -> RawAnswer:
    return RawAnswer(
        solved=bool(res.solved), termination=str(res.termination), infeasible=bool(res.infeasible),
        has_solution=bool(res.has_solution), objective=float(res.objective), dual_bound=float(res.dual_bound),
        gap=float(res.gap), perturbed=np.asarray([float(v) for v in res.perturbed], dtype=np.float64),
        predicted=int(res.predicted), solve_time=float(res.solve_time), total_time=float(res.total_time),
        n_binaries=int(res.n_binaries), objective_kind=str(res.objective_kind), norm_order=float(res.norm_order),
    )


# for 'closest': the solver's point sits on a tie (which MIPVerify allows); the re-check also
# tries the perturbation pushed a little past it
_PUSH = (1 + 1e-9, 1 + 1e-6, 1 + 1e-4, 1 + 1e-3, 1 + 1e-2)


def map_answer(net: Network, ball: LpBall, label: int, raw: RawAnswer, *, seconds: float) -> Verdict:
    """The verdict for one example (``ball`` holds just that example) from MIPVerify's answer."""
    closest = raw.objective_kind == "closest"

    def result(status: Status, reason: str | None = None, found: tuple[Tensor, int] | None = None) -> Verdict:
        # 'worst': the dual bound is an upper bound on max_j f_j - f_y, minus the margin
        lb = -raw.dual_bound if status == "verified" and not closest and math.isfinite(raw.dual_bound) else None
        return Verdict(status, "mip" if status != "unknown" else None, reason,
                       None if found is None else found[0], margin_lb=lb, seconds={"mip": seconds},
                       solver_status=raw.termination, n_binaries=raw.n_binaries,
                       disjunct=None if found is None else found[1])

    if raw.has_solution and raw.perturbed.size == ball.center[0].numel():
        x = torch.as_tensor(raw.perturbed, dtype=torch.float64).reshape(ball.center.shape)
        found = confirm_point(net, Query.robustness(ball, label, net.n_classes), x, push=_PUSH if closest else ())
        if found is not None:
            return result("falsified", found=found)
    if not raw.solved:
        return result("unknown", "numerics")
    if raw.infeasible and raw.termination == "INFEASIBLE":
        return result("verified")
    if closest and math.isfinite(raw.dual_bound):
        threshold = _threshold(ball)
        if raw.dual_bound > threshold * (1 + DISTANCE_SLACK) + DISTANCE_SLACK:
            name = "squared L2" if ball.p == 2.0 else f"L{int(ball.p)}"
            return result("verified", f"min {name} distortion >= {raw.dual_bound:.6g} > {threshold:.6g}")
    if raw.has_solution:
        # a solver point that did not survive the float64 re-check (or, for closest, lies outside the ball)
        if closest and raw.termination == "OPTIMAL":
            return result("unknown", "gap" if raw.objective > _threshold(ball) else "numerics")
        if raw.termination != "TIME_LIMIT":
            return result("unknown", "numerics")
    if raw.termination == "TIME_LIMIT":
        return result("unknown", "timeout")
    return result("unknown", f"solver status {raw.termination}")


def _threshold(ball: LpBall) -> float:
    eps = float(ball.eps[0])
    return eps * eps if ball.p == 2.0 else eps


__all__ = ["MipVerifyOptions", "RawAnswer", "available", "export_network", "map_answer", "solve", "solve_example"]
