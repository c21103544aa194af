"""ONNX files written by others (PyTorch's exporter, hand-built graphs) against onnxruntime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from verify.errors import ModelError
from verify.formats import load_model
from verify.network import ChannelAffine, Flatten, Residual

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TOL = 1e-5


def _ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ours(path, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_model(path)(x.double()).numpy()


class _Net(nn.Module):
    """Normalisation, a residual block and x.view(x.size(0), -1): the usual PyTorch export patterns."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, 2, 1)
        self.c2 = nn.Conv2d(8, 8, 3, 1, 1)
        self.c3 = nn.Conv2d(8, 8, 3, 1, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = (x - 0.1307) / 0.3081
        x = torch.relu(self.c1(x))
        x = torch.relu(x + self.c3(torch.relu(self.c2(x))))
        x = self.pool(x)
        return self.fc(x.view(x.size(0), -1))


def test_torch_exported_model(tmp_path, mnist100):
    torch.manual_seed(0)
    m = _Net().eval()
    path = tmp_path / "torch.onnx"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.rand(1, 1, 28, 28), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=13)
    path.write_bytes(buf.getvalue())
    net = load_model(path)
    assert isinstance(net.layers[0], ChannelAffine) and any(isinstance(l, Residual) for l in net.layers)
    want = _ort(path, mnist100.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(want, m(mnist100).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(_ours(path, mnist100), want, atol=TOL, rtol=0)


def _model(nodes, inits, in_shape=(1, 28, 28), n_out=10, opset=13):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f" else np.int64), k)
         for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_hand_built_graph_with_constants_matmul_and_nhwc_flatten(tmp_path, mnist100):
    rng = np.random.default_rng(1)
    w_conv = rng.standard_normal((4, 1, 4, 4)).astype(np.float32) * 0.4
    w1 = rng.standard_normal((4 * 14 * 14, 20)).astype(np.float32) * 0.05
    w2 = rng.standard_normal((20, 10)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("Constant", [], ["mean"], value=numpy_helper.from_array(np.array([[[0.5]]], np.float32))),
        helper.make_node("Sub", ["x", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["xn"]),
        helper.make_node("Conv", ["xn", "wc"], ["h1"], strides=[2, 2], pads=[1, 1, 1, 1]),  # no bias input
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Transpose", ["a1"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Identity", ["a2"], ["a2i"]),
        helper.make_node("Gemm", ["a2i", "w2", "b2"], ["y"], alpha=0.5, beta=2.0),
    ]
    inits = {"std": np.array([0.25], np.float32).reshape(1, 1, 1), "wc": w_conv, "shape": np.array([-1, 4 * 14 * 14]),
             "w1": w1, "b1": rng.standard_normal(20).astype(np.float32) * 0.1, "w2": w2,
             "b2": rng.standard_normal(10).astype(np.float32) * 0.1}
    path = tmp_path / "hand.onnx"
    onnx.save(_model(nodes, inits), path)
    net = load_model(path)
    assert [type(l).__name__ for l in net.layers] == ["ChannelAffine", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]
    assert isinstance(net.layers[3], Flatten) and net.layers[3].order == "NHWC"
    np.testing.assert_allclose(_ours(path, mnist100), _ort(path, mnist100.numpy()), atol=TOL, rtol=0)


def test_unsupported_operator_is_named(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "w", "b"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["y"])]
    inits = {"w": np.zeros((10, 784), np.float32), "b": np.zeros(10, np.float32)}
    path = tmp_path / "sigmoid.onnx"
    onnx.save(_model(nodes, inits), path)
    with pytest.raises(ModelError, match=r"sigmoid.onnx: unsupported ONNX operator Sigmoid"):
        load_model(path)


def test_gemm_on_unflattened_input_is_rejected(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    path = tmp_path / "noflat.onnx"
    onnx.save(_model(nodes, {"w": np.zeros((10, 784), np.float32), "b": np.zeros(10, np.float32)}), path)
    with pytest.raises(ModelError, match="flatten it first"):
        load_model(path)
