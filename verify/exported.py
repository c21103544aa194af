"""Attack-only models: differentiable classifiers that are not piecewise-linear Networks.

Some defences compute functions no :class:`verify.network.Network` layer describes, e.g. the
feature pyramid decoder's denoising block x + (x x^T) x / (H W), which is cubic. Bounds, the
MIP and ``verify certify`` reason about ReLU networks only and must not see such a model, but
attacks need nothing beyond a differentiable forward pass. For those models training writes
a ``torch.export`` program (``.pt2``: graph, weights and a JSON header with the input shape,
input range, name and metadata), and :class:`ExportedClassifier` gives it the small part of
the Network interface that :mod:`verify.attacks`, :func:`verify.spec.margins_f64` and the
``verify attack`` command use: ``input_shape``, ``input_range``, ``n_classes``, ``name``,
``metadata``, ``forward(x, dtype=)``, ``predict`` and ``check_input``. Every success is still
re-checked by a float64 forward pass of the same program (a float64 copy of its weights).

``verify attack`` accepts ``.pt2`` files; every other command rejects them with one line.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ModelError
from .network import Network, as_batch

EXTENSION = ".pt2"
_HEADER = "relu_verify.json"
KIND = "relu-verify attack-only classifier"


def is_exported(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == EXTENSION


class ExportedClassifier:
    """A loaded ``.pt2`` classifier; float32 and float64 copies of its program, made on first use."""

    def __init__(self, blob: bytes, *, input_shape: Sequence[int], input_range: tuple[float, float], name: str,
                 metadata: dict[str, Any]) -> None:
        self._blob = blob
        self.input_shape = tuple(int(s) for s in input_shape)
        lo, hi = (float(v) for v in input_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ModelError(f"input range must be finite with lo < hi, got ({lo}, {hi})")
        self.input_range = (lo, hi)
        self.name = name
        self.metadata = dict(metadata)
        self._programs: dict[torch.dtype, nn.Module] = {}
        with torch.no_grad():
            out = self.forward(torch.zeros((2, *self.input_shape)))
        if out.ndim != 2:
            raise ModelError(f"{name}: the program must return (N, K) logits, it returns shape {tuple(out.shape)}")
        self.n_classes = int(out.shape[1])

    def _program(self, dtype: torch.dtype) -> nn.Module:
        prog = self._programs.get(dtype)
        if prog is None:
            prog = torch.export.load(io.BytesIO(self._blob)).module().to(dtype)
            self._programs[dtype] = prog
        return prog

    def forward(self, x: Tensor | np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
        """Logits for a batch (N, *input_shape), computed in ``dtype`` (default: x's, float32 for arrays)."""
        x = as_batch(x, dtype)
        self.check_input(x)
        if x.shape[0] == 0:
            return x.new_zeros((0, getattr(self, "n_classes", 0)))
        if x.shape[0] == 1:  # exported with a dynamic batch of size >= 2: run a pair, keep one
            pair: Tensor = self._program(x.dtype)(torch.cat([x, x]))
            return pair[:1]
        logits: Tensor = self._program(x.dtype)(x)
        return logits

    __call__ = forward
    # the Network's own helpers: they use only input_shape and forward
    check_input = Network.check_input
    predict = Network.predict

    def summary(self) -> str:
        lo, hi = self.input_range
        return (f"{self.name}: input {self.input_shape} in [{lo:g}, {hi:g}], {self.n_classes} classes; "
                f"attack-only torch.export program (not a piecewise-linear Network)")


def save_exported(module: nn.Module, path: str | os.PathLike[str], *, input_shape: Sequence[int],
                  input_range: tuple[float, float] = (0.0, 1.0), name: str = "model", metadata: dict[str, Any] | None = None) -> None:
    """Export ``module`` (in eval mode, float32) with a dynamic batch dimension and write it atomically."""
    from .atomic import write_atomic_with

    if not is_exported(path):
        raise ModelError(f"attack-only models are written as {EXTENSION} files, got {os.fspath(path)!r}")
    shape = tuple(int(s) for s in input_shape)
    was_training = module.training
    module.eval()
    try:
        example = (torch.rand((2, *shape)),)
        program = torch.export.export(module.float(), example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    finally:
        module.train(was_training)
    header = {"kind": KIND, "input_shape": list(shape), "input_range": [float(v) for v in input_range],
              "name": name, "metadata": metadata or {}}

    def write(tmp: str) -> None:
        torch.export.save(program, tmp, extra_files={_HEADER: json.dumps(header, default=str)})

    write_atomic_with(path, write)


def load_exported(path: str | os.PathLike[str]) -> ExportedClassifier:
    """Read a ``.pt2`` file written by :func:`save_exported`; any problem is one ModelError line."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {os.fspath(path)} does not exist")
    blob = p.read_bytes()
    extra = {_HEADER: ""}
    try:
        torch.export.load(io.BytesIO(blob), extra_files=extra)
    except Exception as e:  # corrupt or foreign archives raise many types
        raise ModelError(f"{os.fspath(path)}: not a readable torch.export program ({type(e).__name__}: {e})") from None
    try:
        header = json.loads(extra[_HEADER] or "{}")
    except json.JSONDecodeError as e:
        raise ModelError(f"{os.fspath(path)}: bad {_HEADER} header: {e}") from None
    if not isinstance(header, dict) or header.get("kind") != KIND:
        raise ModelError(f"{os.fspath(path)}: a torch.export program without relu-verify's header "
                         f"(write it with verify.exported.save_exported)")
    try:
        shape = [int(s) for s in header["input_shape"]]
        rng = [float(v) for v in header["input_range"]]
        return ExportedClassifier(blob, input_shape=shape, input_range=(rng[0], rng[1]),
                                  name=str(header.get("name") or p.stem), metadata=dict(header.get("metadata") or {}))
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{os.fspath(path)}: cannot run the program ({type(e).__name__}: {e})") from None
