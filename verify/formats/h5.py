"""``.h5``: a self-describing HDF5 layout of our own (h5py), holding every layer type.

Layout (version 1)::

    /                       attrs: format = "relu-verify", version = 1,
                                   input_shape (int array), input_range (2 floats),
                                   name (str), metadata (JSON str)
    /layers/                one group per layer, in order, named "{index:03d}_{kind}"
    /layers/000_conv2d      attrs: kind = "conv2d", stride [sh, sw], padding [t, b, l, r]
                            datasets: weight (out, in, kh, kw), bias (out,)
    /layers/001_relu        attrs: kind = "relu"
    /layers/002_residual    attrs: kind = "residual"; groups body/ and shortcut/ with
                            layer groups named as in /layers (empty shortcut = identity)

Array fields (weight, bias, scale, shift) are datasets in float32 when that is exact, else
float64; the other fields of :mod:`verify.formats._spec` are attributes (order is a string).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..network import Network
from ._common import PathLike, cannot_read, check_readable, compact, fail, layer_errors, write_atomic_with
from ._spec import ARRAYS, Record, layers_from_records, records

FORMAT = "relu-verify"
VERSION = 1


def save(net: Network, path: PathLike) -> None:
    import h5py

    recs = records(net.layers)

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["input_shape"] = np.asarray(net.input_shape, dtype=np.int64)
            f.attrs["input_range"] = np.asarray(net.input_range, dtype=np.float64)
            f.attrs["name"] = net.name
            f.attrs["metadata"] = json.dumps(net.metadata, default=str)
            _write_layers(f.create_group("layers"), recs)

    write_atomic_with(path, write)


def _write_layers(group: Any, recs: list[Record]) -> None:
    for i, rec in enumerate(recs):
        g = group.create_group(f"{i:03d}_{rec['kind']}")
        g.attrs["kind"] = rec["kind"]
        for key, value in rec.items():
            if key == "kind":
                continue
            if key in ("body", "shortcut"):
                _write_layers(g.create_group(key), value)
            elif key in ARRAYS.get(rec["kind"], ()):
                g.create_dataset(key, data=compact(value))
            elif isinstance(value, str):
                g.attrs[key] = value
            else:
                g.attrs[key] = np.asarray(value, dtype=np.int64)


def load(path: PathLike) -> Network:
    import h5py

    p = check_readable(path)
    try:
        f = h5py.File(p, "r")
    except Exception as e:
        raise cannot_read(path, e) from None
    try:
        with f:
            fmt = _text(f.attrs.get("format"))
            if fmt != FORMAT:
                raise fail(path, f"not a relu-verify .h5 network (format attribute {fmt!r}, expected {FORMAT!r})")
            version = int(f.attrs.get("version", -1))
            if version != VERSION:
                raise fail(path, f"unsupported relu-verify .h5 version {version} (this build reads {VERSION})")
            for key in ("input_shape", "input_range"):
                if key not in f.attrs:
                    raise fail(path, f"missing root attribute {key!r}")
            if "layers" not in f:
                raise fail(path, "missing group 'layers'")
            input_shape = tuple(int(v) for v in np.asarray(f.attrs["input_shape"]).reshape(-1))
            rng = [float(v) for v in np.asarray(f.attrs["input_range"]).reshape(-1)]
            if len(rng) != 2:
                raise fail(path, f"input_range must hold two numbers, got {rng}")
            name = _text(f.attrs.get("name")) or Path(path).stem
            try:
                metadata = json.loads(_text(f.attrs.get("metadata")) or "{}")
            except json.JSONDecodeError as e:
                raise fail(path, f"metadata is not valid JSON: {e}") from None
            recs = _read_layers(f["layers"], path)
    except ModelError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/... on damaged content
        raise cannot_read(path, e) from None
    with layer_errors(path):
        layers = layers_from_records(recs)
        net = Network(tuple(layers), input_shape, (rng[0], rng[1]), name, metadata if isinstance(metadata, dict) else {})
    return net


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return "".join(_text(x) for x in v.reshape(-1))
    return str(v)


def _read_layers(group: Any, path: PathLike) -> list[Record]:
    import h5py

    out: list[Record] = []
    for key in sorted(group.keys()):
        g = group[key]
        if not isinstance(g, h5py.Group):
            raise fail(path, f"{g.name} is not a layer group")
        rec: Record = {}
        for a, v in g.attrs.items():
            rec[a] = _text(v) if a in ("kind", "order") else np.asarray(v)
        if "kind" not in rec:
            raise fail(path, f"{g.name} has no 'kind' attribute")
        for k in g.keys():
            if isinstance(g[k], h5py.Dataset):
                rec[k] = np.asarray(g[k][()])
            elif k in ("body", "shortcut"):
                rec[k] = _read_layers(g[k], path)
            else:
                raise fail(path, f"unexpected group {g[k].name}")
        if rec["kind"] == "residual":
            rec.setdefault("shortcut", [])
        out.append(rec)
    return out
