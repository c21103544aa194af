"""Branch and bound: a complete verifier for ReLU networks (beta-CROWN style ReLU splitting, or input
splitting on low-dimensional inputs), sound in float64; see :mod:`verify.bab.core`."""

from .core import BabOptions, bab

__all__ = ["BabOptions", "bab"]
