"""Every kind of broken model file gives a one-line ModelError that names the file."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from verify.errors import ModelError
from verify.formats import load_model, save_model
from tests.formats.nets import fc1, lenet_small

EXTS = {"mat-mmr": "mat", "mat-mipverify": "mat", "h5": "h5", "pt": "pt", "onnx": "onnx"}


def _raises(path, match: str | None = None, **kw) -> str:
    with pytest.raises(ModelError) as info:
        load_model(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert os.fspath(path) in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


def _good(tmp_path, fmt: str, net=None):
    path = tmp_path / f"good_{fmt}.{EXTS[fmt]}"
    save_model(net or lenet_small(), path, format=fmt)
    return path


@pytest.mark.parametrize("ext", ["mat", "h5", "pt", "pth", "onnx", "bin"])
def test_missing_file(tmp_path, ext):
    _raises(tmp_path / f"nope.{ext}", "not found")


@pytest.mark.parametrize("fmt", list(EXTS))
def test_truncated_file(tmp_path, fmt):
    good = _good(tmp_path, fmt)
    bad = tmp_path / f"trunc.{EXTS[fmt]}"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _raises(bad, "cannot read model file")


@pytest.mark.parametrize("ext", ["mat", "h5", "pt", "onnx"])
def test_random_bytes_and_empty_file(tmp_path, ext):
    bad = tmp_path / f"random.{ext}"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    _raises(bad)
    empty = tmp_path / f"empty.{ext}"
    empty.write_bytes(b"")
    _raises(empty, "empty")


def test_unknown_extension_and_content(tmp_path):
    bad = tmp_path / "model.xyz"
    bad.write_bytes(b"hello world")
    _raises(bad, "--format")


def test_mat_with_only_unknown_keys(tmp_path):
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"images": np.zeros((2, 3)), "labels": np.zeros(2)})
    _raises(path, "neither the MMR nor the MIPVerify .mat layout")
    _raises(path, "unexpected keys for the MMR .mat layout: images, labels", format="mat-mmr")


def _mmr(tmp_path, name: str, **change):
    d = {"weights_conv1": np.ones((4, 4, 1, 16), np.float32) * 0.01, "biases_conv1": np.zeros((1, 16), np.float32),
         "weights_conv2": np.ones((4, 4, 16, 32), np.float32) * 0.01, "biases_conv2": np.zeros((1, 32), np.float32),
         "weights_fc1": np.ones((1568, 100), np.float32) * 0.01, "biases_fc1": np.zeros((1, 100), np.float32),
         "weights_fc2": np.ones((100, 10), np.float32) * 0.01, "biases_fc2": np.zeros((1, 10), np.float32)}
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    path = tmp_path / f"{name}.mat"
    scipy.io.savemat(path, d)
    return path


def test_mmr_key_and_shape_problems(tmp_path):
    assert load_model(_mmr(tmp_path, "ok")).num_params() > 0
    _raises(_mmr(tmp_path, "nobias", biases_fc2=None), "missing key 'biases_fc2'")
    _raises(_mmr(tmp_path, "extra", notes=np.zeros(3)), "unexpected keys for the MMR .mat layout: notes")
    _raises(_mmr(tmp_path, "biaslen", biases_fc1=np.zeros((1, 99), np.float32)), "bias has 99 entries")
    _raises(_mmr(tmp_path, "fcin", weights_fc1=np.zeros((1000, 100), np.float32)), "cannot produce the 1000 inputs")
    _raises(_mmr(tmp_path, "chain", weights_fc2=np.zeros((90, 10), np.float32)), "expects 90 inputs")
    _raises(_mmr(tmp_path, "convch", weights_conv2=np.zeros((4, 4, 8, 32), np.float32)), "expects 8 input channels")
    _raises(_mmr(tmp_path, "nowfc", weights_conv2=None), "biases without weights")
    _raises(_mmr(tmp_path, "badarch"), "unknown architecture", arch="resnet")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_in_every_format(tmp_path, bad):
    word = "NaN" if np.isnan(bad) else "infinite"
    w = np.ones((100, 10), np.float32) * 0.01
    w[3, 4] = bad
    _raises(_mmr(tmp_path, "nan", weights_fc2=w), word)
    d = {"fc1/weight": np.ones((784, 20)), "fc1/bias": np.zeros(20), "logits/weight": np.ones((20, 10)),
         "logits/bias": np.zeros(10)}
    d["fc1/bias"][5] = bad
    scipy.io.savemat(tmp_path / "mip_nan.mat", d)
    _raises(tmp_path / "mip_nan.mat", word)
    for fmt in ("h5", "pt", "onnx"):
        path = _good(tmp_path, fmt, fc1())
        _poison(path, fmt, bad)
        _raises(path, word)
    sd = torch.nn.Linear(784, 10).state_dict()
    sd["weight"][0, 0] = bad
    torch.save(sd, tmp_path / "sd.pth")
    _raises(tmp_path / "sd.pth", word)


def _poison(path, fmt: str, bad: float) -> None:
    """Set one weight of a file we wrote to NaN / inf, in place."""
    if fmt == "h5":
        with h5py.File(path, "r+") as f:
            ds = f["layers/001_linear/weight"]
            a = ds[()]
            a[0, 0] = bad
            ds[...] = a
    elif fmt == "pt":
        obj = torch.load(path, weights_only=True)
        obj["layers"][1]["weight"][0, 0] = bad
        torch.save(obj, path)
    else:
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(path))
        init = m.graph.initializer[0]
        a = numpy_helper.to_array(init).copy()
        a.flat[0] = bad
        init.CopyFrom(numpy_helper.from_array(a, init.name))
        onnx.save(m, str(path))


def test_mipverify_key_and_shape_problems(tmp_path):
    base = {"conv1/weight": np.ones((4, 4, 1, 16)) * 0.01, "conv1/bias": np.zeros(16),
            "fc1/weight": np.ones((16 * 14 * 14, 10)) * 0.01, "fc1/bias": np.zeros(10)}
    scipy.io.savemat(tmp_path / "ok.mat", base)
    assert load_model(tmp_path / "ok.mat").input_shape == (1, 28, 28)
    d = dict(base)
    d.pop("conv1/bias")
    scipy.io.savemat(tmp_path / "nobias.mat", d)
    _raises(tmp_path / "nobias.mat", "missing key 'conv1/bias'")
    scipy.io.savemat(tmp_path / "unknown.mat", {**base, "fc1/gamma": np.zeros(3)})
    _raises(tmp_path / "unknown.mat", "unexpected keys for the MIPVerify .mat layout: fc1/gamma")
    scipy.io.savemat(tmp_path / "bias.mat", {**base, "conv1/bias": np.zeros(15)})
    _raises(tmp_path / "bias.mat", "bias has 15 entries")
    scipy.io.savemat(tmp_path / "order.mat", {**base, "flatten_order": "HWCN"})
    _raises(tmp_path / "order.mat", "flatten_order")
    scipy.io.savemat(tmp_path / "std.mat", {**base, "normalize/mean": np.zeros(1), "normalize/std": np.zeros(1)})
    _raises(tmp_path / "std.mat", "std must be positive")


def test_h5_problems(tmp_path):
    path = _good(tmp_path, "h5")
    with h5py.File(path, "r+") as f:
        del f["layers/000_conv2d/bias"]
    _raises(path, "missing 'bias'")
    path = _good(tmp_path, "h5")
    with h5py.File(path, "r+") as f:
        f["layers/001_relu"].attrs["kind"] = "gelu"
    _raises(path, "unknown layer kind 'gelu'")
    path = _good(tmp_path, "h5")
    with h5py.File(path, "r+") as f:
        del f["layers/005_linear/weight"]
        f["layers/005_linear"].create_dataset("weight", data=np.zeros((100, 1000)))
    _raises(path, "expects 1000 inputs")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f.create_dataset("model_weights", data=np.zeros(3))
    _raises(tmp_path / "foreign.h5", "not a relu-verify .h5 network")


def test_pt_problems(tmp_path):
    torch.save({"0.weight": torch.zeros(10, 784), "0.bias": torch.zeros(9)}, tmp_path / "bias.pth")
    _raises(tmp_path / "bias.pth", "bias has 9 entries")
    torch.save({"0.weight": torch.zeros(100, 784), "0.bias": torch.zeros(100), "2.weight": torch.zeros(10, 99),
                "2.bias": torch.zeros(10)}, tmp_path / "chain.pth")
    _raises(tmp_path / "chain.pth", "expects 99 inputs")
    torch.save({"0.weight": torch.zeros(10, 784), "0.gamma": torch.zeros(10)}, tmp_path / "key.pth")
    _raises(tmp_path / "key.pth", "unexpected state dict key '0.gamma'")
    torch.save({"epoch": 3, "optimizer": "adam"}, tmp_path / "noweights.pth")
    _raises(tmp_path / "noweights.pth", "no weights found")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    _raises(tmp_path / "list.pth", "holds a int")
    obj = torch.load(_good(tmp_path, "pt"), weights_only=True)
    del obj["layers"][0]["stride"]
    torch.save(obj, tmp_path / "ours.pt")
    _raises(tmp_path / "ours.pt", "missing 'stride'")
