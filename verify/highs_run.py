"""Running HiGHS models in one process with any thread counts.

HiGHS keeps one thread scheduler per process, created by the first ``run()`` with that
model's ``threads`` option; a later model asking for another count fails at once
(``run()`` returns an error, the model status stays "Not Set"), which made MIPs come out
``unknown`` after an LP had run with HiGHS's default threads. :func:`run` is the one place
the project calls ``Highs.run()``: it recreates the scheduler when the count changes. The
calls are sequential in a process (Dask workers are processes), so no solve is in flight then.
"""

from __future__ import annotations

import highspy

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
