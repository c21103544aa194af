"""verify.runtime: glibc keeps freed large blocks in the heap once verify is imported.

Oracle: glibc's own accounting (``mallinfo2().hblkhd``, the bytes held in mmapped chunks) while
a 128 MB tensor is alive -- 0 with the settings, >= 128 MB with glibc's defaults -- and, after
it is freed, tensors of the same size allocated again reuse the heap instead of growing it.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
import torch, verify
from verify.runtime import keep_freed_memory
t = torch.ones(32 << 20)  # 128 MB
alive = libc.mallinfo2()
for _ in range(5):  # freed and allocated again: the heap reuses the blocks (posix_memalign's slack
    del t           # may cost one more block before the freed ones coalesce)
    t = torch.ones(32 << 20)
again = libc.mallinfo2()
print(json.dumps({"applied": keep_freed_memory(), "mmapped_alive": alive.hblkhd, "arena_alive": alive.arena,
                  "arena_again": again.arena}))
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
    assert on["arena_again"] <= 2 * on["arena_alive"]  # five more 128 MB tensors: at most one more block
    off = _probe("0")
    assert off["applied"] is False
    assert off["mmapped_alive"] >= (128 << 20)  # glibc's default: a fresh mmap
