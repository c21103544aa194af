"""Branch and bound: a complete verifier for ReLU networks (beta-CROWN style ReLU splitting, or input
splitting on low-dimensional inputs), sound in float64; see :mod:`verify.bab.core`."""

from .core import BabOptions, bab
from .spec import robustness_disjuncts

__all__ = ["BabOptions", "bab", "robustness_disjuncts"]
