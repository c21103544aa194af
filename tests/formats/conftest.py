"""MNIST inputs shared by the format tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def mnist100(shared_data: Path) -> torch.Tensor:
    """The first 100 MNIST test images, (100, 1, 28, 28) float32 in [0, 1]."""
    from verify.data import load_dataset

    ds = load_dataset("mnist", split="test", data_dir=shared_data)
    return ds.x[:100].to(torch.float32)
