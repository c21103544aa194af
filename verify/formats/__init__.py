"""Model files <-> :class:`verify.network.Network`.

Formats: ``mat-mmr`` (MMR repository .mat), ``mat-mipverify`` (MIPVerify.jl .mat), ``h5`` (our
HDF5 layout), ``pt`` (.pt/.pth: our dict, pickled modules, state dicts, convex_adversarial
checkpoints) and ``onnx``. ``mat`` means "a .mat file, layout from its keys".

Every problem with a file (missing, truncated, unknown keys, inconsistent shapes, NaN or inf
weights, unsupported operators) raises :class:`verify.errors.ModelError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from ..network import Network
from ._common import PathLike, check_readable, fail, read_mat

FORMATS = ("mat", "mat-mmr", "mat-mipverify", "h5", "pt", "onnx")
_EXT = {".mat": "mat", ".h5": "h5", ".hdf5": "h5", ".pt": "pt", ".pth": "pt", ".onnx": "onnx"}


def _check_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    f = fmt.strip().lower()
    if f not in FORMATS:
        raise ModelError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")
    return f


def detect_format(path: PathLike) -> str:
    """The format of an existing file: from its extension, else from its first bytes."""
    ext = Path(path).suffix.lower()
    if ext in _EXT:
        return _EXT[ext]
    if ext == ".pt2":
        raise ModelError(f"{os.fspath(path)} is an attack-only torch.export program (not a piecewise-linear Network): "
                         f"only `verify attack` evaluates it")
    p = check_readable(path)
    with open(p, "rb") as fh:
        head = fh.read(128)
    if head.startswith(b"MATLAB"):
        return "mat"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "h5"
    if head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02":
        return "pt"
    raise ModelError(f"cannot tell the format of model file {os.fspath(path)} from its name or content; "
                     f"give --format ({', '.join(FORMATS)})")


def load_model(path: PathLike, *, format: str | None = None, arch: str | None = None) -> Network:
    """Read a model file into a Network (see the module docstring for formats)."""
    fmt = _check_format(format) or detect_format(path)
    check_readable(path)
    if fmt in ("mat", "mat-mmr", "mat-mipverify"):
        from . import mat_mipverify, mat_mmr

        d = read_mat(path)
        if fmt == "mat":
            keys = list(d)
            if mat_mipverify.is_mipverify(keys):
                fmt = "mat-mipverify"
            elif mat_mmr.is_mmr(keys):
                fmt = "mat-mmr"
            else:
                shown = ", ".join(sorted(keys)[:8]) or "none"
                raise fail(path, f"neither the MMR nor the MIPVerify .mat layout (keys: {shown})")
        module = mat_mipverify if fmt == "mat-mipverify" else mat_mmr
        net: Network = module.from_dict(d, path, arch=arch)
        return net
    if fmt == "h5":
        from . import h5

        return h5.load(path)
    if fmt == "pt":
        from . import torch_format

        return torch_format.load(path, arch=arch)
    from . import onnx_format

    return onnx_format.load(path)


def save_format(net: Network, path: PathLike, format: str | None = None) -> str:
    """The concrete format ``save_model`` writes: ``.mat`` is MMR when the network fits it, else MIPVerify."""
    fmt = _check_format(format)
    if fmt is None:
        ext = Path(path).suffix.lower()
        if ext not in _EXT:
            raise ModelError(f"cannot tell the output format from {os.fspath(path)!r}: use a .mat, .h5, .pt, .pth or "
                             f".onnx name, or give --format")
        fmt = _EXT[ext]
    if fmt == "mat":
        from . import mat_mmr

        try:
            mat_mmr.to_dict(net)
            return "mat-mmr"
        except ModelError:
            return "mat-mipverify"
    return fmt


def save_model(net: Network, path: PathLike, *, format: str | None = None) -> None:
    """Write ``net`` atomically (temporary file in the same folder, then rename)."""
    fmt = save_format(net, path, format)
    if fmt == "mat-mmr":
        from . import mat_mmr

        mat_mmr.save(net, path)
    elif fmt == "mat-mipverify":
        from . import mat_mipverify

        mat_mipverify.save(net, path)
    elif fmt == "h5":
        from . import h5

        h5.save(net, path)
    elif fmt == "pt":
        from . import torch_format

        torch_format.save(net, path)
    else:
        from . import onnx_format

        onnx_format.save(net, path)


__all__ = ["FORMATS", "detect_format", "load_model", "save_format", "save_model"]
