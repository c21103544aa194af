"""Helpers shared by the format modules: file checks, atomic writes, error wrapping, geometry."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..atomic import write_atomic_with as write_atomic_with  # noqa: F401  (re-exported for the format modules)
from ..errors import ModelError

PathLike = str | os.PathLike[str]


def fail(path: PathLike, problem: str) -> ModelError:
    """A one-line ModelError naming the file and the problem."""
    return ModelError(f"model file {os.fspath(path)}: {problem}")


def check_readable(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {os.fspath(path)}")
    if p.is_dir():
        raise ModelError(f"model file {os.fspath(path)} is a folder, not a file")
    if p.stat().st_size == 0:
        raise ModelError(f"cannot read model file {os.fspath(path)}: the file is empty")
    return p


def cannot_read(path: PathLike, exc: BaseException) -> ModelError:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if len(msg) > 200:
        msg = msg[:200] + "..."
    return ModelError(f"cannot read model file {os.fspath(path)}: {msg}")


@contextlib.contextmanager
def layer_errors(path: PathLike) -> Iterator[None]:
    """Prefix errors raised while building layers (NaN weights, shape mismatches) with the file name."""
    try:
        yield
    except ModelError as e:
        text = str(e)
        if text.startswith("model file") or text.startswith("cannot read model file"):
            raise
        raise fail(path, text) from None


def read_mat(path: PathLike) -> dict[str, np.ndarray]:
    """The variables of a MATLAB .mat file (v5; v7.3 files are HDF5 and are read with h5py)."""
    import scipy.io

    p = check_readable(path)
    with open(p, "rb") as fh:
        head = fh.read(128)
    if head[:8] == b"\x89HDF\r\n\x1a\n" or b"MATLAB 7.3" in head:
        return _read_mat73(p)
    if head[126:128] not in (b"IM", b"MI") and _looks_like_text(head):
        # a v5 file carries its endian mark at bytes 126-127, a v4 file starts with binary header
        # integers: text means another kind of file (scipy would call it "truncated")
        start = head[:40].decode("ascii", "replace").split("\n")[0].strip()
        raise ModelError(f"cannot read model file {os.fspath(path)}: not a MATLAB .mat file (it is text, starting {start!r})")
    try:
        raw = scipy.io.loadmat(str(p))
    except Exception as e:  # scipy raises many types (ValueError, TypeError, MatReadError, OSError ...)
        raise cannot_read(path, e) from None
    return {k: v for k, v in raw.items() if not k.startswith("__")}


def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _read_mat73(p: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(p, "r") as f:
            def visit(name: str, obj: object) -> None:
                if isinstance(obj, h5py.Dataset) and not name.startswith("#"):
                    # MATLAB v7.3 stores arrays transposed (column-major on disk).
                    out[name] = np.asarray(obj[()]).T
            f.visititems(visit)
    except Exception as e:
        raise cannot_read(p, e) from None
    return out


def mat_string(v: np.ndarray) -> str:
    """A string stored by savemat comes back as a (1,) array of str (or char codes)."""
    a = np.asarray(v)
    if a.dtype.kind in "US":
        return "".join(str(s) for s in a.reshape(-1)).strip()
    if a.dtype.kind in "iu":
        return "".join(chr(int(c)) for c in a.reshape(-1)).strip()
    raise ModelError(f"expected a string, got an array of {a.dtype}")


def mat_ints(v: np.ndarray, what: str) -> list[int]:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
        raise ModelError(f"{what} must hold integers, got {a.tolist()}")
    return [int(x) for x in a]


def mat_floats(v: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(v, dtype=np.float64).reshape(-1)]


def as_array(v: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype.kind not in "fiu":
        raise ModelError(f"{what} is not numeric (dtype {a.dtype})")
    return a.astype(np.float64)


def vector(v: np.ndarray, what: str) -> np.ndarray:
    """A bias: (n,), (1, n) or (n, 1) -> (n,)."""
    a = as_array(v, what)
    if a.ndim > 2 or (a.ndim == 2 and min(a.shape) != 1):
        raise ModelError(f"{what} must be a vector, got shape {a.shape}")
    return a.reshape(-1)


def default_input_shape(n_in: int) -> tuple[int, ...]:
    """The image shape a flat input size most likely means (MNIST-like or CIFAR-like)."""
    if n_in == 28 * 28:
        return (1, 28, 28)
    if n_in == 32 * 32 * 3:
        return (3, 32, 32)
    return (n_in,)


def reorder_flat_rows(weight: np.ndarray, chw: tuple[int, int, int], src: str, dst: str) -> np.ndarray:
    """Columns of a (out, C*H*W) weight, reindexed from flatten order ``src`` to ``dst`` (NCHW / NHWC)."""
    if src == dst:
        return weight
    c, h, w = chw
    out = weight.shape[0]
    if src == "NHWC":
        return weight.reshape(out, h, w, c).transpose(0, 3, 1, 2).reshape(out, -1)
    return weight.reshape(out, c, h, w).transpose(0, 2, 3, 1).reshape(out, -1)


def compact(a: np.ndarray) -> np.ndarray:
    """float32 when that loses nothing (weights trained in float32), else float64."""
    a = np.asarray(a, dtype=np.float64)
    a32 = a.astype(np.float32)
    return a32 if np.array_equal(a32.astype(np.float64), a) else a


def numbered(keys: Sequence[str], prefix: str, suffix: str = "") -> list[int]:
    """Sorted indices i of keys spelled prefix{i}suffix."""
    import re

    pat = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    return sorted(int(m.group(1)) for k in keys if (m := pat.match(k)))
