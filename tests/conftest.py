"""Shared fixtures. Test data comes from ../shared/datasets (never downloaded).

Set RELU_VERIFY_SHARED to point elsewhere. Tests that need the data skip with a
clear reason only if the folder is absent; CI always has it beside the clone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_datasets_dir() -> Path:
    env = os.environ.get("RELU_VERIFY_SHARED")
    if env:
        return Path(env)
    for cand in (REPO.parent / "shared" / "datasets", REPO / "shared" / "datasets"):
        if cand.is_dir():
            return cand
    return REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_datasets_dir()
    if not (d / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"shared datasets not found at {d} (set RELU_VERIFY_SHARED)")
    return d


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test runs torch on one thread, like ``verify certify --threads 1``: the suite's work is
    small, and torch's thread pool slows down 10x or more on a core another process holds (a shared
    CI runner; see benchmarks/threads.py: a one-image PGD 0.24 s on one thread, 3.1 s on two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
