"""PyTorch files: convex_adversarial / MIPVerify state dicts, cascades, pickled modules, our own dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from verify.errors import ModelError
from verify.formats import load_model, save_model

TOL = 1e-5


class _Flatten(nn.Module):  # convex_adversarial's own Flatten
    def forward(self, x):
        return x.view(x.size(0), -1)


def kw_small(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), _Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


def kw_large(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 4, stride=2, padding=1), nn.ReLU(), _Flatten(),
        nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _out(m: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return m.double()(x.double()).numpy()


def _net_out(path, x, **kw) -> np.ndarray:
    with torch.no_grad():
        return load_model(path, **kw)(x.double()).numpy()


def test_kw_small_state_dict(tmp_path, mnist100):
    m = kw_small(0)
    path = tmp_path / "kw_small.pth"
    torch.save(m.state_dict(), path)
    assert list(m.state_dict())[:3] == ["0.weight", "0.bias", "2.weight"]
    np.testing.assert_allclose(_net_out(path, mnist100), _out(m, mnist100), atol=TOL, rtol=0)
    np.testing.assert_allclose(_net_out(path, mnist100, arch="kw_small"), _out(m, mnist100), atol=TOL, rtol=0)


def test_cascade_checkpoint_takes_the_first_model(tmp_path, mnist100):
    m0, m1 = kw_small(0), kw_small(1)
    path = tmp_path / "models_scaled_cascade.pth"
    torch.save({"state_dict": [m0.state_dict(), m1.state_dict()], "epoch": 20}, path)
    np.testing.assert_allclose(_net_out(path, mnist100), _out(m0, mnist100), atol=TOL, rtol=0)
    assert np.abs(_out(m0, mnist100) - _out(m1, mnist100)).max() > 1e-2  # the two differ: [0] was taken
    # convex_adversarial's files predate PyTorch's zip format: the legacy pickle layout, read without code
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": [m0.state_dict(), m1.state_dict()], "err": 0.1}, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] == b"\x80\x02"
    torch.load(legacy, weights_only=True)
    np.testing.assert_allclose(_net_out(legacy, mnist100), _out(m0, mnist100), atol=TOL, rtol=0)


def test_kw_large_state_dict_with_and_without_arch(tmp_path, mnist100):
    m = kw_large(2)
    path = tmp_path / "kw_large.pth"
    torch.save({"state_dict": m.state_dict()}, path)
    want = _out(m, mnist100)
    np.testing.assert_allclose(_net_out(path, mnist100), want, atol=TOL, rtol=0)
    np.testing.assert_allclose(_net_out(path, mnist100, arch="kw_large"), want, atol=TOL, rtol=0)
    with pytest.raises(ModelError, match="kernel"):
        load_model(path, arch="cnn_lenet_large")  # conv 1 is 4x4 there, 3x3 here


def test_uncommon_geometry_asks_for_arch(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2, padding=0), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 10))
    path = tmp_path / "odd.pth"
    torch.save(m.state_dict(), path)
    with pytest.raises(ModelError, match="--arch"):
        load_model(path)


def test_state_dict_with_batchnorm(tmp_path, mnist100):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.2, 0.2)
    m.eval()
    path = tmp_path / "bn.pth"
    torch.save(m.state_dict(), path)
    np.testing.assert_allclose(_net_out(path, mnist100), _out(m, mnist100), atol=TOL, rtol=0)


def test_pickled_module(tmp_path, mnist100):
    torch.manual_seed(4)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 14 * 14, 32),
                      nn.ReLU(), nn.Linear(32, 10))
    path = tmp_path / "whole.pt"
    torch.save(m, path)
    net = load_model(path)
    assert net.input_shape == (1, 28, 28)
    np.testing.assert_allclose(_net_out(path, mnist100), _out(m, mnist100), atol=TOL, rtol=0)


def test_our_pt_loads_with_weights_only(tmp_path):
    from tests.formats.nets import fancy

    path = tmp_path / "ours.pt"
    save_model(fancy(), path)
    obj = torch.load(path, weights_only=True)  # no code runs on load
    assert obj["format"] == "relu-verify" and obj["input_shape"] == [1, 28, 28]
    assert {r["kind"] for r in obj["layers"]} >= {"conv2d", "residual", "avgpool2d", "maxpool2d", "channel_affine"}


def test_fc_state_dict(tmp_path, mnist100):
    torch.manual_seed(6)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 40), nn.ReLU(), nn.Linear(40, 10))
    path = tmp_path / "fc.pth"
    torch.save(m.state_dict(), path)
    net = load_model(path)
    assert net.input_shape == (1, 28, 28)
    np.testing.assert_allclose(_net_out(path, mnist100), _out(m, mnist100), atol=TOL, rtol=0)
