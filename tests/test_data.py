"""verify.data: the real shared files, checksums, look-up order, corrupt files, other formats, download over loopback."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from verify import data
from verify.errors import DataError, VerifyError
from verify.network import Flatten, Linear, Network

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No default data home, system folder or cache outside tmp_path; no env overrides."""
    for var in ("RELU_VERIFY_DATA", "RELU_VERIFY_DOWNLOAD", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data, "REPO_DATASETS", tmp_path / "repo-datasets")
    monkeypatch.setattr(data, "SYSTEM_DATASETS", tmp_path / "usr-share-datasets")
    monkeypatch.setenv("RELU_VERIFY_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _raw_md5(path: Path) -> str:
    return hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()


# --------------------------------------------------------------------------- the shared files


def test_mnist_test_set(shared_data):
    ds = data.load_dataset("mnist", data_dir=shared_data)
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.long and ds.name == "mnist"
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert torch.equal(ds.x * 255, (ds.x * 255).round())  # k/255 pixels
    assert torch.bincount(ds.y).tolist() == MNIST_TEST_COUNTS
    assert ds.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first ten test labels
    assert data.manifest()["mnist"]["splits"]["test"]["label_counts"] == MNIST_TEST_COUNTS


def test_fashion_mnist_train_and_test(shared_data):
    for alias in ("fmnist", "fashion-mnist", "fashion_mnist"):
        assert data.canonical_name(alias) == "fashion-mnist"
    test = data.load_dataset("fmnist", data_dir=shared_data)
    train = data.load_dataset("fashion_mnist", split="train", data_dir=shared_data)
    assert test.x.shape == (10000, 1, 28, 28) and train.x.shape == (60000, 1, 28, 28)
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert test.classes[0] == "T-shirt/top" and test.classes[9] == "Ankle boot"
    for ds in (test, train):
        assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0


def test_mnist_train_10k_subset(shared_data):
    sub = data.load_dataset("mnist-train-10k", data_dir=shared_data)
    assert sub.x.shape == (10000, 1, 28, 28) and sub.name == "mnist-train-10k"
    assert torch.bincount(sub.y).tolist() == data.manifest()["mnist-train-10k"]["splits"]["train"]["label_counts"]
    assert torch.bincount(sub.y).min() >= 850  # about 1,000 per class
    with pytest.warns(UserWarning, match="10k subset"):
        fallback = data.load_dataset("mnist", split="train", data_dir=shared_data)
    assert fallback.name == "mnist-train-10k" and torch.equal(fallback.x, sub.x)
    # provenance says none of these images is in the test set
    test = data.load_dataset("mnist", data_dir=shared_data)
    as_bytes = lambda t: {bytes(r) for r in (t * 255).round().to(torch.uint8).reshape(len(t), -1).numpy()}
    assert not as_bytes(sub.x) & as_bytes(test.x)


def test_manifest_sums_match_the_shared_readme_and_files(shared_data):
    """The manifest's raw md5 sums agree with ../shared/datasets/README.md and with the files themselves."""
    readme = (shared_data / "README.md").read_text()
    pairs = re.findall(r"\|\s*([\w-]+)/([\w-]+)\s*\|\s*([0-9a-f]{32})\s*\|", readme)
    assert len(pairs) == 8
    for folder, base, md5 in pairs:
        name = data.canonical_name(folder)
        assert data.manifest()[name]["files"][base]["md5_raw"] == md5
        assert _raw_md5(shared_data / folder / f"{base}.gz") == md5
    # the canonical MNIST .gz sums (given in the README as well) match the shared .gz files byte for byte
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        gz = shared_data / "mnist" / f"{base}.gz"
        assert hashlib.md5(gz.read_bytes()).hexdigest() == data.manifest()["mnist"]["files"][base]["md5_gz"]


def test_verification_is_cached_per_file_version(shared_data, tmp_path):
    src = shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    copy = tmp_path / src.name
    shutil.copy(src, copy)
    want = data.manifest()["mnist"]["files"]["t10k-labels-idx1-ubyte"]["md5_raw"]
    data.read_checked(copy, want)
    assert (data._file_key(copy), want) in data._VERIFIED
    # a new version of the file (different size) is verified again, and fails
    copy.write_bytes(gzip.compress(gzip.decompress(src.read_bytes()) + b"\0"))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.read_checked(copy, want)


# --------------------------------------------------------------------------- look-up order


def _mnist_copy(shared_data: Path, root: Path, sub: str = "mnist") -> Path:
    folder = root / sub if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / f"{base}.gz").symlink_to(shared_data / "mnist" / f"{base}.gz")
    return folder


def test_lookup_order(shared_data, isolated, monkeypatch):
    tmp = isolated
    arg = _mnist_copy(shared_data, tmp / "arg")
    env = _mnist_copy(shared_data, tmp / "env")
    repo = _mnist_copy(shared_data, tmp / "repo-datasets")
    system = _mnist_copy(shared_data, tmp / "usr-share-datasets")
    cache = _mnist_copy(shared_data, tmp / "cache")
    monkeypatch.setenv("RELU_VERIFY_DATA", str(tmp / "env"))
    assert data.find_dataset_dir("mnist", "test", tmp / "arg") == arg  # data_dir first
    assert data.find_dataset_dir("mnist", "test", arg) == arg  # the dataset folder itself works too
    assert data.find_dataset_dir("mnist", "test") == env  # then the env variable
    monkeypatch.delenv("RELU_VERIFY_DATA")
    assert data.find_dataset_dir("mnist", "test") == repo  # then datasets/
    shutil.rmtree(repo)
    assert data.find_dataset_dir("mnist", "test") == system  # then /usr/share/datasets
    shutil.rmtree(system)
    assert data.find_dataset_dir("mnist", "test") == cache  # then the user cache
    # an uncompressed copy is found and read as well
    raw = tmp / "raw" / "mnist"
    raw.mkdir(parents=True)
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / base).write_bytes(gzip.decompress((shared_data / "mnist" / f"{base}.gz").read_bytes()))
    ds = data.load_dataset("mnist", data_dir=tmp / "raw")
    assert torch.bincount(ds.y).tolist() == MNIST_TEST_COUNTS


def test_env_var_used_by_load_dataset(shared_data, isolated, monkeypatch):
    monkeypatch.setenv("RELU_VERIFY_DATA", f"{isolated / 'nothing'}:{shared_data}")
    assert len(data.load_dataset("mnist")) == 10000


def test_missing_dataset_one_line(isolated):
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        data.load_dataset("fmnist", data_dir=empty)
    msg = str(e.value)
    assert "\n" not in msg and "not found" in msg
    assert str(empty) in msg and str(isolated / "cache") in msg
    assert "--data-dir" in msg and "RELU_VERIFY_DATA" in msg and "RELU_VERIFY_DOWNLOAD=1" in msg
    assert not (isolated / "cache").exists()  # nothing was downloaded
    with pytest.raises(DataError, match="cannot be downloaded"):
        data.load_dataset("mnist-train-10k", data_dir=empty)
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        data.load_dataset("svhn")


# --------------------------------------------------------------------------- corrupt files


def test_corrupt_and_truncated_files(shared_data, isolated):
    folder = isolated / "bad" / "mnist"
    folder.mkdir(parents=True)
    images = gzip.decompress((shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    shutil.copy(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", folder)
    img = folder / "t10k-images-idx3-ubyte"

    changed = bytearray(images)
    changed[5000] ^= 0xFF
    img.write_bytes(bytes(changed))
    with pytest.raises(DataError, match=r"checksum mismatch for .*t10k-images-idx3-ubyte: expected md5 2646ac64"):
        data.load_dataset("mnist", data_dir=folder.parent)

    img.write_bytes(images[:-100])
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_dataset("mnist", data_dir=folder.parent)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is truncated: shape \(10000, 28, 28\)"):
        data.load_dataset("mnist", data_dir=folder.parent, check=False)

    img.write_bytes(images + b"extra")
    with pytest.raises(DataError, match="too long"):
        data.load_dataset("mnist", data_dir=folder.parent, check=False)

    img.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated: the header needs 16 bytes"):
        data.load_dataset("mnist", data_dir=folder.parent, check=False)

    img.write_bytes(b"GIF89a" + images[6:])
    with pytest.raises(DataError, match="not an IDX file"):
        data.load_dataset("mnist", data_dir=folder.parent, check=False)

    img.unlink()
    gz = folder / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes((shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()[:50000])
    with pytest.raises(DataError, match="not a valid gzip file"):
        data.load_dataset("mnist", data_dir=folder.parent)

    # labels with an image count that does not match
    gz.unlink()
    img.write_bytes(images[:4] + (100).to_bytes(4, "big") + images[8:16] + images[16 : 16 + 100 * 784])
    with pytest.raises(DataError, match="100 images but .* 10000 labels"):
        data.load_dataset("mnist", data_dir=folder.parent, check=False)


def test_wrong_dataset_in_folder_is_caught(shared_data, isolated):
    """MNIST files in a folder named fashion-mnist fail the Fashion-MNIST checksum."""
    _mnist_copy(shared_data, isolated / "mixup", "fashion-mnist")
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_dataset("fmnist", data_dir=isolated / "mixup")


# --------------------------------------------------------------------------- other formats


def test_npz_inputs(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(5, 3, 4, 4))
    y = np.array([0, 2, 1, 1, 0])
    p = tmp_path / "pts.npz"
    np.savez(p, x=x, y=y)
    ds = data.load_inputs_npz(p)
    assert ds.x.shape == (5, 3, 4, 4) and ds.x.dtype == torch.float32
    assert np.allclose(ds.x.numpy(), x, atol=1e-7) and ds.y.tolist() == y.tolist()
    assert data.load_dataset(str(p)).y.tolist() == y.tolist()

    np.savez(tmp_path / "noy.npz", x=x)
    with pytest.raises(DataError, match="lacks array.* y"):
        data.load_inputs_npz(tmp_path / "noy.npz")
    bad = x.copy()
    bad[1, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=y)
    with pytest.raises(DataError, match="NaN"):
        data.load_inputs_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "len.npz", x=x, y=y[:4])
    with pytest.raises(DataError, match="5 images but 4 labels"):
        data.load_inputs_npz(tmp_path / "len.npz")
    with pytest.raises(DataError, match="does not exist"):
        data.load_inputs_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        data.load_inputs_npz(tmp_path / "junk.npz")


def test_mmr_mat_dataset(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(6, 28, 28, 1), dtype=np.uint8)  # NHWC as in the MMR code
    labels = np.array([3, 1, 4, 1, 5, 9])
    scipy.io.savemat(tmp_path / "a.mat", {"images": imgs, "labels": labels[None, :]})  # (1, N) labels
    ds = data.load_dataset(str(tmp_path / "a.mat"))
    assert ds.x.shape == (6, 1, 28, 28) and ds.y.tolist() == labels.tolist()
    assert torch.equal(ds.x[:, 0] * 255, torch.from_numpy(imgs[..., 0]).float())

    rgb = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    onehot = np.eye(10)[[0, 7, 7, 2]]
    scipy.io.savemat(tmp_path / "b.mat", {"images": rgb, "labels": onehot})
    ds = data.load_dataset(str(tmp_path / "b.mat"))
    assert ds.x.shape == (4, 3, 32, 32) and ds.y.tolist() == [0, 7, 7, 2]
    assert torch.equal((ds.x * 255).round().to(torch.uint8), torch.from_numpy(rgb).permute(0, 3, 1, 2))

    scipy.io.savemat(tmp_path / "c.mat", {"pixels": imgs})
    with pytest.raises(DataError, match="needs keys 'images' and 'labels'"):
        data.load_dataset(str(tmp_path / "c.mat"))
    scipy.io.savemat(tmp_path / "d.mat", {"images": imgs, "labels": labels[:5]})
    with pytest.raises(DataError, match="6 images but 5 labels"):
        data.load_dataset(str(tmp_path / "d.mat"))


def _cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    y = [int(v) for v in rng.integers(0, 10, size=n)]
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": y, b"data": x}, fh)
    return x, y


def test_fake_cifar_batch(isolated):
    folder = isolated / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x, y = _cifar_batch(folder / "test_batch", 7, 0)
    # not the canonical file: the checksum says so
    with pytest.raises(DataError, match=r"checksum mismatch for .*test_batch: expected md5 40351d58"):
        data.load_dataset("cifar10", data_dir=isolated / "c")
    ds = data.load_dataset("cifar10", data_dir=isolated / "c", check=False)
    assert ds.x.shape == (7, 3, 32, 32) and ds.y.tolist() == y and ds.classes[0] == "airplane"
    # rows are 1024 red, 1024 green, 1024 blue values, each in row-major order
    assert round(float(ds.x[2, 1, 3, 5]) * 255) == x[2, 1024 + 3 * 32 + 5]
    assert torch.equal((ds.x * 255).round().to(torch.uint8).reshape(7, -1), torch.from_numpy(x))
    # the training split needs all five batches
    with pytest.raises(DataError, match="data_batch_1"):
        data.load_dataset("cifar10", split="train", data_dir=isolated / "c", check=False)


def test_cifar_pickle_that_runs_code_is_refused(isolated):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = isolated / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load"):
        data.load_dataset("cifar10", data_dir=isolated, check=False)


# --------------------------------------------------------------------------- fitting data to a model


def _fc_net(input_shape, input_range=(0.0, 1.0)) -> Network:
    d = int(np.prod(input_shape))
    layers = ([Flatten()] if len(input_shape) > 1 else []) + [Linear(torch.zeros(10, d))]
    return Network(layers, input_shape, input_range)


def test_fit_to_model():
    x = torch.rand(3, 1, 28, 28)
    out = data.fit_to_model(x, _fc_net((784,)), "mnist")
    assert out.shape == (3, 784) and torch.equal(out, x.reshape(3, -1))
    assert data.fit_to_model(x, _fc_net((1, 28, 28)), "mnist").shape == (3, 1, 28, 28)
    with pytest.raises(DataError, match=r"data from mnist has shape \(1, 28, 28\); the model expects \(3, 32, 32\)"):
        data.fit_to_model(x, _fc_net((3, 32, 32)), "mnist")
    with pytest.raises(DataError, match=r"outside the model's input range \[-0.5, 0.5\]"):
        data.fit_to_model(x, _fc_net((784,), (-0.5, 0.5)), "mnist")
    assert issubclass(DataError, VerifyError)


# --------------------------------------------------------------------------- download over loopback


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_download_from_loopback_mirror(shared_data, isolated, http_root):
    www, url = http_root
    (www / "mirror").mkdir()
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(shared_data / "mnist" / f"{base}.gz", www / "mirror")
    dest = isolated / "dl"
    # the first mirror is dead (404): the second is used
    folder = data.download_dataset("mnist", split="test", dest_root=dest, mirrors=[f"{url}/gone/", f"{url}/mirror/"])
    assert folder == dest / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    ds = data.load_dataset("mnist", data_dir=dest)
    assert torch.bincount(ds.y).tolist() == MNIST_TEST_COUNTS


def test_download_rejects_wrong_file_and_leaves_nothing(isolated, http_root):
    www, url = http_root
    (www / "f.gz").write_bytes(gzip.compress(b"not mnist"))
    dest = isolated / "dl" / "f.gz"
    with pytest.raises(DataError, match=r"could not download f.gz: .*md5 .* != 0123"):
        data.download_file([f"{url}/f.gz"], dest, md5="0123" + "0" * 28, timeout=5)
    with pytest.raises(DataError, match="could not download f.gz: .*404"):
        data.download_file([f"{url}/nothing.gz"], dest, md5=None, timeout=5)
    assert list(dest.parent.iterdir()) == []  # no partial or temporary files
    good = data.download_file([f"{url}/f.gz"], dest, md5=hashlib.md5((www / "f.gz").read_bytes()).hexdigest(), timeout=5)
    assert gzip.decompress(good.read_bytes()) == b"not mnist"


def test_wheel_manifest_is_the_datasets_manifest() -> None:
    """verify/dataset_manifest.json (what wheels ship) is a link to datasets/manifest.json, not a copy."""
    from pathlib import Path

    root = Path(data.__file__).resolve().parents[1]
    link = root / "verify" / "dataset_manifest.json"
    assert link.is_symlink()
    assert link.resolve() == (root / "datasets" / "manifest.json").resolve()
