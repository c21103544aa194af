"""``verify info`` and ``verify convert`` through the real CLI entry point."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from verify.cli import main
from verify.formats import load_model, save_model
from tests.formats.nets import fancy, lenet_small


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_info_summary(tmp_path, capsys):
    path = tmp_path / "net.h5"
    save_model(fancy(), path)
    code, out, err = run(["info", str(path)], capsys)
    assert code == 0, err
    net = fancy()
    assert f"parameters: {net.num_params()}" in out and f"ReLUs: {net.num_relus()}" in out
    assert "input (1, 28, 28) in [0, 1]" in out and "Residual" in out


def test_info_clean_accuracy_matches_a_direct_count(tmp_path, capsys, shared_data):
    from verify.data import load_dataset

    net = lenet_small()
    path = tmp_path / "net.mat"
    save_model(net, path)
    code, out, err = run(["info", str(path), "--dataset", "mnist", "--data-dir", str(shared_data), "-n", "50"], capsys)
    assert code == 0, err
    ds = load_dataset("mnist", data_dir=shared_data)
    correct = int((net.predict(ds.x[:50]) == ds.y[:50]).sum())
    assert f"{correct}/50" in out


def test_convert_every_direction(tmp_path, capsys):
    net = lenet_small()
    src = tmp_path / "a.mat"
    save_model(net, src)
    x = torch.rand(7, 1, 28, 28, dtype=torch.float64)
    prev = src
    for out_name, fmt in [("b.onnx", "onnx"), ("c.pt", "pt"), ("d.h5", "h5"), ("e.mat", "mat-mmr")]:
        code, out, err = run(["convert", str(prev), str(tmp_path / out_name)], capsys)
        assert code == 0, err
        assert f"({fmt})" in out
        assert np.abs(load_model(tmp_path / out_name)(x).numpy() - net(x).numpy()).max() <= 1e-5
        prev = tmp_path / out_name
    code, out, err = run(["convert", str(src), str(tmp_path / "f.mat"), "--format", "mat-mipverify"], capsys)
    assert code == 0 and "(mat-mipverify)" in out
    assert "conv1/weight" in scipy.io.loadmat(tmp_path / "f.mat")


def test_convert_state_dict_with_arch(tmp_path, capsys):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 4, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 4, 2, 1), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 7 * 7, 20), torch.nn.ReLU(), torch.nn.Linear(20, 10))
    torch.save(m.state_dict(), tmp_path / "kw.pth")
    code, out, err = run(["convert", str(tmp_path / "kw.pth"), str(tmp_path / "kw.onnx"), "--arch", "kw_small"], capsys)
    assert code == 0, err
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert np.abs(load_model(tmp_path / "kw.onnx")(x).numpy() - m(x).numpy()).max() <= 1e-5


def _one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs_through_the_cli(tmp_path, capsys):
    _one_line_error(*run(["info", str(tmp_path / "missing.mat")], capsys), "not found")
    good = tmp_path / "good.mat"
    save_model(lenet_small(), good)
    data = good.read_bytes()
    (tmp_path / "trunc.mat").write_bytes(data[: len(data) // 3])
    _one_line_error(*run(["info", str(tmp_path / "trunc.mat")], capsys), "cannot read model file", "trunc.mat")
    (tmp_path / "rand.onnx").write_bytes(np.random.default_rng(1).bytes(1000))
    _one_line_error(*run(["info", str(tmp_path / "rand.onnx")], capsys), "rand.onnx")
    scipy.io.savemat(tmp_path / "keys.mat", {"foo": np.zeros(3)})
    _one_line_error(*run(["info", str(tmp_path / "keys.mat")], capsys), "neither the MMR nor the MIPVerify")
    d = scipy.io.loadmat(good)
    d = {k: v for k, v in d.items() if not k.startswith("__")}
    d["weights_fc1"] = d["weights_fc1"].copy()
    d["weights_fc1"][0, 0] = np.nan
    scipy.io.savemat(tmp_path / "nan.mat", d)
    _one_line_error(*run(["info", str(tmp_path / "nan.mat")], capsys), "NaN")
    d["weights_fc1"][0, 0] = np.inf
    scipy.io.savemat(tmp_path / "inf.mat", d)
    _one_line_error(*run(["info", str(tmp_path / "inf.mat")], capsys), "infinite")
    d["weights_fc1"] = d["weights_fc1"][:, :50]
    scipy.io.savemat(tmp_path / "shape.mat", d)
    _one_line_error(*run(["info", str(tmp_path / "shape.mat")], capsys), "bias has 100 entries")
    _one_line_error(*run(["convert", str(good), str(tmp_path / "out.txt")], capsys), "cannot tell the output format")
    _one_line_error(*run(["convert", str(tmp_path / "nope.pt"), str(tmp_path / "x.onnx")], capsys), "not found")
    assert not (tmp_path / "x.onnx").exists()


def test_unsupported_onnx_operator_and_unwritable_layout_through_the_cli(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "w", "b"], ["h"], transB=1),
         helper.make_node("Softsign", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.zeros((10, 784), np.float32), "w"), numpy_helper.from_array(np.zeros(10, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "op.onnx")
    _one_line_error(*run(["info", str(tmp_path / "op.onnx")], capsys), "unsupported ONNX operator Softsign")
    save_model(fancy(), tmp_path / "fancy.pt")
    _one_line_error(*run(["convert", str(tmp_path / "fancy.pt"), str(tmp_path / "f.mat"), "--format", "mat-mmr"], capsys),
                    "MMR .mat layout")
    assert not (tmp_path / "f.mat").exists()
