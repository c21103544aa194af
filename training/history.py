"""Run files: the per-epoch CSV log, the curves PNG and the epoch checkpoint, all written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from verify.atomic import write_atomic, write_atomic_with
from verify.errors import DataError


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-epoch rows as CSV (columns: the union of the rows' keys, in first-seen order)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys or ["epoch"])
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_atomic(path, buf.getvalue())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save atomically: a kill leaves the old checkpoint intact."""
    write_atomic_with(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"no checkpoint to resume from at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise DataError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def plot_curves(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Loss, error rates and regulariser terms against the epoch (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ep, [r["loss"] for r in rows], marker="o", label="total loss")
    axes[0].plot(ep, [r["ce"] for r in rows], marker=".", label="clean CE")
    axes[0].set_title("loss")
    axes[1].plot(ep, [r["train_err"] for r in rows], marker="o", label="train error")
    if all("test_err" in r for r in rows):
        axes[1].plot(ep, [r["test_err"] for r in rows], marker="s", label="test error")
    axes[1].set_title("error rate")
    extra = [k for k in rows[0] if k.startswith("reg_") or k == "robust_ce"]
    for k in extra:
        axes[2].plot(ep, [r.get(k, float("nan")) for r in rows], marker=".", label=k)
    axes[2].set_title("regulariser terms" if extra else "(no regulariser)")
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        write_atomic_with(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        plt.close(fig)
