"""Datasets: find, checksum and read MNIST, Fashion-MNIST, CIFAR-10, MMR ``.mat`` files and ``.npz`` inputs.

Every named dataset is described in ``datasets/manifest.json`` (file names, md5 sums,
mirrors, label counts). A dataset folder is looked up, in this order, in:

1. the ``data_dir`` argument (``--data-dir``),
2. ``$RELU_VERIFY_DATA`` (several folders separated by ``os.pathsep``),
3. the repository's ``datasets/`` folder (the default data home),
4. ``/usr/share/datasets`` (where Debian installs Fashion-MNIST),
5. the user cache ``~/.cache/relu-verify`` (``$RELU_VERIFY_CACHE`` or ``$XDG_CACHE_HOME`` move it),

where each of these may be the dataset folder itself or a parent holding ``mnist/``,
``fashion-mnist/``, ``cifar-10-batches-py/`` ... Files are read as ``.gz`` or uncompressed
and checked against the manifest's md5 (once per file and modification time) before
anything is parsed. Nothing is downloaded unless ``download=True`` or ``RELU_VERIFY_DOWNLOAD=1``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from .network import Classifier

Split = Literal["test", "train"]

REPO_DATASETS = Path(__file__).resolve().parents[1] / "datasets"
# the manifest lives in datasets/ (the design card's layout); verify/dataset_manifest.json is a
# symlink to it that setuptools copies into wheels, for installs without the source tree
MANIFEST_PATH = REPO_DATASETS / "manifest.json"
if not MANIFEST_PATH.is_file():
    MANIFEST_PATH = Path(__file__).resolve().parent / "dataset_manifest.json"
SYSTEM_DATASETS = Path("/usr/share/datasets")
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images (N, C, H, W) float32 in [0, 1] (or, from ``.npz``, (N, *input_shape) as given) and labels (N,)."""

    x: Tensor
    y: Tensor
    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.name}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])


# --------------------------------------------------------------------------- manifest and names


@functools.lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    try:
        datasets: dict[str, Any] = json.loads(MANIFEST_PATH.read_text())["datasets"]
        return datasets
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read the dataset manifest {MANIFEST_PATH}: {e}") from None


def canonical_name(name: str) -> str:
    """'fmnist', 'Fashion_MNIST' ... -> the manifest key ('fashion-mnist'); DataError if unknown."""
    key = name.strip().lower()
    for canon, entry in manifest().items():
        if key == canon or key in entry["aliases"]:
            return canon
    known = ", ".join(sorted(manifest()))
    raise DataError(f"unknown dataset {name!r}: use one of {known}, or the path of a .mat or .npz file")


def cache_dir() -> Path:
    env = os.environ.get("RELU_VERIFY_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "relu-verify"


def search_roots(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for datasets, in order (see the module docstring)."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get("RELU_VERIFY_DATA")
    if env:
        roots += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    roots += [REPO_DATASETS, SYSTEM_DATASETS, cache_dir()]
    return roots


def _split_files(entry: dict[str, Any], split: str) -> list[str]:
    s = entry["splits"][split]
    return list(s["batches"]) if "batches" in s else [s["images"], s["labels"]]


def _existing(folder: Path, base: str) -> Path | None:
    """folder/base or folder/base.gz (uncompressed first: it is faster to read)."""
    for cand in (folder / base, folder / f"{base}.gz"):
        if cand.is_file():
            return cand
    return None


def find_dataset_dir(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder (in look-up order) holding every file of ``name``'s ``split``."""
    entry = manifest()[name]
    files = _split_files(entry, split)
    folder: Path
    for root in search_roots(data_dir):
        for folder in [root / f for f in entry["folders"]] + [root]:
            if all(_existing(folder, f) for f in files):
                return folder
    return None


# --------------------------------------------------------------------------- checksums and IDX


_VERIFIED: set[tuple[tuple[str, int, int], str]] = set()  # (file version, expected md5)


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read_checked(path: Path, md5_raw: str | None = None, md5_gz: str | None = None) -> bytes:
    """The uncompressed bytes of ``path`` (gunzipped if it ends in .gz), checked against the md5 sums.

    The raw-bytes sum decides when it is known (a re-compressed copy is still the
    canonical data); otherwise the .gz sum. Each file is verified once per process
    (keyed by path, modification time and size).
    """
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    raw = blob
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is not a valid gzip file (truncated or corrupt: {e})") from None
    if md5_raw is not None:
        want, data = md5_raw, raw
    elif md5_gz is not None and path.suffix == ".gz":
        want, data = md5_gz, blob
    else:
        return raw  # no reference sum for this file (documented in the manifest)
    key = (_file_key(path), want)
    if key in _VERIFIED:
        return raw
    got = md5_hex(data)
    if got != want:
        raise DataError(
            f"checksum mismatch for {path}: expected md5 {want}, got {got}; the file is corrupt or not the canonical one"
        )
    _VERIFIED.add(key)
    return raw


_IDX_TYPES: dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(raw: bytes, source: str | Path, expect_ndim: int | None = None) -> np.ndarray:
    """An IDX array (the MNIST format). Wrong magic, truncated or oversized payloads raise DataError."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{source} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{source}: expected a {expect_ndim}-D IDX array, the header says {ndim}-D")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source} is truncated: the header needs {header} bytes, the file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    want = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != want:
        what = "truncated" if len(raw) < want else "too long"
        raise DataError(f"{source} is {what}: shape {dims} needs {want} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


@functools.lru_cache(maxsize=8)
def _idx_cached(key: tuple[str, int, int], md5_raw: str | None, md5_gz: str | None, ndim: int | None) -> np.ndarray:
    path = Path(key[0])
    arr = parse_idx(read_checked(path, md5_raw, md5_gz), path, ndim)
    arr.setflags(write=False)
    return arr


def read_idx(path: Path, *, md5_raw: str | None = None, md5_gz: str | None = None, ndim: int | None = None) -> np.ndarray:
    """A read-only IDX array from ``path`` (checked, parsed and cached per file version)."""
    return _idx_cached(_file_key(path), md5_raw, md5_gz, ndim)


# --------------------------------------------------------------------------- readers per format


def _md5_kw(entry: dict[str, Any], base: str, check: bool) -> dict[str, str | None]:
    """The manifest's md5 sums of ``base`` as keyword arguments of read_checked / read_idx."""
    f = entry["files"].get(base, {}) if check else {}
    return {"md5_raw": f.get("md5_raw"), "md5_gz": f.get("md5_gz")}


def _load_idx_split(entry: dict[str, Any], folder: Path, split: str, name: str, check: bool) -> Dataset:
    s = entry["splits"][split]
    img_path = _existing(folder, s["images"])
    lab_path = _existing(folder, s["labels"])
    assert img_path is not None and lab_path is not None  # find_dataset_dir checked
    images = read_idx(img_path, **_md5_kw(entry, s["images"], check), ndim=3)
    labels = read_idx(lab_path, **_md5_kw(entry, s["labels"], check), ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} has {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels")
    return _make(images[:, None], labels, name, tuple(entry["classes"]), lab_path)


def _make(images: np.ndarray, labels: np.ndarray, name: str, classes: tuple[str, ...], source: Path | str) -> Dataset:
    """uint8 (N, C, H, W) pixels and integer labels -> a Dataset in [0, 1]."""
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(f"{source}: labels must lie in 0..{len(classes) - 1}, found {int(y.min())}..{int(y.max())}")
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / np.float32(255.0))
    return Dataset(x, torch.from_numpy(y), name, classes)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10 batches contain (dicts, lists, numpy arrays): a pickle can run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, *, md5_raw: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: uint8 images (n, 3, 32, 32) and labels (n,)."""
    import io

    raw = read_checked(path, md5_raw)
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(d.get(b"data", d.get("data")))
        labels = np.asarray(d.get(b"labels", d.get("labels")))
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8 or labels.shape != (data.shape[0],):
        raise DataError(f"{path}: expected uint8 data (n, 3072) and n labels, got {data.dtype} {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels  # rows are channel-major (1024 R, 1024 G, 1024 B)


def _load_cifar_split(entry: dict[str, Any], folder: Path, split: str, check: bool) -> Dataset:
    xs, ys = [], []
    for base in entry["splits"][split]["batches"]:
        path = _existing(folder, base)
        assert path is not None
        x, y = read_cifar_batch(path, md5_raw=_md5_kw(entry, base, check)["md5_raw"])
        xs.append(x)
        ys.append(y)
    return _make(np.concatenate(xs), np.concatenate(ys), "cifar10", tuple(entry["classes"]), folder)


def load_mat_dataset(path: str | os.PathLike[str]) -> Dataset:
    """An MMR-style .mat dataset: ``images`` uint8 (N,H,W,C) or (N,H,W) (floats: already in [0,1]) and ``labels``."""
    path = Path(path)
    d = _read_mat(path)
    xk = next((k for k in ("images", "X", "x", "data") if k in d), None)
    yk = next((k for k in ("labels", "y", "Y", "targets") if k in d), None)
    if xk is None or yk is None:
        keys = ", ".join(sorted(k for k in d if not k.startswith("__")))
        raise DataError(f"{path}: a dataset .mat needs keys 'images' and 'labels', found: {keys or 'none'}")
    x = np.asarray(d[xk])
    y = np.asarray(d[yk])
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC (TensorFlow, the MMR code) -> NCHW
    elif x.ndim != 4:
        raise DataError(f"{path}: '{xk}' must be (N,H,W) or (N,H,W,C), got shape {x.shape}")
    y = _labels_from(y, x.shape[0], path)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    else:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{path}: '{xk}' contains NaN or infinite values")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataError(f"{path}: float images must lie in [0, 1], found [{x.min():g}, {x.max():g}] (store uint8 pixels instead)")
    n_classes = int(y.max()) + 1 if y.size else 0
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), path.stem,
                   tuple(str(i) for i in range(n_classes)))


def _read_mat(path: Path) -> dict[str, Any]:
    import scipy.io

    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist")
    try:
        mat: dict[str, Any] = scipy.io.loadmat(str(path))
        return mat
    except NotImplementedError:  # MATLAB v7.3 files are HDF5, stored with the axes reversed
        import h5py

        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k]).T for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    except Exception as e:
        raise DataError(f"cannot read {path} as a .mat file: {e}") from None


def _labels_from(y: np.ndarray, n: int, source: Path) -> np.ndarray:
    """(N,), (1,N), (N,1) or one-hot (N,K) labels -> int64 (N,)."""
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:
        if not np.all((y == 0) | (y == 1)) or not np.all(y.sum(1) == 1):
            raise DataError(f"{source}: 2-D labels of shape {y.shape} are not one-hot")
        labels: np.ndarray = y.argmax(1).astype(np.int64)
        return labels
    flat = y.reshape(-1)
    if flat.size != n:
        raise DataError(f"{source}: {n} images but {flat.size} labels")
    if not np.all(np.isfinite(flat)) or not np.all(flat == np.round(flat)) or (flat.size and flat.min() < 0):
        raise DataError(f"{source}: labels must be non-negative integers")
    return flat.astype(np.int64)


def load_inputs_npz(path: str | os.PathLike[str]) -> Dataset:
    """Points to certify: arrays ``x`` (N, *input_shape) in the model's input range and ``y`` (N,)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"inputs file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"cannot read {path} as an .npz file: {e}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks array(s) {', '.join(missing)}: it needs x (N, *input_shape) and y (N,), has {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
        raise DataError(f"{path}: x must be a numeric array (N, *input_shape), got {x.dtype} {x.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: x contains NaN or infinite values")
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: y must be numeric labels, got {y.dtype}")
    y = _labels_from(y, x.shape[0], path)
    n_classes = int(y.max()) + 1 if y.size else 0
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), path.stem, tuple(str(i) for i in range(n_classes)))


# --------------------------------------------------------------------------- the entry point


def download_enabled(download: bool) -> bool:
    return download or os.environ.get("RELU_VERIFY_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def load_dataset(
    name: str,
    *,
    split: Split = "test",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    check: bool = True,
) -> Dataset:
    """A named dataset (mnist, fmnist, cifar10, mnist-train-10k) or a .mat / .npz file.

    ``check=False`` skips the md5 check (for hand-made files; structure is still validated).
    MNIST's ``train`` split falls back, with a warning, to the 10k subset when the full
    training files are not found (the shared machines have only the subset).
    """
    if split not in ("test", "train"):
        raise DataError(f"split must be 'test' or 'train', got {split!r}")
    as_path = Path(name).expanduser()
    if as_path.suffix.lower() == ".mat":
        return load_mat_dataset(as_path)
    if as_path.suffix.lower() == ".npz":
        return load_inputs_npz(as_path)
    canon = canonical_name(name)
    entry = manifest()[canon]
    if split not in entry["splits"]:
        split = next(iter(entry["splits"]))  # the 10k subset has only its training split
    folder = find_dataset_dir(canon, split, data_dir)
    if folder is None and canon == "mnist" and split == "train" and not download_enabled(download):
        sub = find_dataset_dir("mnist-train-10k", "train", data_dir)
        if sub is not None:
            warnings.warn("the full MNIST training set was not found: using the 10k subset 'mnist-train-10k'", stacklevel=2)
            return _load_idx_split(manifest()["mnist-train-10k"], sub, "train", "mnist-train-10k", check)
    if folder is None:
        if not download_enabled(download) or not entry["mirrors"]:
            raise DataError(_missing_message(canon, split, data_dir))
        folder = download_dataset(canon, split=split)
    if entry["format"] == "cifar-python":
        return _load_cifar_split(entry, folder, split, check)
    name_out = canon if split == "test" or len(entry["splits"]) == 1 else f"{canon}-{split}"
    return _load_idx_split(entry, folder, split, name_out, check)


def _missing_message(canon: str, split: str, data_dir: str | os.PathLike[str] | None) -> str:
    entry = manifest()[canon]
    searched = "; ".join(str(r) for r in search_roots(data_dir))
    files = ", ".join(_split_files(entry, split))
    how = "pass --data-dir DIR or set RELU_VERIFY_DATA=DIR (DIR holding these files or a {0}/ folder with them)".format(
        entry["folders"][0])
    if entry["mirrors"]:
        how += f", or set RELU_VERIFY_DOWNLOAD=1 to download it into {cache_dir()}"
    else:
        how += " (it cannot be downloaded: it ships in ../shared/datasets)"
    return f"dataset {canon} ({split}: {files}) not found; searched {searched}; fix: {how}"


# --------------------------------------------------------------------------- download


def download_file(urls: Sequence[str], dest: Path, *, md5: str | None, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch the first URL that works into ``dest`` atomically (temp file + rename), md5-checked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if md5 is not None and digest.hexdigest() != md5:
                errors.append(f"{url}: md5 {digest.hexdigest()} != {md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as e:
            errors.append(f"{url}: HTTP {e.code} {e.reason}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(f"could not download {dest.name}: " + "; ".join(errors))


def download_dataset(
    name: str,
    *,
    split: Split | None = None,
    dest_root: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download a dataset (one split, or all) into ``dest_root`` (default: the user cache); returns its folder."""
    canon = canonical_name(name)
    entry = manifest()[canon]
    bases = list(mirrors) if mirrors is not None else list(entry["mirrors"])
    if not bases:
        raise DataError(f"dataset {canon} has no download mirror")
    root = Path(dest_root) if dest_root is not None else cache_dir()
    if entry["format"] == "cifar-python":
        return _download_cifar(entry, root, bases, timeout)
    folder: Path = root / entry["folders"][0]
    splits = [split] if split is not None else list(entry["splits"])
    for s in splits:
        for base in _split_files(entry, s):
            if _existing(folder, base) is not None:
                continue
            sums = entry["files"][base]
            dest = download_file([b.rstrip("/") + f"/{base}.gz" for b in bases], folder / f"{base}.gz",
                                 md5=sums["md5_gz"], timeout=timeout)
            read_checked(dest, sums["md5_raw"], sums["md5_gz"])
    return folder


def _download_cifar(entry: dict[str, Any], root: Path, bases: Sequence[str], timeout: float) -> Path:
    arch = entry["archive"]
    folder: Path = root / arch["member_folder"]
    if folder.is_dir() and all(_existing(folder, f) for s in entry["splits"] for f in _split_files(entry, s)):
        return folder
    tgz = download_file([b.rstrip("/") + "/" + arch["file"] for b in bases], root / arch["file"],
                        md5=arch["md5"], timeout=timeout)
    tmp = Path(tempfile.mkdtemp(prefix=".cifar-", dir=root))
    try:
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp / arch["member_folder"], folder)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot unpack {tgz}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        tgz.unlink(missing_ok=True)
    return folder


# --------------------------------------------------------------------------- fitting data to a model


@dataclass(frozen=True)
class Examples:
    """The points a run works on, with where they came from."""

    x: Tensor  # (N, *input_shape) float32 in the model's input range
    y: Tensor  # (N,) long
    indices: list[int]  # positions in the source data set
    source: str


def load_examples(
    net: "Classifier",
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    n: int | None = None,
    indices: Sequence[int] | None = None,
    inputs_path: str | None = None,
) -> Examples:
    """Test points of a named dataset (or of an ``.npz`` with x and y), checked against the model's
    input shape and range: the first ``n`` (default all) or the given data-set ``indices``."""
    if inputs_path is not None:
        if dataset is not None:
            raise DataError("give either --dataset or --inputs, not both")
        ds = load_inputs_npz(inputs_path)
        source = str(inputs_path)
    elif dataset is not None:
        ds = load_dataset(dataset, split="test", data_dir=data_dir)
        source = dataset
    else:
        raise DataError("no data: give --dataset NAME (e.g. mnist) or --inputs points.npz")
    total = len(ds.y)
    idx = list(indices) if indices is not None else list(range(total if n is None else min(n, total)))
    bad = [i for i in idx if not 0 <= i < total]
    if bad:
        raise DataError(f"index {bad[0]} is out of range: {source} has {total} points")
    x = fit_to_model(ds.x[idx], net, source)
    return Examples(x, ds.y[idx], idx, source)


def fit_to_model(x: Tensor, net: "Classifier", source: str) -> Tensor:
    """Reshape data to the model's input shape when only the layout differs; reject data outside its input range.

    (N, 1, 28, 28) images become (N, 784) for a fully connected net (C order, which
    for one channel is also the NHWC order of the MMR and MIPVerify files).
    """
    shape = tuple(net.input_shape)
    have = tuple(x.shape[1:])
    if have != shape:
        if int(np.prod(have)) != int(np.prod(shape)):
            raise DataError(f"data from {source} has shape {have}; the model expects {shape}")
        x = x.reshape(x.shape[0], *shape)
    lo, hi = net.input_range
    if x.numel():
        below, above = float(x.min()), float(x.max())
        if below < lo - 1e-6 or above > hi + 1e-6:
            raise DataError(
                f"data from {source} lies in [{below:g}, {above:g}], outside the model's input range [{lo:g}, {hi:g}]"
            )
        x = x.clamp(lo, hi)
    return x
