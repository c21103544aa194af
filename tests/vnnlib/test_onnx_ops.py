"""The ONNX operators common in VNN-COMP networks, in hand-built graphs, against onnxruntime.

MatMul, Gemm, Add, Sub, Div, Relu, Flatten, Reshape, Conv and Constant, in the layouts VNN-COMP
benchmarks use (ACAS Xu style [N, 1, 1, 5] inputs, flat [N, 784] inputs reshaped to images,
normalisation by Sub / Div), and a clear error naming an operator that is not supported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from verify.errors import ModelError
from verify.formats import load_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(0)


def _f(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _save(tmp_path: Path, nodes, inits: dict, in_shape: list, out_shape: list, name: str = "g.onnx") -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])],
        [numpy_helper.from_array(v if v.dtype != np.float64 else v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    p = tmp_path / name
    onnx.save(m, str(p))
    return p


def _compare(path: Path, in_shape: list, lo: float = -1.0, hi: float = 1.0, n: int = 16) -> None:
    x = RNG.uniform(lo, hi, (n, *in_shape)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0].reshape(n, -1)
    net = load_model(path)
    # the network may take the input in another (C-order equivalent) shape: VNNLIB's X_i are the flat values
    with torch.no_grad():
        got = net.forward(torch.tensor(x, dtype=torch.float64).reshape(n, *net.input_shape)).reshape(n, -1).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_matmul_add_relu_acasxu_layout(tmp_path: Path) -> None:
    """Input [N, 1, 1, 5], Sub / Div normalisation by per-feature constants, Flatten, MatMul + Add, Relu."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Sub", ["f", "mean"], ["s"]),
        helper.make_node("Div", ["s", "std"], ["n"]),
        helper.make_node("MatMul", ["n", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["m2"]),
        helper.make_node("Add", ["b2", "m2"], ["y"]),  # constant first
    ]
    inits = {"mean": _f(5), "std": np.abs(_f(5)) + 0.5, "w1": _f(5, 50), "b1": _f(50), "w2": _f(50, 5), "b2": _f(5)}
    p = _save(tmp_path, nodes, inits, [1, 1, 5], [5])
    _compare(p, [1, 1, 5])


def test_matmul_on_leading_singletons(tmp_path: Path) -> None:
    """MatMul directly on an [N, 1, 784] input (no Flatten): the (1, d) tensor is the flat vector."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["a1"]), helper.make_node("MatMul", ["a1", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    inits = {"w1": _f(784, 20, scale=0.05), "b1": _f(20), "w2": _f(20, 10), "b2": _f(10)}
    p = _save(tmp_path, nodes, inits, [1, 784], [1, 10])
    _compare(p, [1, 784], 0.0, 1.0)


@pytest.mark.parametrize("trans_b,alpha,beta", [(0, 1.0, 1.0), (1, 0.5, 2.0), (0, -1.5, 0.0)])
def test_gemm_attributes(tmp_path: Path, trans_b: int, alpha: float, beta: float) -> None:
    w = _f(10, 8) if trans_b else _f(8, 10)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=trans_b, alpha=alpha, beta=beta),
             helper.make_node("Relu", ["h"], ["y"])]
    p = _save(tmp_path, nodes, {"w": w, "b": _f(10)}, [8], [10])
    _compare(p, [8])


def test_flat_input_reshaped_to_image_then_conv(tmp_path: Path) -> None:
    """[N, 784] -> Reshape (Constant shape) -> [N, 1, 28, 28] -> Conv -> Relu -> Reshape [N, -1] -> Gemm."""
    nodes = [
        helper.make_node("Constant", [], ["shape_img"], value=numpy_helper.from_array(np.array([-1, 1, 28, 28], np.int64))),
        helper.make_node("Reshape", ["x", "shape_img"], ["img"]),
        helper.make_node("Sub", ["img", "mu"], ["c"]),  # a scalar constant
        helper.make_node("Div", ["c", "sigma"], ["nimg"]),
        helper.make_node("Conv", ["nimg", "wc", "bc"], ["h"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Constant", [], ["shape_flat"], value=numpy_helper.from_array(np.array([0, -1], np.int64))),
        helper.make_node("Reshape", ["a", "shape_flat"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ]
    inits = {"mu": np.array(0.1307, np.float32), "sigma": np.array(0.3081, np.float32), "wc": _f(4, 1, 4, 4),
             "bc": _f(4), "w": _f(10, 4 * 14 * 14, scale=0.05), "b": _f(10)}
    p = _save(tmp_path, nodes, inits, [784], [10])
    net = load_model(p)
    assert tuple(net.input_shape) == (1, 28, 28)
    _compare(p, [784], 0.0, 1.0)


def test_constant_weights_and_per_channel_normalisation(tmp_path: Path) -> None:
    """Weights from Constant nodes; per-channel Sub / Div on an image; Conv without padding; Flatten; Gemm."""
    nodes = [
        helper.make_node("Constant", [], ["mean"], value=numpy_helper.from_array(np.array([[[0.2]], [[0.4]]], np.float32))),
        helper.make_node("Constant", [], ["std"], value=numpy_helper.from_array(np.array([[[0.5]], [[0.25]]], np.float32))),
        helper.make_node("Constant", [], ["wc"], value=numpy_helper.from_array(_f(3, 2, 3, 3))),
        helper.make_node("Sub", ["x", "mean"], ["s"]),
        helper.make_node("Div", ["s", "std"], ["n"]),
        helper.make_node("Conv", ["n", "wc"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Flatten", ["a"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ]
    p = _save(tmp_path, nodes, {"w": _f(4, 3 * 6 * 6), "b": _f(4)}, [2, 8, 8], [4])
    _compare(p, [2, 8, 8], 0.0, 1.0)


@pytest.mark.parametrize("op,extra", [
    ("Sigmoid", {}), ("Tanh", {}), ("Softmax", {"axis": 1}),
])
def test_unsupported_operator_is_named(tmp_path: Path, op: str, extra: dict) -> None:
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1), helper.make_node(op, ["h"], ["y"], **extra)]
    p = _save(tmp_path, nodes, {"w": _f(4, 6), "b": _f(4)}, [6], [4])
    with pytest.raises(ModelError, match=f"unsupported ONNX operator {op}"):
        load_model(p)


def test_unsupported_reshape_is_explained(tmp_path: Path) -> None:
    """A reshape in the middle of the network to a non-flat shape cannot be represented: say so."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("Flatten", ["r"], ["y"])]
    p = _save(tmp_path, nodes, {"w": _f(8, 6), "b": _f(8), "shape": np.array([-1, 2, 4], np.int64)}, [6], [8])
    with pytest.raises(ModelError, match="Reshape to"):
        load_model(p)


def test_vnnlib_cli_names_the_operator(tmp_path: Path, capsys) -> None:
    from verify.cli import main
    from verify.vnnlib import robustness_vnnlib

    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1), helper.make_node("Sigmoid", ["h"], ["y"])]
    p = _save(tmp_path, nodes, {"w": _f(4, 6), "b": _f(4)}, [6], [4])
    prop = tmp_path / "p.vnnlib"
    prop.write_text(robustness_vnnlib(np.zeros(6), np.ones(6), 0, 4))
    with pytest.raises(SystemExit) as e:
        main(["vnnlib", "--onnx", str(p), "--vnnlib", str(prop)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Sigmoid" in err and "\n" not in err
