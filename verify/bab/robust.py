"""confirm() for robustness queries: :func:`verify.query.confirm_point` on :meth:`verify.query.Query.robustness`."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..network import Network
from ..query import Query, confirm_point
from ..spec import LpBall


def robustness_confirm(net: Network, ball: LpBall, label: int) -> Callable[[Tensor], tuple[Tensor, int] | None]:
    """(a point of the ball near x, index into :func:`verify.bab.robustness_disjuncts`'s list) when
    it is misclassified in a float64 forward pass; else None (the one re-check, verify.query)."""
    query = Query.robustness(ball, label, net.n_classes)
    return lambda x: confirm_point(net, query, x)
