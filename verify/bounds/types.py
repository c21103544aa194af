"""Result types shared by the bound methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

# {graph node index: (lower, upper)}, each of shape (N, *node.shape): bounds on the node's value.
NodeBounds = dict[int, tuple[Tensor, Tensor]]

Method = Literal["ibp", "kw", "crown", "alpha-crown", "lp"]
METHODS: tuple[str, ...] = ("ibp", "kw", "crown", "alpha-crown", "lp")


@dataclass(frozen=True)
class BoundResult:
    """Lower bounds on the margins f_y - f_j of every example (N, K); +inf in column y."""

    margin_lb: Tensor
    intermediate: NodeBounds
    method: str


@dataclass(frozen=True)
class CertifiedBounds:
    """The certification decision: ``certified[n]`` only from a bound that is rigorous under
    rounding (a widened float32 bound or a float64 recheck; docs/soundness.md)."""

    certified: Tensor  # bool (N,)
    margin_lb: Tensor  # float64 (N,): min over j != y of the margin lower bound that decided
    method: str


@dataclass(frozen=True)
class RowBounds:
    """Rows c . f(x) - d of a spec: ``proven[n, r]`` only from a bound on it that is rigorous under
    rounding and > 0 (docs/soundness.md)."""

    lower: Tensor  # float64 (N, R): the bound on c . f - d that decided, or the screening bound
    proven: Tensor  # bool (N, R)
    method: str
    intermediate: NodeBounds | None = None  # the float64 node bounds (certify_rows(float64=True) only)
