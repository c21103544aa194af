"""User-facing errors.

Everything a user can get wrong (a corrupt model file, a missing dataset, eps < 0)
raises a subclass of :class:`VerifyError`. The CLI turns these into one line on
stderr and exit code 2; anything else is a bug in relu-verify.
"""

from __future__ import annotations


class VerifyError(Exception):
    """Bad input: reported as one line, exit code 2."""

    exit_code = 2


class ModelError(VerifyError):
    """A model file or network that cannot be read or is inconsistent."""


class DataError(VerifyError):
    """A dataset or input file that is missing, corrupt or does not fit the model."""


class SpecError(VerifyError):
    """A perturbation set that makes no sense (unknown norm, eps < 0 or NaN, ...)."""


class UnsupportedLayerError(VerifyError):
    """A method was asked to handle a layer type it does not support."""


class SolverUnavailableError(VerifyError):
    """An optional backend (Julia, MIPVerify.jl, a cluster) is not installed or reachable."""
