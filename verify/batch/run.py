"""A resumable certification run into a results store (``verify certify --output run.sqlite``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import torch

from ..network import Network
from ..spec import p_name
from .executor import ClusterOptions, run_examples
from .shard import shard_indices
from .store import ResultsStore, file_sha256


def run_config(model_path: str, source: str, indices: Sequence[int], config: Any, shard: tuple[int, int] | None) -> dict[str, Any]:
    """What identifies a run: the model's bytes, the data selection and every setting that changes verdicts."""
    cfg = {k: v for k, v in dataclasses.asdict(config).items()}
    cfg["p"] = p_name(cfg["p"])
    if "methods" in cfg:
        cfg["methods"] = list(cfg["methods"])
    sel = hashlib.sha256(json.dumps(list(map(int, indices))).encode()).hexdigest()[:16]
    return {
        **cfg,
        "model_sha256": file_sha256(model_path),
        "model_path": str(model_path),
        "data": str(source),
        "n_selected": len(indices),
        "selection_sha": sel,
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
    }


def run_to_store(
    net: Network,
    model_path: str,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: Sequence[int],
    source: str,
    config: Any,
    store_path: str,
    *,
    shard: tuple[int, int] | None = None,
    options: ClusterOptions = ClusterOptions(),
    progress: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """Certify this shard's examples not yet in the store; return (this shard's rows, how many were skipped)."""
    mine = shard_indices(indices, shard)
    with ResultsStore.open(store_path, run_config(model_path, source, indices, config, shard)) as store:
        done = store.done()
        pos = {int(v): k for k, v in enumerate(indices)}
        todo = [i for i in mine if i not in done]
        if todo:
            sel = torch.as_tensor([pos[i] for i in todo])
            run_examples(net, x[sel], y[sel], todo, config, store.add, options=options, progress=progress)
        wanted = set(mine)
        rows = [r for r in store.rows() if r["index"] in wanted]
    return rows, len(mine) - len(todo)
