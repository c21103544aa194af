"""VNN-COMP instances: an ONNX network, a VNNLIB property and a time limit.

:func:`run_instance` is what ``verify vnnlib`` and ``scripts/vnncomp/run_instance.sh`` run;
:func:`read_instances` reads a benchmark's ``instances.csv`` (rows ``onnx,vnnlib,timeout``,
paths relative to the file, no header), as the competition's scripts lay them out;
:func:`vnn_status` gives a verdict the competition's word (sat, unsat, timeout, unknown).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import SpecError
from .network import Network
from .properties import OutputProperty, VerifyOptions, verify_property
from .results import Verdict
from .vnnlib import format_result, load_vnnlib

VnnStatus = Literal["sat", "unsat", "timeout", "unknown"]


@dataclass(frozen=True)
class Instance:
    onnx: Path
    vnnlib: Path
    timeout: float


def read_instances(path: str | Path) -> list[Instance]:
    """The rows of an instances.csv; errors name the row."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{path}: no such instances file")
    out: list[Instance] = []
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read: {e}") from None
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        if len(row) != 3:
            raise SpecError(f"{path}:{n}: expected onnx,vnnlib,timeout, got {len(row)} columns")
        try:
            timeout = float(row[2])
        except ValueError:
            raise SpecError(f"{path}:{n}: timeout {row[2]!r} is not a number") from None
        if not timeout > 0:
            raise SpecError(f"{path}:{n}: timeout must be positive, got {row[2]}")
        out.append(Instance(p.parent / row[0], p.parent / row[1], timeout))
    if not out:
        raise SpecError(f"{path}: no instances")
    return out


def load_instance(onnx: str | Path, vnnlib: str | Path) -> tuple[Network, OutputProperty]:
    """The network and the property, checked against each other (sizes of X and Y)."""
    from .formats import load_model

    net = load_model(onnx, format="onnx")
    prop = load_vnnlib(vnnlib)
    prop.check_network(net)
    return net, prop


def run_instance(onnx: str | Path, vnnlib: str | Path, options: VerifyOptions,
                 *, started: float | None = None, net: Network | None = None) -> Verdict:
    """Load, then verify within ``options.timeout`` seconds counted from ``started`` (default: now).

    Time spent loading counts against the limit, as it does in the competition.
    """
    t0 = time.perf_counter() if started is None else started
    if net is None:
        net, prop = load_instance(onnx, vnnlib)
    else:
        prop = load_vnnlib(vnnlib)
        prop.check_network(net)
    left = options.timeout - (time.perf_counter() - t0)
    if left <= 0:
        return Verdict("unknown", reason="timeout while loading", seconds={"load": time.perf_counter() - t0},
                       n_disjuncts=len(prop.disjuncts), open_disjuncts=0)
    return verify_property(net, prop, VerifyOptions(**{**options.__dict__, "timeout": left}))


def vnn_status(res: Verdict) -> VnnStatus:
    """The verdict in VNN-COMP's words: sat (a counterexample), unsat (a proof), timeout or unknown."""
    if res.status in ("falsified", "misclassified"):
        return "sat"
    if res.status == "verified":
        return "unsat"
    reason = res.reason or ""
    return "timeout" if reason == "timeout" or reason.startswith("timeout ") else "unknown"


def result_text(res: Verdict) -> str:
    """The VNN-COMP result file for a verdict."""
    x = None if res.counterexample is None else res.counterexample.reshape(-1).numpy()
    return format_result(vnn_status(res), x, res.outputs)


__all__ = ["Instance", "VnnStatus", "load_instance", "read_instances", "result_text", "run_instance", "vnn_status"]
