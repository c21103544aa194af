"""Results: one example's verdict (:class:`CertResult`), its row, the summary over rows and the
one JSON shape of both (:func:`results_document`). The rows are what the JSON/CSV files, the
SQLite store and ``verify summary`` read; the summary follows the MMR paper's Table 1.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from torch import Tensor

Status = Literal["misclassified", "falsified", "verified", "unknown"]
Stage = Literal["clean", "pgd", "ibp", "kw", "crown", "alpha-crown", "lp", "mip", "bab"]
BOUND_METHODS = ("ibp", "kw", "crown", "alpha-crown", "lp")


# The columns of a result row, in this order in every CSV, JSON and store (see CertResult.row).
ROW_FIELDS = ("index", "label", "prediction", "status", "decided_by", "margin_lb", "margin_ub", "gap", "seconds",
              "reason", "solver_status", "n_binaries", "domains")


@dataclass(frozen=True)
class CertResult:
    """One example's verdict. ``counterexample`` is set for falsified examples (float64-checked).

    The *worst margin* of an example is min over the set of f_y(x) - max_{j != y} f_j(x) (> 0:
    robust). ``margin_lb`` is the best proven lower bound on it (bound methods, or the MIP's
    dual bound), ``margin_ub`` the best upper bound (the smallest float64 margin at a concrete
    point: the centre, attack points, MIP counterexamples). ``seconds`` holds this example's share
    of each stage's wall time (see :func:`certify`).
    """

    index: int
    label: int
    prediction: int
    status: Status
    decided_by: Stage | None
    margin_lb: float | None
    counterexample: Tensor | None
    seconds: dict[str, float]
    solver_status: str | None = None
    reason: str | None = None
    n_binaries: int | None = None  # after tightening, for examples that reached the MIP
    margin_ub: float | None = None
    domains: int | None = None  # subdomains branch and bound bounded, for examples that reached it

    @property
    def gap(self) -> float | None:
        """margin_ub - margin_lb: how far the example is from being decided by its bounds (0 or less: decided)."""
        if self.margin_lb is None or self.margin_ub is None:
            return None
        g = self.margin_ub - self.margin_lb
        return g if math.isfinite(g) else None

    def row(self) -> dict[str, Any]:
        """The JSON/CSV row (without the counterexample), columns in ROW_FIELDS order."""
        return {
            "index": self.index, "label": self.label, "prediction": self.prediction, "status": self.status,
            "decided_by": self.decided_by, "margin_lb": _finite_or_none(self.margin_lb),
            "margin_ub": _finite_or_none(self.margin_ub), "gap": self.gap,
            "seconds": round(sum(self.seconds.values()), 6), "reason": self.reason,
            "solver_status": self.solver_status, "n_binaries": self.n_binaries, "domains": self.domains,
        }


def _finite_or_none(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def order_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row with the ROW_FIELDS columns first, in that order (stores written before kept sorted keys)."""
    out = {k: row.get(k) for k in ROW_FIELDS if k in row}
    out.update({k: v for k, v in row.items() if k not in out})
    return out


@dataclass(frozen=True)
class Summary:
    """MMR Table 1 style numbers, as fractions of n (seconds per example)."""

    n: int
    clean_error: float
    pgd_lb: float
    bound_ub: float
    lb: float
    ub: float
    unknown: int
    median_seconds: float
    total_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize(results: Sequence[CertResult] | Sequence[dict[str, Any]]) -> Summary:
    """The summary of results, or of their rows (a store's or a JSON file's: the same numbers)."""
    rows = [r.row() if isinstance(r, CertResult) else r for r in results]
    n = len(rows)
    if n == 0:
        return Summary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, 0.0)
    st = [r["status"] for r in rows]
    mis = st.count("misclassified")
    pgd = sum(r.get("decided_by") == "pgd" for r in rows)
    bound_ver = sum(r["status"] == "verified" and r.get("decided_by") in BOUND_METHODS for r in rows)
    secs = [float(r.get("seconds") or 0.0) for r in rows]
    return Summary(
        n=n,
        clean_error=mis / n,
        pgd_lb=(mis + pgd) / n,
        bound_ub=(n - bound_ver) / n,
        lb=(mis + st.count("falsified")) / n,
        ub=(n - st.count("verified")) / n,
        unknown=st.count("unknown"),
        median_seconds=float(statistics.median(secs)),
        total_seconds=float(sum(secs)),
    )




def results_document(summary: Summary, config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The one JSON shape of certification results: the summary's numbers, the configuration, the rows."""
    return {**summary.as_dict(), "config": config, "examples": rows}


__all__ = ["BOUND_METHODS", "CertResult", "ROW_FIELDS", "Stage", "Status", "Summary", "order_row", "results_document",
           "summarize"]
