"""Bound propagation: interval (IBP), kw (Wong & Kolter's dual = Fast-Lin), crown and
alpha-crown (optimised slopes). The fifth method, lp (the triangle relaxation solved exactly by
HiGHS), is the MIP's model relaxed and lives with it (:mod:`verify.mip.lp_bound`).

* :func:`interval_bounds` -- interval bounds on every node of ``net.graph``;
* :func:`compute_bounds` -- lower bounds on every margin f_y - f_j, with the intermediate
  bounds used (:class:`BoundResult`);
* :func:`certify_rows` -- which rows c . f(x) - d > 0 hold over the set, soundly under rounding
  (:class:`RowBounds`); :func:`certify_with_bounds` -- robustness's use of it, the margin rows
  (:class:`CertifiedBounds`); :func:`verify.complete.disjunct_bounds` -- a query's;
* :func:`backward_bound` -- the generic backward linear-relaxation engine.

Intermediate bounds are ``NodeBounds = {node index: (lower, upper)}`` over ``net.graph``,
each of shape (N, *node.shape).
"""

from .backward import backward_bound, margin_spec
from .certify import SAFETY_REL, certify_rows, certify_with_bounds
from .compute import compute_bounds
from .final import alpha_margins, interval_margins, linear_margins
from .intermediate import alpha_intermediate, linear_intermediate
from .interval import interval_bounds
from .types import METHODS, BoundResult, CertifiedBounds, Method, NodeBounds, RowBounds

__all__ = [
    "BoundResult", "CertifiedBounds", "METHODS", "Method", "NodeBounds", "RowBounds", "SAFETY_REL", "alpha_intermediate", "alpha_margins",
    "backward_bound", "certify_rows", "certify_with_bounds", "compute_bounds", "interval_bounds", "interval_margins",
    "linear_intermediate", "linear_margins", "margin_spec",
]
