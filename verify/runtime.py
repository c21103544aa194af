"""Process-wide settings for large-tensor work on a CPU.

glibc's malloc serves every allocation above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and unmaps it again on ``free``. Bound propagation makes many large temporaries (the
coefficient tensors of a chunk of examples run to 25-200 MB), so each of them was faulted in
page by page, over and over: measured on this project's 2-core CI machine (1 torch thread), a
float64-accumulated sum of a 25 MB float32 tensor took 35 ms with glibc's defaults and 4.7 ms
with freed blocks kept for reuse; CROWN on the zoo's KW CNN (1000 MNIST points, Linf 0.1) took
21.1 s of CPU time with the defaults and 13.8-14.6 s with a threshold of 64 MB, 256 MB or 1 GB
(peak RSS 900 MB against 954-983 MB; ``benchmarks/peers_bounds.py --peer-malloc`` compares the
peers both ways). :func:`keep_freed_memory` raises the mmap threshold to 256 MB and the trim
threshold to its maximum, so freed blocks stay in the heap; ``import verify`` calls it once, and
the environment variable ``RELU_VERIFY_MALLOPT=0`` turns it off. Nothing changes but where memory
comes from: no result depends on it.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 1 << 28  # bytes: allocations below this come from the heap, and stay there when freed
TRIM_THRESHOLD = (1 << 31) - 1  # the most mallopt's int takes: the heap's free top is kept
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Keep freed large blocks in glibc's heap for reuse (see the module's docstring).

    Returns whether the settings are in effect: False off Linux / glibc, or with
    ``RELU_VERIFY_MALLOPT=0``. Idempotent.
    """
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux") and os.environ.get("RELU_VERIFY_MALLOPT", "1") != "0":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):  # not glibc (musl, ...): its defaults stay
                _applied = False
    return _applied
