"""A small MNIST MLP and robustness instances for the vnnlib tests and benchmarks/vnnlib.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from verify.data import load_dataset
from verify.network import Network
from verify.torch_modules import network_from_torch
from verify.vnnlib import robustness_vnnlib


def train_fc(shared: Path, seed: int = 0, epochs: int = 2) -> Network:
    """An MNIST MLP (784-24-16-10), plain training on the 10k subset: a second or two on 2 cores."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the full MNIST training set was not found": the subset is meant
        ds = load_dataset("mnist", split="train", data_dir=shared)
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(ds.y))
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(m(ds.x[idx]), ds.y[idx]).backward()
            opt.step()
    return network_from_torch(m.eval(), (1, 28, 28), name="fc_24_16")


def write_instances(folder: Path, onnx_name: str, x: torch.Tensor, y: torch.Tensor, indices: list[int],
                    eps_list: list[float], timeout: float, n_classes: int = 10) -> list[dict]:
    """One Linf robustness property per (point, eps), clipped to [0, 1], and instances.csv.

    Returns one dict per instance: vnnlib (file name), index, eps, label.
    """
    out, rows = [], []
    for eps in eps_list:
        for i in indices:
            c = x[i].to(torch.float64).reshape(-1).numpy()
            name = f"prop_{i}_eps_{eps}.vnnlib"
            lo, hi = np.clip(c - eps, 0.0, 1.0), np.clip(c + eps, 0.0, 1.0)
            text = robustness_vnnlib(lo, hi, int(y[i]), n_classes, comment=f"MNIST test {i}, label {int(y[i])}, Linf eps {eps}")
            (folder / name).write_text(text)
            rows.append(f"{onnx_name},{name},{timeout:g}")
            out.append({"vnnlib": name, "index": i, "eps": eps, "label": int(y[i])})
    (folder / "instances.csv").write_text("\n".join(rows) + "\n")
    return out
