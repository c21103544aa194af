"""Results: the one verdict (:class:`Verdict`) every pipeline and complete engine returns, its row,
the summary over rows and the one JSON shape of both (:func:`results_document`). The rows are what the
JSON/CSV files, the SQLite store and ``verify summary`` read; the summary follows the MMR paper's Table 1.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from torch import Tensor

Status = Literal["misclassified", "falsified", "verified", "unknown"]
Stage = Literal["clean", "pgd", "attack", "trivial", "ibp", "kw", "crown", "alpha-crown", "interval", "lp", "mip",
                "bab"]
BOUND_METHODS = ("ibp", "kw", "crown", "alpha-crown", "lp")


# The columns of a result row, in this order in every CSV, JSON and store (see Verdict.row).
ROW_FIELDS = ("index", "label", "prediction", "status", "decided_by", "margin_lb", "margin_ub", "gap", "seconds",
              "reason", "solver_status", "n_binaries", "domains")


@dataclass(frozen=True)
class Verdict:
    """The answer to one query: an example's robustness (``certify``), a VNNLIB property, or what one
    complete engine found (:func:`verify.complete.decide`).

    ``verified`` only from a sound proof, ``falsified`` only with a ``counterexample`` (the input
    shape with a leading 1) that passed a float64 re-check, ``misclassified``: the example's centre
    itself (``certify``); otherwise ``unknown`` with a ``reason`` (``"timeout"``, or starting with
    ``"timeout "``, when the time limit ended it). ``decided_by``: the stage that decided (None for unknown).

    The *margin* of a query is min over its set of the smallest violation max_i (C_i y - d_i) of an
    unsafe disjunct (robustness: the worst margin f_y(x) - max_{j != y} f_j(x); > 0: safe).
    ``margin_lb`` is the best proven lower bound on it (bound methods, the MIP's dual bound, branch and
    bound), ``margin_ub`` the best upper bound (the smallest float64 margin at a concrete point:
    the centre, attack points, MIP counterexamples). ``seconds`` holds the time per stage (engines:
    per engine that ran; ``certify``: this example's share of each stage's wall time).
    """

    status: Status
    decided_by: Stage | None = None
    reason: str | None = None
    counterexample: Tensor | None = None
    margin_lb: float | None = None
    margin_ub: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    solver_status: str | None = None
    n_binaries: int | None = None  # after tightening, for queries that reached the MIP
    domains: int | None = None  # subdomains branch and bound bounded, for queries that reached it
    max_queue: int | None = None  # branch and bound: the most subdomains open at once (not a row column)
    # an example (certify): its position in the data set, its label and the predicted class
    index: int | None = None
    label: int | None = None
    prediction: int | None = None
    # a property (vnnlib) or an engine: the disjunct the counterexample satisfies, its float64 outputs
    # (flattened), the disjuncts in all and those left to the complete stage after the bounds
    disjunct: int | None = None
    outputs: np.ndarray | None = None
    n_disjuncts: int | None = None
    open_disjuncts: int | None = None

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    @property
    def gap(self) -> float | None:
        """margin_ub - margin_lb: how far the query is from being decided by its bounds (0 or less: decided)."""
        if self.margin_lb is None or self.margin_ub is None:
            return None
        g = self.margin_ub - self.margin_lb
        return g if math.isfinite(g) else None

    def split(self, spent: float) -> dict[str, float]:
        """``spent`` seconds divided among the stages in ``seconds``, in proportion to their measured times."""
        total, n = self.total_seconds, len(self.seconds)
        return {k: spent * (v / total if total > 0 else 1.0 / n) for k, v in self.seconds.items()}

    def row(self) -> dict[str, Any]:
        """The JSON/CSV row (without the counterexample), columns in ROW_FIELDS order."""
        return {
            "index": self.index, "label": self.label, "prediction": self.prediction, "status": self.status,
            "decided_by": self.decided_by, "margin_lb": _finite_or_none(self.margin_lb),
            "margin_ub": _finite_or_none(self.margin_ub), "gap": self.gap,
            "seconds": round(self.total_seconds, 6), "reason": self.reason,
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


def summarize(results: Sequence[Verdict] | Sequence[dict[str, Any]]) -> Summary:
    """The summary of results, or of their rows (a store's or a JSON file's: the same numbers)."""
    rows = [r.row() if isinstance(r, Verdict) else r for r in results]
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


__all__ = ["BOUND_METHODS", "ROW_FIELDS", "Stage", "Status", "Summary", "Verdict", "order_row", "results_document",
           "summarize"]
