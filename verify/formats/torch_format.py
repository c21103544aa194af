"""``.pt`` / ``.pth``: PyTorch files.

Read:

* files we write (below);
* a pickled ``nn.Module`` (``torch.save(model)``) built from the modules that
  :func:`verify.torch_modules.torch_to_layers` knows;
* a state dict of an ``nn.Sequential`` (keys ``0.weight``, ``0.bias``, ``2.weight`` ...), as
  convex_adversarial and MIPVerify distribute them; a dict holding it under ``state_dict``
  (or ``model_state_dict``), where a list of cascade models (convex_adversarial's
  ``models_scaled*`` files) means the first one.

A state dict stores neither activations nor conv geometry. We assume a ReLU after every
conv / linear layer except the last (a BatchNorm, keys ``running_mean`` ..., is folded in before
its ReLU) and a Flatten in PyTorch order before the first linear layer after a conv. Strides and
paddings come from ``arch=`` (see :mod:`verify.formats._arch`) or else from the common choice
(4x4: stride 2, padding 1; 3x3: stride 1, padding 1; 5x5: stride 1, padding 2; 1x1: stride 1,
padding 0), used only when it makes the last conv output fit the first linear layer.

Write: ``torch.save`` of a plain dict, loadable with ``torch.load(weights_only=True)``::

    {"format": "relu-verify", "version": 1, "input_shape": [..], "input_range": [lo, hi],
     "name": str, "metadata_json": str, "layers": [record, ...]}

with the layer records of :mod:`verify.formats._spec` (arrays as float64 tensors).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..network import ChannelAffine, Conv2d, Flatten, Layer, Linear, Network, ReLU
from ._arch import COMMON, arch_convs, get_arch
from ._common import PathLike, cannot_read, check_readable, default_input_shape, fail, layer_errors, write_atomic_with
from ._spec import layers_from_records, records

FORMAT = "relu-verify"
VERSION = 1


# --------------------------------------------------------------------------- writing


def save(net: Network, path: PathLike) -> None:
    def tensors(rec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in rec.items():
            if isinstance(v, np.ndarray):
                out[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
            elif k in ("body", "shortcut"):
                out[k] = [tensors(r) for r in v]
            else:
                out[k] = v
        return out

    obj = {
        "format": FORMAT,
        "version": VERSION,
        "input_shape": list(net.input_shape),
        "input_range": list(net.input_range),
        "name": net.name,
        "metadata_json": json.dumps(net.metadata, default=str),
        "layers": [tensors(r) for r in records(net.layers)],
    }
    write_atomic_with(path, lambda tmp: torch.save(obj, tmp))


# --------------------------------------------------------------------------- reading


def load(path: PathLike, *, arch: str | None = None) -> Network:
    p = check_readable(path)
    obj = _torch_load(p)
    with layer_errors(path):
        return from_object(obj, path, arch=arch)


def _torch_load(p: Path) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise cannot_read(p, e) from None
    except Exception as e:
        raise cannot_read(p, e) from None
    # A valid pickle that needs classes (a whole nn.Module): only then use the full unpickler,
    # which runs code from the file; load models from sources you trust.
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise cannot_read(p, e) from None


def from_object(obj: Any, path: PathLike, *, arch: str | None = None) -> Network:
    name = Path(path).stem
    if isinstance(obj, nn.Module):
        return _from_module(obj, path, name)
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise fail(path, "holds an empty list of models")
        return from_object(obj[0], path, arch=arch)
    if not isinstance(obj, dict):
        raise fail(path, f"holds a {type(obj).__name__}, not a model or a state dict")
    if obj.get("format") == FORMAT:
        return _from_ours(obj, path)
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj:
            return from_object(obj[key], path, arch=arch)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise fail(path, f"no weights found (keys: {', '.join(map(str, list(obj)[:8]))})")
    if len(tensors) != len(obj):
        other = [str(k) for k in obj if k not in tensors]
        raise fail(path, f"unexpected non-tensor entries in the state dict: {', '.join(other[:8])}")
    return _from_state_dict(tensors, path, name, arch)


def _from_ours(obj: dict[str, Any], path: PathLike) -> Network:
    if obj.get("version") != VERSION:
        raise fail(path, f"unsupported relu-verify .pt version {obj.get('version')!r} (this build reads {VERSION})")
    for key in ("input_shape", "input_range", "layers"):
        if key not in obj:
            raise fail(path, f"missing entry {key!r}")

    def arrays(rec: Any) -> Any:
        if not isinstance(rec, dict):
            return rec
        return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor)
                    else [arrays(r) for r in v] if k in ("body", "shortcut") and isinstance(v, list) else v)
                for k, v in rec.items()}

    layers = layers_from_records([arrays(r) for r in obj["layers"]])
    rng = [float(v) for v in obj["input_range"]]
    if len(rng) != 2:
        raise fail(path, f"input_range must hold two numbers, got {rng}")
    try:
        metadata = json.loads(obj.get("metadata_json") or "{}")
    except (TypeError, json.JSONDecodeError) as e:
        raise fail(path, f"metadata_json is not valid JSON: {e}") from None
    return Network(tuple(layers), tuple(int(s) for s in obj["input_shape"]), (rng[0], rng[1]),
                   str(obj.get("name") or Path(path).stem), metadata if isinstance(metadata, dict) else {})


def _from_module(module: nn.Module, path: PathLike, name: str) -> Network:
    from ..torch_modules import torch_to_layers

    module = module.eval()
    layers = torch_to_layers(module)
    first = next((l for l in layers if isinstance(l, (Conv2d, Linear))), None)
    if first is None:
        raise fail(path, "the module has no Linear or Conv2d layer")
    if isinstance(first, Conv2d):
        c = int(first.weight.shape[1])
        candidates: list[tuple[int, ...]] = [(c, 28, 28), (c, 32, 32)]
    else:
        d = first.in_features
        candidates = [default_input_shape(d)] if any(isinstance(l, Flatten) for l in layers) else [(d,)]
    return _first_fitting(layers, candidates, path, name)


def _first_fitting(layers: Sequence[Layer], candidates: list[tuple[int, ...]], path: PathLike, name: str) -> Network:
    errors = []
    fits = []
    for shape in candidates:
        try:
            fits.append(Network(tuple(layers), shape, (0.0, 1.0), name))
        except ModelError as e:
            if "contains NaN" in str(e) or "contains infinite" in str(e):
                raise
            errors.append(str(e))
    if not fits:
        raise fail(path, f"the layers fit no input shape among {candidates}: {errors[-1]}")
    return fits[0]


_PARAM = re.compile(r"^(.*?)\.?(weight|bias|running_mean|running_var|num_batches_tracked)$")


def _group_state_dict(sd: dict[str, torch.Tensor], path: PathLike) -> list[tuple[str, dict[str, torch.Tensor]]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = _PARAM.match(str(key))
        if not m:
            raise fail(path, f"unexpected state dict key {key!r} (expected *.weight, *.bias, BatchNorm statistics)")
        groups.setdefault(m.group(1), {})[m.group(2)] = value

    def order(prefix: str) -> list[Any]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in prefix.split(".")] if prefix else []

    return sorted(groups.items(), key=lambda kv: order(kv[0]))


def _from_state_dict(sd: dict[str, torch.Tensor], path: PathLike, name: str, arch: str | None) -> Network:
    modules: list[tuple[str, Any]] = []  # ("conv", (w, b)), ("linear", (w, b)), ("bn", layer)
    for prefix, params in _group_state_dict(sd, path):
        where = prefix or "(root)"
        if "running_mean" in params or "running_var" in params:
            for k in ("running_mean", "running_var"):
                if k not in params:
                    raise fail(path, f"BatchNorm {where} is missing {k}")
            modules.append(("bn", ChannelAffine.batchnorm(params["running_mean"], params["running_var"],
                                                          params.get("weight"), params.get("bias"), 1e-5)))
            continue
        if "weight" not in params:
            raise fail(path, f"layer {where} has a bias but no weight")
        w = params["weight"].detach().to(torch.float64)
        b = params.get("bias")
        if w.ndim == 4:
            modules.append(("conv", (w, b)))
        elif w.ndim == 2:
            modules.append(("linear", (w, b)))
        else:
            raise fail(path, f"layer {where} has a {w.ndim}-D weight; expected 2-D (linear) or 4-D (conv)")
    kinds = [k for k, _ in modules if k != "bn"]
    if not kinds:
        raise fail(path, "the state dict holds no conv or linear weights")
    if "linear" in kinds and "conv" in kinds[kinds.index("linear"):]:
        raise fail(path, "a conv layer follows a linear layer; only conv... then linear... state dicts are supported")
    convs = [m for k, m in modules if k == "conv"]
    kernels = [int(w.shape[2]) for w, _ in convs]
    for w, _ in convs:
        if w.shape[2] != w.shape[3]:
            raise fail(path, f"non-square conv kernel {tuple(w.shape[2:])} in a state dict; save the whole model or export it to .onnx")
    if arch is not None:
        geoms = list(arch_convs(arch, len(convs), kernels)) if convs else []
        if not convs:
            get_arch(arch)
    else:
        missing = sorted({k for k in kernels if k not in COMMON})
        if missing:
            raise fail(path, f"no default stride/padding for {missing[0]}x{missing[0]} conv kernels; pass --arch")
        geoms = [COMMON[k] for k in kernels]
    layers: list[Layer] = []
    prev: str | None = None
    ci = 0
    for kind, m in modules:
        if kind == "bn":
            layers.append(m)  # BatchNorm sits between its conv/linear and the ReLU
            continue
        if prev is not None:
            layers.append(ReLU())
        w, b = m
        if kind == "conv":
            g = geoms[ci]
            ci += 1
            layers.append(Conv2d(w, b, g.stride, g.padding))
        else:
            if prev == "conv":
                layers.append(Flatten("NCHW"))
            layers.append(Linear(w, b))
        prev = kind
    first = next(l for l in layers if isinstance(l, (Conv2d, Linear)))
    if isinstance(first, Conv2d):
        c = int(first.weight.shape[1])
        candidates: list[tuple[int, ...]] = [(c, 28, 28), (c, 32, 32)]
    else:
        shape = default_input_shape(first.in_features)
        candidates = [shape]
        if len(shape) == 3:
            layers.insert(0, Flatten("NCHW"))
    try:
        return _first_fitting(layers, candidates, path, name)
    except ModelError as e:
        if convs and arch is None:
            raise fail(path, f"the default conv strides/paddings do not fit the linear layers ({e}); pass --arch") from None
        raise
