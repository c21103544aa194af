"""Every architecture converts exactly to a Network and survives save/load through verify.formats."""

from __future__ import annotations

import pytest
import torch

from training.architectures import ARCHITECTURES, build, to_network


@pytest.mark.parametrize("name", [n for n, spec in ARCHITECTURES.items() if spec.exports_network])
def test_converts_exactly(name: str) -> None:
    module = build(name, seed=1)
    net = to_network(module, (1, 28, 28))
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        ref = module.double()(x.double())
    assert torch.allclose(net(x.double()), ref, atol=1e-10, rtol=0)
    assert torch.allclose(net(x), module.float()(x), atol=1e-5, rtol=0)


def test_published_sizes() -> None:
    """ReLU counts: MMR's get_n_total_hidden_units gives 4804 for cnn_lenet_small on MNIST."""
    assert to_network(build("cnn_lenet_small"), (1, 28, 28)).num_relus() == 4804
    assert to_network(build("fc1"), (1, 28, 28)).num_relus() == 1024
    assert to_network(build("fc10"), (1, 28, 28)).num_relus() == 124 + 7 * 104 + 2 * 86
    assert to_network(build("kw_small"), (1, 28, 28)).num_params() == 166406


@pytest.mark.parametrize("name,hidden", [("fc_256x2", [256] * 2), ("fc_256x4", [256] * 4), ("fc_256x6", [256] * 6),
                                         ("fc_500", [500])])
def test_complete_verification_mlps(tmp_path, name: str, hidden: list[int]) -> None:
    """The BaB benchmark MLPs (VNN-COMP mnistfc 784-256xK-10, and 784-500-10): sizes, and a small .mat export."""
    from verify.formats import load_model, save_model

    net = to_network(build(name, seed=0), (1, 28, 28), name=name)
    widths = [784, *hidden, 10]
    assert net.num_relus() == sum(hidden)
    assert net.num_params() == sum(a * b + b for a, b in zip(widths, widths[1:]))
    path = tmp_path / f"{name}.mat"
    save_model(net, path)
    assert path.stat().st_size < 3 * 2**20  # float32 weights: the zoo's nets stay small
    back = load_model(path)
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    assert torch.allclose(back(x), net(x), atol=1e-6, rtol=0)


def test_seed_determines_weights() -> None:
    a, b, c = build("cnn_lenet_small", seed=3), build("cnn_lenet_small", seed=3), build("cnn_lenet_small", seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_shared_network_is_differentiable() -> None:
    module = build("kw_small", seed=0)
    net = to_network(module, (1, 28, 28), share_parameters=True)
    net(torch.rand(2, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


CASES = [("fc1", ".mat", None), ("cnn_lenet_small", ".mat", None), ("cnn_lenet_small", ".mat", "mat-mipverify"),
         ("cnn_lenet_small", ".h5", None), ("kw_small", ".pt", None), ("cnn_lenet_small", ".onnx", None)]


@pytest.mark.parametrize("name,ext,fmt", CASES)
def test_save_load_roundtrip(tmp_path, name: str, ext: str, fmt: str | None) -> None:
    formats = pytest.importorskip("verify.formats")
    if ext == ".onnx":
        pytest.importorskip("onnx")
    net = to_network(build(name, seed=2), (1, 28, 28), name=name)
    path = tmp_path / f"m{ext}"
    formats.save_model(net, path, format=fmt)
    back = formats.load_model(path, format=fmt)
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    assert torch.allclose(back(x), net(x), atol=1e-5, rtol=0)
