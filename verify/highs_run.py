"""Running HiGHS models in one process with any thread counts.

HiGHS keeps one thread scheduler per process, created by the first ``run()`` with that
model's ``threads`` option; a later model asking for another count fails at once
(``run()`` returns an error, the model status stays "Not Set"), which made MIPs come out
``unknown`` after an LP had run with HiGHS's default threads. :func:`run` is the one place
the project calls ``Highs.run()``: it recreates the scheduler when the count changes. The
calls are sequential in a process (Dask workers are processes), so no solve is in flight then.
:func:`new` is the one place it constructs a ``Highs``: silent, and without the banner HiGHS
prints on standard output the first time a process constructs one (it would corrupt CSV or
JSON a command writes to stdout).
"""

from __future__ import annotations

import os
import sys

import highspy

_banner_shown = False  # HiGHS prints its banner once per process, at the first construction
_scheduler_threads: int | None = None  # the count the process's scheduler was created with


def _threads(h: highspy.Highs) -> int:
    v = h.getOptionValue("threads")
    return int(v[1] if isinstance(v, tuple) else v)  # (status, value) in older highspy


def run(h: highspy.Highs) -> highspy.HighsStatus:
    """``h.run()``, after recreating HiGHS's thread scheduler if ``h`` wants another thread count."""
    global _scheduler_threads
    want = _threads(h)
    if _scheduler_threads is not None and want != _scheduler_threads:
        highspy.Highs.resetThreadScheduler(True)  # blocking: its worker threads have ended
    _scheduler_threads = want
    return h.run()


def new(threads: int | None = None) -> highspy.Highs:
    """A silent ``Highs`` (``output_flag`` off), with ``threads`` set if given."""
    global _banner_shown
    if _banner_shown:
        h = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy: untyped constructor
    else:  # the first construction writes the banner to file descriptor 1: send it to devnull
        sys.stdout.flush()
        saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            h = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy: untyped constructor
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)
        _banner_shown = True
    h.setOptionValue("output_flag", False)
    if threads is not None:
        h.setOptionValue("threads", int(threads))
    return h
