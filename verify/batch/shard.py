"""Deterministic sharding of example indices for SLURM array jobs (``--shard i/n``)."""

from __future__ import annotations

from typing import Sequence

from ..errors import VerifyError


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/3' -> (2, 3): shard 2 of 3, counted from 1 like SLURM_ARRAY_TASK_ID with --array=1-3."""
    if text is None:
        return None
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise VerifyError(f"--shard must look like i/n (e.g. 1/3), got {text!r}") from None
    if n < 1 or not 1 <= i <= n:
        raise VerifyError(f"--shard {text}: need 1 <= i <= n")
    return i, n


def shard_indices(indices: Sequence[int], shard: tuple[int, int] | None) -> list[int]:
    """Every n-th index starting at the i-th: shards interleave, so each gets easy and hard examples alike."""
    if shard is None:
        return list(indices)
    i, n = shard
    return [v for k, v in enumerate(indices) if k % n == i - 1]
