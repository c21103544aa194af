"""Every format -> Network -> every format that can hold it gives the same logits on real MNIST images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verify.formats import load_model, save_format, save_model
from verify.network import Network

from tests.formats.nets import fancy, fc1, lenet_small

EXT = {"mat-mmr": "mat", "mat-mipverify": "mat", "h5": "h5", "pt": "pt", "onnx": "onnx"}
ALL = list(EXT)
RICH = ["h5", "pt", "onnx"]  # formats that hold every layer type
NETS = {"lenet_small": (lenet_small, ALL), "fc1": (fc1, ALL), "fancy": (fancy, RICH)}
TOL = 1e-5


def _logits(net: Network, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net(x.to(torch.float64)).numpy()


def _write_read(net: Network, fmt: str, folder, tag: str) -> Network:
    path = folder / f"{tag}_{fmt}.{EXT[fmt]}"
    save_model(net, path, format=fmt)
    return load_model(path)


@pytest.mark.parametrize("name", list(NETS))
def test_every_pair_of_formats(name, tmp_path, mnist100):
    make, formats = NETS[name]
    net = make()
    ref = _logits(net, mnist100)
    assert np.abs(ref).max() > 0.1  # the test would be empty on all-zero logits
    for a in formats:
        mid = _write_read(net, a, tmp_path, f"{name}_first")
        assert mid.input_shape == net.input_shape and mid.input_range == net.input_range
        np.testing.assert_allclose(_logits(mid, mnist100), ref, atol=TOL, rtol=0, err_msg=f"{name}: {a}")
        for b in formats:
            back = _write_read(mid, b, tmp_path, f"{name}_{a}")
            err = np.abs(_logits(back, mnist100) - ref).max()
            assert err <= TOL, f"{name}: {a} -> {b} differs by {err:g}"
            assert back.num_relus() == net.num_relus() and back.num_params() == net.num_params()


def test_rich_formats_keep_structure_and_metadata(tmp_path):
    net = fancy()
    for fmt in RICH:
        back = _write_read(net, fmt, tmp_path, "meta")
        assert [type(l).__name__ for l in back.layers] == [type(l).__name__ for l in net.layers], fmt
        assert back.name == "fancy" and back.metadata == {"trained_by": "test"}, fmt


def test_h5_and_pt_are_bit_exact_for_float64_weights(tmp_path):
    net = fancy()  # its normalisation scale 1/0.3081 is not a float32 number
    for fmt in ("h5", "pt"):
        back = _write_read(net, fmt, tmp_path, "exact")
        for a, b in zip(net.walk(), back.walk()):
            for attr in ("weight", "bias", "scale", "shift"):
                if hasattr(a, attr):
                    assert torch.equal(getattr(a, attr), getattr(b, attr)), (fmt, a)


def test_onnx_file_matches_onnxruntime(tmp_path, mnist100):
    ort = pytest.importorskip("onnxruntime")
    for make in (lenet_small, fc1, fancy):
        net = make()
        path = tmp_path / f"{net.name}.onnx"
        save_model(net, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["input"]
        got = sess.run(None, {"input": mnist100.numpy()})[0]
        np.testing.assert_allclose(got, _logits(net, mnist100), atol=TOL, rtol=0, err_msg=net.name)
        # dynamic batch
        one = sess.run(None, {"input": mnist100[:1].numpy()})[0]
        np.testing.assert_allclose(one, got[:1], atol=1e-6, rtol=0)


def test_nchw_flatten_is_reordered_for_the_mmr_layout(tmp_path, mnist100):
    net = lenet_small(flatten="NCHW")  # e.g. a PyTorch-trained net going to the MMR layout
    assert save_format(net, tmp_path / "x.mat") == "mat-mmr"
    back = _write_read(net, "mat-mmr", tmp_path, "nchw")
    assert back.layers[4].order == "NHWC"
    np.testing.assert_allclose(_logits(back, mnist100), _logits(net, mnist100), atol=TOL, rtol=0)


def test_mat_default_falls_back_to_mipverify_when_mmr_cannot_hold_it(tmp_path, mnist100):
    from verify.network import ChannelAffine

    base = lenet_small()
    net = Network((ChannelAffine.normalize([0.5], [0.25]),) + base.layers, base.input_shape)
    path = tmp_path / "norm.mat"
    assert save_format(net, path) == "mat-mipverify"
    save_model(net, path)
    back = load_model(path)
    np.testing.assert_allclose(_logits(back, mnist100), _logits(net, mnist100), atol=TOL, rtol=0)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    net = lenet_small()
    path = tmp_path / "m.h5"
    path.write_bytes(b"old content")
    with pytest.raises(Exception):
        save_model(fancy(), tmp_path / "m.mat", format="mat-mmr")  # cannot hold it
    save_model(net, path)
    assert load_model(path).num_params() == net.num_params()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]
