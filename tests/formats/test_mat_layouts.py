"""Hand-built .mat files in the MMR and MIPVerify layouts (no keys of ours) against independent PyTorch models.

The oracles compute what TensorFlow / MIPVerify compute: NHWC tensors, HWIO kernels, 'SAME'
padding (hard-coded here from TF's rule: 4x4 stride 2 on 28 or 14 pads 1 and 1; 3x3 stride 2 on
28 pads 0 top/left and 1 bottom/right), x @ W with (in, out) dense weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

from verify.errors import ModelError
from verify.formats import load_model
from verify.network import Flatten

TOL = 1e-5
rng = np.random.default_rng(0)


def _r(*shape: int, scale: float) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _tf_conv(x_nhwc: torch.Tensor, w_hwio: np.ndarray, b: np.ndarray, stride: int, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """tf.nn.conv2d(x, w, strides, padding) + b, NHWC in and out, with explicit (top, bottom, left, right) pads."""
    t, bo, l, r = pads
    x = x_nhwc.permute(0, 3, 1, 2)
    x = F.pad(x, (l, r, t, bo))
    w = torch.from_numpy(w_hwio).double().permute(3, 2, 0, 1)
    y = F.conv2d(x, w, torch.from_numpy(b.reshape(-1)).double(), stride)
    return y.permute(0, 2, 3, 1)


def _dense(x: torch.Tensor, w_in_out: np.ndarray, b: np.ndarray) -> torch.Tensor:
    return x @ torch.from_numpy(w_in_out).double() + torch.from_numpy(b.reshape(-1)).double()


def _logits(path, x: torch.Tensor, **kw) -> np.ndarray:
    net = load_model(path, **kw)
    with torch.no_grad():
        return net(x.double()).numpy()


def test_mmr_cnn_lenet_small(tmp_path, mnist100):
    p = {"weights_conv1": _r(4, 4, 1, 16, scale=0.35), "biases_conv1": _r(1, 16, scale=0.1),
         "weights_conv2": _r(4, 4, 16, 32, scale=0.1), "biases_conv2": _r(1, 32, scale=0.1),
         "weights_fc1": _r(1568, 100, scale=0.04), "biases_fc1": _r(1, 100, scale=0.1),
         "weights_fc2": _r(100, 10, scale=0.15), "biases_fc2": _r(1, 10, scale=0.1)}
    path = tmp_path / "mmr.mat"
    scipy.io.savemat(path, p)
    x = mnist100.double().permute(0, 2, 3, 1)  # NHWC, as the MMR code feeds TF
    h = torch.relu(_tf_conv(x, p["weights_conv1"], p["biases_conv1"], 2, (1, 1, 1, 1)))
    h = torch.relu(_tf_conv(h, p["weights_conv2"], p["biases_conv2"], 2, (1, 1, 1, 1)))
    h = torch.relu(_dense(h.reshape(len(h), -1), p["weights_fc1"], p["biases_fc1"]))
    want = _dense(h, p["weights_fc2"], p["biases_fc2"]).numpy()
    got = _logits(path, mnist100)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert (want.argmax(1) == got.argmax(1)).all()
    net = load_model(path)
    assert net.input_shape == (1, 28, 28) and net.layers[0].stride == (2, 2)
    assert isinstance(net.layers[4], Flatten) and net.layers[4].order == "NHWC"


def test_mmr_asymmetric_same_padding(tmp_path, mnist100):
    # 3x3 stride 2 on 28x28: TF pads 0 on top/left and 1 on bottom/right
    p = {"weights_conv1": _r(3, 3, 1, 8, scale=0.4), "biases_conv1": _r(1, 8, scale=0.1),
         "weights_conv2": _r(4, 4, 8, 16, scale=0.15), "biases_conv2": _r(1, 16, scale=0.1),
         "weights_fc1": _r(784, 10, scale=0.05), "biases_fc1": _r(1, 10, scale=0.1)}
    path = tmp_path / "asym.mat"
    scipy.io.savemat(path, p)
    x = mnist100.double().permute(0, 2, 3, 1)
    h = torch.relu(_tf_conv(x, p["weights_conv1"], p["biases_conv1"], 2, (0, 1, 0, 1)))
    h = torch.relu(_tf_conv(h, p["weights_conv2"], p["biases_conv2"], 2, (1, 1, 1, 1)))
    want = _dense(h.reshape(len(h), -1), p["weights_fc1"], p["biases_fc1"]).numpy()
    np.testing.assert_allclose(_logits(path, mnist100), want, atol=TOL, rtol=0)
    # the wrong (symmetric) padding would be visibly different: the test can tell
    h2 = torch.relu(_tf_conv(x, p["weights_conv1"], p["biases_conv1"], 2, (1, 0, 1, 0)))
    h2 = torch.relu(_tf_conv(h2, p["weights_conv2"], p["biases_conv2"], 2, (1, 1, 1, 1)))
    assert np.abs(_dense(h2.reshape(len(h2), -1), p["weights_fc1"], p["biases_fc1"]).numpy() - want).max() > 1e-2


def test_mmr_fc1_and_deeper_mlp(tmp_path, mnist100):
    x = mnist100.double().reshape(100, -1)
    p = {"U": _r(784, 50, scale=0.05), "bU": _r(1, 50, scale=0.1), "W": _r(50, 10, scale=0.2), "bW": _r(1, 10, scale=0.1)}
    scipy.io.savemat(tmp_path / "fc1.mat", p)
    want = _dense(torch.relu(_dense(x, p["U"], p["bU"])), p["W"], p["bW"]).numpy()
    np.testing.assert_allclose(_logits(tmp_path / "fc1.mat", mnist100), want, atol=TOL, rtol=0)

    q = {"weight_0": _r(784, 30, scale=0.05), "bias_0": _r(1, 30, scale=0.1), "weight_1": _r(30, 20, scale=0.2),
         "bias_1": _r(1, 20, scale=0.1), "weight_2": _r(20, 10, scale=0.2), "bias_2": _r(1, 10, scale=0.1)}
    scipy.io.savemat(tmp_path / "fc2.mat", q)
    h = torch.relu(_dense(x, q["weight_0"], q["bias_0"]))
    h = torch.relu(_dense(h, q["weight_1"], q["bias_1"]))
    want = _dense(h, q["weight_2"], q["bias_2"]).numpy()
    np.testing.assert_allclose(_logits(tmp_path / "fc2.mat", mnist100), want, atol=TOL, rtol=0)


def test_mmr_cnn_lenet_large_needs_arch(tmp_path, mnist100):
    p = {"weights_conv1": _r(4, 4, 1, 8, scale=0.3), "biases_conv1": _r(1, 8, scale=0.1),
         "weights_conv2": _r(3, 3, 8, 8, scale=0.15), "biases_conv2": _r(1, 8, scale=0.1),
         "weights_conv3": _r(4, 4, 8, 16, scale=0.1), "biases_conv3": _r(1, 16, scale=0.1),
         "weights_conv4": _r(3, 3, 16, 16, scale=0.1), "biases_conv4": _r(1, 16, scale=0.1),
         "weights_fc1": _r(784, 20, scale=0.05), "biases_fc1": _r(1, 20, scale=0.1),
         "weights_fc2": _r(20, 10, scale=0.2), "biases_fc2": _r(1, 10, scale=0.1)}
    path = tmp_path / "large.mat"
    scipy.io.savemat(path, p)
    with pytest.raises(ModelError, match=r"ambiguous conv strides.*--arch"):
        load_model(path)
    x = mnist100.double().permute(0, 2, 3, 1)
    h = x
    for i, s in zip(range(1, 5), (2, 1, 2, 1)):
        h = torch.relu(_tf_conv(h, p[f"weights_conv{i}"], p[f"biases_conv{i}"], s, (1, 1, 1, 1)))
    h = torch.relu(_dense(h.reshape(len(h), -1), p["weights_fc1"], p["biases_fc1"]))
    want = _dense(h, p["weights_fc2"], p["biases_fc2"]).numpy()
    np.testing.assert_allclose(_logits(path, mnist100, arch="cnn_lenet_large"), want, atol=TOL, rtol=0)
    with pytest.raises(ModelError, match="2 conv layers, the file has 4"):
        load_model(path, arch="cnn_lenet_small")


def _wk17a_torch():
    torch.manual_seed(5)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 4, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 4, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(32 * 7 * 7, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10)).double()


def _mipverify_dict(m) -> dict[str, np.ndarray]:
    """What MIPVerify_data's WK17a convert.py writes: HWIO convs, (in, out) dense, 1-D biases."""
    t = lambda v: v.detach().numpy()  # noqa: E731
    return {"conv1/weight": np.transpose(t(m[0].weight), [2, 3, 1, 0]), "conv1/bias": t(m[0].bias),
            "conv2/weight": np.transpose(t(m[2].weight), [2, 3, 1, 0]), "conv2/bias": t(m[2].bias),
            "fc1/weight": t(m[5].weight).T, "fc1/bias": t(m[5].bias),
            "logits/weight": t(m[7].weight).T, "logits/bias": t(m[7].bias)}


def test_mipverify_wk17a_layout(tmp_path, mnist100):
    m = _wk17a_torch()
    path = tmp_path / "wk17a.mat"
    scipy.io.savemat(path, _mipverify_dict(m))
    assert scipy.io.loadmat(path)["conv1/bias"].shape == (1, 16)  # MIPVerify drops dim 1
    with torch.no_grad():
        want = m(mnist100.double()).numpy()
    np.testing.assert_allclose(_logits(path, mnist100), want, atol=TOL, rtol=0)
    net = load_model(path, format="mat-mipverify")
    assert net.layers[4].order == "NCHW"  # Flatten([1, 3, 2, 4]): PyTorch order


def test_mipverify_nhwc_flatten_and_normalize_keys(tmp_path, mnist100):
    m = _wk17a_torch()
    d = _mipverify_dict(m)
    # the same dense weights read in TF order: permute the rows of fc1 so that NHWC gives the same net
    w = d["fc1/weight"].T.reshape(100, 32, 7, 7).transpose(0, 2, 3, 1).reshape(100, -1)
    d["fc1/weight"] = w.T
    d["flatten_order"] = "NHWC"
    d["normalize/mean"] = np.array([0.25])
    d["normalize/std"] = np.array([0.5])
    path = tmp_path / "nhwc.mat"
    scipy.io.savemat(path, d)
    with torch.no_grad():
        want = m((mnist100.double() - 0.25) / 0.5).numpy()
    np.testing.assert_allclose(_logits(path, mnist100), want, atol=TOL, rtol=0)


def test_mipverify_fc_softmax_head(tmp_path, mnist100):
    # the MMR repo's converted fc1 nets call the last layer "softmax"
    d = {"fc1/weight": _r(784, 40, scale=0.05), "fc1/bias": _r(40, scale=0.1),
         "softmax/weight": _r(40, 10, scale=0.2), "softmax/bias": _r(10, scale=0.1)}
    scipy.io.savemat(tmp_path / "fc.mat", d)
    x = mnist100.double().reshape(100, -1)
    want = _dense(torch.relu(_dense(x, d["fc1/weight"], d["fc1/bias"])), d["softmax/weight"], d["softmax/bias"]).numpy()
    np.testing.assert_allclose(_logits(tmp_path / "fc.mat", mnist100), want, atol=TOL, rtol=0)
