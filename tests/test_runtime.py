"""verify.runtime: glibc keeps freed large blocks in the heap once verify is imported.

Oracles: glibc's own accounting (``mallinfo2().hblkhd``, the bytes held in mmapped chunks) while
a 128 MB tensor is alive -- 0 with the settings, >= 128 MB with glibc's defaults -- and the
kernel's count of minor page faults (``getrusage``) while tensors of that size are freed and
allocated again: with the settings the heap's pages are reused, already resident, so there are
next to no faults (measured: 0); with glibc's defaults every tensor is a fresh mmap faulted in
page by page (measured: 163,845 for five tensors of 32,768 pages). How far the heap itself
grows is glibc's business (it differed between machines), so it is not asserted.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, resource
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
import torch, verify
from verify.runtime import keep_freed_memory
t = torch.ones(32 << 20)  # 128 MB
alive = libc.mallinfo2()
for _ in range(5):  # warm-up: the heap settles (posix_memalign's slack may cost it a block or two)
    del t
    t = torch.ones(32 << 20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # freed and allocated again: resident pages reused, or fresh ones faulted in
    del t
    t = torch.ones(32 << 20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"applied": keep_freed_memory(), "mmapped_alive": alive.hblkhd, "arena_alive": alive.arena,
                  "faults_again": faults}))
"""


def _probe(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("RELU_VERIFY_MALLOPT", None)
    if env_value is not None:
        env["RELU_VERIFY_MALLOPT"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_with_mallinfo2(),
                    reason="glibc >= 2.33 (mallinfo2) needed to observe the allocator")
def test_large_blocks_come_from_the_heap_and_are_reused() -> None:
    on = _probe(None)
    assert on["applied"] is True
    assert on["mmapped_alive"] < (32 << 20)  # the 128 MB tensor is not an mmapped chunk
    assert on["arena_alive"] >= (128 << 20)  # it is in the heap
    assert on["faults_again"] < (32 << 20) * 4 // 4096 // 4  # under a quarter of ONE tensor's pages, for five
    off = _probe("0")
    assert off["applied"] is False
    assert off["mmapped_alive"] >= (128 << 20)  # glibc's default: a fresh mmap
